r"""Offline replay: score acquisition strategies on logged rollouts, without training.

Input: the JSONL written by :class:`rlavr.trl.RLAVRGRPOTrainer` (``rollout_log_path``), one line per prompt group
per generation round with at least ``step``, ``id``, ``prompt``, ``completions`` (or ``answers``) and a ground
truth in ``reference_label`` (or ``label_used`` of a group that was ``bought``). Optional: ``answers`` (else
extracted from ``completions`` with the answer space), ``lengths``, ``truncated``, ``mean_logprob`` (needed by
strategies that require ``logprobs``), ``prompt_hidden`` (``H`` floats) and ``hidden`` (``G x H``, needed by
``hidden_states`` strategies such as CARE; the trainer does not log them, so such strategies are skipped with
the reason unless a log carries them).

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
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata

from rlavr.advantages import oracle_cag
from rlavr.answers import AnswerSpace, get_answer_space
from rlavr.budget import Budget
from rlavr.engine import AcquisitionEngine
from rlavr.labels import DatasetOracle, LabelLedger
from rlavr.strategies import get_strategy
from rlavr.types import PromptGroup, Rollout, RolloutBatch, Route

__all__ = ["ReplayLog", "ReplayResult", "auroc", "load_rollout_log", "replay", "replay_table"]

DEFAULT_STRATEGIES = ("random", "entropy", "prob", "care", "oracle")


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``positive`` (Mann-Whitney U / (n+ n-), average ranks for ties).

    Returns NaN when either class is empty.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positive, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"auroc: scores {s.shape} and labels {y.shape} must be equal 1-D shapes")
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


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


def _float_list(value: Any, name: str, line: int) -> list[float]:
    if not isinstance(value, list) or not all(isinstance(x, int | float) for x in value):
        raise ValueError(f"rollout log line {line}: {name} must be a list of numbers")
    return [float(x) for x in value]


def load_rollout_log(path: str | Path, answer_space: AnswerSpace | str | None = None) -> ReplayLog:
    """Parse a rollout JSONL into per-step batches (see module docstring for the fields)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"log: {p} does not exist")
    space = get_answer_space(answer_space) if answer_space is not None else None
    steps: dict[int, list[tuple[PromptGroup, str]]] = {}
    labels: dict[str, str] = {}
    skipped = 0
    lp_all = True
    hid_all = True
    G: int | None = None
    with open(p, encoding="utf-8") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ValueError(f"log: line {n} of {p} is not JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"log: line {n} of {p} is not a JSON object")
            for key in ("step", "id"):
                if key not in rec:
                    raise ValueError(f"log: line {n} of {p} has no {key!r} field")
            texts = rec.get("completions")
            answers = rec.get("answers")
            if texts is None and answers is None:
                raise ValueError(f"log: line {n} of {p} has neither 'completions' nor 'answers'")
            if answers is None:
                if space is None:
                    raise ValueError(f"log: line {n} has no 'answers'; pass answer_space to extract them")
                answers = [space.extract(str(t)) for t in (texts or [])]
            if texts is None:
                texts = ["" if a is None else str(a) for a in answers]
            if len(texts) != len(answers):
                raise ValueError(f"log: line {n}: {len(texts)} completions but {len(answers)} answers")
            if G is None:
                G = len(answers)
            if len(answers) != G:
                raise ValueError(f"log: line {n}: group of {len(answers)} rollouts, earlier groups had {G}")
            ref = rec.get("reference_label")
            if ref is None and rec.get("bought") and rec.get("label_used") is not None:
                ref = rec["label_used"]
            pid = str(rec["id"])
            if ref is None:
                skipped += 1
                continue
            labels[pid] = str(ref)
            g_len = len(answers)
            lengths = rec.get("lengths") or [0] * g_len
            trunc = rec.get("truncated") or [False] * g_len
            mlp = rec.get("mean_logprob")
            if mlp is None:
                lp_all = False
                mlp = [None] * g_len
            hid = rec.get("hidden")
            ph = rec.get("prompt_hidden")
            if hid is None or ph is None:
                hid_all = False
                hid, ph = [None] * g_len, None
            rollouts = tuple(
                Rollout(text=str(texts[j]), answer=None if answers[j] is None else str(answers[j]),
                        mean_logprob=None if mlp[j] is None else float(mlp[j]), length=int(lengths[j]),
                        truncated=bool(trunc[j]),
                        hidden=None if hid[j] is None else np.asarray(_float_list(hid[j], "hidden", n)))
                for j in range(g_len))
            group = PromptGroup(id=pid, prompt=str(rec.get("prompt", "")), rollouts=rollouts,
                                prompt_hidden=None if ph is None else np.asarray(_float_list(ph, "prompt_hidden", n)))
            steps.setdefault(int(rec["step"]), []).append((group, str(ref)))
    if not steps:
        raise ValueError(f"log: {p} holds no prompt group with a ground-truth label "
                         f"({skipped} groups without reference_label were skipped)")
    sp = space if space is not None else get_answer_space("exact")
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
    strategy = get_strategy(name, **dict(strategy_kwargs))
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
    """Replay each strategy on the log (see module docstring); strategies that cannot run are reported skipped."""
    space = get_answer_space(answer_space) if answer_space is not None else get_answer_space("exact")
    parsed = log if isinstance(log, ReplayLog) else load_rollout_log(log, space)
    bud = Budget.parse(budget)
    names = list(strategies)
    if not names:
        raise ValueError("strategies: give at least one strategy to replay")
    kw = dict(strategy_kwargs or {})
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
