"""DeiT-style models on timm with primaldual attention, and convert()."""

import pytest
import timm
import torch

from primaldual import Attention, convert
from primaldual.models.vit import PRESETS, vision_transformer


@pytest.fixture(scope="module")
def deit_tiny():
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def test_convert_softmax_keeps_outputs_identical(deit_tiny, images):
    import copy

    before = deit_tiny(images)
    converted = convert(copy.deepcopy(deit_tiny), "softmax")
    assert all(type(blk.attn) is Attention for blk in converted.blocks)
    torch.testing.assert_close(converted(images), before, rtol=0, atol=0)


@pytest.mark.parametrize("variant", ["bn", "sh", "bn+sh"])
def test_convert_changes_only_the_attention(deit_tiny, images, variant):
    import copy

    converted = convert(copy.deepcopy(deit_tiny), variant)
    for old, new in zip(deit_tiny.blocks, converted.blocks):
        assert new.attn.variant == variant and new.attn.options.num_prefix_tokens == 1
        for part in ("qkv", "proj"):
            torch.testing.assert_close(getattr(new.attn, part).weight, getattr(old.attn, part).weight, rtol=0, atol=0)
    # Same embeddings and MLPs, a different attention: the outputs move, and stay finite.
    x = deit_tiny.patch_embed(images)
    assert torch.equal(x, converted.patch_embed(images))
    out = converted(images)
    assert torch.isfinite(out).all() and not torch.allclose(out, deit_tiny(images))
    # Each converted block equals the functional variant applied to the old block's projections.
    tokens = torch.randn(2, 197, 192)
    block_old, block_new = deit_tiny.blocks[0].attn, converted.blocks[0].attn
    reference = Attention(192, 3, qkv_bias=True, variant=variant, num_prefix_tokens=1)
    reference.load_state_dict(block_old.state_dict())
    # exact: the same module (class, options, weights) on the same tokens
    torch.testing.assert_close(block_new(tokens), reference(tokens), rtol=0, atol=0)


def test_convert_refuses_a_model_without_timm_attention():
    with pytest.raises(ValueError, match=r"no module to convert \(expected one of timm.layers.Attention, "):
        convert(torch.nn.Linear(3, 3), "bn")


@pytest.mark.parametrize("preset", ["vit_28", "vit_28_p7", "eva02_28_p7"])
@pytest.mark.parametrize("variant", ["softmax", "bn", "sh", "bn+sh"])
def test_small_preset_forward_backward(variant, preset):
    model = vision_transformer(preset, variant, num_classes=10, depth=2)
    assert isinstance(model.blocks[0].attn, Attention) and model.blocks[0].attn.variant == variant
    assert model.blocks[0].attn.options.num_prefix_tokens == 1
    assert model.patch_embed.num_patches == {"vit_28": 49, "vit_28_p7": 16, "eva02_28_p7": 16}[preset]
    out = model(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10)
    out.logsumexp(1).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'deit_huge'"):
        vision_transformer("deit_huge")
    assert set(PRESETS) >= {"deit_tiny", "deit_small", "vit_28", "vit_28_p7", "eva02_28_p7"}


@pytest.mark.parametrize("variant", ["sh", "bn+sh"])
def test_grid_pooling_from_the_model(deit_tiny, images, variant):
    """``grid=True`` takes the patch grid from the preset (7×7 for vit_28) or from the converted model's
    ``patch_embed`` (14×14 for DeiT-tiny); the grid layer equals the functional grid SH of its projections, and
    differs from raster pooling."""
    import copy

    model = vision_transformer("vit_28", variant, depth=1, grid=True)
    assert model.blocks[0].attn.options.grid == (7, 7)
    assert torch.isfinite(model(torch.randn(2, 1, 28, 28))).all()
    eva = vision_transformer("eva02_28_p7", variant, depth=1, grid=True)  # a converted EVA02: its 4×4 grid
    assert eva.blocks[0].attn.options.grid == (4, 4) and eva.blocks[0].attn.rotate_half is False
    assert torch.isfinite(eva(torch.randn(2, 1, 28, 28))).all()
    converted = convert(copy.deepcopy(deit_tiny), variant, grid=True)
    attn = converted.blocks[0].attn
    assert attn.options.grid == (14, 14) and "grid=(14, 14)" in repr(attn)
    tokens = torch.randn(2, 197, 192, generator=torch.Generator().manual_seed(2))
    raster = convert(copy.deepcopy(deit_tiny), variant).blocks[0].attn
    assert not torch.allclose(attn(tokens), raster(tokens))
    with pytest.raises(ValueError, match=r"grid=True takes the patch grid from a timm model's patch_embed"):
        convert(torch.nn.MultiheadAttention(8, 2, batch_first=True), variant, grid=True)
