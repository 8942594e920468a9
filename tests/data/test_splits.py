"""primaldual.data.splits and the shared containers: one stratified split for every data family; token splits
in any integer dtype."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from primaldual.data.sequences import TokenData, TokenSplit
from primaldual.data.splits import stratified_split


def test_stratified_split_keeps_class_proportions_and_is_seeded() -> None:
    labels = np.repeat([0, 1, 2], [40, 20, 20])
    fit, val = stratified_split(labels, 0.25, seed=3)
    assert len(val) == 20 and np.bincount(labels[val]).tolist() == [10, 5, 5]
    assert np.array_equal(np.sort(np.concatenate([fit, val])), np.arange(80)) and np.all(np.diff(fit) > 0)
    assert all(np.array_equal(a, b) for a, b in zip((fit, val), stratified_split(labels, 0.25, seed=3)))
    fit, val = stratified_split(labels, 0.25, seed=3, max_samples=40)
    assert len(fit) + len(val) == 40 and np.bincount(labels[np.concatenate([fit, val])]).tolist() == [20, 10, 10]
    fit, val = stratified_split(labels, 0, seed=0)
    assert len(fit) == 80 and len(val) == 0


def test_stratified_split_names_the_source_and_class_sizes() -> None:
    with pytest.raises(ValueError, match=r"val_fraction=0.1: cannot carve .* from my.ts .*class sizes \{0: 1, 1: 9\}"):
        stratified_split(np.array([0] + [1] * 9), 0.1, seed=0, source="my.ts")


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int64])
def test_token_splits_take_any_integer_dtype(dtype: torch.dtype) -> None:
    mask, labels = torch.zeros(3, 5, dtype=torch.bool), torch.zeros(3, dtype=torch.int64)
    split = TokenSplit(torch.ones(3, 5, dtype=dtype), mask, labels)
    data = TokenData("t", ("a", "b"), split, split, split, vocab_size=16)
    assert data.num_classes == 2 and data.max_length == 5 and data.num_channels is None
    with pytest.raises(ValueError, match="integer tensor"):
        TokenSplit(torch.ones(3, 5), split.mask, split.y)
