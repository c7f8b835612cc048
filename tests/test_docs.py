"""The documentation: builds offline with ``mkdocs build --strict``, covers every strategy and CLI command, and its
examples and numbers are the code's.

Convention: fenced blocks tagged ``python`` in every page under ``docs/`` (strategy pages included) are complete,
runnable examples and are executed here, each in a fresh namespace, in a temporary working directory, with the
strategy registry restored afterwards. Snippets that need a model, a dataset or a trained run are tagged ``py``
(highlighted the same, not executed). A runnable example that needs a GPU is marked GPU-only by the HTML comment
``<!-- gpu-only -->`` on the line directly before its opening fence (invisible in the rendered page)::

    <!-- gpu-only -->
    ```python
    care = get_strategy("care", device="cuda")
    ```

It runs when ``torch.cuda.is_available()`` and is skipped otherwise. Examples must stay fast (no training):
the whole set runs in seconds on a CPU.
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
    """The CLI page (built HTML or its Markdown source) documents every command and long option of the Typer app."""
    import typer.main

    from rlavr.cli import app

    root = typer.main.get_command(app)
    for opt in (o for p in root.params for o in p.opts):
        assert opt in html, f"the CLI page does not document the global option {opt}"
    def check(group, prefix: str) -> None:  # type: ignore[no-untyped-def]
        for name, cmd in group.commands.items():
            anchor = f"{prefix}-{name}"
            heading = f"## {prefix.replace('-', ' ')} {name}\n"  # the Markdown source (docs/cli.md)
            assert f'id="{anchor}"' in html or heading in html, \
                f"the CLI page has no section for '{anchor.replace('-', ' ')}'"
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


def test_every_alias_is_listed_in_the_strategy_index() -> None:
    index = (DOCS / "strategies" / "index.md").read_text(encoding="utf-8")
    aliases = sorted(n for n, cls in available().items() if n != cls.name.lower())
    assert aliases, "expected built-in aliases (pbc, oracle-cag, pivot-trace, ...)"
    missing = [n for n in aliases if f"`{n}`" not in index]
    assert not missing, f"docs/strategies/index.md does not list the aliases: {missing}"


def test_cli_reference_is_written_in_the_page_and_up_to_date() -> None:
    """docs/cli.md holds the generated reference itself (readable as Markdown) and it matches the command: this
    fails when an option changes until `PYTHONPATH=src python docs/_hooks/cli_reference.py` is run."""
    import importlib.util as iu

    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert "docs/_hooks/cli_reference.py" in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    spec = iu.spec_from_file_location("cli_reference_hook", DOCS / "_hooks" / "cli_reference.py")
    assert spec and spec.loader
    hook = iu.module_from_spec(spec)
    spec.loader.exec_module(hook)
    assert hook.START in text and hook.END in text, "docs/cli.md has no generated CLI reference region"
    assert hook.render(text) == text, ("docs/cli.md's CLI reference is out of date: run "
                                       "PYTHONPATH=src python docs/_hooks/cli_reference.py")
    _check_cli_page(text)  # every command and long option, in the Markdown source itself
    md = hook.on_page_markdown("intro\n<!-- rlavr-cli-reference -->\n", None, None, None)
    assert "## rlavr strategies" in md and "`--verbose`, `-v`" in md and hook.START in md


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


def test_posneg_pairing_bands_in_the_docs_match_the_code() -> None:
    """The band table is computed with the training rollout count G (the pool batch's G), as the code probes."""
    from rlavr.strategies.posneg_pairing import success_bands

    text = (DOCS / "strategies" / "posneg_pairing.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d+) \| (\d+) \| \$\[([\d.]+), ([\d.]+)\]\$ \| \$\[([\d.]+), ([\d.]+)\]\$ \|$", text,
                      flags=re.M)
    assert {int(r[0]) for r in rows} >= {8, 16}, rows
    assert "G_p = 16" not in text  # rlavr has no separate probing rollout count
    for G, c_eff, *bounds in rows:
        (plo, phi), (nlo, nhi) = success_bands(int(G), 3)
        assert int(c_eff) == phi
        assert [float(b) for b in bounds] == pytest.approx([plo / int(G), phi / int(G), nlo / int(G), nhi / int(G)])


GPU_ONLY = "<!-- gpu-only -->"
_BLOCK = re.compile(r"^(?P<marker><!-- gpu-only -->[ \t]*\n)?```python\n(?P<code>.*?)^```", flags=re.M | re.S)


def _python_blocks(path: Path) -> list[tuple[str, bool]]:
    """``(code, gpu_only)`` of every fenced ``python`` block of a page."""
    return [(m["code"], m["marker"] is not None) for m in _BLOCK.finditer(path.read_text(encoding="utf-8"))]


PAGES = sorted(DOCS.rglob("*.md"))
DOC_EXAMPLES = [(p, i, code, gpu) for p in PAGES for i, (code, gpu) in enumerate(_python_blocks(p))]


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@pytest.mark.parametrize(("path", "index", "code", "gpu_only"), DOC_EXAMPLES,
                         ids=[f"{p.relative_to(DOCS)}#{i}" for p, i, _, _ in DOC_EXAMPLES])
def test_python_examples_in_docs_run(path: Path, index: int, code: str, gpu_only: bool, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    if gpu_only and not _cuda():
        pytest.skip(f"{path.name}#{index} is marked {GPU_ONLY} and CUDA is not available")
    from rlavr.strategies import registry

    available()  # built-ins and entry points loaded, then a private copy: examples may register rules
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{path.name}#{index}", "exec"), {"__name__": "__docs__"})


def test_every_page_with_examples_is_run() -> None:
    """No page is exempt: every ``python`` block of every page is collected (GPU-only ones included)."""
    with_blocks = {str(p.relative_to(DOCS)) for p in PAGES if "```python" in p.read_text(encoding="utf-8")}
    collected = {str(p.relative_to(DOCS)) for p, _, _, _ in DOC_EXAMPLES}
    assert with_blocks == collected
    assert {f"strategies/{n}.md" for n in ("care", "pivottrace", "posneg_pairing", "uncertainty_consistency")} <= (
        collected)


def test_gpu_only_marker_is_parsed() -> None:
    text = "a\n<!-- gpu-only -->\n```python\nx = 1\n```\n\n```python\ny = 2\n```\n"
    found = [(m["code"], m["marker"] is not None) for m in _BLOCK.finditer(text)]
    assert found == [("x = 1\n", True), ("y = 2\n", False)]


_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")  # every C0 control byte but newline (tab and CR too), and DEL


@pytest.mark.parametrize("path", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_docs_hold_no_control_bytes(path: Path) -> None:
    """No carriage return, tab or other control byte (e.g. ``\\rfloor`` written through a string escape)."""
    text = path.read_bytes().decode("utf-8")  # not read_text: its universal newlines would hide a carriage return
    for n, line in enumerate(text.split("\n"), 1):
        m = _CONTROL.search(line)
        assert m is None, f"{path.relative_to(DOCS)}:{n}: control byte {m.group()!r} in {line!r}"


def test_docs_have_runnable_examples() -> None:
    assert {p.name for p, _, _, _ in DOC_EXAMPLES} >= {"index.md", "writing-a-rule.md", "reliability.md"}


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


def test_default_budgets_of_engine_and_trainer_are_documented_as_the_code_has_them() -> None:
    import dataclasses
    import inspect

    from rlavr.engine import AcquisitionEngine
    from rlavr.trl.config import RLAVRConfig

    engine_default = inspect.signature(AcquisitionEngine).parameters["budget"].default
    trainer_default = {f.name: f.default for f in dataclasses.fields(RLAVRConfig)}["budget"]
    assert engine_default is None and trainer_default == 0.2
    text = " ".join((DOCS / "concepts.md").read_text(encoding="utf-8").split())
    assert "`RLAVRConfig.budget`) defaults to `0.2`" in text and "defaults to **unlimited**" in text
    assert "**unlimited**" in " ".join((AcquisitionEngine.__doc__ or "").split())
    assert "`1` is *one label for the whole run*" in text
