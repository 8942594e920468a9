"""Many jobs, one record each: resumable, shared by any number of processes, run by a pool of workers.

The house's one way to run a benchmark (the UEA benchmark and the language-model benchmark are its users). A job
is any picklable object with a ``label`` (one line naming it) and a ``folder(output)``; running it means calling
``execute(job)``, a picklable function returning the job's record (a JSON-safe mapping), which lands at
``job.folder(output)/record.json``, written atomically.

* **Resumable**: a job whose record exists is skipped, so a killed benchmark, run again, goes on where it stopped.
* **Shared**: a job runs under :func:`~primaldual.files.folder_lock` on its folder, so several processes (or
  machines on one file system) may share an output folder: a process passes over the jobs another one holds, then
  comes back to each, waiting for its lock, and runs it if its holder died without a record (the kernel releases a
  killed holder's lock). The temporary files a killed job left in its folder are removed by its successor.
* **Workers**: ``workers`` processes (spawned: no state forked from the parent) take the jobs in order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Protocol

from ..files import atomic_write, folder_lock, remove_abandoned

#: How :func:`run_job` ends the line of a job that another process holds.
HELD = "another process holds it; coming back to it later"
RECORD = "record.json"

Execute = Callable[[Any], Mapping[str, Any]]


class Job(Protocol):
    """What :func:`run_jobs` needs of a job (a frozen dataclass, say)."""

    @property
    def label(self) -> str: ...

    def folder(self, output: str | Path) -> Path: ...


def run_job(job: Job, output: str | Path, execute: Execute, wait: bool = False) -> str:
    """Run ``job`` unless its record exists or (without ``wait``) another process holds it, in which case the line
    ends with :data:`HELD`; with ``wait``, wait for the holder; returns what happened, one line."""
    folder = job.folder(output)
    path = folder / RECORD
    with folder_lock(folder, wait=wait) as held:
        if not held:
            return f"{job.label}: {HELD}"
        if path.is_file():
            return f"{job.label}: done already"
        remove_abandoned(folder)  # the lock's holder is the folder's only writer: a temporary file is a dead one's
        started = time.perf_counter()
        record = execute(job)
        atomic_write(path, json.dumps(record, indent=1).encode())
        return f"{job.label}: {time.perf_counter() - started:.1f} s"


def run_jobs(
    todo: Sequence[Job],
    output: str | Path,
    execute: Execute,
    *,
    workers: int = 1,
    log: Callable[[str], None] = print,
) -> None:
    """Run every job of ``todo`` not yet done into ``output`` with ``workers`` processes, logging a line per job.

    A first pass passes over the jobs another process holds, a second waits for each of them and runs it if it is
    still without a record (its holder was killed), so every job has its record when this returns, whichever
    processes died on the way.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    index = list(range(len(todo)))
    for wait in (False, True):  # the second pass: the jobs others held in the first, waiting for each
        if not index:
            break
        pending = [todo[i] for i in index]
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) if workers > 1 else nullcontext() as pool:
            if pool is None:
                lines: Iterator[str] = (run_job(job, output, execute, wait) for job in pending)
            else:
                n = len(pending)
                lines = pool.map(run_job, pending, [output] * n, [execute] * n, [wait] * n)
            held = []
            for i, line in zip(index, lines):
                log(f"[{i + 1}/{len(todo)}] {line}")
                if line.endswith(HELD):
                    held.append(i)
        index = held


def records(output: str | Path) -> list[dict[str, Any]]:
    """Every finished record under ``output`` (any depth), in path order."""
    return [json.loads(path.read_text()) for path in sorted(Path(output).rglob(RECORD))]
