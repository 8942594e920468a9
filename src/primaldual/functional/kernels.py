"""The two kernels of the framework, each evaluated the fast way.

* softmax: ``Φ(x)ᵀΦ(y) = exp(xᵀy/√D)``, infinite-dimensional Φ, so the dual form, through PyTorch's fused
  ``scaled_dot_product_attention``.
* sparse (softmax on a sliding window): queries in blocks, each block against the band of keys it can see,
  so cost and memory grow as ``N·(window)`` rather than ``N²``.
* linear: ``Φ(x) = elu(x) + 1``, finite Φ, so the primal form ``W Φ(q) / h(q)`` with ``W = Σ_j v_j Φ(k_j)ᵀ``:
  linear in the sequence length.

A query that may attend to no key (all its keys padding or outside its window) returns 0.
"""

from __future__ import annotations

from types import EllipsisType

import torch
import torch.nn.functional as F
from torch import Tensor

from .transforms import allowed_keys, empty_rows, export_matmul, tracing


def softmax_kernel(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_padding_mask: Tensor | None = None,
    *,
    causal: bool = False,
    window: int | None = None,
    dropout_p: float = 0.0,
    bias: Tensor | None = None,
) -> Tensor:
    """``Σ_j softmax_j(q_iᵀk_j/√D + b_ij) v_j`` over the allowed keys, via the fused SDPA kernel.

    q ``(B, H, Nq, D)``, k ``(B, Hkv, Nk, D)``, v ``(B, Hkv, Nk, Dv)`` -> ``(B, H, Nq, Dv)``; ``Hkv < H``
    (grouped-query attention) without a window only. ``bias``: an additive score bias broadcastable to
    ``(B, H, Nq, Nk)`` (T5's relative position bias, ALiBi), or None.
    """
    nq, nk = q.shape[2], k.shape[2]
    if bias is None and key_padding_mask is None and window is None and not (causal and nq != nk):
        gqa = k.shape[1] != q.shape[1]
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal, enable_gqa=gqa)
    aligned = not causal or nq == nk
    sliding = window is not None and aligned and not tracing() and _band_block(window) + 2 * window < nk
    if bias is None and sliding:
        return _sliding_window(q, k, v, key_padding_mask, window=window, causal=causal, dropout_p=dropout_p)
    allowed = allowed_keys(nq, nk, key_padding_mask, causal=causal, window=window, device=q.device)
    empty = ... if window is not None else empty_rows(nq, nk, key_padding_mask, causal=causal, device=q.device)
    return _masked_sdpa(q, k, v, allowed, dropout_p, bias, empty=empty)


def _masked_sdpa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    allowed: Tensor | None,
    dropout_p: float,
    bias: Tensor | None = None,
    empty: Tensor | None | EllipsisType = ...,
) -> Tensor:
    """SDPA with a boolean mask (True = attend) and an additive score ``bias``; a row with no allowed key
    returns 0. ``empty``: those rows if the caller knows them (:func:`~.transforms.empty_rows`; None: there are
    none), else ``...``: read from ``allowed``."""
    gqa = k.shape[1] != q.shape[1]
    if allowed is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, enable_gqa=gqa)
    if empty is ...:
        empty = ~allowed.any(-1, keepdim=True)
    # A row with no allowed key would give 0/0: let it see every key (finite values and gradients), then zero it.
    mask = allowed if empty is None else allowed | empty
    if bias is not None:
        mask = bias.to(q.dtype).masked_fill(~mask, float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, enable_gqa=gqa)
    return out if empty is None else out.masked_fill(empty, 0.0)


def _band_block(window: int) -> int:
    """Queries per block of the sliding-window path: at least 64, and at least 2·window (so a block's
    band of ``block + 2·window`` keys is at most twice the keys its queries use)."""
    return max(64, 2 * window)


def _sliding_window(
    q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, *, window: int, causal: bool, dropout_p: float
) -> Tensor:
    """Softmax over keys ``|i - j| <= window`` (and ``j <= i`` if causal), block by block.

    Query block b (queries ``b·T .. b·T+T-1``) sees the band of keys ``b·T - w .. b·T+T-1 + w``: the keys
    are padded by w on the left, unfolded into overlapping bands, and each block runs one SDPA call with
    its band mask. O(N·(T + 2w)·D) time and memory for T = :func:`_band_block`.
    """
    nq, nk = q.shape[2], k.shape[2]
    block = _band_block(window)
    span = block + 2 * window
    blocks = -(-nq // block)
    right = blocks * block + window - nk
    bands = [F.pad(t, (0, 0, window, right)).unfold(2, span, block).transpose(-2, -1) for t in (k, v)]
    valid = (
        torch.ones(k.shape[0], nk, dtype=torch.bool, device=k.device) if key_padding_mask is None else ~key_padding_mask
    )
    valid = F.pad(valid, (window, right), value=False).unfold(1, span, block)  # (B, blocks, span)
    offset = torch.arange(span, device=q.device)[None, :] - torch.arange(block, device=q.device)[:, None]
    band = (offset >= 0) & (offset <= (window if causal else 2 * window))  # key c of query a: |a + w - c| <= w
    allowed = band & valid[:, None, :, None, :]  # (B, 1, blocks, block, span)
    queries = F.pad(q, (0, 0, 0, blocks * block - nq)).unflatten(2, (blocks, block))
    out = _masked_sdpa(queries, *bands, allowed, dropout_p)
    return out.flatten(2, 3)[:, :, :nq]


def elu_feature_map(x: Tensor) -> Tensor:
    """``Φ(x) = elu(x) + 1 > 0``: the feature map of linear attention (Katharopoulos et al., 2020).

    Computed as ``x + 1`` for ``x > 0`` and ``exp(x)`` otherwise: equal to ``elu(x) + 1``, without its
    cancellation for negative x (``exp(x) - 1 + 1`` is exactly 0 below -17 in float32, -6 in bfloat16).
    """
    return torch.where(x > 0, x + 1.0, torch.exp(x.clamp(max=0.0)))


def linear_kernel(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
    """Primal evaluation ``f(q_i) = W Φ(q_i) / h(q_i)``, ``W = Σ_j v_j Φ(k_j)ᵀ``, ``h(q_i) = Φ(q_i)ᵀ Σ_j Φ(k_j)``.

    q ``(B, H, Nq, D)``, k ``(B, H, Nk, D)``, v ``(B, H, Nk, Dv)`` -> ``(B, H, Nq, Dv)``; O(N·D·Dv).
    """
    # Scaling Φ(q_i) by a positive constant changes neither numerator nor normaliser's ratio: shifting a query
    # whose features are all negative by its largest one (Φ = exp there, so Φ(q - m) = Φ(q)·e^-m) keeps Φ(q)
    # from underflowing to 0, e.g. for linear-BN queries against keys of (near) zero variance.
    phi_q = elu_feature_map(q - q.amax(-1, keepdim=True).clamp(max=0.0))
    if torch.compiler.is_exporting():  # SH's pooled keys: a view of a head group's projection, whose strides
        k, v = k.contiguous(), v.contiguous()  # export cannot reason on for every length
    phi_k = elu_feature_map(k)
    if key_padding_mask is not None:
        phi_k = phi_k.masked_fill(key_padding_mask[:, None, :, None], 0.0)
    weights = export_matmul(phi_k.transpose(-2, -1), v)  # Wᵀ: (B, H, D, Dv)
    normaliser = phi_q @ phi_k.sum(2).unsqueeze(-1)  # h(q): (B, H, Nq, 1)
    out = (phi_q @ weights) / normaliser.clamp_min(torch.finfo(normaliser.dtype).tiny)
    return out.masked_fill(normaliser == 0, 0.0)
