"""``primaldual tune``: an Optuna study in SQLite that resumes after its process is killed and that processes share."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna")

from optuna.trial import TrialState

from primaldual.training.tune import study_name, tune
from tests.training.test_benchmark import write_toy

#: A search space of tiny models trained for 2 epochs: a trial is two fits of about a second.
SPACE = {
    "d_model": (8,),
    "depth": (1,),
    "num_heads": (2,),
    "lr": (1e-3, 3e-3),
    "dropout": (0.0, 0.1, 0.2),
    "tokens": (4, 8),
    "epochs": (2,),
    "batch_size": (8,),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("uea")
    write_toy(root, "ToyA", 1.0)
    return root


def trials(url: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials; none while the tuning process has made the database but not yet the study in it."""
    try:
        study = optuna.load_study(study_name=study_name("ToyA", "softmax"), storage=url)
    except KeyError:  # optuna's "Record does not exist.": polled between the two
        return []
    return study.get_trials(deepcopy=False)


def running(database: Path, *, beating: bool) -> set[int]:
    """Numbers of the RUNNING trials of the SQLite study ``database`` that have a heartbeat (``beating``) or have
    none yet (optuna's trial_heartbeats table)."""
    if not database.is_file():
        return set()
    test = "IS NOT NULL" if beating else "IS NULL"
    query = (
        "SELECT trials.number FROM trials LEFT JOIN trial_heartbeats USING (trial_id) "
        f"WHERE trials.state = 'RUNNING' AND trial_heartbeats.trial_id {test}"
    )
    with contextlib.closing(sqlite3.connect(database)) as connection:
        try:
            return {number for (number,) in connection.execute(query)}
        except sqlite3.OperationalError:  # the tables are not made yet
            return set()


def complete(url: str) -> int:
    return sum(t.state == TrialState.COMPLETE for t in trials(url))


def test_tune_resumes_after_a_kill(root: Path, tmp_path: Path) -> None:
    database = tmp_path / "study.db"
    url = f"sqlite:///{database}"
    script = (
        f"from primaldual.training.tune import tune; tune('ToyA', {str(tmp_path)!r}, trials=100, folds=2, "
        f"root={str(root)!r}, space={SPACE!r}, grace_seconds=2)"
    )
    process = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 60
        # Kill mid-trial once two trials are complete and a running one has beaten its heartbeat.
        while time.monotonic() < deadline and not (complete(url) >= 2 and running(database, beating=True)):
            assert process.poll() is None, "the tune process ended before it was killed"
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)  # mid-trial: its trial stays RUNNING in the database
        process.wait()
    done = complete(url)
    assert done >= 2
    # A trial created in the instant before the kill may have no heartbeat: optuna never fails those (the module
    # doc says so), so only they may stay RUNNING; every trial that was beating must be failed and retried.
    silent = running(database, beating=False)
    # past the grace period (2 s) by more than the 1 s resolution of SQLite's CURRENT_TIMESTAMP, which stamps beats
    time.sleep(3.5)
    best = tune("ToyA", tmp_path, trials=done + 2, folds=2, root=str(root), space=SPACE, grace_seconds=2)
    found = trials(url)
    assert complete(url) == done + 2  # the study grew from where it was, by the two trials asked for
    assert len({t.number for t in found}) == len(found)  # no trial number twice
    assert {t.number for t in found if t.state == TrialState.RUNNING} <= silent  # the killed one failed, retried
    trained = [t for t in found if t.state == TrialState.COMPLETE and "copy_of" not in t.user_attrs]
    assert len({tuple(sorted(t.params.items())) for t in trained}) == len(trained)  # no options trained twice
    assert best["trials"] == len(found) and 0 <= best["cv_accuracy"] <= 1
    written = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert written == {"datasets": {"ToyA": best["datasets"]["ToyA"]}} and "patch_size" in written["datasets"]["ToyA"]
    assert (tmp_path / "trials.csv").read_text().count("COMPLETE") == done + 2
    assert tune("ToyA", tmp_path, trials=done + 2, folds=2, root=str(root), space=SPACE)["trials"] == len(found)


def test_two_processes_share_one_study(root: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    tune("ToyA", tmp_path, trials=4, folds=2, root=str(root), space=SPACE, storage=url, workers=2)
    found = [t for t in trials(url) if t.state == TrialState.COMPLETE]
    assert 4 <= len(found) <= 5  # each worker checks the count as it finishes a trial: one may overshoot by one
    assert len({t.user_attrs["worker"] for t in found}) == 2  # both processes ran trials of the one study
    assert not (tmp_path / "study.db").exists()  # the storage given was used, not the default
