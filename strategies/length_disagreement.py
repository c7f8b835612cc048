r"""Response-length disagreement: query the prompts whose rollouts disagree most in length.

A user-style rule (load by path ``strategies/length_disagreement.py:LengthDisagreement`` or through an entry
point; see ``docs/writing-a-rule.md``). **Loading a rule by path executes the file's code**: only load files
you trust.

Intuition: when a policy is sure of a solution its G samples tend to follow the same reasoning path and have
similar lengths; a wide spread of lengths signals competing strategies (and often competing answers). The
score is a scale-free dispersion, the population standard deviation of the log-lengths

.. math:: s_i = \operatorname{std}_j \log(1 + L_{ij}),

optionally mixed with the answer-cluster entropy :math:`H_i` (``entropy_mix`` :math:`= \lambda`):
:math:`s_i \leftarrow (1-\lambda)\, s_i + \lambda\, H_i`. Truncated rollouts (hit the length limit) are
counted at their truncated length. ``G = 1`` gives :math:`s = 0` (no spread). Groups without any valid answer
are never queried. The rest are pseudo-labelled (or dropped in the ``-mask`` form).
"""

from __future__ import annotations

import math

import numpy as np

from rlavr.budget import BudgetView
from rlavr.strategies.base import Strategy
from rlavr.types import Acquisition, RolloutBatch

__all__ = ["LengthDisagreement", "length_dispersion"]


def length_dispersion(lengths: np.ndarray) -> np.ndarray:
    """``(B,)`` population std of ``log(1 + L)`` over each row of ``(B, G)`` non-negative token counts."""
    lengths = np.asarray(lengths, dtype=np.float64)
    if lengths.ndim != 2:
        raise ValueError(f"length_dispersion: lengths must be (B, G), got shape {lengths.shape}")
    if np.any(lengths < 0) or not np.all(np.isfinite(lengths)):
        raise ValueError("length_dispersion: lengths must be finite and >= 0")
    return np.log1p(lengths).std(axis=1)


class LengthDisagreement(Strategy):
    """Query by the spread of response lengths (see module docstring for the maths).

    Args:
        mask: drop every group that is not queried (``length-disagreement-mask``).
        seed: seed of the private RNG (unused: the rule is deterministic).
        entropy_mix: weight in ``[0, 1]`` of the answer-cluster entropy mixed into the score.
    """

    name = "length-disagreement"
    description = "User rule: query the prompts whose rollouts' lengths are most spread out (std of log-lengths)."
    requires = frozenset({"answers"})
    supports_mask = True

    def __init__(self, mask: bool = False, seed: int = 0, entropy_mix: float = 0.0) -> None:
        super().__init__(mask=mask, seed=seed)
        if isinstance(entropy_mix, bool) or not isinstance(entropy_mix, int | float) or not math.isfinite(
            entropy_mix
        ) or not 0.0 <= entropy_mix <= 1.0:
            raise ValueError(f"LengthDisagreement.entropy_mix: expected a number in [0, 1], got {entropy_mix!r}")
        self.entropy_mix = float(entropy_mix)

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        spread = length_dispersion(batch.lengths)
        scores = (1.0 - self.entropy_mix) * spread + self.entropy_mix * batch.votes.entropy
        return self.route_by_score(scores, budget, eligible=batch.votes.n_valid > 0,
                                   metrics={"length_spread_mean": float(spread.mean())})

    def state_dict(self) -> dict:
        return {**super().state_dict(), "entropy_mix": self.entropy_mix}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.entropy_mix = float(state.get("entropy_mix", self.entropy_mix))
