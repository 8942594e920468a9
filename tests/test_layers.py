"""The Attention module: every variant, padding, timm integration, bad arguments."""

import pytest
import torch
from torch import nn

import primaldual
from primaldual import Attention
from primaldual.functional import VARIANTS
from tests import tolerances as T

OPTIONS = {"sparse": {"window": 2}}


def build(variant, dim=32, heads=4, **kwargs):
    torch.manual_seed(0)
    return Attention(dim, heads, variant=variant, **{**OPTIONS.get(variant, {}), **kwargs}).double()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_backward_shapes(variant):
    layer = build(variant)
    x = torch.randn(3, 10, 32, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[1, 6:] = True
    out = layer(x, key_padding_mask=mask)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_padded_tokens_do_not_change_valid_outputs(variant):
    layer = build(variant)
    x = torch.randn(2, 12, 32, dtype=torch.float64)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[:, 9:] = True
    x2 = x.clone()
    x2[:, 9:] = 50 * torch.randn(2, 3, 32, dtype=torch.float64)
    a, b = layer(x, key_padding_mask=mask), layer(x2, key_padding_mask=mask)
    # exact: padded keys meet only -inf scores and exact 0 weights; valid rows are the same operations
    torch.testing.assert_close(a[:, :9], b[:, :9], rtol=0, atol=0)


def test_module_matches_functional_composition():
    """The module is qkv projection -> functional attention -> proj, nothing hidden."""
    layer = build("bn+sh", scales=(1, 2, 2, 4))
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    q, k, v = layer.qkv(x).view(2, 9, 3, 4, 8).permute(2, 0, 3, 1, 4)
    expected = primaldual.functional.bn_sh_attention(q, k, v, (1, 2, 2, 4))
    expected = layer.proj(expected.transpose(1, 2).reshape(2, 9, 32))
    with T.RecordLayerSizes() as record:
        out = layer(x)
    # two float64 evaluations (other layouts): tests/tolerances.py's network law
    atol = T.network_atol(torch.float64, layer, lambda m: m(x), size=record.size, length=9)
    T.assert_close_normwise(out, expected, atol, "composition")


def test_default_scales_repeat_over_heads():
    assert Attention(64, 8, variant="sh").scales == (1, 2, 4, 8, 1, 2, 4, 8)
    assert Attention(64, 2, variant="bn+sh").scales == (1, 2)


@pytest.mark.parametrize("kwargs", [{}, dict(qkv_bias=True), dict(attn_head_dim=4, dim_out=24, gated=True)])
def test_softmax_layer_equals_timm_attention_with_same_weights(kwargs):
    """Same positional arguments, defaults and parameter names as timm's Attention, so its weights load."""
    import timm.layers as timm_layers

    theirs = timm_layers.Attention(32, 4, **kwargs).eval()
    ours = Attention(32, 4, **kwargs).eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 7, 32)
    with T.RecordLayerSizes() as record:
        out = ours(x)
    # timm's and our kernels on the same float32 formula: tests/tolerances.py's network law
    atol = T.network_atol(torch.float32, theirs, lambda m: m(x), size=record.size, length=7)
    T.assert_close_normwise(out, theirs(x), atol, "timm")


@pytest.mark.parametrize("variant", ["softmax", "bn", "sh", "bn+sh", "linear", "linear-bn", "linear-sh"])
def test_timm_vision_transformer_trains_with_each_variant(variant):
    from timm.models.vision_transformer import VisionTransformer

    layer = Attention.configure(variant=variant, num_prefix_tokens=1)
    assert issubclass(layer, Attention)
    model = VisionTransformer(
        img_size=16, patch_size=4, in_chans=1, num_classes=3, embed_dim=32, depth=2, num_heads=4, attn_layer=layer
    )
    assert all(blk.attn.variant == variant for blk in model.blocks)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 0])
    losses = []
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def test_configure_keeps_overrides():
    layer_cls = Attention.configure(variant="sh", scales=(1, 4))
    assert layer_cls(16, 2).scales == (1, 4)
    assert layer_cls(16, 2, scales=(2, 2)).scales == (2, 2)
    with pytest.raises(ValueError, match="unknown variant"):
        Attention.configure(variant="nope")


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(dim=30, num_heads=4), ValueError, r"dim \(30\) must be divisible by num_heads \(4\)"),
        (dict(dim=32, num_heads=4, variant="bn-sh"), ValueError, r"unknown variant 'bn-sh'"),
        (dict(dim=32, num_heads=4, variant="sh", scales=(1, 2)), ValueError, r"one factor per head \(4\)"),
        (dict(dim=32, num_heads=4, variant="sh", scales=(1, 0, 2, 2)), ValueError, r"must be >= 1"),
        (dict(dim=32, num_heads=4, variant="sparse"), ValueError, r"needs window"),
        (dict(dim=32, num_heads=4, variant="sparse", window=-2), ValueError, r"window must be >= 0"),
        (dict(dim=32, num_heads=4, variant="bn", scales=(1, 1, 1, 1)), ValueError, r"scales is only used"),
        (dict(dim=32, num_heads=4, qk_norm=True), ValueError, r"norm_layer must be given"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        Attention(**kwargs)


def test_bad_forward_arguments():
    layer = Attention(32, 4)
    with pytest.raises(ValueError, match=r"x must be \(batch, seq, dim\)"):
        layer(torch.randn(7, 32))
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(batch, seq_k\) = \(2, 7\)"):
        layer(torch.randn(2, 7, 32), key_padding_mask=torch.zeros(2, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"attn_mask is not supported"):
        layer(torch.randn(2, 7, 32), attn_mask=torch.ones(7, 7, dtype=torch.bool))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_causal_layer_prefill_and_steps_equal_its_forward(variant):
    """primaldual.Attention(causal=True) for every variant; prefill then one step per token gives the causal
    forward's output at every position (the decoding state of SPEC section 5)."""
    import primaldual
    from tests import tolerances as T

    torch.manual_seed(0)
    extra = dict(window=2) if variant == "sparse" else {}
    layer = primaldual.Attention(32, 4, variant=variant, causal=True, qkv_bias=True, **extra).double().eval()
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = layer(x)
        out, state = layer.prefill(x[:, :6])
        parts = [out]
        for i in range(6, 11):
            out, state = layer.step(x[:, i : i + 1], state)
            parts.append(out)
    got = torch.cat(parts, 1)
    later = x.clone()
    later[:, 8:] += 1.0
    with torch.no_grad():
        moved = layer(later)

    def bound(inputs):
        return T.model_atol(torch.float64, T.parameter_sensitivity(layer, inputs), reduction=32, length=11)

    T.assert_close_normwise(got, expected, bound(x), "steps")
    # two evaluations, each within the law of its own inputs (BN's centre, a mean over every key, rounds
    # differently when later keys change; exactly, the earlier outputs do not move)
    T.assert_close_normwise(moved[:, :8], expected[:, :8], bound(x) + bound(later), "the future")
    with pytest.raises(ValueError, match="one token per sequence"):
        layer.step(x[:, :2], state)
