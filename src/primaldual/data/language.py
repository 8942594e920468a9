"""Next-token data for the ``lm`` task: the text corpus in byte windows, and MQAR's cells.

==========  =======================================================================================================
dataset     splits (:class:`LanguageSplit`: ids, padding mask, next-token labels)
==========  =======================================================================================================
text        :mod:`.text`'s document split, cut into non-overlapping windows of ``context`` bytes (labels: the
            next byte, every position labelled); training: a random subset of ``max_train_samples`` windows
            (default: all); validation: ``num_val`` random windows; test: every window of the test documents
mqar        :mod:`.recall`, every cell ``(pairs, length)`` with ``4·pairs <= length``: ``num_train`` training
            sequences in all, shared by the cells so that each has the same number of tokens (a cell of 64 tokens
            4 times the sequences of a cell of 256), ``num_val`` validation and ``num_test`` test sequences per
            cell; right-padded to the longest length (labels ``IGNORE`` at padding)
==========  =======================================================================================================

The data are fixed: drawn from :data:`DATA_SEED`, whatever the run's seed, so every seed and every variant trains
and is tested on the same sequences (as generated ListOps is one fixed set). Each MQAR cell and split has its
own generator seed, so enlarging one split or adding a cell changes no other sequence.

Right padding needs no attention mask in a causal model: a padded position comes after every valid one of its
sequence, so no valid query sees it, and its label is ``IGNORE``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from . import recall, text

DATA_SEED = 0
IGNORE = recall.IGNORE


@dataclass
class LanguageSplit:
    """x ``(n, L)`` int64 ids (0 at padding); mask ``(n, L)`` bool, True at padding; y ``(n, L)`` int64 label of
    each position (the token that follows it, ``IGNORE`` where nothing is asked); cell ``(n,)`` int64: the index of
    each sequence's MQAR cell (0 for text)."""

    x: Tensor
    mask: Tensor
    y: Tensor
    cell: Tensor

    def __post_init__(self) -> None:
        n, length = self.x.shape
        for name, dtype, shape in (("mask", torch.bool, (n, length)), ("y", torch.int64, (n, length))):
            value = getattr(self, name)
            if value.dtype != dtype or tuple(value.shape) != shape:
                raise ValueError(f"{name} must be a {dtype} tensor {shape}, got {value.dtype} {tuple(value.shape)}")
        if tuple(self.cell.shape) != (n,):
            raise ValueError(f"cell must be a tensor ({n},), got {tuple(self.cell.shape)}")

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def lengths(self) -> Tensor:
        """``(n,)``: the valid positions of each sequence."""
        return (~self.mask).sum(1)

    def to_dataset(self) -> TensorDataset:
        """Items ``(x_i, mask_i, y_i)``."""
        return TensorDataset(self.x, self.mask, self.y)

    def part(self, index: Tensor) -> LanguageSplit:
        return LanguageSplit(self.x[index], self.mask[index], self.y[index], self.cell[index])


@dataclass
class LanguageData:
    """A next-token set: ids in ``[0, vocab_size)``; ``cells`` names the MQAR cells ``(pairs, length)`` that
    ``split.cell`` indexes (``()`` for text); ``source``: what the data are made from (package and version)."""

    name: str
    vocab_size: int
    train: LanguageSplit
    val: LanguageSplit
    test: LanguageSplit
    cells: tuple[tuple[int, int], ...] = ()
    source: dict[str, Any] | None = None

    @property
    def num_classes(self) -> int:
        return self.vocab_size

    @property
    def max_length(self) -> int:
        return self.train.x.shape[1]


def text_data(context: int, num_val: int, max_train_samples: int | None = None, root: Any = None) -> LanguageData:
    """The corpus of :mod:`.text` in windows of ``context`` bytes (see the module's table)."""
    root = text.ROOT if root is None else root
    generator = torch.Generator().manual_seed(DATA_SEED)

    def split(name: str, count: int | None) -> LanguageSplit:
        windows = text.windows(text.stream(name, root), context)
        if count is not None and count < len(windows):
            windows = windows[torch.randperm(len(windows), generator=generator)[:count].sort().values]
        x, y = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
        return LanguageSplit(x, torch.zeros(x.shape, dtype=torch.bool), y, torch.zeros(len(x), dtype=torch.int64))

    train, val, test = split("train", max_train_samples), split("val", num_val), split("test", None)
    source = {"package": text.PACKAGE, "version": text.package_version(), "root": str(root)}
    return LanguageData("text", 256, train, val, test, source=source)


def mqar_cells(pairs: list[int], lengths: list[int]) -> tuple[tuple[int, int], ...]:
    """The cells ``(pairs, length)`` with room for the pairs and a query of each (``4·pairs <= length``)."""
    cells = tuple((p, n) for n in sorted(lengths) for p in sorted(pairs) if 4 * p <= n)
    if not cells:
        raise ValueError(f"no MQAR cell fits: every length must hold 4·pairs tokens, got {pairs=} and {lengths=}")
    return cells


def mqar_vocab(lengths: list[int]) -> int:
    """The vocabulary of MQAR up to the longest length: 1024 ids (keys and values each half), or the power of 2
    above the longest length. Few ids would make the noise between the pairs and the queries repeat the keys often
    (uniform noise over 256 ids repeats a given key in a quarter of 64 noise positions), which Zoology's 8192 ids
    avoid; 1024 keeps that rare at a fraction of the output layer's cost."""
    return max(1024, 2 ** math.ceil(math.log2(max(lengths) + 1)))


def mqar_data(
    pairs: list[int], lengths: list[int], num_train: int, num_val: int, num_test: int, offset: int = 0
) -> LanguageData:
    """MQAR's cells (see the module's table). ``offset``: random ids before each sequence (``IGNORE`` labels), so
    that its pairs start at position ``offset``: with an odd offset, SH's windows of 2 no longer hold one key and
    its value each (a control of what the windows' alignment gives SH); a cell's sequences then have
    ``length + offset`` tokens."""
    cells, vocab, longest = mqar_cells(pairs, lengths), mqar_vocab(lengths), max(lengths) + offset
    share = sum(1 / n for _, n in cells)
    counts = {
        "train": [max(1, round(num_train / n / share)) for _, n in cells],  # the same tokens in every cell
        "val": [num_val] * len(cells),
        "test": [num_test] * len(cells),
    }

    def split(index: int, name: str) -> LanguageSplit:
        parts = []
        for c, (p, n) in enumerate(cells):
            seed = DATA_SEED + 1000 * index + c  # one generator per split and cell
            inputs, labels = recall.mqar(counts[name][c], n, p, vocab, seed)
            if offset:
                lead = torch.randint(vocab, (len(inputs), offset), generator=torch.Generator().manual_seed(seed))
                inputs, labels = torch.cat((lead, inputs), 1), torch.cat((torch.full_like(lead, IGNORE), labels), 1)
                n += offset
            pad = longest - n
            x = torch.nn.functional.pad(inputs, (0, pad))
            y = torch.nn.functional.pad(labels, (0, pad), value=IGNORE)
            mask = torch.arange(longest).expand_as(x) >= n
            parts.append(LanguageSplit(x, mask, y, torch.full((len(x),), c)))
        return LanguageSplit(*(torch.cat([getattr(s, f) for s in parts]) for f in ("x", "mask", "y", "cell")))

    train, val, test = (split(i, name) for i, name in enumerate(("train", "val", "test")))
    return LanguageData("mqar", vocab, train, val, test, cells=cells, source={"generator": "primaldual.data.recall"})
