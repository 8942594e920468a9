"""The framework (docs/theory.md) made executable: a real ε-SVR's support vector expansion is attention, primal equals dual."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from sklearn.svm import SVR

from primaldual.analysis.framework import (
    CHECKED,
    FACTORS,
    PENALTIES,
    check_problem,
    plain_kernel,
    plain_problem,
    sklearn_fit,
)
from primaldual.functional import pool_keys, reference
from primaldual.svr import SVRAttention, random_features
from tests import tolerances as T

N, M, D = 40, 25, 4


def data(scale: float = 1.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keys ``(N, D)``, queries ``(M, D)`` and smooth targets ``(N, 2)`` of the keys, float64."""
    g = torch.Generator().manual_seed(seed)
    keys = scale * torch.randn(N, D, generator=g, dtype=torch.float64)
    queries = scale * torch.randn(M, D, generator=g, dtype=torch.float64)
    targets = torch.stack([torch.sin(keys.sum(1)), keys[:, 0] * keys[:, 1]], 1)
    return keys, queries, targets


@pytest.mark.parametrize("kernel", ["softmax", "linear"])
@pytest.mark.parametrize("C, epsilon", [(1.0, 0.01), (1e3, 0.01), (1e3, 0.5), (1e5, 0.0)])
def test_predict_is_sklearn_support_vector_expansion(kernel: str, C: float, epsilon: float) -> None:
    keys, queries, targets = data()
    model = SVRAttention(kernel, C, epsilon).fit(keys, targets)
    k, q, y = keys.numpy(), queries.numpy(), targets.numpy()
    train, test = plain_kernel(k, k, kernel), plain_kernel(q, k, kernel)
    prediction = model.predict(queries)
    assert prediction.shape == (M, 2) and prediction.dtype == torch.float64
    for d in range(2):
        svr = SVR(kernel="precomputed", C=C, epsilon=epsilon).fit(train, y[:, d])
        np.testing.assert_allclose(prediction[:, d].numpy(), svr.predict(test), rtol=0, atol=1e-8)
        dual = np.zeros(N)
        dual[svr.support_] = svr.dual_coef_[0]
        np.testing.assert_allclose(model.dual_coef_[:, d].numpy(), dual, rtol=0, atol=1e-8 * C)
        np.testing.assert_array_equal(model.support_[:, d].numpy(), dual != 0)
        assert model.bias_[d].item() == pytest.approx(svr.intercept_[0], abs=1e-8)
    if kernel == "softmax":  # values v_j = (α_j − α̃_j) / h(k_j), b added: softmax attention written out
        # Not the solver: two float64 evaluations of one formula, so the error law of tests/tolerances.py. h is a
        # sum of N exponentials of scores with terms of size S (exp: a relative error (1 + √D·S)·eps each), N·eps
        # for the sum, in each of two evaluations.
        size = T.score_size(keys, keys)
        h = np.exp(k @ k.T / math.sqrt(D)).sum(1)
        rtol = 2 * T.eps(torch.float64) * (N + 1 + math.sqrt(D) * size)
        np.testing.assert_allclose(model.values_.numpy(), model.dual_coef_.numpy() / h[:, None], rtol=rtol)
        plain = reference.softmax_attention(queries[None, None], keys[None, None], model.values_[None, None])
        scale = T.output_scale(plain, model.values_) + model.bias_.abs().max().item()
        atol = T.attention_atol(torch.float64, T.score_size(queries, keys), scale, head_dim=D, length=N)
        T.assert_close_normwise(prediction, plain[0, 0] + model.bias_, atol, "softmax attention written out")


def test_parameters_reach_the_box_bound_and_leave_non_support_vectors() -> None:
    """The (C, ε) cases above really exercise both regimes: α at C, and points inside the ε-tube."""
    keys, _, targets = data()
    small_c = SVRAttention("softmax", 1.0, 0.01).fit(keys, targets)
    assert torch.isclose(small_c.dual_coef_.abs(), torch.tensor(1.0, dtype=torch.float64)).any()
    wide_tube = SVRAttention("softmax", 1e3, 0.5).fit(keys, targets)
    assert (~wide_tube.support_).any() and wide_tube.support_.any()
    assert (wide_tube.dual_coef_[~wide_tube.support_] == 0).all()


def test_fit_fits_a_smooth_function() -> None:
    keys, _, targets = data()
    model = SVRAttention("softmax", C=1e6, epsilon=1e-3).fit(keys, targets)
    assert (model.predict(keys) - targets).abs().max() < 0.01
    assert (SVRAttention("softmax", C=1.0, epsilon=1e-3).fit(keys, targets).predict(keys) - targets).abs().max() > 0.5


def test_linear_primal_equals_dual() -> None:
    keys, queries, targets = data()
    model = SVRAttention("linear", C=1e3, epsilon=0.01).fit(keys, targets)
    primal = model.primal_predict(queries)
    kernel = plain_kernel(queries.numpy(), keys.numpy(), "linear")
    dual = kernel @ model.dual_coef_.numpy() + model.bias_.numpy()
    # Not the solver: the same coefficients in two orders of the same sums, so the error law of
    # tests/tolerances.py for the linear kernel (S = the largest |input| of Φ), of the size of the sum's terms
    size = max(T.exp_size(queries), T.exp_size(keys))
    terms = (np.abs(kernel) @ np.abs(model.dual_coef_.numpy())).max() + model.bias_.abs().max().item()
    atol = T.attention_atol(torch.float64, size, terms, head_dim=D, length=N, rounded_inputs=2)
    T.assert_close_normwise(primal, torch.from_numpy(dual), atol, "primal vs dual")
    T.assert_close_normwise(primal, model.predict(queries), atol, "primal vs predict")


def test_random_feature_primal_error_shrinks_with_features() -> None:
    keys, queries, targets = data(scale=0.5)
    model = SVRAttention("softmax", C=1e3, epsilon=0.01).fit(keys, targets)
    exact = model.predict(queries)
    errors = [
        np.mean([(model.primal_predict(queries, m, seed) - exact).abs().mean().item() for seed in range(5)])
        for m in (16, 256, 4096)
    ]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < errors[0] / 4


def test_random_features_estimate_the_exp_kernel() -> None:
    x = 0.3 * torch.randn(5, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    phi = random_features(x, 200_000, seed=3)
    assert phi.shape == (5, 200_000) and (phi > 0).all()
    torch.testing.assert_close(phi @ phi.T, torch.exp(x @ x.T / math.sqrt(D)), rtol=0.05, atol=0)
    torch.testing.assert_close(random_features(x, 8, seed=3), random_features(x, 8, seed=3), rtol=0, atol=0)
    assert not torch.equal(random_features(x, 8, seed=3), random_features(x, 8, seed=4))


def test_accepts_numpy_and_float32() -> None:
    keys, queries, targets = data()
    from_torch = SVRAttention("softmax", 10.0, 0.01).fit(keys, targets).predict(queries)
    from_numpy = SVRAttention("softmax", 10.0, 0.01).fit(keys.numpy(), targets.numpy()).predict(queries.numpy())
    torch.testing.assert_close(from_torch, from_numpy, rtol=0, atol=0)
    assert SVRAttention().fit(keys.float(), targets.float()).predict(queries.float()).dtype == torch.float64


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(kernel="rbf"), ValueError, "kernel must be one of softmax, linear"),
        (dict(C=0.0), ValueError, "C must be > 0"),
        (dict(C=-1.0), ValueError, "C must be > 0"),
        (dict(C=float("nan")), TypeError, "C must be a finite"),
        (dict(C="1"), TypeError, "C must be a finite"),
        (dict(epsilon=-0.1), ValueError, "epsilon must be >= 0"),
        (dict(epsilon=float("inf")), TypeError, "epsilon must be a finite"),
        (dict(normalization="ln"), ValueError, "normalization must be None or 'bn'"),
        (dict(downsample=0), ValueError, "downsample must be >= 1"),
        (dict(downsample=2.0), TypeError, "downsample must be an integer"),
        (dict(num_prefix_tokens=-1), ValueError, "num_prefix_tokens must be >= 0"),
        (dict(eps=0.0), ValueError, "eps must be > 0"),
        (dict(tol=-1.0), ValueError, "tol must be > 0"),
        (dict(mean_weight=float("nan")), TypeError, "mean_weight must be a finite"),
    ],
)
def test_bad_hyperparameters(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        SVRAttention(**kwargs)


def test_bad_inputs() -> None:
    keys, queries, targets = data()
    model = SVRAttention()
    with pytest.raises(RuntimeError, match="not fitted"):
        model.predict(queries)
    with pytest.raises(RuntimeError, match="not fitted"):
        model.primal_predict(queries, 16)
    with pytest.raises(ValueError, match="keys must be 2-D"):
        model.fit(keys[0], targets)
    with pytest.raises(ValueError, match="keys must be 2-D"):
        model.fit(keys[None], targets)
    with pytest.raises(ValueError, match="keys must hold finite"):
        model.fit(keys.masked_fill(keys > 1, float("nan")), targets)
    with pytest.raises(TypeError, match="keys must be"):
        model.fit("keys", targets)
    with pytest.raises(ValueError, match="targets must be 2-D"):
        model.fit(keys, targets[:, 0])
    with pytest.raises(ValueError, match=r"targets must have one row per key \(40\)"):
        model.fit(keys, targets[:-1])
    model.fit(keys, targets)
    with pytest.raises(ValueError, match="queries must have D = 4"):
        model.predict(queries[:, :3])
    with pytest.raises(ValueError, match="queries must have D = 4"):
        model.primal_predict(queries[:, :3], 16)
    with pytest.raises(ValueError, match="queries must be 2-D"):
        model.predict(queries[0])
    with pytest.raises(ValueError, match="num_features is required"):
        model.primal_predict(queries)
    with pytest.raises(ValueError, match="num_features must be >= 1"):
        model.primal_predict(queries, 0)
    with pytest.raises(TypeError, match="num_features must be an integer"):
        model.primal_predict(queries, 16.0)
    with pytest.raises(ValueError, match="num_features is only for the softmax kernel"):
        SVRAttention("linear").fit(keys, targets).primal_predict(queries, 16)


def test_fit_without_scikit_learn_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    keys, _, targets = data()
    monkeypatch.setitem(sys.modules, "sklearn.svm", None)  # makes ``from sklearn.svm import SVR`` fail
    with pytest.raises(ImportError, match=r"pip install primaldual\[svr\]"):
        SVRAttention().fit(keys, targets)


# Attention-BN and Attention-SH as SVRs (docs/framework.md). scikit-learn is fitted on the Gram matrices of the plain
# formulas (analysis.framework.plain_problem: functional.reference's pooling and statistics, numpy kernels);
# SVRAttention fits its own and predicts through the fused layer. Both stop libsvm at KKT violation TOL; two
# stopped solutions of one problem give predictions within a few TOL of each other (measured <= 3.5 TOL over
# the expansion grid of results/framework), so 1e-6 of the targets' scale leaves a margin of about 300.
TOL = 1e-9
LAYER_CASES = [
    (name, factor)
    for name, (_, _, pooled) in CHECKED.items()
    if name not in ("softmax", "linear")
    for factor in (FACTORS if pooled else (1,))
]


def model_for(name: str, C: float = 1e3, epsilon: float = 0.1, factor: int = 1, **kwargs) -> SVRAttention:
    """The SVR of variant ``name`` (a key of CHECKED); ``factor`` is its SH factor, ignored without SH."""
    kernel, normalization, pooled = CHECKED[name]
    return SVRAttention(
        kernel, C, epsilon, normalization=normalization, downsample=factor if pooled else 1, tol=TOL, **kwargs
    )


def problem(padded: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """keys, targets, queries, mask of check_problem: junk under the padding when padded."""
    p = check_problem()
    if padded:
        return p["padded_keys"], p["padded_targets"], p["queries"], p["mask"]
    return p["keys"], p["targets"], p["queries"], None


def kernel_size(model: SVRAttention, keys, queries, mask, *, queries_too: bool = True) -> float:
    """S of tests/tolerances.py for the SVR's kernel inputs as plain_problem forms them: keys pooled by the factor
    (a pooled key is rounded: its |k| counts), then BN's ``(x − βμ)/s`` on both sides (βμ rounded: β|μ|/s counts);
    the score-term size for the softmax kernel, the largest |input| for the linear kernel. Against the keys
    themselves where ``queries_too`` is False (h sums the kernel over the training keys)."""
    valid = torch.ones(keys.shape[0], dtype=torch.bool) if mask is None else ~mask
    pooled, flags = reference.pool(keys, valid, model.downsample, model.num_prefix_tokens)
    k = pooled[flags]
    rounded = k.abs() if min(model.downsample, keys.shape[0] - model.num_prefix_tokens) > 1 else 0.0
    q = queries if queries_too else k
    if model.normalization == "bn":
        mean, std = reference.key_statistics(k, torch.ones(len(k), dtype=torch.bool), model.eps)
        shift = model.mean_weight * mean
        k_term = ((k - shift).abs() + shift.abs() + rounded) / std
        q_term = ((q - shift).abs() + shift.abs() + (rounded if not queries_too else 0.0)) / std
    else:
        k_term, q_term = k.abs(), q.abs()
    if model.kernel == "linear":
        return max(T.exp_size(q_term), T.exp_size(k_term))
    return T.score_size(q_term, k_term)


def assert_expansion_is_sklearn(model: SVRAttention, keys, targets, queries, mask) -> None:
    """predict == sklearn's predictions, dual coefficients and intercepts; the layer's values pool to v_j."""
    prediction = model.fit(keys, targets, mask).predict(queries)
    gram, test, train_targets, h = plain_problem(model, keys, targets, queries, mask)
    scale = max(1.0, np.abs(train_targets).max())
    for d, svr in enumerate(sklearn_fit(model, gram, train_targets)):
        np.testing.assert_allclose(prediction[:, d].numpy(), svr.predict(test), rtol=0, atol=1e-6 * scale)
        dual = np.zeros(len(gram))
        dual[svr.support_] = svr.dual_coef_[0]
        np.testing.assert_allclose(model.dual_coef_[:, d].numpy(), dual, rtol=0, atol=1e-6 * model.C)
        assert model.bias_[d].item() == pytest.approx(svr.intercept_[0], abs=1e-6 * scale)
    # not the solver: h is a sum of n kernel values in two orders, each with a relative error (1 + (√D + 2)·S)·eps
    # (tests/tolerances.py's law, S of the keys against themselves), n·eps for the sum
    size = kernel_size(model, keys, queries, mask, queries_too=False)
    rtol = 2 * T.eps(torch.float64) * (len(h) + 1 + (math.sqrt(keys.shape[1]) + 2) * size)
    np.testing.assert_allclose(model.values_.numpy(), model.dual_coef_.numpy() / h[:, None], rtol=rtol)
    # what the layer uses: keys and sequence values pooled by the layer's own pooling are (keys_, values_)
    layer_mask = None if mask is None else mask[None]
    r = min(model.downsample, keys.shape[0] - model.num_prefix_tokens)
    pk, pv, pmask = pool_keys(
        keys[None, None], model.sequence_values_[None, None], layer_mask, r, num_prefix_tokens=model.num_prefix_tokens
    )
    valid = slice(None) if pmask is None else ~pmask[0]
    torch.testing.assert_close(pk[0, 0][valid], model.keys_, rtol=0, atol=0)
    # a window's mean of at most r values in two orders (tests/tolerances.py's sum_atol)
    largest = model.sequence_values_.abs().amax().item()
    T.assert_close_normwise(
        pv[0, 0][valid], model.values_, T.sum_atol(torch.float64, max(r, 1), largest), "pooled values"
    )


@pytest.mark.parametrize("padded", [False, True], ids=["dense", "padded"])
@pytest.mark.parametrize("C, epsilon", PENALTIES)
@pytest.mark.parametrize("name, factor", LAYER_CASES)
def test_layer_is_support_vector_expansion(name: str, factor: int, C: float, epsilon: float, padded: bool) -> None:
    model = model_for(name, C, epsilon, factor)
    unpooled = {"sh": "softmax", "bn+sh": "bn", "linear-sh": "linear", "linear-bn+sh": "linear-bn"}
    assert model.variant == (name if factor > 1 else unpooled.get(name, name))  # factor 1 pools nothing
    assert_expansion_is_sklearn(model, *problem(padded))


@pytest.mark.parametrize("factor", [2, 3, 8])
@pytest.mark.parametrize("name", ["sh", "bn+sh", "linear-bn+sh"])
def test_prefix_tokens_stay_unpooled(name: str, factor: int) -> None:
    keys, targets, queries, mask = problem(padded=True)
    mask = mask.clone()
    mask[1] = True  # a padded prefix token is left out too
    model = model_for(name, factor=factor, num_prefix_tokens=3)
    assert_expansion_is_sklearn(model, keys, targets, queries, mask)
    valid_windows = sum(bool(w.any()) for w in (~mask[3:]).split(factor))
    assert model.keys_.shape[0] == 2 + valid_windows
    torch.testing.assert_close(model.keys_[:2], keys[[0, 2]], rtol=0, atol=0)


def test_training_set_sizes_and_large_factors() -> None:
    keys, targets, queries, mask = problem(padded=True)
    sizes = {r: model_for("sh", factor=r).fit(keys, targets, mask).keys_.shape[0] for r in (1, 2, 3, 8, 40, 100)}
    # 31 valid keys (6, 7 and 33..39 padded): r=2 drops the window (6, 7) and the all-padded windows 34..39;
    # r=8's last window [32, 40) holds one valid key; r >= 40 pools everything into one window
    assert sizes == {1: 31, 2: 16, 3: 11, 8: 5, 40: 1, 100: 1}
    far, whole = model_for("bn+sh", factor=100).fit(keys, targets, mask), model_for("bn+sh", factor=40)
    torch.testing.assert_close(far.predict(queries), whole.fit(keys, targets, mask).predict(queries), rtol=0, atol=0)
    plain, factor_one = SVRAttention("softmax", 1e3, 0.1, tol=TOL), model_for("sh", factor=1)
    torch.testing.assert_close(
        plain.fit(keys, targets, mask).predict(queries),
        factor_one.fit(keys, targets, mask).predict(queries),
        rtol=0,
        atol=0,
    )


def test_pooling_and_bn_change_the_fit() -> None:
    """The variants are different SVRs: a check that passes for one but not another would notice."""
    keys, targets, queries, _ = problem(padded=False)
    predictions = {name: model_for(name, factor=3).fit(keys, targets).predict(queries) for name in CHECKED}
    pairs = [("softmax", "bn"), ("softmax", "sh"), ("bn", "bn+sh"), ("linear", "linear-bn"), ("linear", "linear-sh")]
    for a, b in pairs:
        assert (predictions[a] - predictions[b]).abs().max() > 1e-3, (a, b)


@pytest.mark.parametrize("name", ["bn", "bn+sh", "linear-bn"])
def test_bn_svr_ignores_affine_changes_of_the_inputs(name: str) -> None:
    """x̂ is invariant to x -> a ⊙ x + c (a > 0) when keys and queries change alike (eps → 0, β = 1)."""
    keys, targets, queries, mask = problem(padded=True)
    a = torch.tensor([3.0, 0.5, 7.0, 1.5], dtype=torch.float64)
    c = torch.tensor([10.0, -4.0, 0.0, 2.0], dtype=torch.float64)
    model = model_for(name, factor=2, eps=1e-12)
    moved = model_for(name, factor=2, eps=1e-12).fit(keys * a + c, targets, mask).predict(queries * a + c)
    torch.testing.assert_close(model.fit(keys, targets, mask).predict(queries), moved, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["linear-bn", "linear-sh", "linear-bn+sh"])
def test_linear_variants_primal_equals_dual(name: str) -> None:
    keys, targets, queries, mask = problem(padded=True)
    model = model_for(name, factor=3).fit(keys, targets, mask)
    # not the solver: the same coefficients in two orders of the same sums, tests/tolerances.py's law for the
    # linear kernel on the SVR's normalised, pooled inputs, of the size of the sum's terms
    _, test, _, _ = plain_problem(model, keys, targets, queries, mask)
    terms = (np.abs(test) @ np.abs(model.dual_coef_.numpy())).max() + model.bias_.abs().max().item()
    atol = T.attention_atol(
        torch.float64,
        kernel_size(model, keys, queries, mask),
        terms,
        head_dim=keys.shape[1],
        length=len(test[0]),
        rounded_inputs=2,
    )
    T.assert_close_normwise(model.primal_predict(queries), model.predict(queries), atol, "primal vs predict")


def test_bn_sh_random_feature_primal_error_shrinks() -> None:
    """Random features of exp(x̂ᵀŷ/√D) on BN-normalised inputs (|x̂| up to 4.6 here): the estimator's variance grows
    like exp(|x̂|²), so the error falls slowly (measured 0.87, 0.43, 0.21 mean abs error for 16, 4096, 65536)."""
    keys, targets, queries, mask = problem(padded=True)
    model = model_for("bn+sh", factor=2).fit(keys, targets, mask)
    exact = model.predict(queries)
    errors = [
        np.mean([(model.primal_predict(queries, m, s) - exact).abs().mean().item() for s in range(3)])
        for m in (16, 4096, 65536)
    ]
    assert errors[0] > errors[1] > errors[2] and errors[2] < errors[0] / 3


def test_bad_padding_masks() -> None:
    keys, targets, _, _ = problem(padded=False)
    with pytest.raises(TypeError, match="key_padding_mask must be bool"):
        SVRAttention().fit(keys, targets, torch.zeros(N))
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(40,\)"):
        SVRAttention().fit(keys, targets, torch.zeros(1, N, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one key valid"):
        SVRAttention().fit(keys, targets, torch.ones(N, dtype=torch.bool))


def test_r_sweep_rows() -> None:
    from primaldual.analysis.framework import r_sweep

    rows = r_sweep(("sh",), (1, 4, 500), series=1)
    assert [(r["r"], r["n"]) for r in rows] == [(1, 214), (4, 54), (500, 1)]
    assert rows[0]["vs_full_fit"] == 0 and rows[1]["vs_full_fit"] > 0
    assert [r["flops_ratio"] for r in rows] == [1.0, 54 / 214, 1 / 214]
    assert rows[0]["test_rmse"] < rows[1]["test_rmse"] < rows[2]["test_rmse"] < 1.1  # targets have std 1


def test_from_attention_options() -> None:
    from primaldual.functional import AttentionOptions

    model = SVRAttention.from_options(AttentionOptions("bn+sh", scales=(3,), eps=1e-4, num_prefix_tokens=2), 10.0, 0.2)
    assert (model.variant, model.downsample, model.eps, model.num_prefix_tokens, model.C) == ("bn+sh", 3, 1e-4, 2, 10.0)
    assert SVRAttention.from_options(AttentionOptions("linear-bn")).variant == "linear-bn"
    with pytest.raises(ValueError, match="one factor"):
        SVRAttention.from_options(AttentionOptions("sh", scales=(1, 2)))
    with pytest.raises(ValueError, match="non-sparse"):
        SVRAttention.from_options(AttentionOptions("sparse", window=2))
