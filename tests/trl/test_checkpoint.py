"""Checkpoint / resume: rlavr_state restores the strategy (incl. RNG), spend and history; resume never re-buys."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from transformers import TrainerCallback
from trl_tiny import BASE_ARGS, load_tokenizer, make_dataset, overlap_reward

from rlavr.labels import DatasetOracle
from rlavr.trl import RLAVRConfig, RLAVRGRPOTrainer
from rlavr.types import Label

TIMING = ("rlavr/feature_seconds",)


class CountingOracle(DatasetOracle):
    def __init__(self, data: Any) -> None:
        super().__init__(data)
        self.requested: list[str] = []

    def label(self, prompt_ids: Sequence[str], prompts: Sequence[str]) -> list[Label | None]:
        self.requested.extend(prompt_ids)
        return super().label(prompt_ids, prompts)


class StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if state.global_step >= self.step:
            control.should_training_stop = True


def make(model_path: str, out, ledger, oracle: DatasetOracle, callbacks=None) -> RLAVRGRPOTrainer:
    ds = make_dataset(32, small=True)
    args = RLAVRConfig(output_dir=str(out), **{**BASE_ARGS, "max_steps": 4, "per_device_train_batch_size": 16,
                                              "save_strategy": "steps", "save_steps": 2},
                       strategy="random", budget="2/step", answer_space="exact", ledger_path=str(ledger))
    return RLAVRGRPOTrainer(model=model_path, reward_funcs=[overlap_reward], args=args, train_dataset=ds,
                            processing_class=load_tokenizer(model_path), oracle=oracle, callbacks=callbacks)


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
