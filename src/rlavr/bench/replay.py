r"""Offline replay: score acquisition strategies on logged rollouts, without training.

Input: the JSONL written by :class:`rlavr.trl.RLAVRGRPOTrainer` (``rollout_log_path``), one line per prompt group
per generation round with at least ``step``, ``id``, ``prompt``, ``completions`` (or ``answers``) and a ground
truth in ``reference_label`` (or ``label_used`` of a group that was ``bought``). Optional: ``answers`` (else
extracted from ``completions`` with the answer space), ``lengths``, ``truncated``, ``mean_logprob`` (needed by
strategies that require ``logprobs``), ``prompt_hidden`` (``H`` floats) and ``hidden`` (``G x H``, needed by
``hidden_states`` strategies such as CARE). The trainer logs ``mean_logprob`` whenever its strategy computes
log-probabilities, and both log-probabilities and hidden states for every arm with
``RLAVRConfig(rollout_log_features=True)`` (``rlavr bench --log-features``); a log without them still replays,
and the strategies that need them are reported skipped with the reason. Every line is checked (each
per-rollout field a list of ``G`` entries, ``hidden`` ``G x H``, the same ``G`` and ``H`` on every line); a
malformed one is a ``ValueError`` naming the line and the field.

Answer space: the one the log records (the trainer writes ``answer_space``, the name of the space it trained
with, on every line) unless one is given; a log that records none is replayed with :data:`DEFAULT_ANSWER_SPACE`
(``"exact"``) and a ``logging.WARNING`` says so (pass the space the run trained with: the TRL trainer's default is
``"math"``). A given space that differs from the recorded one is used, with a warning. Lines that record
different spaces are a ``ValueError``.

Each strategy is run through its own :class:`~rlavr.engine.AcquisitionEngine` (in-memory ledger, a
:class:`~rlavr.labels.DatasetOracle` over the logged ground truth, the given budget), step by step in log order,
with :meth:`~rlavr.engine.AcquisitionEngine.update` after every step, exactly as in training, except that the
rollouts are the logged ones (the policy does not react to the decisions). Groups without a ground truth are
left out of the log entirely (a strategy could otherwise buy a label that does not exist).

Metrics, pooled over all steps (``w_i = 1`` iff group ``i``'s majority vote is wrong, ``q_i = 1`` iff the
strategy queried it, ``s_i`` its score, ``c_i`` its true CAG,
:math:`\lVert A(r_{GT}) - A(r_{pseudo})\rVert_2` from :func:`rlavr.advantages.oracle_cag`):

* ``catch_precision`` :math:`= \sum q_i w_i / \sum q_i`: how many bought labels corrected a wrong pseudo-label;
* ``catch_recall`` :math:`= \sum q_i w_i / \sum w_i`: how many wrong pseudo-labels were caught;
* ``cag_captured`` :math:`= \sum_t \sum_{i \in Q_t} c_i / \sum_t \max_{|S| = |Q_t|} \sum_{i \in S} c_i`: the share of
  the corrective signal the strategy's queries recovered, against an oracle buying the same number of labels per
  step (1 = Oracle-CAG);
* ``reliability_auroc``: AUROC of the score ``s`` for detecting wrong votes ``w`` (0.5 = chance; Mann-Whitney
  with average ranks for ties); NaN when a class is absent;
* ``pseudo_label_accuracy`` of the groups left on the pseudo route, ``drop_share``, ``labels_bought``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlavr.advantages import oracle_cag
from rlavr.answers import AnswerSpace, get_answer_space
from rlavr.bench.runner import build_strategy
from rlavr.budget import Budget
from rlavr.engine import AcquisitionEngine
from rlavr.ledger import LabelLedger
from rlavr.metrics import auroc
from rlavr.oracles import DatasetOracle
from rlavr.types import PromptGroup, Rollout, RolloutBatch, Route

__all__ = ["DEFAULT_ANSWER_SPACE", "ReplayLog", "ReplayResult", "auroc", "load_rollout_log", "recorded_answer_space",
           "replay", "replay_table"]

DEFAULT_STRATEGIES = ("random", "entropy", "prob", "care", "oracle")
DEFAULT_ANSWER_SPACE = "exact"
"""Answer space of a log that records none (logs written before the trainer recorded it), with a warning."""

logger = logging.getLogger(__name__)


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
            logger.warning("replay: %s was written by a run that trained with answer_space=%r; replaying with %r "
                           "as asked (answers are clustered and graded differently)", path, recorded, space.name)
        return space
    if recorded is not None:
        try:
            return get_answer_space(recorded)
        except ValueError as exc:
            raise ValueError(f"answer_space: {path} records answer_space={recorded!r}, which cannot be built here "
                             f"({exc}); pass answer_space (--answer-space) explicitly") from None
    logger.warning("replay: %s records no answer space (written before rlavr logged it); using %r. Pass the space "
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


@dataclass
class ReplayResult:
    """Metrics of one strategy (see module docstring); ``skipped`` holds the reason a strategy could not run."""

    strategy: str
    budget: str
    metrics: dict[str, float] = field(default_factory=dict)
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "budget": self.budget, "metrics": self.metrics, "skipped": self.skipped}


def _replay_one(name: str, log: ReplayLog, budget: Budget, answer_space: AnswerSpace,
                strategy_kwargs: Mapping[str, Any]) -> ReplayResult:
    strategy = build_strategy(name, strategy_kwargs)
    req = set(getattr(strategy, "requires", ()))
    label = budget.describe()
    if "logprobs" in req and not log.has_logprobs:
        return ReplayResult(name, label, skipped="requires log-probabilities; the log has no mean_logprob")
    if "hidden_states" in req and not log.has_hidden:
        return ReplayResult(name, label, skipped="requires hidden states; the log has no prompt_hidden/hidden")
    if "attentions" in req:
        return ReplayResult(name, label, skipped="requires attention statistics, which rollout logs do not carry")
    engine = AcquisitionEngine(strategy, DatasetOracle(log.labels), budget=budget, ledger=LabelLedger(":memory:"),
                               answer_space=answer_space)
    q_all, w_all, s_all, pseudo_ok, drop = [], [], [], [], []
    cag_got = 0.0
    cag_best = 0.0
    bought = 0
    for batch in log.batches:
        res = engine.decide(batch, batch.step)
        engine.update(res)
        b = res.batch
        wrong = ~b.majority_correct
        cag = oracle_cag(b.reference_correct, b.pseudo_correct, b.valid)
        queried = res.routes == Route.QUERY
        k = int(queried.sum())
        cag_got += float(cag[queried].sum())
        cag_best += float(np.sort(cag)[::-1][:k].sum())
        q_all.append(queried)
        w_all.append(wrong)
        s_all.append(res.acquisition.scores)
        pseudo = res.routes == Route.PSEUDO
        pseudo_ok.append(b.majority_correct[pseudo])
        drop.append(res.routes == Route.DROP)
        bought += len(res.bought)
    q = np.concatenate(q_all)
    w = np.concatenate(w_all)
    s = np.concatenate(s_all)
    p_ok = np.concatenate(pseudo_ok)
    metrics = {
        "labels_bought": float(bought),
        "queried": float(q.sum()),
        "groups": float(q.size),
        "wrong_votes": float(w.sum()),
        "catch_precision": float((q & w).sum() / q.sum()) if q.any() else float("nan"),
        "catch_recall": float((q & w).sum() / w.sum()) if w.any() else float("nan"),
        "cag_captured": cag_got / cag_best if cag_best > 0 else float("nan"),
        "reliability_auroc": auroc(s, w),
        "pseudo_label_accuracy": float(p_ok.mean()) if p_ok.size else float("nan"),
        "drop_share": float(np.concatenate(drop).mean()),
    }
    return ReplayResult(name, label, metrics=metrics)


def replay(log: ReplayLog | str | Path, strategies: Iterable[str] = DEFAULT_STRATEGIES,
           budget: Budget | float | int | str = 0.2, answer_space: AnswerSpace | str | None = None,
           strategy_kwargs: Mapping[str, Mapping[str, Any]] | None = None) -> list[ReplayResult]:
    """Replay each strategy on the log (see module docstring); strategies that cannot run are reported skipped.

    ``strategy_kwargs`` maps a strategy name (as given in ``strategies``) to its constructor keywords.

    Raises:
        ValueError: no strategies, an unknown strategy, ``strategy_kwargs`` that is not ``{name: {...}}`` over
            the given strategies or that the strategy's constructor rejects, a bad budget, or a bad log.
    """
    names = list(strategies)
    if not names:
        raise ValueError("strategies: give at least one strategy to replay")
    if strategy_kwargs is None:
        strategy_kwargs = {}
    if not isinstance(strategy_kwargs, Mapping):
        raise ValueError(f"strategy_kwargs: expected a mapping of strategy name -> keyword arguments, got "
                         f"{type(strategy_kwargs).__name__} {strategy_kwargs!r}")
    kw = dict(strategy_kwargs)
    for key, value in kw.items():
        if not isinstance(value, Mapping):
            raise ValueError(f"strategy_kwargs: {key!r} must map to an object of keyword arguments, got "
                             f"{type(value).__name__} {value!r}")
    unknown = set(kw) - set(names)
    if unknown:
        raise ValueError(f"strategy_kwargs: keys {sorted(unknown)} are not among the strategies {names}")
    for n in dict.fromkeys(names):  # bad names and keywords fail before the log is read
        build_strategy(n, kw.get(n, {}))
    bud = Budget.parse(budget)
    if isinstance(log, ReplayLog):
        parsed = log
        space = get_answer_space(answer_space) if answer_space is not None else log.batches[0].answer_space
    else:
        parsed = load_rollout_log(log, answer_space)
        space = parsed.batches[0].answer_space
    return [_replay_one(n, parsed, bud, space, kw.get(n, {})) for n in names]


def replay_table(results: Sequence[ReplayResult]) -> str:
    """Markdown table of replay metrics (percentages) with the skipped strategies and their reasons."""
    head = ["strategy", "budget", "labels bought", "catch precision (%)", "catch recall (%)", "CAG captured (%)",
            "reliability AUROC", "pseudo-label acc (%)", "dropped (%)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def pct(x: float) -> str:
        return "–" if not math.isfinite(x) else f"{100 * x:.1f}"

    for r in results:
        if r.skipped:
            lines.append(f"| {r.strategy} | {r.budget} | skipped: {r.skipped} |" + " |" * (len(head) - 3))
            continue
        m = r.metrics
        auc = m["reliability_auroc"]
        lines.append(f"| {r.strategy} | {r.budget} | {int(m['labels_bought'])} | {pct(m['catch_precision'])} | "
                     f"{pct(m['catch_recall'])} | {pct(m['cag_captured'])} | "
                     f"{'–' if not math.isfinite(auc) else f'{auc:.3f}'} | {pct(m['pseudo_label_accuracy'])} | "
                     f"{pct(m['drop_share'])} |")
    return "\n".join(lines)
