r"""``RLAVRGRPOTrainer``: TRL's ``GRPOTrainer`` with label-budgeted active acquisition.

A thin adapter: everything framework-neutral (deciding, weighting, updates, history, rollout log, checkpoint state)
is :class:`rlavr.loop.AcquisitionLoop`; this file holds TRL's overrides and the collectives. One generation round
(``_generate_and_score_completions``), on every process::

    generate (TRL: transformers or vLLM)                        -> local rows, a group may span two processes
    [TRL's no-grad policy forward, if it runs: hook the trunk]  -> last-token hidden states for free
    _calculate_rewards (overridden):
        local rows (rlavr.trl.rows), gather (rlavr.trl.distributed) -> global rows in TRL's rank-major order
        main process: loop.decide -> broadcast the Decision       -> every process applies the same routes
        label column <- trl_round.label_column_rows (bought truth / majority vote); super() -> rewards (B*G, F)
        rewards[dropped rows] = NaN                               -> TRL's "unscorable" path: advantage 0
    TRL: advantages A = (r - mean_g r) / (std_g r + 1e-4)  (or its configured variant), local slice
    post-processing: loop.transform (weights, then the strategy's hook on the main process, global);
        drop_mode="mask": tool_mask_i <- tool_mask_i * 1[g(i) kept], num_items_in_batch recomputed (global)
    optimiser step -> loop.apply_updates (CARE's online classifier) in on_step_end, before any checkpoint save

Every process enters every collective in the same order every round; errors on the main process are raised on all
processes after the broadcast, so a failing oracle never leaves the other ranks hanging in a collective. TRL's
private API is reached only through :mod:`rlavr.trl._compat`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import Sampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from rlavr.answers import AnswerSpace, get_answer_space
from rlavr.engine import AcquisitionEngine
from rlavr.labels import Oracle
from rlavr.loop import Decision, pool_fit_wanted
from rlavr.rollouts import RowFeatures, build_rollout_batch
from rlavr.strategies.base import Strategy, capabilities_of
from rlavr.trl import _compat, pool, report
from rlavr.trl import checkpoint as ckpt
from rlavr.trl import round as trl_round
from rlavr.trl.activation import Activation, default_config, is_trl_dataset
from rlavr.trl.callback import RLAVRCallback
from rlavr.trl.config import VLLM_HINT, RLAVRConfig, check_vllm_available
from rlavr.trl.consistency import RewardAgreementCheck
from rlavr.trl.distributed import gather_rows, on_main_then_broadcast
from rlavr.trl.guards import AnswerRateGuard, check_episode_groups
from rlavr.trl.report import log_key
from rlavr.trl.round import Round, local_rows, local_signals
from rlavr.trl.sampler import StrategySampler
from rlavr.trl.setup import announce, build_loop, build_strategy, check_drop_mode, dataset_oracle
from trl import GRPOTrainer

logger = logging.getLogger(__name__)

__all__ = ["VLLM_HINT", "RLAVRGRPOTrainer", "StrategySampler", "build_rollout_batch", "check_vllm_available",
           "pool_fit_wanted"]


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
        rlavr_loop: the :class:`~rlavr.loop.AcquisitionLoop` (history, pending updates, checkpoint state).
        engine: its :class:`~rlavr.engine.AcquisitionEngine`. Decisions are made on the main process, whose
            engine holds the ledger file; other processes hold an engine with an in-memory ledger that is never
            used to buy.
        rlavr_history: one dict per generation round (on every process): step, route counts, labels bought,
            label/reward accuracy, budget spent, strategy metrics, feature timings.
    """

    args: RLAVRConfig

    def __init__(self, model: Any, reward_funcs: Any = None, args: RLAVRConfig | None = None,
                 train_dataset: Any = None, eval_dataset: Any = None, processing_class: Any = None, *,
                 oracle: Oracle | None = None, strategy: Strategy | None = None,
                 answer_space: AnswerSpace | None = None, **kwargs: Any) -> None:
        _compat.check_trl()
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
        strat = build_strategy(strategy, settings, int(args.seed))
        space = get_answer_space(answer_space if answer_space is not None else settings.answer_space)
        if oracle is not None and not callable(getattr(oracle, "label", None)):
            raise ValueError(f"oracle: expected an object with label(prompt_ids, prompts), got {type(oracle).__name__}")

        def dataset_checks() -> tuple[Activation, Oracle]:
            return dataset_oracle(train_dataset, settings, str(strat.name), oracle, args_given, space)

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
        announce(activation)
        self.rlavr_settings = settings
        # rollout_log_features: compute both signals for the log even when the strategy does not need them
        caps = capabilities_of(strat)
        self._rlavr_needs_hidden = caps.needs_hidden_states or settings.rollout_log_features
        self._rlavr_needs_logps = caps.needs_logprobs or settings.rollout_log_features
        self.rlavr_loop = build_loop(args, strat, source, space, is_main=self.accelerator.is_main_process,
                                     active=self.rlavr_active, rank=self.accelerator.process_index)
        self.rlavr_feature_stats: dict[str, float] = {"rounds": 0, "hook_rounds": 0, "generate_rounds": 0,
                                                     "extra_forward_rounds": 0,
                                                     "extra_forward_seconds": 0.0, "decide_seconds": 0.0}
        self._rlavr_round: Round | None = None
        self._rlavr_resume_requested = False  # train(resume_from_checkpoint=...) named a checkpoint
        self._rlavr_ledger_checked = False  # checkpoint.check_fresh_ledger_once ran
        self._rlavr_pool_logs: dict[str, float] = {}  # logged with the first training log
        self._rlavr_warned: set[str] = set()
        self._rlavr_answer_guard = AnswerRateGuard(getattr(space, "name", type(space).__name__),
                                                   settings.invalid_answer_threshold,
                                                   settings.invalid_answer_rounds, settings.on_invalid_answers)
        self._rlavr_episode_prompts: dict[str, str] = {}  # environment runs: id -> prompt seen (main process)
        self._rlavr_reward_check = RewardAgreementCheck(space, list(self.reward_func_names))  # main process
        if not self.rlavr_active:
            return
        check_drop_mode(settings.drop_mode, self.loss_type)
        self.add_callback(RLAVRCallback(self))

    # ------------------------------------------------------------------ small properties
    @property
    def engine(self) -> AcquisitionEngine:
        return self.rlavr_loop.engine

    @property
    def strategy(self) -> Strategy:
        return self.rlavr_loop.engine.strategy  # type: ignore[no-any-return]

    @property
    def budget_spent(self) -> int:
        """Labels charged so far (the main process' ledger count, broadcast to every process each round)."""
        return int(self.rlavr_loop.spent)

    @property
    def rlavr_history(self) -> list[dict[str, Any]]:
        return self.rlavr_loop.history

    @property
    def rlavr_pool_metrics(self) -> dict[str, float]:
        """What the last :meth:`fit_pool` returned (every process)."""
        return self.rlavr_loop.pool_metrics

    def _policy(self) -> nn.Module:
        if self.model is None:  # pragma: no cover - GRPOTrainer always sets it
            raise RuntimeError("rlavr: the trainer has no model")
        return self.model

    def _group_size(self) -> int:
        G = self.num_generations
        if not isinstance(G, int) or G < 1:  # pragma: no cover - GRPOConfig validates it
            raise ValueError(f"num_generations: expected an int >= 1, got {G!r}")
        return G

    def _hidden_size(self) -> int:
        return int(cast(Any, self._policy()).config.get_text_config().hidden_size)

    def _train_mode(self) -> bool:
        return bool(self._policy().training)

    def _warn_once(self, key: str, msg: str, *a: Any) -> None:
        if key not in self._rlavr_warned:
            self._rlavr_warned.add(key)
            logger.warning(msg, *a)

    # ------------------------------------------------------------------ TRL overrides: prompts, stashes
    def _get_train_sampler(self, dataset: Any = None) -> Sampler[int]:
        base = super()._get_train_sampler(dataset)
        loop = getattr(self, "rlavr_loop", None)  # GRPOTrainer.__init__ may build the sampler before the loop
        if loop is None or not self.rlavr_active or not loop.capabilities.samples_prompts:
            return base  # TRL's own RepeatSampler: GT-equivalence untouched
        G = self._group_size()
        return StrategySampler(loop, self.accelerator, base, dataset if dataset is not None else self.train_dataset,
                               n_prompts=int(self.args.generation_batch_size or G) // G, G=G,
                               repeat=int(self.num_iterations) * int(self.args.steps_per_generation or 1))

    def _generate(self, prompts: list, *args: Any, **kwargs: Any) -> Any:
        cap = trl_round.generate_capture(self, self._rlavr_round)
        with cap if cap is not None else contextlib.nullcontext():
            out = super()._generate(prompts, *args, **kwargs)
        trl_round.after_generate(self, self._rlavr_round, out, cap)
        return out

    def _get_per_token_logps_and_entropies(self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                                           logits_to_keep: int, *args: Any, **kwargs: Any) -> Any:
        hooked, capture = trl_round.old_logps_capture(self, self._rlavr_round, model, input_ids, logits_to_keep)
        with capture if capture is not None else contextlib.nullcontext():
            res = super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                             *args, **kwargs)
        if hooked:
            trl_round.after_old_logps(self, cast(trl_round.Round, self._rlavr_round), capture, res[0])
        return res

    # ------------------------------------------------------------------ the round
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        if not self._train_mode() or not self.rlavr_active:
            return super()._generate_and_score_completions(inputs)
        needs_forward = self._rlavr_needs_hidden or self._rlavr_needs_logps
        self._rlavr_round = Round(armed=needs_forward and _compat.runs_policy_nograd_forward(self),
                                  n_local=len(inputs))
        try:
            out = super()._generate_and_score_completions(inputs)
            if self._rlavr_round.decision is None:  # pragma: no cover - _calculate_rewards always runs in train mode
                raise RuntimeError("rlavr: TRL did not call _calculate_rewards during the generation round")
            self._rlavr_postprocess(out, self._rlavr_round.decision, len(inputs))
        finally:
            self._rlavr_round = None
        return out

    def _calculate_rewards(self, inputs: list[dict[str, Any]], prompts: list, completions: list,
                           completion_ids_list: list) -> torch.Tensor:
        rnd = self._rlavr_round
        if rnd is None or not self._train_mode():  # evaluation: plain TRL, no budget spent
            return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        acc, loop = self.accelerator, self.rlavr_loop
        G, B_l, step = self._group_size(), len(prompts), int(self.state.global_step)
        position = loop.rounds  # several rounds may share one global_step: the ledger keys on the round
        # 1. local rows (errors are carried through the gather, never raised before a collective)
        error: str | None = None
        rows: list[RowFeatures] = []
        hidden: torch.Tensor | None = None
        try:
            hidden, logps = local_signals(self, rnd, completion_ids_list)
            rows = local_rows(self, inputs, prompts, completions, completion_ids_list, logps)
        except Exception as exc:  # reported on every rank below
            error = f"rank {acc.process_index}: {type(exc).__name__}: {exc}"
            logger.error("rlavr: feature extraction failed on %s", error, exc_info=True)
        # 2. gather whole groups (global, rank-major = TRL's order)
        got = gather_rows(acc, rows, error, hidden=hidden, hidden_rows=B_l,
                          hidden_size=self._hidden_size if self._rlavr_needs_hidden else None)
        if not got.errors:  # the same rows on every rank: every rank raises at the same round
            self._rlavr_answer_guard.observe(got.rows, position, log=acc.is_main_process)

        # 3. decide on the main process, broadcast (a failure there is raised on every process)
        def decide() -> Decision:
            t0 = time.perf_counter()
            try:
                got.raise_errors("rollout feature extraction")
                if self.environment_factories is not None:
                    check_episode_groups(got.rows, G, self._rlavr_episode_prompts)
                return self._rlavr_decide(got.rows, G, step, got.hidden, position)
            finally:
                self.rlavr_feature_stats["decide_seconds"] += time.perf_counter() - t0

        decision = rnd.decision = on_main_then_broadcast(acc, decide, "the acquisition decision")
        # 4. rewrite the label column per row (keep the row's own value when equal: GT runs match stock TRL), rewards
        start = acc.process_index * B_l
        labelled = trl_round.label_column_rows(decision, self.engine.answer_space, inputs,
                                               self.rlavr_settings.label_column, start)
        rewards = super()._calculate_rewards(labelled, prompts, completions, completion_ids_list)
        drop = np.repeat(decision.dropped, G)
        if drop.any():  # TRL's "unscorable" rows: advantage 0
            rewards[torch.as_tensor(drop, device=rewards.device)] = torch.nan
        # 5. metrics, history, completion logs (identical on every rank: they come from the broadcast)
        report.log_round(self, rnd, decision, rows, rewards, start, B_l)
        return rewards

    def _rlavr_decide(self, rows: list[RowFeatures], G: int, step: int, hidden: np.ndarray | None,
                      position: int) -> Decision:
        """Main process: :meth:`AcquisitionLoop.decide <rlavr.loop.AcquisitionLoop.decide>` (a method of its own
        so that benchmarks can time it)."""
        return self.rlavr_loop.decide(rows, G, step, hidden, round=position)

    def _rlavr_postprocess(self, out: dict[str, Any], decision: Decision, B_l: int) -> None:
        """Weights and the strategy's advantage transform (:meth:`AcquisitionLoop.transform
        <rlavr.loop.AcquisitionLoop.transform>`), and the loss mask, on the local slice."""
        acc, loop = self.accelerator, self.rlavr_loop
        start = acc.process_index * B_l
        adv: torch.Tensor = out["advantages"]
        if loop.capabilities.transforms_advantages:  # the hook sees the whole round, on the main process
            if adv.dim() != 1:
                raise ValueError(f"rlavr: transform_advantages needs per-sequence advantages, got shape "
                                 f"{tuple(adv.shape)}")
            full = acc.gather(adv.detach().contiguous()).cpu()
            flat = on_main_then_broadcast(acc, lambda: loop.transform(full, decision).tolist(), "transform_advantages")
            adv = torch.tensor(flat, dtype=adv.dtype, device=adv.device)[start : start + B_l]
        else:
            adv = loop.transform(adv, decision, start)
        out["advantages"] = adv
        if self.rlavr_settings.drop_mode == "mask" and bool(decision.dropped.any()):
            trl_round.mask_dropped(out, decision.dropped[decision.group_of(start, B_l)], acc)

    # ------------------------------------------------------------------ before training
    def fit_pool(self, dataset: Any = None, max_prompts: int | None = None) -> dict[str, float]:
        """Fit the strategy's pool stage before training (PivotTrace probes, offline uncertainty consistency,
        positive-negative pairing) on ``num_generations`` completions per pool prompt sampled with the current
        policy (:func:`rlavr.trl.pool.fit_pool`: TRL's own ``_generate`` in a forked RNG, the pool's labels bought
        within the budget, never twice). Runs at the start of :meth:`train` with ``RLAVRConfig.fit_pool="auto"``;
        call it yourself on EVERY process (collectives inside) with ``fit_pool="never"`` or to refit.

        Args:
            dataset: the prompts (default ``train_dataset``).
            max_prompts: at most this many (default ``RLAVRConfig.pool_size``, else the strategy's own
                ``pool_indices``, else 256), sampled with ``args.seed``; one group per prompt id.

        Returns:
            the fit's metrics (e.g. ``pool_labels_bought``), also in :attr:`rlavr_pool_metrics` and logged with the
            first training log as ``rlavr/pool/<name>``; ``{}`` (nothing run) for a strategy without a pool stage.
        """
        if not self.rlavr_active:
            raise ValueError(f"fit_pool: acquisition is off in this trainer ({self.rlavr_activation.reason}); set "
                             "RLAVRConfig.label_column to the ground-truth column or pass oracle=")
        if not self.rlavr_loop.capabilities.pool_stage:
            return {}
        ckpt.check_fresh_ledger_once(self)
        metrics = pool.fit_pool(self, dataset, max_prompts)
        self._rlavr_pool_logs = {log_key(f"pool/{k}"): v for k, v in metrics.items()}
        return metrics

    # ------------------------------------------------------------------ logging
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._train_mode():
            logs.update(self._rlavr_pool_logs)  # the pool fit's metrics, once, with the first training log
            self._rlavr_pool_logs = {}
            report.add_logs(self.rlavr_loop, logs)
        super().log(logs, start_time)

    def rlavr_summary(self) -> dict[str, float]:
        """Totals of the run so far (:meth:`AcquisitionLoop.summary <rlavr.loop.AcquisitionLoop.summary>`),
        logged as ``rlavr/summary/<name>`` with Trainer's last log."""
        return self.rlavr_loop.summary()

    def rlavr_summary_line(self) -> str:
        """One line for the end of training (:func:`rlavr.trl.report.summary_line`)."""
        return report.summary_line(self)

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None,  # type: ignore[override]
                          tags: str | list[str] | None = None) -> None:
        """TRL's model card, tagged ``rlavr`` and ``rlavr-<strategy>``, with a note naming the strategy and budget."""
        if not self.rlavr_active:
            return super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        super().create_model_card(model_name=model_name, dataset_name=dataset_name,
                                  tags=[*tags, "rlavr", f"rlavr-{self.engine.strategy.name}"])
        if self.is_world_process_zero():
            report.model_card_note(self)

    # ------------------------------------------------------------------ checkpoints
    def rlavr_state_dict(self) -> dict[str, Any]:
        """Everything needed to resume acquisition exactly (:func:`rlavr.trl.checkpoint.state_dict`)."""
        return ckpt.state_dict(self)

    def load_rlavr_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`rlavr_state_dict` (the main process restores the strategy and ledger position too)."""
        self.rlavr_loop.load_state_dict(state, main=bool(self.accelerator.is_main_process))

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if self.rlavr_active:
            ckpt.save_state(self, os.path.join(self._get_output_dir(trial=trial),
                                                     f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None and self.rlavr_active:
            self._rlavr_resume_requested = True
            ckpt.load_state(self, checkpoint)
