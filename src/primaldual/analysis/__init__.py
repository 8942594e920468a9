"""Analysis of trained or fresh models: head redundancy, efficiency against softmax, figures and reports.

``attention_weights``   explicit weights ``(B, H, Nq, Nk)`` of any variant, SH mapped back to the original keys
``head_redundancy``     per-layer L2 distance of heads' attention and cosine similarity of heads' outputs
``efficiency``          FLOPs, peak memory, wall time per variant and length, as ratios to softmax
``report``              run folders of ``train`` / ``compare`` -> report.md + report.json + PNG figures

Each name is imported from its module on first use: head redundancy and efficiency need only the core install
(torch), the figures matplotlib, the report the training extra.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..functional import attention_weights
    from .efficiency import efficiency
    from .plots import plot_accuracy, plot_attention_maps, plot_cost, plot_redundancy
    from .redundancy import AttentionRecord, attention_records, head_redundancy, record_attention
    from .report import find_runs, report

# name -> the module (relative to this package) that defines it
_LAZY = {
    "attention_weights": "..functional",
    "efficiency": ".efficiency",
    "plot_accuracy": ".plots",
    "plot_attention_maps": ".plots",
    "plot_cost": ".plots",
    "plot_redundancy": ".plots",
    "AttentionRecord": ".redundancy",
    "attention_records": ".redundancy",
    "head_redundancy": ".redundancy",
    "record_attention": ".redundancy",
    "find_runs": ".report",
    "report": ".report",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Package(types.ModuleType):
    """This package: ``efficiency`` and ``report`` name both a module and its main function; loading the module
    (which binds it on the package) binds the function instead, as an eager ``from .report import report`` did."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.{name}" and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
