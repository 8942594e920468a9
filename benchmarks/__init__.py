"""Benchmarks: timing and memory of the attention variants, as ratios to PyTorch's fused softmax kernel."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from primaldual.tables import write_rows


def publish(rows: Sequence[dict[str, Any]], output: str | Path, stem: str, table: str) -> None:
    """Write ``rows`` as ``output/stem.{json,csv}`` and ``table`` as ``output/stem.md``; print the table."""
    write_rows(rows, output, stem, table)
    print(table)
