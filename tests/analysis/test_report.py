"""primaldual.analysis.report: the report of finished runs; analysis imports its extras lazily."""

import csv
import json

import pytest
import torch
import yaml
from safetensors.torch import save_file

from primaldual.analysis import (
    efficiency,
    report,
)
from primaldual.models import SequenceClassifier
from primaldual.training.config import TrainConfig
from tests.analysis.pngs import is_png

DATASET = "BasicMotions"  # ships with aeon: 6 channels, 4 classes, length 100


def fake_run(folder, attention, seed, test_accuracy, *, weights=False):
    """A finished run folder in the format of training.run.train (weights: a real model.safetensors)."""
    options = {"window": 2} if attention == "sparse" else {}
    config = TrainConfig(
        dataset=DATASET,
        attention=attention,
        seed=seed,
        d_model=16,
        depth=2,
        num_heads=4,
        epochs=3,
        output=str(folder),
        **options,
    )
    folder.mkdir(parents=True)
    config.to_yaml(folder / "config.yaml")
    metrics = {
        "test_accuracy": test_accuracy,
        "test_loss": 0.9,
        "val_accuracy": test_accuracy - 0.05,
        "monitor": "val_acc",
        "best_epoch": 2,
        "epochs": 3,
        "train_seconds": 1.5,
        "seconds_per_epoch": 0.5,
        "params": 12345,
        "world_size": 1,
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "metrics.csv").write_text(
        "epoch,lr,train_acc,train_loss,val_acc,val_loss\n"
        "0,0.001,0.5,1.2,0.4,1.3\n1,0.001,0.6,1.0,0.5,1.1\n2,0.0005,0.7,0.9,0.6,1.0\n"
    )
    if weights:
        torch.manual_seed(seed)
        model = SequenceClassifier(6, 4, 100, d_model=16, depth=2, num_heads=4, attention=config.attention_options())
        save_file(model.state_dict(), folder / "model.safetensors")


def fake_compare(root, accuracies, *, weights=()):
    """A compare folder: ``accuracies`` {attention: [test accuracy per seed]}, summary.csv as compare writes it."""
    rows = []
    for attention, values in accuracies.items():
        for seed, value in enumerate(values):
            fake_run(root / attention / f"seed{seed}", attention, seed, value, weights=attention in weights)
        rows.append({"attention": attention, "seeds": len(values), "test_acc_mean": 100 * sum(values) / len(values)})
    with open(root / "summary.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def markdown_table(text, header):
    """The rows of the Markdown table whose header line starts with ``header``, as dicts of cell strings."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    names = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(names, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def test_report_from_compare_and_single_run_folders(tmp_path):
    fake_compare(tmp_path / "cmp", {"softmax": [0.80, 0.90], "sh": [0.70, 0.74]}, weights=("sh",))
    fake_run(tmp_path / "single", "bn", 0, 0.85)
    out = tmp_path / "report"
    path = report([tmp_path / "cmp", tmp_path / "single", tmp_path / "cmp"], out, lengths=(16, 32), samples=4)
    assert path == out / "report.md"
    text = path.read_text()
    content = json.loads((out / "report.json").read_text())

    accuracy = {row["attention"]: row for row in markdown_table(text, "| dataset | attention | test acc")}
    assert list(accuracy) == ["softmax", "sh", "bn"]  # the compare's order (summary.csv), then the single run
    assert float(accuracy["softmax"]["test acc (%)"]) == pytest.approx(85.0)
    assert float(accuracy["softmax"]["std"]) == pytest.approx(7.07, abs=0.01)  # sample std of 80, 90
    assert float(accuracy["sh"]["test acc (%)"]) == pytest.approx(72.0)
    assert accuracy["bn"]["std"] == "–" and accuracy["bn"]["seeds"] == "1"
    assert accuracy["softmax"]["peak MB"] == "–"  # fake_run's metrics.json predates peak_memory_bytes
    assert content["accuracy"][2]["test_acc_std"] is None  # strict JSON: no NaN
    assert {r["attention"]: r["test_acc_mean"] for r in content["accuracy"]} == pytest.approx(
        {"softmax": 85.0, "sh": 72.0, "bn": 85.0}
    )
    assert len(markdown_table(text, "| run |")) == len(content["runs"]) == 5  # the repeated folder counts once
    # the same model shapes for every attention: BN adds no product, SH's pooled heads do fewer
    flops = {r["attention"]: r["flops_per_sample"] for r in content["accuracy"]}
    assert flops["bn"] == flops["softmax"] > flops["sh"] > 0
    assert float(accuracy["sh"]["MFLOPs / sample"]) == pytest.approx(flops["sh"] / 1e6, abs=0.01)
    assert all(r["samples_per_second"] > 0 for r in content["accuracy"])

    redundancy = markdown_table(text, "| dataset | attention | layer |")
    assert [(r["attention"], r["layer"], r["runs"]) for r in redundancy] == [
        ("sh", "0", "2"),
        ("sh", "1", "2"),
        ("sh", "all", "2"),
    ]
    assert all(0 < r["l2_distance"] and -1 <= r["cosine_similarity"] <= 1 for r in content["redundancy"])
    assert sum("no model.safetensors" in note for note in content["notes"]) == 3

    flops = markdown_table(text, "| scope | attention | N=16 | N=32 |")
    assert {(r["scope"], r["attention"]) for r in flops} == {
        (s, a) for s in ("core", "layer") for a in ("softmax", "sh", "bn")
    }
    assert [r["N=32"] for r in flops if r["attention"] == "softmax"] == ["1.00", "1.00"]
    figures = content["figures"]
    for name in (figures["accuracy"], figures["cost"], figures["redundancy"], *figures["attention_maps"]):
        assert f"]({name})" in text and is_png(out / name)
    assert figures["attention_maps"] == ["attention_BasicMotions_sh.png"]


def test_report_reads_given_efficiency_rows(tmp_path):
    fake_run(tmp_path / "run", "softmax", 0, 0.5)
    rows = efficiency(
        ["softmax", "linear"], [16], scopes=("core",), dim=8, num_heads=2, warmup=0, repeats=1, output=tmp_path / "eff"
    )
    report([tmp_path / "run"], tmp_path / "out", efficiency=tmp_path / "eff")
    text = (tmp_path / "out" / "report.md").read_text()
    memory = markdown_table(text, "| scope | attention | N=16 |")  # first table: FLOPs; the time table follows
    assert [r["attention"] for r in memory] == ["softmax", "linear"]
    assert "time / softmax, by sequence length" in text and "peak memory / softmax" in text
    assert json.loads((tmp_path / "out" / "report.json").read_text())["efficiency"] == rows


def test_report_rejects_folders_that_are_not_runs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither a compare folder"):
        report([tmp_path / "empty"], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="not found"):
        report([tmp_path / "missing"], tmp_path / "out")
    fake_compare(tmp_path / "cmp", {"softmax": [0.5]})
    with open(tmp_path / "cmp" / "summary.csv", "a") as file:
        file.write("sh,1,50.0\n")
    with pytest.raises(ValueError, match="sh"):
        report([tmp_path / "cmp"], tmp_path / "out")
    fake_run(tmp_path / "bad", "softmax", 0, 0.5)
    (tmp_path / "bad" / "metrics.json").write_text(json.dumps({"test_accuracy": 0.5}))
    with pytest.raises(ValueError, match="lacks"):
        report([tmp_path / "bad"], tmp_path / "out")
    (tmp_path / "bad" / "config.yaml").write_text(yaml.safe_dump({"attention": "nope"}))
    with pytest.raises(ValueError, match="config.yaml"):
        report([tmp_path / "bad"], tmp_path / "out")


def test_head_redundancy_and_efficiency_need_only_the_core_install() -> None:
    """``primaldual.analysis`` imports matplotlib (figures) and the training extra (report) on first use only."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for name in ('matplotlib', 'lightning', 'yaml', 'safetensors'): sys.modules[name] = None  # not installed\n"
        "from primaldual.analysis import attention_weights, efficiency, head_redundancy\n"
        "import primaldual.analysis\n"
        "assert callable(efficiency) and 'primaldual.training' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
