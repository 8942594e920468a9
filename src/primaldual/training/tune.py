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

import contextlib
import math
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
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


class StorageError(RuntimeError):
    """The study's storage could not be used (a bad URL, a refused login, a server that went away)."""


def redacted(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages (``user:secret@`` found by pattern when
    SQLAlchemy cannot parse the URL)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"([^:/@]+:)[^/@]*@", r"\1***@", url)


@contextlib.contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Database errors inside as a :class:`StorageError` naming the storage (password hidden) and the reason.
    Optuna writes each trial's state in one transaction, so a failure leaves the study as it was. An error whose
    chain holds a database error counts too: when the server goes away while optuna records a trial, optuna's own
    clean-up fails on it and raises an ``UnboundLocalError`` with the database error as its context."""
    try:
        yield
    except Exception as error:
        cause = _database_error(error)
        if cause is None:
            raise
        reason = str(getattr(cause, "orig", None) or cause).strip().splitlines()[0]
        if url.startswith("postgres://"):
            reason += " (SQLAlchemy names the scheme postgresql://)"
        raise StorageError(f"the study storage {redacted(url)} failed: {reason}") from error


def _database_error(error: BaseException | None) -> BaseException | None:
    """The first SQLAlchemy error in ``error``'s chain of causes and contexts, or None."""
    from sqlalchemy.exc import SQLAlchemyError

    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, SQLAlchemyError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _storage(url: str, grace_seconds: int) -> Any:
    """The RDB storage at ``url`` with heartbeats: a trial silent for ``grace_seconds`` is failed and run again.
    A server's connections are checked before each use (``pool_pre_ping``), so one restarted between two trials is
    reconnected to; its tables are made under :func:`_schema_lock`."""
    import optuna
    from optuna.exceptions import ExperimentalWarning

    engine = {} if url.startswith("sqlite") else {"engine_kwargs": {"pool_pre_ping": True}}
    try:
        with warnings.catch_warnings(), _schema_lock(url):
            warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeats are "experimental" since optuna 2.8
            if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):  # optuna >= 4.9
                stale = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)
                retry = {"heartbeat_stale_trial_callback": stale}
            else:
                retry = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=2)}
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=max(1, grace_seconds // 4), grace_period=grace_seconds, **retry, **engine
            )
    except ImportError as error:  # SQLAlchemy found no driver for the URL's scheme
        raise StorageError(
            f"the study storage {redacted(url)} needs a database driver that is not installed "
            f"({error.__cause__ or error}); for postgresql:// URLs: pip install 'primaldual[postgres]'"
        ) from error


@contextlib.contextmanager
def _opened(url: str, grace_seconds: int) -> Iterator[Any]:
    """:func:`_storage`, its connections closed when the block ends (one process may call :func:`tune` often), and
    database errors inside the block, or in opening it, raised as :class:`StorageError` (:func:`storage_errors`)."""
    with storage_errors(url):
        storage = _storage(url, grace_seconds)
        try:
            yield storage
        finally:
            storage.engine.dispose()


#: The PostgreSQL advisory lock :func:`_schema_lock` takes (any fixed 64-bit number; locks are per database).
SCHEMA_LOCK = 0x7072696D616C  # "primal"


@contextlib.contextmanager
def _schema_lock(url: str) -> Iterator[None]:
    """On PostgreSQL, hold an advisory lock of the database for the block: optuna makes its tables (``create_all``,
    its version row, alembic's stamp) without one, and workers that start at once on a new database then fail on
    each other's tables (``duplicate key value violates unique constraint "pg_type_typname_nsp_index"``)."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    if make_url(url).get_backend_name() != "postgresql":
        yield
        return
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK})
            connection.commit()
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK})
                connection.commit()
    finally:
        engine.dispose()


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
    with ``seed`` (each worker its own); returns how many trials it ran. Database errors: :class:`StorageError`."""
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with _opened(url, grace_seconds) as storage:
        study = optuna.load_study(
            study_name=study_name(dataset, attention), storage=storage, sampler=optuna.samplers.TPESampler(seed=seed)
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
    with _opened(url, grace_seconds) as opened:
        optuna.create_study(
            study_name=study_name(dataset, attention), storage=opened, direction="maximize", load_if_exists=True
        )
    arguments = (dataset, attention, trials, folds, url, root, space, grace_seconds)
    if workers == 1:
        optimize(*arguments, seed)
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            list(pool.map(optimize, *zip(*[arguments] * workers), [seed + i for i in range(workers)]))
    with _opened(url, grace_seconds) as opened:
        study = optuna.load_study(study_name=study_name(dataset, attention), storage=opened)
        best = study.best_trial
        frame = study.trials_dataframe()
        count = len(study.trials)
    options = options_of(best.params, load(dataset, root).max_length)
    best_options = {"datasets": {dataset: options}}
    atomic_write(output / "best.yaml", yaml.safe_dump(best_options, sort_keys=False).encode())
    atomic_write(output / "trials.csv", frame.to_csv(index=False).encode())
    return {
        **best_options,
        "cv_accuracy": best.value,
        "best_epoch": best.user_attrs.get("epoch"),
        "trials": count,
        "storage": redacted(url),
    }
