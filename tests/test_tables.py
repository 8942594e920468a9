"""primaldual.tables: the one writer of Markdown, CSV and JSON tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from primaldual.tables import MISSING, csv_text, json_text, markdown, number, write_rows


def test_number_gives_digits_and_a_dash_for_missing_values() -> None:
    assert number(1.23456) == "1.23" and number(1.23456, 3) == "1.235" and number(7) == "7"
    assert number(math.nan) == number(None) == MISSING == "–"
    assert number("as given") == "as given"


def test_markdown_takes_keys_or_functions_per_column() -> None:
    rows = [{"name": "a", "x": 0.5, "y": math.nan}, {"name": "b", "x": 2.0, "y": 1}]
    text = markdown(rows, [("name", "name"), ("x", "x"), ("twice y", lambda r: r["y"] * 2)])
    assert text == "| name | x | twice y |\n|---|---|---|\n| a | 0.50 | – |\n| b | 2.00 | 2 |\n"


def test_csv_json_and_files(tmp_path: Path) -> None:
    rows = [{"a": 1, "b": math.nan}, {"a": 2, "b": 0.5}]
    assert csv_text(rows) == "a,b\n1,nan\n2,0.5\n"
    assert json.loads(json_text(rows)) == [{"a": 1, "b": None}, {"a": 2, "b": 0.5}]  # strict JSON: NaN is null
    write_rows(rows, tmp_path / "new", "cost", "| table |\n")
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["cost.csv", "cost.json", "cost.md"]
    with pytest.raises(ValueError, match="at least one row"):
        csv_text([])
