"""Whole models with padding, not one layer: every variant compiles without a graph break, serves every length from
one graph, exports, and adds no host sync to a forward.

Hosts: Hugging Face BERT (padded encoder), Llama (padded decoder, grouped-query attention), ViT; PyTorch's
``nn.TransformerEncoder`` and ``nn.TransformerDecoder`` and a timm ViT converted by :func:`primaldual.convert`.
Compiled graphs run with the ``aot_eager`` backend (dynamo's capture and AOT autograd's graphs, the same ATen
operations as eager on the same numbers, so float64 results agree to rounding of a reordered sum at most: 1e-10).
"""

import importlib.util

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

from transformers import AutoModel, BertConfig, LlamaConfig, LlamaForCausalLM, ViTConfig  # noqa: E402

import primaldual  # noqa: E402
from primaldual.functional import VARIANTS, AttentionOptions  # noqa: E402
from primaldual.integrations.transformers import register  # noqa: E402

VOCAB, DIM, HEADS = 50, 32, 4
LENGTHS = (12, 19)  # two lengths, one not divisible by the SH factors: one graph must serve both


def options(variant):
    return AttentionOptions(variant, window=2 if VARIANTS[variant].windowed else None)


CAUSAL = list(VARIANTS)  # every variant has a causal form (SPEC section 5)


@pytest.fixture(scope="module", autouse=True)
def _registered():
    register(window=2)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def impl(variant):
    return "sdpa" if variant == "sdpa" else f"primaldual-{variant}"


def bert(variant):
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=DIM, num_hidden_layers=2, num_attention_heads=HEADS, intermediate_size=48,
        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    return AutoModel.from_config(config, attn_implementation=impl(variant), add_pooling_layer=False)


def hf_model(kind, variant):
    torch.manual_seed(0)
    if kind == "bert":
        model = bert(variant)
    elif kind == "llama":
        config = LlamaConfig(
            vocab_size=VOCAB, hidden_size=DIM, num_hidden_layers=2, num_attention_heads=HEADS, num_key_value_heads=2,
            intermediate_size=48, max_position_embeddings=64,
        )  # fmt: skip
        model = LlamaForCausalLM._from_config(config, attn_implementation=impl(variant))
    else:
        config = ViTConfig(
            image_size=16, patch_size=4, num_channels=1, hidden_size=DIM, num_hidden_layers=2,
            num_attention_heads=HEADS, intermediate_size=48,
        )  # fmt: skip
        model = AutoModel.from_config(config, attn_implementation=impl(variant), add_pooling_layer=False)
    return model.double().eval()


def token_inputs(batch, length):
    generator = torch.Generator().manual_seed(length)
    ids = torch.randint(0, VOCAB, (batch, length), generator=generator)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[0, length - length // 3 :] = 0  # right padding
    attention_mask[-1, : length // 4] = 0  # left padding
    return {"input_ids": ids, "attention_mask": attention_mask}


def image_inputs(batch, length):
    generator = torch.Generator().manual_seed(length)
    return {"pixel_values": torch.randn(batch, 1, 16, 16, generator=generator, dtype=torch.float64)}


def hf_output(model, inputs):
    out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def torch_nn_model(kind, variant):
    torch.manual_seed(0)
    if kind == "encoder":
        layer = nn.TransformerEncoderLayer(DIM, HEADS, 48, dropout=0.0, batch_first=True)
        model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    else:
        layer = nn.TransformerDecoderLayer(DIM, HEADS, 48, dropout=0.0, batch_first=True)
        model = nn.TransformerDecoder(layer, 2)
    model = model.double().eval()
    return model if variant == "sdpa" else primaldual.convert(model, options(variant))


def sequence_inputs(batch, length):
    generator = torch.Generator().manual_seed(length)
    x = torch.randn(batch, length, DIM, generator=generator, dtype=torch.float64)
    padding = torch.zeros(batch, length, dtype=torch.bool)
    padding[0, length - length // 3 :] = True
    return x, padding


def run_torch_nn(kind, model, batch, length):
    x, padding = sequence_inputs(batch, length)
    if kind == "encoder":
        return model(x, src_key_padding_mask=padding)
    causal = nn.Transformer.generate_square_subsequent_mask(length, dtype=torch.float64)
    return model(
        x, x, tgt_mask=causal, tgt_is_causal=True, tgt_key_padding_mask=padding, memory_key_padding_mask=padding
    )


def timm_vit(variant):
    torch.manual_seed(0)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=16, patch_size=4, in_chans=1, num_classes=3, embed_dim=DIM, depth=2, num_heads=HEADS
    )
    model = model.double().eval()
    return model if variant == "sdpa" else primaldual.convert(model, options(variant))


# (host, variants, model factory, call(model, batch, length) -> output tensor)
HOSTS = {
    "hf-bert": (list(VARIANTS), lambda v: hf_model("bert", v), lambda m, b, n: hf_output(m, token_inputs(b, n))),
    "hf-llama": (CAUSAL, lambda v: hf_model("llama", v), lambda m, b, n: hf_output(m, token_inputs(b, n))),
    "hf-vit": (list(VARIANTS), lambda v: hf_model("vit", v), lambda m, b, n: hf_output(m, image_inputs(b, n))),
    "nn-encoder": (list(VARIANTS), lambda v: torch_nn_model("encoder", v), lambda m, b, n: run_torch_nn("encoder", m, b, n)),
    "nn-decoder": (CAUSAL, lambda v: torch_nn_model("decoder", v), lambda m, b, n: run_torch_nn("decoder", m, b, n)),
    "timm-vit": (list(VARIANTS), timm_vit, lambda m, b, n: m(image_inputs(b, n)["pixel_values"])),
}  # fmt: skip
CASES = [(host, variant) for host, (variants, _, _) in HOSTS.items() for variant in variants]


@pytest.mark.parametrize("host,variant", CASES)
def test_whole_model_compiles_fullgraph_once_for_every_length(host, variant):
    """fullgraph=True (no graph break anywhere in the model), dynamic shapes: what the first call compiles serves
    two more lengths and batch sizes without compiling again, each output equal to eager."""
    _, make, call = HOSTS[host]
    model = make(variant)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend=counter)
    frames = []
    with torch.no_grad():
        for batch, length in ((3, LENGTHS[0]), (2, LENGTHS[1]), (4, 31)):
            torch.testing.assert_close(
                call(compiled, batch, length), call(model, batch, length), rtol=1e-10, atol=1e-10
            )
            frames.append(counter.frame_count)
    assert frames[0] == frames[-1], f"{host} with {variant} compiled again for new shapes: frames {frames}"


def host_syncs(call) -> int:
    """``aten::item`` / ``_local_scalar_dense`` calls of one forward that stop the host, i.e. those outside
    ``aten::_assert_async`` (an assertion on the device: on a GPU it does not wait; only the CPU backend reads the
    flag to raise at once)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    syncs = 0
    for event in prof.events():
        if event.name in ("aten::item", "aten::_local_scalar_dense"):
            parent = event.cpu_parent
            while parent is not None and parent.name != "aten::_assert_async":
                parent = parent.cpu_parent
            syncs += parent is None and event.name == "aten::_local_scalar_dense"
    return syncs


@pytest.mark.parametrize("host", list(HOSTS))
def test_no_variant_adds_a_host_sync(host):
    """One eager forward of each variant reads no more device values on the host than the host's own SDPA
    attention (transformers' mask code reads one or two; plain PyTorch none)."""
    variants, make, call = HOSTS[host]
    baseline = make("sdpa")
    allowed = host_syncs(lambda: call(baseline, 3, LENGTHS[1]))
    counts = {}
    for variant in variants:
        model = make(variant)
        counts[variant] = host_syncs(lambda model=model: call(model, 3, LENGTHS[1]))
    assert all(count <= allowed for count in counts.values()), f"sdpa: {allowed}, variants: {counts}"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_export_of_a_padded_hf_encoder_serves_other_shapes(variant):
    """torch.export of a padded BERT at (3, 19), dynamic batch and length; run at other shapes equal to eager."""
    model = hf_model("bert", variant)
    inputs = token_inputs(3, 19)
    batch, length = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("length", min=9, max=64)
    shapes = {"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}}
    program = torch.export.export(model, (), kwargs=inputs, dynamic_shapes=shapes).module()
    with torch.no_grad():
        for b, n in ((2, 12), (4, 31)):
            inputs = token_inputs(b, n)
            expected = model(**inputs).last_hidden_state
            torch.testing.assert_close(program(**inputs).last_hidden_state, expected, rtol=1e-10, atol=1e-10)


needs_onnx = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript", "onnxruntime")),
    reason="the export extra (onnx, onnxscript, onnxruntime) is not installed",
)


class PaddedEncoder(nn.Module):
    """A converted ``nn.TransformerEncoder`` called with its padding mask, as one exportable module."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, x, padding):
        return self.encoder(x, src_key_padding_mask=padding)


@needs_onnx
@pytest.mark.parametrize("variant", ["softmax", "bn", "sh", "bn+sh", "linear", "sparse", "linear-bn", "linear-sh"])
def test_onnx_export_of_a_converted_padded_transformer_encoder(variant, tmp_path):
    """torch.onnx.export(dynamo=True) of a converted, padded ``nn.TransformerEncoder`` traced at N = 19, run in
    ONNX Runtime at other shapes: equal to eager to 1e-4 on the valid tokens (float32), the layer export's
    tolerance (tests/test_compile_export.py)."""
    import onnxruntime

    model = PaddedEncoder(torch_nn_model("encoder", variant)).float().eval()
    x, padding = sequence_inputs(3, 19)
    batch, length = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("length", min=9, max=4096)
    shapes = {"x": {0: batch, 1: length}, "padding": {0: batch, 1: length}}
    path = tmp_path / "encoder.onnx"
    torch.onnx.export(model, (x.float(), padding), str(path), dynamo=True, dynamic_shapes=shapes, verbose=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for b, n in ((2, 12), (4, 37)):
        x, padding = sequence_inputs(b, n)
        (out,) = session.run(None, {names[0]: x.float().numpy(), names[1]: padding.numpy()})
        with torch.no_grad():
            expected = model(x.float(), padding)
        torch.testing.assert_close(torch.from_numpy(out)[~padding], expected[~padding], rtol=1e-4, atol=1e-4)


class CausalModule(nn.Module):
    is_causal = True


@pytest.mark.parametrize("variant", ["softmax", "sparse", "bn"])
def test_a_dense_mask_while_tracing_takes_the_prefix_path_and_a_band_fails_its_device_assertion(variant):
    """A dense causal mask with left padding (as a static cache gives): compiled, the attention function cannot read
    its kind from values, takes the general prefix path and equals eager, which validated it and took the causal
    path; a band mask under compile fails ``torch._assert_async`` with the eager refusal's words."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    attention = ALL_ATTENTION_FUNCTIONS[impl(variant)]
    q, k, v = torch.randn(3, 2, 4, 7, 8, dtype=torch.float64).unbind(0)
    i = torch.arange(7)
    allowed = (i[None, :] <= i[:, None]) & (i >= torch.tensor([[0], [2]]))[:, None, :]  # (B, Nq, Nk)
    allowed = allowed[:, None]

    def call(mask):
        return attention(CausalModule(), q, k, v, mask)[0]

    compiled = torch.compile(call, fullgraph=True, backend="aot_eager")
    valid_queries = allowed[:, 0].any(-1)  # a fully padded query row is 0 on both paths
    torch.testing.assert_close(compiled(allowed)[valid_queries], call(allowed)[valid_queries], rtol=1e-12, atol=1e-12)
    band = ((i[:, None] - i[None, :]).abs() <= 1).expand(2, 1, 7, 7)
    with pytest.raises(ValueError, match="not a padding mask"):
        call(band)
    with pytest.raises(RuntimeError, match="not a padding mask"):
        compiled(band)


@pytest.mark.parametrize("variant", CAUSAL)
def test_static_cache_generation_compiles_the_decode_step_once(variant):
    """As transformers compiles generation: a static cache and ``torch.compile(model.forward, fullgraph=True)``.
    Greedy generation from a left-padded batch gives the eager tokens, from two graphs: the prefill and one decode
    step that serves every later token (the static cache keeps its shapes, so nothing compiles again)."""
    model = hf_model("llama", variant)
    ids = torch.randint(1, VOCAB, (2, 7), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :3] = 0
    settings = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    expected = model.generate(ids, cache_implementation="static", **settings)
    counter = CompileCounterWithBackend("aot_eager")
    model.forward = torch.compile(model.forward, fullgraph=True, backend=counter)
    assert torch.equal(model.generate(ids, cache_implementation="static", **settings), expected)
    assert counter.frame_count == 2, f"{variant}: {counter.frame_count} graphs for a prefill and 5 decode steps"
