"""The pool stage (rlavr.pool_stage, AcquisitionEngine.fit_pool): the strategy says which pool labels it wants,
the engine buys them. Budget accounting of pool labels under every budget form, the engine's retries / timeout,
busy ids, the generic loop, and the dependency direction (no strategy module imports the engine or the purchase)."""

from __future__ import annotations

import ast
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rlavr.strategies
from rlavr.budget import Budget, BudgetView
from rlavr.engine import AcquisitionEngine
from rlavr.labels import DatasetOracle, LabelLedger
from rlavr.pool_stage import POOL_CHARGED_KEY, POOL_STEP, PoolStageResult, buy_pool_labels, pool_step_charged
from rlavr.strategies import get_strategy
from rlavr.strategies.base import Strategy
from rlavr.strategies.pivottrace import PivotTrace
from rlavr.strategies.posneg_pairing import PosNegPairing
from rlavr.strategies.uncertainty_consistency import UncertaintyConsistency
from rlavr.types import Acquisition, Label, PoolProgress, PromptGroup, Rollout, RolloutBatch


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
    out = engine.fit_pool(pool)
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
    engine.fit_pool(pool)
    assert engine.ledger.prompts_seen == 60 and engine.spent <= 12  # floor(0.2 * 60): the cap holds


@pytest.mark.parametrize("make", [pivot, lambda: UncertaintyConsistency(mode="offline")])
def test_per_step_only_budget_caps_the_pool_step(make: Any) -> None:
    pool = pool_batch()
    s = make()
    engine = AcquisitionEngine(s, oracle_for(), budget="0.2/step")
    out = engine.fit_pool(pool)
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
        out = engine.fit_pool(pool)
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
    out = engine.fit_pool(pool)  # old code: the first RuntimeError propagated
    assert out["pool_labels_bought"] == 10 and out["pool_labels_failed"] == 0 and oracle.calls == 3
    assert sorted(oracle.delivered) == sorted(pool.ids) and engine.spent == 10
    # retries exhausted: the error propagates, nothing charged
    e2 = AcquisitionEngine(UncertaintyConsistency(mode="offline"), Flaky(n_raise=5), max_retries=1, backoff=0.0)
    with pytest.raises(RuntimeError, match="outage"):
        e2.fit_pool(pool)
    assert e2.spent == 0 and e2.ledger.n_pending == 0


def test_pool_purchase_uses_the_engine_oracle_timeout() -> None:
    pool = pool_batch(6)
    oracle = Flaky(sleep=1.0)  # the first call hangs past the timeout, its late answer is discarded
    s = UncertaintyConsistency(mode="offline")
    engine = AcquisitionEngine(s, oracle, oracle_timeout=0.2, max_retries=1, backoff=0.0)
    out = engine.fit_pool(pool)
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
    out = engine.fit_pool(pool)
    release.set()
    t.join()
    assert out["pool_labels_busy"] == 1 and out["pool_labels_bought"] == 3
    assert "q0" not in mine.delivered and asked == ["q0"]  # the live writer's id was never asked here
    assert engine.ledger.n_charged == 4 and engine.ledger.get("q0") == "r"


# ------------------------------------------------------------------------------------------ the generic loop


def test_simple_strategies_have_no_pool_stage() -> None:
    engine = AcquisitionEngine("random", oracle_for(), budget=0.2)
    assert engine.fit_pool(pool_batch()) == {}
    assert engine.ledger.prompts_seen == 0 and engine.spent == 0
    stage = engine.last_pool_stage
    assert stage is not None and not stage.ran and stage.budget.spent == 0 and stage.budget.cap == 0
    assert "fit_pool_with_engine" not in vars(type(get_strategy("entropy")))


def test_no_strategy_overrides_the_deprecated_wrapper() -> None:
    """The three pool-stage strategies only say what they want (pool_label_requests) and fit (fit_pool); none
    drives the purchase (the old PosNegPairing.fit_pool_with_engine override is gone: labels_spent comes from
    the engine's record)."""
    for cls in (PivotTrace, UncertaintyConsistency, PosNegPairing):
        assert "fit_pool_with_engine" not in vars(cls), cls
        assert "pool_label_requests" in vars(cls) and "fit_pool" in vars(cls)
        assert issubclass(cls, Strategy)


def test_deprecated_wrapper_calls_the_engine() -> None:
    pool = pool_batch(12)
    s = PosNegPairing()
    engine = AcquisitionEngine(s, oracle_for(12), budget="1/step")
    with pytest.warns(UserWarning):
        out = s.fit_pool_with_engine(engine, pool)
    assert engine.last_pool_stage is not None and out == engine.last_pool_stage.metrics
    assert engine.spent == 1 and out["labels_spent"] == 1 and s.labels_spent == 1
    other = AcquisitionEngine(PosNegPairing(), oracle_for(12))
    with pytest.raises(ValueError, match="fit_pool_with_engine.engine"):
        s.fit_pool_with_engine(other, pool)  # another strategy's engine: refused, nothing bought
    assert other.spent == 0 and other.ledger.prompts_seen == 0


def test_unknown_id_and_bad_pool_size_are_clear_errors() -> None:
    engine = AcquisitionEngine("random", oracle_for())
    with pytest.raises(ValueError, match="not in the pool"):
        buy_pool_labels(engine, pool_batch(3), ["zz"])
    with pytest.raises(ValueError, match="pool_size"):
        engine.buy_pool_labels(pool_batch(3), ["q0"], pool_size=0)


class Wants(Strategy):
    """Asks for scripted rounds of ids; records what the engine showed it and what fit_pool received."""

    name = "test-pool-wants"

    def __init__(self, rounds: list[list[str]], seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.rounds = rounds
        self.seen: list[tuple[int, list[str], dict[str, Label]]] = []
        self.fitted_with: dict[str, Label] | None = None

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        return self.route_by_score(np.zeros(batch.B), budget)

    def pool_label_requests(self, pool: RolloutBatch, progress: PoolProgress) -> list[str]:
        self.seen.append((progress.rounds, list(progress.requested), dict(progress.owned)))
        return self.rounds[progress.rounds] if progress.rounds < len(self.rounds) else []

    def fit_pool(self, batch: RolloutBatch, labels: Mapping[str, Label]) -> dict[str, float]:
        self.fitted_with = dict(labels)
        return {"n_labels": float(len(labels))}


def test_the_engine_asks_round_after_round_and_never_buys_twice() -> None:
    pool = pool_batch(8)
    oracle = Counting({f"q{i}": "r" for i in range(8)})
    s = Wants([["q0", "q1", "q0"], ["q1", "q2"], ["q0"], ["q3"]])  # q0 / q1 asked again: ignored
    engine = AcquisitionEngine(s, oracle)
    engine.ledger.purchase(["q3"], ["question 3"], oracle, 1, 0)  # owned before the fit: free
    out = engine.fit_pool(pool)
    # round 3 asked only for q0 (already requested): nothing new, the loop stops; q3 is never reached
    assert [r for r, _, _ in s.seen] == [0, 1, 2]
    assert s.seen[1][1] == ["q0", "q1"] and s.seen[0][2] == {"q3": "r"}
    assert s.fitted_with == {"q0": "r", "q1": "r", "q2": "r"}
    assert out == {"n_labels": 3.0, "pool_labels_bought": 3.0, "pool_labels_reused": 0.0,
                   "pool_labels_refused": 0.0, "pool_labels_failed": 0.0, "pool_labels_busy": 0.0}
    assert sorted(oracle.asked) == ["q0", "q1", "q2", "q3"] and engine.spent == 4
    stage = engine.last_pool_stage
    assert isinstance(stage, PoolStageResult) and stage.ran and stage.pool_size == 8
    assert stage.progress.rounds == 2 and stage.budget.spent == 4 and stage.budget.cap is None
    assert engine.ledger.get_meta(POOL_CHARGED_KEY) == 3


def test_a_refused_id_ends_the_rounds() -> None:
    pool = pool_batch(8)
    s = Wants([["q0", "q1", "q2"], ["q3"]])
    engine = AcquisitionEngine(s, oracle_for(8), budget=Budget(total=2))
    out = engine.fit_pool(pool)
    assert out["pool_labels_bought"] == 2 and out["pool_labels_refused"] == 1 and len(s.seen) == 1


class Counting:
    def __init__(self, table: dict[str, str]) -> None:
        self.table = table
        self.asked: list[str] = []

    def label(self, ids, prompts):  # type: ignore[no-untyped-def]
        self.asked += list(ids)
        return [self.table.get(i) for i in ids]


# ------------------------------------------------------------------------------------------ every budget form

budgets = st.one_of(
    st.builds(Budget, ratio=st.sampled_from([0.0, 0.1, 0.2, 0.29, 0.5, 1.0])),
    st.builds(Budget, total=st.integers(0, 12)),
    st.builds(Budget, per_step=st.integers(0, 6)),
    st.builds(Budget, per_step_ratio=st.sampled_from([0.0, 0.2, 0.5, 1.0])),
    st.builds(Budget, ratio=st.sampled_from([0.2, 0.5]), total=st.integers(0, 6),
              per_step_ratio=st.sampled_from([0.2, 0.5, 1.0])),
    st.builds(Budget, ratio=st.sampled_from([0.3, 1.0]), per_step=st.integers(0, 5)),
    st.just(Budget()),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(budget=budgets, n=st.integers(1, 16), owned=st.integers(0, 4), refit=st.booleans(),
       kind=st.sampled_from(["uc-offline", "wants-all", "wants-rounds"]))
def test_fit_pool_buys_exactly_what_every_budget_form_allows(budget: Budget, n: int, owned: int, refit: bool,
                                                             kind: str) -> None:
    """engine.fit_pool buys every wanted pool label the budget allows and not one more, under every budget form:
    the pool is one step of ``n`` prompts (global cap ``global_cap(n)``, pool-step cap ``step_cap(n)``), labels
    already owned are free, nothing is bought twice, and a refit on the same pool buys nothing new beyond the
    caps. The recorded budget view is the ledger's."""
    pool = pool_batch(n, seed=n)
    oracle = Counting({f"q{i}": "r" for i in range(n)})
    ids = list(pool.ids)
    if kind == "uc-offline":
        strategy: Strategy = UncertaintyConsistency(mode="offline", seed=n)
    elif kind == "wants-all":
        strategy = Wants([ids])
    else:  # one id per round
        strategy = Wants([[i] for i in ids])
    engine = AcquisitionEngine(strategy, oracle, budget=budget)
    k = min(owned, n)
    if k:  # labels owned before the fit (bought by an earlier run): free, never charged again
        engine.ledger.purchase(ids[:k], [f"question {i}" for i in range(k)], oracle, k, 0)
    g, c = budget.global_cap(n), budget.step_cap(n)
    allowed = n - k
    if g is not None:
        allowed = min(allowed, max(0, g - k))
    if c is not None:
        allowed = min(allowed, c)
    try:
        out = engine.fit_pool(pool)
    except ValueError as exc:  # offline uncertainty consistency with no label at all: its documented error
        assert kind == "uc-offline" and k + allowed == 0 and "none of the pool" in str(exc)
    else:
        assert out["pool_labels_bought"] == allowed, (out, allowed)
        assert out["pool_labels_reused"] == k
        view = engine.last_pool_stage.budget if engine.last_pool_stage else None
        assert view is not None and view.spent == engine.spent and view.cap == g
    assert engine.spent == k + allowed and pool_step_charged(engine) == allowed
    assert len(oracle.asked) == len(set(oracle.asked)) == k + allowed  # never asked twice
    assert engine.ledger.prompts_seen == n and engine.ledger.n_pending == 0
    if refit and k + allowed:
        again = engine.fit_pool(pool)
        assert again["pool_labels_bought"] == 0  # everything the caps allowed was bought the first time
        assert engine.ledger.prompts_seen == n  # the pool counts once
        assert g is None or engine.spent <= max(g, k)
        assert c is None or pool_step_charged(engine) <= c


# ------------------------------------------------------------------------------------------ dependency direction

STRATEGIES_DIR = Path(rlavr.strategies.__file__).resolve().parent
FORBIDDEN_MODULES = ("rlavr.engine", "rlavr.pool_stage", "rlavr.loop")
FORBIDDEN_NAMES = {"buy_pool_labels", "pool_step_charged", "AcquisitionEngine"}
ENGINE_INTERNALS = {"buy", "ledger", "budget", "buy_pool_labels"}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(tree: ast.AST) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every import outside ``if TYPE_CHECKING:`` blocks (functions included)."""
    out: list[tuple[int, str, list[str]]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name, []) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            mod = "." * node.level + (node.module or "")
            out.append((node.lineno, mod, [a.name for a in node.names]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def _absolute(module: str, path: Path) -> str:
    """``module`` as an absolute name (a relative import is resolved against ``path``'s package)."""
    level = len(module) - len(module.lstrip("."))
    if not level:
        return module
    package = ["rlavr", *path.relative_to(STRATEGIES_DIR.parent).parent.parts]
    base = package[: len(package) - (level - 1)]
    return ".".join([*base, module[level:]] if module[level:] else base)


def test_no_strategy_module_imports_the_engine_or_the_pool_purchase() -> None:
    """Strategies say what they want; the engine buys. No module of rlavr.strategies imports rlavr.engine (or the
    pool purchase) at run time, not even inside a function; only ``if TYPE_CHECKING:`` imports are allowed."""
    bad = []
    files = sorted(STRATEGIES_DIR.rglob("*.py"))
    assert len(files) > 5
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for line, rel, names in _runtime_imports(tree):
            mod = _absolute(rel, path)
            if any(mod == m or mod.startswith(m + ".") for m in FORBIDDEN_MODULES) or (
                    FORBIDDEN_NAMES & set(names)):
                bad.append(f"{path.name}:{line}: {mod} {names}")
    assert not bad, "strategy modules import the engine or the pool purchase:\n" + "\n".join(bad)


def test_no_strategy_drives_the_engine() -> None:
    """No strategy code reads the engine's ledger or budget or calls its purchase (``engine.buy``,
    ``engine.ledger``, ``engine.budget``): the old pool stage did, from Strategy.fit_pool_with_engine."""
    bad = []
    for path in sorted(STRATEGIES_DIR.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Attribute) and node.attr in ENGINE_INTERNALS
                    and isinstance(node.value, ast.Name) and node.value.id == "engine"):
                bad.append(f"{path.name}:{node.lineno}: engine.{node.attr}")
    # the two deprecated one-line wrappers forward to the engine's own methods: fit_pool / buy_pool_labels
    allowed = {"pivottrace.py": {"engine.buy_pool_labels"}}
    bad = [b for b in bad if b.split(": ", 1)[1] not in allowed.get(b.split(":", 1)[0], set())]
    assert not bad, "strategies drive the engine:\n" + "\n".join(bad)
