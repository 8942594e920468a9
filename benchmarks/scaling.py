"""How the cost of each variant grows with sequence length: FLOPs, peak memory and time, one run.

    python -m benchmarks.scaling --lengths 512 1024 2048 4096 --output results/benchmarks/scaling

:func:`primaldual.analysis.efficiency` at every length, every variant side by side with softmax: ``layer``
(one Attention forward) and ``step`` (one training step of a SequenceClassifier) at the Long Range Arena
encoder's shape by default (width 128, 2 heads, 2 blocks, batch 1; SH factors 1 and 2). Writes
``scaling.{json,csv,md}`` into ``--output`` (per length: the ratios to softmax, then GFLOPs, peak MB and
milliseconds) and prints the tables.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from benchmarks import publish
from primaldual.analysis.efficiency import SCOPES, efficiency
from primaldual.analysis.report import cost_tables
from primaldual.functional import PAPER_VARIANTS


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", nargs="+", type=int, default=[512, 1024, 2048, 4096], help="sequence lengths")
    parser.add_argument(
        "--attention",
        nargs="+",
        default=list(PAPER_VARIANTS),
        metavar="VARIANT",
        help=f"variants (softmax is always measured; default: {' '.join(PAPER_VARIANTS)})",
    )
    parser.add_argument(
        "--scopes",
        nargs="+",
        default=["layer", "step"],
        choices=SCOPES,
        help="core: the kernel; layer: one Attention forward; step: a training step (default: layer step)",
    )
    parser.add_argument("--batch-size", type=int, default=1, help="batch size (default 1)")
    parser.add_argument("--dim", type=int, default=128, help="model width (default 128, LRA)")
    parser.add_argument("--num-heads", type=int, default=2, help="heads (default 2, LRA)")
    parser.add_argument("--depth", type=int, default=2, help="blocks of the step's model (default 2, LRA)")
    parser.add_argument("--scales", nargs="+", type=int, help="SH factor per head (default 1 2 4 8 repeated)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; the median is reported (default 5)")
    parser.add_argument("--output", default="runs/benchmarks", help="folder for scaling.{json,csv,md}")
    args = parser.parse_args(argv)
    rows = efficiency(
        args.attention,
        args.lengths,
        scopes=args.scopes,
        batch_size=args.batch_size,
        dim=args.dim,
        num_heads=args.num_heads,
        depth=args.depth,
        scales=args.scales,
        repeats=args.repeats,
    )
    shape = (
        f"Batch {args.batch_size}, width {args.dim}, {args.num_heads} heads, depth {args.depth} (step), "
        f"{rows[0]['device']}, {rows[0]['dtype']}; ratios to softmax at the same length.\n\n"
    )
    publish(rows, args.output, "scaling", shape + cost_tables(rows, absolute=True))
    return rows


if __name__ == "__main__":
    main()
