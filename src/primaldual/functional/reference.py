"""The formulas of docs/theory.md written out plainly: N×N score matrices, explicit loops, no fused kernels.

This is the one place the formulas live as written; the fast paths are tested against it and the
benchmarks use it as the baseline. Nothing here is meant to be fast. Shapes: q ``(B, H, Nq, D)``,
k ``(B, H, Nk, D)``, v ``(B, H, Nk, Dv)``; ``key_padding_mask`` ``(B, Nk)`` True at padding. A query
with no allowed key returns 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .transforms import grid_window


def allowed_matrix(
    nq: int, nk: int, key_padding_mask: Tensor | None, batch: int, *, causal: bool = False, window: int | None = None
) -> Tensor:
    """``(B, 1, Nq, Nk)`` bool: query i may use key j (not padding, ``j <= i`` if causal, ``|i-j| <= window``)."""
    device = key_padding_mask.device if key_padding_mask is not None else None
    i = torch.arange(nq, device=device)[:, None]
    j = torch.arange(nk, device=device)[None, :]
    allowed = torch.ones(batch, 1, nq, nk, dtype=torch.bool, device=device)
    if causal:
        allowed = allowed & (j <= i)
    if window is not None:
        allowed = allowed & ((i - j).abs() <= window)
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, None, :]
    return allowed


def normalised_weights(scores: Tensor, allowed: Tensor | None) -> Tensor:
    """``w_ij = s_ij / Σ_j s_ij`` over the allowed j, from non-negative kernel values s; 0 for rows with none."""
    if allowed is not None:
        scores = scores * allowed.to(scores.device)
    total = scores.sum(-1, keepdim=True)
    return torch.where(total > 0, scores / torch.where(total > 0, total, 1), 0)


def softmax_weights(q: Tensor, k: Tensor, allowed: Tensor | None, bias: Tensor | None = None) -> Tensor:
    """``softmax_j(q_iᵀk_j/√D + b_ij)`` over the allowed keys, 0 for rows with none: ``(B, H, Nq, Nk)``."""
    logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias
    if allowed is not None:
        logits = logits.masked_fill(~allowed.to(q.device), float("-inf"))
    row_max = logits.amax(-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, 0)
    return normalised_weights((logits - row_max).exp(), None)


def softmax_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_padding_mask: Tensor | None = None,
    *,
    causal: bool = False,
    window: int | None = None,
    bias: Tensor | None = None,
) -> Tensor:
    """``f(q_i) = Σ_j softmax_j(q_iᵀk_j/√D + b_ij) v_j`` over the allowed keys (the dual form of docs/theory.md);
    ``bias`` an additive score bias (T5's), None: 0. Causal queries are the last Nq of the Nk positions."""
    nq, nk = q.shape[2], k.shape[2]
    allowed = allowed_matrix(nq, nk, key_padding_mask, q.shape[0], causal=causal, window=window)
    if causal and nq != nk:  # query i at position Nk - Nq + i
        allowed = allowed_matrix(nk, nk, key_padding_mask, q.shape[0], causal=True, window=window)[:, :, nk - nq :]
    return softmax_weights(q, k, allowed, bias) @ v


def sparse_attention(q: Tensor, k: Tensor, v: Tensor, window: int, key_padding_mask: Tensor | None = None) -> Tensor:
    """Softmax attention restricted to keys with ``|i - j| <= window``."""
    return softmax_attention(q, k, v, key_padding_mask, window=window)


def elu_feature_map(x: Tensor) -> Tensor:
    """``Φ(x) = elu(x) + 1``: ``x + 1`` for ``x > 0``, ``exp(x)`` otherwise (written so, ``exp(x) - 1 + 1`` would
    round to 0 below x ≈ -37 in float64; exp of ``min(x, 0)``, so that no inf reaches the gradient)."""
    return torch.where(x > 0, x + 1, torch.exp(x.clamp(max=0)))


def linear_attention(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
    """Dual form of linear attention: ``Σ_j Φ(q_i)ᵀΦ(k_j) v_j / Σ_j Φ(q_i)ᵀΦ(k_j)`` with an N×N kernel matrix."""
    allowed = None if key_padding_mask is None else (~key_padding_mask)[:, None, None, :]
    return normalised_weights(elu_feature_map(q) @ elu_feature_map(k).transpose(-2, -1), allowed) @ v


def key_statistics(k: Tensor, valid: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Per-feature mean and ``sqrt(var + eps)`` of the rows of k ``(N, D)`` where ``valid`` ``(N,)``; 0-mean if none."""
    rows = k[valid]
    if rows.shape[0] == 0:
        return torch.zeros_like(k[0]), torch.full_like(k[0], math.sqrt(eps))
    mean = rows.mean(0)
    var = ((rows - mean) ** 2).mean(0)
    return mean, torch.sqrt(var + eps)


def _valid_keys(key_padding_mask: Tensor | None, b: int, nk: int, device: torch.device) -> Tensor:
    return torch.ones(nk, dtype=torch.bool, device=device) if key_padding_mask is None else ~key_padding_mask[b]


def bn_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_padding_mask: Tensor | None = None,
    eps: float = 1e-5,
    mean_weight: float = 1.0,
    causal: bool = False,
    bias: Tensor | None = None,
) -> Tensor:
    """Attention-BN: ``softmax_j(x̂(q_i)ᵀx̂(k_j)/√D + b_ij)``, ``x̂(x) = (x - βμ)/s`` with μ, s of the keys query i
    is fitted on (all valid keys; the valid keys ``j <= Nk - Nq + i`` when causal), per sample and head; ``bias``
    broadcastable to ``(B, H, Nq, Nk)``, added after normalisation."""
    if bias is not None:
        bias = bias.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    bsz, heads, nq, _ = q.shape
    nk = k.shape[2]
    out = torch.zeros(*q.shape[:3], v.shape[-1], dtype=q.dtype, device=q.device)
    for b in range(bsz):
        valid = _valid_keys(key_padding_mask, b, nk, q.device)
        for h in range(heads):
            for i in range(nq):
                visible = valid & (torch.arange(nk, device=q.device) <= nk - nq + i) if causal else valid
                if not visible.any():
                    continue
                mean, std = key_statistics(k[b, h], visible, eps)
                qi = (q[b, h, i] - mean_weight * mean) / std
                kj = (k[b, h] - mean_weight * mean) / std
                logits = (kj @ qi) / math.sqrt(q.shape[-1])
                logits = logits if bias is None else logits + bias[b, h, i]
                logits = logits.masked_fill(~visible, float("-inf"))
                out[b, h, i] = torch.softmax(logits, 0) @ v[b, h]
    return out


def pool(
    x: Tensor, valid: Tensor, factor: int, num_prefix_tokens: int = 0, grid: tuple[int, int] | None = None
) -> tuple[Tensor, Tensor]:
    """Mean of x ``(N, C)`` over the valid rows of each window, prefix kept: windows ``[P + w·r, P + (w+1)·r)``
    (ceil mode), or with ``grid = (rows, cols)`` the patches ``P + y·cols + x`` of each ``a × b`` block of the
    grid (``a × b = transforms.grid_window(r)``, blocks in raster order, partial at the borders).

    Returns pooled ``(P + windows, C)`` and its validity (a window is valid if any row is)."""
    p = num_prefix_tokens
    rows, flags = [x[i] for i in range(min(p, x.shape[0]))], [bool(valid[i]) for i in range(min(p, x.shape[0]))]
    for window in _windows(x.shape[0], factor, p, grid):
        window_valid = valid[window]
        pooled = x[window][window_valid]
        rows.append(pooled.mean(0) if pooled.shape[0] else torch.zeros_like(x[0]))
        flags.append(bool(window_valid.any()))
    return torch.stack(rows), torch.tensor(flags, device=x.device)


def _windows(n: int, factor: int, p: int, grid: tuple[int, int] | None) -> list[list[int]]:
    """The positions of each SH window of a sequence of n with p prefix tokens, in order."""
    if grid is None:
        return [list(range(start, min(start + factor, n))) for start in range(p, n, factor)]
    (height, width), (a, b) = grid, grid_window(factor)
    return [
        [p + y * width + x for y in range(top, min(top + a, height)) for x in range(left, min(left + b, width))]
        for top in range(0, height, a)
        for left in range(0, width, b)
    ]


def _per_head(q, k, v, scales, key_padding_mask, head_fn, num_prefix_tokens=0, grid=None, bias=None):
    """Each head on its keys and values pooled by its factor; a bias ``(B|1, H|1, Nq, Nk)``: each pooled key's is
    the mean bias of the valid keys it pools (SPEC section 5), passed to ``head_fn`` as ``bias=``."""
    out = torch.zeros(*q.shape[:3], v.shape[-1], dtype=q.dtype, device=q.device)
    if bias is not None:
        bias = bias.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    for b in range(q.shape[0]):
        valid = _valid_keys(key_padding_mask, b, k.shape[2], q.device)
        for h, r in enumerate(scales):
            parts = (k[b, h], v[b, h]) if bias is None else (k[b, h], v[b, h], bias[b, h].T)
            pooled, pooled_valid = pool(torch.cat(parts, -1), valid, r, num_prefix_tokens, grid)
            pk, pv, pb = pooled.split([t.shape[-1] for t in parts] + [0] * (3 - len(parts)), -1)
            extra = {} if bias is None else {"bias": pb.T[None, None]}
            out[b, h] = head_fn(q[b, h][None, None], pk[None, None], pv[None, None], ~pooled_valid[None], **extra)[0, 0]
    return out


def sh_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scales: Sequence[int],
    key_padding_mask: Tensor | None = None,
    num_prefix_tokens: int = 0,
    grid: tuple[int, int] | None = None,
    bias: Tensor | None = None,
) -> Tensor:
    """Attention-SH: head h is softmax attention on its keys and values pooled by ``scales[h]`` (1D windows, or
    2D windows of the patch ``grid``: :func:`pool`); an additive score ``bias`` is pooled with the keys."""
    return _per_head(q, k, v, scales, key_padding_mask, softmax_attention, num_prefix_tokens, grid, bias)


def bn_sh_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scales: Sequence[int],
    key_padding_mask: Tensor | None = None,
    eps: float = 1e-5,
    mean_weight: float = 1.0,
    num_prefix_tokens: int = 0,
    grid: tuple[int, int] | None = None,
    bias: Tensor | None = None,
) -> Tensor:
    """Attention-BN+SH: pool each head's keys (and ``bias``) by its factor (as :func:`sh_attention`), then BN with
    the pooled keys' statistics."""
    head = lambda q1, k1, v1, m1, **b: bn_attention(q1, k1, v1, m1, eps=eps, mean_weight=mean_weight, **b)  # noqa: E731
    return _per_head(q, k, v, scales, key_padding_mask, head, num_prefix_tokens, grid, bias)


def linear_bn_attention(
    q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None, eps: float = 1e-5, mean_weight: float = 1.0
) -> Tensor:
    """Linear attention on ``x̂(q), x̂(k)`` normalised with the valid keys' statistics (both sides)."""
    qn, kn = torch.empty_like(q), torch.empty_like(k)
    for b in range(q.shape[0]):
        valid = _valid_keys(key_padding_mask, b, k.shape[2], q.device)
        for h in range(q.shape[1]):
            mean, std = key_statistics(k[b, h], valid, eps)
            qn[b, h] = (q[b, h] - mean_weight * mean) / std
            kn[b, h] = (k[b, h] - mean_weight * mean) / std
    return linear_attention(qn, kn, v, key_padding_mask)


def linear_sh_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scales: Sequence[int],
    key_padding_mask: Tensor | None = None,
    num_prefix_tokens: int = 0,
    grid: tuple[int, int] | None = None,
) -> Tensor:
    """Linear attention on each head's keys and values pooled by ``scales[h]`` (as :func:`sh_attention`)."""
    return _per_head(q, k, v, scales, key_padding_mask, linear_attention, num_prefix_tokens, grid)


def causal_training_set(
    k: Tensor, v: Tensor, valid: Tensor, i: int, factor: int = 1, num_prefix_tokens: int = 0
) -> tuple[Tensor, Tensor]:
    """Query i's training set in a causal model (SPEC section 5), for one sample and head: k ``(N, D)``,
    v ``(N, Dv)``, ``valid`` ``(N,)`` -> points ``(M_i, D)``, ``(M_i, Dv)``.

    The valid prefix tokens ``j <= i``; after them windows of ``factor`` positions starting at the first valid key
    after the prefix: each complete window before i's own (mean key and value of its valid positions), then i's
    own window up to i (``P_i``). ``factor = 1``: the valid keys ``j <= i``. A query before the first valid key
    after the prefix (left padding) has only the prefix."""
    p, n = num_prefix_tokens, k.shape[0]
    kv = torch.cat((k, v), -1)
    points = [kv[j] for j in range(min(i + 1, p)) if valid[j]]
    after = [j for j in range(p, n) if valid[j]]
    start = after[0] if after else p
    if i >= start:
        own = (i - start) // factor
        for w in range(own + 1):
            window = [j for j in range(start + w * factor, min(start + (w + 1) * factor, i + 1)) if valid[j]]
            if window:
                points.append(kv[window].mean(0))
    points = torch.stack(points) if points else kv[:0]
    return points[:, : k.shape[1]], points[:, k.shape[1] :]


def causal_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    variant: str,
    key_padding_mask: Tensor | None = None,
    *,
    scales: Sequence[int] | None = None,
    window: int | None = None,
    eps: float = 1e-5,
    mean_weight: float = 1.0,
    num_prefix_tokens: int = 0,
) -> Tensor:
    """The causal form of ``variant`` (SPEC section 5): each query's SVR fitted on its own training set
    (:func:`causal_training_set`; sparse: the valid keys ``i - window <= j <= i``), evaluated by the variant's
    formula above with that one query. Queries are the last Nq of the Nk positions: query a is at
    ``Nk - Nq + a``. ``scales``: one factor per head (the SH variants); ``variant``: a name of ``VARIANTS``."""
    pooled, bn, linear = "sh" in variant, variant.startswith("bn") or "-bn" in variant, variant.startswith("linear")
    formula = {
        (False, False): softmax_attention,
        (False, True): lambda *a: bn_attention(*a, eps=eps, mean_weight=mean_weight),
        (True, False): linear_attention,
        (True, True): lambda *a: linear_bn_attention(*a, eps=eps, mean_weight=mean_weight),
    }[linear, bn]
    out = torch.zeros(*q.shape[:3], v.shape[-1], dtype=q.dtype, device=q.device)
    nq, nk = q.shape[2], k.shape[2]
    for b in range(q.shape[0]):
        valid = _valid_keys(key_padding_mask, b, nk, q.device)
        for h in range(q.shape[1]):
            factor = scales[h] if pooled else 1
            for a in range(nq):
                i = nk - nq + a
                if window is None:
                    keys, values = causal_training_set(k[b, h], v[b, h], valid, i, factor, num_prefix_tokens)
                else:
                    seen = [j for j in range(max(0, i - window), i + 1) if valid[j]]
                    keys, values = k[b, h, seen], v[b, h, seen]
                if keys.shape[0]:
                    out[b, h, a] = formula(q[b, h, a][None, None, None], keys[None, None], values[None, None])[0, 0, 0]
    return out
