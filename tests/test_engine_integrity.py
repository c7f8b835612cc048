"""Engine integrity (issue 17, items 2, 7, 8): failed queries follow the strategy's policy, oracle answers are
validated before they are stored or charged, a strategy cannot make the engine file labels under the wrong ids,
and ``engine.advantages`` refuses non-finite transforms."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

import rlavr.engine as engine_mod
from helpers import make_batch
from rlavr.budget import BudgetView
from rlavr.engine import AcquisitionEngine, OracleFailureError, check_oracle_answer
from rlavr.labels import CallableOracle, DatasetOracle, Label, OracleError
from rlavr.strategies import get_strategy
from rlavr.strategies.base import Strategy
from rlavr.types import Acquisition, RolloutBatch, Route

# four groups of G = 4 whose majority votes are all valid: "1", "2", "1", "3"
ANSWERS = [["1", "1", "2", "2"], ["2", "2", "1", "3"], ["1", "3", "3", "1"], ["3", "3", "3", "1"]]
IDS = ["p0", "p1", "p2", "p3"]
TRUTH = {"p0": "a", "p1": "b", "p2": "c", "p3": "d"}  # distinct per id: a label filed under a wrong id shows


@pytest.fixture(autouse=True)
def _no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_mod.time, "sleep", lambda s: None)


class Down(DatasetOracle):
    """An oracle whose purchases always fail (``raise``: an exception; ``none``: ``None`` answers), while its free
    ``reference()`` still works (for label-peeking rules)."""

    def __init__(self, mode: str = "none") -> None:
        super().__init__(TRUTH)
        self.mode = mode
        self.asked: list[list[str]] = []

    def label(self, prompt_ids: Sequence[str], prompts: Sequence[str]) -> list[Label | None]:
        self.asked.append(list(prompt_ids))
        if self.mode == "raise":
            raise ConnectionError("labelling service unavailable")
        return [None] * len(prompt_ids)


class Answers:
    """A plain oracle (no ``reference()``) that answers ``value`` for every id (or returns ``result`` whole)."""

    def __init__(self, value: Any = None, result: Any = None) -> None:
        self.value, self.result = value, result
        self.calls: list[tuple[list[str], list[str]]] = []

    def label(self, prompt_ids: Sequence[str], prompts: Sequence[str]) -> Any:
        self.calls.append((list(prompt_ids), list(prompts)))
        if self.result is not None:
            return self.result
        return [self.value] * len(prompt_ids)


class Truth:
    """A plain oracle without ``reference()`` (so the strategy used to get the engine's own batch)."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str]]] = []

    def label(self, prompt_ids: Sequence[str], prompts: Sequence[str]) -> list[Label | None]:
        self.calls.append((list(prompt_ids), list(prompts)))
        return [TRUTH[i] for i in prompt_ids]


class QueryFirst(Strategy):
    """Queries the first ``k`` groups, pseudo-labels (or, masked, drops) the rest."""

    name = "test-query-first"

    def __init__(self, k: int = 2, mask: bool = False, seed: int = 0) -> None:
        super().__init__(mask=mask, seed=seed)
        self.k = k

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        return self.route_by_score(-np.arange(batch.B, dtype=float), budget)


def batch() -> RolloutBatch:
    return make_batch(ANSWERS, ids=IDS)


# ====================================================================================== 2. failure policy


@pytest.mark.parametrize("name", ["gt", "random-mask", "entropy-mask", "oracle-mask"])
@pytest.mark.parametrize("mode", ["none", "raise"])
def test_auto_drops_failed_queries_of_rules_that_never_pseudo_label(name: str, mode: str) -> None:
    eng = AcquisitionEngine(name, Down(mode), budget=None, max_retries=1)
    assert eng.on_oracle_failure == "auto"
    res = eng.decide(batch(), step=0)
    queried = res.acquisition.query
    assert queried.any()
    assert not (res.routes == Route.PSEUDO).any(), f"{name} trained on a pseudo-label after an oracle failure"
    assert np.all(res.routes[queried] == Route.DROP) and np.all(res.weights[queried] == 0.0)
    assert all(res.labels[i] is None for i in np.flatnonzero(queried))
    assert res.metrics["oracle_failed_to_drop"] == float(queried.sum())
    assert res.metrics["oracle_failed_to_pseudo"] == 0.0
    assert eng.ledger.n_charged == 0


@pytest.mark.parametrize("name", ["random", "entropy"])
def test_auto_pseudo_labels_failed_queries_of_rules_that_pseudo_label_the_rest(name: str) -> None:
    eng = AcquisitionEngine(name, Down(), budget=0.5)
    res = eng.decide(batch(), step=0)
    assert res.acquisition.query.sum() == 2 and not (res.routes == Route.QUERY).any()
    assert np.all(res.routes == Route.PSEUDO) and np.all(res.weights == 1.0)
    assert res.labels == ["1", "2", "1", "3"]
    assert res.metrics["oracle_failed_to_pseudo"] == 2.0 and res.metrics["oracle_failed_to_drop"] == 0.0


def test_auto_follows_the_strategy_route_and_weight() -> None:
    class LowWeight(QueryFirst):
        @property
        def failed_query_weight(self) -> float:
            return 0.25

    eng = AcquisitionEngine(LowWeight(), Down(), budget=None)
    res = eng.decide(batch(), step=0)
    assert res.routes.tolist() == [Route.PSEUDO] * 4
    assert res.weights.tolist() == [0.25, 0.25, 0.25, 0.25]  # route_by_score queried all four (budget None)

    class DropFailures(QueryFirst):
        @property
        def failed_query_route(self) -> Route:
            return Route.DROP

    res = AcquisitionEngine(DropFailures(), Down(), budget=None).decide(batch(), step=0)
    assert np.all(res.routes == Route.DROP) and np.all(res.weights == 0.0)


def test_a_protocol_only_strategy_without_declaration_drops() -> None:
    class Bare:
        name = "bare"
        requires = frozenset({"answers"})

        def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
            return Acquisition(routes=np.zeros(batch.B, np.int8), weights=np.ones(batch.B), scores=np.zeros(batch.B))

        def update(self, *a: Any) -> None: ...

        def state_dict(self) -> dict[str, Any]:
            return {}

        def load_state_dict(self, state: dict[str, Any]) -> None: ...

    res = AcquisitionEngine(Bare(), Down(), budget=None).decide(batch(), step=0)  # type: ignore[arg-type]
    assert np.all(res.routes == Route.DROP)


def test_declarations_of_the_builtin_rules() -> None:
    never = ["gt", "random-mask", "entropy-mask", "prob-mask", "oracle-mask", "care-mask", "care-mse-mask",
             "pivottrace-mask", "posneg-pairing", "uncertainty-consistency"]
    for name in never:
        s = get_strategy(name)
        assert s.trains_on_pseudo_labels is False and s.failed_query_route == Route.DROP, name
    for name in ["ttrl", "random", "entropy", "prob", "oracle", "pivottrace"]:
        s = get_strategy(name)
        assert s.trains_on_pseudo_labels is True and s.failed_query_route == Route.PSEUDO, name
    assert get_strategy("pivottrace").failed_query_weight == 0.5  # its overflow weight
    # CARE pseudo-labels its Stage-I set, but its queries are the votes it trusts least: dropped on failure
    for name in ["care", "care-mse", "oracle-decay"]:
        s = get_strategy(name)
        assert s.trains_on_pseudo_labels is True and s.failed_query_route == Route.DROP, name
    hybrid = get_strategy("uncertainty-consistency", mode="hybrid")
    assert hybrid.trains_on_pseudo_labels is True and hybrid.failed_query_route == Route.DROP


def test_explicit_pseudo_is_honoured_but_warned_for_a_rule_without_pseudo_labels() -> None:
    with pytest.warns(UserWarning, match="never trains on pseudo-labels"):
        eng = AcquisitionEngine("gt", Down(), budget=None, on_oracle_failure="pseudo")
    res = eng.decide(batch(), step=0)
    assert np.all(res.routes == Route.PSEUDO) and res.labels == ["1", "2", "1", "3"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AcquisitionEngine("random", Down(), on_oracle_failure="pseudo")  # a pseudo-labelling rule: no warning
        AcquisitionEngine("gt", Down(), on_oracle_failure="drop")


def test_raise_stops_the_run_with_the_oracles_error() -> None:
    eng = AcquisitionEngine("gt", Down("raise"), budget=None, max_retries=1, on_oracle_failure="raise")
    with pytest.raises(OracleFailureError, match="on_oracle_failure='raise'") as info:
        eng.decide(batch(), step=3)
    assert isinstance(info.value.__cause__, ConnectionError)
    assert eng.ledger.n_charged == 0


def test_raise_on_missing_labels_names_them_and_keeps_what_was_bought() -> None:
    class Partial(DatasetOracle):
        def label(self, prompt_ids: Sequence[str], prompts: Sequence[str]) -> list[Label | None]:
            return [None if i == "p2" else TRUTH[i] for i in prompt_ids]

    eng = AcquisitionEngine("gt", Partial(TRUTH), budget=None, max_retries=0, on_oracle_failure="raise")
    with pytest.raises(OracleFailureError, match="'p2': no label"):
        eng.decide(batch(), step=0)
    assert eng.ledger.get_many(IDS) == {"p0": "a", "p1": "b", "p3": "d"}  # persisted, charged once
    assert eng.ledger.n_charged == 3


def test_one_warning_per_step_says_how_many_failed_and_where_they_went(caplog: pytest.LogCaptureFixture) -> None:
    eng = AcquisitionEngine(QueryFirst(), Down(), budget=0.5, max_retries=2)
    with caplog.at_level(logging.WARNING, logger="rlavr.engine"):
        eng.decide(batch(), step=7)
    msgs = [r.getMessage() for r in caplog.records if "could not be obtained" in r.getMessage()]
    assert len(msgs) == 1
    assert "step 7: 2 queried labels" in msgs[0] and "2 pseudo-labelled, 0 dropped" in msgs[0]


def test_no_failure_no_fallback_metrics() -> None:
    res = AcquisitionEngine("gt", DatasetOracle(TRUTH), budget=None).decide(batch(), step=0)
    assert res.metrics["oracle_failed_to_pseudo"] == res.metrics["oracle_failed_to_drop"] == 0.0
    assert res.metrics["oracle_invalid_answers"] == 0.0 and res.oracle_fallback == {}


@pytest.mark.parametrize("bad", ["retry", "", None, 1])
def test_on_oracle_failure_is_validated(bad: Any) -> None:
    with pytest.raises(ValueError, match="on_oracle_failure"):
        AcquisitionEngine("gt", Down(), on_oracle_failure=bad)


# ====================================================================================== 7. answer validation

BAD_ANSWERS = [float("nan"), float("inf"), -float("inf"), np.float64("nan"), b"1", [1], ("1",), {"a": 1}, "",
               "   ", False, True, np.bool_(True), object(), None.__class__, 1 + 2j]


@pytest.mark.parametrize("value", BAD_ANSWERS, ids=lambda v: type(v).__name__ + ":" + repr(v)[:12])
@pytest.mark.parametrize("timeout", [None, 30.0])
def test_invalid_answers_are_never_stored_nor_charged(value: Any, timeout: float | None,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    oracle = Answers(value)
    eng = AcquisitionEngine("gt", oracle, budget=None, max_retries=1, oracle_timeout=timeout)
    with caplog.at_level(logging.WARNING, logger="rlavr.engine"):
        res = eng.decide(batch(), step=0)
    assert len(oracle.calls) == 2  # retried like a missing label
    assert res.bought == [] and eng.ledger.n_charged == 0 and eng.ledger.get_many(IDS) == {}
    assert sorted(res.failed) == IDS and np.all(res.routes == Route.DROP)  # gt: dropped
    assert res.metrics["oracle_invalid_answers"] == 4.0
    assert {pid for pid, _, _ in res.invalid} == set(IDS)
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "invalid answers" in text and "'p0'" in text


def test_oversized_answers_are_refused_with_a_preview(caplog: pytest.LogCaptureFixture) -> None:
    huge = "7" * 10_000_000
    eng = AcquisitionEngine("gt", Answers(huge), budget=None, max_retries=0)
    with caplog.at_level(logging.WARNING, logger="rlavr.engine"):
        res = eng.decide(batch(), step=0)
    assert eng.ledger.n_charged == 0 and res.metrics["oracle_invalid_answers"] == 4.0
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "10000000 characters" in text and len(text) < 5000  # a preview, never the whole answer
    eng = AcquisitionEngine("gt", Answers("12345"), budget=None, max_retries=0, max_label_chars=4)
    assert eng.decide(batch(), step=0).bought == []
    eng = AcquisitionEngine("gt", Answers("1234"), budget=None, max_retries=0, max_label_chars=4)
    assert sorted(eng.decide(batch(), step=0).bought) == IDS


@pytest.mark.parametrize("result", ["wxyz", b"wxyz", {"p0": "1", "p1": "1", "p2": "1", "p3": "1"}, 5,
                                    ["1", "1", "1"]])
@pytest.mark.parametrize("timeout", [None, 30.0])
def test_a_result_that_is_not_one_label_per_id_is_a_failed_call(result: Any, timeout: float | None) -> None:
    eng = AcquisitionEngine("gt", Answers(result=result), budget=None, max_retries=1, oracle_timeout=timeout)
    res = eng.decide(batch(), step=0)
    assert res.bought == [] and eng.ledger.n_charged == 0 and eng.ledger.get_many(IDS) == {}
    assert res.oracle_errors == 2 and sorted(res.failed) == IDS


@pytest.mark.parametrize(("value", "stored"), [("7", "7"), (7, "7"), (np.int64(7), "7"), (2.5, "2.5"),
                                               (np.str_("x"), "x"), (" 7 ", " 7 ")])
def test_valid_answers_are_stored(value: Any, stored: str) -> None:
    eng = AcquisitionEngine("gt", Answers(value), budget=None)
    res = eng.decide(batch(), step=0)
    assert sorted(res.bought) == IDS and res.labels == [stored] * 4
    assert eng.ledger.get("p0") == stored and res.metrics["oracle_invalid_answers"] == 0.0


def test_int_labels_from_a_dataset_keep_working_and_nan_is_missing() -> None:
    rows = [{"id": "p0", "answer": 3}, {"id": "p1", "answer": np.int64(4)}, {"id": "p2", "answer": float("nan")},
            {"id": "p3", "answer": 5.5}]
    eng = AcquisitionEngine("gt", DatasetOracle(rows), budget=None, max_retries=0)
    res = eng.decide(batch(), step=0)
    assert eng.ledger.get_many(IDS) == {"p0": "3", "p1": "4", "p3": "5.5"}
    assert res.failed == ["p2"] and eng.ledger.n_charged == 3  # a pandas-style missing label is no label


@pytest.mark.parametrize("value", [float("nan"), False, b"1", [1], object()])
def test_callable_oracle_no_longer_stringifies_garbage(value: Any) -> None:
    eng = AcquisitionEngine("gt", CallableOracle(lambda i, p: value), budget=None, max_retries=0)
    res = eng.decide(batch(), step=0)
    assert res.bought == [] and eng.ledger.n_charged == 0 and res.metrics["oracle_invalid_answers"] == 4.0
    assert CallableOracle(lambda i, p: 3).label(["p0"], ["q"]) == ["3"]


def test_an_invalid_answer_is_asked_again_and_a_valid_retry_is_bought() -> None:
    class Then:
        def __init__(self) -> None:
            self.n = 0

        def label(self, prompt_ids: Sequence[str], prompts: Sequence[str]) -> list[Any]:
            self.n += 1
            return [float("nan") if self.n == 1 else TRUTH[i] for i in prompt_ids]

    eng = AcquisitionEngine("gt", Then(), budget=None, max_retries=1)
    res = eng.decide(batch(), step=0)
    assert sorted(res.bought) == IDS and eng.ledger.n_charged == 4 and res.labels == ["a", "b", "c", "d"]
    assert res.metrics["oracle_invalid_answers"] == 4.0  # reported, though the retry succeeded


def test_check_oracle_answer_reasons() -> None:
    assert check_oracle_answer("x") == ("x", None)
    assert check_oracle_answer(None) == (None, None)
    for bad in BAD_ANSWERS:
        label, reason = check_oracle_answer(bad)
        assert label is None and reason, bad
    assert check_oracle_answer(10**5000)[0] is None  # beyond Python's int -> str limit: refused, not raised
    with pytest.raises(ValueError, match="max_label_chars"):
        AcquisitionEngine("gt", Down(), max_label_chars=0)


# ====================================================================================== 8. malicious rules


class SortsIds(Strategy):
    """Sorts ``batch.ids`` (and the prompts) in place, then queries the first two groups."""

    name = "test-sorts-ids"

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        batch.ids.sort(reverse=True)
        batch.prompts.reverse()
        batch.votes.majority_answer[:] = ["evil"] * batch.B
        batch.groups.reverse()
        routes = np.array([Route.QUERY, Route.QUERY, Route.PSEUDO, Route.PSEUDO], dtype=np.int8)
        return Acquisition(routes=routes, weights=np.ones(4), scores=np.array([2.0, 1.0, 0.0, 0.0]))


def test_a_rule_that_mutates_its_batch_cannot_misfile_labels() -> None:
    oracle = Truth()
    b = batch()
    eng = AcquisitionEngine(SortsIds(), oracle, budget=None)
    res = eng.decide(b, step=0)
    assert eng.ledger.get_many(IDS) == {"p0": "a", "p1": "b"}  # filed under the ids the oracle was asked about
    assert oracle.calls == [(["p0", "p1"], ["prompt p0", "prompt p1"])]
    assert res.labels == ["a", "b", "1", "3"]  # pseudo-labels from the engine's votes, not the mutated ones
    assert b.ids == IDS and res.batch.ids == IDS  # the caller's batch is untouched


def test_a_rule_that_marks_every_label_known_still_cannot_overspend() -> None:
    class ClaimsKnown(Strategy):
        name = "test-claims-known"

        def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
            budget.known[:] = True
            return Acquisition(routes=np.zeros(batch.B, np.int8), weights=np.ones(batch.B), scores=np.zeros(batch.B))

    eng = AcquisitionEngine(ClaimsKnown(), Truth(), budget="1/step")
    with pytest.raises(engine_mod.BudgetExceededError, match="test-claims-known"):
        eng.decide(batch(), step=0)
    assert eng.ledger.n_charged == 0


@pytest.mark.parametrize(("field", "value", "match"), [
    ("routes", 7, r"routes\[0\] = 7"),
    ("weights", 5.0, r"weights\[0\] = 5.0"),
    ("weights", float("nan"), r"weights\[0\] = nan"),
    ("weights", -0.5, r"weights\[0\] = -0.5"),
    ("scores", float("nan"), r"scores\[0\] = nan"),
    ("scores", float("inf"), r"scores\[0\] = inf"),
])
def test_an_acquisition_mutated_after_construction_is_refused(field: str, value: float, match: str) -> None:
    class Tampers(Strategy):
        name = "test-tampers"

        def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
            acq = Acquisition(routes=np.zeros(batch.B, np.int8), weights=np.ones(batch.B), scores=np.zeros(batch.B))
            getattr(acq, field)[0] = value
            return acq

    eng = AcquisitionEngine(Tampers(), Truth(), budget=None)
    with pytest.raises(ValueError, match=f"strategy 'test-tampers'.select: Acquisition.{match}"):
        eng.decide(batch(), step=0)
    assert eng.ledger.n_charged == 0


def test_diagnostics_get_a_copy_too() -> None:
    class Peeker(QueryFirst):
        name = "test-diagnostics-mutates"

        def diagnostics(self, batch: RolloutBatch, acquisition: Acquisition) -> dict[str, float]:
            batch.ids.reverse()
            acquisition.weights[:] = 2.0
            return {}

    eng = AcquisitionEngine(Peeker(), DatasetOracle(TRUTH), budget=None)
    with pytest.raises(ValueError, match=r"test-diagnostics-mutates'.diagnostics: Acquisition.weights"):
        eng.decide(batch(), step=0)


# ====================================================================================== advantages


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_advantages_refuse_a_non_finite_transform(bad: float) -> None:
    class Poison(QueryFirst):
        name = "test-poison"

        def transform_advantages(self, batch: RolloutBatch, acquisition: Acquisition,
                                 advantages: np.ndarray) -> np.ndarray:
            out = advantages.copy()
            out[0, 0] = bad
            return out

    eng = AcquisitionEngine(Poison(), DatasetOracle(TRUTH), budget=None)
    res = eng.decide(batch(), step=0)
    with pytest.raises(ValueError, match="strategy 'test-poison'.transform_advantages .*non-finite"):
        eng.advantages(res)


def test_oracle_error_class_is_exported() -> None:
    assert issubclass(OracleFailureError, RuntimeError) and not issubclass(OracleFailureError, OracleError)
