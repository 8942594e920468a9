"""The framework checked and measured: every layer's SVR against scikit-learn, and what SH's pooling costs an SVR.

``python -m primaldual.analysis.framework --output results/framework`` writes

* ``expansion.{csv,json,md}``: per variant, the largest ``|SVRAttention.predict − sklearn SVR.predict|`` over a
  grid of problems (several C, ε, factors r, with and without padding and prefix tokens). scikit-learn is given
  the Gram matrices of the plain formulas (:func:`plain_problem`, built from ``functional.reference``);
  SVRAttention predicts through the library's fused layer.
* ``sweep.{csv,json,md,png}``: the SH factor r swept on a real regression problem (:func:`r_sweep`): error of
  the SVR fitted on pooled data against the full-data fit and against the targets, support vectors, fit time
  and attention FLOPs.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..files import atomic_open
from ..functional import reference
from ..svr import SVRAttention
from ..tables import markdown, write_rows

#: Variants checked against scikit-learn, as SVRAttention options (kernel, normalisation, SH or not).
CHECKED = {
    "softmax": ("softmax", None, False),
    "linear": ("linear", None, False),
    "bn": ("softmax", "bn", False),
    "sh": ("softmax", None, True),
    "bn+sh": ("softmax", "bn", True),
    "linear-bn": ("linear", "bn", False),
    "linear-sh": ("linear", None, True),
    "linear-bn+sh": ("linear", "bn", True),
}
#: (C, ε) of the check: the box bound reached, a wide tube leaving non-support vectors, a hard-margin-like fit.
PENALTIES = ((1.0, 0.01), (1e3, 0.1), (1e5, 0.0))
#: SH factors of the check: identity, even, odd, a window holding a whole padded stretch, more than N.
FACTORS = (1, 2, 3, 8, 100)
#: libsvm's stopping tolerance in the check (see ``docs/framework.md`` for the error law it gives).
TOL = 1e-9


def plain_pair(a: np.ndarray, b: np.ndarray, kernel: str) -> np.ndarray:
    """``Φ(a_i)ᵀΦ(b_j)`` ``(M, n)`` written out with numpy: ``exp(aᵀb/√D)`` (softmax) or ``Φ = elu + 1`` (linear)."""
    if kernel == "softmax":
        return np.exp(a @ b.T / math.sqrt(a.shape[1]))
    phi = lambda x: np.where(x > 0, x + 1, np.exp(np.minimum(x, 0)))  # elu(x) + 1  # noqa: E731
    return phi(a) @ phi(b).T


def plain_kernel(x: np.ndarray, keys: np.ndarray, kernel: str) -> np.ndarray:
    """``K(x_i, k_j) = Φ(x_i)ᵀΦ(k_j) / (h(x_i) h(k_j))`` ``(M, n)``, ``h(x) = Σ_j Φ(x)ᵀΦ(k_j)``, on inputs already
    normalised (:func:`plain_pair`)."""
    pair = plain_pair(x, keys, kernel)
    return pair / (pair.sum(1)[:, None] * plain_pair(keys, keys, kernel).sum(1)[None, :])


def plain_problem(
    model: SVRAttention, keys: Tensor, targets: Tensor, queries: Tensor, mask: Tensor | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The SVR problem of ``model``'s primal from the plain formulas: Gram matrices ``(n, n)`` on the training
    keys and ``(M, n)`` of the queries, the training targets ``(n, Dv)`` and ``h(k_j)`` ``(n,)``, numpy float64.

    Training set: keys ``(N, D)`` and targets ``(N, Dv)`` pooled by ``reference.pool`` (factor
    ``model.downsample``, prefix kept, padded rows of ``mask`` ``(N,)`` left out), invalid windows dropped. BN:
    both sides ``(x − βμ)/s`` with ``reference.key_statistics`` of the training keys.
    """
    valid = torch.ones(keys.shape[0], dtype=torch.bool) if mask is None else ~mask
    pooled, flags = reference.pool(torch.cat((keys, targets), 1), valid, model.downsample, model.num_prefix_tokens)
    train_keys, train_targets = pooled[flags].split((keys.shape[1], targets.shape[1]), 1)
    if model.normalization == "bn":
        mean, std = reference.key_statistics(train_keys, torch.ones(len(train_keys), dtype=torch.bool), model.eps)
        train_keys, queries = ((x - model.mean_weight * mean) / std for x in (train_keys, queries))
    k, q = train_keys.numpy(), queries.numpy()
    h = plain_pair(k, k, model.kernel).sum(1)
    return plain_kernel(k, k, model.kernel), plain_kernel(q, k, model.kernel), train_targets.numpy(), h


def sklearn_fit(model: SVRAttention, gram: np.ndarray, targets: np.ndarray) -> list[Any]:
    """One ``sklearn.svm.SVR(kernel="precomputed")`` per target column, with ``model``'s C, ε and tol."""
    from sklearn.svm import SVR

    return [
        SVR(kernel="precomputed", C=model.C, epsilon=model.epsilon, tol=model.tol).fit(gram, targets[:, d])
        for d in range(targets.shape[1])
    ]


def check_problem(seed: int = 0, n: int = 40, m: int = 25, dim: int = 4) -> dict[str, Tensor]:
    """A random problem: keys ``(n, D)``, queries ``(m, D)``, smooth targets ``(n, 2)`` of the keys, float64, and a
    padding mask ``(n,)`` (positions 6, 7 and the last 7) under which keys and targets hold large finite junk."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(n, dim, generator=g, dtype=torch.float64)
    queries = torch.randn(m, dim, generator=g, dtype=torch.float64)
    targets = torch.stack([torch.sin(keys.sum(1)), keys[:, 0] * keys[:, 1]], 1)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[[6, 7]] = True
    mask[n - 7 :] = True
    junk = dict(keys=keys.masked_fill(mask[:, None], 50.0), targets=targets.masked_fill(mask[:, None], 1e3))
    return dict(
        keys=keys, queries=queries, targets=targets, mask=mask, padded_keys=junk["keys"], padded_targets=junk["targets"]
    )


def expansion_error(model: SVRAttention, keys: Tensor, targets: Tensor, queries: Tensor, mask: Tensor | None) -> float:
    """``max |model.fit(...).predict(queries) − sklearn's predictions on the plain Gram matrices|``."""
    prediction = model.fit(keys, targets, mask).predict(queries).numpy()
    gram, test, train_targets, _ = plain_problem(model, keys, targets, queries, mask)
    expected = np.stack([svr.predict(test) for svr in sklearn_fit(model, gram, train_targets)], 1)
    return float(np.abs(prediction - expected).max())


def expansion_errors(seeds: Sequence[int] = (0, 1)) -> list[dict[str, Any]]:
    """Per variant of :data:`CHECKED`, the largest :func:`expansion_error` over seeds × :data:`PENALTIES` ×
    padding (none, :func:`check_problem`'s) × :data:`FACTORS` and prefix tokens (0, 2) for the SH variants."""
    rows = []
    for name, (kernel, normalization, pooled) in CHECKED.items():
        worst, count = 0.0, 0
        factors, prefixes = (FACTORS, (0, 2)) if pooled else ((1,), (0,))
        grid = itertools.product(seeds, PENALTIES, (False, True), factors, prefixes)
        for seed, (c, epsilon), padded, factor, prefix in grid:
            data = check_problem(seed)
            model = SVRAttention(
                kernel, c, epsilon, normalization=normalization, downsample=factor, num_prefix_tokens=prefix, tol=TOL
            )
            keys, targets = (data["padded_keys"], data["padded_targets"]) if padded else (data["keys"], data["targets"])
            worst = max(worst, expansion_error(model, keys, targets, data["queries"], data["mask"] if padded else None))
            count += 1
        rows.append(dict(variant=name, problems=count, max_abs_error=worst))
    return rows


#: The sweep's problem: OSULeaf outlines (bundled with aeon), keys a sinusoidal position code of the step.
SWEEP_VARIANTS = ("sh", "bn+sh", "linear-sh")
SWEEP_FACTORS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 256)


def position_code(length: int, features: int = 16, amplitude: float = 1.5) -> Tensor:
    """Keys ``(length, 2F)`` of steps t: ``amplitude · [cos(ω_f t), sin(ω_f t)]`` with periods ``2π/ω_f`` spread
    geometrically from 4 steps to twice the length (a transformer's sinusoidal position code)."""
    periods = torch.logspace(math.log10(4), math.log10(2 * length), features, dtype=torch.float64)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * (2 * math.pi / periods)
    return amplitude * torch.cat((angles.cos(), angles.sin()), 1)


def leaf_series(count: int) -> list[Tensor]:
    """The first ``count`` outlines of OSULeaf's training file (aeon's bundled copy), each standardised ``(427,)``."""
    from ..data.uea import read_ts

    spec = importlib.util.find_spec("aeon")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the r-sweep reads OSULeaf from aeon: pip install primaldual[timeseries]")
    path = Path(spec.submodule_search_locations[0], "datasets", "data", "OSULeaf", "OSULeaf_TRAIN.ts")
    series = [torch.as_tensor(np.asarray(s, dtype=np.float64).ravel()) for s in read_ts(path)[0][:count]]
    return [(s - s.mean()) / s.std(correction=0) for s in series]


def _fit_one(
    variant: str, factor: int, keys: Tensor, targets: Tensor, C: float, epsilon: float
) -> tuple[SVRAttention, float]:
    kernel, normalization, _ = CHECKED[variant]
    model = SVRAttention(kernel, C, epsilon, normalization=normalization, downsample=factor)
    start = time.perf_counter()
    model.fit(keys, targets)
    return model, time.perf_counter() - start


def _rms(x: Tensor) -> float:
    return x.square().mean().sqrt().item()


def r_sweep(
    variants: Sequence[str] = SWEEP_VARIANTS,
    factors: Sequence[int] = SWEEP_FACTORS,
    *,
    series: int = 8,
    C: float = 1e6,
    epsilon: float = 0.01,
) -> list[dict[str, Any]]:
    """SH's factor r swept on a real regression: each OSULeaf outline y_t (standardised), keys the position code
    of t; the SVR is fitted on the even steps (N = 214) and queried at every step, the odd steps held out.

    Per variant and r, means over ``series`` outlines: training points n (the pooled keys), support vectors,
    fit time; RMS over the held-out steps of the prediction minus the full-data (r = 1) fit, of the attention
    output (prediction minus b) minus the full-data one, and of the prediction minus the targets (also on the
    training steps); attention FLOPs of the 427 queries (every step) on the n keys, ``2 · 427 · n · (D + 1)``
    (scores and weighted sum, D = 32, one output), and their ratio to r = 1.
    """
    rows = []
    outlines = leaf_series(series)
    code = position_code(outlines[0].shape[0])
    train, test = slice(0, None, 2), slice(1, None, 2)
    for variant in variants:
        full: list[tuple[Tensor, Tensor]] = []
        for factor in factors:
            stats: dict[str, list[float]] = {}
            for i, y in enumerate(outlines):
                model, seconds = _fit_one(variant, factor, code[train], y[train, None], C, epsilon)
                f_test = model.predict(code[test])
                if factor == factors[0]:
                    full.append((f_test, model.bias_))
                ref, ref_bias = full[i]
                f_train = model.predict(code[train])[:, 0]
                for key, value in (
                    ("n", model.keys_.shape[0]),
                    ("support_vectors", model.support_.sum().item()),
                    ("fit_s", seconds),
                    ("vs_full_fit", _rms(f_test - ref)),
                    ("attention_vs_full", _rms(f_test - model.bias_ - ref + ref_bias)),
                    ("test_rmse", _rms(f_test[:, 0] - y[test])),
                    ("train_rmse", _rms(f_train - y[train])),
                ):
                    stats.setdefault(key, []).append(float(value))
            row = dict(variant=variant, r=factor, **{key: float(np.mean(v)) for key, v in stats.items()})
            row["n"] = int(row["n"])  # the same for every outline
            row["attention_flops"] = 2 * code.shape[0] * row["n"] * (code.shape[1] + 1)
            rows.append(row)
    for row in rows:
        first = next(r for r in rows if r["variant"] == row["variant"])
        row["flops_ratio"] = row["attention_flops"] / first["attention_flops"]
    return rows


SWEEP_COLUMNS = (
    ("variant", "variant"),
    ("r", "r"),
    ("n", "n"),
    ("SVs", "support_vectors"),
    ("fit ms", lambda r: 1e3 * r["fit_s"]),
    ("FLOPs / r=1", "flops_ratio"),
    ("RMS vs full fit", "vs_full_fit"),
    ("RMS attention vs full", "attention_vs_full"),
    ("RMSE held-out", "test_rmse"),
    ("RMSE train", "train_rmse"),
)


def plot_sweep(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Two panels against r (log axes): errors (held-out RMSE, RMS against the full fit) and cost (FLOPs ratio,
    support vectors), one colour per variant."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2))
    errors, cost = fig.subplots(1, 2)
    for i, variant in enumerate(dict.fromkeys(r["variant"] for r in rows)):
        own = [r for r in rows if r["variant"] == variant]
        r = [row["r"] for row in own]
        colour = f"C{i}"
        errors.plot(r, [row["test_rmse"] for row in own], "o-", color=colour, label=f"{variant}: held-out RMSE")
        full_fit = [row["vs_full_fit"] for row in own[1:]]
        errors.plot(r[1:], full_fit, "s--", color=colour, label=f"{variant}: vs full fit")
        cost.plot(r, [row["support_vectors"] for row in own], "o-", color=colour, label=f"{variant}: support vectors")
    cost.plot(r, [row["flops_ratio"] * own[0]["support_vectors"] for row in own], "k:", label="FLOPs ∝ n (scaled)")
    for ax, title in ((errors, "error (target std = 1)"), (cost, "cost")):
        ax.set(xscale="log", yscale="log", xlabel="SH factor r", title=title)
        ax.legend(fontsize=7)
    fig.suptitle("ε-SVR fitted on OSULeaf outlines pooled by r (keys: position code)")
    fig.tight_layout()
    with atomic_open(path) as file:
        fig.savefig(file, format="png", dpi=100)


def write_results(output: Path, series: int = 8) -> dict[str, float]:
    """Run both analyses, write their tables and the sweep's figure under ``output``; return each one's seconds."""
    seconds = {}
    start = time.perf_counter()
    expansion = expansion_errors()
    seconds["expansion"] = time.perf_counter() - start
    write_rows(
        expansion,
        output,
        "expansion",
        markdown(
            expansion,
            [
                ("variant", "variant"),
                ("problems", "problems"),
                ("max abs error", lambda r: f"{r['max_abs_error']:.1e}"),
            ],
        ),
    )
    start = time.perf_counter()
    sweep = r_sweep(series=series)
    seconds["sweep"] = time.perf_counter() - start
    write_rows(sweep, output, "sweep", markdown(sweep, SWEEP_COLUMNS, digits=3))
    plot_sweep(sweep, output / "sweep.png")
    return seconds


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m primaldual.analysis.framework", description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=Path("results/framework"), help="folder for tables and figure")
    parser.add_argument("--series", type=int, default=8, help="OSULeaf outlines the sweep averages over")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seconds = write_results(args.output, args.series)
    print(", ".join(f"{name} {value:.1f} s" for name, value in seconds.items()), "->", args.output)


if __name__ == "__main__":
    main()
