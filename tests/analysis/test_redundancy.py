"""primaldual.analysis.redundancy: attention records, their explicit weights, head redundancy."""

import copy
import math

import pytest
import torch

from primaldual import Attention
from primaldual.analysis import (
    attention_records,
    attention_weights,
    head_redundancy,
    record_attention,
)
from primaldual.functional import VARIANTS
from primaldual.models import SequenceClassifier
from tests import tolerances as T

OPTIONS = {"sparse": {"window": 2}}


def values_of(layer, x):
    """v ``(B, H, N, hd)`` exactly as Attention.forward splits its qkv projection."""
    return layer.qkv(x).chunk(3, -1)[2].unflatten(-1, (layer.num_heads, layer.head_dim)).transpose(1, 2)


def padding(b=3, n=13):
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask[1, 9:] = True
    mask[2, 4] = True  # a hole inside an SH window
    return mask


# --- explicit weights of a recorded attention ---

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


@pytest.mark.parametrize("variant", ["softmax", "bn", "sh"])
def test_weights_of_a_rotary_call_are_those_of_the_rotated_queries_and_keys(variant):
    """A call with ``rope`` (a converted EVA's) is recorded with the queries and keys its variant saw."""
    torch.manual_seed(0)
    layer = Attention(32, 4, variant=variant, num_prefix_tokens=1).double()
    layer.rotate_half = True
    x, rope = torch.randn(3, 13, 32, dtype=torch.float64), torch.randn(12, 16, dtype=torch.float64)
    with record_attention(layer) as records, T.RecordLayerSizes() as sizes:
        layer(x, rope=rope)
    (record,) = records
    law = dict(head_dim=8, length=13, rounded_inputs=T.rounded_inputs("softmax", variant == "bn", variant == "sh"))
    values = values_of(layer, x)
    atol = T.attention_atol(torch.float64, sizes.size, T.output_scale(record.heads, values), **law)
    T.assert_close_normwise(record.weights() @ values, record.heads, atol, "weights @ values")


@pytest.mark.parametrize("variant", ["softmax", "bn", "bn+sh"])
@pytest.mark.parametrize("family", ["beit", "swin"])
def test_weights_of_a_biased_call_include_its_bias(family, variant):
    """A converted BEiT's or Swin's layer (its relative position bias, Swin's shifted-window mask) is recorded with
    the bias it added: the weights times the values are the heads' outputs."""
    import primaldual
    from tests.integrations.test_timm_bias import model

    converted = primaldual.convert(model(family), variant).double()
    layer = converted.blocks[0].attn if family == "beit" else converted.layers[0].blocks[1].attn
    inputs = []
    handle = layer.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    with record_attention(converted) as records, T.RecordLayerSizes() as sizes:
        converted(torch.randn(2, 3, 32, 32, dtype=torch.float64))
    handle.remove()
    record = next(r for r in records if r.layer is layer)
    assert record.bias is not None
    if family == "swin":  # the shifted block: a mask per window, so a bias per window
        assert record.bias.shape[0] == record.q.shape[0] > 1
    values = values_of(layer, inputs[0])
    law = dict(head_dim=record.q.shape[-1], length=record.q.shape[2], rounded_inputs=2)
    atol = T.attention_atol(torch.float64, sizes.size, T.output_scale(record.heads, values), **law)
    T.assert_close_normwise(record.weights() @ values, record.heads, atol, "weights @ values")


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
    with pytest.raises(ValueError, match="causal=True needs at most as many queries as keys"):
        attention_weights(q, q[:, :, :2], "linear", causal=True)
    with pytest.raises(ValueError, match="unknown variant"):
        attention_weights(q, q, "nope")


@pytest.mark.parametrize("variant", ["linear", "sh", "linear-bn+sh"])
def test_causal_weights_give_the_causal_output(variant):
    """Causal SH and the causal linear kernel: weights on the original keys, none on a later one, ``w @ v`` the
    output (every row sums to 1)."""
    from primaldual.functional import attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 7, 3, generator=g, dtype=torch.float64) for _ in range(3))
    extra = dict(scales=(1, 2, 3, 4)) if "sh" in variant else {}
    w = attention_weights(q, k, variant, causal=True, **extra)
    assert (w.triu(1) == 0).all()
    # sums of 7 terms of size <= 1 (weights) or max |v| (outputs), computed in two orders: Higham's bound
    T.assert_close_normwise(w.sum(-1), torch.ones(2, 4, 7, dtype=torch.float64), T.sum_atol(torch.float64, 7, 1.0))
    expected = attention(q, k, v, variant, causal=True, **extra)
    T.assert_close_normwise(w @ v, expected, 2 * T.sum_atol(torch.float64, 7 * 7, v.abs().max().item()), "w @ v")


# --- hooks and head redundancy ---


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
