"""Human-written English for byte-level language modelling: the Python 3.11 documentation's sources.

The corpus is the reStructuredText of the Python documentation (``/usr/share/doc/python3.11/html/_sources``,
Debian package ``python3.11-doc``, installed by ``scripts/setup.sh``): 497 documents, 12 MB of English prose
written by people, with code and markup. It installs offline from a pinned distribution's package, its version
is recorded beside the results (:func:`package_version`), and it is free of any tokenizer: models read bytes
(256 symbols) and report bits per byte.

Split by document: a document's split is fixed by the SHA-256 of its path relative to the root (below 0.8 of
the hash range: train, below 0.9: validation, else test), so a document is in one split only, on every machine
and in every run, and adding or removing another document moves no other one. A split's documents are read in
path order and joined by a 0 byte (which never occurs in the text) into one stream.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import subprocess
from pathlib import Path

import torch
from torch import Tensor

PACKAGE = "python3.11-doc"
ROOT = Path("/usr/share/doc/python3.11/html/_sources")
SPLITS = ("train", "val", "test")
SEPARATOR = 0  # the byte between documents


def split_of(name: str, fractions: tuple[float, float] = (0.8, 0.1)) -> str:
    """The split of the document ``name`` (its path relative to the root): train, val or test."""
    u = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64
    return "train" if u < fractions[0] else "val" if u < fractions[0] + fractions[1] else "test"


def documents(root: str | Path = ROOT) -> dict[str, list[str]]:
    """The documents (``*.rst.txt`` under ``root``, relative paths, sorted) of each split."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"text corpus root {root} does not exist: install the Debian package {PACKAGE} (scripts/setup.sh does)"
        )
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.rst.txt") if p.is_file())
    if not names:
        raise FileNotFoundError(f"text corpus root {root} holds no *.rst.txt document")
    out: dict[str, list[str]] = {split: [] for split in SPLITS}
    for name in names:
        out[split_of(name)].append(name)
    return out


def stream(split: str, root: str | Path = ROOT) -> Tensor:
    """The bytes of ``split``'s documents joined by :data:`SEPARATOR`: ``(T,)`` uint8."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    parts = [(Path(root) / name).read_bytes() for name in documents(root)[split]]
    data = bytes([SEPARATOR]).join(parts)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def windows(data: Tensor, length: int) -> Tensor:
    """Non-overlapping windows of ``length + 1`` bytes (inputs ``[:, :-1]``, next-byte targets ``[:, 1:]``):
    ``(⌊(T - 1) / length⌋, length + 1)`` long; the last window's remainder is dropped."""
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    count = (data.numel() - 1) // length
    if count < 1:
        raise ValueError(f"a window of {length + 1} bytes needs more data than {data.numel()} bytes")
    starts = torch.arange(count) * length
    return data[starts[:, None] + torch.arange(length + 1)].long()  # index the bytes, then widen


def bits_per_byte(loss: float) -> float:
    """Bits per byte from a mean next-byte cross-entropy in nats."""
    return loss / math.log(2)


def package_version(package: str = PACKAGE) -> str | None:
    """The installed Debian version of ``package`` (``dpkg-query``), None where dpkg or the package is missing."""
    if shutil.which("dpkg-query") is None:
        return None
    result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=False)
    version = result.stdout.strip()
    return version if result.returncode == 0 and version else None
