"""The UEA benchmark on two tiny synthetic sets: jobs, records, resume, both protocols, MiniRocket, statistics."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from primaldual.analysis.benchmark_report import benchmark_report, head_measure, run_rows, wilcoxon_tests
from primaldual.data.uea import multivariate_sets
from primaldual.training.benchmark import (
    Job,
    benchmark,
    dataset_config,
    fit,
    jobs,
    load,
    protocol_accuracies,
)
from primaldual.training.epochs import EpochEvaluation

#: A model of a few hundred parameters trained for 3 epochs: seconds per run.
TINY = {"d_model": 8, "depth": 1, "num_heads": 4, "mlp_ratio": 1.0, "epochs": 3, "batch_size": 8}


def write_toy(root: Path, name: str, shift: float, n_per_class: int = 6, length: int = 16) -> None:
    """Two classes of 2-channel series (class b shifted by ``shift``) in ``root/name/name_{TRAIN,TEST}.ts``."""
    rng = np.random.default_rng(len(name))
    folder = root / name
    folder.mkdir(parents=True)
    for split in ("TRAIN", "TEST"):
        rows = []
        for label, offset in (("a", 0.0), ("b", shift)):
            for _ in range(n_per_class):
                channels = rng.normal(offset, 1.0, size=(2, length)).round(3)
                rows.append(":".join(",".join(map(str, c)) for c in channels) + f":{label}")
        header = f"@problemName {name}\n@univariate false\n@equalLength true\n@classLabel true a b\n@data\n"
        (folder / f"{name}_{split}.ts").write_text(header + "\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("uea")
    write_toy(root, "ToyA", 1.0)
    write_toy(root, "ToyB", 0.5)
    return root


def test_multivariate_sets_of_a_root_and_bundled(root: Path) -> None:
    assert multivariate_sets(root) == ["ToyA", "ToyB"]
    bundled = multivariate_sets()
    assert {"JapaneseVowels", "BasicMotions"} <= set(bundled) and "GunPoint" not in bundled


def test_epoch_evaluation_records_without_changing_training(root: Path) -> None:
    data = load("ToyA", str(root))
    config = dataset_config("ToyA", data, "bn+sh", 0, {**TINY, "jitter": 0.3, "dropout": 0.3}, str(root))
    with_record, record, _ = fit(config, data, data.train, {"test": data.test})
    without, _, _ = fit(config, data, data.train, {})
    for a, b in zip(with_record.parameters(), without.parameters()):
        assert torch.equal(a, b)  # the per-epoch test evaluation draws no random number and trains nothing
    assert len(record.curve("test")) == TINY["epochs"] and all(0 <= a <= 1 for a in record.curve("test"))
    with pytest.raises(KeyError, match="test"):
        EpochEvaluation({"test": data.test}).curve("val")


def test_train_only_indexes_the_test_curve_at_the_cross_validated_epoch() -> None:
    cv = [[0.5, 0.8, 0.8, 0.6], [0.5, 0.7, 0.9, 0.6]]  # mean best at epoch 2 (0-based)
    test = [0.9, 0.1, 0.4, 0.95]
    result = protocol_accuracies(cv, test)
    assert result["train_only_epoch"] == 2 and result["train-only"] == 0.4
    assert result["test_selected_epoch"] == 3 and result["test-selected"] == 0.95
    # the test accuracy of any other epoch never moves the train-only figure
    for other in ([0.0, 0.0, 0.4, 0.0], [1.0, 1.0, 0.4, 1.0]):
        assert protocol_accuracies(cv, other)["train-only"] == 0.4
    assert protocol_accuracies([[0.5, 0.7, 0.7]], [0.1, 0.2, 0.3])["train_only_epoch"] == 2  # latest on ties
    with pytest.raises(ValueError, match="epochs"):
        protocol_accuracies(cv, test[:3])


def test_jobs_cover_folds_seeds_and_baselines() -> None:
    found = jobs(["A"], ["softmax", "bn"], [0, 1, 2], folds=3)
    assert sum(j.kind == "cv" for j in found) == 6 and sum(j.kind == "seed" for j in found) == 9
    assert Job("A", "minirocket", "seed", 1) in found
    both = jobs(["A"], ["softmax"], [0], folds=2, baselines=("minirocket", "multirockethydra"))
    assert Job("A", "multirockethydra", "seed", 0) in both
    with pytest.raises(ValueError, match="folds"):
        jobs(["A"], ["softmax"], [0], folds=1)
    with pytest.raises(ValueError, match="baselines"):
        jobs(["A"], ["softmax"], [0], folds=2, baselines=("rocket",))


def test_benchmark_end_to_end_resumes_and_reports(root: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    arguments = {"folds": 2, "root": str(root), "overrides": TINY, "measure": head_measure, "log": lines.append}
    benchmark(["ToyA", "ToyB"], ["softmax", "bn"], [0, 1], tmp_path, **arguments)
    assert len(lines) == 2 * (2 * 2 + 2 * 2 + 2) and not any("done already" in line for line in lines)
    lines.clear()
    benchmark(["ToyA", "ToyB"], ["softmax", "bn"], [0, 1], tmp_path, **arguments)  # resumed: nothing to do
    assert all("done already" in line for line in lines)

    benchmark_report(tmp_path, command="test", wall_seconds=1.0)
    with open(tmp_path / "runs.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    protocols = {(r["method"], r["protocol"]) for r in rows}
    assert protocols == {
        ("softmax", "train-only"),
        ("softmax", "test-selected"),
        ("bn", "train-only"),
        ("bn", "test-selected"),
        ("minirocket", "untuned"),
    }
    assert len(rows) == 2 * (2 * 2 * 2 + 2)
    transformer = next(r for r in rows if r["method"] == "bn")
    assert float(transformer["head_l2_distance"]) >= 0 and int(transformer["params"]) > 0
    for row in rows:
        if row["protocol"] == "test-selected":  # the upper bound is never below the train-only figure
            train_only = next(
                r
                for r in rows
                if r["protocol"] == "train-only"
                and (r["dataset"], r["method"], r["seed"]) == (row["dataset"], row["method"], row["seed"])
            )
            assert float(row["test_accuracy"]) >= float(train_only["test_accuracy"])
    statistics = json.loads((tmp_path / "statistics.json").read_text())
    assert {(t["protocol"], t["method"]) for t in statistics["wilcoxon"]} == {
        (p, m) for p in ("train-only", "test-selected") for m in ("bn", "minirocket")
    }
    assert all(t["datasets"] == 2 and t["runs"] == 4 for t in statistics["wilcoxon"])
    assert (tmp_path / "cd-train-only.png").stat().st_size > 0 and (tmp_path / "cd-test-selected.png").is_file()
    summary = (tmp_path / "summary.md").read_text()
    assert "## train-only" in summary and "## test-selected" in summary and "upper bound" in summary
    assert "## bn" in (tmp_path / "claims.md").read_text()

    with pytest.raises(ValueError, match="other options"):  # a record made with other options is not mixed in
        benchmark(["ToyA"], ["softmax"], [0], tmp_path, **{**arguments, "overrides": {**TINY, "epochs": 2}})


def test_wilcoxon_is_undefined_when_nothing_differs() -> None:
    rows = [
        {"dataset": d, "method": m, "seed": 0, "protocol": p, "test_accuracy": 50.0}
        for d in ("A", "B")
        for m in ("softmax", "bn")
        for p in ("train-only", "test-selected")
    ]
    summary = [
        {"dataset": d, "method": m, "protocol": p, "mean": 50.0}
        for d in ("A", "B")
        for m in ("softmax", "bn")
        for p in ("train-only", "test-selected")
    ]
    assert all(np.isnan(t["p_datasets"]) and t["ties"] == 2 for t in wilcoxon_tests(rows, summary))


def test_run_rows_wait_for_every_fold() -> None:
    seed = {"dataset": "A", "method": "bn", "kind": "seed", "index": 0, "test_acc": [0.5, 0.6], "seconds": 1.0}
    fold = {"dataset": "A", "method": "bn", "kind": "cv", "index": 0, "folds": 2, "val_acc": [0.5, 0.7]}
    assert run_rows([seed, fold]) == []  # one of two folds: train-only has no epoch yet
    assert len(run_rows([seed, fold, {**fold, "index": 1}])) == 2


def test_cli_bad_benchmark_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from primaldual.cli import main

    assert main(["benchmark", "--datasets", "ToyA", "--folds", "1", "--output", str(tmp_path)]) == 2
    assert "folds must be >= 2" in capsys.readouterr().err


def test_a_dataset_with_unfinished_runs_is_left_out_of_the_statistics() -> None:
    from primaldual.analysis.benchmark_report import split_complete

    rows = [
        {"dataset": d, "method": m, "protocol": "train-only", "seed": s}
        for d in ("A", "B")
        for m in ("softmax", "bn")
        for s in range(3)
    ]
    rows = [r for r in rows if not (r["dataset"] == "B" and r["method"] == "bn" and r["seed"] == 2)]
    complete, incomplete = split_complete(rows)
    assert incomplete == ["B"] and {r["dataset"] for r in complete} == {"A"}
