"""One process' share of a TRL round as :class:`~rlavr.rollouts.RowFeatures`: texts, answers, ids, and the
log-probabilities / hidden states the strategy reads, from the cheapest source the round offers."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rlavr.rollouts import RowFeatures, completion_text, prompt_id, prompt_text
from rlavr.trl import _compat
from rlavr.trl.capture import extra_forward, mean_token_logprobs, ragged_logprobs
from rlavr.trl.guards import episode_id

__all__ = ["Round", "finish_generate_capture", "local_rows", "local_signals"]


@dataclass
class Round:
    """What one process stashes during one generation round (train mode only) or one pool chunk."""

    prompt_ids: list[list[int]] | None = None
    completion_ids: list[list[int]] | None = None
    sampling_logps: list[list[float | None]] | None = None
    armed: bool = False
    hidden: torch.Tensor | None = None
    old_logps: torch.Tensor | None = None
    gen_logps: torch.Tensor | None = None  # sampled-token log-probs read during transformers generate
    hidden_source: str = "none"
    feature_seconds: float = 0.0
    decision: Any = None
    n_local: int = 0


def finish_generate_capture(trainer: Any, rnd: Round, cap: Any) -> None:
    """Hidden states / log-probs read during generate (+ one cached decode step) into ``rnd``; on failure, warn
    once and leave them unset so that the round falls back to the extra forward."""
    t0 = time.perf_counter()
    try:
        hidden, logps = cap.finish(rnd.completion_ids, _compat.no_gradient_checkpointing(trainer, trainer._policy()))
    except RuntimeError as exc:
        trainer._warn_once("gen-capture-failed", "rlavr: reading features during generation failed (%s); using one "
                           "extra forward instead", exc)
        return
    rnd.feature_seconds += time.perf_counter() - t0
    rnd.hidden, rnd.gen_logps, rnd.hidden_source = hidden, logps, "generate"


def local_signals(trainer: Any, rnd: Round, completion_ids_list: list) -> tuple[torch.Tensor | None,
                                                                                 torch.Tensor | None]:
    """Hidden states ``(B_l, 2, H)`` and per-token log-probs ``(B_l, C)`` this process needs, from (in order of
    preference) vLLM's sampling log-probs, TRL's hooked no-grad forward, generate, or ONE extra no-grad forward."""
    need_h, need_lp = trainer._rlavr_needs_hidden, trainer._rlavr_needs_logps
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
        if _compat.is_vlm(trainer):
            raise ValueError("rlavr: the extra feature forward does not support vision-language inputs; use "
                             "a configuration where TRL runs its own no-grad forward (e.g. num_iterations=2) "
                             "or a strategy that needs no hidden states / log-probs")
        t0 = time.perf_counter()
        logps_fn: Callable[..., Any] | None = None
        if missing_lp:
            model = trainer.model

            def logps_fn(ids: torch.Tensor, mask: torch.Tensor, keep: int, batch_size: int) -> Any:
                return _compat.policy_logps(trainer, model, ids, mask, keep, batch_size)
        policy = trainer._policy()
        h, lp = extra_forward(
            policy, rnd.prompt_ids, list(completion_ids_list),
            pad_token_id=_compat.pad_token_id(trainer), device=trainer.accelerator.device,
            batch_size=int(trainer.args.per_device_train_batch_size), need_hidden=missing_h, logps_fn=logps_fn,
            autocast=trainer.accelerator.autocast, no_checkpointing=_compat.no_gradient_checkpointing(trainer, policy))
        rnd.feature_seconds += time.perf_counter() - t0
        rnd.hidden_source = "extra_forward"  # counted for log-prob-only rounds too (rlavr_feature_stats)
        if missing_h:
            hidden = h
        if missing_lp:
            logps = lp
    return hidden, logps


def local_rows(trainer: Any, inputs: list[dict[str, Any]], prompts: list, completions: list,
               completion_ids_list: list, logps: torch.Tensor | None) -> list[RowFeatures]:
    """This process' rows: prompt id (the id column, an environment's episode id, or the prompt's hash), prompt
    and completion texts, the extracted answer, length, truncation and mean / per-token log-probabilities."""
    s = trainer.rlavr_settings
    space = trainer.engine.answer_space
    eos_and_pad = {*trainer.eos_token_ids, _compat.tokenizer(trainer).pad_token_id}
    envs = trainer.environment_factories is not None
    if s.id_column not in inputs[0]:
        trainer._warn_once("hash-ids", "rlavr: the dataset has no %r column; prompt ids are SHA-1 hashes of the "
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
