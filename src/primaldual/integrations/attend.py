"""One attention call of a host library, answered by a variant: masks, causality, KV caches, scaling, weights.

The host gives projected q ``(B, H, Nq, D)``, k ``(B, H, Nk, D)``, v ``(B, H, Nk, Dv)`` and its mask as a
:class:`~primaldual.integrations.masks.MaskPattern` (keys' padding and the call's kind, read by structure).
:func:`attend` routes the call:

* every query sees every valid key (an encoder, cross-attention, one decoding step against a KV cache):
  :func:`primaldual.functional.attention` with the keys' padding. A decoding query sees all cached keys, so its
  BN statistics are those of its whole prefix, as in the causal call that produced the cache.
* causal, the queries the last Nq of the Nk positions (a decoder's training step, a prompt, new tokens after a
  KV cache, one decoding step): the functional op with ``causal=True``, every variant's causal form (SPEC section 5:
  BN's prefix statistics, SH's complete past windows plus the open one, the linear kernel's prefix sums).
* any other prefix pattern (a dense mask whose queries sit elsewhere) and a sparse window whose queries are not
  the keys' positions: the explicit form below, for the softmax-kernel variants without pooling (softmax, sparse,
  bn). Query i's position is the last key it sees; BN's statistics are those of the valid keys up to it (the
  prefix statistics of :func:`~primaldual.functional.key_statistics`, gathered per query), its window is centred
  there. SH and the linear kernel need the queries at the last positions there (a ValueError otherwise).

Scaling. The functional ops score ``qᵀk/√D``. A host's ``scaling`` c' (transformers' ``module.scaling``) replaces
``1/√D``: the score becomes ``c' qᵀk`` for softmax, sparse and SH (q multiplied by ``c = c'√D``) and
``c' x̂(q)ᵀx̂(k)`` for BN, where ``x̂(q) = (q - βμ) ⊘ s`` is linear in q with β: ``(cq - (cβ)μ) ⊘ s = c x̂(q)``, so
q is multiplied by c and β by c. The linear kernel ``Φ(q)ᵀΦ(k)`` has no temperature: scaling is not used there.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import functional
from ..functional import AttentionOptions, key_statistics
from ..functional.transforms import tracing
from .masks import MaskPattern, structural_pattern

T = TypeVar("T")


def attend(
    options: AttentionOptions,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pattern: MaskPattern | None = None,
    *,
    causal: bool = False,
    dropout_p: float = 0.0,
    scaling: float | None = None,
    need_weights: bool = False,
    bias: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Attention ``options`` (made for H heads) on q ``(B, H, Nq, D)``, k, v ``(B, Hkv, Nk, ·)`` (``Hkv`` dividing H:
    grouped-query attention) -> ``(B, H, Nq, Dv)`` and the weights
    ``(B, H, Nq, Nk)`` when ``need_weights`` (before dropout), else None.

    ``pattern``: the host's mask (None: no mask; then ``causal`` says whether query i sees keys ``j <= Nk - Nq + i``
    or all of them). ``scaling``: the host's score scale in place of ``1/√D`` (None: ``1/√D``). ``bias``: an
    additive score bias ``(B or 1, H or 1, Nq, Nk)`` (T5's ``position_bias``): softmax, sparse, bn, and SH
    (pooled with the keys) when not causal.
    """
    nq, nk = q.shape[2], k.shape[2]
    if pattern is None:
        pattern = structural_pattern(None, causal=causal, nq=nq, nk=nk)
    if options.spec.windowed and nq != nk and pattern.frontier is None and (nq == 1 or pattern.kind != "causal"):
        pattern = single_query_position(pattern, nq, nk, q.device, options.variant)
    q, options = scaled(options, q, scaling)
    spec = options.spec
    if pattern.frontier is not None and (spec.pooled or spec.kernel != "softmax"):
        functional.variants.check_bias(options, bias, q, k)
        return queries_moved_last(options, q, k, v, pattern, dropout_p=dropout_p, need_weights=need_weights)
    if pattern.frontier is not None or need_weights:  # explicit weights: one key head per query head
        k, v = functional.repeat_kv(k, q.shape[1]), functional.repeat_kv(v, q.shape[1])
    if pattern.frontier is not None:
        return explicit_attention(options, q, k, v, pattern, dropout_p=dropout_p, need_weights=need_weights, bias=bias)
    padding = pattern.padding
    options = with_causal(options, pattern.kind == "causal")
    out = functional.attention(q, k, v, options, key_padding_mask=padding, dropout_p=dropout_p, attn_bias=bias)
    weights = None
    if need_weights:
        weights = functional.attention_weights(q, k, options, key_padding_mask=padding, attn_bias=bias)
    return out, weights


def scaled(options: AttentionOptions, q: Tensor, scaling: float | None) -> tuple[Tensor, AttentionOptions]:
    """q and ``options`` for the host's score scale ``scaling`` in place of ``1/√D`` (see the module doc)."""
    scale = 1.0 if scaling is None or options.spec.kernel != "softmax" else scaling * math.sqrt(q.shape[-1])
    if abs(scale - 1.0) > 1e-12:
        return q * scale, scaled_options(options, scale)
    return q, options


def queries_moved_last(
    options: AttentionOptions,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pattern: MaskPattern,
    *,
    dropout_p: float,
    need_weights: bool,
) -> tuple[Tensor, Tensor | None]:
    """SH and the linear kernel on a prefix pattern whose queries are consecutive positions ending at ``f`` and
    whose keys after ``f`` no query sees (a static cache's unfilled tail): each sample's keys after the prefix
    moved right by ``Nk - 1 - f``, so that the queries are the last positions and the keys moved in at the front
    are padding; left padding moves nothing in a causal form (SH's windows start at the first valid key). The
    weights are moved back. Any other frontier: a ValueError naming the mask (``torch._assert_async`` while
    tracing)."""
    nq, nk, p = q.shape[2], k.shape[2], options.num_prefix_tokens
    last = pattern.frontier[:, -1:]  # (B, 1)
    j = torch.arange(nk, device=last.device)
    position = last - torch.arange(nq - 1, -1, -1, device=last.device)  # (B, Nq): the queries' positions
    valid = ~pattern.padding if pattern.padding is not None else torch.ones_like(pattern.allowed[:, 0, 0])
    consecutive = (pattern.allowed[:, 0] == (valid[:, None, :] & (j <= position[..., None]))).all()
    message = (
        f"variant {options.variant!r} needs its queries at consecutive positions with no key after them (causal); "
        "this attention_mask puts them elsewhere"
    )
    if tracing():
        torch._assert_async(consecutive, message)
    elif not bool(consecutive):
        raise ValueError(message)
    source = torch.where(j >= p, j - (nk - 1 - last), j)  # (B, Nk): the key each position reads
    moved_in = source < torch.where(j >= p, p, 0)
    source = source.clamp(0, nk - 1)
    padding = moved_in if pattern.padding is None else moved_in | pattern.padding.gather(1, source)

    def move(x: Tensor) -> Tensor:
        return x.gather(2, source[:, None, :, None].expand(*x.shape[:2], nk, x.shape[3]))

    out, weights = attend(
        options, q, move(k), move(v), MaskPattern(padding, "causal"), dropout_p=dropout_p, need_weights=need_weights
    )
    if weights is not None:  # key j was read at position j + Nk - 1 - f (after the prefix)
        back = torch.where(j >= p, j + (nk - 1 - last), j)
        weights = weights.gather(-1, back.clamp(max=nk - 1)[:, None, None, :].expand_as(weights))
        weights = weights.masked_fill((back >= nk)[:, None, None, :], 0.0)
    return out, weights


def single_query_position(pattern: MaskPattern, nq: int, nk: int, device: torch.device, variant: str) -> MaskPattern:
    """``pattern`` (every query sees every valid key) with the query's position, which a sliding window is centred
    on: one query after the keys, at the last valid key. More queries than one: a ValueError."""
    if nq != 1:
        raise ValueError(
            f"variant {variant!r} needs the queries' positions: as many queries as keys, one query after the keys, "
            f"or a causal call; got {nq} queries and {nk} keys"
        )
    valid = torch.ones(1, nk, dtype=torch.bool, device=device) if pattern.padding is None else ~pattern.padding
    frontier = torch.where(valid, torch.arange(nk, device=device), -1).amax(-1, keepdim=True)
    return MaskPattern(pattern.padding, "prefix", frontier, valid[:, None, None, :])


def memoized(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` (pure, hashable arguments) cached in eager calls; called as is while torch.compile traces, which
    would ignore ``functools.lru_cache`` (with a warning) and bakes the result into the graph anyway."""
    cached = functools.lru_cache(maxsize=256)(fn)

    @functools.wraps(fn)
    def call(*args: Any) -> T:
        return fn(*args) if tracing() else cached(*args)

    return call


@memoized
def scaled_options(options: AttentionOptions, scale: float) -> AttentionOptions:
    """``options`` for queries multiplied by ``scale``: BN's β multiplied too (see the module doc)."""
    return options.replace(mean_weight=options.mean_weight * scale) if options.spec.bn else options


@memoized
def with_causal(options: AttentionOptions, causal: bool) -> AttentionOptions:
    """``options`` with ``causal`` set (made once per options object): the host's mask decides, not the options."""
    return options if options.causal == causal else options.replace(causal=causal)


def explicit_attention(
    options: AttentionOptions,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pattern: MaskPattern,
    *,
    dropout_p: float,
    need_weights: bool,
    bias: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Softmax-kernel attention on any prefix pattern, weights formed explicitly ``(B, H, Nq, Nk)``.

    Query i's position is its frontier ``f_i`` (the last key it sees). BN: ``x̂(q_i)`` with the statistics of the
    valid keys ``j <= f_i`` (with the shift identity: ``(q_i - βμ_i) ⊘ s_i²`` against ``k - m``); sparse: keys
    ``|f_i - j| <= window`` only. Rows that see no key are 0.
    """
    spec = options.spec
    allowed = pattern.allowed
    index = pattern.frontier.clamp_min(0)[:, None, :, None]  # (B, 1, Nq, 1)
    if spec.windowed:
        j = torch.arange(k.shape[2], device=k.device)
        allowed = allowed & ((j - pattern.frontier[:, None, :, None]).abs() <= options.window)
    if spec.bn:
        stats = key_statistics(k, pattern.padding, eps=options.eps, causal=True)
        mean = stats.mean.gather(2, index.expand(*q.shape))
        var = stats.var.gather(2, index.expand(*q.shape))
        count = stats.count.expand(q.shape[0], 1, k.shape[2], 1).gather(2, index)
        q = ((q - options.mean_weight * mean) / var).masked_fill(count <= 1, 0.0)
        k = k - stats.centre
    weights = functional.reference.softmax_weights(q, k, allowed, bias)
    out = F.dropout(weights, dropout_p) @ v if dropout_p > 0 else weights @ v
    return out, weights if need_weights else None
