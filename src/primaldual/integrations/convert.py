"""``convert``: one call swaps the attention of a model a user already has, whatever library its layers come from."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..functional import AttentionOptions
from ..functional.variants import resolve_options
from .timm import convert_timm
from .torch_nn import convert_multihead_attention

#: The attention modules that :func:`convert` replaces.
KNOWN = (
    "timm.layers.Attention",
    "timm.layers.attention.AttentionRope",
    "timm.models.eva.EvaAttention",
    "torch.nn.MultiheadAttention",
)


def convert(model: nn.Module, variant: str | AttentionOptions, **options: Any) -> nn.Module:
    """Replace every attention module of :data:`KNOWN` in ``model`` (the root included) by the ``variant`` attention
    (a name with ``options``, or an :class:`AttentionOptions`), reusing their projection weights; returns the model,
    or the new module when ``model`` itself is a ``MultiheadAttention``.

    ``variant="softmax"`` leaves the outputs as they were. SH keeps the model's ``num_prefix_tokens`` (timm's
    class/register tokens) unpooled unless ``options`` say otherwise; ``grid=True`` pools 2D windows of the
    model's patch grid (``model.patch_embed.grid_size``, timm's), see ``AttentionOptions.grid``. ``MultiheadAttention`` becomes
    :class:`~primaldual.integrations.torch_nn.MultiheadAttention` (same call signature; see there for masks,
    causality and cross-attention). A ValueError when there is nothing to convert, naming the model's attention
    modules that convert does not know.
    """
    if not isinstance(variant, AttentionOptions):
        options.setdefault("num_prefix_tokens", getattr(model, "num_prefix_tokens", 0))
    if options.get("grid") is True:
        options["grid"] = patch_grid(model)
    resolved = resolve_options(variant, options)
    replaced = convert_timm(model, resolved)
    model, count = convert_multihead_attention(model, resolved)
    if not replaced + count:
        found = sorted({f"{type(m).__module__}.{type(m).__qualname__}" for m in _innermost_attention(model)})
        having = f"; its attention modules are {', '.join(found)}, which convert does not know" if found else ""
        raise ValueError(f"model has no module to convert (expected one of {', '.join(KNOWN)}){having}")
    return model


def patch_grid(model: nn.Module) -> tuple[int, int]:
    """The patch grid ``(rows, cols)`` of a timm vision model (``patch_embed.grid_size``); a ValueError naming
    ``grid`` for a model without one."""
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is None or getattr(model.patch_embed, "dynamic_img_size", False):
        raise ValueError(
            f"grid=True takes the patch grid from a timm model's patch_embed.grid_size (a fixed image size); "
            f"{type(model).__name__} has none: pass grid=(rows, cols)"
        )
    return tuple(int(g) for g in grid)


def _innermost_attention(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` named like an attention (``*Attention*``, ``*Attn*``) that hold no other such module:
    the attention layers, not the blocks around them."""

    def named(module: nn.Module) -> bool:
        name = type(module).__name__.lower()
        return "attention" in name or "attn" in name

    return [m for m in model.modules() if named(m) and not any(named(c) for c in list(m.modules())[1:])]
