"""The benchmark entry point runs at tiny sizes and writes its files (no timing assertions)."""

import json

import pytest

from benchmarks.attention import main


def test_attention_benchmark_writes_its_table(tmp_path):
    rows = main(
        [
            "--lengths",
            "32",
            "--batch-size",
            "2",
            "--num-heads",
            "4",
            "--head-dim",
            "8",
            "--window",
            "2",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--output",
            str(tmp_path),
        ]
    )
    saved = json.loads((tmp_path / "attention.json").read_text())
    assert saved == json.loads(json.dumps(rows))
    names = {r["attention"] for r in saved}
    assert {"sdpa", "softmax", "bn", "sh", "bn+sh", "plain-softmax", "plain-bn"} <= names
    assert {(r["masked"], r["pass"]) for r in saved} == {
        (m, p) for m in (False, True) for p in ("forward", "forward+backward")
    }
    assert all(r["attention"] != "sdpa" or r["time_ratio"] == 1.0 for r in saved)
    assert all(r["seconds"] > 0 and r["peak_bytes"] is not None for r in saved)
    assert "| sdpa |" in (tmp_path / "attention.md").read_text()


def test_training_step_benchmark_writes_its_table(tmp_path):
    from benchmarks.training_step import main as training_main

    rows = training_main(
        ["--batch-size", "2", "--length", "16", "--warmup", "0", "--repeats", "1", "--output", str(tmp_path)]
    )
    saved = json.loads((tmp_path / "training_step.json").read_text())
    assert saved == json.loads(json.dumps(rows))
    assert {(r["task"], r["attention"]) for r in saved} == {
        (t, a) for t in ("timeseries", "image") for a in ("softmax", "bn", "sh", "bn+sh")
    }
    assert all(r["samples_per_second"] > 0 for r in saved)
    assert [r["time_ratio"] for r in saved if r["attention"] == "softmax"] == [1.0, 1.0]
    assert not any(r["compiled"] for r in saved)
    with pytest.raises(ValueError, match="warmup must be at least 1 with compile"):
        training_main(["--compile", "--warmup", "0", "--output", str(tmp_path)])


def test_attention_benchmark_runs_only_the_named_candidates_beside_sdpa(tmp_path):
    rows = main(
        [
            "--lengths",
            "16",
            "--batch-size",
            "1",
            "--num-heads",
            "2",
            "--head-dim",
            "4",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--no-memory",
            "--attention",
            "bn",
            "plain-bn",
            "--output",
            str(tmp_path),
        ]
    )
    assert {r["attention"] for r in rows} == {"sdpa", "bn", "plain-bn"}


def test_attention_benchmark_names_an_unknown_candidate(tmp_path):
    with pytest.raises(ValueError, match=r"unknown attention \['bm'\]"):
        main(["--lengths", "16", "--attention", "bm", "--output", str(tmp_path)])


def test_scaling_benchmark_writes_ratios_per_length(tmp_path):
    from benchmarks.scaling import main as scaling_main

    rows = scaling_main(
        [
            "--lengths",
            "16",
            "32",
            "--dim",
            "8",
            "--num-heads",
            "2",
            "--depth",
            "1",
            "--repeats",
            "1",
            "--output",
            str(tmp_path),
        ]
    )
    assert json.loads((tmp_path / "scaling.json").read_text()) == json.loads(json.dumps(rows))
    assert {(r["scope"], r["attention"], r["length"]) for r in rows} == {
        (s, a, n) for s in ("layer", "step") for a in ("softmax", "bn", "sh", "bn+sh") for n in (16, 32)
    }
    assert all(r["time_ratio"] == 1.0 for r in rows if r["attention"] == "softmax")
    table = (tmp_path / "scaling.md").read_text()
    assert "| layer | sh |" in table and "N=32" in table
    assert "time / softmax, by sequence length" in table and "time (ms), by sequence length" in table


def test_whole_model_benchmark_writes_ratios_to_the_hosts_own_attention(tmp_path):
    from benchmarks.whole_model import main as whole_main

    rows = whole_main(
        ["--hosts", "nn-encoder", "--lengths", "8", "--repeats", "1", "--warmup", "0", "--compile", "no"]
        + ["--output", str(tmp_path)]
    )
    assert {(r["mode"], r["attention"]) for r in rows} == {
        (mode, impl) for mode in ("inference", "train") for impl in ("sdpa", "softmax", "bn")
    }
    assert all(r["ratio"] == 1.0 for r in rows if r["attention"] == "sdpa")
    assert all(r["seconds"] > 0 for r in rows)
    saved = json.loads((tmp_path / "whole_model.json").read_text())
    assert len(saved) == len(rows)
    assert "| nn-encoder | train | no | bn |" in (tmp_path / "whole_model.md").read_text()


def test_decode_benchmark_writes_both_tables(tmp_path):
    from benchmarks.decode import main as decode_main

    causal, generated = decode_main(
        ["--variants", "sh", "linear", "linear-bn", "--lengths", "16", "--tokens", "4", "--repeats", "1"]
        + ["--exact-max", "8", "--output", str(tmp_path)]
    )
    assert {r["variant"] for r in causal} == {"sdpa", "sh", "linear"}  # linear-bn stops at --exact-max
    assert {r["variant"] for r in generated} == {"sdpa", "sh", "linear", "linear-bn"}
    assert all(r["seconds"] > 0 and r["bytes"] > 0 for r in generated)
    assert len(json.loads((tmp_path / "generate.json").read_text())) == 4
    assert "| sh | 4 |" in (tmp_path / "generate.md").read_text()


def test_timm_convert_sweep_writes_conversions_and_refusals(tmp_path):
    from benchmarks.timm_convert import main as sweep_main

    rows = sweep_main(
        ["--models", "eva02_tiny_patch14_224", "cait_xxs24_224", "--depth", "1", "--output", str(tmp_path)]
    )
    eva, cait = rows
    assert eva["converted"] == 1 and eva["softmax_max_difference"] == 0.0 and eva["variants_finite"]
    assert cait["converted"] == 0 and "TalkingHeadAttn. CaiT's talking-heads attention" in cait["refused"]
    assert (tmp_path / "timm_convert.md").read_text().count("\n") == 4
