"""One TRL generation round on one process: what the trainer's overrides stash (:class:`Round`), the features
read during generation or TRL's no-grad forward, this process' :class:`~rlavr.rollouts.RowFeatures` (texts,
answers, ids, and the log-probabilities / hidden states the strategy reads, from the cheapest source the round
offers), and the loss mask of dropped groups."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rlavr.rollouts import RowFeatures, completion_text, prompt_id, prompt_text
from rlavr.trl import _compat
from rlavr.trl.capture import (
    LastTokenCapture,
    extra_forward,
    generate_capture_for,
    mean_token_logprobs,
    ragged_logprobs,
    trunk_of,
)
from rlavr.trl.guards import episode_id

__all__ = ["Round", "after_generate", "after_old_logps", "generate_capture", "label_column_rows", "local_rows",
           "local_signals", "mask_dropped", "old_logps_capture"]


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


def generate_capture(trainer: Any, rnd: Round | None) -> Any:
    """The :class:`~rlavr.trl.capture.GenerateCapture` for this round's ``_generate`` (``None``: not needed, or not
    possible there: warned once, the extra forward serves)."""
    if rnd is None:
        return None
    cap, why = generate_capture_for(trainer, armed=rnd.armed, need_hidden=trainer._rlavr_needs_hidden,
                                    need_logps=trainer._rlavr_needs_logps)
    if cap is None and why not in ("not needed", "vLLM generation"):
        trainer._warn_once("gen-capture", "rlavr: features not read during generation (%s); one extra forward per "
                           "round computes them", why)
    return cap


def after_generate(trainer: Any, rnd: Round | None, out: Any, cap: Any) -> None:
    """Stash the prompt / completion ids and sampling log-probs of ``_generate``'s output, and the features read
    during generate (+ one cached decode step); on failure, warn once and leave them unset so that the round falls
    back to the extra forward."""
    if rnd is None:
        return
    got = _compat.generate_output(out)
    rnd.prompt_ids = [list(map(int, p)) for p in got.prompt_ids]
    rnd.completion_ids = [list(map(int, c)) for c in got.completion_ids]
    rnd.sampling_logps = got.logprobs
    if cap is None:
        return
    t0 = time.perf_counter()
    try:
        hidden, logps = cap.finish(rnd.completion_ids, _compat.no_gradient_checkpointing(trainer, trainer._policy()))
    except RuntimeError as exc:
        trainer._warn_once("gen-capture-failed", "rlavr: reading features during generation failed (%s); using one "
                           "extra forward instead", exc)
        return
    rnd.feature_seconds += time.perf_counter() - t0
    rnd.hidden, rnd.gen_logps, rnd.hidden_source = hidden, logps, "generate"


def old_logps_capture(trainer: Any, rnd: Round | None, model: Any, input_ids: torch.Tensor,
                      logits_to_keep: int) -> tuple[bool, LastTokenCapture | None]:
    """Whether this ``_get_per_token_logps_and_entropies`` call is TRL's no-grad old-logps forward of the round
    (its first no-grad policy call, disarmed here), and the trunk hook reading the hidden states during it."""
    if (rnd is None or not rnd.armed or model is not trainer.model or torch.is_grad_enabled()
            or rnd.completion_ids is None):
        return False, None
    rnd.armed = False
    if not trainer._rlavr_needs_hidden:
        return True, None
    P = int(input_ids.shape[1]) - int(logits_to_keep)
    return True, LastTokenCapture(trunk_of(trainer._policy()), P, [len(c) for c in rnd.completion_ids])


def after_old_logps(trainer: Any, rnd: Round, capture: LastTokenCapture | None, logps: torch.Tensor) -> None:
    """Stash TRL's old log-probs and the hooked hidden states (a hook that failed, e.g. a custom forward that
    bypasses the trunk, warns once: the extra forward serves)."""
    if capture is not None:
        try:
            rnd.hidden, rnd.hidden_source = capture.result(), "hook"
        except RuntimeError as exc:
            trainer._warn_once("hook", "rlavr: hidden-state hook failed (%s); using one extra forward instead", exc)
    rnd.old_logps = logps


def label_column_rows(decision: Any, space: Any, inputs: list[dict[str, Any]], column: str,
                      start: int) -> list[dict[str, Any]]:
    """The rows TRL's reward functions are called with: ``column`` set to the group's training label.

    A dropped group has no training label (``Decision.train_labels`` is ``None``), but TRL calls every reward
    function on every row, and one that reads the column may crash on ``None``; so, inside this adapter only, a
    dropped group's rows get its majority answer in the answer space's label form (kept as is when it has none),
    exactly what they got before. Their rewards are set to NaN right after (TRL's "unscorable": advantage 0),
    so these labels never train. A row's own value is kept when equal, as a string (a ground-truth run passes
    TRL's own rows: bitwise stock TRL)."""
    out = []
    for x, g in zip(inputs, decision.group_of(start, len(inputs)), strict=True):
        lab = decision.train_labels[int(g)]
        if decision.dropped[int(g)]:
            maj = decision.majority[int(g)]
            lab = None if maj is None else space.as_label(maj)
        same = lab is None or (column in x and x[column] is not None and str(x[column]) == lab)
        out.append(dict(x) if same else {**x, column: lab})
    return out


def mask_dropped(out: dict[str, Any], dropped_rows: Any, accelerator: Any) -> None:
    """``drop_mode="mask"``: ``tool_mask_i <- tool_mask_i * 1[row i kept]`` (a loss-only mask in TRL) and
    ``num_items_in_batch`` recomputed over every process, so that dropped groups leave the loss normaliser."""
    cm = out["completion_mask"]
    keep = torch.as_tensor(~dropped_rows, device=cm.device).to(cm.dtype)[:, None]
    tool_mask = out.get("tool_mask")
    tool_mask = keep.expand_as(cm).clone() if tool_mask is None else tool_mask * keep
    out["tool_mask"] = tool_mask
    out["num_items_in_batch"] = accelerator.gather((cm * tool_mask).sum()).sum()


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
