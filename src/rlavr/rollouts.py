"""Rows <-> :class:`~rlavr.types.RolloutBatch`: prompt ids, prompt and completion texts, and the batch itself.

Every trainer integration turns what its generator produced into :class:`RowFeatures` (one per rollout, plain
data, cheap to gather across processes), and the acquisition loop groups them into a :class:`RolloutBatch`:

* **completion text** (:func:`completion_text`): a string completion as is; a conversational completion (a list
  of chat messages, several turns with tool calls in between) is the concatenated text of its *assistant*
  messages, tool results and other roles skipped: what the model wrote, from which answers are extracted and
  against which reward functions grade. Content may be a string or a list of typed blocks (only ``"text"``
  blocks count).
* **prompt text** (:func:`prompt_text`): what the oracle is shown, the last user message of a conversation.
* **prompt id** (:func:`prompt_id`): the ledger's key, ``str(row[id_column])``, else a content hash of the prompt
  (:func:`hashed_id`: ``"<namespace>:" + sha1(text)[:16]``; the TRL trainer hashes the prompt's JSON under the
  namespace ``sha1``, the benchmark tasks hash the prompt string under the task's name).
* **layout** (:func:`build_rollout_batch`): ``B * G`` rows in TRL's rank-major order, each group's ``G`` rows
  contiguous, so global row ``r`` belongs to group ``r // G``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlavr.answers import AnswerSpace
from rlavr.types import PromptGroup, Rollout, RolloutBatch, check_prompt_id

__all__ = ["RowFeatures", "build_rollout_batch", "completion_text", "hashed_id", "prompt_id", "prompt_text",
           "stack_hidden"]


# ================================================================================================ texts and ids


def _content_text(content: Any) -> str:
    """Text of a chat message's ``content`` (a string or a list of typed blocks; non-text blocks are skipped)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, Mapping) and block.get("type", "text") == "text":
                parts.append(str(block.get("text", "")))
        return "".join(parts)
    return str(content)


def completion_text(completion: str | Sequence[Mapping[str, Any]]) -> str:
    """The text answers are extracted from and rewards graded on: the string itself, or the concatenated contents
    of the assistant messages of a conversational completion (a message without ``role`` counts as the
    assistant's; tool results and other roles are not the model's answer and are skipped).

    Raises:
        ValueError: ``completion`` is neither a string nor a sequence of chat messages.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and not isinstance(completion, bytes | bytearray):
        return "".join(_content_text(m.get("content")) for m in completion
                       if isinstance(m, Mapping) and m.get("role", "assistant") == "assistant")
    raise ValueError(f"completion: expected a string or a list of chat messages, got {type(completion).__name__}")


def prompt_text(prompt: str | Sequence[Mapping[str, Any]]) -> str:
    """What the oracle sees: the prompt string, or the content of the LAST user message of a conversation (the
    question; system prompts and earlier turns are not repeated to the labeller)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Sequence):
        users = [m for m in prompt if isinstance(m, Mapping) and m.get("role") == "user"]
        source = users[-1:] if users else [m for m in prompt if isinstance(m, Mapping)][-1:]
        return "".join(_content_text(m.get("content")) for m in source)
    raise ValueError(f"prompt: expected a string or a list of chat messages, got {type(prompt).__name__}")


def hashed_id(text: str, namespace: str) -> str:
    """A content id: ``f"{namespace}:{sha1(text)[:16]}"`` (UTF-8, lone surrogates passed through so that any
    Python string hashes to a stable, valid id). Identical texts in one namespace share the id."""
    return f"{namespace}:{hashlib.sha1(text.encode('utf-8', 'surrogatepass')).hexdigest()[:16]}"


def prompt_id(row: Mapping[str, Any], id_column: str) -> str:
    """The stable prompt id of a dataset row: ``str(row[id_column])``, or, when the column is absent,
    ``hashed_id(json(prompt, sort_keys), "sha1")`` (the documented fallback; identical prompts share an id).

    Raises:
        ValueError: an empty id, an id that is not valid Unicode, or a row with neither the column nor a prompt.
    """
    if id_column in row and row[id_column] is not None:
        pid = str(row[id_column])
        if not pid:
            raise ValueError(f"id_column {id_column!r}: empty prompt id in row {row!r:.200}")
        return check_prompt_id(pid, f"id_column {id_column!r}")
    if "prompt" not in row:
        raise ValueError(f"id_column {id_column!r}: the row has neither this column nor a 'prompt' to hash "
                         f"(columns: {sorted(row)})")
    return hashed_id(json.dumps(row["prompt"], sort_keys=True, default=str, ensure_ascii=False), "sha1")


# ================================================================================================ rows


@dataclass(frozen=True, slots=True)
class RowFeatures:
    """What one process knows about one of its rows (one rollout); plain data, cheap to gather and to pickle.

    Attributes:
        id: prompt id (ledger key).
        prompt: prompt text shown to the oracle.
        text: completion text.
        answer: extracted answer (``None`` = invalid rollout).
        length: completion tokens.
        truncated: the completion hit the length limit without EOS.
        mean_logprob: mean token log-probability (``None`` when the strategy did not ask for log-probabilities).
        token_logprobs: per-token log-probabilities (same condition).
    """

    id: str
    prompt: str
    text: str
    answer: str | None
    length: int
    truncated: bool
    mean_logprob: float | None = None
    token_logprobs: tuple[float, ...] | None = None


def stack_hidden(rows: np.ndarray) -> np.ndarray:
    """Validate a gathered ``(N, 2, H)`` hidden-state array (finite, 3-D) as float32.

    Raises:
        ValueError: another shape, or a row holding NaN or inf (naming the first such row).
    """
    arr = np.asarray(rows, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[1] != 2:
        raise ValueError(f"hidden states: expected shape (rows, 2, H), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr).all(axis=(1, 2)))[0])
        raise ValueError(f"hidden states: row {bad} contains NaN or inf (policy diverged?)")
    return arr


def build_rollout_batch(
    rows: Sequence[RowFeatures],
    G: int,
    answer_space: AnswerSpace,
    step: int,
    hidden: np.ndarray | None = None,
) -> RolloutBatch:
    """Group the global rows (rank-major order: global row ``r`` belongs to group ``r // G``) into a
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
