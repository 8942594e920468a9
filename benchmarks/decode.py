"""Decoders: the causal forms' training step and generation, every variant against causal SDPA softmax.

    python -m benchmarks.decode --output results/benchmarks/decode

Two tables, each measured side by side in one run (interleaved, order rotated each round, medians):

* ``causal``: forward and backward of one causal attention call (batch 1, 8 heads, head dim 64, SH factors
  (1, 2, 4, 8) repeated) of every variant, as a ratio to ``F.scaled_dot_product_attention(is_causal=True)``, at
  N = 64 … 4096. linear-bn and linear-bn+sh have no known linear-time causal form (docs/theory.md): they are
  evaluated exactly, O(N²·D), and run up to ``--exact-max`` only (the table says where they stop).
* ``generate``: greedy generation from an 8-token prompt with a 2-layer Llama-config decoder (d_model 256, 8 heads,
  no grouped-query keys) of ``--tokens`` new tokens, each variant with its own state
  (:class:`~primaldual.integrations.transformers.PrimalDualCache`) against transformers' ``sdpa`` with
  ``DynamicCache``: tokens per second, cache bytes per generated token, and both as ratios to sdpa's.

Writes ``causal.{json,csv,md}`` and ``generate.{json,csv,md}``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks import publish
from primaldual import functional, tables
from primaldual.analysis.efficiency import interleaved_seconds

HEADS, HEAD_DIM, SCALES = 8, 64, (1, 2, 4, 8, 1, 2, 4, 8)
EXACT = ("linear-bn", "linear-bn+sh")


def options(variant: str) -> functional.AttentionOptions:
    spec = functional.VARIANTS[variant]
    return functional.AttentionOptions(
        variant, causal=True, scales=SCALES if spec.pooled else None, window=64 if spec.windowed else None
    )


def causal_step(variant: str, length: int) -> Any:
    """One forward and backward of a causal call of ``variant`` (``sdpa``: PyTorch's fused causal softmax)."""
    generator = torch.Generator().manual_seed(length)
    q, k, v = (torch.randn(1, HEADS, length, HEAD_DIM, generator=generator).requires_grad_() for _ in range(3))
    opts = None if variant == "sdpa" else options(variant)

    def run() -> None:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True) if opts is None else functional.attention(
            q, k, v, opts
        )  # fmt: skip
        out.sum().backward()

    return run


def causal_table(variants: Sequence[str], lengths: Sequence[int], repeats: int, exact_max: int) -> list[dict]:
    rows = []
    for length in lengths:
        names = ["sdpa"] + [v for v in variants if v not in EXACT or length <= exact_max]
        seconds = interleaved_seconds(
            {n: causal_step(n, length) for n in names}, torch.device("cpu"), repeats, warmup=1
        )
        rows += [
            {"variant": n, "length": length, "seconds": seconds[n], "ratio": seconds[n] / seconds["sdpa"]}
            for n in names
        ]
        print(f"causal N={length}: done", flush=True)
    return rows


def decoder(variant: str) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    from primaldual.integrations.transformers import register

    register(scales=SCALES, window=64)
    config = LlamaConfig(
        vocab_size=1000, hidden_size=256, num_hidden_layers=2, num_attention_heads=HEADS, num_key_value_heads=HEADS,
        intermediate_size=512, max_position_embeddings=8192, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    impl = "sdpa" if variant == "sdpa" else f"primaldual-{variant}"
    model = LlamaForCausalLM._from_config(config, attn_implementation=impl).eval()
    model.generation_config.eos_token_id = None
    return model


def generate_row(variant: str, tokens: int) -> dict[str, Any]:
    """Seconds and final cache bytes of one greedy generation of ``tokens`` tokens."""
    from transformers import DynamicCache

    from primaldual.integrations.transformers import PrimalDualCache

    model = decoder(variant)
    ids = torch.randint(1, 1000, (1, 8), generator=torch.Generator().manual_seed(0))
    cache = DynamicCache(config=model.config) if variant == "sdpa" else PrimalDualCache(model)
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(ids, cache=cache, max_new_tokens=tokens, do_sample=False, pad_token_id=0)
    seconds = time.perf_counter() - start
    if variant == "sdpa":
        nbytes = sum(2 * layer.keys.numel() * layer.keys.element_size() for layer in cache.layers)
    else:
        nbytes = cache.nbytes()
    return {"variant": variant, "tokens": tokens, "seconds": seconds, "bytes": nbytes}


def generate_table(variants: Sequence[str], token_counts: Sequence[int]) -> list[dict]:
    rows = []
    for tokens in token_counts:
        measured = [generate_row(v, tokens) for v in ["sdpa", *variants]]
        base = measured[0]
        for row in measured:
            row["tokens_per_second"] = tokens / row["seconds"]
            row["bytes_per_token"] = row["bytes"] / (tokens + 8)
            row["speed_ratio"] = row["tokens_per_second"] / base["tokens_per_second"]
            row["bytes_ratio"] = row["bytes"] / base["bytes"]
        rows += measured
        print(f"generate {tokens} tokens: done", flush=True)
    return rows


def causal_markdown(rows: Sequence[dict]) -> str:
    lengths = sorted({r["length"] for r in rows})
    lines: dict[str, dict] = {}
    for r in rows:
        lines.setdefault(r["variant"], {"variant": r["variant"]})[r["length"]] = r["ratio"]
    columns = [("variant", "variant")] + [
        (f"N={n}", lambda r, n=n: f"{r[n]:.2f}×" if n in r else "not run (O(N²·D))") for n in lengths
    ]
    return "Causal forward + backward, time / causal SDPA softmax\n\n" + tables.markdown(list(lines.values()), columns)


def generate_markdown(rows: Sequence[dict]) -> str:
    columns = [("variant", "variant"), ("tokens", "tokens"), ("tokens/s", lambda r: f"{r['tokens_per_second']:.0f}")]
    columns += [
        ("speed / sdpa", lambda r: f"{r['speed_ratio']:.2f}×"),
        ("cache bytes/token", lambda r: f"{r['bytes_per_token']:.0f}"),
    ]
    columns += [("cache / DynamicCache", lambda r: f"{r['bytes_ratio']:.3f}×")]
    return "Greedy generation, PrimalDualCache against sdpa + DynamicCache\n\n" + tables.markdown(list(rows), columns)


def main(argv: Sequence[str] | None = None) -> tuple[list[dict], list[dict]]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.decode", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(functional.VARIANTS), choices=list(functional.VARIANTS))
    parser.add_argument("--lengths", nargs="+", type=int, default=[64, 256, 1024, 4096])
    parser.add_argument("--tokens", nargs="+", type=int, default=[256, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds of the causal table, median reported")
    parser.add_argument("--exact-max", type=int, default=1024, help="longest N for linear-bn(+sh), O(N²·D)")
    parser.add_argument("--output", default="runs/benchmarks/decode", help="folder for causal.* and generate.*")
    args = parser.parse_args(argv)
    causal = causal_table(args.variants, args.lengths, args.repeats, args.exact_max)
    publish(causal, args.output, "causal", causal_markdown(causal))
    generated = generate_table(args.variants, args.tokens)
    publish(generated, args.output, "generate", generate_markdown(generated))
    return causal, generated


if __name__ == "__main__":
    main()
