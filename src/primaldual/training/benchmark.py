"""The offline UEA benchmark: attention variants x datasets x seeds, two protocols from one run per seed, MiniRocket.

Work is cut into jobs, each writing one record (``OUTPUT/records/<dataset>/<method>/<job>/record.json``):

==========  ===========================================================================================
job         what it does
==========  ===========================================================================================
``cv-k``    fold k of a stratified K-fold split of the *training file* (seed :data:`CV_SEED`): trains on
            the other folds, records the validation accuracy of every epoch
``seed-s``  trains with seed s on the whole training file, records the test accuracy of every epoch
            without acting on it (:class:`~.epochs.EpochEvaluation`), its cost, and ``measure(model,
            test batch)`` (the CLI passes head redundancy)
``seed-s``  (a method of :data:`BASELINES`) an aeon classifier, untuned, seed s: fit + predict
==========  ===========================================================================================

The protocols (:func:`protocol_accuracies`): *train-only* is the test accuracy at the epoch where the mean of the
K validation curves is highest (the latest such epoch), chosen without the test file; *test-selected* is the best
test accuracy over epochs, the Time-Series-Library protocol behind published UEA numbers (an upper bound).

The jobs run on :mod:`.jobs` (resumable, shared by processes, workers). A record holds the options it was made
with; a record made with other options is an error, not a silent mix.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data.sequences import SequenceData, SequenceSplit
from ..data.uea import load_uea
from ..functional import PAPER_VARIANTS
from .config import TrainConfig
from .epochs import EpochEvaluation
from .jobs import run_jobs
from .module import Classifier
from .run import lightning_output
from .tasks import build_model

#: The transformer of every dataset unless overridden: small enough for a run of seconds on one CPU thread.
#: ``patch_size`` is not here: it is ``ceil(length / TOKENS)`` (series cut into at most TOKENS tokens).
SETTINGS: dict[str, Any] = {
    "d_model": 32,
    "depth": 2,
    "num_heads": 4,
    "mlp_ratio": 2.0,
    "dropout": 0.2,
    "pooling": "flatten",
    "epochs": 20,
    "batch_size": 32,
    "lr": 1e-3,
    "weight_decay": 0.05,
    "warmup_epochs": 3.0,
    "grad_clip": 1.0,
    "jitter": 0.0,
    "normalize": True,
    "val_fraction": 0.0,
    "threads": 1,
    "accelerator": "cpu",
}
TOKENS = 32
CV_SEED = 0  # the seed of the fold split and of the cross-validation runs
MINIROCKET = "minirocket"
#: aeon's classifiers that may run beside the transformers (``aeon.classification.convolution_based``), untuned.
BASELINES = {MINIROCKET: "MiniRocketClassifier", "multirockethydra": "MultiRocketHydraClassifier"}
VARIANTS = PAPER_VARIANTS
#: The bundled multivariate sets in the order the benchmark runs them (the largest last).
DATASETS = (
    "JapaneseVowels",
    "BasicMotions",
    "SelfRegulationSCP1",
    "SelfRegulationSCP2",
    "FingerMovements",
    "HandMovementDirection",
    "EyesOpenShut",
    "Blink",
)

Measure = Callable[[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]], Mapping[str, float]]


@dataclass(frozen=True)
class Job:
    """One unit of work: ``kind`` cv (``index`` = fold), seed (``index`` = seed); ``method`` a variant or a baseline."""

    dataset: str
    method: str
    kind: str
    index: int

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.index}"

    @property
    def label(self) -> str:
        return f"{self.dataset} {self.method} {self.name}"

    def folder(self, output: str | Path) -> Path:
        return Path(output) / "records" / self.dataset / self.method / self.name


def jobs(
    datasets: Sequence[str],
    variants: Sequence[str],
    seeds: Sequence[int],
    folds: int,
    baselines: Sequence[str] = (MINIROCKET,),
) -> list[Job]:
    """Every job of a benchmark, dataset by dataset (a worker then reuses the data it loaded)."""
    if folds < 2:
        raise ValueError(f"folds must be >= 2 (k-fold cross-validation), got {folds}")
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise ValueError(f"baselines must be among {', '.join(BASELINES)}, got {', '.join(unknown)}")
    if not datasets or not seeds or not (variants or baselines):
        raise ValueError(f"a benchmark needs datasets, seeds and methods, got {datasets}, {seeds}, {variants}")
    out = []
    for dataset in datasets:
        out += [Job(dataset, v, "cv", k) for v in variants for k in range(folds)]
        out += [Job(dataset, v, "seed", s) for s in seeds for v in variants]
        out += [Job(dataset, b, "seed", s) for b in baselines for s in seeds]
    return out


def dataset_config(
    dataset: str,
    data: SequenceData,
    attention: str,
    seed: int,
    overrides: Mapping[str, Any] | None = None,
    root: str | None = None,
) -> TrainConfig:
    """The benchmark's :class:`TrainConfig` for ``dataset``: :data:`SETTINGS`, patch size from the length, then
    ``overrides`` (a mapping of options for every dataset, whose ``datasets`` entry maps names to options for one)."""
    overrides = dict(overrides or {})
    per_dataset = overrides.pop("datasets", {}) or {}
    options = {
        **SETTINGS,
        "patch_size": math.ceil(data.max_length / TOKENS),
        **overrides,
        **per_dataset.get(dataset, {}),
    }
    return TrainConfig.from_dict(
        {**options, "task": "timeseries", "dataset": dataset, "root": root, "attention": attention, "seed": seed}
    )


@lru_cache(maxsize=2)
def load(dataset: str, root: str | None, normalize: bool = True) -> SequenceData:
    """The whole training file as ``train`` (no validation split) and the test file; cached per process."""
    return load_uea(dataset, root=root, val_fraction=0.0, seed=0, normalize=normalize)


def folds_of(labels: torch.Tensor, folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (fit, validation) indices of a stratified K-fold split of ``labels``, seeded with :data:`CV_SEED`."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(labels.numpy())
    if counts[counts > 0].min() < folds:
        raise ValueError(f"folds={folds}: a class of the training file has only {counts[counts > 0].min()} series")
    return list(StratifiedKFold(folds, shuffle=True, random_state=CV_SEED).split(np.zeros(len(labels)), labels))


def subset(split: SequenceSplit, index: np.ndarray) -> SequenceSplit:
    """The series ``index`` of ``split``."""
    i = torch.as_tensor(index, dtype=torch.int64)
    return SequenceSplit(split.x[i], split.mask[i], split.y[i], split.jitter)


def fit(
    config: TrainConfig, data: SequenceData, train: SequenceSplit, evaluate: Mapping[str, SequenceSplit]
) -> tuple[Classifier, EpochEvaluation, float]:
    """Train ``config``'s model on ``train`` for ``config.epochs`` epochs (no selection, no checkpoint), the
    accuracy on each of ``evaluate`` recorded after every epoch; returns the module, the record and the seconds."""
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.set_flush_denormal(True)
    L.seed_everything(config.seed, workers=True, verbose=False)
    model = build_model(config, data)
    module = Classifier.for_config(model, data.num_classes, config)
    record = EpochEvaluation(evaluate)
    loader = DataLoader(replace(train, jitter=config.jitter).to_dataset(), config.batch_size, shuffle=True)
    started = time.perf_counter()
    with lightning_output(False, ignore=(".*GPU available but not used.*",)):
        trainer = L.Trainer(
            max_epochs=config.epochs,
            accelerator=config.accelerator,
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            gradient_clip_val=config.grad_clip or None,
            callbacks=[record],
            precision=config.precision,
        )
        trainer.fit(module, loader)
    return module, record, time.perf_counter() - started


def run_cv(job: Job, overrides: Mapping[str, Any], root: str | None, folds: int) -> dict[str, Any]:
    """The record of a cross-validation fold (see the module's table)."""
    data = load(job.dataset, root)
    config = dataset_config(job.dataset, data, job.method, CV_SEED, overrides, root)
    fit_index, val_index = folds_of(data.train.y, folds)[job.index]
    _, record, seconds = fit(config, data, subset(data.train, fit_index), {"val": subset(data.train, val_index)})
    return {
        "val_acc": record.curve("val"),
        "train_loss": [r.get("train_loss") for r in record.rows],
        "seconds": seconds,
        "folds": folds,
        "fit_series": len(fit_index),
        "val_series": len(val_index),
        "config": config.to_dict(),
    }


def run_seed(job: Job, overrides: Mapping[str, Any], root: str | None, measure: Measure | None) -> dict[str, Any]:
    """The record of a training run on the whole training file (see the module's table)."""
    data = load(job.dataset, root)
    config = dataset_config(job.dataset, data, job.method, job.index, overrides, root)
    module, record, seconds = fit(config, data, data.train, {"test": data.test})
    result = {
        "test_acc": record.curve("test"),
        "train_loss": [r.get("train_loss") for r in record.rows],
        "seconds": seconds,
        "seconds_per_epoch": float(np.mean([r["seconds"] for r in record.rows])),
        "params": sum(p.numel() for p in module.model.parameters()),
        "config": config.to_dict(),
    }
    if measure is not None:
        batch = (data.test.x[:8], data.test.mask[:8])
        result.update(measure(module.model, batch))
    return result


def run_baseline(job: Job, root: str | None) -> dict[str, Any]:
    """The aeon classifier ``BASELINES[job.method]`` with its defaults (seed ``job.index``, one thread) on the raw
    series, zero-padded to the longest of either file (the Rocket family takes equal lengths only; aeon's Padder pads
    the same way)."""
    from aeon.classification import convolution_based

    estimator = BASELINES[job.method]

    data = load(job.dataset, root, normalize=False)
    x_train, x_test = (split.x.permute(0, 2, 1).numpy().astype(np.float64) for split in (data.train, data.test))
    started = time.perf_counter()
    classifier = getattr(convolution_based, estimator)(random_state=job.index, n_jobs=1)
    classifier.fit(x_train, data.train.y.numpy())
    predicted = classifier.predict(x_test)
    seconds = time.perf_counter() - started
    return {
        "test_accuracy": float((predicted == data.test.y.numpy()).mean()),
        "seconds": seconds,
        "config": {
            "estimator": f"aeon.classification.convolution_based.{estimator}",
            "n_jobs": 1,
            "random_state": job.index,
            "padded_length": data.max_length,
        },
    }


def execute(
    job: Job,
    overrides: Mapping[str, Any] | None = None,
    root: str | None = None,
    folds: int = 3,
    measure: Measure | None = None,
) -> dict[str, Any]:
    """The record of ``job``: its fields and what its run gives (see the module's table)."""
    if job.method in BASELINES:
        result = run_baseline(job, root)
    elif job.kind == "cv":
        result = run_cv(job, overrides or {}, root, folds)
    else:
        result = run_seed(job, overrides or {}, root, measure)
    return {"dataset": job.dataset, "method": job.method, "kind": job.kind, "index": job.index, **result}


def check_records(output: str | Path, overrides: Mapping[str, Any] | None, root: str | None) -> None:
    """ValueError when a finished transformer record under ``output`` was made with other options than these."""
    for path in sorted(Path(output).glob("records/*/*/*/record.json")):
        record = json.loads(path.read_text())
        if record["method"] in BASELINES:
            continue
        data = load(record["dataset"], root)
        config = record["config"]
        expected = dataset_config(record["dataset"], data, record["method"], config["seed"], overrides, root)
        changed = sorted(k for k, v in expected.to_dict().items() if config.get(k) != v)
        if changed:
            raise ValueError(f"{path} was made with other options ({', '.join(changed)}): use another --output")


def benchmark(
    datasets: Sequence[str],
    variants: Sequence[str],
    seeds: Sequence[int],
    output: str | Path,
    *,
    folds: int = 3,
    workers: int = 1,
    root: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    baselines: Sequence[str] = (MINIROCKET,),
    measure: Measure | None = None,
    log: Callable[[str], None] = print,
) -> list[Job]:
    """Run every job of the benchmark not yet done into ``output`` with ``workers`` processes; returns the jobs.

    Resumable (finished jobs are skipped) and shareable: a first pass passes over the jobs another process holds, a
    second waits for each of them and runs it if it is still without a record (its holder was killed), so every job
    has its record when this returns, whichever processes died on the way.
    """
    todo = jobs(datasets, variants, seeds, folds, baselines)
    check_records(output, overrides, root)
    work = partial(execute, overrides=dict(overrides or {}), root=root, folds=folds, measure=measure)
    run_jobs(todo, output, work, workers=workers, log=log)
    return todo


def protocol_accuracies(cv_curves: Sequence[Sequence[float]], test_curve: Sequence[float]) -> dict[str, Any]:
    """The two protocols' test accuracy of one run from its per-epoch ``test_curve``.

    ``train-only``: the test accuracy at the epoch where the mean of ``cv_curves`` (validation accuracy per epoch of
    each fold) is highest, the latest on ties: the test curve is only indexed, never compared. ``test-selected``:
    the highest test accuracy over epochs (an upper bound). Returns both and the epochs (0-based).
    """
    if not cv_curves or len({len(c) for c in cv_curves}) != 1:
        raise ValueError(f"cv_curves must be curves of equal length, got lengths {[len(c) for c in cv_curves]}")
    mean = np.mean(np.asarray(cv_curves, dtype=float), axis=0)
    if len(mean) != len(test_curve):
        raise ValueError(f"the validation curves have {len(mean)} epochs, the test curve {len(test_curve)}")
    chosen = int(np.flatnonzero(mean == mean.max())[-1])
    best = int(np.argmax(test_curve))
    return {
        "train-only": test_curve[chosen],
        "train_only_epoch": chosen,
        "cv_accuracy": float(mean[chosen]),
        "test-selected": test_curve[best],
        "test_selected_epoch": best,
    }
