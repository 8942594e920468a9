"""Every attention of docs/theory.md as one composition: a data selection, a normalisation, a kernel.

    selection      all keys | pooled per head (SH, factor r_h) | a sliding window (sparse)
    normalisation  none | BN (statistics of the keys that this head's SVR is fitted on)
    kernel         softmax (dual, fused SDPA) | linear (primal, elu + 1)

The named functions below are those compositions; :func:`attention` picks one by name.
Tensors are ``(batch, heads, seq, head_dim)``; ``key_padding_mask`` is bool ``(batch, seq_k)``, True
where a key is padding (as in ``nn.MultiheadAttention``). A query that sees no valid key returns 0.

Hostile inputs (NaN, Inf, empty inputs, magnitudes) and floating-point accuracy: docs/numerics.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .causal import bn_softmax_on_set, causal_frame, causal_linear, causal_set, linear_bn_on_set, softmax_on_set
from .checks import (
    check_dropout,
    check_grid_tokens,
    check_key_padding_mask,
    check_qkv,
    check_scales,
    check_tokens,
)
from .kernels import linear_kernel, softmax_kernel
from .options import PAPER_VARIANTS, VARIANTS, AttentionOptions, Variant, check_names, default_scales, get_variant
from .transforms import (
    HeadSplit,
    bn_normalize,
    bn_softmax_inputs,
    head_split,
    join_heads,
    pool_keys,
    pool_sequence,
    split_heads,
    tracing,
)

__all__ = [
    "PAPER_VARIANTS",
    "VARIANTS",
    "AttentionOptions",
    "Variant",
    "attention",
    "default_scales",
    "get_variant",
    "self_attention",
    "split_qkv",
]


def resolve_options(variant: str | AttentionOptions, options: dict[str, Any]) -> AttentionOptions:
    """``variant`` as :class:`AttentionOptions`: a name with keyword ``options``, or an options object (with
    ``options`` applied to a copy)."""
    if isinstance(variant, AttentionOptions):
        return variant.replace(**options) if options else variant
    check_names(options)
    return AttentionOptions(variant, **options)


def check_inputs(
    options: AttentionOptions, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None
) -> tuple[int, ...] | None:
    """Check the tensors against ``options`` (already valid in themselves); return the SH factors
    (:func:`sh_factors`)."""
    check_qkv(q, k, v)
    check_key_padding_mask(key_padding_mask, k)
    if options.causal and q.shape[2] > k.shape[2]:
        raise ValueError(
            "causal=True needs at most as many queries as keys (queries are the last positions; cross-attention "
            f"is not causal), got q {tuple(q.shape)}, k {tuple(k.shape)}"
        )
    return sh_factors(options, q.shape[1], k.shape[2])


def sh_factors(options: AttentionOptions, num_heads: int, num_keys: int) -> tuple[int, ...] | None:
    """The SH factors of ``options`` for ``num_heads`` heads on ``num_keys`` keys (None unless SH), each at most
    the number of keys it pools: a larger factor gives the same single window, at a cost that grows with it."""
    if not options.spec.pooled:
        return None
    if options.scales is None:
        raise ValueError(f"variant {options.variant!r} needs scales: one integer factor >= 1 per head ({num_heads})")
    scales = check_scales(options.scales, num_heads)
    if options.grid is not None:
        check_grid_tokens(options.grid, options.num_prefix_tokens, num_keys)
    if tracing():  # a graph for every length: no guard on N (pooling is shape-generic)
        return scales
    pooled = max(1, num_keys - options.num_prefix_tokens)
    return tuple(min(r, pooled) for r in scales)


def normalise(options: AttentionOptions, q: Tensor, k: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """The normalisation step on keys already selected: BN's inputs for the variant's kernel, else unchanged.

    softmax kernel: ``(q - βμ) ⊘ s²`` and ``k - m`` (the shift identity); linear: ``x̂ = (x - βμ) ⊘ s`` on both.
    """
    if not options.spec.bn:
        return q, k
    if options.spec.kernel == "softmax":
        return bn_softmax_inputs(q, k, mask, eps=options.eps, mean_weight=options.mean_weight, causal=options.causal)
    return bn_normalize(q, k, mask, eps=options.eps, mean_weight=options.mean_weight)


def reads_grouped_keys(options: AttentionOptions) -> bool:
    """Whether the variant takes grouped-query keys ``(B, Hkv, N, ·)`` as they are: softmax (SDPA's
    ``enable_gqa``) and causal BN (its prefix statistics taken per key head, then read by each of its query
    heads). The others get the keys repeated to the query heads (:func:`repeat_kv`)."""
    spec = options.spec
    return spec.kernel == "softmax" and not spec.pooled and not spec.windowed and (options.causal or not spec.bn)


def repeat_kv(x: Tensor, num_heads: int) -> Tensor:
    """Keys or values ``(B, Hkv, N, ·)`` repeated to ``num_heads`` heads, each key head ``H / Hkv`` times in a row
    (grouped-query attention); x itself when it has them."""
    return x if x.shape[1] == num_heads else x.repeat_interleave(num_heads // x.shape[1], dim=1)


def _fit_and_evaluate(
    options: AttentionOptions,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    dropout_p: float,
    bias: Tensor | None = None,
) -> Tensor:
    """Normalisation then kernel, on keys already selected (``bias``: softmax kernel only)."""
    q, k = normalise(options, q, k, mask)
    if options.spec.kernel == "softmax":
        window = options.window
        return softmax_kernel(q, k, v, mask, causal=options.causal, window=window, dropout_p=dropout_p, bias=bias)
    return linear_kernel(q, k, v, mask)


def check_bias(options: AttentionOptions, bias: Tensor | None, q: Tensor, k: Tensor) -> None:
    """``attn_bias``: None, or a floating-point score bias broadcastable to ``(B, H, Nq, Nk)``, for the variants
    with scores to add it to (softmax, sparse, bn; sh and bn+sh pool it with the keys, not causal)."""
    if bias is None:
        return
    spec = options.spec
    if spec.kernel != "softmax" or (spec.pooled and options.causal):
        raise ValueError(
            f"attn_bias (an additive score bias such as T5's position_bias) is supported by softmax, sparse, bn "
            f"and (not causal) sh, bn+sh, not {options.variant!r}{' causal' if options.causal else ''}: the "
            "linear kernel has no scores, causal SH's open window has no pooled bias (SPEC section 5)"
        )
    if not isinstance(bias, Tensor) or not bias.is_floating_point() or bias.dim() != 4:
        raise ValueError(f"attn_bias must be a floating-point tensor (batch, heads, queries, keys), got {bias!r:.60}")
    target = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    if any(b not in (1, t) for b, t in zip(bias.shape, target)):
        raise ValueError(f"attn_bias must broadcast to {target}, got shape {tuple(bias.shape)}")


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    variant: str | AttentionOptions = "softmax",
    *,
    key_padding_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    attn_bias: Tensor | None = None,
    **options: Any,
) -> Tensor:
    """Attention ``variant`` of q ``(B,H,Nq,D)`` on k ``(B,H,Nk,D)``, v ``(B,H,Nk,Dv)`` -> ``(B,H,Nq,Dv)``.

    ``variant``: a key of :data:`VARIANTS` whose settings are the keyword ``options`` (``scales``, ``window``,
    ``eps``, ``mean_weight``, ``causal``, ``num_prefix_tokens``: see :class:`AttentionOptions`), or an
    :class:`AttentionOptions` made once (the layers' way: nothing but the tensors is checked per call).
    ``key_padding_mask``: bool ``(B, Nk)``, True at padding. ``dropout_p``: dropout on the softmax weights.
    ``attn_bias``: an additive score bias broadcastable to ``(B, H, Nq, Nk)`` (T5's ``position_bias``, ALiBi, BEiT's
    relative position bias), added after the scale (BN: after normalisation); SH adds to a pooled key the mean
    bias of the keys it pools (SPEC section 5; not causal); the linear kernel has no scores to add it to.
    """
    options = resolve_options(variant, options)
    scales = check_inputs(options, q, k, v, key_padding_mask)
    check_dropout(dropout_p)
    check_bias(options, attn_bias, q, k)
    if not reads_grouped_keys(options):
        k, v = repeat_kv(k, q.shape[1]), repeat_kv(v, q.shape[1])
    if scales is None and attn_bias is not None:
        return _fit_and_evaluate(options, q, k, v, key_padding_mask, dropout_p, attn_bias)
    if options.causal and (scales is not None or options.spec.kernel == "linear"):
        return _causal_groups(options, q, k, v, key_padding_mask, scales or (1,), dropout_p)
    if scales is None:
        return _fit_and_evaluate(options, q, k, v, key_padding_mask, dropout_p)
    groups = head_split(scales)
    pooled = _pooled_groups(options, groups, q, k, v, key_padding_mask, attn_bias)
    return _evaluate_groups(options, q, groups, pooled, dropout_p)


def _pooled_groups(
    options: AttentionOptions,
    groups: HeadSplit,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    bias: Tensor | None,
) -> Iterator[tuple[Tensor, ...]]:
    """SH: each group's pooled ``(keys, values, key mask)``, and with an additive score bias ``(B|1, H|1, Nq, Nk)``
    its pooled bias: a pooled key's bias is the mean of the biases of the keys it pools (SPEC section 5), with the
    same windows and mask as the keys."""
    if bias is None:
        for factor, kh, vh in zip(groups.factors, split_heads(k, groups), split_heads(v, groups)):
            yield pool_keys(kh, vh, mask, factor, **options.pooling)
        return
    biases = split_heads(bias.expand(q.shape[0], q.shape[1], -1, -1), groups)
    for factor, kh, vh, bh in zip(groups.factors, split_heads(k, groups), split_heads(v, groups), biases):
        (pk, pv, pb), pooled_mask = pool_sequence((kh, vh, bh.transpose(-2, -1)), mask, factor, **options.pooling)
        yield pk, pv, pooled_mask, pb.transpose(-2, -1)


def _evaluate_groups(
    options: AttentionOptions,
    q: Tensor,
    groups: HeadSplit,
    keys: Iterable[tuple[Tensor, ...]],
    dropout_p: float,
) -> Tensor:
    """SH: each group of q's heads against its ``(keys, values, key mask[, score bias])``, joined in head order."""
    outputs = [
        _fit_and_evaluate(options, qh, *kvm[:3], dropout_p, *kvm[3:]) for qh, kvm in zip(split_heads(q, groups), keys)
    ]
    return join_heads(outputs, groups)


def _causal_groups(
    options: AttentionOptions, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scales: Sequence[int], p: float
) -> Tensor:
    """The causal forms of SH and the linear kernel (:mod:`~primaldual.functional.causal`), one group of heads
    of one factor at a time, joined in head order."""
    groups = head_split(scales)
    parts = zip(groups.factors, *(split_heads(t, groups) for t in (q, k, v)))
    return join_heads([_causal_group(options, *part, mask, p) for part in parts], groups)


def _causal_group(
    options: AttentionOptions, factor: int, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, p: float
) -> Tensor:
    """One group's causal form: factor 1 with the softmax kernel is the unpooled causal softmax or BN (the same
    training sets); otherwise each query's training set from the frame (:func:`causal_frame`)."""
    spec = options.spec
    if factor == 1 and spec.kernel == "softmax":
        return _fit_and_evaluate(options, q, k, v, mask, p)
    frame = causal_frame(k, v, mask, factor, options.num_prefix_tokens)
    if spec.kernel == "linear" and not spec.bn:
        return causal_linear(q, frame, k.shape[2])
    points = causal_set(frame, q.shape[2], k.shape[2])
    if spec.kernel == "linear":
        return linear_bn_on_set(q, points, options.eps, options.mean_weight)
    if spec.bn:
        return bn_softmax_on_set(q, points, options.eps, options.mean_weight, p)
    return softmax_on_set(q, points, p)


def split_qkv(qkv: Tensor, num_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """A fused projection's output ``(B, N, 3·H·D)`` (q, k, v features in that order, heads in order within each)
    as q, k, v ``(B, H, N, D)``. Split along the features, not unbound from a permuted ``(3, B, H, N, D)`` view as
    timm does: backward, the three gradients (SDPA writes them in ``(B, N, H, D)`` order) are then joined by one
    concatenation into the projection's layout, where the unbind's stack and permute cost three copies of it."""
    return tuple(_heads(t, qkv.shape[-1] // (3 * num_heads)) for t in qkv.chunk(3, -1))


def _heads(t: Tensor, head_dim: int) -> Tensor:
    """Projected features ``(B, N, H·D)`` as heads ``(B, H, N, D)`` (a view)."""
    return t.unflatten(-1, (-1, head_dim)).transpose(1, 2)


def self_attention(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    num_heads: int,
    variant: str | AttentionOptions = "softmax",
    *,
    key_padding_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    **options: Any,
) -> Tensor:
    """Multi-head self-attention of tokens x ``(B, N, C)`` projected by ``weight`` ``(3·H·D, C)`` and ``bias``
    ``(3·H·D)`` (an ``nn.Linear``'s, q, k, v features in that order as timm's ``qkv``) -> ``(B, H, N, D)``.

    Equal to :func:`attention` of those projections. SH pools the tokens before the key/value projection:
    a window's mean commutes with an affine map, ``mean_j(x_j Wᵀ + b) = (mean_j x_j) Wᵀ + b`` (masked means
    too, their weights summing to 1), so each group of heads projects its ``N / r`` pooled tokens, not N, and
    SH's saving reaches the projection. A fully padded window's key is then ``b`` rather than 0, never attended.
    """
    options = resolve_options(variant, options)
    check_tokens(x, weight, bias, num_heads)
    scales = sh_factors(options, num_heads, x.shape[1])
    if scales is None or options.causal:  # causal SH pools keys per query: no pooled projection
        q, k, v = split_qkv(F.linear(x, weight, bias), num_heads)
        return attention(q, k, v, options, key_padding_mask=key_padding_mask, dropout_p=dropout_p)
    check_key_padding_mask(key_padding_mask, x.unsqueeze(1))
    check_dropout(dropout_p)
    groups, head_dim = head_split(scales), weight.shape[0] // (3 * num_heads)
    rows, widths = _projection_rows(groups, num_heads, head_dim)
    index = torch.tensor(rows, device=weight.device)  # one gather of the weight, one index_add backward
    sizes = [sum(parts) for parts in widths]
    weights = weight.index_select(0, index).split(sizes)
    biases = [None] * len(sizes) if bias is None else bias.index_select(0, index).split(sizes)
    q, *direct = F.linear(x, weights[0], biases[0]).split(widths[0], -1)
    tokens = {f: pool_sequence((x,), key_padding_mask, f, **options.pooling) for f in set(groups.factors)}

    def pooled_keys() -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
        unpooled, projections = iter(direct), zip(weights[1:], biases[1:])
        for factor in groups.factors:
            (pooled,), mask = tokens[factor]
            kv = next(unpooled) if factor == 1 else F.linear(pooled, *next(projections))
            yield (*(_heads(t, head_dim) for t in kv.chunk(2, -1)), mask)

    return _evaluate_groups(options, _heads(q, head_dim), groups, pooled_keys(), dropout_p)


def _projection_rows(groups: HeadSplit, num_heads: int, head_dim: int) -> tuple[list[int], list[list[int]]]:
    """SH's projections of a fused weight ``(3·H·D, C)``: its rows in the order they are used, and the widths of
    each projection's parts. The first projects x: q's rows, then the k and v rows of each group of factor 1 (its
    pooled tokens are x), one part each; then one projection per other group of its pooled tokens: its k rows,
    its v rows."""

    def keys_values(heads: slice) -> list[int]:
        return [
            (part * num_heads + h) * head_dim + i
            for part in (1, 2)
            for h in range(num_heads)[heads]
            for i in range(head_dim)
        ]

    slices = list(zip(groups.slices(), groups.factors))
    first = [list(range(num_heads * head_dim))] + [keys_values(s) for s, f in slices if f == 1]
    projections = [first] + [[keys_values(s)] for s, f in slices if f != 1]
    rows = [r for parts in projections for part in parts for r in part]
    return rows, [[len(part) for part in parts] for parts in projections]


def softmax_attention(
    q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None, causal: bool = False
) -> Tensor:
    """``softmax(q kᵀ/√D) v`` through the fused SDPA kernel. Shapes as in :func:`attention`."""
    return attention(q, k, v, "softmax", key_padding_mask=key_padding_mask, causal=causal)


def linear_attention(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
    """``Φ(q_i)ᵀ Σ_j Φ(k_j) v_jᵀ / Φ(q_i)ᵀ Σ_j Φ(k_j)`` with ``Φ = elu + 1``, evaluated in primal form."""
    return attention(q, k, v, "linear", key_padding_mask=key_padding_mask)


def sparse_attention(q: Tensor, k: Tensor, v: Tensor, window: int, key_padding_mask: Tensor | None = None) -> Tensor:
    """Softmax attention where query i sees only keys with ``|i - j| <= window``."""
    return attention(q, k, v, "sparse", key_padding_mask=key_padding_mask, window=window)


def bn_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_padding_mask: Tensor | None = None,
    eps: float = 1e-5,
    mean_weight: float = 1.0,
    causal: bool = False,
) -> Tensor:
    """Attention-BN: ``softmax(x̂(q)ᵀx̂(k)/√D) v``, ``x̂ = (x - βμ) ⊘ sqrt(var + eps)`` with the statistics of
    the valid keys per sample, head and feature (prefix statistics when ``causal``)."""
    return attention(q, k, v, "bn", key_padding_mask=key_padding_mask, eps=eps, mean_weight=mean_weight, causal=causal)


def sh_attention(
    q: Tensor, k: Tensor, v: Tensor, scales: Sequence[int], key_padding_mask: Tensor | None = None
) -> Tensor:
    """Attention-SH: head h attends to its keys/values average-pooled by ``scales[h]`` (ceil mode, masked)."""
    return attention(q, k, v, "sh", key_padding_mask=key_padding_mask, scales=scales)


def bn_sh_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scales: Sequence[int],
    key_padding_mask: Tensor | None = None,
    eps: float = 1e-5,
    mean_weight: float = 1.0,
) -> Tensor:
    """Attention-BN+SH: keys pooled per head first, then BN with the statistics of the pooled keys."""
    return attention(
        q, k, v, "bn+sh", key_padding_mask=key_padding_mask, scales=scales, eps=eps, mean_weight=mean_weight
    )


def linear_bn_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_padding_mask: Tensor | None = None,
    eps: float = 1e-5,
    mean_weight: float = 1.0,
) -> Tensor:
    """Linear attention on ``x̂(q), x̂(k)``, both normalised with the key statistics."""
    return attention(q, k, v, "linear-bn", key_padding_mask=key_padding_mask, eps=eps, mean_weight=mean_weight)


def linear_sh_attention(
    q: Tensor, k: Tensor, v: Tensor, scales: Sequence[int], key_padding_mask: Tensor | None = None
) -> Tensor:
    """Linear attention where head h's keys/values are pooled by ``scales[h]``."""
    return attention(q, k, v, "linear-sh", key_padding_mask=key_padding_mask, scales=scales)
