"""Files that appear complete or not at all, and folders that one process at a time may work in.

* :func:`atomic_open`, :func:`atomic_write`: a killed process never leaves a truncated file to be read, and any
  number of processes may write one path at once (each through its own temporary file; the last rename wins).
* :func:`folder_lock`: an exclusive lock on a folder held by the kernel (``flock`` on Linux and macOS, ``msvcrt``
  on Windows through ``filelock``), released when its holder's process ends, killed included: a killed holder
  never leaves a folder locked.
* :func:`remove_abandoned`: the temporary files a killed writer left in a folder its successor now holds.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

#: The lock file :func:`folder_lock` creates in the folder it locks (never removed: removing a lock file while
#: another process waits on it would let a third lock a new file of the same name).
LOCK_NAME = ".lock"
_TEMPORARY = ".tmp"  # the suffix of atomic_open's temporary files, ``.<name>.<random>.tmp``
_held: set[Path] = set()  # folders this process holds (a lock taken again inside its own block is a no-op)


@contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """``with atomic_open(path) as file``: write a binary file that appears at ``path`` complete or not at all.

    The data go to a temporary file of a unique name (``.<name>.<random>.tmp``) in the same folder, which is
    fsynced and renamed onto ``path`` when the block ends without error, and removed when it raises. Concurrent
    writers of one path never disturb each other: ``path`` ends as one of their complete files. The file gets
    the permissions a plain ``open(path, "wb")`` would give it (0o666 less the umask).
    """
    path = Path(path)
    descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TEMPORARY, dir=path.parent)
    tmp = Path(name)
    try:
        with open(descriptor, "wb") as file:
            yield file
            file.flush()
            if hasattr(os, "fchmod"):  # mkstemp makes the file 0o600
                os.fchmod(file.fileno(), 0o666 & ~_umask())
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def remove_abandoned(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of :func:`atomic_open` (``.<name>.<random>.tmp``) under ``folder``; return them.

    A writer killed between creating its temporary file and renaming it leaves the file behind (nothing runs
    after SIGKILL). Call this only while holding :func:`folder_lock` on ``folder``, as the one process that
    writes there: any temporary file then belongs to a writer that is gone.
    """
    removed = [p for p in Path(folder).rglob(f".*{_TEMPORARY}") if p.is_file()]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path) as file:
        file.write(data)


@contextmanager
def folder_lock(folder: str | os.PathLike, *, wait: bool = True) -> Iterator[bool]:
    """``with folder_lock(folder) as held``: hold an exclusive lock on ``folder`` (created if missing) for the block.

    ``wait``: block while another process holds it (then ``held`` is True); without it, ``held`` is False at once
    when another process holds it, and the block runs without the lock. The lock belongs to this process: taken
    again inside its own block it is held already (True). The kernel releases it when the process ends in any way
    (flock on Linux and macOS, msvcrt on Windows), so a killed holder never leaves the folder locked.
    """
    folder = Path(folder).resolve()
    if folder in _held:
        yield True
        return
    folder.mkdir(parents=True, exist_ok=True)
    with _exclusive(folder / LOCK_NAME, wait) as held:
        if not held:
            yield False
            return
        _held.add(folder)
        try:
            yield True
        finally:
            _held.discard(folder)


if sys.platform == "win32":

    @contextmanager
    def _exclusive(path: Path, wait: bool) -> Iterator[bool]:
        from filelock import FileLock, Timeout  # msvcrt.locking underneath; a torch dependency

        lock = FileLock(path, timeout=-1 if wait else 0)
        try:
            lock.acquire()
        except Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

else:
    import fcntl

    @contextmanager
    def _exclusive(path: Path, wait: bool) -> Iterator[bool]:
        with open(path, "a+b") as file:
            try:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(file.fileno(), fcntl.LOCK_UN)


def _umask() -> int:
    """The process's umask (read by setting and restoring it: Python has no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; Windows cannot open a folder)."""
    if sys.platform == "win32":
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
