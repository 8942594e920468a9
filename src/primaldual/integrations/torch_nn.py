"""PyTorch's own modules: ``nn.MultiheadAttention`` swapped for a variant, weights kept, call signature kept.

:class:`MultiheadAttention` takes an ``nn.MultiheadAttention``'s parameters (``in_proj_weight`` or
``q/k/v_proj_weight``, ``in_proj_bias``, ``out_proj``: the same tensors, so training either trains both) and its
forward signature ``(query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights,
is_causal) -> (out, weights or None)``: batch first or sequence first, batched or not, bool masks (True = ignore)
or additive ones (``-inf`` = ignore). Masks are read as padding plus causality by structure
(:mod:`~primaldual.integrations.masks`): ``key_padding_mask`` is the keys' padding and ``is_causal`` the causal
flag (with an ``attn_mask``, PyTorch's hint that it is the causal mask), so BN's statistics and SH's windows leave
padded keys out, causal calls give BN prefix statistics, and no mask value is read on the host; any other
``attn_mask`` is checked to be padding with or without causality, and one of another form (a band, blocks) is a
ValueError.

Self-attention of an SH variant (one tensor as query, key and value; packed weights; no weights asked for, as in
``nn.TransformerEncoderLayer``) pools the tokens before projecting them, as ``Attention`` does.

Cross-attention (``key is not query``): supported, BN's statistics and SH's pooling taken over the keys. Not
supported (a ValueError on conversion): ``add_bias_kv`` and ``add_zero_attn``.

Inside ``nn.TransformerEncoder``: its layers' fused fast path computes softmax attention from the weights itself,
bypassing this module, so this module reports ``_qkv_same_embed_dim = False``, which turns that path off; and
:func:`convert_multihead_attention` turns off the encoder's nested-tensor path (``use_nested_tensor = False``), so
every layer sees the padding mask. Nested-tensor inputs are padded here and returned nested.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional import AttentionOptions, self_attention
from .attend import attend
from .masks import MaskPattern, allowed_from_mask, pattern_from_allowed, structural_pattern


class MultiheadAttention(nn.Module):
    """``nn.MultiheadAttention``'s computation with attention ``options`` (see the module doc)."""

    def __init__(self, source: nn.MultiheadAttention, options: AttentionOptions) -> None:
        super().__init__()
        if source.bias_k is not None or source.add_zero_attn:
            raise ValueError("nn.MultiheadAttention with add_bias_kv or add_zero_attn cannot be converted")
        self.embed_dim, self.kdim, self.vdim = source.embed_dim, source.kdim, source.vdim
        self.num_heads, self.head_dim = source.num_heads, source.head_dim
        self.batch_first, self.dropout = source.batch_first, source.dropout
        self.packed = source._qkv_same_embed_dim
        for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias"):
            self.register_parameter(name, getattr(source, name))
        self.out_proj = source.out_proj
        self.options = options.for_heads(self.num_heads)
        self.train(source.training)

    @property
    def _qkv_same_embed_dim(self) -> bool:
        """False: read by ``nn.TransformerEncoder(Layer)`` to choose a fused path that would skip this module."""
        return False

    @property
    def variant(self) -> str:
        return self.options.variant

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """As ``nn.MultiheadAttention.forward``: ``(L, E)``, ``(L, B, E)`` or ``(B, L, E)`` (batch_first) ->
        output of the same layout, and the weights ``(B, L, S)`` (per head ``(B, H, L, S)`` when not
        ``average_attn_weights``) when ``need_weights``, before dropout."""
        if query.is_nested:
            return self._nested(query, key, value, need_weights, average_attn_weights, is_causal)
        batched, is_causal = query.dim() == 3, is_causal or self.options.causal
        q, k, v = (self._batch_first(x, batched) for x in (query, key, value))
        if key_padding_mask is not None and not batched:
            key_padding_mask = key_padding_mask[None]
        pattern = self._pattern(q.shape[0], q.shape[1], k.shape[1], key_padding_mask, attn_mask, is_causal, q.device)
        dropout_p = self.dropout if self.training else 0.0
        if self._pools_tokens(query, key, value, need_weights, pattern, is_causal):
            padding = None if pattern is None else pattern.padding
            weight, bias = self.in_proj_weight, self.in_proj_bias
            out = self_attention(
                q, weight, bias, self.num_heads, self.options, key_padding_mask=padding, dropout_p=dropout_p
            )
            weights = None
        else:
            q, k, v = (t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2) for t in self._project(q, k, v))
            out, weights = attend(
                self.options, q, k, v, pattern, causal=is_causal, dropout_p=dropout_p, need_weights=need_weights
            )
        out = self.out_proj(out.transpose(1, 2).flatten(2))
        out = out if batched and self.batch_first else out.transpose(0, 1) if batched else out[0]
        if weights is not None:
            weights = weights.mean(1) if average_attn_weights else weights
            weights = weights if batched else weights[0]
        return out, weights

    def _pools_tokens(
        self, query: Tensor, key: Tensor, value: Tensor, need_weights: bool, pattern: MaskPattern | None, causal: bool
    ) -> bool:
        """True for an SH variant's self-attention (one tensor as query, key and value, packed weights) where
        every query sees every valid key and no weights are asked for: SH then pools the tokens before projecting
        them (:func:`~primaldual.functional.self_attention`), so a head of factor r projects N / r tokens."""
        full = pattern.kind == "full" if pattern is not None else not causal
        same = query is key and key is value
        return self.options.spec.pooled and self.packed and same and full and not need_weights

    def _batch_first(self, x: Tensor, batched: bool) -> Tensor:
        """``x`` as ``(B, L, E)``."""
        if x.dim() != (3 if batched else 2):
            raise ValueError(f"query, key and value must all be batched (3-D) or not (2-D), got {tuple(x.shape)}")
        return x if batched and self.batch_first else x.transpose(0, 1) if batched else x[None]

    def _project(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The input projections, packed (``in_proj_weight``) or separate (``q/k/v_proj_weight``)."""
        weights = (
            self.in_proj_weight.chunk(3)
            if self.packed
            else (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)
        )
        biases = (None,) * 3 if self.in_proj_bias is None else self.in_proj_bias.chunk(3)
        return tuple(F.linear(x, w, b) for x, w, b in zip((q, k, v), weights, biases))

    def _pattern(
        self,
        b: int,
        nq: int,
        nk: int,
        key_padding_mask: Tensor | None,
        attn_mask: Tensor | None,
        is_causal: bool,
        device: torch.device,
    ) -> MaskPattern | None:
        """The masks as one pattern, None without masks (``attend`` then follows ``is_causal``). The padding and
        ``is_causal`` are structure, read without looking at values (beyond ``torch._assert_async`` that a float
        ``key_padding_mask`` holds only 0 and ``-inf``); with ``is_causal`` the ``attn_mask`` is the causal mask, as
        PyTorch's hint says. Any other ``attn_mask`` is checked to be a prefix pattern (``split_mask``)."""
        padding = None
        if key_padding_mask is not None:
            if key_padding_mask.shape != (b, nk):
                raise ValueError(
                    f"key_padding_mask must be (batch, keys) = {(b, nk)}, got {tuple(key_padding_mask.shape)}"
                )
            padding = ~allowed_from_mask(key_padding_mask, true_means="ignore", name="key_padding_mask", check=False)
        if attn_mask is None or is_causal:
            if padding is None and attn_mask is None:
                return None
            return structural_pattern(padding, causal=is_causal, nq=nq, nk=nk)
        allowed = allowed_from_mask(attn_mask, true_means="ignore", name="attn_mask")
        if allowed.dim() == 3:  # (B * H, L, S)
            allowed = allowed.view(b, self.num_heads, nq, nk)
        allowed = allowed.expand(b, *allowed.shape[-3:]) if allowed.dim() == 4 else allowed.expand(b, 1, nq, nk)
        allowed = allowed if padding is None else allowed & ~padding[:, None, None, :]
        return pattern_from_allowed(allowed, causal=False, nq=nq, name="attn_mask")

    def _nested(
        self, query: Tensor, key: Tensor, value: Tensor, need_weights: bool, average: bool, is_causal: bool
    ) -> tuple[Tensor, Tensor | None]:
        """Self-attention on a nested (batch-first) tensor: padded, attended with the padding masked, re-nested."""
        if not (query is key and key is value and self.batch_first):
            raise ValueError("nested tensors are supported for batch-first self-attention only")
        lengths = [t.shape[0] for t in query.unbind()]
        padded = query.to_padded_tensor(0.0)
        steps = torch.arange(padded.shape[1], device=padded.device)
        mask = steps >= torch.tensor(lengths, device=padded.device)[:, None]
        out, weights = self.forward(padded, padded, padded, mask, need_weights, None, average, is_causal)
        return torch.nested.nested_tensor([o[:n] for o, n in zip(out, lengths)]), weights


def convert_multihead_attention(model: nn.Module, options: AttentionOptions) -> tuple[nn.Module, int]:
    """Replace every ``nn.MultiheadAttention`` of ``model`` by :class:`MultiheadAttention` (``model`` itself
    included: then the new module is returned); turn off the nested-tensor path of ``nn.TransformerEncoder``s whose
    layers were converted. Returns ``(model, count)``."""
    if isinstance(model, nn.MultiheadAttention):
        return MultiheadAttention(model, options), 1
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                setattr(parent, name, MultiheadAttention(child, options))
                count += 1
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoder) and isinstance(module.layers[0].self_attn, MultiheadAttention):
            module.use_nested_tensor = False
    return model, count
