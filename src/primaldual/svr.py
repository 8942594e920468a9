"""The framework made executable (docs/theory.md, docs/framework.md): fit a real ε-SVR, evaluate it as attention.

An ε-SVR on training pairs ``(k_j, y_j)`` with the normalised kernel ``K(x, y) = Φ(x)ᵀΦ(y) / (h(x) h(y))``
has the support vector expansion (dual form)

    f(q) = Σ_j (α_j − α̃_j) K(q, k_j) + b = Σ_j [Φ(q)ᵀΦ(k_j) / h(q)] v_j + b,   v_j = (α_j − α̃_j) / h(k_j)

which, for ``Φ(x)ᵀΦ(y) = exp(xᵀy/√D)`` and ``h(x) = Σ_j Φ(x)ᵀΦ(k_j)``, is softmax attention of the queries
on the keys with values ``v_j``. The new layers (Attention-BN, Attention-SH) are the same expansion of other primals:

* Attention-BN: the primal applies a batch-normalisation layer to its input, ``x̂ = (x − βμ) ⊘ s`` with μ and
  ``s = sqrt(var + eps)`` the (population) statistics of the training keys; the kernel is
  ``K(x, y) = exp(x̂ᵀŷ/√D) / (h(x) h(y))``. The layer evaluates it as softmax attention with queries
  ``(q − βμ) ⊘ s²`` (softmax ignores the per-query constant ``−βμᵀ(q − βμ) ⊘ s²``): the same numbers.
* Attention-SH: the SVR is fitted on less data, the keys and targets averaged over windows of r positions
  (masked means, the last window partial, prefix tokens kept), exactly ``functional.pool_keys``. The layer pools
  its keys and values itself, so it is given values constant over each window: their window mean is ``v_j``.
* BN+SH: pool first, then normalise with the statistics of the pooled keys (the SVR's own training set).

:class:`SVRAttention` fits the SVR with scikit-learn and predicts by calling the library's attention;
:meth:`SVRAttention.primal_predict` evaluates the primal ``W Φ(x̂(q))/h(q) + b``.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .functional import attention, elu_feature_map, key_statistics, pool_keys

KERNELS = ("softmax", "linear")
NORMALIZATIONS = (None, "bn")


def random_features(x: Tensor, num_features: int, seed: int = 0) -> Tensor:
    """Positive random features of the exp kernel (Performer / FAVOR+, Choromanski et al. 2021).

    ``φ(x) = exp(ωᵀx' − ||x'||²/2) / √m`` with ``x' = x / D^{1/4}``, ``m = num_features`` and ``ω_i ~ N(0, I_D)``
    i.i.d. (drawn from a ``torch.Generator`` seeded with ``seed``, so equal seeds give equal features), hence
    ``E[φ(x)ᵀφ(y)] = exp(xᵀy/√D)``. x ``(..., D)`` -> ``(..., m)``, in x's dtype.
    """
    if isinstance(num_features, bool) or not isinstance(num_features, int):
        raise TypeError(f"num_features must be an integer >= 1, got {num_features!r}")
    if num_features < 1:
        raise ValueError(f"num_features must be >= 1, got {num_features}")
    dim = x.shape[-1]
    omega = torch.randn(dim, num_features, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    x = x / dim**0.25
    return torch.exp(x @ omega.to(x.device) - (x * x).sum(-1, keepdim=True) / 2) / math.sqrt(num_features)


def _as_matrix(name: str, x: Any) -> Tensor:
    """x as a float64 CPU tensor ``(rows >= 1, cols >= 1)`` of finite values, or an error naming it."""
    try:
        x = torch.as_tensor(x).detach().to("cpu", torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be a 2-D torch tensor or numpy array of numbers, got {type(x).__name__}") from err
    if x.dim() != 2 or 0 in x.shape:
        raise ValueError(f"{name} must be 2-D and non-empty, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must hold finite values")
    return x


def _as_mask(mask: Any, length: int) -> Tensor | None:
    """key_padding_mask as a bool CPU tensor ``(length,)`` (True = padding) leaving a key valid, or None."""
    if mask is None:
        return None
    mask = torch.as_tensor(mask).detach().cpu()
    if mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask must be bool (True where a key is padding), got dtype {mask.dtype}")
    if tuple(mask.shape) != (length,):
        raise ValueError(f"key_padding_mask must have shape ({length},), one flag per key, got {tuple(mask.shape)}")
    if mask.all():
        raise ValueError("key_padding_mask must leave at least one key valid (an SVR needs training data)")
    return mask


def _check_real(name: str, value: Any, low: float, strict: bool) -> float:
    """value as a float, finite and ``> low`` (``>= low`` unless strict), or an error naming it."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite real number, got {value!r}")
    if value < low or (strict and value == low):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low:g}, got {value}")
    return float(value)


def _check_count(name: str, value: Any, low: int) -> int:
    """value, an integer ``>= low``, or an error naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer >= {low}, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


class TrainingSet(NamedTuple):
    """The data an SVR of :class:`SVRAttention` is fitted on, from the input sequence (see ``training_set``)."""

    keys: Tensor  # (n, D): the valid keys after pooling
    targets: Tensor  # (n, Dv)
    index: Tensor  # (N,) long: the training point each input position belongs to, -1 for padding


def training_set(
    keys: Tensor, targets: Tensor, mask: Tensor | None, factor: int, num_prefix_tokens: int
) -> TrainingSet:
    """Keys ``(N, D)`` and targets ``(N, Dv)`` averaged over windows of ``factor`` positions by
    ``functional.pool_keys`` (the first ``num_prefix_tokens`` kept, masked means, ceil mode; a factor above
    the poolable length pools it into one window, as the layer does), padded windows dropped."""
    n, p = keys.shape[0], num_prefix_tokens
    factor = min(factor, max(1, n - p))
    pooled_mask = None if mask is None else mask[None]
    pk, py, pooled_mask = pool_keys(keys[None, None], targets[None, None], pooled_mask, factor, num_prefix_tokens=p)
    valid = torch.ones(pk.shape[2], dtype=torch.bool) if pooled_mask is None else ~pooled_mask[0]
    window = torch.arange(n)
    window = torch.where(window < p, window, p + (window - p).div(factor, rounding_mode="floor"))
    rank = valid.long().cumsum(0) - 1
    index = torch.where(valid[window], rank[window], -1)
    if mask is not None:
        index = index.masked_fill(mask, -1)
    return TrainingSet(pk[0, 0][valid], py[0, 0][valid], index)


class SVRAttention:
    """ε-SVR with the normalised kernel of docs/theory.md, one problem per output coordinate, evaluated as attention.

    ``K(x, y) = Φ(x̂)ᵀΦ(ŷ) / (h(x) h(y))`` with, for ``kernel="softmax"``, ``Φ(x)ᵀΦ(y) = exp(xᵀy/√D)`` and
    ``h(x) = Σ_j Φ(x̂)ᵀΦ(k̂_j)``; for ``kernel="linear"``, ``Φ(x) = elu(x) + 1`` and ``h(x) = Φ(x̂)ᵀ Σ_j Φ(k̂_j)``
    (sums over the training keys). ``x̂ = x`` without normalisation, ``(x − βμ) ⊘ s`` with BN. The fitted model is

        f(q) = Σ_j (α_j − α̃_j) K(q, k_j) + b = attention(q, keys, v) + b,   v_j = (α_j − α̃_j) / h(k_j)   (dual)
             = W Φ(q̂) / h(q) + b,   W = Σ_j v_j Φ(k̂_j)ᵀ                                                  (primal)

    Args:
        kernel: ``"softmax"`` or ``"linear"``.
        C: box bound on the dual coefficients, ``> 0``.
        epsilon: half-width of the ε-insensitive tube, ``>= 0``.
        normalization: None, or ``"bn"``: the primal batch-normalises its input with the statistics of the
            training keys (Attention-BN; ``eps`` and ``mean_weight`` β as in the layer).
        downsample: SH factor r ``>= 1``: the SVR is fitted on keys and targets averaged over windows of r
            positions (Attention-SH with one head; ``num_prefix_tokens`` leading positions are kept as they are).
        tol: scikit-learn's stopping tolerance (libsvm's bound on the KKT violation), ``> 0``.

    :attr:`variant` names the layer that evaluates the expansion (``"bn+sh"``, ``"linear-sh"``, ...).
    Attributes after :meth:`fit` (float64 CPU tensors), over the n training points (the valid pooled keys):
    ``keys_`` ``(n, D)``; ``dual_coef_`` ``(n, Dv)``, ``α − α̃`` (0 off the support); ``values_`` ``(n, Dv)``, ``v_j``;
    ``bias_`` ``(Dv,)``, b; ``support_`` bool ``(n, Dv)``, True where key j is a support vector of output d; and
    over the N input positions: ``input_keys_`` ``(N, D)``, ``key_padding_mask_`` ``(N,)`` or None, and
    ``sequence_values_`` ``(N, Dv)``, the values the layer is given (``v_j`` on every position of window j, 0 at
    padding), whose pooling is ``values_``.
    """

    def __init__(
        self,
        kernel: str = "softmax",
        C: float = 1.0,
        epsilon: float = 0.1,
        *,
        normalization: str | None = None,
        downsample: int = 1,
        eps: float = 1e-5,
        mean_weight: float = 1.0,
        num_prefix_tokens: int = 0,
        tol: float = 1e-3,
    ) -> None:
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be None or 'bn', got {normalization!r}")
        self.kernel, self.normalization = kernel, normalization
        self.C, self.epsilon = _check_real("C", C, 0, strict=True), _check_real("epsilon", epsilon, 0, strict=False)
        self.eps, self.tol = _check_real("eps", eps, 0, strict=True), _check_real("tol", tol, 0, strict=True)
        self.mean_weight = _check_real("mean_weight", mean_weight, -math.inf, strict=False)
        self.downsample = _check_count("downsample", downsample, 1)
        self.num_prefix_tokens = _check_count("num_prefix_tokens", num_prefix_tokens, 0)

    @classmethod
    def from_options(cls, options: Any, C: float = 1.0, epsilon: float = 0.1, tol: float = 1e-3) -> SVRAttention:
        """The SVR whose expansion is the one-head layer of ``functional.AttentionOptions`` ``options``: its kernel,
        BN (eps, β), SH factor (``scales`` of one head, or None for 1) and prefix tokens; not sparse, not causal."""
        spec = options.spec
        if spec.windowed or options.causal:
            raise ValueError(f"options must describe a non-causal, non-sparse variant, got {options!r}")
        scales = options.scales or (1,)
        if len(scales) != 1:
            raise ValueError(f"options.scales must hold one factor (one head), got {scales}")
        return cls(
            spec.kernel,
            C,
            epsilon,
            normalization="bn" if spec.bn else None,
            downsample=scales[0],
            eps=options.eps,
            mean_weight=options.mean_weight,
            num_prefix_tokens=options.num_prefix_tokens,
            tol=tol,
        )

    @property
    def variant(self) -> str:
        """The key of ``functional.VARIANTS`` whose layer evaluates this SVR's expansion."""
        parts = [p for p, on in (("bn", self.normalization == "bn"), ("sh", self.downsample > 1)) if on]
        name = "+".join(parts)
        if self.kernel == "softmax":
            return name or "softmax"
        return f"linear-{name}" if name else "linear"

    def _normalize(self, x: Tensor) -> Tensor:
        """``x̂ = (x − βμ) ⊘ s`` with the training keys' statistics under BN, x otherwise: ``(M, D)``."""
        return x if self.normalization is None else (x - self.mean_weight * self.mean_) / self.scale_

    def _gram(self, keys: Tensor) -> tuple[Tensor, Tensor]:
        """``K(k_i, k_j)`` ``(n, n)`` and ``h(k_j)`` ``(n,)`` on the normalised training keys."""
        if self.kernel == "softmax":
            logits = keys @ keys.T / math.sqrt(keys.shape[1])
            log_h = torch.logsumexp(logits, dim=1)  # log domain: exp(xᵀy/√D) alone may overflow
            return (logits - log_h[:, None] - log_h[None, :]).exp(), log_h.exp()
        phi = elu_feature_map(keys)
        h = phi @ phi.sum(0)
        return phi @ phi.T / (h[:, None] * h[None, :]), h

    def fit(self, keys: Any, targets: Any, key_padding_mask: Any = None) -> SVRAttention:
        """Fit one ``sklearn.svm.SVR(kernel="precomputed")`` per column of targets ``(N, Dv)`` on keys ``(N, D)``.

        ``key_padding_mask`` bool ``(N,)``, True where a key is padding: it is left out of the training set (and of
        the SH windows and BN statistics). The training set is the pooled valid keys (see :func:`training_set`).
        """
        try:
            from sklearn.svm import SVR
        except ImportError as err:
            raise ImportError("SVRAttention.fit needs scikit-learn: pip install primaldual[svr]") from err
        keys, targets = _as_matrix("keys", keys), _as_matrix("targets", targets)
        if targets.shape[0] != keys.shape[0]:
            raise ValueError(f"targets must have one row per key ({keys.shape[0]}), got shape {tuple(targets.shape)}")
        mask = _as_mask(key_padding_mask, keys.shape[0])
        data = training_set(keys, targets, mask, self.downsample, self.num_prefix_tokens)
        if self.normalization == "bn":
            stats = key_statistics(data.keys[None, None], eps=self.eps)
            self.mean_, self.scale_ = stats.mean[0, 0, 0], stats.var[0, 0, 0].sqrt()
        gram, h = self._gram(self._normalize(data.keys))
        dual = torch.zeros_like(data.targets)
        bias = torch.zeros(targets.shape[1], dtype=torch.float64)
        for d in range(targets.shape[1]):
            svr = SVR(kernel="precomputed", C=self.C, epsilon=self.epsilon, tol=self.tol)
            svr.fit(gram.numpy(), data.targets[:, d].numpy())
            dual[svr.support_, d] = torch.from_numpy(svr.dual_coef_[0])
            bias[d] = float(svr.intercept_[0])
        self.keys_, self.dual_coef_, self.bias_ = data.keys, dual, bias
        self.values_ = dual / h[:, None]
        self.support_ = dual != 0
        self.input_keys_, self.key_padding_mask_ = keys, mask
        self.sequence_values_ = torch.where(data.index[:, None] >= 0, self.values_[data.index.clamp_min(0)], 0.0)
        return self

    def _check_queries(self, queries: Any) -> Tensor:
        if not hasattr(self, "keys_"):
            raise RuntimeError("this SVRAttention is not fitted yet: call fit(keys, targets) first")
        queries = _as_matrix("queries", queries)
        if queries.shape[1] != self.keys_.shape[1]:
            raise ValueError(f"queries must have D = {self.keys_.shape[1]} columns like keys, got {queries.shape[1]}")
        return queries

    def layer_options(self) -> dict[str, Any]:
        """The keyword options of ``functional.attention(q, k, v, self.variant, **options)`` for this SVR."""
        options: dict[str, Any] = {}
        if self.normalization == "bn":
            options.update(eps=self.eps, mean_weight=self.mean_weight)
        if self.downsample > 1:
            options.update(scales=(self.downsample,), num_prefix_tokens=self.num_prefix_tokens)
        return options

    def predict(self, queries: Any) -> Tensor:
        """Dual form through the library's layer: queries ``(M, D)`` -> ``(M, Dv)``,
        ``attention(queries, input_keys_, sequence_values_, variant, key_padding_mask_) + bias_``."""
        q, k, v = (t[None, None] for t in (self._check_queries(queries), self.input_keys_, self.sequence_values_))
        mask = None if self.key_padding_mask_ is None else self.key_padding_mask_[None]
        return attention(q, k, v, self.variant, key_padding_mask=mask, **self.layer_options())[0, 0] + self.bias_

    def primal_predict(self, queries: Any, num_features: int | None = None, seed: int = 0) -> Tensor:
        """Primal form ``W Φ(q̂) / h(q) + b``, ``W = Σ_j v_j Φ(k̂_j)ᵀ``, ``h(q) = Φ(q̂)ᵀ Σ_j Φ(k̂_j)``:
        ``(M, D)`` -> ``(M, Dv)``.

        Sums over the training keys (pooled under SH), hats the BN normalisation. Exact for the linear kernel
        (``num_features`` must then be None). The exp kernel's Φ is infinite-dimensional: Φ is replaced by
        :func:`random_features` with ``num_features`` (required) features drawn with ``seed``, for W and h alike;
        the error shrinks like ``1/√num_features``.
        """
        queries = self._check_queries(queries)
        if self.kernel == "linear":
            if num_features is not None:
                raise ValueError("num_features is only for the softmax kernel: the linear kernel's primal is exact")
            feature_map = elu_feature_map
        elif num_features is None:
            raise ValueError("num_features is required for the softmax kernel (random features approximate exp)")
        else:
            feature_map = lambda x: random_features(x, num_features, seed)  # noqa: E731
        phi_k, phi_q = feature_map(self._normalize(self.keys_)), feature_map(self._normalize(queries))
        weights = phi_k.T @ self.values_  # Wᵀ: (Dφ, Dv), once for all queries
        return (phi_q @ weights) / (phi_q @ phi_k.sum(0))[:, None] + self.bias_
