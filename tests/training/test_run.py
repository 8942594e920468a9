"""The training engine: config round trip, end-to-end runs on BasicMotions, resume, and DDP on CPU."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file
from torch import nn

from primaldual.training import TrainConfig, build_model, compare, load_data, summary_row, train
from primaldual.training.memory import CLEAR_REFS, peak_memory
from primaldual.training.module import Classifier
from primaldual.training.run import checksum

# BasicMotions: 6 channels, length 100, 4 classes (chance 25%), 40 train / 40 test series
TINY = dict(
    dataset="BasicMotions",
    d_model=32,
    depth=1,
    num_heads=4,
    epochs=12,
    batch_size=8,
    lr=3e-3,
    warmup_epochs=1,
    dropout=0.0,
    patch_size=4,
    threads=1,
)
OUTPUTS = (
    "config.yaml",
    "metrics.json",
    "metrics.csv",
    "model.safetensors",
    "checkpoints/best.ckpt",
    "checkpoints/last.ckpt",
)
REQUIRED = (
    "test_accuracy",
    "val_accuracy",
    "epochs",
    "train_seconds",
    "params",
    "seconds_per_epoch",
    "best_epoch",
    "peak_memory_bytes",
)


def saved_model_accuracy(output: Path, split: str = "test") -> float:
    """Accuracy of ``output``'s model.safetensors, rebuilt from its config.yaml, on ``split``, in one process."""
    config = TrainConfig.from_yaml(output / "config.yaml")
    data = load_data(config)
    model = build_model(config, data)
    model.load_state_dict(load_file(output / "model.safetensors"))
    with torch.no_grad():
        part = getattr(data, split)
        return (model.eval()(part.x, part.mask).argmax(1) == part.y).float().mean().item()


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


# ---- config ---------------------------------------------------------------------------------------------


def test_config_yaml_round_trip(tmp_path: Path) -> None:
    config = TrainConfig(
        dataset="BasicMotions",
        attention="bn+sh",
        scales=[1, 1, 2, 4],
        num_heads=4,
        d_model=32,
        lr=3e-4,
        eps=1e-6,
        patience=7,
        devices="auto",
        precision="bf16-mixed",
        root=str(tmp_path),
    )
    path = tmp_path / "config.yaml"
    config.to_yaml(path)
    assert TrainConfig.from_yaml(path) == config
    assert TrainConfig.from_yaml(path) != TrainConfig()


def test_config_from_partial_yaml_keeps_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("attention: sh\nlr: 1e-3\nepochs: 7\n")  # YAML 1.1 reads 1e-3 as a string: accepted
    config = TrainConfig.from_yaml(path)
    assert (config.attention, config.lr, config.epochs, config.d_model) == ("sh", 1e-3, 7, TrainConfig().d_model)


def test_config_unknown_keys_are_named(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nlearning_rate: 0.1\nd_modle: 8\n")
    with pytest.raises(ValueError, match="unknown config option.*d_modle, learning_rate"):
        TrainConfig.from_yaml(path)


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"epochs": 0}, ValueError, "epochs must be >= 1"),
        ({"epochs": "ten"}, TypeError, "epochs must be int"),
        ({"epochs": True}, TypeError, "epochs must be int"),
        ({"dropout": 1.0}, ValueError, "dropout must be in"),
        ({"lr": -1.0}, ValueError, "lr must be > 0"),
        ({"attention": "nope"}, ValueError, "unknown variant"),
        ({"task": "images"}, ValueError, "task must be one of"),
        ({"d_model": 30, "num_heads": 8}, ValueError, "divisible"),
        ({"scales": [1, 2]}, ValueError, "one factor per head"),
        ({"attention": "sparse"}, ValueError, "needs the option window"),
        ({"sh_grid": True}, ValueError, "sh_grid pools an image.s patch grid: task image only"),
        ({"jitter": -0.1}, ValueError, "jitter must be >= 0"),
        ({"task": "listops", "dataset": "listops", "jitter": 0.1}, ValueError, "jitter applies to the timeseries task"),
    ],
)
def test_config_rejects_bad_values(options: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        TrainConfig(**options)


def test_config_errors_for_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothere.yaml"):
        TrainConfig.from_yaml(tmp_path / "nothere.yaml")


def test_jitter_adds_fresh_noise_to_the_valid_steps_of_training_series() -> None:
    jittered = load_data(TrainConfig(dataset="JapaneseVowels", jitter=0.5))
    plain = load_data(TrainConfig(dataset="JapaneseVowels"))
    train_set = jittered.train.to_dataset()

    def draw(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return torch.stack([train_set[i][0] for i in range(len(train_set))])

    noise = draw(0) - plain.train.x
    padded = plain.train.mask  # JapaneseVowels: lengths 7-29, padded to 29
    assert padded.any() and noise[padded].abs().max() == 0
    assert noise[~padded].std().item() == pytest.approx(0.5, rel=0.02)
    assert noise[~padded].mean().item() == pytest.approx(0, abs=0.01)
    assert torch.equal(draw(0), draw(0)) and not torch.equal(draw(0), draw(1))  # repeatable, new on each access
    for split in ("val", "test"):  # evaluation series are left as they are
        assert torch.equal(getattr(jittered, split).x, getattr(plain, split).x)
        assert torch.equal(getattr(jittered, split).to_dataset()[0][0], getattr(plain, split).x[0])


# ---- end to end -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["softmax", "bn", "sh", "bn+sh", "linear"])
def test_train_beats_chance_and_writes_outputs(variant: str, tmp_path: Path) -> None:
    config = TrainConfig(**TINY, attention=variant, output=str(tmp_path / variant))
    metrics = train(config)
    out = Path(config.output)
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == metrics and all(key in saved for key in REQUIRED)
    assert saved["test_accuracy"] >= 0.6, saved  # chance: 0.25
    assert saved["epochs"] == TINY["epochs"] and 0 <= saved["best_epoch"] < TINY["epochs"]
    assert isinstance(saved["peak_memory_bytes"], int) and saved["peak_memory_bytes"] > 0
    assert TrainConfig.from_yaml(out / "config.yaml") == config
    rows = read_csv(out / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(TINY["epochs"]))
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr"} <= set(rows[0])
    assert saved["val_accuracy"] == max(float(r["val_acc"]) for r in rows)
    # the best epoch is the latest of those with the best validation accuracy
    assert saved["best_epoch"] == max(int(r["epoch"]) for r in rows if float(r["val_acc"]) == saved["val_accuracy"])
    # the safetensors weights are the best epoch's: they reproduce the test accuracy
    assert saved["params"] == sum(w.numel() for w in load_file(out / "model.safetensors").values())
    assert saved_model_accuracy(out) == pytest.approx(saved["test_accuracy"], abs=1e-6)


def test_compile_trains_and_evaluates_through_the_compiled_model(tmp_path: Path, monkeypatch) -> None:
    """compile: every training and evaluation step calls the model through torch.compile (dynamo's capture, here
    run by a counting backend to keep the test fast); the weights it saves load into a fresh, uncompiled model
    and give its test accuracy."""
    from torch._dynamo.testing import CompileCounter

    counter, compile_ = CompileCounter(), torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **options: compile_(fn, backend=counter, **options))
    torch._dynamo.reset()
    metrics = train(TrainConfig(**TINY, compile=True, output=str(tmp_path)))
    assert counter.frame_count >= 2  # one graph for training, one for evaluation (dynamo guards on module.training)
    assert metrics["test_accuracy"] >= 0.6
    assert saved_model_accuracy(tmp_path) == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    # pickled as ddp_spawn sends it to its processes: the compiled forward is rebuilt, not pickled
    module = Classifier(nn.Linear(3, 2), 2, lr=1e-3, weight_decay=0.0, warmup_epochs=0.0, compiled=True)
    copy = pickle.loads(pickle.dumps(module))
    x = torch.randn(4, 3)
    frames = counter.frame_count
    torch.testing.assert_close(copy(x), module.model(x), rtol=0, atol=0)
    assert counter.frame_count == frames + 1 and list(copy.state_dict()) == ["model.weight", "model.bias"]
    torch._dynamo.reset()


def test_without_validation_selects_on_training_loss(tmp_path: Path) -> None:
    config = TrainConfig(**{**TINY, "epochs": 4}, val_fraction=0.0)
    compare(config, ["softmax"], [0], tmp_path)
    metrics = json.loads((tmp_path / "softmax" / "seed0" / "metrics.json").read_text())
    rows = read_csv(tmp_path / "softmax" / "seed0" / "metrics.csv")
    assert metrics["val_accuracy"] is None and metrics["monitor"] == "train_loss"
    assert "val_acc" not in rows[0]
    losses = [float(r["train_loss"]) for r in rows]
    assert metrics["best_epoch"] == losses.index(min(losses))
    # the summary says how the epoch was chosen and has no validation accuracy
    table = (tmp_path / "summary.md").read_text()
    assert table.startswith("BasicMotions: test accuracy (%) of the epoch of lowest training loss")
    assert table.splitlines()[-1].split("|")[3].strip() == "–"


def test_training_flushes_denormal_floats(tmp_path: Path) -> None:
    torch.set_flush_denormal(False)
    denormal = torch.tensor([1e-39])
    assert denormal.item() != 0  # stored as a denormal float32
    train(TrainConfig(**{**TINY, "epochs": 1}, output=str(tmp_path)))
    assert (denormal * 1.0).item() == 0  # flushed to zero since training started
    torch.set_flush_denormal(False)


def test_fresh_run_refuses_an_existing_run_and_resume_needs_one(tmp_path: Path) -> None:
    config = TrainConfig(**{**TINY, "epochs": 1}, output=str(tmp_path / "run"))
    with pytest.raises(FileNotFoundError, match="last.ckpt"):
        train(config, resume=True)
    train(config)
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(config)


def test_peak_memory_is_the_runs_own(tmp_path: Path) -> None:
    """A 300 MB tensor allocated and freed before a run raises the process's peak, not the run's (on CPU the
    high-water mark is reset when the run starts)."""
    if not os.access(CLEAR_REFS, os.W_OK):
        pytest.skip(f"{CLEAR_REFS} is not writable here: the peak resident set cannot be reset")
    temporary = torch.ones(75_000_000)  # 300 MB, every page touched
    during = peak_memory(torch.device("cpu"))
    del temporary
    metrics = train(TrainConfig(**{**TINY, "epochs": 1}, output=str(tmp_path)))
    assert 0 < metrics["peak_memory_bytes"] < during


def test_summary_row_peak_memory_in_mb_and_nan_for_older_runs() -> None:
    run = dict(test_accuracy=0.5, val_accuracy=0.5, params=10, seconds_per_epoch=1.0, epochs=2)
    runs = [{**run, "peak_memory_bytes": 100_000_000}, {**run, "peak_memory_bytes": 300_000_000}]
    assert summary_row("softmax", runs)["peak_memory_mb"] == pytest.approx(200.0)
    assert math.isnan(summary_row("softmax", [*runs, run])["peak_memory_mb"])


# ---- resume -------------------------------------------------------------------------------------------


class StopAfter(Callback):
    """Interrupts training after ``epochs`` epochs, as a killed job would (its last checkpoint is then on disk)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def final_weights(output: Path) -> dict[str, torch.Tensor]:
    return torch.load(output / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def numeric_rows(path: Path) -> list[dict[str, float]]:
    return [{k: float(v) for k, v in row.items()} for row in read_csv(path)]


def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    """Epochs 0-1, interrupted, resumed for 2-3 == epochs 0-3 in one go: same weights, same per-epoch log.

    Exact because the checkpoint holds the weights, the optimiser and schedule state, the epoch and step
    counters and the random state (shuffling, dropout and jitter draw from it), and CPU kernels are deterministic.
    """
    base = TrainConfig(**{**TINY, "epochs": 4, "dropout": 0.1, "jitter": 0.1})
    whole = dataclasses.replace(base, output=str(tmp_path / "whole"))
    parts = dataclasses.replace(base, output=str(tmp_path / "parts"))
    train(whole)
    first = train(parts, callbacks=[StopAfter(2)])
    assert first["epochs"] == 2
    resumed = train(parts, resume=True)
    assert resumed["epochs"] == 4
    assert [int(r["epoch"]) for r in read_csv(tmp_path / "parts" / "metrics.csv")] == [0, 1, 2, 3]
    expected, actual = final_weights(tmp_path / "whole"), final_weights(tmp_path / "parts")
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-6, atol=1e-7, msg=key)
    for a, b in zip(numeric_rows(tmp_path / "parts" / "metrics.csv"), numeric_rows(tmp_path / "whole" / "metrics.csv")):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-7)
    assert resumed["test_accuracy"] == pytest.approx(
        json.loads((tmp_path / "whole" / "metrics.json").read_text())["test_accuracy"]
    )


def test_resume_with_more_epochs_continues_the_run(tmp_path: Path) -> None:
    """2 epochs, then resumed with epochs=4: the counter, the log and the timer go on from epoch 2, on the
    4-epoch schedule.

    The result is not that of a 4-epoch run: the cosine schedule spans the configured epochs, so epochs 0-1 of
    the 2-epoch run decayed the learning rate faster than those of a 4-epoch run do.
    """
    short = TrainConfig(**{**TINY, "epochs": 2}, output=str(tmp_path / "short"))
    first = train(short)
    first_rows = numeric_rows(tmp_path / "short" / "metrics.csv")
    metrics = train(dataclasses.replace(short, epochs=4), resume=True)
    rows = numeric_rows(tmp_path / "short" / "metrics.csv")
    assert metrics["epochs"] == 4 and [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert rows[:2] == first_rows
    assert json.loads((tmp_path / "short" / "metrics.json").read_text())["epochs"] == 4
    assert metrics["train_seconds"] > first["train_seconds"]
    # epochs 2-3 follow the 4-epoch schedule (a function of the step alone), from other weights
    train(dataclasses.replace(short, epochs=4, output=str(tmp_path / "long")))
    long_rows = numeric_rows(tmp_path / "long" / "metrics.csv")
    assert [r["lr"] for r in rows[2:]] == pytest.approx([r["lr"] for r in long_rows[2:]], rel=1e-6)
    assert rows[1]["lr"] < long_rows[1]["lr"]
    assert rows[3]["train_loss"] != pytest.approx(long_rows[3]["train_loss"], rel=1e-4)


# ---- DDP ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grouping", [[], ["--bucket-by-length"]], ids=["distributed-sampler", "length-grouped"])
def test_ddp_two_processes_on_cpu_agree(tmp_path: Path, grouping: list[str]) -> None:
    """``primaldual train --strategy ddp --devices 2 --accelerator cpu``: two gloo processes whose final weights
    are identical (each process's checksum is gathered into metrics.json) and equal to the saved last.ckpt;
    batches from Lightning's distributed sampler or from the length-grouped one, which shards by itself."""
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "primaldual.cli",
        "train",
        "--dataset",
        "BasicMotions",
        "--strategy",
        "ddp",
        "--devices",
        "2",
        "--accelerator",
        "cpu",
        "--epochs",
        "2",
        "--val-fraction",
        "0.275",
        "--d-model",
        "16",
        "--depth",
        "1",
        "--num-heads",
        "2",
        "--patch-size",
        "10",
        "--batch-size",
        "8",
        "--threads",
        "1",
        "--output",
        str(out),
        *grouping,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    first, second = metrics["replica_checksums"]
    assert first == second
    # and it is the checksum of the weights that rank 0 saved at the end of training
    assert first == checksum(final_weights(out).values()).item()
    # sharded evaluation counts every series once (11 validation series on 2 processes: 6 + 5): the accuracies
    # are those of the best weights in one process
    assert len(load_data(TrainConfig.from_yaml(out / "config.yaml")).val) == 11
    assert metrics["val_accuracy"] == pytest.approx(saved_model_accuracy(out, "val"), abs=1e-6)
    assert metrics["test_accuracy"] == pytest.approx(saved_model_accuracy(out), abs=1e-6)
    assert result.stdout.count('"test_accuracy"') == 1  # printed by rank 0 only


# ---- processes at once -----------------------------------------------------------------------------------


def test_three_compares_at_once_into_one_folder_train_each_run_once(tmp_path: Path) -> None:
    """Three ``primaldual compare`` processes started at once on the same output, variants and seeds: all exit 0,
    every run folder is complete, and each run was trained by exactly one process (one Lightning log version per
    run, one "start" line over all three outputs); the others reused its result, so all summaries agree."""
    out = tmp_path / "cmp"
    command = [
        sys.executable,
        "-m",
        "primaldual.cli",
        "compare",
        "--dataset",
        "BasicMotions",
        "--d-model",
        "8",
        "--depth",
        "1",
        "--num-heads",
        "2",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--patch-size",
        "20",
        "--warmup-epochs",
        "0",
        "--threads",
        "1",
        "--no-report",
        "--attention",
        "softmax",
        "bn",
        "--seeds",
        "0",
        "1",
        "--output",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(3)
    ]
    results = [process.communicate(timeout=300) for process in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], [err[-2000:] for _, err in results]
    stdout = "".join(out_text for out_text, _ in results)
    runs = [(variant, seed) for variant in ("softmax", "bn") for seed in (0, 1)]
    for variant, seed in runs:
        run = out / variant / f"seed{seed}"
        assert all((run / name).is_file() for name in OUTPUTS), run
        assert [p.name for p in (run / "lightning_logs").iterdir()] == ["version_0"]  # one training invocation
        assert stdout.count(f"start {variant} seed {seed} ->") == 1
        assert json.loads((run / "metrics.json").read_text())["epochs"] == 2
    assert stdout.count("finished already: reusing") == 2 * len(runs)
    assert not list(out.rglob("*.tmp"))
    tables = {text[text.index("BasicMotions: test accuracy") :] for text, _ in results}
    assert len(tables) == 1  # the same summary in every process
