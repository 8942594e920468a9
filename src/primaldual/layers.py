"""``Attention``: multi-head self-attention with any variant of the framework, a drop-in for timm's ``Attention``.

Batch first ``(B, N, dim)``; ``key_padding_mask`` bool ``(B, N)``, True where a token is padding, as in
``nn.MultiheadAttention``. Parameter names (``qkv``, ``q_norm``, ``k_norm``, ``norm``, ``proj``) match
``timm.layers.Attention`` so its weights load unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .functional import attention
from .functional.decode import DecodeState
from .functional.options import FIELDS, AttentionOptions, check_names
from .functional.transforms import rotary
from .functional.variants import self_attention, split_qkv


class Attention(nn.Module):
    """Multi-head self-attention ``proj(concat_h f_h(x))`` where ``f_h`` is the chosen variant.

    The positional arguments are ``timm.layers.Attention``'s, in its order and with its defaults; the variant's
    settings are keyword-only, given one by one or as one :class:`~primaldual.functional.AttentionOptions`.

    Args:
        dim: token width of the input.
        num_heads: H, each an SVR on its own projection of the tokens.
        attn_head_dim: width of each head; default ``dim // num_heads`` (``dim`` must then be divisible).
        dim_out: width of the output; default ``dim``.
        qkv_bias, qk_norm, scale_norm, proj_bias, gated, norm_layer, device, dtype: as in timm's ``Attention``.
        attn_drop: dropout on the softmax weights (the linear kernel has no weights to drop).
        proj_drop: dropout after the output projection.
        options: the variant and its settings; the keyword arguments ``variant``, ``scales``, ``window``,
            ``eps``, ``mean_weight``, ``causal``, ``num_prefix_tokens`` (see ``AttentionOptions``) build it or
            override its fields. SH's default factors are ``(1, 2, 4, 8)`` repeated across heads.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        attn_head_dim: int | None = None,
        dim_out: int | None = None,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        scale_norm: bool = False,
        proj_bias: bool = True,
        gated: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_layer: type[nn.Module] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        options: AttentionOptions | None = None,
        **option_fields: Any,
    ) -> None:
        super().__init__()
        if num_heads < 1 or (attn_head_dim is None and dim % num_heads):
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads}), or give attn_head_dim")
        if (qk_norm or scale_norm) and norm_layer is None:
            raise ValueError("norm_layer must be given when qk_norm or scale_norm is True")
        self.options = _layer_options(options, option_fields).for_heads(num_heads)
        factory = {"device": device, "dtype": dtype}
        self.num_heads = num_heads
        self.head_dim = attn_head_dim or dim // num_heads
        self.attn_dim = num_heads * self.head_dim
        self.qkv = nn.Linear(dim, self.attn_dim * 3, bias=qkv_bias, **factory)
        self.q_norm = norm_layer(self.head_dim, **factory) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim, **factory) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.norm = norm_layer(self.attn_dim, **factory) if scale_norm else nn.Identity()
        self.gate = nn.Linear(dim, self.attn_dim, bias=qkv_bias, **factory) if gated else None
        self.proj = nn.Linear(self.attn_dim, dim_out or dim, bias=proj_bias, **factory)
        self.proj_drop = nn.Dropout(proj_drop)
        self.rotate_half = False  # the layout of a rotary embedding (``forward``'s ``rope``), as timm's EVA

    @property
    def variant(self) -> str:
        """The variant's name (``self.options.variant``)."""
        return self.options.variant

    @property
    def scales(self) -> tuple[int, ...] | None:
        """SH factors per head (``self.options.scales``), None for variants without SH."""
        return self.options.scales

    @classmethod
    def configure(cls, **defaults: Any) -> type[Attention]:
        """A subclass whose constructor defaults are ``defaults``, e.g. ``Attention.configure(variant="bn+sh")``.

        timm's ``VisionTransformer(attn_layer=...)`` calls ``issubclass`` on its argument, so it needs a class
        where ``functools.partial`` would be refused. The options are validated here, once.
        """
        fields = {k: v for k, v in defaults.items() if k in FIELDS}
        _layer_options(defaults.get("options"), fields)

        def __init__(self: Attention, dim: int, *args: Any, **kwargs: Any) -> None:
            cls.__init__(self, dim, *args, **{**defaults, **kwargs})

        label = str(defaults.get("variant", "softmax")).replace("+", "_").replace("-", "_")
        return type(f"{cls.__name__}_{label}", (cls,), {"__init__": __init__, "__module__": cls.__module__})

    def forward(
        self,
        x: Tensor,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        rope: Tensor | None = None,
        attn_bias: Tensor | None = None,
    ) -> Tensor:
        """x ``(B, N, dim)`` -> ``(B, N, dim_out)``. ``key_padding_mask`` bool ``(B, N)``, True at padding.
        ``attn_mask`` exists for timm's call signature and must be None; ``is_causal`` makes this call causal.
        ``rope``: a rotary embedding ``cat(sin, cos)`` ``(.., N - P, 2·head_dim)`` applied to the queries and keys
        after ``q_norm``/``k_norm``, the P prefix tokens left as they are (timm's EVA, EVA02, DINOv3; layout
        :attr:`rotate_half`); the variant then sees the rotated queries and keys (BN their statistics, SH pools
        them and the values). ``attn_bias``: an additive score bias broadcastable to ``(B, H, N, N)`` (a relative
        position bias: BEiT's, Swin's), added after the scale (BN: after normalisation; SH pools it with the keys,
        SPEC section 5)."""
        if x.dim() != 3:
            raise ValueError(f"x must be (batch, seq, dim), got shape {tuple(x.shape)}")
        if attn_mask is not None:
            raise ValueError("attn_mask is not supported: pass key_padding_mask (bool (batch, seq), True at padding)")
        b, n, _ = x.shape
        options = self.options if not is_causal or self.options.causal else self.options.replace(causal=True)
        dropout_p = self.attn_drop.p if self.training else 0.0
        if rope is not None or attn_bias is not None:
            qkv = self.project(x, rope)
            out = attention(*qkv, options, key_padding_mask=key_padding_mask, dropout_p=dropout_p, attn_bias=attn_bias)
        elif isinstance(self.q_norm, nn.Identity) and isinstance(self.k_norm, nn.Identity):  # SH pools x first
            weight, bias = self.qkv.weight, self.qkv.bias
            out = self_attention(
                x, weight, bias, self.num_heads, options, key_padding_mask=key_padding_mask, dropout_p=dropout_p
            )
        else:
            out = attention(*self.project(x), options, key_padding_mask=key_padding_mask, dropout_p=dropout_p)
        out = self.norm(out.transpose(1, 2).reshape(b, n, self.attn_dim))
        if self.gate is not None:
            out = out * self.gate(x).sigmoid()
        return self.proj_drop(self.proj(out))

    def prefill(self, x: Tensor, key_padding_mask: Tensor | None = None) -> tuple[Tensor, DecodeState]:
        """A decoder's prompt x ``(B, N, dim)``: its causal output ``(B, N, dim_out)`` and the decoding state after
        it (:class:`~primaldual.functional.decode.DecodeState`, what the variant's math needs: SPEC section 5)."""
        options = self.options.replace(causal=True) if not self.options.causal else self.options
        out, state = DecodeState.from_prompt(options, *self.project(x), key_padding_mask)
        return self._output(out, x), state

    def step(self, x: Tensor, state: DecodeState) -> tuple[Tensor, DecodeState]:
        """One new token x ``(B, 1, dim)`` after ``state`` (from :meth:`prefill` or an earlier step): its output
        ``(B, 1, dim_out)``, equal to the causal forward's at that position, and the next state."""
        if x.dim() != 3 or x.shape[1] != 1:
            raise ValueError(f"x must be one token per sequence, (batch, 1, dim), got shape {tuple(x.shape)}")
        out, state = state.step(*self.project(x))
        return self._output(out, x), state

    def _output(self, out: Tensor, x: Tensor) -> Tensor:
        """Heads ``(B, H, N, D)`` joined, normalised, gated and projected, as in :meth:`forward` (no dropout)."""
        out = self.norm(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], self.attn_dim))
        if self.gate is not None:
            out = out * self.gate(x).sigmoid()
        return self.proj(out)

    def project(self, x: Tensor, rope: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The heads' queries, keys and values ``(B, H, N, D)`` of tokens x ``(B, N, dim)``, as the attention sees
        them (after ``q_norm``, ``k_norm`` and the rotary embedding ``rope`` if given, see :meth:`forward`); before
        any SH pooling."""
        q, k, v = split_qkv(self.qkv(x), self.num_heads)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is None:
            return q, k, v
        rotate = dict(num_prefix_tokens=self.options.num_prefix_tokens, half=self.rotate_half)
        return rotary(q, rope, **rotate), rotary(k, rope, **rotate), v

    def extra_repr(self) -> str:
        options = [f"variant={self.variant!r}", f"num_heads={self.num_heads}"]
        if self.scales is not None:
            options.append(f"scales={self.scales}")
        if self.options.grid is not None:
            options.append(f"grid={self.options.grid}")
        if self.options.window is not None:
            options.append(f"window={self.options.window}")
        if self.options.causal:
            options.append("causal=True")
        return ", ".join(options)


def _layer_options(options: AttentionOptions | None, fields: dict[str, Any]) -> AttentionOptions:
    """``options`` with ``fields`` applied, or options made of ``fields``; unknown names are a TypeError."""
    check_names(fields)
    if options is None:
        return AttentionOptions(**fields)
    if not isinstance(options, AttentionOptions):
        raise TypeError(f"options must be an AttentionOptions, got {type(options).__name__}")
    return options.replace(**fields) if fields else options
