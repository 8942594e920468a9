"""Every attention of SPEC.md as one composition: a data selection, a normalisation, a kernel.

    selection      all keys | pooled per head (SH, factor r_h) | a sliding window (sparse)
    normalisation  none | BN (statistics of the keys that this head's SVR is fitted on)
    kernel         softmax (dual, fused SDPA) | linear (primal, elu + 1)

The named functions below are those compositions; :func:`attention` picks one by name.
Tensors are ``(batch, heads, seq, head_dim)``; ``key_padding_mask`` is bool ``(batch, seq_k)``, True
where a key is padding (as in ``nn.MultiheadAttention``). A query that sees no valid key returns 0.

Hostile inputs. Shapes, dtypes, devices, the mask and the options are checked (a ValueError or TypeError
names the argument). Values are not: a finiteness check would cost a pass over q, k, v and a device sync on
every call. What happens instead:

* NaN propagates: an output it can reach is NaN, never another finite number, and it reaches only its own
  sample and head: a NaN query its own row; a NaN key or value any row of its head, even from a padded,
  future or out-of-window position, since those are excluded by -inf scores and zero weights and
  ``NaN - inf = 0 · NaN = NaN``. So padding must hold finite values: the data loaders write 0 there, and the
  models zero padded steps before the first layer.
* ±Inf does the same where it makes a score or a sum NaN, and gives the limit where the formula has one
  (a key whose score is -Inf gets weight 0).
* A query with no valid key returns 0 (NaN for a NaN query under the linear kernel). Empty batches, no
  queries and sequences of length 1 give outputs of the matching shape.
* Magnitude: softmax subtracts each row's largest score and BN accumulates its statistics in at least
  float32 (causal prefix statistics in float64, except on MPS), so the softmax-kernel variants (BN and SH
  included) give finite outputs equal to the reference to rounding for inputs of magnitude 1e4 in float32
  and bfloat16. BN's scores reach the fused kernel as ``(q - βμ)/s²`` and ``k - m`` (m: the mean of all valid
  keys) rounded to the inputs' dtype, so their error is ``eps(dtype)`` times the size S of
  ``Σ_d |x̂(q)_d| |k_d - m_d| / (s_d √D)``, the scores' size (a causal prefix far from m: more). A nearly
  constant key feature (few keys: a causal prefix, an SH head pooled to two keys) makes S large, and the
  output's error then grows with it: at most ``eps(dtype) · S / 2`` of the values' range where S >= 10 (measured
  over random problems; bfloat16: 0.4% per unit of S; compute in float32 where that matters). Limits: BN's
  variance overflows float32 for keys beyond about 1e18 (its scores then flatten to 0). The linear kernel evaluates
  ``Φ = elu + 1`` as ``exp(x)`` for ``x <= 0`` (no cancellation) and rescales each query whose features are
  all negative (the ratio ignores the scale), so linear-BN against keys of (near) zero variance gives the
  mean value as the formula does; a key whose features all lie below about -87 (float32, bfloat16) has
  ``Φ = 0`` and is ignored. In float16 (largest 65504) the linear kernel's sums overflow for inputs of
  magnitude about 30.
* SH factors larger than the sequence pool it into one key, as a factor equal to its length does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .checks import check_bn_options, check_dropout, check_key_padding_mask, check_qkv, check_scales, check_window
from .kernels import linear_kernel, softmax_kernel
from .transforms import bn_normalize, bn_softmax_inputs, head_groups, pool_keys


@dataclass(frozen=True)
class Variant:
    """One point of the composition: which kernel, with BN or not, which key selection."""

    kernel: str  # "softmax" | "linear"
    bn: bool = False
    pooled: bool = False  # SH: keys/values pooled per head by ``scales``
    windowed: bool = False  # sparse: sliding window of half-width ``window``


VARIANTS: dict[str, Variant] = {
    "softmax": Variant("softmax"),
    "linear": Variant("linear"),
    "sparse": Variant("softmax", windowed=True),
    "bn": Variant("softmax", bn=True),
    "sh": Variant("softmax", pooled=True),
    "bn+sh": Variant("softmax", bn=True, pooled=True),
    "linear-bn": Variant("linear", bn=True),
    "linear-sh": Variant("linear", pooled=True),
    "linear-bn+sh": Variant("linear", bn=True, pooled=True),
}


def get_variant(name: str) -> Variant:
    """The :class:`Variant` called ``name``; a ValueError lists the known names otherwise."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; expected one of {', '.join(VARIANTS)}")
    return VARIANTS[name]


def check_options(
    variant: str,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_padding_mask: Tensor | None,
    *,
    scales: Sequence[int] | None,
    window: int | None,
    causal: bool,
    eps: float,
    mean_weight: float,
    num_prefix_tokens: int,
) -> tuple[Variant, tuple[int, ...] | None]:
    """Validate the arguments of :func:`attention`; return the variant and its scales (None unless SH), each
    at most the number of keys it pools (a larger factor gives the same single window, at a cost that grows
    with the factor)."""
    spec = get_variant(variant)
    check_qkv(q, k, v)
    check_key_padding_mask(key_padding_mask, k)
    if spec.bn:
        check_bn_options(eps, mean_weight)
    if spec.windowed:
        if window is None:
            raise ValueError(f"variant {variant!r} needs window (an integer >= 0)")
        check_window(window)
    elif window is not None:
        raise ValueError(f"window is only used by the sparse variant, not {variant!r}")
    if causal and (spec.kernel != "softmax" or spec.pooled):
        raise ValueError(f"causal=True is supported by softmax, sparse and bn, not {variant!r}")
    if causal and spec.bn and q.shape[2] != k.shape[2]:
        raise ValueError(f"causal bn needs as many queries as keys, got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if not spec.pooled:
        if scales is not None:
            raise ValueError(f"scales is only used by the sh variants, not {variant!r}")
        return spec, None
    if scales is None:
        raise ValueError(f"variant {variant!r} needs scales: one integer factor >= 1 per head ({q.shape[1]})")
    if num_prefix_tokens < 0:
        raise ValueError(f"num_prefix_tokens must be >= 0, got {num_prefix_tokens}")
    pooled = max(1, k.shape[2] - num_prefix_tokens)
    return spec, tuple(min(r, pooled) for r in check_scales(scales, q.shape[1]))


def _fit_and_evaluate(
    spec: Variant,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    *,
    causal: bool,
    window: int | None,
    eps: float,
    mean_weight: float,
    dropout_p: float,
) -> Tensor:
    """Normalisation then kernel, on keys already selected."""
    if spec.kernel == "softmax":
        if spec.bn:
            q, k = bn_softmax_inputs(q, k, mask, eps=eps, mean_weight=mean_weight, causal=causal)
        return softmax_kernel(q, k, v, mask, causal=causal, window=window, dropout_p=dropout_p)
    if spec.bn:
        q, k = bn_normalize(q, k, mask, eps=eps, mean_weight=mean_weight)
    return linear_kernel(q, k, v, mask)


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    variant: str = "softmax",
    *,
    key_padding_mask: Tensor | None = None,
    scales: Sequence[int] | None = None,
    window: int | None = None,
    causal: bool = False,
    eps: float = 1e-5,
    mean_weight: float = 1.0,
    dropout_p: float = 0.0,
    num_prefix_tokens: int = 0,
) -> Tensor:
    """Attention ``variant`` (a key of :data:`VARIANTS`) of q ``(B,H,Nq,D)`` on k ``(B,H,Nk,D)``, v ``(B,H,Nk,Dv)``.

    ``scales`` (SH variants): one factor ``r_h >= 1`` per head. ``window`` (sparse): half-width ``>= 0``.
    ``eps``, ``mean_weight`` (β): BN options. ``causal``: softmax, sparse and bn only (BN then uses prefix
    statistics). ``dropout_p``: dropout on the softmax weights. ``num_prefix_tokens``: leading keys
    (class/register tokens) that SH leaves unpooled. Returns ``(B, H, Nq, Dv)``.
    """
    spec, scales = check_options(
        variant, q, k, v, key_padding_mask, scales=scales, window=window, causal=causal, eps=eps,
        mean_weight=mean_weight, num_prefix_tokens=num_prefix_tokens,
    )
    check_dropout(dropout_p)
    options = dict(causal=causal, window=window, eps=eps, mean_weight=mean_weight, dropout_p=dropout_p)
    if scales is None:
        return _fit_and_evaluate(spec, q, k, v, key_padding_mask, **options)
    groups = head_groups(scales)
    outputs = []
    for factor, heads in groups.items():
        pk, pv, pmask = pool_keys(k[:, heads], v[:, heads], key_padding_mask, factor, num_prefix_tokens=num_prefix_tokens)
        outputs.append(_fit_and_evaluate(spec, q[:, heads], pk, pv, pmask, **options))
    if len(outputs) == 1:
        return outputs[0]
    order = torch.cat([torch.arange(q.shape[1])[h] for h in groups.values()])
    return torch.cat(outputs, dim=1)[:, torch.argsort(order).to(q.device)]


def softmax_attention(
    q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None, causal: bool = False
) -> Tensor:
    """``softmax(q kᵀ/√D) v`` through the fused SDPA kernel. Shapes as in :func:`attention`."""
    return attention(q, k, v, "softmax", key_padding_mask=key_padding_mask, causal=causal)


def linear_attention(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
    """``Φ(q_i)ᵀ Σ_j Φ(k_j) v_jᵀ / Φ(q_i)ᵀ Σ_j Φ(k_j)`` with ``Φ = elu + 1``, evaluated in primal form."""
    return attention(q, k, v, "linear", key_padding_mask=key_padding_mask)


def sparse_attention(
    q: Tensor, k: Tensor, v: Tensor, window: int, key_padding_mask: Tensor | None = None
) -> Tensor:
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
    return attention(
        q, k, v, "bn", key_padding_mask=key_padding_mask, eps=eps, mean_weight=mean_weight, causal=causal
    )


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


def default_scales(num_heads: int, base: Sequence[int] = (1, 2, 4, 8)) -> tuple[int, ...]:
    """SPEC's default SH factors: ``base`` repeated across heads in order (8 heads -> 1,2,4,8,1,2,4,8)."""
    return tuple(base[h % len(base)] for h in range(num_heads))
