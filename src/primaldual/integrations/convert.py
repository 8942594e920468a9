"""``convert``: one call swaps the attention of a model a user already has, whatever library its layers come from."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..functional import AttentionOptions
from ..functional.variants import resolve_options
from .timm import convert_timm
from .torch_nn import convert_multihead_attention


def convert(model: nn.Module, variant: str | AttentionOptions, **options: Any) -> nn.Module:
    """Replace every ``timm.layers.Attention`` and every ``torch.nn.MultiheadAttention`` of ``model`` (the root
    included) by the ``variant`` attention (a name with ``options``, or an :class:`AttentionOptions`), reusing their
    projection weights; returns the model, or the new module when ``model`` itself is a ``MultiheadAttention``.

    ``variant="softmax"`` leaves the outputs as they were. SH keeps the model's ``num_prefix_tokens`` (timm's
    class/register tokens) unpooled unless ``options`` say otherwise. ``MultiheadAttention`` becomes
    :class:`~primaldual.integrations.torch_nn.MultiheadAttention` (same call signature; see there for masks,
    causality and cross-attention). A ValueError when there is nothing to convert.
    """
    if not isinstance(variant, AttentionOptions):
        options.setdefault("num_prefix_tokens", getattr(model, "num_prefix_tokens", 0))
    resolved = resolve_options(variant, options)
    replaced = convert_timm(model, resolved)
    model, count = convert_multihead_attention(model, resolved)
    if not replaced + count:
        raise ValueError("model has no timm.layers.Attention or torch.nn.MultiheadAttention module to convert")
    return model
