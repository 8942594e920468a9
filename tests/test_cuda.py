"""The layers on a CUDA device in float16 and bfloat16: equal to float32 on the CPU to the dtype's rounding, and
the SDPA backend each variant reaches. Skipped without a GPU (scripts/gpu_check.sh runs these with the benchmark)."""

import pytest
import torch

from primaldual.functional import VARIANTS
from primaldual.layers import Attention

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DTYPES = [torch.float16, torch.bfloat16]
TOL = {torch.float16: dict(rtol=2e-2, atol=2e-2), torch.bfloat16: dict(rtol=8e-2, atol=8e-2)}


def layer_and_inputs(name, dtype, padded):
    torch.manual_seed(0)
    layer = Attention(64, 4, qkv_bias=True, variant=name, **({"window": 8} if name == "sparse" else {}))
    x = torch.randn(3, 100, 64)
    mask = None
    if padded:
        mask = torch.zeros(3, 100, dtype=torch.bool)
        mask[::2, 75:] = True
        x = x.masked_fill(mask[..., None], 0.0)
    return layer, x, mask


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("padded", [False, True])
def test_cuda_matches_cpu_float32(name, dtype, padded):
    layer, x, mask = layer_and_inputs(name, dtype, padded)
    ref = layer(x, mask)
    ref.square().mean().backward()
    ref_grad = layer.qkv.weight.grad.clone()
    layer.zero_grad()
    cuda = layer.to("cuda", dtype)
    out = cuda(x.to("cuda", dtype), None if mask is None else mask.cuda())
    out.float().square().mean().backward()
    torch.testing.assert_close(out.float().cpu(), ref, **TOL[dtype])
    grad = cuda.qkv.weight.grad.float().cpu()
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad, ref_grad, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * ref_grad.abs().max())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["softmax", "bn", "sh", "bn+sh"])
def test_unmasked_variants_reach_a_fused_backend(name, dtype):
    """Without padding, every softmax-kernel variant reaches flash, memory-efficient or cuDNN attention, not math."""
    from benchmarks.layer import sdpa_backends

    layer, x, _ = layer_and_inputs(name, dtype, padded=False)
    backends = sdpa_backends(layer.to("cuda", dtype), x.to("cuda", dtype))
    assert "math" not in backends and backends != "none", backends
