"""Hostile inputs to the attention layers: the behaviour documented in docs/numerics.md.

NaN and Inf (in valid and padded positions), magnitudes 1e-4..1e4 in float32 and bfloat16, empty batches,
sequences of length 1, rows whose keys are all padding, huge SH factors, mismatched dtypes and devices, bad
options; and property-based tests (hypothesis) over shapes, masks, factors, windows, causality and dtypes:
finite, within the values' range, equal to the reference formulas, blind to what padding holds.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from primaldual import Attention
from primaldual import functional as F
from primaldual.functional import reference as R
from primaldual.functional.variants import check_inputs
from primaldual.models import SequenceClassifier
from tests import tolerances as T

VARIANTS = tuple(F.VARIANTS)
LINEAR = tuple(v for v in VARIANTS if F.get_variant(v).kernel == "linear")
CAUSAL = ("softmax", "sparse", "bn")

# the plain formulas of each variant (linear-bn+sh has none of its own in reference.py)
REFERENCE = {
    "softmax": lambda q, k, v, m, s, w, c: R.softmax_attention(q, k, v, m, causal=c),
    "linear": lambda q, k, v, m, s, w, c: R.linear_attention(q, k, v, m),
    "sparse": lambda q, k, v, m, s, w, c: R.softmax_attention(q, k, v, m, causal=c, window=w),
    "bn": lambda q, k, v, m, s, w, c: R.bn_attention(q, k, v, m, causal=c),
    "sh": lambda q, k, v, m, s, w, c: R.sh_attention(q, k, v, s, m),
    "bn+sh": lambda q, k, v, m, s, w, c: R.bn_sh_attention(q, k, v, s, m),
    "linear-bn": lambda q, k, v, m, s, w, c: R.linear_bn_attention(q, k, v, m),
    "linear-sh": lambda q, k, v, m, s, w, c: R.linear_sh_attention(q, k, v, s, m),
}


def reference_atol(variant: str, q, k, expected, v, mask=None, **options) -> float:
    """The error law of tests/tolerances.py for ``variant`` on this problem: the fast path in q's dtype against
    the float64 reference, S the size of the kernel's terms (BN's shifted and scaled inputs, pooled keys), scaled
    by the output's terms (max |v|)."""
    law = T.variant_law(variant, q, k, mask, **options)
    return T.attention_atol(q.dtype, law.pop("size"), T.output_scale(expected, v), **law)


def options(variant: str, heads: int, scales=None) -> dict:
    """The options ``variant`` needs: factors 1, 2, ... per head (or ``scales``), a window of half-width 1."""
    spec = F.get_variant(variant)
    if spec.pooled:
        return {"scales": scales or tuple(range(1, heads + 1))}
    return {"window": 1} if spec.windowed else {}


def tensors(b=2, h=2, nq=6, nk=6, d=4, *, scale=1.0, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = ((torch.randn(b, h, n, d, generator=g, dtype=torch.float64) * scale).to(dtype) for n in (nq, nk))
    return q, k, torch.randn(b, h, nk, d, generator=g, dtype=torch.float64).to(dtype)


def padding(b=2, n=6, padded=(4, 5)) -> torch.Tensor:
    """Sample 0 has ``padded`` positions padded; the others none."""
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask[0, list(padded)] = True
    return mask


# ---- property-based ------------------------------------------------------------------------------------


@st.composite
def problems(draw, variants=tuple(REFERENCE)):
    """A variant, q, k, v, mask, scales, window, causal."""
    variant = draw(st.sampled_from(variants))
    spec = F.get_variant(variant)
    dtype = draw(st.sampled_from([torch.float64, torch.float32, torch.bfloat16]))
    # the plain formula's Φ = elu(x) + 1 cancels for negative features: moderate sizes keep the reference exact
    if spec.kernel == "linear":
        scale = draw(st.sampled_from([1e-4, 1.0] if dtype == torch.bfloat16 else [1e-4, 1.0, 3.0]))
    else:
        scale = draw(st.sampled_from([1e-4, 1.0, 10.0, 1e4]))
    b, h, d = draw(st.integers(0, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 5))
    causal = variant in CAUSAL and draw(st.booleans())
    nk = draw(st.integers(1, 9))
    nq = nk if causal or spec.windowed else draw(st.integers(1, 9))
    q, k, v = tensors(b, h, nq, nk, d, scale=scale, dtype=dtype, seed=draw(st.integers(0, 2**16)))
    flags = draw(st.one_of(st.none(), st.lists(st.booleans(), min_size=b * nk, max_size=b * nk)))
    mask = None if flags is None else torch.tensor(flags, dtype=torch.bool).view(b, nk)
    scales = tuple(draw(st.lists(st.integers(1, 12), min_size=h, max_size=h)))  # factors beyond nk included
    window = draw(st.integers(0, 4))
    return variant, q, k, v, mask, scales, window, causal


def bn_features(q, k, mask, scales=None, causal=False, eps=1e-5):
    """The reference's x̂(q) = (q - μ)/s (float64) for each sample and head (and query, when causal) that sees
    valid keys, μ and s of those keys (pooled by ``scales[h]`` when given; ``j <= i`` when causal); and those
    keys as the fused kernel sees them, ``(k - m)/s`` with m the mean of all valid keys (= μ unless causal)."""
    q, k = q.double(), k.double()
    for b in range(q.shape[0]):
        valid = torch.ones(k.shape[2], dtype=torch.bool) if mask is None else ~mask[b]
        for h in range(q.shape[1]):
            keys, keep = (k[b, h], valid) if scales is None else R.pool(k[b, h], valid, scales[h])
            centre = keys[keep].mean(0) if keep.any() else 0.0
            rows = (
                [(q[b, h, i : i + 1], keep & (torch.arange(len(keep)) <= i)) for i in range(q.shape[2])]
                if causal
                else [(q[b, h], keep)]
            )
            for queries, visible in rows:
                if visible.any():
                    mean, std = R.key_statistics(keys, visible, eps)
                    yield (queries - mean) / std, (keys[visible] - centre) / std


def run(variant, q, k, v, mask, scales, window, causal):
    spec = F.get_variant(variant)
    return F.attention(
        q,
        k,
        v,
        variant,
        key_padding_mask=mask,
        scales=scales if spec.pooled else None,
        window=window if spec.windowed else None,
        causal=causal,
    )


@pytest.mark.parametrize("variant", ["linear-bn", "linear-bn+sh"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_linear_bn_with_one_valid_key_gives_its_value(variant, dtype) -> None:
    """x̂(q) of a query far from the single key's mean is about ±1e3, beyond exp's range; Φ's rescale keeps the
    answer exact: the one key's value (hypothesis found it: the plain formula gives 0 there)."""
    q = torch.tensor([1.5410, -0.2934, -3.0], dtype=dtype).view(3, 1, 1, 1)
    k = torch.tensor([-2.1788, 0.5684, 3.0], dtype=dtype).view(3, 1, 1, 1)
    v = torch.tensor([-1.0845, -1.3986, 2.5], dtype=dtype).view(3, 1, 1, 1)
    out = F.attention(q, k, v, variant, scales=(1,) if "sh" in variant else None)
    # one key: weight 1 whatever Φ, so only the ratio Φv/Φ and the output round (the law with S = 0)
    T.assert_close_normwise(out, v, T.attention_atol(dtype, 0.0, v.abs().amax().item(), head_dim=1, length=2))
    masked = F.attention(
        q.expand(3, 1, 2, 1),
        torch.cat((k, k + 1), 2),
        torch.cat((v, v + 1), 2),
        variant,
        key_padding_mask=torch.tensor([[False, True]] * 3),
        scales=(1,) if "sh" in variant else None,
    )
    T.assert_close_normwise(
        masked, v.expand(3, 1, 2, 1), T.attention_atol(dtype, 0.0, v.abs().amax().item() + 1, head_dim=1, length=2)
    )


def test_linear_bn_with_two_close_keys_equals_the_reference_and_the_formula() -> None:
    """Two valid keys 0.013 apart put a far query at x̂(q) ≈ -305: exp(x̂(q)) - 1 + 1 is exactly 0 in float64, so
    ``Φ = elu + 1`` must be evaluated without that cancellation (hypothesis found it: the reference gave 0). With
    one feature Φ(x̂(q)) cancels: the answer is ``Σ_j Φ(x̂(k_j)) v_j / Σ_j Φ(x̂(k_j))`` over the valid keys."""
    q = torch.tensor([-1.0464], dtype=torch.float64).view(1, 1, 1, 1)
    k = torch.tensor([-0.9469, 0.9028, 0.7132, 0.6772, 0.9156], dtype=torch.float64).view(1, 1, 5, 1)
    v = torch.tensor([2.1500, -0.3695, 1.7050, 1.5316, 0.8941], dtype=torch.float64).view(1, 1, 5, 1)
    mask = torch.tensor([[True, False, True, True, False]])
    mean, std = R.key_statistics(k[0, 0], ~mask[0], 1e-5)
    phi_k = R.elu_feature_map((k[0, 0, [1, 4]] - mean) / std)
    formula = (phi_k * v[0, 0, [1, 4]]).sum() / phi_k.sum()
    # the law in float64 with S = max |x̂| ≈ 305 (Φ = exp(x̂) turns eps·|x̂| into a relative error of Φ)
    atol = reference_atol("linear-bn", q, k, formula.view(1, 1, 1, 1), v, mask)
    T.assert_close_normwise(R.linear_bn_attention(q, k, v, mask), formula.view(1, 1, 1, 1), atol, "reference")
    T.assert_close_normwise(
        F.attention(q, k, v, "linear-bn", key_padding_mask=mask), formula.view(1, 1, 1, 1), atol, "fast path"
    )


@settings(max_examples=150, deadline=None)
@given(problems())
def test_random_problems_are_finite_bounded_and_equal_the_reference(problem) -> None:
    variant, q, k, v, mask, scales, window, causal = problem
    spec = F.get_variant(variant)
    if spec.bn and spec.kernel == "linear":
        # keys of (near) zero variance (one valid key: s² = eps) put a far query at x̂(q) = (q - μ)/s below
        # float64's normal range, where the reference's Φ(x̂(q)) = exp(x̂(q)) underflows and gives 0/0; the
        # layer rescales Φ(q) and gives the answer (tested above)
        features = bn_features(q, k, mask, scales if spec.pooled else None, causal)
        assume(all(bool((xq.amax(-1) >= -650).all()) for xq, _ in features))
    out = run(*problem)
    assert out.shape == (*q.shape[:3], v.shape[-1]) and out.dtype == q.dtype
    assert torch.isfinite(out).all()
    largest = v.double().abs().amax().item() if v.numel() else 0.0
    # every variant averages values with non-negative weights: no output leaves their range, up to the rounding
    # of a convex combination (whatever the weights' error)
    if out.numel():
        assert out.double().abs().amax().item() <= largest + T.range_atol(q.dtype, k.shape[2] + q.shape[-1], largest)
    expected = REFERENCE[variant](q.double(), k.double(), v.double(), mask, scales, window, causal)
    # the error law (tests/tolerances.py): S is the size of the kernel's terms, which nearly constant key
    # features make large for BN (and, causal, a prefix far from the mean of all keys)
    atol = reference_atol(variant, q, k, expected, v, mask, scales=scales, window=window, causal=causal)
    T.assert_close_normwise(out, expected, atol, variant)


@settings(max_examples=100, deadline=None)
@given(problems(variants=VARIANTS), st.sampled_from([1.0, 1e4]), st.integers(0, 2**16))
def test_values_at_padded_positions_do_not_reach_the_outputs(problem, size, seed) -> None:
    """Mask invariance: any finite keys and values at padded positions, the same outputs."""
    variant, q, k, v, mask, scales, window, causal = problem
    if mask is None:
        return
    g = torch.Generator().manual_seed(seed)
    padded = mask[:, None, :, None]
    other_k, other_v = ((torch.randn(t.shape, generator=g, dtype=torch.float64) * size).to(t.dtype) for t in (k, v))
    out = run(variant, q, k, v, mask, scales, window, causal)
    changed = run(
        variant, q, torch.where(padded, other_k, k), torch.where(padded, other_v, v), mask, scales, window, causal
    )
    # exact: a padded key enters only as a -inf score or times an exact 0 weight (BN's statistics, SH's windows,
    # the linear kernel's sums), and x·0 = 0, 0 + y = y: the same operations on the same numbers
    torch.testing.assert_close(changed, out, rtol=0, atol=0)


# ---- NaN and Inf ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "where, value",
    [
        ("query", math.nan),
        ("key", math.nan),
        ("value", math.nan),
        ("padded key", math.nan),
        ("padded value", math.nan),
        ("padded key", math.inf),
        ("padded key", -math.inf),
        ("padded value", math.inf),
    ],
)
@pytest.mark.parametrize("variant", VARIANTS)
def test_non_finite_values_propagate_within_their_sample_and_head_never_to_a_wrong_number(
    variant: str, where: str, value: float
) -> None:
    q, k, v = tensors()
    mask = padding()
    clean = F.attention(q, k, v, variant, key_padding_mask=mask, **options(variant, 2))
    target = {"query": q, "key": k, "value": v, "padded key": k, "padded value": v}[where]
    target[0, 1, 5 if where.startswith("padded") else 1, 0] = value  # sample 0, head 1
    out = F.attention(q, k, v, variant, key_padding_mask=mask, **options(variant, 2))
    reached = torch.zeros_like(out, dtype=torch.bool)
    reached[0, 1] = True
    assert torch.equal(out[~reached], clean[~reached])  # other samples and heads untouched
    hit = out[reached]
    assert (torch.isnan(hit) | (hit == clean[reached])).all()  # NaN or the clean value, never another number
    if not where.startswith("padded"):
        assert torch.isnan(out[0, 1, 1] if where == "query" else out[0, 1]).any()


@pytest.mark.parametrize("variant", VARIANTS)
def test_rows_without_valid_keys_return_zero_with_finite_gradients(variant: str) -> None:
    q, k, v = (t.requires_grad_() for t in tensors())
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0] = True  # sample 0: every key padding
    out = F.attention(q, k, v, variant, key_padding_mask=mask, **options(variant, 2))
    assert (out[0] == 0).all() and torch.isfinite(out[1]).all() and (out[1] != 0).any()
    (out.square().sum() + out.sum()).backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    nan_query = q.detach().clone()
    nan_query[0, 0, 2] = math.nan  # a NaN query without keys: 0, or NaN under the linear kernel
    row = F.attention(nan_query, k.detach(), v.detach(), variant, key_padding_mask=mask, **options(variant, 2))[0, 0, 2]
    assert torch.isnan(row).all() if variant in LINEAR else (row == 0).all()


# ---- magnitudes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("variant", VARIANTS)
def test_magnitude_1e4_stays_finite_and_equals_the_reference(variant: str, dtype: torch.dtype) -> None:
    """Softmax kernels subtract the row maximum, BN takes float32 statistics: exact to rounding. The linear
    kernel stays finite and within the values' range."""
    q, k, v = tensors(scale=1e4, dtype=dtype, seed=3)
    mask = padding()
    for causal in (False, True) if variant in CAUSAL else (False,):
        out = F.attention(q, k, v, variant, key_padding_mask=mask, causal=causal, **options(variant, 2))
        largest = v.double().abs().amax().item()
        assert torch.isfinite(out).all()
        assert out.double().abs().amax() <= largest + T.range_atol(dtype, k.shape[2] + k.shape[-1], largest)
        if variant in REFERENCE and variant not in LINEAR:
            opts = options(variant, 2)
            expected = REFERENCE[variant](
                q.double(), k.double(), v.double(), mask, opts.get("scales"), opts.get("window"), causal
            )
            # the law: BN's normalised scores keep S of order 1; softmax and SH see scores of about 1e8, which
            # float32 rounds by units, and the law then bounds nothing beyond the range checked above
            atol = reference_atol(variant, q, k, expected, v, mask, causal=causal, **opts)
            T.assert_close_normwise(out, expected, atol, f"{variant} causal={causal}")


def test_causal_bn_of_a_tight_prefix_far_from_the_mean_of_all_keys() -> None:
    """Row 1 is fitted on keys 10000 and 10003 (variance 2.25), the mean of all keys is -3333: prefix sums
    shifted by it give the variance as E[y²] - E[y]² ≈ 1.78e8 - 1.78e8, which float32 gets as 0 (an output
    error of 1.9e-2, 4 times the bound below); the statistics are accumulated in float64, so the float32 output
    equals the reference to float32 rounding.

    The law of tests/tolerances.py, with the terms this problem rounds: q, k and row 1's μ = 10001.5 are exact
    in float32 and s² = 2.25 + eps is rounded once, so the query side is |q - μ|/s² alone
    (the general law's β|μ| counts μ's rounding), against |k - m|; the other rows see keys of spread 1e4, whose S
    is small."""
    k = torch.tensor([10000.0, 10003.0, -10000.0, -10003.0, -10001.5, -9998.5]).view(1, 1, 6, 1)
    q = torch.full_like(k, 10001.5 + 1.5 * 1.5)  # x̂(q) = 1.5 against row 1's keys, x̂(k) = ∓1
    v = torch.linspace(-1.0, 1.0, 6).view(1, 1, 6, 1)
    out = F.attention(q, k, v, "bn", causal=True)
    expected = R.bn_attention(q.double(), k.double(), v.double(), causal=True)
    keys = k[0, 0].double()
    size = 0.0
    for i in range(1, 6):  # row 0 sees one key: its value
        mean, std = R.key_statistics(keys[: i + 1], torch.ones(i + 1, dtype=torch.bool), 1e-5)
        size = max(
            size,
            T.score_size((q[0, 0, i : i + 1].double() - mean).abs() / std**2, (keys[: i + 1] - keys.mean(0)).abs()),
        )
    atol = T.attention_atol(torch.float32, size, 1.0, head_dim=1, length=6, rounded_inputs=2)
    T.assert_close_normwise(out, expected, atol, "tight prefix")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("variant", [v for v in VARIANTS if F.get_variant(v).bn])
def test_bn_of_keys_with_a_huge_offset_and_no_spread(variant: str, dtype: torch.dtype) -> None:
    """Keys all equal to 1e4: variance 0, so eps alone scales; every valid key then has the same score and
    the output is the mean of the valid values."""
    q, _, v = tensors(dtype=dtype)
    k = torch.full_like(q, 1e4)
    mask = padding()
    out = F.attention(q, k, v, variant, key_padding_mask=mask, **options(variant, 2, scales=(1, 1)))
    valid = (~mask)[:, None, :, None].to(torch.float64)
    mean = (v.double() * valid).sum(2, keepdim=True) / valid.sum(2, keepdim=True)
    # the law with S of these keys (0: k - m vanishes) scaled by max |v|: a mean of at most 6 values, rounded once
    atol = reference_atol(variant, q, k, mean, v, mask, **options(variant, 2, scales=(1, 1)))
    T.assert_close_normwise(out, mean.expand_as(out), atol, variant)


@pytest.mark.parametrize("variant", [v for v in VARIANTS if F.get_variant(v).pooled])
def test_sh_factor_far_beyond_the_sequence_pools_it_into_one_key(variant: str) -> None:
    """A factor of 10^12 on 6 keys would pad the keys to 10^12 positions (terabytes); it is the factor 6."""
    q, k, v = tensors()
    mask = padding()
    huge = F.attention(q, k, v, variant, key_padding_mask=mask, scales=(1, 10**12))
    torch.testing.assert_close(
        huge, F.attention(q, k, v, variant, key_padding_mask=mask, scales=(1, 6)), rtol=0, atol=0
    )
    torch.testing.assert_close(
        F.attention_weights(q, k, variant, key_padding_mask=mask, scales=(1, 10**12)),
        F.attention_weights(q, k, variant, key_padding_mask=mask, scales=(1, 6)),
        rtol=0,
        atol=0,
    )
    options = F.AttentionOptions(variant, scales=(1, 10**12), num_prefix_tokens=2)
    assert check_inputs(options, q, k, v, mask) == (1, 4)  # 6 keys, 2 of them unpooled


# ---- shapes --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("b, nq, nk", [(0, 5, 5), (3, 1, 1), (2, 0, 4), (0, 0, 0), (2, 1, 5), (2, 5, 1)])
@pytest.mark.parametrize("variant", VARIANTS)
def test_empty_batches_no_queries_and_length_one(variant: str, b: int, nq: int, nk: int) -> None:
    q, k, v = tensors(b, 2, nq, nk)
    for mask in (None, torch.zeros(b, nk, dtype=torch.bool), torch.ones(b, nk, dtype=torch.bool)):
        for causal in (False, True) if variant in CAUSAL and nq == nk else (False,):
            out = F.attention(q, k, v, variant, key_padding_mask=mask, causal=causal, **options(variant, 2))
            assert out.shape == (b, 2, nq, 4) and torch.isfinite(out).all()
            if mask is not None and mask.all():
                assert (out == 0).all()
            elif nk == 1 and not F.get_variant(variant).windowed:
                # one key: its value, whatever the query (weight 1: the law with S = 0)
                atol = T.attention_atol(q.dtype, 0.0, v.abs().amax().item() if v.numel() else 0.0, head_dim=4, length=1)
                T.assert_close_normwise(out, v.expand_as(out), atol, "one key")


# ---- mismatched arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda q, k, v, m: (q, k.bfloat16(), v, m), TypeError, r"q, k, v must share a dtype"),
        (lambda q, k, v, m: (q.double(), k, v, m), TypeError, r"q, k, v must share a dtype"),
        (lambda q, k, v, m: (q, k.to("meta"), v, m), ValueError, r"q, k, v must be on one device"),
        (lambda q, k, v, m: (q, k, v, m.to("meta")), ValueError, r"key_padding_mask must be on cpu like k"),
        (lambda q, k, v, m: (q, k, v, m.to(torch.uint8)), TypeError, r"key_padding_mask must have dtype torch.bool"),
        (lambda q, k, v, m: (q, k, v, m.float()), TypeError, r"key_padding_mask must have dtype torch.bool"),
        (lambda q, k, v, m: (q, k, v, m[:, :5]), ValueError, r"key_padding_mask must have shape"),
        (lambda q, k, v, m: (q.int(), k.int(), v.int(), m), TypeError, r"q must be a floating-point tensor"),
    ],
)
@pytest.mark.parametrize("variant", VARIANTS)
def test_mismatched_dtypes_devices_and_masks_are_named(variant: str, change, error: type, message: str) -> None:
    """Checked before any computation, by the outputs and by the explicit weights alike (no device is needed:
    the meta device stands for another one)."""
    q, k, v, mask = change(*tensors(), padding())
    with pytest.raises(error, match=message):
        F.attention(q, k, v, variant, key_padding_mask=mask, **options(variant, 2))
    with pytest.raises(error, match=message):
        F.attention_weights(q, k, variant, key_padding_mask=mask, **options(variant, 2))
    with pytest.raises(ValueError, match=r"q, k, v must be on one device"):
        F.attention(*tensors()[:2], tensors()[2].to("meta"), variant, **options(variant, 2))


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("eps", math.inf, "eps must be finite"),
        ("eps", math.nan, "eps must be > 0"),
        ("eps", 0.0, "eps must be > 0"),
        ("mean_weight", math.nan, "mean_weight must be finite"),
        ("dropout_p", -0.1, r"dropout_p must be in \[0, 1\]"),
        ("dropout_p", 1.5, r"dropout_p must be in \[0, 1\]"),
        ("dropout_p", math.nan, r"dropout_p must be in \[0, 1\]"),
    ],
)
@pytest.mark.parametrize("variant", ["bn", "linear-bn", "bn+sh"])
def test_non_finite_or_out_of_range_options_are_named(variant: str, option: str, value: float, message: str) -> None:
    q, k, v = tensors()
    with pytest.raises(ValueError, match=message):
        F.attention(q, k, v, variant, **options(variant, 2), **{option: value})


# ---- the layers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_models_ignore_whatever_padded_steps_hold(variant: str) -> None:
    """The classifier zeroes padded steps before the first layer: NaN, Inf or 1e30 there change nothing."""
    torch.manual_seed(0)
    model = SequenceClassifier(
        3, 4, 8, d_model=8, depth=1, num_heads=2, dropout=0.0, attention=variant, attention_options=options(variant, 2)
    ).eval()
    x = torch.randn(3, 8, 3)
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[0, 5:] = True
    mask[2] = True  # nothing valid: pooled to 0, the head's bias
    logits = model(x, mask)
    assert torch.isfinite(logits).all()
    for junk in (math.nan, math.inf, -math.inf, 1e30):
        torch.testing.assert_close(model(x.masked_fill(mask[..., None], junk), mask), logits, rtol=0, atol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_layers_take_empty_batches_and_single_steps(variant: str) -> None:
    layer = Attention(8, 2, variant=variant, **options(variant, 2))
    model = SequenceClassifier(
        3, 4, 8, d_model=8, depth=1, num_heads=2, attention=variant, attention_options=options(variant, 2)
    ).eval()
    for b, n in ((0, 5), (2, 1)):
        out = layer(torch.randn(b, n, 8), key_padding_mask=torch.zeros(b, n, dtype=torch.bool))
        assert out.shape == (b, n, 8) and torch.isfinite(out).all()
        logits = model(torch.randn(b, n, 3), torch.zeros(b, n, dtype=torch.bool))
        assert logits.shape == (b, 4) and torch.isfinite(logits).all()


def test_one_enormous_sequence_cannot_blow_up_the_padded_split(tmp_path, monkeypatch) -> None:
    """Padding to the longest sequence is refused, naming the file, beyond MAX_PADDED_VALUES values."""
    from primaldual.data import sequences
    from primaldual.data.listops import read_listops_tsv

    path = tmp_path / "basic_train.tsv"
    path.write_text("Source\tTarget\n" + "[MAX 1 2 ]\t2\n" * 50 + "[SM " + "1 " * 5000 + "]\t0\n")
    monkeypatch.setattr(sequences, "MAX_PADDED_VALUES", 100_000)  # 51 x 5002 tokens would exceed it
    with pytest.raises(ValueError, match=rf"{path}: padding 51 sequences to the longest, 5002 steps"):
        read_listops_tsv(path)
