"""primaldual.analysis.efficiency: FLOPs, peak memory and time against softmax."""

import csv
import json

import pytest
import torch

from primaldual.analysis import (
    efficiency,
)
from primaldual.analysis.efficiency import model_cost, peak_bytes


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


@pytest.mark.parametrize("grid", [(16, 16), (15, 17)])
def test_grid_sh_flops_ratio_is_mean_inverse_scale(grid):
    """Grid SH on a patch grid (and one a class token before it): the attention FLOPs against softmax's are
    mean(1/r) = 0.46875 for factors (1, 2, 4, 8) when the windows tile the grid (16×16), and the border windows'
    ceil counts on a grid they do not tile (15×17), ``Σ_h (1 + ⌈rows/a_h⌉⌈cols/b_h⌉) / (H·N)``."""
    import math

    from primaldual.analysis.efficiency import _flops
    from primaldual.functional import attention
    from primaldual.functional.transforms import grid_window

    scales, n = (1, 2, 4, 8), 1 + grid[0] * grid[1]
    q, k, v = (torch.randn(1, 4, n, 8) for _ in range(3))

    def flops(variant, **options):  # the benchmark's counter (CPU SDPA counted as its two products)
        return _flops(lambda: attention(q, k, v, variant, num_prefix_tokens=1, **options))

    ratio = flops("sh", scales=scales, grid=grid) / flops("softmax")
    keys = [1 + math.ceil(grid[0] / a) * math.ceil(grid[1] / b) for a, b in map(grid_window, scales)]
    assert ratio == pytest.approx(sum(keys) / (4 * n), rel=1e-12)
    if grid == (16, 16):
        assert ratio == pytest.approx(sum(1 + 256 / r for r in scales) / (4 * 257), rel=1e-12)
        # mean(1/r), plus the class token's one key per head: mean(1 - 1/r) / 257
        assert ratio == pytest.approx(0.46875 + (1 - 0.46875) / 257, rel=1e-12)
