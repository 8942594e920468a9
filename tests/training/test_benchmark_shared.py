"""``primaldual benchmark`` processes sharing one output folder, as machines on one shared disk would: they start at
different times, one is killed with SIGKILL in the middle of a job that the other had passed over, and the survivor
comes back to that job: every job is run exactly once to its record, and a process started last finds nothing to do.

Figures for docs/guide.md: ``pytest -s tests/training/test_benchmark_shared.py`` prints a ``figures:`` line.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

from primaldual.training.benchmark import jobs
from primaldual.training.jobs import HELD
from tests.training.test_benchmark import TINY, write_toy

DATASETS, VARIANTS, SEEDS, FOLDS = (
    ("ToyA", "ToyB"),
    ("softmax", "bn", "sh"),
    (0,),
    2,
)  # 3 methods: the report's Friedman test
EPOCHS = 150  # a job: one fit of about a second, long enough to be caught in


class Process:
    """``primaldual benchmark`` over the shared ``output``, its output in its own log."""

    def __init__(self, name: str, output: Path, root: Path, config: Path, logs: Path) -> None:
        self.log = logs / f"{name}.log"
        command = [
            sys.executable, "-m", "primaldual.cli", "benchmark", "--datasets", *DATASETS, "--attention", *VARIANTS,
            "--seeds", *map(str, SEEDS), "--folds", str(FOLDS), "--baselines", "--root", str(root),
            "--config", str(config), "--output", str(output),
        ]  # fmt: skip
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}
            )

    def text(self) -> str:
        return self.log.read_text()

    def ran(self) -> list[str]:
        """The jobs this process ran to their record ("ToyA bn cv-0"), from its lines "[i/n] JOB: 1.2 s"."""
        return re.findall(r"^\[\d+/\d+\] (\S+ \S+ \S+): [\d.]+ s$", self.text(), re.M)

    def passed_over(self) -> set[str]:
        return set(re.findall(rf"^\[\d+/\d+\] (\S+ \S+ \S+): {re.escape(HELD)}$", self.text(), re.M))


def held_by(pid: int, folders: dict[str, Path]) -> set[str]:
    """The jobs whose folder lock (flock on ``.lock``) process ``pid`` holds, read from /proc/locks."""
    inodes = {(folder / ".lock").stat().st_ino: name for name, folder in folders.items() if (folder / ".lock").exists()}
    held = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()  # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; "1: -> FLOCK ..." waits
        if fields[1] == "FLOCK" and int(fields[4]) == pid:
            inode = int(fields[5].split(":")[-1])
            if inode in inodes:
                held.add(inodes[inode])
    return held


def test_processes_started_at_different_times_finish_every_job_once_through_a_kill(tmp_path: Path) -> None:
    root, output, logs = tmp_path / "uea", tmp_path / "shared", tmp_path / "logs"
    for path in (root, logs):
        path.mkdir()
    for name, shift in zip(DATASETS, (1.0, 0.5)):
        write_toy(root, name, shift)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "epochs": EPOCHS}))
    todo = jobs(DATASETS, VARIANTS, SEEDS, FOLDS, baselines=())
    folders = {f"{j.dataset} {j.method} {j.name}": j.folder(output) for j in todo}
    records = [folder / "record.json" for folder in folders.values()]

    started = time.monotonic()
    first = Process("first", output, root, config, logs)
    deadline = time.monotonic() + 240
    while not any(r.is_file() for r in records):
        assert first.process.poll() is None and time.monotonic() < deadline, first.text()
        time.sleep(0.2)
    second = Process("second", output, root, config, logs)  # joins a benchmark under way
    # Kill the first in the middle of a job the second has passed over (frozen with SIGSTOP to look)
    killed: set[str] = set()
    while not killed:
        assert first.process.poll() is None and second.process.poll() is None, first.text() + second.text()
        assert time.monotonic() < deadline, "the second never passed over a job the first held"
        first.process.send_signal(signal.SIGSTOP)
        killed = held_by(first.process.pid, folders) & second.passed_over()
        if not killed:
            first.process.send_signal(signal.SIGCONT)
            time.sleep(0.05)
    first.process.send_signal(signal.SIGKILL)
    assert first.process.wait(timeout=60) == -signal.SIGKILL
    assert second.process.wait(timeout=240) == 0, second.text()
    shared_seconds = time.monotonic() - started
    late = Process("late", output, root, config, logs)  # a third, started after the others ended
    assert late.process.wait(timeout=240) == 0, late.text()

    assert all(r.is_file() for r in records)  # every job has its record
    for path in records:
        record = json.loads(path.read_text())
        assert path.parent.parts[-3:] == (record["dataset"], record["method"], f"{record['kind']}-{record['index']}")
    runs = Counter(first.ran() + second.ran() + late.ran())
    assert runs == Counter(set(folders))  # each job ran to its record exactly once, over all three processes
    assert killed <= set(second.ran()) and not killed & set(first.ran())  # the survivor came back to it
    assert first.ran() and not late.ran() and late.text().count("done already") == len(todo)
    assert not list(output.glob("records/**/*.tmp"))  # the kill left no half-written record behind
    assert (output / "summary.md").is_file()
    print(
        f"figures: {len(todo)} jobs, 3 processes (the second started after the first's first record, the third "
        f"after both ended), 1 killed mid-job ({', '.join(sorted(killed))}, which the survivor had passed over and "
        f"came back to); jobs run: first {len(first.ran())}, second {len(second.ran())}, late {len(late.ran())}; "
        f"{shared_seconds:.0f} s from the first start to the survivor's end"
    )
