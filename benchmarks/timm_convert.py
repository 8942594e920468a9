"""Which timm models ``primaldual.convert`` converts, and how exactly: a sweep over model names.

    python -m benchmarks.timm_convert --output results/benchmarks/timm-convert

Each model is built by ``timm.create_model(name, pretrained=False)`` with random weights (seed 0), at its
default input size, with ``--depth`` blocks where the model takes a ``depth`` argument (the attention is the
same in every block), and converted with softmax: the row gives the number of attention modules replaced and
the largest difference of the logits from the original's (0 where the converted layer runs the same operations),
or the refusal's message. bn, sh and bn+sh conversions are run too and must give finite logits. Not a timing:
a table of what converts. Writes ``timm_convert.{json,csv,md}``.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from benchmarks import publish

#: The default sweep: timm's plain ViTs, their rotary-embedding and relative-position-bias relatives (BEiT, the
#: relpos ViTs, Swin), and the families convert refuses, each with its reason.
MODELS = (
    "vit_tiny_patch16_224",
    "deit_tiny_patch16_224",
    "deit3_small_patch16_224",
    "flexivit_small",
    "vit_small_patch16_224.augreg_in21k",
    "eva02_tiny_patch14_224",
    "eva02_small_patch14_224",
    "eva02_base_patch16_clip_224",
    "vit_small_patch16_dinov3",
    "vit_small_patch16_dinov3_qkvb",
    "vit_medium_patch16_rope_reg1_gap_256",
    "vit_small_patch16_rope_224",
    "vit_small_patch16_rope_mixed_224",
    "vit_small_patch16_rope_ape_224",
    "beit_base_patch16_224",
    "beitv2_base_patch16_224",
    "vit_relpos_base_patch16_224",
    "vit_relpos_medium_patch16_cls_224",
    "vit_relpos_base_patch16_rpn_224",
    "swin_tiny_patch4_window7_224",
    "cait_xxs24_224",
    "xcit_nano_12_p16_224",
    "levit_128s",
    "mvitv2_tiny",
    "samvit_base_patch16",
    "twins_svt_small",
    "tnt_s_patch16_224",
    "swinv2_tiny_window8_256",
)


def build(name: str, depth: int) -> torch.nn.Module:
    """``name`` with random weights (seed 0), ``depth`` blocks if the model takes a depth."""
    import timm

    torch.manual_seed(0)
    try:
        return timm.create_model(name, pretrained=False, depth=depth).eval()
    except TypeError:
        torch.manual_seed(0)
        return timm.create_model(name, pretrained=False).eval()


def sweep_one(name: str, depth: int) -> dict[str, Any]:
    """One row: the model, converted modules, the softmax conversion's largest logit difference, or the refusal."""
    import primaldual

    model = build(name, depth)
    x = torch.randn(1, *model.pretrained_cfg.get("input_size", (3, 224, 224)))
    row: dict[str, Any] = {"model": name, "converted": 0, "softmax_max_difference": None, "variants_finite": None}
    with torch.no_grad():
        reference = model(x)
        try:
            converted = primaldual.convert(model, "softmax")
        except ValueError as error:
            return {**row, "refused": str(error)}
        row["converted"] = sum(isinstance(m, primaldual.Attention) for m in converted.modules())
        row["softmax_max_difference"] = float((converted(x) - reference).abs().max())
        row["variants_finite"] = all(
            bool(primaldual.convert(build(name, depth), v)(x).isfinite().all()) for v in ("bn", "sh", "bn+sh")
        )
    return {**row, "refused": ""}


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| model | converted attention modules | softmax: max logit difference | bn, sh, bn+sh finite | refusal |"]
    lines.append("|---|---|---|---|---|")
    for r in rows:
        difference = "" if r["softmax_max_difference"] is None else f"{r['softmax_max_difference']:.1e}"
        finite = "" if r["variants_finite"] is None else ("yes" if r["variants_finite"] else "NO")
        lines.append(f"| {r['model']} | {r['converted']} | {difference} | {finite} | {r['refused']} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.timm_convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--depth", type=int, default=2, help="blocks per model, where it takes a depth")
    parser.add_argument("--output", default="runs/benchmarks/timm-convert")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    rows = [sweep_one(name, args.depth) for name in args.models]
    publish(rows, args.output, "timm_convert", markdown(rows))
    return rows


if __name__ == "__main__":
    main()
