"""The report of the language-model benchmark (:mod:`primaldual.training.lm_benchmark`) from its records.

Writes into the benchmark's folder:

* ``runs.csv``: one row per run and metric (``dataset, variant, seed, metric, pairs, length, value``): test bits per
  byte, accuracy and loss, seconds per training step, parameters and head redundancy of every run, MQAR accuracy
  per cell, and, under dataset ``generation``, tokens per second and cache bytes per token (``length``: tokens);
* ``summary.md`` and ``statistics.json``: mean ± sample std over seeds, and the paired comparison of each variant to
  softmax over seeds (a paired t-test: with 3 seeds a Wilcoxon signed-rank test cannot go below p = 0.25);
* ``curves.png`` (validation loss per epoch), ``mqar.png`` (accuracy against pairs, a panel per length) and
  ``quality-cache.png`` (test bits per byte against cache bytes per generated token at the longest generation, a
  point per variant).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import tables
from ..files import atomic_write
from ..training.jobs import records
from .plots import plot_lm_curves, plot_mqar, plot_quality_cache, variant_rank

RUN_METRICS = ("test_bits_per_token", "test_accuracy", "test_loss", "val_loss", "train_seconds")


def run_rows(output: str | Path) -> list[dict[str, Any]]:
    """The rows of runs.csv from the records under ``output``."""
    rows = []
    for record in records(output):
        if "rows" in record:  # a generation job
            for row in record["rows"]:
                for metric in ("tokens_per_second", "cache_bytes_per_token"):
                    rows.append(
                        _row("generation", row["attention"], None, metric, row[metric], length=record["tokens"])
                    )
            continue
        key = (record["dataset"], record["variant"], record["seed"])
        metrics = record["metrics"]
        for metric in RUN_METRICS:
            rows.append(_row(*key, metric, metrics[metric]))
        rows.append(_row(*key, "params", metrics["params"]))
        rows.append(_row(*key, "seconds_per_step", record["seconds_per_step"]))
        for metric in ("l2_distance", "cosine_similarity"):
            rows.append(_row(*key, metric, record["redundancy"][metric]))
        for cell in record.get("cells", ()):
            rows.append(_row(*key, "accuracy", cell["accuracy"], pairs=cell["pairs"], length=cell["length"]))
    return rows


def _row(dataset: str, variant: str, seed: int | None, metric: str, value: float, **cell: int) -> dict[str, Any]:
    return {"dataset": dataset, "variant": variant, "seed": seed, "metric": metric,
            "pairs": cell.get("pairs"), "length": cell.get("length"), "value": value}  # fmt: skip


def paired(values: dict[str, dict[int, float]], reference: str = "softmax") -> dict[str, dict[str, float]]:
    """Per variant: mean, sample std and smallest value, and against ``reference`` over the seeds both have: the
    mean difference and a two-sided paired t-test's p (NaN with fewer than 2 common seeds or identical differences)."""
    from scipy.stats import ttest_rel

    out = {}
    for variant, by_seed in values.items():
        seeds = sorted(by_seed)
        found = [by_seed[s] for s in seeds]
        row = {"mean": statistics.fmean(found), "std": statistics.stdev(found) if len(found) > 1 else math.nan,
               "min": min(found),
               "seeds": len(found)}  # fmt: skip
        common = [s for s in seeds if s in values.get(reference, {})]
        if variant != reference and common:
            mine, theirs = [by_seed[s] for s in common], [values[reference][s] for s in common]
            row["difference"] = statistics.fmean(a - b for a, b in zip(mine, theirs))
            differences = {round(a - b, 12) for a, b in zip(mine, theirs)}
            row["p"] = float(ttest_rel(mine, theirs).pvalue) if len(common) > 1 and len(differences) > 1 else math.nan
        out[variant] = row
    return out


def _by_variant(rows: Sequence[dict[str, Any]], dataset: str, metric: str, **cell: int) -> dict[str, dict[int, float]]:
    found: dict[str, dict[int, float]] = defaultdict(dict)
    for row in rows:
        if row["dataset"] == dataset and row["metric"] == metric and all(row[k] == v for k, v in cell.items()):
            found[row["variant"]][row["seed"]] = row["value"]
    return {v: found[v] for v in sorted(found, key=variant_rank)}


def statistics_of(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The summary's numbers: per dataset and metric, :func:`paired` statistics per variant; MQAR per cell;
    generation per length."""
    out: dict[str, Any] = {}
    for dataset in sorted({r["dataset"] for r in rows} - {"generation"}):
        metrics = sorted({r["metric"] for r in rows if r["dataset"] == dataset and r["pairs"] is None})
        out[dataset] = {m: paired(_by_variant(rows, dataset, m)) for m in metrics}
        cells = sorted({(r["pairs"], r["length"]) for r in rows if r["dataset"] == dataset and r["pairs"] is not None})
        if cells:
            out[dataset]["cells"] = [
                {"pairs": p, "length": n, "variants": paired(_by_variant(rows, dataset, "accuracy", pairs=p, length=n))}
                for p, n in cells
            ]
    out["train_seconds"] = sum(r["value"] for r in rows if r["metric"] == "train_seconds")
    generation = [r for r in rows if r["dataset"] == "generation"]
    if generation:
        out["generation"] = [
            {
                "tokens": n,
                **{
                    m: {r["variant"]: r["value"] for r in generation if r["length"] == n and r["metric"] == m}
                    for m in ("tokens_per_second", "cache_bytes_per_token")
                },
            }  # fmt: skip
            for n in sorted({r["length"] for r in generation})
        ]
    return out


def lm_report(output: str | Path, command: str | None = None, wall_seconds: float | None = None) -> Path:
    """Write runs.csv, statistics.json, summary.md and the plots into ``output``; return summary.md's path."""
    output = Path(output)
    rows = run_rows(output)
    if not rows:
        raise FileNotFoundError(f"no record under {output}/records: run the benchmark first")
    found = statistics_of(rows)
    atomic_write(output / "runs.csv", tables.csv_text(rows).encode())
    atomic_write(output / "statistics.json", tables.json_text(found).encode())
    plot_lm_curves(records(output), output / "curves.png")
    if "cells" in found.get("mqar", {}):
        plot_mqar(found["mqar"]["cells"], output / "mqar.png")
    if "text" in found and "generation" in found:
        plot_quality_cache(found["text"]["test_bits_per_token"], found["generation"][-1], output / "quality-cache.png")
    summary = output / "summary.md"
    atomic_write(summary, summary_markdown(found, command, wall_seconds).encode())
    return summary


def _cell(stats: dict[str, float], digits: int = 3, scale: float = 1.0) -> str:
    text = f"{scale * stats['mean']:.{digits}f}"
    if not math.isnan(stats["std"]):
        text += f" ± {scale * stats['std']:.{digits}f}"
    return text


def _versus(stats: dict[str, float], digits: int = 3, scale: float = 1.0) -> str:
    if "difference" not in stats:
        return ""
    p = "" if math.isnan(stats["p"]) else f" (p = {stats['p']:.3f})"
    return f"{scale * stats['difference']:+.{digits}f}{p}"


def summary_markdown(found: dict[str, Any], command: str | None, wall_seconds: float | None) -> str:
    """The summary's Markdown: the text and MQAR tables, MQAR per cell, generation."""
    parts = ["# Language-model benchmark\n"]
    if command:
        took = f", {wall_seconds / 60:.0f} min (this invocation)" if wall_seconds else ""
        parts.append(f"Made by `{command}`{took}; training took {found['train_seconds'] / 60:.0f} min in all, "
                     "summed over the runs. Mean ± sample std over seeds; \"vs softmax\": the mean paired "
                     "difference and a two-sided paired t-test over seeds.\n")  # fmt: skip
    for dataset, quality, label in (("text", "test_bits_per_token", "test bits/byte"),
                                    ("mqar", "test_accuracy", "test accuracy (%)")):  # fmt: skip
        if dataset in found:
            parts.append(f"## {dataset}\n")
            parts.append(_dataset_markdown(found[dataset], quality, label, percent=dataset == "mqar"))
    if "generation" in found:
        parts.append("## generation\n")
        parts.append(_generation_markdown(found["generation"]))
    return "\n".join(parts)


def _dataset_markdown(stats: dict[str, Any], quality: str, label: str, percent: bool) -> str:
    """One dataset's table (a row per variant), and MQAR's cells."""
    scale, digits = (100.0, 2) if percent else (1.0, 3)
    rows = [{"variant": v, **{m: stats[m][v] for m in stats if m != "cells"}} for v in stats[quality]]
    text = tables.markdown(rows, [
        ("attention", "variant"),
        (label, lambda r: _cell(r[quality], digits, scale)),
        ("vs softmax", lambda r: _versus(r[quality], digits, scale)),
        ("val loss", lambda r: _cell(r["val_loss"])),
        ("s / step (fastest seed)", lambda r: f"{r['seconds_per_step']['min']:.3f}"),
        ("params", lambda r: f"{r['params']['mean']:,.0f}"),
        ("head L2 distance", lambda r: _cell(r["l2_distance"])),
        ("head cosine", lambda r: _cell(r["cosine_similarity"])),
        ("seeds", lambda r: str(r[quality]["seeds"])),
    ])  # fmt: skip
    return text + (_cells_markdown(stats["cells"]) if "cells" in stats else "")


def _cells_markdown(cells: list[dict[str, Any]]) -> str:
    variants = list(cells[0]["variants"])
    rows = [{"cell": f"{c['pairs']} pairs, {c['length']} tokens", **c["variants"]} for c in cells]
    columns = [("cell", "cell")] + [(v, lambda r, v=v: _cell(r[v], 1, 100.0) if v in r else "") for v in variants]
    return "\nMQAR test accuracy (%) per cell\n\n" + tables.markdown(rows, columns)


def _generation_markdown(rows: list[dict[str, Any]]) -> str:
    names = list(rows[0]["tokens_per_second"])
    table = [{"tokens": r["tokens"], **{f"{m}:{v}": r[m].get(v, math.nan) for m in r if m != "tokens" for v in names}}
             for r in rows]  # fmt: skip
    speed = [(v, lambda r, v=v: f"{r[f'tokens_per_second:{v}']:.0f}") for v in names]
    size = [(v, lambda r, v=v: f"{r[f'cache_bytes_per_token:{v}']:,.0f}") for v in names]
    return (
        "Tokens per second (greedy, batch 1; sdpa: transformers' SDPA with DynamicCache)\n\n"
        + tables.markdown(table, [("tokens", "tokens"), *speed])
        + "\nCache bytes per token at the end of generation\n\n"
        + tables.markdown(table, [("tokens", "tokens"), *size])
    )


def invocation(output: str | Path) -> dict[str, Any]:
    """The command and wall time recorded by the CLI (``invocation.json``), {} if there is none."""
    path = Path(output) / "invocation.json"
    return json.loads(path.read_text()) if path.is_file() else {}
