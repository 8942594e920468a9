"""The benchmark's tables, statistics and figure from its records (:mod:`primaldual.training.benchmark`).

:func:`benchmark_report` reads ``OUTPUT/records`` and writes into ``OUTPUT``:

* ``runs.csv``: one row per run and protocol: dataset, method, protocol, seed, test_accuracy (%), epoch, seconds,
  seconds_per_epoch, params, head_l2_distance, head_cosine (an aeon baseline: one row per seed, protocol
  ``untuned``, which stands beside both protocols: it chooses nothing);
* ``summary.{md,csv,json}``: mean ± std over seeds per dataset, method and protocol, with the rank of each method
  on each dataset (1 = best, ties averaged) and the average rank per protocol;
* ``statistics.json`` and a section of ``summary.md``: Wilcoxon signed-rank p-values of each variant against
  softmax, paired over datasets (their mean accuracies) and over runs (dataset, seed);
* ``cd-<protocol>.png``: aeon's critical-difference diagram over datasets, per protocol;
* ``claims.md``: the paper's claims (accuracy, head redundancy, cost) as these records answer them.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import tables
from ..files import atomic_write
from .redundancy import head_redundancy

PROTOCOLS = ("train-only", "test-selected")
UNTUNED = "untuned"  # the protocol label of the aeon baselines' rows: nothing is chosen, on any file
BASELINE = "softmax"


def head_measure(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    """Head redundancy of ``model`` on ``batch`` as a benchmark record's fields (mean over layers)."""
    redundancy = head_redundancy(model, batch)
    return {"head_l2_distance": redundancy["l2_distance"], "head_cosine": redundancy["cosine_similarity"]}


def read_records(output: str | Path) -> list[dict[str, Any]]:
    """Every finished record under ``output/records``."""
    paths = sorted(Path(output).glob("records/*/*/*/record.json"))
    if not paths:
        raise FileNotFoundError(f"{output}: no benchmark records (records/<dataset>/<method>/<job>/record.json)")
    return [json.loads(p.read_text()) for p in paths]


def run_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of runs.csv: each transformer seed run under both protocols (when its dataset and variant have
    every cross-validation fold), each baseline run once."""
    from ..training.benchmark import protocol_accuracies

    curves: dict[tuple[str, str], list[list[float]]] = defaultdict(list)
    folds: dict[tuple[str, str], int] = {}
    for r in records:
        if r["kind"] == "cv":
            curves[r["dataset"], r["method"]].append(r["val_acc"])
            folds[r["dataset"], r["method"]] = r["folds"]
    rows = []
    for r in sorted((r for r in records if r["kind"] == "seed"), key=lambda r: (r["dataset"], r["method"], r["index"])):
        common = {"dataset": r["dataset"], "method": r["method"], "seed": r["index"], "seconds": r["seconds"]}
        if "test_accuracy" in r:  # an untuned baseline (training.benchmark.BASELINES): one accuracy, no epochs
            rows.append(
                {
                    **common,
                    "protocol": UNTUNED,
                    "test_accuracy": 100 * r["test_accuracy"],
                    "epoch": None,
                    "seconds_per_epoch": None,
                    "params": None,
                    "head_l2_distance": None,
                    "head_cosine": None,
                }
            )
            continue
        key = (r["dataset"], r["method"])
        if key not in folds or len(curves[key]) < folds[key]:
            continue  # the epoch of train-only is not chosen yet: the run waits for its cross-validation
        chosen = protocol_accuracies(curves[key], r["test_acc"])
        extra = {k: r.get(k) for k in ("seconds_per_epoch", "params", "head_l2_distance", "head_cosine")}
        for protocol in PROTOCOLS:
            epoch = chosen["train_only_epoch" if protocol == "train-only" else "test_selected_epoch"]
            rows.append(
                {**common, "protocol": protocol, "test_accuracy": 100 * chosen[protocol], "epoch": epoch + 1, **extra}
            )
    return rows


def summary_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± sample std over seeds per (dataset, protocol, method), with the method's rank on the dataset under
    that protocol (the untuned baselines ranked in both protocols)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        protocols = PROTOCOLS if row["protocol"] == UNTUNED else (row["protocol"],)
        for protocol in protocols:
            groups[row["dataset"], protocol, row["method"]].append(row)
    out = []
    for (dataset, protocol, method), runs in sorted(groups.items()):
        accuracy = [r["test_accuracy"] for r in runs]
        out.append(
            {
                "dataset": dataset,
                "protocol": protocol,
                "method": method,
                "seeds": len(runs),
                "untuned": runs[0]["protocol"] == UNTUNED,
                "mean": statistics.fmean(accuracy),
                "std": statistics.stdev(accuracy) if len(runs) > 1 else math.nan,
                "seconds": statistics.fmean(r["seconds"] for r in runs),
                **{
                    k: _mean(r[k] for r in runs)
                    for k in ("epoch", "seconds_per_epoch", "params", "head_l2_distance", "head_cosine")
                },
            }
        )
    _rank(out)
    return out


def _mean(values: Any) -> float:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else math.nan


def _rank(summary: list[dict[str, Any]]) -> None:
    """Adds ``rank`` to each row: 1 for the highest mean on its dataset and protocol, ties averaged (scipy)."""
    from scipy.stats import rankdata

    cells: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in summary:
        cells[row["dataset"], row["protocol"]].append(row)
    for group in cells.values():
        for row, rank in zip(group, rankdata([-r["mean"] for r in group])):
            row["rank"] = float(rank)


def score_matrix(summary: Sequence[dict[str, Any]], protocol: str) -> tuple[list[str], list[str], np.ndarray]:
    """(datasets, methods, means (datasets, methods)) of ``protocol``, over the datasets where every method ran."""
    cells = {(r["dataset"], r["method"]): r["mean"] for r in summary if r["protocol"] == protocol}
    methods = sorted({m for _, m in cells}, key=_method_order)
    datasets = sorted({d for d, _ in cells if all((d, m) in cells for m in methods)})
    return datasets, methods, np.array([[cells[d, m] for m in methods] for d in datasets])


def _method_order(method: str) -> tuple[int, str]:
    order = ("softmax", "bn", "sh", "bn+sh", "minirocket")
    return (order.index(method), method) if method in order else (len(order), method)


def wilcoxon_tests(rows: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Two-sided Wilcoxon signed-rank tests of each method against softmax, per protocol: over datasets (paired
    means, n = datasets) and over runs (paired by dataset and seed, n = runs). p is NaN where every difference is
    zero (the test is undefined)."""
    from scipy.stats import wilcoxon

    tests = []
    for protocol in PROTOCOLS:
        datasets, methods, scores = score_matrix(summary, protocol)
        runs = {
            (r["dataset"], r["method"], r["seed"]): r["test_accuracy"]
            for r in rows
            if r["protocol"] in (protocol, UNTUNED)
        }
        if BASELINE not in methods:
            continue
        base = scores[:, methods.index(BASELINE)]
        for j, method in enumerate(methods):
            if method == BASELINE:
                continue
            pairs = [
                (runs[d, method, s], runs[d, BASELINE, s])
                for d, m, s in runs
                if m == method and (d, BASELINE, s) in runs
            ]
            diff_runs = np.array([a - b for a, b in pairs])
            tests.append(
                {
                    "protocol": protocol,
                    "method": method,
                    "versus": BASELINE,
                    "datasets": len(datasets),
                    "mean_difference": float(np.mean(scores[:, j] - base)) if datasets else math.nan,
                    "wins": int(np.sum(scores[:, j] > base)),
                    "ties": int(np.sum(scores[:, j] == base)),
                    "losses": int(np.sum(scores[:, j] < base)),
                    "p_datasets": _wilcoxon_p(wilcoxon, scores[:, j] - base),
                    "runs": len(pairs),
                    "p_runs": _wilcoxon_p(wilcoxon, diff_runs),
                }
            )
    return tests


def _wilcoxon_p(wilcoxon: Any, differences: np.ndarray) -> float:
    if len(differences) == 0 or not np.any(differences):
        return math.nan
    return float(wilcoxon(differences).pvalue)


def plot_cd(summary: Sequence[dict[str, Any]], protocol: str, path: Path) -> bool:
    """aeon's critical-difference diagram of ``protocol`` (mean accuracies over datasets) as a PNG at ``path``;
    False (and no file) with fewer than 2 datasets or 2 methods."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from aeon.visualisation import plot_critical_difference

    datasets, methods, scores = score_matrix(summary, protocol)
    if len(datasets) < 2 or len(methods) < 2:
        return False
    figure, axes = plot_critical_difference(scores, methods, test="wilcoxon", correction="holm", alpha=0.1)
    axes.set_title(f"{protocol}: average rank over {len(datasets)} datasets (Wilcoxon-Holm, alpha 0.1)", fontsize=9)
    figure.savefig(path.with_suffix(".tmp.png"), dpi=150, bbox_inches="tight")
    plt.close(figure)
    path.with_suffix(".tmp.png").replace(path)
    return True


def benchmark_report(output: str | Path, *, command: str | None = None, wall_seconds: float | None = None) -> Path:
    """Write runs.csv, summary.{md,csv,json}, statistics.json, cd-<protocol>.png and claims.md into ``output``
    from its records; returns the path of summary.md. ``command``, ``wall_seconds``: how the records were made,
    stated in summary.md."""
    output = Path(output)
    records = read_records(output)
    rows = run_rows(records)
    if not rows:
        raise ValueError(f"{output}: no finished run yet (transformer runs also need their cross-validation)")
    complete, incomplete = split_complete(rows)
    summary = summary_rows(complete)
    tests = wilcoxon_tests(complete, summary)
    ranks = average_ranks(summary)
    atomic_write(output / "runs.csv", tables.csv_text(rows).encode())
    tables.write_rows(summary, output, "summary")
    atomic_write(output / "statistics.json", tables.json_text({"wilcoxon": tests, "average_ranks": ranks}).encode())
    figures = [p for p in PROTOCOLS if plot_cd(summary, p, output / f"cd-{p}.png")]
    text = summary_markdown(summary, tests, ranks, figures, command, wall_seconds)
    if incomplete:
        text += (
            f"\nLeft out of the tables and statistics, their runs unfinished (in runs.csv): {', '.join(incomplete)}.\n"
        )
    atomic_write(output / "summary.md", text.encode())
    atomic_write(output / "claims.md", claims_markdown(summary, tests).encode())
    return output / "summary.md"


def split_complete(rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """(the rows of the complete datasets, the names of the others): a dataset is complete when every method of
    the benchmark has as many rows per protocol there as the best-covered (dataset, method, protocol)."""
    counts: dict[tuple[str, str, str], int] = defaultdict(int)
    for row in rows:
        counts[row["dataset"], row["method"], row["protocol"]] += 1
    cells = {(m, p) for _, m, p in counts}
    most = max(counts.values())
    datasets = sorted({d for d, _, _ in counts})
    done = [d for d in datasets if all(counts.get((d, m, p), 0) == most for m, p in cells)]
    return [r for r in rows if r["dataset"] in done], [d for d in datasets if d not in done]


def average_ranks(summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each method's rank averaged over the datasets where every method ran, per protocol."""
    out = []
    for protocol in PROTOCOLS:
        datasets, methods, _ = score_matrix(summary, protocol)
        for method in methods:
            ranks = [
                r["rank"]
                for r in summary
                if r["protocol"] == protocol and r["method"] == method and r["dataset"] in datasets
            ]
            out.append({"protocol": protocol, "method": method, "average_rank": _mean(ranks), "datasets": len(ranks)})
    return out


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return tables.MISSING
    std = "" if math.isnan(row["std"]) else f" ± {row['std']:.2f}"
    return f"{row['mean']:.2f}{std}"


def accuracy_table(summary: Sequence[dict[str, Any]], protocol: str) -> str:
    """Datasets x methods, mean ± std test accuracy (%) under ``protocol``, the average rank last."""
    datasets = sorted({r["dataset"] for r in summary if r["protocol"] == protocol})
    methods = sorted({r["method"] for r in summary if r["protocol"] == protocol}, key=_method_order)
    cells = {(r["dataset"], r["method"]): r for r in summary if r["protocol"] == protocol}
    lines = ["| dataset | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for d in datasets:
        best = max(cells[d, m]["mean"] for m in methods if (d, m) in cells)
        marked = [
            (
                f"**{_cell(cells.get((d, m)))}**"
                if (d, m) in cells and cells[d, m]["mean"] == best
                else _cell(cells.get((d, m)))
            )
            for m in methods
        ]
        lines.append(f"| {d} | " + " | ".join(marked) + " |")
    return "\n".join(lines) + "\n"


def summary_markdown(
    summary: Sequence[dict[str, Any]],
    tests: Sequence[dict[str, Any]],
    ranks: Sequence[dict[str, Any]],
    figures: Sequence[str],
    command: str | None,
    wall_seconds: float | None,
) -> str:
    """summary.md: both protocols' accuracy tables, average ranks, Wilcoxon p-values, cost and redundancy."""
    parts = ["# UEA benchmark: test accuracy (%), mean ± std over seeds\n"]
    if command:
        took = "" if wall_seconds is None else f" ({wall_seconds / 60:.1f} min, its last invocation that ran jobs)"
        parts.append(f"Made by `{command}`{took}.\n")
    for protocol in PROTOCOLS:
        label = {
            "train-only": "epoch chosen by cross-validation on the training file; the headline",
            "test-selected": "epoch of the best test accuracy: an upper bound, for published tables only",
        }
        parts += [
            f"\n## {protocol} ({label[protocol]})\n",
            accuracy_table(summary, protocol),
            "\nThe untuned baselines choose nothing: their columns are the same in both tables.\n",
        ]
        rank_line = ", ".join(f"{r['method']} {r['average_rank']:.2f}" for r in ranks if r["protocol"] == protocol)
        parts.append(f"\nAverage rank over datasets (1 = best): {rank_line}.\n")
        if protocol in figures:
            parts.append(f"\n![critical difference, {protocol}](cd-{protocol}.png)\n")
    parts += [
        "\n## Wilcoxon signed-rank tests against softmax (two-sided)\n",
        tables.markdown(
            tests,
            [
                ("protocol", "protocol"),
                ("method", "method"),
                ("mean diff (points)", "mean_difference"),
                ("wins/ties/losses", lambda r: f"{r['wins']}/{r['ties']}/{r['losses']}"),
                ("p, datasets", lambda r: tables.number(r["p_datasets"], 4)),
                ("n datasets", "datasets"),
                ("p, runs", lambda r: tables.number(r["p_runs"], 4)),
                ("n runs", "runs"),
            ],
        ),
    ]
    cost = [r for r in summary if r["protocol"] == "train-only"]
    parts += [
        "\n## Cost and head redundancy (per run, mean over seeds)\n",
        tables.markdown(
            cost,
            [
                ("dataset", "dataset"),
                ("method", "method"),
                ("chosen epoch", lambda r: tables.number(r["epoch"], 1)),
                ("s / run", lambda r: tables.number(r["seconds"], 1)),
                ("s / epoch", lambda r: tables.number(r["seconds_per_epoch"], 3)),
                ("params", lambda r: tables.number(r["params"], 0)),
                ("head L2 distance", lambda r: tables.number(r["head_l2_distance"], 3)),
                ("head cosine", lambda r: tables.number(r["head_cosine"], 3)),
            ],
        ),
    ]
    return "".join(parts)


def claims_markdown(summary: Sequence[dict[str, Any]], tests: Sequence[dict[str, Any]], alpha: float = 0.05) -> str:
    """The paper's three claims, each variant against softmax, as the train-only records answer them:
    accuracy (Wilcoxon over datasets at ``alpha``), head redundancy (mean pairwise L2 distance of the heads'
    attention, larger = more diverse heads) and cost (seconds per epoch and parameters, as ratios)."""
    rows = [r for r in summary if r["protocol"] == "train-only"]
    cells = {(r["dataset"], r["method"]): r for r in rows}
    variants = sorted({r["method"] for r in rows if not r["untuned"]} - {BASELINE}, key=_method_order)
    baselines = sorted({r["method"] for r in rows if r["untuned"]}, key=_method_order)
    lines = [
        "# The paper's claims on the UEA benchmark (train-only protocol)\n",
        (
            f"Accuracy: two-sided Wilcoxon signed-rank test over datasets (their mean accuracies) at {alpha}; "
            "head redundancy and cost: per dataset, as ratios to softmax.\n"
        ),
    ]
    for variant in variants:
        test = next((t for t in tests if t["protocol"] == "train-only" and t["method"] == variant), None)
        lines.append(f"\n## {variant}\n")
        lines.append(_accuracy_claim(variant, test, alpha))
        pairs = [(cells[d, variant], cells[d, BASELINE]) for d, m in cells if m == variant and (d, BASELINE) in cells]
        lines.append(_ratio_claim("head L2 distance", "head_l2_distance", pairs, "more diverse heads (claimed)"))
        lines.append(_ratio_claim("seconds per epoch", "seconds_per_epoch", pairs, "slower"))
        lines.append(_ratio_claim("parameters", "params", pairs, "more parameters"))
    for method in baselines:
        test = next((t for t in tests if t["protocol"] == "train-only" and t["method"] == method), None)
        lines.append(f"\n## {method} (untuned) beside softmax\n{_accuracy_claim(method, test, alpha)}")
    return "".join(lines)


def _accuracy_claim(method: str, test: dict[str, Any] | None, alpha: float) -> str:
    if test is None or not test["datasets"]:
        return "- accuracy: no dataset with both methods yet.\n"
    p = test["p_datasets"]
    verdict = (
        "holds: better than softmax"
        if test["mean_difference"] > 0 and p < alpha
        else "does not hold: worse than softmax"
        if test["mean_difference"] < 0 and p < alpha
        else "not shown: no significant difference from softmax"
    )
    return (
        f"- accuracy: {verdict} ({test['mean_difference']:+.2f} points on average over {test['datasets']} "
        f"datasets, {test['wins']} wins / {test['ties']} ties / {test['losses']} losses, p = {p:.3g}; "
        f"over {test['runs']} paired runs p = {test['p_runs']:.3g}).\n"
    )


def _ratio_claim(name: str, key: str, pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]], larger: str) -> str:
    ratios = [a[key] / b[key] for a, b in pairs if b[key] and not math.isnan(a[key]) and not math.isnan(b[key])]
    if not ratios:
        return f"- {name}: not measured.\n"
    above = sum(r > 1 for r in ratios)
    return (
        f"- {name}: {statistics.fmean(ratios):.2f} x softmax's on average (range {min(ratios):.2f}–"
        f"{max(ratios):.2f}; above 1, {larger}, on {above} of {len(ratios)} datasets).\n"
    )
