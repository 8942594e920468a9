"""The ``primaldual`` command line: help for every option, one-line errors with status 2, compare's summary."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from primaldual.cli import main
from primaldual.training import TrainConfig


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """``primaldual *argv`` in this process: (exit status, stdout, stderr)."""
    try:
        status = main(argv)
    except SystemExit as exit:  # argparse exits itself for --help and parse errors
        status = exit.code
    out, err = capsys.readouterr()
    return status, out, err


def test_top_level_help_lists_the_commands(capsys: pytest.CaptureFixture) -> None:
    status, out, _ = run(["--help"], capsys)
    assert status == 0 and "train" in out and "compare" in out


@pytest.mark.parametrize("command", ["train", "compare"])
def test_help_explains_every_option(command: str, capsys: pytest.CaptureFixture) -> None:
    status, out, _ = run([command, "--help"], capsys)
    assert status == 0
    text = " ".join(out.split())  # undo argparse's line wrapping
    for field in dataclasses.fields(TrainConfig):
        flag = f"--{field.name.replace('_', '-')}"
        if command == "compare" and field.name == "seed":
            flag = "--seeds"
        assert flag in text, flag
        if not (command == "compare" and field.name in ("attention", "seed", "output")):
            assert " ".join(field.metadata["help"].split()) in text, field.name
    for flag in ["--config", "--resume"] if command == "train" else ["--config"]:
        assert flag in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--attention", "nope"], "invalid choice: 'nope'"),
        (["compare", "--attention", "softmax", "nope"], "invalid choice: 'nope'"),
        (["train", "--epochs", "ten"], "invalid int value: 'ten'"),
        (["train", "--epochs", "0"], "epochs must be >= 1"),
        (["train", "--dropout", "1.5"], "dropout must be in [0, 1)"),
        (["train", "--d-model", "30"], "divisible by num_heads"),
        (["train", "--task", "images"], "invalid choice: 'images'"),
        (["train", "--config", "/nonexistent/c.yaml"], "/nonexistent/c.yaml does not exist"),
        (["compare", "--seeds", "0", "0"], "must not repeat"),
    ],
)
def test_bad_input_prints_one_line_and_exits_2(argv: list[str], message: str, capsys) -> None:
    status, _, err = run(argv, capsys)
    assert status == 2
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err


def test_missing_dataset_and_missing_checkpoint_exit_2(tmp_path: Path, capsys) -> None:
    status, _, err = run(["train", "--dataset", "NoSuchSet", "--output", str(tmp_path / "a")], capsys)
    assert status == 2 and "'NoSuchSet' not found" in err and err.count("\n") == 1
    status, _, err = run(["train", "--resume", "--output", str(tmp_path / "b")], capsys)
    assert status == 2 and "cannot resume" in err and err.count("\n") == 1


def test_unknown_key_in_config_file_exits_2(tmp_path: Path, capsys) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 2\nlearning_rate: 0.1\n")
    status, _, err = run(["train", "--config", str(path)], capsys)
    assert status == 2 and "unknown config option(s): learning_rate" in err


def test_compare_writes_the_summary(tmp_path: Path, capsys) -> None:
    """--config gives the tiny settings; flags override it (epochs 2 over the file's 5)."""
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            dict(
                dataset="BasicMotions",
                d_model=16,
                depth=1,
                num_heads=2,
                epochs=5,
                batch_size=16,
                patch_size=10,
                warmup_epochs=0,
            )
        )
    )
    out = tmp_path / "cmp"
    argv = [
        "compare",
        "--config",
        str(config),
        "--epochs",
        "2",
        "--attention",
        "softmax",
        "sh",
        "--seeds",
        "3",
        "4",
        "--output",
        str(out),
    ]
    status, stdout, err = run(argv, capsys)
    assert status == 0, err
    runs = {
        (v, s): json.loads((out / v / f"seed{s}" / "metrics.json").read_text())
        for v in ("softmax", "sh")
        for s in (3, 4)
    }
    for variant, seed in runs:
        saved = TrainConfig.from_yaml(out / variant / f"seed{seed}" / "config.yaml")
        assert (saved.attention, saved.seed, saved.epochs, saved.d_model, saved.dataset) == (
            variant,
            seed,
            2,
            16,
            "BasicMotions",
        )
    with (out / "summary.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert [r["attention"] for r in rows] == ["softmax", "sh"]
    for row in rows:
        tests = [100 * runs[row["attention"], s]["test_accuracy"] for s in (3, 4)]
        assert int(row["seeds"]) == 2
        assert float(row["test_acc_mean"]) == pytest.approx(sum(tests) / 2)
        assert float(row["test_acc_std"]) == pytest.approx(abs(tests[0] - tests[1]) / 2**0.5)
        assert int(row["params"]) == runs[row["attention"], 3]["params"]
        peaks = [runs[row["attention"], s]["peak_memory_bytes"] / 1e6 for s in (3, 4)]
        assert float(row["peak_memory_mb"]) == pytest.approx(sum(peaks) / 2)
    table = (out / "summary.md").read_text()
    assert table in stdout and table.startswith("BasicMotions: test accuracy (%) of the best-validation epoch")
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(lines) == 3 and lines[1].startswith("| softmax |") and lines[2].startswith("| sh |")
    assert "| s / epoch | peak MB | epochs |" in lines[0]
    assert lines[1].split("|")[6].strip() == f"{float(rows[0]['peak_memory_mb']):.1f}"
    assert "[run 1/4]" in stdout and "[run 4/4]" in stdout
    # compare ends with the report on its runs; `primaldual report` writes the same from the folder
    report = json.loads((out / "report" / "report.json").read_text())
    assert [r["attention"] for r in report["accuracy"]] == ["softmax", "sh"]
    summary_peaks = [float(r["peak_memory_mb"]) for r in rows]
    assert [r["peak_memory_mb"] for r in report["accuracy"]] == pytest.approx(summary_peaks)
    assert {r["attention"] for r in report["redundancy"]} == {"softmax", "sh"}
    assert f"report: {out / 'report' / 'report.md'}" in stdout
    status, stdout, err = run(["report", str(out), "--output", str(tmp_path / "again"), "--lengths", "64"], capsys)
    assert status == 0, err
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    untimed = [
        [{k: v for k, v in row.items() if k != "samples_per_second"} for row in r["accuracy"]] for r in (again, report)
    ]
    assert untimed[0] == untimed[1]
    assert {r["length"] for r in again["efficiency"]} == {64}


def test_report_of_a_folder_without_runs_exits_2(tmp_path: Path, capsys) -> None:
    status, _, err = run(["report", str(tmp_path)], capsys)
    assert status == 2 and str(tmp_path) in err and "neither a compare folder" in err


# The smallest BasicMotions model the compare tests train (seconds per run).
TINY_RUN = [
    *("--dataset", "BasicMotions", "--d-model", "8", "--depth", "1", "--num-heads", "2"),
    *("--batch-size", "16", "--patch-size", "20", "--warmup-epochs", "0"),
]


def test_compare_again_reuses_finished_runs_and_refuses_other_options(tmp_path: Path, capsys, monkeypatch) -> None:
    """Two compares over disjoint seeds into one folder, then one over both: it trains nothing and summarises
    all four runs; a finished run with other options is refused by name."""
    out = tmp_path / "cmp"
    tiny = [*TINY_RUN, "--epochs", "1", "--no-report", "--output", str(out), "--attention", "softmax", "bn"]
    for seed in ("0", "1"):
        status, _, err = run(["compare", *tiny, "--seeds", seed, "--threads", "1"], capsys)
        assert status == 0, err
    metrics = {
        (v, s): json.loads((out / v / f"seed{s}" / "metrics.json").read_text())
        for v in ("softmax", "bn")
        for s in (0, 1)
    }

    import primaldual.training.run as run_module

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(run_module, "train", no_training)
    status, stdout, err = run(["compare", *tiny, "--seeds", "0", "1"], capsys)
    assert status == 0, err
    assert stdout.count("finished already: reusing") == 4
    with (out / "summary.csv").open(newline="") as file:
        rows = {r["attention"]: r for r in csv.DictReader(file)}
    for variant in ("softmax", "bn"):
        tests = [100 * metrics[variant, s]["test_accuracy"] for s in (0, 1)]
        assert int(rows[variant]["seeds"]) == 2
        assert float(rows[variant]["test_acc_mean"]) == pytest.approx(sum(tests) / 2)
    status, _, err = run(["compare", *tiny, "--seeds", "0", "--lr", "0.01"], capsys)
    assert status == 2 and str(out / "softmax" / "seed0") in err and "lr: 0.001 -> 0.01" in err


def test_compare_continues_an_interrupted_run(tmp_path: Path, capsys) -> None:
    """A run folder with checkpoints but no metrics.json (killed) is resumed to the compare's epochs."""
    out = tmp_path / "cmp"
    tiny = [*TINY_RUN, "--output", str(out / "softmax" / "seed0")]
    assert run(["train", *tiny, "--epochs", "1"], capsys)[0] == 0
    (out / "softmax" / "seed0" / "metrics.json").unlink()  # as if killed after its last checkpoint
    tiny[-2:] = ["--output", str(out)]
    status, stdout, err = run(
        ["compare", *tiny, "--epochs", "2", "--attention", "softmax", "--seeds", "0", "--no-report"], capsys
    )
    assert status == 0, err
    assert "interrupted: continuing from" in stdout
    assert json.loads((out / "softmax" / "seed0" / "metrics.json").read_text())["epochs"] == 2
