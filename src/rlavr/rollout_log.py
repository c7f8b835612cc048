r"""The rollout log: one JSONL line per prompt group per generation round; its writer and its reader, one schema.

Written by :class:`RolloutLogWriter` (the :class:`~rlavr.loop.AcquisitionLoop` writes one when given
``rollout_log``; the TRL trainer's ``RLAVRConfig.rollout_log_path``), read by :func:`load_rollout_log` (offline
replay, :mod:`rlavr.replay`). Fields of a line (:data:`FIELDS`):

* ``step`` (int >= 0), ``id`` (the prompt id), ``prompt`` (the text the oracle sees);
* per rollout, lists of ``G`` entries: ``completions`` (texts), ``answers`` (extracted; ``null`` = none),
  ``lengths`` (tokens), ``truncated`` (bools), ``mean_logprob`` (``null`` when not computed);
* the decision: ``route`` (``"query"`` / ``"pseudo"`` / ``"drop"``), ``weight``, ``score``, ``label_used`` (the
  label rewards were computed against), ``majority_answer``, ``reference_label`` (the oracle's free reference, if
  any), ``bought`` (charged at this round), ``strategy``, ``answer_space`` (the space the run trained with);
* with ``features=True``: ``prompt_hidden`` (``H`` floats) and ``hidden`` (``G x H``), 6 significant digits.

The reader needs at least ``step``, ``id``, ``completions`` (or ``answers``) and a ground truth in
``reference_label`` (or ``label_used`` of a group that was ``bought``); every line is checked (each per-rollout
field a list of ``G`` entries, ``hidden`` ``G x H``, the same ``G`` and ``H`` on every line) and a malformed one
is a ``ValueError`` naming the line and the field.

Answer space: the one the log records unless one is given; a log that records none is read with
:data:`DEFAULT_ANSWER_SPACE` (``"exact"``) and a ``logging.WARNING`` says so (the TRL trainer's default is
``"math"``). A given space that differs from the recorded one is used, with a warning. Lines that record
different spaces are a ``ValueError``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rlavr.answers import AnswerSpace, get_answer_space
from rlavr.types import PromptGroup, Rollout, RolloutBatch, Route

if TYPE_CHECKING:  # pragma: no cover
    from rlavr.engine import StepResult

__all__ = ["DEFAULT_ANSWER_SPACE", "FIELDS", "ReplayLog", "RolloutLogWriter", "group_records", "load_rollout_log",
           "recorded_answer_space"]

DEFAULT_ANSWER_SPACE = "exact"
"""Answer space of a log that records none (logs written before the trainer recorded it), with a warning."""

FIELDS = ("step", "id", "prompt", "completions", "answers", "lengths", "truncated", "mean_logprob", "route",
          "weight", "score", "label_used", "majority_answer", "reference_label", "bought", "strategy",
          "answer_space", "prompt_hidden", "hidden")
"""Every field a line may hold, in the order the writer writes them (the last two only with features)."""

logger = logging.getLogger(__name__)


# ================================================================================================ writer


def _floats(x: Any) -> list[float]:
    """6 significant digits: exact enough for replay, about 40 % smaller than ``repr``."""
    return [float(f"{v:.6g}") for v in np.asarray(x, dtype=np.float64).ravel()]


def group_records(result: StepResult, step: int, *, strategy: str, answer_space: str,
                  features: bool = False) -> list[dict[str, Any]]:
    """The log lines of one decided round (one per prompt group), as dicts in :data:`FIELDS` order.

    ``mean_logprob`` is written when every rollout has one, ``prompt_hidden`` / ``hidden`` when ``features`` and
    every group has hidden states."""
    batch = result.batch
    ref = batch.reference_labels
    bought = set(result.bought)
    has_lp = all(r.mean_logprob is not None for g in batch.groups for r in g.rollouts)
    log_hidden = features and all(
        g.prompt_hidden is not None and all(r.hidden is not None for r in g.rollouts) for g in batch.groups)
    out = []
    for i, g in enumerate(batch.groups):
        extra = ({"prompt_hidden": _floats(g.prompt_hidden), "hidden": [_floats(r.hidden) for r in g.rollouts]}
                 if log_hidden else {})
        out.append({
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
            "strategy": strategy,
            "answer_space": answer_space,  # the reader's default space
            **extra,
        })
    return out


class RolloutLogWriter:
    """Appends each decided round to a rollout JSONL (see the module docstring). The folder is created here.

    Args:
        path: the JSONL file (appended to).
        features: also write ``prompt_hidden`` / ``hidden`` when the round has them.
    """

    def __init__(self, path: str | Path, *, features: bool = False) -> None:
        self.path = str(path)
        self.features = bool(features)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)

    def write(self, result: StepResult, step: int, *, strategy: str, answer_space: str) -> None:
        """Append the round's lines (:func:`group_records`)."""
        lines = group_records(result, step, strategy=strategy, answer_space=answer_space, features=self.features)
        with open(self.path, "a", encoding="utf-8") as f:
            for rec in lines:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")


# ================================================================================================ reader


def recorded_answer_space(path: str | Path) -> str | None:
    """The ``answer_space`` recorded on the first non-empty line of a rollout log, or ``None`` (none recorded, or
    a line that is not a JSON object: :func:`load_rollout_log` reports those)."""
    with open(path, encoding="utf-8") as f:
        for raw in f:
            if raw.strip():
                try:
                    rec = json.loads(raw)
                except (json.JSONDecodeError, RecursionError):
                    return None
                name = rec.get("answer_space") if isinstance(rec, dict) else None
                return name if isinstance(name, str) and name else None
    return None


def _resolve_space(path: Path, answer_space: AnswerSpace | str | None) -> AnswerSpace:
    """The given space (warning if the log records another), else the recorded one, else the default + a warning."""
    recorded = recorded_answer_space(path)
    if answer_space is not None:
        space = get_answer_space(answer_space)
        if recorded is not None and recorded != space.name:
            logger.warning("rollout log: %s was written by a run that trained with answer_space=%r; replaying with %r "
                           "as asked (answers are clustered and graded differently)", path, recorded, space.name)
        return space
    if recorded is not None:
        try:
            return get_answer_space(recorded)
        except ValueError as exc:
            raise ValueError(f"answer_space: {path} records answer_space={recorded!r}, which cannot be built here "
                             f"({exc}); pass answer_space (--answer-space) explicitly") from None
    logger.warning("rollout log: %s records no answer space (written before rlavr logged it); using %r. Pass the space "
                   "the run trained with (answer_space / --answer-space; the TRL trainer's default is 'math')",
                   path, DEFAULT_ANSWER_SPACE)
    return get_answer_space(DEFAULT_ANSWER_SPACE)


@dataclass
class ReplayLog:
    """A parsed rollout log: one :class:`RolloutBatch` per step (with reference labels), in step order."""

    batches: list[RolloutBatch]
    labels: dict[str, str]
    has_logprobs: bool
    has_hidden: bool
    skipped_groups: int = 0

    @property
    def n_groups(self) -> int:
        return sum(b.B for b in self.batches)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _per_rollout(rec: Mapping[str, Any], key: str, G: int, where: str, ok: Callable[[Any], bool],
                 what: str) -> list[Any] | None:
    """``rec[key]`` as a list of ``G`` items that pass ``ok``; ``None`` when the field is absent or null."""
    value = rec.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValueError(f"{where}: {key!r} must be a list of {G} {what} (one per rollout), "
                         f"got {type(value).__name__} {_short(value)}")
    if len(value) != G:
        raise ValueError(f"{where}: {key!r} has {len(value)} entries but the group has {G} rollouts")
    for j, x in enumerate(value):
        if not ok(x):
            raise ValueError(f"{where}: {key}[{j}] must be {what}, got {_short(x)}")
    return value


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def _vector(value: Any, name: str, where: str, H: int | None) -> list[float]:
    """A list of ``H`` finite numbers (any ``H >= 1`` when ``H`` is None)."""
    if not isinstance(value, list):
        raise ValueError(f"{where}: {name} must be a list of numbers, got {type(value).__name__} {_short(value)}")
    if not value:
        raise ValueError(f"{where}: {name} is empty; expected H >= 1 numbers")
    for j, x in enumerate(value):
        if not _is_number(x) or not math.isfinite(float(x)):
            raise ValueError(f"{where}: {name}[{j}] must be a finite number, got {_short(x)}")
    if H is not None and len(value) != H:
        raise ValueError(f"{where}: {name} has {len(value)} numbers, expected H = {H} (the hidden size of the "
                         "rest of the log)")
    return [float(x) for x in value]


_SCALAR_LABEL = (str, int, float)


def _label_or_none(rec: Mapping[str, Any], key: str, where: str) -> str | None:
    value = rec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, _SCALAR_LABEL):
        raise ValueError(f"{where}: {key!r} must be a string, a number or null, got {type(value).__name__} "
                         f"{_short(value)}")
    return str(value)


@dataclass
class _Record:
    step: int
    group: PromptGroup
    ref: str | None
    has_logprobs: bool
    has_hidden: bool


def _parse_record(rec: Any, n: int, p: Path, space: AnswerSpace | None, G: int | None,
                  H: int | None) -> _Record:
    """One log line, every field checked (see module docstring); errors name the line and the field."""
    where = f"log: line {n} of {p}"
    if not isinstance(rec, dict):
        raise ValueError(f"{where} is not a JSON object")
    for key in ("step", "id"):
        if key not in rec:
            raise ValueError(f"{where} has no {key!r} field")
    step = rec["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"{where}: 'step' must be an int >= 0, got {_short(step)}")
    pid = rec["id"]
    if isinstance(pid, bool) or not isinstance(pid, str | int) or str(pid) == "":
        raise ValueError(f"{where}: 'id' must be a non-empty string or an int, got {_short(pid)}")
    prompt = rec.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ValueError(f"{where}: 'prompt' must be a string, got {type(prompt).__name__} {_short(prompt)}")
    texts, answers = rec.get("completions"), rec.get("answers")
    if texts is None and answers is None:
        raise ValueError(f"{where} has neither 'completions' nor 'answers'")
    for key, value in (("completions", texts), ("answers", answers)):
        if value is not None and not isinstance(value, list):
            raise ValueError(f"{where}: {key!r} must be a list (one entry per rollout), got "
                             f"{type(value).__name__} {_short(value)}")
    if texts is not None and answers is not None and len(texts) != len(answers):
        raise ValueError(f"{where}: {len(texts)} completions but {len(answers)} answers")
    g_len = len(texts) if texts is not None else len(answers)  # type: ignore[arg-type]
    if g_len == 0:
        raise ValueError(f"{where}: the group has no rollouts ('completions' / 'answers' is empty)")
    if G is not None and g_len != G:
        raise ValueError(f"{where}: group of {g_len} rollouts, earlier groups had {G}")
    if texts is not None:
        _per_rollout(rec, "completions", g_len, where, lambda x: isinstance(x, str), "a string")
    if answers is not None:
        _per_rollout(rec, "answers", g_len, where, lambda x: x is None or isinstance(x, _SCALAR_LABEL)
                     and not isinstance(x, bool), "a string, a number or null")
    else:
        if space is None:
            raise ValueError(f"{where} has no 'answers'; pass answer_space to extract them")
        answers = [space.extract(t) for t in texts]  # type: ignore[union-attr]
    if texts is None:
        texts = ["" if a is None else str(a) for a in answers]
    lengths = _per_rollout(rec, "lengths", g_len, where,
                           lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= 0, "an int >= 0")
    trunc = _per_rollout(rec, "truncated", g_len, where, lambda x: isinstance(x, bool), "true or false")
    mlp = _per_rollout(rec, "mean_logprob", g_len, where,
                       lambda x: x is None or _is_number(x) and math.isfinite(float(x)) and float(x) <= 1e-6,
                       "a finite log-probability <= 0 or null")
    hid, ph = rec.get("hidden"), rec.get("prompt_hidden")
    if (hid is None) != (ph is None):
        have, lack = ("hidden", "prompt_hidden") if ph is None else ("prompt_hidden", "hidden")
        raise ValueError(f"{where}: {have!r} is given without {lack!r}; hidden-state strategies need both "
                         "(or neither)")
    hidden_rows: list[list[float]] | None = None
    prompt_hidden: list[float] | None = None
    if ph is not None:
        prompt_hidden = _vector(ph, "'prompt_hidden'", where, H)
        h = len(prompt_hidden)
        if not isinstance(hid, list) or len(hid) != g_len:
            got = f"{len(hid)} rows" if isinstance(hid, list) else f"{type(hid).__name__} {_short(hid)}"
            raise ValueError(f"{where}: 'hidden' must be a G x H list of lists ({g_len} rows of {h} numbers), "
                             f"got {got}")
        hidden_rows = [_vector(row, f"'hidden'[{j}]", where, h) for j, row in enumerate(hid)]
    ref = _label_or_none(rec, "reference_label", where)
    label_used = _label_or_none(rec, "label_used", where)
    bought = rec.get("bought")
    if bought is not None and not isinstance(bought, bool):
        raise ValueError(f"{where}: 'bought' must be true or false, got {_short(bought)}")
    if ref is None and bought and label_used is not None:
        ref = label_used
    try:
        rollouts = tuple(
            Rollout(text=texts[j], answer=None if answers[j] is None else str(answers[j]),
                    mean_logprob=None if mlp is None or mlp[j] is None else float(mlp[j]),
                    length=0 if lengths is None else lengths[j], truncated=False if trunc is None else trunc[j],
                    hidden=None if hidden_rows is None else np.asarray(hidden_rows[j]))
            for j in range(g_len))
        group = PromptGroup(id=str(pid), prompt=prompt or "", rollouts=rollouts,
                            prompt_hidden=None if prompt_hidden is None else np.asarray(prompt_hidden))
    except ValueError as exc:  # pragma: no cover - the checks above should catch everything first
        raise ValueError(f"{where}: {exc}") from None
    return _Record(step=step, group=group, ref=ref,
                   has_logprobs=mlp is not None and all(x is not None for x in mlp),
                   has_hidden=hidden_rows is not None)


def load_rollout_log(path: str | Path, answer_space: AnswerSpace | str | None = None) -> ReplayLog:
    """Parse a rollout JSONL into per-step batches (see module docstring for the fields).

    ``answer_space``: ``None`` (default) = the one the log records, else ``"exact"`` with a warning (see the
    module docstring).

    Raises:
        ValueError: the file is missing, holds no labelled group, or a line is malformed: not JSON, a missing
            ``step`` / ``id``, a per-rollout field (``completions``, ``answers``, ``lengths``, ``truncated``,
            ``mean_logprob``) that is not a list of ``G`` valid entries, ``hidden`` that is not ``G x H`` or
            ``prompt_hidden`` not ``H`` finite numbers, or a ``G`` / ``H`` that differs from earlier lines.
            The message names the line and the field.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"log: {p} does not exist")
    space = _resolve_space(p, answer_space)
    first_recorded: str | None = None
    steps: dict[int, list[tuple[PromptGroup, str]]] = {}
    labels: dict[str, str] = {}
    skipped = 0
    lp_all = True
    hid_all = True
    G: int | None = None
    H: int | None = None
    with open(p, encoding="utf-8") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ValueError(f"log: line {n} of {p} is not JSON ({exc.msg})") from None
            except RecursionError:
                raise ValueError(f"log: line {n} of {p} is nested too deeply to be a rollout record") from None
            rec_space = rec.get("answer_space") if isinstance(rec, dict) else None
            if rec_space is not None:
                if first_recorded is None:
                    first_recorded = rec_space
                elif rec_space != first_recorded:
                    raise ValueError(f"log: line {n} of {p} records answer_space={rec_space!r}, earlier lines "
                                     f"{first_recorded!r}; replay one run's log at a time")
            r = _parse_record(rec, n, p, space, G, H)
            G = r.group.size
            if r.group.prompt_hidden is not None:
                H = int(r.group.prompt_hidden.shape[0])
            if r.ref is None:
                skipped += 1
                continue
            labels[r.group.id] = r.ref
            lp_all = lp_all and r.has_logprobs
            hid_all = hid_all and r.has_hidden
            steps.setdefault(r.step, []).append((r.group, r.ref))
    if not steps:
        raise ValueError(f"log: {p} holds no prompt group with a ground-truth label "
                         f"({skipped} groups without reference_label were skipped)")
    sp = space
    batches = []
    for step in sorted(steps):
        groups = steps[step]
        seen: set[str] = set()
        uniq = [(g, r) for g, r in groups if not (g.id in seen or seen.add(g.id))]  # type: ignore[func-returns-value]
        batches.append(RolloutBatch.from_groups([g for g, _ in uniq], sp, reference_labels=[r for _, r in uniq],
                                                step=step))
    return ReplayLog(batches=batches, labels=labels, has_logprobs=lp_all, has_hidden=hid_all, skipped_groups=skipped)
