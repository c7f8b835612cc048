r"""Answer margin: query the closest races between the two most popular answers; drop votes too close to call.

A user-style rule (load by path ``strategies/answer_margin.py:AnswerMargin`` or through an entry point; see
``docs/writing-a-rule.md``). **Loading a rule by path executes the file's code**: only load files you trust.

For prompt :math:`i` let :math:`n^{(1)}_i \ge n^{(2)}_i` be the sizes of its two largest answer clusters
(0 when absent) and :math:`G` the group size. The *margin* is

.. math:: m_i = \frac{n^{(1)}_i - n^{(2)}_i}{G} \in [0, 1],

and the acquisition score is :math:`s_i = 1 - m_i`: a tie between the top two answers (:math:`m = 0`) is the
most wanted label, a unanimous group (:math:`m = 1`) the least. Groups without any valid answer score 0 and
are never queried (every rollout scores 0 against any label: the GRPO advantage is 0 whatever the label).

Routing: the ``budget.remaining`` highest scores among the other groups are queried; groups with a known label
are queried for free. Of the rest, a pseudo-label whose margin is below ``min_margin`` is considered too close
to call and the group is DROPPED; the others are pseudo-labelled with weight

.. math:: w_i = m_i^{\gamma}

(``gamma = 0`` gives weight 1, the default). The ``-mask`` form drops every group that is not queried.
Everything is vectorised over the batch; the rule is deterministic (no randomness).
"""

from __future__ import annotations

import math

import numpy as np

from rlavr.budget import BudgetView
from rlavr.strategies.base import Strategy
from rlavr.types import Acquisition, RolloutBatch, Route

__all__ = ["AnswerMargin", "answer_margin"]


def answer_margin(cluster_sizes: np.ndarray, G: int) -> np.ndarray:  # paper notation
    """``(B,)`` margin ``(n1 - n2) / G`` from ``(B, G)`` per-cluster sizes (any column order)."""
    sizes = np.asarray(cluster_sizes, dtype=np.float64)
    if sizes.ndim != 2:
        raise ValueError(f"answer_margin: cluster_sizes must be (B, G), got shape {sizes.shape}")
    if sizes.shape[1] >= 2:
        top2 = -np.partition(-sizes, 1, axis=1)[:, :2]   # (B, 2): largest, second largest
    else:  # G = 1: there is no second cluster
        top2 = np.concatenate([sizes, np.zeros_like(sizes)], axis=1)
    return (top2[:, 0] - top2[:, 1]) / float(G)


class AnswerMargin(Strategy):
    """Query by smallest top-1/top-2 answer margin; drop pseudo-labels with margin < ``min_margin``.

    Args:
        mask: drop every group that is not queried (``answer-margin-mask``).
        seed: seed of the private RNG (unused: the rule is deterministic).
        min_margin: pseudo-labels whose margin is below this are dropped, in ``[0, 1]`` (0 keeps all).
        gamma: pseudo-label weight exponent, ``w = margin ** gamma``, ``>= 0``.
    """

    name = "answer-margin"
    description = "User rule: query the smallest top-1/top-2 answer margins; drop pseudo-labels below min_margin."
    requires = frozenset({"answers"})
    supports_mask = True

    def __init__(self, mask: bool = False, seed: int = 0, min_margin: float = 0.0, gamma: float = 0.0) -> None:
        super().__init__(mask=mask, seed=seed)
        for field, value in (("min_margin", min_margin), ("gamma", gamma)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"AnswerMargin.{field}: expected a finite number, got {value!r}")
        if not 0.0 <= min_margin <= 1.0:
            raise ValueError(f"AnswerMargin.min_margin: must lie in [0, 1], got {min_margin!r}")
        if gamma < 0:
            raise ValueError(f"AnswerMargin.gamma: must be >= 0, got {gamma!r}")
        self.min_margin = float(min_margin)
        self.gamma = float(gamma)

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        votes = batch.votes
        margin = answer_margin(votes.cluster_sizes, batch.G)
        has_answer = votes.n_valid > 0
        scores = np.where(has_answer, 1.0 - margin, 0.0)
        pseudo_w = margin**self.gamma if self.gamma > 0 else np.ones_like(margin)
        acq = self.route_by_score(scores, budget, eligible=has_answer, pseudo_weights=pseudo_w)
        routes = acq.routes.copy()
        routes[(routes == Route.PSEUDO) & (margin < self.min_margin)] = Route.DROP
        return Acquisition(routes=routes, weights=acq.weights, scores=acq.scores,
                           metrics={"margin_mean": float(margin.mean()),
                                    "close_call_dropped": float(((acq.routes == Route.PSEUDO)
                                                                 & (routes == Route.DROP)).sum())})

    def state_dict(self) -> dict:
        return {**super().state_dict(), "min_margin": self.min_margin, "gamma": self.gamma}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.min_margin = float(state.get("min_margin", self.min_margin))
        self.gamma = float(state.get("gamma", self.gamma))
