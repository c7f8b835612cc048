r"""Prob: query the prompts the policy is least confident about (docs/strategies/prob.md).

Per rollout, the mean per-token probability :math:`\bar p_j = \frac{1}{T_j}\sum_t e^{\log p_t}`; per prompt,
:math:`v = \frac{1}{G}\sum_j \bar p_j`. The LOWEST :math:`v` is queried first, so the score returned is
:math:`1 - v` (higher = more wanted). Needs per-token log-probabilities (or their mean, as a fallback:
:math:`e^{\text{mean}\log p}`, documented in :attr:`RolloutBatch.mean_token_prob`).

An empty completion (no tokens) is scored, not refused: as in CARE (:math:`\sum_t p_t / \max(T_j, 1)`) its
:math:`\bar p_j` is 0, a lowest-confidence rollout that pulls its prompt's :math:`v` down (see
:attr:`RolloutBatch.empty`).
"""

from __future__ import annotations

from rlavr.budget import BudgetView
from rlavr.strategies.base import Strategy
from rlavr.strategies.registry import register
from rlavr.types import Acquisition, RolloutBatch


@register
class Prob(Strategy):
    name = "prob"
    description = "Query the prompts with the lowest mean token probability (least confident policy) first."
    requires = frozenset({"answers", "logprobs"})
    supports_mask = True  # select honours self.mask (route_by_score drops instead of pseudo-labelling)

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        v = batch.mean_token_prob.mean(axis=1)
        return self.route_by_score(1.0 - v, budget, metrics={"avg_probability_mean": float(v.mean()),
                                                            "avg_probability_min": float(v.min()),
                                                            "avg_probability_max": float(v.max())})
