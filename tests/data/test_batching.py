"""Length-grouped batching: every sample once (or repeated evenly under DDP), similar lengths per batch, the
same logits on trimmed batches as on fully padded ones, and training runs that use it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from primaldual.data.batching import LengthGroupedSampler, trim_padding
from primaldual.models import SequenceClassifier
from primaldual.training import TrainConfig, train
from tests import tolerances as T

LENGTHS = torch.randint(1, 200, (1003,), generator=torch.Generator().manual_seed(0))


def batches_of(lengths: torch.Tensor, size: int, **options: object) -> list[list[int]]:
    return [b.tolist() for b in LengthGroupedSampler(lengths, size, **options).batches()]


@pytest.mark.parametrize("shuffle", [True, False])
def test_one_process_sees_every_sample_once_in_whole_batches(shuffle: bool) -> None:
    batches = batches_of(LENGTHS, 32, shuffle=shuffle)
    assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
    assert [len(b) for b in batches] == [32] * (len(LENGTHS) // 32) + [len(LENGTHS) % 32]
    # the stream a DataLoader cuts into batches of 32 is these batches
    sampler = LengthGroupedSampler(LENGTHS, 32, shuffle=shuffle)
    assert len(sampler) == len(LENGTHS) and list(sampler) == [i for b in batches for i in b]


def test_batches_hold_similar_lengths() -> None:
    spread = [int(LENGTHS[b].max() - LENGTHS[b].min()) for b in batches_of(LENGTHS, 32)[:-1]]
    random = [int(LENGTHS[b].max() - LENGTHS[b].min()) for b in torch.randperm(992).view(-1, 32)]
    assert max(spread) < min(random) / 2, (spread, random)
    # evaluation: the whole split sorted by length
    lengths = [LENGTHS[b].tolist() for b in batches_of(LENGTHS, 32, shuffle=False)]
    assert sum(lengths, []) == sorted(LENGTHS.tolist(), reverse=True)


def test_grouping_is_drawn_from_seed_and_epoch() -> None:
    first = batches_of(LENGTHS, 32, seed=3)
    assert first == batches_of(LENGTHS, 32, seed=3)  # the same for every process and for a resumed run
    sampler = LengthGroupedSampler(LENGTHS, 32, seed=3)
    sampler.set_epoch(1)
    assert [b.tolist() for b in sampler.batches()] != first
    assert batches_of(LENGTHS, 32, seed=4) != first


@pytest.mark.parametrize("n, replicas", [(1003, 2), (1003, 3), (992, 4), (5, 3), (40, 3)])
def test_processes_share_the_batches(n: int, replicas: int) -> None:
    lengths = LENGTHS[:n]
    train = [batches_of(lengths, 32, num_replicas=replicas, rank=r) for r in range(replicas)]
    assert len({len(b) for b in train}) == 1  # as many steps on every process, or DDP would hang
    assert {i for part in train for b in part for i in b} == set(range(n))
    evaluation = [batches_of(lengths, 32, shuffle=False, num_replicas=replicas, rank=r) for r in range(replicas)]
    assert sorted(i for part in evaluation for b in part for i in b) == list(range(n))  # no sample repeated
    for part in train + evaluation:  # only a process's last batch may be partial
        assert all(len(b) == 32 for b in part[:-1])


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(lengths=torch.ones(3, 2, dtype=torch.long)), "lengths must be a 1-d integer tensor"),
        (dict(batch_size=0), "batch_size must be >= 1"),
        (dict(num_replicas=2, rank=2), r"rank must be in \[0, num_replicas=2\)"),
    ],
)
def test_bad_arguments_are_named(options: dict, match: str) -> None:
    arguments = dict(lengths=LENGTHS, batch_size=4) | options
    with pytest.raises(ValueError, match=match):
        LengthGroupedSampler(arguments.pop("lengths"), arguments.pop("batch_size"), **arguments)


@pytest.mark.parametrize("attention", ["softmax", "bn", "sh", "bn+sh", "linear-bn+sh"])
@pytest.mark.parametrize("pooling", ["mean", "flatten"])
def test_trimmed_batches_give_the_logits_of_padded_ones(attention: str, pooling: str) -> None:
    torch.manual_seed(0)
    lengths = torch.tensor([13, 5, 9, 1])
    mask = torch.arange(40)[None] >= lengths[:, None]
    x = torch.randint(1, 16, (4, 40)).masked_fill(mask, 0)
    model = (
        SequenceClassifier(
            None, 10, 40, vocab_size=16, d_model=16, num_heads=4, dropout=0.0, attention=attention, pooling=pooling
        )
        .double()
        .eval()
    )
    trimmed_x, trimmed_mask, y = trim_padding(list(zip(x, mask, torch.arange(4))))
    assert trimmed_x.shape == (4, 13) and trimmed_mask.shape == (4, 13) and y.tolist() == [0, 1, 2, 3]
    # Not exact: the shapes differ, so the kernels may block their sums differently. Two float64 evaluations of
    # the network differ by at most tests/tolerances.py's model law (docs/numerics.md), as in
    # tests/models/test_sequence.py: parameter sensitivity, widest reduction, S over the attention calls.
    with T.RecordLayerSizes() as record:
        trimmed = model(trimmed_x, trimmed_mask)
    atol = T.model_atol(
        torch.float64,
        T.parameter_sensitivity(model, trimmed_x, trimmed_mask),
        reduction=T.widest_reduction(model),
        size=record.size,
        length=40,
    )
    T.assert_close_normwise(trimmed, model(x, mask), atol, "trimmed vs padded logits")


def test_trim_keeps_one_step_of_an_all_padding_batch() -> None:
    x, mask, _ = trim_padding([(torch.zeros(6), torch.ones(6, dtype=torch.bool), torch.tensor(0))])
    assert x.shape == (1, 1) and mask.shape == (1, 1)


def test_loader_with_grouping_yields_trimmed_batches() -> None:
    mask = torch.arange(200)[None] >= LENGTHS[:, None]
    data = TensorDataset(torch.zeros(len(LENGTHS), 200, dtype=torch.uint8), mask, torch.zeros(len(LENGTHS)))
    loader = DataLoader(data, 32, sampler=LengthGroupedSampler(LENGTHS, 32), collate_fn=trim_padding)
    widths = [x.shape[1] for x, _, _ in loader]
    assert sum(widths) < 0.7 * 200 * len(widths)  # random batches of 32 would nearly all be ~200 wide


def test_training_with_grouping(tmp_path: Path) -> None:
    options = dict(
        task="listops",
        dataset="listops",
        num_train=480,
        num_val=100,
        num_test=100,
        min_length=5,
        max_length=40,
        batch_size=32,
        d_model=16,
        depth=1,
        num_heads=2,
        dropout=0.0,
        lr=3e-3,
        warmup_epochs=0,
        epochs=4,
        root=str(tmp_path / "data"),
        bucket_by_length=True,
    )
    first = train(TrainConfig(**options, output=str(tmp_path / "a")))
    again = train(TrainConfig(**options, output=str(tmp_path / "b")))
    assert first["test_accuracy"] == again["test_accuracy"] > 0.1  # repeatable; chance 0.1
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["epochs"] == 4


def test_grouping_is_refused_for_images() -> None:
    with pytest.raises(ValueError, match="bucket_by_length applies to sequences"):
        TrainConfig(task="image", dataset="fashion-mnist", bucket_by_length=True)


def test_a_sample_count_draws_a_new_subset_each_epoch() -> None:
    lengths = torch.randint(1, 50, (100,), generator=torch.Generator().manual_seed(0))
    sampler = LengthGroupedSampler(lengths, 8, seed=3, num_samples=30)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert len(first) == len(second) == len(sampler) == 30
    assert len(set(first)) == 30 and set(first) != set(second)  # no repeat within an epoch, a new draw after
    with pytest.raises(ValueError, match="num_samples"):
        LengthGroupedSampler(lengths, 8, num_samples=0)
