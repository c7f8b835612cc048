"""The acquisition engine: routing, buying, labels, fallbacks, metrics and advantages."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from helpers import make_batch
from rlavr.advantages import grpo_advantages
from rlavr.budget import BudgetView
from rlavr.engine import AcquisitionEngine, BudgetExceededError
from rlavr.labels import CallableOracle, DatasetOracle, LabelLedger, OracleError
from rlavr.strategies.base import Strategy
from rlavr.types import Acquisition, RolloutBatch, Route

# four groups of G = 4; ground truth "1" everywhere; votes: right, wrong, right, no valid answer
ANSWERS = [["1", "1", "2", None], ["2", "2", "1", "3"], ["1", "3", "3", "1"], [None, None, None, None]]
GT = {f"p{i}": "1" for i in range(4)}


class Fixed(Strategy):
    """Returns a fixed acquisition (routes/weights/scores given at construction)."""

    name = "test-fixed"

    def __init__(self, routes: list[int], weights: list[float] | None = None, scores: list[float] | None = None,
                 mask: bool = False, seed: int = 0) -> None:
        super().__init__(mask=mask, seed=seed)
        self.routes, self.weights = routes, weights or [1.0] * len(routes)
        self.scores = scores or [0.0] * len(routes)
        self.updates: list[dict[str, str]] = []
        self.views: list[BudgetView] = []

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        self.views.append(budget)
        return Acquisition(routes=np.array(self.routes), weights=np.array(self.weights), scores=np.array(self.scores),
                           metrics={"custom": 1.5})

    def update(self, batch, acquisition, labels):  # type: ignore[no-untyped-def]
        self.updates.append(dict(labels))


class Counting(DatasetOracle):
    def __init__(self, table: dict[str, str], fail_times: int = 0, missing: set[str] | None = None) -> None:
        super().__init__(table)
        self.fail_times, self.missing, self.asked = fail_times, missing or set(), []  # type: ignore[var-annotated]

    def label(self, prompt_ids, prompts):  # type: ignore[no-untyped-def]
        self.asked.append(list(prompt_ids))
        if self.fail_times > 0:
            self.fail_times -= 1
            raise OracleError("temporarily down")
        out = super().label(prompt_ids, prompts)
        return [None if i in self.missing else lab for i, lab in zip(prompt_ids, out, strict=True)]


def _engine(strategy: Strategy | str, oracle: object | None = None, **kw: object) -> AcquisitionEngine:
    return AcquisitionEngine(strategy, oracle or Counting(GT), backoff=0.0, **kw)  # type: ignore[arg-type]


def test_routes_labels_weights_and_update() -> None:
    strat = Fixed([Route.QUERY, Route.PSEUDO, Route.PSEUDO, Route.PSEUDO], weights=[1.0, 0.5, 0.25, 1.0])
    eng = _engine(strat)
    res = eng.decide(make_batch(ANSWERS), step=0)
    # the group with no valid answer has no pseudo-label -> dropped, weight 0
    assert res.routes.tolist() == [Route.QUERY, Route.PSEUDO, Route.PSEUDO, Route.DROP]
    assert res.labels == ["1", "2", "1", None]
    assert res.weights.tolist() == [1.0, 0.5, 0.25, 0.0]
    assert res.bought == ["p0"] and res.reused == [] and res.failed == []
    assert res.gt_labels == {"p0": "1"}
    eng.update(res)
    assert strat.updates == [{"p0": "1"}]


def test_rewards_and_weighted_advantages() -> None:
    eng = _engine(Fixed([Route.QUERY, Route.PSEUDO, Route.DROP, Route.PSEUDO], weights=[1.0, 0.5, 1.0, 1.0]))
    res = eng.decide(make_batch(ANSWERS), step=0)
    r = eng.rewards(res)
    np.testing.assert_array_equal(r[0], [1, 1, 0, 0])
    np.testing.assert_array_equal(r[1], [1, 1, 0, 0])  # rewarded against the (wrong) vote "2"
    assert np.isnan(r[2]).all() and np.isnan(r[3]).all()
    adv = eng.advantages(res)
    np.testing.assert_allclose(adv[0], grpo_advantages(np.array([1.0, 1, 0, 0])))
    np.testing.assert_allclose(adv[1], 0.5 * grpo_advantages(np.array([1.0, 1, 0, 0])))
    assert (adv[2:] == 0).all()
    pop = eng.advantages(res, std="population")
    np.testing.assert_allclose(pop[0], [1, 1, -1, -1])


def test_transform_advantages_hook_is_applied_and_checked() -> None:
    class Halve(Fixed):
        def transform_advantages(self, batch, acquisition, advantages):  # type: ignore[no-untyped-def]
            return advantages / 2

    class Broken(Fixed):
        def transform_advantages(self, batch, acquisition, advantages):  # type: ignore[no-untyped-def]
            return advantages[:1]

    eng = _engine(Halve([Route.QUERY] * 4))
    res = eng.decide(make_batch(ANSWERS), 0)
    np.testing.assert_allclose(eng.advantages(res)[0], grpo_advantages(np.array([1.0, 1, 0, 0])) / 2)
    eng = _engine(Broken([Route.QUERY] * 4))
    with pytest.raises(ValueError, match="changed the shape"):
        eng.advantages(eng.decide(make_batch(ANSWERS), 0))


def test_oracle_failure_retries_then_succeeds() -> None:
    oracle = Counting(GT, fail_times=2)
    eng = _engine(Fixed([Route.QUERY, Route.QUERY, Route.PSEUDO, Route.PSEUDO]), oracle, max_retries=2)
    res = eng.decide(make_batch(ANSWERS), 0)
    assert len(oracle.asked) == 3 and res.labels[:2] == ["1", "1"] and res.failed == []
    assert eng.ledger.n_charged == 2


@pytest.mark.parametrize(("fallback", "route"), [("pseudo", Route.PSEUDO), ("drop", Route.DROP)])
def test_oracle_failure_falls_back(fallback: str, route: Route, caplog: pytest.LogCaptureFixture) -> None:
    oracle = Counting(GT, fail_times=10)
    eng = _engine(Fixed([Route.QUERY, Route.QUERY, Route.PSEUDO, Route.PSEUDO]), oracle, max_retries=1,
                  on_oracle_failure=fallback)
    with caplog.at_level(logging.WARNING, logger="rlavr.engine"):
        res = eng.decide(make_batch(ANSWERS), 0)
    assert len(oracle.asked) == 2  # first try + 1 retry
    assert res.routes[:2].tolist() == [route, route] and res.failed == ["p0", "p1"]
    assert eng.ledger.n_charged == 0  # nothing delivered, nothing charged
    if fallback == "pseudo":
        assert res.labels[:2] == ["1", "2"] and res.weights[:2].tolist() == [1.0, 1.0]
    else:
        assert res.labels[:2] == [None, None] and res.weights[:2].tolist() == [0.0, 0.0]
    assert "oracle failed" in caplog.text
    assert res.metrics["oracle_failures_this_step"] == 2


def test_missing_label_is_retried_then_falls_back() -> None:
    oracle = Counting(GT, missing={"p1"})
    eng = _engine(Fixed([Route.QUERY, Route.QUERY, Route.PSEUDO, Route.PSEUDO]), oracle, max_retries=2)
    res = eng.decide(make_batch(ANSWERS), 0)
    assert oracle.asked == [["p0", "p1"], ["p1"], ["p1"]]
    assert res.bought == ["p0"] and res.failed == ["p1"] and res.routes[1] == Route.PSEUDO
    assert eng.ledger.n_charged == 1


def test_budget_exceeded_error_buys_nothing() -> None:
    eng = _engine(Fixed([Route.QUERY] * 4), budget=2)
    with pytest.raises(BudgetExceededError, match="asked for 4 new labels but only 2"):
        eng.decide(make_batch(ANSWERS), 0)
    assert eng.ledger.n_charged == 0


def test_known_labels_are_reused_free_even_during_an_outage() -> None:
    oracle = Counting(GT)
    strat = Fixed([Route.QUERY, Route.QUERY, Route.PSEUDO, Route.PSEUDO])
    eng = _engine(strat, oracle, budget=2, max_retries=0)
    eng.decide(make_batch(ANSWERS), 0)
    assert eng.ledger.n_charged == 2
    # step 1: same prompts, budget exhausted, the oracle is down: the owned labels are still used
    oracle.fail_times = 100
    res = eng.decide(make_batch(ANSWERS), 1)
    view = strat.views[-1]
    assert view.known.tolist() == [True, True, False, False] and view.remaining == 0
    assert res.reused == ["p0", "p1"] and res.bought == [] and res.failed == []
    assert res.labels[:2] == ["1", "1"] and res.routes[:2].tolist() == [Route.QUERY, Route.QUERY]
    assert len(oracle.asked) == 1 and eng.ledger.n_charged == 2
    assert res.metrics["labels_reused_this_step"] == 2


def test_queries_are_bought_in_score_order_when_the_budget_shrinks() -> None:
    oracle = Counting(GT)
    eng = _engine(Fixed([Route.QUERY, Route.QUERY, Route.QUERY, Route.PSEUDO], scores=[0.1, 0.9, 0.5, 0.0]), oracle)
    eng.decide(make_batch(ANSWERS), 0)
    assert oracle.asked == [["p1", "p2", "p0"]]


def test_resumed_stale_reservation_is_free() -> None:
    ledger = LabelLedger()
    ledger._conn.execute("INSERT INTO labels VALUES ('p1', NULL, 'pending', 0, 'dead#0#x', 0.0)")
    strat = Fixed([Route.PSEUDO, Route.QUERY, Route.PSEUDO, Route.PSEUDO])
    eng = _engine(strat, ledger=ledger, budget=1)
    assert eng.spent == 1
    res = eng.decide(make_batch(ANSWERS), 0)
    assert strat.views[0].known[1]  # completing it costs nothing new
    assert res.labels[1] == "1" and res.reused == ["p1"] and ledger.n_charged == 1 and ledger.n_pending == 0


def test_query_no_signal_ratio_counts_labels_whose_group_is_all_right_or_all_wrong() -> None:
    # p0 [1, 1, 0, 0] against "1": signal; p3 has no valid answer: all wrong, no signal; p1 [0, 0, 1, 0]: signal
    m = _engine(Fixed([Route.QUERY, Route.PSEUDO, Route.PSEUDO, Route.QUERY])).decide(make_batch(ANSWERS), 0).metrics
    assert m["query_no_signal_ratio"] == 0.5 and m["query_vote_wrong_ratio"] == 0.5
    all_right = [["1", "1", "1", "1"], *ANSWERS[1:]]
    m = _engine(Fixed([Route.QUERY, Route.QUERY, Route.PSEUDO, Route.PSEUDO])).decide(make_batch(all_right), 0).metrics
    assert m["query_no_signal_ratio"] == 0.5  # p0 all right (no signal), p1 mixed


def test_metrics() -> None:
    eng = _engine(Fixed([Route.QUERY, Route.PSEUDO, Route.PSEUDO, Route.PSEUDO]))
    res = eng.decide(make_batch(ANSWERS), 0)
    m = res.metrics
    assert m["route/query"] == 1 and m["route/pseudo"] == 2 and m["route/drop"] == 1
    assert m["label_accuracy"] == pytest.approx(2 / 4)  # votes right for p0, p2 (p3 has none)
    assert m["pseudo_label_accuracy"] == pytest.approx(1 / 2)  # p1 wrong, p2 right
    assert m["query_vote_wrong_ratio"] == 0.0
    assert m["query_no_signal_ratio"] == 0.0  # p0's rollouts against "1": [1, 1, 0, 0], a signal
    # kept groups p0..p2: p0, p2 rewards match GT; p1 rewarded against "2" gives [1,1,0,0] vs GT [0,0,1,0]
    assert m["reward_accuracy"] == pytest.approx(9 / 12)
    assert m["majority_ratio"] == pytest.approx(np.mean([2 / 4, 2 / 4, 2 / 4, 0]))
    assert m["valid_ratio"] == pytest.approx(11 / 16)
    assert m["pass@G"] == pytest.approx(3 / 4) and m["ground_truth_reward"] == pytest.approx(5 / 16)
    assert m["budget_spent"] == 1 and m["labels_bought_this_step"] == 1 and m["strategy/custom"] == 1.5
    # without a reference lookup there are no label metrics (and no error)
    eng = _engine(Fixed([Route.PSEUDO] * 4), CallableOracle(lambda i, p: "1"))
    assert "label_accuracy" not in eng.decide(make_batch(ANSWERS), 0).metrics


def test_label_peeking_strategy_needs_a_reference() -> None:
    eng = _engine("oracle", CallableOracle(lambda i, p: "1"))
    with pytest.raises(ValueError, match="peeks at labels.*no reference"):
        eng.decide(make_batch(ANSWERS), 0)


def test_select_contract_is_enforced() -> None:
    class WrongType(Fixed):
        def select(self, batch, budget):  # type: ignore[no-untyped-def]
            return {"routes": []}

    with pytest.raises(TypeError, match="not Acquisition"):
        _engine(WrongType([0] * 4)).decide(make_batch(ANSWERS), 0)
    with pytest.raises(ValueError, match="returned 2 routes for 4 groups"):
        _engine(Fixed([0, 1])).decide(make_batch(ANSWERS), 0)


def test_constructor_validation_and_strategy_names() -> None:
    with pytest.raises(ValueError, match="oracle: expected an object with label"):
        AcquisitionEngine("ttrl", object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on_oracle_failure"):
        _engine("ttrl", on_oracle_failure="retry")
    with pytest.raises(ValueError, match="max_retries"):
        _engine("ttrl", max_retries=-1)
    with pytest.raises(ValueError, match="unknown strategy 'entropi'.*Did you mean 'entropy'"):
        _engine("entropi")
    eng = _engine("random-mask", budget="1/step", strategy_kwargs={"seed": 3})
    assert eng.strategy.mask and eng.strategy.seed == 3
    res = eng.decide(make_batch(ANSWERS), 0)
    assert (res.routes == Route.QUERY).sum() == 1 and (res.routes == Route.DROP).sum() == 3


def test_state_dict_round_trip_and_foreign_ledger(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "l.sqlite"
    eng = _engine("random", ledger=str(path), budget=0.5)
    eng.decide(make_batch(ANSWERS), 0)
    state = eng.state_dict()
    assert state["ledger"]["n_charged"] == 2 and state["budget"]["ratio"] == 0.5
    fresh = _engine("random", ledger=str(path), budget=0.5)
    fresh.load_state_dict(state)
    assert fresh.strategy.rng.random() == eng.strategy.rng.random()
    with pytest.raises(ValueError, match="resume with the run's own ledger"):
        _engine("random").load_state_dict(state)


class Greedy(Strategy):
    """Queries as many groups as the budget allows (or none when ``want`` is off); records each view."""

    name = "test-greedy"

    def __init__(self) -> None:
        super().__init__()
        self.want = True
        self.views: list[BudgetView] = []

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        self.views.append(budget)
        if not self.want:
            return Acquisition(routes=np.full(batch.B, Route.PSEUDO), weights=np.ones(batch.B),
                               scores=np.zeros(batch.B))
        return self.route_by_score(np.zeros(batch.B), budget)


def test_resume_rewinds_the_ledger_position_for_a_ratio_budget(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A run checkpoints after step 1, goes on to step 4 (recording those steps, buying nothing) and crashes. The
    resumed run must count only the prompts it really saw: at the re-run step 2, floor(0.25 x 12) = 3 labels in all,
    not floor(0.25 x 20) = 5 (the crashed run's steps 2-4 left in the ledger)."""
    path = str(tmp_path / "l.sqlite")
    table = {f"s{s}-{i}": "1" for s in range(6) for i in range(4)} | {f"y{i}": "1" for i in range(4)}

    def batch(step: int, prefix: str | None = None) -> RolloutBatch:
        ids = [f"s{step}-{i}" for i in range(4)] if prefix is None else [f"{prefix}{i}" for i in range(4)]
        return make_batch(ANSWERS, ids=ids, step=step)

    strat = Greedy()
    eng = _engine(strat, Counting(table), budget=0.25, ledger=path)
    for step in (0, 1):
        eng.decide(batch(step), step)
    assert eng.spent == 2 and eng.ledger.prompts_seen == 8
    state = eng.state_dict()
    assert state["ledger"]["last_step"] == 1
    strat.want = False
    for step in (2, 3, 4):  # after the checkpoint; then the process dies
        eng.decide(batch(step), step)
    assert eng.ledger.prompts_seen == 20

    again = Greedy()
    resumed = _engine(again, Counting(table), budget=0.25, ledger=path)
    resumed.load_state_dict(state)
    assert resumed.ledger.prompts_seen == 8 and resumed.spent == 2  # bought labels stay (none were bought here)
    resumed.decide(batch(2, prefix="y"), 2)  # the re-run step sees other prompts (e.g. a prompt sampler)
    assert again.views[-1].cap == 3 and resumed.ledger.prompts_seen == 12
    assert resumed.spent == 3  # floor(0.25 x 12): never more than the prompts really seen allow


def test_label_metrics_skip_groups_without_a_reference() -> None:
    oracle = DatasetOracle({"p0": "1", "p1": "1"})  # p2, p3 unknown to the reference lookup
    eng = _engine(Fixed([Route.PSEUDO] * 4), oracle)
    m = eng.decide(make_batch(ANSWERS), 0).metrics
    assert m["label_accuracy"] == 0.5  # p0 right, p1 wrong; p2/p3 not counted as wrong
    assert m["pass@G"] == 1.0 and m["ground_truth_reward"] == pytest.approx(3 / 8)


def test_only_label_peeking_strategies_see_the_ground_truth() -> None:
    """A rule that does not declare ``requires={"labels"}`` must never see ``reference_labels``, in select,
    update or transform_advantages, even when the oracle has a free reference lookup or the batch (a replayed
    log) already carries one; Oracle-CAG, which declares it, does."""
    seen: list[object] = []

    class Snoop(Fixed):
        requires = frozenset({"answers"})

        def select(self, batch, budget):  # type: ignore[no-untyped-def]
            seen.append(("select", batch.reference_labels))
            return super().select(batch, budget)

        def update(self, batch, acquisition, labels):  # type: ignore[no-untyped-def]
            seen.append(("update", batch.reference_labels))

        def transform_advantages(self, batch, acquisition, adv):  # type: ignore[no-untyped-def]
            seen.append(("transform", batch.reference_labels))
            return adv

    eng = _engine(Snoop([Route.QUERY, Route.PSEUDO, Route.PSEUDO, Route.DROP]), budget=None)
    logged = make_batch(ANSWERS).with_reference_labels(["1"] * 4)  # as rlavr replay builds its batches
    for batch in (make_batch(ANSWERS), logged):
        res = eng.decide(batch, 0)
        eng.update(res)
        eng.advantages(res)
        assert res.batch.reference_labels == ["1"] * 4  # metrics still have them
        assert "label_accuracy" in res.metrics
    assert [s for s, _ in seen] == ["select", "update", "transform"] * 2
    assert all(ref is None for _, ref in seen)

    class Peeker(Snoop):
        requires = frozenset({"answers", "labels"})

    seen.clear()
    eng = _engine(Peeker([Route.QUERY] * 4), budget=None)
    res = eng.decide(make_batch(ANSWERS), 0)
    eng.update(res)
    assert [ref for _, ref in seen] == [["1"] * 4] * 2


# ------------------------------------------------------------------------------------------ the one purchase path


def test_buy_is_the_public_purchase_path() -> None:
    oracle = Counting(GT, fail_times=1, missing={"p2"})
    eng = _engine("random", oracle, max_retries=2)
    eng.ledger.purchase(["p3"], ["q3"], Counting(GT), 1, 0)  # owned: free, never asked again
    res = eng.buy(["p0", "p1", "p2", "p3"], ["q0", "q1", "q2", "q3"], 3, step=0)
    assert res.labels == {"p0": "1", "p1": "1", "p3": "1"} and res.bought == ["p0", "p1"]
    assert res.reused == ["p3"] and res.failed == ["p2"] and res.refused == [] and res.oracle_errors == 1
    # the first call raised, the second answered None for p2, the last retry asks p2 alone
    assert oracle.asked == [["p0", "p1", "p2"], ["p0", "p1", "p2"], ["p2"]]
    assert eng.ledger.n_charged == 3
    # an int limit spans the whole call: 2 new labels at most, the third is refused (never retried)
    res = eng.buy(["y0", "y1", "y2"], ["a", "b", "c"], 2, step=0)
    assert res.refused == ["y2"] and res.failed == ["y0", "y1"]  # GT has no y*: answered None, not charged
    # a callable limit is evaluated at each attempt with the ledger's charged count; max_new caps the call
    res = eng.buy(["x0", "x1", "x2"], ["a", "b", "c"], lambda charged: 10 - charged, step=1, max_new=1)
    assert res.refused == ["x1", "x2"] and res.failed == ["x0"]  # GT has no x*: answered None, not charged
    with pytest.raises(ValueError, match="limit"):
        eng.buy(["p0"], ["q0"], True, step=0)
    with pytest.raises(ValueError, match="prompts"):
        eng.buy(["p0"], [], 1, step=0)


def test_buy_raise_on_error_and_on_purchase() -> None:
    seen: list[list[str]] = []
    eng = _engine("random", Counting(GT, fail_times=5), max_retries=1)
    with pytest.raises(OracleError):
        eng.buy(["p0"], ["q0"], 1, step=0, raise_on_error=True)
    assert eng.ledger.n_charged == 0 and eng.ledger.n_pending == 0
    res = eng.buy(["p0"], ["q0"], 1, step=0)  # default: reported as failed, not raised
    assert res.failed == ["p0"] and res.oracle_errors == 2
    ok = _engine("random", Counting(GT))
    ok.buy(["p0", "p1"], ["q0", "q1"], 2, step=0, on_purchase=lambda r: seen.append(list(r.bought)))
    assert seen == [["p0", "p1"]]


def test_busy_ids_are_counted_in_the_step_metrics(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import threading
    import time

    path = tmp_path / "ledger.db"
    release = threading.Event()

    class Blocking:
        def label(self, ids, prompts):  # type: ignore[no-untyped-def]
            release.wait(10)
            return ["1"] * len(ids)

    other = LabelLedger(path, owner="other")
    t = threading.Thread(target=other.purchase, args=(["p0"], ["q0"], Blocking(), 10, 0))
    t.start()
    while not other.reserved(["p0"])[0]:
        time.sleep(0.01)
    oracle = Counting(GT)
    eng = _engine(Fixed([Route.QUERY, Route.QUERY, Route.PSEUDO, Route.PSEUDO]), oracle,
                  ledger=LabelLedger(path, timeout=0.1), max_retries=1)
    res = eng.decide(make_batch(ANSWERS), 0)
    release.set()
    t.join()
    # p0 is in flight in another live writer: not asked here, not charged here, the group falls back
    assert res.busy == ["p0"] and res.bought == ["p1"] and ["p0"] not in oracle.asked
    assert res.metrics["labels_busy_this_step"] == 1 and res.routes[0] == Route.PSEUDO
    assert eng.ledger.get("p0") == "1" and eng.ledger.n_charged == 2  # paid once, by the other writer


def test_record_pool_is_public_and_idempotent() -> None:
    from rlavr.labels import POOL_STEP

    ledger = LabelLedger()
    ledger.record_pool(50)
    ledger.record_pool(50)
    assert ledger.prompts_seen == 50 and ledger.last_step == POOL_STEP == -1
    ledger.record_step(0, 8)
    assert ledger.last_step == 0 and ledger.drop_steps_after(-1) == 1 and ledger.prompts_seen == 50
    with pytest.raises(ValueError, match="record_pool"):
        ledger.record_pool(-1)


# ------------------------------------------------------------------ the ledger failing is not the oracle failing
class _PersistFails:
    """Makes the ledger's phase-3 write (answered labels) fail ``times`` times with ``error``."""

    def __init__(self, ledger: LabelLedger, error: str, times: int = 10**9) -> None:
        import sqlite3

        self.conn, self.error, self.times, self.failures, self.sqlite3 = ledger._conn, error, times, 0, sqlite3
        ledger._conn = self  # type: ignore[assignment]

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.conn, name)

    def executemany(self, sql, rows):  # type: ignore[no-untyped-def]
        if "'bought'" in sql and "VALUES" in sql and self.failures < self.times:
            self.failures += 1
            with self.conn.guard():
                raise self.sqlite3.OperationalError(self.error)
        return self.conn.executemany(sql, rows)


def test_a_ledger_write_failure_stops_the_step_without_asking_the_oracle_again(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from rlavr.labels import LedgerError

    oracle = Counting(GT)
    eng = _engine(Fixed([Route.QUERY, Route.QUERY, Route.PSEUDO, Route.PSEUDO]), oracle,
                  ledger=LabelLedger(tmp_path / "l.sqlite"), max_retries=2)
    faults = _PersistFails(eng.ledger, "database or disk is full")
    with pytest.raises(LedgerError, match="database or disk is full") as info:
        eng.decide(make_batch(ANSWERS), 0)
    assert str(tmp_path / "l.sqlite") in str(info.value)
    assert oracle.asked == [["p0", "p1"]]  # once: not retried as an oracle failure (was 3 calls, 3 bills)
    assert eng.ledger.n_charged == 0 and eng.ledger.n_pending == 0  # released: nothing charged, nothing pending
    faults.times = 0  # the disk has room again: the next step writes the answers it has, without asking
    res = eng.decide(make_batch(ANSWERS), 1)
    assert oracle.asked == [["p0", "p1"]] and res.bought == ["p0", "p1"] and res.labels[:2] == ["1", "1"]
    assert res.metrics["labels_bought_this_step"] == 2 and eng.spent == eng.ledger.n_bought == 2


def test_a_transient_ledger_write_failure_leaves_the_step_counts_right() -> None:
    oracle = Counting(GT)
    eng = _engine(Fixed([Route.QUERY, Route.QUERY, Route.PSEUDO, Route.PSEUDO]), oracle)
    faults = _PersistFails(eng.ledger, "database is locked", times=1)
    res = eng.decide(make_batch(ANSWERS), 0)
    assert faults.failures == 1 and oracle.asked == [["p0", "p1"]]
    assert res.bought == ["p0", "p1"] and res.failed == [] and res.routes[:2].tolist() == [Route.QUERY] * 2
    assert res.metrics["labels_bought_this_step"] == 2 == res.metrics["budget_spent"] == eng.ledger.n_bought
    assert res.oracle_errors == 0


# ------------------------------------------------------------------ fingerprint: a ledger of another dataset
def test_a_ledger_of_another_dataset_is_refused_by_the_engine(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    from rlavr.labels import LedgerMismatchError

    path = str(tmp_path / "l.sqlite")
    first = _engine(Fixed([Route.QUERY] * 4), Counting(GT), ledger=path, answer_space="exact")
    first.decide(make_batch(ANSWERS), 0)
    first.ledger.close()
    same = _engine("random", Counting(dict(GT)), ledger=path, answer_space="exact")  # same data: fine (a resume)
    assert same.ledger.fingerprint["labels"] == DatasetOracle(GT).fingerprint()["labels"]
    same.ledger.close()
    other = {f"p{i}": "2" for i in range(4)}  # another dataset whose ids collide
    with pytest.raises(LedgerMismatchError, match="allow_foreign_ledger") as info:
        _engine("random", Counting(other), ledger=path, answer_space="exact")
    assert path in str(info.value)
    with pytest.raises(LedgerMismatchError, match="answer_space"):
        _engine("random", Counting(GT), ledger=path, answer_space="integer")
    with caplog.at_level(logging.WARNING):
        forced = _engine("random", Counting(other), ledger=path, answer_space="exact", allow_foreign_ledger=True)
    assert "another dataset" in caplog.text and forced.ledger.get("p0") == "1"  # used as asked, knowingly
    forced.ledger.close()
    # an oracle without a fingerprint: only the answer space is checked
    blind = _engine("random", CallableOracle(lambda i, p: "2"), ledger=path, answer_space="exact")
    blind.ledger.close()


def test_resuming_on_a_copy_without_its_wal_is_refused_with_the_way_out(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from rlavr.labels import LedgerMismatchError

    eng = _engine(Fixed([Route.QUERY] * 4), Counting(GT), ledger=str(tmp_path / "run.sqlite"))
    eng.decide(make_batch(ANSWERS), 0)
    state = eng.state_dict()
    shutil.copy(tmp_path / "run.sqlite", tmp_path / "copy.sqlite")  # the labels are still in run.sqlite-wal
    resumed = _engine(Fixed([Route.QUERY] * 4), Counting(GT), ledger=str(tmp_path / "copy.sqlite"))
    with pytest.raises(LedgerMismatchError) as info:
        resumed.load_state_dict(state)
    msg = str(info.value)
    assert "copy.sqlite" in msg and "-wal" in msg and "rlavr ledger backup" in msg and "run.sqlite" in msg
    backup = eng.ledger.backup(tmp_path / "backup.sqlite")  # the right way to copy a live ledger
    ok = _engine(Fixed([Route.QUERY] * 4), Counting(GT), ledger=str(backup))
    ok.load_state_dict(state)
    assert ok.ledger.n_charged == eng.ledger.n_charged == 4


def test_step_result_carries_the_budget_view_it_was_given():
    """StepResult.budget is the view the strategy saw: its cap is the global cap integrations log."""
    from rlavr.engine import AcquisitionEngine
    from rlavr.labels import DatasetOracle
    from rlavr.strategies.registry import get_strategy
    from rlavr.testing import make_batch

    batch = make_batch(0)
    oracle = DatasetOracle({pid: "1" for pid in batch.ids})
    eng = AcquisitionEngine(get_strategy("random"), oracle, budget=0.5, answer_space="exact")
    res = eng.decide(batch, step=0)
    assert res.budget is not None and res.budget.cap == eng.budget.global_cap(eng.ledger.prompts_seen)
    assert res.budget.spent == 0 and res.budget.remaining == len(res.bought)


# ------------------------------------------------------------------------------------------ capabilities


class _ProtocolRule:
    """Satisfies StrategyProtocol without subclassing Strategy, with a diagnostics hook and no
    transform_advantages / prompt_sampler."""

    name = "test-protocol-caps"
    requires = frozenset({"answers"})
    trains_on_pseudo_labels = True

    def __init__(self) -> None:
        self.graded: list[list[str | None]] = []
        self.updates = 0

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        return Acquisition(routes=np.full(batch.B, Route.PSEUDO, np.int8), weights=np.ones(batch.B),
                           scores=np.zeros(batch.B))

    def update(self, batch, acquisition, labels):  # type: ignore[no-untyped-def]
        self.updates += 1

    def diagnostics(self, batch, acquisition):  # type: ignore[no-untyped-def]
        self.graded.append(list(batch.reference_labels))
        return {"graded": 1.0}

    def state_dict(self) -> dict[str, object]:
        return {}

    def load_state_dict(self, state: dict[str, object]) -> None:
        pass


def test_the_engine_asks_the_strategys_capabilities_computed_once() -> None:
    """The engine computes capabilities once (construction) and asks them for every hook; a protocol-only rule
    gets the hooks it defines (diagnostics graded against the reference, update after the step)."""
    rule = _ProtocolRule()
    eng = _engine(rule)  # type: ignore[arg-type]
    caps = eng.capabilities
    assert caps.diagnoses and caps.learns and not caps.transforms_advantages and not caps.pool_stage
    assert caps.trains_on_pseudo_labels and eng.failure_route() == (Route.PSEUDO, 1.0)
    res = eng.decide(make_batch(ANSWERS), step=0)
    assert rule.graded == [["1"] * 4] and res.acquisition.metrics["graded"] == 1.0
    eng.update(res)
    assert rule.updates == 1
    assert eng.capabilities is caps  # not recomputed per step


def test_capabilities_follow_a_restored_mask() -> None:
    """load_state_dict may turn the -mask form on: the engine's capabilities (and its oracle-failure route) follow."""
    eng = _engine("random")
    assert eng.capabilities.trains_on_pseudo_labels and eng.failure_route() == (Route.PSEUDO, 1.0)
    state = eng.state_dict()
    state["strategy"] = {**state["strategy"], "mask": True}
    eng.load_state_dict(state)
    assert not eng.capabilities.trains_on_pseudo_labels and eng.failure_route() == (Route.DROP, 0.0)


def test_a_non_numeric_failed_query_weight_is_refused_at_construction() -> None:
    class BoolWeight(Fixed):
        @property
        def failed_query_weight(self) -> float:
            return True  # type: ignore[return-value]

    with pytest.raises(ValueError, match="failed_query_weight: expected a number in \\[0, 1\\], got True"):
        _engine(BoolWeight([Route.QUERY] * 4))
