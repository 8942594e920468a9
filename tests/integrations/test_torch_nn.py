"""PyTorch's own modules: convert() on nn.MultiheadAttention, nn.TransformerEncoder and nn.TransformerDecoder."""

import copy

import pytest
import torch
from torch import nn

import primaldual
from primaldual import functional
from primaldual.integrations import torch_nn
from primaldual.integrations.torch_nn import MultiheadAttention
from tests import tolerances as T

# Tolerances (docs/numerics.md): where both sides compute the same operations on the same numbers (padded
# positions meet only -inf scores and exact 0 weights), exact; where two kernels compute one float64 formula
# (torch's MHA against the converted layer, other shapes, the mean of all keys that causal BN's shift takes),
# tests/tolerances.py's network law: parameter sensitivity by autograd, the widest reduction, S of the attention
# calls (recorded), two evaluations.


def network_atol(model, output, record, length):
    return T.network_atol(torch.float64, model, output, size=record.size, length=length)


def mha(batch_first, **kwargs):
    torch.manual_seed(0)
    return nn.MultiheadAttention(16, 4, batch_first=batch_first, **kwargs).double().eval()


def causal_masks(n):
    bool_mask = torch.ones(n, n, dtype=torch.bool).triu(1)  # True = not allowed
    return {"bool": bool_mask, "additive": nn.Transformer.generate_square_subsequent_mask(n, dtype=torch.float64)}


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("mask", ["none", "bool", "additive"])
def test_softmax_keeps_every_output(batch_first, mask):
    module = mha(batch_first)
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    x = x if batch_first else x.transpose(0, 1)
    padding = torch.zeros(2, 9, dtype=torch.bool)
    padding[1, 6:] = True
    attn_mask = None if mask == "none" else causal_masks(9)[mask]
    converted = primaldual.convert(copy.deepcopy(module), "softmax")
    assert isinstance(converted, MultiheadAttention)
    for average in (True, False):
        kwargs = dict(key_padding_mask=padding, attn_mask=attn_mask, average_attn_weights=average)
        expected = module(x, x, x, **kwargs)
        with T.RecordSizes(torch_nn) as record:
            got = converted(x, x, x, **kwargs)
        for i, part in enumerate(("output", "weights")):
            atol = network_atol(module, lambda m, i=i, kwargs=kwargs: m(x, x, x, **kwargs)[i], record, 9)
            T.assert_close_normwise(got[i], expected[i], atol, part)
    with T.RecordSizes(torch_nn) as record:
        out, weights = converted(x, x, x, need_weights=False)
    assert weights is None
    T.assert_close_normwise(out, module(x, x, x)[0], network_atol(module, lambda m: m(x, x, x)[0], record, 9), "output")


@pytest.mark.parametrize("mask", ["bool", "additive", "is_causal", "causal option"])
def test_bare_sequence_first_mha_with_a_causal_mask(mask):
    """Attention-BN with prefix statistics: equal to the functional op; the future never changes the past."""
    module = mha(batch_first=False)
    layer = primaldual.convert(copy.deepcopy(module), "bn", causal=mask == "causal option")
    x = torch.randn(10, 2, 16, dtype=torch.float64)  # (seq, batch, dim)
    kwargs = (
        {"is_causal": True}
        if mask == "is_causal"
        else {}
        if mask == "causal option"
        else {"attn_mask": causal_masks(10)[mask]}
    )
    later = x.clone()
    later[6:] = torch.randn(4, 2, 16, dtype=torch.float64)
    with T.RecordSizes(torch_nn) as record:
        out, _ = layer(x, x, x, **kwargs)
        moved = layer(later, later, later, **kwargs)[0]
    # not exact: BN's keys are shifted by the mean of all keys, future ones included (docs/numerics.md)
    atol = network_atol(layer, lambda m: m(x, x, x, **kwargs)[0][:6], record, 10)
    T.assert_close_normwise(moved[:6], out[:6], atol, "past")
    q, k, v = nn.functional.linear(x.transpose(0, 1), module.in_proj_weight, module.in_proj_bias).chunk(3, -1)
    heads = [t.unflatten(-1, (4, 4)).transpose(1, 2) for t in (q, k, v)]
    expected = module.out_proj(functional.bn_attention(*heads, causal=True).transpose(1, 2).flatten(2))
    T.assert_close_normwise(
        out, expected.transpose(0, 1), network_atol(layer, lambda m: m(x, x, x, **kwargs)[0], record, 10), "functional"
    )
    softmax = module(x, x, x, attn_mask=causal_masks(10)["bool"], need_weights=False)[0]
    assert not torch.allclose(out, softmax, atol=1e-3)


@pytest.mark.parametrize("variant", ["sh", "bn+sh", "linear-sh", "linear-bn+sh"])
@pytest.mark.parametrize("padded", [False, True])
def test_sh_self_attention_pools_the_tokens(variant, padded):
    """SH's self-attention without weights pools the tokens before projecting them: the projected path (taken when
    the weights are asked for) is the other evaluation of the formula, within the network law; the pooled path's
    gradients are its forward's derivatives (finite differences, float64)."""
    layer = primaldual.convert(mha(batch_first=True), variant, scales=(1, 2, 3, 2))
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    padding = torch.zeros(2, 11, dtype=torch.bool) if padded else None
    if padded:
        padding[1, 6:] = True
    with T.RecordSizes(torch_nn) as record:
        projected, weights = layer(x, x, x, key_padding_mask=padding)
        pooled, no_weights = layer(x, x, x, key_padding_mask=padding, need_weights=False)
    assert weights is not None and no_weights is None
    assert len(record.sizes) == 1  # the pooled call did not go through attend
    atol = network_atol(layer, lambda m: m(x, x, x, key_padding_mask=padding)[0], record, 11)
    T.assert_close_normwise(pooled, projected, atol, "pooled against projected")

    def pooled_path(tokens, weight, bias):
        params = {"in_proj_weight": weight, "in_proj_bias": bias}
        kwargs = {"key_padding_mask": padding, "need_weights": False}
        return torch.func.functional_call(layer, params, (tokens, tokens, tokens), kwargs)[0]

    inputs = (x, layer.in_proj_weight.detach(), layer.in_proj_bias.detach())
    assert torch.autograd.gradcheck(pooled_path, tuple(t.clone().requires_grad_() for t in inputs), fast_mode=True)


def encoder(nested):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=nested).double().eval()


@pytest.mark.parametrize("nested", [True, False])
@pytest.mark.parametrize("variant", ["softmax", "bn", "sh", "bn+sh"])
def test_transformer_encoder_padding_never_leaks(nested, variant):
    model, x = encoder(nested), torch.randn(3, 11, 16, dtype=torch.float64)
    padding = torch.zeros(3, 11, dtype=torch.bool)
    padding[1, 7:] = True
    padding[2, 2:] = True
    with torch.no_grad():  # the encoder's fast paths (nested tensors, fused layers) are taken only without grad
        before = model(x, src_key_padding_mask=padding)
        converted = primaldual.convert(copy.deepcopy(model), variant)
        assert all(isinstance(layer.self_attn, MultiheadAttention) for layer in converted.layers)
        out = converted(x, src_key_padding_mask=padding)
        other = x.clone()
        other[padding] = 100 * torch.randn(int(padding.sum()), 16, dtype=torch.float64)
        # exact: padded positions meet only -inf scores and exact 0 weights; rows and shapes are the same
        torch.testing.assert_close(
            converted(other, src_key_padding_mask=padding)[~padding], out[~padding], rtol=0, atol=0
        )
    if variant == "softmax":
        with T.RecordSizes(torch_nn) as record:
            converted(x, src_key_padding_mask=padding)
        atol = network_atol(model, lambda m: m(x, src_key_padding_mask=padding)[~padding], record, 11)
        T.assert_close_normwise(out[~padding], before[~padding], atol, "torch's encoder")
    else:
        assert (out[~padding] - before[~padding]).abs().max() > 1e-2
    converted.train()
    converted(x, src_key_padding_mask=padding).square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in converted.parameters())


def test_cross_attention_takes_statistics_over_the_keys():
    torch.manual_seed(0)
    layer = nn.TransformerDecoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True)
    model = primaldual.convert(nn.TransformerDecoder(layer, num_layers=1).double().eval(), "bn")
    assert isinstance(model.layers[0].multihead_attn, MultiheadAttention)
    tgt, memory = torch.randn(2, 5, 16, dtype=torch.float64), torch.randn(2, 8, 16, dtype=torch.float64)
    memory_padding = torch.zeros(2, 8, dtype=torch.bool)
    memory_padding[0, 5:] = True
    tgt_mask = nn.Transformer.generate_square_subsequent_mask(5, dtype=torch.float64)
    other_memory, later = memory.clone(), tgt.clone()
    other_memory[0, 5:] = 50.0
    later[:, 3:] = 0.0
    with T.RecordSizes(torch_nn) as record:
        out = model(tgt, memory, tgt_mask=tgt_mask, memory_key_padding_mask=memory_padding)
        same = model(later, other_memory, tgt_mask=tgt_mask, memory_key_padding_mask=memory_padding)
    # not exact: causal BN's self-attention shifts keys by the mean of all of them, later ones included
    atol = network_atol(
        model, lambda m: m(tgt, memory, tgt_mask=tgt_mask, memory_key_padding_mask=memory_padding)[:, :3], record, 8
    )
    T.assert_close_normwise(same[:, :3], out[:, :3], atol, "past")


@pytest.mark.parametrize("mask", ["bool", "additive", "is_causal"])
@pytest.mark.parametrize("variant", list(functional.VARIANTS))
def test_transformer_decoder_is_causal_for_every_variant(variant, mask):
    """nn.TransformerDecoder converted to any variant with a causal target mask (bool, additive or tgt_is_causal):
    its self-attention is the variant's causal form (later target tokens change nothing before them); softmax
    equals PyTorch's own decoder."""
    torch.manual_seed(0)
    layer = nn.TransformerDecoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True)
    module = nn.TransformerDecoder(layer, num_layers=2).double().eval()
    options = dict(window=2) if variant == "sparse" else {}
    model = primaldual.convert(copy.deepcopy(module), variant, **options)
    # memory as long as the target: sparse cross-attention needs its queries' positions
    tgt, memory = torch.randn(2, 9, 16, dtype=torch.float64), torch.randn(2, 9, 16, dtype=torch.float64)
    masks = causal_masks(9)
    call = dict(tgt_mask=masks["bool"], tgt_is_causal=True) if mask == "is_causal" else dict(tgt_mask=masks[mask])
    later = tgt.clone()
    later[:, 5:] = 3.0
    with T.RecordSizes(torch_nn) as record:
        out, moved = model(tgt, memory, **call), model(later, memory, **call)
    assert torch.isfinite(out).all()
    atol = network_atol(model, lambda m: m(tgt, memory, **call)[:, :5], record, 9)
    T.assert_close_normwise(moved[:, :5], out[:, :5], atol if functional.VARIANTS[variant].bn else 0.0, "past")
    if variant == "softmax":
        expected = module(tgt, memory, **call)
        T.assert_close_normwise(
            out, expected, network_atol(module, lambda m: m(tgt, memory, **call), record, 9), "torch"
        )


def test_separate_projection_weights_and_unbatched_inputs():
    torch.manual_seed(0)
    module = nn.MultiheadAttention(16, 2, kdim=8, vdim=12).double().eval()
    converted = primaldual.convert(copy.deepcopy(module), "softmax")
    q, k, v = (torch.randn(n, d, dtype=torch.float64) for n, d in ((6, 16), (7, 8), (7, 12)))  # unbatched (L, E)
    expected, weights = module(q, k, v)
    with T.RecordSizes(torch_nn) as record:
        got, got_weights = converted(q, k, v)
    T.assert_close_normwise(got, expected, network_atol(module, lambda m: m(q, k, v)[0], record, 7), "output")
    T.assert_close_normwise(got_weights, weights, network_atol(module, lambda m: m(q, k, v)[1], record, 7), "weights")


def test_nested_tensor_inputs():
    layer = primaldual.convert(mha(batch_first=True), "bn")
    rows = [torch.randn(n, 16, dtype=torch.float64) for n in (4, 7)]
    nested = torch.nested.nested_tensor(rows)
    out, _ = layer(nested, nested, nested, need_weights=False)
    for row, got in zip(rows, out.unbind()):
        with T.RecordSizes(torch_nn) as record:
            alone = layer(row[None], row[None], row[None])[0][0]
        atol = network_atol(layer, lambda m, row=row: m(row[None], row[None], row[None])[0][0], record, len(row))
        T.assert_close_normwise(got, alone, atol, "nested row")  # other shapes: two evaluations of the law


def test_refusals():
    with pytest.raises(ValueError, match="add_bias_kv"):
        primaldual.convert(nn.MultiheadAttention(8, 2, add_bias_kv=True), "bn")
    with pytest.raises(ValueError, match=r"no module to convert \(expected one of .*torch.nn.MultiheadAttention\)$"):
        primaldual.convert(nn.Linear(3, 3), "bn")
    x = torch.randn(1, 6, 16, dtype=torch.float64)
    band = (torch.arange(6)[:, None] - torch.arange(6)).abs() > 1
    with pytest.raises(ValueError, match="not a padding mask"):
        primaldual.convert(mha(batch_first=True), "bn")(x, x, x, attn_mask=band)
