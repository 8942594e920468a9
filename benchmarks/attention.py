"""Every attention variant, and the plain formulas, against ``scaled_dot_product_attention`` on the same shapes.

    python -m benchmarks.attention --lengths 1024 2048 4096 --output results/benchmarks/cpu

For each sequence length, with and without a padding mask (the last quarter of every other sample's keys),
and for the forward pass and forward + backward: after warm-up, ``--repeats`` rounds call every candidate once
in turn (interleaved, so drifts of the machine hit all alike); the median time and the peak memory of each
are reported with their ratio to ``sdpa``. Candidates:

* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` with the padding as a boolean mask, the limit;
* every variant of :data:`primaldual.functional.VARIANTS` through :func:`primaldual.functional.attention`;
* ``plain-softmax`` / ``plain-bn``: the formulas with materialised N×N scores (:mod:`functional.reference`;
  BN's inputs normalised on both sides), the baseline the fast paths must beat; only up to ``--plain-max``.

Writes ``attention.json``, ``attention.csv`` and ``attention.md`` into ``--output`` and prints the table.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks import publish
from primaldual import tables
from primaldual.analysis.efficiency import interleaved_seconds, peak_bytes, variant_options
from primaldual.functional import VARIANTS, attention, bn_normalize, default_scales, reference


def candidates(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    *,
    scales: Sequence[int],
    window: int,
    plain: bool,
    names: Sequence[str] | None = None,
) -> dict[str, Callable[[], Tensor]]:
    """Name -> a call computing that attention of q, k, v ``(B, H, N, D)`` with key padding ``mask``; only
    ``sdpa`` and ``names`` (all candidates when None)."""
    sdpa_mask = None if mask is None else ~mask[:, None, None, :]
    calls: dict[str, Callable[[], Tensor]] = {
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask),
    }
    for name in VARIANTS:
        options = variant_options(name, scales, window)
        calls[name] = lambda options=options: attention(q, k, v, options, key_padding_mask=mask)
    if plain:
        calls["plain-softmax"] = lambda: reference.softmax_attention(q, k, v, mask)
        calls["plain-bn"] = lambda: reference.softmax_attention(*bn_normalize(q, k, mask), v, mask)
    if names is not None:
        unknown = set(names) - set(calls) - {"plain-softmax", "plain-bn"}
        if unknown:
            raise ValueError(f"unknown attention {sorted(unknown)}; expected among {', '.join(calls)}")
        calls = {name: call for name, call in calls.items() if name == "sdpa" or name in names}
    return calls


def with_backward(call: Callable[[], Tensor], leaves: Sequence[Tensor]) -> Callable[[], None]:
    """Forward and backward of ``call`` (gradient of the output's sum), gradients freed after each call."""

    def run() -> None:
        call().sum().backward()
        for leaf in leaves:
            leaf.grad = None

    return run


def benchmark(
    lengths: Sequence[int] = (1024, 2048, 4096),
    *,
    batch_size: int = 8,
    num_heads: int = 4,
    head_dim: int = 32,
    scales: Sequence[int] | None = None,
    window: int = 64,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    warmup: int = 1,
    repeats: int = 5,
    plain_max: int = 4096,
    memory: bool = True,
    names: Sequence[str] | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per (length, masked, pass, candidate): median seconds and peak bytes with ratios to ``sdpa``;
    candidates are ``sdpa`` and ``names`` (all when None)."""
    scales = tuple(default_scales(num_heads) if scales is None else scales)
    dev = torch.device(device)
    rows = []
    for length, masked in itertools.product(lengths, (False, True)):
        generator = torch.Generator().manual_seed(seed)
        q, k, v = (
            torch.randn(batch_size, num_heads, length, head_dim, generator=generator).to(dev, dtype) for _ in range(3)
        )
        mask = None
        if masked:
            mask = torch.zeros(batch_size, length, dtype=torch.bool, device=dev)
            mask[::2, length - length // 4 :] = True
        for backward in (False, True):
            q, k, v = (t.detach().requires_grad_(backward) for t in (q, k, v))
            calls = candidates(q, k, v, mask, scales=scales, window=window, plain=length <= plain_max, names=names)
            if backward:
                calls = {name: with_backward(call, (q, k, v)) for name, call in calls.items()}
            else:
                calls = {name: _no_grad(call) for name, call in calls.items()}
            seconds = interleaved_seconds(calls, dev, repeats, warmup=warmup)
            peaks = {name: peak_bytes(call, dev) for name, call in calls.items()} if memory else {}
            for name in calls:
                rows.append(
                    {
                        "length": length,
                        "masked": masked,
                        "pass": "forward+backward" if backward else "forward",
                        "attention": name,
                        "batch_size": batch_size,
                        "num_heads": num_heads,
                        "head_dim": head_dim,
                        "device": str(dev),
                        "dtype": str(dtype).removeprefix("torch."),
                        "seconds": seconds[name],
                        "time_ratio": seconds[name] / seconds["sdpa"],
                        "peak_bytes": peaks.get(name),
                        "memory_ratio": peaks[name] / peaks["sdpa"] if memory and peaks["sdpa"] else None,
                    }
                )
    return rows


def _no_grad(call: Callable[[], Tensor]) -> Callable[[], Tensor]:
    def run() -> Tensor:
        with torch.no_grad():
            return call()

    return run


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Time ratio to sdpa (and median ms) per candidate, one column per (length, mask, pass)."""
    keys = list(dict.fromkeys((r["length"], r["masked"], r["pass"]) for r in rows))
    cell = {(r["attention"], r["length"], r["masked"], r["pass"]): r for r in rows}
    names = list(dict.fromkeys(r["attention"] for r in rows))

    def timing(name: str, key: tuple) -> str:
        r = cell.get((name, *key))
        return "" if r is None else f"{r['time_ratio']:.2f}× ({1e3 * r['seconds']:.0f} ms)"

    pivot = [{"attention": name, **{key: timing(name, key) for key in keys}} for name in names]
    columns = [
        (f"N={n}{' masked' if m else ''} {'fwd+bwd' if p != 'forward' else 'fwd'}", (n, m, p)) for n, m, p in keys
    ]
    return tables.markdown(pivot, [("attention", "attention"), *columns])


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.attention", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", nargs="+", type=int, default=[1024, 2048, 4096], help="sequence lengths")
    parser.add_argument("--batch-size", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--num-heads", type=int, default=4, help="heads (default 4)")
    parser.add_argument("--head-dim", type=int, default=32, help="head dimension (default 32)")
    parser.add_argument("--scales", nargs="+", type=int, help="SH factor per head (default 1 2 4 8 repeated)")
    parser.add_argument("--window", type=int, default=64, help="sparse half-width (default 64)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="dtype")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up calls of every candidate (default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; the median is reported (default 5)")
    parser.add_argument(
        "--plain-max", type=int, default=4096, help="longest length at which the plain N×N formulas run (default 4096)"
    )
    parser.add_argument(
        "--attention",
        nargs="+",
        metavar="NAME",
        help="candidates besides sdpa: variants and/or plain-softmax, plain-bn (default: all)",
    )
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip peak-memory measurement")
    parser.add_argument("--output", default="runs/benchmarks", help="folder for attention.{json,csv,md}")
    args = parser.parse_args(argv)
    rows = benchmark(
        args.lengths,
        batch_size=args.batch_size,
        num_heads=args.num_heads,
        head_dim=args.head_dim,
        scales=args.scales,
        window=args.window,
        device=args.device,
        dtype=getattr(torch, args.dtype),
        warmup=args.warmup,
        repeats=args.repeats,
        plain_max=args.plain_max,
        memory=args.memory,
        names=args.attention,
    )
    publish(rows, args.output, "attention", markdown(rows))
    return rows


if __name__ == "__main__":
    main()
