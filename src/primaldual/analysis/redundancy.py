"""Head redundancy (docs/theory.md): how alike the heads of one layer are, read from a model with hooks.

Hooks on each :class:`primaldual.Attention` layer record what its forward computes anyway: the queries and
keys handed to the attention kernel (outputs of ``q_norm`` / ``k_norm``), the per-head outputs (input of
``norm``, before the output projection) and the layer's ``key_padding_mask``. They return nothing, so the
model's outputs are unchanged, and are removed on exit. This covers every variant, the models of
:mod:`primaldual.models` and timm ViTs converted by :func:`primaldual.convert`.
"""

from __future__ import annotations

import inspect
import statistics
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional import attention_weights
from ..layers import Attention

Batch = Tensor | Sequence[Tensor | None]


@dataclass
class AttentionRecord:
    """One call of an :class:`~primaldual.Attention` layer, as its forward computed it (detached).

    q, k ``(B, H, N, D)``: the kernel's inputs; heads ``(B, H, N, Dv)``: ``f_h(q_i)`` before concatenation
    and projection; key_padding_mask ``(B, N)`` or None; causal: the layer's or the call's causal flag.
    """

    name: str
    layer: Attention
    q: Tensor
    k: Tensor
    heads: Tensor
    key_padding_mask: Tensor | None
    causal: bool
    bias: Tensor | None = None  # an additive score bias (B or 1, H or 1, N, N): a converted BEiT's or Swin's

    def weights(self, samples: int | slice = slice(None)) -> Tensor:
        """The layer's attention weights ``(b, H, N, N)`` on the original keys (see :func:`attention_weights`),
        of the batch elements ``samples`` (all by default; an int gives b = 1). Every statistic of a variant is
        per sample, so a part of the batch has the weights it has in the whole."""
        index = samples if isinstance(samples, slice) else slice(samples, samples + 1)
        mask = None if self.key_padding_mask is None else self.key_padding_mask[index]
        bias = self.bias if self.bias is None or self.bias.shape[0] == 1 else self.bias[index]
        options = self.layer.options.replace(causal=self.causal)
        return attention_weights(self.q[index], self.k[index], options, key_padding_mask=mask, attn_bias=bias)

    def valid_queries(self) -> Tensor:
        """``(B, N)`` bool: the queries that are not padding (self-attention: queries are the keys' positions)."""
        if self.key_padding_mask is None:
            return torch.ones(self.q.shape[0], self.q.shape[2], dtype=torch.bool, device=self.q.device)
        return ~self.key_padding_mask


@contextmanager
def record_attention(model: nn.Module) -> Iterator[list[AttentionRecord]]:
    """Within the block, every forward call of an Attention layer of ``model`` appends an :class:`AttentionRecord`
    to the yielded list (in call order). Outputs are unchanged; the hooks are removed on exit."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, Attention)]
    if not layers:
        raise ValueError(
            "model has no primaldual.Attention layer (convert a timm or torch.nn model with primaldual.convert first)"
        )
    records: list[AttentionRecord] = []
    handles = []
    for name, layer in layers:
        handles += _hook(name, layer, records)
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def _hook(name: str, layer: Attention, records: list[AttentionRecord]) -> list[Any]:
    """Register the hooks of one layer; they fill ``call`` during a forward and append the record at its end."""
    call: dict[str, Any] = {}
    signature = inspect.signature(layer.forward)

    def start(module: nn.Module, args: tuple, kwargs: dict) -> None:
        bound = signature.bind(*args, **kwargs).arguments
        call.clear()
        q, k, _ = layer.project(bound["x"], bound.get("rope"))
        bias = layer.score_bias(*args, **kwargs) if hasattr(layer, "score_bias") else bound.get("attn_bias")
        call.update(
            q=q.detach(),
            k=k.detach(),
            mask=bound.get("key_padding_mask"),
            causal=layer.options.causal or bool(bound.get("is_causal", False)),
            bias=None if bias is None else bias.detach(),
        )

    def heads(module: nn.Module, args: tuple) -> None:
        b, n, _ = args[0].shape  # (B, N, H·Dv), the heads concatenated
        call["heads"] = args[0].detach().view(b, n, layer.num_heads, -1).transpose(1, 2)

    def finish(module: nn.Module, args: tuple, output: Tensor) -> None:
        mask = None if call["mask"] is None else call["mask"].detach()
        records.append(
            AttentionRecord(name, layer, call["q"], call["k"], call["heads"], mask, call["causal"], call["bias"])
        )

    return [
        layer.register_forward_pre_hook(start, with_kwargs=True),
        layer.norm.register_forward_pre_hook(heads),
        layer.register_forward_hook(finish),
    ]


@contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout: the weights are the layer's) and no autograd; every module's mode restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


def _inputs(batch: Batch) -> tuple[Tensor | None, ...]:
    """``x`` or ``(x,)`` -> ``(x,)``; ``(x, key_padding_mask[, labels])`` -> ``(x, key_padding_mask)``."""
    if isinstance(batch, Tensor):
        return (batch,)
    if isinstance(batch, (tuple, list)) and 1 <= len(batch) <= 3 and isinstance(batch[0], Tensor):
        return tuple(batch[:2])
    raise TypeError(
        "batch must be a tensor x or a tuple (x,), (x, key_padding_mask) or (x, key_padding_mask, labels), "
        f"got {type(batch).__name__}"
    )


def attention_records(model: nn.Module, batch: Batch) -> list[AttentionRecord]:
    """Run ``model`` on ``batch`` in eval mode without autograd and return the record of every attention call.

    ``batch``: a tensor x, or ``(x, key_padding_mask[, labels])`` passed as ``model(x, key_padding_mask)``.
    ``record.weights()`` gives a layer's attention maps ``(B, H, N, N)`` (SH mapped back to the original keys).
    """
    with _eval(model), record_attention(model) as records:
        model(*_inputs(batch))
    return records


def head_redundancy(model: nn.Module, batch: Batch) -> dict[str, Any]:
    """Mean pairwise L2 distance of the heads' attention distributions and mean pairwise cosine similarity of
    the heads' outputs, per attention layer and over layers, for ``model`` on ``batch`` (in eval mode).

    For each non-padded query i and pair of heads ``h < h'`` of a layer: ``||w_h[i, :] - w_h'[i, :]||_2``
    (weights on the original keys, SH's pooled weight spread over each window's valid keys) and
    ``cos(f_h(q_i), f_h'(q_i))`` (per-head outputs, before concatenation and projection); averaged over
    queries and pairs. Larger distance / smaller cosine = less redundant heads. A one-head layer gives NaN.

    ``batch``: a tensor x (e.g. images for a ViT), or ``(x, key_padding_mask[, labels])`` for sequence models;
    queries at padded positions (the layer's own ``key_padding_mask``) are left out.

    Returns ``{"layers": [{"layer", "attention", "heads", "l2_distance", "cosine_similarity"}, ...],
    "l2_distance": mean over layers, "cosine_similarity": mean over layers}``.
    """
    layers = [_layer_redundancy(record) for record in attention_records(model, batch)]
    return {
        "layers": layers,
        "l2_distance": statistics.fmean(row["l2_distance"] for row in layers),
        "cosine_similarity": statistics.fmean(row["cosine_similarity"] for row in layers),
    }


def _layer_redundancy(record: AttentionRecord) -> dict[str, Any]:
    l2, cosine = _pair_statistics(lambda b: record.weights(b)[0], record.heads, record.valid_queries())
    heads = record.q.shape[1]
    return {
        "layer": record.name,
        "attention": record.layer.variant,
        "heads": heads,
        "l2_distance": l2,
        "cosine_similarity": cosine,
    }


def _pair_statistics(weights: Callable[[int], Tensor], heads: Tensor, valid: Tensor) -> tuple[float, float]:
    """Mean pairwise L2 distance of the heads' weights and cosine similarity of their outputs, over the valid
    queries: ``weights(b)`` ``(H, N, Nk)`` of sample b; heads ``(B, H, N, Dv)``; valid ``(B, N)`` bool."""
    count = heads.shape[1]
    first, second = torch.triu_indices(count, count, 1, device=heads.device)
    distances, cosines = [], []
    for b, ok in enumerate(valid):  # one sample at a time: (H, N, N) weights in memory
        rows = weights(b).transpose(0, 1)[ok]  # (valid queries, H, Nk)
        # the exact distance: the matmul shortcut of cdist would turn rounding into distances of ~1e-4
        distances.append(torch.cdist(rows, rows, compute_mode="donot_use_mm_for_euclid_dist")[:, first, second])
        outputs = F.normalize(heads[b].transpose(0, 1)[ok], dim=-1)  # (valid queries, H, Dv)
        cosines.append((outputs @ outputs.transpose(1, 2))[:, first, second])
    return torch.cat(distances).mean().item(), torch.cat(cosines).mean().item()


def causal_lm_redundancy(model: nn.Module, input_ids: Tensor) -> dict[str, Any]:
    """:func:`head_redundancy` of a Hugging Face decoder whose attention is ``"primaldual-<variant>"``, on
    ``input_ids`` ``(B, N)`` (no padding): the causal weights from ``output_attentions`` (SH's pooled weights spread
    over the keys they pool), the heads' outputs from the input of each attention's ``o_proj``. Same keys as
    :func:`head_redundancy`; ``layer``: the attention module's name."""
    modules = [(name, m) for name, m in model.named_modules() if hasattr(m, "o_proj") and hasattr(m, "q_proj")]
    if not modules:
        raise ValueError("model has no attention module with q_proj and o_proj (a Hugging Face decoder)")
    outputs: dict[str, Tensor] = {}

    def keep(name: str) -> Callable[..., None]:
        return lambda module, args: outputs.__setitem__(name, args[0].detach())

    handles = [m.o_proj.register_forward_pre_hook(keep(name)) for name, m in modules]
    try:
        with _eval(model):
            weights = model(input_ids=input_ids, output_attentions=True).attentions
    finally:
        for handle in handles:
            handle.remove()
    valid = torch.ones(input_ids.shape, dtype=torch.bool, device=input_ids.device)
    variant = getattr(model.config, "_attn_implementation", None)
    layers = []
    for (name, _), w in zip(modules, weights):
        b, n, _ = outputs[name].shape
        heads = outputs[name].view(b, n, w.shape[1], -1).transpose(1, 2)
        l2, cosine = _pair_statistics(lambda i, w=w: w[i].float(), heads.float(), valid)
        layers.append(
            {"layer": name, "attention": variant, "heads": w.shape[1], "l2_distance": l2, "cosine_similarity": cosine}
        )
    return {
        "layers": layers,
        "l2_distance": statistics.fmean(row["l2_distance"] for row in layers),
        "cosine_similarity": statistics.fmean(row["cosine_similarity"] for row in layers),
    }
