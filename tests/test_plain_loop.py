"""examples/plain_loop.py, the framework-free integration (GRPO in plain PyTorch on ``AcquisitionLoop``), runs in CI:
it finishes, buys labels within its budget (read back from the ledger), never imports TRL, and its checkpoint of
the loop's state restores."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from rlavr.bench.tasks import AdditionTask
from rlavr.labels import LabelLedger
from rlavr.loop import AcquisitionLoop
from rlavr.rollout_log import load_rollout_log

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plain_loop.py"
STEPS, B, G = 3, 8, 8

# run the example's main() in a fresh interpreter, then report what it returned and which TRL modules got imported
RUNNER = """
import json, runpy, sys
res = runpy.run_path(sys.argv[1])["main"](sys.argv[2:])
trl = sorted(m for m in sys.modules if m == "trl" or m.startswith("trl."))
print("RESULT " + json.dumps({"summary": res, "trl": trl}))
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("plain_loop")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(EXAMPLE), "--steps", str(STEPS), "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"examples/plain_loop.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return {"out": out, "stdout": proc.stdout, **json.loads(line[len("RESULT "):])}


def test_it_trains_every_step_and_imports_no_trl(run: dict[str, Any]) -> None:
    assert run["trl"] == [], f"the plain loop imported TRL modules: {run['trl'][:5]}"
    steps = [x for x in run["stdout"].splitlines() if x.startswith("step ")]
    assert [x.split(":")[0] for x in steps] == [f"step {i}" for i in range(STEPS)]
    s = run["summary"]
    # the history survived the mid-run checkpoint: every round is counted once
    assert s["rounds"] == STEPS and s["groups"] == STEPS * B
    assert s["route_query"] + s["route_pseudo"] + s["route_drop"] == STEPS * B


def test_labels_were_bought_within_the_budget(run: dict[str, Any]) -> None:
    s = run["summary"]
    ledger = LabelLedger(run["out"] / "labels.sqlite", read_only=True)
    try:
        charged, seen = ledger.n_charged, ledger.prompts_seen
    finally:
        ledger.close()
    assert seen == STEPS * B  # entropy has no pool stage: only the training rounds' prompts were seen
    assert 0 < charged == s["labels_bought"] <= int(0.2 * seen) == s["cap"]  # the default budget: 20 % of prompts
    assert s["route_query"] >= charged  # every bought label trained a queried group


def test_the_rollout_log_holds_every_round(run: dict[str, Any]) -> None:
    log = load_rollout_log(run["out"] / "rollouts.jsonl")
    assert len(log.batches) == STEPS and log.n_groups == STEPS * B
    assert {b.G for b in log.batches} == {G}


def test_the_checkpointed_loop_state_round_trips(run: dict[str, Any]) -> None:
    state = torch.load(run["out"] / "rlavr_state.pt", weights_only=True)  # plain data, safe to load
    checkpoint_round = max(1, STEPS // 2)
    assert state["rounds"] == checkpoint_round == len(state["history"]) and state["strategy_name"] == "entropy"
    example = runpy.run_path(str(EXAMPLE))
    args = example["parse_args"](["--steps", str(STEPS), "--out", str(run["out"])])
    task = AdditionTask()
    loop: AcquisitionLoop = example["make_loop"](args, task, example["train_rows"](args, task), run["out"])
    try:
        loop.load_state_dict(state)
        again = loop.state_dict()
    finally:
        loop.engine.ledger.close()
    assert loop.resumed and loop.rounds == checkpoint_round and loop.spent == state["spent"]
    for key in ("version", "rounds", "spent", "history", "strategy_name", "pending_updates"):
        assert again[key] == state[key], key
    # the run's position in the ledger is rewound to the checkpoint's; labels bought after it stay (paid once)
    pos, saved = again["engine"]["ledger"], state["engine"]["ledger"]
    assert [pos[k] for k in ("run_id", "last_step", "prompts_seen")] == [saved[k] for k in ("run_id", "last_step",
                                                                                                "prompts_seen")]
    assert pos["n_charged"] == run["summary"]["labels_bought"] >= saved["n_charged"]


FLAKY = '''
import numpy as np
from rlavr.strategies.base import Strategy
from rlavr.types import Acquisition, Route


class FlakyHidden(Strategy):
    """Reads hidden states; its first update fails (the count is part of its state, so the retry succeeds)."""

    name = "flaky-hidden"
    requires = frozenset({"answers", "hidden_states"})

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.calls = 0

    def select(self, batch, budget):
        return Acquisition(routes=np.full(batch.B, Route.PSEUDO, dtype=np.int8), weights=np.ones(batch.B),
                           scores=np.zeros(batch.B))

    def update(self, batch, acquisition, labels):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("first update fails")

    def state_dict(self):
        return {**super().state_dict(), "calls": self.calls}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.calls = int(state["calls"])
'''


def test_a_checkpoint_holding_a_failed_update_loads_with_weights_only(tmp_path: Path) -> None:
    """The update of round 0 fails and is still pending, with its hidden states, when the example checkpoints: the
    file must load with torch.load(weights_only=True) (numpy arrays do not) and the retried update then succeeds."""
    rule = tmp_path / "flaky.py"
    rule.write_text(FLAKY, encoding="utf-8")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(EXAMPLE), "--steps", "2", "--prompts", "2", "--generations", "4",
                           "--strategy", f"{rule}:FlakyHidden", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"examples/plain_loop.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "checkpoint: saved and restored at round 1" in proc.stdout and "step 1:" in proc.stdout
    state = torch.load(out / "rlavr_state.pt", weights_only=True)
    (pending,) = state["pending_updates"]
    assert pending["round"] == 0 and isinstance(pending["hidden"], torch.Tensor)
    assert tuple(pending["hidden"].shape)[:2] == (2 * 4, 2) and state["engine"]["strategy"]["calls"] == 1
