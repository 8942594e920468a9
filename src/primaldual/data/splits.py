"""What every classification set shares: named classes, train / val / test splits, and the one stratified split
that carves a validation split (and, optionally, a smaller training set) out of a training file."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class ClassificationData:
    """A named classification set: ``classes[c]`` names class index ``c``; each split has ``len()`` and
    ``to_dataset()`` (a torch Dataset of ``(inputs..., label)`` items)."""

    name: str
    classes: Sequence[str]
    train: Any
    val: Any
    test: Any

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int, *, max_samples: int | None = None, source: object = "data"
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices ``(fit, val)`` into ``labels`` ``(n,)``: a class-stratified subset of ``max_samples`` (all by
    default), of which a stratified ``val_fraction`` is held out as ``val`` (empty for 0); scikit-learn's
    ``train_test_split`` with ``random_state=seed``. A ValueError names ``source`` and the class sizes when a class
    is too small to be split."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    try:
        if max_samples is not None and max_samples < len(index):
            index, _ = train_test_split(index, train_size=max_samples, stratify=labels, random_state=seed)
        if val_fraction == 0:
            return np.sort(index), index[:0]
        fit, val = train_test_split(index, test_size=val_fraction, stratify=labels[index], random_state=seed)
    except ValueError as e:
        counts = {int(c): int(k) for c, k in zip(*np.unique(labels, return_counts=True))}
        subset = "" if max_samples is None else f", max_train_samples={max_samples}"
        raise ValueError(
            f"val_fraction={val_fraction}{subset}: cannot carve a stratified validation split from "
            f"{source} ({len(labels)} samples, class sizes {counts}): {e}"
        ) from e
    return np.sort(fit), np.sort(val)
