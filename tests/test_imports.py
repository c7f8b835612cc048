"""No import cycle inside ``src/rlavr``.

The graph is read from the source with :mod:`ast`, not by importing: every ``import`` / ``from ... import``
statement of every module, also those inside functions (a lazy import still closes a cycle the first time it
runs), except those under ``if TYPE_CHECKING:`` (never executed). Only rlavr-internal imports are edges:

* ``import rlavr.a.b`` and ``from rlavr.a import b`` point at the module ``rlavr.a.b`` when that is a module,
  ``from rlavr.a import name`` at ``rlavr.a`` otherwise; a package is its ``__init__``;
* importing ``rlavr.a.b`` also runs ``rlavr/a/__init__.py`` first, so it is an edge to ``rlavr.a`` as well,
  except when ``rlavr.a`` contains the importing module (it is initialised before any of its modules runs).
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_names(root: Path, package: str) -> dict[str, Path]:
    """``module name -> file`` for every ``.py`` file of ``root/package`` (a package's name is its ``__init__``)."""
    out: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree`` (nested ones included), skipping the bodies of ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _containing(module: str, modules: dict[str, Path]) -> str:
    """The longest prefix of ``module`` that is a module of the graph."""
    parts = module.split(".")
    while parts and ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path, package: str) -> dict[str, dict[str, int]]:
    """``importer -> {imported module: line of the first such import}`` over the modules of ``root/package``."""
    modules = _module_names(root, package)
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        here = name if is_package else name.rpartition(".")[0]  # the package relative imports start from
        own_packages = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1 + is_package)}
        edges: dict[str, int] = {}
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                if target.split(".")[0] != package:
                    continue
                resolved = _containing(target, modules)
                parts = resolved.split(".")
                # the packages on the way are initialised first (their __init__ runs), unless they hold the importer
                for i in range(1, len(parts) + 1):
                    step = ".".join(parts[:i])
                    if step != resolved and step in own_packages:
                        continue
                    if step != name and step in modules:
                        edges.setdefault(step, node.lineno)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, {})):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [_a_cycle(graph, set(comp), comp[0]) for comp in components]


def _a_cycle(graph: dict[str, dict[str, int]], comp: set[str], start: str) -> list[str]:
    """A shortest cycle through ``start`` inside the component ``comp`` (breadth-first)."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w not in comp:
                    continue
                if w == start:
                    chain = [v]
                    while chain[-1] != start:
                        chain.append(parent[chain[-1]])
                    return [*reversed(chain), start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover


def _describe(graph: dict[str, dict[str, int]], root: Path, cycle: list[str]) -> str:
    steps = []
    for a, b in zip(cycle, cycle[1:], strict=False):
        path = root.joinpath(*a.split("."))
        file = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        steps.append(f"  {a} -> {b}  ({file.relative_to(root)}:{graph[a][b]})")
    return "\n".join(steps)


def test_no_import_cycle_in_rlavr() -> None:
    graph = import_graph(SRC, "rlavr")
    assert "rlavr.engine" in graph and graph["rlavr.types"], "the walker found no modules or no imports"
    cycles = find_cycles(graph)
    report = "\n\n".join(f"cycle {' -> '.join(c)}:\n{_describe(graph, SRC, c)}" for c in cycles)
    assert not cycles, f"{len(cycles)} import cycle(s) in src/rlavr:\n\n{report}"


# ------------------------------------------------------------------ the walker itself


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return tmp_path


def test_walker_finds_a_cycle_through_a_lazy_import_and_names_the_lines(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from pkg.b import f\n",
        "b.py": "import os\n\ndef f():\n    from pkg import a\n    return a\n",
    })
    graph = import_graph(root, "pkg")
    assert graph["pkg.a"] == {"pkg.b": 1} and graph["pkg.b"] == {"pkg.a": 4}
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]
    assert "pkg/b.py:4" in _describe(graph, root, ["pkg.b", "pkg.a", "pkg.b"])


def test_walker_skips_type_checking_and_resolves_names_relative_and_packages(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "__init__.py": "from pkg.sub import thing\n",
        "sub/__init__.py": "from .mod import thing\nfrom . import other\n",
        "sub/mod.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub import other\n"
                      "else:\n    import json\nthing = 1\n",
        "sub/other.py": "from ..sub.mod import thing\nimport pkg.sub.mod\n",
        "user.py": "from pkg.sub.mod import thing\n",
    })
    graph = import_graph(root, "pkg")
    assert graph["pkg.sub.mod"] == {}  # only under TYPE_CHECKING
    assert graph["pkg"] == {"pkg.sub": 1}  # a name of the package pkg.sub: its __init__
    assert graph["pkg.sub"] == {"pkg.sub.mod": 1, "pkg.sub.other": 2}
    assert graph["pkg.sub.other"] == {"pkg.sub.mod": 1}  # its own package pkg.sub is initialised already
    assert graph["pkg.user"] == {"pkg.sub": 1, "pkg.sub.mod": 1}  # importing pkg.sub.mod runs pkg/sub/__init__
    assert find_cycles(graph) == []


def test_a_package_init_importing_a_module_that_imports_the_package_back_is_a_cycle(tmp_path: Path) -> None:
    """``pkg.engine`` importing ``pkg.rules.base`` runs ``pkg/rules/__init__``, which imports a rule importing
    ``pkg.engine``: a real cycle although no file imports ``pkg.rules`` by that name."""
    root = _package(tmp_path, {
        "__init__.py": "",
        "engine.py": "from pkg.rules.base import Rule\n",
        "rules/__init__.py": "from pkg.rules import pool\n",
        "rules/base.py": "class Rule: ...\n",
        "rules/pool.py": "from pkg.rules.base import Rule\n\ndef fit():\n    from pkg.engine import x\n",
    })
    cycles = find_cycles(import_graph(root, "pkg"))
    assert cycles == [["pkg.engine", "pkg.rules", "pkg.rules.pool", "pkg.engine"]]
