"""SequenceClassifier: every variant trains, padding never reaches the logits, patches downsample the mask."""

from __future__ import annotations

import pytest
import torch

from primaldual import Attention
from primaldual.functional import VARIANTS
from primaldual.models import SequenceClassifier
from tests import tolerances as T

CHANNELS, CLASSES, LENGTH = 3, 4, 12


def make(variant: str, **kwargs) -> SequenceClassifier:
    options = {"window": 2} if variant == "sparse" else {}
    torch.manual_seed(0)
    return SequenceClassifier(
        CHANNELS,
        CLASSES,
        LENGTH,
        d_model=16,
        depth=2,
        num_heads=4,
        attention=variant,
        attention_options=options,
        **kwargs,
    )


def batch(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Random series and the mask of right padding after ``lengths[i]`` valid steps (padded values are 0)."""
    mask = torch.arange(LENGTH) >= torch.tensor(lengths)[:, None]
    x = torch.randn(len(lengths), LENGTH, CHANNELS).masked_fill(mask[..., None], 0.0)
    return x, mask


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_backward_every_variant(variant: str) -> None:
    model = make(variant)
    x, mask = batch([12, 7, 3, 1])
    logits = model(x, mask)
    assert logits.shape == (4, CLASSES)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} gets no gradient"


@pytest.mark.parametrize("pooling", ["mean", "flatten"])
@pytest.mark.parametrize("patch_size", [1, 3, 5])
@pytest.mark.parametrize("variant", ["softmax", "linear", "sparse", "bn", "sh", "bn+sh", "linear-bn+sh"])
def test_padded_values_change_no_logit(variant: str, patch_size: int, pooling: str) -> None:
    model = make(variant, patch_size=patch_size, pooling=pooling).eval()
    x, mask = batch([12, 7, 4, 1])
    noisy = torch.where(mask[..., None], 100 * torch.randn_like(x), x)
    # exact: the model zeroes padded steps before the first layer (a partly padded patch too), so both calls
    # compute the same operations on the same numbers
    torch.testing.assert_close(model(noisy, mask), model(x, mask), rtol=0, atol=0)
    # the comparison is not vacuous: the same change at valid steps moves the logits
    changed = model(torch.where(mask[..., None], x, noisy + 1), mask)
    assert not torch.allclose(changed[:3], model(x, mask)[:3], atol=1e-3)


@pytest.mark.parametrize("pooling", ["mean", "flatten"])
@pytest.mark.parametrize("patch_size", [1, 4])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_padded_sample_equals_the_unpadded_one(variant: str, patch_size: int, pooling: str) -> None:
    """Padding is as if absent: a series of 5 steps padded to 12 gives the logits of the 5 steps alone. Not
    exact: the shapes differ, so the kernels may block their sums differently; two float32 evaluations of the
    network differ by at most tests/tolerances.py's model law (its parameter sensitivity, widest reduction,
    largest score-term size S over the attention calls)."""
    model = make(variant, patch_size=patch_size, pooling=pooling).eval()
    x, mask = batch([5, 12])
    with T.RecordLayerSizes() as record:
        padded = model(x, mask)[:1]
    trimmed = model(x[:1, :5])
    widest = max(m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    atol = T.model_atol(
        torch.float32, T.parameter_sensitivity(model, x[:1, :5]), reduction=widest, size=record.size, length=LENGTH
    )
    T.assert_close_normwise(padded, trimmed, atol, "padded vs trimmed logits")


def test_no_mask_means_all_steps_valid() -> None:
    model = make("bn+sh").eval()
    x, _ = batch([12, 12])
    # exact: the model turns a missing mask into the all-False one before anything else, so both calls compute
    # the same operations on the same numbers
    torch.testing.assert_close(model(x), model(x, torch.zeros(2, LENGTH, dtype=torch.bool)), rtol=0, atol=0)


def masks_seen_by_attention(model: SequenceClassifier, x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    seen = []
    for module in model.modules():
        if isinstance(module, Attention):
            module.register_forward_pre_hook(
                lambda m, args, kwargs: seen.append(kwargs["key_padding_mask"]), with_kwargs=True
            )
    model(x, mask)
    return seen


@pytest.mark.parametrize(
    "patch_size, expected",
    [
        (1, None),  # the mask itself
        (4, [[False, False, False], [False, False, True], [False, True, True], [False, True, True]]),
        (5, [[False, False, False], [False, False, True], [False, True, True], [False, True, True]]),
    ],
)
def test_every_attention_gets_the_downsampled_mask(patch_size: int, expected: list | None) -> None:
    """Valid lengths 12, 7, 4, 1: a patch of p steps is padding iff all its steps are (the last patch is
    completed with padding: 12 steps in patches of 5 -> 3 tokens)."""
    model = make("softmax", patch_size=patch_size)
    x, mask = batch([12, 7, 4, 1])
    seen = masks_seen_by_attention(model, x, mask)
    assert len(seen) == 2  # depth 2: both blocks
    for m in seen:
        assert torch.equal(m, mask if expected is None else torch.tensor(expected))


def test_patch_with_padding_equals_zero_filled_patch() -> None:
    """A partly padded patch is a token whose padded steps are 0; a fully padded patch is dropped."""
    model = make("bn", patch_size=4).eval()
    x, mask = batch([5])  # patches: steps 0-3 valid, 4-7 partly (4 valid), 8-11 padding
    trimmed = x[:, :8].masked_fill(mask[:, :8, None], 0.0)
    with T.RecordLayerSizes() as record:
        reference = model(trimmed)  # 2 tokens, no mask
    # other shapes: two float32 evaluations of the network, tests/tolerances.py's model law
    atol = T.model_atol(
        torch.float32,
        T.parameter_sensitivity(model, trimmed),
        reduction=T.widest_reduction(model),
        size=record.size,
        length=LENGTH,
    )
    T.assert_close_normwise(model(x, mask), reference, atol, "zero-filled patch")


@pytest.mark.parametrize("variant", ["softmax", "linear", "bn", "sh", "bn+sh"])
def test_fully_padded_sample_is_finite(variant: str) -> None:
    model = make(variant, patch_size=2)
    x, mask = batch([0, 6])
    logits = model(x, mask)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bad_input_is_named() -> None:
    model = make("softmax")
    with pytest.raises(ValueError, match="x must be"):
        model(torch.randn(2, LENGTH, CHANNELS + 1))
    with pytest.raises(ValueError, match="x must be"):
        model(torch.randn(2, LENGTH + 1, CHANNELS))
    with pytest.raises(ValueError, match="key_padding_mask must be bool"):
        model(torch.randn(2, LENGTH, CHANNELS), torch.zeros(2, LENGTH))
    with pytest.raises(ValueError, match="patch_size"):
        SequenceClassifier(CHANNELS, CLASSES, LENGTH, patch_size=0)
    with pytest.raises(ValueError, match="unknown variant"):
        SequenceClassifier(CHANNELS, CLASSES, LENGTH, attention="nope")


def test_flatten_pooling_reads_each_position_with_its_own_weights() -> None:
    """The flatten head sees where a feature occurs: the same tokens in another order give other logits."""
    model = make("softmax", pooling="flatten").eval()
    assert model.head.in_features == 16 * LENGTH
    x, mask = batch([12, 12])
    assert not torch.allclose(model(x, mask)[0], model(x.flip(1), mask)[0], atol=1e-4)
    with pytest.raises(ValueError, match="pooling must be 'mean' or 'flatten', got 'max'"):
        make("softmax", pooling="max")


def test_token_and_position_embeddings_start_at_one_scale() -> None:
    torch.manual_seed(0)
    model = SequenceClassifier(None, 10, 2000, vocab_size=256, d_model=128)
    tokens, positions = model.embed.weight.std().item(), model.pos.std().item()
    assert abs(tokens - 0.02) < 0.002 and abs(positions - 0.02) < 0.002
