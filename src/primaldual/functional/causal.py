"""Causal forms of the variants that pool keys or use the linear kernel (SPEC section 5, docs/theory.md).

Query i's SVR is fitted on its own past. Queries are the last Nq of the Nk key positions (a prompt or a training
step: Nq = Nk; new tokens after a KV cache: Nq < Nk): query a sits at position ``i = Nk - Nq + a``. Its training
set, as points (key, value):

* **carried points**, seen by query i iff their position is < i: the P prefix tokens at their positions, then
  each window's mean at the window's last position (a complete window);
* **its own point**: its key (a prefix token), or the running mean ``P_i`` of its open window up to i.

Windows of r positions start at the first valid key after the prefix, so left padding moves none: each sample is
read in its *frame*, shifted left past that padding, where window w holds the positions ``[P + w·r, P + (w+1)·r)``.
A window's mean, and ``P_i``, average its valid positions only. r = 1: the carried points are the keys ``j < i``
and the own point is key i, so the same construction gives every unpooled causal form.

Kernels on a training set (:class:`CausalSet`): softmax (one softmax over the seen carried points and the own
point), BN (statistics of exactly those points, float64 prefix sums), the linear kernel in dual form (linear-BN:
no linear-time form is known, see docs/theory.md), and the linear kernel in chunked primal form (linear,
linear-SH: linear time, :func:`causal_linear`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .kernels import elu_feature_map
from .transforms import export_matmul, tracing


class Frame(NamedTuple):
    """Keys and values read in each sample's frame (see the module doc) and pooled by one factor."""

    factor: int
    prefix: int  # P
    shift: Tensor | None  # (B,) long: padding positions skipped after the prefix; None: no padding
    windows: tuple[Tensor, Tensor]  # complete-window means of keys, values: (B, H, W, ·)
    window_valid: Tensor | None  # (B, W) bool: the window holds a valid key
    own: tuple[Tensor, Tensor]  # per frame position: the key (prefix) or the running window mean, (B, H, N', ·)
    own_valid: Tensor | None  # (B, N') bool; N' = P + W·r >= N (the last window's positions past N unused)


class CausalSet(NamedTuple):
    """Each query's training set: the carried points it sees and its own point."""

    keys: Tensor  # carried points (B, H, M, D), in order of position
    values: Tensor  # (B, H, M, Dv)
    valid: Tensor | None  # (B, M) bool, None: all valid
    seen: Tensor  # (B, 1, Nq, 1) long: query a sees the carried points m < seen (those valid)
    own_keys: Tensor  # (B, H, Nq, D)
    own_values: Tensor  # (B, H, Nq, Dv)
    own_valid: Tensor  # (B, 1, Nq, 1) bool

    def mask(self) -> Tensor:
        """``(B, 1, Nq, M)`` bool: query a fits its SVR on carried point m."""
        m = torch.arange(self.keys.shape[2], device=self.keys.device)
        seen = m < self.seen
        return seen if self.valid is None else seen & self.valid[:, None, None, :]


def first_valid_shift(key_padding_mask: Tensor | None, prefix: int) -> Tensor | None:
    """``(B,)``: the number of padding positions between the prefix and the first valid key after it (0 when
    there is none); None without padding."""
    if key_padding_mask is None:
        return None
    return (~key_padding_mask[:, prefix:]).int().argmax(1) if key_padding_mask.shape[1] > prefix else None


def _to_frame(x: Tensor, shift: Tensor | None, prefix: int) -> Tensor:
    """x ``(B, .., N, ·)`` (or a mask ``(B, N)``) in each sample's frame: position ``p >= P`` reads ``p + shift``;
    past the end: 0 (False)."""
    if shift is None:
        return x
    n = x.shape[-2] if x.dim() > 2 else x.shape[-1]
    p = torch.arange(n, device=x.device)
    source = torch.where(p >= prefix, p + shift[:, None], p)  # (B, N)
    inside = source < n
    source = source.clamp(max=n - 1)
    if x.dim() == 2:
        return x.gather(1, source) & inside
    index = source.view(source.shape[0], *[1] * (x.dim() - 3), n, 1)
    read = x.gather(-2, index.expand(*x.shape[:-2], n, x.shape[-1]))
    return read.masked_fill(~inside.view(index.shape), 0.0)


def causal_frame(k: Tensor, v: Tensor, key_padding_mask: Tensor | None, factor: int, prefix: int = 0) -> Frame:
    """k ``(B, H, N, D)``, v ``(B, H, N, Dv)`` read in their frames and pooled by ``factor``: O(N·D)."""
    shift = first_valid_shift(key_padding_mask, prefix) if factor > 1 else None
    k, v = _to_frame(k, shift, prefix), _to_frame(v, shift, prefix)
    valid = None if key_padding_mask is None else _to_frame(~key_padding_mask, shift, prefix)
    length = max(0, k.shape[2] - prefix)
    windows = -(-length // factor)
    extra = windows * factor - length
    weight = k.new_ones(1, 1, k.shape[2], 1) if valid is None else valid[:, None, :, None].to(k.dtype)  # (B|1, 1, N, 1)
    weight = F.pad(weight[:, :, prefix:], (0, 0, 0, extra)).unflatten(2, (windows, factor))
    count = weight.cumsum(3)  # (B|1, 1, W, r, 1): valid positions of the window up to each position
    own, means = [], []
    for x in (k, v):
        sums = (F.pad(x[:, :, prefix:], (0, 0, 0, extra)).unflatten(2, (windows, factor)) * weight).cumsum(3)
        running = sums / count.clamp_min(1)
        means.append(running[:, :, :, -1])
        own.append(torch.cat((x[:, :, :prefix], _flat_windows(running)), 2))  # P + W·r >= N positions
    window_valid = own_valid = None
    if valid is not None:
        window_valid = count[:, 0, :, -1, 0] > 0
        own_valid = torch.cat((valid[:, :prefix], (_flat_windows(count)[:, 0, :, 0] > 0)), 1)
    return Frame(factor, prefix, shift, tuple(means), window_valid, tuple(own), own_valid)


def _flat_windows(x: Tensor) -> Tensor:
    """``(B, H, W, r, ·)`` -> ``(B, H, W·r, ·)``. While tracing by indexing: torch.export cannot prove the guard
    ``W % (W·r) != 0`` that a reshape of a symbolic W asks (true for every W >= 1), so a view would refuse every
    length; eager keeps the free view (the indexing's backward costs ~2.5x this step's time)."""
    if not tracing():
        return x.flatten(2, 3)
    p = torch.arange(x.shape[2] * x.shape[3], device=x.device)
    return x[:, :, p.div(x.shape[3], rounding_mode="floor"), p % x.shape[3]]


def _chunks(x: Tensor, chunks: int, size: int) -> Tensor:
    """``(B, H, C·T, ·)`` -> ``(B, H, C, T, ·)``; while exporting by indexing, for the reason of
    :func:`_flat_windows` (a view of a symbolic ``C`` asks ``C·T % C == 0``)."""
    if not torch.compiler.is_exporting():
        return x.unflatten(2, (chunks, size))
    index = torch.arange(chunks, device=x.device)[:, None] * size + torch.arange(size, device=x.device)
    return x[:, :, index]


def frame_positions(frame: Frame, nq: int, nk: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """The frame positions ``(B|1, Nq)`` of the queries (the last Nq of Nk positions) and which are real: a
    query in the left padding after the prefix (before the first valid key) has no frame position of its own."""
    i = torch.arange(nk - nq, nk, device=device)[None, :]
    if frame.shift is None:
        return i, torch.ones_like(i, dtype=torch.bool)
    p = frame.prefix
    position = torch.where(i >= p, i - frame.shift[:, None], i)
    return position.clamp_min(torch.where(i >= p, p, 0)), (i < p) | (position >= p)


def causal_set(frame: Frame, nq: int, nk: int) -> CausalSet:
    """The training sets of the last ``nq`` of ``nk`` positions from their ``frame``."""
    k_own, v_own = frame.own
    p, r, device = frame.prefix, frame.factor, k_own.device
    position, real = frame_positions(frame, nq, nk, device)
    seen = torch.where(position < p, position, p + (position - p).div(r, rounding_mode="floor"))
    seen = torch.where(real, seen, p)  # padding before the first valid key: the prefix only
    keys, values = (torch.cat((x[:, :, :p], w), 2) for x, w in zip(frame.own, frame.windows))
    valid = None
    if frame.own_valid is not None:
        valid = torch.cat((frame.own_valid[:, :p], frame.window_valid), 1)
    batch, heads = k_own.shape[:2]
    index = position.clamp(max=nk - 1).expand(batch, nq)
    own_keys, own_values = (
        x.gather(2, index[:, None, :, None].expand(batch, heads, nq, x.shape[3])) for x in frame.own
    )
    own_valid = real if frame.own_valid is None else real & frame.own_valid.gather(1, index)
    own_valid = own_valid.expand(batch, nq)[:, None, :, None]
    return CausalSet(keys, values, valid, seen.expand(batch, nq)[:, None, :, None], own_keys, own_values, own_valid)


def softmax_on_set(q: Tensor, points: CausalSet, dropout_p: float = 0.0) -> Tensor:
    """``Σ softmax(q_iᵀk/√D) v`` over query i's carried points and its own point, one softmax:
    q ``(B, H, Nq, D)`` -> ``(B, H, Nq, Dv)``; a query with no point returns 0.

    One fused SDPA call. The own point is one more key column whose score ``q_iᵀP_i/√D`` differs per query: it
    enters through an extra channel, ``q_iᵀP_i`` on the query and 1 on that column's key (0 on the others), and
    its value, which also differs per query, is read back from an extra value channel that is 1 on that column
    only: the channel's output is the own point's weight ``p_i``, and the output is ``SDPA[..., :Dv] + p_i·P_i^v``.
    q, k and v get one width ``E = max(D, Dv) + 1`` (zero channels change no score), which keeps SDPA on its
    fused kernel (it needs equal widths); the mask is boolean and shared by the heads: O(Nq·M) of it per sample.
    """
    batch, heads, nq, dim = q.shape
    dv, width = points.values.shape[-1], max(dim, points.values.shape[-1]) + 1
    mask = points.mask()
    own = torch.linalg.vecdot(q, points.own_keys).unsqueeze(-1)
    empty = ~(mask.any(-1, keepdim=True) | points.own_valid)  # 0/0 rows: let them see the own column, then zero
    mask = torch.cat((mask.expand(batch, 1, nq, -1), points.own_valid | empty), -1)
    q = torch.cat((q, own, own.new_zeros(()).expand(batch, heads, nq, width - dim - 1)), -1)
    keys, values = F.pad(points.keys, (0, width - dim, 0, 1)), F.pad(points.values, (0, width - dv, 0, 1))
    keys[:, :, -1, dim] = 1.0  # in place on the fresh padded copies (their padding's backward reads neither)
    values[:, :, -1, dv] = 1.0
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, dropout_p=dropout_p, scale=dim**-0.5)
    out = out[..., :dv] + out[..., dv : dv + 1] * points.own_values
    return out.masked_fill(empty, 0.0)


def set_statistics(points: CausalSet, eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """BN statistics of each query's training set: mean ``μ_i`` and ``s_i² = var_i + eps`` ``(B, H, Nq, D)``,
    the count of its points ``(B, 1, Nq, 1)``, and the centre (mean of all valid carried points) they are taken
    about. Prefix sums over the carried points in float64 (the cancellation of ``E[y²] - E[y]²``, as in
    :func:`~primaldual.functional.key_statistics`), gathered at each query's count, plus the own point."""
    acc = torch.float32 if points.keys.device.type == "mps" else torch.float64
    keys = points.keys.to(acc)
    weight = keys.new_ones(1, 1, keys.shape[2], 1) if points.valid is None else points.valid[:, None, :, None].to(acc)
    centre = (keys * weight).sum(2, keepdim=True) / weight.sum(2, keepdim=True).clamp_min(1)
    y = (keys - centre) * weight
    own_weight = points.own_valid.to(acc)
    own = (points.own_keys.to(acc) - centre) * own_weight
    index = points.seen.expand(-1, keys.shape[1], -1, keys.shape[3])

    def prefix_sum(x: Tensor, ix: Tensor) -> Tensor:  # Σ over carried points m < seen
        return F.pad(x.cumsum(2), (0, 0, 1, 0)).gather(2, ix)

    count = prefix_sum(weight.expand(points.seen.shape[0], 1, -1, 1), points.seen) + own_weight
    first = (prefix_sum(y, index) + own) / count.clamp_min(1)
    second = (prefix_sum(y.square(), index) + own.square()) / count.clamp_min(1)
    var = (second - first.square()).clamp_min(0)
    dtype = points.keys.dtype
    return (centre + first).to(dtype), (var + eps).to(dtype), count.to(dtype), centre.to(dtype)


def bn_softmax_on_set(q: Tensor, points: CausalSet, eps: float, mean_weight: float, dropout_p: float = 0.0) -> Tensor:
    """BN on each query's training set, then :func:`softmax_on_set`: by the shift identity the normalised query
    ``(q_i - βμ_i) ⊘ s_i²`` against the points less the centre (a per-query constant that softmax ignores). A
    query fitted on at most one point outputs its value: its query is 0, as in the unpooled causal BN."""
    mean, var, count, centre = set_statistics(points, eps)
    q_hat = ((q - mean_weight * mean) / var).masked_fill(count <= 1, 0.0)
    centre = centre.detach()  # its exact gradient through the scores is 0 (softmax's shift invariance)
    centred = points._replace(keys=points.keys - centre, own_keys=points.own_keys - centre)
    return softmax_on_set(q_hat, centred, dropout_p)


def linear_bn_on_set(q: Tensor, points: CausalSet, eps: float, mean_weight: float) -> Tensor:
    """Linear-BN on each query's training set, exactly: ``x̂ = (x - βμ_i) ⊘ s_i`` with query i's statistics on
    its query and on every point, ``Σ Φ(x̂(q_i))ᵀΦ(x̂(k)) v / Σ Φ(x̂(q_i))ᵀΦ(x̂(k))``. Φ = elu + 1 has no shift
    invariance, so the keys are normalised per query: O(Nq·M·D) time, in chunks of queries recomputed in the
    backward pass (memory O(chunk·M·D)), never an approximation."""
    mean, var, _, _ = set_statistics(points, eps)
    scale = var.rsqrt()
    q_hat = (q - mean_weight * mean) * scale
    phi_q = elu_feature_map(q_hat - q_hat.amax(-1, keepdim=True).clamp(max=0.0))  # a positive factor per query
    mask = points.mask()
    batch, heads, nq, dim = q.shape
    chunk = max(1, 2**22 // max(1, batch * heads * points.keys.shape[2] * dim))
    if tracing():  # one graph for every length: all queries at once (O(Nq·M·D) memory)
        return _linear_bn_chunk(mean_weight, phi_q, mean, scale, mask, *points[:2], *points[4:])
    outputs = []
    for start in range(0, nq, chunk):
        part = slice(start, start + chunk)
        arguments = (
            phi_q[:, :, part],
            mean[:, :, part],
            scale[:, :, part],
            mask[:, :, part],
            points.keys,
            points.values,
            points.own_keys[:, :, part],
            points.own_values[:, :, part],
            points.own_valid[:, :, part],
        )
        if torch.is_grad_enabled() and any(t.requires_grad for t in arguments):
            outputs.append(
                torch.utils.checkpoint.checkpoint(_linear_bn_chunk, mean_weight, *arguments, use_reentrant=False)
            )
        else:
            outputs.append(_linear_bn_chunk(mean_weight, *arguments))
    return torch.cat(outputs, 2)


def _linear_bn_chunk(beta, phi_q, mean, scale, mask, keys, values, own_keys, own_values, own_valid) -> Tensor:
    """:func:`linear_bn_on_set` for one chunk of queries."""
    k_hat = (keys[:, :, None] - beta * mean[:, :, :, None]) * scale[:, :, :, None]  # (B, H, T, M, D)
    kernel = (phi_q[:, :, :, None] * elu_feature_map(k_hat)).sum(-1).masked_fill(~mask, 0.0)
    own_hat = (own_keys - beta * mean) * scale
    own = torch.linalg.vecdot(phi_q, elu_feature_map(own_hat)).unsqueeze(-1).masked_fill(~own_valid, 0.0)
    # while tracing, a broadcast sum (no larger than k_hat): the matmul's reshape of a one-head group asks export
    # for ``1 % M != 0``, which it cannot prove for every length
    weighted = (kernel[..., None] * values[:, :, None]).sum(3) if tracing() else kernel @ values
    return _ratio(weighted + own * own_values, kernel.sum(-1, keepdim=True) + own)


def _ratio(numerator: Tensor, normaliser: Tensor) -> Tensor:
    """``numerator / normaliser``, 0 where the normaliser is 0 (no point)."""
    out = numerator / normaliser.clamp_min(torch.finfo(normaliser.dtype).tiny)
    return out.masked_fill(normaliser == 0, 0.0)


def causal_linear(q: Tensor, frame: Frame, nk: int, chunk: int = 64) -> Tensor:
    """Linear attention on each query's training set in primal form, linear time: q ``(B, H, Nq, D)``.

    Query i's numerator and normaliser are sums over three parts: the prefix tokens it sees (explicit, O(Nq·P)),
    the complete windows before its own (chunked prefix sums ``S = Σ Φ(k̄_w) v̄_wᵀ``, ``z = Σ Φ(k̄_w)`` over the
    windows of earlier chunks, explicit inside its chunk), and its own point. Chunks of ``T = r·⌈chunk/r⌉``
    frame positions: O(N·(T + D)·Dv) time, O(N/T·D·Dv) memory for the prefix sums."""
    nq, p = q.shape[2], frame.prefix
    points = causal_set(frame, nq, nk)
    phi_q = elu_feature_map(q - q.amax(-1, keepdim=True).clamp(max=0.0))  # a positive factor per query
    phi_own = elu_feature_map(points.own_keys).masked_fill(~points.own_valid, 0.0)
    own = torch.linalg.vecdot(phi_q, phi_own).unsqueeze(-1)
    numerator, normaliser = own * points.own_values, own
    if p:
        prefix = (phi_q @ elu_feature_map(points.keys[:, :, :p]).transpose(-2, -1)).masked_fill(
            ~points.mask()[..., :p], 0.0
        )
        numerator, normaliser = numerator + prefix @ points.values[:, :, :p], normaliser + prefix.sum(-1, True)
    if nk > p:
        windows = _window_sums(phi_q, frame, nk, chunk)  # (B, H, N - P, Dv + 1), per frame position
        position, real = frame_positions(frame, nq, nk, q.device)
        index = (position - p).clamp(0, nk - p - 1).expand(q.shape[0], nq)
        read = windows.gather(2, index[:, None, :, None].expand(*windows.shape[:2], nq, windows.shape[-1]))
        read = read.masked_fill(~(real & (position >= p)).expand(q.shape[0], nq)[:, None, :, None], 0.0)
        numerator, normaliser = numerator + read[..., :-1], normaliser + read[..., -1:]
    return _ratio(numerator, normaliser)


def _window_sums(phi_q: Tensor, frame: Frame, nk: int, chunk: int) -> Tensor:
    """For each frame position ``p >= P`` (queries read into the frame), ``Σ_w Φ(q_p)ᵀΦ(k̄_w) [v̄_w, 1]`` over the
    complete windows before p's own: ``(B, H, L', Dv + 1)``, ``L' >= N - P`` (whole chunks)."""
    p, r = frame.prefix, frame.factor
    nq = phi_q.shape[2]
    length = nk - p
    queries = _to_frame(F.pad(phi_q, (0, 0, nk - nq, 0)), frame.shift, p)[:, :, p:]  # (B, H, L, D)
    keys, values = frame.windows
    phi_k = elu_feature_map(keys)
    if frame.window_valid is not None:
        phi_k = phi_k.masked_fill(~frame.window_valid[:, None, :, None], 0.0)
    values = torch.cat((values, torch.ones_like(values[..., :1])), -1)  # the last column sums the normaliser
    group = -(-chunk // r)  # windows per chunk
    size = group * r
    # while exporting, one empty chunk more: with at least two, export need not ask whether there is one (a view's
    # strides do not matter along a dimension of size 1, and it cannot decide ``ceil(L / T) == 1`` for all L)
    chunks = -(-length // size) + int(torch.compiler.is_exporting())
    queries = _chunks(F.pad(queries, (0, 0, 0, chunks * size - length)), chunks, size)
    phi_k = _chunks(F.pad(phi_k, (0, 0, 0, chunks * group - phi_k.shape[2])), chunks, group)
    values = _chunks(F.pad(values, (0, 0, 0, chunks * group - values.shape[2])), chunks, group)
    states = export_matmul(phi_k.transpose(-2, -1), values)  # (B, H, C, D, Dv + 1)
    states = states.cumsum(2) - states  # the windows of earlier chunks
    local = torch.arange(size, device=phi_q.device)[:, None] // r > torch.arange(group, device=phi_q.device)
    inside = export_matmul(queries, phi_k.transpose(-2, -1)).masked_fill(~local, 0.0)  # (B, H, C, T, G)
    out = export_matmul(queries, states) + export_matmul(inside, values)
    return _flat_windows(out)  # P + C·T >= N positions
