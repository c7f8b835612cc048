"""Checks that keep an :class:`~rlavr.trl.RLAVRGRPOTrainer` run honest, and the prompt ids of TRL environments.

* :func:`check_label_columns`: before training, refuse a ``train_dataset`` in which a column other than
  ``label_column`` carries the labels (the reward functions could read ground truth that was never bought).
* :class:`AnswerRateGuard`: during training, warn at once when almost no completion yields an answer in the
  configured answer space, and stop when it persists (a mismatched answer space otherwise trains on nothing).
* :func:`episode_id` and :func:`check_episode_groups`: with TRL's ``environment_factory`` the prompt the policy
  sees comes from ``reset()``; the prompt id is taken from that prompt, not from TRL's placeholder row.

Everything here is deterministic and draws from no RNG.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rlavr.answers import AnswerSpace
from rlavr.rollouts import RowFeatures, prompt_id

logger = logging.getLogger(__name__)

__all__ = ["LABEL_NAME_TOKENS", "LABEL_VALUE_SHARE", "LABEL_SAMPLE_ROWS", "AnswerRateGuard", "check_episode_groups",
           "check_label_columns", "episode_id", "label_like_columns"]

LABEL_NAME_TOKENS = frozenset({"answer", "answers", "solution", "solutions", "label", "labels", "target", "targets",
                               "gold", "truth", "gt", "reference", "expected", "correct"})
"""A column whose name contains one of these words (split at ``_``, ``-``, ``.``, spaces and case changes; e.g.
``solution``, ``ground_truth``, ``gold_answer``, ``expectedOutput``) is treated as a label column."""

LABEL_VALUE_SHARE = 0.5
"""A column whose normalised value equals the label column's on at least this share of the sampled rows (with a
label) is treated as a label column."""

LABEL_SAMPLE_ROWS = 256
"""Rows compared (evenly spaced over the dataset, first and last included; no RNG)."""

# columns TRL never passes to reward functions (grpo_trainer.py, _calculate_rewards), or that are TRL's own inputs
_TRL_COLUMNS = frozenset({"prompt", "completion", "completion_ids"})


def _name_tokens(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    return [t for t in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if t]


def _norm(value: Any) -> str:
    """Whitespace-collapsed, lower-cased ``str(value)``."""
    return " ".join(str(value).split()).lower()


def _candidates(value: Any, space: AnswerSpace | None) -> set[str]:
    """The normalised strings a cell may carry a label as: the value itself, the answer the answer space extracts
    from it (a worked solution ending in ``\\boxed{42}``), and the values of a dict / items of a list one level down
    (verl's ``reward_model: {"ground_truth": ...}``)."""
    if value is None:
        return set()
    parts: list[Any] = [value]
    if isinstance(value, Mapping):
        parts += list(value.values())
    elif isinstance(value, list | tuple):
        parts += list(value)
    out: set[str] = set()
    for p in parts:
        if p is None or isinstance(p, Mapping | list | tuple) and p is not value:
            continue
        out.add(_norm(p))
        if space is not None and isinstance(p, str):
            try:
                ans = space.extract(p)
            except Exception:  # a cell the answer space cannot parse is simply not an answer
                ans = None
            if ans is not None:
                out.add(_norm(ans))
    out.discard("")
    return out


def _sample_columns(dataset: Any, names: Sequence[str], n: int) -> dict[str, list[Any]] | None:
    """Up to ``n`` evenly spaced rows of ``names`` (column-wise), or ``None`` when the dataset cannot be indexed
    (an ``IterableDataset``: it is never read ahead)."""
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        return None
    size = len(dataset)
    if size == 0:
        return {c: [] for c in names}
    k = min(n, size)
    idx = sorted({round(i * (size - 1) / max(1, k - 1)) for i in range(k)})
    if hasattr(dataset, "select"):  # datasets.Dataset: one columnar read
        part = dataset.select(idx)
        return {c: list(part[c]) for c in names}
    rows = [dataset[i] for i in idx]
    return {c: [r.get(c) for r in rows] for c in names}


def label_like_columns(dataset: Any, label_column: str, *, ignore: Iterable[str] = (),
                       answer_space: AnswerSpace | None = None) -> dict[str, str]:
    """Columns of ``dataset`` other than ``label_column`` that look like they carry the labels, with the reason.

    A column is reported when its name contains a label word (:data:`LABEL_NAME_TOKENS`), or when its normalised
    value (or the answer ``answer_space`` extracts from it, or a value inside a dict / list cell) equals the label
    column's on at least :data:`LABEL_VALUE_SHARE` of up to :data:`LABEL_SAMPLE_ROWS` evenly spaced rows that have a
    label. ``ignore`` (the id column, the allowed columns) and TRL's own ``prompt`` / ``completion`` /
    ``completion_ids`` are never reported. A dataset without column names reports nothing; one that cannot be
    indexed (``IterableDataset``) is checked by name only.
    """
    names = list(getattr(dataset, "column_names", None) or [])
    skip = {label_column, *ignore, *_TRL_COLUMNS}
    found: dict[str, str] = {}
    rest = [c for c in names if c not in skip]
    for c in rest:
        words = sorted(set(_name_tokens(c)) & LABEL_NAME_TOKENS)
        if words:
            found[c] = f"its name contains {words[0]!r}"
    features = getattr(dataset, "features", None) or {}
    media = ("Image", "Audio", "Video", "Pdf")  # never labels; decoding them for the comparison would be slow
    by_value = [c for c in rest if c not in found and type(features.get(c)).__name__ not in media]
    if label_column not in names or not by_value:
        return found
    sample = _sample_columns(dataset, [label_column, *by_value], LABEL_SAMPLE_ROWS)
    if sample is None:
        return found
    labels = [None if v is None or _norm(v) == "" else _norm(v) for v in sample[label_column]]
    have = [i for i, v in enumerate(labels) if v is not None]
    if not have:
        return found
    for c in by_value:
        col = sample[c]
        hits = sum(labels[i] in _candidates(col[i], answer_space) for i in have)
        if hits >= LABEL_VALUE_SHARE * len(have):
            found[c] = f"it equals {label_column!r} on {hits} of {len(have)} sampled rows"
    return found


def check_label_columns(dataset: Any, label_column: str, id_column: str, allowed: Sequence[str] = (),
                        answer_space: AnswerSpace | None = None) -> None:
    """Refuse a ``train_dataset`` in which another column than ``label_column`` carries the labels.

    rlavr rewrites only ``label_column`` per prompt group (bought ground truth, majority vote); a reward function
    that reads another column holding the ground truth (TRL's ``accuracy_reward`` reads ``solution``) would train
    on labels that were never bought. See :func:`label_like_columns` for what counts as a label column.

    Args:
        dataset: the train dataset (``None``: nothing to check, e.g. an environment that owns the data).
        label_column, id_column: the configured columns (never reported).
        allowed: columns the user declared legitimate (``RLAVRConfig.allow_extra_label_columns``).
        answer_space: used to extract answers from worked-solution cells.

    Raises:
        ValueError: naming every such column, why it looks like a label, and the two fixes.
    """
    if dataset is None:
        return
    found = label_like_columns(dataset, label_column, ignore=[id_column, *allowed], answer_space=answer_space)
    if not found:
        return
    what = "; ".join(f"{c!r} ({why})" for c, why in found.items())
    cols = sorted(found)
    raise ValueError(
        f"label_column: train_dataset has columns besides label_column={label_column!r} that look like labels: "
        f"{what}. rlavr rewrites only {label_column!r} per prompt group; a reward function reading another label "
        f"column would train on ground truth that was never bought. Fix: set label_column= to the column your reward "
        f"functions read (TRL's accuracy_reward reads 'solution'), and remove the others with "
        f"train_dataset.remove_columns({cols!r}); or, if they carry no ground truth to any reward function, allow "
        f"them with RLAVRConfig(allow_extra_label_columns={cols!r}).")


# ================================================================================================ answer rate


class AnswerRateGuard:
    """Watches the share of completions without an extractable answer, round by round.

    A round is *answerless* when at least ``threshold`` of its completions (all processes) yield no answer. The
    first answerless round of a streak logs a warning naming the answer space and showing an example completion;
    ``rounds`` consecutive answerless rounds stop training with a :class:`ValueError` (``action="raise"``), or
    keep warning once per streak (``"warn"``); ``"ignore"`` does nothing. The decision uses only the gathered rows,
    identical on every process, so every process raises at the same round.
    """

    def __init__(self, space_name: str, threshold: float, rounds: int, action: str) -> None:
        if action not in ("raise", "warn", "ignore"):
            raise ValueError(f"on_invalid_answers: expected 'raise', 'warn' or 'ignore', got {action!r}")
        self.space_name = space_name
        self.threshold = float(threshold)
        self.rounds = int(rounds)
        self.action = action
        self.streak = 0

    def observe(self, rows: Sequence[RowFeatures], round_index: int, *, log: bool = True) -> None:
        """Count this round's rows (``log``: this process writes the warning, i.e. the main process)."""
        if self.action == "ignore" or not rows:
            return
        invalid = [r for r in rows if r.answer is None]
        share = len(invalid) / len(rows)
        if share < self.threshold:
            self.streak = 0
            return
        self.streak += 1
        example = invalid[0].text if invalid else ""
        preview = repr(example[:300]) + (" ..." if len(example) > 300 else "")
        what = (f"{len(invalid)} of {len(rows)} completions ({share:.0%}) have no answer in answer_space="
                f"{self.space_name!r}")
        if self.action == "raise" and self.streak >= self.rounds:
            raise ValueError(
                f"on_invalid_answers: {what} for {self.streak} rounds in a row (round {round_index}); groups without "
                f"an answer have no majority vote and are dropped, so the run trains on almost nothing. Example "
                f"completion: {preview}. Check answer_space (e.g. 'math' needs \\boxed{{...}}, 'integer' takes the "
                f"last integer, 'exact' the whole stripped text) or the prompt's answer format; to go on anyway set "
                f"on_invalid_answers='warn' (or tune invalid_answer_threshold / invalid_answer_rounds).")
        if self.streak == 1 and log:
            stop = (f"training stops after {self.rounds} such rounds in a row" if self.action == "raise"
                    else "on_invalid_answers='warn': training goes on")
            logger.warning("rlavr: %s (round %d); groups without an answer are dropped or pseudo-labelled from "
                           "almost nothing. Example completion: %s. Check answer_space; %s.", what, round_index,
                           preview, stop)


# ================================================================================================ environments


def episode_id(row: Mapping[str, Any], seen_prompt: Any, id_column: str) -> str:
    """The prompt id of a rollout of a TRL environment (``environment_factory``).

    The row's ``id_column`` when it has one (the dataset then asserts that the row determines what ``reset()``
    shows; :func:`check_episode_groups` verifies it within a run); else ``"sha1:"`` + 16 hex digits of the SHA-1 of
    the prompt the policy actually saw, after ``reset()`` appended its observation (the same formula as for a
    dataset prompt, so a ``reset()`` that returns ``None`` keeps the dataset's hash). TRL's placeholder rows, and
    an ``environment``-only routing dataset, therefore get one id per distinct episode prompt.
    """
    if id_column in row and row[id_column] is not None:
        return prompt_id(dict(row), id_column)
    return prompt_id({"prompt": seen_prompt}, id_column)


def check_episode_groups(rows: Sequence[RowFeatures], G: int, seen: dict[str, str]) -> None:
    """Environment rounds: every group's ``G`` rollouts saw one prompt, and an id always names the same prompt.

    ``seen`` (id -> prompt, kept by the caller across rounds) is updated in place.

    Raises:
        ValueError: ``reset()`` showed the rollouts of one dataset row different prompts (rlavr gives a group one
            label), or an ``id_column`` value came with two different prompts.
    """
    for g in range(len(rows) // G):
        chunk = rows[g * G : (g + 1) * G]
        prompts = {r.prompt for r in chunk}
        if len(prompts) > 1:
            a, b = sorted(prompts)[:2]
            raise ValueError(
                f"environment_factory: the {G} rollouts of one dataset row saw different prompts after reset() "
                f"({a[:120]!r} vs {b[:120]!r}); rlavr gives a prompt group one label, so reset() must show every "
                f"rollout of a row the same task: make it depend only on the row's columns (e.g. a seed or task "
                f"index column)")
        pid, prompt = chunk[0].id, chunk[0].prompt
        before = seen.setdefault(pid, prompt)
        if before != prompt:
            raise ValueError(
                f"environment_factory: prompt id {pid!r} came with two different prompts after reset() "
                f"({before[:120]!r} vs {prompt[:120]!r}); one id must name one task (its label is bought once). Make "
                f"reset() depend only on the row, or drop the id column so that ids are hashes of the prompts seen")
