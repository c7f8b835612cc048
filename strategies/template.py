r"""Template for a user-written acquisition rule. Copy this file, rename the class and ``name``, edit ``select``.

Load it without installing anything::

    AcquisitionEngine("strategies/template.py:LowAgreement", oracle)            # Python
    RLAVRConfig(..., strategy="strategies/template.py:LowAgreement")            # TRL

**Loading a rule by path executes the file's code** with your privileges, exactly like ``import``: only load
files you trust.

The rule implemented here is deliberately simple but real: *query the prompts whose rollouts agree least*.
With :math:`x_i` the size of the majority answer cluster of prompt :math:`i` and :math:`G` the group size,

.. math:: s_i = 1 - x_i / G

(the complement of TTRL's ``majority_ratio``). The ``budget.remaining`` highest scores are queried; prompts
without any valid answer are never queried (a label cannot give them a non-zero GRPO advantage: every rollout
scores 0 against any label); the rest keep their majority-vote pseudo-label with weight ``pseudo_weight``
(or are dropped in the ``-mask`` form, ``mask=True``).

Contract (check a rule with ``rlavr.testing.check_strategy(LowAgreement)`` or
``rlavr check strategies/template.py:LowAgreement``; the repository's ``tests/contract`` runs the same checks):

* ``select`` returns an :class:`~rlavr.types.Acquisition` with one route/weight/score per group, finite scores,
  weights in ``[0, 1]``, and at most ``budget.remaining`` queries among groups with ``budget.known == False``
  (known groups are free to query);
* ``supports_mask = True`` only when ``select`` honours ``self.mask`` (with ``mask=True`` a group that is not
  queried is dropped, never pseudo-labelled; ``route_by_score`` does it);
* the constructor accepts ``seed`` (and ``mask`` when ``supports_mask``); randomness comes only from
  ``self.rng`` (never ``np.random.*`` / ``torch.rand*`` globals);
* ``state_dict()`` / ``load_state_dict()`` round-trip everything that influences later decisions;
* all-invalid groups and ``G = 1`` work.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rlavr.budget import BudgetView
from rlavr.strategies.base import Strategy
from rlavr.types import Acquisition, Label, RolloutBatch

__all__ = ["LowAgreement"]


class LowAgreement(Strategy):
    """Query the prompts with the smallest majority cluster (see module docstring for the maths).

    Args:
        mask: the ``-mask`` form: prompts that are not queried are dropped instead of pseudo-labelled.
        seed: seed of ``self.rng`` (unused by this deterministic rule, kept for the contract).
        pseudo_weight: advantage weight in ``[0, 1]`` of pseudo-labelled prompts.
    """

    # --- registry metadata: `name` is what `rlavr strategies` shows and what entry points register
    name = "low-agreement"
    description = "Template rule: query the prompts whose majority cluster is smallest (1 - majority_ratio)."
    # signals read from the batch: "answers", "logprobs", "hidden_states", "attentions", "labels" (peeks at GT)
    requires = frozenset({"answers"})
    supports_mask = True

    def __init__(self, mask: bool = False, seed: int = 0, pseudo_weight: float = 1.0) -> None:
        super().__init__(mask=mask, seed=seed)
        if isinstance(pseudo_weight, bool) or not isinstance(pseudo_weight, int | float) or not (
            0.0 <= float(pseudo_weight) <= 1.0
        ):
            raise ValueError(f"LowAgreement.pseudo_weight: expected a number in [0, 1], got {pseudo_weight!r}")
        self.pseudo_weight = float(pseudo_weight)
        self.steps_seen = 0  # example of learnable/state: saved by state_dict below

    # ------------------------------------------------------------------ the one required method
    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        votes = batch.votes                                   # majority vote over clustered answers, (B, ...) arrays
        scores = 1.0 - votes.majority_ratio                   # (B,) vectorised; higher = more wanted
        eligible = votes.n_valid > 0                          # a label cannot help a group with no valid answer
        return self.route_by_score(
            scores, budget, eligible=eligible, pseudo_weights=self.pseudo_weight,
            metrics={"agreement_mean": float(votes.majority_ratio.mean())},
        )

    # ------------------------------------------------------------------ optional hooks (delete what you don't need)
    def update(self, batch: RolloutBatch, acquisition: Acquisition, labels: Mapping[str, Label]) -> None:
        """Called after the policy update with the ground-truth labels available this step."""
        self.steps_seen += 1

    def transform_advantages(self, batch: RolloutBatch, acquisition: Acquisition,
                             advantages: np.ndarray) -> np.ndarray:
        """``(B, G)`` advantages after routing and group weights; return the same shape. Identity here."""
        return advantages

    def state_dict(self) -> dict:
        return {**super().state_dict(), "pseudo_weight": self.pseudo_weight, "steps_seen": self.steps_seen}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.pseudo_weight = float(state.get("pseudo_weight", self.pseudo_weight))
        self.steps_seen = int(state.get("steps_seen", 0))
