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
    "timm.models.beit.Attention",
    "timm.models.vision_transformer_relpos.RelPosAttention",
    "timm.models.swin_transformer.WindowAttention",
    "torch.nn.MultiheadAttention",
)

#: Attention modules that :func:`convert` refuses, and why: each is something other than one softmax over a
#: head's keys whose scores a variant could replace (docs/use-in-your-model.md, "timm models").
REFUSED = {
    "timm.models.xcit.XCA": "XCiT's cross-covariance attention attends across channels (a D×D softmax of "
    "normalised keys against queries per head), not across tokens: there are no per-token keys for BN's "
    "statistics or SH's pooling to act on",
    "timm.models.cait.TalkingHeadAttn": "CaiT's talking-heads attention mixes the heads' scores linearly before "
    "and after the softmax: a head's output is not one SVR's dual, and SH's heads, fitted on different pooled "
    "keys, have no common scores to mix",
    "timm.models.levit.Attention": "LeViT's attention uses BatchNorm-folded convolutions for q, k, v, a learned "
    "per-head bias table indexed by offsets, and a hard-swish before its projection; not converted",
    "timm.models.levit.AttentionDownsample": "LeViT's attention downsamples its queries with a strided "
    "subsample inside the attention; not converted",
    "timm.models.mvitv2.MultiScaleAttention": "MViTv2's pooling attention pools q, k and v with convolutions "
    "and adds decomposed relative positions computed from the queries; SH's pooling would compete with its "
    "own: not converted",
    "timm.models.vision_transformer_sam.Attention": "SAM-ViT's attention takes (B, H, W, C) windows and adds "
    "decomposed relative positions computed from the queries (a query-dependent bias); not converted",
    "timm.models.twins.GlobalSubSampleAttn": "Twins' global sub-sampled attention takes keys and values from a "
    "strided convolution of the image (its own spatial reduction); not converted",
    "timm.models.twins.LocallyGroupedAttn": "Twins' locally-grouped attention partitions the image into "
    "windows inside the module; not converted",
    "timm.models.tnt.Attention": "TNT's attentions project queries/keys and values to different widths and "
    "run at two levels (pixels inside a patch, patches); not converted",
    "timm.models.swin_transformer_v2.WindowAttention": "Swin V2's window attention is cosine attention with "
    "a learned logit scale and a continuous position-bias MLP: its scores are not q·k/√D",
}


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
    _refuse_unsupported(model)
    replaced = convert_timm(model, resolved)
    model, count = convert_multihead_attention(model, resolved)
    if not replaced + count:
        found = sorted({f"{type(m).__module__}.{type(m).__qualname__}" for m in _innermost_attention(model)})
        having = f"; its attention modules are {', '.join(found)}, which convert does not know" if found else ""
        raise ValueError(f"model has no module to convert (expected one of {', '.join(KNOWN)}){having}")
    return model


def _refuse_unsupported(model: nn.Module) -> None:
    """A ValueError naming the first module of :data:`REFUSED` in ``model`` (by module path) and the reason, before
    anything is converted."""
    for path, module in model.named_modules():
        reason = REFUSED.get(f"{type(module).__module__}.{type(module).__qualname__}")
        if reason is not None:
            where = f"its module {path!r}" if path else "it"
            raise ValueError(
                f"{type(model).__name__} cannot be converted: {where} is {type(module).__name__}. {reason}"
            )


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
