"""Hugging Face transformers (5.x): every variant as an attention implementation, ``"primaldual-<variant>"``.

    from primaldual.integrations.transformers import register
    register(num_prefix_tokens=1)                     # ["primaldual-softmax", ..., "primaldual-linear-bn+sh"]
    model = AutoModel.from_config(config, attn_implementation="primaldual-bn")
    model.set_attn_implementation("primaldual-sh")    # or switch a model you have

Each name is registered twice: as an attention function (``AttentionInterface``) and as a mask function
(``AttentionMaskInterface``). Without the second, transformers hands a custom implementation no mask at all and
padding would silently take part in BN statistics and SH windows. The mask function (:func:`primaldual_mask`)
hands the attention function the structure rather than a matrix to re-analyse: for a plain causal or
bidirectional mask, the padding row ``(B, 1, 1, Nk)`` (True = attend), or None without padding, and the module's
``is_causal`` says whether the call is causal (as it does for SDPA when transformers skips the mask); for any
other structure, transformers' own dense ``sdpa_mask``. So a padded model reads no mask value on the host and
compiles without a graph break (:mod:`~primaldual.integrations.masks`); the call is then routed as
:func:`~primaldual.integrations.attend.attend` describes. What it handles:

* padding masks of encoders; causal masks of decoders, every variant's causal form (SPEC section 5: BN's prefix
  statistics, SH's complete past windows plus the open one, the linear kernel's prefix sums); a KV cache (the new
  queries are the last positions, so greedy generation gives the same tokens with and without the cache); a
  static cache's unfilled tail (keys no query sees are padding); :class:`PrimalDualCache`, each variant's own
  decoding state.
* additive score biases (T5's ``position_bias``): added to the scores of softmax, sparse and bn; SH pools them
  with the keys (not causal).
* grouped-query attention: keys and values kept per key head where the variant reads them so (softmax: SDPA's
  ``enable_gqa``; causal BN: statistics per key head), repeated to the query heads otherwise (``repeat_kv``).
* the module's ``scaling`` in place of ``1/√D`` (BN: ``scaling · x̂(q)ᵀx̂(k)``; the linear kernel has no scale).
* attention dropout while training (the ``dropout`` the module passes); ``output_attentions``: the explicit weights
  ``(B, H, Nq, Nk)`` of :func:`primaldual.functional.attention_weights` (SH's pooled weights spread back over the
  keys they pool).

Refused with a ValueError that says why: masks that are not padding with or without causality (sliding windows,
chunks, packed sequences), a position bias with SH or the linear kernel, logit soft-capping and attention sinks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from transformers import AttentionInterface
from transformers.masking_utils import (
    AttentionMaskInterface,
    bidirectional_mask_function,
    causal_mask_function,
    prepare_padding_mask,
    sdpa_mask,
)

from ..functional import VARIANTS, AttentionOptions
from ..functional.options import FIELDS, check_names
from .attend import attend, memoized, scaled
from .hf_cache import PrimalDualCache, PrimalDualLayer, layer_of
from .masks import allowed_from_mask, pattern_from_allowed

__all__ = ["PrimalDualCache", "attention_function", "primaldual_mask", "register", "registered_options"]

PREFIX = "primaldual-"
UNSUPPORTED = ("softcap", "s_aux", "sinks")
_REGISTERED: dict[str, AttentionOptions | None] = {}  # name -> the options register() made it with


def registered_options(name: str | None) -> AttentionOptions | None:
    """The options the attention implementation ``name`` was registered with (None: not a registered name)."""
    return _REGISTERED.get(name) if isinstance(name, str) else None


def register(**options: Any) -> list[str]:
    """Register every variant of :data:`primaldual.functional.VARIANTS` as ``"primaldual-<variant>"``, with
    ``options`` (fields of :class:`~primaldual.functional.AttentionOptions`: ``scales``, ``window``, ``eps``,
    ``mean_weight``, ``num_prefix_tokens``); returns the names. ``scales`` apply to the SH variants and ``window``
    to sparse only; ``primaldual-sparse`` without a ``window`` raises when called. Causality is the model's, not an
    option. A later call registers the names again with its own options."""
    check_names(options)
    if "causal" in options:
        raise TypeError("causal is not an option of register: the model's masks say which calls are causal")
    names = []
    for variant in VARIANTS:
        name = PREFIX + variant
        AttentionInterface.register(name, attention_function(variant, **options))
        AttentionMaskInterface.register(name, primaldual_mask)
        names.append(name)
    return names


def primaldual_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int | Tensor = 0,
    kv_offset: int = 0,
    mask_function: Callable = causal_mask_function,
    attention_mask: Tensor | None = None,
    allow_is_causal_skip: bool = True,
    **kwargs: Any,
) -> Tensor | None:
    """The mask the variants read by structure (see the module doc).

    A plain causal or bidirectional mask whose queries are the last ``q_length`` positions: the padding row
    ``(B, 1, 1, Nk)`` (True = attend), or None without an ``attention_mask``; the module's ``is_causal`` then says
    whether the call is causal, as it does for SDPA when transformers skips the mask. Any other structure (sliding
    windows, chunks, packed sequences, a static cache's tensor offset) or a caller that needs the full matrix
    (``allow_is_causal_skip=False``): transformers' ``sdpa_mask``, a dense ``(B, 1, Nq, Nk)`` mask.
    """
    arguments = dict(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset)
    arguments |= dict(kv_offset=kv_offset, mask_function=mask_function, attention_mask=attention_mask)
    causal = mask_function is causal_mask_function
    plain = causal or mask_function is bidirectional_mask_function
    aligned = not causal or (isinstance(q_offset, int) and q_offset + q_length == kv_offset + kv_length)
    if not (plain and aligned and (allow_is_causal_skip or not causal) and kwargs.get("local_size") is None):
        return sdpa_mask(**arguments, allow_is_causal_skip=allow_is_causal_skip, **kwargs)
    if attention_mask is None:
        skip = (
            allow_is_causal_skip and q_length in (1, kv_length) if causal else kwargs.get("allow_is_bidirectional_skip")
        )
        if skip:
            return None
        attention_mask = torch.ones(batch_size, kv_offset + kv_length, dtype=torch.bool, device=kwargs.get("device"))
    padding_mask = prepare_padding_mask(attention_mask, kv_length, kv_offset)
    return padding_mask[:, None, None, kv_offset : kv_offset + kv_length].bool()


def attention_function(variant: str, **options: Any) -> Callable[..., tuple[Tensor, Tensor | None]]:
    """The attention function of ``variant`` for ``AttentionInterface``; ``options`` as in :func:`register` (those
    that do not apply to the variant are left out)."""
    spec = VARIANTS[variant]
    settings = {
        key: value
        for key, value in options.items()
        if key in FIELDS and (key != "scales" or spec.pooled) and (key != "window" or spec.windowed)
    }
    made = None if spec.windowed and "window" not in settings else AttentionOptions(variant, **settings)
    _REGISTERED[PREFIX + variant] = made

    def primaldual_attention(
        module: Any,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Tensor | None,
        scaling: float | None = None,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> tuple[Tensor, Tensor | None]:
        """q ``(B, H, Nq, D)``, k, v ``(B, Hkv, Nk, ·)`` -> ``(B, Nq, H, Dv)`` and the weights or None."""
        if made is None:
            raise ValueError(f"{PREFIX}{variant} needs a window: register(window=...) (an integer >= 0)")
        return forward(made, module, query, key, value, attention_mask, scaling, dropout, kwargs)

    primaldual_attention.__name__ = primaldual_attention.__qualname__ = f"primaldual_{variant.replace('+', '_')}"
    return primaldual_attention


def forward(
    options: AttentionOptions,
    module: Any,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None,
    dropout: float,
    kwargs: dict[str, Any],
) -> tuple[Tensor, Tensor | None]:
    """One call of the attention function (see the module doc)."""
    for name in UNSUPPORTED:
        if kwargs.get(name) is not None:
            raise ValueError(f"{PREFIX}{options.variant} does not support {name} (given by {type(module).__name__})")
    is_causal = kwargs.get("is_causal")
    is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    layer = layer_of(key)
    if layer is not None:
        return cached_forward(
            for_heads(options, query.shape[1]), layer, query, key, value, attention_mask, scaling, kwargs
        )
    pattern = None
    if attention_mask is not None:
        mask = attention_mask[..., : key.shape[2]]
        allowed = allowed_from_mask(mask, true_means="attend", name="attention_mask")
        pattern = pattern_from_allowed(allowed, causal=bool(is_causal), nq=query.shape[2], name="attention_mask")
    elif is_causal and 1 < query.shape[2] < key.shape[2]:
        # A prompt against an empty static cache: sdpa_mask skips the mask and the keys past the prompt are unfilled.
        key, value = key[:, :, : query.shape[2]], value[:, :, : query.shape[2]]
    out, weights = attend(
        for_heads(options, query.shape[1]),
        query,
        key,
        value,
        pattern,
        causal=bool(is_causal),
        dropout_p=dropout,
        scaling=scaling,
        need_weights=weights_requested(kwargs),
        bias=position_bias(kwargs, key.shape[2]),
    )
    return out.transpose(1, 2).contiguous(), weights


def cached_forward(
    options: AttentionOptions,
    layer: PrimalDualLayer,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None,
    kwargs: dict[str, Any],
) -> tuple[Tensor, None]:
    """A call whose keys and values came from a :class:`PrimalDualCache` layer: the layer's state is stepped with the
    new tokens (their padding: the last row of the mask, the keys that the last query sees)."""
    if weights_requested(kwargs):
        raise ValueError("PrimalDualCache keeps no past keys to weigh: output_attentions needs DynamicCache")
    if kwargs.get("position_bias") is not None:
        raise ValueError("PrimalDualCache keeps no key positions for a position_bias: use DynamicCache")
    padding = None
    if attention_mask is not None:
        mask = attention_mask[:, :1, -1, -query.shape[2] :] if attention_mask.dim() == 4 else attention_mask
        padding = ~allowed_from_mask(mask, true_means="attend", name="attention_mask").reshape(query.shape[0], -1)
    q, options = scaled(options, query, scaling)
    return layer.attend(options, q, key, value, padding).transpose(1, 2).contiguous(), None


def position_bias(kwargs: dict[str, Any], nk: int) -> Tensor | None:
    """The family's additive score bias (T5's ``position_bias``, ``(1 or B, H, Nq, ≥ Nk)``), cut to the keys."""
    bias = kwargs.get("position_bias")
    return None if bias is None else bias[..., :nk]


@memoized
def for_heads(options: AttentionOptions, num_heads: int) -> AttentionOptions:
    """``options.for_heads(num_heads)``, made once per model shape."""
    return options.for_heads(num_heads)


def weights_requested(kwargs: dict[str, Any]) -> bool:
    """Whether the model collects attention weights: ``output_attentions`` passed down, or set in the config (then
    transformers' output collector asks for ``attentions``)."""
    if kwargs.get("output_attentions"):
        return True
    try:  # transformers' private collector (5.x): present while a model records outputs
        from transformers.utils.output_capturing import _active_collector
    except ImportError:
        return False
    collected = _active_collector.get()
    return bool(collected) and ("attentions" in collected or "cross_attentions" in collected)
