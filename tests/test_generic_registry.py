"""The generic name registry (:mod:`rlavr.registry`) behind strategies, answer spaces and benchmark tasks (named
to differ from tests/strategies/test_registry.py, the strategy registry: pytest needs distinct basenames)."""

from __future__ import annotations

import logging
import sys
import textwrap
from pathlib import Path

import pytest

import rlavr.registry
from rlavr.registry import Registry


class Alpha:
    name = "alpha"


class Beta:
    name = "Beta"


class _EP:
    def __init__(self, name: str, value: str, obj: object) -> None:
        self.name, self.value, self._obj = name, value, obj

    def load(self) -> object:
        if isinstance(self._obj, Exception):
            raise self._obj
        return self._obj


def _only_classes(obj: object, origin: str) -> type:
    if not isinstance(obj, type):
        raise ValueError(f"thing {origin}: expected a class, got {obj!r}")
    return obj


def test_names_aliases_case_and_mapping() -> None:
    reg: Registry[type] = Registry("thing", field="thing")
    reg.register(Alpha, aliases=("a", "First"))
    assert reg.register(Beta) is Beta
    assert reg.get(" ALPHA ") is Alpha and reg.get("first") is Alpha and reg["beta"] is Beta
    assert reg.names() == ["alpha", "beta"]
    assert reg.aliases() == {"a": "alpha", "first": "alpha"}
    assert sorted(reg) == ["a", "alpha", "beta", "first"] and len(reg) == 4
    assert "A" in reg and "gamma" not in reg and 3 not in reg
    assert reg.find("gamma") is None and reg.get("gamma", None) is None and reg.get("beta", None) is Beta
    with pytest.raises(KeyError):
        reg["gamma"]
    assert reg.as_dict() == {"a": Alpha, "alpha": Alpha, "beta": Beta, "first": Alpha}


def test_decorator_duplicates_and_redefinition() -> None:
    reg: Registry[type] = Registry("thing", field="thing")

    @reg.register(aliases=("al",))
    class Gamma:
        name = "gamma"

    assert reg.get("al") is Gamma
    reg.register(Gamma)  # the same object again: a no-op
    with pytest.raises(ValueError, match="register: thing name 'gamma' is already taken by .*Gamma"):
        reg.register(Alpha, name="gamma")
    assert reg.get("gamma") is Gamma  # a refused registration changes nothing
    namespace: dict = {"__name__": "__cell__"}
    cell = "class Redo:\n    name = 'redo'\n"
    exec(cell, namespace)
    first = reg.register(namespace["Redo"])
    exec(cell, namespace)  # the cell run again: same module and qualified name, a new class
    assert reg.register(namespace["Redo"]) is not first and reg.get("redo") is namespace["Redo"]
    with pytest.raises(ValueError, match="needs a name"):
        reg.register(object())


def test_unknown_name_says_did_you_mean_and_lists_the_known_names() -> None:
    reg: Registry[type] = Registry("thing", field="things")
    reg.register(Alpha)
    reg.register(Beta)
    with pytest.raises(ValueError, match=r"^things: unknown thing 'alpah'\. Did you mean 'alpha'\? Known: alpha, "
                                         r"beta; or a Thing$"):
        reg.get("alpah", hint="; or a Thing")
    with pytest.raises(ValueError, match=r"^things: unknown thing 'zzz'\. Known: alpha, beta$"):
        reg.get("zzz")


def test_validate_runs_on_every_way_in() -> None:
    reg: Registry[type] = Registry("thing", field="thing", validate=_only_classes)
    with pytest.raises(ValueError, match=r"thing @register\(3\): expected a class"):
        reg.register(3, name="three")
    reg.register_lazy("bad", "rlavr.registry:__all__")  # a list, not a class: refused when first used
    with pytest.raises(ValueError, match="expected a class"):
        reg.get("bad")


def test_lazy_entries_are_imported_on_first_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lazy_things_mod.py").write_text(textwrap.dedent("""
        class Lazy:
            name = "lazy"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lazy_things_mod", raising=False)
    reg: Registry[type] = Registry("thing", field="thing")
    reg.register_lazy("lazy", "lazy_things_mod:Lazy", aliases=("lz",))
    assert "lazy" in reg and reg.names() == ["lazy"] and reg.aliases() == {"lz": "lazy"}
    assert "lazy_things_mod" not in sys.modules  # known by name, not imported
    cls = reg.get("lz")
    assert cls.__name__ == "Lazy" and "lazy_things_mod" in sys.modules
    assert reg.get("lazy") is cls and reg.aliases() == {"lz": "lazy"}
    reg.register(cls)  # the loaded class is the lazy entry's target: no conflict
    with pytest.raises(ValueError, match="register_lazy: expected 'module:attribute'"):
        reg.register_lazy("x", "no_colon")


def test_entry_points_are_read_once_when_a_name_is_missing(monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    groups: list[str] = []

    class Plugin:
        name = "plugin"

    def fake_entry_points(group: str) -> list[_EP]:
        groups.append(group)
        return [_EP("plugin", "pkg.mod:Plugin", Plugin), _EP("broken", "pkg.mod:Broken", ImportError("no pkg")),
                _EP("not-a-class", "pkg.mod:VALUE", 42), _EP("alpha", "pkg.mod:Fake", Plugin)]

    monkeypatch.setattr(rlavr.registry, "entry_points", fake_entry_points)
    reg: Registry[type] = Registry("thing", field="thing", group="rlavr.things", validate=_only_classes)
    reg.register(Alpha)
    assert reg.get("alpha") is Alpha and groups == []  # a registered name never reads the entry points
    with caplog.at_level(logging.WARNING):
        assert reg.get("plugin") is Plugin
    assert groups == ["rlavr.things"]
    assert "could not load thing entry point 'broken'" in caplog.text
    assert "'alpha' (pkg.mod:Fake) ignored: the name is already taken" in caplog.text  # the built-in wins
    assert reg.get("alpha") is Alpha and "broken" not in reg and "not-a-class" not in reg
    assert reg.names() == ["alpha", "plugin"] and groups == ["rlavr.things"]  # read once


def test_no_group_no_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rlavr.registry, "entry_points", lambda group: pytest.fail("entry points read"))
    reg: Registry[type] = Registry("thing", field="thing")
    assert reg.find("anything") is None and reg.names() == []
