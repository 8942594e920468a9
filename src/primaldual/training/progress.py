"""What ``compare`` shows while it runs: one line when a run starts and one with its result, and one progress bar
over the epochs of all runs (rich). ``verbose`` shows Lightning's own bars instead of the overall one.

Only the first process of a DDP job shows anything (the others train in step with it)."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from .config import TrainConfig


class RunProgress:
    """``with RunProgress(configs) as progress``: ``progress.line(text)`` prints a line above the bar;
    ``progress.callback()`` moves the bar at the end of each training epoch of the current run;
    ``progress.finished(config)`` counts a run (trained, stopped early or reused) as all its epochs.

    ``bar=False`` (or a process other than DDP's first, or no terminal for rich to draw on) prints the lines
    only, plainly."""

    def __init__(self, configs: Sequence[TrainConfig], *, bar: bool = True) -> None:
        self.shown = rank_zero_only.rank == 0
        self.total = sum(config.epochs for config in configs)
        self.runs, self.done_runs, self.done_epochs = len(configs), 0, 0
        self._progress: Any = None
        if bar and self.shown:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("epochs"),
                TimeElapsedColumn(),
            )
            self._task = self._progress.add_task(self._description(), total=self.total)

    def __enter__(self) -> RunProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, trace: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()

    def line(self, text: str) -> None:
        """Print ``text`` as one line (never wrapped), above the bar."""
        if not self.shown:
            return
        if self._progress is None:
            print(text, flush=True)
        else:
            self._progress.console.print(text, soft_wrap=True, markup=False, highlight=False)

    def callback(self) -> Callback:
        """A Lightning callback that moves the bar as the current run's epochs finish."""
        return _EpochCallback(self)

    def epochs(self, current: int) -> None:
        """The current run has finished ``current`` epochs."""
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done_epochs + current)

    def finished(self, config: TrainConfig) -> None:
        """The run of ``config`` is over: its epochs all count, however many it trained."""
        self.done_runs += 1
        self.done_epochs += config.epochs
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done_epochs, description=self._description())

    def _description(self) -> str:
        return f"runs {self.done_runs}/{self.runs}"


class _EpochCallback(Callback):
    def __init__(self, progress: RunProgress) -> None:
        self.progress = progress

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.progress.epochs(trainer.current_epoch)  # a resumed run starts with its finished epochs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.progress.epochs(trainer.current_epoch + 1)
