"""timm's rotary-embedding ViTs (EVA, EVA02, DINOv3: ``EvaAttention``) converted with their weights kept."""

import pytest
import torch

import primaldual
from primaldual.functional.transforms import rotary
from tests import tolerances as T

timm = pytest.importorskip("timm")
from timm.layers.pos_embed_sincos import apply_rot_embed_cat  # noqa: E402
from timm.models.eva import Eva, EvaAttention  # noqa: E402

#: Small EVA-family models: EVA02's fused qkv with q/v biases, separate projections, no bias with the bias
#: added separately, register tokens with normalised queries and keys, and DINOv3's rotary embedding (half layout).
CONFIGS = {
    "eva02": dict(),
    "separate-projections": dict(qkv_fused=False),
    "bias-added-separately": dict(qkv_bias_separate=True),
    "register-tokens": dict(num_reg_tokens=2, qk_norm=True),
    "dinov3": dict(rope_type="dinov3", rope_rotate_half=True, num_reg_tokens=4, qkv_bias=False, init_values=1e-5),
}


def eva(config: str, seed: int = 0) -> Eva:
    torch.manual_seed(seed)
    options = dict(CONFIGS[config])
    separate = options.pop("qkv_bias_separate", False)  # an EvaAttention argument that Eva does not pass on
    model = Eva(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, use_rot_pos_emb=True, **options)
    for block in model.blocks:
        block.attn.qkv_bias_separate = separate
    with torch.no_grad():  # EVA starts its biases at 0: random ones check that they are kept
        for name, parameter in model.named_parameters():
            if name.endswith(("q_bias", "v_bias", "proj.bias")):
                parameter.normal_()
    return model.eval()


@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("prefix", [0, 3])
def test_rotary_equals_timms_rotation(half, prefix):
    g = torch.Generator().manual_seed(0)
    x, rope = torch.randn(2, 3, 9, 8, generator=g), torch.randn(9 - prefix, 16, generator=g)
    expected = torch.cat([x[:, :, :prefix], apply_rot_embed_cat(x[:, :, prefix:], rope, half=half)], 2)
    assert torch.equal(rotary(x, rope, num_prefix_tokens=prefix, half=half), expected)
    with pytest.raises(ValueError, match=r"rope must be \(\.\.\., 9, 16\)"):
        rotary(x, rope[:, :8])
    assert rotary(x, rope[:-1], num_prefix_tokens=prefix + 1, half=half)[:, :, : prefix + 1].equal(
        x[:, :, : prefix + 1]
    )


@pytest.mark.parametrize("config", list(CONFIGS))
def test_softmax_conversion_equals_the_eva_model(config):
    """Forward by the network law (tests/tolerances.py). The default layout runs EVA's own operations on the same
    values in the same order (one F.linear with the same bias, the same rotation, one SDPA call), so there the
    outputs and gradients are identical, not merely close."""
    theirs, ours = eva(config), primaldual.convert(eva(config), "softmax")
    assert sum(isinstance(m, primaldual.Attention) for m in ours.modules()) == 2
    assert not any(isinstance(m, EvaAttention) for m in ours.modules())
    x = torch.randn(2, 3, 32, 32)
    with T.RecordLayerSizes() as record:
        out = ours(x)
    atol = T.network_atol(torch.float32, theirs, lambda m: m(x), size=record.size, length=16 + theirs.num_prefix_tokens)
    T.assert_close_normwise(out, theirs(x), atol, config)
    if config == "eva02":
        grads = []
        for model in (theirs, ours):
            image = x.clone().requires_grad_()
            model(image).square().sum().backward()
            grads.append((image.grad, model.blocks[0].attn.proj.weight.grad))
        assert torch.equal(out, theirs(x))
        assert all(torch.equal(a, b) for a, b in zip(*grads))


def assert_trains(model, x, y, lr, after_backward=lambda model: None):
    """Three SGD steps of cross-entropy on (x, y): finite losses that fall; ``after_backward(model)`` checks the
    gradients of each step."""
    optimiser = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        after_backward(model)
        optimiser.step()
        losses.append(loss.item())
    assert torch.isfinite(torch.tensor(losses)).all() and losses[-1] < losses[0], losses


@pytest.mark.parametrize("variant", ["bn", "sh", "bn+sh", "linear"])
def test_variants_run_in_eva_and_train(variant):
    model = primaldual.convert(eva("dinov3"), variant).train()
    attn = model.blocks[0].attn
    assert attn.variant == variant and attn.options.num_prefix_tokens == 5 and attn.rotate_half
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    assert_trains(model, x, y, lr=0.05)
    assert not torch.allclose(model.eval()(x), primaldual.convert(eva("dinov3"), "softmax")(x))


@pytest.mark.parametrize("variant", ["softmax", "bn+sh"])
def test_converted_eva_compiles_fullgraph(variant):
    model = primaldual.convert(eva("eva02"), variant)
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["vit_small_patch16_rope_mixed_224", "vit_small_patch16_rope_ape_224"])
def test_rope_vits_convert_exactly(name):
    """timm's AttentionRope ViTs (per-head 'mixed' rotary frequencies, or with absolute position embeddings too):
    the same operations as timm's, so the same outputs."""
    torch.manual_seed(0)
    options = dict(img_size=32, embed_dim=64, num_heads=4, depth=2, num_classes=3)
    theirs = timm.create_model(name, pretrained=False, **options).eval()
    ours = primaldual.convert(timm.create_model(name, pretrained=False, **options).eval(), "softmax")
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
    assert all(isinstance(block.attn, primaldual.Attention) for block in ours.blocks)


def test_grouped_query_rope_attention_is_refused_by_name():
    from timm.layers.attention import AttentionRope

    layer = AttentionRope(64, 4, num_kv_heads=2, qkv_fused=False)
    with pytest.raises(ValueError, match=r"AttentionRope with grouped-query attention \(4 query heads, 2 key/value"):
        primaldual.convert(torch.nn.Sequential(layer), "softmax")


class ToyAttention(torch.nn.Module):
    """An attention convert does not know."""

    def forward(self, x):
        return x


def test_a_model_with_only_unknown_attention_names_its_modules():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), ToyAttention())
    with pytest.raises(ValueError, match=r"its attention modules are [\w.]*test_timm_rotary\.ToyAttention, which"):
        primaldual.convert(model, "bn")
