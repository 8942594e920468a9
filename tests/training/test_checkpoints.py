"""Checkpoints and run files: atomic checkpoint I/O (atomic writes themselves: tests/test_files.py), loading
without code, clear errors for damaged files and other configurations, and training runs killed with SIGKILL
then resumed to the uninterrupted result.

The kill test kills ``PRIMALDUAL_KILLS`` command-line runs (default 3) at seeded random points and resumes each
in this process; ``PRIMALDUAL_KILLS=20 pytest tests/training/test_checkpoints.py -k killed`` tries more (about
8 s each).
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from primaldual.cli import main
from primaldual.training import TrainConfig, build_model, load_data, train
from primaldual.training.checkpoints import AtomicCheckpointIO, check_state_dict, load_checkpoint, load_weights

SRC = Path(__file__).parents[2] / "src" / "primaldual"
KILLS = int(os.environ.get("PRIMALDUAL_KILLS", "3"))
EPOCHS = 6
OPTIONS = dict(
    dataset="BasicMotions",
    d_model=16,
    depth=1,
    num_heads=2,
    patch_size=10,
    epochs=EPOCHS,
    batch_size=8,
    dropout=0.1,
    threads=1,
)
MEASURED = ("train_seconds", "seconds_per_epoch", "peak_memory_bytes")  # depend on the machine
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def command(output: Path, *extra: str) -> list[str]:
    """``primaldual train`` with OPTIONS into ``output``, as a command line."""
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in OPTIONS.items()]
    return [sys.executable, "-m", "primaldual.cli", "train", *flags, "--output", str(output), *extra]


def config(output: Path, **change: object) -> TrainConfig:
    """The config of :func:`command`, with ``change``."""
    return TrainConfig(**{**OPTIONS, **change}, output=str(output))


def results(output: Path) -> tuple[dict, list[dict[str, float]], dict[str, torch.Tensor]]:
    """metrics.json without measurements of the machine, metrics.csv as numbers, model.safetensors."""
    metrics = {k: v for k, v in json.loads((output / "metrics.json").read_text()).items() if k not in MEASURED}
    with (output / "metrics.csv").open(newline="") as file:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(file)]
    return metrics, rows, load_file(output / "model.safetensors")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run's folder."""
    output = tmp_path_factory.mktemp("reference") / "run"
    train(config(output))
    return output


# ---- checkpoint I/O -------------------------------------------------------------------------------------


def test_checkpoint_io_round_trip_and_refuses_weights_only_false(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    checkpoint = {"state_dict": {"w": torch.randn(3, 2)}, "epoch": 4, "loops": {"a": [1, 2.5, None, "x"]}}
    path = tmp_path / "sub" / "last.ckpt"
    io.save_checkpoint(checkpoint, path)
    loaded = io.load_checkpoint(path)
    assert loaded["epoch"] == 4 and loaded["loops"] == checkpoint["loops"]
    torch.testing.assert_close(loaded["state_dict"]["w"], checkpoint["state_dict"]["w"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="weights_only=True"):
        io.load_checkpoint(path, weights_only=False)
    with pytest.raises(TypeError, match="storage_options"):
        io.save_checkpoint(checkpoint, path, storage_options={"x": 1})


# ---- loading: no code, clear errors -------------------------------------------------------------------


class Payload:
    """Unpickling this would call ``Path.touch`` on a file: the proof that a loader ran code."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "code-ran"
    for name, save in [
        ("zip", lambda p: torch.save({"state_dict": {}, "x": Payload(target)}, p)),
        ("raw pickle", lambda p: p.write_bytes(pickle.dumps({"state_dict": Payload(target)}))),
    ]:
        path = tmp_path / f"{name}.ckpt"
        save(path)
        with pytest.raises(ValueError, match=re.escape(str(path))):
            load_checkpoint(path)
        assert not target.exists(), name


@pytest.mark.parametrize("damage", ["empty", "truncated", "random bytes", "a list", "no state_dict"])
def test_a_damaged_checkpoint_is_named(damage: str, tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.ones(4)}, "epoch": 1}, path)
    data = path.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "random bytes":
        path.write_bytes(random.Random(0).randbytes(500))
    elif damage == "a list":
        torch.save([torch.ones(2)], path)
    else:
        torch.save({"weights": torch.ones(2)}, path)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="nothere.ckpt"):
        load_checkpoint(tmp_path / "nothere.ckpt")


def test_mutated_checkpoints_load_or_raise_value_error(tmp_path: Path) -> None:
    """A fuzz pass: 300 checkpoints with flipped, overwritten or cut bytes."""
    path = tmp_path / "c.ckpt"
    torch.save(
        {
            "state_dict": {"a.weight": torch.randn(4, 3), "a.bias": torch.zeros(4)},
            "epoch": 2,
            "callbacks": {"x": {"rows": [{"epoch": 0, "loss": 1.5}]}},
        },
        path,
    )
    good, rng, outcomes = path.read_bytes(), random.Random(1), set()
    for _ in range(300):
        data = bytearray(good)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data))]
        for _ in range(rng.randint(0, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path.write_bytes(bytes(data))
        try:
            checkpoint = load_checkpoint(path)
            assert isinstance(checkpoint["state_dict"], dict)
            outcomes.add("loaded")
        except ValueError as e:
            assert str(path) in str(e)
            outcomes.add("refused")
    assert outcomes == {"loaded", "refused"}  # the pass reached both ends


def test_state_dict_check_names_keys_and_shapes() -> None:
    model = {"embed.weight": torch.zeros(16, 6), "head.bias": torch.zeros(4), "norm.weight": torch.zeros(16)}
    found = {"embed.weight": torch.zeros(32, 6), "head.bias": torch.zeros(4), "extra": torch.zeros(1)}
    with pytest.raises(ValueError) as error:
        check_state_dict(model, found, "run/model.safetensors")
    message = str(error.value)
    assert "run/model.safetensors" in message and "embed.weight (32, 6) vs (16, 6)" in message
    assert "missing: norm.weight" in message and "unexpected: extra" in message and "head.bias" not in message
    check_state_dict(model, dict(model), "same")  # no error


# ---- real runs: mismatched or damaged files on resume and load -----------------------------------------


def copy_run(reference: Path, tmp_path: Path) -> Path:
    output = tmp_path / "run"
    shutil.copytree(reference, output)
    return output


@pytest.mark.parametrize(
    "change, named",
    [
        ({"d_model": 32}, "d_model: 16 -> 32"),
        ({"attention": "bn"}, "attention: 'softmax' -> 'bn'"),  # same weights, another model
        ({"lr": 0.01}, "lr: 0.001 -> 0.01"),
    ],
)
def test_resume_with_other_options_is_refused_and_names_them(
    change: dict, named: str, reference: Path, tmp_path: Path
) -> None:
    output = copy_run(reference, tmp_path)
    config_text = (output / "config.yaml").read_text()
    with pytest.raises(ValueError, match=re.escape(named)):
        train(config(output, **change), resume=True)
    assert (output / "config.yaml").read_text() == config_text  # refused before anything was written


def test_resume_from_a_checkpoint_of_other_weights_names_the_shapes(reference: Path, tmp_path: Path) -> None:
    """A checkpoint without the stored config (written elsewhere) is still checked on its weights."""
    output = copy_run(reference, tmp_path)
    last = output / "checkpoints" / "last.ckpt"
    checkpoint = load_checkpoint(last)
    del checkpoint["config"]
    torch.save(checkpoint, last)
    with pytest.raises(ValueError, match=r"last.ckpt holds weights of another model configuration.*model\.embed"):
        train(config(output, d_model=32), resume=True)


def test_resume_from_a_damaged_checkpoint_names_it_on_the_command_line(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    output = copy_run(reference, tmp_path)
    last = output / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    status = main(command(output, "--resume")[3:])
    error = capsys.readouterr().err
    assert status == 2 and f"checkpoint {last} is damaged" in error and "Traceback" not in error


def test_load_weights_names_other_configurations_and_damaged_files(reference: Path, tmp_path: Path) -> None:
    trained = TrainConfig.from_yaml(reference / "config.yaml")
    data = load_data(trained)
    weights = reference / "model.safetensors"
    model = load_weights(build_model(trained, data), weights)
    for name, tensor in load_file(weights).items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0)
    other = build_model(config(tmp_path, d_model=32, depth=2), data)
    with pytest.raises(ValueError, match=r"model.safetensors holds weights of another.*vs \(32,.*missing: blocks\.1"):
        load_weights(other, weights)
    damaged = tmp_path / "model.safetensors"
    damaged.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match=re.escape(f"weights file {damaged} is damaged")):
        load_weights(build_model(trained, data), damaged)


# ---- kill and resume ---------------------------------------------------------------------------------


def kill_after(output: Path, checkpoints: int, delay: float) -> None:
    """Start a run, SIGKILL it ``delay`` seconds after its ``checkpoints``-th write of last.ckpt (each atomic
    write is a new file, seen as a new (inode, mtime))."""
    process = subprocess.Popen(command(output), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    last, seen, previous = output / "checkpoints" / "last.ckpt", 0, None
    try:
        while seen < checkpoints:
            assert process.poll() is None, "the run ended before it was killed"
            try:
                stat = last.stat()
                if (stat.st_ino, stat.st_mtime_ns) != previous:
                    seen, previous = seen + 1, (stat.st_ino, stat.st_mtime_ns)
            except FileNotFoundError:
                pass
            time.sleep(0.001)
        time.sleep(delay)
    finally:
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL


@pytest.mark.parametrize("kill", range(KILLS))
def test_killed_run_resumes_to_the_uninterrupted_result(kill: int, reference: Path, tmp_path: Path) -> None:
    """SIGKILL after 1-3 checkpoints plus a random part of an epoch (the first kill: at once, before anything
    written after the checkpoint, such as Lightning's log of that epoch), then resume: the same metrics.json
    (but MEASURED), metrics.csv and weights as the uninterrupted run; the resumed invocation trains exactly the
    epochs after the last checkpoint (no finished epoch lost or repeated) and leaves no temporary file."""
    rng = random.Random(kill)
    checkpoints = rng.randint(1, 3)
    epoch = json.loads((reference / "metrics.json").read_text())["seconds_per_epoch"]
    delay = 0.0 if kill == 0 else rng.uniform(0, epoch)
    output = tmp_path / "run"
    kill_after(output, checkpoints, delay)
    assert not (output / "metrics.json").exists(), "killed after the run had finished"
    finished = load_checkpoint(output / "checkpoints" / "last.ckpt")["epoch"]  # the last complete epoch
    train(config(output), resume=True)

    expected_metrics, expected_rows, expected_weights = results(reference)
    metrics, rows, weights = results(output)
    assert metrics.keys() == expected_metrics.keys()
    for key, expected in expected_metrics.items():
        assert metrics[key] == (pytest.approx(expected, rel=1e-6) if isinstance(expected, float) else expected), key
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS))
    for row, expected in zip(rows, expected_rows):
        assert row == pytest.approx(expected, rel=1e-5, abs=1e-7), (checkpoints, delay)
    assert weights.keys() == expected_weights.keys()
    for name in weights:
        torch.testing.assert_close(weights[name], expected_weights[name], rtol=1e-5, atol=1e-6)
    with (output / "lightning_logs" / "version_1" / "metrics.csv").open(newline="") as file:
        resumed_epochs = {int(r["epoch"]) for r in csv.DictReader(file) if r.get("train_loss")}
    assert resumed_epochs == set(range(finished + 1, EPOCHS)), (finished, checkpoints, delay)
    assert not list(output.rglob("*.tmp"))


# ---- audit --------------------------------------------------------------------------------------------


def test_no_unsafe_deserialisation_in_the_source() -> None:
    """Every torch.load passes weights_only=True; no pickle/yaml.load/eval/exec/allow_pickle anywhere in src."""
    unsafe = re.compile(
        r"pickle\.loads?\(|\bdill\b|cloudpickle|joblib\.load|yaml\.(unsafe_)?load\(|"
        r"allow_pickle\s*=\s*True|(?<![\w.])(eval|exec)\(|weights_only\s*=\s*False(?=\s*[,)])"
    )
    found, loads = [], 0
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        found += [f"{path.name}: {m.group(0)}" for m in unsafe.finditer(text)]
        for call in re.finditer(r"torch\.load\(([^()]|\([^()]*\))*\)", text):
            loads += 1
            if "weights_only=True" not in call.group(0):
                found.append(f"{path.name}: {call.group(0)}")
    assert not found
    assert loads >= 1  # the pattern does see the one torch.load (checkpoints.load_checkpoint)
