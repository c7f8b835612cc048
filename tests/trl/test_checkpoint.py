"""Checkpoint / resume: rlavr_state restores the strategy (incl. RNG), spend and history; resume never re-buys."""

from __future__ import annotations

import json
import shutil
import sqlite3
from typing import Any

import numpy as np
import pytest
import torch
from transformers import TrainerCallback
from trl_tiny import BASE_ARGS, load_tokenizer, make_dataset, overlap_reward

import rlavr.trl.distributed as distributed_module
from helpers import CountingOracle
from rlavr.budget import BudgetView
from rlavr.labels import DatasetOracle
from rlavr.strategies import Strategy
from rlavr.trl import RLAVRConfig, RLAVRGRPOTrainer
from rlavr.types import Acquisition, RolloutBatch
from trl import GRPOTrainer

TIMING = ("rlavr/feature_seconds",)


class StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if state.global_step >= self.step:
            control.should_training_stop = True


class FlakyUpdate(Strategy):
    """Random routing whose first ``fail`` updates raise; records the updates that succeeded."""

    name = "test-flaky-update"

    def __init__(self, fail: int = 0) -> None:
        super().__init__(seed=5)
        self.fail = fail
        self.updates: list[tuple[int, list[str]]] = []

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        return self.route_by_score(self.rng.random(batch.B), budget)

    def update(self, batch: RolloutBatch, acquisition: Acquisition, labels: Any) -> None:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("classifier store offline")
        self.updates.append((batch.step, sorted(labels)))


def make(model_path: str, out, ledger, oracle: DatasetOracle, callbacks=None, strategy: Strategy | None = None,
         **kw: Any) -> RLAVRGRPOTrainer:
    ds = make_dataset(32, small=True)
    args = RLAVRConfig(output_dir=str(out), **{**BASE_ARGS, "max_steps": 4, "per_device_train_batch_size": 16,
                                              "save_strategy": "steps", "save_steps": 2, **kw},
                       strategy="random", budget="2/step", answer_space="exact", ledger_path=str(ledger))
    return RLAVRGRPOTrainer(model=model_path, reward_funcs=[overlap_reward], args=args, train_dataset=ds,
                            processing_class=load_tokenizer(model_path), oracle=oracle, callbacks=callbacks,
                            strategy=strategy)


def labels_table() -> dict[str, str]:
    ds = make_dataset(32, small=True)
    return dict(zip(ds["id"], ds["answer"], strict=True))


def strip(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


def trained(trainer: RLAVRGRPOTrainer) -> list[tuple[float, float]]:
    return [(h["loss"], h["grad_norm"]) for h in trainer.state.log_history if "loss" in h]


@pytest.fixture(scope="module")
def full_run(tiny_model_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    oracle = CountingOracle(labels_table())
    t = make(tiny_model_path, root / "out", root / "ledger.sqlite", oracle)
    t.train()
    return t, root, oracle


def test_checkpoint_files(full_run):
    t, root, _ = full_run
    ck = root / "out" / "checkpoint-2"
    assert (ck / "rlavr_state.pt").exists()
    summary = json.loads((ck / "rlavr_state.json").read_text())
    assert summary["spent"] == 4 and summary["strategy"] == "random" and summary["global_step"] == 2
    state = torch.load(ck / "rlavr_state.pt", weights_only=True)  # plain data: safe loading works
    assert state["engine"]["ledger"]["n_charged"] == 4 and len(state["history"]) == 2
    assert "rng" in state["engine"]["strategy"]
    assert t.engine.spent == 8


def test_resume_is_exact_and_never_rebuys(full_run, tiny_model_path, tmp_path):
    full, _, full_oracle = full_run
    oracle = CountingOracle(labels_table())
    first = make(tiny_model_path, tmp_path / "out", tmp_path / "ledger.sqlite", oracle, callbacks=[StopAt(2)])
    first.train()
    assert first.state.global_step == 2 and first.engine.spent == 4
    resumed = make(tiny_model_path, tmp_path / "out", tmp_path / "ledger.sqlite", oracle)
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    # same routes, purchases, metrics (incl. the random strategy's RNG stream) and the same training
    assert strip(resumed.rlavr_history) == strip(full.rlavr_history)
    assert trained(resumed)[-2:] == trained(full)[-2:]
    assert [i for i, _, _ in resumed.engine.ledger.items()] == [i for i, _, _ in full.engine.ledger.items()]
    # the oracle was never asked twice for the same prompt, over both processes' lifetimes
    assert len(oracle.requested) == len(set(oracle.requested)) == 8
    assert sorted(oracle.requested) == sorted(full_oracle.requested)


def test_resume_after_crash_reuses_ledger_labels(full_run, tiny_model_path, tmp_path):
    """A crash after checkpoint-2 but after buying the labels of steps 2-3: the ledger already holds them, so the
    resumed run gets them for free and the oracle is never asked for a label the ledger has."""
    full, root, _ = full_run
    shutil.copytree(root / "out" / "checkpoint-2", tmp_path / "out" / "checkpoint-2")
    with sqlite3.connect(root / "ledger.sqlite") as src, sqlite3.connect(tmp_path / "ledger.sqlite") as dst:
        src.backup(dst)  # the ledger runs in WAL mode: copy it through SQLite, not the file system
    owned = {i for i, _, _ in full.engine.ledger.items()}
    oracle = CountingOracle(labels_table())
    t = make(tiny_model_path, tmp_path / "out", tmp_path / "ledger.sqlite", oracle)
    t.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    assert not set(oracle.requested) & owned
    assert t.engine.spent == len(owned) + len(oracle.requested)
    reused = sum(h["labels_reused_this_step"] for h in t.rlavr_history[2:])
    assert reused >= 2  # the re-generated rounds meet their own, already bought, labels


def test_resume_with_a_foreign_ledger_fails(full_run, tiny_model_path, tmp_path):
    _, root, _ = full_run
    shutil.copytree(root / "out" / "checkpoint-2", tmp_path / "out" / "checkpoint-2")
    t = make(tiny_model_path, tmp_path / "out", tmp_path / "empty.sqlite", CountingOracle(labels_table()))
    with pytest.raises(ValueError, match="ledger"):
        t.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))


def test_failed_update_is_checkpointed_and_retried(tiny_model_path, tmp_path):
    """The update after step 1 fails once: the checkpoint of step 1 keeps that round pending (not a strategy state
    silently missing it), the next round retries it before deciding, and a resume from checkpoint-1 applies it."""
    strat = FlakyUpdate(fail=1)
    t = make(tiny_model_path, tmp_path / "out", tmp_path / "ledger.sqlite", CountingOracle(labels_table()),
             strategy=strat, max_steps=2, save_steps=1)
    t.train()
    assert [s for s, _ in strat.updates] == [0, 1]  # round 0 retried (before round 1 decided), then round 1
    bought = {i for i, _, _ in t.engine.ledger.items()}
    assert {i for _, ids in strat.updates for i in ids} == bought
    ck = tmp_path / "out" / "checkpoint-1"
    state = torch.load(ck / "rlavr_state.pt", weights_only=True)
    assert len(state["pending_updates"]) == 1 and state["pending_updates"][0]["round"] == 0
    assert json.loads((ck / "rlavr_state.json").read_text())["pending_updates"] == 1
    assert torch.load(tmp_path / "out" / "checkpoint-2" / "rlavr_state.pt", weights_only=True)["pending_updates"] == []

    again = FlakyUpdate()
    resumed = make(tiny_model_path, tmp_path / "out", tmp_path / "ledger.sqlite", CountingOracle(labels_table()),
                   strategy=again, max_steps=2, save_steps=1)
    resumed.train(resume_from_checkpoint=str(ck))
    # the pending round 0 was applied on resume, then round 1 (which meets the first run's later labels for free)
    assert again.updates[0] == strat.updates[0] and [s for s, _ in again.updates] == [0, 1]

    broken = FlakyUpdate(fail=5)
    stuck = make(tiny_model_path, tmp_path / "out", tmp_path / "ledger.sqlite", CountingOracle(labels_table()),
                 strategy=broken, max_steps=2, save_steps=1)
    with pytest.raises(RuntimeError, match="failed again on resume"):
        stuck.train(resume_from_checkpoint=str(ck))


def _as_other_rank(monkeypatch, trainer: RLAVRGRPOTrainer, main_error: str) -> None:
    """Make ``trainer`` a non-main process whose main process failed with ``main_error``."""
    monkeypatch.setattr(type(trainer.accelerator), "is_main_process", property(lambda self: False))

    def broadcast(payload, from_process=0):  # type: ignore[no-untyped-def]
        payload[0] = {"value": None, "error": main_error}
        return payload

    monkeypatch.setattr(distributed_module, "broadcast_object_list", broadcast)


def test_resume_and_save_errors_reach_every_rank(full_run, tiny_model_path, tmp_path, monkeypatch):
    """A foreign ledger (or a failing save) raises on the main process only: the other ranks must raise too instead
    of going on into the next collective; and they never load the strategy state."""
    _, root, _ = full_run
    t = make(tiny_model_path, tmp_path / "out", tmp_path / "ledger.sqlite", CountingOracle(labels_table()))
    monkeypatch.setattr(GRPOTrainer, "_load_optimizer_and_scheduler", lambda self, checkpoint: None)
    monkeypatch.setattr(GRPOTrainer, "_save_checkpoint", lambda self, model, trial: None)
    _as_other_rank(monkeypatch, t, "ValueError: load_state_dict: ... resume with the run's own ledger")

    def no_load(*a: Any, **k: Any) -> Any:
        raise AssertionError("a non-main process loaded the rlavr state")

    monkeypatch.setattr(torch, "load", no_load)
    with pytest.raises(RuntimeError, match="loading the rlavr checkpoint state failed on the main process"):
        t._load_optimizer_and_scheduler(str(root / "out" / "checkpoint-2"))
    with pytest.raises(RuntimeError, match="writing the rlavr checkpoint state failed on the main process"):
        t._save_checkpoint(t.model, None)


def test_other_ranks_take_counters_from_the_main_process(full_run, tiny_model_path, tmp_path, monkeypatch):
    _, root, _ = full_run
    t = make(tiny_model_path, tmp_path / "out", tmp_path / "ledger.sqlite", CountingOracle(labels_table()))
    monkeypatch.setattr(GRPOTrainer, "_load_optimizer_and_scheduler", lambda self, checkpoint: None)
    monkeypatch.setattr(type(t.accelerator), "is_main_process", property(lambda self: False))
    sent = {"spent": 4, "history": [{"step": 0, "round": 0}, {"step": 1, "round": 1}], "rounds": 2}

    def broadcast(payload, from_process=0):  # type: ignore[no-untyped-def]
        payload[0] = {"value": sent, "error": None}
        return payload

    monkeypatch.setattr(distributed_module, "broadcast_object_list", broadcast)
    before = {k: np.copy(v) if isinstance(v, np.ndarray) else v for k, v in t.engine.strategy.state_dict().items()}
    t._load_optimizer_and_scheduler(str(root / "out" / "checkpoint-2"))
    assert t.budget_spent == 4 and t.rlavr_loop.rounds == 2 and len(t.rlavr_history) == 2 and t.rlavr_loop.resumed
    assert t.engine.strategy.state_dict()["rng"] == before["rng"]  # the strategy state was not loaded here
