"""``EpochEvaluation``: the accuracy of a model on given splits after every training epoch, recorded and never acted on.

The benchmark's two protocols come from one training run: it trains to the end on the whole training file while
this callback records the test accuracy of every epoch. The *train-only* figure is then the test accuracy at an
epoch chosen without the test file (by cross-validation on the training file), the *test-selected* figure the best
of them (an upper bound, the Time-Series-Library protocol). Nothing in training reads what it records: the
evaluation runs in eval mode without autograd, draws no random number (the global torch and Python random states
are restored after it, and it batches tensors itself instead of creating a DataLoader, whose iterator draws a seed),
and leaves the model's modes as they were. A run with the callback trains exactly as one without it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from ..data.sequences import SequenceSplit


class EpochEvaluation(Callback):
    """After each training epoch, the accuracy on each of ``splits`` (name -> :class:`SequenceSplit`) in ``rows``.

    ``rows[e]``: ``{"epoch": e, "train_loss": ..., "train_acc": ..., "<name>_acc": ...}`` for epoch e (0-based),
    plus ``"seconds"``: the wall time of the epoch's training, the evaluation excluded.
    """

    def __init__(self, splits: Mapping[str, SequenceSplit], batch_size: int = 256) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.splits = dict(splits)
        self.batch_size = batch_size
        self.rows: list[dict[str, float]] = []
        self._started = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:

        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:

        seconds = time.perf_counter() - self._started
        metrics = trainer.callback_metrics
        row: dict[str, float] = {"epoch": trainer.current_epoch, "seconds": seconds}
        row.update({k: metrics[k].item() for k in ("train_loss", "train_acc") if k in metrics})
        row.update({f"{name}_acc": accuracy(pl_module, split, self.batch_size) for name, split in self.splits.items()})
        self.rows.append(row)

    def curve(self, name: str) -> list[float]:
        """The accuracy on split ``name`` of every finished epoch, in order."""
        if name not in self.splits:
            raise KeyError(f"no split named {name!r}; the splits are {sorted(self.splits)}")
        return [row[f"{name}_acc"] for row in self.rows]


def accuracy(model: torch.nn.Module, split: SequenceSplit, batch_size: int = 256) -> float:
    """The fraction of ``split`` that ``model(x, key_padding_mask)`` classifies right, in eval mode without
    autograd; the model's modes and the global random states are as they were afterwards."""
    if len(split) == 0:
        return float("nan")
    modes = [(m, m.training) for m in model.modules()]
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    device = next(model.parameters()).device
    correct = 0
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(split), batch_size):
                part = slice(start, start + batch_size)
                logits = model(split.x[part].to(device), split.mask[part].to(device))
                correct += (logits.argmax(-1).cpu() == split.y[part]).sum().item()
    finally:
        for module, training in modes:
            module.training = training
        torch.set_rng_state(states["torch"])
        random.setstate(states["python"])
    return correct / len(split)
