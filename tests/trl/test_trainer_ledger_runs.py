"""The trainer's ledger across runs: a resume after a crash spends exactly what an uninterrupted run spends, also
with per-step budgets (issue 17, item 1); a new run into an output_dir whose default ledger holds another run's
spend is refused instead of silently inheriting it (item 5); an explicit shared ledger counts both runs (item 9)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from trl_tiny import BASE_ARGS, load_tokenizer, make_dataset, overlap_reward

from helpers import CountingOracle
from rlavr.labels import LabelLedger
from rlavr.trl import RLAVRConfig, RLAVRGRPOTrainer


def labels_table() -> dict[str, str]:
    ds = make_dataset(32, small=True)
    return dict(zip(ds["id"], ds["answer"], strict=True))


def make(model_path: str, out: Path, oracle: CountingOracle, budget: Any = "2/step", **kw: Any) -> RLAVRGRPOTrainer:
    """4 rounds of 4 prompts (one per optimiser step), a checkpoint every 2 steps; ``kw`` may set ``ledger_path``."""
    args = RLAVRConfig(output_dir=str(out), **{**BASE_ARGS, "max_steps": 4, "per_device_train_batch_size": 16,
                                              "save_strategy": "steps", "save_steps": 2, **kw},
                       strategy="random", budget=budget, answer_space="exact")
    return RLAVRGRPOTrainer(model=model_path, reward_funcs=[overlap_reward], args=args,
                            train_dataset=make_dataset(32, small=True), processing_class=load_tokenizer(model_path),
                            oracle=oracle)


def by_step(path: Path) -> dict[int, set[str]]:
    with sqlite3.connect(path) as con:
        rows = con.execute("SELECT s.step_key, l.prompt_id FROM labels l JOIN label_steps s "
                           "ON s.prompt_id = l.prompt_id").fetchall()
    out: dict[int, set[str]] = {}
    for key, pid in rows:
        out.setdefault(key, set()).add(pid)
    return out


@pytest.mark.parametrize("budget", ["2/step", {"total": 5, "per_step_ratio": 0.5}])
def test_resume_after_a_crash_spends_what_an_uninterrupted_run_spends(tiny_model_path, tmp_path, budget):
    """The uninterrupted run checkpoints after step 2 and buys the labels of rounds 2-3; a run that crashed right
    after those purchases resumes from checkpoint-2 with that ledger: its replayed rounds reuse the labels and
    the per-step cap counts them, so nothing new is bought (it used to buy 2 more per replayed round: 12, not 8)."""
    full_oracle = CountingOracle(labels_table())
    full = make(tiny_model_path, tmp_path / "full", full_oracle, budget, ledger_path=str(tmp_path / "full.sqlite"))
    full.train()
    assert full.engine.spent == len(full_oracle.requested) > 0

    shutil.copytree(tmp_path / "full" / "checkpoint-2", tmp_path / "out" / "checkpoint-2")
    with sqlite3.connect(tmp_path / "full.sqlite") as src, sqlite3.connect(tmp_path / "crashed.sqlite") as dst:
        src.backup(dst)  # the crashed run's ledger: everything the uninterrupted run bought up to round 3
    oracle = CountingOracle(labels_table())
    resumed = make(tiny_model_path, tmp_path / "out", oracle, budget, ledger_path=str(tmp_path / "crashed.sqlite"))
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    assert resumed.engine.run_id == full.engine.run_id  # the run's id came back from the checkpoint
    assert oracle.requested == [], "the resumed run bought labels the uninterrupted run did not"
    assert resumed.engine.spent == full.engine.spent
    assert by_step(tmp_path / "crashed.sqlite") == by_step(tmp_path / "full.sqlite")
    assert [h["route/query"] for h in resumed.rlavr_history] == [h["route/query"] for h in full.rlavr_history]


def test_a_new_run_into_the_same_output_dir_never_inherits_its_ledger(tiny_model_path, tmp_path):
    out = tmp_path / "out"
    first = make(tiny_model_path, out, CountingOracle(labels_table()), max_steps=2)
    first.train()
    default = out / "rlavr_ledger.sqlite"
    spent = first.engine.spent
    assert spent > 0 and first.engine.ledger.path == str(default)

    # a second run into the same output_dir, not resuming: refused before it decides anything
    oracle = CountingOracle(labels_table())
    again = make(tiny_model_path, out, oracle, max_steps=2)
    with pytest.raises(ValueError, match="rlavr_ledger.sqlite") as err:
        again.train()
    msg = str(err.value)
    assert "resume_from_checkpoint" in msg and "output_dir" in msg and "ledger_path=" in msg
    assert oracle.requested == [] and again.rlavr_history == []
    with LabelLedger(default) as ledger:  # nothing changed, nothing deleted
        assert ledger.n_charged == spent and list(ledger.runs()) == [first.engine.run_id]

    # resuming the run from its checkpoint is fine
    resumed = make(tiny_model_path, out, CountingOracle(labels_table()), max_steps=3)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.engine.run_id == first.engine.run_id and resumed.state.global_step == 3

    # sharing the ledger on purpose (an explicit ledger_path): a second run, both runs' prompts count
    shared = make(tiny_model_path, tmp_path / "other", CountingOracle(labels_table()), max_steps=2,
                  ledger_path=str(default))
    shared.train()
    with LabelLedger(default) as ledger:
        runs = ledger.runs()
        assert set(runs) == {first.engine.run_id, shared.engine.run_id}
        assert runs[shared.engine.run_id]["prompts_seen"] == 8 and ledger.prompts_seen == 3 * 4 + 8
