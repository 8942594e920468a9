"""primaldual.analysis.plots: every figure is a PNG file."""

import math

import pytest
import torch

from primaldual.analysis import (
    efficiency,
    plot_accuracy,
    plot_attention_maps,
    plot_cost,
    plot_redundancy,
)
from tests.analysis.pngs import is_png


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
