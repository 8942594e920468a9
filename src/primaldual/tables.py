"""Tables of rows (dicts with the same keys) as Markdown, CSV and JSON: the one writer of every table the
project prints or saves (compare's summary, report, efficiency, benchmarks).

Numbers: a float with ``digits`` decimals; ``–`` for a value that is missing or NaN (not measured, or not
defined, such as the validation accuracy of a run without a validation split); JSON writes NaN as null.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .files import atomic_write

#: What a table shows for a missing or NaN value.
MISSING = "–"

#: A column: its header and either the row's key or a function of the row giving the cell.
Column = tuple[str, Hashable | Callable[[Mapping[Any, Any]], Any]]


def number(value: Any, digits: int = 2) -> str:
    """``value`` as a cell: floats with ``digits`` decimals, ``–`` for None and NaN, anything else as ``str``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], digits: int = 2) -> str:
    """A Markdown table of ``rows``, one line per row; cells through :func:`number` (strings stay as they are)."""
    lines = ["| " + " | ".join(header for header, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [number(get(row) if callable(get) else row.get(get), digits) for _, get in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """``rows`` as CSV text with a header (the first row's keys); NaN as Python writes it (``nan``)."""
    if not rows:
        raise ValueError("rows must hold at least one row (its keys are the CSV header)")
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def json_text(content: Any) -> str:
    """Strict JSON text of ``content`` (indented, newline-terminated): NaN and infinities (not JSON) become null."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, Mapping):
            return {key: clean(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(item) for item in value]
        return value

    return json.dumps(clean(content), indent=2, allow_nan=False, default=str) + "\n"


def write_rows(rows: Sequence[Mapping[str, Any]], folder: str | Path, stem: str, table: str | None = None) -> None:
    """``rows`` as ``folder/stem.csv`` and ``folder/stem.json`` and, given, the Markdown ``table`` as
    ``folder/stem.md``; each file written atomically, the folder created if missing."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / f"{stem}.csv", csv_text(rows).encode())
    atomic_write(folder / f"{stem}.json", json_text(list(rows)).encode())
    if table is not None:
        atomic_write(folder / f"{stem}.md", table.encode())
