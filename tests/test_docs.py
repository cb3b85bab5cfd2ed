"""The documentation lives in the repository: every `docs/<name>.md[#anchor]` reference in the code, notebooks,
presets, pipeline files, tests and docs resolves to a file and a heading; relative links in README.md and docs/
resolve; nothing cites a design document outside the repository; README.md stays short.

Fast: text, plus importing the `lptlib` names the docs mention.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_CHARS = 10_000


def _files() -> list[Path]:
    found = [
        *sorted((ROOT / "lptlib").rglob("*.py")),
        *sorted((ROOT / "notebooks").glob("*.ipynb")),
        *sorted((ROOT / "presets").glob("*.yaml")),
        ROOT / "params.yaml",
        ROOT / "dvc.yaml",
        *sorted((ROOT / "tests").glob("*.py")),
        ROOT / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
    ]
    return [p for p in found if p.is_file()]


FILES = _files()
MARKDOWN = [p for p in FILES if p.suffix == ".md"]


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _lines(path: Path) -> list[tuple[int, str]]:
    return list(enumerate(path.read_text(encoding="utf-8").splitlines(), 1))


# ------------------------------------------------------------------------------------- anchors
def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped (letters, digits, spaces,
    hyphens and underscores kept), spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: keep their text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").strip().lower()
    kept = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in "LN")
    return kept.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    """Every heading anchor of a markdown file (repeated headings get -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for _, line in _lines(path):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        m = None if fenced else re.match(r" {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = github_slug(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return frozenset(out)


def test_github_slug():
    assert github_slug("The offline miniature") == "the-offline-miniature"
    assert github_slug("LPT++ mixture of experts") == "lpt-mixture-of-experts"
    assert github_slug("Multi-GPU (`torchrun`)") == "multi-gpu-torchrun"


# ------------------------------------------------------------------------ docs/<name>.md references
DOC_REF = re.compile(r"(?<![\w/.-])docs/([\w.-]+?\.md)(?:#([\w-]+))?")


def test_every_docs_reference_resolves():
    problems = []
    for path in FILES:
        for lineno, line in _lines(path):
            for m in DOC_REF.finditer(line):
                name, anchor = m.group(1), m.group(2)
                target = ROOT / "docs" / name
                where = f"{_rel(path)}:{lineno}: docs/{name}{'#' + anchor if anchor else ''}"
                if not target.is_file():
                    problems.append(f"{where}: no file docs/{name}")
                elif anchor and anchor not in anchors(target):
                    problems.append(
                        f"{where}: no heading with anchor #{anchor} in docs/{name} "
                        f"(anchors: {', '.join(sorted(anchors(target)))})"
                    )
    assert not problems, "broken documentation references:\n" + "\n".join(problems)


# --------------------------------------------------------------------- relative markdown links
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def test_relative_links_in_readme_and_docs_resolve():
    problems = []
    for path in MARKDOWN:
        fenced = False
        for lineno, line in _lines(path):
            if line.lstrip().startswith(("```", "~~~")):
                fenced = not fenced
                continue
            if fenced:
                continue
            for m in LINK.finditer(line):
                target = m.group(1)
                if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:, ...
                    continue
                file_part, _, anchor = target.partition("#")
                dest = (path.parent / file_part).resolve() if file_part else path
                where = f"{_rel(path)}:{lineno}: ({target})"
                if not dest.exists():
                    problems.append(f"{where}: {file_part} does not exist")
                elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                    problems.append(f"{where}: no heading with anchor #{anchor} in {_rel(dest)}")
    assert not problems, "broken links:\n" + "\n".join(problems)


# ---------------------------------------------------------- no citation of documents outside the repo
# built from pieces so that this file does not match its own patterns
_DOC = "METH" + "ODS"
FORBIDDEN = {
    f"{_DOC} \u00a7": re.compile(re.escape(_DOC) + r"\s*\u00a7"),
    f"{_DOC}.md": re.compile(re.escape(_DOC) + r"\.md"),
    "shared/" + "design": re.compile("shared/" + "design"),
    "shared/" + "reference": re.compile("shared/" + "reference"),
    "papers-and-" + "numbers": re.compile("papers-and-" + "numbers"),
}


@pytest.mark.parametrize("path", FILES, ids=_rel)
def test_no_citation_of_documents_outside_the_repository(path):
    problems = [
        f"{_rel(path)}:{lineno}: cites {what!r}: {line.strip()[:160]}"
        for lineno, line in _lines(path)
        for what, pattern in FORBIDDEN.items()
        if pattern.search(line)
    ]
    assert not problems, (
        "cite docs/methods.md (or another docs/ file) instead; fix with the docs reference "
        "script:\n" + "\n".join(problems)
    )


# --------------------------------------------------------------------------------- README size
def test_readme_is_short():
    """The prose is short; the generated results and claims tables (between the results markers) do not count."""
    from lptlib.report.table import README_BEGIN, README_END

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    head, rest = text.split(README_BEGIN, 1)
    n = len(head) + len(rest.split(README_END, 1)[1])
    assert n <= README_MAX_CHARS, f"README.md: {n} characters, over the {README_MAX_CHARS} limit; move details to docs/"


# ------------------------------------------------------------------------------- code references
CODE_PATH = re.compile(r"\blptlib/[\w/]+\.(?:py|json)\b")
DOTTED = re.compile(r"`(lptlib(?:\.\w+)+)")


@pytest.mark.parametrize("path", MARKDOWN, ids=_rel)
def test_code_named_by_the_docs_exists(path):
    """Every `lptlib/...py` file and every `lptlib.module.name` the docs name exists (after a move, the docs
    follow)."""
    import importlib

    bad = []
    for number, line in _lines(path):
        bad += [f"{number}: {p}" for p in CODE_PATH.findall(line) if not (ROOT / p).is_file()]
        for dotted in DOTTED.findall(line):
            parts = dotted.split(".")
            for cut in range(len(parts), 0, -1):  # the longest importable module, then attributes
                try:
                    obj = importlib.import_module(".".join(parts[:cut]))
                except ImportError:
                    continue
                for attr in parts[cut:]:
                    obj = getattr(obj, attr, None)
                if obj is None:
                    bad.append(f"{number}: {dotted}")
                break
    assert not bad, f"{_rel(path)} names code that does not exist: {bad}"
