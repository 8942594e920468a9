"""Whole padded models with a variant against the same model with the host's own attention: the cost beyond the math.

    python -m benchmarks.whole_model --output results/benchmarks/whole-model

Hosts: a Hugging Face BERT encoder and a Llama decoder (grouped-query attention) built from small configs (4
layers, d_model 256, 4 heads, Llama 2 key/value heads), and a 4-layer ``nn.TransformerEncoder`` of the same size
converted by :func:`primaldual.convert`; every batch right-pads one sample by a quarter and left-pads another
(BERT, Llama) or pads one (``nn``). Each host runs with its own attention (``sdpa``: transformers' SDPA, or plain
PyTorch) and with ``primaldual-softmax`` (the same math) and ``primaldual-bn``. Modes: inference (a forward
without autograd) and a training step (forward and backward of the output's mean square), eager and compiled
(``torch.compile``, default backend, dynamic shapes: one compilation per model and mode, during the warm-up, serves
every length). The implementations of one (host, mode, compiled, length) are timed interleaved, their order
rotated each round, and the median is reported with its ratio to the host's own attention. Writes
``whole_model.{json,csv,md}``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from benchmarks import publish
from primaldual import tables
from primaldual.analysis.efficiency import interleaved_seconds

IMPLEMENTATIONS = ("sdpa", "softmax", "bn")
HOSTS = ("bert", "llama", "nn-encoder")
DIM, HEADS, LAYERS, VOCAB = 256, 4, 4, 1000


def model(host: str, impl: str) -> nn.Module:
    """``host`` with attention ``impl`` (``sdpa``: the host's own), seeded, float32."""
    torch.manual_seed(0)
    if host == "nn-encoder":
        layer = nn.TransformerEncoderLayer(DIM, HEADS, 4 * DIM, dropout=0.0, batch_first=True)
        encoder = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
        if impl == "sdpa":
            return encoder
        import primaldual

        return primaldual.convert(encoder, impl)
    from transformers import AutoModel, BertConfig, LlamaConfig, LlamaModel

    from primaldual.integrations.transformers import register

    register()
    name = "sdpa" if impl == "sdpa" else f"primaldual-{impl}"
    sizes = dict(hidden_size=DIM, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=4 * DIM)
    if host == "bert":
        config = BertConfig(vocab_size=VOCAB, max_position_embeddings=4096, **sizes)
        return AutoModel.from_config(config, attn_implementation=name, add_pooling_layer=False)
    config = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=4096, num_key_value_heads=2, **sizes)
    return LlamaModel._from_config(config, attn_implementation=name)


def inputs(host: str, batch: int, length: int) -> dict[str, torch.Tensor]:
    """A padded batch for ``host``: token ids and a 0/1 ``attention_mask`` (HF), or vectors and a bool
    ``src_key_padding_mask`` (``nn``)."""
    generator = torch.Generator().manual_seed(length)
    keep = torch.ones(batch, length, dtype=torch.bool)
    keep[0, length - length // 4 :] = False
    if host == "nn-encoder":
        return {"src": torch.randn(batch, length, DIM, generator=generator), "src_key_padding_mask": ~keep}
    keep[-1, : length // 4] = False
    return {"input_ids": torch.randint(0, VOCAB, (batch, length), generator=generator), "attention_mask": keep.long()}


def output(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.last_hidden_state


def call(forward: Callable[..., Any], feed: dict[str, torch.Tensor], train: bool) -> Callable[[], None]:
    """One inference forward or one training step's forward and backward."""

    def run() -> None:
        if train:
            output(forward(**feed)).square().mean().backward()
        else:
            with torch.no_grad():
                forward(**feed)

    return run


def benchmark(
    hosts: Sequence[str], lengths: Sequence[int], *, batch_size: int, warmup: int, repeats: int, compiled: bool
) -> list[dict[str, Any]]:
    """One row per (host, mode, length, implementation): median seconds and the ratio to the host's own."""
    rows = []
    for host in hosts:
        for train in (False, True):
            torch._dynamo.reset()
            models = {impl: model(host, impl).train(train) for impl in IMPLEMENTATIONS}
            forwards = {
                impl: torch.compile(m, dynamic=True) if compiled else m for impl, m in models.items()
            }  # fmt: skip
            for length in lengths:
                feed = inputs(host, batch_size, length)
                calls = {impl: call(forwards[impl], feed, train) for impl in IMPLEMENTATIONS}
                seconds = interleaved_seconds(calls, torch.device("cpu"), repeats, warmup=warmup)
                mode = "train" if train else "inference"
                common = dict(host=host, mode=mode, compiled=compiled, batch_size=batch_size, length=length)
                rows += [
                    {**common, "attention": impl, "seconds": seconds[impl], "ratio": seconds[impl] / seconds["sdpa"]}
                    for impl in IMPLEMENTATIONS
                ]
                for m in models.values():
                    m.zero_grad(set_to_none=True)
            print(f"{host} {'train' if train else 'inference'} compiled={compiled}: done", flush=True)
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """One line per (host, mode, compiled, attention), the ratio to the host's own attention per length."""
    lengths = sorted({r["length"] for r in rows})
    lines = {}
    for r in rows:
        if r["attention"] == "sdpa":
            continue
        key = (r["host"], r["mode"], r["compiled"], r["attention"])
        lines.setdefault(
            key, {"host": r["host"], "mode": r["mode"], "compiled": r["compiled"], "attention": r["attention"]}
        )
        lines[key][r["length"]] = r["ratio"]
    columns = [("host", "host"), ("mode", "mode"), ("compiled", lambda r: "yes" if r["compiled"] else "no")]
    columns += [("attention", "attention")] + [(f"N={n}", lambda r, n=n: f"{r[n]:.3f}×") for n in lengths]
    return tables.markdown(list(lines.values()), columns)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.whole_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", nargs="+", default=list(HOSTS), choices=HOSTS)
    parser.add_argument("--lengths", nargs="+", type=int, default=[32, 64, 128, 256, 512, 1024, 2048])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds per length (the first compiles)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds, median reported")
    parser.add_argument("--compile", choices=["no", "yes", "both"], default="both")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--output", default="runs/benchmarks/whole-model", help="folder for whole_model.{json,csv,md}")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for compiled in {"no": [False], "yes": [True], "both": [False, True]}[args.compile]:
        rows += benchmark(
            args.hosts, args.lengths, batch_size=args.batch_size, warmup=args.warmup, repeats=args.repeats,
            compiled=compiled,
        )  # fmt: skip
    publish(rows, args.output, "whole_model", markdown(rows))
    return rows


if __name__ == "__main__":
    main()
