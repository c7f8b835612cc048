"""What ``RLAVRGRPOTrainer.__init__`` builds from an :class:`~rlavr.trl.RLAVRConfig`: the strategy, the oracle
(after the dataset checks) and the :class:`~rlavr.loop.AcquisitionLoop` around the engine."""

from __future__ import annotations

import logging
from typing import Any

import torch

from rlavr.answers import AnswerSpace
from rlavr.engine import AcquisitionEngine
from rlavr.labels import DatasetOracle, LabelLedger, Oracle
from rlavr.loop import AcquisitionLoop
from rlavr.strategies.base import capabilities_of
from rlavr.strategies.registry import get_strategy
from rlavr.trl.activation import Activation, default_oracle, resolve_activation
from rlavr.trl.config import RLAVRConfig, RLAVRSettings
from rlavr.trl.guards import check_label_columns

__all__ = ["announce", "build_loop", "build_strategy", "check_drop_mode", "dataset_oracle"]

logger = logging.getLogger("rlavr.trl.trainer")


def build_strategy(strategy: Any, settings: RLAVRSettings, seed: int) -> Any:
    """The strategy instance (``strategy`` given to the trainer, else ``settings.strategy`` built with
    ``strategy_kwargs``; its private RNG follows TRL's ``seed`` unless ``strategy_kwargs`` sets one, docs/trl.md).
    Built in a forked RNG: a strategy that builds ``nn.Module``\\ s leaves the global RNG untouched.

    Raises:
        ValueError: ``strategy_kwargs`` next to an instance, or a strategy that requires attention maps.
    """
    with torch.random.fork_rng(devices=[]):
        if strategy is not None:
            if settings.strategy_kwargs:
                raise ValueError(f"strategy_kwargs: {sorted(settings.strategy_kwargs)} given together with a "
                                 "strategy instance; configure the instance instead")
            strat = get_strategy(strategy)
        else:
            strat = get_strategy(settings.strategy, default_seed=seed, **settings.strategy_kwargs)
    if "attentions" in capabilities_of(strat).requires:
        raise ValueError(f"strategy {strat.name!r} requires 'attentions', which the TRL trainer does not capture "
                         "(vLLM exposes no attention maps and a second eager forward would double the cost); use "
                         "a detector that needs no attention (e.g. PivotTrace detector='lexical') or score "
                         "offline with `rlavr replay`")
    return strat


def dataset_oracle(train_dataset: Any, settings: RLAVRSettings, strategy_name: str, oracle: Oracle | None,
                   args_given: bool, space: AnswerSpace) -> tuple[Activation, Oracle]:
    """Whether acquisition runs (:func:`~rlavr.trl.activation.resolve_activation`) and the oracle it asks: the
    given one, an empty one (label-free; inactive: never asked) or :func:`~rlavr.trl.activation.default_oracle`;
    checks that no second column carries ground truth to the reward functions (every strategy, gt included)."""
    act = resolve_activation(train_dataset, settings, strategy_name, oracle_given=oracle is not None,
                             args_given=args_given)
    if act.mode == "inactive":
        return act, DatasetOracle({})  # never asked
    if oracle is not None:
        got: Oracle = oracle
    elif act.mode == "label_free":
        got = DatasetOracle({}, label_column=settings.label_column)  # the budget buys nothing
    else:
        got = default_oracle(train_dataset, settings.id_column, settings.label_column)
    check_label_columns(train_dataset, settings.label_column, settings.id_column, settings.allow_extra_label_columns,
                        space)
    return act, got


def build_loop(args: RLAVRConfig, strategy: Any, oracle: Oracle, space: AnswerSpace, *, is_main: bool,
               active: bool, rank: int) -> AcquisitionLoop:
    """The engine (the ledger file on the main process of an active run; an in-memory ledger that is never used
    to buy elsewhere, and no file at all when acquisition is off) in an :class:`AcquisitionLoop` that writes the
    rollout log on the main process."""
    s = args.rlavr
    ledger = LabelLedger(args.resolved_ledger_path() if is_main and active else ":memory:", owner=f"rank{rank}")
    engine = AcquisitionEngine(strategy, oracle, budget=s.budget, ledger=ledger, answer_space=space,
                               on_oracle_failure=s.on_oracle_failure, max_retries=s.oracle_max_retries,
                               backoff=s.oracle_backoff, oracle_timeout=s.oracle_timeout,
                               allow_foreign_ledger=s.allow_foreign_ledger)
    log_path = s.rollout_log_path if is_main and active else None
    return AcquisitionLoop(engine, rollout_log=log_path or None, log_features=s.rollout_log_features)


def announce(activation: Activation) -> None:
    """One WARNING when acquisition is off (plain ``GRPOTrainer``) or label-free, saying why."""
    if activation.mode == "inactive":
        logger.warning("rlavr: acquisition is OFF, training exactly like trl.GRPOTrainer (no oracle, no ledger, no "
                       "label rewriting): %s. To acquire labels, set RLAVRConfig.label_column to the column holding "
                       "the ground truth or pass oracle=.", activation.reason)
    elif activation.mode == "label_free":
        logger.warning("rlavr: label-free run: %s.", activation.reason)


def check_drop_mode(drop_mode: str, loss_type: str) -> None:
    """Warn when ``drop_mode="mask"`` cannot take dropped groups out of the loss normaliser of ``loss_type``."""
    if drop_mode == "mask" and loss_type not in ("dapo", "bnpo", "cispo", "vespo"):
        logger.warning("rlavr: drop_mode='mask' removes dropped groups from the loss normaliser only for the "
                       "dapo/bnpo/cispo/vespo losses; with loss_type=%r they still count as rows with loss 0",
                       loss_type)
