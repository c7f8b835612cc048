"""The strategy contract: ONE suite every acquisition strategy must pass, implemented in :mod:`rlavr.testing`
(shipped, so a user checks a rule with ``rlavr.testing.check_strategy(MyRule)`` or ``rlavr check rule.py:MyRule``
against exactly these checks). This file only discovers what to check and parametrises pytest over
(strategy form x check).

Covered automatically:

* every registered built-in (discovered through :func:`rlavr.strategies.available`, so strategies added later
  are picked up without editing this file), in plain and ``-mask`` form where ``supports_mask`` is declared;
* every user-style rule in the top-level ``strategies/`` folder (every class defined there that subclasses
  :class:`~rlavr.strategies.base.Strategy`), loaded by path exactly as users load them.

Batches carry every signal a strategy may declare (see :func:`rlavr.testing.make_batch`). The negative controls
at the end show that each check can fail.
"""

from __future__ import annotations

import ast
import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rlavr import testing
from rlavr.budget import BudgetView
from rlavr.strategies import SIGNALS, Strategy, available, load_strategy_class
from rlavr.testing import CHECKS, Subject, applies, run_check
from rlavr.types import Acquisition, RolloutBatch, Route

ROOT = Path(__file__).resolve().parents[2]
USER_DIR = ROOT / "strategies"
EXPECTED_BUILTINS = {"gt", "ttrl", "ttrl-mask", "random", "entropy", "prob", "oracle", "oracle-decay"}
EXPECTED_USER_RULES = {"low-agreement", "answer-margin", "length-disagreement"}


# ====================================================================================== discovery


def _user_rule_sources() -> list[str]:
    """``path.py:Class`` for every class defined in ``strategies/*.py``."""
    out = []
    for path in sorted(USER_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                out.append(f"{path}:{node.name}")
    return out


def _discover() -> list[Subject]:
    subjects: list[Subject] = []
    for key, cls in available().items():
        if key != cls.name.lower():
            continue  # an alias of a strategy listed under its own name
        subjects.extend(testing.subjects(cls))
    for source in _user_rule_sources():
        cls = load_strategy_class(source)
        if not issubclass(cls, Strategy):
            continue
        rel = Path(source.rsplit(":", 1)[0]).name + ":" + cls.__name__
        for s in testing.subjects(cls):
            subjects.append(Subject(f"user:{rel}" + ("-mask" if s.mask else ""), s.cls, s.mask, s.factory))
    return subjects


SUBJECTS = _discover()
CASES = [(s, c) for s in SUBJECTS for c in CHECKS if applies(c, s)]


def test_discovery_finds_builtins_and_user_rules() -> None:
    names = {s.cls.name for s in SUBJECTS}
    assert names >= EXPECTED_BUILTINS, f"missing built-ins: {EXPECTED_BUILTINS - names}"
    assert names >= EXPECTED_USER_RULES, f"missing user rules: {EXPECTED_USER_RULES - names}"
    ids = [s.id for s in SUBJECTS]
    assert len(ids) == len(set(ids)), "two strategies under test share an id"
    # the -mask forms are exactly the ones declared
    assert {s.cls.name for s in SUBJECTS if s.mask} >= {"random", "entropy", "prob", "oracle", "care", "pivottrace",
                                                        "answer-margin", "length-disagreement", "low-agreement"}
    assert not {s.cls.name for s in SUBJECTS if s.mask} & {"gt", "ttrl", "ttrl-mask", "oracle-decay",
                                                           "posneg-pairing", "uncertainty-consistency"}


def test_every_declared_signal_is_known() -> None:
    for s in SUBJECTS:
        assert set(s.cls.requires) <= SIGNALS, (s.id, s.cls.requires)


@pytest.mark.parametrize(("subject", "check"), CASES, ids=[f"{c}[{s.id}]" for s, c in CASES])
def test_contract(subject: Subject, check: str) -> None:
    run_check(check, subject)


# ====================================================================================== negative controls
# The checks must be able to fail: each deliberately broken strategy below violates one clause.


class _GlobalRng(Strategy):
    name = "broken-global-rng"

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        return self.route_by_score(np.random.random(batch.B), budget)  # the global RNG: the point of the control


class _Overspender(Strategy):
    name = "broken-overspender"

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        return Acquisition(routes=np.zeros(batch.B, np.int8), weights=np.ones(batch.B), scores=np.zeros(batch.B))


class _Forgetful(Strategy):
    name = "broken-forgetful"

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name}

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        return self.route_by_score(self.rng.random(batch.B), budget)


class _UnsafeState(Strategy):
    """Keeps an object in its state that pickles but that ``torch.load(weights_only=True)`` refuses."""

    name = "broken-unsafe-state"

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "when": datetime.date(2026, 1, 1)}

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        return self.route_by_score(self.rng.random(batch.B), budget)


class _InfiniteScores(Strategy):
    name = "broken-inf-scores"

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        acq = self.route_by_score(np.zeros(batch.B), budget)
        return Acquisition(routes=acq.routes, weights=acq.weights, scores=np.full(batch.B, np.inf))


class _IgnoresMask(Strategy):
    """Declares a -mask form but always pseudo-labels what it does not query."""

    name = "broken-ignores-mask"
    supports_mask = True

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        acq = self.route_by_score(batch.votes.entropy, budget)
        routes = np.where(acq.routes == Route.QUERY, Route.QUERY, Route.PSEUDO).astype(np.int8)
        return Acquisition(routes=routes, weights=np.ones(batch.B), scores=acq.scores)


class _SilentMask(Strategy):
    """Accepts mask=True without declaring supports_mask (does not call Strategy.__init__)."""

    name = "broken-silent-mask"

    def __init__(self, mask: bool = False, seed: int = 0) -> None:
        if seed < 0:
            raise ValueError(f"seed: expected >= 0, got {seed}")
        self.mask, self.seed, self._rng = mask, seed, np.random.default_rng(seed)

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        return self.route_by_score(np.zeros(batch.B), budget)


class _UndeclaredPseudo(Strategy):
    """Declares that it never trains on pseudo-labels, but pseudo-labels what it does not query."""

    name = "broken-undeclared-pseudo"

    @property
    def trains_on_pseudo_labels(self) -> bool:
        return False

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        return self.route_by_score(self.rng.random(batch.B), budget)  # pseudo-labels the rest


class _PseudoOnFailure(Strategy):
    """Declares failed queries dropped, but its own failure route says PSEUDO: the declaration is inconsistent."""

    name = "broken-pseudo-on-failure"
    supports_mask = True

    @property
    def failed_query_route(self) -> int:
        return int(Route.PSEUDO)

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        return self.route_by_score(self.rng.random(batch.B), budget)


def _subject(cls: type, mask: bool = False) -> Subject:
    return Subject(cls.name + ("-mask" if mask else ""), cls, mask, cls)


@pytest.mark.parametrize(("cls", "check", "mask"), [
    (_GlobalRng, "no-global-rng", False),
    (_Overspender, "select-valid", False),
    (_Overspender, "known-groups-free", False),
    (_Forgetful, "state-round-trip", False),
    (_UnsafeState, "state-round-trip", False),
    (_InfiniteScores, "select-valid", False),
    (_IgnoresMask, "mask-never-pseudo", True),
    (_IgnoresMask, "select-valid", True),
    (_IgnoresMask, "engine-budget", True),
    (_SilentMask, "no-undeclared-mask", False),
    (_UndeclaredPseudo, "pseudo-declaration", False),
    (_UndeclaredPseudo, "failed-queries-follow-policy", False),
    (_PseudoOnFailure, "pseudo-declaration", True),
], ids=["global-rng", "overspend", "known-not-free", "state-lost", "state-unsafe", "inf-scores", "ignores-mask",
        "ignores-mask-select", "ignores-mask-engine", "silent-mask", "undeclared-pseudo", "undeclared-pseudo-engine",
        "pseudo-on-failure"])
def test_contract_catches_broken_strategies(cls: type[Strategy], check: str, mask: bool) -> None:
    with pytest.raises(AssertionError):
        run_check(check, _subject(cls, mask))


def test_mask_ignoring_rule_passes_its_plain_form_only() -> None:
    """The mask-ignoring rule's plain form is fine; its declared -mask form fails only the mask checks."""
    report = testing.check_strategy(_IgnoresMask, raise_on_failure=False)
    failed = {o.label for o in report.failed}
    assert failed and all(label.endswith("[mask]") for label in failed), failed
    assert "mask-never-pseudo [mask]" in failed
    assert "select-valid [plain]" in report.passed
