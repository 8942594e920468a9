"""timm's attentions with a relative position bias (BEiT, the relative-position ViTs, Swin) converted with their
weights and bias tables kept; the families convert refuses, each with its own reason."""

import copy

import pytest
import torch

import primaldual
from primaldual.integrations.convert import REFUSED
from tests import tolerances as T
from tests.integrations.test_timm_rotary import assert_trains

timm = pytest.importorskip("timm")

#: Small models of each family: BEiT (per-block bias table, q/v biases), BEiT with one shared bias table, the
#: relative-position ViTs (MLP bias with and without a class token, plain bias table with residual post-norm),
#: and Swin (two stages of a shifted and an unshifted window block).
SMALL = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=3)
CONFIGS = {
    "beit": ("beit_base_patch16_224", SMALL),
    "beit-shared-bias": (
        "beit_base_patch16_224",
        dict(SMALL, use_rel_pos_bias=False, use_shared_rel_pos_bias=True),
    ),
    "relpos-mlp": ("vit_relpos_base_patch16_224", SMALL),
    "relpos-mlp-cls": ("vit_relpos_medium_patch16_cls_224", SMALL),
    "relpos-bias-post-norm": ("vit_relpos_base_patch16_rpn_224", SMALL),
    "swin": (
        "swin_tiny_patch4_window7_224",
        dict(img_size=32, patch_size=2, window_size=4, embed_dim=32, depths=(2, 2), num_heads=(2, 4), num_classes=3),
    ),
}


def model(config: str, seed: int = 0) -> torch.nn.Module:
    """A small model of ``config`` with random biases (BEiT starts its tables and q/v biases at 0)."""
    torch.manual_seed(seed)
    name, options = CONFIGS[config]
    built = timm.create_model(name, pretrained=False, **options)
    with torch.no_grad():
        for parameter_name, parameter in built.named_parameters():
            if any(part in parameter_name for part in ("relative_position", "q_bias", "v_bias", "rel_pos")):
                parameter.normal_(0, 0.5)
    return built.eval()


def converted_count(converted: torch.nn.Module) -> int:
    return sum(isinstance(m, primaldual.Attention) for m in converted.modules())


#: Where timm runs the same operations as the converted layer (one SDPA call with the same contiguous bias), the
#: outputs and gradients are identical; Swin's own attention is unfused (scores, bias, softmax, product: timm's
#: fused Swin path is experimental) and BEiT passes a shared bias to SDPA as (H, N, N): there they are close.
IDENTICAL = ("beit", "relpos-mlp", "relpos-mlp-cls", "relpos-bias-post-norm")


@pytest.mark.parametrize("config", list(CONFIGS))
def test_softmax_conversion_equals_the_model(config):
    """Forward by the network law of tests/tolerances.py (S of each call plus its largest |bias|), backward
    too for the families run identically (:data:`IDENTICAL`), where both are exact."""
    theirs = model(config)
    ours = primaldual.convert(copy.deepcopy(theirs), "softmax")
    kinds = {type(m) for m in theirs.modules() if type(m).__name__.endswith("Attention")}
    assert converted_count(ours) == (4 if config == "swin" else 2)
    assert not any(type(m) in kinds for m in ours.modules())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with T.RecordLayerSizes() as record, torch.no_grad():
        out = ours(x)
    atol = T.network_atol(torch.float32, theirs, lambda m: m(x), size=record.size, length=17)
    with torch.no_grad():
        T.assert_close_normwise(out, theirs(x), atol, config)
    if config not in IDENTICAL:
        return
    grads = []
    for m in (theirs, ours):
        image = x.clone().requires_grad_()
        m(image).square().sum().backward()
        tables = [p.grad for n, p in m.named_parameters() if "relative_position" in n or "rel_pos" in n]
        grads.append([image.grad, *tables])
    with torch.no_grad():
        assert torch.equal(out, theirs(x))
    assert len(grads[0]) == len(grads[1]) > 1
    assert all(torch.equal(a, b) for a, b in zip(*grads))


@pytest.mark.parametrize("variant", ["bn", "sh", "bn+sh"])
@pytest.mark.parametrize("config", ["beit", "relpos-mlp", "swin"])
def test_variants_run_and_train(config, variant):
    """The bias tables keep training (they get gradients through the variant), and the outputs differ from
    softmax's."""
    ours = primaldual.convert(model(config), variant).train()
    x, y = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 0])

    def tables_learn(m):
        tables = [p.grad for n, p in m.named_parameters() if "relative_position" in n or "rel_pos" in n]
        assert any(g is not None and g.abs().sum() > 0 for g in tables)

    assert_trains(ours, x, y, lr=0.01, after_backward=tables_learn)
    with torch.no_grad():
        assert not torch.allclose(ours.eval()(x), primaldual.convert(model(config), "softmax")(x))


def test_swin_grid_sh_pools_the_window_grid():
    """grid=True in Swin: each window's patches form the grid (window_size), not the image's."""
    ours = primaldual.convert(model("swin"), "sh", grid=True)
    attn = ours.layers[0].blocks[1].attn
    assert attn.options.grid == (4, 4) and attn.options.num_prefix_tokens == 0
    assert torch.isfinite(ours(torch.randn(2, 3, 32, 32))).all()


@pytest.mark.parametrize("variant", ["softmax", "bn+sh"])
@pytest.mark.parametrize("config", ["beit", "relpos-mlp-cls", "swin"])
def test_converted_attention_compiles_fullgraph(config, variant):
    ours = primaldual.convert(model(config), variant)
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(ours, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), ours(x), rtol=0, atol=0)


REFUSED_MODELS = {
    "cait_xxs24_224": ("timm.models.cait.TalkingHeadAttn", "mixes the heads' scores"),
    "xcit_nano_12_p16_224": ("timm.models.xcit.XCA", "attends across channels"),
    "levit_128s": ("timm.models.levit.Attention", "BatchNorm-folded convolutions"),
    "mvitv2_tiny": ("timm.models.mvitv2.MultiScaleAttention", "pools q, k and v with convolutions"),
    "samvit_base_patch16": ("timm.models.vision_transformer_sam.Attention", "query-dependent bias"),
    "twins_svt_small": ("timm.models.twins.LocallyGroupedAttn", "partitions the image into windows"),
    "tnt_s_patch16_224": ("timm.models.tnt.Attention", "different widths"),
    "swinv2_tiny_window8_256": ("timm.models.swin_transformer_v2.WindowAttention", "cosine attention"),
}


@pytest.mark.parametrize("name", list(REFUSED_MODELS))
def test_families_without_a_token_softmax_are_refused_with_their_reason(name):
    """Each refused family's message names the model, the module's path and class, and why; nothing is
    converted before the refusal."""
    qualified, reason = REFUSED_MODELS[name]
    assert qualified in REFUSED
    options = dict(img_size=224) if name.startswith("samvit") else {}
    built = timm.create_model(name, pretrained=False, **options)
    cls = qualified.rsplit(".", 1)[1]
    with pytest.raises(
        ValueError, match=rf"{type(built).__name__} cannot be converted: its module '[\w.]+' is {cls}\. "
    ):
        primaldual.convert(built, "bn")
    with pytest.raises(ValueError, match=reason):
        primaldual.convert(built, "bn")
    assert converted_count(built) == 0
