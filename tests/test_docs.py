"""The README and docs/ point at things that exist: links, their anchors, and the repository paths they name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 180
# Written by a generator, not by hand; a link to it is accepted while the generated file is absent.

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\s]+)`")
REPO_FOLDERS = ("finfed/", "server/", "client/", "tests/", "benchmarks/", "simulations/", "docs/", ".ci/")


def _prose(text: str) -> str:
    """The text outside fenced code blocks (a shell example may name files it creates)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#{1,6} +(.+?) *$", _prose(path.read_text(encoding="utf-8")), flags=re.M)
    return {github_anchor(heading) for heading in headings}


def relative_links(path: Path) -> list[str]:
    links = LINK.findall(_prose(path.read_text(encoding="utf-8")))
    return [link for link in links if not re.match(r"[a-z][a-z0-9+.-]*:", link)]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_points_to_an_existing_file_and_heading(document):
    broken = []
    for link in relative_links(document):
        target_text, _, fragment = link.partition("#")
        target = (document.parent / target_text).resolve() if target_text else document
        if not target.exists():
            broken.append(f"{link}: no file {target}")
            continue
        if fragment and target.suffix == ".md" and fragment not in anchors(target):
            broken.append(f"{link}: no heading with anchor #{fragment} in {target.name}")
    assert not broken, f"{document.name}: " + "; ".join(broken)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_repository_path_named_in_the_prose_exists(document):
    """Module paths go stale when code moves: every `finfed/...`, `tests/...` etc. named must exist."""
    missing = []
    for span in CODE_SPAN.findall(_prose(document.read_text(encoding="utf-8"))):
        path = span.split("::")[0].rstrip(".,;:")
        if not path.startswith(REPO_FOLDERS) or "<" in path:
            continue
        found = list(ROOT.glob(path)) if "*" in path else [ROOT / path] if (ROOT / path).exists() else []
        if not found:
            missing.append(path)
    assert not missing, f"{document.name} names paths that do not exist: {missing}"


def test_the_readme_stays_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/ (limit {README_MAX_LINES})"


def test_the_link_checker_catches_a_broken_link_and_anchor(tmp_path):
    (tmp_path / "a.md").write_text("# Title here\n\n[ok](b.md#the-part) [gone](c.md) [bad](b.md#nope)\n")
    (tmp_path / "b.md").write_text("# The part\n")
    links = relative_links(tmp_path / "a.md")
    assert links == ["b.md#the-part", "c.md", "b.md#nope"]
    assert anchors(tmp_path / "b.md") == {"the-part"}
    assert github_anchor("What a run leaves in `runs/<name>/`") == "what-a-run-leaves-in-runsname"
    assert github_anchor("δ: the site's and the run's") == "δ-the-sites-and-the-runs"
