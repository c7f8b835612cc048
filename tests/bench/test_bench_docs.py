"""docs/api.md documents the benchmark modules, and every member it lists exists (a rename breaks this test
even where mkdocs is not installed; tests/test_docs.py builds the page with --strict where it is)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

API = Path(__file__).resolve().parents[2] / "docs" / "api.md"
BENCH_MODULES = ["rlavr.bench.runner", "rlavr.bench.replay", "rlavr.bench.smollm2", "rlavr.bench.tasks",
                 "rlavr.bench.report"]


def _entries() -> dict[str, list[str] | None]:
    """``::: module`` entries of api.md -> the ``members: [...]`` list under them (None when not given)."""
    out: dict[str, list[str] | None] = {}
    text = API.read_text(encoding="utf-8")
    for m in re.finditer(r"^::: (\S+)\n((?:    .*\n)*)", text, flags=re.M):
        members = re.search(r"members: \[(.*)\]", m.group(2))
        out[m.group(1)] = [x.strip() for x in members.group(1).split(",")] if members else None
    return out


@pytest.mark.parametrize("module", BENCH_MODULES)
def test_bench_module_is_in_the_api_reference(module: str) -> None:
    entries = _entries()
    assert module in entries, f"docs/api.md has no '::: {module}' entry"
    mod = importlib.import_module(module)
    missing = [name for name in entries[module] or [] if not hasattr(mod, name)]
    assert not missing, f"docs/api.md lists {missing} under {module}, which it does not define"


def test_arm_folder_names_are_documented_as_the_code_builds_them() -> None:
    """The slug scheme is kept (resume finds finished arms by it); docs/benchmarks.md shows it exactly."""
    import re
    from pathlib import Path

    from rlavr.bench.runner import ArmSpec

    text = (Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    section = text[text.index("**Arm folder names.**"):]
    pairs = re.findall(r"`([^`]+-seed\d)`\s+→\s+`([^`]+)`", section)
    assert len(pairs) >= 3
    for name, slug in pairs:
        arm, seed = name.rsplit("-seed", 1)
        strategy, budget = arm.split("@", 1)
        spec = ArmSpec(strategy=strategy, budget={"100%": "unlimited", "20%": 0.2, "<= 2/step": "2/step"}[budget],
                       seed=int(seed))
        assert spec.name == name and spec.slug == slug
