"""The one pool-purchase path (rlavr.strategies.pool) behind Strategy.fit_pool_with_engine: budget accounting of
pool labels, the engine's retries / timeout, busy ids, and the generic base-class driver."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from rlavr.engine import AcquisitionEngine
from rlavr.labels import DatasetOracle, LabelLedger
from rlavr.strategies import get_strategy
from rlavr.strategies.base import Strategy
from rlavr.strategies.pivottrace import PivotTrace
from rlavr.strategies.pool import POOL_STEP, buy_pool_labels, pool_step_charged
from rlavr.strategies.posneg_pairing import PosNegPairing
from rlavr.strategies.uncertainty_consistency import UncertaintyConsistency
from rlavr.types import PromptGroup, Rollout, RolloutBatch


def pool_batch(n: int = 50, G: int = 4, prefix: str = "q", seed: int = 0) -> RolloutBatch:
    rng = np.random.default_rng(seed)
    groups = []
    for i in range(n):
        k = int(rng.integers(0, 10))
        text = " ".join(["wait"] * k + ["step"] * (20 - k))
        rolls = tuple(Rollout(text=text, answer="r" if rng.random() < 0.5 else f"w{j}", length=100,
                              mean_logprob=float(-rng.gamma(2.0, 0.5))) for j in range(G))
        groups.append(PromptGroup(id=f"{prefix}{i}", prompt=f"question {i}", rollouts=rolls))
    return RolloutBatch.from_groups(groups)


def oracle_for(n: int = 50, prefix: str = "q") -> DatasetOracle:
    return DatasetOracle({f"{prefix}{i}": "r" for i in range(n)})


def pivot() -> PivotTrace:
    return PivotTrace(detector="lexical", probe_window=2)  # 32 probes on a 50-prompt pool


# ------------------------------------------------------------------------------------------ budget accounting


def test_ratio_budget_pool_is_recorded_as_prompts_seen() -> None:
    pool = pool_batch()
    s = pivot()
    engine = AcquisitionEngine(s, oracle_for(), budget=0.2)
    out = s.fit_pool_with_engine(engine, pool)
    assert out["pool_labels_bought"] == 10 and out["pool_labels_refused"] == 22  # floor(0.2 * 50)
    assert engine.ledger.prompts_seen == 50 and engine.spent == 10
    assert pool_step_charged(engine) == 10 and engine.ledger.last_step == POOL_STEP  # below every training step
    # the first training step keeps its own share: floor(0.2 * 60) - 10 = 2 (old code: floor(0.2 * 10) - 10 -> 0)
    new = pool_batch(10, prefix="n", seed=1)
    engine.ledger.record_step(0, new.B)
    assert engine.budget_view(new).remaining == 2
    assert engine.ledger.last_step == 0  # the pool key never becomes the ledger's position
    assert engine.ledger.drop_steps_after(-1) == 1 and engine.ledger.prompts_seen == 50  # a rewind keeps the pool
    engine.ledger.record_step(0, new.B)
    # refitting does not count the pool twice
    s.fit_pool_with_engine(engine, pool)
    assert engine.ledger.prompts_seen == 60 and engine.spent <= 12  # floor(0.2 * 60): the cap holds


@pytest.mark.parametrize("make", [pivot, lambda: UncertaintyConsistency(mode="offline")])
def test_per_step_only_budget_caps_the_pool_step(make: Any) -> None:
    pool = pool_batch()
    s = make()
    engine = AcquisitionEngine(s, oracle_for(), budget="0.2/step")
    out = s.fit_pool_with_engine(engine, pool)
    # old code: no global cap -> every requested label bought (32 probes, or all 50 pool prompts)
    assert out["pool_labels_bought"] == 10 and engine.spent == 10  # ceil(0.2 * 50)
    assert pool_step_charged(engine) == 10
    # a second fit in the same pool step shares the same per-step cap
    again = buy_pool_labels(engine, pool, pool.ids)
    assert again.bought == [] and len(again.reused) == 10 and len(again.refused) == 40


def test_per_step_cap_is_shared_across_pairing_rounds() -> None:
    pool = pool_batch(12)
    s = PosNegPairing()
    engine = AcquisitionEngine(s, oracle_for(12), budget="1/step")
    with pytest.warns(UserWarning):
        out = s.fit_pool_with_engine(engine, pool)
    assert engine.spent == 1 and out["labels_spent"] == 1 and out["pool_labels_refused"] >= 1


# ------------------------------------------------------------------------------------------ the engine's oracle settings


class Flaky:
    """Raises on the first ``n_raise`` calls, then returns ``None`` for every id on the next ``n_none`` calls."""

    def __init__(self, n_raise: int = 0, n_none: int = 0, sleep: float = 0.0) -> None:
        self.n_raise, self.n_none, self.sleep = n_raise, n_none, sleep
        self.calls = 0
        self.delivered: list[str] = []

    def label(self, ids, prompts):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.sleep and self.calls == 1:
            time.sleep(self.sleep)
        if self.calls <= self.n_raise:
            raise RuntimeError("transient outage")
        if self.calls <= self.n_raise + self.n_none:
            return [None] * len(ids)
        self.delivered += list(ids)
        return ["r"] * len(ids)


def test_pool_purchase_retries_like_the_engine() -> None:
    pool = pool_batch(10)
    oracle = Flaky(n_raise=1, n_none=1)
    s = UncertaintyConsistency(mode="offline")
    engine = AcquisitionEngine(s, oracle, max_retries=2, backoff=0.0)
    out = s.fit_pool_with_engine(engine, pool)  # old code: the first RuntimeError propagated
    assert out["pool_labels_bought"] == 10 and out["pool_labels_failed"] == 0 and oracle.calls == 3
    assert sorted(oracle.delivered) == sorted(pool.ids) and engine.spent == 10
    # retries exhausted: the error propagates, nothing charged
    e2 = AcquisitionEngine(UncertaintyConsistency(mode="offline"), Flaky(n_raise=5), max_retries=1, backoff=0.0)
    with pytest.raises(RuntimeError, match="outage"):
        e2.strategy.fit_pool_with_engine(e2, pool)
    assert e2.spent == 0 and e2.ledger.n_pending == 0


def test_pool_purchase_uses_the_engine_oracle_timeout() -> None:
    pool = pool_batch(6)
    oracle = Flaky(sleep=1.0)  # the first call hangs past the timeout, its late answer is discarded
    s = UncertaintyConsistency(mode="offline")
    engine = AcquisitionEngine(s, oracle, oracle_timeout=0.2, max_retries=1, backoff=0.0)
    out = s.fit_pool_with_engine(engine, pool)
    assert out["pool_labels_bought"] == 6 and engine.spent == 6 and engine.ledger.n_bought == 6
    assert oracle.calls == 2


def test_busy_ids_are_retried_then_reported_never_bought_twice(tmp_path: Any) -> None:
    pool = pool_batch(4)
    path = tmp_path / "ledger.db"
    release = threading.Event()
    asked: list[str] = []

    class Blocking:
        def label(self, ids, prompts):  # type: ignore[no-untyped-def]
            asked.extend(ids)
            release.wait(10)
            return ["r"] * len(ids)

    other = LabelLedger(path, owner="other")
    t = threading.Thread(target=other.purchase, args=(["q0"], ["question 0"], Blocking(), 10, 0))
    t.start()
    while not other.reserved(["q0"])[0]:
        time.sleep(0.01)
    mine = Flaky()
    engine = AcquisitionEngine(UncertaintyConsistency(mode="offline"), mine, ledger=LabelLedger(path, timeout=0.1),
                               max_retries=1, backoff=0.0)
    out = engine.strategy.fit_pool_with_engine(engine, pool)
    release.set()
    t.join()
    assert out["pool_labels_busy"] == 1 and out["pool_labels_bought"] == 3
    assert "q0" not in mine.delivered and asked == ["q0"]  # the live writer's id was never asked here
    assert engine.ledger.n_charged == 4 and engine.ledger.get("q0") == "r"


# ------------------------------------------------------------------------------------------ the generic driver


def test_simple_strategies_have_no_pool_stage() -> None:
    engine = AcquisitionEngine("random", oracle_for())
    assert engine.strategy.fit_pool_with_engine(engine, pool_batch()) == {}
    assert engine.ledger.prompts_seen == 0 and engine.spent == 0
    assert "fit_pool_with_engine" not in vars(type(get_strategy("entropy")))


def test_the_three_strategies_share_the_base_driver() -> None:
    assert "fit_pool_with_engine" not in vars(PivotTrace) and "fit_pool_with_engine" not in vars(UncertaintyConsistency)
    assert PosNegPairing.fit_pool_with_engine.__qualname__.startswith("PosNegPairing")  # thin: adds labels_spent
    for cls in (PivotTrace, UncertaintyConsistency, PosNegPairing):
        assert "pool_label_requests" in vars(cls)
        assert issubclass(cls, Strategy)


def test_unknown_id_and_bad_pool_size_are_clear_errors() -> None:
    engine = AcquisitionEngine("random", oracle_for())
    with pytest.raises(ValueError, match="not in the pool"):
        buy_pool_labels(engine, pool_batch(3), ["zz"])
    with pytest.raises(ValueError, match="pool_size"):
        buy_pool_labels(engine, pool_batch(3), ["q0"], pool_size=0)
