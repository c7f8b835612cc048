"""Pool-level label purchases: the ONE path by which a strategy buys labels before training (``fit_pool``).

PivotTrace (probes), UncertaintyConsistency (offline PBC on a labelled pool) and positive-negative pairing (pair
confirmation) buy ground truth for a *pool* of prompts before the first training step.
:meth:`Strategy.fit_pool_with_engine <rlavr.strategies.base.Strategy.fit_pool_with_engine>` drives it (asking
the strategy's :meth:`~rlavr.strategies.base.Strategy.pool_label_requests` hook what to buy, round after round)
and every purchase goes through :func:`buy_pool_labels`.

How pool labels count against the budget
----------------------------------------
The pool is ONE pre-training step of ``N`` prompts, recorded in the engine's ledger as prompts seen at the
reserved step key :data:`POOL_STEP` (idempotent: refitting does not count the pool twice). Hence, for every kind of :class:`~rlavr.budget.Budget`:

* ``ratio``: the global cap after the pool is ``floor(ratio x (N + prompts seen in training so far))``: the pool
  gets ``floor(ratio x N)`` labels and every later training step still gets its own share (before, the cap was
  evaluated over ``max(prompts seen, N)`` but the pool was never recorded, so the pool's labels were taken from
  the training steps' share);
* ``total``: shared with training, as always;
* ``per_step`` / ``per_step_ratio``: the pool step's cap is ``per_step`` / ``ceil(per_step_ratio x N)``, summed
  over every pool purchase of the fit (before, a per-step-only budget such as ``"0.2/step"`` put no cap at all
  on pool purchases).

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
:data:`POOL_CHARGED_KEY`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rlavr.labels import POOL_STEP as LEDGER_POOL_STEP
from rlavr.labels import PurchaseResult
from rlavr.types import Label, RolloutBatch

if TYPE_CHECKING:  # pragma: no cover
    from rlavr.engine import AcquisitionEngine

logger = logging.getLogger(__name__)

__all__ = ["POOL_CHARGED_KEY", "POOL_STEP", "PoolProgress", "buy_pool_labels", "pool_step_charged"]

POOL_STEP = LEDGER_POOL_STEP
"""Reserved ledger step key of the pre-training pool stage (its prompts seen; :data:`rlavr.labels.POOL_STEP`). Below
every training step (they count from 0), so the ledger's position (``LabelLedger.last_step``, MAX over step keys)
and the resume rewind (``drop_steps_after(k)`` deletes keys ``> k >= -1``) never touch it. Pool labels themselves
are recorded at purchase step 0 (``purchase`` takes steps >= 0) and filed under this step key of the run
(:func:`pool_step_charged`)."""

POOL_CHARGED_KEY = "rlavr.pool_labels_charged"
"""Ledger meta key: labels charged by pool purchases, over every run sharing the ledger (a statistic; the pool step's
per-step cap counts the run's own pool labels, :func:`pool_step_charged`)."""


@dataclass
class PoolProgress:
    """What :meth:`~rlavr.strategies.base.Strategy.fit_pool_with_engine` has bought so far (given to the
    strategy's :meth:`~rlavr.strategies.base.Strategy.pool_label_requests` hook each round).

    Attributes:
        owned: labels of pool prompts that were already in the ledger when the fit started (free to request).
        labels: labels obtained in this fit (bought or reused), by prompt id: what ``fit_pool`` receives.
        requested: every id requested in this fit, in order (never requested twice).
        bought, reused, refused, failed, busy: ids by outcome (see :class:`~rlavr.labels.PurchaseResult`).
        rounds: purchase rounds done.
        scratch: free space for the strategy's hook (e.g. a candidate order drawn once per fit).
    """

    owned: dict[str, Label] = field(default_factory=dict)
    labels: dict[str, Label] = field(default_factory=dict)
    requested: list[str] = field(default_factory=list)
    bought: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    rounds: int = 0
    scratch: dict[str, Any] = field(default_factory=dict)

    def add(self, want: Sequence[str], res: PurchaseResult) -> None:
        self.rounds += 1
        self.requested += list(want)
        self.labels.update(res.labels)
        self.bought += res.bought
        self.reused += res.reused + res.resumed
        self.refused += res.refused
        self.failed += res.failed
        self.busy += res.busy

    def metrics(self) -> dict[str, float]:
        return {f"pool_labels_{k}": float(len(getattr(self, k)))
                for k in ("bought", "reused", "refused", "failed", "busy")}


def pool_step_charged(engine: AcquisitionEngine) -> int:
    """Labels charged by ``engine``'s run at its pool step (what the pool step's per-step cap has used): each
    run sharing a ledger has its own pool step, as it has its own training steps."""
    return engine.ledger.charged_at(POOL_STEP)


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
