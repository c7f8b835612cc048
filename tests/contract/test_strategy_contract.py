"""The strategy contract: ONE parametrised suite every acquisition strategy must pass.

Covered automatically:

* every registered built-in (discovered through :func:`rlavr.strategies.available`, so strategies added later
  are picked up without editing this file), in plain and ``-mask`` form where supported;
* every user-style rule in the top-level ``strategies/`` folder (every class defined there that subclasses
  :class:`~rlavr.strategies.base.Strategy`), loaded by path exactly as users load them.

Batches carry every signal a strategy may declare (answers, per-token log-probabilities, prompt and response
hidden states, attention statistics, and reference labels when ``"labels"`` is required). Nothing is skipped:
a strategy that declares a signal this suite cannot build fails loudly.
"""

from __future__ import annotations

import ast
import copy
import pickle
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rlavr.advantages import grpo_advantages
from rlavr.budget import BudgetView
from rlavr.engine import AcquisitionEngine
from rlavr.labels import DatasetOracle
from rlavr.strategies import SIGNALS, Strategy, available, get_strategy, load_strategy_class
from rlavr.types import Acquisition, PromptGroup, Rollout, RolloutBatch, Route

torch = pytest.importorskip("torch", reason="torch is a hard dependency of rlavr; the RNG checks need it")

ROOT = Path(__file__).resolve().parents[2]
USER_DIR = ROOT / "strategies"
ANSWERS = ("1", "2", "3", "4")
H = 8  # hidden size of the synthetic batches
EXPECTED_BUILTINS = {"gt", "ttrl", "ttrl-mask", "random", "entropy", "prob", "oracle", "oracle-decay"}
EXPECTED_USER_RULES = {"low-agreement", "answer-margin", "length-disagreement"}


# ====================================================================================== discovery


@dataclass(frozen=True)
class Spec:
    """How to build one strategy under test."""

    id: str
    cls: type[Strategy]
    mask: bool
    source: str  # registry name or "path.py:Class"
    factory: Callable[..., Strategy] | None = None  # only for the negative controls at the end of this file

    def build(self, seed: int) -> Strategy:
        kwargs: dict[str, Any] = {"seed": seed}
        if self.mask:
            kwargs["mask"] = True
        if self.factory is not None:
            return self.factory(**kwargs)
        return get_strategy(self.source, **kwargs)


def _user_rule_sources() -> list[str]:
    """``path.py:Class`` for every class defined in ``strategies/*.py`` that subclasses Strategy."""
    out = []
    for path in sorted(USER_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                out.append(f"{path}:{node.name}")
    return out


def _discover() -> list[Spec]:
    specs: list[Spec] = []
    for key, cls in available().items():
        if key != cls.name.lower():
            continue  # an alias of a strategy listed under its own name
        specs.append(Spec(cls.name, cls, False, cls.name))
        if cls.supports_mask:
            specs.append(Spec(f"{cls.name}-mask", cls, True, cls.name))
    for source in _user_rule_sources():
        cls = load_strategy_class(source)
        if not issubclass(cls, Strategy):
            continue
        rel = Path(source.rsplit(":", 1)[0]).name + ":" + cls.__name__
        specs.append(Spec(f"user:{rel}", cls, False, source))
        if cls.supports_mask:
            specs.append(Spec(f"user:{rel}-mask", cls, True, source))
    return specs


SPECS = _discover()


def test_discovery_finds_builtins_and_user_rules() -> None:
    names = {s.cls.name for s in SPECS}
    assert names >= EXPECTED_BUILTINS, f"missing built-ins: {EXPECTED_BUILTINS - names}"
    assert names >= EXPECTED_USER_RULES, f"missing user rules: {EXPECTED_USER_RULES - names}"
    ids = [s.id for s in SPECS]
    assert len(ids) == len(set(ids)), "two strategies under test share an id"


def test_every_declared_signal_is_known() -> None:
    for spec in SPECS:
        assert set(spec.cls.requires) <= SIGNALS, (spec.id, spec.cls.requires)


# ====================================================================================== synthetic batches


def _attention_stats(rng: np.random.Generator) -> dict[str, Any]:
    """Generic per-rollout attention statistics (a scalar pivot density and a short distance trace)."""
    trace = rng.uniform(0.0, 64.0, size=int(rng.integers(1, 12)))
    return {"pivot_density": float(rng.uniform(0.0, 1.0)), "attention_distance": trace,
            "n_pivots": int(rng.integers(0, 5))}


def make_batch(seed: int, B: int = 8, G: int = 4, *, step: int = 0, all_invalid: bool = False,
               labels: bool = False, prefix: str = "p") -> RolloutBatch:
    """A batch with every signal: answers (some invalid, one all-invalid group), token log-probs, hidden states,
    attention statistics; reference labels when ``labels``."""
    rng = np.random.default_rng(seed)
    groups = []
    for i in range(B):
        if all_invalid or i == B - 1:
            answers: list[str | None] = [None] * G
        elif i % 3 == 0:
            answers = [ANSWERS[i % 4]] * G  # unanimous
        else:
            answers = [None if rng.random() < 0.15 else str(rng.choice(ANSWERS)) for _ in range(G)]
        rollouts = []
        for a in answers:
            T = int(rng.integers(1, 40))
            rollouts.append(Rollout(
                text=f"... so the answer is {a}" if a is not None else "no idea",
                answer=a,
                token_logprobs=-rng.exponential(0.7, size=T),
                truncated=bool(rng.random() < 0.1),
                hidden=rng.normal(size=H).astype(np.float32),
                attention=_attention_stats(rng),
            ))
        groups.append(PromptGroup(id=f"{prefix}{step}-{i}", prompt=f"question {i} at step {step}",
                                  rollouts=tuple(rollouts), prompt_hidden=rng.normal(size=H).astype(np.float32)))
    ref = [str(rng.choice(ANSWERS)) for _ in range(B)] if labels else None
    return RolloutBatch.from_groups(groups, reference_labels=ref, step=step)


def batch_for(spec: Spec, seed: int, **kw: Any) -> RolloutBatch:
    return make_batch(seed, labels="labels" in spec.cls.requires, **kw)


def label_table(batch: RolloutBatch) -> dict[str, str]:
    """Ground truth for a synthetic batch, deterministic in the prompt id."""
    return {pid: ANSWERS[sum(map(ord, pid)) % 4] for pid in batch.ids}


def fresh(spec: Spec, seed: int = 0) -> Strategy:
    """Build the strategy and, if it calibrates on a pool, fit it first (as the trainer does)."""
    s = spec.build(seed)
    if type(s).fit_pool is not Strategy.fit_pool:
        pool = batch_for(spec, 10_000 + seed, B=12, prefix="pool")
        fitted = s.fit_pool(pool, label_table(pool))
        assert isinstance(fitted, Mapping)
        # fitted values are numbers; +-inf is allowed (a threshold that admits everything), NaN is not
        assert all(not np.isnan(float(v)) for v in fitted.values()), fitted
    return s


def gt_labels(batch: RolloutBatch, acq: Acquisition) -> dict[str, str]:
    table = label_table(batch)
    return {batch.ids[i]: table[batch.ids[i]] for i in np.flatnonzero(acq.query)}


def check_acquisition(acq: Any, batch: RolloutBatch, view: BudgetView, who: str) -> Acquisition:
    assert isinstance(acq, Acquisition), f"{who}: select returned {type(acq).__name__}"
    B = batch.B
    assert acq.routes.shape == (B,) and acq.weights.shape == (B,) and acq.scores.shape == (B,), who
    assert set(np.unique(acq.routes).tolist()) <= {int(r) for r in Route}, who
    assert np.all(np.isfinite(acq.scores)), f"{who}: non-finite scores {acq.scores}"
    assert np.all(np.isfinite(acq.weights)) and np.all((acq.weights >= 0) & (acq.weights <= 1)), who
    new = acq.query & ~view.known
    assert int(new.sum()) <= view.remaining, f"{who}: {int(new.sum())} new queries > remaining {view.remaining}"
    for k, v in acq.metrics.items():
        assert isinstance(k, str) and np.isfinite(float(v)), f"{who}: metric {k}={v!r}"
    return acq


def views(B: int, seed: int) -> list[BudgetView]:
    rng = np.random.default_rng(seed)
    some_known = rng.random(B) < 0.3
    return [
        BudgetView(remaining=0, known=np.zeros(B, bool)),
        BudgetView(remaining=2, known=np.zeros(B, bool)),
        BudgetView(remaining=B, known=np.zeros(B, bool)),
        BudgetView(remaining=1, known=some_known, spent=3, cap=4),
        BudgetView(remaining=0, known=np.ones(B, bool)),
    ]


def acq_equal(a: Acquisition, b: Acquisition) -> bool:
    return (np.array_equal(a.routes, b.routes) and np.array_equal(a.weights, b.weights)
            and np.array_equal(a.scores, b.scores))


ids = [s.id for s in SPECS]
params = pytest.mark.parametrize("spec", SPECS, ids=ids)


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Any:
    """Tiny classifiers run fastest single-threaded (and the CI box has 2 shared cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ====================================================================================== the contract


@params
def test_select_returns_valid_acquisition_within_budget(spec: Spec) -> None:
    s = fresh(spec)
    for seed in (1, 2):
        batch = batch_for(spec, seed, step=seed)
        for view in views(batch.B, seed):
            check_acquisition(s.select(batch, view), batch, view, spec.id)


@params
def test_known_groups_are_free(spec: Spec) -> None:
    """With nothing left to spend, only groups whose label is already owned may be queried."""
    s = fresh(spec)
    batch = batch_for(spec, 3)
    known = np.zeros(batch.B, bool)
    known[::2] = True
    view = BudgetView(remaining=0, known=known, spent=10, cap=10)
    acq = check_acquisition(s.select(batch, view), batch, view, spec.id)
    assert not np.any(acq.query & ~known), f"{spec.id}: queried an unknown group with remaining=0"


@params
def test_deterministic_for_a_seed(spec: Spec) -> None:
    a, b = fresh(spec, seed=7), fresh(spec, seed=7)
    for step in range(3):
        batch = batch_for(spec, 100 + step, step=step)
        view = BudgetView(remaining=3, known=np.zeros(batch.B, bool))
        qa, qb = a.select(batch, view), b.select(batch, view)
        assert acq_equal(qa, qb), f"{spec.id}: two instances with the same seed disagree at step {step}"
        a.update(batch, qa, gt_labels(batch, qa))
        b.update(batch, qb, gt_labels(batch, qb))


def _global_rng_state() -> tuple[Any, Any, Any]:
    return np.random.get_state(), random.getstate(), torch.random.get_rng_state().clone()


def _assert_same_global_rng(before: tuple[Any, Any, Any], who: str) -> None:
    np_state, py_state, torch_state = _global_rng_state()
    assert np_state[0] == before[0][0] and np.array_equal(np_state[1], before[0][1]) and np_state[2:] == before[0][2:], (
        f"{who}: drew from the global numpy RNG")
    assert py_state == before[1], f"{who}: drew from Python's global `random`"
    assert torch.equal(torch_state, before[2]), f"{who}: drew from the global torch RNG"


@params
def test_no_global_rng_draws(spec: Spec) -> None:
    """Construction, select, update, hooks and state handling never touch the global numpy/random/torch RNG."""
    np.random.seed(1234)
    random.seed(1234)
    torch.manual_seed(1234)
    before = _global_rng_state()
    s = fresh(spec, seed=3)
    for step in range(2):
        batch = batch_for(spec, 200 + step, step=step)
        view = BudgetView(remaining=2, known=np.zeros(batch.B, bool))
        acq = s.select(batch, view)
        s.update(batch, acq, gt_labels(batch, acq))
        adv = grpo_advantages(batch.correctness(batch.votes.majority_answer).astype(float))
        s.transform_advantages(batch, acq, adv)
    s.load_state_dict(s.state_dict())
    _assert_same_global_rng(before, spec.id)


@params
def test_state_dict_round_trip(spec: Spec) -> None:
    """A strategy restored from a (pickled) state makes the same decisions as the original from then on."""
    a = fresh(spec, seed=11)
    for step in range(2):
        batch = batch_for(spec, 300 + step, step=step)
        acq = a.select(batch, BudgetView(remaining=3, known=np.zeros(batch.B, bool)))
        a.update(batch, acq, gt_labels(batch, acq))
    state = pickle.loads(pickle.dumps(a.state_dict()))
    snapshot = copy.deepcopy(state)
    b = fresh(spec, seed=12)  # a different seed: everything that matters must come from the state
    b.load_state_dict(state)
    for step in range(2, 4):
        batch = batch_for(spec, 300 + step, step=step)
        view = BudgetView(remaining=3, known=np.zeros(batch.B, bool))
        qa, qb = a.select(batch, view), b.select(batch, view)
        assert acq_equal(qa, qb), f"{spec.id}: restored strategy diverged at step {step}"
        a.update(batch, qa, gt_labels(batch, qa))
        b.update(batch, qb, gt_labels(batch, qb))
    assert pickle.dumps(snapshot) == pickle.dumps(state) or _deep_equal(snapshot, state), (
        f"{spec.id}: load_state_dict mutated the state it was given")


def _deep_equal(x: Any, y: Any) -> bool:
    if isinstance(x, Mapping) and isinstance(y, Mapping):
        return x.keys() == y.keys() and all(_deep_equal(x[k], y[k]) for k in x)
    if isinstance(x, list | tuple) and isinstance(y, list | tuple):
        return len(x) == len(y) and all(_deep_equal(a, b) for a, b in zip(x, y, strict=True))
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and torch.equal(x, y)
    if isinstance(x, np.ndarray):
        return isinstance(y, np.ndarray) and np.array_equal(x, y)
    return bool(x == y)


@params
def test_all_invalid_groups(spec: Spec) -> None:
    """A batch in which no rollout has an answer: valid decision, and the engine trains on nothing it can't label."""
    s = fresh(spec)
    batch = batch_for(spec, 4, all_invalid=True)
    for view in views(batch.B, 4):
        check_acquisition(s.select(batch, view), batch, view, spec.id)
    _run_engine(spec, steps=2, batch_fn=lambda step: batch_for(spec, 40 + step, step=step, all_invalid=True))


@params
def test_group_size_one(spec: Spec) -> None:
    s = fresh(spec)
    batch = batch_for(spec, 5, G=1)
    for view in views(batch.B, 5):
        check_acquisition(s.select(batch, view), batch, view, spec.id)
    _run_engine(spec, steps=2, batch_fn=lambda step: batch_for(spec, 50 + step, step=step, G=1))


def _run_engine(spec: Spec, steps: int, batch_fn: Callable[[int], RolloutBatch],
                budget: float = 0.25) -> AcquisitionEngine:
    """The full loop through the engine: decide (buys through the ledger), advantages, update."""
    s = fresh(spec, seed=5)
    table: dict[str, str] = {}
    batches = [batch_fn(step) for step in range(steps)]
    for b in batches:
        table.update(label_table(b))
    engine = AcquisitionEngine(s, DatasetOracle(table), budget=budget)
    seen = 0
    for step, batch in enumerate(batches):
        seen += batch.B
        res = engine.decide(RolloutBatch.from_groups(batch.groups, step=step), step=step)
        assert engine.spent <= budget * seen + 1e-9, f"{spec.id}: spent {engine.spent} > cap at step {step}"
        assert len(set(res.bought)) == len(res.bought)
        for i in range(batch.B):
            if res.routes[i] == Route.DROP:
                assert res.labels[i] is None and res.weights[i] == 0.0
            else:
                assert res.labels[i] is not None
        adv = engine.advantages(res)
        assert adv.shape == (batch.B, batch.G) and np.all(np.isfinite(adv)), spec.id
        assert np.all(adv[res.routes == Route.DROP] == 0.0)
        engine.update(res)
    return engine


@params
def test_engine_loop_respects_budget(spec: Spec) -> None:
    engine = _run_engine(spec, steps=3, batch_fn=lambda step: batch_for(spec, 60 + step, step=step))
    assert engine.ledger.n_charged == engine.ledger.n_bought  # no reservation left behind


@params
def test_optional_hooks_are_well_formed(spec: Spec) -> None:
    s = fresh(spec)
    pool = [{"id": f"q{i}", "prompt": f"question {i}"} for i in range(20)]
    picked = s.prompt_sampler(pool, 6)
    if picked is not None:
        picked = list(picked)
        assert len(picked) == 6, f"{spec.id}: prompt_sampler returned {len(picked)} indices for batch_size 6"
        assert all(isinstance(i, int | np.integer) and 0 <= i < len(pool) for i in picked), picked
    batch = batch_for(spec, 6)
    acq = s.select(batch, BudgetView(remaining=2, known=np.zeros(batch.B, bool)))
    adv = grpo_advantages(batch.correctness(batch.votes.majority_answer).astype(float))
    out = np.asarray(s.transform_advantages(batch, acq, adv.copy()))
    assert out.shape == adv.shape and np.all(np.isfinite(out)), spec.id


@params
def test_pseudo_label_declaration_matches_select(spec: Spec) -> None:
    """A rule that declares ``trains_on_pseudo_labels = False`` never routes a group to PSEUDO itself, and its
    oracle-failure policy is a valid one (the engine's ``on_oracle_failure="auto"`` trusts both)."""
    s = fresh(spec)
    assert s.failed_query_route in (Route.PSEUDO, Route.DROP), spec.id
    assert 0.0 <= float(s.failed_query_weight) <= 1.0, spec.id
    if not s.trains_on_pseudo_labels:
        assert s.failed_query_route == Route.DROP, spec.id
        for seed in (1, 2):
            batch = batch_for(spec, seed, step=seed)
            for view in views(batch.B, seed):
                acq = s.select(batch, view)
                assert not acq.pseudo.any(), f"{spec.id}: declares no pseudo-labels but routed {acq.counts()}"


class _NoLabels(DatasetOracle):
    """Every purchase fails (``None``), the free ``reference()`` still works (for label-peeking rules)."""

    def label(self, prompt_ids: Sequence[str], prompts: Sequence[str]) -> list[str | None]:
        return [None] * len(prompt_ids)


@params
def test_failed_queries_follow_the_strategy_policy(spec: Spec) -> None:
    """With an oracle that never delivers, ``on_oracle_failure="auto"`` sends every failed query where the rule
    says, and a rule without pseudo-labels never trains on one."""
    s = fresh(spec, seed=5)
    batches = [batch_for(spec, 80 + step, step=step) for step in range(2)]
    table: dict[str, str] = {}
    for b in batches:
        table.update(label_table(b))
    engine = AcquisitionEngine(s, _NoLabels(table), budget=0.5, max_retries=0)
    for step, batch in enumerate(batches):
        res = engine.decide(RolloutBatch.from_groups(batch.groups, step=step), step=step)
        assert not (res.routes == Route.QUERY).any() and engine.ledger.n_charged == 0, spec.id
        for pid, route in res.oracle_fallback.items():
            i = res.batch.ids.index(pid)
            if s.failed_query_route == Route.DROP:
                assert route == Route.DROP and res.weights[i] == 0.0, (spec.id, pid)
            elif route == Route.PSEUDO:
                assert res.weights[i] == pytest.approx(s.failed_query_weight), (spec.id, pid)
        if not s.trains_on_pseudo_labels:
            assert not (res.routes == Route.PSEUDO).any(), f"{spec.id}: trained on a pseudo-label"
        engine.update(res)


@params
def test_constructor_rejects_bad_seed(spec: Spec) -> None:
    with pytest.raises(ValueError, match="seed"):
        get_strategy(spec.source, seed=-1)


# ====================================================================================== negative controls
# The checks above must be able to fail: each deliberately broken strategy below violates one clause.


class _GlobalRng(Strategy):
    name = "broken-global-rng"

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        return self.route_by_score(np.random.random(batch.B), budget)


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


class _InfiniteScores(Strategy):
    name = "broken-inf-scores"

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        acq = self.route_by_score(np.zeros(batch.B), budget)
        return Acquisition(routes=acq.routes, weights=acq.weights, scores=np.full(batch.B, np.inf))


class _UndeclaredPseudo(Strategy):
    name = "broken-undeclared-pseudo"

    @property
    def trains_on_pseudo_labels(self) -> bool:
        return False

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        return self.route_by_score(self.rng.random(batch.B), budget)  # pseudo-labels the rest


@pytest.mark.parametrize(("cls", "check"), [
    (_GlobalRng, test_no_global_rng_draws),
    (_Overspender, test_select_returns_valid_acquisition_within_budget),
    (_Overspender, test_known_groups_are_free),
    (_Forgetful, test_state_dict_round_trip),
    (_InfiniteScores, test_select_returns_valid_acquisition_within_budget),
    (_UndeclaredPseudo, test_pseudo_label_declaration_matches_select),
], ids=["global-rng", "overspend", "known-not-free", "state-lost", "inf-scores", "undeclared-pseudo"])
def test_contract_catches_broken_strategies(cls: type[Strategy], check: Callable[[Spec], None]) -> None:
    spec = Spec(cls.name, cls, False, cls.name, factory=cls)
    with pytest.raises(AssertionError):
        check(spec)
