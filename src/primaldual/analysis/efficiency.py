"""Efficiency of every variant against softmax attention on the same shapes: FLOPs, peak memory, wall time.

Three scopes, each measured for every variant side by side with softmax in the same run:

* ``core``: the attention kernel alone, :func:`primaldual.functional.attention` on q, k, v ``(B, H, N, D)``
  (forward). SH's ``mean_h 1/r_h`` FLOPs saving (docs/theory.md) of SH is a statement about this scope.
* ``layer``: one :class:`primaldual.Attention` forward on x ``(B, N, dim)``: the core plus the qkv and output
  projections. BN pays them in full; SH pools the tokens before the key/value projection, so its saving
  reaches them (docs/performance.md).
* ``step``: one training step of a :class:`~primaldual.models.SequenceClassifier` (forward, cross-entropy,
  backward, AdamW step) on x ``(B, N, dim)`` (``dim`` input channels, 2 classes, no dropout).

How each quantity is measured:

* FLOPs: PyTorch's ``FlopCounterMode``. It counts matrix products and attention kernels only: elementwise work
  (BN statistics, pooling, softmax's exp) is not counted. It has formulas for the CUDA SDPA kernels but not
  for the CPU one, which is counted here with PyTorch's own SDPA formulas (``custom_mapping``). The
  sparse variant runs dense SDPA with a mask, so its counted FLOPs are those of softmax.
* peak memory: the most bytes allocated during one call above those allocated before it (inputs, weights,
  optimiser state excluded). CUDA: ``torch.cuda.max_memory_allocated``. CPU: PyTorch's CPU allocator reports
  every allocation and free to ``torch.profiler`` (``profile_memory=True``); the peak is the maximum of the
  running sum of those events (allocations on the calling thread, kernel scratch buffers included; blocks
  allocated before the call are not seen, even when freed during it, so every scope frees only what it made).
* wall time: after ``warmup`` calls of every variant, ``repeats`` rounds that call each variant once in turn
  (interleaved, so drifts of the machine hit all alike); the median per variant. CUDA is synchronised.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from ..functional import VARIANTS, AttentionOptions, attention, default_scales, get_variant
from ..functional.checks import check_scales
from ..layers import Attention
from ..models import SequenceClassifier
from ..tables import write_rows

SCOPES = ("core", "layer", "step")
MEASURES = ("flops", "memory", "time")

_aten = torch.ops.aten
_CPU_SDPA_FLOPS = {
    _aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(
        q, k, v
    ),
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: lambda g, q, k, v, *args, out_shape=None, **kwargs: (
        sdpa_backward_flop_count(g, q, k, v)
    ),
}


def efficiency(
    variants: Sequence[str] = tuple(VARIANTS),
    lengths: Sequence[int] = (256, 512, 1024, 2048, 4096),
    *,
    scopes: Sequence[str] = SCOPES,
    measure: Sequence[str] = MEASURES,
    batch_size: int = 1,
    dim: int = 64,
    num_heads: int = 8,
    depth: int = 2,
    scales: Sequence[int] | None = None,
    window: int = 16,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    warmup: int = 2,
    repeats: int = 5,
    seed: int = 0,
    output: str | Path | None = None,
) -> list[dict[str, Any]]:
    """FLOPs, peak memory and wall time of each variant per scope and sequence length, with ratios to softmax.

    ``variants``: names of :data:`~primaldual.functional.VARIANTS` (softmax is always measured too, as the
    baseline). ``scopes`` ⊆ ``("core", "layer", "step")``, ``measure`` ⊆ ``("flops", "memory", "time")`` (see the
    module doc). Shapes: batch ``batch_size``, length N in ``lengths``, width ``dim``, ``num_heads`` heads of
    ``dim / num_heads``, ``depth`` blocks (step). ``scales``: SH factors (default ``(1, 2, 4, 8)`` repeated),
    ``window``: sparse half-width. Every variant gets the same inputs and, per scope, the same initial weights.

    Returns one row per (scope, length, variant): ``scope, attention, length, batch_size, dim, num_heads,
    device, dtype, flops, flops_ratio, peak_bytes, memory_ratio, seconds, time_ratio, analytic_flops_ratio`` (ratios
    to softmax; a quantity not measured is None; ``analytic_flops_ratio`` = ``mean_h 1/r_h``, given for the
    softmax-kernel SH variants in the core scope). With ``output`` (a folder) also writes ``efficiency.csv``
    and ``efficiency.json`` there.
    """
    if isinstance(variants, str):
        raise TypeError(f"variants must be a sequence of variant names, got the string {variants!r}")
    names = list(dict.fromkeys(["softmax", *variants]))
    for name in names:
        get_variant(name)
    _check(
        lengths=lengths,
        scopes=scopes,
        measure=measure,
        sizes=dict(batch_size=batch_size, dim=dim, num_heads=num_heads, depth=depth, repeats=repeats),
        warmup=warmup,
    )
    if dim % num_heads:
        raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
    scales = check_scales(default_scales(num_heads) if scales is None else tuple(scales), num_heads)
    device = torch.device(device)
    shape = dict(batch_size=batch_size, dim=dim, num_heads=num_heads, depth=depth, device=device, dtype=dtype)
    rows = []
    for scope, length in itertools.product(scopes, lengths):
        calls = {
            name: _CASES[scope](name, length, variant_options(name, scales, window), seed=seed, **shape)
            for name in names
        }
        for _ in range(warmup):
            for call in calls.values():
                call()
        flops = {n: _flops(c) for n, c in calls.items()} if "flops" in measure else {}
        peaks = {n: peak_bytes(c, device) for n, c in calls.items()} if "memory" in measure else {}
        seconds = interleaved_seconds(calls, device, repeats) if "time" in measure else {}
        for name in names:
            spec = get_variant(name)
            analytic = None
            if scope == "core" and spec.pooled and spec.kernel == "softmax":
                analytic = statistics.fmean(1 / r for r in scales)
            rows.append(
                {
                    "scope": scope,
                    "attention": name,
                    "length": length,
                    "batch_size": batch_size,
                    "dim": dim,
                    "num_heads": num_heads,
                    "device": str(device),
                    "dtype": str(dtype).removeprefix("torch."),
                    "flops": flops.get(name),
                    "flops_ratio": _ratio(flops, name),
                    "peak_bytes": peaks.get(name),
                    "memory_ratio": _ratio(peaks, name),
                    "seconds": seconds.get(name),
                    "time_ratio": _ratio(seconds, name),
                    "analytic_flops_ratio": analytic,
                }
            )
    if output is not None:
        write_rows(rows, output, "efficiency")
    return rows


def model_cost(
    models: Mapping[str, nn.Module], inputs: Sequence[Tensor], *, warmup: int = 1, repeats: int = 5
) -> dict[str, dict[str, float]]:
    """Inference cost of each model of ``models`` (name -> model, all on the device of ``inputs``) on the batch
    ``inputs`` (the model's positional arguments, batch first): ``flops_per_sample``, FlopCounterMode's count
    of one forward of the first sample; ``samples_per_second``, the batch size over the median forward time of
    ``repeats`` interleaved rounds after ``warmup`` (eval mode, no gradients). Sets every model to eval mode."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    first = tuple(x[:1] for x in inputs)
    calls = {name: _inference(model.eval(), inputs) for name, model in models.items()}
    flops = {name: _flops(_inference(model, first)) for name, model in models.items()}
    for _ in range(warmup):
        for call in calls.values():
            call()
    seconds = interleaved_seconds(calls, inputs[0].device, repeats)
    return {
        name: {"flops_per_sample": flops[name], "samples_per_second": len(inputs[0]) / seconds[name]} for name in models
    }


def _inference(model: nn.Module, inputs: Sequence[Tensor]) -> Callable[[], Any]:
    def call() -> Any:
        with torch.no_grad():
            return model(*inputs)

    return call


def _check(
    lengths: Sequence[int], scopes: Sequence[str], measure: Sequence[str], sizes: dict[str, int], warmup: int
) -> None:
    if not lengths or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in lengths):
        raise ValueError(f"lengths must be a non-empty sequence of integers >= 1, got {lengths!r}")
    if not scopes or set(scopes) - set(SCOPES):
        raise ValueError(f"scopes must be a non-empty subset of {SCOPES}, got {scopes!r}")
    if not measure or set(measure) - set(MEASURES):
        raise ValueError(f"measure must be a non-empty subset of {MEASURES}, got {measure!r}")
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")


def variant_options(variant: str, scales: Sequence[int], window: int) -> AttentionOptions:
    """``variant`` with those of these settings it uses: ``scales`` for the SH variants, ``window`` for sparse."""
    spec = get_variant(variant)
    return AttentionOptions(
        variant, scales=tuple(scales) if spec.pooled else None, window=window if spec.windowed else None
    )


def _core(
    variant: str,
    length: int,
    options: AttentionOptions,
    *,
    seed: int,
    batch_size: int,
    dim: int,
    num_heads: int,
    device: torch.device,
    dtype: torch.dtype,
    **_: Any,
) -> Callable[[], Any]:
    torch.manual_seed(seed)
    q, k, v = torch.randn(3, batch_size, num_heads, length, dim // num_heads, device=device, dtype=dtype)
    return lambda: attention(q, k, v, options)


def _layer(
    variant: str,
    length: int,
    options: AttentionOptions,
    *,
    seed: int,
    batch_size: int,
    dim: int,
    num_heads: int,
    device: torch.device,
    dtype: torch.dtype,
    **_: Any,
) -> Callable[[], Any]:
    torch.manual_seed(seed)
    x = torch.randn(batch_size, length, dim, device=device, dtype=dtype)
    layer = Attention(dim, num_heads, qkv_bias=True, options=options, device=device, dtype=dtype).eval()

    def call() -> Any:
        with torch.no_grad():
            return layer(x)

    return call


def _step(
    variant: str,
    length: int,
    options: AttentionOptions,
    *,
    seed: int,
    batch_size: int,
    dim: int,
    num_heads: int,
    depth: int,
    device: torch.device,
    dtype: torch.dtype,
) -> Callable[[], Any]:
    torch.manual_seed(seed)
    x = torch.randn(batch_size, length, dim, device=device, dtype=dtype)
    y = torch.randint(0, 2, (batch_size,), device=device)
    model = SequenceClassifier(
        dim, 2, length, d_model=dim, depth=depth, num_heads=num_heads, dropout=0.0, attention=options
    ).to(device, dtype)
    optimizer = torch.optim.AdamW(model.parameters())

    def call() -> None:
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)  # here, not first: the gradients are allocated and freed in the call

    return call


_CASES = {"core": _core, "layer": _layer, "step": _step}


def _flops(call: Callable[[], Any]) -> int:
    with FlopCounterMode(display=False, custom_mapping=_CPU_SDPA_FLOPS) as counter:
        call()
    return counter.get_total_flops()


def peak_bytes(call: Callable[[], Any], device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        call()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if device.type != "cpu":
        raise ValueError(f"peak memory is measured on cpu and cuda devices, not {device}")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type().name == "CPU"
    )
    return max(itertools.accumulate((nbytes for _, nbytes in events), initial=0))


def interleaved_seconds(
    calls: dict[str, Callable[[], Any]],
    device: torch.device,
    repeats: int,
    clock: Callable[[], float] = time.perf_counter,
    *,
    warmup: int = 0,
) -> dict[str, float]:
    """Median time per call by ``clock`` (wall time by default) over ``repeats`` rounds, each calling every variant
    once, in an order rotated by one place each round, after ``warmup`` untimed rounds. In a fixed order each variant would follow the same one
    every round, and what a call leaves behind (freed memory that the next call's allocations fault in again,
    evicted caches) would bias the ratios by position."""
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            _synchronize(device)
            start = clock()
            calls[name]()
            _synchronize(device)
            times[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _ratio(values: dict[str, float], name: str) -> float | None:
    """``values[name] / values["softmax"]``; None when not measured, NaN when softmax's value is 0."""
    if name not in values:
        return None
    base = values["softmax"]
    return values[name] / base if base else math.nan
