"""The hand-written gradient of BN's softmax inputs (functional/transforms.py ``_BNSoftmaxInputs``) against finite
differences and against autograd's chain of the same formula (the path traced graphs take)."""

import pytest
import torch

from primaldual.functional import kernels, transforms
from tests import tolerances as T


def inputs(mask_kind, seed=0):
    """q, k (B=4, H=2, N=7, D=3) in float64, k offset from 0; padding: sample 0 at its end, sample 1 scattered,
    sample 2 one valid key (its rows are fitted on one key: q̂ = 0), sample 3 fully padded."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(4, 2, 7, 3, generator=g, dtype=torch.float64)
    k = torch.randn(4, 2, 7, 3, generator=g, dtype=torch.float64) + 2.0
    if mask_kind == "none":
        return q, k, None
    mask = torch.zeros(4, 7, dtype=torch.bool)
    mask[0, 4:] = True
    mask[1, ::3] = True
    mask[2, 1:] = True
    mask[3] = True
    return q, k, mask


@pytest.mark.parametrize("mean_weight", [1.0, 0.5])
@pytest.mark.parametrize("mask_kind", ["none", "padded"])
def test_bn_inputs_gradient_equals_finite_differences(mask_kind, mean_weight):
    """Through the softmax kernel: k̂ = k - μ with μ detached is exact only under softmax's shift invariance."""
    q, k, mask = inputs(mask_kind)
    v = torch.randn(4, 2, 7, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def bn_attention(q, k):
        q_hat, k_hat = transforms._BNSoftmaxInputs.apply(q, k, mask, 1e-3, mean_weight)
        return kernels.softmax_kernel(q_hat, k_hat, v, mask)

    assert torch.autograd.gradcheck(bn_attention, (q.requires_grad_(True), k.requires_grad_(True)), eps=1e-6)


@pytest.mark.parametrize("mask_kind", ["none", "padded"])
def test_bn_inputs_gradient_equals_autograd_chain(mask_kind):
    """Both in float64 on the same upstream gradients: equal up to the rounding of a few N-term sums of terms of
    the size of the gradients' terms (``n · eps · scale``, tests/tolerances.py's sum_atol)."""
    q, k, mask = inputs(mask_kind, seed=1)
    g = torch.Generator().manual_seed(2)
    up_q, up_k = (torch.randn(q.shape, generator=g, dtype=torch.float64) for _ in range(2))
    grads = {}
    for name, fn in {
        "hand-written": lambda q, k: transforms._BNSoftmaxInputs.apply(q, k, mask, 1e-5, 0.5),
        "autograd": lambda q, k: transforms._bn_softmax_inputs(q, k, mask, 1e-5, 0.5)[:2],
    }.items():
        leaves = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
        q_hat, k_hat = fn(*leaves)
        ((q_hat * up_q).sum() + (k_hat * up_k).sum()).backward()
        grads[name] = (q_hat.detach(), k_hat.detach(), *(t.grad for t in leaves))
    for label, fast, chain in zip(("q̂", "k̂", "dq", "dk"), grads["hand-written"], grads["autograd"]):
        scale = chain.abs().amax().item() * 10.0  # the gradient's terms: up to (|q - βμ| / s²) · |k - μ| / n
        T.assert_close_normwise(fast, chain, T.sum_atol(torch.float64, 4 * 7, scale), label)
    if mask is not None:  # samples 2 and 3 (one valid key, none): q̂ = 0, so q has no gradient
        assert grads["hand-written"][2][2:].abs().amax() == 0


def test_bn_inputs_refuse_a_second_derivative():
    """The hand-written backward treats the statistics as constants: a gradient of it must fail, not be wrong."""
    q, k, _ = inputs("none")
    q.requires_grad_(True)
    q_hat, k_hat = transforms.bn_softmax_inputs(q, k.requires_grad_(True))
    (grad,) = torch.autograd.grad((q_hat * k_hat).sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()


def test_bn_inputs_take_the_traced_path_while_compiling(monkeypatch):
    """While torch.compile/export trace, bn_softmax_inputs is autograd's chain (dynamo cannot trace the Function
    with dynamic shapes; the compiler fuses the chain instead)."""
    q, k, mask = inputs("padded")
    monkeypatch.setattr(transforms, "tracing", lambda: True)
    q_hat, _ = transforms.bn_softmax_inputs(q.requires_grad_(True), k, mask)
    assert "BNSoftmaxInputs" not in type(q_hat.grad_fn).__name__
    monkeypatch.setattr(transforms, "tracing", lambda: False)
    q_hat, _ = transforms.bn_softmax_inputs(q, k, mask)
    assert "BNSoftmaxInputs" in type(q_hat.grad_fn).__name__


@pytest.mark.parametrize(
    "scales, factors, sizes",
    [
        ((1, 2, 4, 8), (1, 2, 4, 8), (1, 1, 1, 1)),
        ((1, 2, 4, 8, 1, 2, 4, 8), (1, 2, 4, 8), None),  # every 4th head: 4 calls, not 8
        ((1, 1, 2, 2), (1, 2), (2, 2)),
        ((1, 2, 4, 8, 1, 2), (1, 2, 4, 8, 1, 2), (1,) * 6),  # no period divides 6 heads
        ((3, 3, 3), (3,), (3,)),
    ],
)
def test_head_split_makes_the_fewest_groups_of_views(scales, factors, sizes):
    groups = transforms.head_split(scales)
    assert groups == transforms.HeadSplit(factors, sizes)
    x = torch.arange(2 * len(scales) * 3 * 1.0).view(2, len(scales), 3, 1).clone()  # x[0, h, 0, 0] = 3h
    parts = transforms.split_heads(x, groups)
    assert all(part._base is x for part in parts) or (
        len(parts) == 1 and parts[0] is x
    )  # views (one group: x itself), no copy
    for factor, part in zip(factors, parts):
        assert {scales[int(h) // 3] for h in part[0, :, 0, 0]} == {factor}
    assert sorted(int(h) // 3 for part in parts for h in part[0, :, 0, 0]) == list(range(len(scales)))
    joined = transforms.join_heads(parts, groups)
    assert torch.equal(joined, x) and (len(parts) > 1 or joined is x)  # one group: its output as is


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("nq", "nk"), [(7, 7), (3, 7), (1, 7), (9, 7)])
@pytest.mark.parametrize("mask_kind", ["none", "padded", "left"])
def test_empty_rows_read_from_the_padding_equal_those_of_the_mask(mask_kind, nq, nk, causal):
    """transforms.empty_rows (O(B·Nk), from the padding) marks exactly the rows of allowed_keys with no key."""
    mask = (
        inputs(mask_kind)[2] if mask_kind != "left" else torch.arange(7)[None, :] < torch.tensor([[0], [2], [6], [7]])
    )
    allowed = transforms.allowed_keys(nq, nk, mask, causal=causal)
    expected = torch.zeros(1, 1, nq, 1, dtype=torch.bool) if allowed is None else ~allowed.any(-1, keepdim=True)
    found = transforms.empty_rows(nq, nk, mask, causal=causal)
    found = torch.zeros(1, 1, 1, 1, dtype=torch.bool) if found is None else found
    assert torch.equal(*torch.broadcast_tensors(found, expected))
    assert found.any() == expected.any()
