"""The MQAR generator against its definition (primaldual.data.recall)."""

import pytest
import torch

from primaldual.data.recall import IGNORE, mqar, recall_accuracy


@pytest.mark.parametrize("length,pairs", [(64, 4), (64, 16), (128, 8), (256, 64), (512, 32)])
def test_every_query_is_answered_by_the_value_paired_with_its_key(length, pairs):
    data = mqar(50, length, pairs, vocab=max(1024, length + 2), seed=length + pairs)
    vocab = max(1024, length + 2)
    assert data.inputs.shape == data.labels.shape == (50, length)
    assert data.inputs.dtype == torch.long and 0 <= data.inputs.min() and data.inputs.max() < vocab
    for x, y in zip(data.inputs.tolist(), data.labels.tolist()):
        keys, values = x[0 : 2 * pairs : 2], x[1 : 2 * pairs : 2]
        assert len(set(keys)) == pairs and all(1 <= k < vocab // 2 for k in keys)
        assert len(set(values)) == pairs and all(vocab // 2 <= v < vocab for v in values)
        assert all(label == IGNORE for label in y[: 2 * pairs])  # no label inside the pairs
        answer = dict(zip(keys, values))
        labelled = [i for i, label in enumerate(y) if label != IGNORE]
        assert len(labelled) == pairs  # one query per key
        assert all((i - 2 * pairs) % 2 == 0 for i in labelled)  # at even offsets after the pairs
        assert sorted(x[i] for i in labelled) == sorted(keys)  # each key queried once
        assert all(y[i] == answer[x[i]] for i in labelled)


def test_a_seed_gives_the_same_data_and_another_seed_other_data():
    a, b, c = mqar(8, 64, 4, 256, seed=1), mqar(8, 64, 4, 256, seed=1), mqar(8, 64, 4, 256, seed=2)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.inputs, c.inputs)


def test_the_power_law_puts_queries_near_the_pairs_and_a_one_spreads_them():
    def mean_gap(power_a):
        data = mqar(400, 256, 4, 512, seed=0, power_a=power_a)
        where = (data.labels != IGNORE).nonzero()[:, 1].float()
        return ((where - 8) / 2).mean().item()

    space = (256 - 8) // 2
    assert mean_gap(0.01) < 0.35 * space  # most mass on small gaps
    assert abs(mean_gap(1.0) - (space - 1) / 2) < 0.05 * space  # uniform: the middle of the space


def test_recall_accuracy_counts_labelled_positions_only():
    data = mqar(3, 64, 4, 128, seed=0)
    perfect = torch.nn.functional.one_hot(data.labels.clamp_min(0), 128).float()
    torch.testing.assert_close(recall_accuracy(perfect, data.labels), torch.ones(3))
    wrong = perfect.roll(1, -1)
    torch.testing.assert_close(recall_accuracy(wrong, data.labels), torch.zeros(3))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(examples=0), "examples"),
        (dict(pairs=0), "pairs"),
        (dict(length=63), "length"),
        (dict(length=64, pairs=17), "length"),
        (dict(vocab=64), "vocab"),
        (dict(power_a=0.0), "power_a"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    arguments = dict(examples=2, length=64, pairs=4, vocab=256, seed=0) | kwargs
    with pytest.raises(ValueError, match=match):
        mqar(**arguments)
