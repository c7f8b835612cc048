r"""``RLAVRGRPOTrainer``: TRL's ``GRPOTrainer`` with label-budgeted active acquisition.

One generation round (``_generate_and_score_completions``), on every process::

    generate (TRL: transformers or vLLM)                        -> local rows, a group may span two processes
    [TRL's no-grad policy forward, if it runs: hook the trunk]  -> last-token hidden states for free
    _calculate_rewards (overridden):
        local features: prompt id, answer, length, (log-probs, hidden states if the strategy requires them)
        gather_object(rows), gather(hidden)                     -> global rows in TRL's rank-major order
        main process: RolloutBatch (groups = rows[gG:(g+1)G]) -> engine.decide (route, buy within the budget)
        broadcast_object_list(decision)                         -> every process applies the same routes
        rewrite label_column: bought ground truth (query) / majority answer (pseudo); super() -> rewards (B*G, F)
        rewards[dropped rows] = NaN                             -> TRL's "unscorable" path: advantage 0
    TRL: advantages A = (r - mean_g r) / (std_g r + 1e-4)  (or its configured variant), local slice
    post-processing: A_i <- w_{g(i)} A_i; strategy.transform_advantages (global, on the main process);
        drop_mode="mask": tool_mask_i <- tool_mask_i * 1[g(i) kept], num_items_in_batch recomputed (global)
    optimiser step -> strategy.update (CARE's online classifier) in on_step_end, before any checkpoint save

A strategy with a ``prompt_sampler`` hook chooses each round's prompts (:class:`StrategySampler`, TRL's layout).
``g(i) = (rank * B_local + i) // G`` is the global group of local row ``i``. Every process enters every collective
in the same order every round; errors on the main process are caught before the broadcast and re-raised on all
processes after it, so a failing oracle never leaves the other ranks hanging in a collective.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import logging
import math
import os
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import numpy as np
import torch
from accelerate.utils import broadcast_object_list, gather_object
from torch import nn
from torch.utils.data import Sampler
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from rlavr.answers import AnswerSpace, get_answer_space
from rlavr.engine import AcquisitionEngine, StepResult
from rlavr.labels import DatasetOracle, LabelLedger, Oracle
from rlavr.strategies.base import Strategy
from rlavr.strategies.registry import get_strategy
from rlavr.trl.activation import Activation, default_config, is_trl_dataset, resolve_activation
from rlavr.trl.capture import (
    LastTokenCapture,
    RowFeatures,
    completion_text,
    extra_forward,
    generate_capture_for,
    mean_token_logprobs,
    prompt_id,
    prompt_text,
    ragged_logprobs,
    stack_hidden,
    trunk_of,
)
from rlavr.trl.config import DEFAULT_POOL_CAP, VLLM_HINT, RLAVRConfig, check_vllm_available
from rlavr.trl.consistency import RewardAgreementCheck
from rlavr.trl.guards import AnswerRateGuard, check_episode_groups, check_label_columns, episode_id
from rlavr.types import Acquisition, PromptGroup, Rollout, RolloutBatch, Route
from trl import GRPOTrainer

logger = logging.getLogger(__name__)

__all__ = ["VLLM_HINT", "RLAVRGRPOTrainer", "StrategySampler", "build_rollout_batch", "check_vllm_available",
           "pool_fit_wanted"]

T = TypeVar("T")

LOG_PREFIX = "rlavr/"
"""Prefix of every rlavr metric in TRL's logs (``StepResult.metrics`` and ``rlavr_history`` keep unprefixed keys)."""


def log_key(name: str) -> str:
    """The key under which the rlavr metric ``name`` is handed to TRL's logs: ``rlavr/<name>`` (idempotent)."""
    return name if name.startswith(LOG_PREFIX) else LOG_PREFIX + name


STATE_FILE = "rlavr_state.pt"
STATE_SUMMARY = "rlavr_state.json"


def on_main_then_broadcast(accelerator: Any, fn: Callable[[], T], what: str) -> T:
    """Run ``fn`` on the main process only and broadcast its result to every process.

    An exception on the main process is broadcast as well, so that every process raises instead of waiting in
    a collective: the main process re-raises the original exception, the others a ``RuntimeError`` naming
    ``what``. The result must be picklable.
    """
    payload: list[Any] = [None]
    failure: BaseException | None = None
    if accelerator.is_main_process:
        try:
            payload[0] = {"value": fn(), "error": None}
        except Exception as exc:  # noqa: BLE001 - re-raised on every process after the broadcast
            failure = exc
            payload[0] = {"value": None, "error": f"{type(exc).__name__}: {exc}"}
    broadcast_object_list(payload, from_process=0)
    msg = payload[0]
    if msg["error"]:
        if failure is not None:
            raise failure
        raise RuntimeError(f"rlavr: {what} failed on the main process ({msg['error']})")
    return cast(T, msg["value"])


# ================================================================================================ pure helpers


def build_rollout_batch(
    rows: Sequence[RowFeatures],
    G: int,  # noqa: N803
    answer_space: AnswerSpace,
    step: int,
    hidden: np.ndarray | None = None,
) -> RolloutBatch:
    """Group the global rows (TRL's rank-major order: global row ``r`` belongs to group ``r // G``) into a
    :class:`RolloutBatch`, clustering answers and taking the majority vote.

    Args:
        rows: ``B * G`` rows, every group's ``G`` rows contiguous (TRL's ``RepeatSampler`` layout).
        G: rollouts per prompt.
        answer_space: clustering / equivalence.
        step: the generation round's training step.
        hidden: optional ``(B * G, 2, H)`` states: ``[:, 0]`` last prompt token, ``[:, 1]`` last completion token.
            The group's prompt state is taken from its first row (causal attention: identical for all its rows).

    Raises:
        ValueError: the row count is not a multiple of ``G``, a group mixes prompt ids, or ``hidden`` is malformed.
    """
    n = len(rows)
    if G < 1:
        raise ValueError(f"num_generations: must be >= 1, got {G}")
    if n == 0 or n % G:
        raise ValueError(f"rlavr: {n} gathered rollouts is not a positive multiple of num_generations={G}")
    hid = None if hidden is None else stack_hidden(hidden)
    if hid is not None and hid.shape[0] != n:
        raise ValueError(f"rlavr: {hid.shape[0]} hidden-state rows for {n} rollouts")
    groups: list[PromptGroup] = []
    for g in range(n // G):
        chunk = rows[g * G : (g + 1) * G]
        ids = {r.id for r in chunk}
        if len(ids) != 1:
            raise ValueError(f"rlavr: rows {g * G}..{(g + 1) * G - 1} should be the {G} rollouts of one prompt but "
                             f"carry prompt ids {sorted(ids)}; the sampler must keep each prompt's generations "
                             "contiguous (TRL's RepeatSampler does)")
        rollouts = tuple(
            Rollout(text=r.text, answer=r.answer, length=r.length, truncated=r.truncated,
                    mean_logprob=r.mean_logprob,
                    token_logprobs=None if r.token_logprobs is None or not r.token_logprobs
                    else np.asarray(r.token_logprobs, dtype=np.float64),
                    hidden=None if hid is None else hid[g * G + j, 1])
            for j, r in enumerate(chunk))
        groups.append(PromptGroup(id=chunk[0].id, prompt=chunk[0].prompt, rollouts=rollouts,
                                  prompt_hidden=None if hid is None else hid[g * G, 0]))
    return RolloutBatch.from_groups(groups, answer_space, step=step)


def default_oracle(dataset: Any, id_column: str, label_column: str) -> DatasetOracle:
    """The oracle used when none is given: ``train_dataset``'s ``id_column -> label_column`` (column access, so a
    large ``datasets.Dataset`` is read column-wise; ids fall back to the prompt hash like the trainer's)."""
    if dataset is None:
        raise ValueError("oracle: no oracle given and no train_dataset to read labels from; pass oracle=...")
    names = getattr(dataset, "column_names", None)
    if names is None or not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise ValueError(f"oracle: cannot build the default DatasetOracle from a {type(dataset).__name__} (an "
                         "IterableDataset, e.g. load_dataset(..., streaming=True), cannot be read ahead, and the "
                         "default oracle needs the whole label column up front); pass oracle=rlavr.DatasetOracle(...) "
                         "(e.g. over the non-streaming dataset's id and label columns) or a rlavr.CallableOracle")
    if label_column not in names:
        raise ValueError(f"label_column: {label_column!r} is not a column of train_dataset (columns: {names}); "
                         "set RLAVRConfig.label_column or pass oracle=...")
    labels = dataset[label_column]
    if id_column in names:
        ids = [prompt_id({id_column: v}, id_column) for v in dataset[id_column]]
    else:
        if "prompt" not in names:
            raise ValueError(f"id_column: {id_column!r} is not a column of train_dataset and there is no 'prompt' "
                             f"column to hash (columns: {names})")
        ids = [prompt_id({"prompt": p}, id_column) for p in dataset["prompt"]]
    table: dict[str, str] = {}
    for i, (pid, lab) in enumerate(zip(ids, labels, strict=True)):
        if lab is None:
            continue
        s = str(lab)
        if table.get(pid, s) != s:
            raise ValueError(f"id_column: prompt id {pid!r} (row {i}) appears with two different labels "
                             f"({table[pid]!r} and {s!r}); ids must identify prompts")
        table[pid] = s
    oracle = DatasetOracle(table)
    oracle.label_column = label_column  # recorded in the ledger's fingerprint (informational)
    return oracle


def pool_fit_wanted(strategy: Any) -> bool:
    """Whether ``strategy`` should be fitted on a pool before training (``RLAVRConfig.fit_pool="auto"``).

    ``False`` for a strategy without a pool stage (:meth:`~rlavr.strategies.base.Strategy.has_pool_stage`);
    otherwise the strategy's own :meth:`~rlavr.strategies.base.Strategy.wants_pool_fit` (PivotTrace only with
    ``calibration="probe"``, UncertaintyConsistency only with ``mode="offline"``, each only while not fitted).
    """
    if not isinstance(strategy, Strategy) or not strategy.has_pool_stage():
        return False
    return bool(strategy.wants_pool_fit())


# ================================================================================================ per-round state


@dataclass
class _Round:
    """What one process stashes during one generation round (train mode only)."""

    prompt_ids: list[list[int]] | None = None
    completion_ids: list[list[int]] | None = None
    sampling_logps: list[list[float | None]] | None = None
    armed: bool = False
    hidden: torch.Tensor | None = None
    old_logps: torch.Tensor | None = None
    gen_logps: torch.Tensor | None = None  # sampled-token log-probs read during transformers generate
    hidden_source: str = "none"
    feature_seconds: float = 0.0
    decision: dict[str, Any] | None = None
    n_local: int = 0


@dataclass
class _Pending:
    """A decided round whose ``strategy.update`` has not run yet (main process). Keeps the gathered rows so that
    it can be written to a checkpoint as plain data (see :func:`_pending_to_state`)."""

    result: StepResult
    rows: list[RowFeatures]
    hidden: np.ndarray | None
    G: int  # noqa: N815
    round: int


def _pending_to_state(p: _Pending) -> dict[str, Any]:
    """A pending update as plain data (``torch.load(weights_only=True)`` safe): the gathered rows, hidden states,
    reference labels the strategy saw, its acquisition and the final routes / labels."""
    res, acq = p.result, p.result.acquisition
    ref = res.seen_by_strategy.reference_labels
    return {
        "round": int(p.round), "step": int(res.batch.step), "G": int(p.G),
        "rows": [{"id": r.id, "prompt": r.prompt, "text": r.text, "answer": r.answer, "length": int(r.length),
                  "truncated": bool(r.truncated),
                  "mean_logprob": None if r.mean_logprob is None else float(r.mean_logprob),
                  "token_logprobs": None if r.token_logprobs is None else [float(v) for v in r.token_logprobs]}
                 for r in p.rows],
        "hidden": None if p.hidden is None else torch.from_numpy(np.array(p.hidden, dtype=np.float32)),
        "reference": None if ref is None else list(ref),
        "acquisition": {"routes": [int(v) for v in acq.routes], "weights": [float(v) for v in acq.weights],
                        "scores": [float(v) for v in acq.scores], "metrics": dict(acq.metrics)},
        "routes": [int(v) for v in res.routes], "weights": [float(v) for v in res.weights],
        "labels": list(res.labels),
    }


def _pending_from_state(d: Mapping[str, Any], space: AnswerSpace) -> _Pending:
    """Inverse of :func:`_pending_to_state` (the batch is rebuilt from the rows, as in the round itself)."""
    rows = [RowFeatures(**{**r, "token_logprobs": None if r["token_logprobs"] is None else tuple(r["token_logprobs"])})
            for r in d["rows"]]
    hidden = None if d["hidden"] is None else d["hidden"].numpy()
    batch = build_rollout_batch(rows, int(d["G"]), space, int(d["step"]), hidden)
    if d["reference"] is not None:
        batch = batch.with_reference_labels(d["reference"])
    a = d["acquisition"]
    acq = Acquisition(routes=np.asarray(a["routes"]), weights=np.asarray(a["weights"], dtype=np.float64),
                      scores=np.asarray(a["scores"], dtype=np.float64), metrics=dict(a["metrics"]))
    result = StepResult(batch=batch, acquisition=acq, routes=np.asarray(d["routes"], dtype=np.int8),
                        weights=np.asarray(d["weights"], dtype=np.float64), labels=list(d["labels"]), bought=[],
                        reused=[], failed=[], strategy_batch=batch)
    return _Pending(result, rows, hidden, int(d["G"]), int(d["round"]))


@dataclass
class _Failure:
    """An exception raised on the main process, carried to the next broadcast."""

    exc: BaseException
    where: str
    text: str = field(default="")


class _RLAVRCallback(TrainerCallback):
    """Runs the strategy's online ``update`` after the optimiser step (before a checkpoint of that step)."""

    def __init__(self, trainer: RLAVRGRPOTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # after a checkpoint was loaded, before the first round
        self.trainer._rlavr_check_fresh_ledger()
        self.trainer._rlavr_auto_fit_pool()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer._rlavr_apply_update()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer._rlavr_apply_update()
        fail = self.trainer._rlavr_failure
        if fail is not None:
            self.trainer._rlavr_failure = None
            raise RuntimeError(f"rlavr: {fail.where} failed after the last generation round: {fail.exc!r}") from fail.exc
        if state.is_world_process_zero and self.trainer.rlavr_history:
            logger.info("rlavr: %s", self.trainer.rlavr_summary_line())


class StrategySampler(Sampler[int]):
    """TRL's ``RepeatSampler`` layout with the prompts of each round chosen by ``strategy.prompt_sampler``.

    Each round takes ``n_prompts`` dataset indices and yields every index ``G`` times (one group), the whole round
    ``repeat`` times (``num_iterations x steps_per_generation``), exactly like TRL's sampler. The indices come from
    ``strategy.prompt_sampler(train_dataset, n_prompts)`` on the main process, broadcast to every process; when
    it returns ``None`` the round keeps TRL's own (seeded, shuffled) prompts. The epoch has as many rounds as
    TRL's sampler, which this class consumes alongside.

    The data loader fetches a round before the previous one is trained (prefetch), so a prompt sampler must not
    depend on the labels of the round just before; the built-in ones are fitted once before training
    (``fit_pool``).
    """

    def __init__(self, trainer: RLAVRGRPOTrainer, base: Sampler[int], dataset: Any, n_prompts: int, G: int,  # noqa: N803
                 repeat: int) -> None:
        self.trainer = trainer
        self.base = base
        self.dataset = dataset
        self.n_prompts = int(n_prompts)
        self.G = int(G)
        self.repeat = int(repeat)
        self.rounds = 0

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def _choose(self) -> list[int] | None:
        def choose() -> list[int] | None:
            out = self.trainer.engine.strategy.prompt_sampler(self.dataset, self.n_prompts)
            if out is None:
                return None
            idx = [int(i) for i in out]
            n = len(self.dataset)
            if len(idx) != self.n_prompts or any(i < 0 or i >= n for i in idx):
                raise ValueError(f"strategy {self.trainer.engine.strategy.name!r}.prompt_sampler returned "
                                 f"{len(idx)} indices (expected {self.n_prompts}, each in [0, {n}))")
            return idx

        return on_main_then_broadcast(self.trainer.accelerator, choose, "prompt_sampler")

    def __iter__(self) -> Iterator[int]:
        size = self.n_prompts * self.G * self.repeat
        base = iter(self.base)
        while True:
            own = list(itertools.islice(base, size))
            if len(own) < size:
                return
            chosen = self._choose()
            self.rounds += 1
            if chosen is None:
                yield from own
                continue
            for _ in range(self.repeat):
                for index in chosen:
                    for _ in range(self.G):
                        yield index


# ================================================================================================ the trainer


class RLAVRGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` + an acquisition strategy deciding, under a global label budget, which prompt groups are
    rewarded against a bought ground-truth label (query), their majority vote (pseudo, weighted) or dropped.

    Args:
        model, reward_funcs, args, train_dataset, eval_dataset, processing_class: as for ``GRPOTrainer``; ``args``
            must be an :class:`~rlavr.trl.RLAVRConfig` (``None``: ``RLAVRConfig(f"{model_name}-GRPO")``, as TRL
            does). Every other ``GRPOTrainer`` keyword (``callbacks``, ``peft_config``, ``rollout_func``, ...) is
            passed through. Without ``label_column`` in ``train_dataset`` and without ``oracle``, acquisition may
            be off (plain ``GRPOTrainer``), label-free, or refused: see :func:`rlavr.trl.activation.resolve_activation`
            and :attr:`rlavr_active`.
        oracle: ground-truth source (``label(ids, prompts)``). Default: a
            :class:`~rlavr.labels.DatasetOracle` over ``train_dataset[id_column] -> train_dataset[label_column]``
            (the labels are then only *charged* when bought: the point is to measure label efficiency).
        strategy: a :class:`~rlavr.strategies.Strategy` instance overriding ``args.strategy``.
        answer_space: an :class:`~rlavr.answers.AnswerSpace` object overriding ``args.answer_space``.

    Attributes:
        engine: the :class:`~rlavr.engine.AcquisitionEngine`. Decisions are made on the main process, whose
            engine holds the ledger file; other processes hold an engine with an in-memory ledger that is never
            used to buy.
        rlavr_history: one dict per generation round (on every process): step, route counts, labels bought,
            label/reward accuracy, budget spent, strategy metrics, feature timings.
    """

    args: RLAVRConfig

    def __init__(
        self,
        model: Any,
        reward_funcs: Any = None,
        args: RLAVRConfig | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        *,
        oracle: Oracle | None = None,
        strategy: Strategy | None = None,
        answer_space: AnswerSpace | None = None,
        **kwargs: Any,
    ) -> None:
        args_given = args is not None
        if args is None:  # like GRPOTrainer: a default config named after the model
            args = default_config(model)
        if not isinstance(args, RLAVRConfig):
            raise ValueError(f"args: expected an rlavr.trl.RLAVRConfig, got {type(args).__name__}; replace "
                             "GRPOConfig(...) by RLAVRConfig(...) (same fields plus strategy, budget, ...)")
        settings = args.rlavr
        # rlavr's messages follow TRL's log level, as Trainer sets it for transformers' logger; "passive" (the
        # main process's default) sets nothing: the application's logging configuration decides
        if (args.log_level if args.should_log else args.log_level_replica) != "passive":
            logging.getLogger("rlavr").setLevel(args.get_process_log_level())
        if args.use_vllm:
            check_vllm_available()
        # the strategy may build nn.Modules: keep the global RNG untouched (GT-equivalence with stock TRL)
        with torch.random.fork_rng(devices=[]):
            if strategy is not None:
                if settings.strategy_kwargs:
                    raise ValueError(f"strategy_kwargs: {sorted(settings.strategy_kwargs)} given together with a "
                                     "strategy instance; configure the instance instead")
                strat = get_strategy(strategy)
            else:
                # the strategy's private RNG follows TRL's seed unless strategy_kwargs sets one (docs/trl.md)
                strat = get_strategy(settings.strategy, default_seed=args.seed, **settings.strategy_kwargs)
        requires = frozenset(getattr(strat, "requires", frozenset()))
        if "attentions" in requires:
            raise ValueError(f"strategy {getattr(strat, 'name', strat)!r} requires 'attentions', which the TRL trainer "
                             "does not capture (vLLM exposes no attention maps and a second eager forward would "
                             "double the cost); use a detector that needs no attention (e.g. PivotTrace "
                             "detector='lexical') or score offline with `rlavr replay`")
        space = get_answer_space(answer_space if answer_space is not None else settings.answer_space)
        if oracle is not None and not callable(getattr(oracle, "label", None)):
            raise ValueError(f"oracle: expected an object with label(prompt_ids, prompts), got {type(oracle).__name__}")

        def dataset_checks() -> tuple[Activation, Oracle]:
            act = resolve_activation(train_dataset, settings, str(getattr(strat, "name", "")),
                                     oracle_given=oracle is not None, args_given=args_given)
            if act.mode == "inactive":
                return act, DatasetOracle({})  # never asked
            if oracle is not None:
                got: Oracle = oracle
            elif act.mode == "label_free":
                got = DatasetOracle({}, label_column=settings.label_column)  # the budget buys nothing
            else:
                got = default_oracle(train_dataset, settings.id_column, settings.label_column)
            # no second column may carry ground truth to the reward functions (every strategy, gt included)
            check_label_columns(train_dataset, settings.label_column, settings.id_column,
                                settings.allow_extra_label_columns, space)
            return act, got

        # rlavr's dataset checks fail before the model loads; a train_dataset TRL itself refuses (None without an
        # environment, a list, ...) gets TRL's own error first, and rlavr checks what TRL accepted afterwards
        early = is_trl_dataset(train_dataset)
        if early:
            activation, source = dataset_checks()
        super().__init__(model=model, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, **kwargs)
        if not early:
            activation, source = dataset_checks()
        self.rlavr_active = activation.mode != "inactive"
        """Whether acquisition runs (``False``: plain ``GRPOTrainer``, see :mod:`rlavr.trl.activation`)."""
        self.rlavr_activation = activation
        if activation.mode == "inactive":
            logger.warning("rlavr: acquisition is OFF, training exactly like trl.GRPOTrainer (no oracle, no ledger, "
                           "no label rewriting): %s. To acquire labels, set RLAVRConfig.label_column to the column "
                           "holding the ground truth or pass oracle=.", activation.reason)
        elif activation.mode == "label_free":
            logger.warning("rlavr: label-free run: %s.", activation.reason)

        self.rlavr_settings = settings
        # rollout_log_features: compute both signals for the log even when the strategy does not need them
        self._rlavr_needs_hidden = "hidden_states" in requires or settings.rollout_log_features
        self._rlavr_needs_logps = "logprobs" in requires or settings.rollout_log_features
        self._rlavr_transforms = (isinstance(strat, Strategy)
                                  and type(strat).transform_advantages is not Strategy.transform_advantages)
        is_main = self.accelerator.is_main_process
        owner = f"rank{self.accelerator.process_index}"
        # acquisition off: an in-memory ledger that is never used (no ledger file, as with GRPOTrainer)
        ledger = LabelLedger(args.resolved_ledger_path() if is_main and self.rlavr_active else ":memory:", owner=owner)
        self.engine = AcquisitionEngine(strat, source, budget=settings.budget, ledger=ledger, answer_space=space,
                                        on_oracle_failure=settings.on_oracle_failure,
                                        max_retries=settings.oracle_max_retries, backoff=settings.oracle_backoff,
                                        oracle_timeout=settings.oracle_timeout,
                                        allow_foreign_ledger=settings.allow_foreign_ledger)
        self.rlavr_history: list[dict[str, Any]] = []
        self.rlavr_feature_stats: dict[str, float] = {"rounds": 0, "hook_rounds": 0, "generate_rounds": 0,
                                                     "extra_forward_rounds": 0,
                                                     "extra_forward_seconds": 0.0, "decide_seconds": 0.0}
        self._rlavr_round: _Round | None = None
        # decided rounds awaiting strategy.update, in round order (several per optimiser step when
        # gradient_accumulation_steps > steps_per_generation x num_iterations); main process only
        self._rlavr_pending: list[_Pending] = []
        # generation rounds so far (every process; persisted): the ledger's step key, monotone over resumes
        self._rlavr_rounds = 0
        self._rlavr_cap: int | None = None  # the global cap after the last round (broadcast with the decision)
        self._rlavr_failure: _Failure | None = None
        self._rlavr_spent = self.engine.spent if is_main else 0
        self._rlavr_initial_charged = self._rlavr_spent
        self._rlavr_resumed = False
        self._rlavr_resume_requested = False  # train(resume_from_checkpoint=...) named a checkpoint
        self._rlavr_ledger_checked = False  # _rlavr_check_fresh_ledger ran (once per trainer)
        self._rlavr_pool_fitted = False  # fit_pool ran in this trainer (every process)
        self.rlavr_pool_metrics: dict[str, float] = {}  # what the last fit_pool returned (every process)
        self._rlavr_pool_logs: dict[str, float] = {}  # logged with the first training log
        self._rlavr_warned: set[str] = set()
        self._rlavr_answer_guard = AnswerRateGuard(getattr(space, "name", type(space).__name__),
                                                   settings.invalid_answer_threshold,
                                                   settings.invalid_answer_rounds, settings.on_invalid_answers)
        self._rlavr_episode_prompts: dict[str, str] = {}  # environment runs: id -> prompt seen (main process)
        self._rlavr_reward_check = RewardAgreementCheck(space, list(self.reward_func_names))  # main process
        if not self.rlavr_active:
            return
        if settings.drop_mode == "mask" and self.loss_type not in ("dapo", "bnpo", "cispo", "vespo"):
            logger.warning("rlavr: drop_mode='mask' removes dropped groups from the loss normaliser only for the "
                           "dapo/bnpo/cispo/vespo losses; with loss_type=%r they still count as rows with loss 0",
                           self.loss_type)
        if settings.rollout_log_path and is_main:
            os.makedirs(os.path.dirname(os.path.abspath(settings.rollout_log_path)), exist_ok=True)
        self.add_callback(_RLAVRCallback(self))

    # ------------------------------------------------------------------ small properties
    @property
    def strategy(self) -> Strategy:
        return self.engine.strategy

    @property
    def budget_spent(self) -> int:
        """Labels charged so far (the main process' ledger count, broadcast to every process each round)."""
        return int(self._rlavr_spent)

    def _policy(self) -> nn.Module:
        if self.model is None:  # pragma: no cover - GRPOTrainer always sets it
            raise RuntimeError("rlavr: the trainer has no model")
        return self.model

    def _group_size(self) -> int:
        G = self.num_generations
        if not isinstance(G, int) or G < 1:  # pragma: no cover - GRPOConfig validates it
            raise ValueError(f"num_generations: expected an int >= 1, got {G!r}")
        return G

    def _train_mode(self) -> bool:
        return bool(self._policy().training)

    def _trl_runs_policy_nograd_forward(self) -> bool:
        """Whether TRL computes ``old_per_token_logps`` this round (the same rule as ``grpo_trainer.py:2643``)."""
        generate_every = int(self.args.steps_per_generation or 1) * int(self.num_iterations)
        return bool(self.args.gradient_accumulation_steps % generate_every != 0
                    or (self.use_vllm and self.vllm_importance_sampling_correction))

    def _warn_once(self, key: str, msg: str, *a: Any) -> None:
        if key not in self._rlavr_warned:
            self._rlavr_warned.add(key)
            logger.warning(msg, *a)

    # ------------------------------------------------------------------ TRL overrides: prompts, stashes
    def _get_train_sampler(self, dataset: Any = None) -> Sampler[int]:
        base = super()._get_train_sampler(dataset)
        strat = getattr(self, "engine", None)
        strat = None if strat is None or not self.rlavr_active else strat.strategy
        if strat is None or not isinstance(strat, Strategy) or \
                type(strat).prompt_sampler is Strategy.prompt_sampler:
            return base  # TRL's own RepeatSampler: GT-equivalence untouched
        G = self._group_size()
        return StrategySampler(self, base, dataset if dataset is not None else self.train_dataset,
                               n_prompts=int(self.args.generation_batch_size or G) // G, G=G,
                               repeat=int(self.num_iterations) * int(self.args.steps_per_generation or 1))

    # ------------------------------------------------------------------ TRL overrides: stash what we need
    def _generate(self, prompts: list, *args: Any, **kwargs: Any) -> Any:
        rnd = self._rlavr_round
        cap, why = (None, "") if rnd is None else generate_capture_for(
            self, armed=rnd.armed, need_hidden=self._rlavr_needs_hidden, need_logps=self._rlavr_needs_logps)
        if rnd is not None and cap is None and why not in ("not needed", "vLLM generation"):
            self._warn_once("gen-capture", "rlavr: features not read during generation (%s); one extra forward "
                            "per round computes them", why)
        with cap if cap is not None else contextlib.nullcontext():
            out = super()._generate(prompts, *args, **kwargs)
        if rnd is not None:
            rnd.prompt_ids = [list(map(int, p)) for p in out[0]]
            rnd.completion_ids = [list(map(int, c)) for c in out[1]]
            rnd.sampling_logps = out[4]
            if cap is not None:
                self._rlavr_finish_generate_capture(rnd, cap)
        return out

    def _rlavr_finish_generate_capture(self, rnd: _Round, cap: Any) -> None:
        """Hidden states / log-probs read during generate (+ one cached decode step); on failure, warn once and
        leave them unset so that the round falls back to the extra forward."""
        from trl.models.utils import disable_gradient_checkpointing

        policy = self._policy()
        ckpt_kwargs = self.args.gradient_checkpointing_kwargs
        t0 = time.perf_counter()
        try:
            hidden, logps = cap.finish(rnd.completion_ids, no_checkpointing=lambda: disable_gradient_checkpointing(
                policy, ckpt_kwargs if isinstance(ckpt_kwargs, dict) else None))  # type: ignore[arg-type]
        except RuntimeError as exc:
            self._warn_once("gen-capture-failed", "rlavr: reading features during generation failed (%s); using "
                            "one extra forward instead", exc)
            return
        rnd.feature_seconds += time.perf_counter() - t0
        rnd.hidden, rnd.gen_logps, rnd.hidden_source = hidden, logps, "generate"

    def _get_per_token_logps_and_entropies(self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                                           logits_to_keep: int, *args: Any, **kwargs: Any) -> Any:
        rnd = self._rlavr_round
        if (rnd is None or not rnd.armed or model is not self.model or torch.is_grad_enabled()
                or rnd.completion_ids is None):
            return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                              *args, **kwargs)
        rnd.armed = False  # the first no-grad policy call of the round is TRL's old-logps forward
        capture = None
        if self._rlavr_needs_hidden:
            P = int(input_ids.shape[1]) - int(logits_to_keep)
            capture = LastTokenCapture(trunk_of(self._policy()), P, [len(c) for c in rnd.completion_ids])
            with capture:
                res = super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                                 *args, **kwargs)
            try:
                rnd.hidden = capture.result()
                rnd.hidden_source = "hook"
            except RuntimeError as exc:  # e.g. a custom forward that bypasses the trunk: fall back, don't crash
                self._warn_once("hook", "rlavr: hidden-state hook failed (%s); using one extra forward instead", exc)
        else:
            res = super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                             *args, **kwargs)
        rnd.old_logps = res[0]
        return res

    # ------------------------------------------------------------------ the round
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        if not self._train_mode() or not self.rlavr_active:
            return super()._generate_and_score_completions(inputs)
        needs_forward = self._rlavr_needs_hidden or self._rlavr_needs_logps
        self._rlavr_round = _Round(armed=needs_forward and self._trl_runs_policy_nograd_forward(),
                                   n_local=len(inputs))
        try:
            out = super()._generate_and_score_completions(inputs)
            dec = self._rlavr_round.decision
            if dec is None:  # pragma: no cover - _calculate_rewards always runs in train mode
                raise RuntimeError("rlavr: TRL did not call _calculate_rewards during the generation round")
            self._rlavr_postprocess(out, dec, len(inputs))
        finally:
            self._rlavr_round = None
        return out

    def _calculate_rewards(self, inputs: list[dict[str, Any]], prompts: list, completions: list,
                           completion_ids_list: list) -> torch.Tensor:
        rnd = self._rlavr_round
        if rnd is None or not self._train_mode():  # evaluation: plain TRL, no budget spent
            return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        s = self.rlavr_settings
        acc = self.accelerator
        G = self._group_size()
        B_l = len(prompts)
        step = int(self.state.global_step)
        position = self._rlavr_rounds  # several rounds may share one global_step: the ledger keys on the round

        # 1. local features (errors are carried through the gather, never raised before a collective)
        local_error: str | None = None
        rows: list[RowFeatures] = []
        hidden_local: torch.Tensor | None = None
        try:
            hidden_local, logps_local = self._rlavr_local_signals(rnd, completion_ids_list)
            rows = self._rlavr_local_rows(inputs, prompts, completions, completion_ids_list, logps_local)
        except Exception as exc:  # noqa: BLE001 - reported on every rank below
            local_error = f"rank {acc.process_index}: {type(exc).__name__}: {exc}"
            logger.error("rlavr: feature extraction failed on %s", local_error, exc_info=True)

        # 2. gather whole groups (global, rank-major = TRL's order)
        gathered = gather_object([{"rows": rows, "error": local_error}])
        hidden_all: np.ndarray | None = None
        if self._rlavr_needs_hidden:
            if hidden_local is None or hidden_local.shape[0] != B_l:
                config: Any = getattr(self._policy(), "config", None)
                H = int(config.get_text_config().hidden_size)
                hidden_local = torch.zeros((B_l, 2, H), dtype=torch.float32)
            hidden_all = acc.gather(hidden_local.to(acc.device).float().contiguous()).cpu().numpy()
        if not any(p["error"] for p in gathered):  # the same rows on every rank: every rank raises at the same round
            self._rlavr_answer_guard.observe([r for p in gathered for r in p["rows"]], position,
                                             log=acc.is_main_process)

        # 3. decide on the main process, broadcast
        decision: dict[str, Any] | None = None
        failure: _Failure | None = None
        if acc.is_main_process:
            t0 = time.perf_counter()
            try:
                if self._rlavr_failure is not None:  # the last update failed: retry it before this round decides
                    logger.warning("rlavr: retrying the failed %s before round %d", self._rlavr_failure.where,
                                   position)
                    self._rlavr_apply_update()
                    if self._rlavr_failure is not None:
                        failure, self._rlavr_failure = self._rlavr_failure, None
                        raise RuntimeError(f"rlavr: {failure.where} failed twice (after the optimiser step and again "
                                           f"before the next round): {failure.exc!r}") from failure.exc
                errors = [p["error"] for p in gathered if p["error"]]
                if errors:
                    raise RuntimeError("rlavr: rollout feature extraction failed on " + "; ".join(errors))
                all_rows = [r for p in gathered for r in p["rows"]]
                if self.environment_factories is not None:
                    check_episode_groups(all_rows, G, self._rlavr_episode_prompts)
                decision = self._rlavr_decide(all_rows, G, step, hidden_all, position)
            except Exception as exc:  # noqa: BLE001 - re-raised on every rank after the broadcast
                failure = _Failure(exc, "the acquisition decision", traceback.format_exc())
                decision = {"error": f"{type(exc).__name__}: {exc}"}
            self.rlavr_feature_stats["decide_seconds"] += time.perf_counter() - t0
        payload = [decision]
        broadcast_object_list(payload, from_process=0)
        decision = payload[0]
        if decision is None or decision.get("error"):
            msg = None if decision is None else decision["error"]
            if failure is not None:
                raise failure.exc
            raise RuntimeError(f"rlavr: the main process failed to decide this round ({msg}); see its log")
        rnd.decision = decision
        self._rlavr_rounds = position + 1

        # 4. rewrite the label column per row, compute TRL's rewards, NaN the dropped rows
        offset = acc.process_index * B_l
        group_of = (offset + np.arange(B_l)) // G
        labels: list[str | None] = decision["labels"]
        majority: list[str | None] = decision["majority"]
        routes = np.asarray(decision["routes"], dtype=np.int64)
        col = s.label_column
        space = self.engine.answer_space
        # bought ground truth keeps the dataset's format; a majority vote is written in the answer space's label
        # form (math: \boxed{...}, which TRL's accuracy_reward parses as gold; a bare "x^2+1" it cannot parse)
        written = [lab if routes[g] == Route.QUERY and lab is not None
                   else None if maj is None else space.as_label(maj)
                   for g, (lab, maj) in enumerate(zip(labels, majority, strict=True))]
        new_inputs = []
        for i, x in enumerate(inputs):
            g = int(group_of[i])
            lab = written[g]
            row = dict(x)
            if lab is not None and not (col in x and x[col] is not None and str(x[col]) == lab):
                row[col] = lab  # otherwise keep the row's own object (same value), so GT runs match stock TRL
            new_inputs.append(row)
        rewards = super()._calculate_rewards(new_inputs, prompts, completions, completion_ids_list)
        if acc.is_main_process and rows and not self._rlavr_reward_check.done:
            try:  # does answer_space judge like the reward functions? (warns; never changes the rewards)
                self._rlavr_reward_check.observe(
                    [r.text for r in rows], [r.answer for r in rows],
                    [written[int(g)] if routes[int(g)] == Route.QUERY else None for g in group_of],
                    rewards.detach().float().cpu().numpy())
            except Exception as exc:  # noqa: BLE001 - a diagnostic must never stop training
                logger.debug("rlavr: reward agreement check failed: %r", exc)
        drop_global = np.repeat(routes == Route.DROP, G)
        if drop_global.any():
            rewards[torch.as_tensor(drop_global, device=rewards.device)] = torch.nan
        names = {int(Route.QUERY): "query", int(Route.PSEUDO): "pseudo", int(Route.DROP): "drop"}
        self._log_completion_extra("rlavr_route", [names[int(routes[g])] for g in group_of])
        self._log_completion_extra("rlavr_weight", [float(decision["weights"][g]) for g in group_of])
        self._log_completion_extra("rlavr_label", [labels[g] for g in group_of])

        # 5. metrics (identical on every rank: they come from the broadcast)
        metrics: dict[str, float] = dict(decision["metrics"])
        metrics["rlavr/feature_seconds"] = rnd.feature_seconds
        metrics["rlavr/hidden_from_hook"] = 1.0 if rnd.hidden_source == "hook" else 0.0
        for k, v in metrics.items():
            if k != "budget_spent":  # a level, injected in log()
                self._metrics["train"][log_key(k)].append(float(v))
        self._rlavr_spent = int(decision["spent"])
        self._rlavr_cap = decision.get("cap")
        self.rlavr_history.append({"step": step, "round": position, **metrics,
                                   "budget_spent": float(self._rlavr_spent)})
        st = self.rlavr_feature_stats
        st["rounds"] += 1
        st["hook_rounds"] += rnd.hidden_source == "hook"
        st["generate_rounds"] += rnd.hidden_source == "generate"
        if rnd.hidden_source == "extra_forward":
            st["extra_forward_rounds"] += 1
            st["extra_forward_seconds"] += rnd.feature_seconds
        return rewards

    # ------------------------------------------------------------------ pieces of the round
    def _rlavr_local_signals(self, rnd: _Round, completion_ids_list: list
                             ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Hidden states ``(B_l, 2, H)`` and per-token log-probs ``(B_l, C)`` this process needs, from (in order of
        preference) vLLM's sampling log-probs, TRL's hooked no-grad forward, or ONE extra no-grad forward."""
        need_h, need_lp = self._rlavr_needs_hidden, self._rlavr_needs_logps
        if not (need_h or need_lp):
            return None, None
        lengths = [len(c) for c in completion_ids_list]
        logps: torch.Tensor | None = None
        if need_lp:
            if rnd.sampling_logps is not None:
                logps = ragged_logprobs(rnd.sampling_logps, lengths)
            elif rnd.old_logps is not None:
                logps = rnd.old_logps
            elif rnd.gen_logps is not None:
                logps = rnd.gen_logps
        hidden = rnd.hidden if need_h else None
        missing_h = need_h and hidden is None
        missing_lp = need_lp and logps is None
        if missing_h or missing_lp:
            if rnd.prompt_ids is None:
                raise RuntimeError("rlavr: prompt token ids were not captured from _generate")
            if getattr(self, "_is_vlm", False):
                raise ValueError("rlavr: the extra feature forward does not support vision-language inputs; use "
                                 "a configuration where TRL runs its own no-grad forward (e.g. num_iterations=2) "
                                 "or a strategy that needs no hidden states / log-probs")
            t0 = time.perf_counter()
            logps_fn: Callable[..., Any] | None = None
            if missing_lp:
                model = self.model

                def logps_fn(ids: torch.Tensor, mask: torch.Tensor, keep: int, batch_size: int) -> Any:
                    return GRPOTrainer._get_per_token_logps_and_entropies(self, model, ids, mask, keep,
                                                                          batch_size=batch_size)
            from trl.models.utils import disable_gradient_checkpointing

            policy = self._policy()
            ckpt_kwargs = self.args.gradient_checkpointing_kwargs
            h, lp = extra_forward(
                policy, rnd.prompt_ids, list(completion_ids_list),
                pad_token_id=int(self._tokenizer.pad_token_id), device=self.accelerator.device,
                batch_size=int(self.args.per_device_train_batch_size), need_hidden=missing_h, logps_fn=logps_fn,
                autocast=self.accelerator.autocast,
                no_checkpointing=lambda: disable_gradient_checkpointing(
                    policy, ckpt_kwargs if isinstance(ckpt_kwargs, dict) else None))  # type: ignore[arg-type]
            rnd.feature_seconds += time.perf_counter() - t0
            rnd.hidden_source = "extra_forward"  # counted for log-prob-only rounds too (rlavr_feature_stats)
            if missing_h:
                hidden = h
            if missing_lp:
                logps = lp
        return hidden, logps

    def _rlavr_local_rows(self, inputs: list[dict[str, Any]], prompts: list, completions: list,
                          completion_ids_list: list, logps: torch.Tensor | None) -> list[RowFeatures]:
        s = self.rlavr_settings
        space = self.engine.answer_space
        eos_and_pad = {*self.eos_token_ids, self._tokenizer.pad_token_id}
        envs = self.environment_factories is not None
        if s.id_column not in inputs[0]:
            self._warn_once("hash-ids", "rlavr: the dataset has no %r column; prompt ids are SHA-1 hashes of the "
                            "prompts%s (identical prompts share a label)", s.id_column,
                            " the policy saw after the environment's reset()" if envs else "")
        lengths = [len(c) for c in completion_ids_list]
        means: list[float | None] = [None] * len(inputs)
        toks: list[tuple[float, ...] | None] = [None] * len(inputs)
        if logps is not None:
            m, t = mean_token_logprobs(logps, lengths)
            means, toks = list(m), list(t)
        rows = []
        for i, x in enumerate(inputs):
            text = completion_text(completions[i])
            ids = completion_ids_list[i]
            rows.append(RowFeatures(
                id=episode_id(x, prompts[i], s.id_column) if envs else prompt_id(x, s.id_column),
                prompt=prompt_text(prompts[i]), text=text,
                answer=space.extract(text), length=lengths[i],
                truncated=bool(len(ids) > 0 and int(ids[-1]) not in eos_and_pad),
                mean_logprob=means[i], token_logprobs=toks[i]))
        return rows

    def _rlavr_decide(self, rows: list[RowFeatures], G: int, step: int,  # noqa: N803
                      hidden: np.ndarray | None, position: int) -> dict[str, Any]:
        """Main process: batch -> engine.decide -> a picklable decision (and the rollout log)."""
        if self._rlavr_initial_charged and not self._rlavr_resumed:
            self._warn_once("old-ledger", "rlavr: the ledger %s already holds %d labels from other runs and this "
                            "run did not resume from a checkpoint; it shares their budget and reuses those labels "
                            "for free (use a fresh ledger_path for an independent run)",
                            self.engine.ledger.path, self._rlavr_initial_charged)
        batch = build_rollout_batch(rows, G, self.engine.answer_space, step, hidden)
        result = self.engine.decide(batch, step, position=position)
        self._rlavr_pending.append(_Pending(result, list(rows), hidden, G, position))
        if self.rlavr_settings.rollout_log_path:
            self._rlavr_write_log(result, step)
        return {
            "error": None,
            "step": step,
            "routes": [int(r) for r in result.routes],
            "weights": [float(w) for w in result.weights],
            "labels": list(result.labels),
            "majority": list(result.batch.votes.majority_answer),
            "metrics": {k: float(v) for k, v in result.metrics.items()},
            "spent": int(self.engine.spent),
            "cap": result.budget.cap if result.budget is not None else None,
        }

    def _rlavr_write_log(self, result: StepResult, step: int) -> None:
        batch = result.batch
        ref = batch.reference_labels
        bought = set(result.bought)
        has_lp = all(r.mean_logprob is not None for g in batch.groups for r in g.rollouts)
        log_hidden = self.rlavr_settings.rollout_log_features and all(
            g.prompt_hidden is not None and all(r.hidden is not None for r in g.rollouts) for g in batch.groups)

        def floats(x: Any) -> list[float]:  # 6 significant digits: exact enough for replay, ~40 % smaller
            return [float(f"{v:.6g}") for v in np.asarray(x, dtype=np.float64).ravel()]
        with open(self.rlavr_settings.rollout_log_path, "a", encoding="utf-8") as f:  # type: ignore[arg-type]
            for i, g in enumerate(batch.groups):
                features = ({"prompt_hidden": floats(g.prompt_hidden),
                             "hidden": [floats(r.hidden) for r in g.rollouts]} if log_hidden else {})
                f.write(json.dumps({
                    "step": step,
                    "id": g.id,
                    "prompt": g.prompt,
                    "completions": [r.text for r in g.rollouts],
                    "answers": g.answers,
                    "lengths": [r.length for r in g.rollouts],
                    "truncated": [r.truncated for r in g.rollouts],
                    "mean_logprob": [r.mean_logprob for r in g.rollouts] if has_lp else None,
                    "route": Route(int(result.routes[i])).name.lower(),
                    "weight": float(result.weights[i]),
                    "score": float(result.acquisition.scores[i]),
                    "label_used": result.labels[i],
                    "majority_answer": batch.votes.majority_answer[i],
                    "reference_label": None if ref is None else ref[i],
                    "bought": g.id in bought,
                    "strategy": self.engine.strategy.name,
                    "answer_space": self.engine.answer_space.name,  # rlavr replay's default space
                    **features,
                }, ensure_ascii=False) + "\n")

    def _rlavr_postprocess(self, out: dict[str, Any], decision: Mapping[str, Any], B_l: int) -> None:  # noqa: N803
        """Weights, the strategy's advantage transform and the loss mask, on the local slice."""
        acc = self.accelerator
        G = self._group_size()
        rank = acc.process_index
        group_of = (rank * B_l + np.arange(B_l)) // G
        weights = np.asarray(decision["weights"], dtype=np.float64)
        routes = np.asarray(decision["routes"], dtype=np.int64)
        adv: torch.Tensor = out["advantages"]
        if not np.all(weights[routes != Route.DROP] == 1.0):
            w = torch.as_tensor(weights[group_of], dtype=adv.dtype, device=adv.device)
            adv = adv * (w if adv.dim() == 1 else w[:, None])
        if self._rlavr_transforms:
            adv = self._rlavr_transform(adv, B_l)
        out["advantages"] = adv
        drop_local = routes[group_of] == Route.DROP
        if self.rlavr_settings.drop_mode == "mask" and bool((routes == Route.DROP).any()):
            cm = out["completion_mask"]
            keep = torch.as_tensor(~drop_local, device=cm.device).to(cm.dtype)[:, None]
            tool_mask = out.get("tool_mask")
            tool_mask = keep.expand_as(cm).clone() if tool_mask is None else tool_mask * keep
            out["tool_mask"] = tool_mask
            out["num_items_in_batch"] = acc.gather((cm * tool_mask).sum()).sum()

    def _rlavr_transform(self, adv: torch.Tensor, B_l: int) -> torch.Tensor:  # noqa: N803
        """Gather the weighted advantages, let the strategy transform the global ``(B, G)`` array on the main
        process, broadcast, keep the local slice."""
        acc = self.accelerator
        if adv.dim() != 1:
            raise ValueError("rlavr: transform_advantages needs per-sequence advantages, got shape "
                             f"{tuple(adv.shape)}")
        full = acc.gather(adv.detach().double().contiguous()).cpu().numpy()

        def transform() -> list[float]:
            if not self._rlavr_pending:
                raise RuntimeError("rlavr: no decision to transform advantages for")
            result = self._rlavr_pending[-1].result  # this round's
            B, G = result.batch.B, result.batch.G  # noqa: N806
            new = np.asarray(self.engine.strategy.transform_advantages(result.seen_by_strategy, result.acquisition,
                                                                        full.reshape(B, G)), dtype=np.float64)
            if new.shape != (B, G) or not np.all(np.isfinite(new)):
                raise ValueError(f"strategy {self.engine.strategy.name!r}.transform_advantages returned shape "
                                 f"{new.shape} (expected {(B, G)}) or non-finite values")
            return new.reshape(-1).tolist()

        flat = on_main_then_broadcast(acc, transform, "transform_advantages")
        arr = torch.tensor(flat, dtype=adv.dtype, device=adv.device)
        start = acc.process_index * B_l
        return arr[start : start + B_l]

    # ------------------------------------------------------------------ after the optimiser step
    def _rlavr_apply_update(self) -> None:
        """Strategy ``update`` with the labels of every pending round, in round order (main process). A failing
        update stays pending, with the rounds after it: it is written into a checkpoint saved meanwhile and
        retried before the next round decides (and on resume); a second failure stops training on every rank."""
        if not self.accelerator.is_main_process:
            self._rlavr_pending.clear()
            return
        while self._rlavr_pending:
            p = self._rlavr_pending[0]
            try:
                self.engine.update(p.result)
            except Exception as exc:  # noqa: BLE001 - raising here would leave the other ranks in a collective
                logger.error("rlavr: strategy update failed (round %d, step %d)", p.round, p.result.batch.step,
                             exc_info=True)
                self._rlavr_failure = _Failure(exc, f"strategy {self.engine.strategy.name!r}.update",
                                               traceback.format_exc())
                return
            self._rlavr_pending.pop(0)
        self._rlavr_failure = None  # everything applied (a retried failure included)

    # ------------------------------------------------------------------ a fresh run on an old default ledger
    def _rlavr_check_fresh_ledger(self) -> None:
        """Refuse to start a run that does not resume from a checkpoint on the DEFAULT ledger
        (``<output_dir>/rlavr_ledger.sqlite``) when that ledger already holds another run's labels or prompts: the
        new run would silently inherit that run's spend (its labels free, its budget used up). An explicit
        ``ledger_path`` shares a ledger on purpose (one global budget, per-run step accounting) and is accepted.
        Checked once, at the start of training (after a checkpoint was loaded) or of a manual :meth:`fit_pool`,
        on the main process; the error is raised on every process. Nothing is ever deleted.

        Raises:
            ValueError: naming the ledger's path, what it holds and the three ways out.
        """
        if self._rlavr_ledger_checked:
            return
        self._rlavr_ledger_checked = True
        if self._rlavr_resumed or self._rlavr_resume_requested or self.args.ledger_path:
            return

        def check() -> None:
            ledger = self.engine.ledger
            if ledger.path == ":memory:":
                return
            own = ledger.runs().get(ledger.run_id, {})
            labels = ledger.n_charged - int(own.get("charged", 0))
            prompts = ledger.prompts_seen - int(own.get("prompts_seen", 0))
            if labels <= 0 and prompts <= 0:
                return
            others = sorted(r for r in ledger.runs() if r != ledger.run_id)
            raise ValueError(
                f"ledger_path: the default ledger {ledger.path!r} (in output_dir {self.args.output_dir!r}) already "
                f"holds {labels} charged labels and {prompts} prompts seen of another run "
                f"({', '.join(others) or 'unknown'}) and this run does not resume from a checkpoint: it would "
                "silently inherit that run's labels and spend. Nothing was changed or deleted. Either resume that "
                "run (trainer.train(resume_from_checkpoint=True or a checkpoint path)), train into a new "
                f"output_dir, or share the ledger on purpose with RLAVRConfig(ledger_path={ledger.path!r}) (its "
                "labels are then free to this run and both runs share one budget).")

        on_main_then_broadcast(self.accelerator, check, "checking the label ledger")

    # ------------------------------------------------------------------ pool fitting (before training)
    def _rlavr_auto_fit_pool(self) -> None:
        """``fit_pool="auto"`` at train start: fit when the strategy has a pool stage, wants a fit (asked on the
        main process, which holds the strategy's state) and the run did not resume from a checkpoint. For a
        strategy without a pool stage nothing runs (no collective, no RNG draw)."""
        strat = self.engine.strategy
        if (self.rlavr_settings.fit_pool != "auto" or self._rlavr_resumed or self._rlavr_pool_fitted
                or not isinstance(strat, Strategy) or not strat.has_pool_stage()):
            return
        due = on_main_then_broadcast(self.accelerator, lambda: pool_fit_wanted(strat),
                                     "checking whether the strategy needs a pool fit")
        if due:
            self.fit_pool()

    def _rlavr_pool_rows(self, dataset: Any, max_prompts: int | None) -> list[dict[str, Any]]:
        """The pool's dataset rows, identical on every process: the whole dataset when it has at most
        ``max_prompts`` rows, else a sample drawn with a private generator seeded by ``args.seed`` (in dataset
        order); one row per prompt id."""
        if dataset is None:
            raise ValueError("fit_pool: no dataset; pass dataset=... or give the trainer a train_dataset")
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise ValueError(f"fit_pool: cannot sample a pool from a {type(dataset).__name__} (an IterableDataset "
                             "cannot be indexed); pass dataset=<a datasets.Dataset or a list of rows>")
        cap = max_prompts if max_prompts is not None else self.rlavr_settings.pool_size
        cap = DEFAULT_POOL_CAP if cap is None else cap
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise ValueError(f"fit_pool.max_prompts: expected an int >= 1, got {cap!r}")
        n = len(dataset)
        if n == 0:
            raise ValueError("fit_pool: the dataset is empty")
        strat = self.engine.strategy
        own = (strat.pool_indices(n) if max_prompts is None and self.rlavr_settings.pool_size is None
               and isinstance(strat, Strategy) else None)  # a pool sized by the strategy (e.g. offline PBC)
        idx = own if own is not None else range(n) if cap >= n else np.sort(
            np.random.default_rng(int(self.args.seed)).choice(n, cap, replace=False))
        rows: list[dict[str, Any]] = []
        seen: set[str] = set()
        col = self.rlavr_settings.id_column
        for i in idx:
            row = dict(dataset[int(i)])
            if "prompt" not in row:
                raise ValueError(f"fit_pool: dataset row {int(i)} has no 'prompt' column (columns: {sorted(row)})")
            pid = prompt_id(row, col)
            if pid not in seen:
                seen.add(pid)
                rows.append(row)
        return rows

    def _rlavr_pool_local(self, rows: list[dict[str, Any]], G: int  # noqa: N803
                          ) -> tuple[list[RowFeatures], torch.Tensor | None]:
        """This process' share of one pool chunk: ``G`` completions per row through TRL's own generation path
        (``_generate``: transformers, vLLM or ``rollout_func``, same sampling settings as training), then the
        features the strategy requires (log-probs / hidden states from vLLM or ONE no-grad forward)."""
        inputs = [row for row in rows for _ in range(G)]
        prompts = [x["prompt"] for x in inputs]
        out = self._generate(prompts)
        prompt_ids, completion_ids, completions, sampling_logps = out[0], out[1], out[3], out[4]
        rnd = _Round(prompt_ids=[list(map(int, p)) for p in prompt_ids],
                     completion_ids=[list(map(int, c)) for c in completion_ids], sampling_logps=sampling_logps)
        hidden, logps = self._rlavr_local_signals(rnd, list(completion_ids))
        feats = self._rlavr_local_rows(inputs, prompts, completions, list(completion_ids), logps)
        return feats, hidden

    def fit_pool(self, dataset: Any = None, max_prompts: int | None = None) -> dict[str, float]:
        """Fit the strategy's pool stage before training (PivotTrace probes, offline uncertainty consistency,
        positive-negative pairing): sample ``num_generations`` completions per pool prompt with the current
        policy and call ``strategy.fit_pool_with_engine(engine, pool)`` on the main process.

        Runs automatically at the start of :meth:`train` with ``RLAVRConfig.fit_pool="auto"``; call it yourself
        (on EVERY process: generation and the broadcast are collectives) with ``fit_pool="never"`` or to refit.

        * Prompts: ``dataset`` (default ``train_dataset``), at most ``max_prompts`` (default
          ``RLAVRConfig.pool_size``, else the strategy's own :meth:`~rlavr.strategies.base.Strategy.pool_indices`
          if it sizes its pool, else 256): the whole dataset if it is not larger, else a sample seeded by
          ``args.seed``; one group per prompt id.
        * Generation: TRL's own ``_generate`` (transformers, vLLM or ``rollout_func``, the training sampling
          settings), in chunks of TRL's per-device generation batch, each process generating whole groups; the
          features the strategy ``requires`` come from the same code as in training. It runs in a forked torch
          RNG (seeded from ``args.seed`` and the process index), so training's RNG stream is unchanged, and
          TRL's completion metrics / token counter are restored afterwards.
        * Labels: bought by the strategy's pool stage through the engine's ledger (:func:`~rlavr.strategies.pool.
          buy_pool_labels`): within the budget (the pool counts as one step of prompts seen), never twice (a
          refit or a resumed run reuses them for free).
        * Only the main process holds the fitted strategy (it alone decides, samples prompts and transforms
          advantages); the other processes get the returned metrics.

        Returns:
            the fit's metrics (``strategy.fit_pool_with_engine``'s values: e.g. ``pool_labels_bought``), also in
            :attr:`rlavr_pool_metrics` and logged with the first training log as ``rlavr/pool/<name>``;
            ``{}`` (nothing run) for a strategy without a pool stage.
        """
        if not self.rlavr_active:
            raise ValueError(f"fit_pool: acquisition is off in this trainer ({self.rlavr_activation.reason}); set "
                             "RLAVRConfig.label_column to the ground-truth column or pass oracle=")
        strat = self.engine.strategy
        if not isinstance(strat, Strategy) or not strat.has_pool_stage():
            return {}
        self._rlavr_check_fresh_ledger()
        if self._rlavr_round is not None:
            raise RuntimeError("fit_pool: cannot run inside a generation round")
        if self.environment_factories is not None:
            raise ValueError("fit_pool: environment_factory datasets are not supported; fit the strategy yourself "
                             "with strategy.fit_pool_with_engine(trainer.engine, pool_batch)")
        acc = self.accelerator
        G = self._group_size()
        rows = self._rlavr_pool_rows(self.train_dataset if dataset is None else dataset, max_prompts)
        per_rank = max(1, int(self.args.per_device_train_batch_size) * int(self.args.steps_per_generation or 1) // G)
        n_proc, rank = int(acc.num_processes), int(acc.process_index)
        per_round = per_rank * n_proc
        model = self._policy()
        was_training = model.training
        metrics_backup = copy.deepcopy(self._metrics)
        tokens_seen = self.state.num_input_tokens_seen
        payloads: list[dict[str, Any]] = []
        hidden_parts: list[np.ndarray] = []
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        t0 = time.perf_counter()
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                torch.manual_seed(int(self.args.seed) + 7919 * (rank + 1))
                model.train()  # TRL generates in train mode: num_generations, same sampling settings
                for r in range(math.ceil(len(rows) / per_round)):
                    start = r * per_round + rank * per_rank
                    n_real = max(0, min(per_rank, len(rows) - start))
                    # every process generates the same number of groups (collectives inside): pad with the last row
                    mine = [rows[min(start + k, len(rows) - 1)] for k in range(per_rank)]
                    error: str | None = None
                    feats: list[RowFeatures] = []
                    hidden: torch.Tensor | None = None
                    try:
                        feats, hidden = self._rlavr_pool_local(mine, G)
                    except Exception as exc:  # noqa: BLE001 - reported on every rank below
                        error = f"rank {rank}: {type(exc).__name__}: {exc}"
                        logger.error("rlavr: pool generation failed on %s", error, exc_info=True)
                    got = gather_object([{"rows": feats[: n_real * G], "error": error}])
                    if self._rlavr_needs_hidden:
                        if hidden is None or hidden.shape[0] != per_rank * G:
                            config: Any = getattr(model, "config", None)
                            hidden = torch.zeros((per_rank * G, 2, int(config.get_text_config().hidden_size)))
                        full = acc.gather(hidden.to(acc.device).float().contiguous()).cpu().numpy()
                        for k, p in enumerate(got):
                            hidden_parts.append(full[k * per_rank * G : k * per_rank * G + len(p["rows"])])
                    errors = [p["error"] for p in got if p["error"]]
                    if errors:
                        raise RuntimeError("rlavr: pool generation failed on " + "; ".join(errors))
                    payloads += got
        finally:
            model.train(was_training)
            self._metrics = metrics_backup
            self.state.num_input_tokens_seen = tokens_seen
        all_rows = [row for p in payloads for row in p["rows"]]
        hidden_all = np.concatenate(hidden_parts) if hidden_parts else None
        gen_seconds = time.perf_counter() - t0

        def fit() -> dict[str, Any]:
            pool = build_rollout_batch(all_rows, G, self.engine.answer_space, int(self.state.global_step), hidden_all)
            out = strat.fit_pool_with_engine(self.engine, pool)
            return {"metrics": {k: float(v) for k, v in out.items()}, "spent": int(self.engine.spent),
                    "cap": self.engine.budget.global_cap(self.engine.ledger.prompts_seen), "B": pool.B}

        res = on_main_then_broadcast(acc, fit, f"strategy {strat.name!r}.fit_pool_with_engine")
        metrics = {**res["metrics"], "pool_prompts": float(res["B"]), "pool_generation_seconds": gen_seconds}
        self._rlavr_spent = int(res["spent"])
        self._rlavr_cap = res["cap"]
        self._rlavr_pool_fitted = True
        self.rlavr_pool_metrics = metrics
        self._rlavr_pool_logs = {log_key(f"pool/{k}"): v for k, v in metrics.items()}
        logger.info("rlavr: fitted %r on a pool of %d prompts x %d completions: %s", strat.name, res["B"], G,
                    {k: round(v, 4) for k, v in metrics.items()})
        return metrics

    # ------------------------------------------------------------------ logging
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._rlavr_pool_logs and self._train_mode():
            logs.update(self._rlavr_pool_logs)  # the pool fit's metrics, once, with the first training log
            self._rlavr_pool_logs = {}
        if self._train_mode() and self.rlavr_history:
            logs[log_key("budget_spent")] = float(self._rlavr_spent)  # a level, not an average over the window
            if self._rlavr_cap is not None:  # from the broadcast decision: no main-only ledger read here
                logs[log_key("budget_cap")] = float(self._rlavr_cap)
            if "train_runtime" in logs:  # Trainer's last log (end of training): the run's totals
                logs.update({log_key(f"summary/{k}"): v for k, v in self.rlavr_summary().items()})
        super().log(logs, start_time)

    def rlavr_summary(self) -> dict[str, float]:
        """Totals of the run so far, from :attr:`rlavr_history` (identical on every process).

        ``labels_bought`` (the spend, pool fit included), ``rounds``, ``groups`` (prompt groups routed),
        ``route_query`` / ``route_pseudo`` / ``route_drop`` (groups per route), ``labelled_share`` (share of the
        groups trained on a true label: ``route_query / groups``) and, when the oracle knows ground truth for
        some pseudo-labelled groups, ``pseudo_label_accuracy`` (the rounds' accuracies weighted by their
        pseudo-labelled groups). Logged as ``rlavr/summary/<name>`` with Trainer's last log.
        """
        h = self.rlavr_history
        routes = {r: float(sum(x.get(f"route/{r}", 0.0) for x in h)) for r in ("query", "pseudo", "drop")}
        groups = sum(routes.values())
        out = {"labels_bought": float(self._rlavr_spent), "rounds": float(len(h)), "groups": groups,
               **{f"route_{r}": v for r, v in routes.items()},
               "labelled_share": routes["query"] / groups if groups else 0.0}
        known = [(x["pseudo_label_accuracy"], x.get("route/pseudo", 0.0)) for x in h if "pseudo_label_accuracy" in x]
        weight = sum(w for _, w in known)
        if weight > 0:
            out["pseudo_label_accuracy"] = sum(a * w for a, w in known) / weight
        return out

    def rlavr_summary_line(self) -> str:
        """One line for the end of training: labels bought, share labelled, routes, pseudo-label accuracy, ledger."""
        s = self.rlavr_summary()
        acc = s.get("pseudo_label_accuracy")
        return (f"strategy {self.engine.strategy.name!r}, budget {self.rlavr_settings.budget.describe()}: "
                f"{int(s['labels_bought'])} labels bought; {s['labelled_share']:.1%} of {int(s['groups'])} prompt "
                f"groups trained on a true label over {int(s['rounds'])} rounds; routes query/pseudo/drop = "
                f"{int(s['route_query'])}/{int(s['route_pseudo'])}/{int(s['route_drop'])}; pseudo-label accuracy "
                + (f"{acc:.1%}" if acc is not None else "unknown (no reference labels)")
                + f"; ledger {self.args.resolved_ledger_path()}")

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None,  # type: ignore[override]
                          tags: str | list[str] | None = None) -> None:
        """TRL's model card, tagged ``rlavr`` and ``rlavr-<strategy>``, with a line naming the strategy and budget."""
        if not self.rlavr_active:
            return super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        name = self.engine.strategy.name
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        super().create_model_card(model_name=model_name, dataset_name=dataset_name,
                                  tags=[*tags, "rlavr", f"rlavr-{name}"])
        if not self.is_world_process_zero():
            return
        path = os.path.join(str(self.args.output_dir), "README.md")
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"\n## Label acquisition (rlavr)\n\nTrained with rlavr's `RLAVRGRPOTrainer`: strategy "
                    f"`{name}`, label budget {self.rlavr_settings.budget.describe()} "
                    f"(`budget={self.args.budget!r}`); {int(self._rlavr_spent)} labels bought so far.\n")

    # ------------------------------------------------------------------ checkpoints
    def rlavr_state_dict(self) -> dict[str, Any]:
        """Everything needed to resume acquisition exactly: strategy (incl. its RNG), ledger position, budget,
        spend and the per-round history. Plain tensors/containers (``torch.load(weights_only=True)`` safe)."""
        return {
            "version": 1,
            "engine": self.engine.state_dict(),
            "spent": int(self._rlavr_spent),
            "global_step": int(self.state.global_step),
            "rounds": int(self._rlavr_rounds),
            # updates not applied yet (only after a failed update): retried on resume, never lost
            "pending_updates": [_pending_to_state(p) for p in self._rlavr_pending]
            if self.accelerator.is_main_process else [],
            "history": [{k: (float(v) if isinstance(v, float | int | np.floating | np.integer) else v)
                         for k, v in h.items()} for h in self.rlavr_history],
            "strategy_name": self.engine.strategy.name,
        }

    def load_rlavr_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`rlavr_state_dict`. On the main process: strategy, ledger position (see
        :meth:`~rlavr.engine.AcquisitionEngine.load_state_dict`) and pending updates; other processes only take the
        counters and history (they never decide, so they need no strategy state)."""
        if int(state.get("version", 0)) != 1:
            raise ValueError(f"rlavr_state: unsupported version {state.get('version')!r}")
        name = state.get("strategy_name")
        if name is not None and name != self.engine.strategy.name:
            raise ValueError(f"rlavr_state: checkpoint was written by strategy {name!r}, this run uses "
                             f"{self.engine.strategy.name!r}")
        if self.accelerator.is_main_process:
            self.engine.load_state_dict(state["engine"])
            self._rlavr_pending = [_pending_from_state(d, self.engine.answer_space)
                                   for d in state.get("pending_updates", [])]
            self._rlavr_failure = None
            if self._rlavr_pending:  # a checkpoint written after a failed update: retry it now
                logger.warning("rlavr: the checkpoint holds %d strategy updates that had not been applied (a failed "
                               "update); applying them before training resumes", len(self._rlavr_pending))
                self._rlavr_apply_update()
                if self._rlavr_failure is not None:
                    fail, self._rlavr_failure = self._rlavr_failure, None
                    raise RuntimeError(f"rlavr: {fail.where} failed again on resume: {fail.exc!r}") from fail.exc
        self._rlavr_set_counters(state)

    def _rlavr_set_counters(self, state: Mapping[str, Any]) -> None:
        self._rlavr_spent = int(state.get("spent", 0))
        self.rlavr_history = [dict(h) for h in state.get("history", [])]
        self._rlavr_rounds = int(state.get("rounds", len(self.rlavr_history)))  # one history entry per round

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if not self.rlavr_active:
            return

        def save() -> None:  # only the main process holds the ledger and the trained strategy
            if not self.args.should_save:
                return
            folder = os.path.join(self._get_output_dir(trial=trial),
                                  f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            os.makedirs(folder, exist_ok=True)
            state = self.rlavr_state_dict()
            torch.save(state, os.path.join(folder, STATE_FILE))
            summary = {"global_step": state["global_step"], "spent": state["spent"],
                       "strategy": state["strategy_name"], "ledger": state["engine"]["ledger"],
                       "budget": state["engine"]["budget"], "pending_updates": len(state["pending_updates"])}
            with open(os.path.join(folder, STATE_SUMMARY), "w", encoding="utf-8") as f:
                json.dump(summary, f, indent=2, default=str)

        # a failure here (disk, strategy.state_dict) is raised on every process, never left to hang the others
        on_main_then_broadcast(self.accelerator, save, "writing the rlavr checkpoint state")

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None or not self.rlavr_active:
            return
        self._rlavr_resume_requested = True
        path = os.path.join(checkpoint, STATE_FILE)

        def load() -> dict[str, Any] | None:
            # main process only: the strategy state may be large; the others get the counters and history
            if not os.path.exists(path):
                logger.warning("rlavr: %s has no %s; the strategy restarts from scratch (the ledger still prevents "
                               "re-buying labels)", checkpoint, STATE_FILE)
                return None
            state = torch.load(path, map_location="cpu", weights_only=True)
            self.load_rlavr_state_dict(state)
            return {"spent": state.get("spent", 0), "history": state.get("history", []),
                    "rounds": self._rlavr_rounds}

        # a foreign ledger, a strategy mismatch or a failing retried update raises on every process
        counters = on_main_then_broadcast(self.accelerator, load, "loading the rlavr checkpoint state")
        if counters is None:
            return
        if not self.accelerator.is_main_process:
            self._rlavr_set_counters(counters)
        self._rlavr_resumed = True

