"""The ``primaldual benchmark``, ``tune`` and ``lm`` subcommands, added to the parser by :mod:`primaldual.cli`.

``benchmark``: every bundled multivariate UEA set (or those of ``--root``) x variants x seeds, two protocols and
MiniRocket (:mod:`primaldual.training.benchmark`), then the report (:mod:`primaldual.analysis.benchmark_report`).
``tune``: an Optuna study of a dataset's configuration on k-fold cross-validation of its training file
(:mod:`primaldual.training.tune`). ``lm``: the language-model benchmark, MQAR and the text corpus x variants x
seeds and the cost of generating (:mod:`primaldual.training.lm_benchmark`), then its report
(:mod:`primaldual.analysis.lm_report`).
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from .files import atomic_write
from .functional import PAPER_VARIANTS

DEFAULT_OUTPUT = "results/uea-benchmark"
LM_OUTPUT = "results/lm"


def add_parsers(commands: Any) -> None:
    """Add ``benchmark``, ``tune`` and ``lm`` to ``commands`` (an argparse subparsers action)."""
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
    _add_lm_parser(commands)


def _add_lm_parser(commands: Any) -> None:
    from .training.lm_benchmark import DATASETS, GENERATION_TOKENS, VARIANTS

    lm = commands.add_parser(
        "lm",
        help="language models: MQAR recall and text bits per byte x variants x seeds, the cost of generating",
        description="Train a small Llama-architecture causal LM per variant and seed on multi-query associative "
        "recall and on the bytes of the Python documentation, measure greedy generation with each variant's cache "
        "beside SDPA + DynamicCache, and write runs.csv, summary.md, statistics.json and plots into --output. Run "
        "again, it skips finished jobs and resumes interrupted runs; several processes may share one --output.",
    )
    lm.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS), metavar="NAME",
                    help=f"datasets (default: {' '.join(DATASETS)})")  # fmt: skip
    lm.add_argument("--attention", nargs="+", default=list(VARIANTS), metavar="VARIANT",
                    help=f"variants (default: {' '.join(VARIANTS)})")  # fmt: skip
    lm.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], metavar="SEED", help="seeds (default: 0 1 2)")
    lm.add_argument("--tokens", nargs="*", type=int, default=list(GENERATION_TOKENS), metavar="N",
                    help="lengths of the generation measurements (default: 256 512 1024 2048; none: no measurement)")  # fmt: skip
    lm.add_argument("--output", default=LM_OUTPUT, help=f"output folder (default: {LM_OUTPUT})")
    lm.add_argument("--workers", type=int, default=1, help="processes running training jobs at once (default: 1)")
    lm.add_argument("--config", metavar="FILE.yaml", help="options over the benchmark's settings for every run")
    lm.add_argument("--report-only", action="store_true", help="write the report of the finished jobs only")


def _run_lm(options: dict[str, Any]) -> None:
    from .analysis.lm_report import lm_report
    from .training.lm_benchmark import benchmark

    output = options["output"]
    if not options["report_only"]:
        with _invocation(output):
            benchmark(output, datasets=options["datasets"], variants=options["attention"], seeds=options["seeds"],
                      tokens=options["tokens"], workers=options["workers"],
                      overrides=_read_overrides(options["config"]), log=lambda line: print(line, flush=True))  # fmt: skip
    made = _made(output)
    print(f"report: {lm_report(output, command=made.get('command'), wall_seconds=made.get('wall_seconds'))}")


def run(command: str, options: dict[str, Any]) -> None:
    """Run ``benchmark``, ``tune`` or ``lm`` with the parsed ``options``."""
    if command == "lm":
        _run_lm(options)
        return
    if command == "tune":
        from .training.tune import tune

        space = _read_space(options.pop("space"))
        best = tune(options.pop("dataset"), options.pop("output"), space=space, **options)
        print(yaml.safe_dump(best, sort_keys=False), end="")
        return
    from .analysis.benchmark_report import benchmark_report, head_measure
    from .data.uea import multivariate_sets
    from .training.benchmark import benchmark

    root = options["root"]
    datasets = options["datasets"] or (multivariate_sets(root) if root else _bundled_order(multivariate_sets()))
    overrides = _read_overrides(options["config"])
    if not options["report_only"]:
        with _invocation(options["output"]):
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
    made = _made(options["output"])
    summary = benchmark_report(options["output"], command=made.get("command"), wall_seconds=made.get("wall_seconds"))
    print(f"report: {summary}")


@contextmanager
def _invocation(output: str) -> Iterator[None]:
    """Record in ``output/invocation.json`` the command line and the wall time of the block, when it succeeds."""
    started = time.monotonic()
    yield
    command_line = "primaldual " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    made = {"command": command_line, "wall_seconds": time.monotonic() - started,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z")}  # fmt: skip
    atomic_write(Path(output) / "invocation.json", json.dumps(made).encode())


def _made(output: str) -> dict[str, Any]:
    path = Path(output) / "invocation.json"
    return json.loads(path.read_text()) if path.is_file() else {}


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
