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
        if len(cells) == 5 and cells[0]:
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

    monkeypatch.setattr(reg_mod.STRATEGIES, "entries", {**reg_mod.STRATEGIES.entries, "my-plugin": Plugin})
    rows = _rows(CliRunner().invoke(app, ["strategies"]).output)
    assert "my-plugin" in rows and Plugin.description in rows["my-plugin"]


def test_strategies_lists_the_aliases_in_their_strategy_row() -> None:
    rows = _rows(CliRunner().invoke(app, ["strategies"]).output)
    cells = {name: [c.strip() for c in line.strip().strip("│┃").split("│")] for name, line in rows.items()}
    assert "pivot-trace" in cells["pivottrace"][1] and "oracle-cag" in cells["oracle"][1]
    assert "pbc" in cells["uncertainty-consistency"][1] and "ground-truth" in cells["gt"][1]
    assert {"posneg", "weighted-grpo"} <= {a.strip() for a in cells["posneg-pairing"][1].split(",")}
    for name, cls in available().items():  # every alias is listed
        if name != cls.name.lower():
            assert name in cells[cls.name.lower()][1], name


def test_help_and_tables_are_not_truncated_when_piped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a terminal (CliRunner, a pipe): help is rendered wide, option names appear whole."""
    monkeypatch.delenv("TERMINAL_WIDTH", raising=False)
    monkeypatch.delenv("COLUMNS", raising=False)
    result = CliRunner().invoke(app, ["bench", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--prompts-per-step", "--num-generations", "--strategy-kwargs", "--log-features"):
        assert option in result.output
    assert "…" not in result.output
    assert "Distinct prompts per step (B). [default: 16]" in result.output  # one line, not wrapped
    replay_help = CliRunner().invoke(app, ["replay", "--help"]).output
    assert "--answer-space" in replay_help and "…" not in replay_help
    rows = CliRunner().invoke(app, ["strategies"]).output
    assert all(len(line) <= 250 for line in rows.splitlines())
    assert all("…" not in line for line in rows.splitlines())


def test_no_command_shows_help() -> None:
    result = CliRunner().invoke(app, [])
    assert "strategies" in result.output


# ------------------------------------------------------------------ rlavr ledger show / backup
def _ledger(path) -> None:  # type: ignore[no-untyped-def]
    from rlavr.ledger import LabelLedger
    from rlavr.oracles import DatasetOracle

    with LabelLedger(path, run_id="r1") as led:
        led.record_step(0, 4)
        led.purchase(["a", "b"], ["q", "q"], DatasetOracle({"a": "1", "b": "2"}), 2, step=0, position=0)
        # a reservation of this run's killed attempt: charged at step 0, never delivered
        led._conn.execute("INSERT INTO labels VALUES ('c', NULL, 'pending', 0, 'killed#1#x', 0.0)")
        led._conn.execute("INSERT INTO label_steps VALUES ('c', 'r1', 0)")
        led.check_fingerprint({**DatasetOracle({"a": "1", "b": "2"}).fingerprint(), "answer_space": "exact"})


def test_ledger_show_prints_labels_spend_per_step_and_fingerprint(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    path = tmp_path / "l.sqlite"
    _ledger(path)
    result = CliRunner().invoke(app, ["ledger", "show", str(path)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "2 bought, 1 pending, 3 charged" in out and "answer_space=exact" in out and "integrity: ok" in out
    assert "spend per step" in out and "killed#1#x" in out
    as_json = CliRunner().invoke(app, ["ledger", "show", str(path), "--json"])
    assert as_json.exit_code == 0, as_json.output
    info = json.loads(as_json.output)
    assert info["labels_charged"] == 3
    assert info["by_step"] == [{"run_id": "r1", "step": 0, "prompts": 4, "bought": 2, "pending": 1}]
    assert info["fingerprint"]["answer_space"] == "exact" and info["pending"][0]["prompt_id"] == "c"


def test_ledger_backup_copies_a_live_ledger_and_never_overwrites(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from rlavr.ledger import LabelLedger
    from rlavr.oracles import DatasetOracle

    src = tmp_path / "live.sqlite"
    live = LabelLedger(src)  # kept open: its labels are in live.sqlite-wal
    live.purchase(["a", "b", "c"], ["q"] * 3, DatasetOracle({"a": "1", "b": "2", "c": "3"}), 3, step=0)
    result = CliRunner().invoke(app, ["ledger", "backup", str(src), str(tmp_path / "b.sqlite")])
    assert result.exit_code == 0, result.output
    assert "3 labels bought" in result.output
    with LabelLedger(tmp_path / "b.sqlite") as copy:
        assert copy.items() == live.items()
    again = CliRunner().invoke(app, ["ledger", "backup", str(src), str(tmp_path / "b.sqlite")])
    assert again.exit_code == 1 and "already exists" in again.output
    live.close()


def test_ledger_commands_name_the_file_of_a_damaged_ledger(tmp_path) -> None:  # type: ignore[no-untyped-def]
    empty, garbage = tmp_path / "empty.sqlite", tmp_path / "garbage.sqlite"
    empty.write_bytes(b"")
    garbage.write_bytes(b"x" * 5000)
    for args in (["show", str(empty)], ["backup", str(empty), str(tmp_path / "o.sqlite")], ["show", str(garbage)],
                 ["show", str(tmp_path / "absent.sqlite")]):
        result = CliRunner().invoke(app, ["ledger", *args])
        assert result.exit_code == 1 and args[1] in result.output and "error:" in result.output, result.output
        assert not (tmp_path / "o.sqlite").exists() and not (tmp_path / "absent.sqlite").exists()
