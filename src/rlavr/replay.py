r"""Offline replay: score acquisition strategies on logged rollouts, without training.

Input: the rollout log (:mod:`rlavr.rollout_log`; written by :class:`rlavr.trl.RLAVRGRPOTrainer` with
``rollout_log_path``, or by any :class:`~rlavr.loop.AcquisitionLoop` given ``rollout_log``), one line per prompt group
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

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlavr.advantages import oracle_cag
from rlavr.answers import AnswerSpace, get_answer_space
from rlavr.budget import Budget
from rlavr.engine import AcquisitionEngine
from rlavr.labels import DatasetOracle, LabelLedger
from rlavr.metrics import auroc
from rlavr.rollout_log import DEFAULT_ANSWER_SPACE, ReplayLog, load_rollout_log, recorded_answer_space
from rlavr.strategies.base import capabilities_of
from rlavr.types import Route

__all__ = ["DEFAULT_ANSWER_SPACE", "DEFAULT_STRATEGIES", "ReplayLog", "ReplayResult", "auroc", "load_rollout_log",
           "recorded_answer_space", "replay", "replay_table"]

DEFAULT_STRATEGIES = ("random", "entropy", "prob", "care", "oracle")


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
    from rlavr.bench.runner import build_strategy  # the config-error wrapping shared with rlavr bench

    strategy = build_strategy(name, strategy_kwargs)
    req = capabilities_of(strategy).requires
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
    from rlavr.bench.runner import build_strategy

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
