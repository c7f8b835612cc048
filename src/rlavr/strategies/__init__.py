"""Acquisition strategies. Importing this package registers every built-in strategy.

Use :func:`get_strategy` to build one by name (``"care"``, ``"random-mask"``), by file path
(``"my_rules.py:MyRule"``) or pass an instance; :func:`available` lists them.
"""

from rlavr.strategies import (
    care,
    entropy,
    gt,
    oracle,
    pivottrace,
    posneg_pairing,
    prob,
    random_sampling,
    ttrl,
    uncertainty_consistency,
    vote_reliability,
)
from rlavr.strategies.base import SIGNALS, Strategy, StrategyProtocol, top_k
from rlavr.strategies.registry import available, get_strategy, load_strategy_class, register

BUILTIN_MODULES = (care, entropy, gt, oracle, pivottrace, posneg_pairing, prob, random_sampling, ttrl,
                   uncertainty_consistency, vote_reliability)
"""The modules of the built-in strategies: each registers its classes when imported (above)."""

__all__ = [
    "SIGNALS",
    "Strategy",
    "StrategyProtocol",
    "available",
    "get_strategy",
    "load_strategy_class",
    "register",
    "top_k",
]
