"""The documentation: builds offline with ``mkdocs build --strict``, covers every strategy and CLI command, and its
examples and numbers are the code's.

Convention: fenced blocks tagged ``python`` in ``docs/*.md`` are complete, runnable examples and are executed
here; snippets that need a model, a dataset or a GPU are tagged ``py`` (highlighted the same, not executed).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlavr.advantages import classwise_cag_table
from rlavr.strategies import available

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _nav_pages(nav: list) -> list[str]:
    out: list[str] = []
    for item in nav:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            for v in item.values():
                out.extend(_nav_pages(v) if isinstance(v, list) else [v])
    return out


def _mkdocs_config() -> dict:
    class Loader(yaml.SafeLoader):
        pass

    # mkdocs.yml may use !!python/name tags (pymdownx); ignore them, we only read the nav
    Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)
    return yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=Loader)


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
                    reason="mkdocs / mkdocstrings not installed (pip install -e '.[dev]' installs them)")
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert (tmp_path / "site" / "api" / "index.html").exists()
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    assert "AcquisitionEngine" in api and "oracle_timeout" in api, "the API page is not generated from docstrings"
    _check_cli_page((tmp_path / "site" / "cli" / "index.html").read_text(encoding="utf-8"))


def _check_cli_page(html: str) -> None:
    """The built CLI page documents every command and every long option of the Typer app."""
    import typer.main

    from rlavr.cli import app

    root = typer.main.get_command(app)
    for opt in (o for p in root.params for o in p.opts):
        assert opt in html, f"the CLI page does not document the global option {opt}"
    def check(group, prefix: str) -> None:  # type: ignore[no-untyped-def]
        for name, cmd in group.commands.items():
            anchor = f"{prefix}-{name}"
            assert f'id="{anchor}"' in html, f"the CLI page has no section for '{anchor.replace('-', ' ')}'"
            for opt in (o for p in cmd.params for o in getattr(p, "opts", []) if o.startswith("--")):
                assert opt in html, f"the CLI page does not document option {opt} of '{anchor.replace('-', ' ')}'"
            if hasattr(cmd, "commands"):  # a command group (rlavr ledger): its subcommands too
                check(cmd, anchor)

    check(root, "rlavr")


def test_nav_lists_every_page_and_only_existing_ones() -> None:
    nav = _nav_pages(_mkdocs_config()["nav"])
    missing = [p for p in nav if not (DOCS / p).is_file()]
    assert not missing, f"mkdocs.yml nav lists pages that do not exist: {missing}"
    twice = sorted({p for p in nav if nav.count(p) > 1})
    assert not twice, f"mkdocs.yml nav lists pages more than once: {twice}"
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    orphans = [p for p in pages if p not in nav]
    assert not orphans, f"docs pages missing from the nav in mkdocs.yml (add them): {orphans}"


def test_every_registered_strategy_is_documented() -> None:
    index = (DOCS / "strategies" / "index.md").read_text(encoding="utf-8")
    names = {cls.name for cls in available().values()}
    missing = sorted(n for n in names if f"`{n}`" not in index)
    assert not missing, f"docs/strategies/index.md does not mention: {missing}"


def test_cli_reference_is_generated_at_build_time() -> None:
    """docs/cli.md carries the marker the mkdocs hook replaces; the hook renders every command (checked on the
    built page by test_mkdocs_build_strict)."""
    import importlib.util as iu

    assert "<!-- rlavr-cli-reference -->" in (DOCS / "cli.md").read_text(encoding="utf-8")
    assert "docs/_hooks/cli_reference.py" in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    spec = iu.spec_from_file_location("cli_reference_hook", DOCS / "_hooks" / "cli_reference.py")
    assert spec and spec.loader
    hook = iu.module_from_spec(spec)
    spec.loader.exec_module(hook)
    md = hook.on_page_markdown("intro\n<!-- rlavr-cli-reference -->\n", None, None, None)
    assert "## rlavr strategies" in md and "`--verbose`, `-v`" in md and "<!--" not in md


def test_cag_table_in_concepts_matches_the_code() -> None:
    text = (DOCS / "concepts.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d) \| (.+) \|$", text, flags=re.M)
    assert len(rows) == 9, "the G = 8 class-wise CAG table should have rows x = 0..8"
    table = classwise_cag_table(8)
    for x_str, cells in rows:
        x = int(x_str)
        for y, cell in enumerate(c.strip() for c in cells.split("|")):
            expected = table[x, y]
            if cell == "–":  # inadmissible class
                assert (y > x or x + y > 8) and expected == 0.0, (x, y)
            else:
                assert float(cell) == pytest.approx(expected, abs=5e-4), (x, y)


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(encoding="utf-8"), flags=re.M | re.S)


# pages written to this convention (strategy pages by other authors may show non-runnable ``python`` snippets)
RUNNABLE_PAGES = ["index.md", "concepts.md", "writing-a-rule.md", "reliability.md", "cli.md", "api.md",
                  *(f"strategies/{n}.md" for n in ("index", "gt", "ttrl", "random", "entropy", "prob", "oracle"))]
DOC_EXAMPLES = [(DOCS / p, i, code) for p in RUNNABLE_PAGES for i, code in enumerate(_python_blocks(DOCS / p))]


@pytest.mark.parametrize(("path", "index", "code"), DOC_EXAMPLES,
                         ids=[f"{p.relative_to(DOCS)}#{i}" for p, i, _ in DOC_EXAMPLES])
def test_python_examples_in_docs_run(path: Path, index: int, code: str, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{path.name}#{index}", "exec"), {"__name__": "__docs__"})


def test_docs_have_runnable_examples() -> None:
    assert {p.name for p, _, _ in DOC_EXAMPLES} >= {"index.md", "writing-a-rule.md", "reliability.md"}


def test_security_warning_about_loading_by_path() -> None:
    for page in ("writing-a-rule.md", "reliability.md"):
        assert "Loading a strategy by path executes code" in (DOCS / page).read_text(encoding="utf-8"), page


def test_readme_keeps_the_two_commands_on_top_and_links_the_docs() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "```bash" and "rlavr bench" in lines[1] and "pytest" in lines[2] and lines[3] == "```"
    readme = "\n".join(lines)
    for page in ("docs/concepts.md", "docs/writing-a-rule.md", "docs/reliability.md"):
        assert page in readme, f"README does not link {page}"
    quick = readme.split("## Quick start", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    assert len(quick.strip().splitlines()) <= 5, "the README quick start is meant to be 5 lines"


def test_readme_quick_start_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    code = readme.split("## Quick start", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md quick start", "exec"), {"__name__": "__readme__"})
