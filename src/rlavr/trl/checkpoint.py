"""rlavr's state in TRL checkpoints (``rlavr_state.pt`` + a readable ``rlavr_state.json`` next to TRL's files), and
the refusal to start a fresh run on a default ledger that holds another run's labels."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch

from rlavr.trl.distributed import on_main_then_broadcast

logger = logging.getLogger(__name__)

__all__ = ["STATE_FILE", "STATE_SUMMARY", "check_fresh_ledger", "check_fresh_ledger_once", "load_state", "save_state",
           "state_dict"]

STATE_FILE = "rlavr_state.pt"
STATE_SUMMARY = "rlavr_state.json"


def state_dict(trainer: Any) -> dict[str, Any]:
    """:meth:`AcquisitionLoop.state_dict <rlavr.loop.AcquisitionLoop.state_dict>` (``torch.load(weights_only=True)``
    safe as it is) plus TRL's ``global_step``."""
    state = trainer.rlavr_loop.state_dict(main=bool(trainer.accelerator.is_main_process))
    state["global_step"] = int(trainer.state.global_step)
    return state


def save_state(trainer: Any, folder: str) -> None:
    """Write the state into the checkpoint ``folder`` on the main process (a failure raises on every process)."""

    def save() -> None:  # only the main process holds the ledger and the trained strategy
        if not trainer.args.should_save:
            return
        os.makedirs(folder, exist_ok=True)
        state = state_dict(trainer)
        torch.save(state, os.path.join(folder, STATE_FILE))
        summary = {"global_step": state["global_step"], "spent": state["spent"],
                   "strategy": state["strategy_name"], "ledger": state["engine"]["ledger"],
                   "budget": state["engine"]["budget"], "pending_updates": len(state["pending_updates"])}
        with open(os.path.join(folder, STATE_SUMMARY), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2, default=str)

    # a failure here (disk, strategy.state_dict) is raised on every process, never left to hang the others
    on_main_then_broadcast(trainer.accelerator, save, "writing the rlavr checkpoint state")


def load_state(trainer: Any, checkpoint: str) -> bool:
    """Restore the state of ``checkpoint``: everything on the main process, the counters and history on the
    others. Returns whether a state was found (a checkpoint without one only warns)."""
    loop = trainer.rlavr_loop
    path = os.path.join(checkpoint, STATE_FILE)

    def load() -> dict[str, Any] | None:
        # main process only: the strategy state may be large; the others get the counters and history
        if not os.path.exists(path):
            logger.warning("rlavr: %s has no %s; the strategy restarts from scratch (the ledger still prevents "
                           "re-buying labels)", checkpoint, STATE_FILE)
            return None
        state = torch.load(path, map_location="cpu", weights_only=True)
        loop.load_state_dict(state, main=True)
        return {"spent": state.get("spent", 0), "history": state.get("history", []), "rounds": loop.rounds}

    # a foreign ledger, a strategy mismatch or a failing retried update raises on every process
    counters = on_main_then_broadcast(trainer.accelerator, load, "loading the rlavr checkpoint state")
    if counters is None:
        return False
    if not trainer.accelerator.is_main_process:
        loop.set_counters(counters)
    loop.resumed = True
    return True


def check_fresh_ledger_once(trainer: Any) -> None:
    """:func:`check_fresh_ledger` once per trainer (at the start of training, after a checkpoint was loaded, or of
    a manual ``fit_pool``), for a run that does not resume and uses the default ledger."""
    if trainer._rlavr_ledger_checked:
        return
    trainer._rlavr_ledger_checked = True
    if not (trainer.rlavr_loop.resumed or trainer._rlavr_resume_requested or trainer.args.ledger_path):
        check_fresh_ledger(trainer)


def check_fresh_ledger(trainer: Any) -> None:
    """Refuse to start a run that does not resume from a checkpoint on the DEFAULT ledger
    (``<output_dir>/rlavr_ledger.sqlite``) when that ledger already holds another run's labels or prompts: the
    new run would silently inherit that run's spend (its labels free, its budget used up). An explicit
    ``ledger_path`` shares a ledger on purpose (one global budget, per-run step accounting) and is accepted.
    Checked on the main process; the error is raised on every process. Nothing is ever deleted.

    Raises:
        ValueError: naming the ledger's path, what it holds and the three ways out.
    """
    def check() -> None:
        ledger = trainer.engine.ledger
        if ledger.path == ":memory:":
            return
        own = ledger.runs().get(ledger.run_id, {})
        labels = ledger.n_charged - int(own.get("charged", 0))
        prompts = ledger.prompts_seen - int(own.get("prompts_seen", 0))
        if labels <= 0 and prompts <= 0:
            return
        others = sorted(r for r in ledger.runs() if r != ledger.run_id)
        raise ValueError(
            f"ledger_path: the default ledger {ledger.path!r} (in output_dir {trainer.args.output_dir!r}) already "
            f"holds {labels} charged labels and {prompts} prompts seen of another run "
            f"({', '.join(others) or 'unknown'}) and this run does not resume from a checkpoint: it would "
            "silently inherit that run's labels and spend. Nothing was changed or deleted. Either resume that "
            "run (trainer.train(resume_from_checkpoint=True or a checkpoint path)), train into a new "
            f"output_dir, or share the ledger on purpose with RLAVRConfig(ledger_path={ledger.path!r}) (its "
            "labels are then free to this run and both runs share one budget).")

    on_main_then_broadcast(trainer.accelerator, check, "checking the label ledger")
