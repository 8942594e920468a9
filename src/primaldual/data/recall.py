"""Multi-query associative recall (MQAR; Arora, Eyuboglu et al. 2023, "Zoology"), generated from its definition.

A sequence of ``length`` tokens over a vocabulary of ``vocab`` ids opens with ``pairs`` key-value pairs
``k_1 v_1 … k_P v_P``: the keys distinct ids from ``[1, vocab/2)``, the values distinct ids from
``[vocab/2, vocab)``, drawn per sequence. The ``length - 2P`` positions after them hold, at even offsets, one
query of each key in a random order; every other position is a uniform random id from ``[0, vocab)`` (noise, as
Zoology's ``random_non_queries``). A query of ``k_j`` sits at offset ``2g`` after the pairs, the gaps ``g``
drawn without replacement from ``[0, (length - 2P)/2)`` with probability ``∝ (g + 1)^(a - 1)`` (a power law:
``a = 0.01`` puts most queries near the pairs, ``a = 1`` is uniform), as in Zoology.

Next-token labels: at a query's position the label is the value paired with its key (the model reads the key and
must say its value); every other position is ``IGNORE`` (-100, PyTorch's ``ignore_index``). Accuracy is taken on
the labelled positions only. Written here from the definition (the paper's Figure 2 varies ``pairs`` 4…64 and
``length`` 64…512), in torch with one generator so that a seed gives the same data on every machine.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

IGNORE = -100


class Recall(NamedTuple):
    """MQAR sequences: ``inputs`` ``(E, L)`` long ids, ``labels`` ``(E, L)`` long (``IGNORE`` unlabelled)."""

    inputs: Tensor
    labels: Tensor


def mqar(examples: int, length: int, pairs: int, vocab: int, seed: int, power_a: float = 0.01) -> Recall:
    """``examples`` MQAR sequences of ``length`` tokens with ``pairs`` key-value pairs (see the module doc)."""
    _check(examples, length, pairs, vocab, power_a)
    generator = torch.Generator().manual_seed(seed)
    half = vocab // 2
    keys = 1 + _distinct(examples, half - 1, pairs, generator)  # (E, P) from [1, vocab/2)
    values = half + _distinct(examples, vocab - half, pairs, generator)  # (E, P) from [vocab/2, vocab)
    inputs = torch.randint(vocab, (examples, length), generator=generator)
    inputs[:, 0 : 2 * pairs : 2], inputs[:, 1 : 2 * pairs : 2] = keys, values
    space = (length - 2 * pairs) // 2
    weights = torch.arange(1, space + 1, dtype=torch.float64) ** (power_a - 1)
    gaps = torch.multinomial(weights.expand(examples, space), pairs, replacement=False, generator=generator)
    where = 2 * pairs + 2 * gaps  # (E, P): the query of pair j
    inputs.scatter_(1, where, keys)
    labels = torch.full_like(inputs, IGNORE).scatter_(1, where, values)
    return Recall(inputs, labels)


def _distinct(examples: int, choices: int, count: int, generator: torch.Generator) -> Tensor:
    """``(examples, count)``: per row, ``count`` distinct ids from ``[0, choices)``, uniformly."""
    return torch.rand(examples, choices, generator=generator).argsort(1)[:, :count]


def _check(examples: int, length: int, pairs: int, vocab: int, power_a: float) -> None:
    if examples < 1:
        raise ValueError(f"examples must be >= 1, got {examples}")
    if pairs < 1:
        raise ValueError(f"pairs must be >= 1, got {pairs}")
    if length % 2 or 4 * pairs > length:
        raise ValueError(
            f"length must be even and hold the pairs and one query each (>= 4·pairs = {4 * pairs}), got {length}"
        )
    if vocab <= length:  # with length >= 4·pairs, [1, vocab/2) then holds the distinct keys
        raise ValueError(f"vocab must exceed length ({length}), got {vocab}")
    if not power_a > 0:
        raise ValueError(f"power_a must be > 0, got {power_a}")


def recall_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Accuracy over the labelled positions per sequence: logits ``(E, L, V)``, labels ``(E, L)`` -> ``(E,)``."""
    labelled = labels != IGNORE
    correct = (logits.argmax(-1) == labels) & labelled
    return correct.sum(1) / labelled.sum(1).clamp_min(1)
