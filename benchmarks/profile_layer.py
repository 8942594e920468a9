"""Where the time of one ``Attention`` layer training step goes, per variant: torch.profiler tables.

    python -m benchmarks.profile_layer --lengths 32 512 --output results/benchmarks/profiles

For each variant and length (``--tokens`` = batch × N fixed, width × heads ``--shape``): warm-up, then
``--steps`` forward + backward calls of the layer under ``torch.profiler``; writes the operator table
(``key_averages``, sorted by self CPU time) to ``<variant>-N<length>.txt`` in ``--output``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.layer import VARIANTS, call, layers, parse_shape


def profile_table(variant: str, length: int, *, dim: int, num_heads: int, tokens: int, steps: int, rows: int) -> str:
    """The profiler's operator table of ``steps`` training calls of the ``variant`` layer at ``length``."""
    layer = layers([variant], dim, num_heads, torch.device("cpu"), torch.float32, compiled=False)[variant]
    x = torch.randn(max(1, tokens // length), length, dim, generator=torch.Generator().manual_seed(length))
    run = call(layer, x, train=True)
    for _ in range(2):
        run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            run()
    head = (
        f"{variant} layer, forward + backward x {steps}, width {dim}, {num_heads} heads, N = {length}, "
        f"batch {x.shape[0]}, float32, {torch.get_num_threads()} threads, torch {torch.__version__}\n\n"
    )
    return head + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_layer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--attention", nargs="+", default=list(VARIANTS), metavar="VARIANT", help="variants")
    parser.add_argument("--lengths", nargs="+", type=int, default=[32, 512], help="sequence lengths")
    parser.add_argument("--shape", type=parse_shape, default=(128, 4), metavar="DIMxHEADS", help="default 128x4")
    parser.add_argument("--tokens", type=int, default=16384, help="batch × N (default 16384)")
    parser.add_argument("--steps", type=int, default=3, help="profiled calls (default 3)")
    parser.add_argument("--rows", type=int, default=30, help="operators listed (default 30)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--output", default="runs/benchmarks/profiles", help="folder for the tables")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for variant in args.attention:
        for length in args.lengths:
            table = profile_table(
                variant,
                length,
                dim=args.shape[0],
                num_heads=args.shape[1],
                tokens=args.tokens,
                steps=args.steps,
                rows=args.rows,
            )
            (out / f"{variant.replace('+', '_')}-N{length}.txt").write_text(table)
            print(table.splitlines()[0], flush=True)


if __name__ == "__main__":
    main()
