"""``self_attention``: a layer's attention from its tokens and fused projection. SH pools the tokens before the
key/value projection; every variant must still equal the plain formula on the projected queries, keys, values."""

import pytest
import torch
from torch import nn

from primaldual import functional as F
from primaldual.functional.variants import split_qkv
from tests import tolerances as T
from tests.functional.test_variants import CASES, OPTIONS, VARIANT, make_mask

HEADS, HEAD_DIM, DIM = 4, 3, 10


def projection(bias: bool, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(DIM, 3 * HEADS * HEAD_DIM, bias=bias)


def tokens(n: int, dtype=torch.float32, seed: int = 1) -> torch.Tensor:
    return torch.randn(3, n, DIM, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def fast(name, x, linear, mask):
    return F.self_attention(
        x, linear.weight, linear.bias, HEADS, VARIANT.get(name, name), key_padding_mask=mask, **OPTIONS.get(name, {})
    )


SHAPES = [(1, True), (3, False), (11, True), (16, False)]


@pytest.mark.parametrize("mask_kind", ["none", "padded"])
@pytest.mark.parametrize(  # the grid cases' keys are 1 + 2×5 tokens
    ("name", "n", "bias"),
    [(name, *shape) for name in CASES for shape in SHAPES if "grid" not in name or shape[0] == 11],
)
def test_equals_the_formula_on_the_projections(name, mask_kind, n, bias):
    """float32 against the float64 formula on the float64 projections, within tests/tolerances.py's network law
    (parameter sensitivity of the call, widest reduction, S of the kernel's inputs): pooling the tokens and then
    projecting rounds otherwise than projecting and then pooling, as two evaluations of one network do."""
    linear = projection(bias)
    x, mask = tokens(n), make_mask(3, n, mask_kind)
    ref = CASES[name][1]
    with torch.no_grad():
        q, k, v = split_qkv(linear.double()(x.double()), HEADS)
        expected = ref(q, k, v, mask)
        size = T.variant_law(VARIANT.get(name, name), q, k, mask, **OPTIONS.get(name, {}))["size"]
    linear.float()
    atol = T.network_atol(torch.float32, linear, lambda m: fast(name, x, m, mask), size=size, length=n)
    T.assert_close_normwise(fast(name, x, linear, mask), expected, atol, name)


@pytest.mark.parametrize("prefix", [0, 2])
@pytest.mark.parametrize("mask_kind", ["none", "padded"])
@pytest.mark.parametrize("variant", ["sh", "bn+sh", "linear-sh", "linear-bn+sh"])
def test_pooled_gradients_are_the_derivatives(variant, mask_kind, prefix):
    """Backward of the pooled-token path (x, weight and bias) against central finite differences of its own
    forward in float64 (torch.autograd.gradcheck's law: eps 1e-6, atol 1e-5, rtol 1e-3; its fast mode compares
    ``vᵀ J u`` for random u, v, which a wrong Jacobian entry fails almost surely); with the test above, the
    gradients are those of the formula. Factors 3, 1, 3, 2: partial last windows, two groups of one factor."""
    linear = projection(True).double()
    x, mask = tokens(7, torch.float64), make_mask(3, 7, mask_kind)
    options = dict(scales=(3, 1, 3, 2), num_prefix_tokens=prefix)

    def call(x, weight, bias):
        return F.self_attention(x, weight, bias, HEADS, variant, key_padding_mask=mask, **options)

    inputs = (
        x.requires_grad_(True),
        linear.weight.detach().requires_grad_(True),
        linear.bias.detach().requires_grad_(True),
    )
    assert torch.autograd.gradcheck(call, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=True)


def test_pools_the_tokens_before_the_key_projection():
    """SH's keys and values cost N / r projected tokens: the FLOPs of a 16-token call with factors (1, 2, 4, 8)
    against those of the same call with keys projected first (functional.attention on the projections)."""
    from torch.utils.flop_counter import FlopCounterMode

    linear, x = projection(False), tokens(16)
    flops = []
    for run in (
        lambda: F.self_attention(x, linear.weight, linear.bias, HEADS, "sh", scales=(1, 2, 4, 8)),
        lambda: F.attention(*split_qkv(linear(x), HEADS), "sh", scales=(1, 2, 4, 8)),
    ):
        with FlopCounterMode(display=False) as counter:
            run()
        flops.append(counter.get_total_flops())
    projection_flops = 2 * 3 * 16 * DIM * 3 * HEADS * HEAD_DIM
    keys_values = projection_flops * 2 // 3  # of which the keys' and values'
    saved = keys_values * (1 - (1 + 1 / 2 + 1 / 4 + 1 / 8) / 4)
    assert flops[1] - flops[0] == pytest.approx(saved)


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (dict(x=torch.randn(2, 5)), "x must be a floating-point tensor"),
        (dict(weight=torch.randn(36, 9)), r"weight must be \(3 \* num_heads \* head_dim, dim\)"),
        (dict(weight=torch.randn(35, DIM)), r"weight must be \(3 \* num_heads \* head_dim, dim\)"),
        (dict(bias=torch.randn(35)), r"bias must be None or \(36,\)"),
        (dict(num_heads=0), "num_heads must be an integer >= 1"),
        (dict(key_padding_mask=torch.zeros(2, 4, dtype=torch.bool)), "key_padding_mask must have shape"),
    ],
)
def test_bad_arguments_name_themselves(args, pattern):
    call = dict(x=torch.randn(2, 5, DIM), weight=torch.randn(36, DIM), bias=torch.randn(36), num_heads=HEADS)
    call.update(args)
    mask = call.pop("key_padding_mask", None)
    with pytest.raises(ValueError, match=pattern):
        F.self_attention(*call.values(), "sh", scales=(1, 2, 2, 1), key_padding_mask=mask)
