"""Repository hygiene: code and docs cite only the repository's own documents, and no ``# noqa`` is unused.

The design notes and specifications rlavr was built from are not part of the repository, so a citation such as
"care-spec §3.1", "cpu-feasibility §8" or "specs/other-strategies.md" sends a reader nowhere. Cite
``docs/design.md#<section>`` or ``docs/strategies/<rule>.md`` instead (or write the content itself when short).

Provenance tags defined on the strategy pages are *not* citations and stay allowed: **[CODE]** / **[PAPER]**
(CARE), **[V]** / **[R]** / **[D]** (verified / reconstruction / toolkit default, e.g. ``[D 16]`` = default 16),
and sections of public papers ("DE-Venus §4.3", "paper Eq. 7").
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("src", "docs", "examples", "benchmarks", "strategies", "tests", "README.md")
"""What users read (the package, its docs, the examples, the benchmark scripts, the example rules, the README)
and the tests, which document the behaviour too."""
SELF = Path(__file__).resolve()
"""This file holds the patterns and their examples."""
TEXT_SUFFIXES = {".py", ".md", ".yml", ".yaml", ".toml", ".txt", ".cfg", ".ini", ".sh", ".jinja", ".js", ".css"}

OUTSIDE_CITATIONS: list[tuple[str, re.Pattern[str]]] = [
    ("a specs/ folder", re.compile(r"\bspecs/")),
    ("a '<name>-spec' document", re.compile(r"\b[a-z]+-spec\b", re.IGNORECASE)),
    ("a section of 'the spec'", re.compile(r"\bspec\.?(?:md)?\s*§|\bspec\s+section\b", re.IGNORECASE)),
    ("'Spec:' pointing at a document", re.compile(r"\bSpec:\s")),
    ("cpu-feasibility notes", re.compile(r"cpu[-_ ]feasibility", re.IGNORECASE)),
    ("the TRL integration study", re.compile(r"\btrl-integration\b", re.IGNORECASE)),
    ("the design notes", re.compile(r"\bDESIGN\.md\b")),
    ("the strategy specs", re.compile(r"\bother-strategies(?:\.md)?\b|\blandscape\.md\b")),
    ("a bracket tag citing a spec section", re.compile(r"\[(?:CODE|PAPER|INFERRED|[A-Z])\s*§[^\]]*\]")),
    ("a '/work/shared' path", re.compile(r"/work/shared\b|\bshared/(?:specs|papers)\b")),
]
"""Each pattern names one way a file outside the repository has been cited; the label says which."""

PUBLIC_SOURCES = ("paper", "DE-Venus", "arXiv", "App.", "Appendix", "Eq.", "Algorithm")
"""A section sign right after one of these cites a public paper; any other ``§`` cites a document nobody has."""
_SECTION = re.compile(r"§")


def _scanned_files() -> list[Path]:
    out: list[Path] = []
    for name in SCANNED:
        path = ROOT / name
        if path.is_file():
            out.append(path)
        elif path.is_dir():
            out.extend(p for p in sorted(path.rglob("*"))
                       if p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts
                       and "start_models" not in p.parts and p.resolve() != SELF)
    return out


def find_outside_citations(text: str) -> list[tuple[int, str, str]]:
    """``(line number, what was cited, the line)`` for every citation of a document outside the repository."""
    hits: list[tuple[int, str, str]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        for label, pattern in OUTSIDE_CITATIONS:
            if pattern.search(line):
                hits.append((lineno, label, line.strip()))
                break
        else:
            if any(not any(s in line[max(0, m.start() - 30):m.start()] for s in PUBLIC_SOURCES)
                   for m in _SECTION.finditer(line)):
                hits.append((lineno, "a section (§) of an unnamed document", line.strip()))
    return hits


@pytest.mark.parametrize(("line", "cited"), [
    ("Clustering follows TTRL/CARE (care-spec §1.3): a single greedy pass", True),
    ("defaults: cpu-feasibility §8, 4 layers", True),
    ("Spec: ``specs/other-strategies.md`` §2.", True),
    ("label under group-normalised advantages (spec §1).", True),
    ("Pseudo-labels before labels exist [R, rlavr adaptation, spec §2.6]", True),
    ("# BN(d) -> Linear(d -> mid) -> act                           [CODE §4]", True),
    ("``accelerate launch`` starts one process (trl-integration §10.1)", True),
    ("Architecture notes: DESIGN.md", True),
    ("min_probes: fewest probes [D 32].", False),  # a provenance tag: toolkit default 32
    ("## Pipeline [V, DE-Venus §3.1.3]", False),  # a public paper's section
    ("re-implemented by the same group in DE-Venus (§3.1.3, §4.3).", False),
    ("CARE: Correction-Aware Reliability Estimation (paper §5, Algorithms 1-2).", False),
    ("AdamW with a linear warm-up (the §8 recipe).", True),
    ("(docs/design.md#grpo-advantages)", False),
    ("def load_strategy_class(spec: str) -> type[Strategy]:", False),
    ("spec = importlib.util.spec_from_file_location(name, path)", False),
    ("class ArmSpec:", False),
])
def test_the_citation_patterns(line: str, cited: bool) -> None:
    assert bool(find_outside_citations(line)) is cited, line


def test_no_citation_of_files_outside_the_repository() -> None:
    found = []
    for path in _scanned_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        found += [f"{path.relative_to(ROOT)}:{n}: [{label}] {line[:140]}" for n, label, line in
                  find_outside_citations(text)]
    assert not found, ("code or docs cite documents that are not in the repository; cite docs/design.md#<section> "
                       "or docs/strategies/<rule>.md instead, or write the content itself:\n" + "\n".join(found))


def _ruff() -> list[str] | None:
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    exe = shutil.which("ruff")
    return [exe] if exe else None


@pytest.mark.skipif(_ruff() is None, reason="ruff is not installed (pip install -e '.[dev]' installs it)")
def test_no_unused_noqa_directives() -> None:
    """A ``# noqa`` for a rule ruff does not run (N8xx, BLE, S, A, NPY: not selected in pyproject.toml), or for a
    violation that is not there, is noise: RUF100 reports both. Run with the project's own rule selection."""
    ruff = _ruff()
    assert ruff is not None
    targets = [t for t in ("src", "tests", "examples", "benchmarks", "strategies") if (ROOT / t).exists()]
    proc = subprocess.run([*ruff, "check", "--extend-select", "RUF100", "--output-format", "json", "--no-cache",
                           "--exit-zero", *targets], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"ruff failed to run:\n{proc.stderr[-2000:]}"
    unused = [d for d in json.loads(proc.stdout or "[]") if d.get("code") == "RUF100"]
    lines = sorted(f"{Path(d['filename']).resolve().relative_to(ROOT)}:{d['location']['row']}: {d['message']}"
                   for d in unused)
    assert not lines, "unused noqa directives (remove them):\n" + "\n".join(lines)


def _slug(heading: str) -> str:
    """The anchor Python-Markdown's ``toc`` extension gives a heading (its default ``slugify``)."""
    import unicodedata

    text = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)  # no headings in code
    return {_slug(m[1]) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.M)}


_DOC_LINK = re.compile(r"(?P<page>(?:\.\./|docs/)?(?:[\w-]+/)*[\w-]+\.md)#(?P<anchor>[\w.-]+)")


def test_cited_doc_sections_exist() -> None:
    """Every ``page.md#section`` cited in code, docs or tests names a heading that exists, so a citation of
    ``docs/design.md#drop-modes`` cannot silently rot when a heading is renamed."""
    docs = ROOT / "docs"
    broken = []
    for path in _scanned_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for m in _DOC_LINK.finditer(text):
            page = m["page"]
            if page.startswith("docs/"):
                target = ROOT / page
            elif docs in path.parents:
                target = (path.parent / page).resolve()
            else:
                target = docs / page
            if not target.is_file() or docs not in target.parents or target.name == "api.md":
                continue  # not a docs page, or the API page (its anchors are generated from the code)
            if m["anchor"].rstrip(".") not in _anchors(target):
                line = text.count("\n", 0, m.start()) + 1
                broken.append(f"{path.relative_to(ROOT)}:{line}: {m[0]} (no such heading in {target.name})")
    assert not broken, "citations of doc sections that do not exist:\n" + "\n".join(broken)
