"""DeiT-style vision transformers on timm whose attention is a primaldual variant (for models a user already has,
:func:`primaldual.convert` swaps the attention in place).

SH on image tokens: the sequence is [class/register tokens, patch tokens]; SH pools only the patch tokens
(in raster order, windows of ``r`` consecutive patches, or with ``grid=True`` 2D windows of neighbouring
patches) and keeps the ``num_prefix_tokens`` leading tokens unpooled, so the class token stays a key of every
head.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..functional.options import FIELDS, AttentionOptions
from ..functional.variants import resolve_options
from ..integrations.convert import convert
from ..layers import Attention

# name -> timm VisionTransformer keywords. DeiT presets follow Touvron et al. (2021).
PRESETS: dict[str, dict[str, Any]] = {
    "deit_tiny": dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "deit_small": dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6),
    # 28×28 grey images (Fashion-MNIST): 7×7 patches of 4×4 pixels, 49 tokens + class token.
    "vit_28": dict(img_size=28, patch_size=4, in_chans=1, embed_dim=128, depth=6, num_heads=4, mlp_ratio=2.0),
    # The same model on 4×4 patches of 7×7 pixels (16 tokens + class token): a third of vit_28's cost per image.
    "vit_28_p7": dict(img_size=28, patch_size=7, in_chans=1, embed_dim=128, depth=6, num_heads=4, mlp_ratio=2.0),
    # An EVA02-style model of vit_28_p7's size: timm's Eva with rotary position embeddings and a SwiGLU MLP,
    # built with its own EvaAttention and converted (primaldual.convert), as a user's EVA02 would be.
    "eva02_28_p7": dict(
        img_size=28,
        patch_size=7,
        in_chans=1,
        embed_dim=128,
        depth=6,
        num_heads=4,
        mlp_ratio=2.0,
        swiglu_mlp=True,
        use_rot_pos_emb=True,
        ref_feat_shape=4,
    ),
}
#: The presets built as the timm model family they name, with that family's own attention, then converted.
CONVERTED = {"eva02_28_p7": "timm.models.eva.Eva"}


def vision_transformer(
    preset: str = "vit_28", variant: str | AttentionOptions = "softmax", *, num_classes: int = 10, **options: Any
) -> nn.Module:
    """A timm ``VisionTransformer`` from ``preset`` (a key of :data:`PRESETS`; for :data:`CONVERTED` presets the
    timm model they name, converted) with ``variant`` attention (a name or an
    :class:`~primaldual.functional.AttentionOptions`).

    ``options`` named like a field of ``AttentionOptions`` (``scales``, ``window``, ``eps``, ``mean_weight``, ...)
    set the attention; the others go to ``VisionTransformer`` (e.g. ``drop_path_rate``, ``in_chans``). The class
    token is a prefix token (SH keeps it unpooled). ``grid=True``: SH pools 2D windows of the model's patch grid
    (``img_size / patch_size`` on each side; ``False``: raster windows, the default).
    """
    from timm.models.vision_transformer import VisionTransformer

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    attention_options = {"num_prefix_tokens": 1, **{k: v for k, v in options.items() if k in FIELDS}}
    vit_options = {**PRESETS[preset], **{k: v for k, v in options.items() if k not in FIELDS}}
    if attention_options.get("grid") is True:
        side = vit_options["img_size"] // vit_options["patch_size"]
        attention_options["grid"] = (side, side)
    elif attention_options.get("grid") is False:
        del attention_options["grid"]
    resolved = resolve_options(variant, attention_options)
    if preset in CONVERTED:
        from timm.models.eva import Eva

        return convert(Eva(num_classes=num_classes, **vit_options), resolved)
    layer = Attention.configure(options=resolved)
    return VisionTransformer(num_classes=num_classes, attn_layer=layer, **vit_options)
