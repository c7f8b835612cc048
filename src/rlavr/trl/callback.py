"""``RLAVRCallback``: what rlavr does at TRL's training events (ledger check and pool fit at the start, strategy
updates after each optimiser step, the summary at the end)."""

from __future__ import annotations

import logging
from typing import Any

from transformers import TrainerCallback

from rlavr.trl import pool
from rlavr.trl.checkpoint import check_fresh_ledger_once

logger = logging.getLogger("rlavr.trl.trainer")

__all__ = ["RLAVRCallback"]


class RLAVRCallback(TrainerCallback):
    """Runs the strategy's online ``update`` after the optimiser step (before a checkpoint of that step)."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        check_fresh_ledger_once(self.trainer)  # after a checkpoint was loaded, before the first round
        pool.auto_fit_pool(self.trainer)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer.rlavr_loop.apply_updates()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        loop = self.trainer.rlavr_loop
        loop.apply_updates()
        fail = loop.take_failure()
        if fail is not None:
            raise RuntimeError(f"rlavr: {fail.where} failed after the last generation round: {fail.exc!r}") from fail.exc
        if state.is_world_process_zero and loop.history:
            logger.info("rlavr: %s", self.trainer.rlavr_summary_line())
