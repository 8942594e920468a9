"""Train a small Llama-config decoder with each attention variant on real text, then generate from it.

    python examples/decoder.py             # ~ 10 minutes on 2 busy CPU cores (9 variants)
    python examples/decoder.py --quick     # under a minute: a smoke run

The text is this project's own documentation (``docs/*.md``, shipped with it), read as bytes: the first 90 % trains,
the last 10 % is held out. Each variant is a ``LlamaForCausalLM`` built from a small config with
``attn_implementation="primaldual-<variant>"`` (every variant's causal form, SPEC section 5), trained with AdamW on
random windows, scored by its held-out loss per byte, and sampled greedily from a prompt with
``PrimalDualCache`` (each variant's own decoding state), checked against transformers' ``DynamicCache``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from primaldual.functional import VARIANTS
from primaldual.integrations.transformers import PrimalDualCache, register

ROOT = Path(__file__).resolve().parents[1]


def corpus() -> tuple[torch.Tensor, torch.Tensor]:
    """The documentation as bytes, split 90 / 10 into training and held-out text."""
    data = b"\n".join(p.read_bytes() for p in sorted((ROOT / "docs").glob("*.md")))
    tokens = torch.tensor(list(data), dtype=torch.long)
    cut = int(0.9 * len(tokens))
    return tokens[:cut], tokens[cut:]


def windows(text: torch.Tensor, batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(text) - length - 1, (batch,), generator=generator)
    return torch.stack([text[s : s + length + 1] for s in starts.tolist()])


def model_for(variant: str, dim: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=256, hidden_size=dim, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        intermediate_size=2 * dim, max_position_embeddings=1024, pad_token_id=0,
    )  # fmt: skip
    model = LlamaForCausalLM._from_config(config, attn_implementation=f"primaldual-{variant}")
    model.generation_config.eos_token_id = None
    return model


def held_out_loss(model: LlamaForCausalLM, text: torch.Tensor, length: int, batches: int) -> float:
    generator = torch.Generator().manual_seed(1)
    model.eval()
    with torch.no_grad():
        losses = [
            model(chunk, labels=chunk).loss.item()
            for chunk in (windows(text, 8, length, generator) for _ in range(batches))
        ]
    return sum(losses) / batches


def train(variant: str, steps: int, length: int, dim: int, seed: int) -> tuple[float, str]:
    """Train ``variant`` for ``steps`` AdamW steps; its held-out loss (nats per byte) and a greedy sample."""
    torch.manual_seed(seed)
    train_text, test_text = corpus()
    model = model_for(variant, dim)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        chunk = windows(train_text, 16, length, generator)
        loss = model(chunk, labels=chunk).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    score = held_out_loss(model, test_text, length, 4 if steps < 100 else 16)
    prompt = torch.tensor([list(b"Attention-SH ")])
    settings = dict(max_new_tokens=24, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        sample = model.generate(prompt, cache=PrimalDualCache(model), **settings)
        assert torch.equal(sample, model.generate(prompt, **settings)), variant  # the DynamicCache's tokens
    return score, bytes(sample[0].tolist()).decode("utf-8", errors="replace")


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few steps, short windows")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    register(window=32)
    steps, length, dim = (5, 32, 32) if args.quick else (300, 128, 64)
    results = {}
    for variant in args.variants:
        loss, sample = train(variant, steps, length, dim, args.seed)
        results[variant] = loss
        print(f"{variant:>13}: held-out {loss / math.log(2):.3f} bits/byte  sample: {sample!r}", flush=True)
    return results


if __name__ == "__main__":
    main()
