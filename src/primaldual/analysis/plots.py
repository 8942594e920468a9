"""PNG figures of the analysis: attention maps, head redundancy, cost versus length, accuracy.

matplotlib's object-oriented API (``Figure`` saved by its Agg canvas): no pyplot, so no global backend or
open-figure state is touched. Every function takes plain rows (dicts, as the analysis functions return them),
writes ``path`` and returns it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from torch import Tensor

from ..functional import VARIANTS

Rows = Sequence[Mapping[str, Any]]

MARKERS = "os^vDP*Xh<>"  # one per line, so that lines lying on each other stay visible


def variant_rank(variant: str) -> tuple[int, str]:
    """SDPA, then the variants in the library's order (softmax first), then any other name: the sort key of tables
    and legends."""
    names = ("sdpa", *VARIANTS)
    return (names.index(variant) if variant in names else len(names), variant)


def variant_style(variant: str) -> dict[str, str]:
    """One colour and marker per variant, the same in every figure."""
    rank = variant_rank(variant)[0]
    return {"color": f"C{rank % 10}", "marker": MARKERS[rank % len(MARKERS)]}


COST_METRICS = {
    "flops_ratio": "FLOPs / softmax",
    "memory_ratio": "peak memory / softmax",
    "time_ratio": "time / softmax",
}


def plot_attention_maps(
    weights: Tensor, path: str | Path, *, title: str = "", head_labels: Sequence[str] | None = None
) -> Path:
    """One heat map per head of the weights ``(H, Nq, Nk)`` of one input (rows: queries, columns: keys)."""
    if not isinstance(weights, Tensor) or weights.dim() != 3:
        raise ValueError(f"weights must be a tensor (heads, queries, keys), got {getattr(weights, 'shape', weights)!r}")
    heads = weights.shape[0]
    labels = head_labels or [f"head {h}" for h in range(heads)]
    if len(labels) != heads:
        raise ValueError(f"head_labels must name the {heads} heads, got {len(labels)}")
    cols = min(heads, 4)
    rows = math.ceil(heads / cols)
    fig = Figure(figsize=(3 * cols + 1, 3 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    values = weights.detach().float().cpu().numpy()
    for ax, head, label in zip(axes, values, labels):
        image = ax.imshow(head, cmap="viridis", vmin=0, vmax=values.max(), interpolation="nearest")
        ax.set(title=label, xlabel="key", ylabel="query")
    for ax in axes[heads:]:
        ax.set_axis_off()
    fig.colorbar(image, ax=axes.tolist(), shrink=0.8, label="weight")
    fig.suptitle(title)
    return _save(fig, path)


def plot_redundancy(rows: Rows, path: str | Path) -> Path:
    """L2 distance of attention distributions and cosine similarity of head outputs, per layer, one line per
    attention (and dataset, if several). Rows: ``attention, layer, l2_distance, cosine_similarity[, dataset]``."""
    _require(rows, ("attention", "layer", "l2_distance", "cosine_similarity"), "redundancy")
    layers = list(dict.fromkeys(row["layer"] for row in rows))
    fig = Figure(figsize=(11, 4), layout="constrained")
    for ax, key, label in zip(
        fig.subplots(1, 2),
        ("l2_distance", "cosine_similarity"),
        ("mean pairwise L2 distance of attention", "mean pairwise cosine of head outputs"),
    ):
        for (name, group), marker in zip(_groups(rows).items(), itertools.cycle(MARKERS)):
            points = sorted((layers.index(row["layer"]), row[key]) for row in group)
            ax.plot(*zip(*points), marker=marker, label=name)
        ax.set(xlabel="layer", ylabel=label, xticks=range(len(layers)))
        ax.set_xticklabels([str(layer) for layer in layers], rotation=30, ha="right")
        ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.suptitle("Head redundancy (larger distance, smaller cosine: less redundant)")
    return _save(fig, path)


def plot_cost(rows: Rows, path: str | Path) -> Path:
    """Cost ratios to softmax versus sequence length: one row of panels per scope, one column per measured
    quantity, one line per attention. Rows: those of :func:`primaldual.analysis.efficiency`."""
    _require(rows, ("scope", "attention", "length"), "cost")
    scopes = list(dict.fromkeys(row["scope"] for row in rows))
    metrics = [m for m in COST_METRICS if any(row.get(m) is not None for row in rows)]
    if not metrics:
        raise ValueError(f"cost rows hold no measured ratio (one of {', '.join(COST_METRICS)})")
    fig = Figure(figsize=(4.5 * len(metrics) + 1, 3.5 * len(scopes)), layout="constrained")
    axes = fig.subplots(len(scopes), len(metrics), squeeze=False)
    for scope, line in zip(scopes, axes):
        for metric, ax in zip(metrics, line):
            groups = _groups([r for r in rows if r["scope"] == scope])
            for (name, group), marker in zip(groups.items(), itertools.cycle(MARKERS)):
                points = sorted((r["length"], r[metric]) for r in group if r.get(metric) is not None)
                if points:
                    ax.plot(*zip(*points), marker=marker, label=name)
            ax.axhline(1.0, color="grey", lw=0.8, ls="--")
            ax.set_xscale("log", base=2)
            ax.set(title=f"{scope}: {COST_METRICS[metric]}", xlabel="sequence length")
            ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize="small")
    return _save(fig, path)


def plot_accuracy(rows: Rows, path: str | Path) -> Path:
    """Test accuracy (%) per attention, mean with a ± std error bar (none for a single seed); grouped by dataset
    when there are several. Rows: ``attention, test_acc_mean, test_acc_std[, dataset]``."""
    _require(rows, ("attention", "test_acc_mean", "test_acc_std"), "accuracy")
    names = list(dict.fromkeys(row["attention"] for row in rows))
    datasets = list(dict.fromkeys(row.get("dataset", "") for row in rows))
    width = 0.8 / len(datasets)
    fig = Figure(figsize=(max(5.0, 0.9 * len(names) * len(datasets) + 2), 4), layout="constrained")
    ax = fig.subplots()
    for d, dataset in enumerate(datasets):
        group = {row["attention"]: row for row in rows if row.get("dataset", "") == dataset}
        xs = [i + (d - (len(datasets) - 1) / 2) * width for i, name in enumerate(names) if name in group]
        means = [group[name]["test_acc_mean"] for name in names if name in group]
        stds = [_nan_if_none(group[name]["test_acc_std"]) for name in names if name in group]  # NaN: no bar
        ax.bar(xs, means, width, yerr=stds, capsize=4, label=dataset or None)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set(ylabel="test accuracy (%)", title="Accuracy per attention (mean ± std over seeds)")
    if len(datasets) > 1:
        ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _require(rows: Rows, keys: Sequence[str], what: str) -> None:
    if not rows:
        raise ValueError(f"no {what} rows to plot")
    for row in rows:
        missing = [key for key in keys if key not in row]
        if missing:
            raise ValueError(
                f"{what} rows need the keys {', '.join(keys)}; this row lacks {', '.join(missing)}: {dict(row)}"
            )


def _groups(rows: Rows) -> dict[str, list[Mapping[str, Any]]]:
    """Rows by line label: the attention, prefixed by the dataset when the rows span several."""
    several = len({row.get("dataset") for row in rows}) > 1
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        label = f"{row['dataset']} / {row['attention']}" if several else str(row["attention"])
        groups.setdefault(label, []).append(row)
    return groups


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path


def plot_lm_curves(records: Rows, path: str | Path) -> Path:
    """Validation loss per epoch of the language-model runs, a panel per dataset, the mean over seeds per variant."""
    datasets = sorted({r["dataset"] for r in records if "curve" in r})
    fig = Figure(figsize=(5 * max(len(datasets), 1), 3.6), layout="constrained")
    for i, dataset in enumerate(datasets):
        ax = fig.add_subplot(1, len(datasets), i + 1)
        curves: dict[str, list[list[float]]] = {}
        for record in records:
            if record.get("dataset") == dataset and "curve" in record:
                losses = [row["val_loss"] for row in record["curve"] if "val_loss" in row]
                curves.setdefault(record["variant"], []).append(losses)
        for variant in sorted(curves, key=variant_rank):
            runs = curves[variant]
            epochs = min(len(run) for run in runs)
            mean = [sum(run[e] for run in runs) / len(runs) for e in range(epochs)]
            ax.plot(range(1, epochs + 1), mean, label=f"{variant} ({len(runs)} seeds)", **variant_style(variant))
        ax.set(title=dataset, xlabel="epoch", ylabel="validation loss (nats / token)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_mqar(cells: Rows, path: str | Path) -> Path:
    """MQAR test accuracy against the number of pairs, a panel per length, a line per variant (mean over seeds)."""
    lengths = sorted({c["length"] for c in cells})
    fig = Figure(figsize=(3.4 * len(lengths), 3.4), layout="constrained")
    variants = list(cells[0]["variants"])
    for i, length in enumerate(lengths):
        ax = fig.add_subplot(1, len(lengths), i + 1)
        mine = [c for c in cells if c["length"] == length]
        for variant in sorted(variants, key=variant_rank):
            ax.plot([c["pairs"] for c in mine], [100 * c["variants"][variant]["mean"] for c in mine],
                    label=variant, **variant_style(variant))  # fmt: skip
        ax.set(title=f"{length} tokens", xlabel="key-value pairs", ylim=(-2, 102))
        ax.set_xscale("log", base=2)
        ax.set_xticks([c["pairs"] for c in mine], [str(c["pairs"]) for c in mine], minor=False)
        ax.set_xticks([], minor=True)
        if i == 0:
            ax.set_ylabel("test accuracy (%)")
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_quality_cache(
    quality: Mapping[str, Mapping[str, float]], generation: Mapping[str, Any], path: str | Path
) -> Path:
    """Test bits per byte (mean over seeds) against cache bytes per token at ``generation["tokens"]``, one point
    per variant: lower left is better."""
    fig = Figure(figsize=(5, 3.8), layout="constrained")
    ax = fig.add_subplot()
    for variant in sorted(quality, key=variant_rank):
        stats, size = quality[variant], generation["cache_bytes_per_token"].get(variant)
        if size is not None:
            ax.errorbar(size, stats["mean"], yerr=_nan_if_none(stats.get("std")), label=variant, capsize=3,
                        linestyle="none", **variant_style(variant))  # fmt: skip
    ax.set(xscale="log", xlabel=f"cache bytes per token after {generation['tokens']} tokens",
           ylabel="test bits per byte")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)
