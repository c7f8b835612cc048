"""GT: query every prompt (the fully supervised upper bound; plain RLVR).

With a limited budget, GT queries groups in batch order until the budget runs out and DROPS the rest (it never
uses pseudo-labels), so "GT at budget b" is the "-mask"-style ablation of label scarcity. With an unlimited
budget ``RLAVRGRPOTrainer`` + GT trains exactly like ``GRPOTrainer``.
"""

from __future__ import annotations

import numpy as np

from rlavr.budget import BudgetView
from rlavr.strategies.base import Strategy
from rlavr.strategies.registry import register
from rlavr.types import Acquisition, RolloutBatch, Route


@register(aliases=("ground-truth",))
class GroundTruth(Strategy):
    name = "gt"
    description = "Query every prompt (fully supervised RLVR upper bound); groups beyond the budget are dropped."
    requires = frozenset()
    supports_mask = False

    @property
    def trains_on_pseudo_labels(self) -> bool:
        """Never: a query whose label cannot be bought is dropped (``on_oracle_failure="auto"``)."""
        return False

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        B = batch.B
        # score = earlier in the batch is preferred, so a budget shortfall drops the tail deterministically
        scores = (B - np.arange(B)).astype(np.float64)
        acq = self.route_by_score(scores, budget)
        routes = np.where(acq.routes == Route.PSEUDO, Route.DROP, acq.routes)
        return Acquisition(routes=routes, weights=acq.weights, scores=scores)
