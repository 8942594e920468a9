"""The ``primaldual benchmark`` and ``primaldual tune`` subcommands, added to the parser by :mod:`primaldual.cli`.

``benchmark``: every bundled multivariate UEA set (or those of ``--root``) x variants x seeds, two protocols and
MiniRocket (:mod:`primaldual.training.benchmark`), then the report (:mod:`primaldual.analysis.benchmark_report`).
``tune``: an Optuna study of a dataset's configuration on k-fold cross-validation of its training file
(:mod:`primaldual.training.tune`).
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from .files import atomic_write
from .functional import PAPER_VARIANTS

DEFAULT_OUTPUT = "results/uea-benchmark"


def add_parsers(commands: Any) -> None:
    """Add ``benchmark`` and ``tune`` to ``commands`` (an argparse subparsers action)."""
    bench = commands.add_parser(
        "benchmark",
        help="every multivariate UEA set x variants x seeds, two protocols, MiniRocket, statistics",
        description="Cross-validate each variant on each dataset's training file (the train-only protocol's epoch), "
        "train each seed on the whole training file recording the test accuracy of every epoch "
        "(train-only: at the cross-validated epoch; test-selected: the best, an upper bound), fit "
        "MiniRocket, and write runs.csv, summary.md, statistics.json, cd-*.png and claims.md into "
        "--output. Run again, it skips finished jobs; several processes may share one --output.",
    )
    bench.add_argument(
        "--datasets",
        nargs="+",
        metavar="NAME",
        help="UEA sets (default: every bundled multivariate set, or every one under --root)",
    )
    bench.add_argument(
        "--attention",
        nargs="+",
        default=list(PAPER_VARIANTS),
        metavar="VARIANT",
        help=f"variants (default: {' '.join(PAPER_VARIANTS)})",
    )
    bench.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[0, 1, 2, 3, 4],
        metavar="SEED",
        help="seeds of the final runs (default: 0 1 2 3 4)",
    )
    bench.add_argument("--folds", type=int, default=3, help="folds of the cross-validation (default: 3)")
    bench.add_argument("--output", default=DEFAULT_OUTPUT, help=f"output folder (default: {DEFAULT_OUTPUT})")
    bench.add_argument("--root", help="a folder of UEA .ts files (default: the bundled sets)")
    bench.add_argument("--workers", type=int, default=1, help="processes running jobs at once (default: 1)")
    bench.add_argument(
        "--config",
        metavar="FILE.yaml",
        help="options over the benchmark's defaults for every dataset, and under 'datasets:' per "
        "dataset (e.g. a tune study's best)",
    )
    bench.add_argument(
        "--baselines",
        nargs="*",
        default=["minirocket"],
        metavar="NAME",
        choices=("minirocket", "multirockethydra"),
        help="aeon classifiers run beside, untuned: minirocket, multirockethydra (default: minirocket; "
        "none: no baseline)",
    )
    bench.add_argument("--report-only", action="store_true", help="write the report of the finished jobs only")
    tune = commands.add_parser(
        "tune",
        help="an Optuna study of a dataset's configuration on k-fold CV of its training file",
        description="Search d_model, depth, lr, dropout, tokens per series (patch size) and epochs by the mean "
        "k-fold cross-validation accuracy on the training file (the test file is not read). The study "
        "lives in --storage (default sqlite:///OUTPUT/study.db): run again, it resumes; several "
        "processes or machines given one storage URL share the study.",
    )
    tune.add_argument("--dataset", required=True, help="UEA set")
    tune.add_argument("--attention", default="softmax", help="variant whose configuration is tuned (default: softmax)")
    tune.add_argument("--trials", type=int, default=20, help="completed trials the study should reach (default: 20)")
    tune.add_argument("--folds", type=int, default=3, help="folds of the cross-validation (default: 3)")
    tune.add_argument("--output", default="runs/tune", help="folder of study.db and best.yaml (default: runs/tune)")
    tune.add_argument("--storage", help="Optuna storage URL shared by workers (default: sqlite:///OUTPUT/study.db)")
    tune.add_argument("--workers", type=int, default=1, help="processes optimising at once (default: 1)")
    tune.add_argument("--root", help="a folder of UEA .ts files (default: the bundled sets)")
    tune.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the TPE sampler (--workers: seed + i for worker i; give each machine of a shared study its "
        "own, else they sample the same options; default: 0)",
    )
    tune.add_argument(
        "--grace-seconds",
        type=int,
        default=60,
        help="a trial whose worker has not beaten its heartbeat for this long (killed, its machine lost) is "
        "failed and its options run again by a live worker (default: 60)",
    )
    tune.add_argument(
        "--space",
        metavar="FILE.yaml",
        help="the search space: a mapping of option to its list of choices ('tokens': series cut into that many "
        "patches; default: d_model, depth, lr, dropout, tokens, epochs as in primaldual.training.tune.SPACE)",
    )


def run(command: str, options: dict[str, Any]) -> None:
    """Run ``benchmark`` or ``tune`` with the parsed ``options``."""
    if command == "tune":
        from .training.tune import tune

        space = _read_space(options.pop("space"))
        best = tune(options.pop("dataset"), options.pop("output"), space=space, **options)
        print(yaml.safe_dump(best, sort_keys=False), end="")
        return
    from .analysis.benchmark_report import benchmark_report, head_measure
    from .data.uea import multivariate_sets
    from .training.benchmark import benchmark

    started = time.monotonic()
    root = options["root"]
    datasets = options["datasets"] or (multivariate_sets(root) if root else _bundled_order(multivariate_sets()))
    overrides = _read_overrides(options["config"])
    invocation = Path(options["output"]) / "invocation.json"
    if not options["report_only"]:
        benchmark(
            datasets,
            options["attention"],
            options["seeds"],
            options["output"],
            folds=options["folds"],
            workers=options["workers"],
            root=root,
            overrides=overrides,
            baselines=options["baselines"],
            measure=head_measure,
            log=lambda line: print(line, flush=True),
        )
        command_line = "primaldual " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        atomic_write(
            invocation,
            json.dumps(
                {
                    "command": command_line,
                    "wall_seconds": time.monotonic() - started,
                    "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                }
            ).encode(),
        )
    made = json.loads(invocation.read_text()) if invocation.is_file() else {}
    summary = benchmark_report(options["output"], command=made.get("command"), wall_seconds=made.get("wall_seconds"))
    print(f"report: {summary}")


def _bundled_order(names: list[str]) -> list[str]:
    """The benchmark's order (:data:`~.training.benchmark.DATASETS`, largest last), any other set after."""
    from .training.benchmark import DATASETS

    return [n for n in DATASETS if n in names] + [n for n in names if n not in DATASETS]


def _read_overrides(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    with open(path) as file:
        overrides = yaml.safe_load(file) or {}
    if not isinstance(overrides, dict):
        raise TypeError(f"--config {path} must hold a mapping of options, got {type(overrides).__name__}")
    return overrides


def _read_space(path: str | None) -> dict[str, list[Any]] | None:
    if path is None:
        return None
    with open(path) as file:
        space = yaml.safe_load(file)
    if not isinstance(space, dict) or not all(isinstance(c, list) and c for c in space.values()):
        raise TypeError(f"--space {path} must hold a mapping of option names to non-empty lists of choices")
    return space
