"""The language-model benchmark: variants x seeds on MQAR and on the text corpus, then the cost of generating.

Jobs (:mod:`.jobs`: resumable, shared by processes, workers), each writing ``OUTPUT/records/<job>/record.json``:

================================  ===================================================================================
job                               what it does
================================  ===================================================================================
``<dataset>/<variant>/seed-s``    trains the causal LM of :data:`SETTINGS` (``--task lm``) with seed s in
                                  ``run/`` beside the record (a killed job resumes from its last checkpoint); records
                                  the run's metrics and validation curve, the test bits per token (text: bits per
                                  byte), MQAR's accuracy per cell ``(pairs, length)`` from the saved
                                  ``model.safetensors``, seconds per training step and head redundancy
``generation/tokens-n``           greedy generation of n tokens (a 16-byte prompt of the test split), every variant
                                  with :class:`~primaldual.integrations.transformers.PrimalDualCache` and
                                  transformers' SDPA with ``DynamicCache`` beside, one after the other in one
                                  process: tokens per second, cache bytes per token
================================  ===================================================================================

The generation jobs run after every training job, one at a time, so their timings are not shared with training.
They use the text model's architecture with the initial weights of seed 0: speed and cache size depend on the
shapes, not on the weights' values.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ..data.language import LanguageSplit
from .config import TrainConfig
from .jobs import run_jobs

#: The model and optimisation of every run: the same size, steps and schedule for every variant. Chosen on
#: validation data only, with softmax (results/lm/README.md, "Selection"; the runs in results/lm-selection/): the
#: width and each dataset's learning rate (1e-3 or 3e-3) with the lower validation loss.
SETTINGS: dict[str, Any] = {
    "task": "lm",
    "d_model": 128,
    "depth": 2,
    "num_heads": 4,
    "mlp_ratio": 4.0,
    "dropout": 0.0,
    "weight_decay": 0.1,
    "warmup_epochs": 0.5,
    "grad_clip": 1.0,
    "threads": 1,
    "accelerator": "cpu",
    "scales": [1, 2, 4, 8],
}
#: What differs between the two datasets: the data and the length of the run.
DATASETS: dict[str, dict[str, Any]] = {
    "mqar": {
        "dataset": "mqar",
        "mqar_pairs": [4, 8, 16, 32, 64],
        "mqar_lengths": [64, 128, 256],
        "num_train": 24000,  # 3840, 1920 and 960 per cell of 64, 128 and 256 tokens
        "max_train_samples": 6000,  # a new draw from them each epoch: a sequence is seen about once
        "num_val": 16,
        "num_test": 64,
        "bucket_by_length": True,
        "batch_size": 32,
        "epochs": 5,
        "lr": 1e-3,
    },
    "text": {
        "dataset": "text",
        "context": 256,
        "max_train_samples": 2240,
        "num_val": 256,
        "batch_size": 16,
        "epochs": 4,
        "lr": 3e-3,
    },
}
#: The variants of the benchmark. linear-bn is left out: its causal form has no linear-time evaluation and costs
#: O(N² D Dv) per head (SPEC section 5), about 50x a softmax training step at N = 256 here (results/lm/README.md).
VARIANTS = ("softmax", "bn", "sh", "bn+sh", "linear", "linear-sh")
GENERATION_TOKENS = (256, 512, 1024, 2048)
PROMPT = 16
REDUNDANCY_SAMPLES = 4


@dataclass(frozen=True)
class RunJob:
    """One training run: ``dataset`` (mqar or text), ``variant``, ``seed``."""

    dataset: str
    variant: str
    seed: int

    @property
    def label(self) -> str:
        return f"{self.dataset} {self.variant} seed-{self.seed}"

    def folder(self, output: str | Path) -> Path:
        return Path(output) / "records" / self.dataset / self.variant / f"seed-{self.seed}"


@dataclass(frozen=True)
class GenerationJob:
    """Generating ``tokens`` tokens with every variant of ``variants`` and SDPA."""

    tokens: int
    variants: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"generation {self.tokens} tokens"

    def folder(self, output: str | Path) -> Path:
        return Path(output) / "records" / "generation" / f"tokens-{self.tokens}"


def run_config(dataset: str, variant: str, seed: int, output: str | Path, overrides: Mapping[str, Any]) -> TrainConfig:
    """The :class:`TrainConfig` of one run: :data:`SETTINGS`, the dataset's options, then ``overrides``."""
    options = {**SETTINGS, **DATASETS[dataset], **overrides, "attention": variant, "seed": seed}
    return TrainConfig.from_dict({**options, "output": str(output)})


def execute_run(job: RunJob, output: str | Path, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Train (or resume) ``job``'s run in its folder's ``run/`` and return its record (a run that finished before
    its job was killed is read, not trained again)."""
    from .run import finished_metrics, train
    from .tasks import build_model, load_data

    config = run_config(job.dataset, job.variant, job.seed, job.folder(output) / "run", overrides)
    resume = (Path(config.output) / "checkpoints" / "last.ckpt").is_file()
    metrics = finished_metrics(config) or train(config, resume=resume, verbose=False)
    data = load_data(config)
    model = build_model(config, data)
    model.load_state_dict(_weights(Path(config.output) / "model.safetensors"))
    steps = math.ceil(min(config.max_train_samples or len(data.train), len(data.train)) / config.batch_size)
    record = {
        "dataset": job.dataset,
        "variant": job.variant,
        "seed": job.seed,
        "config": {k: v for k, v in config.to_dict().items() if k != "output"},
        "metrics": metrics,
        "curve": _curve(Path(config.output) / "metrics.csv"),
        "seconds_per_step": metrics["train_seconds"] / (steps * metrics["epochs"]),
        "redundancy": _redundancy(model, data.val),
        "source": data.source,
    }
    if data.cells:
        record["cells"] = cell_accuracy(model, data.test, data.cells)
    return record


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


def _curve(path: Path) -> list[dict[str, float]]:
    """The epochs of a run's metrics.csv: epoch, train_loss, val_loss, val_acc."""
    import csv

    with open(path) as file:
        rows = list(csv.DictReader(file))
    keys = ("epoch", "train_loss", "val_loss", "val_acc")
    return [{k: float(row[k]) for k in keys if row.get(k) not in (None, "")} for row in rows]


def _redundancy(model: torch.nn.Module, split: LanguageSplit) -> dict[str, float]:
    from ..analysis.redundancy import causal_lm_redundancy

    longest = split.lengths.max()
    full = split.x[split.lengths == longest][:REDUNDANCY_SAMPLES]  # unpadded sequences of one length
    found = causal_lm_redundancy(model, full)
    return {"l2_distance": found["l2_distance"], "cosine_similarity": found["cosine_similarity"]}


def cell_accuracy(
    model: torch.nn.Module, split: LanguageSplit, cells: Sequence[tuple[int, int]], batch_size: int = 32
) -> list[dict[str, Any]]:
    """MQAR accuracy (correct values / queries) of ``model`` on each cell of ``split``, in eval mode."""
    model.eval()
    out = []
    with torch.no_grad():
        for c, (pairs, length) in enumerate(cells):
            part = split.part(split.cell == c)
            tokens = int(part.lengths.max())  # the cell's length (and any offset)
            correct = total = 0
            for start in range(0, len(part), batch_size):
                x, y = part.x[start : start + batch_size, :tokens], part.y[start : start + batch_size, :tokens]
                predicted = model(input_ids=x).logits.argmax(-1)
                labelled = y != -100
                correct += int((predicted == y)[labelled].sum())
                total += int(labelled.sum())
            out.append({"pairs": pairs, "length": length, "accuracy": correct / total, "queries": total})
    return out


def execute_generation(job: GenerationJob, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Tokens per second and cache bytes of greedy generation, each variant and SDPA, in one process."""
    from ..data import text
    from ..models.causal_lm import causal_lm

    torch.set_num_threads(1)
    config = run_config("text", "softmax", 0, "unused", overrides)
    prompt = text.stream("test", config.root or text.ROOT)[None, :PROMPT].long()
    rows = []
    for name in ("sdpa", *job.variants):
        torch.manual_seed(0)
        attention = "sdpa" if name == "sdpa" else replace(config, attention=name).attention_options()
        model = causal_lm(256, attention, d_model=config.d_model, depth=config.depth, num_heads=config.num_heads,
                          mlp_ratio=config.mlp_ratio).eval()  # fmt: skip
        rows.append({"attention": name, **_generate(model, prompt, job.tokens - PROMPT, name == "sdpa")})
    return {"tokens": job.tokens, "prompt": PROMPT, "rows": rows, "config": config.to_dict()}


def _generate(model: Any, prompt: torch.Tensor, new: int, sdpa: bool) -> dict[str, float]:
    """One greedy generation of ``new`` tokens after ``prompt`` (after a short warm-up): seconds, tokens/s and the
    cache's bytes at the end, per token."""
    from transformers import DynamicCache

    from ..integrations.transformers import PrimalDualCache

    def cache() -> Any:
        return DynamicCache(config=model.config) if sdpa else PrimalDualCache(model)

    with torch.no_grad():
        model.generate(prompt, cache=cache(), max_new_tokens=8, do_sample=False)  # warm-up
        state = cache()
        started = time.perf_counter()
        model.generate(prompt, cache=state, max_new_tokens=new, do_sample=False)
        seconds = time.perf_counter() - started
    nbytes = (
        sum(2 * layer.keys.numel() * layer.keys.element_size() for layer in state.layers) if sdpa else state.nbytes()
    )
    tokens = prompt.shape[1] + new
    return {"seconds": seconds, "tokens_per_second": new / seconds, "cache_bytes": nbytes,
            "cache_bytes_per_token": nbytes / tokens}  # fmt: skip


def _execute(job: RunJob | GenerationJob, output: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(job, GenerationJob):
        return execute_generation(job, overrides)
    return execute_run(job, output, overrides)


def jobs(
    datasets: Sequence[str], variants: Sequence[str], seeds: Sequence[int], tokens: Sequence[int]
) -> tuple[list[RunJob], list[GenerationJob]]:
    """The training jobs (seed by seed: the first seed of every variant finishes first) and the generation jobs."""
    unknown = sorted(set(datasets) - set(DATASETS))
    if unknown:
        raise ValueError(f"datasets must be among {', '.join(DATASETS)}, got {', '.join(unknown)}")
    if not variants or not seeds:
        raise ValueError(f"the benchmark needs variants and seeds, got {list(variants)}, {list(seeds)}")
    runs = [RunJob(d, v, s) for s in seeds for d in datasets for v in variants]
    return runs, [GenerationJob(n, tuple(variants)) for n in tokens]


def benchmark(
    output: str | Path,
    *,
    datasets: Sequence[str] = tuple(DATASETS),
    variants: Sequence[str] = VARIANTS,
    seeds: Sequence[int] = (0, 1, 2),
    tokens: Sequence[int] = GENERATION_TOKENS,
    workers: int = 1,
    overrides: Mapping[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """Run every job not yet done into ``output``: the training jobs with ``workers`` processes, then the generation
    jobs one at a time. ``overrides``: options over :data:`SETTINGS` and :data:`DATASETS` for every run (tests
    make the runs tiny with them); a record made with other options is a ValueError, not a silent mix."""
    runs, generations = jobs(datasets, variants, seeds, tokens)
    overrides = dict(overrides or {})
    check_records(output, overrides)
    work = partial(_execute, output=str(output), overrides=overrides)
    run_jobs(runs, output, work, workers=workers, log=log)
    run_jobs(generations, output, work, workers=1, log=log)


def check_records(output: str | Path, overrides: Mapping[str, Any]) -> None:
    """ValueError when a finished training record under ``output`` was made with other options than these."""
    for path in sorted(Path(output).glob("records/*/*/seed-*/record.json")):
        record = json.loads(path.read_text())
        expected = run_config(record["dataset"], record["variant"], record["seed"], "unused", overrides).to_dict()
        saved = {**TrainConfig().to_dict(), **record["config"]}  # an option added since has its default
        changed = sorted(k for k, v in expected.items() if k != "output" and saved[k] != v)
        if changed:
            raise ValueError(f"{path} was made with other options ({', '.join(changed)}): use another --output")
