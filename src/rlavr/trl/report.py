"""What the TRL trainer reports about acquisition: rlavr's keys in TRL's logs, the end-of-training summary line and
the model card's note."""

from __future__ import annotations

import logging
import os
from typing import Any

from rlavr.trl import _compat
from rlavr.types import Route

__all__ = ["LOG_PREFIX", "add_logs", "log_key", "log_round", "model_card_note", "summary_line"]

logger = logging.getLogger(__name__)

LOG_PREFIX = "rlavr/"
"""Prefix of every rlavr metric in TRL's logs (``Decision.metrics`` and ``rlavr_history`` keep unprefixed keys)."""


def log_key(name: str) -> str:
    """The key under which the rlavr metric ``name`` is handed to TRL's logs: ``rlavr/<name>`` (idempotent)."""
    return name if name.startswith(LOG_PREFIX) else LOG_PREFIX + name


def log_round(trainer: Any, rnd: Any, decision: Any, rows: list[Any], rewards: Any, start: int,
              n: int) -> dict[str, float]:
    """After a round's rewards, on every process: record the round in the loop (history, counters), hand its
    metrics to TRL's logs (``rlavr/<name>``; ``budget_spent`` is a level, added in ``log``), add the route, weight
    and label of each completion to TRL's completion logs, count the feature sources, and (main process, once)
    check that the answer space judges like the reward functions (warns; never changes the rewards). ``rows`` and
    the completions are this process' ``n`` rows, global rows ``start ...``."""
    group_of = decision.group_of(start, n)
    check = trainer._rlavr_reward_check
    if trainer.accelerator.is_main_process and rows and not check.done:
        try:
            gt = [decision.train_labels[g] if decision.routes[g] == Route.QUERY else None for g in group_of]
            check.observe([r.text for r in rows], [r.answer for r in rows], gt, rewards.detach().float().cpu().numpy())
        except Exception as exc:  # a diagnostic must never stop training
            logger.debug("rlavr: reward agreement check failed: %r", exc)
    _compat.log_completion_extra(trainer, "rlavr_route", decision.route_names(start, n))
    _compat.log_completion_extra(trainer, "rlavr_weight", [float(decision.weights[g]) for g in group_of])
    _compat.log_completion_extra(trainer, "rlavr_label", [decision.labels[g] for g in group_of])
    metrics: dict[str, float] = trainer.rlavr_loop.record(decision, {
        "rlavr/feature_seconds": rnd.feature_seconds,
        "rlavr/hidden_from_hook": 1.0 if rnd.hidden_source == "hook" else 0.0})
    for k, v in metrics.items():
        if k != "budget_spent":
            _compat.log_metric(trainer, log_key(k), v)
    st = trainer.rlavr_feature_stats
    st["rounds"] += 1
    st["hook_rounds"] += rnd.hidden_source == "hook"
    st["generate_rounds"] += rnd.hidden_source == "generate"
    if rnd.hidden_source == "extra_forward":
        st["extra_forward_rounds"] += 1
        st["extra_forward_seconds"] += rnd.feature_seconds
    return metrics


def add_logs(loop: Any, logs: dict[str, float]) -> None:
    """Spend and cap (levels, not averages over the window, from the broadcast decision: no main-only ledger
    read) and, with Trainer's last log (``train_runtime``), the run's totals as ``rlavr/summary/<name>``."""
    if not loop.history:
        return
    logs[log_key("budget_spent")] = float(loop.spent)
    if loop.cap is not None:
        logs[log_key("budget_cap")] = float(loop.cap)
    if "train_runtime" in logs:
        logs.update({log_key(f"summary/{k}"): v for k, v in loop.summary().items()})


def summary_line(trainer: Any) -> str:
    """One line for the end of training: labels bought, share labelled, routes, pseudo-label accuracy, ledger."""
    s = trainer.rlavr_loop.summary()
    acc = s.get("pseudo_label_accuracy")
    return (f"strategy {trainer.engine.strategy.name!r}, budget {trainer.rlavr_settings.budget.describe()}: "
            f"{int(s['labels_bought'])} labels bought; {s['labelled_share']:.1%} of {int(s['groups'])} prompt "
            f"groups trained on a true label over {int(s['rounds'])} rounds; routes query/pseudo/drop = "
            f"{int(s['route_query'])}/{int(s['route_pseudo'])}/{int(s['route_drop'])}; pseudo-label accuracy "
            + (f"{acc:.1%}" if acc is not None else "unknown (no reference labels)")
            + f"; ledger {trainer.args.resolved_ledger_path()}")


def model_card_note(trainer: Any) -> None:
    """Append a section naming the strategy, the budget and the spend to the model card (``README.md``)."""
    with open(os.path.join(str(trainer.args.output_dir), "README.md"), "a", encoding="utf-8") as f:
        f.write(f"\n## Label acquisition (rlavr)\n\nTrained with rlavr's `RLAVRGRPOTrainer`: strategy "
                f"`{trainer.engine.strategy.name}`, label budget {trainer.rlavr_settings.budget.describe()} "
                f"(`budget={trainer.args.budget!r}`); {int(trainer.rlavr_loop.spent)} labels bought so far.\n")
