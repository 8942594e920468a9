"""Run files that a killed run cannot leave half-written, and weights that cannot run code when loaded.

* :func:`~primaldual.files.atomic_open`, :func:`~primaldual.files.atomic_write` (from :mod:`primaldual.files`):
  whoever reads a run file, or a run resumed after a kill at any moment, sees the previous complete file or
  the new one, never a truncated one.
* :class:`AtomicCheckpointIO`: Lightning's checkpoint I/O through :func:`atomic_open`, loading with
  :func:`load_checkpoint`. (Lightning's ``TorchCheckpointIO`` stages the file in the system temporary folder
  through fsspec and moves it there without fsync: a copy, not an atomic rename, when that folder is on
  another file system.)
* :func:`load_checkpoint`: ``torch.load(weights_only=True)``: tensors, containers, numbers and strings only,
  never code; a damaged file is a ValueError that names it.
* :func:`check_state_dict`, :func:`load_weights`: weights of another model configuration are a ValueError
  naming the keys and shapes that differ; :func:`check_resume` also names the options that differ from those
  stored in the checkpoint by :class:`ConfigInCheckpoint`.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from ..files import atomic_open
from .config import TrainConfig

#: Options that a resumed run may change: its length and where and how it runs. Any other option defines the
#: data, the model or the optimisation, and must equal the checkpoint's.
RESUME_OPTIONS = frozenset(
    {
        "epochs",
        "patience",
        "output",
        "root",
        "threads",
        "num_workers",
        "accelerator",
        "devices",
        "num_nodes",
        "strategy",
    }
)
#: Options of where and how fast a run ran, not of what it computed: a finished run is the same whatever they were.
PLACEMENT_OPTIONS = RESUME_OPTIONS - {"epochs", "patience"}


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """The Lightning checkpoint ``path`` (a dict with a ``state_dict``), read with ``torch.load(weights_only=True)``.

    FileNotFoundError if it is missing; ValueError naming it if it is truncated, corrupt, holds objects other
    than tensors, containers and plain values (which would need code to rebuild), or is not a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    # torch.load's signals of a damaged file: a broken zip archive (RuntimeError), an empty file (EOFError), a
    # pickle stream it cannot or may not read (UnpicklingError, also for forbidden objects), bad values
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError) as e:
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else "empty or truncated"
        raise ValueError(f"checkpoint {path} is damaged or not a checkpoint: {type(e).__name__}: {reason}") from e
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(
            f"{path} is not a Lightning checkpoint: expected a dict with a 'state_dict' dict, got "
            f"{type(checkpoint).__name__}"
        )
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O (``Trainer(plugins=[AtomicCheckpointIO()])``): ``torch.save`` through
    :func:`atomic_open`; :func:`load_checkpoint` (weights only) to read."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as file:
            torch.save(checkpoint, file)

    def load_checkpoint(
        self,
        path: str | os.PathLike,
        map_location: Callable | str | torch.device | None = "cpu",
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        if weights_only is False:
            raise ValueError(
                f"checkpoints are only loaded with weights_only=True (no code runs on load), "
                f"asked to load {path} with weights_only=False"
            )
        return load_checkpoint(path, map_location)


class ConfigInCheckpoint(Callback):
    """Stores ``config`` (as a dict, key ``"config"``) in every checkpoint, for :func:`check_resume`."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        checkpoint["config"] = self.config.to_dict()


def check_state_dict(expected: Mapping[str, Tensor], found: Mapping[str, Any], source: str | os.PathLike) -> None:
    """ValueError naming ``source`` and what differs unless ``found`` has exactly the keys of ``expected``
    (a model's ``state_dict()``), each a tensor of the same shape."""
    differences = {
        "shapes (file vs model)": [
            f"{k} {_shape(found[k])} vs {_shape(t)}"
            for k, t in expected.items()
            if k in found and _shape(found[k]) != _shape(t)
        ],
        "missing": [k for k in expected if k not in found],
        "unexpected": [k for k in found if k not in expected],
    }
    named = [
        f"{what}: {', '.join(keys[:5])}" + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        for what, keys in differences.items()
        if keys
    ]
    if named:
        raise ValueError(
            f"{source} holds weights of another model configuration ({'; '.join(named)}); load it "
            f"into the model of the options it was trained with (its run's config.yaml)"
        )


def _shape(value: Any) -> tuple[int, ...] | str:
    """A tensor's shape; the type name of anything else (a hostile file's state_dict may hold anything)."""
    return tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__


def changed_options(
    saved: Mapping[str, Any], config: TrainConfig, ignore: frozenset[str] = RESUME_OPTIONS
) -> list[str]:
    """``"name: saved -> new"`` for each option of ``config`` that differs from the ``saved`` options, but for
    those in ``ignore`` (by default those a continued run may change) and options ``saved`` predates."""
    return [
        f"{k}: {saved[k]!r} -> {v!r}"
        for k, v in config.to_dict().items()
        if k not in ignore and k in saved and saved[k] != v
    ]


def check_resume(checkpoint: Mapping[str, Any], path: str | os.PathLike, config: TrainConfig, model: nn.Module) -> None:
    """ValueError unless ``checkpoint`` (read from ``path``) can continue as the run of ``config``: the options
    stored in it equal ``config``'s but for :data:`RESUME_OPTIONS` (options it predates are not compared), and
    its weights fit ``model``."""
    saved = checkpoint.get("config")
    if isinstance(saved, dict):
        changed = changed_options(saved, config)
        if changed:
            raise ValueError(
                f"cannot resume {path} with other options ({'; '.join(changed)}); a resumed run may "
                f"only change {', '.join(sorted(RESUME_OPTIONS))}"
            )
    check_state_dict(model.state_dict(), checkpoint["state_dict"], path)


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a run's ``model.safetensors`` (tensors only, no code) into ``model``; return ``model``.

    FileNotFoundError if missing; ValueError naming the file if it is damaged, or naming the keys and shapes
    that differ if it holds weights of another configuration.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        weights = load_file(path)
    except SafetensorError as e:  # safetensors' one error for a file it cannot parse
        raise ValueError(f"weights file {path} is damaged or not a safetensors file: {e}") from e
    check_state_dict(model.state_dict(), weights, path)
    model.load_state_dict(weights)
    return model
