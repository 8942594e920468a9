"""One training step of the time-series classifier and of a ViT, per attention variant, against softmax.

    python -m benchmarks.training_step --output results/benchmarks/cpu

Time series: :class:`primaldual.models.SequenceClassifier` at its default size (d_model 64, 2 blocks, 8 heads)
on ``--batch-size`` series of ``--length`` steps. Images: the ``vit_28`` preset (Fashion-MNIST shape, 50
tokens) on ``--batch-size`` images. A step is forward, cross-entropy, backward and an AdamW update; steps of
all variants are interleaved after warm-up and the median is reported as samples per second with its ratio
to softmax. ``--compile``: every model through ``torch.compile`` (default backend, static shapes; compiled during
the warm-up, which must then be at least 1). Writes ``training_step.{json,csv,md}`` into ``--output``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import publish
from primaldual import tables
from primaldual.analysis.efficiency import interleaved_seconds
from primaldual.functional import PAPER_VARIANTS
from primaldual.models import SequenceClassifier
from primaldual.models.vit import vision_transformer


def step(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], labels: torch.Tensor, compiled: bool = False
) -> Callable[[], None]:
    """A closure running one AdamW training step of ``model`` (through ``torch.compile`` if ``compiled``) on
    ``inputs``."""
    optimizer = torch.optim.AdamW(model.parameters())
    forward = torch.compile(model) if compiled else model

    def run() -> None:
        F.cross_entropy(forward(*inputs), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return run


def models(task: str, variant: str, batch_size: int, length: int) -> tuple[nn.Module, tuple, torch.Tensor]:
    """The model of ``task`` with ``variant`` attention, a batch of inputs and labels (seeded)."""
    torch.manual_seed(0)
    if task == "timeseries":
        x = torch.randn(batch_size, length, 12)
        mask = torch.zeros(batch_size, length, dtype=torch.bool)
        mask[::2, length - length // 4 :] = True  # unequal lengths, as in JapaneseVowels
        model = SequenceClassifier(12, 9, length, attention=variant, dropout=0.0)
        return model, (x, mask), torch.randint(0, 9, (batch_size,))
    model = vision_transformer("vit_28", variant, num_classes=10)
    return model, (torch.randn(batch_size, 1, 28, 28),), torch.randint(0, 10, (batch_size,))


def benchmark(
    tasks: Sequence[str] = ("timeseries", "image"),
    *,
    batch_size: int = 32,
    length: int = 512,
    warmup: int = 2,
    repeats: int = 7,
    compiled: bool = False,
) -> list[dict[str, Any]]:
    """One row per (task, variant): median seconds per step, samples per second and the ratio to softmax."""
    if compiled and warmup < 1:
        raise ValueError(f"warmup must be at least 1 with compile (the first step compiles), got {warmup}")
    rows = []
    for task in tasks:
        torch._dynamo.reset()  # a fresh recompile budget (8 entries per code object) for each task's models
        calls = {v: step(*models(task, v, batch_size, length), compiled=compiled) for v in PAPER_VARIANTS}
        seconds = interleaved_seconds(calls, torch.device("cpu"), repeats, warmup=warmup)
        for variant in PAPER_VARIANTS:
            rows.append(
                {
                    "task": task,
                    "attention": variant,
                    "compiled": compiled,
                    "batch_size": batch_size,
                    "length": length if task == "timeseries" else 50,
                    "seconds_per_step": seconds[variant],
                    "samples_per_second": batch_size / seconds[variant],
                    "time_ratio": seconds[variant] / seconds["softmax"],
                }
            )
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    return tables.markdown(
        rows,
        [
            ("task", "task"),
            ("attention", "attention"),
            ("compiled", lambda r: "yes" if r["compiled"] else "no"),
            ("tokens", "length"),
            ("ms / step", lambda r: f"{1e3 * r['seconds_per_step']:.1f}"),
            ("samples / s", lambda r: f"{r['samples_per_second']:.1f}"),
            ("time / softmax", "time_ratio"),
        ],
    )


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training_step", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=["timeseries", "image"],
        choices=["timeseries", "image"],
        help="models to time (default: both)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="samples per step (default 32)")
    parser.add_argument("--length", type=int, default=512, help="time steps of the series (default 512)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up steps per variant (default 2)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds, median reported (default 7)")
    parser.add_argument("--compile", action="store_true", help="time torch.compile'd models (warm-up >= 1)")
    parser.add_argument("--output", default="runs/benchmarks", help="folder for training_step.{json,csv,md}")
    args = parser.parse_args(argv)
    rows = benchmark(
        args.tasks,
        batch_size=args.batch_size,
        length=args.length,
        warmup=args.warmup,
        repeats=args.repeats,
        compiled=args.compile,
    )
    publish(rows, args.output, "training_step", markdown(rows))
    return rows


if __name__ == "__main__":
    main()
