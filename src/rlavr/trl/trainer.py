r"""``RLAVRGRPOTrainer``: TRL's ``GRPOTrainer`` with label-budgeted active acquisition.

A thin adapter: everything framework-neutral (deciding, weighting, updates, history, rollout log, checkpoint state)
is :class:`rlavr.loop.AcquisitionLoop`; this file holds TRL's overrides and the collectives. One generation round
(``_generate_and_score_completions``), on every process::

    generate (TRL: transformers or vLLM)                        -> local rows, a group may span two processes
    [TRL's no-grad policy forward, if it runs: hook the trunk]  -> last-token hidden states for free
    _calculate_rewards (overridden):
        local rows (rlavr.trl.rows), gather (rlavr.trl.distributed) -> global rows in TRL's rank-major order
        main process: loop.decide -> broadcast the Decision       -> every process applies the same routes
        label column <- decision.row_labels (bought truth / majority vote); super() -> rewards (B*G, F)
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
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from rlavr.answers import AnswerSpace, get_answer_space
from rlavr.engine import AcquisitionEngine
from rlavr.labels import Oracle
from rlavr.loop import Decision, pool_fit_wanted
from rlavr.rollouts import RowFeatures, build_rollout_batch
from rlavr.strategies.base import Strategy, capabilities_of
from rlavr.trl import _compat, pool, report
from rlavr.trl import checkpoint as ckpt
from rlavr.trl.activation import Activation, default_config, is_trl_dataset
from rlavr.trl.capture import LastTokenCapture, generate_capture_for, trunk_of
from rlavr.trl.config import VLLM_HINT, RLAVRConfig, check_vllm_available
from rlavr.trl.consistency import RewardAgreementCheck
from rlavr.trl.distributed import gather_rows, on_main_then_broadcast
from rlavr.trl.guards import AnswerRateGuard, check_episode_groups
from rlavr.trl.report import log_key
from rlavr.trl.rows import Round, finish_generate_capture, local_rows, local_signals
from rlavr.trl.sampler import StrategySampler
from rlavr.trl.setup import build_loop, build_strategy, dataset_oracle
from rlavr.types import Route
from trl import GRPOTrainer

logger = logging.getLogger(__name__)

__all__ = ["VLLM_HINT", "RLAVRGRPOTrainer", "StrategySampler", "build_rollout_batch", "check_vllm_available",
           "pool_fit_wanted"]

class _RLAVRCallback(TrainerCallback):
    """Runs the strategy's online ``update`` after the optimiser step (before a checkpoint of that step)."""

    def __init__(self, trainer: RLAVRGRPOTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer._rlavr_check_fresh_ledger()  # after a checkpoint was loaded, before the first round
        self.trainer._rlavr_auto_fit_pool()

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
        if activation.mode == "inactive":
            logger.warning("rlavr: acquisition is OFF, training exactly like trl.GRPOTrainer (no oracle, no ledger, "
                           "no label rewriting): %s. To acquire labels, set RLAVRConfig.label_column to the column "
                           "holding the ground truth or pass oracle=.", activation.reason)
        elif activation.mode == "label_free":
            logger.warning("rlavr: label-free run: %s.", activation.reason)
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
        self._rlavr_ledger_checked = False  # _rlavr_check_fresh_ledger ran (once per trainer)
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
        self.add_callback(_RLAVRCallback(self))

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
        rnd = self._rlavr_round
        cap, why = (None, "") if rnd is None else generate_capture_for(
            self, armed=rnd.armed, need_hidden=self._rlavr_needs_hidden, need_logps=self._rlavr_needs_logps)
        if rnd is not None and cap is None and why not in ("not needed", "vLLM generation"):
            self._warn_once("gen-capture", "rlavr: features not read during generation (%s); one extra forward "
                            "per round computes them", why)
        with cap if cap is not None else contextlib.nullcontext():
            out = super()._generate(prompts, *args, **kwargs)
        if rnd is not None:
            got = _compat.generate_output(out)
            rnd.prompt_ids = [list(map(int, p)) for p in got.prompt_ids]
            rnd.completion_ids = [list(map(int, c)) for c in got.completion_ids]
            rnd.sampling_logps = got.logprobs
            if cap is not None:
                finish_generate_capture(self, rnd, cap)
        return out

    def _get_per_token_logps_and_entropies(self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                                           logits_to_keep: int, *args: Any, **kwargs: Any) -> Any:
        rnd = self._rlavr_round
        capture = None
        if (rnd is not None and rnd.armed and model is self.model and not torch.is_grad_enabled()
                and rnd.completion_ids is not None):
            rnd.armed = False  # the first no-grad policy call of the round is TRL's old-logps forward
            if self._rlavr_needs_hidden:
                P = int(input_ids.shape[1]) - int(logits_to_keep)
                capture = LastTokenCapture(trunk_of(self._policy()), P, [len(c) for c in rnd.completion_ids])
        else:
            rnd = None
        with capture if capture is not None else contextlib.nullcontext():
            res = super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                             *args, **kwargs)
        if rnd is not None:
            if capture is not None:
                try:
                    rnd.hidden, rnd.hidden_source = capture.result(), "hook"
                except RuntimeError as exc:  # e.g. a custom forward that bypasses the trunk: fall back
                    self._warn_once("hook", "rlavr: hidden-state hook failed (%s); using one extra forward instead",
                                    exc)
            rnd.old_logps = res[0]
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
        acc, loop, col = self.accelerator, self.rlavr_loop, self.rlavr_settings.label_column
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
        # 4. rewrite the label column per row (keep the row's own object when equal: GT runs match stock TRL)
        start = acc.process_index * B_l
        written = decision.row_labels(start, B_l)
        new_inputs = [dict(x) if lab is None or (col in x and x[col] is not None and str(x[col]) == lab)
                      else {**x, col: lab} for x, lab in zip(inputs, written, strict=True)]
        rewards = super()._calculate_rewards(new_inputs, prompts, completions, completion_ids_list)
        group_of = decision.group_of(start, B_l)
        if acc.is_main_process and rows and not self._rlavr_reward_check.done:
            try:  # does answer_space judge like the reward functions? (warns; never changes the rewards)
                self._rlavr_reward_check.observe(
                    [r.text for r in rows], [r.answer for r in rows],
                    [lab if decision.routes[g] == Route.QUERY else None for lab, g in zip(written, group_of, strict=True)],
                    rewards.detach().float().cpu().numpy())
            except Exception as exc:  # a diagnostic must never stop training
                logger.debug("rlavr: reward agreement check failed: %r", exc)
        drop = np.repeat(decision.dropped, G)
        if drop.any():
            rewards[torch.as_tensor(drop, device=rewards.device)] = torch.nan
        _compat.log_completion_extra(self, "rlavr_route", decision.route_names(start, B_l))
        _compat.log_completion_extra(self, "rlavr_weight", [float(decision.weights[g]) for g in group_of])
        _compat.log_completion_extra(self, "rlavr_label", [decision.labels[g] for g in group_of])
        # 5. metrics and history (identical on every rank: they come from the broadcast)
        metrics = loop.record(decision, {"rlavr/feature_seconds": rnd.feature_seconds,
                                         "rlavr/hidden_from_hook": 1.0 if rnd.hidden_source == "hook" else 0.0})
        for k, v in metrics.items():
            if k != "budget_spent":  # a level, injected in log()
                _compat.log_metric(self, log_key(k), v)
        st = self.rlavr_feature_stats
        st["rounds"] += 1
        st["hook_rounds"] += rnd.hidden_source == "hook"
        st["generate_rounds"] += rnd.hidden_source == "generate"
        if rnd.hidden_source == "extra_forward":
            st["extra_forward_rounds"] += 1
            st["extra_forward_seconds"] += rnd.feature_seconds
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
        elif decision.reweights:
            w = torch.as_tensor(decision.weights[decision.group_of(start, B_l)], dtype=adv.dtype, device=adv.device)
            adv = adv * (w if adv.dim() == 1 else w[:, None])
        out["advantages"] = adv
        if self.rlavr_settings.drop_mode == "mask" and bool(decision.dropped.any()):
            cm = out["completion_mask"]
            keep = torch.as_tensor(~decision.dropped[decision.group_of(start, B_l)], device=cm.device).to(cm.dtype)
            tool_mask = out.get("tool_mask")
            tool_mask = keep[:, None].expand_as(cm).clone() if tool_mask is None else tool_mask * keep[:, None]
            out["tool_mask"] = tool_mask
            out["num_items_in_batch"] = acc.gather((cm * tool_mask).sum()).sum()

    # ------------------------------------------------------------------ before training: ledger check, pool fit
    def _rlavr_check_fresh_ledger(self) -> None:
        """Once per trainer, for a run that does not resume and uses the default ledger:
        :func:`rlavr.trl.checkpoint.check_fresh_ledger`."""
        if self._rlavr_ledger_checked:
            return
        self._rlavr_ledger_checked = True
        if not (self.rlavr_loop.resumed or self._rlavr_resume_requested or self.args.ledger_path):
            ckpt.check_fresh_ledger(self)

    def _rlavr_auto_fit_pool(self) -> None:
        """``fit_pool="auto"`` at train start: fit when the strategy has a pool stage, wants a fit (asked on the
        main process, which holds the strategy's state) and the run did not resume from a checkpoint. For a
        strategy without a pool stage nothing runs (no collective, no RNG draw)."""
        loop = self.rlavr_loop
        if (self.rlavr_settings.fit_pool != "auto" or loop.resumed or loop.pool_fitted
                or not loop.capabilities.pool_stage):
            return
        if on_main_then_broadcast(self.accelerator, loop.wants_pool_fit,
                                  "checking whether the strategy needs a pool fit"):
            self.fit_pool()

    def fit_pool(self, dataset: Any = None, max_prompts: int | None = None) -> dict[str, float]:
        """Fit the strategy's pool stage before training (PivotTrace probes, offline uncertainty consistency,
        positive-negative pairing): sample ``num_generations`` completions per pool prompt with the current
        policy and let :meth:`AcquisitionLoop.fit_pool <rlavr.loop.AcquisitionLoop.fit_pool>` buy the pool labels
        and fit on the main process.

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
        * Labels: bought through the engine's ledger within the budget (the pool counts as one step of prompts
          seen), never twice (a refit or a resumed run reuses them for free).
        * Only the main process holds the fitted strategy (it alone decides, samples prompts and transforms
          advantages); the other processes get the returned metrics.

        Returns:
            the fit's metrics (e.g. ``pool_labels_bought``), also in :attr:`rlavr_pool_metrics` and logged with the
            first training log as ``rlavr/pool/<name>``; ``{}`` (nothing run) for a strategy without a pool stage.
        """
        if not self.rlavr_active:
            raise ValueError(f"fit_pool: acquisition is off in this trainer ({self.rlavr_activation.reason}); set "
                             "RLAVRConfig.label_column to the ground-truth column or pass oracle=")
        if not self.rlavr_loop.capabilities.pool_stage:
            return {}
        self._rlavr_check_fresh_ledger()
        if self._rlavr_round is not None:
            raise RuntimeError("fit_pool: cannot run inside a generation round")
        if self.environment_factories is not None:
            raise ValueError("fit_pool: environment_factory datasets are not supported; fit the strategy yourself "
                             "with strategy.fit_pool_with_engine(trainer.engine, pool_batch)")
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
