"""The causal form of every variant (SPEC section 5) against the plain formula, forward and backward.

``reference.causal_attention`` fits each query's SVR on its training set, built by the definition one query at a
time (``reference.causal_training_set``); the fast paths of ``functional.causal`` (and the unpooled causal
softmax and BN) must equal it within the error law of tests/tolerances.py, with the queries at the last
positions (a KV cache), padding on either side, prefix tokens, windows longer than the sequence."""

import pytest
import torch

from primaldual import functional as F
from primaldual.functional import reference as R
from tests import tolerances as T

VARIANTS = list(F.VARIANTS)
SCALES = (1, 2, 3, 4)


def settings(variant, **extra):
    spec = F.VARIANTS[variant]
    options = dict(causal=True, **extra)
    if spec.pooled:
        options["scales"] = SCALES
    if spec.windowed:
        options["window"] = 2
    return options


def reference(q, k, v, variant, mask, options):
    kept = {key: value for key, value in options.items() if key != "causal"}
    return R.causal_attention(q, k, v, variant, mask, **kept)


def make(dtype, nq=11, nk=11, seed=0, batch=4, heads=4, dim=6, dv=5):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, nq, dim, generator=g, dtype=dtype)
    k = torch.randn(batch, heads, nk, dim, generator=g, dtype=dtype)
    v = torch.randn(batch, heads, nk, dv, generator=g, dtype=dtype)
    return q, k, v


def padding(kind, batch, nk, prefix=0):
    """None; right padding; left padding after the prefix (sample 3 fully padded); both and in between."""
    if kind == "none":
        return None
    m = torch.zeros(batch, nk, dtype=torch.bool)
    if kind == "right":
        m[0, nk - 3 :], m[1, nk - 1 :] = True, True
    elif kind == "left":
        m[0, prefix : prefix + 3], m[1, prefix : prefix + 1], m[3] = True, True, True
    else:
        m[0, prefix : prefix + 2], m[0, nk - 2 :], m[1, 5], m[2, prefix + 1 :: 3] = True, True, True, True
    return m


def query_rows(mask, nq, nk):
    """``(B, 1, Nq, 1)``: the queries at valid positions (a padded query's output is unspecified, finite)."""
    if mask is None:
        return torch.ones(1, 1, nq, 1, dtype=torch.bool)
    return ~mask[:, None, nk - nq :, None]


def check(variant, dtype, nq, nk, mask_kind, prefix=0, seed=0):
    options = settings(variant, num_prefix_tokens=prefix)
    q, k, v = make(dtype, nq, nk, seed)
    mask = padding(mask_kind, q.shape[0], nk, prefix)
    rows = query_rows(mask, nq, nk)
    weight = torch.randn(*q.shape[:3], v.shape[-1], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    weight = weight * rows  # the loss reads valid queries only
    qa, ka, va = (t.clone().requires_grad_() for t in (q, k, v))
    qb, kb, vb = (t.double().clone().requires_grad_() for t in (q, k, v))
    out = F.attention(qa, ka, va, variant, key_padding_mask=mask, **options)
    expected = reference(qb, kb, vb, variant, mask, options)
    assert torch.isfinite(out).all()
    (out * weight.to(dtype)).sum().backward()
    (expected * weight).sum().backward()
    law = T.causal_law(variant, q, k, mask, **options)
    size = law.pop("size")
    bound = T.attention_atol(dtype, size, T.output_scale(expected, v), **law)
    T.assert_close_normwise(out * rows, expected * rows, bound, f"{variant} output")
    for name, a, b in (("q", qa, qb), ("k", ka, kb), ("v", va, vb)):
        assert torch.isfinite(a.grad).all(), name
        order = 2 if F.VARIANTS[variant].bn and name == "k" else 1
        bound = T.attention_atol(dtype, size, T.gradient_scale(b.grad, weight, v), order=order, **law)
        T.assert_close_normwise(a.grad, b.grad, bound, f"{variant} gradient of {name}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mask_kind", ["none", "right", "left", "mixed"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_causal_form_matches_reference(variant, mask_kind, dtype):
    check(variant, dtype, 11, 11, mask_kind)


@pytest.mark.parametrize("nq", [1, 4])
@pytest.mark.parametrize("variant", VARIANTS)
def test_queries_after_a_cache_match_reference(variant, nq):
    """Queries at the last positions of longer keys (new tokens after a KV cache), left-padded."""
    check(variant, torch.float64, nq, 11, "left")


@pytest.mark.parametrize("mask_kind", ["none", "left", "mixed"])
@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "sparse"])
def test_prefix_tokens_match_reference(variant, mask_kind):
    check(variant, torch.float64, 11, 11, mask_kind, prefix=2)


@pytest.mark.parametrize("variant", [v for v in VARIANTS if F.VARIANTS[v].pooled])
def test_sequence_shorter_than_a_factor(variant):
    check(variant, torch.float64, 3, 3, "none")
    check(variant, torch.float64, 2, 2, "left")


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_output_moves_when_later_tokens_change(variant):
    """Query i's output depends on keys and values j <= i only: changing the tokens after position t leaves
    every output up to t exactly as it was, and their gradient w.r.t. later tokens is exactly 0."""
    q, k, v = make(torch.float64, 12, 12)
    mask = padding("left", 4, 12)
    options = settings(variant)
    out = F.attention(q, k, v, variant, key_padding_mask=mask, **options)
    bound = exact_unless_bn(variant, q, mask, options)
    for t in (0, 4, 7):
        k2, v2, q2 = k.clone(), v.clone(), q.clone()
        k2[:, :, t + 1 :] += torch.randn_like(k2[:, :, t + 1 :]) * 5
        v2[:, :, t + 1 :] += 3.0
        q2[:, :, t + 1 :] -= 2.0
        moved = F.attention(q2, k2, v2, variant, key_padding_mask=mask, **options)
        # two evaluations, each within the law of its own inputs
        atol = bound(k, v) + bound(k2, v2)
        T.assert_close_normwise(moved[:, :, : t + 1], out[:, :, : t + 1], atol, f"after {t}")
    ka, va = k.clone().requires_grad_(), v.clone().requires_grad_()
    F.attention(q, ka, va, variant, key_padding_mask=mask, **options)[:, :, :5].sum().backward()
    assert va.grad[:, :, 5:].abs().max() == 0
    assert ka.grad[:, :, 5:].abs().max() <= bound(k, v)


def exact_unless_bn(variant, q, mask, options):
    """0, or for BN the rounding of its centre: BN centres keys on the mean of all valid keys (a constant that
    softmax ignores, chosen for precision), so a later token moves the outputs by rounding only."""

    def bound(k, v):
        if not F.VARIANTS[variant].bn:
            return 0.0
        law = T.causal_law(variant, q, k, mask, **options)
        return T.attention_atol(torch.float64, law.pop("size"), T.output_scale(v, v), **law)

    return bound


@pytest.mark.parametrize("variant", VARIANTS)
def test_left_padding_moves_nothing(variant):
    """A sequence left-padded by any amount gives, at its tokens, what it gives alone (SH's windows start at
    the first valid key)."""
    q, k, v = make(torch.float64, 9, 9, batch=1)
    options = settings(variant)
    alone = F.attention(q, k, v, variant, **options)
    for pad in (1, 2, 5):
        mask = torch.zeros(1, 9 + pad, dtype=torch.bool)
        mask[:, :pad] = True
        padded = F.attention(*(left_pad(t, pad) for t in (q, k, v)), variant, key_padding_mask=mask, **options)
        bound = T.sum_atol(torch.float64, 9 * 4, max(1.0, alone.abs().amax().item()))
        T.assert_close_normwise(padded[:, :, pad:], alone, bound, f"left padding {pad}")


def left_pad(t, pad):
    """t ``(B, H, N, D)`` after ``pad`` random positions."""
    return torch.cat((torch.randn(*t.shape[:2], pad, t.shape[3], dtype=t.dtype), t), 2)


@pytest.mark.parametrize("variant", VARIANTS)
def test_fully_padded_rows_are_finite_and_zero(variant):
    q, k, v = (t.requires_grad_() for t in make(torch.float32, 11, 11))
    mask = padding("left", 4, 11)  # sample 3 fully padded
    out = F.attention(q, k, v, variant, key_padding_mask=mask, **settings(variant))
    assert torch.isfinite(out).all() and out[3].abs().max() == 0
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("variant", VARIANTS)
def test_causal_sh_with_factor_one_and_equal_factors(variant):
    """Factor 1 is the unpooled causal form exactly; a head's first query sees its own key alone."""
    spec = F.VARIANTS[variant]
    q, k, v = make(torch.float64, 10, 10)
    out = F.attention(q, k, v, variant, **settings(variant))
    T.assert_close_normwise(out[:, :, 0], v[:, :, 0], T.sum_atol(torch.float64, 1, v.abs().amax().item()), "first")
    if spec.pooled:
        plain = {"sh": "softmax", "bn+sh": "bn", "linear-sh": "linear", "linear-bn+sh": "linear-bn"}[variant]
        ones = F.attention(q, k, v, variant, causal=True, scales=(1, 1, 1, 1))
        expected = F.attention(q, k, v, plain, causal=True)
        law = T.causal_law(plain, q, k)
        T.assert_close_normwise(
            ones,
            expected,
            T.attention_atol(torch.float64, law.pop("size"), 1.0 + v.abs().amax().item(), **law),
            "factor 1",
        )


@pytest.mark.parametrize("variant", ["sh", "bn+sh", "linear", "linear-sh", "linear-bn", "linear-bn+sh"])
def test_gradcheck(variant):
    q, k, v = make(torch.float64, 5, 5, batch=2, heads=4, dim=3, dv=2)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[1, 0] = True
    options = F.AttentionOptions(variant, **settings(variant))
    fn = lambda q, k, v: F.attention(q, k, v, options, key_padding_mask=mask)[1:, :, 1:]  # noqa: E731
    inputs = tuple(t.requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradcheck(lambda q, k, v: F.attention(q, k, v, options)[:1], inputs)


@pytest.mark.parametrize("variant", VARIANTS)
def test_grouped_query_keys(variant):
    """Two key heads read by four query heads: the same as the keys repeated."""
    q, k, v = make(torch.float64, 8, 8)
    k2, v2 = k[:, :2], v[:, :2]
    mask = padding("mixed", 4, 8)
    options = settings(variant)
    grouped = F.attention(q, k2, v2, variant, key_padding_mask=mask, **options)
    repeated = F.attention(q, F.repeat_kv(k2, 4), F.repeat_kv(v2, 4), variant, key_padding_mask=mask, **options)
    T.assert_close_normwise(grouped, repeated, T.sum_atol(torch.float64, 64, 1.0 + v.abs().amax().item()), "gqa")
