"""Does ``answer_space`` judge completions the way the reward functions do? (docs/trl.md, "The diff").

rlavr votes with the answer space and writes the winner into the label column; a reward function that parses
completions differently (say ``answer_space="integer"`` next to TRL's ``accuracy_reward``, which reads
``\\boxed{}``) then grades answers the vote never saw. :class:`RewardAgreementCheck` compares, on the first rollouts
whose group has a bought ground-truth label, the answer space's verdict (:meth:`AnswerSpace.grade`) with every
reward function that looks like a correctness check (all its values 0 or 1), and logs one WARNING per reward
function that disagrees on most rollouts that either side calls correct. It only warns: a reward may legitimately
grade something else. Deterministic, no RNG, no collective.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from rlavr.answers import AnswerSpace

logger = logging.getLogger(__name__)

__all__ = ["RewardAgreementCheck"]


class RewardAgreementCheck:
    """Compare the answer space with binary reward functions on rollouts with a bought label, until decided.

    Each call to :meth:`observe` looks at one round's rollouts with a bought label; a reward function is decided
    once at least ``min_rows`` of them are called correct by it or by the answer space (with fewer, the next round
    is looked at too, for at most ``max_rounds`` rounds). A decided function with a disagreement share of at least
    ``share`` is warned about, once.

    Args:
        space: the run's answer space.
        reward_names: one name per reward function (TRL's ``reward_func_names``).
        min_rows, share, max_rounds: see above.
    """

    def __init__(self, space: AnswerSpace, reward_names: Sequence[str], *, min_rows: int = 4, share: float = 0.5,
                 max_rounds: int = 20) -> None:
        self.space = space
        self.names = list(reward_names)
        self.min_rows = int(min_rows)
        self.share = float(share)
        self.max_rounds = int(max_rounds)
        self.rounds = 0
        self.decided: dict[str, float] = {}
        """Reward name -> share of disagreement among the rollouts either side calls correct."""

    @property
    def done(self) -> bool:
        return self.rounds >= self.max_rounds or len(self.decided) == len(self.names)

    def observe(self, texts: Sequence[str], answers: Sequence[str | None], labels: Sequence[str | None],
                rewards: np.ndarray, *, log: bool = True) -> None:
        """One round: ``texts`` / ``answers`` (extracted) / ``labels`` (the bought label, ``None`` for rows without
        one) per rollout, ``rewards`` ``(n, F)`` (NaN: the function returned ``None``)."""
        if self.done:
            return
        self.rounds += 1
        keep = [i for i, lab in enumerate(labels) if lab is not None]
        if not keep:
            return
        verdict = np.array([self.space.grade(answers[i], labels[i]) for i in keep], dtype=bool)
        for f, name in enumerate(self.names):
            if name in self.decided:
                continue
            col = np.asarray(rewards, dtype=np.float64)[keep, f]
            ok = ~np.isnan(col)
            if not ok.any() or not np.isin(col[ok], (0.0, 1.0)).all():
                continue  # not a correctness check (graded, or only None so far)
            said = col > 0.5
            either = ok & (said | verdict)
            if int(either.sum()) < self.min_rows:
                continue
            differ = either & (said != verdict)
            rate = float(differ.sum() / either.sum())
            self.decided[name] = rate
            if rate >= self.share and log:
                i = int(np.flatnonzero(differ)[0])
                row = keep[i]
                logger.warning(
                    "rlavr: answer_space=%r and reward function %r disagree on %d of %d rollouts with a bought label "
                    "that either calls correct (e.g. completion %r, label %r: the reward says %s, the answer space "
                    "extracts %r and says %s). The majority vote, and so every pseudo-label, comes from the answer "
                    "space: choose one that extracts and compares answers the way this reward does (TRL's "
                    "accuracy_reward: 'math'), or ignore this if the reward grades something else.",
                    getattr(self.space, "name", type(self.space).__name__), name, int(differ.sum()),
                    int(either.sum()), texts[row][-200:], labels[row], "correct" if said[i] else "wrong",
                    answers[row], "correct" if verdict[i] else "wrong")
