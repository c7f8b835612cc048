"""Strategy registry: decorator, names, '-mask', file paths and the ``rlavr.strategies`` entry-point group."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import numpy as np
import pytest

import rlavr.registry
from rlavr.budget import BudgetView
from rlavr.strategies import Strategy, available, get_strategy, load_strategy_class, register
from rlavr.strategies import registry as reg_mod
from rlavr.strategies.entropy import Entropy
from rlavr.types import Acquisition, RolloutBatch

BUILTINS = {"gt", "ground-truth", "ttrl", "ttrl-mask", "random", "entropy", "prob", "oracle", "oracle-cag",
            "oracle-decay"}


@pytest.fixture
def clean_registry(monkeypatch: pytest.MonkeyPatch) -> dict:
    """A private copy of the registry, so test registrations do not leak into other tests."""
    available()  # make sure built-ins and entry points are loaded first
    copy = dict(reg_mod.STRATEGIES.entries)
    monkeypatch.setattr(reg_mod.STRATEGIES, "entries", copy)
    return copy


class _Base(Strategy):
    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        return self.route_by_score(np.zeros(batch.B), budget)


def test_builtins_are_registered() -> None:
    assert set(available()) >= BUILTINS
    assert available()["ground-truth"] is available()["gt"]
    assert available()["oracle-cag"] is available()["oracle"]


def test_decorator_aliases_and_duplicates(clean_registry: dict) -> None:
    @register(aliases=("My-Alias",))
    class Mine(_Base):
        name = "Test-Mine"
        description = "test"

    assert clean_registry["test-mine"] is Mine and clean_registry["my-alias"] is Mine
    assert isinstance(get_strategy("TEST-MINE"), Mine) and isinstance(get_strategy("my-alias"), Mine)
    register(Mine)  # re-registering the same class is a no-op

    with pytest.raises(ValueError, match="'test-mine' is already taken by .*Mine"):
        @register
        class Other(_Base):
            name = "test-mine"


@pytest.mark.parametrize(("body", "match"), [
    ("name = ''", "needs a class attribute `name`"),
    ("name = 'x'\n    requires = frozenset({'gpu'})", r"requires unknown signals \['gpu'\]"),
    ("name = 'x'\n    requires = 'answers'", "requires must be a set"),
])
def test_decorator_rejects_bad_classes(clean_registry: dict, body: str, match: str) -> None:
    ns: dict = {"_Base": _Base}
    exec(f"class Bad(_Base):\n    {body}\n", ns)
    with pytest.raises(ValueError, match=match):
        register(ns["Bad"])


def test_bad_class_specs(clean_registry: dict) -> None:
    class NoSelect(Strategy):
        name = "no-select"

    class Plain:  # not a Strategy and missing hooks
        name = "plain"

        def select(self, batch, budget):  # type: ignore[no-untyped-def]
            return None

    with pytest.raises(ValueError, match="does not implement select"):
        register(NoSelect)
    with pytest.raises(ValueError, match=r"not a Strategy subclass and lacks \['update', 'state_dict'"):
        register(Plain)
    with pytest.raises(ValueError, match="expected a class"):
        register(Entropy())  # type: ignore[arg-type]


def test_mask_suffix_and_instances() -> None:
    s = get_strategy("entropy-mask", seed=2)
    assert isinstance(s, Entropy) and s.mask and s.seed == 2 and s.display_name == "entropy-mask"
    with pytest.raises(ValueError, match="conflicts with mask=False"):
        get_strategy("entropy-mask", mask=False)
    with pytest.raises(ValueError, match="'gt' has no '-mask' form; strategies with one: .*entropy"):
        get_strategy("ground-truth-mask")
    with pytest.raises(ValueError, match=r"TTRL: has no '-mask' form \(mask=True given\)"):
        get_strategy("ttrl", mask=True)
    inst = Entropy()
    assert get_strategy(inst) is inst
    with pytest.raises(ValueError, match="keyword arguments"):
        get_strategy(inst, seed=1)
    by_class = get_strategy(Entropy, mask=True)
    assert isinstance(by_class, Entropy) and by_class.mask


def test_unknown_names_and_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"unknown strategy 'rando'\. Did you mean 'random'"):
        get_strategy("rando")
    with pytest.raises(ValueError, match="unknown strategy 'zzz'.*Known: .*entropy"):
        get_strategy("zzz")
    with pytest.raises(ValueError, match=r"strategy 'entropy': bad arguments \['temperature'\].*Signature: Entropy"):
        get_strategy("entropy", temperature=2)
    with pytest.raises(ValueError, match="expected a name"):
        get_strategy("  ")
    with pytest.raises(ValueError, match="expected a name"):
        get_strategy(3)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------- paths


RULE = textwrap.dedent('''
    import numpy as np
    from rlavr.strategies import Strategy

    class ShortFirst(Strategy):
        name = "short-first"
        description = "query the shortest completions first"
        supports_mask = True

        def select(self, batch, budget):
            return self.route_by_score(-batch.lengths.mean(axis=1).astype(float), budget)

    NOT_A_CLASS = 3
''')


def test_load_from_path(tmp_path: Path) -> None:
    f = tmp_path / "my_rule.py"
    f.write_text(RULE)
    s = get_strategy(f"{f}:ShortFirst", mask=True)
    assert type(s).__name__ == "ShortFirst" and s.mask
    assert load_strategy_class(f"{f}:ShortFirst") is type(s)  # module cached, class identical
    with pytest.raises(ValueError, match=r"defines no 'Missing' \(strategy classes found: \['ShortFirst'\]\)"):
        load_strategy_class(f"{f}:Missing")
    with pytest.raises(ValueError, match="expected a class"):
        load_strategy_class(f"{f}:NOT_A_CLASS")
    with pytest.raises(ValueError, match="does not exist"):
        get_strategy(f"{tmp_path / 'nope.py'}:X")
    (tmp_path / "rule.txt").write_text(RULE)
    with pytest.raises(ValueError, match="is not a .py file"):
        load_strategy_class(f"{tmp_path / 'rule.txt'}:ShortFirst")
    with pytest.raises(ValueError, match="expected 'path/to/file.py:ClassName'"):
        load_strategy_class(f"{f}")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom at import')\n")
    with pytest.raises(RuntimeError, match="boom at import"):
        load_strategy_class(f"{broken}:X")


# ----------------------------------------------------------------------------------------------- entry points


class _EP:
    def __init__(self, name: str, value: str, obj: object) -> None:
        self.name, self.value, self._obj = name, value, obj

    def load(self) -> object:
        if isinstance(self._obj, Exception):
            raise self._obj
        return self._obj


class PluginRule(_Base):
    name = "plugin-rule"
    description = "from an installed package"
    supports_mask = True


def test_entry_points_are_loaded(monkeypatch: pytest.MonkeyPatch, clean_registry: dict,
                                 caplog: pytest.LogCaptureFixture) -> None:
    seen_groups = []

    def fake_entry_points(group: str) -> list[_EP]:
        seen_groups.append(group)
        return [
            _EP("plugin-rule", "pkg.rules:PluginRule", PluginRule),
            _EP("plugin-alias", "pkg.rules:PluginRule", PluginRule),
            _EP("broken", "pkg.rules:Broken", ImportError("no module named pkg")),
            _EP("not-a-class", "pkg.rules:VALUE", 42),
            _EP("entropy", "pkg.rules:Fake", PluginRule),  # collides with a built-in: ignored with a warning
        ]

    monkeypatch.setattr(rlavr.registry, "entry_points", fake_entry_points)
    monkeypatch.setattr(reg_mod.STRATEGIES, "entry_points_loaded", False)
    with caplog.at_level(logging.WARNING, logger="rlavr.strategies.registry"):
        names = available()
    assert seen_groups == ["rlavr.strategies"]
    assert names["plugin-rule"] is PluginRule and names["plugin-alias"] is PluginRule
    assert names["entropy"] is Entropy
    assert "broken" not in names and "not-a-class" not in names
    assert "could not load strategy entry point 'broken'" in caplog.text
    assert "'entropy' (pkg.rules:Fake) ignored" in caplog.text
    assert isinstance(get_strategy("plugin-rule-mask"), PluginRule)
    available()
    assert seen_groups == ["rlavr.strategies"]  # loaded once


def test_mask_form_only_when_declared(clean_registry: dict) -> None:
    """A rule that does not declare ``supports_mask = True`` has no '-mask' form: the registry refuses the name,
    the constructor refuses mask=True, ``rlavr strategies`` leaves the column empty (the default is False, so a
    rule that ignores self.mask is never advertised as having one)."""
    from typer.testing import CliRunner

    from rlavr.cli import app

    assert Strategy.supports_mask is False

    @register
    class Undeclared(_Base):
        name = "undeclared-rule"
        description = "does not say whether it honours self.mask"

    @register
    class Declared(_Base):
        name = "declared-rule"
        description = "honours self.mask through route_by_score"
        supports_mask = True

    with pytest.raises(ValueError, match=r"'undeclared-rule' has no '-mask' form.*supports_mask = True"):
        get_strategy("undeclared-rule-mask")
    with pytest.raises(ValueError, match="has no '-mask' form.*supports_mask = True"):
        Undeclared(mask=True)
    assert get_strategy("declared-rule-mask").mask
    out = CliRunner().invoke(app, ["strategies"]).output
    row = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") >= 4}
    assert "yes" in row["declared-rule"] and "yes" not in row["undeclared-rule"]
    for name in ("random", "entropy", "prob", "oracle", "care", "pivottrace"):
        assert available()[name].supports_mask is True, name
    for name in ("gt", "ttrl", "ttrl-mask", "oracle-decay", "posneg-pairing", "uncertainty-consistency"):
        assert available()[name].supports_mask is False, name


def test_register_at_run_time_like_a_notebook(clean_registry: dict) -> None:
    """``from rlavr import register``: a rule defined at run time is usable by name; running the defining cell
    again (a new class object, same module and qualified name) replaces it instead of raising."""
    import rlavr

    assert rlavr.register is register and "register" in rlavr.__all__
    namespace: dict = {"__name__": "__notebook__"}
    cell = textwrap.dedent('''
        import numpy as np
        from rlavr import register
        from rlavr.strategies import Strategy

        class CellRule(Strategy):
            name = "cell-rule"
            supports_mask = True

            def select(self, batch, budget):
                return self.route_by_score(np.zeros(batch.B), budget)

        register(CellRule)
    ''')
    exec(cell, namespace)
    first = namespace["CellRule"]
    assert type(get_strategy("cell-rule")) is first and get_strategy("cell-rule-mask").mask
    exec(cell, namespace)  # the cell run again
    assert namespace["CellRule"] is not first and type(get_strategy("cell-rule")) is namespace["CellRule"]

    class CellRule(_Base):  # another class (another module) under the same name: still refused
        name = "cell-rule"

    with pytest.raises(ValueError, match="'cell-rule' is already taken"):
        register(CellRule)


def test_default_seed_fills_only_a_missing_seed():
    from rlavr.strategies.registry import get_strategy

    assert get_strategy("random", default_seed=5).seed == 5
    assert get_strategy("random", default_seed=5, seed=2).seed == 2
    assert get_strategy("random-mask", default_seed=3).seed == 3
    assert get_strategy("random").seed == 0
    inst = get_strategy("random", seed=9)
    assert get_strategy(inst, default_seed=1) is inst and inst.seed == 9


def test_a_built_in_rule_loads_by_path_without_registering_twice():
    """`rlavr check src/rlavr/strategies/entropy.py:Entropy` checks the built-in class itself (its module is
    already imported: no second copy whose @register would collide)."""
    from pathlib import Path

    import rlavr.strategies.entropy as entropy_module
    from rlavr.strategies.registry import load_strategy_class

    assert load_strategy_class(f"{Path(entropy_module.__file__)}:Entropy") is entropy_module.Entropy
