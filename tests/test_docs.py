"""The repository documents itself: every relative link in README.md and docs/ leads to a file in it."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def relative_links(page: Path) -> list[str]:
    """Markdown link targets of ``page`` that are not URLs or in-page anchors, outside fenced code."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    targets = [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]
    return [t.split("#")[0] for t in targets]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve_inside_the_repository(page: Path) -> None:
    for target in relative_links(page):
        path = (page.parent / target).resolve()
        assert path.is_relative_to(ROOT), f"{page.name}: {target} leaves the repository"
        assert path.exists(), f"{page.name}: {target} does not exist"
        if page.parent.name == "docs" or ROOT / "docs" in page.parents:
            # the mkdocs site holds docs/ only: a link out of it is dead there (mkdocs build --strict fails too)
            assert path.is_relative_to(ROOT / "docs"), f"{page.name}: {target} leaves docs/"


def test_docs_cover_the_theory() -> None:
    """The derivation the README points to is in the repository, not beside it."""
    theory = (ROOT / "docs" / "theory.md").read_text()
    for topic in ("support vector expansion", "KKT", "shift identity", "prefix", "mean_h (1 / r_h)"):
        assert topic in theory, topic
    assert "../shared" not in (ROOT / "README.md").read_text()
