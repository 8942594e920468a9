"""docs/use-in-your-model.md runs as written, and the examples' --quick runs finish."""

import importlib.util
import re
from pathlib import Path

import pytest

pytest.importorskip("transformers")

ROOT = Path(__file__).parents[2]


def blocks():
    text = (ROOT / "docs" / "use-in-your-model.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("index", range(len(blocks())))
def test_docs_snippet_runs(index):
    exec(compile(blocks()[index], f"use-in-your-model.md[{index}]", "exec"), {})


@pytest.mark.parametrize(("script", "variants"), [("transformers_listops", ["softmax", "bn+sh"]), ("torch_nn", ["bn"])])
def test_example_quick_run(script, variants):
    spec = importlib.util.spec_from_file_location(script, ROOT / "examples" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--quick", "--variants", *variants])
    assert set(results) == set(variants) and all(0 <= a <= 1 for a in results.values())


def test_decoder_example_quick_run():
    spec = importlib.util.spec_from_file_location("decoder", ROOT / "examples" / "decoder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--quick", "--variants", "sh", "linear-sh"])
    assert set(results) == {"sh", "linear-sh"} and all(0 < loss < 10 for loss in results.values())
