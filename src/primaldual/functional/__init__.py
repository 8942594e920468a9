"""Functional attention ops on ``(batch, heads, seq, head_dim)`` tensors: no modules, no training code."""

from . import reference
from .kernels import elu_feature_map, linear_kernel, softmax_kernel
from .options import AttentionOptions
from .transforms import (
    KeyStatistics,
    bn_normalize,
    bn_softmax_inputs,
    key_statistics,
    pool_keys,
    pool_sequence,
    rotary,
)
from .variants import (
    PAPER_VARIANTS,
    VARIANTS,
    Variant,
    attention,
    bn_attention,
    bn_sh_attention,
    default_scales,
    get_variant,
    linear_attention,
    linear_bn_attention,
    linear_sh_attention,
    repeat_kv,
    self_attention,
    sh_attention,
    softmax_attention,
    sparse_attention,
    split_qkv,
)
from .weights import attention_weights

__all__ = [
    "AttentionOptions",
    "PAPER_VARIANTS",
    "VARIANTS",
    "Variant",
    "KeyStatistics",
    "attention",
    "attention_weights",
    "bn_attention",
    "bn_normalize",
    "bn_softmax_inputs",
    "bn_sh_attention",
    "default_scales",
    "elu_feature_map",
    "get_variant",
    "key_statistics",
    "linear_attention",
    "linear_bn_attention",
    "linear_kernel",
    "linear_sh_attention",
    "pool_keys",
    "pool_sequence",
    "rotary",
    "reference",
    "repeat_kv",
    "self_attention",
    "sh_attention",
    "softmax_attention",
    "softmax_kernel",
    "sparse_attention",
    "split_qkv",
]
