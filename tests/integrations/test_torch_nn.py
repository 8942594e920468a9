"""PyTorch's own modules: convert() on nn.MultiheadAttention, nn.TransformerEncoder and nn.TransformerDecoder."""

import copy

import pytest
import torch
from torch import nn

import primaldual
from primaldual import functional
from primaldual.integrations.torch_nn import MultiheadAttention

ATOL = 1e-10


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
        expected = module(x, x, x, key_padding_mask=padding, attn_mask=attn_mask, average_attn_weights=average)
        got = converted(x, x, x, key_padding_mask=padding, attn_mask=attn_mask, average_attn_weights=average)
        torch.testing.assert_close(got[0], expected[0], rtol=0, atol=ATOL)
        torch.testing.assert_close(got[1], expected[1], rtol=0, atol=ATOL)
    out, weights = converted(x, x, x, need_weights=False)
    assert weights is None and torch.allclose(out, module(x, x, x)[0])


@pytest.mark.parametrize("mask", ["bool", "additive", "is_causal", "causal option"])
def test_bare_sequence_first_mha_with_a_causal_mask(mask):
    """Attention-BN with prefix statistics: equal to the functional op; the future never changes the past."""
    module = mha(batch_first=False)
    layer = primaldual.convert(copy.deepcopy(module), "bn", causal=mask == "causal option")
    x = torch.randn(10, 2, 16, dtype=torch.float64)  # (seq, batch, dim)
    kwargs = {"is_causal": True} if mask == "is_causal" else {} if mask == "causal option" else {
        "attn_mask": causal_masks(10)[mask]
    }
    out, _ = layer(x, x, x, **kwargs)
    later = x.clone()
    later[6:] = torch.randn(4, 2, 16, dtype=torch.float64)
    torch.testing.assert_close(layer(later, later, later, **kwargs)[0][:6], out[:6], rtol=0, atol=ATOL)
    q, k, v = nn.functional.linear(x.transpose(0, 1), module.in_proj_weight, module.in_proj_bias).chunk(3, -1)
    heads = [t.unflatten(-1, (4, 4)).transpose(1, 2) for t in (q, k, v)]
    expected = module.out_proj(functional.bn_attention(*heads, causal=True).transpose(1, 2).flatten(2))
    torch.testing.assert_close(out, expected.transpose(0, 1))
    softmax = module(x, x, x, attn_mask=causal_masks(10)["bool"], need_weights=False)[0]
    assert not torch.allclose(out, softmax, atol=1e-3)


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
        torch.testing.assert_close(converted(other, src_key_padding_mask=padding)[~padding], out[~padding],
                                   rtol=0, atol=ATOL)
    if variant == "softmax":
        torch.testing.assert_close(out[~padding], before[~padding], rtol=0, atol=1e-9)
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
    out = model(tgt, memory, tgt_mask=tgt_mask, memory_key_padding_mask=memory_padding)
    other_memory, later = memory.clone(), tgt.clone()
    other_memory[0, 5:] = 50.0
    later[:, 3:] = 0.0
    same = model(later, other_memory, tgt_mask=tgt_mask, memory_key_padding_mask=memory_padding)
    torch.testing.assert_close(same[:, :3], out[:, :3], rtol=0, atol=ATOL)


def test_separate_projection_weights_and_unbatched_inputs():
    torch.manual_seed(0)
    module = nn.MultiheadAttention(16, 2, kdim=8, vdim=12).double().eval()
    converted = primaldual.convert(copy.deepcopy(module), "softmax")
    q, k, v = (torch.randn(n, d, dtype=torch.float64) for n, d in ((6, 16), (7, 8), (7, 12)))  # unbatched (L, E)
    expected, weights = module(q, k, v)
    got, got_weights = converted(q, k, v)
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)
    torch.testing.assert_close(got_weights, weights, rtol=0, atol=ATOL)


def test_nested_tensor_inputs():
    layer = primaldual.convert(mha(batch_first=True), "bn")
    rows = [torch.randn(n, 16, dtype=torch.float64) for n in (4, 7)]
    nested = torch.nested.nested_tensor(rows)
    out, _ = layer(nested, nested, nested, need_weights=False)
    for row, got in zip(rows, out.unbind()):
        torch.testing.assert_close(got, layer(row[None], row[None], row[None])[0][0])


def test_refusals():
    with pytest.raises(ValueError, match="add_bias_kv"):
        primaldual.convert(nn.MultiheadAttention(8, 2, add_bias_kv=True), "bn")
    with pytest.raises(ValueError, match="no timm.layers.Attention or torch.nn.MultiheadAttention"):
        primaldual.convert(nn.Linear(3, 3), "bn")
    layer = primaldual.convert(mha(batch_first=True), "sh")
    x = torch.randn(1, 6, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match="has no causal form"):
        layer(x, x, x, attn_mask=causal_masks(6)["bool"])
    band = (torch.arange(6)[:, None] - torch.arange(6)).abs() > 1
    with pytest.raises(ValueError, match="not a padding mask"):
        primaldual.convert(mha(batch_first=True), "bn")(x, x, x, attn_mask=band)
