"""Argument validation shared by every functional op: errors name the argument and what was expected."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    """q ``(B, H, Nq, D)``, k ``(B, Hkv, Nk, D)``, v ``(B, Hkv, Nk, Dv)``: same batch, dtype, device; k and v share
    their heads, whose number divides H (``Hkv < H``: grouped-query attention, query head h reads key head
    ``h // (H / Hkv)``)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor of shape (batch, heads, seq, head_dim), got {type(t).__name__}"
            )
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (batch, heads, seq, head_dim), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    grouped = k.shape[1] and q.shape[1] % k.shape[1] == 0
    if q.shape[0] != k.shape[0] or k.shape[:2] != v.shape[:2] or not grouped:
        raise ValueError(
            "q, k, v must share the batch, k and v their heads, whose number divides q's (grouped-query attention); "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share head_dim; got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k and v must share the key length; got k {tuple(k.shape)}, v {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")


def check_tokens(x: Tensor, weight: Tensor, bias: Tensor | None, num_heads: int) -> None:
    """Tokens x ``(B, N, C)`` and a fused projection's ``weight`` ``(3·H·D, C)`` and ``bias`` ``(3·H·D)`` or None."""
    if not isinstance(x, Tensor) or x.dim() != 3 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a floating-point tensor (batch, seq, dim), got {shape}")
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be an integer >= 1, got {num_heads!r}")
    rows = weight.shape[0] if weight.dim() == 2 else -1
    if weight.dim() != 2 or weight.shape[1] != x.shape[-1] or rows % (3 * num_heads) or rows == 0:
        raise ValueError(
            f"weight must be (3 * num_heads * head_dim, dim) = (3 * {num_heads} * D, {x.shape[-1]}), "
            f"got {tuple(weight.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (rows,):
        raise ValueError(f"bias must be None or ({rows},) like weight's rows, got {tuple(bias.shape)}")


def check_key_padding_mask(mask: Tensor | None, k: Tensor) -> None:
    """``key_padding_mask`` is None or bool ``(B, Nk)``, True where a key is padding."""
    if mask is None:
        return
    if not isinstance(mask, Tensor):
        raise TypeError(f"key_padding_mask must be a bool tensor of shape (batch, seq_k), got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask must have dtype torch.bool (True = padding), got {mask.dtype}")
    expected = (k.shape[0], k.shape[2])
    if tuple(mask.shape) != expected:
        raise ValueError(f"key_padding_mask must have shape (batch, seq_k) = {expected}, got {tuple(mask.shape)}")
    if mask.device != k.device:
        raise ValueError(f"key_padding_mask must be on {k.device} like k, got {mask.device}")


def check_scales(scales: Sequence[int], num_heads: int | None = None) -> tuple[int, ...]:
    """``scales``: integer downsampling factors ``>= 1``, one per head (``num_heads`` of them, when given)."""
    count = "" if num_heads is None else f"{num_heads} "
    if isinstance(scales, (int, str, Tensor)) or not isinstance(scales, Sequence):
        raise TypeError(f"scales must be a sequence of {count}integers (one factor per head), got {scales!r}")
    if num_heads is not None and len(scales) != num_heads:
        raise ValueError(f"scales must have one factor per head ({num_heads}), got {len(scales)}: {tuple(scales)}")
    for r in scales:
        if isinstance(r, bool) or not isinstance(r, int):
            raise TypeError(f"scales must hold integers, got {r!r} in {tuple(scales)}")
        if r < 1:
            raise ValueError(f"every factor in scales must be >= 1, got {r} in {tuple(scales)}")
    return tuple(scales)


def check_grid(grid: Sequence[int]) -> tuple[int, int]:
    """``grid``: the patch grid ``(rows, cols)`` that grid SH pools, two integers ``>= 1``."""
    if isinstance(grid, (str, Tensor)) or not isinstance(grid, Sequence) or len(grid) != 2:
        raise TypeError(f"grid must be the patch grid (rows, cols), two integers, got {grid!r}")
    if any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in grid):
        raise ValueError(f"grid must hold two integers >= 1 (rows, cols), got {tuple(grid)}")
    return tuple(grid)


def check_grid_tokens(grid: tuple[int, int], num_prefix_tokens: int, num_keys: int) -> None:
    """The ``num_keys`` keys are ``num_prefix_tokens`` prefix tokens and the ``rows × cols`` patches of ``grid``."""
    rows, cols = grid
    if num_keys - num_prefix_tokens != rows * cols:
        raise ValueError(
            f"grid {grid} needs {num_prefix_tokens} prefix tokens and {rows}×{cols} = {rows * cols} patch tokens, "
            f"got {num_keys} keys"
        )


def check_window(window: int) -> int:
    """``window``: the sparse half-width, an integer ``>= 0`` (query i sees keys with ``|i - j| <= window``)."""
    if isinstance(window, bool) or not isinstance(window, int):
        raise TypeError(f"window must be an integer >= 0, got {window!r}")
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    return window


def check_dropout(dropout_p: float) -> None:
    """``dropout_p``: the probability of dropping an attention weight, in ``[0, 1]``."""
    if not 0 <= dropout_p <= 1:  # also refuses NaN
        raise ValueError(f"dropout_p must be in [0, 1], got {dropout_p}")
