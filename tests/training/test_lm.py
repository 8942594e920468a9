"""The ``lm`` task and the language-model benchmark, end to end on a tiny corpus and tiny MQAR cells."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from primaldual.analysis.lm_report import lm_report, paired
from primaldual.data import text
from primaldual.data.language import IGNORE, mqar_cells, mqar_data, text_data
from primaldual.training import TrainConfig, train
from primaldual.training.lm_benchmark import benchmark, cell_accuracy, jobs
from primaldual.training.tasks import build_model, load_data

#: A model of a few thousand parameters (4 heads: SH's factors 1 2 4 8) and a few steps.
TINY = {"d_model": 16, "depth": 1, "num_heads": 4, "mlp_ratio": 2.0, "epochs": 2, "batch_size": 8, "num_val": 8}
TINY_MQAR = {"mqar_pairs": [2, 4], "mqar_lengths": [16, 32], "num_train": 64, "num_test": 8}


def write_corpus(root: Path) -> Path:
    """Documents of English-like bytes under ``root``, at least one in each split (their names decide)."""
    words = b"the model reads every byte of the documentation and predicts the next one "
    found: set[str] = set()
    i = 0
    while len(found) < 3 or i < 12:
        name = f"doc{i}.rst.txt"
        (root / name).write_bytes(words * (3 + i % 4))
        found.add(text.split_of(name))
        i += 1
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def config_of(corpus: Path, output: Path, **options: object) -> TrainConfig:
    base = {"task": "lm", "dataset": "text", "root": str(corpus), "context": 32, "threads": 1, **TINY}
    return TrainConfig.from_dict({**base, "output": str(output), **options})


def test_text_windows_predict_the_next_byte_and_split_by_document(corpus: Path) -> None:
    data = text_data(32, num_val=4, root=corpus)
    assert data.vocab_size == 256 and data.source["package"] == text.PACKAGE
    for split in (data.train, data.test):
        assert split.x.shape[1] == 32 and not split.mask.any()
        assert torch.equal(split.x[:, 1:], split.y[:, :-1])  # the label of a position is the next byte
    assert len(data.val) == 4
    whole = text.windows(text.stream("test", corpus), 32)
    assert torch.equal(data.test.x, whole[:, :-1])  # the test split is every window, in order


def test_mqar_cells_are_right_padded_with_unlabelled_padding() -> None:
    data = mqar_data([2, 4, 16], [16, 32], num_train=30, num_val=2, num_test=3)
    assert data.cells == ((2, 16), (4, 16), (2, 32), (4, 32)) == mqar_cells([2, 4, 16], [16, 32])
    assert data.vocab_size == 1024 and data.max_length == 32
    for c, (pairs, length) in enumerate(data.cells):
        part = data.test.part(data.test.cell == c)
        assert len(part) == 3 and (part.lengths == length).all()
        assert (part.y[part.mask] == IGNORE).all()
        assert ((part.y != IGNORE).sum(1) == pairs).all()  # one query per pair
    with pytest.raises(ValueError, match="no MQAR cell fits"):
        mqar_cells([16], [32])


def test_cell_accuracy_counts_the_queried_values() -> None:
    data = mqar_data([2], [16], num_train=2, num_val=1, num_test=4)

    def oracle(input_ids: torch.Tensor) -> SimpleNamespace:  # knows every answer of the test split
        y = data.test.y[:, : input_ids.shape[1]].clamp_min(0)
        return SimpleNamespace(logits=torch.nn.functional.one_hot(y, data.vocab_size).float())

    oracle.eval = lambda: None  # type: ignore[attr-defined]
    assert cell_accuracy(oracle, data.test, data.cells) == [{"pairs": 2, "length": 16, "accuracy": 1.0, "queries": 8}]


def test_lm_task_trains_saves_resumes_and_generates_with_its_cache(corpus: Path, tmp_path: Path) -> None:
    from transformers import DynamicCache

    from primaldual.integrations.transformers import PrimalDualCache

    config = config_of(corpus, tmp_path / "run", attention="bn+sh", max_train_samples=32)
    metrics = train(config, verbose=False)
    assert metrics["monitor"] == "val_loss" and metrics["epochs"] == 2
    assert metrics["test_bits_per_token"] == pytest.approx(metrics["test_loss"] / math.log(2))
    assert metrics["test_bits_per_token"] < 8  # better than the uniform 8 bits per byte
    with open(tmp_path / "run" / "metrics.csv") as file:
        assert len(list(csv.DictReader(file))) == 2
    model = build_model(config, load_data(config))
    model.load_state_dict(load_file(tmp_path / "run" / "model.safetensors"))  # the saved weights fit the model
    resumed = train(replace(config, epochs=3), resume=True, verbose=False)
    assert resumed["epochs"] == 3
    model.eval()
    prompt = text.stream("test", corpus)[None, :8].long()
    with torch.no_grad():
        plain = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False)
        cache = PrimalDualCache(model)
        cached = model.generate(prompt, cache=cache, max_new_tokens=12, do_sample=False)
    assert torch.equal(plain, cached)
    assert 0 < cache.nbytes() < sum(2 * t.numel() * 4 for t in _dynamic_keys(model, prompt, DynamicCache))


def _dynamic_keys(model: torch.nn.Module, prompt: torch.Tensor, dynamic: type) -> list[torch.Tensor]:
    cache = dynamic(config=model.config)
    with torch.no_grad():
        model.generate(prompt, cache=cache, max_new_tokens=12, do_sample=False)
    return [layer.keys for layer in cache.layers]


def test_lm_benchmark_runs_resumes_and_reports(corpus: Path, tmp_path: Path) -> None:
    output = tmp_path / "lm"
    overrides = {**TINY, **TINY_MQAR, "root": str(corpus), "context": 32, "max_train_samples": 16}
    arguments = dict(variants=("softmax", "sh"), seeds=(0, 1), tokens=(24,), overrides=overrides)
    lines: list[str] = []
    benchmark(output, log=lines.append, **arguments)
    runs, generations = jobs(("mqar", "text"), ("softmax", "sh"), (0, 1), (24,))
    assert len(lines) == len(runs) + len(generations) == 9
    record = json.loads((runs[0].folder(output) / "record.json").read_text())
    assert record["config"]["attention"] == "softmax" and [c["pairs"] for c in record["cells"]] == [2, 4, 2, 4]
    assert len(record["curve"]) == 2 and record["seconds_per_step"] > 0
    again: list[str] = []
    benchmark(output, log=again.append, **arguments)  # everything done: nothing runs again
    assert all(line.endswith("done already") for line in again)
    with pytest.raises(ValueError, match="other options"):
        benchmark(output, log=again.append, **{**arguments, "overrides": {**overrides, "lr": 0.1}})

    summary = lm_report(output, command="primaldual lm", wall_seconds=60.0)
    with open(output / "runs.csv") as file:
        rows = list(csv.DictReader(file))
    text_bits = [r for r in rows if r["dataset"] == "text" and r["metric"] == "test_bits_per_token"]
    assert len(text_bits) == 4
    assert {r["variant"] for r in rows if r["dataset"] == "generation"} == {"sdpa", "softmax", "sh"}
    statistics = json.loads((output / "statistics.json").read_text())
    assert "p" in statistics["text"]["test_bits_per_token"]["sh"]
    assert len(statistics["mqar"]["cells"]) == 4
    assert summary.read_text().count("| softmax") >= 2
    trained = sum(float(r["value"]) for r in rows if r["metric"] == "train_seconds")
    assert 0 < trained == pytest.approx(statistics["train_seconds"])
    assert f"training took {trained / 60:.0f} min in all" in summary.read_text()
    for png in ("curves.png", "mqar.png", "quality-cache.png"):
        assert (output / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_paired_comparison_over_seeds() -> None:
    found = paired({"softmax": {0: 1.0, 1: 2.0, 2: 3.0}, "bn": {0: 1.5, 1: 2.4, 2: 3.7}})
    assert found["bn"]["difference"] == pytest.approx(0.5333333)
    assert 0 < found["bn"]["p"] < 0.05  # differences 0.5, 0.4, 0.7: consistently higher
    assert "p" not in found["softmax"] and found["softmax"]["std"] == pytest.approx(1.0)


def test_an_mqar_offset_moves_the_pairs_and_keeps_the_cells() -> None:
    plain = mqar_data([4], [32], num_train=4, num_val=1, num_test=3)
    moved = mqar_data([4], [32], num_train=4, num_val=1, num_test=3, offset=1)
    assert moved.max_length == 33 and (moved.test.lengths == 33).all()
    assert torch.equal(moved.test.x[:, 1:], plain.test.x) and torch.equal(moved.test.y[:, 1:], plain.test.y)
    assert (moved.test.y[:, 0] == IGNORE).all()
