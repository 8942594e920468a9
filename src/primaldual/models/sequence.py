"""``SequenceClassifier``: a pre-norm transformer encoder for (multivariate) time series and token sequences.

The shape of the UEA transformer protocol: project each time step (or patch of steps) to ``d_model`` (or, for
token ids, look up an embedding), add a learned positional embedding, ``depth`` pre-norm blocks whose attention
is any variant of :class:`primaldual.Attention`, a final LayerNorm, and a linear head on either the mean over the
non-padded tokens (``pooling="mean"``) or all token positions flattened (``pooling="flatten"``, with padded tokens
zeroed: the read-out of the Time-Series-Library transformer behind the published UEA reference accuracies). With ``d_model=128, depth=2, num_heads=2, mlp_ratio=2`` (FFN 256) it is the small encoder of the
Long Range Arena comparisons of efficient attentions (e.g. Nyströmformer's, Skyformer's LRA setting).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional.options import AttentionOptions
from ..functional.variants import resolve_options
from ..layers import Attention


class Block(nn.Module):
    """``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``, the padding mask reaching the attention."""

    def __init__(self, d_model: int, num_heads: int, hidden: int, dropout: float, options: AttentionOptions) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, num_heads, qkv_bias=True, attn_drop=dropout, proj_drop=dropout, options=options)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d_model), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        x = x + self.attn(self.norm1(x), key_padding_mask=key_padding_mask)
        return x + self.mlp(self.norm2(x))


class SequenceClassifier(nn.Module):
    """Time series ``(B, N, C)`` or token ids ``(B, N)``, with padding mask ``(B, N)`` (True = padding) -> logits
    ``(B, num_classes)``.

    Float series (``in_channels = C``): each step is projected by a ``Linear(C, d_model)``; ``patch_size = p > 1``
    embeds non-overlapping patches of p steps with a ``Conv1d(kernel = stride = p)`` instead, so a series of
    length N becomes ``ceil(N / p)`` tokens; a patch is padding iff all its steps are.
    Token ids (``in_channels=None, vocab_size = V``): any integer dtype (uint8 storage is converted per batch),
    ids in ``[0, V)``, each embedded by an ``nn.Embedding(V, d_model)``; padding is what ``key_padding_mask`` says
    (ListOps' padding id 0, say), so an id such as a black pixel's 0 stays a token where the mask is False.
    Padded steps are zeroed (id 0) before the embedding, so their values never reach the logits.
    ``attention``: a variant name or an :class:`~primaldual.functional.AttentionOptions`; ``attention_options``:
    settings applied to it (``scales``, ``window``, ``eps``, ``mean_weight``, ...), for every block.
    """

    def __init__(
        self,
        in_channels: int | None,
        num_classes: int,
        max_length: int,
        *,
        vocab_size: int | None = None,
        d_model: int = 64,
        depth: int = 2,
        num_heads: int = 8,
        mlp_ratio: float = 2.0,
        dropout: float = 0.1,
        attention: str | AttentionOptions = "softmax",
        attention_options: dict[str, Any] | None = None,
        patch_size: int = 1,
        pooling: str = "mean",
    ) -> None:
        super().__init__()
        if (in_channels is None) == (vocab_size is None):
            raise ValueError(
                f"give exactly one of in_channels (float series) and vocab_size (token ids), got "
                f"in_channels={in_channels!r}, vocab_size={vocab_size!r}"
            )
        if vocab_size is not None and patch_size != 1:
            raise ValueError(
                f"patch_size must be 1 with vocab_size (token ids are embedded one per position), got {patch_size!r}"
            )
        sizes = dict(
            in_channels=in_channels,
            vocab_size=vocab_size,
            num_classes=num_classes,
            max_length=max_length,
            depth=depth,
            patch_size=patch_size,
        )
        for name, value in sizes.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.in_channels, self.vocab_size = in_channels, vocab_size
        self.max_length, self.patch_size = max_length, patch_size
        if vocab_size is not None:
            self.embed: nn.Module = nn.Embedding(vocab_size, d_model)
            # BERT's and GPT-2's scale, the positional embedding's: torch's N(0, 1) would drown the positions 50x
            nn.init.trunc_normal_(self.embed.weight, std=0.02)
        elif patch_size > 1:
            self.embed = nn.Conv1d(in_channels, d_model, patch_size, stride=patch_size)
        else:
            self.embed = nn.Linear(in_channels, d_model)
        self.pos = nn.Parameter(torch.zeros(1, math.ceil(max_length / patch_size), d_model))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.drop = nn.Dropout(dropout)
        hidden = round(d_model * mlp_ratio)
        options = resolve_options(attention, attention_options or {})
        self.blocks = nn.ModuleList(Block(d_model, num_heads, hidden, dropout, options) for _ in range(depth))
        self.norm = nn.LayerNorm(d_model)
        if pooling not in ("mean", "flatten"):
            raise ValueError(f"pooling must be 'mean' or 'flatten', got {pooling!r}")
        self.pooling = pooling
        self.head = nn.Linear(d_model * (self.pos.shape[1] if pooling == "flatten" else 1), num_classes)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """x float ``(B, N, C)`` (token ids ``(B, N)`` with ``vocab_size``), ``N <= max_length``; key_padding_mask
        bool ``(B, N)`` or None -> logits ``(B, classes)``."""
        tokens = self.vocab_size is not None
        if tokens:
            fits = x.dim() == 2 and not (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool)
            expected = f"integer token ids (batch, length <= {self.max_length})"
        else:
            fits = x.dim() == 3 and x.shape[-1] == self.in_channels
            expected = f"(batch, length <= {self.max_length}, {self.in_channels})"
        if not fits or x.shape[1] > self.max_length:
            raise ValueError(f"x must be {expected}, got {x.dtype} {tuple(x.shape)}")
        if key_padding_mask is None:
            key_padding_mask = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        if key_padding_mask.dtype != torch.bool or key_padding_mask.shape != x.shape[:2]:
            raise ValueError(
                f"key_padding_mask must be bool (batch, length) = {tuple(x.shape[:2])} (True = padding), "
                f"got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
            )
        x = x.masked_fill(key_padding_mask if tokens else key_padding_mask[..., None], 0)
        if tokens:
            x = x.long()  # per batch: ids may be stored narrower; nn.Embedding takes int64 (or int32) only
            if x.numel() and (x.min() < 0 or x.max() >= self.vocab_size):
                raise ValueError(
                    f"token ids must lie in [0, vocab_size={self.vocab_size}), got range "
                    f"[{x.min().item()}, {x.max().item()}]"
                )
            x = self.embed(x)
        elif self.patch_size > 1:
            pad = -x.shape[1] % self.patch_size  # complete the last patch with padding
            x = F.pad(x, (0, 0, 0, pad))
            key_padding_mask = F.pad(key_padding_mask, (0, pad), value=True)
            x = self.embed(x.transpose(1, 2)).transpose(1, 2)
            key_padding_mask = key_padding_mask.view(x.shape[0], x.shape[1], self.patch_size).all(-1)
        else:
            x = self.embed(x)
        x = self.drop(x + self.pos[:, : x.shape[1]])
        for block in self.blocks:
            x = block(x, key_padding_mask)
        valid = (~key_padding_mask)[..., None].to(x.dtype)
        x = self.norm(x) * valid
        if self.pooling == "flatten":  # every position keeps its own weights; shorter batches padded with 0
            return self.head(F.pad(x, (0, 0, 0, self.pos.shape[1] - x.shape[1])).flatten(1))
        return self.head(x.sum(1) / valid.sum(1).clamp(min=1))  # masked mean; all-padding -> 0
