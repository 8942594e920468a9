"""The byte-level text corpus (primaldual.data.text): the Python documentation's sources, split by document."""

import shutil

import pytest
import torch

from primaldual.data import text


def test_the_splits_are_disjoint_cover_every_document_and_are_deterministic():
    splits = text.documents()
    names = [n for split in text.SPLITS for n in splits[split]]
    assert len(names) == len(set(names)) >= 400  # no document in two splits
    assert set(names) == {p.relative_to(text.ROOT).as_posix() for p in text.ROOT.rglob("*.rst.txt")}
    assert splits == text.documents()  # deterministic
    shares = [len(splits[s]) / len(names) for s in text.SPLITS]
    assert abs(shares[0] - 0.8) < 0.06 and abs(shares[1] - 0.1) < 0.05 and abs(shares[2] - 0.1) < 0.05, shares


def test_a_documents_split_does_not_depend_on_the_other_documents(tmp_path):
    """A corpus of a few of the documents (as an older or newer package would hold) splits them as the whole."""
    whole = text.documents()
    chosen = [whole["train"][0], whole["val"][0], whole["test"][0], whole["train"][-1]]
    for name in chosen:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(text.ROOT / name, tmp_path / name)
    part = text.documents(tmp_path)
    assert all(set(part[s]) <= set(whole[s]) for s in text.SPLITS) and sum(map(len, part.values())) == 4


def test_a_split_streams_its_documents_bytes_joined_by_the_separator():
    names = text.documents()["val"]
    data = text.stream("val")
    assert data.dtype == torch.uint8
    assert int((data == text.SEPARATOR).sum()) == len(names) - 1  # the text itself holds no 0 byte
    assert data.numel() == sum((text.ROOT / n).stat().st_size for n in names) + len(names) - 1
    first = (text.ROOT / names[0]).read_bytes()
    assert bytes(data[: len(first)].tolist()) == first


def test_windows_give_inputs_and_next_byte_targets():
    data = torch.arange(23, dtype=torch.uint8)
    w = text.windows(data, 5)
    assert w.shape == (4, 6) and w.dtype == torch.long
    assert torch.equal(w[:, 1:][:, :-1], w[:, :-1][:, 1:])  # targets are the inputs shifted by one
    assert torch.equal(w[1, :1], w[0, -1:])  # consecutive windows share their boundary byte
    assert text.bits_per_byte(torch.log(torch.tensor(256.0)).item()) == pytest.approx(8.0)


def test_the_installed_package_version_is_recorded():
    version = text.package_version()
    assert version is not None and version.startswith("3.11"), version
    assert text.package_version("no-such-package-primaldual") is None


def test_bad_input_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="python3.11-doc"):
        text.documents(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no \\*.rst.txt"):
        text.documents(tmp_path)
    with pytest.raises(ValueError, match="split"):
        text.stream("dev")
    with pytest.raises(ValueError, match="length"):
        text.windows(torch.zeros(10, dtype=torch.uint8), 0)
    with pytest.raises(ValueError, match="needs more data"):
        text.windows(torch.zeros(3, dtype=torch.uint8), 5)
