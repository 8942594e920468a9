"""Every variant's layer under torch.compile (fullgraph, one graph for every length), torch.export and ONNX.

Compiled graphs run with the ``aot_eager`` backend (dynamo's capture and AOT autograd's forward/backward graphs,
without code generation: seconds instead of minutes on a CPU); ``test_inductor_matches_eager`` runs the default
backend on the composite variants. Exported programs and ONNX models are traced at one length and run at others,
lengths not divisible by the SH factors, with padding.
"""

import importlib.util

import pytest
import torch

from primaldual.functional import VARIANTS
from primaldual.layers import Attention

DIM, HEADS = 32, 4
CAUSAL = ("softmax", "sparse", "bn")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def make_layer(name, **options):
    torch.manual_seed(0)
    if name == "sparse":
        options.setdefault("window", 2)
    return Attention(DIM, HEADS, qkv_bias=True, variant=name, **options).double()


def make_inputs(batch, length, padded, dtype=torch.float64):
    generator = torch.Generator().manual_seed(length)
    x = torch.randn(batch, length, DIM, generator=generator, dtype=dtype)
    if not padded:
        return x, None
    mask = torch.zeros(batch, length, dtype=torch.bool)
    mask[::2, length - length // 3 :] = True
    x = x.masked_fill(mask[..., None], 0.0)
    return x, mask


def forward_backward(layer, x, mask, **kwargs):
    x = x.detach().requires_grad_(True)
    out = layer(x, mask, **kwargs)
    out.square().sum().backward()
    grads = [x.grad] + [p.grad for p in layer.parameters()]
    layer.zero_grad(set_to_none=True)
    return out.detach(), grads


CASES = [(name, padded, False) for name in VARIANTS for padded in (False, True)]
CASES += [(name, padded, True) for name in CAUSAL for padded in (False, True)]


@pytest.mark.parametrize("name,padded,causal", CASES)
def test_fullgraph_compile_matches_eager(name, padded, causal):
    """fullgraph=True (no graph break), forward and backward equal to eager; causal through the layer's is_causal."""
    layer = make_layer(name)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x, mask = make_inputs(3, 21, padded)
    out, grads = forward_backward(compiled, x, mask, is_causal=causal)
    ref, ref_grads = forward_backward(layer, x, mask, is_causal=causal)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("padded", [False, True])
def test_dynamic_compile_makes_one_graph_for_every_length(name, padded):
    """dynamic=True: one compilation serves lengths 13, 37, 45, 64 and 100 (odd, even, divisible by the SH factors
    or not) and batch sizes 2 and 5, and each result equals eager."""
    from torch._dynamo.testing import CompileCounterWithBackend

    layer = make_layer(name)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(layer, fullgraph=True, dynamic=True, backend=counter)
    counts = []
    for batch, length in ((2, 13), (5, 37), (2, 45), (5, 64), (2, 100)):
        x, mask = make_inputs(batch, length, padded)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x, mask), layer(x, mask), rtol=1e-10, atol=1e-10)
        counts.append(counter.frame_count)
    assert counts == counts[:1] * len(counts)  # compiled at the first length, never again


@pytest.mark.parametrize(
    "name", ["bn+sh"]
)  # both composite steps (BN statistics, SH pooling); inductor is minutes per variant on a CPU
def test_inductor_matches_eager(name):
    """The default backend (generated C++), dynamic shapes, float32: forward and backward equal to eager."""
    layer = make_layer(name).float()
    compiled = torch.compile(layer, fullgraph=True, dynamic=True)
    for length in (19, 45):
        x, mask = make_inputs(3, length, True, torch.float32)
        out, grads = forward_backward(compiled, x, mask)
        ref, ref_grads = forward_backward(layer, x, mask)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
        for g, r in zip(grads, ref_grads):  # inductor reassociates float32 sums: bn+sh's qkv-bias grad was 2.8e-4 off
            torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-3)


def dims():
    """Dynamic batch and length; SH pools the longest factor (8) into at least two windows, so N >= 9."""
    return torch.export.Dim("batch", min=1, max=64), torch.export.Dim("length", min=9, max=4096)


def exported(layer, padded):
    batch, length = dims()
    x, mask = make_inputs(3, 45, padded)
    shapes = {"x": {0: batch, 1: length}, "key_padding_mask": None if mask is None else {0: batch, 1: length}}
    return torch.export.export(layer, (x, mask), dynamic_shapes=shapes)


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("padded", [False, True])
def test_export_serves_other_lengths(name, padded):
    """torch.export at N = 45 with dynamic batch and length; run at N = 37, 64, 101 equals eager. (The linear
    kernel's products over SH's pooled keys are broadcast sums while exporting: functional.transforms.export_matmul.)"""
    layer = make_layer(name).eval()
    program = exported(layer, padded).module()
    for batch, length in ((2, 37), (4, 64), (1, 101)):
        x, mask = make_inputs(batch, length, padded)
        with torch.no_grad():
            torch.testing.assert_close(program(x, mask), layer(x, mask), rtol=1e-10, atol=1e-10)


needs_onnx = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript", "onnxruntime")),
    reason="the export extra (onnx, onnxscript, onnxruntime) is not installed",
)


@needs_onnx
@pytest.mark.parametrize("name", ["softmax", "bn", "sh", "bn+sh", "linear", "sparse", "linear-bn", "linear-sh"])
@pytest.mark.parametrize("padded", [False, True])
def test_onnx_runtime_matches_eager(name, padded, tmp_path):
    """torch.onnx.export(dynamo=True), traced at N = 45, run in ONNX Runtime at N = 37 and 64: equal to eager to
    1e-4 on the valid tokens (float32)."""
    import onnxruntime

    layer = make_layer(name).float().eval()
    x, mask = make_inputs(3, 45, padded, torch.float32)
    batch, length = dims()
    shapes = {"x": {0: batch, 1: length}, "key_padding_mask": None if mask is None else {0: batch, 1: length}}
    path = tmp_path / f"{name}.onnx"
    args = (x,) if mask is None else (x, mask)
    if mask is None:
        shapes.pop("key_padding_mask")
    torch.onnx.export(layer, args, str(path), dynamo=True, dynamic_shapes=shapes, verbose=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for batch_size, n in ((2, 37), (4, 64)):
        x, mask = make_inputs(batch_size, n, padded, torch.float32)
        feeds = {names[0]: x.numpy()} if mask is None else {names[0]: x.numpy(), names[1]: mask.numpy()}
        (out,) = session.run(None, feeds)
        with torch.no_grad():
            ref = layer(x, mask)
        valid = torch.ones(batch_size, n, dtype=torch.bool) if mask is None else ~mask
        torch.testing.assert_close(torch.from_numpy(out)[valid], ref[valid], rtol=1e-4, atol=1e-4)


# Causal forms (SPEC section 5), every variant: the frames flattened by indexing while tracing, and the linear
# kernel's chunked prefix sums chunked by indexing, with one empty chunk more and broadcast sums in place of
# products while exporting (functional.causal._window_sums): export asks no guard it cannot prove for every length.
@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("padded", [False, True])
def test_causal_export_serves_other_lengths(name, padded):
    layer = make_layer(name, causal=True).eval()
    program = exported(layer, padded).module()
    for batch, length in ((2, 37), (1, 64), (1, 150)):
        x, mask = make_inputs(batch, length, padded)
        with torch.no_grad():
            torch.testing.assert_close(program(x, mask), layer(x, mask), rtol=1e-10, atol=1e-10)
