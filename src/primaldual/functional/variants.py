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

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from .checks import check_dropout, check_key_padding_mask, check_qkv, check_scales
from .kernels import linear_kernel, softmax_kernel
from .options import PAPER_VARIANTS, VARIANTS, AttentionOptions, Variant, check_names, default_scales, get_variant
from .transforms import bn_normalize, bn_softmax_inputs, head_split, join_heads, pool_keys, split_heads, tracing

__all__ = ["PAPER_VARIANTS", "VARIANTS", "AttentionOptions", "Variant", "attention", "default_scales", "get_variant"]


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
    """Check the tensors against ``options`` (already valid in themselves); return the SH factors (None unless
    SH), each at most the number of keys it pools (a larger factor gives the same single window, at a cost
    that grows with the factor)."""
    check_qkv(q, k, v)
    check_key_padding_mask(key_padding_mask, k)
    spec = options.spec
    if options.causal and spec.bn and q.shape[2] != k.shape[2]:
        raise ValueError(f"causal bn needs as many queries as keys, got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if not spec.pooled:
        return None
    if options.scales is None:
        raise ValueError(f"variant {options.variant!r} needs scales: one integer factor >= 1 per head ({q.shape[1]})")
    scales = check_scales(options.scales, q.shape[1])
    if tracing():  # a graph for every length: no guard on N (pooling is shape-generic)
        return scales
    pooled = max(1, k.shape[2] - options.num_prefix_tokens)
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


def _fit_and_evaluate(
    options: AttentionOptions, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float
) -> Tensor:
    """Normalisation then kernel, on keys already selected."""
    q, k = normalise(options, q, k, mask)
    if options.spec.kernel == "softmax":
        return softmax_kernel(q, k, v, mask, causal=options.causal, window=options.window, dropout_p=dropout_p)
    return linear_kernel(q, k, v, mask)


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    variant: str | AttentionOptions = "softmax",
    *,
    key_padding_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    **options: Any,
) -> Tensor:
    """Attention ``variant`` of q ``(B,H,Nq,D)`` on k ``(B,H,Nk,D)``, v ``(B,H,Nk,Dv)`` -> ``(B,H,Nq,Dv)``.

    ``variant``: a key of :data:`VARIANTS` whose settings are the keyword ``options`` (``scales``, ``window``,
    ``eps``, ``mean_weight``, ``causal``, ``num_prefix_tokens``: see :class:`AttentionOptions`), or an
    :class:`AttentionOptions` made once (the layers' way: nothing but the tensors is checked per call).
    ``key_padding_mask``: bool ``(B, Nk)``, True at padding. ``dropout_p``: dropout on the softmax weights.
    """
    options = resolve_options(variant, options)
    scales = check_inputs(options, q, k, v, key_padding_mask)
    check_dropout(dropout_p)
    if scales is None:
        return _fit_and_evaluate(options, q, k, v, key_padding_mask, dropout_p)
    groups = head_split(scales)
    if len(groups.factors) == 1:
        pk, pv, pmask = pool_keys(k, v, key_padding_mask, scales[0], num_prefix_tokens=options.num_prefix_tokens)
        return _fit_and_evaluate(options, q, pk, pv, pmask, dropout_p)
    outputs = []
    for factor, qh, kh, vh in zip(groups.factors, *(split_heads(t, groups) for t in (q, k, v))):
        pk, pv, pmask = pool_keys(kh, vh, key_padding_mask, factor, num_prefix_tokens=options.num_prefix_tokens)
        outputs.append(_fit_and_evaluate(options, qh, pk, pv, pmask, dropout_p))
    return join_heads(outputs, groups)


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
