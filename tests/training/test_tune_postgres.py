"""``primaldual tune`` on a real PostgreSQL server (the ``postgres`` fixture), run as machines sharing one study
would run it: ``primaldual tune`` processes that start at different times on one storage URL, one killed with
SIGKILL mid-trial and its trial retried after the heartbeat grace, the study then resumed by a fresh process; a bad
URL, a wrong password and a server that goes away mid-study each end with an error naming the storage (password
hidden) and leave the study as it was.

Figures for docs/guide.md: ``pytest -s tests/training/test_tune_postgres.py`` prints a ``figures:`` line per test.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import yaml
from optuna.trial import FrozenTrial, TrialState

from primaldual.training.tune import StorageError, study_name, tune
from tests.training.postgres import Server
from tests.training.test_benchmark import write_toy

GRACE = 2  # seconds without a heartbeat after which a live worker fails a trial and runs its options again
#: 24 options of a tiny model trained for 100 epochs of two batches (a trial: two fits, about a second in all);
#: options sampled again are copies, scored at once.
SPACE = {
    "d_model": [8],
    "depth": [1],
    "num_heads": [2],
    "lr": [1e-3, 3e-3],
    "dropout": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
    "tokens": [4, 8],
    "epochs": [100],
    "batch_size": [8],
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("uea")
    write_toy(root, "ToyA", 1.0)
    return root


@pytest.fixture(scope="module")
def space_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("space") / "space.yaml"
    path.write_text(yaml.safe_dump(SPACE))
    return path


class Worker:
    """``primaldual tune`` in a process of its own, as on another machine: its own output folder and log."""

    def __init__(self, url: str, folder: Path, root: Path, space: Path, trials: int, seed: int) -> None:
        folder.mkdir(parents=True)
        self.log = folder / "worker.log"
        command = [
            sys.executable, "-m", "primaldual.cli", "tune", "--dataset", "ToyA", "--root", str(root),
            "--folds", "2", "--trials", str(trials), "--storage", url, "--output", str(folder),
            "--grace-seconds", str(GRACE), "--space", str(space), "--seed", str(seed),
        ]  # fmt: skip
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}
            )
        self.pid = self.process.pid

    def output(self) -> str:
        return self.log.read_text()

    def wait(self, timeout: float = 240) -> int:
        return self.process.wait(timeout=timeout)


@functools.cache
def storage(url: str) -> optuna.storages.RDBStorage:
    """The test's own view of the study: a connection per look, none kept (the server may be stopped)."""
    return optuna.storages.RDBStorage(url, engine_kwargs={"poolclass": sqlalchemy.pool.NullPool})


def trials(url: str) -> list[FrozenTrial]:
    """The study's trials; none before a worker has made it."""
    try:
        study = optuna.load_study(study_name=study_name("ToyA", "softmax"), storage=storage(url))
    except KeyError:  # optuna's "Record does not exist."
        return []
    return study.get_trials(deepcopy=False)


def complete(url: str) -> list[FrozenTrial]:
    return [t for t in trials(url) if t.state == TrialState.COMPLETE]


def beating(url: str) -> set[int]:
    """Numbers of the RUNNING trials that have beaten their heartbeat (optuna's trial_heartbeats table)."""
    query = "SELECT number FROM trials JOIN trial_heartbeats USING (trial_id) WHERE state = 'RUNNING'"
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            return {number for (number,) in connection.execute(sqlalchemy.text(query))}
    except sqlalchemy.exc.ProgrammingError:  # no tables yet
        return set()
    finally:
        engine.dispose()


def in_trial(url: str, pid: int) -> set[int]:
    """The trials worker ``pid`` is running and beating for."""
    mine = {t.number for t in trials(url) if t.state == TrialState.RUNNING and t.user_attrs.get("worker") == pid}
    return mine & beating(url)


def wait_for(condition: Callable[[], object], workers: Sequence[Worker], seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        for worker in workers:
            assert worker.process.poll() is None, f"worker {worker.pid} ended early:\n{worker.output()}"
        assert time.monotonic() < deadline, f"not reached in {seconds} s"
        time.sleep(0.2)


def stop_in_trial(url: str, worker: Worker, seconds: float = 240) -> set[int]:
    """Freeze ``worker`` (SIGSTOP) at a moment it is in a trial that beats its heartbeat; those trials' numbers.
    Frozen, it cannot finish the trial between the look and what the test does next."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert worker.process.poll() is None, f"worker {worker.pid} ended early:\n{worker.output()}"
        worker.process.send_signal(signal.SIGSTOP)
        found = in_trial(url, worker.pid)
        if found:
            return found
        worker.process.send_signal(signal.SIGCONT)
        time.sleep(0.1)
    raise AssertionError(f"worker {worker.pid} was never seen in a trial")


def snapshot(url: str) -> dict[int, tuple]:
    """Every complete trial: number -> (value, options)."""
    return {t.number: (t.value, json.dumps(t.params, sort_keys=True)) for t in complete(url)}


def retries_of(found: Sequence[FrozenTrial], number: int) -> list[FrozenTrial]:
    """The trials optuna made to run again the options of trial ``number`` after it went stale."""
    return [t for t in found if t.system_attrs.get("failed_trial") == number]


def test_machines_starting_at_different_times_share_a_study_through_a_kill(
    postgres: Server, root: Path, space_file: Path, tmp_path: Path
) -> None:
    url = postgres.database("shared")
    wanted = 20
    started = time.monotonic()
    first = Worker(url, tmp_path / "machine-1", root, space_file, wanted, seed=0)
    wait_for(lambda: complete(url), [first])
    second = Worker(url, tmp_path / "machine-2", root, space_file, wanted, seed=1)  # joins a running study
    wait_for(lambda: len(complete(url)) >= 3, [first, second])
    third = Worker(url, tmp_path / "machine-3", root, space_file, wanted, seed=2)
    survivors = [second, third]
    # Kill the first once the others are training too, mid-trial: its trial stays RUNNING in the database
    wait_for(lambda: {second.pid, third.pid} <= {t.user_attrs.get("worker") for t in trials(url)}, [first, *survivors])
    killed = stop_in_trial(url, first)
    first.process.send_signal(signal.SIGKILL)
    assert first.wait(timeout=60) == -signal.SIGKILL
    killed_at = time.monotonic()
    for worker in survivors:
        assert worker.wait() == 0, worker.output()
    shared_seconds = time.monotonic() - started
    found = trials(url)
    done = len(complete(url))
    assert wanted <= done <= wanted + 1  # each live worker checks the count as it finishes a trial
    assert len({t.number for t in found}) == len(found)  # no trial number twice
    assert not [t for t in found if t.state == TrialState.WAITING]  # every retry was run
    for number in killed:  # failed after the grace period; a survivor ran its options again, once, to completion
        assert found[number].state == TrialState.FAIL
        (retry,) = retries_of(found, number)
        assert retry.state == TrialState.COMPLETE and retry.params == found[number].params
        assert retry.user_attrs["worker"] in {second.pid, third.pid}
        assert (retry.datetime_start - found[number].datetime_start).total_seconds() >= GRACE
    # Optuna fails only trials that have a heartbeat: one made in the instant of the kill may stay RUNNING
    assert all(t.number not in beating(url) for t in found if t.state == TrialState.RUNNING)
    assert {t.state for t in found} <= {TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING}
    assert len([t for t in found if t.state == TrialState.FAIL]) == len(killed)
    workers = {t.user_attrs.get("worker") for t in found if t.state == TrialState.COMPLETE}
    assert {first.pid, second.pid, third.pid} <= workers  # all three machines ran trials of the one study
    assert all("cv_accuracy: " in w.output() for w in survivors)

    before = snapshot(url)
    resumed_at = time.monotonic()
    fresh = Worker(url, tmp_path / "machine-4", root, space_file, done + 2, seed=3)  # a new process, later on
    assert fresh.wait() == 0, fresh.output()
    resume_seconds = time.monotonic() - resumed_at
    after = snapshot(url)
    assert len(after) == done + 2 and {n: after[n] for n in before} == before  # grown by 2, nothing rewritten
    written = yaml.safe_load((tmp_path / "machine-4" / "best.yaml").read_text())
    assert "patch_size" in written["datasets"]["ToyA"]
    assert postgres.password not in fresh.output() and "tuner:***@" in fresh.output()  # the URL printed, hidden
    print(
        f"figures: 3 workers (started at 0, then after 1 and 3 complete trials), {wanted} trials asked, "
        f"1 killed mid-trial ({len(killed)} trial cut, retried once), {done} complete and "
        f"{len(found) - done} failed or cut in {shared_seconds:.0f} s (the survivors ended {shared_seconds - (killed_at - started):.0f} s "
        f"after the kill); resumed by a fresh process to {done + 2} in "
        f"{resume_seconds:.0f} s"
    )


@pytest.mark.parametrize(
    ("storage", "reason"),
    [
        (lambda s: s.url("no_such_database"), 'database "no_such_database" does not exist'),
        (lambda s: s.url("shared", password="not-the-password"), 'password authentication failed for user "tuner"'),
        (lambda s: s.url("shared").replace(f":{s.port}/", ":1/"), "Connection refused"),
        (lambda s: s.url("shared").replace("postgresql://", "postgresql//"), "Could not parse SQLAlchemy URL"),
        (lambda s: s.url("shared").replace("postgresql", "postgres"), "names the scheme postgresql://"),
        (lambda s: s.url("shared", driver="+pg8000"), "pip install 'primaldual\\[postgres\\]'"),
    ],
    ids=["no-database", "wrong-password", "no-server", "unparsable", "postgres-scheme", "no-driver"],
)
def test_a_storage_that_cannot_be_used_is_an_error_naming_it(
    postgres: Server, root: Path, tmp_path: Path, storage: Callable[[Server], str], reason: str
) -> None:
    url = storage(postgres)
    with pytest.raises(StorageError, match=reason) as error:
        tune("ToyA", tmp_path, trials=1, folds=2, root=str(root), space=SPACE, storage=url)
    message = str(error.value)
    assert message.startswith("the study storage postgres") and "tuner:***@127.0.0.1" in message
    assert "not-the-password" not in message and postgres.password not in message
    assert not list(tmp_path.iterdir())  # nothing written


def test_the_command_line_names_a_refused_storage(postgres: Server, root: Path, space_file: Path, tmp_path: Path):
    url = postgres.url("shared", password="not-the-password")
    worker = Worker(url, tmp_path / "machine", root, space_file, 1, seed=0)
    assert worker.wait() == 2
    lines = worker.output().strip().splitlines()
    expected = f"primaldual tune: error: the study storage postgresql://tuner:***@127.0.0.1:{postgres.port}/shared "
    assert lines[-1].startswith(expected) and lines[-1].endswith('password authentication failed for user "tuner"')
    assert "Traceback" not in worker.output() and "not-the-password" not in worker.output()


def test_a_server_that_goes_away_mid_study_is_an_error_and_the_study_goes_on(
    root: Path, space_file: Path, tmp_path: Path
) -> None:
    server = Server()  # a server of its own: this test crashes it
    try:
        url = server.database("crash")
        worker = Worker(url, tmp_path / "machine-1", root, space_file, 100, seed=0)
        wait_for(lambda: len(complete(url)) >= 2, [worker])
        cut = stop_in_trial(url, worker)
        started = time.monotonic()
        server.stop("immediate")  # as a crash: no clean shutdown, the clients' sessions cut
        worker.process.send_signal(signal.SIGCONT)
        assert worker.wait(timeout=120) == 2
        error_seconds = time.monotonic() - started
        last = worker.output().strip().splitlines()[-1]
        assert last.startswith(
            f"primaldual tune: error: the study storage postgresql://tuner:***@127.0.0.1:{server.port}"
        )
        assert server.password not in worker.output()

        server.start()  # the server comes back and recovers its log
        before = snapshot(url)
        assert len(before) >= 2 and {t.number for t in trials(url) if t.state == TrialState.RUNNING} == cut
        time.sleep(GRACE + 1)  # past the grace period since the cut trial's last beat
        tune("ToyA", tmp_path / "machine-2", trials=len(before) + 1, folds=2, root=str(root), space=SPACE,
             storage=url, grace_seconds=GRACE)  # fmt: skip
        found = trials(url)
        after = snapshot(url)
        assert len(after) == len(before) + 1 and {n: after[n] for n in before} == before  # nothing lost or changed
        assert len({t.number for t in found}) == len(found)
        for number in cut:  # the trial the crash cut off is failed and its options run again, once
            assert found[number].state == TrialState.FAIL
            (retry,) = retries_of(found, number)
            assert retry.state == TrialState.COMPLETE and retry.params == found[number].params
        print(
            f"figures: server stopped (immediate) mid-trial after {len(before)} complete trials; the worker exited "
            f"with the error in {error_seconds:.1f} s; restarted, a fresh process failed and retried the cut trial"
        )
    finally:
        server.close()
    assert not server.folder.exists()  # no state left behind
