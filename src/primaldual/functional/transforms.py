"""Data transforms of the framework: what each head's SVR is fitted on and how its inputs are normalised.

* BN: masked per-(sample, head, feature) key statistics, whole-sequence or prefix (causal).
* SH: masked average pooling of keys/values along the sequence, ceil mode, per head factor.
* SH's heads split into groups of one factor (views; each group one fused kernel call).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .checks import check_grid_tokens


def tracing() -> bool:
    """True while torch.compile or torch.export traces: shape-dependent Python branches then take the path that
    is correct for every length, so that one graph serves them all."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


def export_matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` of ``(.., n, m)`` and ``(.., m, p)``; while torch.export traces, a broadcast sum (``n·m·p`` per
    batch element, not ``n·p``): the matmul's reshape to a batched product of a symbolic count (SH's windows, the
    linear kernel's chunks) makes export guard divisibilities such as ``1 % W != 0`` that it cannot prove for
    every length. torch.compile keeps the product (its guards only recompile)."""
    if torch.compiler.is_exporting():
        return (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(-2)
    return a @ b


def _stat_dtype(x: Tensor) -> torch.dtype:
    """Statistics are accumulated in at least float32 (bf16/fp16 sums lose too much)."""
    return torch.promote_types(x.dtype, torch.float32)


class KeyStatistics(NamedTuple):
    """Masked key statistics per sample, head and feature (see :func:`key_statistics`)."""

    mean: Tensor  # μ: (B, H, 1, D), or (B, H, N, D) prefix means when causal
    var: Tensor  # s² = var + eps, same shape as mean
    count: Tensor  # number of valid keys: (B or 1, 1, 1, 1), or (B or 1, 1, N, 1) when causal
    centre: Tensor  # mean of all valid keys, (B, H, 1, D) (= mean when not causal)


def key_statistics(
    k: Tensor, key_padding_mask: Tensor | None = None, *, eps: float = 1e-5, causal: bool = False
) -> KeyStatistics:
    """Mean ``μ``, variance-plus-eps ``s² = var + eps`` and count of the keys k ``(B, H, N, D)`` over the
    valid positions: over the whole sequence, or with ``causal`` over the prefix ``j <= i`` of each row i.

    Population variance. Padded keys are excluded; with no valid key ``μ = 0, s² = eps``. Accumulated in
    at least float32, returned in k's dtype.
    """
    dtype = _stat_dtype(k)
    if not causal:
        mean, var, _, count = _plain_statistics(k, key_padding_mask)
        return KeyStatistics(mean.to(k.dtype), (var + eps).to(k.dtype), count, mean.to(k.dtype))
    x = k.to(dtype)
    valid = None if key_padding_mask is None else (~key_padding_mask)[:, None, :, None].to(dtype)
    count = x.new_full((1, 1, 1, 1), x.shape[2]) if valid is None else valid.sum(2, keepdim=True)
    centre = (x if valid is None else x * valid).sum(2, keepdim=True) / count.clamp_min(1)
    shifted = x - centre if valid is None else (x - centre) * valid
    # Prefix sums of the keys shifted by the full mean: var_i = E_i[y²] - E_i[y]² cancels where a prefix sits
    # far from that mean (a tight prefix of large keys: in float32 its relative error is eps32 · E_i[y]² / var_i),
    # so they are accumulated in float64 (O(N·D), beside the O(N²·D) attention) where the device has it.
    acc = dtype if x.device.type == "mps" else torch.float64
    y = shifted.to(acc)
    steps = torch.arange(1, x.shape[2] + 1, device=x.device, dtype=acc)[None, None, :, None]
    count = steps if valid is None else valid.to(acc).cumsum(2)
    delta = y.cumsum(2) / count.clamp_min(1)
    var = ((y.square().cumsum(2) / count.clamp_min(1) - delta.square()).clamp_min(0)).to(dtype)
    mean = centre + delta.to(dtype)
    count = count.to(dtype)
    return KeyStatistics(mean.to(k.dtype), (var + eps).to(k.dtype), count, centre.to(k.dtype))


def _plain_statistics(k: Tensor, key_padding_mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Mean ``(B, H, 1, D)``, population variance and count ``(B or 1, 1, 1, 1)`` of the valid keys, and the
    centred keys ``k - μ`` (all of them), in at least float32; with no valid key ``μ = 0``, ``var = 0``.

    Two passes rather than one ``torch.var_mean``: its Welford reduction over the sequence dimension of a layer's
    strided keys is 20x slower than ``mean`` on a CPU (22 ms vs 1 ms for 2M floats), and the centred keys are
    the softmax kernel's input anyway. μ is detached in them: ``∂var/∂k_j = 2 w_j (k_j - μ)/n`` either way, since
    the term through μ, ``-2/n² Σ_i w_i (k_i - μ)`` (w: 1 at valid keys, n their count), is exactly 0.
    """
    x = k.to(_stat_dtype(k))
    if key_padding_mask is None:
        count = x.new_full((1, 1, 1, 1), x.shape[2])
        mean = x.mean(2, keepdim=True) if x.shape[2] else x.new_zeros(*x.shape[:2], 1, x.shape[3])
        centred = x - mean.detach()
        return mean, centred.square().mean(2, keepdim=True) if x.shape[2] else mean, centred, count
    valid = (~key_padding_mask)[:, None, :, None].to(x.dtype)
    count = valid.sum(2, keepdim=True)
    mean = (x * valid).sum(2, keepdim=True) / count.clamp_min(1)
    centred = x - mean.detach()
    return mean, (centred.square() * valid).sum(2, keepdim=True) / count.clamp_min(1), centred, count


def bn_softmax_inputs(
    q: Tensor,
    k: Tensor,
    key_padding_mask: Tensor | None = None,
    *,
    eps: float = 1e-5,
    mean_weight: float = 1.0,
    causal: bool = False,
) -> tuple[Tensor, Tensor]:
    """Query and key that make plain softmax attention equal Attention-BN: ``(q - βμ) ⊘ s²`` and ``k - m``.

    ``x̂(q_i)ᵀx̂(k_j) = ((q_i - βμ) ⊘ s²)ᵀ(k_j - m) + c_i`` for any fixed vector m, and softmax ignores the
    per-row constant ``c_i``; so one fused softmax kernel computes ``softmax(x̂(q)ᵀx̂(k)/√D)``, also with
    per-row prefix statistics (causal). m is the mean of all valid keys: centring removes the large
    common offset of the logits that would otherwise cost float32 precision. q ``(B, H, Nq, D)``.
    A row fitted on at most one key outputs that key's value whatever its query: its query is set to 0
    so that rounding noise is not amplified by ``1/eps`` in the backward pass (the causal first row).
    """
    if not causal and tracing():  # autograd's chain of the formula, which the compiler fuses
        return _bn_softmax_inputs(q, k, key_padding_mask, eps, mean_weight)[:2]
    if not causal:
        return _BNSoftmaxInputs.apply(q, k, key_padding_mask, eps, mean_weight)
    stats = key_statistics(k, key_padding_mask, eps=eps, causal=True)  # per key head: (B, Hkv, N, D)
    scale = stats.var.reciprocal().masked_fill(stats.count <= 1, 0.0)
    shift = (stats.mean * -mean_weight).masked_fill(stats.count <= 1, 0.0)
    if q.shape[2] != k.shape[2]:  # queries at the last positions (after a KV cache)
        scale, shift = scale[:, :, k.shape[2] - q.shape[2] :], shift[:, :, k.shape[2] - q.shape[2] :]
    if k.shape[1] != q.shape[1]:  # grouped-query attention: each key head's statistics serve its query heads
        groups = q.shape[1] // k.shape[1]
        scale, shift = scale.repeat_interleave(groups, dim=1), shift.repeat_interleave(groups, dim=1)
    return (q + shift) * scale, k - stats.centre.detach()


def _bn_softmax_inputs(
    q: Tensor, k: Tensor, key_padding_mask: Tensor | None, eps: float, mean_weight: float
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """``q̂ = q·a + b`` with ``a = 1/s²``, ``b = -βμ/s²`` (both 0 where a row is fitted on at most one key) and
    ``k̂ = k - μ``, μ detached; and what the gradient needs: ``(μ, a, count, k - μ in the statistics' dtype)``."""
    mean, var, centred, count = _plain_statistics(k, key_padding_mask)
    scale = (var + eps).reciprocal()
    if key_padding_mask is not None or k.shape[2] <= 1:  # else every row is fitted on N > 1 keys
        scale = scale.masked_fill(count <= 1, 0.0)
    q_hat = torch.addcmul((mean * scale * -mean_weight).to(q.dtype), q, scale.to(q.dtype))
    return q_hat, centred.to(k.dtype), (mean, scale, count, centred)


class _BNSoftmaxInputs(torch.autograd.Function):
    """:func:`_bn_softmax_inputs` with its gradient written out, for eager calls: autograd's chain of the formula
    makes about twelve passes over the (B, H, N, D) tensors backward, this one five.

    μ is detached in ``k̂ = k - μ``: its exact gradient through k̂ is 0, by softmax's shift invariance. With ``g``
    the gradient of q̂, sums over queries i, ``w_j`` 1 at valid keys and n their count:
    ``∂L/∂q = g·a``, ``∂L/∂a = Σ_i g_i (q_i - βμ)``, ``∂L/∂μ = -βa Σ_i g_i``, ``∂L/∂s² = -a² ∂L/∂a``,
    ``∂L/∂k_j = ∂L/∂k̂_j + w_j (∂L/∂μ + 2 ∂L/∂s² (k_j - μ)) / n`` (the term of var through μ is exactly 0).
    """

    @staticmethod
    def forward(ctx, q, k, key_padding_mask, eps, mean_weight):
        q_hat, k_hat, (mean, scale, count, centred) = _bn_softmax_inputs(q, k, key_padding_mask, eps, mean_weight)
        ctx.save_for_backward(q, centred, mean, scale, count, key_padding_mask)
        ctx.mean_weight = mean_weight
        return q_hat, k_hat

    @staticmethod
    @once_differentiable  # the saved statistics are constants of this formula: no second derivative from it
    def backward(ctx, grad_q_hat, grad_k_hat):
        q, centred, mean, scale, count, key_padding_mask = ctx.saved_tensors
        beta, n = ctx.mean_weight, count.clamp_min(1)
        sum_g = grad_q_hat.sum(2, keepdim=True, dtype=scale.dtype)  # statistics' dtype: at least float32
        grad_scale = torch.linalg.vecdot(grad_q_hat.to(scale.dtype), q.to(scale.dtype), dim=2).unsqueeze(2)
        grad_scale = grad_scale - beta * mean * sum_g
        grad_q = grad_k = None
        if ctx.needs_input_grad[0]:
            grad_q = grad_q_hat * scale.to(grad_q_hat.dtype)
        if ctx.needs_input_grad[1]:
            # ∂L/∂μ / n and 2 ∂L/∂s² / n, per (sample, head, feature)
            grad_k = torch.addcmul(-beta * scale * sum_g / n, centred, -2.0 * scale.square() * grad_scale / n)
            if key_padding_mask is not None:
                grad_k = grad_k.masked_fill_(key_padding_mask[:, None, :, None], 0.0)
            grad_k = grad_k.to(grad_k_hat.dtype).add_(grad_k_hat)
        return grad_q, grad_k, None, None, None


def bn_normalize(
    q: Tensor,
    k: Tensor,
    key_padding_mask: Tensor | None = None,
    *,
    eps: float = 1e-5,
    mean_weight: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Both sides normalised with the key statistics, ``x̂ = (x - βμ) ⊘ s``: for kernels without
    softmax's shift invariance (linear-BN)."""
    stats = key_statistics(k, key_padding_mask, eps=eps)
    scale = stats.var.rsqrt()
    return (q - mean_weight * stats.mean) * scale, (k - mean_weight * stats.mean) * scale


def rotary(x: Tensor, rope: Tensor, *, num_prefix_tokens: int = 0, half: bool = False) -> Tensor:
    """Rotary position embedding of x ``(B, H, N, D)`` after its first ``P = num_prefix_tokens`` positions (class
    and register tokens are not rotated): ``x ⊙ cos + rot(x) ⊙ sin``, with ``rope = cat(sin, cos)``
    ``(.., N - P, 2D)`` as timm's EVA-family models pass it. ``rot`` turns each pair of neighbouring channels,
    ``(x₀, x₁) -> (-x₁, x₀)``, or with ``half`` the two halves, ``(x_a, x_b) -> (-x_b, x_a)``. In x's dtype.

    Written here rather than imported so that the layers do not depend on timm; tests compare it with timm's
    ``apply_rot_embed_cat``."""
    p = num_prefix_tokens
    if rope.shape[-2] != x.shape[-2] - p or rope.shape[-1] != 2 * x.shape[-1]:
        raise ValueError(
            f"rope must be (..., {x.shape[-2] - p}, {2 * x.shape[-1]}) for {x.shape[-2]} tokens of which {p} are "
            f"prefix tokens and heads of width {x.shape[-1]}, got shape {tuple(rope.shape)}"
        )
    sin, cos = rope.chunk(2, -1)
    body = x[..., p:, :]
    if half:
        first, second = body.chunk(2, -1)
        turned = torch.cat((-second, first), -1)
    else:
        turned = torch.stack((-body[..., 1::2], body[..., ::2]), -1).flatten(-2)
    rotated = (body * cos + turned * sin).to(x.dtype)
    return torch.cat((x[..., :p, :], rotated), -2) if p else rotated


def pool_keys(
    k: Tensor,
    v: Tensor,
    key_padding_mask: Tensor | None,
    factor: int,
    *,
    num_prefix_tokens: int = 0,
    grid: tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Average keys and values over non-overlapping windows of ``factor`` positions (Attention-SH).

    k ``(B, H, N, D)``, v ``(B, H, N, Dv)`` -> ``(B, H, P + ceil((N-P)/factor), ·)`` where the first
    ``P = num_prefix_tokens`` positions (class/register tokens) are kept unpooled. The last window may
    be partial; padded keys are left out of each window's mean; a window is padding only if all its
    keys are (its pooled value is then 0). Returns the pooled mask, or None when nothing is padding.
    ``grid``: the N - P keys are an image's patches ``(rows, cols)`` in raster order, pooled over 2D windows
    (:func:`grid_window`) into ``P + ceil(rows/a)·ceil(cols/b)`` keys, windows in raster order.
    """
    prefix = num_prefix_tokens
    (pk, pv), pooled_mask = pool_sequence((k, v), key_padding_mask, factor, num_prefix_tokens=prefix, grid=grid)
    return pk, pv, pooled_mask


def grid_window(factor: int) -> tuple[int, int]:
    """Grid SH's window for factor r: ``a × b`` patches (rows × cols) with ``a·b = r``, as square as r allows
    (``a`` the largest divisor of r with ``a² <= r``): 1 -> 1×1, 2 -> 1×2, 4 -> 2×2, 8 -> 2×4, 16 -> 4×4."""
    rows = max(a for a in range(1, math.isqrt(factor) + 1) if factor % a == 0)
    return rows, factor // rows


def pool_sequence(
    tensors: Sequence[Tensor],
    key_padding_mask: Tensor | None,
    factor: int,
    *,
    num_prefix_tokens: int = 0,
    grid: tuple[int, int] | None = None,
) -> tuple[tuple[Tensor, ...], Tensor | None]:
    """:func:`pool_keys` of each of ``tensors`` along its second-to-last (sequence) dimension: keys and values
    ``(B, H, N, ·)``, or a layer's tokens ``(B, N, C)``; ``key_padding_mask`` ``(B, N)`` as there.

    Shape-generic: the window count and the padding of the last window are computed from N, so one
    ``torch.compile(dynamic=True)`` graph or exported program serves every length. Eager calls with full
    windows and no mask take a view-and-mean shortcut (equal to the generic path). ``grid``: 2D windows of the
    patch grid, as in :func:`pool_keys`.
    """
    p, length = num_prefix_tokens, tensors[0].shape[-2] - num_prefix_tokens
    if factor == 1 or length <= 0:
        return tuple(tensors), key_padding_mask
    body = [t[..., p:, :] for t in tensors]
    valid = None if key_padding_mask is None else ~key_padding_mask[:, p:]
    if grid is not None:
        check_grid_tokens(grid, p, tensors[0].shape[-2])
        pooled, pooled_valid = _pool_grid(body, valid, factor, grid)
    else:
        pooled, pooled_valid = _pool_raster(body, valid, factor)
    pooled_mask = None if pooled_valid is None else ~pooled_valid
    if p:
        pooled = [torch.cat((t[..., :p, :], pt), -2) for t, pt in zip(tensors, pooled)]
        if pooled_mask is not None:
            pooled_mask = torch.cat((key_padding_mask[:, :p], pooled_mask), 1)
    return tuple(pooled), pooled_mask


def _pool_raster(body: list[Tensor], valid: Tensor | None, factor: int) -> tuple[list[Tensor], Tensor | None]:
    """:func:`pool_sequence` of the tokens after the prefix, ``(.., L, C)``, over windows of ``factor``
    consecutive positions; ``valid`` ``(B, L)`` or None. The pooled tokens and their validity ``(B, W)``."""
    length = body[0].shape[-2]
    windows = (length + factor - 1) // factor
    extra = windows * factor - length  # positions missing from the last window
    if valid is None and not tracing() and extra == 0:
        return [t.unflatten(-2, (windows, factor)).mean(-2) for t in body], None
    if valid is None:  # a window's count: factor, the last one possibly fewer
        ends = torch.arange(1, windows + 1, device=body[0].device) * factor
        weights, count = None, (length - ends + factor).clamp(max=factor).to(body[0].dtype)[:, None]
    else:  # (B, 1.., W, r, 1), broadcast over the dimensions between batch and sequence
        padded = F.pad(valid.to(body[0].dtype), (0, extra))
        weights = padded.view(padded.shape[0], *[1] * (body[0].dim() - 3), windows, factor, 1)
        count = weights.sum(-2)
    pooled = [_window_sums(t, weights, windows, factor, extra) / count.clamp_min(1) for t in body]
    return pooled, None if valid is None else _count_valid(count)


def _count_valid(count: Tensor) -> Tensor:
    """A window count ``(B, 1.., W, 1)`` as the windows' validity ``(B, W)``, by indexing: a reshape makes
    torch.export guard ``1 % W != 0``."""
    return count[(slice(None), *[0] * (count.dim() - 3), ..., 0)] > 0


def _pool_grid(
    body: list[Tensor], valid: Tensor | None, factor: int, grid: tuple[int, int]
) -> tuple[list[Tensor], Tensor | None]:
    """:func:`pool_sequence` of an image's patch tokens ``(.., rows·cols, C)`` over the 2D windows of
    :func:`grid_window`: the patches zero-padded to whole windows, each window's (valid) sum divided by its
    count of (valid) patches."""
    rows, cols = grid
    a, b = grid_window(factor)
    shape = (-(-rows // a), a, -(-cols // b), b)
    pad = (0, 0, 0, shape[2] * b - cols, 0, shape[0] * a - rows)

    def sums(x: Tensor) -> Tensor:  # (.., rows·cols, C) -> (.., windows, C)
        x = F.pad(x.unflatten(-2, (rows, cols)), pad).unflatten(-3, shape[:2]).unflatten(-2, shape[2:])
        return x.sum((-4, -2)).flatten(-3, -2)

    if valid is None:
        count = sums(torch.ones(rows * cols, 1, device=body[0].device, dtype=body[0].dtype))
        return [sums(t) / count for t in body], None
    weights = valid.to(body[0].dtype).view(valid.shape[0], *[1] * (body[0].dim() - 3), -1, 1)
    count = sums(weights)
    return [sums(t * weights) / count.clamp_min(1) for t in body], _count_valid(count)


def _window_sums(x: Tensor, weights: Tensor | None, windows: int, factor: int, extra: int) -> Tensor:
    """``Σ`` over each window of x ``(.., L, C)`` (zero-padded by ``extra``), weighted by ``(.., W, r, 1)``."""
    x = F.pad(x, (0, 0, 0, extra)).unflatten(-2, (windows, factor))
    return (x if weights is None else x * weights).sum(-2)


def head_runs(scales: Sequence[int]) -> list[tuple[int, int]]:
    """Runs of consecutive heads sharing a factor, ``[(factor, heads in the run), ...]`` in head order."""
    runs: list[tuple[int, int]] = []
    for r in scales:
        if runs and runs[-1][0] == r:
            runs[-1] = (r, runs[-1][1] + 1)
        else:
            runs.append((r, 1))
    return runs


class HeadSplit(NamedTuple):
    """SH's heads in groups of one factor, each group one kernel call on views of q, k, v: runs of consecutive
    heads (``sizes``: heads per run), or for factors repeated with period P (the default ``(1, 2, 4, 8)`` over 8
    heads) every P-th head (``sizes`` None): whichever makes fewer groups, since at short lengths each call's
    fixed cost counts."""

    factors: tuple[int, ...]  # one per group
    sizes: tuple[int, ...] | None

    def slices(self) -> list[slice]:
        """Each group's heads as a slice of the head dimension, in the order of :func:`split_heads`."""
        if self.sizes is None:
            return [slice(g, None, len(self.factors)) for g in range(len(self.factors))]
        ends = list(itertools.accumulate(self.sizes))
        return [slice(end - size, end) for end, size in zip(ends, self.sizes)]


def head_split(scales: Sequence[int]) -> HeadSplit:
    """The fewest groups of :class:`HeadSplit` for the per-head factors ``scales``."""
    heads = len(scales)
    runs = head_runs(scales)
    period = next(
        p for p in range(1, heads + 1) if heads % p == 0 and all(scales[h] == scales[h % p] for h in range(heads))
    )
    if period < len(runs):
        return HeadSplit(tuple(scales[:period]), None)
    return HeadSplit(tuple(r for r, _ in runs), tuple(n for _, n in runs))


def split_heads(x: Tensor, groups: HeadSplit) -> list[Tensor]:
    """x ``(B, H, N, D)`` as the groups' views ``(B, H_g, N, D)``. Split in the ``(B, N, H, D)`` order: backward, the
    groups' gradients are then joined in the memory layout SDPA's own gradients have and a layer's qkv projection
    reads; joined along H of ``(B, H, N, D)`` they would cost a transposing copy. One group: x itself (a split of
    one part would still be joined by a copy backward)."""
    if len(groups.factors) == 1:
        return [x]
    x = x.transpose(1, 2)
    parts = x.split(groups.sizes, 2) if groups.sizes else x.unflatten(2, (-1, len(groups.factors))).unbind(3)
    return [part.transpose(1, 2) for part in parts]


def join_heads(outputs: Sequence[Tensor], groups: HeadSplit) -> Tensor:
    """The groups' outputs ``(B, H_g, Nq, Dv)`` as one ``(B, H, Nq, Dv)``, heads in their order, written in the
    ``(B, Nq, H, Dv)`` memory layout that SDPA writes and a layer's ``transpose(1, 2).reshape`` reads as is.
    One group: its output, not a copy."""
    if len(outputs) == 1:
        return outputs[0]
    parts = [out.transpose(1, 2) for out in outputs]
    joined = torch.cat(parts, 2) if groups.sizes else torch.stack(parts, 3).flatten(2, 3)
    return joined.transpose(1, 2)


def allowed_keys(
    nq: int,
    nk: int,
    key_padding_mask: Tensor | None,
    *,
    causal: bool = False,
    window: int | None = None,
    device: torch.device | None = None,
) -> Tensor | None:
    """Boolean mask, True where query i may attend key j, broadcastable to ``(B, 1, Nq, Nk)``.

    Combines key padding, causality (``j <= i``) and a sliding window (``|i - j| <= window``). Causal queries are
    the last Nq of the Nk positions (query i at ``Nk - Nq + i``). None when every key is allowed.
    """
    allowed = None
    if causal or window is not None:
        i = torch.arange(nq, device=device)[:, None] + (nk - nq if causal else 0)
        j = torch.arange(nk, device=device)[None, :]
        allowed = j <= i if causal else None
        if window is not None:
            near = (i - j).abs() <= window
            allowed = near if allowed is None else allowed & near
    if key_padding_mask is not None:
        keys = (~key_padding_mask)[:, None, None, :]
        allowed = keys if allowed is None else allowed & keys
    return allowed


def empty_rows(
    nq: int, nk: int, key_padding_mask: Tensor | None, *, causal: bool = False, device: torch.device | None = None
) -> Tensor | None:
    """The queries of :func:`allowed_keys` (no window) that may attend no key, read from the padding in
    ``O(B·Nk)`` rather than from the ``(B, 1, Nq, Nk)`` mask: ``(B or 1, 1, Nq or 1, 1)`` bool, or None when no
    query can be one. Causal query i sees no key when no valid key is at or before its position ``Nk - Nq + i``
    (a negative position when ``Nq > Nk``)."""
    if not causal:
        return None if key_padding_mask is None else key_padding_mask.all(-1)[:, None, None, None]
    if key_padding_mask is None:
        return None if nq <= nk else (torch.arange(nq, device=device) < nq - nk)[None, None, :, None]
    valid = (~key_padding_mask).cumsum(-1)  # valid keys up to each position
    seen = F.pad(valid, (max(nq - nk, 0) + 1, 0))[:, -nq:]  # ... up to each query's position (0 before key 0)
    return (seen == 0)[:, None, :, None]
