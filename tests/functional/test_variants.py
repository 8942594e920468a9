"""Every fast path against the plain formula (functional.reference, docs/theory.md), forward and backward."""

import pytest
import torch

from primaldual import functional as F
from primaldual.functional import reference as R
from tests import tolerances as T

SCALES = (1, 2, 4, 8)
GRID = dict(num_prefix_tokens=1, grid=(2, 5))  # the 11 keys of make_inputs as a class token and 2×5 patches

# name -> (fast path, reference), both called as fn(q, k, v, mask)
CASES = {
    "softmax": (F.softmax_attention, R.softmax_attention),
    "softmax-causal": (
        lambda q, k, v, m: F.softmax_attention(q, k, v, m, causal=True),
        lambda q, k, v, m: R.softmax_attention(q, k, v, m, causal=True),
    ),
    "linear": (F.linear_attention, R.linear_attention),
    "sparse": (
        lambda q, k, v, m: F.sparse_attention(q, k, v, 2, m),
        lambda q, k, v, m: R.sparse_attention(q, k, v, 2, m),
    ),
    "bn": (F.bn_attention, R.bn_attention),
    "bn-causal": (
        lambda q, k, v, m: F.bn_attention(q, k, v, m, causal=True),
        lambda q, k, v, m: R.bn_attention(q, k, v, m, causal=True),
    ),
    "bn-beta": (
        lambda q, k, v, m: F.bn_attention(q, k, v, m, eps=1e-3, mean_weight=0.5),
        lambda q, k, v, m: R.bn_attention(q, k, v, m, eps=1e-3, mean_weight=0.5),
    ),
    "sh": (
        lambda q, k, v, m: F.sh_attention(q, k, v, SCALES, m),
        lambda q, k, v, m: R.sh_attention(q, k, v, SCALES, m),
    ),
    "sh-grouped": (
        lambda q, k, v, m: F.sh_attention(q, k, v, (3, 1, 3, 1), m),
        lambda q, k, v, m: R.sh_attention(q, k, v, (3, 1, 3, 1), m),
    ),
    "sh-periodic": (  # factors repeated with period 2: every other head is one group (transforms.head_split)
        lambda q, k, v, m: F.sh_attention(q, k, v, (1, 2, 1, 2), m),
        lambda q, k, v, m: R.sh_attention(q, k, v, (1, 2, 1, 2), m),
    ),
    "sh-prefix": (
        lambda q, k, v, m: F.attention(q, k, v, "sh", scales=SCALES, key_padding_mask=m, num_prefix_tokens=1),
        lambda q, k, v, m: R.sh_attention(q, k, v, SCALES, m, num_prefix_tokens=1),
    ),
    "sh-grid": (  # 1 prefix token and a 2×5 patch grid: windows 1×2, 2×2, 2×4 (partial at the right border)
        lambda q, k, v, m: F.attention(q, k, v, "sh", scales=SCALES, key_padding_mask=m, **GRID),
        lambda q, k, v, m: R.sh_attention(q, k, v, SCALES, m, **GRID),
    ),
    "bn+sh-grid": (
        lambda q, k, v, m: F.attention(q, k, v, "bn+sh", scales=SCALES, key_padding_mask=m, **GRID),
        lambda q, k, v, m: R.bn_sh_attention(q, k, v, SCALES, m, **GRID),
    ),
    "linear-sh-grid": (
        lambda q, k, v, m: F.attention(q, k, v, "linear-sh", scales=SCALES, key_padding_mask=m, **GRID),
        lambda q, k, v, m: R.linear_sh_attention(q, k, v, SCALES, m, **GRID),
    ),
    "bn+sh": (
        lambda q, k, v, m: F.bn_sh_attention(q, k, v, SCALES, m),
        lambda q, k, v, m: R.bn_sh_attention(q, k, v, SCALES, m),
    ),
    "bn+sh-periodic": (
        lambda q, k, v, m: F.bn_sh_attention(q, k, v, (1, 2, 1, 2), m),
        lambda q, k, v, m: R.bn_sh_attention(q, k, v, (1, 2, 1, 2), m),
    ),
    "linear-bn": (F.linear_bn_attention, R.linear_bn_attention),
    "linear-sh": (
        lambda q, k, v, m: F.linear_sh_attention(q, k, v, SCALES, m),
        lambda q, k, v, m: R.linear_sh_attention(q, k, v, SCALES, m),
    ),
}

# The variant and options behind each case, for the size of its scores (tests/tolerances.py's variant_law): SH
# factors, prefix tokens, causal, the window, BN's eps and β.
VARIANT = {
    "softmax-causal": "softmax",
    "bn-causal": "bn",
    "bn-beta": "bn",
    "sh-grouped": "sh",
    "sh-periodic": "sh",
    "sh-prefix": "sh",
    "sh-grid": "sh",
    "bn+sh-grid": "bn+sh",
    "linear-sh-grid": "linear-sh",
    "bn+sh-periodic": "bn+sh",
}
OPTIONS = {
    "softmax-causal": dict(causal=True),
    "sparse": dict(window=2),
    "bn-causal": dict(causal=True),
    "bn-beta": dict(eps=1e-3, mean_weight=0.5),
    "sh": dict(scales=SCALES),
    "sh-grouped": dict(scales=(3, 1, 3, 1)),
    "sh-periodic": dict(scales=(1, 2, 1, 2)),
    "sh-prefix": dict(scales=SCALES, num_prefix_tokens=1),
    "sh-grid": dict(scales=SCALES, **GRID),
    "bn+sh-grid": dict(scales=SCALES, **GRID),
    "linear-sh-grid": dict(scales=SCALES, **GRID),
    "bn+sh-periodic": dict(scales=(1, 2, 1, 2)),
    "bn+sh": dict(scales=SCALES),
    "linear-sh": dict(scales=SCALES),
}


def law(name, q, k, mask):
    """``size``, ``head_dim``, ``length`` and ``rounded_inputs`` of tests/tolerances.py's attention_atol for case
    ``name`` (its variant_law: S of the kernel's inputs as the fast path forms them)."""
    return T.variant_law(VARIANT.get(name, name), q, k, mask, **OPTIONS.get(name, {}))


def atol(name, dtype, q, k, mask, scale, **options):
    """tests/tolerances.py's attention_atol for case ``name`` on these inputs, of an output or gradient of
    scale ``scale``."""
    terms = law(name, q, k, mask)
    return T.attention_atol(dtype, terms.pop("size"), scale, **terms, **options)


def order(name, tensor):
    """2 for a key gradient through BN's statistics (∂x̂/∂s = -x̂/s: another factor S), else 1."""
    return 2 if "bn" in name and tensor == "k" else 1


def make_inputs(dtype, batch=3, heads=4, nq=11, nk=11, dim=8, dv=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, nq, dim, generator=g, dtype=dtype)
    k = torch.randn(batch, heads, nk, dim, generator=g, dtype=dtype)
    v = torch.randn(batch, heads, nk, dv, generator=g, dtype=dtype)
    return q, k, v


def make_mask(batch, nk, kind):
    """None, or padding at the end of sample 0, scattered in sample 1, and sample 2 fully padded."""
    if kind == "none":
        return None
    m = torch.zeros(batch, nk, dtype=torch.bool)
    m[0, nk - 4 :] = True
    m[1, ::3] = True
    m[2, :] = True
    return m


def leaves(*tensors):
    return [t.clone().requires_grad_(True) for t in tensors]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mask_kind", ["none", "padded"])
@pytest.mark.parametrize("name", list(CASES))
def test_fast_path_matches_reference(name, mask_kind, dtype):
    """Outputs and gradients against the float64 formula, within the error law of tests/tolerances.py (which
    holds whatever order the SIMD level sums in: scripts/test.sh runs this under each one the CPU has)."""
    fast, ref = CASES[name]
    q, k, v = make_inputs(dtype)
    mask = make_mask(q.shape[0], k.shape[2], mask_kind)
    weight = torch.randn(*q.shape[:3], v.shape[-1], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    qa, ka, va = leaves(q, k, v)
    qb, kb, vb = leaves(q.double(), k.double(), v.double())
    out_fast, out_ref = fast(qa, ka, va, mask), ref(qb, kb, vb, mask)
    (out_fast * weight.to(dtype)).sum().backward()
    (out_ref * weight).sum().backward()
    out_scale = out_ref.abs().amax().item()
    T.assert_close_normwise(out_fast, out_ref, atol(name, dtype, q, k, mask, out_scale), "output")
    for tensor, a, b in (("q", qa, qb), ("k", ka, kb), ("v", va, vb)):
        assert torch.isfinite(a.grad).all()
        scale = T.gradient_scale(b.grad, weight, v)
        bound = atol(name, dtype, q, k, mask, scale, order=order(name, tensor))
        T.assert_close_normwise(a.grad, b.grad, bound, f"gradient of {tensor}")


@pytest.mark.parametrize("name", [n for n in CASES if "causal" not in n and "sparse" not in n])
def test_cross_attention_lengths(name):
    """Queries and keys of different lengths (the SVR's test and training sets differ; 11 keys for the grid
    cases, whose keys are 1 + 2×5 tokens)."""
    fast, ref = CASES[name]
    q, k, v = make_inputs(torch.float64, nq=5, nk=11 if "grid" in name else 13)
    mask = make_mask(3, k.shape[2], "padded")
    expected = ref(q, k, v, mask)
    bound = atol(name, torch.float64, q, k, mask, expected.abs().amax().item())
    T.assert_close_normwise(fast(q, k, v, mask), expected, bound, name)


@pytest.mark.parametrize("name", list(CASES))
def test_padded_keys_are_ignored(name):
    """Changing padded keys and values changes nothing, and they receive no gradient."""
    fast, _ = CASES[name]
    q, k, v = make_inputs(torch.float64)
    mask = make_mask(3, k.shape[2], "padded")
    pad = mask[:, None, :, None]
    k2 = torch.where(pad, 100 * torch.randn_like(k), k)
    v2 = torch.where(pad, 100 * torch.randn_like(v), v)
    # padded keys get score -inf (weight exactly 0) and weight 0 in BN's statistics and SH's windows: exact
    torch.testing.assert_close(fast(q, k, v, mask), fast(q, k2, v2, mask), rtol=0, atol=0)
    ka, va = leaves(k, v)
    fast(q, ka, va, mask).square().sum().backward()
    assert ka.grad.masked_select(pad.expand_as(k)).abs().max() == 0
    assert va.grad.masked_select(pad.expand_as(v)).abs().max() == 0


@pytest.mark.parametrize("name", list(CASES))
def test_fully_padded_sample_gives_zeros(name):
    fast, _ = CASES[name]
    q, k, v = leaves(*make_inputs(torch.float32))
    mask = make_mask(3, k.shape[2], "padded")
    out = fast(q, k, v, mask)
    assert torch.isfinite(out).all()
    assert out[2].abs().max() == 0
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("name", ["bn", "bn+sh", "bn-causal"])
def test_constant_keys_and_single_valid_key_are_finite(name):
    """Zero variance: eps keeps BN finite; the result then equals the reference."""
    fast, ref = CASES[name]
    q, _, v = make_inputs(torch.float64)
    k = torch.full((3, 4, 11, 8), 0.7, dtype=torch.float64)
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[:, 4] = False  # one valid key
    mask[0] = False  # all valid, all equal
    out = fast(q, k, v, mask)
    assert torch.isfinite(out).all()
    # every valid key has the same score: the output is a mean of at most 11 values, in two orders
    T.assert_close_normwise(out, ref(q, k, v, mask), T.sum_atol(torch.float64, 11, v.abs().amax().item()))


@pytest.mark.parametrize("name", ["bn", "linear-bn"])
def test_keys_without_spread_give_the_mean_of_the_values(name):
    """Equal keys normalise to x̂(k) = 0, so every kernel weighs them alike: the output is the mean value,
    whatever the (here huge, 1/√eps-scaled) queries. The plain linear formula underflows to 0 here (Φ(q̂) =
    exp(-1000)); the fast path rescales each query's features, which the ratio ignores."""
    fast, _ = CASES[name]
    q, _, v = make_inputs(torch.float64)
    q = -3 - q.abs()  # every feature negative: the case where Φ(q̂) underflows
    k = torch.full((3, 4, 11, 8), 0.7, dtype=torch.float64)
    expected = v.mean(2, keepdim=True).expand(*q.shape[:3], v.shape[-1])
    T.assert_close_normwise(fast(q, k, v, None), expected, T.sum_atol(torch.float64, 11, v.abs().amax().item()))


@pytest.mark.parametrize("name", ["sh", "bn+sh", "linear-sh"])
def test_sequence_shorter_than_factor(name):
    fast, ref = CASES[name]
    q, k, v = make_inputs(torch.float64, nq=3, nk=3)
    out = fast(q, k, v, None)
    assert out.shape == (3, 4, 3, 6) and torch.isfinite(out).all()
    expected = ref(q, k, v, None)
    T.assert_close_normwise(out, expected, atol(name, torch.float64, q, k, None, expected.abs().amax().item()), name)


@pytest.mark.parametrize("grid", [(2, 4), (2, 6)])
def test_grid_needs_its_patch_count(grid):
    """A grid that does not tile the keys after the prefix is a clear error naming grid."""
    q, k, v = make_inputs(torch.float64)
    with pytest.raises(ValueError, match=r"grid \(2, \d\) needs 1 prefix tokens and 2×\d = \d+ patch tokens, got 11"):
        F.attention(q, k, v, "sh", scales=SCALES, num_prefix_tokens=1, grid=grid)


def test_grid_windows_are_neighbouring_patches():
    """On a 4×4 grid, factor 4 pools 2×2 blocks: patches (0, 1, 4, 5) form the first window, not (0, 1, 2, 3)
    as in raster order; factor 8 pools 2×4 blocks, the top and the bottom half of the image."""
    from primaldual.functional.transforms import grid_window, pool_keys

    assert [grid_window(r) for r in (1, 2, 3, 4, 6, 8, 9, 16)] == [
        (1, 1), (1, 2), (1, 3), (2, 2), (2, 3), (2, 4), (3, 3), (4, 4)
    ]  # fmt: skip
    positions = torch.arange(16, dtype=torch.float64).view(1, 1, 16, 1)
    pooled, _, _ = pool_keys(positions, positions, None, 4, grid=(4, 4))
    assert pooled.flatten().tolist() == [2.5, 4.5, 10.5, 12.5]
    pooled, _, _ = pool_keys(positions, positions, None, 8, grid=(4, 4))
    assert pooled.flatten().tolist() == [3.5, 11.5]
    pooled, _, _ = pool_keys(positions[:, :, :15], positions[:, :, :15], None, 4, grid=(3, 5))  # borders
    assert pooled.flatten().tolist() == [3.0, 5.0, 6.5, 10.5, 12.5, 14.0]


def test_sh_with_factor_one_is_softmax():
    """Two float64 evaluations of softmax attention (SH's head runs, the plain call): each within the law."""
    q, k, v = make_inputs(torch.float64)
    expected = F.softmax_attention(q, k, v)
    bound = atol("softmax", torch.float64, q, k, None, T.output_scale(expected, v))
    T.assert_close_normwise(F.sh_attention(q, k, v, (1, 1, 1, 1)), expected, bound, "factor 1")


def test_sh_pools_keys_by_the_head_factor():
    """A head with factor N sees one key, the mean of all: its output is the mean of the values."""
    q, k, v = make_inputs(torch.float64)
    out = F.sh_attention(q, k, v, (11, 11, 11, 11))
    # one key gets weight exactly 1: the output is the pooled value, a mean of 11 values, in two orders
    expected = v.mean(2, keepdim=True).expand_as(out)
    T.assert_close_normwise(out, expected, T.sum_atol(torch.float64, 11, v.abs().amax().item()), "pooled")


def test_bn_equals_softmax_on_explicitly_normalised_inputs():
    """The shift identity: Attention-BN is softmax attention on x̂(q), x̂(k)."""
    q, k, v = make_inputs(torch.float64)
    mean = k.mean(2, keepdim=True)
    std = (k.var(2, unbiased=False, keepdim=True) + 1e-5).sqrt()
    expected = F.softmax_attention((q - mean) / std, (k - mean) / std, v)
    # two float64 evaluations of one formula, each within the law of BN's kernel inputs of the exact one
    bound = atol("bn", torch.float64, q, k, None, T.output_scale(expected, v))
    T.assert_close_normwise(F.bn_attention(q, k, v), expected, bound, "shift identity")


def test_causal_bn_does_not_see_the_future():
    q, k, v = make_inputs(torch.float64)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 6:] += 5 * torch.randn_like(k2[:, :, 6:])
    v2[:, :, 6:] += 5
    a, b = F.bn_attention(q, k, v, causal=True), F.bn_attention(q, k2, v2, causal=True)
    # not exact: the keys are shifted by the mean of all keys, future ones included (docs/numerics.md); the
    # shift cancels in the scores, up to the law's rounding with S the larger of the two problems'
    size = max(law("bn-causal", q, k, None)["size"], law("bn-causal", q, k2, None)["size"])
    bound = T.attention_atol(
        torch.float64, size, T.output_scale(a[:, :, :6], v[:, :, :6]), head_dim=8, length=11, rounded_inputs=2
    )
    T.assert_close_normwise(a[:, :, :6], b[:, :, :6], bound, "prefix")
    assert not torch.allclose(a[:, :, 6:], b[:, :, 6:])


def test_bn_statistics_are_per_sample():
    """Statistics are over the sequence of each sample, never over the batch."""
    q, k, v = make_inputs(torch.float64)
    full = F.bn_attention(q, k, v)
    bound = atol("bn", torch.float64, q, k, None, T.output_scale(full, v))  # two float64 evaluations, other shapes
    for b in range(q.shape[0]):
        alone = F.bn_attention(q[b : b + 1], k[b : b + 1], v[b : b + 1])
        T.assert_close_normwise(full[b : b + 1], alone, bound, f"sample {b}")


def test_linear_primal_equals_dual():
    """Primal ``W Φ(q)/h(q)`` (the fast path) equals the dual with the N×N kernel matrix (the reference)."""
    q, k, v = make_inputs(torch.float64, nq=40, nk=40)
    expected = R.linear_attention(q, k, v)
    bound = atol("linear", torch.float64, q, k, None, expected.abs().amax().item())
    T.assert_close_normwise(F.linear_attention(q, k, v), expected, bound, "primal vs dual")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["softmax", "bn", "sh", "bn+sh", "linear", "linear-bn"])
def test_low_precision_close_to_float64_reference(name, dtype):
    fast, ref = CASES[name]
    q, k, v = (t.to(dtype) for t in make_inputs(torch.float64))
    mask = make_mask(3, 11, "padded")
    out = fast(q, k, v, mask)
    assert out.dtype == dtype and torch.isfinite(out).all()
    expected = ref(q.double(), k.double(), v.double(), mask)
    T.assert_close_normwise(out, expected, atol(name, dtype, q, k, mask, expected.abs().amax().item()), str(dtype))


def test_default_scales():
    assert F.default_scales(2) == (1, 2)
    assert F.default_scales(8) == (1, 2, 4, 8, 1, 2, 4, 8)


@pytest.mark.parametrize(
    "nq, nk, window, causal",
    [(150, 150, 3, False), (150, 150, 3, True), (200, 200, 20, True), (97, 160, 7, False), (160, 97, 0, False)],
)
def test_sliding_window_blocks_match_reference(nq, nk, window, causal):
    """Long sequences take the blocked band path (keys >> block + 2·window); it must equal the formula."""
    q, k, v = make_inputs(torch.float64, batch=2, heads=2, nq=nq, nk=nk)
    mask = torch.zeros(2, nk, dtype=torch.bool)
    mask[0, nk - 40 :] = True
    mask[1, 5:50] = True
    qa, ka, va = leaves(q, k, v)
    qb, kb, vb = leaves(q, k, v)
    fast = F.attention(qa, ka, va, "sparse", window=window, key_padding_mask=mask, causal=causal)
    ref = R.softmax_attention(qb, kb, vb, mask, window=window, causal=causal)
    law = T.variant_law("sparse", q, k, mask, window=window, causal=causal)  # S over the band's pairs
    score = law.pop("size")
    T.assert_close_normwise(fast, ref, T.attention_atol(torch.float64, score, ref.abs().amax().item(), **law), "output")
    fast.square().sum().backward()
    ref.square().sum().backward()
    for a, b in ((qa, qb), (ka, kb), (va, vb)):
        atol = T.attention_atol(torch.float64, score, T.gradient_scale(b.grad, 2 * ref, v), **law)
        T.assert_close_normwise(a.grad, b.grad, atol, "gradient")
