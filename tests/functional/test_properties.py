"""Property tests: random shapes, masks and factors; the fast paths stay finite and equal the reference."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from primaldual import functional as F
from primaldual.functional import reference as R
from tests import tolerances as T


@st.composite
def problems(draw):
    batch, heads = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    nq, nk, dim = draw(st.integers(1, 12)), draw(st.integers(1, 12)), draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, n, dim, generator=g, dtype=torch.float64) * 2 for n in (nq, nk, nk))
    mask = draw(st.one_of(st.none(), st.lists(st.booleans(), min_size=batch * nk, max_size=batch * nk)))
    mask = None if mask is None else torch.tensor(mask).view(batch, nk)
    scales = tuple(draw(st.lists(st.integers(1, 5), min_size=heads, max_size=heads)))
    return q, k, v, mask, scales


# the variant and options behind each pair, for the error law of tests/tolerances.py
NAMES = [
    ("softmax", {}),
    ("linear", {}),
    ("bn", {}),
    ("sh", "scales"),
    ("bn+sh", "scales"),
    ("linear-sh", "scales"),
    ("sparse", {"window": 1}),
]

FAST_AND_REFERENCE = [
    (lambda q, k, v, m, s: F.softmax_attention(q, k, v, m), lambda q, k, v, m, s: R.softmax_attention(q, k, v, m)),
    (lambda q, k, v, m, s: F.linear_attention(q, k, v, m), lambda q, k, v, m, s: R.linear_attention(q, k, v, m)),
    (lambda q, k, v, m, s: F.bn_attention(q, k, v, m), lambda q, k, v, m, s: R.bn_attention(q, k, v, m)),
    (lambda q, k, v, m, s: F.sh_attention(q, k, v, s, m), lambda q, k, v, m, s: R.sh_attention(q, k, v, s, m)),
    (lambda q, k, v, m, s: F.bn_sh_attention(q, k, v, s, m), lambda q, k, v, m, s: R.bn_sh_attention(q, k, v, s, m)),
    (
        lambda q, k, v, m, s: F.linear_sh_attention(q, k, v, s, m),
        lambda q, k, v, m, s: R.linear_sh_attention(q, k, v, s, m),
    ),
    (lambda q, k, v, m, s: F.sparse_attention(q, k, v, 1, m), lambda q, k, v, m, s: R.sparse_attention(q, k, v, 1, m)),
]


@settings(max_examples=40, deadline=None)
@given(problems())
def test_fast_paths_equal_reference_on_random_problems(problem):
    q, k, v, mask, scales = problem
    for (name, options), (fast, ref) in zip(NAMES, FAST_AND_REFERENCE):
        out = fast(q, k, v, mask, scales)
        assert out.shape == (*q.shape[:3], v.shape[-1])
        assert torch.isfinite(out).all()
        expected = ref(q, k, v, mask, scales)
        # float64 against float64: the law with eps(float64) for both, S the kernel's term size on this problem
        law = T.variant_law(name, q, k, mask, **({"scales": scales} if options == "scales" else options))
        atol = T.attention_atol(torch.float64, law.pop("size"), T.output_scale(expected, v), **law)
        T.assert_close_normwise(out, expected, atol, name)


@settings(max_examples=25, deadline=None)
@given(problems())
def test_rows_without_valid_keys_are_zero(problem):
    q, k, v, mask, scales = problem
    if mask is None:
        return
    empty = mask.all(1)
    for fast, _ in FAST_AND_REFERENCE:
        out = fast(q, k, v, mask, scales)
        assert (out[empty] == 0).all()
