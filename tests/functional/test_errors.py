"""Bad input gets an error that names the argument and what was expected."""

import pytest
import torch

from primaldual import functional as F


def qkv(b=2, h=4, n=6, d=8):
    return torch.randn(b, h, n, d), torch.randn(b, h, n, d), torch.randn(b, h, n, d)


def test_not_4d():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"q must be 4-D"):
        F.softmax_attention(q[0], k, v)
    with pytest.raises(ValueError, match=r"v must be 4-D"):
        F.bn_attention(q, k, v[..., 0])


def test_not_a_tensor_or_not_float():
    q, k, v = qkv()
    with pytest.raises(TypeError, match=r"k must be a torch.Tensor"):
        F.linear_attention(q, k.numpy(), v)
    with pytest.raises(TypeError, match=r"q must be a floating-point"):
        F.softmax_attention(q.long(), k, v)


@pytest.mark.parametrize(
    "shapes, pattern",
    [
        (((2, 4, 6, 8), (3, 4, 6, 8), (3, 4, 6, 8)), r"must share the batch"),
        (((2, 4, 6, 8), (2, 3, 6, 8), (2, 3, 6, 8)), r"whose number divides q's"),
        (((2, 4, 6, 8), (2, 2, 6, 8), (2, 4, 6, 8)), r"k and v their heads"),
        (((2, 4, 6, 8), (2, 4, 6, 7), (2, 4, 6, 8)), r"q and k must share head_dim"),
        (((2, 4, 6, 8), (2, 4, 6, 8), (2, 4, 5, 8)), r"k and v must share the key length"),
    ],
)
def test_mismatched_shapes(shapes, pattern):
    q, k, v = (torch.randn(*s) for s in shapes)
    with pytest.raises(ValueError, match=pattern):
        F.softmax_attention(q, k, v)


def test_mismatched_dtypes():
    q, k, v = qkv()
    with pytest.raises(TypeError, match=r"share a dtype"):
        F.sh_attention(q, k.double(), v, (1, 2, 1, 2))


@pytest.mark.parametrize(
    "mask, error, pattern",
    [
        (
            torch.zeros(2, 5, dtype=torch.bool),
            ValueError,
            r"key_padding_mask must have shape \(batch, seq_k\) = \(2, 6\)",
        ),
        (torch.zeros(2, 1, 6, dtype=torch.bool), ValueError, r"key_padding_mask must have shape"),
        (torch.zeros(2, 6), TypeError, r"key_padding_mask must have dtype torch.bool"),
        ([[False] * 6] * 2, TypeError, r"key_padding_mask must be a bool tensor"),
    ],
)
@pytest.mark.parametrize("name", ["softmax", "linear", "bn", "sh", "bn+sh", "linear-bn", "linear-sh"])
def test_bad_mask(name, mask, error, pattern):
    q, k, v = qkv()
    scales = (1, 2, 4, 8) if "sh" in name else None
    with pytest.raises(error, match=pattern):
        F.attention(q, k, v, name, key_padding_mask=mask, scales=scales)


@pytest.mark.parametrize(
    "scales, error, pattern",
    [
        ((1, 2, 4), ValueError, r"scales must have one factor per head \(4\)"),
        ((1, 2, 0, 8), ValueError, r"every factor in scales must be >= 1"),
        ((1, 2, -4, 8), ValueError, r"every factor in scales must be >= 1"),
        ((1, 2, 2.5, 8), TypeError, r"scales must hold integers"),
        (2, TypeError, r"scales must be a sequence of integers"),
    ],
)
@pytest.mark.parametrize("fn", [F.sh_attention, F.bn_sh_attention, F.linear_sh_attention])
def test_bad_scales(fn, scales, error, pattern):
    q, k, v = qkv()
    with pytest.raises(error, match=pattern):
        fn(q, k, v, scales)


def test_sh_needs_scales_and_others_refuse_them():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"needs scales"):
        F.attention(q, k, v, "sh")
    with pytest.raises(ValueError, match=r"scales is only used by the sh variants"):
        F.attention(q, k, v, "bn", scales=(1, 1, 1, 1))


def test_bad_window():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"window must be >= 0, got -1"):
        F.sparse_attention(q, k, v, -1)
    with pytest.raises(TypeError, match=r"window must be an integer"):
        F.sparse_attention(q, k, v, 1.5)
    with pytest.raises(ValueError, match=r"needs window"):
        F.attention(q, k, v, "sparse")


def test_unknown_variant():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"unknown variant 'bn-sh'; expected one of softmax, linear"):
        F.attention(q, k, v, "bn-sh")


def test_bad_bn_options_and_causal_combinations():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"eps must be > 0"):
        F.bn_attention(q, k, v, eps=0.0)
    with pytest.raises(ValueError, match=r"mean_weight must be finite"):
        F.bn_attention(q, k, v, mean_weight=float("nan"))
    for variant in F.VARIANTS:  # cross-attention shapes: more queries than keys has no causal meaning
        extra = dict(scales=(1, 2, 4, 8)) if "sh" in variant else dict(window=1) if variant == "sparse" else {}
        with pytest.raises(ValueError, match=r"causal=True needs at most as many queries as keys"):
            F.attention(q, k[:, :, :3], v[:, :, :3], variant, causal=True, **extra)
