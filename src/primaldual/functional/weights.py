"""The explicit attention weights ``w_ij`` of any variant, on the original key positions.

``f(q_i) = Σ_j w_ij v_j``: the fast paths of :func:`primaldual.functional.attention` never form ``w``; the
analysis needs it, for every variant, with SH's pooled keys mapped back to the keys they were pooled from.
Built from the same transforms as the fast path (BN inputs, pooling, allowed keys) and the plain weight
formulas of :mod:`primaldual.functional.reference`, so nothing is written twice.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import reference
from .kernels import elu_feature_map
from .options import AttentionOptions
from .transforms import allowed_keys, head_split, join_heads, pool_keys, split_heads
from .variants import attention, check_bias, check_inputs, normalise, repeat_kv, resolve_options


def attention_weights(
    q: Tensor,
    k: Tensor,
    variant: str | AttentionOptions = "softmax",
    *,
    key_padding_mask: Tensor | None = None,
    attn_bias: Tensor | None = None,
    **options: Any,
) -> Tensor:
    """Weights ``w`` ``(B, H, Nq, Nk)`` with ``attention(q, k, v, variant, ...) = w @ v`` (no dropout).

    q ``(B, H, Nq, D)``, k ``(B, H, Nk, D)``; ``variant`` and ``options`` as in
    :func:`primaldual.functional.attention`.

    * softmax kernel: ``w_ij = softmax_j(q_iᵀk_j/√D)`` over the allowed keys; BN uses the normalised
      inputs of :func:`~primaldual.functional.bn_softmax_inputs`, which give the same weights.
    * linear kernel: ``w_ij = Φ(q_i)ᵀΦ(k_j) / Σ_j Φ(q_i)ᵀΦ(k_j)``, ``Φ = elu + 1`` (BN: both sides
      normalised).
    * SH: head h's weight ``w'_iw`` on pooled key w is spread evenly over the *valid* keys of window w,
      ``w_ij = w'_iw / |valid keys of w|`` for valid ``j ∈ w``, 0 for padded j. Since the pooled value is the
      mean of those keys' values, ``Σ_j w_ij v_j = Σ_w w'_iw v'_w``: the head's output exactly; every row
      still sums to 1. Prefix tokens map to themselves.

    * causal SH and the causal linear kernel (each query's own training set, SPEC section 5), and SH with a score
      bias (pooled with the keys): the output with the identity as values, ``w_ij`` the weight of key j through
      the points that average it.

    A query with no allowed key has a zero row (its output is 0).
    """
    options = resolve_options(variant, options)
    scales = check_inputs(options, q, k, k, key_padding_mask)
    check_bias(options, attn_bias, q, k)
    k = repeat_kv(k, q.shape[1])
    if (options.causal or attn_bias is not None) and (scales is not None or options.spec.kernel == "linear"):
        # Causal SH and the linear kernel form each query's own training set, SH pools a bias with its keys: the
        # outputs are linear in the values, so the values of the identity give the weights on the original keys
        # (N² like any weights).
        identity = torch.eye(k.shape[2], dtype=q.dtype, device=q.device).expand(*k.shape[:3], k.shape[2])
        return attention(q, k, identity, options, key_padding_mask=key_padding_mask, attn_bias=attn_bias)
    if scales is None:
        return _kernel_weights(options, q, k, key_padding_mask, attn_bias)
    b, nk = q.shape[0], k.shape[2]
    identity = torch.eye(nk, dtype=q.dtype, device=q.device)
    groups = head_split(scales)
    weights = []
    for factor, qh, kh in zip(groups.factors, split_heads(q, groups), split_heads(k, groups)):
        # Pooling the identity with the keys' own windows and mask gives spread[w, j] = 1/|valid keys of w|
        # for valid j in window w: the map from pooled keys back to the original ones.
        spread_identity = identity.expand(b, kh.shape[1], nk, nk)
        pooled, spread, mask = pool_keys(kh, spread_identity, key_padding_mask, factor, **options.pooling)
        weights.append(_kernel_weights(options, qh, pooled, mask) @ spread)
    return join_heads(weights, groups)


def _kernel_weights(
    options: AttentionOptions, q: Tensor, k: Tensor, mask: Tensor | None, bias: Tensor | None = None
) -> Tensor:
    """Normalisation then kernel weights on keys already selected, the step ``functional.variants`` takes."""
    allowed = allowed_keys(q.shape[2], k.shape[2], mask, causal=options.causal, window=options.window, device=q.device)
    q, k = normalise(options, q, k, mask)
    if options.spec.kernel == "softmax":
        return reference.softmax_weights(q, k, allowed, bias)
    return reference.normalised_weights(elu_feature_map(q) @ elu_feature_map(k).transpose(-2, -1), allowed)
