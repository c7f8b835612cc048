"""Reliability under faults and bad input.

* oracle exceptions, ``None`` answers, malformed answers and timeouts are retried with exponential backoff, then
  the group is routed to ``on_oracle_failure``; nothing is charged twice, nothing is lost, late answers are
  discarded;
* N processes buying overlapping ids against one SQLite ledger with a global budget never overspend and never
  charge an id twice;
* a run killed with SIGKILL (inside the oracle call, or after a step but before its checkpoint) resumes with 0
  labels re-bought and ends with exactly the ledger of an uninterrupted run;
* hypothesis fuzzing of malformed rollouts, batches and configs: a clear ``ValueError``, never another crash.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rlavr.engine as engine_mod
from rlavr.budget import Budget
from rlavr.engine import AcquisitionEngine
from rlavr.labels import (
    CallableOracle,
    DatasetOracle,
    LabelLedger,
    OracleError,
    OracleTimeout,
    call_with_timeout,
)
from rlavr.strategies import get_strategy
from rlavr.types import Acquisition, Label, PromptGroup, Rollout, RolloutBatch, Route

HERE = Path(__file__).resolve().parent
WORKER = HERE / "reliability_worker.py"
SRC = HERE.parent / "src"


def batch_of(n: int = 4, G: int = 3, answers: Sequence[str | None] = ("1", "1", "2"), prefix: str = "p",
             step: int = 0) -> RolloutBatch:
    groups = [PromptGroup(id=f"{prefix}{i}", prompt=f"question {i}",
                          rollouts=tuple(Rollout(text=str(a), answer=a) for a in answers[:G]))
              for i in range(n)]
    return RolloutBatch.from_groups(groups, step=step)


class Flaky:
    """Raises ``fail`` times (or returns ``None`` labels when ``mode='none'``), then answers ``"7"``."""

    def __init__(self, fail: int, mode: str = "raise") -> None:
        self.fail = fail
        self.mode = mode
        self.calls: list[list[str]] = []

    def label(self, prompt_ids: Sequence[str], prompts: Sequence[str]) -> list[Label | None]:
        self.calls.append(list(prompt_ids))
        if len(self.calls) <= self.fail:
            if self.mode == "raise":
                raise ConnectionError("labelling service unavailable")
            if self.mode == "none":
                return [None] * len(prompt_ids)
            if self.mode == "short":
                return ["7"] * (len(prompt_ids) - 1)
        return ["7"] * len(prompt_ids)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the engine's backoff sleeps instead of sleeping."""
    recorded: list[float] = []
    monkeypatch.setattr(engine_mod.time, "sleep", recorded.append)
    return recorded


# ====================================================================================== oracle faults


@pytest.mark.parametrize("mode", ["raise", "none", "short"])
def test_oracle_faults_are_retried_with_exponential_backoff(mode: str, sleeps: list[float]) -> None:
    oracle = Flaky(fail=2, mode=mode)
    eng = AcquisitionEngine("gt", oracle, budget=None, max_retries=3, backoff=0.25)
    res = eng.decide(batch_of(), step=0)
    assert sleeps == [0.25, 0.5]  # backoff x 2^attempt
    assert len(oracle.calls) == 3
    assert sorted(res.bought) == ["p0", "p1", "p2", "p3"] and res.failed == []
    assert all(lab == "7" for lab in res.labels)
    assert eng.ledger.n_charged == 4 and eng.ledger.n_bought == 4  # charged once, no reservation left
    assert res.metrics["oracle_errors_this_step"] == (2.0 if mode != "none" else 0.0)


@pytest.mark.parametrize(("fallback", "route"), [("pseudo", Route.PSEUDO), ("drop", Route.DROP)])
@pytest.mark.parametrize("mode", ["raise", "none"])
def test_persistent_oracle_failure_routes_per_config(fallback: str, route: Route, mode: str,
                                                     sleeps: list[float]) -> None:
    oracle = Flaky(fail=10**6, mode=mode)
    eng = AcquisitionEngine("gt", oracle, budget=None, max_retries=2, backoff=0.1, on_oracle_failure=fallback)  # type: ignore[arg-type]
    batch = batch_of()
    res = eng.decide(batch, step=0)
    assert len(oracle.calls) == 3 and sleeps == [0.1, 0.2]
    assert sorted(res.failed) == ["p0", "p1", "p2", "p3"] and res.bought == []
    assert np.all(res.routes == route)
    if route == Route.PSEUDO:
        assert res.labels == ["1"] * 4 and np.all(res.weights == 1.0)  # majority vote, full weight
    else:
        assert res.labels == [None] * 4 and np.all(res.weights == 0.0)
    assert eng.ledger.n_charged == 0  # nothing charged, no reservation left behind
    # the ids stay buyable: a later step with a healthy oracle buys them exactly once
    eng.oracle = DatasetOracle({f"p{i}": "1" for i in range(4)})
    res2 = eng.decide(batch_of(), step=1)
    assert sorted(res2.bought) == ["p0", "p1", "p2", "p3"] and eng.ledger.n_charged == 4


def test_failed_pseudo_fallback_without_answers_is_dropped(sleeps: list[float]) -> None:
    eng = AcquisitionEngine("gt", Flaky(fail=10**6), budget=None, max_retries=0, on_oracle_failure="pseudo")
    res = eng.decide(batch_of(answers=(None, None, None)), step=0)
    assert np.all(res.routes == Route.DROP) and res.labels == [None] * 4


def test_only_failed_ids_are_retried(sleeps: list[float]) -> None:
    """A partial answer: the labels that came back are persisted at once; only the missing ones are retried."""
    asked: list[list[str]] = []

    def fn(ids: list[str], prompts: list[str]) -> list[str | None]:
        asked.append(ids)
        return [None if (i == "p2" and len(asked) == 1) else "1" for i in ids]

    eng = AcquisitionEngine("gt", CallableOracle(fn, batched=True), budget=None, max_retries=2, backoff=0.0)
    res = eng.decide(batch_of(), step=0)
    assert asked[1] == ["p2"] and sorted(res.bought) == ["p0", "p1", "p2", "p3"] and eng.ledger.n_charged == 4


class Hanging:
    """The first call blocks until released; later calls answer at once. Late answers differ ("late")."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0
        self.late_returned = threading.Event()

    def label(self, prompt_ids: Sequence[str], prompts: Sequence[str]) -> list[Label | None]:
        self.calls += 1
        if self.calls == 1:
            self.release.wait(10)
            self.late_returned.set()
            return ["late"] * len(prompt_ids)
        return ["ok"] * len(prompt_ids)


def test_oracle_timeout_is_retried_and_late_answer_discarded(tmp_path: Path) -> None:
    oracle = Hanging()
    eng = AcquisitionEngine("gt", oracle, budget=None, ledger=tmp_path / "l.sqlite", max_retries=1, backoff=0.0,
                            oracle_timeout=0.2)
    t0 = time.monotonic()
    res = eng.decide(batch_of(), step=0)
    assert time.monotonic() - t0 < 5.0
    assert res.labels == ["ok"] * 4 and sorted(res.bought) == ["p0", "p1", "p2", "p3"]
    assert res.metrics["oracle_errors_this_step"] == 1.0
    oracle.release.set()
    assert oracle.late_returned.wait(5)
    time.sleep(0.05)
    # the late answer was neither persisted nor charged: the ledger holds the retry's labels, once each
    assert eng.ledger.n_charged == 4 and eng.ledger.n_bought == 4
    assert {lab for _, lab, _ in eng.ledger.items()} == {"ok"}


def test_oracle_timeout_exhausted_routes_and_releases(tmp_path: Path) -> None:
    hang = threading.Event()

    def fn(ids: list[str], prompts: list[str]) -> list[str]:
        hang.wait(10)
        return ["late"] * len(ids)

    eng = AcquisitionEngine("gt", CallableOracle(fn, batched=True), budget=None, ledger=tmp_path / "l.sqlite",
                            max_retries=1, backoff=0.0, oracle_timeout=0.1, on_oracle_failure="drop")
    res = eng.decide(batch_of(), step=0)
    assert np.all(res.routes == Route.DROP) and sorted(res.failed) == ["p0", "p1", "p2", "p3"]
    hang.set()
    time.sleep(0.1)
    assert eng.ledger.n_charged == 0  # reservations released, late answers dropped


def test_call_with_timeout_passes_through_results_and_errors() -> None:
    ok = DatasetOracle({"a": "1"})
    assert call_with_timeout(ok, ["a", "b"], ["", ""], timeout=1.0) == ["1", None]
    assert call_with_timeout(ok, ["a"], [""], timeout=None) == ["1"]
    with pytest.raises(ZeroDivisionError):
        call_with_timeout(CallableOracle(lambda i, p: 1 / 0), ["a"], [""], timeout=1.0)
    blocker = threading.Event()
    with pytest.raises(OracleTimeout, match="oracle_timeout=0.05"):
        call_with_timeout(CallableOracle(lambda i, p: blocker.wait(5)), ["a"], [""], timeout=0.05)
    blocker.set()
    assert issubclass(OracleTimeout, OracleError)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"oracle_timeout": 0}, "oracle_timeout"), ({"oracle_timeout": -1.0}, "oracle_timeout"),
    ({"oracle_timeout": float("nan")}, "oracle_timeout"), ({"oracle_timeout": "5"}, "oracle_timeout"),
    ({"max_retries": -1}, "max_retries"), ({"max_retries": 1.5}, "max_retries"), ({"max_retries": True}, "max_retries"),
    ({"backoff": -0.1}, "backoff"), ({"backoff": float("inf")}, "backoff"),
    ({"on_oracle_failure": "retry"}, "on_oracle_failure"), ({"budget": 1.5}, "budget"),
    ({"budget": "lots"}, "budget"), ({"strategy": "no-such-rule"}, "strategy"),
])
def test_bad_engine_config_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    args: dict[str, Any] = {"strategy": "entropy", "oracle": DatasetOracle({})}
    args.update(kwargs)
    with pytest.raises(ValueError, match=field):
        AcquisitionEngine(**args)


# ====================================================================================== concurrent writers


def _spawn(cmd: str, cfg: dict[str, Any]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, str(WORKER), cmd, json.dumps(cfg)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(p: subprocess.Popen[bytes], timeout: float = 120) -> None:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err.decode()[-3000:]


def _rows(path: Path) -> list[tuple[str, str | None, str]]:
    with sqlite3.connect(path) as c:
        return [(p, None if lab is None else json.loads(lab), s)
                for p, lab, s in c.execute("SELECT prompt_id, label, status FROM labels ORDER BY prompt_id")]


@pytest.mark.parametrize("delay", [0.001, 0.05])
def test_concurrent_writers_never_overspend_or_double_charge(tmp_path: Path, delay: float) -> None:
    n_proc, cap, pool = 4, 25, 40
    ledger = tmp_path / "shared.sqlite"
    LabelLedger(ledger).close()  # create the schema once (WAL mode)
    procs = [_spawn("buy", {"worker": k, "ledger": str(ledger), "cap": cap, "pool": pool, "rounds": 10,
                            "delay": delay, "log": str(tmp_path / f"oracle{k}.log"),
                            "out": str(tmp_path / f"out{k}.json")})
             for k in range(n_proc)]
    for p in procs:
        _finish(p)
    outs = [json.loads((tmp_path / f"out{k}.json").read_text()) for k in range(n_proc)]
    rows = _rows(ledger)
    assert len(rows) == cap, f"the global cap of {cap} should be reached exactly, got {len(rows)}"
    assert all(status == "bought" for _, _, status in rows), "a reservation was left pending"
    truth = {p: lab for p, lab, _ in rows}
    assert all(lab == ["1", "2", "3", "4"][int(p[1:]) % 4] for p, lab in truth.items())
    bought = [i for o in outs for i in o["result"]["bought"]]
    assert len(bought) == len(set(bought)), "an id was reported bought by two writers"
    assert set(bought) == set(truth), "every charged label was bought by exactly one writer"
    for o in outs:  # every label a writer used is the persisted one
        assert all(truth[i] == lab for i, lab in o["labels"].items())
    # the oracle was asked once per label in all: a writer waits for another live writer's reservation
    asked = [i for k in range(n_proc) if (tmp_path / f"oracle{k}.log").exists()
             for i in (tmp_path / f"oracle{k}.log").read_text().split()]
    assert sorted(asked) == sorted(truth), f"ids asked twice: {sorted({i for i in asked if asked.count(i) > 1})}"


def test_two_live_processes_meeting_a_stale_reservation_ask_the_oracle_once(tmp_path: Path) -> None:
    """A killed writer left q1..q3 reserved (charged, never delivered); two live processes buy them at the same
    time: the first to reserve claims them inside its write transaction, the other waits for its labels."""
    ledger = tmp_path / "shared.sqlite"
    with LabelLedger(ledger) as led:
        led._conn.executemany("INSERT INTO labels VALUES (?, NULL, 'pending', 0, 'killed#1#x', 0.0)",
                              [(f"q{i}",) for i in (1, 2, 3)])
    cfgs = [{"worker": k, "ledger": str(ledger), "ids": ["q1", "q2", "q3"], "delay": 0.5,
             "log": str(tmp_path / f"oracle{k}.log"), "ready": str(tmp_path / f"ready{k}"), "go": str(tmp_path / "go"),
             "out": str(tmp_path / f"out{k}.json")} for k in range(2)]
    procs = [_spawn("claim", c) for c in cfgs]
    for k, p in enumerate(procs):
        _wait_for(tmp_path / f"ready{k}", p)
    (tmp_path / "go").write_text("go")
    for p in procs:
        _finish(p)
    asked = [i for k in range(2) if (tmp_path / f"oracle{k}.log").exists()
             for i in (tmp_path / f"oracle{k}.log").read_text().split()]
    assert sorted(asked) == ["q1", "q2", "q3"], f"a stale reservation was asked twice: {asked}"
    outs = [json.loads((tmp_path / f"out{k}.json").read_text()) for k in range(2)]
    truth = {f"q{i}": ["1", "2", "3", "4"][i % 4] for i in (1, 2, 3)}
    assert all(o["labels"] == truth and o["bought"] == [] and o["busy"] == [] for o in outs)
    assert sorted(i for o in outs for i in o["resumed"]) == ["q1", "q2", "q3"]  # completed once, charged before
    assert [s for _, _, s in _rows(ledger)] == ["bought"] * 3


# ====================================================================================== kill -9 and resume


def _train_cfg(tmp: Path, **extra: Any) -> dict[str, Any]:
    return {"ledger": str(tmp / "ledger.sqlite"), "ckpt": str(tmp / "ckpt.pkl"), "log": str(tmp / "oracle.log"),
            "steps": 12, "budget": 0.3, "strategy": "random", **extra}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str | None, str]]:
    """The ledger of an uninterrupted run of the worker's training loop."""
    ref = tmp_path_factory.mktemp("reference")
    _finish(_spawn("train", _train_cfg(ref)))
    rows = _rows(ref / "ledger.sqlite")
    assert rows and all(st == "bought" for _, _, st in rows)
    return rows


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"worker exited early: {proc.communicate()[1].decode()[-3000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("worker never reached the kill point")
        time.sleep(0.02)


@pytest.mark.parametrize("where", ["oracle", "after_step"])
def test_sigkill_mid_run_resumes_without_rebuying(tmp_path: Path, where: str,
                                                  reference: list[tuple[str, str | None, str]]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    marker = run / "marker"
    p = _spawn("train", _train_cfg(run, hang={"where": where, "step": 6}, marker=str(marker)))
    _wait_for(marker, p)
    os.kill(p.pid, signal.SIGKILL)
    p.communicate()
    assert p.returncode == -signal.SIGKILL
    at_kill = _rows(run / "ledger.sqlite")
    bought_before = {pid for pid, _, st in at_kill if st == "bought"}
    pending_before = {pid for pid, _, st in at_kill if st == "pending"}
    assert bought_before, "the run was killed before buying anything: the test proves nothing"
    if where == "oracle":
        assert pending_before, "killed inside the oracle call: its reservations must be pending"
    else:
        assert not pending_before
    first_log = (run / "oracle.log").read_text().split()

    # resume: same command, new oracle log
    _finish(_spawn("train", _train_cfg(run, log=str(run / "oracle-resumed.log"))))
    asked_after = (run / "oracle-resumed.log").read_text().split() if (run / "oracle-resumed.log").exists() else []
    rebought = bought_before & set(asked_after)
    assert not rebought, f"labels re-bought after resume: {sorted(rebought)}"
    assert pending_before <= set(asked_after), "stale reservations must be completed on resume"
    final = _rows(run / "ledger.sqlite")
    assert all(st == "bought" for _, _, st in final)
    assert final == reference, "the resumed run must end with exactly the labels of an uninterrupted run"
    assert len(set(first_log)) == len(first_log) and len(set(asked_after)) == len(asked_after)


def test_sigkill_at_random_points_never_rebuys(tmp_path: Path, reference: list[tuple[str, str | None, str]]) -> None:
    """Kill at arbitrary moments (the oracle is slow, so most kills land mid-purchase), resume, repeat."""
    run = tmp_path / "run"
    run.mkdir()
    rng = np.random.default_rng(0)
    ever_bought: set[str] = set()
    for attempt in range(3):
        log = run / f"oracle{attempt}.log"
        p = _spawn("train", _train_cfg(run, log=str(log), delay=0.05))
        t0 = time.monotonic()
        while not log.exists() and p.poll() is None and time.monotonic() - t0 < 60:
            time.sleep(0.01)
        time.sleep(float(rng.uniform(0.0, 0.3)))
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.communicate()
        asked = set(log.read_text().split()) if log.exists() else set()
        assert not asked & ever_bought, f"re-bought after kill {attempt}: {sorted(asked & ever_bought)}"
        ever_bought |= {pid for pid, _, st in _rows(run / "ledger.sqlite") if st == "bought"}
    log = run / "final.log"
    _finish(_spawn("train", _train_cfg(run, log=str(log))))
    asked = set(log.read_text().split()) if log.exists() else set()
    assert not asked & ever_bought
    assert _rows(run / "ledger.sqlite") == reference


def test_sigkill_trainer_resumes_without_rebuying(tmp_path: Path) -> None:
    """The same guarantee one level up: RLAVRGRPOTrainer (tiny offline Qwen3) killed inside an oracle call,
    resumed with ``resume_from_checkpoint=True``."""
    pytest.importorskip("trl", reason="the trainer-level variant needs trl")
    base = {"model": str(tmp_path / "tiny-qwen3"), "out": str(tmp_path / "out"),
            "ledger": str(tmp_path / "ledger.sqlite")}
    marker = tmp_path / "marker"
    p = _spawn("trl", {**base, "log": str(tmp_path / "oracle.log"), "hang_call": 4, "marker": str(marker)})
    _wait_for(marker, p, timeout=600)
    os.kill(p.pid, signal.SIGKILL)
    p.communicate()
    at_kill = _rows(tmp_path / "ledger.sqlite")
    bought_before = {pid for pid, _, st in at_kill if st == "bought"}
    pending_before = {pid for pid, _, st in at_kill if st == "pending"}
    assert bought_before and pending_before
    assert any(d.startswith("checkpoint-") for d in os.listdir(tmp_path / "out")), "no checkpoint before the kill"
    _finish(_spawn("trl", {**base, "log": str(tmp_path / "resumed.log"), "resume": True}), timeout=600)
    asked = (tmp_path / "resumed.log").read_text().split()
    assert not bought_before & set(asked), f"re-bought after resume: {sorted(bought_before & set(asked))}"
    final = _rows(tmp_path / "ledger.sqlite")
    assert all(st == "bought" for _, _, st in final), "a stale reservation was never completed"
    assert len(final) <= 0.5 * 6 * 4  # budget 0.5 of 6 steps x 4 prompts
    assert {pid for pid, _, _ in final} >= bought_before | pending_before


# ====================================================================================== fuzzing

junk = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True),
                 st.text(max_size=4), st.lists(st.floats(allow_nan=True), max_size=3), st.just(object()),
                 st.just(np.array([[0.1]])), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _value_error_or_ok(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except ValueError as exc:
        assert str(exc), "a ValueError must say what is wrong"
        return None


@FUZZ
@given(text=st.one_of(st.text(max_size=5), junk), answer=st.one_of(st.text(max_size=3), junk),
       mean_logprob=junk, token_logprobs=junk, length=junk, hidden=junk)
def test_fuzz_rollout_fields(text: Any, answer: Any, mean_logprob: Any, token_logprobs: Any, length: Any,
                             hidden: Any) -> None:
    r = _value_error_or_ok(Rollout, text=text, answer=answer, mean_logprob=mean_logprob,
                           token_logprobs=token_logprobs, length=length, hidden=hidden)
    if r is not None:  # anything accepted is well-formed
        assert isinstance(r.text, str) and (r.answer is None or isinstance(r.answer, str))
        assert r.mean_logprob is None or (math.isfinite(r.mean_logprob) and r.mean_logprob <= 1e-6)
        assert isinstance(r.length, int) and r.length >= 0


@FUZZ
@given(logprobs=st.lists(st.one_of(st.floats(max_value=0.0), st.just(float("nan")), st.just(float("-inf"))),
                         min_size=1, max_size=6))
def test_fuzz_nan_logprobs_are_rejected(logprobs: list[float]) -> None:
    bad = any(not math.isfinite(x) for x in logprobs)
    if bad:
        with pytest.raises(ValueError, match="token_logprobs"):
            Rollout(answer="1", token_logprobs=np.array(logprobs))
    else:
        assert Rollout(answer="1", token_logprobs=np.array(logprobs)).mean_logprob == pytest.approx(np.mean(logprobs))


@FUZZ
@given(sizes=st.lists(st.integers(0, 4), min_size=1, max_size=5), gid=st.one_of(st.text(max_size=3), junk),
       prompt=st.one_of(st.text(max_size=3), junk))
def test_fuzz_groups_and_ragged_batches(sizes: list[int], gid: Any, prompt: Any) -> None:
    groups = []
    for k, n in enumerate(sizes):
        g = _value_error_or_ok(PromptGroup, id=gid if k == 0 else f"g{k}", prompt=prompt if k == 0 else "q",
                               rollouts=tuple(Rollout(answer=str(j % 2)) for j in range(n)))
        if g is None:
            return
        groups.append(g)
    ragged = len({g.size for g in groups}) > 1
    if ragged:
        with pytest.raises(ValueError, match="unequal group sizes"):
            RolloutBatch.from_groups(groups)
    else:
        batch = _value_error_or_ok(RolloutBatch.from_groups, groups)
        if batch is not None:
            assert batch.votes.cluster_ids.shape == (len(groups), sizes[0])


@FUZZ
@given(items=st.one_of(junk, st.lists(junk, max_size=3), st.lists(st.just(Rollout(answer="1")), max_size=2)))
def test_fuzz_wrong_types_in_batches(items: Any) -> None:
    _value_error_or_ok(PromptGroup, id="x", prompt="q", rollouts=items)
    _value_error_or_ok(RolloutBatch.from_groups, items)


@FUZZ
@given(spec=st.one_of(junk, st.floats(-2, 3), st.integers(-3, 10**6), st.text(max_size=8),
                      st.sampled_from(["20%", "13/step", "0.2/step", "-1", "1e9", "150%", "nan", "abc/step"]),
                      st.dictionaries(st.sampled_from(["ratio", "total", "per_step", "per_step_ratio", "bogus"]),
                                      junk, max_size=3)))
def test_fuzz_budget_specs(spec: Any) -> None:
    b = _value_error_or_ok(Budget.parse, spec)
    if b is not None:
        for seen in (0, 7, 100):
            cap = b.global_cap(seen)
            assert cap is None or cap >= 0
            assert 0 <= b.allowed(0, seen, 8) <= 8


@FUZZ
@given(routes=st.one_of(junk, st.lists(st.integers(-1, 3), min_size=1, max_size=4)),
       weights=st.one_of(junk, st.lists(st.floats(allow_nan=True), min_size=1, max_size=4)),
       scores=st.one_of(junk, st.lists(st.floats(allow_nan=True), min_size=1, max_size=4)))
def test_fuzz_acquisitions(routes: Any, weights: Any, scores: Any) -> None:
    a = _value_error_or_ok(Acquisition, routes=routes, weights=weights, scores=scores)
    if a is not None:
        assert np.all((a.weights >= 0) & (a.weights <= 1)) and not np.any(np.isnan(a.scores))


@FUZZ
@given(name=st.one_of(st.text(max_size=12), junk, st.sampled_from(["entropy-mask", "ttrl-mask-mask", "x.py:Y",
                                                                  "../nope.py:Rule", "gt-mask"])))
def test_fuzz_strategy_names(name: Any) -> None:
    _value_error_or_ok(get_strategy, name)


@FUZZ
@given(data=st.data(), strategy=st.sampled_from(["gt", "ttrl", "random", "random-mask", "entropy", "entropy-mask",
                                                 "prob", "oracle", "oracle-mask"]),
       budget=st.one_of(st.floats(0, 1), st.integers(0, 12), st.sampled_from(["2/step", "0.5/step", None])))
def test_fuzz_engine_on_odd_batches(data: st.DataObject, strategy: str, budget: Any) -> None:
    """Valid but odd batches (G = 1, all invalid, duplicates across steps) never crash and never overspend."""
    eng = AcquisitionEngine(strategy, DatasetOracle({f"p{i}": str(i % 3) for i in range(12)}), budget=budget,
                            backoff=0.0)
    seen = 0
    for step in range(data.draw(st.integers(1, 3), label="steps")):
        G = data.draw(st.integers(1, 4), label="G")
        B = data.draw(st.integers(1, 6), label="B")
        ids = data.draw(st.lists(st.integers(0, 11), min_size=B, max_size=B, unique=True), label="ids")
        groups = []
        for i in ids:
            answers = data.draw(st.lists(st.sampled_from([None, "0", "1", "2"]), min_size=G, max_size=G))
            groups.append(PromptGroup(id=f"p{i}", prompt=f"q{i}", rollouts=tuple(
                Rollout(answer=a, token_logprobs=np.array([-0.5, -1.0])) for a in answers)))
        seen += B
        res = eng.decide(RolloutBatch.from_groups(groups, step=step), step=step)
        cap = eng.budget.global_cap(seen)
        assert cap is None or eng.spent <= cap
        adv = eng.advantages(res)
        assert np.all(np.isfinite(adv)) and np.all(adv[res.routes == Route.DROP] == 0)
