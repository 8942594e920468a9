"""primaldual.files: atomic writes (alone, interrupted, and by many processes onto one path) and folder locks
(exclusive between processes, released when the holder is killed)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from primaldual.files import LOCK_NAME, atomic_open, atomic_write, folder_lock, remove_abandoned


def test_atomic_write_replaces_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    atomic_write(path, b"old contents, longer than the new")
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["metrics.json"]
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert path.stat().st_mode == plain.stat().st_mode  # the permissions a plain write gives


def test_a_write_that_fails_midway_leaves_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    atomic_write(path, b"previous")
    with pytest.raises(KeyboardInterrupt), atomic_open(path) as file:
        file.write(b"half of the new")
        raise KeyboardInterrupt  # as a signal would, between two writes
    assert path.read_bytes() == b"previous" and os.listdir(tmp_path) == ["last.ckpt"]


WRITERS, WRITES = 4, 300


def _write_many(path: str, writer: int, failures: multiprocessing.Queue) -> None:
    """``WRITES`` atomic writes of a 64 KiB block of byte ``writer`` onto ``path``; failures go to the queue."""
    for _ in range(WRITES):
        try:
            atomic_write(path, bytes([writer]) * 65536)
        except OSError as error:
            failures.put(f"writer {writer}: {error}")


def test_concurrent_writers_of_one_path_never_fail(tmp_path: Path) -> None:
    """4 processes writing one path 300 times each (with the fixed temporary name of before, 545 of the 1,200
    writes failed): every write succeeds, the file is one writer's complete block, no temporary file is left."""
    path = tmp_path / "config.yaml"
    failures: multiprocessing.Queue = multiprocessing.get_context("fork").Queue()
    processes = [
        multiprocessing.get_context("fork").Process(target=_write_many, args=(str(path), w, failures))
        for w in range(WRITERS)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0] * WRITERS
    errors = []
    while not failures.empty():
        errors.append(failures.get())
    assert errors == []
    data = path.read_bytes()
    assert len(data) == 65536 and len(set(data)) == 1 and data[0] < WRITERS
    assert os.listdir(tmp_path) == ["config.yaml"]


def test_a_folder_lock_is_exclusive_between_processes_and_reentrant_within_one(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    holder = _hold(folder)
    try:
        with folder_lock(folder, wait=False) as held:
            assert not held
        started = time.monotonic()
        holder.send_signal(signal.SIGTERM)  # the holder exits after a moment; a waiting lock then gets it
        with folder_lock(folder) as held, folder_lock(folder) as again:
            assert held and again
            assert time.monotonic() - started < 60
    finally:
        holder.kill()
        holder.wait()
    assert (folder / LOCK_NAME).is_file()


def test_a_killed_holder_leaves_the_folder_unlocked(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    holder = _hold(folder)
    holder.kill()  # SIGKILL: no clean-up code runs
    holder.wait()
    with folder_lock(folder, wait=False) as held:
        assert held


def test_a_writer_killed_mid_write_leaves_a_temporary_that_its_successor_removes(tmp_path: Path) -> None:
    """SIGKILL inside atomic_open: the target keeps its previous contents, the temporary file stays (nothing runs
    after SIGKILL), and remove_abandoned removes it and only it (other files, dotfiles included, stay)."""
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    atomic_write(folder / "last.ckpt", b"previous")
    (folder / ".keep").write_bytes(b"")
    code = (
        "import os, signal\n"
        "from primaldual.files import atomic_open\n"
        f"with atomic_open({str(folder / 'last.ckpt')!r}) as file:\n"
        "    file.write(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == -signal.SIGKILL
    left = [p for p in folder.iterdir() if p.suffix == ".tmp"]
    assert len(left) == 1 and left[0].name.startswith(".last.ckpt.")
    assert remove_abandoned(tmp_path / "run") == left
    assert sorted(p.name for p in folder.iterdir()) == [".keep", "last.ckpt"]
    assert (folder / "last.ckpt").read_bytes() == b"previous"


def _hold(folder: Path) -> subprocess.Popen:
    """A process that takes ``folder``'s lock, prints 'held', and holds it until it is signalled."""
    code = (
        "import sys, time, signal\n"
        "from primaldual.files import folder_lock\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
        f"with folder_lock({str(folder)!r}):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(600)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process
