"""Random: query a uniformly random subset of prompts within the budget (docs/strategies/random.md).

The draw uses the strategy's private generator (seeded, saved in ``state_dict``), never the global RNG.
``random-mask`` drops the prompts that were not queried (the default in CARE's scripts).
"""

from __future__ import annotations

from rlavr.budget import BudgetView
from rlavr.strategies.base import Strategy
from rlavr.strategies.registry import register
from rlavr.types import Acquisition, RolloutBatch


@register
class RandomSampling(Strategy):
    name = "random"
    description = "Query a uniformly random subset of prompts up to the budget; the rest keep majority votes."
    requires = frozenset({"answers"})
    supports_mask = True  # select honours self.mask (route_by_score drops instead of pseudo-labelling)

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        # one draw of B uniforms per step, whatever the budget: the stream does not depend on spending
        scores = self.rng.random(batch.B)
        return self.route_by_score(scores, budget)
