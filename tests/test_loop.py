"""rlavr.loop.AcquisitionLoop without any training framework: decide, transform, update, state round trip."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from rlavr.advantages import grpo_advantages
from rlavr.budget import BudgetView
from rlavr.engine import AcquisitionEngine
from rlavr.labels import DatasetOracle
from rlavr.loop import AcquisitionLoop, Decision, restore_numpy, weigh_and_transform, weights_only_safe
from rlavr.rollouts import RowFeatures
from rlavr.strategies.base import Strategy, StrategyProtocol, capabilities_of
from rlavr.types import Acquisition, Label, RolloutBatch, Route

G = 4
# three groups: votes right ("1"), wrong ("2"), no valid answer
ANSWERS = [["1", "1", "2", "1"], ["2", "2", "1", "3"], [None, None, None, None]]
GT = {"p0": "1", "p1": "1", "p2": "1"}


def rows(answers: list[list[str | None]] = ANSWERS) -> list[RowFeatures]:
    return [RowFeatures(id=f"p{g}", prompt=f"q{g}", text=a or "", answer=a, length=3, truncated=False)
            for g, group in enumerate(answers) for a in group]


class Fixed(Strategy):
    name = "loop-fixed"

    def __init__(self, routes: list[int], weights: list[float], fail_updates: int = 0) -> None:
        super().__init__()
        self.routes, self.weights, self.fail_updates = routes, weights, fail_updates
        self.updates: list[dict[str, str]] = []

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        return Acquisition(routes=np.array(self.routes), weights=np.array(self.weights),
                           scores=np.arange(len(self.routes), dtype=float))

    def update(self, batch, acquisition, labels):  # type: ignore[no-untyped-def]
        if self.fail_updates:
            self.fail_updates -= 1
            raise RuntimeError("update broke")
        self.updates.append(dict(labels))

    def transform_advantages(self, batch, acquisition, advantages):  # type: ignore[no-untyped-def]
        return advantages * 3.0


class ProtocolOnly:
    """Satisfies StrategyProtocol without subclassing Strategy: its hooks must still be used."""

    name: ClassVar[str] = "loop-protocol"
    requires: ClassVar[frozenset[str]] = frozenset({"answers"})

    def __init__(self) -> None:
        self.transformed = 0

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        B = batch.B
        return Acquisition(routes=np.full(B, Route.PSEUDO, dtype=np.int8), weights=np.ones(B), scores=np.zeros(B))

    def update(self, batch: RolloutBatch, acquisition: Acquisition, labels: Mapping[str, Label]) -> None:
        pass

    def transform_advantages(self, batch: RolloutBatch, acquisition: Acquisition, advantages: np.ndarray) -> np.ndarray:
        self.transformed += 1
        return advantages + 1.0

    def prompt_sampler(self, pool: Any, batch_size: int) -> list[int]:
        return list(range(batch_size))[::-1]

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def make_loop(strategy: Any, tmp_path: Any = None, **kw: Any) -> AcquisitionLoop:
    engine = AcquisitionEngine(strategy, DatasetOracle(GT), budget=kw.pop("budget", None), backoff=0.0)
    return AcquisitionLoop(engine, **kw)


def test_decide_gives_a_picklable_decision_with_its_budget_view() -> None:
    loop = make_loop(Fixed([Route.QUERY, Route.PSEUDO, Route.PSEUDO], [1.0, 0.5, 1.0]), budget=2)
    d = loop.decide(rows(), G, step=7)
    assert d.round == 0 and d.step == 7 and d.B == 3 and d.spent == 1
    assert d.routes.tolist() == [Route.QUERY, Route.PSEUDO, Route.DROP]  # no valid answer -> dropped
    assert d.labels == ("1", "2", None) and d.majority == ("1", "2", None)
    assert d.train_labels == ("1", "2", None)
    assert isinstance(d.budget, BudgetView) and d.cap == 2 and d.budget.spent == 0
    assert d.reweights and d.dropped.tolist() == [False, False, True]
    assert d.row_labels(start=2, n=4) == ["1", "1", "2", "2"]
    assert d.row_labels(start=7, n=2) == ["2", None]
    assert d.route_names(start=3, n=2) == ["query", "pseudo"]
    back = pickle.loads(pickle.dumps(d))
    assert isinstance(back, Decision) and back.labels == d.labels and back.cap == 2
    np.testing.assert_array_equal(back.routes, d.routes)
    metrics = loop.record(d, {"extra": 2.0})
    assert loop.rounds == 1 and loop.spent == 1 and loop.cap == 2
    assert loop.history == [{"step": 7, "round": 0, **metrics, "budget_spent": 1.0}]
    assert metrics["extra"] == 2.0 and metrics["route/query"] == 1.0
    assert loop.summary()["labels_bought"] == 1.0 and loop.summary()["route_drop"] == 1.0


def test_transform_numpy_and_torch_agree_and_match_the_engine() -> None:
    strat = Fixed([Route.QUERY, Route.PSEUDO, Route.PSEUDO], [1.0, 0.5, 1.0])
    loop = make_loop(strat)
    d = loop.decide(rows(), G, step=0)
    result = loop.result_of(d)
    adv = grpo_advantages(loop.engine.rewards(result))
    want = adv * np.array([1.0, 0.5, 0.0])[:, None] * 3.0
    np.testing.assert_allclose(loop.transform(adv, d), want)
    np.testing.assert_allclose(loop.engine.advantages(result), want)  # the engine delegates to the same code
    flat32 = torch.tensor(adv.reshape(-1), dtype=torch.float32)
    got = loop.transform(flat32, d)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32 and got.shape == (3 * G,)
    np.testing.assert_array_equal(got.numpy(), loop.transform(adv.reshape(-1).astype(np.float32), d))
    # weighting alone happens in the advantages' dtype: bitwise what a float32 multiply gives
    w = weigh_and_transform(flat32, d.weights, d.routes, G)
    expect = flat32 * torch.tensor(np.repeat(d.weights, G), dtype=torch.float32)
    assert torch.equal(w, expect)


def test_a_process_slice_is_weighted_like_the_whole_round() -> None:
    """Each process weighs its own rows (global rows start .. start + n - 1): the same numbers as the whole round."""
    loop = make_loop(Fixed([Route.QUERY, Route.PSEUDO, Route.PSEUDO], [1.0, 0.5, 1.0]))
    d = loop.decide(rows(), G, step=0)
    full = torch.randn(3 * G, generator=torch.Generator().manual_seed(0))
    whole = weigh_and_transform(full, d.weights, d.routes, G)
    for start, n in [(0, 6), (6, 6), (3, 5)]:
        part = weigh_and_transform(full[start : start + n], d.weights, d.routes, G, start=start)
        assert torch.equal(part, whole[start : start + n])
    per_token = full[:6, None].repeat(1, 3)
    assert torch.equal(weigh_and_transform(per_token, d.weights, d.routes, G, start=0), whole[:6, None].repeat(1, 3))


def test_unit_weights_return_the_same_object() -> None:
    """A ground-truth-like round (every kept weight 1, no hook): the advantages are not touched at all."""
    loop = make_loop("gt")
    d = loop.decide(rows(), G, step=0)
    adv = torch.randn(3 * G, generator=torch.Generator().manual_seed(0))
    assert loop.transform(adv, d) is adv


def test_transform_errors_name_the_strategy() -> None:
    class Bad(Fixed):
        name = "loop-bad"

        def transform_advantages(self, batch, acquisition, advantages):  # type: ignore[no-untyped-def]
            return advantages * np.nan

    loop = make_loop(Bad([Route.QUERY] * 3, [1.0] * 3))
    d = loop.decide(rows(), G, step=0)
    with pytest.raises(ValueError, match="'loop-bad'.transform_advantages returned non-finite"):
        loop.transform(np.zeros((3, G)), d)
    with pytest.raises(ValueError, match="needs the whole round"):
        loop.transform(np.zeros(5), d)
    with pytest.raises(ValueError, match="B \\* G"):
        weigh_and_transform(np.zeros(5), d.weights, d.routes, G, start=10)
    other = make_loop(Bad([Route.QUERY] * 3, [1.0] * 3))
    with pytest.raises(RuntimeError, match="no pending decision"):
        other.transform(np.zeros((3, G)), d)


def test_protocol_only_strategy_gets_its_hooks() -> None:
    strat = ProtocolOnly()
    assert isinstance(strat, StrategyProtocol) and not isinstance(strat, Strategy)
    caps = capabilities_of(strat)
    assert caps.transforms_advantages and caps.samples_prompts
    loop = make_loop(strat)
    d = loop.decide(rows(), G, step=0)
    np.testing.assert_allclose(loop.transform(np.zeros((3, G)), d), np.ones((3, G)))
    assert strat.transformed == 1
    assert loop.sample_prompts(list(range(10)), 3) == [2, 1, 0]
    assert make_loop(Fixed([0] * 3, [1.0] * 3)).sample_prompts(list(range(10)), 3) is None  # no hook


def test_prompt_sampler_output_is_checked() -> None:
    class Wrong(ProtocolOnly):
        def prompt_sampler(self, pool: Any, batch_size: int) -> list[int]:
            return [0, 99]

    with pytest.raises(ValueError, match="prompt_sampler returned 2 indices"):
        make_loop(Wrong()).sample_prompts(list(range(5)), 2)


def test_failed_update_is_retried_before_the_next_decision_then_raises() -> None:
    strat = Fixed([Route.QUERY, Route.PSEUDO, Route.PSEUDO], [1.0] * 3, fail_updates=1)
    loop = make_loop(strat)
    loop.record(loop.decide(rows(), G, step=0))
    fail = loop.apply_updates()
    assert fail is not None and "update" in fail.where and len(loop.pending) == 1
    loop.record(loop.decide(rows(), G, step=1))  # retried first: succeeds now
    assert strat.updates == [{"p0": "1"}] and len(loop.pending) == 1 and loop.failure is None
    assert loop.apply_updates() is None and strat.updates == [{"p0": "1"}, {"p0": "1"}]
    strat.fail_updates = 2
    loop.decide(rows(), G, step=2)
    assert loop.apply_updates() is not None
    with pytest.raises(RuntimeError, match="failed twice"):
        loop.decide(rows(), G, step=3)


def test_state_round_trip_keeps_pending_updates_and_counters() -> None:
    strat = Fixed([Route.QUERY, Route.PSEUDO, Route.PSEUDO], [1.0] * 3, fail_updates=1)
    loop = make_loop(strat)
    hidden = np.arange(3 * G * 2 * 2, dtype=np.float32).reshape(3 * G, 2, 2)
    loop.record(loop.decide(rows(), G, step=0, hidden=hidden))
    loop.apply_updates()  # fails: the round stays pending
    state = loop.state_dict()
    assert state["version"] == 1 and state["rounds"] == 1 and len(state["pending_updates"]) == 1
    assert loop.state_dict(main=False)["pending_updates"] == []
    fresh_strategy = Fixed([Route.QUERY, Route.PSEUDO, Route.PSEUDO], [1.0] * 3)
    fresh = AcquisitionLoop(AcquisitionEngine(fresh_strategy, DatasetOracle(GT), ledger=loop.engine.ledger))
    fresh.load_state_dict(state)  # applies the pending update at once
    assert fresh_strategy.updates == [{"p0": "1"}] and fresh.pending == [] and fresh.resumed
    assert fresh.rounds == 1 and fresh.spent == 1 and fresh.history == loop.history
    counters = AcquisitionLoop(AcquisitionEngine(Fixed([0] * 3, [1.0] * 3), DatasetOracle(GT)))
    counters.load_state_dict(state, main=False)  # another process: counters only
    assert counters.rounds == 1 and counters.history == loop.history
    with pytest.raises(ValueError, match="strategy 'loop-fixed'"):
        make_loop("random").load_state_dict(state)
    with pytest.raises(ValueError, match="version"):
        fresh.load_state_dict({**state, "version": 9})


class NumpyMetrics(Fixed):
    name = "loop-fixed"

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        acq = super().select(batch, budget)
        return Acquisition(routes=acq.routes, weights=acq.weights, scores=acq.scores,
                           metrics={"numpy_metric": np.float64(0.5)})


def test_state_with_a_pending_update_and_hidden_states_loads_with_weights_only(tmp_path: Any) -> None:
    """Regression: a pending update kept its hidden states as a numpy array (and numpy metric scalars), which
    ``torch.load(weights_only=True)`` refuses; every integration had to convert them itself."""
    strat = NumpyMetrics([Route.QUERY, Route.PSEUDO, Route.PSEUDO], [1.0] * 3, fail_updates=1)
    loop = make_loop(strat)
    hidden = np.arange(3 * G * 2 * 2, dtype=np.float32).reshape(3 * G, 2, 2)
    loop.record(loop.decide(rows(), G, step=0, hidden=hidden))
    assert loop.apply_updates() is not None  # the round stays pending, with its hidden states
    state = loop.state_dict()
    assert isinstance(state["pending_updates"][0]["hidden"], torch.Tensor)
    torch.save(state, tmp_path / "rlavr_state.pt")
    back = torch.load(tmp_path / "rlavr_state.pt", weights_only=True)
    fresh_strategy = Fixed([Route.QUERY, Route.PSEUDO, Route.PSEUDO], [1.0] * 3)
    fresh = AcquisitionLoop(AcquisitionEngine(fresh_strategy, DatasetOracle(GT), ledger=loop.engine.ledger))
    fresh.load_state_dict(back)
    assert fresh_strategy.updates == [{"p0": "1"}] and fresh.pending == [] and fresh.rounds == 1
    # the old form (hidden states as a numpy array) is still accepted
    old = loop.state_dict()
    old["pending_updates"][0]["hidden"] = hidden.copy()
    older = Fixed([Route.QUERY, Route.PSEUDO, Route.PSEUDO], [1.0] * 3)
    AcquisitionLoop(AcquisitionEngine(older, DatasetOracle(GT), ledger=loop.engine.ledger)).load_state_dict(old)
    assert older.updates == [{"p0": "1"}]


class NumpyState(Fixed):
    """A user's rule whose state holds numpy arrays and scalars (the built-in rules convert theirs)."""

    name = "loop-fixed"

    def __init__(self) -> None:
        super().__init__([Route.QUERY, Route.PSEUDO, Route.PSEUDO], [1.0] * 3)
        self.table = np.zeros((2, 3), dtype=np.float32)
        self.counts = np.array([1, 2], dtype=np.int64)

    def update(self, batch, acquisition, labels):  # type: ignore[no-untyped-def]
        super().update(batch, acquisition, labels)
        self.table += 1.5
        self.counts[0] += 7

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "table": self.table, "counts": self.counts, "names": np.array(["a", "b"]),
                "nested": [{"x": np.float64(0.25), "y": (np.int32(3), np.arange(3, dtype=np.uint8))}]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.table, self.counts, self.loaded = state["table"], state["counts"], state


def test_a_strategy_state_with_numpy_arrays_loads_with_weights_only(tmp_path: Any) -> None:
    """Regression: a user's rule whose state_dict held numpy arrays made the checkpoint unreadable with
    ``torch.load(weights_only=True)`` (the TRL trainer's resume); the loop now encodes them and gives them back."""
    loop = make_loop(NumpyState())
    loop.record(loop.decide(rows(), G, step=0))
    assert loop.apply_updates() is None
    torch.save(loop.state_dict(), tmp_path / "rlavr_state.pt")
    back = torch.load(tmp_path / "rlavr_state.pt", weights_only=True)
    fresh = NumpyState()
    AcquisitionLoop(AcquisitionEngine(fresh, DatasetOracle(GT), ledger=loop.engine.ledger)).load_state_dict(back)
    assert isinstance(fresh.table, np.ndarray) and fresh.table.dtype == np.float32
    assert np.array_equal(fresh.table, np.full((2, 3), 1.5, dtype=np.float32))
    assert fresh.counts.dtype == np.int64 and fresh.counts.tolist() == [8, 2]
    names = fresh.loaded["names"]
    assert isinstance(names, np.ndarray) and names.tolist() == ["a", "b"] and names.dtype.kind == "U"
    x, (y0, y1) = fresh.loaded["nested"][0]["x"], fresh.loaded["nested"][0]["y"]
    assert x == 0.25 and y0 == 3 and y1.dtype == np.uint8 and y1.tolist() == [0, 1, 2]
    # states of the built-in rules carry no numpy object: unchanged by the encoding
    builtin = make_loop("random").state_dict()["engine"]
    assert weights_only_safe(builtin) == builtin and restore_numpy(builtin) == builtin


def test_a_dropped_group_has_no_training_label() -> None:
    """Regression: a DROP group's train_labels / row_labels / relabel carried its majority answer (and relabel
    left the dataset's own, possibly true, value), so a reward function could train on it by accident."""
    loop = make_loop(Fixed([Route.QUERY, Route.DROP, Route.PSEUDO], [1.0, 0.0, 1.0]))
    d = loop.decide(rows(), G, step=0)
    assert d.routes.tolist() == [Route.QUERY, Route.DROP, Route.DROP]
    assert d.majority[1] == "2" and d.train_labels == ("1", None, None)
    assert d.row_labels() == ["1"] * G + [None] * 2 * G
    data = [{"id": f"p{r // G}", "answer": "1"} for r in range(3 * G)]
    out = d.relabel(data, "answer")
    assert [x["answer"] for x in out] == ["1"] * G + [None] * 2 * G
    assert data[G]["answer"] == "1"  # copies: the dataset rows are left alone
    # a reward against a None label is never correct: all-zero rewards, advantage 0 by GRPO itself
    space = loop.answer_space
    assert not any(space.grade(x.answer, lab) for x, lab in zip(rows()[G:], d.row_labels(G), strict=True))


def test_rollout_log_is_written_on_decide(tmp_path: Any) -> None:
    from rlavr.rollout_log import load_rollout_log

    path = tmp_path / "sub" / "rollouts.jsonl"
    loop = make_loop(Fixed([Route.QUERY, Route.PSEUDO, Route.PSEUDO], [1.0] * 3), rollout_log=path)
    loop.decide(rows(), G, step=4)
    log = load_rollout_log(path)
    assert [b.step for b in log.batches] == [4] and log.labels == GT  # the oracle's free reference labels


def test_pool_fit_without_pool_stage_buys_nothing() -> None:
    loop = make_loop("random", budget=0.5)
    fit = loop.fit_pool(rows(), G, step=0)
    assert fit.metrics == {} and fit.spent == 0 and fit.prompts == 3
    metrics = loop.record_pool_fit(fit, {"pool_generation_seconds": 1.0})
    assert metrics == {"pool_prompts": 3.0, "pool_generation_seconds": 1.0} and loop.pool_fitted
    assert not loop.wants_pool_fit()
