"""Tolerances of the test suite as error laws, not as one CPU's rounding.

A fast path (fused SDPA, prefix sums, pooled keys) and the plain formula of :mod:`primaldual.functional.reference`
round differently: in another order, with other SIMD widths (``ATEN_CPU_CAPABILITY=default | avx2 | avx512``),
with other blockings of the same sums. A tolerance measured on one machine is one sample of that rounding; the
bound below holds for every order, because it follows from how large the rounded quantities are. docs/numerics.md
derives it; in short, for attention compared against the float64 reference:

* **Scores.** The fast path rounds ``r`` of the kernel's inputs to the dtype (BN: ``(q - βμ)/s²`` and ``k - m``;
  SH: the pooled keys) and sums ``D`` products in the accumulation dtype; each score is then off by about
  ``(r · eps + √D · eps_acc) · S`` with ``S = max_ij Σ_d |q̂_id| |k̂_jd| / √D`` the size of the scores' terms
  (:func:`score_size`), not of the scores: BN's shift identity and a causal prefix far from the mean of all
  keys make the terms large and the score small. (√D: rounding errors of a sum grow as the square root of
  its length, Wilkinson's rule of thumb.)
* **Weights and outputs.** Softmax turns an absolute score error δ into a relative weight error of at most 2δ;
  every output and gradient is a sum over at most ``N`` keys or queries of weights times values (``√N · eps_acc``
  relative to the sum's size) and is rounded once to the dtype (``eps``).
* **Gradients through BN's statistics.** The key gradient also flows through ``μ`` and ``s²``; ``∂x̂/∂s = -x̂/s``
  multiplies the score error by another ``|x̂(q)| |x̂(k)|``, i.e. by another ``1 + S``: order 2.

So ``|fast - exact| <= [eps · (r·S + 1) + eps_acc · (√D·S + √N)] · (1 + S)^(order-1) · M`` (:func:`attention_atol`),
with ``M`` the largest magnitude of the exact tensor, for a gradient at least that of its terms
(:func:`gradient_scale`): a normwise bound, an element that cancels to nearly 0 is not asked for more relative
accuracy than its tensor. The float64 reference rounds by the same law with ``eps(float64)``, which is added.
Checked on 5,200 random problems per SIMD level (every case of tests/functional/test_variants.py, 5 shapes,
10 seeds, float32 and float64, outputs and the three gradients) under ``ATEN_CPU_CAPABILITY=default``, ``avx2``
and ``avx512``: the largest error was 0.24 of this bound (bfloat16 and float16 outputs: 0.30).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def eps(dtype: torch.dtype) -> float:
    """Machine epsilon of ``dtype`` (2u: the distance from 1 to the next number)."""
    return torch.finfo(dtype).eps


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype PyTorch's CPU kernels accumulate ``dtype``'s sums in (its "opmath" type): float32 for the
    16-bit floats, ``dtype`` itself otherwise."""
    return torch.promote_types(dtype, torch.float32)


def attention_atol(
    dtype: torch.dtype,
    size: float,
    scale: float,
    *,
    head_dim: int,
    length: int,
    rounded_inputs: int = 2,
    order: int = 1,
) -> float:
    """Absolute tolerance of an attention output or gradient of scale ``scale`` (its largest magnitude; for a
    gradient :func:`gradient_scale`) whose scores have terms of size ``size`` (S: :func:`score_size`).

    ``[eps · (r·S + 1) + eps_acc · (√D·S + √N)] · (1 + S)^(order - 1) · scale``, for the fast path in ``dtype``
    and for the float64 reference, added: ``r = rounded_inputs`` kernel inputs rounded to the dtype by the fast
    path (0 for q and k as given, 1 for pooled keys, 2 for BN's ``(q - βμ)/s²`` and ``k - m`` or the linear
    kernel's Φ(q), Φ(k)), one rounding of the result, a D-term dot product and N-term sums in the accumulation
    dtype (eps_acc: :func:`accumulation_dtype`). ``order`` 2 for key gradients through BN's statistics."""

    def law(dt: torch.dtype) -> float:
        acc = eps(accumulation_dtype(dt))
        return eps(dt) * (rounded_inputs * size + 1) + acc * (math.sqrt(max(head_dim, 1)) * size + math.sqrt(max(length, 1)))

    factor = law(dtype) + law(torch.float64)
    return factor * (1.0 + size) ** (order - 1) * max(scale, torch.finfo(torch.float64).tiny)


def gradient_scale(gradient: Tensor, upstream: Tensor, values: Tensor) -> float:
    """The scale of an attention gradient: its largest exact magnitude, and at least that of its terms,
    ``max |upstream| · max |values|``. A q or k gradient is ``Σ_j`` (upstream · weight change · (v_j - o_i)):
    where the terms cancel exactly (a row fitted on one key has q gradient 0) the fast path keeps rounding
    noise of the terms' size, so a normwise bound on the cancelled result alone would ask the impossible."""
    terms = upstream.double().abs().amax().item() * values.double().abs().amax().item() if values.numel() else 0.0
    return max(gradient.double().abs().amax().item() if gradient.numel() else 0.0, terms)


def score_size(q_hat: Tensor, k_hat: Tensor, allowed: Tensor | None = None) -> float:
    """``S = max_ij Σ_d |q̂_id| |k̂_jd| / √D`` over the allowed pairs: q̂ ``(..., Nq, D)``, k̂ ``(..., Nk, D)`` the
    softmax kernel's inputs, ``allowed`` bool broadcastable to ``(..., Nq, Nk)``. 0 when nothing is allowed."""
    if q_hat.numel() == 0 or k_hat.numel() == 0:
        return 0.0
    terms = q_hat.double().abs() @ k_hat.double().abs().transpose(-2, -1) / math.sqrt(q_hat.shape[-1])
    if allowed is not None:
        terms = terms.masked_fill(~allowed, 0.0)
    return terms.amax().item()


def exp_size(x_hat: Tensor) -> float:
    """The linear kernel's condition: ``Φ = exp(x)`` for ``x <= 0`` turns an input rounding ``u |x|`` into a
    relative error ``u |x|`` of Φ, so its size is ``max |x̂|`` over the kernel's inputs (x + 1 above 0: size 1)."""
    return x_hat.double().abs().amax().item() if x_hat.numel() else 0.0


def sum_atol(dtype: torch.dtype, terms: int, scale: float) -> float:
    """A sum or mean of ``terms`` numbers of magnitude at most ``scale``, computed in two orders: each result is
    within ``γ_n ≈ n · u`` of the exact sum (worst case, Higham's Theorem 4.4), so two differ by ``n · eps · scale``
    at most."""
    return max(terms, 1) * eps(dtype) * scale


def assert_close_normwise(actual: Tensor, expected: Tensor, atol: float, msg: str = "") -> None:
    """``|actual - expected| <= atol`` elementwise (expected in float64), with a message naming the bound."""
    assert actual.shape == expected.shape, f"{msg}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    error = (actual.double() - expected.double()).abs()
    worst = error.amax().item() if error.numel() else 0.0
    assert worst <= atol, f"{msg}: largest error {worst:.3g} > bound {atol:.3g} ({worst / atol:.2f}x)"
