"""Grouped-query attention: k and v with fewer heads than q, each key head read by ``H / Hkv`` query heads in a row.

Every variant equals itself on the keys repeated to the query heads, forward and backward, with and without
padding, causal where it has a causal form. The variants that read grouped keys as they are (softmax through
SDPA's ``enable_gqa``, causal BN with statistics per key head) compute the same sums in another order: float64
results agree to a few ulps of the outputs (1e-12 absolute on O(1) values); the others repeat the keys first and
are exact.
"""

import pytest
import torch

from primaldual import functional as F
from primaldual.functional import VARIANTS

CASES = [(v, False) for v in VARIANTS] + [(v, True) for v in ("softmax", "sparse", "bn")]


def options(variant, causal):
    extra = {"window": 2} if VARIANTS[variant].windowed else {}
    if VARIANTS[variant].pooled:
        extra["scales"] = (1, 2, 4, 8)
    return F.AttentionOptions(variant, causal=causal, **extra)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("variant,causal", CASES)
def test_grouped_keys_equal_the_keys_repeated(variant, causal, padded):
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 11, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, 2, 11, 8, generator=generator, dtype=torch.float64, requires_grad=True) for _ in "kv")
    mask = None
    if padded:
        mask = torch.zeros(2, 11, dtype=torch.bool)
        mask[0, 8:] = True
        mask[1, :3] = True  # left padding: causal rows 0-2 see no key
    opts = options(variant, causal)
    grouped = F.attention(q, k, v, opts, key_padding_mask=mask)
    repeated = F.attention(q, F.repeat_kv(k, 4), F.repeat_kv(v, 4), opts, key_padding_mask=mask)
    torch.testing.assert_close(grouped, repeated, rtol=0, atol=1e-12)
    upstream = torch.randn(grouped.shape, generator=generator, dtype=torch.float64)
    grads = torch.autograd.grad(grouped, (q, k, v), upstream)
    expected = torch.autograd.grad(repeated, (q, k, v), upstream)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-11)


def test_weights_of_grouped_keys_equal_those_of_the_keys_repeated():
    q, k = torch.randn(2, 4, 7, 8, dtype=torch.float64), torch.randn(2, 2, 7, 8, dtype=torch.float64)
    opts = options("bn", False)
    torch.testing.assert_close(F.attention_weights(q, k, opts), F.attention_weights(q, F.repeat_kv(k, 4), opts))
