"""rlavr: Reinforcement Learning with Active Verifiable Rewards.

After the policy samples G rollouts per prompt, an acquisition strategy decides, under a label budget, which
prompts get a ground-truth label (query), which keep their majority-vote pseudo-label (pseudo) and which are
dropped. See ``rlavr.strategies`` for the strategies, ``rlavr.trl`` for the TRL trainer and ``rlavr.bench``
for the side-by-side benchmark.
"""

from rlavr.answers import (
    AnswerSpace,
    ExactAnswers,
    IntegerAnswers,
    KnightsKnavesAnswers,
    MathAnswers,
    get_answer_space,
)
from rlavr.budget import Budget, BudgetView
from rlavr.engine import AcquisitionEngine, BudgetExceededError, StepResult
from rlavr.ledger import LabelLedger, LedgerError
from rlavr.oracles import CallableOracle, DatasetOracle, Oracle, OracleError
from rlavr.strategies import Strategy, available, get_strategy, register
from rlavr.types import Acquisition, Label, PromptGroup, Rollout, RolloutBatch, Route
from rlavr.votes import MajorityVote, majority_vote

__version__ = "0.1.0"

__all__ = [
    "Acquisition",
    "AcquisitionEngine",
    "AnswerSpace",
    "Budget",
    "BudgetExceededError",
    "BudgetView",
    "CallableOracle",
    "DatasetOracle",
    "ExactAnswers",
    "IntegerAnswers",
    "KnightsKnavesAnswers",
    "Label",
    "LabelLedger",
    "LedgerError",
    "MajorityVote",
    "MathAnswers",
    "Oracle",
    "OracleError",
    "PromptGroup",
    "Rollout",
    "RolloutBatch",
    "Route",
    "StepResult",
    "Strategy",
    "available",
    "get_answer_space",
    "get_strategy",
    "majority_vote",
    "register",
]
