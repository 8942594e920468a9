"""primaldual.analysis: explicit weights, head redundancy, efficiency, plots and the run report."""

import copy
import csv
import json
import math

import pytest
import torch
import yaml
from safetensors.torch import save_file

from primaldual import Attention
from primaldual.analysis import (
    attention_records,
    attention_weights,
    efficiency,
    head_redundancy,
    plot_accuracy,
    plot_attention_maps,
    plot_cost,
    plot_redundancy,
    record_attention,
    report,
)
from primaldual.analysis.efficiency import model_cost, peak_bytes
from primaldual.functional import VARIANTS
from primaldual.models import SequenceClassifier
from primaldual.training.config import TrainConfig
from tests import tolerances as T

PNG = b"\x89PNG\r\n\x1a\n"
OPTIONS = {"sparse": {"window": 2}}


def values_of(layer, x):
    """v ``(B, H, N, hd)`` exactly as Attention.forward splits its qkv projection."""
    b, n, _ = x.shape
    return layer.qkv(x).view(b, n, 3, layer.num_heads, layer.head_dim).permute(2, 0, 3, 1, 4)[2]


def padding(b=3, n=13):
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask[1, 9:] = True
    mask[2, 4] = True  # a hole inside an SH window
    return mask


# --- weights ----------------------------------------------------------------------------------------------------

CASES = [(v, OPTIONS.get(v, {})) for v in VARIANTS] + [
    ("sh", {"scales": (1, 2, 1, 2)}),  # every other head one group (transforms.head_split)
    ("sh", {"scales": (1, 3, 4, 8), "num_prefix_tokens": 1}),
    ("bn+sh", {"scales": (2, 2, 4, 1), "num_prefix_tokens": 2}),
    ("linear-sh", {"scales": (4, 1, 4, 1), "num_prefix_tokens": 1}),
    ("softmax", {"causal": True}),
    ("bn", {"causal": True}),
    ("sparse", {"window": 1, "causal": True}),
]


@pytest.mark.parametrize("variant, options", CASES, ids=[f"{v}-{sorted(o)}" for v, o in CASES])
@pytest.mark.parametrize("masked", [False, True])
def test_weights_times_values_equal_layer_output(variant, options, masked):
    torch.manual_seed(0)
    layer = Attention(32, 4, variant=variant, **options).double()
    x = torch.randn(3, 13, 32, dtype=torch.float64)
    mask = padding() if masked else None
    with record_attention(layer) as records, T.RecordLayerSizes() as sizes:
        layer(x, key_padding_mask=mask)
    (record,) = records
    weights = record.weights()
    assert weights.shape == (3, 4, 13, 13)
    # two float64 evaluations of one attention (explicit weights, the fast path): tests/tolerances.py's law
    law = dict(
        head_dim=8,
        length=13,
        rounded_inputs=T.rounded_inputs(layer.options.spec.kernel, layer.options.spec.bn, layer.options.spec.pooled),
    )
    values = values_of(layer, x)
    atol = T.attention_atol(torch.float64, sizes.size, T.output_scale(record.heads, values), **law)
    T.assert_close_normwise(weights @ values, record.heads, atol, "weights @ values")
    # per-sample statistics: a sample alone is the same, up to the law on weights (scale 1)
    T.assert_close_normwise(
        record.weights(2), weights[2:], T.attention_atol(torch.float64, sizes.size, 1.0, **law), "sample alone"
    )
    if masked:
        assert (weights.masked_select(mask[:, None, None, :]) == 0).all()  # no weight on a padded key
    rows = weights.sum(-1)[record.valid_queries()[:, None, :].expand(-1, 4, -1)]
    # distributions over the original keys: 13 weights in [0, 1], each rounded, summed
    T.assert_close_normwise(rows, torch.ones_like(rows), T.range_atol(torch.float64, 13, 1.0), "sum of weights")


def test_pooled_weight_is_spread_over_the_valid_keys_of_its_window():
    # keys all 0: the pooled softmax is uniform over the windows [0..3] and [4, 5]; key 1 is padding
    q, k = torch.randn(1, 1, 2, 3, dtype=torch.float64), torch.zeros(1, 1, 6, 3, dtype=torch.float64)
    mask = torch.tensor([[False, True, False, False, False, False]])
    weights = attention_weights(q, k, "sh", key_padding_mask=mask, scales=(4,))
    expected = torch.tensor([0.5 / 3, 0, 0.5 / 3, 0.5 / 3, 0.25, 0.25], dtype=torch.float64)
    # scores exactly 0 (S = 0): the law's roundings of the weights and their sums, scale 1
    atol = T.attention_atol(torch.float64, 0.0, 1.0, head_dim=3, length=6, rounded_inputs=1)
    T.assert_close_normwise(weights[0, 0], expected.expand(2, 6), atol, "spread")


def test_weights_reject_bad_options():
    q = torch.randn(1, 2, 4, 3)
    with pytest.raises(ValueError, match="scales"):
        attention_weights(q, q, "sh")
    with pytest.raises(ValueError, match="window"):
        attention_weights(q, q, "softmax", window=2)
    with pytest.raises(ValueError, match="causal"):
        attention_weights(q, q, "linear", causal=True)
    with pytest.raises(ValueError, match="unknown variant"):
        attention_weights(q, q, "nope")


# --- hooks and redundancy ---------------------------------------------------------------------------------------


def classifier(variant="softmax", heads=4, **options):
    torch.manual_seed(0)
    return SequenceClassifier(
        3,
        2,
        13,
        d_model=16,
        depth=2,
        num_heads=heads,
        attention=variant,
        attention_options={**OPTIONS.get(variant, {}), **options},
    )


def sequences():
    torch.manual_seed(1)
    return torch.randn(3, 13, 3), padding()


def no_hooks(model):
    return all(not (m._forward_hooks or m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_hooks_leave_outputs_bit_identical_and_are_removed(variant):
    model = classifier(variant).eval()
    x, mask = sequences()
    expected = model(x, mask)
    with record_attention(model) as records:
        out = model(x, mask)
        assert not no_hooks(model)
    assert torch.equal(out, expected)
    assert [r.name for r in records] == ["blocks.0.attn", "blocks.1.attn"]
    assert torch.equal(records[0].key_padding_mask, mask)
    assert no_hooks(model)


def test_redundancy_restores_modes_and_removes_hooks():
    model = classifier("bn+sh")
    model.blocks[1].eval()  # a mixed state must come back as it was
    modes = [m.training for m in model.modules()]
    head_redundancy(model, sequences())
    assert [m.training for m in model.modules()] == modes
    assert no_hooks(model)


def make_heads_identical(model):
    """Every head of every layer becomes a copy of head 0: its q, k, v rows of the qkv projection."""
    with torch.no_grad():
        for block in model.blocks:
            attn = block.attn
            d = attn.head_dim
            for part in (attn.qkv.weight, attn.qkv.bias):
                rows = part.view(3, attn.num_heads, d, *part.shape[1:])
                rows.copy_(rows[:, :1].expand_as(rows).clone())
    return model


@pytest.mark.parametrize(
    "variant, options",
    [
        ("softmax", {}),
        ("bn", {}),
        ("linear", {}),
        ("sparse", {}),
        ("sh", {"scales": (2, 2, 2, 2)}),
        ("bn+sh", {"scales": (4, 4, 4, 4)}),
        ("linear-bn+sh", {"scales": (2, 2, 2, 2)}),
    ],
)
def test_identical_heads_have_zero_distance_and_cosine_one_distinct_heads_do_not(variant, options):
    batch = sequences()
    copies = head_redundancy(make_heads_identical(classifier(variant, **options)), batch)
    distinct = head_redundancy(classifier(variant, **options), batch)
    assert len(copies["layers"]) == 2
    pairs = int((~batch[1]).sum()) * 6  # valid queries x pairs of 4 heads
    for row in copies["layers"]:
        # exact: identical heads are the same operations on the same numbers
        assert row["l2_distance"] == 0
        # Σ_d â_d² of a row normalised in float32 (4 features: 2·(4 + 2)·eps), then a float32 mean of the pairs
        atol = 2 * (4 + 2) * T.eps(torch.float32) + T.sum_atol(torch.float32, pairs, 1.0)
        assert abs(row["cosine_similarity"] - 1.0) <= atol
    for row in distinct["layers"]:
        assert row["l2_distance"] > 1e-3
        assert row["cosine_similarity"] < 0.99
    assert distinct["l2_distance"] > copies["l2_distance"] + 1e-3


def test_redundancy_is_the_mean_over_valid_queries_and_pairs_of_heads():
    model = classifier("sh", heads=4)
    x, mask = sequences()
    result = head_redundancy(model, (x, mask, torch.zeros(3)))  # labels are ignored
    with T.RecordLayerSizes() as sizes:
        records = attention_records(model, (x, mask))
    for row, record in zip(result["layers"], records):
        w, out = record.weights(), record.heads
        distances, cosines = [], []
        for b in range(3):
            for i in range(13):
                if mask[b, i]:
                    continue
                for h in range(4):
                    for g in range(h + 1, 4):
                        distances.append((w[b, h, i] - w[b, g, i]).norm().item())
                        cosines.append(torch.cosine_similarity(out[b, h, i], out[b, g, i], dim=0).item())
        # float32 throughout. A weight of a sample's recomputation is within the law (scale 1) of the batch's;
        # a distance, a 13-term norm, moves by √13 times that plus 2·(13 + 2)·eps of itself, a cosine by 2·(4 + 2)·eps;
        # the library's mean of n of them by n·eps of their mean magnitude (Higham's γ_n), the test's float64 one
        # by nothing that matters.
        n, eps32 = len(distances), T.eps(torch.float32)
        weight = T.attention_atol(torch.float32, sizes.size, 1.0, head_dim=4, length=13, rounded_inputs=1)
        mean_distance, mean_cosine = sum(distances) / n, sum(cosines) / n
        atol = 2 * math.sqrt(13) * weight + 2 * (13 + 2) * eps32 * max(distances) + n * eps32 * mean_distance
        assert abs(row["l2_distance"] - mean_distance) <= atol
        atol = 2 * (4 + 2) * eps32 + n * eps32 * (sum(abs(c) for c in cosines) / n)
        assert abs(row["cosine_similarity"] - mean_cosine) <= atol
    # exact: statistics.fmean of two floats is their correctly rounded sum halved, as (a + b) / 2 is
    assert result["l2_distance"] == sum(r["l2_distance"] for r in result["layers"]) / 2


def test_redundancy_of_converted_timm_vit_uses_timms_own_weights():
    from timm.models.vision_transformer import VisionTransformer

    from primaldual import convert

    torch.manual_seed(0)
    vit = VisionTransformer(
        img_size=16, patch_size=4, in_chans=1, num_classes=3, embed_dim=32, depth=2, num_heads=4
    ).eval()
    images = torch.randn(2, 1, 16, 16)
    timm_weights, handles = [], []
    for block in vit.blocks:  # timm's explicit path applies attn_drop to its softmax weights: record them
        block.attn.fused_attn = False
        handles.append(block.attn.attn_drop.register_forward_hook(lambda m, a, out: timm_weights.append(out)))
    expected = vit(images)
    for handle in handles:
        handle.remove()
    sh = convert(copy.deepcopy(vit), "sh", scales=(1, 2, 4, 8))
    timm = copy.deepcopy(vit)
    ours = convert(vit, "softmax")
    with T.RecordLayerSizes() as sizes:
        records = attention_records(ours, images)
    assert len(records) == 2
    # timm's explicit float32 path against ours: tests/tolerances.py's network law for each compared tensor
    for i, (record, theirs) in enumerate(zip(records, timm_weights)):

        def weights_of(model, i=i):
            seen = []
            handle = model.blocks[i].attn.attn_drop.register_forward_hook(lambda m, a, out: seen.append(out))
            model(images)
            handle.remove()
            return seen[0]

        atol = T.network_atol(torch.float32, timm, weights_of, size=sizes.size, length=17)
        T.assert_close_normwise(record.weights(), theirs, atol, f"layer {i} weights")
    atol = T.network_atol(torch.float32, timm, lambda m: m(images), size=sizes.size, length=17)
    T.assert_close_normwise(ours(images), expected, atol, "logits")
    result = head_redundancy(sh, images)
    assert [r["attention"] for r in result["layers"]] == ["sh", "sh"]
    assert all(r["l2_distance"] > 0 and math.isfinite(r["cosine_similarity"]) for r in result["layers"])
    assert attention_records(sh, images)[0].layer.options.num_prefix_tokens == 1


def test_redundancy_needs_attention_layers_and_a_batch():
    with pytest.raises(ValueError, match="no primaldual.Attention"):
        head_redundancy(torch.nn.Linear(3, 3), torch.randn(2, 3))
    with pytest.raises(TypeError, match="batch must be"):
        head_redundancy(classifier(), {"x": torch.randn(1, 13, 3)})


# --- efficiency -------------------------------------------------------------------------------------------------


def test_softmax_against_itself_and_its_flop_count(tmp_path):
    rows = efficiency(
        ["softmax"], [32], batch_size=2, dim=16, num_heads=2, depth=1, warmup=1, repeats=2, output=tmp_path
    )
    assert [(r["scope"], r["attention"]) for r in rows] == [(s, "softmax") for s in ("core", "layer", "step")]
    for row in rows:
        assert row["flops_ratio"] == 1.0 and row["memory_ratio"] == 1.0 and row["time_ratio"] == 1.0
        assert row["peak_bytes"] > 0 and row["seconds"] > 0
    core = 2 * 2 * 2 * (2 * 32 * 32 * 8)  # B·H·(q kᵀ and w v), each N·N·hd multiply-adds of 2 FLOPs
    projections = 2 * 2 * 32 * 16 * (3 * 16 + 16)  # qkv and output projections of (B·N) tokens
    assert rows[0]["flops"] == core
    assert rows[1]["flops"] == core + projections
    saved = json.loads((tmp_path / "efficiency.json").read_text())
    assert saved == rows
    with open(tmp_path / "efficiency.csv", newline="") as file:
        assert [r["scope"] for r in csv.DictReader(file)] == ["core", "layer", "step"]


def test_sh_flops_ratio_matches_mean_inverse_scale():
    # docs/theory.md: the attention FLOPs of (1, 2, 4, 8) fall to mean(1/r) = 0.47; 1001 has partial windows
    core = efficiency(["sh", "bn+sh"], [256, 1001, 4096], scopes=("core",), measure=("flops",), dim=8, num_heads=4)
    for row in core:
        assert row["peak_bytes"] is None and row["seconds"] is None
        if row["attention"] != "softmax":
            assert row["analytic_flops_ratio"] == pytest.approx(0.46875)
            assert row["flops_ratio"] == pytest.approx(0.47, rel=0.05)
    layer = efficiency(["sh", "linear"], [64, 256], scopes=("layer",), measure=("flops",), dim=8, num_heads=4)
    sh = [r["flops_ratio"] for r in layer if r["attention"] == "sh"]
    assert 0.47 < sh[1] < sh[0] < 1  # the projections cost every variant the same: the whole layer saves less
    assert all(r["analytic_flops_ratio"] is None for r in layer)
    linear = [r["flops_ratio"] for r in layer if r["attention"] == "linear"]
    assert linear[1] < linear[0] < 1  # linear in N against quadratic


def test_cpu_peak_memory_sees_every_live_tensor():
    def three_live_megabytes():  # a, b, c live together (3 MB); d is made after a and b are freed (4 MB in all)
        a, b = torch.ones(250_000), torch.ones(250_000)
        c = a + b
        del a, b
        d = c * 2
        return d.sum()

    assert 3_000_000 <= peak_bytes(three_live_megabytes, torch.device("cpu")) < 3_100_000


def test_model_cost_counts_one_samples_forward_and_times_the_batch():
    """A Linear(8, 16) forward is 2·8·16 FLOPs per sample whatever the batch; a model twice as deep, twice that."""
    shallow = torch.nn.Linear(8, 16)
    deep = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 8), torch.nn.Linear(8, 16))
    deep.train()
    cost = model_cost({"shallow": shallow, "deep": deep}, (torch.randn(32, 8),), warmup=0, repeats=2)
    assert cost["shallow"]["flops_per_sample"] == 2 * 8 * 16
    assert cost["deep"]["flops_per_sample"] == 3 * 2 * 8 * 16
    assert all(c["samples_per_second"] > 0 for c in cost.values())
    assert not deep.training
    with pytest.raises(ValueError, match="repeats"):
        model_cost({"shallow": shallow}, (torch.randn(2, 8),), repeats=0)


def test_efficiency_rejects_bad_arguments():
    with pytest.raises(ValueError, match="scopes"):
        efficiency(["sh"], [16], scopes=("kernel",))
    with pytest.raises(ValueError, match="lengths"):
        efficiency(["sh"], [0])
    with pytest.raises(ValueError, match="unknown variant"):
        efficiency(["fast"], [16])


# --- plots ------------------------------------------------------------------------------------------------------


def is_png(path):
    return path.is_file() and path.stat().st_size > len(PNG) and path.read_bytes()[:8] == PNG


def test_plots_write_png(tmp_path):
    weights = torch.softmax(torch.randn(3, 6, 6), -1)
    assert is_png(plot_attention_maps(weights, tmp_path / "maps.png", title="t"))
    redundancy = [
        {"attention": a, "layer": i, "l2_distance": 0.1 * i, "cosine_similarity": 0.5}
        for a in ("softmax", "sh")
        for i in range(2)
    ]
    assert is_png(plot_redundancy(redundancy, tmp_path / "redundancy.png"))
    cost = efficiency(["sh"], [16, 32], scopes=("core",), measure=("flops",), dim=8, num_heads=2)
    assert is_png(plot_cost(cost, tmp_path / "cost.png"))
    accuracy = [
        {"attention": "softmax", "test_acc_mean": 80.0, "test_acc_std": 1.5},
        {"attention": "sh", "test_acc_mean": 79.0, "test_acc_std": math.nan},
    ]
    assert is_png(plot_accuracy(accuracy, tmp_path / "sub" / "accuracy.png"))
    with pytest.raises(ValueError, match="test_acc_std"):
        plot_accuracy([{"attention": "sh", "test_acc_mean": 1.0}], tmp_path / "x.png")
    with pytest.raises(ValueError, match="heads, queries, keys"):
        plot_attention_maps(weights[0], tmp_path / "y.png")


# --- report -----------------------------------------------------------------------------------------------------

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
