"""Host libraries' attention masks, read as what the variants understand: key padding, causality, positions.

The variants need more than a matrix of which query may attend which key: BN takes statistics over the keys a
query's SVR is fitted on, SH pools windows of keys, so both must know which keys are padding and whether a query
may see the future. That is structure the host already has, so it is read from the host's inputs and shapes,
never by comparing mask values on the per-call path (a value test is a host sync, and a graph break under
``torch.compile``):

* **padding and a causal flag** (:func:`structural_pattern`): transformers' padding ``attention_mask``, handed to
  the attention function by the project's mask function as one row ``(B, 1, 1, Nk)``, with the module's
  ``is_causal``; ``nn.MultiheadAttention``'s ``key_padding_mask`` and ``is_causal``. Query i of a causal call
  sits at position ``Nk - Nq + i`` (the KV-cache convention; i itself when ``Nq = Nk``).
* **a dense mask** ``(B, 1, Nq, Nk)`` of unknown form (a static cache's unfilled tail, a mask the user built):
  :func:`split_mask` decomposes it into a *prefix pattern*, every row i the valid keys up to a frontier f_i::

    allowed[b, i, j] = valid[b, j] and j <= f[b, i]        valid[b, j] = any_i allowed[b, i, j]

  In eager calls it checks that form by value and refuses any other (sliding windows, chunks, packed sequences,
  per-head masks) with a ValueError; while tracing it takes the general prefix path, correct for every prefix
  pattern, with the check as ``torch._assert_async`` (an assertion on the device that does not stop the host).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

from ..functional.transforms import tracing

Kind = Literal["full", "causal", "prefix"]
NOT_PREFIX = (
    "is not a padding mask, with or without causality: sliding-window, chunked, packed or block masks are not "
    "supported (query i must see the valid keys up to a position of its own)"
)


class MaskPattern(NamedTuple):
    """A prefix pattern (see the module doc) in the form the variants take.

    ``kind``: ``"full"`` every query sees every valid key; ``"causal"`` the queries are the last Nq of the Nk
    positions and query i (at ``Nk - Nq + i``) fits its SVR on its past; ``"prefix"`` any other frontier (a KV cache, a static cache's unfilled tail): then
    ``frontier`` and ``allowed`` are given.
    """

    padding: Tensor | None  # bool (B, Nk), True where no query sees the key; None: no key is padding
    kind: Kind
    frontier: Tensor | None = None  # long (B, Nq): each query's position, the last key it may see; -1: none
    allowed: Tensor | None = None  # bool (B, 1, Nq, Nk), True where query i may attend key j


def allowed_from_mask(
    mask: Tensor, *, true_means: Literal["attend", "ignore"], name: str, check: bool = True
) -> Tensor:
    """A host's mask as bool ``allowed`` (True = may attend), same shape.

    ``mask``: bool, where True means ``true_means`` (transformers: attend; ``nn.MultiheadAttention``: ignore), or
    additive float (0 = attend, ``-inf`` or a value at most half the dtype's lowest = ignore). An additive bias of
    any other value is not a mask: a ValueError naming ``name`` in eager calls when ``check``; otherwise (tracing, or
    a mask on the per-call path) the same test as ``torch._assert_async``, which does not stop the host.
    """
    if mask.dtype == torch.bool:
        return mask if true_means == "attend" else ~mask
    if not mask.is_floating_point():
        raise TypeError(f"{name} must be a bool or floating-point mask, got dtype {mask.dtype}")
    blocked = mask <= torch.finfo(mask.dtype).min / 2
    message = (
        f"{name} holds additive biases other than 0 and -inf: only masks (0 = attend, -inf = ignore) are supported"
    )
    is_mask = ((mask == 0) | blocked).all()
    if check and not tracing():
        if not bool(is_mask):
            raise ValueError(message)
    else:
        torch._assert_async(is_mask, message)
    return ~blocked


def structural_pattern(padding: Tensor | None, *, causal: bool, nq: int, nk: int) -> MaskPattern:
    """The pattern of keys' ``padding`` (bool ``(B, Nk)``, True = padding, or None) and a causal flag, by arithmetic
    only: not causal -> ``full``; causal -> ``causal``, query i at position ``Nk - Nq + i`` (``Nq < Nk``: new
    queries after a KV cache)."""
    if not causal:
        return MaskPattern(padding, "full")
    if nq > nk:
        raise ValueError(f"a causal call needs at most as many queries as keys, got {nq} queries and {nk} keys")
    return MaskPattern(padding, "causal")


def pattern_from_allowed(allowed: Tensor, *, causal: bool, nq: int, name: str) -> MaskPattern:
    """The pattern of a bool mask ``allowed`` ``(B, 1 or H, 1 or Nq, Nk)`` (True = may attend).

    One row for all queries (``(B, 1, 1, Nk)``: the padding row of the project's mask function, or a single query's
    row) is read as padding plus ``causal`` (:func:`structural_pattern`); a dense mask by :func:`split_mask`.
    """
    if allowed.dim() != 4:
        raise ValueError(f"{name} must be (batch, heads or 1, queries or 1, keys), got shape {tuple(allowed.shape)}")
    if allowed.shape[1] == 1 and allowed.shape[2] == 1:
        return structural_pattern(~allowed[:, 0, 0], causal=causal, nq=nq, nk=allowed.shape[-1])
    return split_mask(allowed.expand(-1, -1, nq, -1), name=name)


def split_mask(allowed: Tensor, *, name: str = "attention_mask") -> MaskPattern:
    """Decompose bool ``allowed`` ``(B, Nq, Nk)`` or ``(B, 1 or H, Nq, Nk)`` (True = may attend) into a
    :class:`MaskPattern`; not a prefix pattern: a ValueError naming ``name`` in eager calls, a failed
    ``torch._assert_async`` while tracing (where the pattern is always of kind ``prefix``)."""
    if allowed.dim() not in (3, 4):
        raise ValueError(f"{name} must be (batch, [heads,] queries, keys), got shape {tuple(allowed.shape)}")
    if allowed.dim() == 3:
        allowed = allowed[:, None]
    nq, nk = allowed.shape[-2:]
    heads_agree = (allowed == allowed[:, :1]).all()
    allowed = allowed[:, 0]
    valid = allowed.any(1)  # (B, Nk)
    j = torch.arange(nk, device=allowed.device)
    frontier = torch.where(allowed, j, -1).amax(-1) if nk else allowed.new_full(allowed.shape[:2], -1, dtype=torch.long)
    is_prefix = heads_agree & (allowed == (valid[:, None, :] & (j <= frontier[..., None]))).all()
    pattern = MaskPattern(~valid, "prefix", frontier, allowed[:, None])
    if tracing():
        torch._assert_async(is_prefix, f"{name} {NOT_PREFIX}")
        return pattern
    if not bool(heads_agree):
        raise ValueError(f"{name} differs between heads: only one mask for all heads is supported")
    if not bool(is_prefix):
        raise ValueError(f"{name} {NOT_PREFIX}")
    if bool((allowed == valid[:, None, :]).all()):
        return MaskPattern(~valid, "full")
    causal = valid[:, None, :] & (j <= torch.arange(nq, device=j.device)[:, None])
    return MaskPattern(~valid, "causal") if nq == nk and bool((allowed == causal).all()) else pattern
