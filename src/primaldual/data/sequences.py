"""Containers for padded sequence-classification data: tensors + key padding masks, batch first.

==============  =====================================================  ==============================
container       x                                                      its set
==============  =====================================================  ==============================
SequenceSplit   ``(n, length, channels)`` float (a UEA time series)    :class:`SequenceData`
TokenSplit      ``(n, length)`` token ids, any integer dtype           :class:`TokenData` (vocab_size)
==============  =====================================================  ==============================
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from .splits import ClassificationData

#: Most values a padded split may hold (2**31: 8 GiB of float32): a file of a few short series and one
#: enormous one would otherwise ask for (number of series) x (longest length) values, far past the memory.
MAX_PADDED_VALUES = 2**31


def check_padded_size(count: int, length: int, per_step: int = 1, *, source: object = "data") -> None:
    """ValueError naming ``source`` when padding ``count`` sequences to ``length`` steps of ``per_step``
    values would exceed :data:`MAX_PADDED_VALUES`."""
    size = count * length * per_step
    if size > MAX_PADDED_VALUES:
        raise ValueError(
            f"{source}: padding {count} sequences to the longest, {length} steps x {per_step} values, needs "
            f"{size:,} values, more than the {MAX_PADDED_VALUES:,} allowed (MAX_PADDED_VALUES): is one sequence "
            f"far longer than the rest?"
        )


@dataclass
class SequenceSplit:
    """One split of a sequence-classification set, right-padded to a common length.

    x ``(n, length, channels)`` float, 0 at padded steps; mask ``(n, length)`` bool, True where a step
    is padding (the ``key_padding_mask`` convention); y ``(n,)`` int64 class indices.
    jitter: the std of the Gaussian noise its dataset adds to every item (:class:`JitteredSequences`); 0: none.
    """

    x: Tensor
    mask: Tensor
    y: Tensor
    jitter: float = 0.0

    def __post_init__(self) -> None:
        self._check_x()
        n, length = self.x.shape[:2]
        if not isinstance(self.mask, Tensor) or self.mask.dtype != torch.bool or self.mask.shape != (n, length):
            raise ValueError(f"mask must be a bool tensor (n, length) = {(n, length)}, got {_describe(self.mask)}")
        if not isinstance(self.y, Tensor) or self.y.dtype != torch.int64 or self.y.shape != (n,):
            raise ValueError(f"y must be an int64 tensor (n,) = {(n,)}, got {_describe(self.y)}")
        if not self.jitter >= 0:
            raise ValueError(f"jitter must be >= 0, got {self.jitter}")

    def _check_x(self) -> None:
        """Subclasses holding other inputs (e.g. token ids) override this check only."""
        if not isinstance(self.x, Tensor) or self.x.dim() != 3 or not self.x.is_floating_point():
            raise ValueError(f"x must be a float tensor (n, length, channels), got {_describe(self.x)}")

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def lengths(self) -> Tensor:
        """``(n,)`` int64: the number of valid (non-padded) steps of each sequence."""
        return (~self.mask).sum(1)

    def to_dataset(self) -> Dataset:
        """A dataset whose items are ``(x_i, mask_i, y_i)``; with ``jitter``, x_i with fresh noise on every access."""
        if self.jitter:
            return JitteredSequences(self.x, self.mask, self.y, self.jitter)
        return TensorDataset(self.x, self.mask, self.y)


class JitteredSequences(TensorDataset):
    """Items ``(x_i + std * noise * valid_i, mask_i, y_i)``: Gaussian noise ``noise ~ N(0, 1)`` of x_i's shape, drawn
    from torch's global generator on every access (a new draw each epoch, repeatable from the run's seed), on the
    valid steps only (padded steps stay 0).

    The "jitter" augmentation of time-series classification (Um et al. 2017; Iwana and Uchida 2021): on small
    noisy sets such as the EEG of SelfRegulationSCP1 it keeps the model from fitting step-to-step noise.
    """

    def __init__(self, x: Tensor, mask: Tensor, y: Tensor, std: float) -> None:
        super().__init__(x, mask, y)
        self.std = std

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        x, mask, y = super().__getitem__(i)
        noise = torch.randn(x.shape, dtype=x.dtype) * self.std
        return x + noise.masked_fill(mask[:, None], 0), mask, y


@dataclass
class TokenSplit(SequenceSplit):
    """A :class:`SequenceSplit` of token sequences: x ``(n, length)`` token ids in any integer dtype (the narrowest
    that holds the vocabulary saves memory; the model converts each batch), 0 at padding; mask ``(n, length)`` bool,
    True at padding; y ``(n,)`` int64 labels."""

    def _check_x(self) -> None:
        if (
            not isinstance(self.x, Tensor)
            or self.x.dim() != 2
            or self.x.is_floating_point()
            or self.x.is_complex()
            or self.x.dtype == torch.bool
        ):
            raise ValueError(f"x must be an integer tensor (n, length) of token ids, got {_describe(self.x)}")


@dataclass
class SequenceData(ClassificationData):
    """A named sequence-classification set whose splits (:class:`SequenceSplit` or :class:`TokenSplit`) share one
    padded length (and channels)."""

    train: SequenceSplit
    val: SequenceSplit
    test: SequenceSplit

    def __post_init__(self) -> None:
        shapes = {split: tuple(getattr(self, split).x.shape[1:]) for split in ("train", "val", "test")}
        if len(set(shapes.values())) != 1:
            raise ValueError(f"train, val and test must share (length, channels), got {shapes}")

    @property
    def num_channels(self) -> int | None:
        """Channels of each step; None for token ids."""
        return self.train.x.shape[2] if self.train.x.dim() == 3 else None

    @property
    def max_length(self) -> int:
        return self.train.x.shape[1]


@dataclass
class TokenData(SequenceData):
    """A token-sequence classification set: ids in ``[0, vocab_size)``, all splits padded to one length."""

    vocab_size: int

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {self.vocab_size}")


def _describe(t: object) -> str:
    return f"{t.dtype} {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
