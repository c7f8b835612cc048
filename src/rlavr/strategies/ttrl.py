"""TTRL: majority-vote pseudo-labels for every prompt, no label bought (label-free RL; Zuo et al., 2025).

``ttrl-mask`` (CARE's "TTRL-mask", docs/strategies/ttrl.md) keeps only the groups whose majority vote is correct and
drops the others. It needs the ground truth to know that, so it PEEKS at labels (``requires={"labels"}``): a
research diagnostic of "perfect pseudo-label filtering", not a deployable strategy. It buys nothing.

Partial ground truth: a group whose reference label is ``None`` is *unverifiable*
(:meth:`~rlavr.strategies.base.Strategy.reference_known`): its vote is neither kept as correct nor counted as
wrong. It is dropped (``ttrl-mask`` trains only on votes verified correct), with score 0, and is left out of
``vote_correct_ratio``; ``reference_coverage`` reports the fraction of groups with a reference.
"""

from __future__ import annotations

import numpy as np

from rlavr.budget import BudgetView
from rlavr.strategies.base import Strategy
from rlavr.strategies.registry import register
from rlavr.types import Acquisition, RolloutBatch, Route


@register
class TTRL(Strategy):
    name = "ttrl"
    description = "Label-free: every prompt rewarded against its majority vote (test-time RL); buys nothing."
    requires = frozenset({"answers"})
    supports_mask = False

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        B = batch.B
        routes = np.full(B, Route.PSEUDO, dtype=np.int8)
        # groups with no valid answer have no pseudo-label: nothing to reward against
        routes[batch.votes.majority < 0] = Route.DROP
        return Acquisition(routes=routes, weights=np.ones(B), scores=np.zeros(B))


@register
class TTRLMask(Strategy):
    name = "ttrl-mask"
    description = "Research diagnostic: TTRL keeping only groups whose vote is correct (peeks at labels, buys nothing)."
    requires = frozenset({"answers", "labels"})
    supports_mask = False

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        has = self.reference_known(batch)
        ok = batch.majority_correct & has
        routes = np.where(ok, Route.PSEUDO, Route.DROP).astype(np.int8)
        metrics = {"reference_coverage": float(has.mean())}
        if has.any():
            metrics["vote_correct_ratio"] = float(ok[has].mean())
        return Acquisition(routes=routes, weights=np.ones(batch.B), scores=(has & ~ok).astype(np.float64),
                           metrics=metrics)
