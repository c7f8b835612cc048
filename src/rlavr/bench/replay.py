"""Offline replay, moved to :mod:`rlavr.replay` (the rollout log's reader is :mod:`rlavr.rollout_log`); this
module re-exports it so that ``rlavr.bench.replay`` imports keep working."""

from rlavr.replay import (
    DEFAULT_ANSWER_SPACE,
    DEFAULT_STRATEGIES,
    ReplayLog,
    ReplayResult,
    auroc,
    load_rollout_log,
    recorded_answer_space,
    replay,
    replay_table,
)

__all__ = ["DEFAULT_ANSWER_SPACE", "DEFAULT_STRATEGIES", "ReplayLog", "ReplayResult", "auroc", "load_rollout_log",
           "recorded_answer_space", "replay", "replay_table"]
