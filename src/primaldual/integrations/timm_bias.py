"""timm's attentions with an additive relative position bias, as :class:`primaldual.Attention` with ``attn_bias``:
BEiT's ``Attention`` (BEiT, BEiT v2, and the ``shared_rel_pos_bias`` of a model's own ``rel_pos_bias``), the
relative-position ViTs' ``RelPosAttention`` (``RelPosBias``, ``RelPosMlp``) and Swin's ``WindowAttention``.

Each keeps its module's bias parameters and computes the bias exactly as timm does, then hands it to the variant
as an additive score bias (SPEC section 5): softmax adds it to its scores (so the softmax conversion equals the
original), BN after normalisation, SH adds to a pooled key the mean bias of the keys it pools. Swin's windows
are the sequences: the window partition, the cyclic shift and the shifted-window mask stay in Swin's block; the
mask (0 or -100 between patches that were not neighbours before the shift) is added to the bias as Swin adds
it, so BN's statistics and SH's windows are those of the whole window, masked pairs included.

Each converted class has ``score_bias(*args)``, the bias of a call with ``forward``'s arguments, which the
head-redundancy records (``analysis.redundancy``) read so that their weights are the variant's with the bias.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..layers import Attention


class BeitAttention(Attention):
    """``timm.models.beit.Attention`` converted: its relative position bias table (when the block has one) plus the
    model's shared bias, if any, added to the scores."""

    def forward(self, x: Tensor, shared_rel_pos_bias: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """x ``(B, N, dim)``, ``shared_rel_pos_bias`` ``(H, N, N)`` (BEiT's ``RelativePositionBias``) or None ->
        ``(B, N, dim)``."""
        return super().forward(x, attn_bias=self.score_bias(x, shared_rel_pos_bias))

    def score_bias(self, x: Tensor, shared_rel_pos_bias: Tensor | None = None) -> Tensor | None:
        """The additive score bias ``(1, H, N, N)`` of a call with these arguments (see :data:`BIASED`)."""
        bias = None if shared_rel_pos_bias is None else shared_rel_pos_bias.expand(1, -1, -1, -1)
        if self.relative_position_bias_table is not None:
            from timm.models.beit import Attention as TimmBeitAttention

            own = TimmBeitAttention._get_rel_pos_bias(self)
            bias = own if bias is None else own + bias
        return bias


class RelPosAttention(Attention):
    """``timm.models.vision_transformer_relpos.RelPosAttention`` converted: its ``rel_pos`` module's bias, else the
    model's shared one (timm's fused path)."""

    def forward(self, x: Tensor, shared_rel_pos: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """x ``(B, N, dim)`` -> ``(B, N, dim)``."""
        return super().forward(x, attn_bias=self.score_bias(x, shared_rel_pos))

    def score_bias(self, x: Tensor, shared_rel_pos: Tensor | None = None) -> Tensor | None:
        """The additive score bias of a call with these arguments."""
        return self.rel_pos.get_bias() if self.rel_pos is not None else shared_rel_pos


class WindowAttention(Attention):
    """``timm.models.swin_transformer.WindowAttention`` converted: the windows ``(B·nW, N, dim)`` as sequences,
    the relative position bias plus the shifted-window mask ``(nW, N, N)`` as the score bias."""

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """x ``(B·nW, N, dim)``, mask ``(nW, N, N)`` (0 or -100) or None -> ``(B·nW, N, dim)``."""
        return super().forward(x, attn_bias=self.score_bias(x, mask))

    def score_bias(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """The additive score bias ``(1 or B·nW, H, N, N)`` of a call with these arguments."""
        from timm.models.swin_transformer import WindowAttention as TimmWindowAttention

        bias = TimmWindowAttention._get_rel_pos_bias(self)
        if mask is None:
            return bias
        windows, n = mask.shape[0], x.shape[1]
        return (bias[:, None] + mask[:, None]).expand(x.shape[0] // windows, -1, -1, n, n).flatten(0, 1)


#: timm class (module, name) -> (converted class, the parts it keeps besides those of ``Attention``).
BIASED: dict[tuple[str, str], tuple[type[Attention], tuple[str, ...]]] = {
    ("timm.models.beit", "Attention"): (
        BeitAttention,
        ("window_size", "relative_position_bias_table", "relative_position_index"),
    ),
    ("timm.models.vision_transformer_relpos", "RelPosAttention"): (RelPosAttention, ("rel_pos",)),
    ("timm.models.swin_transformer", "WindowAttention"): (
        WindowAttention,
        ("window_size", "window_area", "relative_position_bias_table", "relative_position_index"),
    ),
}


def biased_class(module: nn.Module) -> tuple[type[Attention], tuple[str, ...]] | None:
    """The converted class and kept parts of ``module`` when it is one of :data:`BIASED` (by exact type)."""
    return BIASED.get((type(module).__module__, type(module).__qualname__))


def keep_parts(new: Attention, child: nn.Module, parts: tuple[str, ...]) -> None:
    """``child``'s bias parts on ``new``: parameters and modules as they are (shared), buffers as non-persistent
    buffers (timm's), other attributes copied."""
    buffers = dict(child.named_buffers(recurse=False))
    for part in parts:
        value = getattr(child, part)
        if part in buffers:
            new.register_buffer(part, value, persistent=part not in child._non_persistent_buffers_set)
        else:
            setattr(new, part, value)
