"""A fuzz pass over the file readers: random bytes, and valid files with bytes flipped, inserted, deleted,
cut or lines repeated (hypothesis). Every outcome is a well-formed result or a ValueError naming the file;
nothing else escapes, nothing allocates more than the file can justify. Then the hostile cases found this way.
"""

from __future__ import annotations

import gzip
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from primaldual.data.images import read_idx
from primaldual.data.listops import VOCAB, evaluate, read_listops_tsv
from primaldual.data.uea import load_uea, read_ts

TS = b"""@problemName Toy
@timeStamps false
@missing true
@univariate false
@dimensions 2
@equalLength false
@classLabel true a b
@data
1.0,2.0,3.0:4.0,5.0,6.0:a
0.5,?,1.5:2.5,3.5,4.5:b
1.0,2.0:3.0,4.0:a
2.0,1.0:4.0,3.0:b
"""
IDX = bytes([0, 0, 8, 3]) + struct.pack(">3I", 2, 3, 4) + bytes(range(24))
TSV = b"Source\tTarget\n( ( [MAX 2 9 ) ( [MIN 4 7 ] ) 0 ] )\t9\n[SM 1 2 ]\t3\n[MED 1 5 8 ]\t5\n"
# pieces that mean something to one of the formats
TOKENS = [
    b":",
    b",",
    b"?",
    b"\n",
    b"\r",
    b"@",
    b"NaN",
    b"inf",
    b"-1e999",
    b"1e300",
    b"\xff\xfe",
    b"\x00",
    b" ",
    b"\t",
    b'"',
    b"@data\n",
    b"@classLabel true a b\n",
    b"(",
    b")",
    b"[MAX",
    b"]",
    b"\x1f\x8b",
    b"\xff" * 4,
]
EXAMPLES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def mutated(draw, good: bytes) -> bytes:
    """``good`` after 1-4 random edits."""
    data = bytearray(good)
    for _ in range(draw(st.integers(1, 4))):
        op, at = draw(st.sampled_from(["flip", "insert", "delete", "cut", "repeat line"])), draw(st.integers(0, 10**6))
        at %= len(data) + 1
        if op == "flip" and data:
            data[min(at, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.sampled_from(TOKENS))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 20))]
        elif op == "cut":
            del data[at:]
        elif op == "repeat line":
            lines = bytes(data).split(b"\n")
            lines.insert(draw(st.integers(0, len(lines))), lines[draw(st.integers(0, len(lines) - 1))])
            data = bytearray(b"\n".join(lines))
    return bytes(data)


def hostile(good: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(mutated(good), st.binary(max_size=300))


def outcome(read, path: Path, data: bytes):
    """``read(path)`` of ``data``: its result, or None after a ValueError that names the file."""
    path.write_bytes(data)
    try:
        return read(path)
    except ValueError as e:
        assert str(path) in str(e), e
        return None


@EXAMPLES
@given(data=hostile(TS))
def test_ts_reader(tmp_path: Path, data: bytes) -> None:
    result = outcome(read_ts, tmp_path / "Toy_TRAIN.ts", data)
    if result is not None:
        series, labels = result
        assert len(series) == len(labels) > 0 and {s.shape[0] for s in series} == {series[0].shape[0]}
        for s in series:  # missing values are NaN; nothing float32 cannot hold
            assert s.ndim == 2 and s.dtype == np.float64 and (np.abs(s[~np.isnan(s)]) <= 1.7e38).all()


@EXAMPLES
@given(data=hostile(TS))
def test_uea_loader_gives_finite_tensors_or_names_the_file(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "Toy_TEST.ts").write_bytes(TS)
    loaded = outcome(lambda p: load_uea("Toy", root=p.parent, val_fraction=0), tmp_path / "Toy_TRAIN.ts", data)
    if loaded is not None:
        for split in (loaded.train, loaded.test):
            assert torch.isfinite(split.x).all() and (split.x[split.mask] == 0).all()


@EXAMPLES
@given(data=hostile(IDX), compress=st.booleans())
def test_idx_reader(tmp_path: Path, data: bytes, compress: bool) -> None:
    path = tmp_path / ("images.gz" if compress else "images")
    array = outcome(read_idx, path, gzip.compress(data) if compress else data)
    if array is not None:
        assert array.dtype == np.uint8 and 1 <= array.ndim <= 255
        assert array.size == len(data) - 4 - 4 * array.ndim  # exactly the declared payload, nothing after it


@EXAMPLES
@given(data=hostile(TSV))
def test_listops_tsv_reader(tmp_path: Path, data: bytes) -> None:
    split = outcome(lambda p: read_listops_tsv(p, check_labels=True), tmp_path / "basic_train.tsv", data)
    if split is not None:
        assert ((split.x >= 0) & (split.x < len(VOCAB))).all() and ((split.y >= 0) & (split.y <= 9)).all()
        for ids, label in zip(split.x, split.y):
            assert evaluate(ids) == label


# ---- the hostile cases, one by one -------------------------------------------------------------------


def test_ts_values_beyond_float32_are_named_not_turned_into_nan(tmp_path: Path) -> None:
    """1e300 is a finite float64 but inf in the float32 tensors, which would make its whole channel NaN."""
    for name, text in (("Toy_TRAIN.ts", TS.replace(b"2.5,3.5", b"2.5,1e300")), ("Toy_TEST.ts", TS)):
        (tmp_path / name).write_bytes(text)
    with pytest.raises(ValueError, match=r"Toy_TRAIN\.ts: contains infinite values or values beyond ±1.7e38"):
        load_uea("Toy", root=tmp_path)
    (tmp_path / "Toy_TRAIN.ts").write_bytes(TS.replace(b"2.5,3.5", b"2.5,1e30"))  # large, and fine
    assert torch.isfinite(load_uea("Toy", root=tmp_path, val_fraction=0).train.x).all()


@pytest.mark.parametrize("header", [b"@seriesLength 1000000000000", b"@dimensions 1000000000", b"@seriesLength -5"])
def test_ts_declared_sizes_allocate_nothing(tmp_path: Path, header: bytes) -> None:
    """aeon reads what the rows hold, whatever the header declares."""
    path = tmp_path / "Toy_TRAIN.ts"
    path.write_bytes(TS.replace(b"@data", header + b"\n@data"))
    tracemalloc.start()
    try:
        series, labels = read_ts(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [s.shape for s in series] == [(2, 3), (2, 3), (2, 2), (2, 2)] and peak < 8 * 2**20


@pytest.mark.parametrize(
    "data, match",
    [
        (b"\xff\xfe@problemName Toy\n", "not a valid .ts file"),  # not UTF-8
        (TS.replace(b"0.5,?", b"0.5,\x00"), "not a valid .ts file"),
    ],
)
def test_ts_binary_garbage_is_named(tmp_path: Path, data: bytes, match: str) -> None:
    path = tmp_path / "Toy_TRAIN.ts"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=f"{path}: {match}"):
        read_ts(path)


@pytest.mark.parametrize(
    "data, match",
    [
        (TSV + b"[SM 1 \xff 2 ]\t3\n", r"after line \d: not UTF-8 text"),
        (TSV + b"[SM " + b"1 " * 70_000 + b"]\t0\n", r"line 5: \d+ characters, more than a field may hold"),
        (TSV + b'"[SM 1\n2 ]"\t3\n', "line 5: expected 2 tab-separated columns"),  # csv's quoting: 2 lines, 1 row
        (TSV.replace(b"Target", b"Target\x00"), "line 1: expected the header"),
    ],
)
def test_listops_tsv_garbage_is_named_with_its_line(tmp_path: Path, data: bytes, match: str) -> None:
    path = tmp_path / "basic_train.tsv"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=f"{path}, {match}"):
        read_listops_tsv(path)
