"""timm: ``timm.layers.Attention`` modules (ViT, DeiT, ...) swapped for :class:`primaldual.Attention`, weights kept."""

from __future__ import annotations

from torch import nn

from ..functional import AttentionOptions
from ..layers import Attention

PARTS = ("qkv", "q_norm", "k_norm", "attn_drop", "norm", "gate", "proj", "proj_drop")


def convert_timm(model: nn.Module, options: AttentionOptions) -> int:
    """Replace, in place, every ``timm.layers.Attention`` below ``model`` by ``primaldual.Attention(options)``
    reusing its ``qkv``, ``proj`` and norm modules (same weights, device, dtype); returns how many. 0 without timm."""
    try:
        from timm.layers import Attention as TimmAttention
    except ImportError:
        return 0
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not TimmAttention:
                continue
            new = Attention(child.qkv.in_features, child.num_heads, child.head_dim, device="meta", options=options)
            for part in PARTS:
                setattr(new, part, getattr(child, part, None))
            new.train(child.training)
            setattr(parent, name, new)
            replaced += 1
    return replaced
