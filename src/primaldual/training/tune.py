"""``tune``: an Optuna study of one dataset's transformer configuration, scored without the test file.

Objective of a trial: the benchmark's cross-validation (:mod:`.benchmark`) with the trial's options: train on K-1
folds of the training file, record the validation accuracy of every epoch, average the K curves, and score the
best epoch of the mean curve (the epoch the train-only protocol would choose). The test file is never loaded. The
cross-validation is seeded, so options sampled again (TPE repeats itself on a small categorical space) are not
trained again: the trial takes the earlier one's score (user attribute ``copy_of``).

The study lives in an Optuna RDB storage, by default ``sqlite:///OUTPUT/study.db``: run again, ``tune`` loads the
study (``load_if_exists``) and runs trials until ``trials`` of them are complete. A trial whose process was killed
stops beating its heartbeat; the next process marks it failed after ``grace_seconds`` and runs its options again
(``RetryHeartbeatStaleTrialCallback``; ``RetryFailedTrialCallback`` before optuna 4.9). Optuna never fails a trial
that has no heartbeat yet: one killed in the instant between its creation and its first beat stays RUNNING, and,
not being complete, does not count towards ``trials``. Several processes (``workers``, or commands on other machines
given the same ``storage`` URL, e.g. a PostgreSQL one) share the study; the last trials may overshoot ``trials`` by
up to one per process, since each checks the count as it finishes a trial.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..files import atomic_write
from .benchmark import CV_SEED, dataset_config, fit, folds_of, load, subset

#: The options searched and their choices; ``tokens`` sets ``patch_size = ceil(length / tokens)``.
SPACE: dict[str, Sequence[Any]] = {
    "d_model": (16, 32, 64),
    "depth": (1, 2, 3),
    "lr": (3e-4, 1e-3, 3e-3),
    "dropout": (0.0, 0.1, 0.2, 0.3, 0.4),
    "tokens": (16, 32, 64),
    "epochs": (20, 30, 40),
}


def study_name(dataset: str, attention: str) -> str:
    return f"{dataset}-{attention}"


def options_of(params: Mapping[str, Any], length: int) -> dict[str, Any]:
    """A trial's parameters as TrainConfig options (``tokens`` becomes ``patch_size`` for series of ``length``)."""
    options = {k: v for k, v in params.items() if k != "tokens"}
    if "tokens" in params:
        options["patch_size"] = math.ceil(length / params["tokens"])
    return options


def cross_validate(
    dataset: str, attention: str, options: Mapping[str, Any], folds: int, root: str | None = None
) -> tuple[float, int]:
    """(best mean validation accuracy over epochs, its epoch, 1-based) of a K-fold CV on the training file."""
    data = load(dataset, root)
    curves = []
    for fit_index, val_index in folds_of(data.train.y, folds):
        config = dataset_config(dataset, data, attention, CV_SEED, options, root)
        _, record, _ = fit(config, data, subset(data.train, fit_index), {"val": subset(data.train, val_index)})
        curves.append(record.curve("val"))
    mean = np.mean(curves, axis=0)
    epoch = int(np.flatnonzero(mean == mean.max())[-1])
    return float(mean[epoch]), epoch + 1


def _objective(dataset: str, attention: str, folds: int, root: str | None, space: Mapping[str, Sequence[Any]]):
    def objective(trial: Any) -> float:
        from optuna.trial import TrialState

        params = {name: trial.suggest_categorical(name, list(choices)) for name, choices in space.items()}
        trial.set_user_attr("worker", os.getpid())
        for earlier in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if earlier.params == params:  # the cross-validation is seeded: the same options score the same
                trial.set_user_attr("copy_of", earlier.number)
                trial.set_user_attr("epoch", earlier.user_attrs.get("epoch"))
                return earlier.value
        options = options_of(params, load(dataset, root).max_length)
        score, epoch = cross_validate(dataset, attention, options, folds, root)
        trial.set_user_attr("epoch", epoch)
        return score

    return objective


def _storage(url: str, grace_seconds: int) -> Any:
    """The RDB storage at ``url`` with heartbeats: a trial silent for ``grace_seconds`` is failed and run again."""
    import optuna
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeats are "experimental" since optuna 2.8
        if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):  # optuna >= 4.9
            retry = {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)}
        else:
            retry = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=2)}
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=max(1, grace_seconds // 4), grace_period=grace_seconds, **retry
        )


def optimize(
    dataset: str,
    attention: str,
    trials: int,
    folds: int,
    url: str,
    root: str | None,
    space: Mapping[str, Sequence[Any]],
    grace_seconds: int,
    seed: int,
) -> int:
    """One worker: run trials of the stored study until ``trials`` are complete, sampling with a TPE sampler seeded
    with ``seed`` (each worker its own); returns how many trials it ran."""
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=study_name(dataset, attention),
        storage=_storage(url, grace_seconds),
        sampler=optuna.samplers.TPESampler(seed=seed),
    )
    remaining = trials - len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if remaining <= 0:
        return 0
    before = len(study.get_trials(deepcopy=False))
    study.optimize(
        _objective(dataset, attention, folds, root, space),
        n_trials=remaining,
        callbacks=[MaxTrialsCallback(trials, states=(TrialState.COMPLETE,))],
    )
    return len(study.get_trials(deepcopy=False)) - before


def tune(
    dataset: str,
    output: str | Path,
    *,
    attention: str = "softmax",
    trials: int = 20,
    folds: int = 3,
    storage: str | None = None,
    workers: int = 1,
    root: str | None = None,
    space: Mapping[str, Sequence[Any]] | None = None,
    seed: int = 0,
    grace_seconds: int = 60,
) -> dict[str, Any]:
    """Run (or resume) the study of ``dataset`` until ``trials`` trials are complete, with ``workers`` processes;
    write ``output/trials.csv`` (every trial: number, state, score, options) and ``output/best.yaml``
    (``datasets: {dataset: options}``, for ``primaldual benchmark --config``); return the latter's content with
    the best trial's score (``cv_accuracy``), its epoch, the number of trials and the storage URL.
    ``space``: :data:`SPACE` by default; ``seed``: of the TPE sampler (worker i: ``seed + i``)."""
    import optuna

    if trials < 1 or workers < 1:
        raise ValueError(f"trials and workers must be >= 1, got trials={trials}, workers={workers}")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{output / 'study.db'}"
    space = dict(space or SPACE)
    optuna.create_study(
        study_name=study_name(dataset, attention),
        storage=_storage(url, grace_seconds),
        direction="maximize",
        load_if_exists=True,
    )
    arguments = (dataset, attention, trials, folds, url, root, space, grace_seconds)
    if workers == 1:
        optimize(*arguments, seed)
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            list(pool.map(optimize, *zip(*[arguments] * workers), [seed + i for i in range(workers)]))
    study = optuna.load_study(study_name=study_name(dataset, attention), storage=url)
    best = study.best_trial
    options = options_of(best.params, load(dataset, root).max_length)
    best_options = {"datasets": {dataset: options}}
    atomic_write(output / "best.yaml", yaml.safe_dump(best_options, sort_keys=False).encode())
    atomic_write(output / "trials.csv", study.trials_dataframe().to_csv(index=False).encode())
    return {
        **best_options,
        "cv_accuracy": best.value,
        "best_epoch": best.user_attrs.get("epoch"),
        "trials": len(study.trials),
        "storage": url,
    }
