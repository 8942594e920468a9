"""timm: ``timm.layers.Attention`` (ViT, DeiT, ...), and the rotary-embedding attentions ``EvaAttention`` (EVA,
EVA02, DINOv3, the ``*_rope_reg*`` ViTs) and ``AttentionRope`` (the ``*_rope_*`` ViTs), swapped for
:class:`primaldual.Attention`, weights kept.

A rotary attention rotates its queries and keys by the rotary embedding its block passes (``rope=``);
:class:`primaldual.Attention` takes the same argument and rotates after ``q_norm``/``k_norm`` as EVA does, so the
variant sees the rotated queries and keys. Its projections become one ``qkv`` linear map: EVA's ``q_bias`` and
``v_bias`` (or separate ``q_proj``/``k_proj``/``v_proj``) make that map's weight and bias, the key part of
the bias starting at EVA's fixed 0 (under softmax and BN a key bias has no effect: it adds ``qᵀb`` to every
score of a query, or is removed with the key mean).
"""

from __future__ import annotations

import torch
from torch import nn

from ..functional import AttentionOptions
from ..layers import Attention
from .timm_bias import biased_class, keep_parts

PARTS = ("qkv", "q_norm", "k_norm", "attn_drop", "norm", "gate", "proj", "proj_drop")


def convert_timm(model: nn.Module, options: AttentionOptions) -> int:
    """Replace, in place, every ``timm.layers.Attention``, ``EvaAttention`` and ``AttentionRope`` below ``model`` by
    ``primaldual.Attention(options)`` reusing its projection and norm modules (same weights, device, dtype);
    returns how many. 0 without timm. A rotary attention keeps its own number of prefix tokens (those its
    rotary embedding skips, which SH leaves unpooled); one with grouped-query attention is refused."""
    try:
        from timm.layers import Attention as TimmAttention
        from timm.layers.attention import AttentionRope
        from timm.models.eva import EvaAttention
    except ImportError:
        return 0
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is TimmAttention:
                new = _converted(child, options, qkv=child.qkv)
            elif type(child) in (EvaAttention, AttentionRope):
                rotary = options.replace(num_prefix_tokens=child.num_prefix_tokens)
                new = _converted(child, rotary, qkv=_fused_qkv(child))
                new.rotate_half = child.rotate_half
            elif (biased := biased_class(child)) is not None:
                new = _converted(child, _window_grid(child, options), qkv=_fused_qkv(child), cls=biased[0])
                keep_parts(new, child, biased[1])
            else:
                continue
            setattr(parent, name, new)
            replaced += 1
    return replaced


def _converted(
    child: nn.Module, options: AttentionOptions, qkv: nn.Linear, cls: type[Attention] = Attention
) -> Attention:
    """A ``primaldual.Attention`` (or subclass ``cls``) made of ``child``'s parts, with the fused projection
    ``qkv``."""
    head_dim = qkv.out_features // (3 * child.num_heads)
    new = cls(qkv.in_features, child.num_heads, head_dim, device="meta", options=options)
    for part in PARTS:  # a part the child lacks stays the new layer's own (Identity, no gate)
        if part == "qkv" or hasattr(child, part):
            setattr(new, part, qkv if part == "qkv" else getattr(child, part))
    new.train(child.training)
    return new


def _window_grid(child: nn.Module, options: AttentionOptions) -> AttentionOptions:
    """Grid SH in a Swin window pools the window's own grid (``window_size``), not the image's."""
    if options.grid is None or not hasattr(child, "window_area"):
        return options
    return options.replace(grid=tuple(child.window_size), num_prefix_tokens=0)


def _fused_qkv(child: nn.Module) -> nn.Linear:
    """A rotary attention's query, key and value projections as one ``nn.Linear`` (see the module doc); its own
    ``qkv`` when it has one and no separate bias."""
    if getattr(child, "num_kv_heads", child.num_heads) != child.num_heads:
        raise ValueError(
            f"{type(child).__name__} with grouped-query attention ({child.num_heads} query heads, {child.num_kv_heads} "
            "key/value heads) cannot be converted: primaldual.Attention has a key and value head per query head"
        )
    if getattr(child, "qkv", None) is not None:
        if getattr(child, "q_bias", None) is None:
            return child.qkv
        weight, bias = child.qkv.weight, torch.cat((child.q_bias, child.k_bias, child.v_bias))
    else:
        projections = (child.q_proj, child.k_proj, child.v_proj)
        weight = torch.cat([p.weight for p in projections])
        biases = [p.bias if p.bias is not None else torch.zeros_like(p.weight[:, 0]) for p in projections]
        bias = torch.cat(biases) if any(p.bias is not None for p in projections) else None
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(weight)
        if bias is not None:
            fused.bias.copy_(bias)
    return fused
