"""Tolerances of the test suite as error laws, not as one CPU's rounding.

A fast path (fused SDPA, prefix sums, pooled keys) and the plain formula of :mod:`primaldual.functional.reference`
round differently: in another order, with other SIMD widths (``ATEN_CPU_CAPABILITY=default | avx2 | avx512``),
with other blockings of the same sums. A tolerance measured on one machine is one sample of that rounding; the
bound below holds for every order, because it follows from how large the rounded quantities are. docs/numerics.md
derives it; in short, for attention compared against the float64 reference:

* **Scores.** The fast path rounds ``r`` of the kernel's inputs to the dtype (BN: ``(q - βμ)/s²`` and ``k - m``;
  SH: the pooled keys) and sums ``D`` products in the accumulation dtype; each score is then off by about
  ``(r · eps + √D · eps_acc) · S`` with ``S = max_ij Σ_d |q̂_id| |k̂_jd| / √D`` the size of the scores' terms
  (:func:`score_size`), not of the scores: BN's shift identity and a causal prefix far from the mean of all
  keys make the terms large and the score small. (√D: rounding errors of a sum grow as the square root of
  its length, Wilkinson's rule of thumb.)
* **Weights and outputs.** Softmax turns an absolute score error δ into a relative weight error of at most 2δ;
  every output and gradient is a sum over at most ``N`` keys or queries of weights times values (``√N · eps_acc``
  relative to the sum's size) and is rounded once to the dtype (``eps``).
* **Gradients through BN's statistics.** The key gradient also flows through ``μ`` and ``s²``; ``∂x̂/∂s = -x̂/s``
  multiplies the score error by another ``|x̂(q)| |x̂(k)|``, i.e. by another ``1 + S``: order 2.

So ``|fast - exact| <= [eps · (r·S + 1) + eps_acc · (√D·S + √N)] · (1 + S)^(order-1) · M`` (:func:`attention_atol`),
with ``M`` the largest magnitude of the exact tensor, for a gradient at least that of its terms
(:func:`gradient_scale`): a normwise bound, an element that cancels to nearly 0 is not asked for more relative
accuracy than its tensor. The float64 reference rounds by the same law with ``eps(float64)``, which is added.
Checked on 5,200 random problems per SIMD level (every case of tests/functional/test_variants.py, 5 shapes,
10 seeds, float32 and float64, outputs and the three gradients) under ``ATEN_CPU_CAPABILITY=default``, ``avx2``
and ``avx512``: the largest error was 0.24 of this bound (bfloat16 and float16 outputs: 0.30).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def eps(dtype: torch.dtype) -> float:
    """Machine epsilon of ``dtype`` (2u: the distance from 1 to the next number)."""
    return torch.finfo(dtype).eps


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype PyTorch's CPU kernels accumulate ``dtype``'s sums in (its "opmath" type): float32 for the
    16-bit floats, ``dtype`` itself otherwise."""
    return torch.promote_types(dtype, torch.float32)


def attention_atol(
    dtype: torch.dtype,
    size: float,
    scale: float,
    *,
    head_dim: int,
    length: int,
    rounded_inputs: int = 2,
    order: int = 1,
) -> float:
    """Absolute tolerance of an attention output or gradient of scale ``scale`` (its largest magnitude; for a
    gradient :func:`gradient_scale`) whose scores have terms of size ``size`` (S: :func:`score_size`).

    ``[eps · (r·S + 1) + eps_acc · (√D·S + √N)] · (1 + S)^(order - 1) · scale``, for the fast path in ``dtype``
    and for the float64 reference, added: ``r = rounded_inputs`` kernel inputs rounded to the dtype by the fast
    path (0 for q and k as given, 1 for pooled keys, 2 for BN's ``(q - βμ)/s²`` and ``k - m`` or the linear
    kernel's Φ(q), Φ(k)), one rounding of the result, a D-term dot product and N-term sums in the accumulation
    dtype (eps_acc: :func:`accumulation_dtype`). ``order`` 2 for key gradients through BN's statistics."""

    def law(dt: torch.dtype) -> float:
        acc = eps(accumulation_dtype(dt))
        return eps(dt) * (rounded_inputs * size + 1) + acc * (
            math.sqrt(max(head_dim, 1)) * size + math.sqrt(max(length, 1))
        )

    factor = law(dtype) + law(torch.float64)
    return factor * (1.0 + size) ** (order - 1) * max(scale, torch.finfo(torch.float64).tiny)


def gradient_scale(gradient: Tensor, upstream: Tensor, values: Tensor) -> float:
    """The scale of an attention gradient: its largest exact magnitude, and at least that of its terms,
    ``max |upstream| · max |values|``. A q or k gradient is ``Σ_j`` (upstream · weight change · (v_j - o_i)):
    where the terms cancel exactly (a row fitted on one key has q gradient 0) the fast path keeps rounding
    noise of the terms' size, so a normwise bound on the cancelled result alone would ask the impossible."""
    terms = upstream.double().abs().amax().item() * values.double().abs().amax().item() if values.numel() else 0.0
    return max(gradient.double().abs().amax().item() if gradient.numel() else 0.0, terms)


def score_size(q_hat: Tensor, k_hat: Tensor, allowed: Tensor | None = None) -> float:
    """``S = max_ij Σ_d |q̂_id| |k̂_jd| / √D`` over the allowed pairs: q̂ ``(..., Nq, D)``, k̂ ``(..., Nk, D)`` the
    softmax kernel's inputs, ``allowed`` bool broadcastable to ``(..., Nq, Nk)``. 0 when nothing is allowed."""
    if q_hat.numel() == 0 or k_hat.numel() == 0:
        return 0.0
    terms = q_hat.double().abs() @ k_hat.double().abs().transpose(-2, -1) / math.sqrt(q_hat.shape[-1])
    if allowed is not None:
        terms = terms.masked_fill(~allowed, 0.0)
    return terms.amax().item()


def exp_size(x_hat: Tensor) -> float:
    """The linear kernel's condition: ``Φ = exp(x)`` for ``x <= 0`` turns an input rounding ``u |x|`` into a
    relative error ``u |x|`` of Φ, so its size is ``max |x̂|`` over the kernel's inputs (x + 1 above 0: size 1)."""
    return x_hat.double().abs().amax().item() if x_hat.numel() else 0.0


def sum_atol(dtype: torch.dtype, terms: int, scale: float) -> float:
    """A sum or mean of ``terms`` numbers of magnitude at most ``scale``, computed in two orders: each result is
    within ``γ_n ≈ n · u`` of the exact sum (worst case, Higham's Theorem 4.4), so two differ by ``n · eps · scale``
    at most."""
    return max(terms, 1) * eps(dtype) * scale


def assert_close_normwise(actual: Tensor, expected: Tensor, atol: float, msg: str = "") -> None:
    """``|actual - expected| <= atol`` elementwise (expected in float64), with a message naming the bound."""
    assert actual.shape == expected.shape, f"{msg}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    error = (actual.double() - expected.double()).abs()
    worst = error.amax().item() if error.numel() else 0.0
    assert worst <= atol, f"{msg}: largest error {worst:.3g} > bound {atol:.3g} ({worst / atol:.2f}x)"


def output_scale(output: Tensor, values: Tensor) -> float:
    """The scale of an attention output: its largest exact magnitude, and at least that of its terms,
    ``max |values|`` (an output is a convex combination of values: where they cancel, the fast path keeps rounding
    noise of the values' size, as for :func:`gradient_scale`)."""
    largest = values.double().abs().amax().item() if values.numel() else 0.0
    return max(output.double().abs().amax().item() if output.numel() else 0.0, largest)


def range_atol(dtype: torch.dtype, terms: int, scale: float) -> float:
    """How far a computed convex combination of ``terms`` numbers of magnitude at most ``scale`` can leave their
    range: the weighted sum and the sum of the weights (non-negative, whatever their rounding) each within
    ``γ_n ≈ n · eps_acc`` of exact (Higham's Theorem 4.4), their ratio within ``2 γ_n``, and two roundings to
    the dtype (SH's pooled values, the output): ``(2 · eps + 2 · n · eps_acc) · scale``. It holds whatever
    the weights' error, so it bounds an output where :func:`attention_atol` bounds nothing (scores of 1e8)."""
    return (2 * eps(dtype) + 2 * max(terms, 1) * eps(accumulation_dtype(dtype))) * scale


def kernel_terms(
    q: Tensor,
    k: Tensor,
    mask: Tensor | None = None,
    *,
    kernel: str = "softmax",
    bn: bool = False,
    scales: tuple[int, ...] | None = None,
    num_prefix_tokens: int = 0,
    causal: bool = False,
    window: int | None = None,
    eps: float = 1e-5,
    mean_weight: float = 1.0,
    grid: tuple[int, int] | None = None,
):
    """Per sample and head (and query row, causal BN), in float64: the magnitudes |q̂| ``(n, D)``, |k̂| ``(m, D)``
    of the kernel's inputs and which pairs are allowed ``(n, m)``, as the fast path forms them: keys pooled by the
    head's factor, then BN's ``(q - βμ)/s²`` against ``k - m`` (m the mean of all valid keys; ``x̂`` on both sides
    for the linear kernel). Each side's term is the size of what was rounded on the way: ``|q - βμ| + β|μ|`` (μ
    is rounded to the dtype), and ``|k - m|`` plus ``|k|`` for pooled keys (a window's mean is rounded before
    BN's statistics see it). A BN row that sees one key is skipped: its output is that key's value, whatever
    the query (the fast path gives it weight 1). tests/functional/test_variants.py, tests/test_hostile_inputs.py
    and tests/models/test_sequence.py take their S from here (through :func:`variant_law`)."""
    from primaldual.functional import reference as R

    q, k = q.double(), k.double()
    p = num_prefix_tokens
    for b in range(q.shape[0]):
        valid = torch.ones(k.shape[2], dtype=torch.bool) if mask is None else ~mask[b]
        for h in range(q.shape[1]):
            pooled = scales is not None and min(scales[h], k.shape[2] - p) > 1
            keys, keep = (k[b, h], valid) if scales is None else R.pool(k[b, h], valid, scales[h], p, grid)
            if not keep.any():
                continue
            if not bn:
                allowed = keep[None, :].expand(q.shape[2], -1)
                i, j = torch.arange(q.shape[2])[:, None], torch.arange(len(keep))[None, :]
                if causal:
                    allowed = allowed & (j <= i)
                if window is not None:
                    allowed = allowed & ((i - j).abs() <= window)
                yield q[b, h].abs(), keys.abs(), allowed
                continue
            centre = keys[keep].mean(0)
            rows = (
                [(q[b, h, i : i + 1], keep & (torch.arange(len(keep)) <= i)) for i in range(q.shape[2])]
                if causal
                else [(q[b, h], keep)]
            )
            for queries, visible in rows:
                if visible.sum() <= 1:
                    continue
                mean, std = R.key_statistics(keys, visible, eps)
                q_term = (queries - mean_weight * mean).abs() + abs(mean_weight) * mean.abs()
                k_rounded = keys.abs() if pooled else 0.0
                if kernel == "linear":
                    yield q_term / std, ((keys - mean_weight * mean).abs() + k_rounded) / std, visible[None, :]
                else:
                    yield q_term / std**2, (keys - centre).abs() + k_rounded, visible[None, :]


def kernel_size(q: Tensor, k: Tensor, mask: Tensor | None = None, **options) -> float:
    """S of :func:`attention_atol` for the kernel's inputs of :func:`kernel_terms` (same options): the scores'
    term size (:func:`score_size`), or Φ's (:func:`exp_size`, the largest |input| over allowed keys) for the
    linear kernel."""
    terms = list(kernel_terms(q, k, mask, **options))
    if options.get("kernel", "softmax") == "linear":
        return max((max(exp_size(a), exp_size(b[m.any(0)])) for a, b, m in terms), default=0.0)
    return max((score_size(a, b, m) for a, b, m in terms), default=0.0)


def rounded_inputs(kernel: str = "softmax", bn: bool = False, pooled: bool = False) -> int:
    """``r`` of :func:`attention_atol`: 2 for BN (``(q - βμ)/s²``, ``k - m``) and the linear kernel (Φ(q), Φ(k)),
    1 for pooled keys, 0 for softmax on q and k as given."""
    return 2 if bn or kernel == "linear" else 1 if pooled else 0


def variant_law(variant, q: Tensor, k: Tensor, mask: Tensor | None = None, **options) -> dict:
    """``size``, ``head_dim``, ``length`` and ``rounded_inputs`` of :func:`attention_atol` for a call of
    ``primaldual.functional.attention(q, k, v, variant, key_padding_mask=mask, **options)`` (``variant`` a name or
    an ``AttentionOptions``). ``length`` is the longer of the queries and keys: an output sums over keys, a key
    or value gradient over queries."""
    from primaldual.functional import AttentionOptions, get_variant

    if isinstance(variant, AttentionOptions):
        options = (
            dict(
                scales=variant.scales,
                window=variant.window,
                eps=variant.eps,
                mean_weight=variant.mean_weight,
                causal=variant.causal,
                num_prefix_tokens=variant.num_prefix_tokens,
                grid=variant.grid,
            )
            | options
        )
        variant = variant.variant
    spec = get_variant(variant)
    kw = dict(
        kernel=spec.kernel,
        bn=spec.bn,
        scales=options.get("scales") if spec.pooled else None,
        num_prefix_tokens=options.get("num_prefix_tokens") or 0,
        causal=bool(options.get("causal")),
        window=options.get("window") if spec.windowed else None,
        eps=options.get("eps", 1e-5),
        mean_weight=options.get("mean_weight", 1.0),
        grid=options.get("grid") if spec.pooled else None,
    )
    return dict(
        size=kernel_size(q, k, mask, **kw),
        head_dim=q.shape[-1],
        length=max(q.shape[2], k.shape[2]),
        rounded_inputs=rounded_inputs(spec.kernel, spec.bn, spec.pooled),
    )


def parameter_sensitivity(model: torch.nn.Module, *inputs: Tensor) -> float:
    """``max_c Σ_θ |θ| |∂y_c/∂θ|`` over the outputs y_c of ``model(*inputs)`` and every parameter θ: the first-order
    change of an output when every parameter moves by at most its own magnitude times 1 (see :func:`model_atol`)."""
    params = [p for p in model.parameters() if p.requires_grad]
    out = model(*inputs).reshape(-1)
    worst = 0.0
    for c in range(out.numel()):
        grads = torch.autograd.grad(out[c], params, retain_graph=True, allow_unused=True)
        total = sum(
            (p.detach().double().abs() * g.double().abs()).sum().item() for p, g in zip(params, grads) if g is not None
        )
        worst = max(worst, total)
    return worst


def model_atol(
    dtype: torch.dtype, sensitivity: float, *, reduction: int, size: float = 0.0, length: int = 1, evaluations: int = 2
) -> float:
    """Absolute tolerance between ``evaluations`` float evaluations of one network (other shapes, other blockings)
    whose outputs have parameter sensitivity ``sensitivity`` (:func:`parameter_sensitivity`).

    Rounding model (first order). A matrix product of reduction length K is backward stable: its computed value
    is the exact product of the weights perturbed relatively by ``γ_K`` (Higham's Theorem 3.5; ``√K · eps_acc``
    for errors of random sign, Wilkinson's rule as in :func:`attention_atol`). Every other operation between two
    weights (normalisation, activation, attention, residual sums) returns its result with a relative error, which,
    multiplied by the next weight, is a relative perturbation of that weight's column. Per weight the relative
    perturbation is at most the attention law's factor with the linear layers' sums added,
    ``eps · (r·S + 1) + eps_acc · (√K·S + √K + √N)``, with K the longest reduction (``reduction``: the widest layer, the head dimension), N the sequence ``length``, S the
    largest score-term size of the network's attention calls (:func:`variant_law`) and r = 2; so the output moves
    by at most that factor times ``Σ_θ |θ| |∂y/∂θ|``. Each of the evaluations is that close to the exact network:
    ``evaluations`` of them differ by at most ``evaluations`` times as much."""
    acc = eps(accumulation_dtype(dtype))
    factor = eps(dtype) * (2 * size + 1) + acc * (
        math.sqrt(max(reduction, 1)) * size + math.sqrt(max(reduction, 1)) + math.sqrt(max(length, 1))
    )
    return evaluations * factor * max(sensitivity, torch.finfo(torch.float64).tiny)


class _Closure(torch.nn.Module):
    """``output(model)`` as a module with the model's parameters, for :func:`parameter_sensitivity`."""

    def __init__(self, model: torch.nn.Module, output):
        super().__init__()
        self.model, self.output = model, output

    def forward(self) -> Tensor:
        return self.output(self.model)


def widest_reduction(model: torch.nn.Module) -> int:
    """K of :func:`model_atol`: the longest reduction of ``model``'s linear layers (``in_features``, and the embedding
    width of ``nn.MultiheadAttention``'s packed projection)."""
    widths = [m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear)]
    widths += [m.embed_dim for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)]
    return max(widths, default=1)


def network_atol(
    dtype: torch.dtype, model: torch.nn.Module, output, *, size: float, length: int, evaluations: int = 2
) -> float:
    """:func:`model_atol` for the tensor ``output(model)`` (a callable: the compared outputs of one evaluation, e.g.
    a host model's valid hidden states or its attention weights): its parameter sensitivity by autograd, K from
    :func:`widest_reduction`, S the largest score-term size over the network's attention calls (both kernels of a
    comparison see the same q and k), N the longest sequence."""
    sensitivity = parameter_sensitivity(_Closure(model, output))
    return model_atol(
        dtype, sensitivity, reduction=widest_reduction(model), size=size, length=length, evaluations=evaluations
    )


class RecordSizes:
    """Patches ``attend`` (primaldual.integrations.attend's router) in the given modules and records S
    (:func:`variant_law`) of every attention call in :attr:`sizes`. The mask's key padding and causality are
    those the call routes with; a prefix pattern (several new queries against a KV cache) is scored as the causal
    call over all keys whose last rows are these queries (leading zero queries only add terms)."""

    def __init__(self, *modules):
        self.modules, self.sizes = modules, []

    def __enter__(self):
        self.patches = []
        for module in self.modules:
            self.patches.append((module, module.attend))
            module.attend = self.recording(module.attend)
        return self

    def recording(self, original):
        sizes = self.sizes

        def recording(options, q, k, v, pattern=None, *, causal=False, **kwargs):
            kind = pattern.kind if pattern is not None else "causal" if causal and q.shape[2] > 1 else "full"
            padding = None if pattern is None else pattern.padding
            queries = q.detach()
            if kind != "full" and q.shape[2] != k.shape[2]:
                lead = q.new_zeros(*q.shape[:2], k.shape[2] - q.shape[2], q.shape[3])
                queries = torch.cat([lead, queries], 2)
            scale = kwargs.get("scaling")
            if scale is not None and options.spec.kernel == "softmax":
                queries = queries * (scale * math.sqrt(q.shape[-1]))
            causal_law = kind != "full" and options.spec.kernel == "softmax" and not options.spec.pooled
            law_options = dict(causal=causal_law)
            if scale is not None and options.spec.bn and options.spec.kernel == "softmax":
                law_options["mean_weight"] = options.mean_weight * scale * math.sqrt(q.shape[-1])
            keys = k.detach().repeat_interleave(q.shape[1] // k.shape[1], 1)  # grouped-query keys per query head
            sizes.append(variant_law(options, queries, keys, padding, **law_options)["size"])
            return original(options, q, k, v, pattern, causal=causal, **kwargs)

        return recording

    def __exit__(self, *exc):
        for module, original in self.patches:
            module.attend = original

    @property
    def size(self) -> float:
        return max(self.sizes, default=0.0)


def standardized_atol(dtype: torch.dtype, mean, std, largest: float, terms: int = 1) -> float:
    """Elementwise error of ``(x - mean) / std`` computed in ``dtype`` with the statistics rounded to ``dtype``
    (computed in float64 over ``terms`` values), against the exact standardised value: ``mean``'s rounding moves
    it by ``eps · |mean| / std``, ``std``'s, the subtraction's and the division's by ``eps · |y|`` each (y the
    result, at most ``largest``), the float64 sums by ``γ_n · max |x| / std``: ``eps · (|mean|/std + 3·largest)
    + n · eps64 · (|mean|/std + largest)``, the worst channel. A mean of such values is as close to the exact
    mean, and a population std too (std is 1-Lipschitz in the root-mean-square norm)."""
    ratio = (torch.as_tensor(mean, dtype=torch.float64).abs() / torch.as_tensor(std, dtype=torch.float64)).max().item()
    return eps(dtype) * (ratio + 3 * largest) + max(terms, 1) * eps(torch.float64) * (ratio + largest)


class RecordLayerSizes:
    """Records S (:func:`variant_law`) of every :class:`primaldual.Attention` call within the block in
    :attr:`sizes`, from the layer's queries and keys (``Attention.project``) and its key padding mask, plus the
    largest |bias| of a call with an additive score bias."""

    def __enter__(self):
        from primaldual.layers import Attention

        self.original, self.sizes = Attention.forward, []
        original, sizes = self.original, self.sizes

        def recording(layer, x, key_padding_mask=None, attn_mask=None, is_causal=False, rope=None, attn_bias=None):
            with torch.no_grad():
                q, k, _ = layer.project(x, rope)  # the variant sees the rotated queries and keys
            options = layer.options.replace(causal=True) if is_causal else layer.options
            size = variant_law(options, q, k, key_padding_mask)["size"]
            if attn_bias is not None:  # the bias is a score term of its own
                size += attn_bias.detach().abs().amax().item()
            sizes.append(size)
            return original(layer, x, key_padding_mask, attn_mask, is_causal, rope, attn_bias)

        Attention.forward = recording
        return self

    def __exit__(self, *exc):
        from primaldual.layers import Attention

        Attention.forward = self.original

    @property
    def size(self) -> float:
        return max(self.sizes, default=0.0)


def causal_law(variant: str, q: Tensor, k: Tensor, mask: Tensor | None = None, **options) -> dict:
    """:func:`variant_law` of a causal call, S taken over each query's own training set (SPEC section 5, the
    points of ``reference.causal_training_set``), as the causal fast path forms the kernel's inputs: BN with that
    set's statistics (``(q - βμ_i)/s_i²`` against the points less a centre within their range, so ``|k̂| <= 2
    max |k|``; the linear kernel: ``x̂`` on both sides), pooled points rounded once."""
    from primaldual.functional import get_variant
    from primaldual.functional import reference as R

    spec = get_variant(variant)
    q, k = q.double(), k.double()
    scales, p = options.get("scales"), options.get("num_prefix_tokens") or 0
    eps_bn, beta = options.get("eps", 1e-5), options.get("mean_weight", 1.0)
    nq, nk = q.shape[2], k.shape[2]
    size = 0.0
    for b in range(q.shape[0]):
        valid = torch.ones(nk, dtype=torch.bool) if mask is None else ~mask[b]
        for h in range(q.shape[1]):
            factor = scales[h] if spec.pooled else 1
            for a in range(nq):
                keys, _ = R.causal_training_set(k[b, h], k[b, h], valid, nk - nq + a, factor, p)
                if keys.shape[0] == 0 or (spec.bn and keys.shape[0] <= 1):
                    continue
                query = q[b, h, a : a + 1]
                if spec.bn:
                    mean, std = R.key_statistics(keys, torch.ones(keys.shape[0], dtype=torch.bool), eps_bn)
                    q_term = (query - beta * mean).abs() + abs(beta) * mean.abs()
                    if spec.kernel == "linear":  # statistics about a centre within ±max|k| round as softmax's
                        centred = (keys - beta * mean).abs() + keys.abs() + 2 * k[b, h].abs().amax(0)
                        query, keys = q_term / std, centred / std
                    else:
                        query, keys = q_term / std**2, 2 * k[b, h].abs().amax(0) + keys.abs()
                if spec.kernel == "linear":
                    size = max(size, exp_size(query), exp_size(keys))
                else:
                    size = max(size, score_size(query.abs(), keys.abs()))
    return dict(
        size=size,
        head_dim=q.shape[-1],
        length=max(nq, nk),
        rounded_inputs=rounded_inputs(spec.kernel, spec.bn, spec.pooled),
    )
