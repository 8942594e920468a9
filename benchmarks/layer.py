"""The ``Attention`` layer of every variant against the softmax layer, side by side, at every sequence length.

    python -m benchmarks.layer --shapes 128x4 96x6 --modes train inference --output results/benchmarks/layer

For each width × heads (``--shapes``), each length N with ``--tokens`` = batch × N fixed, and each mode:

* ``train``: forward + backward of the layer (gradient of the output's sum, the input requiring grad too);
* ``inference``: ``eval()`` forward under ``torch.no_grad()``;
* ``compiled-train`` / ``compiled-inference``: the same through ``torch.compile(layer, dynamic=True)`` on both
  sides (one compilation per variant and mode, reused at every length),

the layers (same weights, same input) run interleaved after warm-up, ``--repeats`` rounds of one call each, and
the median time of each variant is reported with its ratio to the softmax layer's. ``flops`` is the variant's
analytic forward FLOPs ratio (projections included), the floor a ratio can reach; ``backend`` the SDPA
implementation(s) its forward reached (flash, memory-efficient, cudnn, math; ``flash-cpu`` on a CPU), read from
the profiler. Writes ``layer.{json,csv,md}``.

    python -m benchmarks.layer --device cuda --dtype bfloat16 --output runs/benchmarks/cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import publish
from primaldual import tables
from primaldual.analysis.efficiency import _CPU_SDPA_FLOPS, interleaved_seconds
from primaldual.layers import Attention

VARIANTS = ("softmax", "bn", "sh", "bn+sh")
MODES = ("train", "inference", "compiled-train", "compiled-inference")
LENGTHS = (32, 64, 128, 256, 512, 1024, 2048, 4096)


def layers(
    variants: Sequence[str], dim: int, num_heads: int, device: torch.device, dtype: torch.dtype, compiled: bool
) -> dict[str, nn.Module]:
    """One ``Attention`` layer per variant, all with the weights of the first (seeded)."""
    torch.manual_seed(0)
    made = {
        name: Attention(dim, num_heads, qkv_bias=True, variant=name, device=device, dtype=dtype) for name in variants
    }
    first = next(iter(made.values()))
    for layer in made.values():
        layer.load_state_dict(first.state_dict())
    if compiled:
        # Every layer instance and grad mode is its own entry of one code object's cache (Attention.forward):
        # without a reset, the shapes and modes after the first would pass dynamo's recompile limit (8) and
        # silently run eager.
        torch._dynamo.reset()
        made = {name: torch.compile(layer, dynamic=True) for name, layer in made.items()}
    return made


def call(layer: nn.Module, x: torch.Tensor, train: bool) -> Callable[[], None]:
    """One forward (+ backward when ``train``) of ``layer`` on ``x``; gradients freed after each call."""
    if not train:
        layer.eval()

        def infer() -> None:
            with torch.no_grad():
                layer(x)

        return infer
    layer.train()
    x = x.detach().requires_grad_(True)
    parameters = list(layer.parameters())

    def step() -> None:
        layer(x).sum().backward()
        x.grad = None
        for p in parameters:
            p.grad = None

    return step


def flops(layer: nn.Module, x: torch.Tensor) -> int:
    """Forward FLOPs of ``layer`` on ``x`` (matmuls and SDPA, as counted by ``FlopCounterMode``)."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_CPU_SDPA_FLOPS) as counter:
        layer(x)
    return counter.get_total_flops()


# The ATen ops behind F.scaled_dot_product_attention, by the backend each one is.
SDPA_BACKENDS = {
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash-cpu",
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_efficient_attention": "memory-efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_attention_math": "math",
}


def sdpa_backends(layer: nn.Module, x: torch.Tensor) -> str:
    """The SDPA backends one forward of ``layer`` on ``x`` reached, e.g. ``"flash"``, ``"flash+math"``."""
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        layer(x)
    reached = {SDPA_BACKENDS[e.name] for e in prof.events() if e.name in SDPA_BACKENDS}
    return "+".join(sorted(reached)) or "none"


def interleaved(
    calls: dict[str, Callable[[], None]], device: torch.device, repeats: int, clock: str
) -> dict[str, float]:
    """Median seconds per call over ``repeats`` rounds calling each in turn: wall time (``interleaved_seconds``), or
    with ``clock="process"`` this process's CPU time, which time spent descheduled on a shared machine does not
    inflate (one thread: no waiting at a parallel region's barrier either)."""
    return interleaved_seconds(calls, device, repeats, time.perf_counter if clock == "wall" else time.process_time)


def benchmark(
    shapes: Sequence[tuple[int, int]] = ((128, 4), (96, 6)),
    lengths: Sequence[int] = LENGTHS,
    modes: Sequence[str] = ("train", "inference"),
    *,
    variants: Sequence[str] = VARIANTS,
    tokens: int = 16384,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    warmup: int = 2,
    repeats: int = 9,
    clock: str = "wall",
) -> list[dict[str, Any]]:
    """One row per (shape, mode, length, variant): median seconds and the ratio to the softmax layer."""
    dev = torch.device(device)
    variants = ["softmax", *(v for v in variants if v != "softmax")]
    rows = []
    for (dim, num_heads), mode in ((s, m) for s in shapes for m in modes):
        made = layers(variants, dim, num_heads, dev, dtype, compiled=mode.startswith("compiled"))
        for length in lengths:
            batch = max(1, tokens // length)
            x = torch.randn(batch, length, dim, generator=torch.Generator().manual_seed(length)).to(dev, dtype)
            calls = {name: call(layer, x, train=mode.endswith("train")) for name, layer in made.items()}
            for _ in range(warmup):
                for run in calls.values():
                    run()
            seconds = interleaved(calls, dev, repeats, clock)
            eager = {name: getattr(layer, "_orig_mod", layer) for name, layer in made.items()}
            counted = {name: flops(layer, x) for name, layer in eager.items()}
            backends = {name: sdpa_backends(layer, x) for name, layer in eager.items()}
            for name in calls:
                rows.append(
                    {
                        "dim": dim,
                        "num_heads": num_heads,
                        "mode": mode,
                        "length": length,
                        "batch_size": batch,
                        "attention": name,
                        "device": str(dev),
                        "dtype": str(dtype).removeprefix("torch."),
                        "threads": torch.get_num_threads(),
                        "clock": clock,
                        "seconds": seconds[name],
                        "time_ratio": seconds[name] / seconds["softmax"],
                        "flops_ratio": counted[name] / counted["softmax"],
                        "backend": backends[name],
                    }
                )
            print(
                f"dim {dim} heads {num_heads} {mode} N={length}: "
                + ", ".join(f"{n} {seconds[n] / seconds['softmax']:.2f}" for n in calls),
                flush=True,
            )
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Per shape and mode a row per length: each variant's time ratio to softmax (its FLOPs ratio for SH)."""
    names = list(dict.fromkeys(r["attention"] for r in rows if r["attention"] != "softmax"))
    keys = list(dict.fromkeys((r["dim"], r["num_heads"], r["mode"], r["length"]) for r in rows))
    cell = {(r["dim"], r["num_heads"], r["mode"], r["length"], r["attention"]): r for r in rows}
    pivot = []
    for key in keys:
        row = {
            "shape": f"{key[0]}×{key[1]}",
            "mode": key[2],
            "N": key[3],
            "softmax ms": f"{1e3 * cell[(*key, 'softmax')]['seconds']:.1f}",
        }
        row.update({name: f"{cell[(*key, name)]['time_ratio']:.2f}" for name in names if (*key, name) in cell})
        if (*key, "sh") in cell:
            row["sh flops"] = f"{cell[(*key, 'sh')]['flops_ratio']:.2f}"
        row["backends"] = ", ".join(
            dict.fromkeys(cell[(*key, n)]["backend"] for n in ["softmax", *names] if (*key, n) in cell)
        )
        pivot.append(row)
    columns = [
        ("dim×heads", "shape"),
        ("mode", "mode"),
        ("N", "N"),
        ("softmax ms", "softmax ms"),
        *((name, name) for name in names),
        ("sh FLOPs", "sh flops"),
        ("SDPA backends", "backends"),
    ]
    return tables.markdown(pivot, columns)


def parse_shape(text: str) -> tuple[int, int]:
    dim, _, heads = text.partition("x")
    return int(dim), int(heads)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.layer", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shapes",
        nargs="+",
        type=parse_shape,
        default=[(128, 4), (96, 6)],
        metavar="DIMxHEADS",
        help="layer widths and head counts (default 128x4 96x6)",
    )
    parser.add_argument("--lengths", nargs="+", type=int, default=list(LENGTHS), help="sequence lengths")
    parser.add_argument("--modes", nargs="+", default=["train", "inference"], choices=MODES, help="what is timed")
    parser.add_argument(
        "--attention",
        nargs="+",
        default=list(VARIANTS),
        metavar="VARIANT",
        help="variants beside softmax (default: bn sh bn+sh)",
    )
    parser.add_argument("--tokens", type=int, default=16384, help="batch × N, fixed (default 16384)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="dtype")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up calls of every layer (default 2)")
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds; the median is reported (default 9)")
    parser.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "process"],
        help="wall time, or this process's CPU time (robust on a shared CPU; default wall)",
    )
    parser.add_argument("--output", default="runs/benchmarks", help="folder for layer.{json,csv,md}")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = benchmark(
        args.shapes,
        args.lengths,
        args.modes,
        variants=args.attention,
        tokens=args.tokens,
        device=args.device,
        dtype=getattr(torch, args.dtype),
        warmup=args.warmup,
        repeats=args.repeats,
        clock=args.clock,
    )
    publish(rows, args.output, "layer", markdown(rows))
    return rows


if __name__ == "__main__":
    main()
