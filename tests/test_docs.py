"""The docs point at things that exist, and speak only of the project.

Every cross-reference in README.md, docs/*.md and benchmarks/RESULTS.md is checked: a repository path
exists; `docs/X.md §N` names a numbered section of X; a section named in quotes (`"What runs code"
below`, `benchmarks/RESULTS.md, "Defaults"`) is a heading of the file it points into; every command
line given for a verb lists every option that verb has. And no doc speaks of how the work was
organised (issue numbers, sessions): a reader of the repository has none of that.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "RESULTS.md"]
PATH = re.compile(r"(?<![\w/.-])((?:clamp|recipes|benchmarks|tests|docs|\.ci)/[\w./*-]*[\w*])")
QUOTED = re.compile(r"(README\.md|docs/\w+\.md|benchmarks/RESULTS\.md)(?:,| \()\s*\"([^\"]+)\"(?: and \"([^\"]+)\")?")
NEARBY = re.compile(r"\"([A-Z][^\"\n]{2,60})\"\)? (?:above|below)|section \"([^\"\n]+)\"")
SECTION = re.compile(r"(docs/\w+\.md) ?§ ?(\d+)")


def headings(path: Path) -> set[str]:
    return {line.lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("#")}


def is_heading(name: str, heads: set[str]) -> bool:
    return any(h == name or h.startswith(name + " ") or h.startswith(name + ":") or h.startswith(name + ",")
               for h in heads)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_a_doc_names_exists(doc):
    missing = []
    for m in PATH.finditer(re.sub(r"<!--.*?-->", "", doc.read_text())):     # markers name files tests write
        path = m.group(1).rstrip(".")
        if any(c in path for c in "<{") or path.startswith(("clamp/...", "tests/...")):
            continue
        if not list(ROOT.glob(path)) and not (ROOT / path).exists():
            missing.append(path)
    assert not missing, f"{doc.name} names paths that do not exist: {sorted(set(missing))}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_section_a_doc_points_to_is_there(doc):
    text = doc.read_text()
    bad = []
    for m in QUOTED.finditer(text):
        heads = headings(ROOT / m.group(1))
        bad += [f"{m.group(1)}: {n!r}" for n in m.groups()[1:] if n and not is_heading(n, heads)]
    own = headings(doc)
    for m in NEARBY.finditer(text):
        name = m.group(1) or m.group(2)
        if not is_heading(name, own):
            bad.append(f"{doc.name}: {name!r}")
    for m in SECTION.finditer(text):
        if not any(h.startswith(f"{m.group(2)}. ") for h in headings(ROOT / m.group(1))):
            bad.append(f"{m.group(1)} §{m.group(2)}")
    assert not bad, f"{doc.name} points to sections that do not exist: {bad}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_speak_only_of_the_project(doc):
    words = re.compile(r"\bissues? #?\d+|\b(the|this) issue\b|\bissue's\b|\bthis stop\b|\bsessions?\b|\bwave\b",
                       re.I)
    found = [m.group(0) for m in words.finditer(doc.read_text())]
    assert not found, f"{doc.name}: {found}"


def test_code_and_recipes_speak_only_of_the_project():
    """Comments and docstrings in the package, benchmarks, recipes and tests name no issue either."""
    words = re.compile(r"\bissues? #?\d+|\b(the|this) issue\b|\bissue's\b", re.I)
    files = [p for d in ("clamp", "benchmarks", "recipes", "tests") for p in (ROOT / d).rglob("*")
             if p.suffix in (".py", ".yaml", ".md") and p.name != "test_docs.py"]
    found = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in files for m in words.finditer(p.read_text())]
    assert not found, found


def verb_options() -> dict[str, set[str]]:
    from clamp.cli import COMMANDS
    from clamp.console import build_parser
    parser = build_parser(COMMANDS)
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {verb: {o for a in p._actions for o in a.option_strings if o.startswith("--") and o != "--help"}
            for verb, p in sub.choices.items()}


@pytest.mark.parametrize("doc", [ROOT / "README.md", ROOT / "docs" / "design.md"], ids=lambda p: p.name)
def test_each_verbs_command_line_lists_its_options(doc):
    """A doc's `clamp VERB ...` synopsis (a code span that starts with the verb and lists options) names
    every option of that verb, but the plug-in options said once for every verb."""
    common = {"--plugin", "--trust-plugins"}
    text = doc.read_text()
    seen = set()
    for verb, options in verb_options().items():
        for m in re.finditer(rf"`clamp {verb} [A-Z\[][^`]*`", text):
            span = m.group(0)
            if "[--" not in span:                    # `clamp run R` in a sentence is not a synopsis
                continue
            seen.add(verb)
            missing = sorted(o for o in options - common if not re.search(rf"{re.escape(o)}\b", span))
            assert not missing, f"{doc.name}: {span[:60]}... omits {missing}"
    assert {"run", "bench"} <= seen
