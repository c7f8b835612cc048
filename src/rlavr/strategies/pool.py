"""Backwards-compatible names for the pool stage; the stage itself is engine-side now.

A strategy only says which pool labels it wants (``pool_label_requests``, reading a
:class:`~rlavr.types.PoolProgress`); the engine buys them (:meth:`AcquisitionEngine.fit_pool
<rlavr.engine.AcquisitionEngine.fit_pool>`, with the accounting in :mod:`rlavr.pool_stage`). This module keeps
``PoolProgress`` and ``POOL_STEP`` importable from their old place; the purchase helpers (``buy_pool_labels``,
``pool_step_charged``, ``POOL_CHARGED_KEY``) moved to :mod:`rlavr.pool_stage`, and asking this module for them
raises an ``ImportError`` / ``AttributeError`` saying so (no module of :mod:`rlavr.strategies` imports the
engine or the purchase).
"""

from __future__ import annotations

from rlavr.labels import POOL_STEP
from rlavr.types import PoolProgress

__all__ = ["POOL_STEP", "PoolProgress"]

_MOVED = frozenset({"buy_pool_labels", "pool_step_charged", "POOL_CHARGED_KEY"})


def __getattr__(name: str) -> object:
    if name in _MOVED:
        raise AttributeError(f"rlavr.strategies.pool.{name} moved to rlavr.pool_stage.{name} (the engine buys pool "
                             "labels: AcquisitionEngine.fit_pool / AcquisitionEngine.buy_pool_labels)")
    raise AttributeError(f"module 'rlavr.strategies.pool' has no attribute {name!r}")
