"""The ``primaldual`` command: ``train`` one model, ``compare`` attention variants over seeds, ``report`` on runs.

Thin: every option is a field of :class:`primaldual.training.TrainConfig` (its help included); ``--config``
reads a YAML file and the flags given on the command line override its values. Bad input prints one line
and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import textwrap
import typing
from collections.abc import Sequence
from typing import Any

from .functional import PAPER_VARIANTS, VARIANTS
from .training import TrainConfig


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's help layout, wrapped at spaces only: names such as fashion-mnist or listops-tsv stay whole."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (its subcommands' parsers too) and whose help keeps
    hyphenated names whole."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_or_str(value: str) -> int | str:
    """``--devices 2`` -> 2; ``--devices auto`` or ``--devices 0,1`` stay strings."""
    return int(value) if value.isdigit() else value


def _add_config_options(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """One ``--option`` per TrainConfig field (``d_model`` -> ``--d-model``), help and choices from its metadata."""
    hints = typing.get_type_hints(TrainConfig)
    parser.add_argument("--config", metavar="FILE.yaml", help="read options from this YAML file; flags override it")
    for field in dataclasses.fields(TrainConfig):
        if field.name in skip:
            continue
        hint = hints[field.name]
        args = typing.get_args(hint)
        help = field.metadata["help"]
        help += "" if "default" in help else f" (default: {field.default})"
        kwargs: dict[str, Any] = {"dest": field.name, "help": help}
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif hint == list[int] or list[int] in args:
            kwargs.update(nargs="+", type=int, metavar="N")
        elif int in args and str in args:
            kwargs["type"] = _int_or_str
        else:
            kwargs["type"] = next(t for t in (int, float, str) if t is hint or t in args)
        if "choices" in field.metadata:
            kwargs["choices"] = field.metadata["choices"]
        parser.add_argument(f"--{field.name.replace('_', '-')}", **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``primaldual {train, compare}``; absent flags are absent from the parsed namespace."""
    parser = _Parser(
        prog="primaldual",
        description="Attention as a support vector expansion: train and compare "
        "transformers with softmax, linear, sparse, BN and SH attention.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{train,compare,report,benchmark,tune,lm}")
    variants = list(VARIANTS)
    train = commands.add_parser(
        "train",
        help="train one model and test its best epoch",
        argument_default=argparse.SUPPRESS,
        description="Train one model, keep the epoch with the best validation accuracy, test it once, and write "
        "config.yaml, metrics.json, metrics.csv, model.safetensors and checkpoints/ into --output.",
    )
    _add_config_options(train)
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --output from checkpoints/last.ckpt (raise --epochs to train longer)",
    )
    compare = commands.add_parser(
        "compare",
        help="train attention variants over seeds and tabulate test accuracy",
        argument_default=argparse.SUPPRESS,
        description="Train each --attention variant with each seed into OUTPUT/<variant>/seed<k>/ and write "
        "OUTPUT/summary.csv and OUTPUT/summary.md (mean ± std test accuracy over seeds). Run again, "
        "it reuses finished runs with the same options and continues interrupted ones. Several "
        "comparisons may run at once into the same OUTPUT, over the same seeds or others: each run is "
        "trained by one process (the others pass over it, then wait for it and reuse its result).",
    )
    _add_config_options(compare, skip=("attention", "seed", "output"))
    compare.add_argument(
        "--attention",
        nargs="+",
        choices=variants,
        metavar="VARIANT",
        help=f"variants to compare, from {', '.join(variants)} (default: {' '.join(PAPER_VARIANTS)})",
    )
    compare.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="seeds of each variant (default: 0 1 2)")
    compare.add_argument("--output", help="output folder of all runs and the summary (default: runs/compare)")
    compare.add_argument(
        "--no-report",
        dest="report",
        action="store_false",
        help="skip the report (OUTPUT/report/report.md) written after the runs",
    )
    compare.add_argument(
        "--verbose",
        action="store_true",
        help="show Lightning's progress bars, model summaries and messages of every run instead of "
        "one line per run and one progress bar over all runs",
    )
    report = commands.add_parser(
        "report",
        help="turn finished runs into a Markdown + JSON report with figures",
        description="Read train or compare output folders and write report.md (accuracy, head redundancy and "
        "cost tables, PNG figures) and report.json (the same tables, for scripts) into --output.",
    )
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="compare folders and/or single run folders")
    report.add_argument("--output", default="runs/report", help="folder of the report (default: runs/report)")
    report.add_argument(
        "--efficiency",
        metavar="PATH",
        help="efficiency.json (or its folder) from a measurement to include; default: count FLOPs "
        "of the runs' model shapes at --lengths",
    )
    report.add_argument(
        "--lengths",
        nargs="+",
        type=int,
        default=[256, 512, 1024, 2048],
        metavar="N",
        help="sequence lengths of the FLOPs table (default: 256 512 1024 2048)",
    )
    report.add_argument(
        "--samples",
        type=int,
        default=8,
        help="test sequences per run on which head redundancy is measured (default: 8)",
    )
    report.add_argument(
        "--cost-samples",
        type=int,
        default=64,
        help="test samples per timed forward pass of the accuracy table's samples/s (default: 64)",
    )
    from .benchmark_cli import add_parsers

    add_parsers(commands)  # benchmark, tune, lm
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``primaldual`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    options = vars(parser.parse_args(argv))
    from lightning.fabric.utilities.exceptions import MisconfigurationException  # slow imports: after --help
    from lightning.pytorch.utilities import rank_zero_only

    from .training.tune import StorageError  # tune's storage unusable: its URL (password hidden) and the reason

    command = options.pop("command")
    prog = f"{parser.prog} {command}"
    try:
        if command == "report":
            from .analysis import report

            print(report(options.pop("runs"), options.pop("output"), **options))
            return 0
        if command in ("benchmark", "tune", "lm"):
            from .benchmark_cli import run

            run(command, options)
            return 0
        base = TrainConfig.from_yaml(options.pop("config")) if "config" in options else TrainConfig()
        if command == "train":
            resume = options.pop("resume", False)
            config = dataclasses.replace(base, **options)
            from .training import train

            metrics = train(config, resume=resume)
            if rank_zero_only.rank == 0:  # under DDP every process gets here
                print(json.dumps(metrics, indent=2))
        else:
            variants = options.pop("attention", list(PAPER_VARIANTS))
            seeds = options.pop("seeds", [0, 1, 2])
            output = options.pop("output", "runs/compare")
            write_report = options.pop("report", True)
            verbose = options.pop("verbose", False)
            config = dataclasses.replace(base, **options)
            from .training import compare

            compare(config, variants, seeds, output, verbose=verbose)
            if write_report and rank_zero_only.rank == 0:
                from .analysis import report

                print(f"report: {report([output], f'{output}/report')}")
    except (
        ValueError,
        TypeError,
        FileNotFoundError,
        FileExistsError,
        MisconfigurationException,
        StorageError,
    ) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
