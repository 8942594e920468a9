"""Incremental decoding (functional.decode): one token at a time gives the causal forward at every position."""

import pytest
import torch

from primaldual import functional as F
from primaldual.functional.decode import DecodeState
from tests import tolerances as T

VARIANTS = list(F.VARIANTS)


def options(variant, **extra):
    spec = F.VARIANTS[variant]
    kw = dict(causal=True, **extra)
    if spec.pooled:
        kw["scales"] = (1, 2, 3, 4)
    if spec.windowed:
        kw["window"] = 3
    return F.AttentionOptions(variant, **kw)


def inputs(n=13, batch=3, heads=4, key_heads=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, n, 5, generator=g, dtype=torch.float64)
    k = torch.randn(batch, key_heads, n, 5, generator=g, dtype=torch.float64)
    v = torch.randn(batch, key_heads, n, 4, generator=g, dtype=torch.float64)
    mask = torch.zeros(batch, n, dtype=torch.bool)
    mask[1, :4] = True  # left padding
    mask[2, 6] = True  # a padded token in between
    return q, k, v, mask


def bound(variant, q, k, mask, opts, out, v):
    """Two evaluations of the causal form (other sums, other order; BN: another centre), each within the law."""
    law = T.causal_law(variant, q, k, mask, scales=opts.scales, num_prefix_tokens=opts.num_prefix_tokens)
    return 2 * T.attention_atol(torch.float64, law.pop("size"), T.output_scale(out, v), **law)


@pytest.mark.parametrize("variant,prefix", [(v, 0) for v in VARIANTS] + [(v, 2) for v in VARIANTS if v != "sparse"])
def test_steps_give_the_causal_forward_at_every_position(variant, prefix):
    opts = options(variant, num_prefix_tokens=prefix)
    q, k, v, mask = inputs()
    forward = F.attention(q, k, v, opts, key_padding_mask=mask)
    state = DecodeState.start(opts, 3, 4, head_dim=5, value_dim=4, dtype=torch.float64)
    steps = []
    for i in range(q.shape[2]):
        out, state = state.step(q[:, :, i : i + 1], k[:, :, i : i + 1], v[:, :, i : i + 1], ~mask[:, i])
        steps.append(out)
    rows = ~mask[:, None, :, None]
    T.assert_close_normwise(torch.cat(steps, 2) * rows, forward * rows, bound(variant, q, k, mask, opts, forward, v))
    assert state.length == q.shape[2]


@pytest.mark.parametrize("variant", VARIANTS)
def test_prompt_then_steps_with_grouped_keys(variant):
    """A prompt's forward builds the state; the steps after it equal the forward of the whole sequence."""
    opts = options(variant)
    q, k, v, mask = inputs(key_heads=2)
    whole = F.attention(q, k, v, opts, key_padding_mask=mask)
    out, state = DecodeState.from_prompt(opts, q[:, :, :8], k[:, :, :8], v[:, :, :8], mask[:, :8])
    parts = [out]
    for i in range(8, 13):
        out, state = state.step(q[:, :, i : i + 1], k[:, :, i : i + 1], v[:, :, i : i + 1])
        parts.append(out)
    rows = ~mask[:, None, :, None]
    kr = F.repeat_kv(k, 4)
    T.assert_close_normwise(torch.cat(parts, 2) * rows, whole * rows, bound(variant, q, kr, mask, opts, whole, v))


def test_state_holds_what_section_5_says():
    """After t tokens: softmax keeps t keys and values; SH (1, 2, 4, 8) about mean(1/r) = 0.47 of that; linear
    and linear-SH a state that does not grow."""

    def size(variant, t, scales=None):
        opts = F.AttentionOptions(variant, causal=True, scales=scales)
        state = DecodeState.start(opts, 1, 8, head_dim=16)
        k = torch.randn(1, 8, t, 16)
        for i in range(t):
            state = state.append(k[:, :, i : i + 1], k[:, :, i : i + 1])
        return state.nbytes()

    softmax = size("softmax", 256)
    ratio = size("sh", 256, (1, 2, 4, 8, 1, 2, 4, 8)) / softmax
    assert 0.46 < ratio < 0.5, ratio
    assert size("linear", 64) == size("linear", 256)
    assert size("linear-sh", 64, (1, 2, 4, 8) * 2) == size("linear-sh", 256, (1, 2, 4, 8) * 2)
