"""The pool stage: the labels a strategy buys for a *pool* of prompts before the first training step.

PivotTrace (probes), UncertaintyConsistency (offline PBC on a labelled pool) and positive-negative pairing (pair
confirmation) calibrate on a pool before training. The strategy only says which pool labels it wants
(:meth:`~rlavr.strategies.base.Strategy.pool_label_requests`, round after round, reading a
:class:`~rlavr.types.PoolProgress`); the engine buys them
(:meth:`AcquisitionEngine.fit_pool <rlavr.engine.AcquisitionEngine.fit_pool>`, through :func:`buy_pool_labels`)
and hands the labels to the strategy's :meth:`~rlavr.strategies.base.Strategy.fit_pool`. No strategy module
imports this one: the dependency runs from the engine to the strategies only.

How pool labels count against the budget
----------------------------------------
The pool is ONE pre-training step of ``N`` prompts, recorded in the engine's ledger as prompts seen at the
reserved step key :data:`POOL_STEP` (idempotent: refitting does not count the pool twice). Hence, for every kind
of :class:`~rlavr.budget.Budget`:

* ``ratio``: the global cap after the pool is ``floor(ratio x (N + prompts seen in training so far))``: the pool
  gets ``floor(ratio x N)`` labels and every later training step still gets its own share;
* ``total``: shared with training, as always;
* ``per_step`` / ``per_step_ratio``: the pool step's cap is ``per_step`` / ``ceil(per_step_ratio x N)``, summed
  over every pool purchase of the fit (a per-step-only budget such as ``"0.2/step"`` caps the pool too).

Prompts seen are counted per presentation (as for training steps): the pool's rollouts are generated, so a pool
prompt that is also trained on counts once for the pool and once per training step.

Every purchase goes through :meth:`AcquisitionEngine.buy <rlavr.engine.AcquisitionEngine.buy>`, the engine's
one purchase path (the one its training steps use): ``oracle_timeout`` per call, ``max_retries`` retries with
exponential ``backoff``, labels already in the ledger free. Ids another live writer is still buying after the
ledger's wait (``busy``) are retried like failures (``retry_busy=True``), never asked of the oracle here, never
charged here; what is still busy at the end is reported, not used. If the oracle still raises after the retries
the error propagates (``raise_on_error=True``; pre-training: fail loudly); labels bought before that are persisted
and reused for free by the next attempt. The pool's prompts are recorded with the ledger's public
:meth:`~rlavr.labels.LabelLedger.record_pool`; the pool's reservations are filed under the run's pool step key, where
the pool step's per-step cap counts them (:func:`pool_step_charged`; also ledger-wide in the meta table,
:data:`POOL_CHARGED_KEY`). The strategies' pages (docs/strategies/index.md, "Pool-level labels") describe the
stage from the user's side.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rlavr.budget import BudgetView
from rlavr.labels import POOL_STEP as LEDGER_POOL_STEP
from rlavr.labels import PurchaseResult
from rlavr.types import PoolProgress, RolloutBatch

if TYPE_CHECKING:  # pragma: no cover
    from rlavr.engine import AcquisitionEngine

logger = logging.getLogger(__name__)

__all__ = ["POOL_CHARGED_KEY", "POOL_STEP", "PoolProgress", "PoolStageResult", "buy_pool_labels",
           "pool_budget_view", "pool_step_charged", "progress_metrics", "record_round"]

POOL_STEP = LEDGER_POOL_STEP
"""Reserved ledger step key of the pre-training pool stage (its prompts seen; :data:`rlavr.labels.POOL_STEP`). Below
every training step (they count from 0), so the ledger's position (``LabelLedger.last_step``, MAX over step keys)
and the resume rewind (``drop_steps_after(k)`` deletes keys ``> k >= -1``) never touch it. Pool labels themselves
are recorded at purchase step 0 (``purchase`` takes steps >= 0) and filed under this step key of the run
(:func:`pool_step_charged`)."""

POOL_CHARGED_KEY = "rlavr.pool_labels_charged"
"""Ledger meta key: labels charged by pool purchases, over every run sharing the ledger (a statistic; the pool step's
per-step cap counts the run's own pool labels, :func:`pool_step_charged`)."""

_OUTCOMES = ("bought", "reused", "refused", "failed", "busy")


@dataclass
class PoolStageResult:
    """What one :meth:`AcquisitionEngine.fit_pool <rlavr.engine.AcquisitionEngine.fit_pool>` did (also kept as
    ``engine.last_pool_stage``).

    Attributes:
        metrics: the strategy's ``fit_pool`` values plus ``pool_labels_bought`` / ``_reused`` / ``_refused`` /
            ``_failed`` / ``_busy`` (what ``fit_pool`` returns); ``{}`` for a strategy without a pool stage.
        budget: the budget after the pool stage (:func:`pool_budget_view`): ``spent`` = labels charged so far,
            ``cap`` = the global cap with the pool counted as prompts seen (``None`` = no global cap),
            ``remaining`` = what the pool step could still buy. Integrations log these instead of recomputing
            them from the engine's internals.
        progress: the purchase record the strategy read (empty for a strategy without a pool stage).
        pool_size: ``N``, the pool's prompts (``pool.B``).
        ran: whether the strategy has a pool stage (False: nothing was recorded nor bought).
    """

    metrics: dict[str, float]
    budget: BudgetView
    progress: PoolProgress = field(default_factory=PoolProgress)
    pool_size: int = 0
    ran: bool = True


def record_round(progress: PoolProgress, want: Sequence[str], res: PurchaseResult) -> None:
    """File one purchase round's outcome in ``progress`` (the engine's side of the record)."""
    progress.rounds += 1
    progress.requested += list(want)
    progress.labels.update(res.labels)
    progress.bought += res.bought
    progress.reused += res.reused + res.resumed
    progress.refused += res.refused
    progress.failed += res.failed
    progress.busy += res.busy


def progress_metrics(progress: PoolProgress) -> dict[str, float]:
    """``pool_labels_bought`` / ``_reused`` / ``_refused`` / ``_failed`` / ``_busy``: ids per outcome."""
    return {f"pool_labels_{k}": float(len(getattr(progress, k))) for k in _OUTCOMES}


def pool_step_charged(engine: AcquisitionEngine) -> int:
    """Labels charged by ``engine``'s run at its pool step (what the pool step's per-step cap has used): each
    run sharing a ledger has its own pool step, as it has its own training steps."""
    return engine.ledger.charged_at(POOL_STEP)


def pool_budget_view(engine: AcquisitionEngine, pool: RolloutBatch) -> BudgetView:
    """The budget as the pool step sees it now: ``known`` = pool labels owned (or reserved), ``spent`` = labels
    charged, ``cap`` = the global cap at the prompts seen so far (the pool counts once it is recorded),
    ``remaining`` = new pool labels the pool step may still buy (its per-step cap shared by every pool purchase)."""
    return engine.budget_view(pool, position=POOL_STEP)


def buy_pool_labels(engine: AcquisitionEngine, pool: RolloutBatch, prompt_ids: Sequence[str],
                    pool_size: int | None = None) -> PurchaseResult:
    """Buy labels for ``prompt_ids`` of ``pool`` at the pool stage (see the module docstring for the budget).

    Args:
        engine: the :class:`~rlavr.engine.AcquisitionEngine` whose ledger, budget, oracle and retry settings
            are used.
        pool: the pool batch (ids and prompt texts).
        prompt_ids: ids to label, most wanted first (duplicates ignored).
        pool_size: ``N``, the prompts of the pool stage (default ``pool.B``).
    Returns:
        a :class:`~rlavr.labels.PurchaseResult` over all attempts: ``labels`` (every label obtained),
        ``bought`` (charged here), ``reused`` (free), ``refused`` (over budget), ``failed`` (no label after the
        retries; not charged), ``resumed``, ``busy`` (another live writer still buying them).
    Raises:
        ValueError: an id not in ``pool``, or ``pool_size < 1``.
        Exception: whatever the oracle raised, after ``engine.max_retries`` retries.
    """
    pos = {pid: n for n, pid in enumerate(pool.ids)}
    ids = list(dict.fromkeys(str(i) for i in prompt_ids))
    missing = [i for i in ids if i not in pos]
    if missing:
        raise ValueError(f"buy_pool_labels.prompt_ids: {missing[0]!r} is not in the pool ({len(missing)} missing)")
    n_pool = pool.B if pool_size is None else pool_size
    if isinstance(n_pool, bool) or not isinstance(n_pool, int) or n_pool < 1:
        raise ValueError(f"buy_pool_labels.pool_size: expected an int >= 1, got {pool_size!r}")
    ledger, budget = engine.ledger, engine.budget
    ledger.record_pool(n_pool)  # the pool is prompts seen (idempotent)
    seen = ledger.prompts_seen
    g = budget.global_cap(seen)
    s = budget.step_cap(n_pool)

    def limit(charged: int) -> int:  # evaluated inside the ledger's write lock, at every attempt
        lim = len(ids)
        if g is not None:
            lim = min(lim, g - charged)
        if s is not None:
            lim = min(lim, s - pool_step_charged(engine))  # the pool step's cap, shared by every pool purchase
        return max(0, lim)

    def count(res: PurchaseResult) -> None:
        if res.bought:
            ledger.set_meta(POOL_CHARGED_KEY, int(ledger.get_meta(POOL_CHARGED_KEY, 0)) + len(res.bought))

    # the pool's reservations are filed under the run's pool step key: its per-step cap counts them
    return engine.buy(ids, [pool.prompts[pos[i]] for i in ids], limit, 0, retry_busy=True, raise_on_error=True,
                      on_purchase=count, position=POOL_STEP)
