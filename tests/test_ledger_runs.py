"""Several runs on one ledger: per-run step accounting, a resume that rewinds only its own run, the shared ratio
budget over two processes, and the migration of ledgers written before runs were recorded (issue 17, item 9)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import CountingOracle, make_batch, random_answers
from rlavr.engine import AcquisitionEngine
from rlavr.ledger import LEGACY_RUN, LabelLedger, new_run_id
from rlavr.types import RolloutBatch

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
B, G = 8, 4


def batch(run: str, step: int) -> RolloutBatch:
    ids = [f"{run}-{step}-{i}" for i in range(B)]
    return make_batch(random_answers(np.random.default_rng(step), B, G), ids=ids, step=step)


def table(*runs: str, steps: int = 6) -> dict[str, str]:
    return {f"{r}-{s}-{i}": "1" for r in runs for s in range(steps) for i in range(B)}


def run_steps(path: str, run: str, steps: int, budget: object = 0.5) -> None:
    """One training run (the body of each process of the two-process test): ``steps`` steps of ``B`` prompts of
    one shared dataset (the ledger records its fingerprint: runs on one ledger label the same data)."""
    eng = AcquisitionEngine("random", CountingOracle(table("a", "b", run, steps=steps)), budget=budget,
                            ledger=LabelLedger(path, owner=run), strategy_kwargs={"seed": 1})
    for s in range(steps):
        eng.decide(batch(run, s), s)
    eng.ledger.close()


def test_two_processes_share_one_ratio_budget(tmp_path: Path) -> None:
    """Two runs (two OS processes, each with its own engine) on one ledger, the same step numbers: both runs'
    prompts count (64, not 32 with the old per-step-number rows that overwrote each other), so the shared 50 %
    budget is 32 labels, not 16."""
    path = str(tmp_path / "shared.sqlite")
    LabelLedger(path).close()  # the schema, once (WAL mode)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE), os.environ.get("PYTHONPATH", "")])}
    code = "import sys; from test_ledger_runs import run_steps; run_steps(sys.argv[1], sys.argv[2], 4)"
    procs = [subprocess.Popen([sys.executable, "-c", code, path, run], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for run in ("a", "b")]
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err.decode()[-3000:]
    with LabelLedger(path) as ledger:
        assert ledger.prompts_seen == 2 * 4 * B
        runs = ledger.runs()
        assert sorted(r["prompts_seen"] for r in runs.values()) == [32, 32]
        assert sorted(r["steps"] for r in runs.values()) == [4, 4]
        # the last purchase sees all 64 prompts and every step could fill its share: floor(0.5 x 64)
        assert ledger.n_charged == 32 == sum(r["charged"] for r in runs.values())


def test_a_resume_rewinds_only_its_own_run(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.sqlite")
    a = AcquisitionEngine("random", CountingOracle(table("a", "b")), budget="2/step", ledger=path)
    b = AcquisitionEngine("random", CountingOracle(table("a", "b")), budget="2/step", ledger=path)
    assert a.run_id != b.run_id
    for s in range(4):
        a.decide(batch("a", s), s)
        if s == 1:
            state = a.state_dict()
        b.decide(batch("b", s), s)
    assert a.ledger.prompts_seen == 64 and state["ledger"]["run_id"] == a.run_id
    resumed = AcquisitionEngine("random", CountingOracle(table("a", "b")), budget="2/step", ledger=path)
    resumed.load_state_dict(state)
    assert resumed.run_id == a.run_id and resumed.ledger.last_step == 1
    runs = resumed.ledger.runs()
    assert runs[a.run_id]["prompts_seen"] == 2 * B and runs[b.run_id]["prompts_seen"] == 4 * B  # b untouched
    assert b.ledger.last_step == 3
    # the per-step cap counts only the resumed run's own earlier charges: a's replayed steps 2-3 buy nothing new
    bought = [len(resumed.decide(batch("a", s), s).bought) for s in (2, 3, 4)]
    assert bought == [0, 0, 2]


def test_run_id_is_validated_and_fresh() -> None:
    assert new_run_id() != new_run_id()
    with pytest.raises(ValueError, match="run_id"):
        LabelLedger(run_id="")
    with pytest.raises(ValueError, match="run_id"):
        AcquisitionEngine("random", CountingOracle({}), run_id=3)  # type: ignore[arg-type]
    assert AcquisitionEngine("random", CountingOracle({}), run_id="mine").run_id == "mine"


OLD_SCHEMA = """
CREATE TABLE labels (prompt_id TEXT PRIMARY KEY, label TEXT, status TEXT NOT NULL CHECK (status IN ('pending',
    'bought')), step INTEGER NOT NULL, owner TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE steps (step INTEGER PRIMARY KEY, n_prompts INTEGER NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def old_ledger(path: Path) -> None:
    """A ledger as rlavr wrote it before runs were recorded: 3 steps of 8 prompts, 2 labels bought at each of
    the steps 0-2 (the last two after a checkpoint at step 0) and a pool of 5 prompts."""
    with sqlite3.connect(path) as con:
        con.executescript(OLD_SCHEMA)
        con.executemany("INSERT INTO steps VALUES (?, ?)", [(-1, 5), (0, 8), (1, 8), (2, 8)])
        con.executemany("INSERT INTO labels VALUES (?, ?, 'bought', ?, 'main#h#1#1#x', ?)",
                        [(f"old-{s}-{i}", json.dumps("1"), s, float(s)) for s in range(3) for i in range(2)])
        con.execute("INSERT INTO meta VALUES ('seed', '1')")


def test_an_old_ledger_is_migrated_and_stays_readable(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    old_ledger(path)
    with LabelLedger(path) as ledger:
        assert ledger.prompts_seen == 29 and ledger.n_charged == 6 and ledger.get("old-1-0") == "1"
        assert ledger.get_meta("seed") == 1 and [s for _, _, s in ledger.items()] == [0, 0, 1, 1, 2, 2]
        assert ledger.runs() == {LEGACY_RUN: {"prompts_seen": 29, "steps": 4, "last_step": 2, "charged": 6}}
        assert ledger.last_step == -1  # a new run on the old ledger has no position of its own
    with sqlite3.connect(path) as con:  # migrated once, in place; the old table is gone only after the copy
        tables = {n for (n,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "steps_before_runs" not in tables and "label_steps" in tables
    with LabelLedger(path) as again:  # idempotent
        assert again.prompts_seen == 29 and again.runs()[LEGACY_RUN]["charged"] == 6


def test_a_checkpoint_from_before_runs_resumes_the_legacy_run(tmp_path: Path) -> None:
    """An old checkpoint (no run id) taken after step 0 of an old ledger's run: the resume continues the legacy
    run, rewinds its steps 1-2, and its per-step cap counts the labels the old run bought at those steps."""
    path = tmp_path / "old.sqlite"
    old_ledger(path)
    ids = {s: [f"old-{s}-{i}" for i in range(B)] for s in range(4)}
    oracle = CountingOracle({i: "1" for row in ids.values() for i in row})
    eng = AcquisitionEngine("random", oracle, budget="2/step", ledger=str(path))
    first = AcquisitionEngine("random", CountingOracle({}))
    state = {"strategy": first.strategy.state_dict(), "budget": {},
             "ledger": {"path": str(path), "n_bought": 2, "n_charged": 2, "prompts_seen": 13, "last_step": 0}}
    eng.load_state_dict(state)
    assert eng.run_id == LEGACY_RUN and eng.ledger.prompts_seen == 13 and eng.ledger.last_step == 0
    bought = [len(eng.decide(make_batch(random_answers(np.random.default_rng(s), B, G), ids=ids[s], step=s),
                             s).bought) for s in (1, 2, 3)]
    assert bought == [0, 0, 2] and eng.spent == 8 and eng.ledger.prompts_seen == 29 + 8


def test_each_run_sharing_a_ledger_has_its_own_pool_step_cap(tmp_path: Path) -> None:
    """The pool step is a step of the run: a second run's pool fit on a shared ledger gets its own per-step cap
    (the pool charges used to be one ledger-wide counter, so the second run's pool could buy nothing)."""
    from rlavr.oracles import DatasetOracle
    from rlavr.pool_stage import buy_pool_labels, pool_step_charged

    path = str(tmp_path / "shared.sqlite")
    a = AcquisitionEngine("random", DatasetOracle(table("a", "b")), budget="3/step", ledger=path)
    b = AcquisitionEngine("random", DatasetOracle(table("a", "b")), budget="3/step", ledger=path)
    pool_a, pool_b = batch("a", 0), batch("b", 0)
    assert len(buy_pool_labels(a, pool_a, pool_a.ids).bought) == 3 and pool_step_charged(a) == 3
    assert pool_step_charged(b) == 0
    assert len(buy_pool_labels(b, pool_b, pool_b.ids).bought) == 3 and a.spent == 6
    assert pool_step_charged(a) == 3 and pool_step_charged(b) == 3
