r"""Oracle-CAG: query the prompts with the largest TRUE Corrective Advantage Gap (docs/strategies/oracle.md).

A research upper bound: it PEEKS at the ground truth of every prompt in the batch (``requires={"labels"}``)
to compute

.. math:: \mathrm{CAG} = \lVert A(r_{GT}) - A(r_{pseudo}) \rVert_2

with population-std GRPO advantages (:func:`rlavr.advantages.oracle_cag`), then queries the top-CAG prompts
within the budget. The labels it QUERIES are charged through the ledger like any other strategy's; the peek
is free (it stands for "what a perfect selector would do").

Forms:

* ``oracle``: the rest keep their pseudo-labels at full weight;
* ``oracle-mask``: the rest are dropped;
* ``oracle-decay``: the rest keep pseudo-labels with advantage :math:`\times e^{-k\,\mathrm{CAG}}` (``k=100``,
  inferred from CARE's ``SOFT_ADV=100``; paper Eq. 36 was lost in extraction). As every non-zero CAG is
  >= 2.83 for G = 8, this zeroes wrong votes and keeps right ones.

``r_GT[j]`` grades rollout ``j`` against the ground truth and ``r_pseudo[j]`` against the majority answer, both
with the batch's answer space (``binary_reward(answer_j, label)``, as in CARE's code; invalid answers get 0).
Clustering uses the batch's answer space (CARE's Oracle uses exact string ``Counter`` voting; the difference
only matters for answers that are equivalent but spelled differently).

Partial ground truth: a group whose reference label is ``None`` (the oracle's ``reference()`` does not know it)
has no true CAG. It is *unverifiable* (:meth:`~rlavr.strategies.base.Strategy.reference_known`): score 0, never
bought by the peek (a label it already owns is still used, free), and routed like any group the oracle did not
select: pseudo at weight 1 (``oracle``, and ``oracle-decay``: no evidence, no decay), dropped (``oracle-mask``).
Without this rule ``correctness(None)`` (all False) would give it ``CAG = ||A(r_pseudo)||`` and buy it first.
Metrics: ``reference_coverage`` (fraction of groups with a reference); ``vote_correct_ratio`` is over those.

``state_dict`` stores ``decay``; :meth:`OracleCAG.load_state_dict` refuses a state saved with another ``decay``
(an ``oracle-decay`` checkpoint restored into plain ``oracle`` would silently change the training signal).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rlavr.advantages import oracle_cag
from rlavr.budget import BudgetView
from rlavr.strategies.base import Strategy
from rlavr.strategies.registry import register
from rlavr.types import Acquisition, RolloutBatch, Route


@register(aliases=("oracle-cag",))
class OracleCAG(Strategy):
    name = "oracle"
    description = "Research upper bound: query the prompts with the largest true CAG (peeks at labels; queries charged)."
    requires = frozenset({"answers", "labels"})
    supports_mask = True  # select honours self.mask (route_by_score drops instead of pseudo-labelling)

    def __init__(self, mask: bool = False, seed: int = 0, decay: float | None = None) -> None:
        super().__init__(mask=mask, seed=seed)
        if decay is not None and (not np.isfinite(decay) or decay < 0):
            raise ValueError(f"OracleCAG.decay: must be a finite number >= 0, got {decay!r}")
        if decay is not None and mask:
            raise ValueError("OracleCAG: decay and mask are exclusive (decay keeps pseudo-labels, down-weighted)")
        self.decay = decay

    @property
    def failed_query_route(self) -> Route:
        """``oracle-mask``: DROP (never pseudo-labels). ``oracle``: PSEUDO at weight 1, like every group the
        budget did not reach. ``oracle-decay``: DROP, because it queries the largest true CAGs, whose decayed
        pseudo weight ``exp(-k CAG)`` is 0 for the default ``k`` (every non-zero CAG is >= 2.83 for G = 8): its own
        policy for such a group, had the budget not reached it, is no training signal."""
        if self.mask or self.decay is not None:
            return Route.DROP
        return Route.PSEUDO

    @property
    def display_name(self) -> str:
        if self.decay is not None:
            return "oracle-decay"
        return super().display_name

    def true_cag(self, batch: RolloutBatch) -> np.ndarray:
        """``(B,)`` true CAG; 0 for a group without a reference label (unverifiable, see module docstring)."""
        has = self.reference_known(batch)
        # r_pseudo[j] = reward against the majority answer, exactly what pseudo-labelled training would use
        gap = oracle_cag(batch.reference_correct, batch.pseudo_correct, batch.valid)
        return np.where(has, gap, 0.0)

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        has = self.reference_known(batch)
        gap = self.true_cag(batch)
        pseudo_w = np.where(has, np.exp(-self.decay * gap), 1.0) if self.decay is not None else 1.0
        vote_ok = batch.majority_correct
        metrics = {"true_cag_mean": float(gap[has].mean()) if has.any() else 0.0,
                   "reference_coverage": float(has.mean())}
        if has.any():
            metrics["vote_correct_ratio"] = float(vote_ok[has].mean())
        return self.route_by_score(gap, budget, eligible=has, pseudo_weights=pseudo_w, metrics=metrics)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        s = super().state_dict()
        s["decay"] = self.decay
        return s

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "decay" in state:
            saved = None if state["decay"] is None else float(state["decay"])
            if saved != self.decay:
                raise ValueError(f"{type(self).__name__}.load_state_dict: the state was saved with decay={saved!r} "
                                 f"but this strategy has decay={self.decay!r}; build it with "
                                 f"get_strategy({self.name!r}, decay={saved!r}) to resume that run")
        super().load_state_dict(state)


@register
class OracleDecay(OracleCAG):
    name = "oracle-decay"
    description = "Oracle-CAG keeping pseudo-labels with advantage x exp(-k*CAG), k=100 (peeks at labels)."
    supports_mask = False

    def __init__(self, seed: int = 0, decay: float = 100.0, mask: bool = False) -> None:
        super().__init__(mask=mask, seed=seed, decay=decay)
