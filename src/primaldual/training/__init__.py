"""The training engine on Lightning: ``TrainConfig``, the ``Classifier`` LightningModule, ``train`` and ``compare``."""

from __future__ import annotations

import importlib
from typing import Any

from .config import TASKS, TrainConfig

__all__ = [
    "TASKS",
    "Classifier",
    "RngState",
    "TrainConfig",
    "build_model",
    "compare",
    "load_data",
    "summary_row",
    "train",
]

# where the Lightning-based names live: importing Lightning takes seconds, so it waits for first use
# (``primaldual --help`` and config checks stay fast)
_LAZY = {
    "Classifier": "module",
    "RngState": "module",
    "build_model": "run",
    "compare": "run",
    "load_data": "run",
    "summary_row": "run",
    "train": "run",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
