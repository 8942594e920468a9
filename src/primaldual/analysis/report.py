"""``report``: finished ``train`` / ``compare`` run folders -> one Markdown report with figures, and its JSON.

What goes in (per run folder: ``config.yaml`` and ``metrics.json`` as written by
:func:`primaldual.training.run.train`; ``model.safetensors`` when present):

* accuracy per (dataset, attention): mean ± sample std over seeds of the test accuracy of the best epoch, with
  the model's inference cost: forward FLOPs per sample and samples per second (:func:`model_cost`: a batch of
  ``cost_samples`` test samples, the models of one dataset timed side by side on this machine's CPU), and the
  runs' mean peak memory while training and testing (metrics.json's ``peak_memory_bytes``; older runs lack it);
* every run, one row each;
* head redundancy per layer (:func:`head_redundancy`) of each run's trained model on the first ``samples``
  test samples of its dataset (any task: the data and model are rebuilt as training built them), and the
  attention maps of the first of them; runs without ``model.safetensors`` are listed as not measured;
* cost versus sequence length: rows of :func:`efficiency` given by the caller (a measurement on the machine
  that matters), or else FLOPs counted here at the runs' shapes (core and layer scopes, CPU; FLOP counts do
  not depend on the machine).
"""

from __future__ import annotations

import csv
import glob
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from ..tables import json_text, markdown, number
from ..training.config import TrainConfig
from .efficiency import efficiency as measure_efficiency
from .efficiency import model_cost
from .plots import COST_METRICS, plot_accuracy, plot_attention_maps, plot_cost, plot_redundancy
from .redundancy import attention_records, head_redundancy

METRIC_KEYS = ("test_accuracy", "val_accuracy", "best_epoch", "epochs", "seconds_per_epoch", "params")


@dataclass
class Run:
    """One finished training run: its folder, resolved config and metrics.json."""

    path: Path
    config: TrainConfig
    metrics: dict[str, Any]

    @property
    def group(self) -> tuple[str, str]:
        return self.config.dataset, self.config.attention


def report(
    run_dirs: Sequence[str | Path],
    output: str | Path,
    *,
    efficiency: str | Path | Sequence[Mapping[str, Any]] | None = None,
    lengths: Sequence[int] = (256, 512, 1024, 2048),
    samples: int = 8,
    cost_samples: int = 64,
) -> Path:
    """Write ``output/report.md`` (tables and PNG figures, for a person) and ``output/report.json`` (the same
    tables as lists of rows, for a script); return the path of ``report.md``.

    ``run_dirs``: compare folders (``summary.csv`` and ``<attention>/seed<k>/`` run folders) and/or single run
    folders (``metrics.json``, ``config.yaml``). ``efficiency``: rows of :func:`efficiency`, or the folder or
    ``efficiency.json`` it wrote; None counts FLOPs at ``lengths`` instead. ``samples``: test sequences per
    run for head redundancy; ``cost_samples``: test samples per timed forward of the cost columns.
    """
    if isinstance(run_dirs, (str, Path)) or not run_dirs:
        raise ValueError(f"run_dirs must be a non-empty list of run or compare folders, got {run_dirs!r}")
    if samples < 1 or cost_samples < 1:
        raise ValueError(f"samples and cost_samples must be >= 1, got {samples} and {cost_samples}")
    runs = find_runs(run_dirs)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    datasets: dict[tuple, Any] = {}  # each dataset loaded once
    accuracy = _accuracy_rows(runs, datasets, cost_samples)
    redundancy, maps = _redundancy(runs, samples, output, notes, datasets)
    cost = _efficiency_rows(efficiency, runs, lengths, notes)
    figures = {
        "accuracy": plot_accuracy(accuracy, output / "accuracy.png").name,
        "cost": plot_cost(cost, output / "cost.png").name,
        "attention_maps": maps,
    }
    if redundancy:
        figures["redundancy"] = plot_redundancy(
            [r for r in redundancy if r["layer"] != "all"], output / "redundancy.png"
        ).name
    content = {
        "runs": [_run_row(run) for run in runs],
        "accuracy": accuracy,
        "redundancy": redundancy,
        "efficiency": cost,
        "figures": figures,
        "notes": notes,
    }
    (output / "report.json").write_text(json_text(content))
    path = output / "report.md"
    path.write_text(_report_text(content, run_dirs))
    return path


def find_runs(run_dirs: Sequence[str | Path]) -> list[Run]:
    """The runs in ``run_dirs`` (compare or single run folders), each once, in the order found."""
    runs: dict[Path, Run] = {}
    for folder in map(Path, run_dirs):
        if not folder.is_dir():
            raise FileNotFoundError(f"run folder not found: {folder}")
        if (folder / "summary.csv").is_file():
            with open(folder / "summary.csv", newline="") as file:
                listed = [row.get("attention") for row in csv.DictReader(file)]
            # the compare's order: attentions as summary.csv lists them, seeds by number
            found = {
                name: sorted(
                    (p.parent for p in folder.glob(f"{glob.escape(str(name))}/seed*/metrics.json")),
                    key=lambda p: _seed_number(p.name),
                )
                for name in listed
            }
            missing = [name for name, paths in found.items() if not paths]
            if not listed:
                raise ValueError(f"{folder}/summary.csv lists no attention (expected compare's summary)")
            if missing:
                raise ValueError(
                    f"{folder}/summary.csv lists attention {missing} without a finished run folder "
                    f"{folder}/<attention>/seed<k>/metrics.json"
                )
            paths = [path for name in listed for path in found[name]]
        elif (folder / "metrics.json").is_file():
            paths = [folder]
        else:
            raise FileNotFoundError(
                f"{folder} is neither a compare folder (summary.csv) nor a run folder (metrics.json)"
            )
        for path in paths:
            runs.setdefault(path.resolve(), _read_run(path))
    return list(runs.values())


def _seed_number(name: str) -> tuple[float, str]:
    """``seed12`` -> 12 (then the name, for folders that are not ``seed<k>``)."""
    suffix = name.removeprefix("seed")
    return (int(suffix), name) if suffix.isdigit() else (math.inf, name)


def _read_run(path: Path) -> Run:
    config_file, metrics_file = path / "config.yaml", path / "metrics.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"run folder {path} has no config.yaml")
    try:
        config = TrainConfig.from_dict(yaml.safe_load(config_file.read_text()))
    except (TypeError, ValueError, yaml.YAMLError) as error:
        raise ValueError(f"{config_file}: not a training config: {error}") from error
    metrics = json.loads(metrics_file.read_text())
    missing = [key for key in METRIC_KEYS if key not in metrics]
    if missing:
        raise ValueError(f"{metrics_file} lacks {', '.join(missing)} (expected the metrics.json of a finished run)")
    return Run(path, config, metrics)


def _run_row(run: Run) -> dict[str, Any]:
    m = run.metrics
    return {
        "run": str(run.path),
        "dataset": run.config.dataset,
        "attention": run.config.attention,
        "seed": run.config.seed,
        "test_acc": 100 * m["test_accuracy"],
        "val_acc": _percent(m["val_accuracy"]),
        "best_epoch": m["best_epoch"],
        "epochs": m["epochs"],
        "seconds_per_epoch": m["seconds_per_epoch"],
        "params": m["params"],
    }


def _accuracy_rows(runs: list[Run], datasets: dict, cost_samples: int) -> list[dict[str, Any]]:
    """Per (dataset, attention): ``compare``'s summary row over its runs (mean, sample std; accuracies in %) and
    the inference cost of its model (freshly built: cost does not depend on the weights)."""
    from ..training import summary_row
    from ..training.tasks import build_model, model_inputs

    groups = _grouped(runs)
    cost: dict[tuple[str, str], dict[str, float]] = {}
    for dataset in dict.fromkeys(d for d, _ in groups):
        firsts = {attention: group[0] for (d, attention), group in groups.items() if d == dataset}
        data = _data(next(iter(firsts.values())), datasets)
        with torch.random.fork_rng():  # the initial weights do not matter; the caller's random state does
            models = {attention: build_model(run.config, _data(run, datasets)) for attention, run in firsts.items()}
        measured = model_cost(models, model_inputs(data.test, cost_samples))
        cost.update({(dataset, attention): values for attention, values in measured.items()})
    return [
        {"dataset": dataset, **summary_row(attention, [run.metrics for run in group]), **cost[dataset, attention]}
        for (dataset, attention), group in groups.items()
    ]


def _redundancy(
    runs: list[Run], samples: int, output: Path, notes: list[str], datasets: dict
) -> tuple[list[dict[str, Any]], list[str]]:
    """Per (dataset, attention): head redundancy per layer and over layers, mean over the measured runs; and
    the attention-map figures (first measured run of each group, first layer, first test sequence)."""
    rows, maps = [], []
    for (dataset, attention), group in _grouped(runs).items():
        measured = []
        for run in group:
            if not (run.path / "model.safetensors").is_file():
                notes.append(f"head redundancy not measured for {run.path}: no model.safetensors")
                continue
            model, batch = _model_and_batch(run, samples, datasets)
            measured.append(head_redundancy(model, batch))
            if len(measured) == 1:
                maps.append(
                    _attention_map(
                        model,
                        batch,
                        output / f"attention_{_slug(dataset)}_{_slug(attention)}.png",
                        f"{dataset} / {attention}: first layer, first test sequence",
                    )
                )
        if not measured:
            continue
        layer_rows = zip(*(result["layers"] for result in measured))
        for index, per_run in enumerate(layer_rows):
            rows.append(
                {"dataset": dataset, "attention": attention, "layer": index, "runs": len(measured), **_means(per_run)}
            )
        rows.append(
            {"dataset": dataset, "attention": attention, "layer": "all", "runs": len(measured), **_means(measured)}
        )
    return rows, maps


def _means(results: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    return {key: statistics.fmean(r[key] for r in results) for key in ("l2_distance", "cosine_similarity")}


def _model_and_batch(run: Run, samples: int, datasets: dict) -> tuple[Any, tuple]:
    """The run's trained model (as ``train`` builds it) and its inputs for the first ``samples`` test samples."""
    from ..training.checkpoints import load_weights
    from ..training.tasks import build_model, model_inputs

    data = _data(run, datasets)
    model = load_weights(build_model(run.config, data), run.path / "model.safetensors")
    return model, model_inputs(data.test, samples)


def _data(run: Run, datasets: dict) -> Any:
    """The run's data as training loaded it, loaded once per set of data options into ``datasets``."""
    from ..training.tasks import DATA_OPTIONS, load_data

    key = tuple(json.dumps(getattr(run.config, name)) for name in DATA_OPTIONS)  # lists too
    if key not in datasets:
        datasets[key] = load_data(run.config)
    return datasets[key]


def _attention_map(model: Any, batch: tuple, path: Path, title: str) -> str:
    record = attention_records(model, batch)[0]
    valid = record.valid_queries()[0]
    weights = record.weights(0)[0][:, valid][:, :, valid]
    scales = record.layer.scales or (None,) * weights.shape[0]
    labels = [f"head {h}" + (f" (r={r})" if r else "") for h, r in enumerate(scales)]
    return plot_attention_maps(weights, path, title=title, head_labels=labels).name


def _efficiency_rows(
    given: str | Path | Sequence[Mapping[str, Any]] | None, runs: list[Run], lengths: Sequence[int], notes: list[str]
) -> list[dict[str, Any]]:
    if given is None:
        c = runs[0].config
        names = list(dict.fromkeys(run.config.attention for run in runs))
        scales = next((run.config.scales for run in runs if run.config.scales), None)
        window = next((run.config.window for run in runs if run.config.window is not None), 16)
        notes.append(
            f"cost: FLOPs counted on CPU at width {c.width}, {c.heads} heads, batch 1 (shapes of "
            f"{runs[0].path}); pass efficiency rows for peak memory and time"
        )
        return measure_efficiency(
            names,
            lengths,
            scopes=("core", "layer"),
            measure=("flops",),
            dim=c.width,
            num_heads=c.heads,
            scales=scales,
            window=window,
        )
    if isinstance(given, (str, Path)):
        path = Path(given) / "efficiency.json" if Path(given).is_dir() else Path(given)
        if path.suffix != ".json" or not path.is_file():
            raise FileNotFoundError(
                f"efficiency must be rows, a folder holding efficiency.json or that file; {path} not found"
            )
        given = json.loads(path.read_text())
    rows = [dict(row) for row in given]
    if not rows:
        raise ValueError("efficiency holds no rows")
    return rows


def _grouped(runs: list[Run]) -> dict[tuple[str, str], list[Run]]:
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    return groups


def _percent(value: float | None) -> float:
    return math.nan if value is None else 100 * value


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)


# --- Markdown -------------------------------------------------------------------------------------------------

# absolute figures of efficiency rows: key -> (label, divisor)
ABSOLUTE_COST = {"flops": ("GFLOPs", 1e9), "peak_bytes": ("peak memory (MB)", 1e6), "seconds": ("time (ms)", 1e-3)}


def cost_tables(rows: Sequence[Mapping[str, Any]], absolute: bool = False) -> str:
    """One table per measured ratio (and, with ``absolute``, per measured quantity): a row per (scope,
    attention), a column per sequence length."""
    lengths = sorted({row["length"] for row in rows})
    keys = list(dict.fromkeys((row["scope"], row["attention"]) for row in rows))
    cells = {(row["scope"], row["attention"], row["length"]): row for row in rows}
    metrics = {metric: (label, 1.0) for metric, label in COST_METRICS.items()}
    if absolute:
        metrics.update(ABSOLUTE_COST)
    parts = []
    for metric, (label, unit) in metrics.items():
        if all(row.get(metric) is None for row in rows):
            continue

        def value(scope: str, attention: str, length: int, metric: str = metric, unit: float = unit) -> Any:
            found = cells.get((scope, attention, length), {}).get(metric)
            return None if found is None else found / unit

        pivot = [{"scope": s, "attention": a, **{n: value(s, a, n) for n in lengths}} for s, a in keys]
        columns = [("scope", "scope"), ("attention", "attention"), *((f"N={n}", n) for n in lengths)]
        parts.append(f"{label}, by sequence length:\n\n" + markdown(pivot, columns))
    analytic = [r for r in rows if r.get("analytic_flops_ratio") is not None and r.get("flops_ratio") is not None]
    if analytic:
        columns = [
            ("attention", "attention"),
            ("N", "length"),
            ("counted", "flops_ratio"),
            ("analytic", "analytic_flops_ratio"),
            ("rel. difference", lambda r: r["flops_ratio"] / r["analytic_flops_ratio"] - 1),
        ]
        parts.append(
            "SH FLOPs ratio, counted versus analytic (core scope; docs/theory.md: mean over heads of 1/r):\n\n"
            + markdown(analytic, columns)
        )
    return "\n".join(parts)


def _report_text(content: Mapping[str, Any], run_dirs: Sequence[str | Path]) -> str:
    figures = content["figures"]
    out = [
        "# primaldual report\n",
        f"{len(content['runs'])} run(s) from: {', '.join(f'`{d}`' for d in run_dirs)}. "
        "Machine-readable tables: `report.json` (same rows, unrounded).\n",
        "## Accuracy\n",
        "Test accuracy (%) of the best epoch (highest validation accuracy; lowest training loss for runs without a "
        "validation split, whose val acc is –), mean ± sample std over seeds. Cost of the model: forward "
        "FLOPs per sample (FlopCounterMode: matrix products and attention kernels) and inference samples per second "
        "(a batch of test samples, eval mode, the models of a dataset timed side by side on the CPU that wrote this "
        "report). Peak MB: the runs' mean peak memory while training and testing (CUDA: allocated by PyTorch; CPU: "
        "resident set of the process), – where a run predates its measurement.\n",
        markdown(
            content["accuracy"],
            [
                ("dataset", "dataset"),
                ("attention", "attention"),
                ("test acc (%)", "test_acc_mean"),
                ("std", "test_acc_std"),
                ("val acc (%)", "val_acc_mean"),
                ("params", "params"),
                ("MFLOPs / sample", lambda r: r["flops_per_sample"] / 1e6),
                ("samples / s", "samples_per_second"),
                ("s / epoch", "seconds_per_epoch"),
                ("peak MB", lambda r: number(r["peak_memory_mb"], 1)),
                ("epochs", "epochs_mean"),
                ("seeds", "seeds"),
            ],
        ),
        f"![accuracy]({figures['accuracy']})\n",
        "## Runs\n",
        markdown(
            content["runs"],
            [
                ("run", "run"),
                ("dataset", "dataset"),
                ("attention", "attention"),
                ("seed", "seed"),
                ("test acc (%)", "test_acc"),
                ("val acc (%)", "val_acc"),
                ("best epoch", "best_epoch"),
                ("epochs", "epochs"),
                ("s / epoch", "seconds_per_epoch"),
                ("params", "params"),
            ],
        ),
        "## Head redundancy\n",
        "Per layer: mean over non-padded queries and pairs of heads of the L2 distance between the heads' attention "
        "distributions (larger: less redundant) and of the cosine similarity of the heads' outputs before the output "
        "projection (smaller: less redundant); SH's weight on a pooled key is spread evenly over the valid keys of its "
        "window. Trained models, first test sequences, eval mode; mean over runs; layer `all` is the mean over "
        "layers.\n",
    ]
    if content["redundancy"]:
        out += [
            markdown(
                content["redundancy"],
                [
                    ("dataset", "dataset"),
                    ("attention", "attention"),
                    ("layer", "layer"),
                    ("L2 distance", lambda r: number(r["l2_distance"], 4)),
                    ("cosine similarity", lambda r: number(r["cosine_similarity"], 4)),
                    ("runs", "runs"),
                ],
            ),
            f"![redundancy]({figures['redundancy']})\n",
            "### Attention maps\n",
            *(f"![{name}]({name})\n" for name in figures["attention_maps"]),
        ]
    else:
        out.append("Not measured (no run folder holds model.safetensors).\n")
    out += [
        "## Cost versus sequence length\n",
        "Ratios to softmax attention on the same shapes, measured side by side. `core`: the attention kernel alone "
        "(SH's FLOPs saving, mean over heads of 1/r, applies here); `layer`: one Attention forward, qkv and output projections "
        "included (SH projects its pooled tokens onto keys and values, so its saving reaches them); `step`: one training step of a SequenceClassifier. FLOPs from PyTorch's FlopCounterMode "
        "(matrix products and attention kernels; elementwise work such as BN statistics and pooling is not counted).\n",
        cost_tables(content["efficiency"]),
        f"![cost]({figures['cost']})\n",
    ]
    if content["notes"]:
        out += ["## Notes\n", *(f"- {note}" for note in content["notes"]), ""]
    return "\n".join(out)
