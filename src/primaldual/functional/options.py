"""``AttentionOptions``: every setting of one attention variant, validated once where it is made.

A variant's options travel whole, from the command line or a config file through the models and layers to
the functional ops: a new option is a new field here and nothing else. Validation happens in
``__post_init__``, so the per-call path only checks what depends on the tensors (shapes, the number of heads).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .checks import check_grid, check_scales, check_window


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

#: The variants the paper compares, and what ``compare`` and the benchmarks run by default: softmax, Attention-BN,
#: Attention-SH and both.
PAPER_VARIANTS = ("softmax", "bn", "sh", "bn+sh")


def get_variant(name: str) -> Variant:
    """The :class:`Variant` called ``name``; a ValueError lists the known names otherwise."""
    if not isinstance(name, str) or name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; expected one of {', '.join(VARIANTS)}")
    return VARIANTS[name]


def default_scales(num_heads: int, base: Sequence[int] = (1, 2, 4, 8)) -> tuple[int, ...]:
    """The default SH factors: ``base`` repeated across heads in order (8 heads -> 1,2,4,8,1,2,4,8)."""
    return tuple(base[h % len(base)] for h in range(num_heads))


@dataclass(frozen=True)
class AttentionOptions:
    """The settings of one attention variant (a key of :data:`VARIANTS`), checked on construction.

    Args:
        variant: ``softmax | linear | sparse | bn | sh | bn+sh | linear-bn | linear-sh | linear-bn+sh``.
        scales: SH factors, one integer ``r_h >= 1`` per head (SH variants only). None: the default
            ``(1, 2, 4, 8)`` repeated, filled in by :meth:`for_heads` (the layers call it); the functional ops
            need explicit factors.
        window: half-width of the sparse variant's sliding window, an integer ``>= 0`` (sparse only).
        eps: BN's variance floor, finite and ``> 0``: ``s² = var + eps``.
        mean_weight: BN's β, the weight on the key mean in ``x̂ = (x - βμ) ⊘ s``; any finite number.
        causal: query i's SVR is fitted on its own past only, every variant (SPEC section 5, docs/theory.md):
            keys ``j <= i``, BN's prefix statistics, SH's complete past windows plus its open one.
        num_prefix_tokens: leading keys (class/register tokens) that SH keeps unpooled, ``>= 0``.
        grid: SH on an image: the patch grid ``(rows, cols)`` of the keys after the prefix tokens; factor ``r``
            then pools ``a × b`` windows of neighbouring patches (:func:`~primaldual.functional.transforms.grid_window`,
            partial at the borders) rather than ``r`` consecutive patches in raster order (None, the default).
            SH variants only, not causal.

    ``dataclasses.replace(options, eps=1e-3)`` (or :meth:`replace`) gives a new, re-validated object.
    """

    variant: str = "softmax"
    scales: tuple[int, ...] | None = None
    window: int | None = None
    eps: float = 1e-5
    mean_weight: float = 1.0
    causal: bool = False
    num_prefix_tokens: int = 0
    grid: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        spec = get_variant(self.variant)
        if self.scales is not None:
            if not spec.pooled:
                raise ValueError(f"scales is only used by the sh variants, not {self.variant!r}")
            object.__setattr__(self, "scales", check_scales(self.scales))
        if spec.windowed:
            if self.window is None:
                raise ValueError(f"variant {self.variant!r} needs window (an integer >= 0)")
            check_window(self.window)
        elif self.window is not None:
            raise ValueError(f"window is only used by the sparse variant, not {self.variant!r}")
        _check_bn(self.eps, self.mean_weight)
        prefix = self.num_prefix_tokens
        if isinstance(prefix, bool) or not isinstance(prefix, int) or prefix < 0:
            raise ValueError(f"num_prefix_tokens must be an integer >= 0, got {prefix!r}")
        if self.grid is not None:
            if not spec.pooled or self.causal:
                raise ValueError(
                    f"grid (2D pooling of an image's patches) is used by the sh variants without causal=True, not "
                    f"{self.variant!r}{' causal' if self.causal else ''}: a causal sequence is pooled in its order"
                )
            object.__setattr__(self, "grid", check_grid(self.grid))

    @property
    def spec(self) -> Variant:
        """The variant's composition: kernel, BN or not, key selection."""
        return VARIANTS[self.variant]

    @property
    def pooling(self) -> dict[str, Any]:
        """SH's pooling settings as the keywords of :func:`~primaldual.functional.transforms.pool_keys`."""
        return dict(num_prefix_tokens=self.num_prefix_tokens, grid=self.grid)

    def for_heads(self, num_heads: int) -> AttentionOptions:
        """These options for a layer of ``num_heads`` heads: SH's default factors filled in, given factors
        checked against the head count."""
        if not self.spec.pooled:
            return self
        scales = default_scales(num_heads) if self.scales is None else check_scales(self.scales, num_heads)
        return self if scales == self.scales else dataclasses.replace(self, scales=scales)

    def replace(self, **changes: Any) -> AttentionOptions:
        """A copy with ``changes`` applied and validated; an unknown name is a TypeError naming it."""
        check_names(changes)
        return dataclasses.replace(self, **changes)


FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(AttentionOptions))


def check_names(options: dict[str, Any]) -> None:
    """A TypeError naming any key of ``options`` that is not a field of :class:`AttentionOptions`."""
    unknown = sorted(set(options) - set(FIELDS))
    if unknown:
        raise TypeError(f"unknown attention option(s) {', '.join(unknown)}; expected some of {', '.join(FIELDS)}")


def _check_bn(eps: float, mean_weight: float) -> None:
    """``eps``: finite and ``> 0``, keeps zero-variance keys finite (an infinite one would flatten every score
    to 0); ``mean_weight`` (β) is any finite number."""
    if not eps > 0:  # also refuses NaN
        raise ValueError(f"eps must be > 0, got {eps}")
    if not _finite(eps):
        raise ValueError(f"eps must be finite, got {eps}")
    if not _finite(mean_weight):
        raise ValueError(f"mean_weight must be finite, got {mean_weight}")


def _finite(x: float) -> bool:
    """``math.isfinite`` by comparisons, which torch.compile folds when options are made while it traces (dynamo
    turns ``math.isfinite`` of a float into a tensor op and breaks the graph)."""
    return -math.inf < x < math.inf
