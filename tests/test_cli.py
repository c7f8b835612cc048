"""``rlavr strategies`` lists every registered strategy with its description."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from rlavr.cli import app
from rlavr.strategies import available
from rlavr.strategies import registry as reg_mod
from rlavr.strategies.entropy import Entropy


def _rows(output: str) -> dict[str, str]:
    """Table rows keyed by the first cell."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if len(cells) == 4 and cells[0]:
            rows[cells[0]] = line
    return rows


def test_strategies_lists_every_builtin_with_its_description() -> None:
    result = CliRunner().invoke(app, ["strategies"])
    assert result.exit_code == 0, result.output
    rows = _rows(result.output)
    for name, cls in available().items():
        if name != cls.name.lower():
            assert name not in rows, f"alias {name!r} listed as its own row"
            continue
        assert name in rows, f"{name!r} missing from `rlavr strategies`"
        assert cls.description and cls.description in rows[name]
    for builtin in ("gt", "ttrl", "ttrl-mask", "random", "entropy", "prob", "oracle", "oracle-decay"):
        assert builtin in rows
    assert "yes" in rows["entropy"] and "yes" not in rows["gt"]  # the -mask column
    assert "labels" in rows["oracle"] and "logprobs" in rows["prob"]


def test_entry_point_strategy_under_another_name_is_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    class Plugin(Entropy):
        name = "PluginRule"
        description = "an installed plugin with a mixed-case name"

    monkeypatch.setattr(reg_mod, "_REGISTRY", {**reg_mod._REGISTRY, "my-plugin": Plugin})
    rows = _rows(CliRunner().invoke(app, ["strategies"]).output)
    assert "my-plugin" in rows and Plugin.description in rows["my-plugin"]


def test_no_command_shows_help() -> None:
    result = CliRunner().invoke(app, [])
    assert "strategies" in result.output
