"""Subprocess workers for ``tests/test_reliability.py`` (run as ``python reliability_worker.py <cmd> <json>``).

``train``: an engine loop over a deterministic stream of batches, checkpointing the engine state after every
step (atomic ``os.replace``), resuming from the checkpoint if one exists. Its oracle appends every requested
prompt id to a log file (flushed and fsynced) *before* answering, and can be told to hang inside the oracle
call or after a step, so that the parent can ``kill -9`` it at a precise point.

``buy``: one of N concurrent writers buying overlapping prompt ids against a shared ledger file with a global
budget; reports what it bought.

``claim``: one of two live writers meeting the same stale reservations (a killed writer's) at the same time.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rlavr.budget import Budget
from rlavr.engine import AcquisitionEngine
from rlavr.labels import LabelLedger
from rlavr.types import Label, PromptGroup, Rollout, RolloutBatch

B = 8
G = 4
POOL = 60
ANSWERS = ("1", "2", "3", "4")


def truth(pid: str) -> str:
    return ANSWERS[int(pid[1:]) % 4]


def stream_batch(step: int) -> RolloutBatch:
    """Step ``s``: prompts ``q{(5s + i) mod 60}``, i < 8 (ids recur across steps: reuse is exercised)."""
    rng = np.random.default_rng(1000 + step)
    groups = []
    for i in range(B):
        pid = f"q{(5 * step + i) % POOL}"
        answers = [None if rng.random() < 0.1 else str(rng.choice(ANSWERS)) for _ in range(G)]
        groups.append(PromptGroup(id=pid, prompt=f"what is {pid}?",
                                  rollouts=tuple(Rollout(text=str(a), answer=a) for a in answers)))
    return RolloutBatch.from_groups(groups, step=step)


class LoggingOracle:
    """Logs each requested id durably, then answers; optionally hangs on the call made at ``hang_step``."""

    def __init__(self, log: Path, hang_step: int | None = None, marker: Path | None = None,
                 delay: float = 0.0, table: dict[str, str] | None = None) -> None:
        self.log = log
        self.hang_step = hang_step
        self.marker = marker
        self.delay = delay
        self.step = -1
        self.table = table
        self.calls = 0

    def label(self, prompt_ids: Sequence[str], prompts: Sequence[str]) -> list[Label | None]:
        with open(self.log, "a", encoding="utf-8") as f:
            f.writelines(f"{i}\n" for i in prompt_ids)
            f.flush()
            os.fsync(f.fileno())
        self.calls += 1
        if self.table is not None:  # trainer mode: no step counter, hang on the hang_step-th call
            self.step = self.calls
        if self.hang_step is not None and self.step == self.hang_step:
            assert self.marker is not None
            self.marker.write_text("in oracle")
            time.sleep(3600)  # the parent kills us here: the reservations stay 'pending'
        if self.delay:
            time.sleep(self.delay)
        return [self.table[i] if self.table is not None else truth(i) for i in prompt_ids]

    def reference(self, prompt_ids: Sequence[str]) -> list[Label | None]:
        return [self.table.get(i) if self.table is not None else truth(i) for i in prompt_ids]


def train(cfg: dict[str, Any]) -> None:
    """Engine loop with per-step checkpoints; resumes from ``cfg['ckpt']`` when it exists."""
    ckpt = Path(cfg["ckpt"])
    hang = cfg.get("hang")  # {"where": "oracle"|"after_step", "step": k}
    marker = Path(cfg["marker"]) if cfg.get("marker") else None
    oracle = LoggingOracle(Path(cfg["log"]), hang_step=hang["step"] if hang and hang["where"] == "oracle" else None,
                           marker=marker, delay=float(cfg.get("delay", 0.0)))
    engine = AcquisitionEngine(cfg.get("strategy", "random"), oracle, budget=cfg["budget"],
                               ledger=LabelLedger(cfg["ledger"], owner="trainer"), backoff=0.0,
                               strategy_kwargs={"seed": 3})
    start = 0
    if ckpt.exists():
        state = pickle.loads(ckpt.read_bytes())
        engine.load_state_dict(state["engine"])
        start = state["step"] + 1
    for step in range(start, int(cfg["steps"])):
        oracle.step = step
        res = engine.decide(stream_batch(step), step=step)
        engine.update(res)
        if hang and hang["where"] == "after_step" and hang["step"] == step:
            assert marker is not None
            marker.write_text("after step")  # labels of this step are persisted, the checkpoint is not
            time.sleep(3600)
        tmp = ckpt.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps({"step": step, "engine": engine.state_dict()}))
        os.replace(tmp, ckpt)
    engine.ledger.close()


def buy(cfg: dict[str, Any]) -> None:
    """One concurrent writer: ``rounds`` purchases of 8 ids drawn from a shared pool, global cap ``cap``."""
    rng = np.random.default_rng(int(cfg["worker"]))
    ledger = LabelLedger(cfg["ledger"], owner=f"w{cfg['worker']}")
    budget = Budget(total=int(cfg["cap"]))
    log = Path(cfg["log"])
    oracle = LoggingOracle(log, delay=float(cfg.get("delay", 0.001)))
    out: dict[str, list[str]] = {"bought": [], "reused": [], "refused": [], "failed": [], "resumed": [], "busy": []}
    labels: dict[str, str] = {}
    for r in range(int(cfg["rounds"])):
        ids = [f"q{k}" for k in rng.choice(int(cfg["pool"]), size=8, replace=False)]
        res = ledger.purchase(ids, [f"what is {i}?" for i in ids], oracle,
                              lambda charged: budget.allowed(charged, prompts_seen=0, batch_size=8), step=r)
        for key in out:
            out[key] += list(getattr(res, key, []))
        labels.update(res.labels)
    Path(cfg["out"]).write_text(json.dumps({"result": out, "labels": labels}))
    ledger.close()


def claim(cfg: dict[str, Any]) -> None:
    """One of two live writers buying ``cfg['ids']``, which a killed writer left reserved (stale): both are started,
    signal ``ready`` and wait for ``go``, so that they meet the stale reservations together."""
    ledger = LabelLedger(cfg["ledger"], owner=f"w{cfg['worker']}")
    oracle = LoggingOracle(Path(cfg["log"]), delay=float(cfg.get("delay", 0.5)))
    Path(cfg["ready"]).write_text("ready")
    deadline = time.monotonic() + 60
    while not Path(cfg["go"]).exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    ids = list(cfg["ids"])
    res = ledger.purchase(ids, [f"what is {i}?" for i in ids], oracle, 0, step=1)
    Path(cfg["out"]).write_text(json.dumps({"labels": res.labels, "resumed": res.resumed, "reused": res.reused,
                                            "busy": res.busy, "bought": res.bought}))
    ledger.close()


def trl(cfg: dict[str, Any]) -> None:
    """RLAVRGRPOTrainer on the tiny offline Qwen3 of ``tests/trl``, checkpointing every step; ``resume`` resumes
    from the last checkpoint in the output directory."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / "trl"))
    import logging

    from trl_tiny import (
        BASE_ARGS,
        SeededRollouts,
        build_tiny_model,
        exact_reward,
        load_tokenizer,
        make_dataset,
    )

    from rlavr.trl import RLAVRConfig, RLAVRGRPOTrainer

    logging.getLogger("trl.trainer.grpo_trainer").setLevel(logging.ERROR)
    model = build_tiny_model(cfg["model"])
    tok = load_tokenizer(model)
    ds = make_dataset(32, small=True)
    table = {str(i): str(a) for i, a in zip(ds["id"], ds["answer"], strict=True)}
    marker = Path(cfg["marker"]) if cfg.get("marker") else None
    oracle = LoggingOracle(Path(cfg["log"]), hang_step=cfg.get("hang_call"), marker=marker, table=table)
    args = RLAVRConfig(output_dir=cfg["out"], **{**BASE_ARGS, "per_device_train_batch_size": 16, "max_steps": 6,
                                                 "save_strategy": "steps", "save_steps": 1},
                       strategy="random", budget=0.5, answer_space="exact", ledger_path=cfg["ledger"])
    trainer = RLAVRGRPOTrainer(model=model, reward_funcs=[exact_reward], args=args, train_dataset=ds,
                               processing_class=tok, rollout_func=SeededRollouts(tok), oracle=oracle)
    trainer.train(resume_from_checkpoint=True if cfg.get("resume") else None)


if __name__ == "__main__":
    cmd, raw = sys.argv[1], sys.argv[2]
    {"train": train, "buy": buy, "claim": claim, "trl": trl}[cmd](json.loads(raw))
