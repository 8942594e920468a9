"""Additive score biases (T5's position_bias, ALiBi, BEiT's relative position bias): softmax, sparse and bn add
them to their scores; sh and bn+sh add to a pooled key the mean bias of the keys it pools."""

import re

import pytest
import torch

from primaldual import functional as F
from primaldual.functional import reference as R
from tests import tolerances as T

CASES = {
    "softmax": (dict(), lambda q, k, v, m, b, c: R.softmax_attention(q, k, v, m, causal=c, bias=b)),
    "sparse": (dict(window=2), lambda q, k, v, m, b, c: R.softmax_attention(q, k, v, m, causal=c, window=2, bias=b)),
    "bn": (dict(), lambda q, k, v, m, b, c: R.bn_attention(q, k, v, m, causal=c, bias=b)),
}
SCALES = (1, 2, 4, 8)
POOLED = {  # not causal: causal SH's open window has no pooled bias
    "sh": (dict(scales=SCALES), lambda q, k, v, m, b, c: R.sh_attention(q, k, v, SCALES, m, bias=b)),
    "bn+sh": (dict(scales=SCALES), lambda q, k, v, m, b, c: R.bn_sh_attention(q, k, v, SCALES, m, bias=b)),
    "sh-grid": (
        dict(scales=SCALES, num_prefix_tokens=1, grid=(2, 4)),
        lambda q, k, v, m, b, c: R.sh_attention(q, k, v, SCALES, m, num_prefix_tokens=1, grid=(2, 4), bias=b),
    ),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    ("variant", "causal"), [(v, c) for v in CASES for c in (False, True)] + [(v, False) for v in POOLED]
)
def test_bias_is_added_to_the_scores(variant, causal, dtype):
    options, reference = {**CASES, **POOLED}[variant]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 9, 6, generator=g, dtype=dtype) for _ in range(3))
    bias = torch.randn(1, 4, 9, 9, generator=g, dtype=dtype)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[1, :3] = True
    leaves = [t.clone().requires_grad_() for t in (q, k, v, bias)]
    exact = [t.double().clone().requires_grad_() for t in (q, k, v, bias)]
    name = variant.removesuffix("-grid")
    out = F.attention(*leaves[:3], name, key_padding_mask=mask, attn_bias=leaves[3], causal=causal, **options)
    expected = reference(*exact[:3], mask, exact[3], causal)
    rows = ~mask[:, None, :, None]
    out.mul(rows).sum().backward()
    expected.mul(rows).sum().backward()
    law = T.variant_law(name, q, k, mask, causal=causal, **options)
    size = law.pop("size") + bias.abs().max().item()  # the bias is a score term of its own
    T.assert_close_normwise(out * rows, expected * rows, T.attention_atol(dtype, size, 1 + v.abs().max().item(), **law))
    for a, b, tensor in zip(leaves, exact, "qkvb"):
        scale = T.gradient_scale(b.grad, rows.double(), v)
        order = 2 if "bn" in variant and tensor == "k" else 1
        T.assert_close_normwise(a.grad, b.grad, T.attention_atol(dtype, size, scale, order=order, **law), tensor)


def test_bias_refused_where_it_has_no_meaning():
    q = torch.randn(1, 4, 5, 6)
    bias = torch.zeros(1, 4, 5, 5)
    for variant in ("linear", "linear-sh", "linear-bn", "linear-bn+sh", "sh", "bn+sh"):
        extra = dict(scales=(1, 2, 4, 8)) if "sh" in variant else {}
        causal = "linear" not in variant  # SH's causal form: its open window has no pooled bias
        with pytest.raises(
            ValueError, match=rf"attn_bias .* is supported by softmax, sparse, bn .*not '{re.escape(variant)}"
        ):
            F.attention(q, q, q, variant, attn_bias=bias, causal=causal, **extra)
    with pytest.raises(ValueError, match=r"attn_bias must broadcast to \(1, 4, 5, 5\), got shape \(1, 3, 5, 5\)"):
        F.attention(q, q, q, attn_bias=torch.zeros(1, 3, 5, 5))
    with pytest.raises(ValueError, match="attn_bias must be a floating-point tensor"):
        F.attention(q, q, q, attn_bias=torch.zeros(5, 5))
