"""Host libraries' attention masks, read as what the variants understand: key padding, causality, positions.

A host (Hugging Face transformers, ``nn.MultiheadAttention``) hands over a mask of which query may attend which key,
boolean or additive. The variants need more than that matrix: BN takes statistics over the keys a query's SVR is
fitted on, SH pools windows of keys, so both must know which keys are padding and whether a query may see the
future. :func:`split_mask` recovers that from the matrix, and refuses a mask that is not of that form.

A mask ``allowed`` (B, Nq, Nk) is a *prefix pattern* when every row i is the valid keys up to a frontier f_i::

    allowed[b, i, j] = valid[b, j] and j <= f[b, i]        valid[b, j] = any_i allowed[b, i, j]

This covers a padding mask (every row the valid keys: f_i = the last key), a causal mask with padding (f_i = i,
or its last valid key), and a causal mask against a KV cache (query i at position ``Nk - Nq + i``): the frontier
is the query's position, up to padded keys that no query sees anyway. A key no query sees is padding. Sliding
windows, chunks, packed sequences and additive biases are not prefix patterns.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

Kind = Literal["full", "causal", "prefix"]


class MaskPattern(NamedTuple):
    """A prefix pattern (see the module doc) in the form the variants take.

    ``kind``: ``"full"`` every query sees every valid key; ``"causal"`` as many queries as keys and query i sees the
    valid keys ``j <= i``; ``"prefix"`` any other frontier (a KV cache, a static cache's unfilled tail).
    """

    padding: Tensor | None  # bool (B, Nk), True where no query sees the key; None when every key is seen
    kind: Kind
    frontier: Tensor  # long (B, Nq): the last key each query sees, -1 for a query that sees none
    allowed: Tensor  # bool (B, 1, Nq, Nk), True where query i may attend key j


def allowed_from_mask(mask: Tensor, *, true_means: Literal["attend", "ignore"], name: str) -> Tensor:
    """A host's mask as bool ``allowed`` (True = may attend), same shape.

    ``mask``: bool, where True means ``true_means`` (transformers: attend; ``nn.MultiheadAttention``: ignore), or
    additive float (0 = attend, ``-inf`` or a value at most half the dtype's lowest = ignore). An additive bias of
    any other value is not a mask: a ValueError naming ``name``.
    """
    if mask.dtype == torch.bool:
        return mask if true_means == "attend" else ~mask
    if not mask.is_floating_point():
        raise TypeError(f"{name} must be a bool or floating-point mask, got dtype {mask.dtype}")
    blocked = mask <= torch.finfo(mask.dtype).min / 2
    if not bool(((mask == 0) | blocked).all()):
        raise ValueError(
            f"{name} holds additive biases other than 0 and -inf: only masks (0 = attend, -inf = ignore) are supported"
        )
    return ~blocked


def split_mask(allowed: Tensor, *, name: str = "attention_mask") -> MaskPattern:
    """Decompose bool ``allowed`` ``(B, Nq, Nk)`` or ``(B, 1, Nq, Nk)`` (True = may attend) into a
    :class:`MaskPattern`; a ValueError naming ``name`` if it is not a prefix pattern."""
    if allowed.dim() == 4:
        if allowed.shape[1] != 1:
            if not bool((allowed == allowed[:, :1]).all()):
                raise ValueError(f"{name} differs between heads: only one mask for all heads is supported")
            allowed = allowed[:, :1]
        allowed = allowed[:, 0]
    if allowed.dim() != 3:
        raise ValueError(f"{name} must be (batch, [1,] queries, keys), got shape {tuple(allowed.shape)}")
    nq, nk = allowed.shape[-2:]
    valid = allowed.any(1)  # (B, Nk)
    j = torch.arange(nk, device=allowed.device)
    frontier = torch.where(allowed, j, -1).amax(-1) if nk else allowed.new_full(allowed.shape[:2], -1, dtype=torch.long)
    if not bool((allowed == (valid[:, None, :] & (j <= frontier[..., None]))).all()):
        raise ValueError(
            f"{name} is not a padding mask, with or without causality: sliding-window, chunked, packed or block "
            "masks are not supported (query i must see the valid keys up to a position of its own)"
        )
    padding = None if bool(valid.all()) else ~valid
    if bool((allowed == valid[:, None, :]).all()):
        kind: Kind = "full"
    elif nq == nk and bool((allowed == (valid[:, None, :] & (j <= torch.arange(nq, device=j.device)[:, None]))).all()):
        kind = "causal"
    else:
        kind = "prefix"
    return MaskPattern(padding, kind, frontier, allowed[:, None])


def causal_pattern(batch: int, nq: int, nk: int, padding: Tensor | None, device: torch.device) -> MaskPattern:
    """The pattern of a causal call without a mask: query i at position ``Nk - Nq + i`` (the KV-cache convention;
    ``i`` itself when ``Nq = Nk``) sees the keys up to its position, less ``padding`` (bool (B, Nk) or None)."""
    i = torch.arange(nq, device=device)[:, None] + (nk - nq)
    allowed = (torch.arange(nk, device=device) <= i).expand(batch, nq, nk)
    if padding is not None:
        allowed = allowed & ~padding[:, None, :]
    return split_mask(allowed)
