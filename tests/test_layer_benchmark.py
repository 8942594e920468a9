"""benchmarks.layer and benchmarks.profile_layer run at tiny sizes and write their files (no timing assertions)."""

import json

from benchmarks.layer import main
from benchmarks.profile_layer import main as profile_main


def test_layer_benchmark_writes_ratios_per_shape_mode_and_length(tmp_path):
    rows = main(
        [
            "--shapes",
            "16x2",
            "--lengths",
            "8",
            "12",
            "--modes",
            "train",
            "inference",
            "--tokens",
            "48",
            "--warmup",
            "0",
            "--repeats",
            "1",
            "--clock",
            "process",
            "--output",
            str(tmp_path),
        ]
    )
    assert json.loads((tmp_path / "layer.json").read_text()) == json.loads(json.dumps(rows))
    assert {(r["mode"], r["length"], r["attention"]) for r in rows} == {
        (m, n, a) for m in ("train", "inference") for n in (8, 12) for a in ("softmax", "bn", "sh", "bn+sh")
    }
    assert all(r["time_ratio"] == 1.0 and r["flops_ratio"] == 1.0 for r in rows if r["attention"] == "softmax")
    assert all(r["backend"] == "flash-cpu" for r in rows)
    assert {r["batch_size"] for r in rows} == {6, 4}  # tokens / N
    assert "| 16×2 | train | 8 |" in (tmp_path / "layer.md").read_text()


def test_profile_writes_one_table_per_variant_and_length(tmp_path):
    profile_main(
        [
            "--attention",
            "softmax",
            "sh",
            "--lengths",
            "8",
            "--shape",
            "16x2",
            "--tokens",
            "32",
            "--steps",
            "1",
            "--output",
            str(tmp_path),
        ]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sh-N8.txt", "softmax-N8.txt"]
    assert "aten::" in (tmp_path / "sh-N8.txt").read_text()
