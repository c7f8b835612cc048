r"""Entropy: query the prompts whose answer clusters are most spread out (docs/strategies/entropy.md).

For a group with cluster sizes :math:`n_c` over VALID answers, :math:`p_c = n_c / \sum n_c` and

.. math:: H = -\sum_c p_c \ln \max(p_c, 10^{-12})

(0 when no answer is valid). Highest entropy first; ties go to the lower batch index (stable sort).
"""

from __future__ import annotations

from rlavr.budget import BudgetView
from rlavr.strategies.base import Strategy
from rlavr.strategies.registry import register
from rlavr.types import Acquisition, RolloutBatch


@register
class Entropy(Strategy):
    name = "entropy"
    description = "Query the prompts with the highest answer-cluster entropy (most disagreement) first."
    requires = frozenset({"answers"})
    supports_mask = True  # select honours self.mask (route_by_score drops instead of pseudo-labelling)

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        h = batch.votes.entropy
        return self.route_by_score(h, budget, metrics={"entropy_mean": float(h.mean())})
