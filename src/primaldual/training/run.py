"""``train``: one run from a :class:`TrainConfig` to an output folder; ``compare``: variants x seeds -> a table.

Output folder of a run::

    config.yaml        the resolved config
    metrics.json       test_accuracy, val_accuracy (best), best_epoch, epochs, train_seconds, seconds_per_epoch,
                       peak_memory_bytes, ...
    metrics.csv        one row per epoch: train/val loss and accuracy, learning rate
    model.safetensors  the best weights (of the task's model, no pickle)
    checkpoints/       best.ckpt and last.ckpt (Lightning; ``resume=True`` continues from last.ckpt)
    lightning_logs/    Lightning's raw CSV logs, one version per invocation

Every file but Lightning's logs is written atomically and checkpoints are read with ``weights_only=True``
(:mod:`.checkpoints`): a run killed at any moment and resumed finishes as an uninterrupted one.

The best epoch is the one with the highest validation accuracy (the latest, on ties); with ``val_fraction=0``
there is no validation split and it is the one with the lowest training loss. Early stopping (``patience``)
watches the same quantity.

``peak_memory_bytes``: the peak while training and testing (:mod:`.memory`; a resumed run: since it resumed).
CUDA: max allocated by PyTorch; CPU: peak resident set of the process, data and weights included. Under DDP each
process measures its own and rank 0's is written.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from itertools import product
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, Timer
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_only
from safetensors.torch import save as safetensors_bytes
from torch.utils.data import DataLoader, RandomSampler

from .. import tables
from ..data.batching import LengthGroupedSampler, trim_padding
from ..files import atomic_write, folder_lock, remove_abandoned
from .checkpoints import (
    PLACEMENT_OPTIONS,
    AtomicCheckpointIO,
    ConfigInCheckpoint,
    changed_options,
    check_resume,
    load_checkpoint,
)
from .config import TrainConfig
from .memory import peak_memory, reset_peak_memory
from .module import Classifier, LanguageModel, RngState
from .progress import RunProgress
from .tasks import build_model, load_data  # the task-specific parts; train and compare serve every task

#: Lightning's hints that do not apply here, silenced while training: tiny in-memory datasets need no worker
#: processes; a resumed run writes into its own checkpoint folder; with val_fraction=0 there is, by design, no
#: validation loop; Lightning's own use of a torch API that torch deprecates is not the user's to fix.
IGNORED_WARNINGS = (
    ".*does not have many workers.*",
    ".*The number of training batches.*log_every_n_steps.*",
    "Checkpoint directory .* exists and is not empty.*",
    ".*no `val_dataloader`. Skipping val loop.*",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
)


def train(
    config: TrainConfig, *, resume: bool = False, callbacks: Sequence[Callback] = (), verbose: bool = True
) -> dict[str, Any]:
    """Train, select the best epoch, test it once, write the output folder; return the contents of metrics.json.

    ``resume``: continue the run in ``config.output`` from ``checkpoints/last.ckpt`` (weights, optimiser,
    schedule, epoch counter, random state); ``config.epochs`` may be raised to train longer, and only the
    options in :data:`~.checkpoints.RESUME_OPTIONS` may differ from the checkpoint's (a ValueError names the
    others, or the weights that do not fit). Without it the output folder must not hold a run yet.
    ``callbacks``: extra Lightning callbacks. ``verbose``: Lightning's progress bars, model summary, test table
    and messages (False: its warnings only).
    The run holds :func:`~primaldual.files.folder_lock` on ``config.output`` while it trains: another process
    training into the same folder waits for it (and then finds a run there).
    Sets ``torch.set_flush_denormal(True)`` for the rest of the process (torch has no getter to restore it).
    Under DDP every process returns the metrics; only rank 0 writes files (and holds the lock).
    """
    output = Path(config.output)
    _check_output(output, resume)
    lock = folder_lock(output) if rank_zero_only.rank == 0 else nullcontext()
    with lock, lightning_output(verbose):
        _check_output(output, resume)  # again: another process may have trained here while this one waited
        return _train(config, resume, callbacks, verbose)


def _check_output(output: Path, resume: bool) -> None:
    last = output / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():
        raise FileNotFoundError(f"cannot resume: {last} does not exist (train into {output} first)")
    if not resume and last.exists():
        raise FileExistsError(f"{output} already holds a run ({last}): resume it, or choose another output folder")


def _train(config: TrainConfig, resume: bool, callbacks: Sequence[Callback], verbose: bool) -> dict[str, Any]:
    """:func:`train` once its output folder is checked and locked."""
    output = Path(config.output)
    last = output / "checkpoints" / "last.ckpt"
    if config.threads:
        torch.set_num_threads(config.threads)
    # x86 CPUs compute on denormal floats many times slower; trained bn+sh models produce them (a training step of
    # the LRA pixel model: 2.1 s with them, 1.2 s flushed to zero). A no-op where the CPU cannot flush.
    torch.set_flush_denormal(True)
    L.seed_everything(config.seed, workers=True, verbose=False)

    data = load_data(config)
    model = build_model(config, data)
    module = (LanguageModel if config.task == "lm" else Classifier).for_config(model, data.num_classes, config)
    if resume:  # before anything is written: a refused resume leaves the run as it was
        check_resume(load_checkpoint(last), last, config, module)
        if rank_zero_only.rank == 0:  # the lock's holder: a temporary file here is a killed writer's
            remove_abandoned(output)
    has_val = len(data.val) > 0
    trainer, checkpoint, log, timer = _trainer(config, has_val, callbacks, verbose)
    if trainer.is_global_zero:
        output.mkdir(parents=True, exist_ok=True)
        atomic_write(output / "config.yaml", config.to_yaml().encode())
    reset_peak_memory(trainer.strategy.root_device)
    trainer.fit(
        module,
        _loader(data.train, "train", config, trainer),
        _loader(data.val, "val", config, trainer) if has_val else None,
        ckpt_path=last if resume else None,
        weights_only=True,
    )
    # before test() reloads the callbacks' states from the best checkpoint
    epochs, seconds, rows = trainer.current_epoch, timer.time_elapsed("train"), list(log.rows)
    checksums = trainer.strategy.all_gather(checksum(module.parameters())).reshape(-1).tolist()
    trainer.test(
        module,
        _loader(data.test, "test", config, trainer),
        ckpt_path="best",
        weights_only=True,
        verbose=verbose and trainer.is_global_zero,
    )
    peak = peak_memory(trainer.strategy.root_device)
    best = load_checkpoint(checkpoint.best_model_path)
    best_row = next((row for row in rows if row["epoch"] == best["epoch"]), {})
    metrics: dict[str, Any] = {
        "test_accuracy": trainer.callback_metrics["test_acc"].item(),
        "test_loss": trainer.callback_metrics["test_loss"].item(),
        "val_accuracy": (
            checkpoint.best_model_score.item() if checkpoint.monitor == "val_acc" else best_row.get("val_acc")
        )
        if has_val
        else None,
        "val_loss": best_row.get("val_loss") if has_val else None,
        "monitor": checkpoint.monitor,
        "best_epoch": best["epoch"],
        "epochs": epochs,
        "train_seconds": seconds,
        "seconds_per_epoch": seconds / max(epochs, 1),
        "peak_memory_bytes": peak,
        "params": sum(p.numel() for p in model.parameters()),
        "world_size": trainer.world_size,
    }
    if config.task == "lm":  # nats per token -> bits per token (text: bits per byte)
        metrics["test_bits_per_token"] = metrics["test_loss"] / math.log(2)
    if trainer.world_size > 1:  # DDP keeps replicas identical: record each process's final weights to show it
        metrics["replica_checksums"] = checksums
    if trainer.is_global_zero:
        _write_run(output, config, best, rows, metrics)
    return metrics


def _trainer(
    config: TrainConfig, has_val: bool, callbacks: Sequence[Callback], verbose: bool
) -> tuple[L.Trainer, LatestBestCheckpoint, EpochLog, Timer]:
    """The Lightning Trainer of ``config`` and the callbacks ``train`` reads after fitting."""
    output = Path(config.output)
    monitor, mode = ("val_acc", "max") if has_val else ("train_loss", "min")
    if config.task == "lm" and has_val:  # a language model's quality is its loss (bits per token)
        monitor, mode = "val_loss", "min"
    # saved at the end of the training epoch, after EpochLog has its row: a checkpoint holds every finished epoch
    checkpoint = LatestBestCheckpoint(
        output / "checkpoints", "best", monitor=monitor, mode=mode, save_last=True, save_on_train_epoch_end=True
    )
    log, timer = EpochLog(), Timer()
    stop = [EarlyStopping(monitor, patience=config.patience, mode=mode)] if config.patience else []
    trainer = L.Trainer(
        max_epochs=config.epochs,
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        precision=config.precision,
        gradient_clip_val=config.grad_clip or None,
        deterministic="warn",
        default_root_dir=output,
        logger=CSVLogger(output, name="lightning_logs"),
        log_every_n_steps=1,
        callbacks=[checkpoint, timer, RngState(), ConfigInCheckpoint(config), log, *stop, *callbacks],
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=not config.bucket_by_length,
        enable_progress_bar=verbose,
        enable_model_summary=verbose,
    )
    return trainer, checkpoint, log, timer


def _loader(split: Any, name: str, config: TrainConfig, trainer: L.Trainer) -> DataLoader:
    """The batches of ``split`` (``name``: train, val or test). Training batches are sharded by Lightning (its
    DistributedSampler under DDP); validation and test shards repeat no sample, so that their accuracy is that
    of the split, exactly."""
    dataset, train = split.to_dataset(), name == "train"
    per_epoch = config.max_train_samples if train and config.task == "lm" else None  # lm: a new draw per epoch
    if config.bucket_by_length:  # shards by itself under DDP (Lightning's distributed sampler is off)
        sampler = LengthGroupedSampler(
            split.lengths,
            config.batch_size,
            shuffle=train,
            seed=config.seed,
            num_replicas=trainer.world_size,
            rank=trainer.global_rank,
            num_samples=per_epoch,
        )
        return DataLoader(
            dataset, config.batch_size, sampler=sampler, collate_fn=trim_padding, num_workers=config.num_workers
        )
    if per_epoch is not None:
        sampler = RandomSampler(dataset, num_samples=min(per_epoch, len(dataset)))
        return DataLoader(dataset, config.batch_size, sampler=sampler, num_workers=config.num_workers)
    if train or trainer.world_size == 1:
        return DataLoader(dataset, config.batch_size, shuffle=train, num_workers=config.num_workers)
    sampler = UnrepeatedDistributedSampler(dataset, trainer.world_size, trainer.global_rank, shuffle=False)
    return DataLoader(dataset, config.batch_size, sampler=sampler, num_workers=config.num_workers)


def _write_run(
    output: Path, config: TrainConfig, best: dict[str, Any], rows: list[dict[str, float]], metrics: dict[str, Any]
) -> None:
    """The run's files besides config.yaml and the checkpoints: the best weights, the epochs, the metrics."""
    weights = {k.removeprefix("model."): v for k, v in best["state_dict"].items() if k.startswith("model.")}
    atomic_write(output / "model.safetensors", safetensors_bytes(weights, metadata={"config": config.to_yaml()}))
    atomic_write(output / "metrics.csv", tables.csv_text(rows).encode())
    atomic_write(output / "metrics.json", tables.json_text(metrics).encode())


@contextmanager
def lightning_output(verbose: bool, ignore: Sequence[str] = ()) -> Iterator[None]:
    """Within the block: :data:`IGNORED_WARNINGS` and the warning messages (regular expressions) ``ignore``
    silenced; without ``verbose``, Lightning's messages (devices, tips, restored checkpoints) too, its other
    warnings kept."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        for message in (*IGNORED_WARNINGS, *ignore):
            warnings.filterwarnings("ignore", message)
        try:
            if not verbose:
                for logger in loggers:
                    logger.setLevel(logging.WARNING)
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


class EpochLog(Callback):
    """The epoch-level metrics (``{train,val}_{loss,acc}``, ``lr``) of every finished epoch, one dict per epoch.

    Its rows are part of its state, hence of each checkpoint, which is saved after the row of its epoch is taken
    (monitoring callbacks such as ModelCheckpoint run last): a run resumed after a kill at any moment logs
    every epoch once, as an uninterrupted run does. (Lightning's CSV logs are written after the checkpoint:
    a kill in between loses that epoch's training metrics.)
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        self.rows.append({"epoch": trainer.current_epoch, **{k: metrics[k].item() for k in sorted(metrics)}})

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])


class LatestBestCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint (``save_top_k=1``) that keeps the latest of equally good epochs, where Lightning keeps the
    first: on a small validation split the accuracy ties often, and the later epoch is the better trained one."""

    def check_monitor_top_k(self, trainer: L.Trainer, current: torch.Tensor | None = None) -> bool:
        if current is not None and self.best_model_score is not None and current == self.best_model_score:
            return trainer.strategy.reduce_boolean_decision(True)
        return super().check_monitor_top_k(trainer, current)


def compare(
    base: TrainConfig, variants: Sequence[str], seeds: Sequence[int], output: str | Path, *, verbose: bool = False
) -> list[dict[str, Any]]:
    """Train every attention variant with every seed into ``output/<variant>/seed<k>/``; summarise.

    ``base`` gives every other option (its ``scales`` reach the sh variants only, its ``window`` sparse only).
    Run again, the same comparison picks up where it stopped: a finished run folder (``metrics.json``) is
    reused if its options equal these but for :data:`~.checkpoints.PLACEMENT_OPTIONS`, and an interrupted one
    continues from its last checkpoint as ``train(resume=True)`` does; other options give a ValueError naming
    the folder and the options.
    Any number of comparisons may run at once into one ``output``, over the same runs or others: a run is
    trained by one process at a time (:func:`~primaldual.files.folder_lock`). A single-process comparison passes
    over runs that another process is training, and comes back to them (waiting, then reusing their result) when
    it has trained the others.
    Shows a line per run and one progress bar over all epochs (:class:`~.progress.RunProgress`); ``verbose``:
    Lightning's own progress bars and messages instead of the bar.
    Writes ``output/summary.csv`` and ``output/summary.md`` (one row per variant: mean ± sample std over seeds of
    test accuracy in %, mean best validation accuracy, parameters, seconds per epoch, peak memory in MB, epochs,
    seeds), prints the Markdown table, and returns the rows.
    """
    if not variants or not seeds:
        raise ValueError(f"compare needs at least one variant and one seed, got {list(variants)}, {list(seeds)}")
    if len(set(variants)) != len(variants) or len(set(seeds)) != len(seeds):
        raise ValueError(f"variants and seeds must not repeat, got {list(variants)}, {list(seeds)}")
    output = Path(output)
    # every config is built (and checked) before the first run starts
    configs = [
        replace(base, attention=v, seed=s, output=str(output / v / f"seed{s}")) for v, s in product(variants, seeds)
    ]
    with RunProgress(configs, bar=not verbose) as progress:
        found = _run_all(configs, progress, verbose)
    results: dict[str, list[dict[str, Any]]] = {variant: [] for variant in variants}
    for config, metrics in zip(configs, found):
        results[config.attention].append(metrics)
    rows = [summary_row(variant, metrics) for variant, metrics in results.items()]
    if rank_zero_only.rank == 0:
        output.mkdir(parents=True, exist_ok=True)
        monitors = {m.get("monitor", "val_acc") for runs in results.values() for m in runs}
        table = _markdown(rows, base.dataset, seeds, monitors.pop() if len(monitors) == 1 else None)
        atomic_write(output / "summary.csv", tables.csv_text(rows).encode())
        atomic_write(output / "summary.md", table.encode())
        print(table, flush=True)
    return rows


def _run_all(configs: list[TrainConfig], progress: RunProgress, verbose: bool) -> list[dict[str, Any]]:
    """The metrics of every run of ``configs``, in order: one pass that trains or reuses the runs no other process
    holds, then one that waits for the others. (Under DDP, whose processes must train the same run in step, and
    where only the first holds locks, the first pass waits too.)"""
    found: dict[int, dict[str, Any]] = {}
    single = all(c.num_nodes == 1 and str(c.devices) == "1" for c in configs)
    for wait in (False, True) if single else (True,):
        for i, config in enumerate(configs):
            if i not in found:
                metrics = _train_or_reuse(config, f"[run {i + 1}/{len(configs)}]", progress, verbose, wait)
                if metrics is not None:
                    found[i] = metrics
    return [found[i] for i in range(len(configs))]


def _train_or_reuse(
    config: TrainConfig, label: str, progress: RunProgress, verbose: bool, wait: bool
) -> dict[str, Any] | None:
    """The metrics of ``config``'s run, under its folder's lock: read from a finished run in its output folder,
    or trained there (on from the last checkpoint of an interrupted one). None, without ``wait``, when another
    process holds the run."""
    output = Path(config.output)
    name = f"{config.attention} seed {config.seed}"
    if rank_zero_only.rank != 0:  # DDP: the first process holds the lock for all
        return finished_metrics(config) or train(
            config, resume=(output / "checkpoints" / "last.ckpt").is_file(), verbose=verbose
        )
    with folder_lock(output, wait=False) as held:
        if held:
            return _under_lock(config, label, name, progress, verbose)
    if not wait:
        progress.line(f"{label} {name}: another process is training it; coming back to it later")
        return None
    progress.line(f"{label} {name}: waiting for the process training it")
    with folder_lock(output):
        return _under_lock(config, label, name, progress, verbose)


def _under_lock(config: TrainConfig, label: str, name: str, progress: RunProgress, verbose: bool) -> dict[str, Any]:
    """:func:`_train_or_reuse` once the run's folder is locked by this process."""
    output = Path(config.output)
    reused = finished_metrics(config)
    if reused is not None:
        progress.line(f"{label} {name}: {_result(reused)}; finished already: reusing {output / 'metrics.json'}")
        progress.finished(config)
        return reused
    last = output / "checkpoints" / "last.ckpt"
    resume = last.is_file()
    progress.line(f"{label} start {name} -> {output}" + (f" (interrupted: continuing from {last})" if resume else ""))
    started = time.monotonic()
    metrics = train(config, resume=resume, callbacks=[progress.callback()], verbose=verbose)
    progress.line(f"{label} done {name}: {_result(metrics)}, {time.monotonic() - started:.0f} s")
    progress.finished(config)
    return metrics


def finished_metrics(config: TrainConfig) -> dict[str, Any] | None:
    """The metrics of a finished run in ``config.output`` with ``config``'s options, None if there is none; a
    ValueError if a finished run there has other options."""
    output = Path(config.output)
    finished = output / "metrics.json"
    if not finished.is_file():
        return None
    changed = changed_options(TrainConfig.from_yaml(output / "config.yaml").to_dict(), config, PLACEMENT_OPTIONS)
    if changed:
        raise ValueError(
            f"{output} holds a finished run with other options ({'; '.join(changed)}): choose another output folder"
        )
    return json.loads(finished.read_text())


def _result(metrics: dict[str, Any]) -> str:
    return f"test acc {100 * metrics['test_accuracy']:.1f}%"


def summary_row(variant: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One variant's line of a comparison from its runs' metrics.json contents: mean and sample std (NaN for
    one seed) over seeds, accuracies in %, peak memory in MB (NaN when a run's metrics.json predates it)."""
    test = [100 * r["test_accuracy"] for r in runs]
    val = [100 * r["val_accuracy"] for r in runs if r["val_accuracy"] is not None]
    return {
        "attention": variant,
        "seeds": len(runs),
        "test_acc_mean": statistics.fmean(test),
        "test_acc_std": statistics.stdev(test) if len(test) > 1 else math.nan,
        "val_acc_mean": statistics.fmean(val) if val else math.nan,
        "params": runs[0]["params"],
        "seconds_per_epoch": statistics.fmean(r["seconds_per_epoch"] for r in runs),
        "peak_memory_mb": (
            statistics.fmean(r["peak_memory_bytes"] / 1e6 for r in runs)
            if all("peak_memory_bytes" in r for r in runs)
            else math.nan
        ),
        "epochs_mean": statistics.fmean(r["epochs"] for r in runs),
    }


#: How the epoch whose test accuracy a summary gives was chosen, by the runs' ``monitor``.
SELECTED_EPOCH = {
    "val_acc": "the best-validation epoch",
    "train_loss": "the epoch of lowest training loss (no validation split)",
    None: "the best epoch (on validation accuracy, or training loss without a validation split)",
}


def _markdown(rows: list[dict[str, Any]], dataset: str, seeds: Sequence[int], monitor: str | None) -> str:
    """The summary as a Markdown table; ``monitor``: the runs' (None if they differ)."""
    title = (
        f"{dataset}: test accuracy (%) of {SELECTED_EPOCH[monitor]}, mean ± std over seeds "
        f"{', '.join(map(str, seeds))}\n\n"
    )
    return title + tables.markdown(
        rows,
        [
            ("attention", "attention"),
            ("test acc (%)", _mean_std),
            ("val acc (%)", "val_acc_mean"),
            ("params", lambda r: f"{r['params']:,}"),
            ("s / epoch", lambda r: tables.number(r["seconds_per_epoch"], 3)),
            ("peak MB", lambda r: tables.number(r["peak_memory_mb"], 1)),
            ("epochs", lambda r: tables.number(r["epochs_mean"], 1)),
            ("seeds", "seeds"),
        ],
    )


def _mean_std(row: dict[str, Any]) -> str:
    """``mean ± std`` of a summary row's test accuracy; the mean alone for one seed."""
    std = "" if math.isnan(row["test_acc_std"]) else f" ± {row['test_acc_std']:.2f}"
    return f"{row['test_acc_mean']:.2f}{std}"


def checksum(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """A position-weighted float64 sum of ``tensors``: equal weights give equal sums, (almost) any change another."""
    flat = torch.cat([t.detach().double().flatten() for t in tensors])
    return (flat * torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device).sqrt()).sum()
