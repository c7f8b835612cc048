"""The acquisition engine: one step of "decide, buy, label", independent of the training framework.

:class:`AcquisitionEngine` owns the strategy, the oracle, the budget and the ledger. Per step it

1. records the step's prompts in the ledger (the ratio budget counts prompts seen);
2. asks the strategy to :meth:`~rlavr.strategies.base.Strategy.select` routes, weights and scores;
3. checks the request against the budget (a strategy asking for more than ``remaining`` new labels is a bug:
   :class:`BudgetExceededError`);
4. buys the queried labels with :meth:`AcquisitionEngine.buy` (the one purchase path, also used by the pool
   stage: through the ledger, persisted before use, never twice, never over budget), retrying oracle failures
   with exponential backoff; a group whose label could not be obtained (failed, or still being bought by
   another writer: ``busy``) is routed to ``on_oracle_failure``;
5. returns a :class:`StepResult` with the label each group is rewarded against (ground truth, majority vote,
   or none for dropped groups), effective weights and metrics.

The TRL trainer (:mod:`rlavr.trl`), the benchmark runner and offline replay all call this one engine, so a
strategy behaves identically everywhere.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from rlavr.advantages import grpo_advantages
from rlavr.answers import AnswerSpace, get_answer_space
from rlavr.budget import Budget, BudgetView
from rlavr.labels import LEGACY_RUN, LabelLedger, Oracle, PurchaseResult, call_with_timeout, oracle_reference
from rlavr.strategies.base import Strategy
from rlavr.strategies.registry import get_strategy
from rlavr.types import Acquisition, Label, RolloutBatch, Route

logger = logging.getLogger(__name__)

__all__ = ["AcquisitionEngine", "BudgetExceededError", "StepResult"]


class _TimeLimitedOracle:
    """Wraps an oracle so that each ``label`` call gives up after ``timeout`` seconds (see ``oracle_timeout``)."""

    def __init__(self, oracle: Oracle, timeout: float) -> None:
        self.oracle = oracle
        self.timeout = timeout

    def label(self, prompt_ids: Sequence[str], prompts: Sequence[str]) -> list[Label | None]:
        return call_with_timeout(self.oracle, prompt_ids, prompts, self.timeout)


class BudgetExceededError(RuntimeError):
    """A strategy asked for more new labels than the budget allows (the engine never buys them)."""


@dataclass
class StepResult:
    """Everything decided at one step.

    Attributes:
        batch: the batch, with reference labels attached when the oracle has a free ``reference()`` lookup
            (for metrics and logs only).
        strategy_batch: the batch the strategy sees in ``select``, ``update`` and ``transform_advantages``:
            ``batch`` itself for a strategy that declares ``requires={"labels"}`` (Oracle-CAG), otherwise the
            same batch WITHOUT reference labels, so that no other rule can peek at the ground truth for free.
        acquisition: the strategy's raw decision.
        routes: ``(B,)`` final routes (a query whose label could not be bought falls back, see
            ``on_oracle_failure``; a pseudo group without any valid answer is dropped).
        weights: ``(B,)`` advantage weights (0 for dropped groups).
        labels: per group, the label rewards are computed against (``None`` = dropped).
        bought: prompt ids charged at this step.
        reused: prompt ids whose label came free from the ledger.
        failed: prompt ids the oracle could not label (not charged).
        metrics: scalars to log.
        busy: prompt ids of queried groups another live writer of the ledger was still buying when the ledger
            stopped waiting (not charged here, not used: the group falls back like a failure; metric
            ``labels_busy_this_step``).
        oracle_errors: oracle calls that raised or timed out at this step (retried; metric
            ``oracle_errors_this_step``).
    """

    batch: RolloutBatch
    acquisition: Acquisition
    routes: np.ndarray
    weights: np.ndarray
    labels: list[Label | None]
    bought: list[str]
    reused: list[str]
    failed: list[str]
    metrics: dict[str, float] = field(default_factory=dict)
    strategy_batch: RolloutBatch | None = None
    busy: list[str] = field(default_factory=list)
    oracle_errors: int = 0

    def __post_init__(self) -> None:
        if self.strategy_batch is None:
            self.strategy_batch = self.batch

    @property
    def seen_by_strategy(self) -> RolloutBatch:
        """``strategy_batch`` (typed): what the strategy's hooks are given."""
        assert self.strategy_batch is not None
        return self.strategy_batch

    @property
    def gt_labels(self) -> dict[str, Label]:
        """Ground-truth labels available this step (bought or reused), by prompt id."""
        return {self.batch.ids[i]: lab for i, lab in enumerate(self.labels)
                if self.routes[i] == Route.QUERY and lab is not None}


class AcquisitionEngine:
    """Routes prompt groups, buys labels and produces training labels (see module docstring).

    Args:
        strategy: a :class:`Strategy`, a registry name or a ``file.py:Class`` path.
        oracle: ground-truth source (``label(ids, prompts)``); ``reference(ids)`` if present gives free
            labels for metrics and for label-peeking strategies.
        budget: a :class:`Budget` or anything :meth:`Budget.parse` accepts (``0.2``, ``"13/step"``, ``500``).
        ledger: a :class:`LabelLedger` or a path (default: in memory, lost at exit).
        answer_space: how answers are extracted/clustered/graded (default exact strings).
        on_oracle_failure: route for a group whose label could not be bought after retries: ``"pseudo"`` or
            ``"drop"``.
        max_retries: oracle retries after the first failure.
        backoff: first retry delay in seconds (doubles each retry).
        strategy_kwargs: passed to :func:`get_strategy` when ``strategy`` is a name.
        oracle_timeout: seconds one oracle call may take (``None`` = wait forever). The call runs in a daemon
            worker thread; on timeout it counts as a failed attempt (retried with backoff like an exception)
            and its late answer is discarded, never persisted or charged (see :func:`~rlavr.labels.call_with_timeout`).
        run_id: the id under which this run's steps and purchases are recorded in the ledger (default: the
            ledger's, a fresh one for a new :class:`~rlavr.labels.LabelLedger`). Several runs may share one ledger
            (one global budget, per-run step accounting); :meth:`load_state_dict` restores the checkpoint's run id.
    """

    def __init__(
        self,
        strategy: Strategy | str,
        oracle: Oracle,
        budget: Budget | float | int | str | None = None,
        ledger: LabelLedger | str | None = None,
        answer_space: AnswerSpace | str | None = None,
        on_oracle_failure: Literal["pseudo", "drop"] = "pseudo",
        max_retries: int = 2,
        backoff: float = 0.5,
        strategy_kwargs: Mapping[str, Any] | None = None,
        oracle_timeout: float | None = None,
        run_id: str | None = None,
    ) -> None:
        self.strategy = get_strategy(strategy, **dict(strategy_kwargs or {}))
        if not callable(getattr(oracle, "label", None)):
            raise ValueError(f"oracle: expected an object with label(prompt_ids, prompts), got {type(oracle).__name__}")
        self.oracle = oracle
        self.budget = Budget.parse(budget)
        self.ledger = ledger if isinstance(ledger, LabelLedger) else LabelLedger(ledger or ":memory:")
        if run_id is not None:
            self.ledger.run_id = run_id
        self.answer_space = get_answer_space(answer_space)
        if on_oracle_failure not in ("pseudo", "drop"):
            raise ValueError(f"on_oracle_failure: expected 'pseudo' or 'drop', got {on_oracle_failure!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries: expected an int >= 0, got {max_retries!r}")
        for field_name, value in (("backoff", backoff), ("oracle_timeout", oracle_timeout)):
            if value is None and field_name == "oracle_timeout":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{field_name}: expected a finite number >= 0, got {value!r}")
        if oracle_timeout is not None and oracle_timeout <= 0:
            raise ValueError(f"oracle_timeout: must be > 0 seconds (or None to wait forever), got {oracle_timeout!r}")
        self.oracle_timeout = None if oracle_timeout is None else float(oracle_timeout)
        self.on_oracle_failure = on_oracle_failure
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)

    # ------------------------------------------------------------------ properties
    @property
    def spent(self) -> int:
        return self.ledger.n_charged

    @property
    def run_id(self) -> str:
        """The run's id in the ledger (its steps and purchases are recorded under it)."""
        return self.ledger.run_id

    def budget_view(self, batch: RolloutBatch, position: int | None = None) -> BudgetView:
        """What the strategy may buy for ``batch``; ``position``: the batch's step key, whose labels already
        charged by this run (a replayed step's) count against a per-step cap (``None``: none counted)."""
        # a pending reservation (left by a killed run) is already charged: completing it is free
        known = self.ledger.known(batch.ids) | self.ledger.reserved(batch.ids)
        charged = self.ledger.n_charged
        seen = self.ledger.prompts_seen
        at_step = 0 if position is None or self.budget.step_cap(batch.B) is None else self.ledger.charged_at(position)
        remaining = min(self.budget.allowed(charged, seen, batch.B, step_charged=at_step), int((~known).sum()))
        return BudgetView(remaining=remaining, known=known, spent=charged, cap=self.budget.global_cap(seen))

    # ------------------------------------------------------------------ the step
    def decide(self, batch: RolloutBatch, step: int, position: int | None = None) -> StepResult:
        """Route, buy and label one batch (see module docstring).

        Args:
            batch: the prompt groups.
            step: the training step (recorded with each bought label, used in messages).
            position: the key under which the ledger records this batch's prompts (``record_step``; a ratio
                budget counts them) and its purchases (a per-step cap counts what the key has charged, see
                :meth:`load_state_dict`). Default ``step``. A caller that decides several batches per training step
                (the TRL trainer with several generation rounds per optimiser step) passes a monotone round
                counter, since a repeated key is the same step (its prompts count once, its cap is shared).
        """
        B = batch.B
        key = step if position is None else position
        self.ledger.record_step(key, B)
        reference = oracle_reference(self.oracle, batch.ids)
        if "labels" in self.strategy.requires and reference is None:
            raise ValueError(f"strategy {self.strategy.name!r} peeks at labels (requires={{'labels'}}) but the "
                             f"oracle {type(self.oracle).__name__} has no reference() lookup")
        if reference is not None:
            batch = batch.with_reference_labels(reference)
        # the strategy sees the ground truth only when it declares that it peeks (Oracle-CAG); metrics always do
        peeks = "labels" in self.strategy.requires
        seen = batch if peeks or batch.reference_labels is None else batch.with_reference_labels(None)
        view = self.budget_view(batch, key)
        acq = self.strategy.select(seen, view)
        if not isinstance(acq, Acquisition):
            raise TypeError(f"strategy {self.strategy.name!r}.select returned {type(acq).__name__}, not Acquisition")
        if len(acq) != B:
            raise ValueError(f"strategy {self.strategy.name!r} returned {len(acq)} routes for {B} groups")
        # evaluation-only: a strategy may grade the decision it just made against the ground truth (CARE's
        # Stage-I precision, ...); the decision is fixed before, so this cannot leak labels into it
        diagnostics = getattr(self.strategy, "diagnostics", None)
        if diagnostics is not None and seen is not batch and batch.reference_labels is not None:
            acq = replace(acq, metrics={**acq.metrics, **diagnostics(batch, acq)})
        query = np.flatnonzero(acq.query)
        new = query[~view.known[query]]
        if new.size > view.remaining:
            raise BudgetExceededError(
                f"strategy {self.strategy.name!r} asked for {new.size} new labels but only {view.remaining} are "
                f"allowed at step {step} (budget: {self.budget.describe()}, spent {view.spent})")
        # buy in score order (most wanted first), so a shrinking budget keeps the best
        order = query[np.argsort(-acq.scores[query], kind="mergesort")]
        purchase = self._buy(batch, order, view.remaining, step, B, key)
        purchase_labels = purchase.labels

        routes = acq.routes.copy()
        weights = acq.weights.copy()
        labels: list[Label | None] = [None] * B
        majority = batch.votes.majority_answer
        for i in range(B):
            if routes[i] == Route.QUERY:
                lab = purchase_labels.get(batch.ids[i])
                if lab is not None:
                    labels[i] = lab
                    continue
                routes[i] = Route.PSEUDO if self.on_oracle_failure == "pseudo" else Route.DROP
                weights[i] = 1.0
            if routes[i] == Route.PSEUDO:
                if majority[i] is None:  # no valid answer -> no pseudo-label
                    routes[i] = Route.DROP
                else:
                    labels[i] = majority[i]
        weights = np.where(routes == Route.DROP, 0.0, weights)
        # resumed: a stale reservation, charged before, free now
        result = StepResult(batch=batch, acquisition=acq, routes=routes, weights=weights, labels=labels,
                            bought=list(purchase.bought), reused=list(purchase.reused) + list(purchase.resumed),
                            failed=list(purchase.failed), strategy_batch=seen, busy=list(purchase.busy),
                            oracle_errors=purchase.oracle_errors)
        result.metrics = self.metrics(result)
        return result

    def _buy(self, batch: RolloutBatch, order: np.ndarray, step_left: int, step: int, batch_size: int,
             position: int | None = None) -> PurchaseResult:
        """The labels of ``decide``: groups ``order`` (most wanted first) through :meth:`buy`, at most
        ``step_left`` new ones and never beyond ``budget.allowed`` (evaluated inside the ledger's write lock),
        recorded at step key ``position``."""
        seen = self.ledger.prompts_seen
        at_step = (0 if position is None or self.budget.step_cap(batch_size) is None
                   else self.ledger.charged_at(position))
        return self.buy([batch.ids[i] for i in order], [batch.prompts[i] for i in order],
                        lambda charged: self.budget.allowed(charged, seen, batch_size, step_charged=at_step), step,
                        max_new=step_left, position=position)

    def buy(
        self,
        ids: Sequence[str],
        prompts: Sequence[str],
        limit: int | Callable[[int], int],
        step: int,
        *,
        max_new: int | None = None,
        retry_busy: bool = False,
        raise_on_error: bool = False,
        on_purchase: Callable[[PurchaseResult], None] | None = None,
        position: int | None = None,
    ) -> PurchaseResult:
        """Buy labels for ``ids`` through the ledger with the engine's oracle settings: the ONE purchase path
        (training steps through :meth:`decide`, the pre-training pool stage through
        :func:`rlavr.strategies.pool.buy_pool_labels`).

        Labels already in the ledger are taken first (free; they survive an oracle outage). The others are
        bought with :meth:`LabelLedger.purchase <rlavr.labels.LabelLedger.purchase>` (reserved within the
        budget, persisted before they are returned, never charged twice); each oracle call is limited to
        ``oracle_timeout`` seconds. An oracle that raises or times out is retried up to ``max_retries`` times
        with exponential ``backoff`` (nothing is charged for a failed call); ids the oracle answered with
        ``None`` are retried the same way.

        Args:
            ids: prompt ids, most wanted first (a duplicate is bought once).
            prompts: the prompt texts the oracle sees, aligned with ``ids``.
            limit: the most NEW labels this call may charge. An int is an allowance for the whole call (what
                earlier attempts bought is subtracted). A callable receives the ledger's charged count at each
                attempt, inside the ledger's write lock (so concurrent writers never jointly overspend a global
                cap), and returns how many may be charged NOW; labels bought by earlier attempts are part of that
                count.
            step: the step recorded with each bought label (``>= 0``).
            max_new: with a callable ``limit``, an additional cap on the call's total new labels.
            retry_busy: retry the ids another live writer was still buying when the ledger stopped waiting
                (``busy``) like failures (never asked of the oracle here, never charged here). ``False``: report
                them at once.
            raise_on_error: when the oracle still raises after the retries, re-raise (labels bought by earlier
                attempts stay persisted). ``False``: return the ids still pending as ``failed``.
            on_purchase: called after every successful ledger purchase with its result (e.g. to count the
                charges of the pool stage).
            position: the step key recorded with each reservation (see :meth:`LabelLedger.purchase
                <rlavr.labels.LabelLedger.purchase>`); ``None``: counted against no step's cap.

        Returns:
            a :class:`~rlavr.labels.PurchaseResult` over every attempt: ``labels`` (owned + delivered),
            ``bought`` (charged here), ``reused`` (already owned, free), ``resumed`` (a killed writer's stale
            reservation completed; charged before, free now), ``refused`` (over the limit: never retried),
            ``failed`` (no label after the retries; not charged), ``busy`` (still being bought by another live
            writer: not used here) and ``oracle_errors`` (oracle calls that raised or timed out).
        """
        if len(ids) != len(prompts):
            raise ValueError(f"buy: {len(ids)} ids but {len(prompts)} prompts")
        if isinstance(limit, bool) or not (callable(limit) or isinstance(limit, int | np.integer)):
            raise ValueError(f"buy: limit must be an int or a callable, got {limit!r}")
        if not callable(limit):
            max_new = int(limit) if max_new is None else min(int(limit), int(max_new))
            per_attempt: Callable[[int], int] | None = None
        else:
            per_attempt = limit
        ids = [str(i) for i in ids]
        oracle: Oracle = self.oracle if self.oracle_timeout is None else _TimeLimitedOracle(self.oracle, self.oracle_timeout)
        # labels already owned are free and must survive an oracle outage: take them before calling it
        labels: dict[str, Label] = self.ledger.get_many(ids)
        bought: list[str] = []
        reused: list[str] = [i for i in ids if i in labels]
        resumed: list[str] = []
        refused: list[str] = []
        busy: list[str] = []
        errors = 0
        text: dict[str, str] = {}
        for i, p in zip(ids, prompts, strict=True):
            text.setdefault(i, p)
        pending = [i for i in ids if i not in labels]

        def result(failed: Sequence[str]) -> PurchaseResult:
            return PurchaseResult(labels=labels, bought=bought, reused=reused, refused=refused, failed=list(failed),
                                  resumed=resumed, busy=busy, oracle_errors=errors)

        if not pending:
            return result([])
        attempt = 0
        while True:
            def allowed(charged: int, _done: int = len(bought), _n: int = len(pending)) -> int:
                lim = _n if per_attempt is None else int(per_attempt(charged))
                if max_new is not None:
                    lim = min(lim, max_new - _done)
                return max(0, lim)
            try:
                res = self.ledger.purchase(pending, [text[i] for i in pending], oracle, allowed, step,
                                           position=position)
            except Exception as exc:  # oracle raised or timed out: reservations were released, nothing charged
                errors += 1
                if attempt >= self.max_retries:
                    logger.warning("rlavr: oracle failed %d times at step %d (%s); %d labels not obtained",
                                   attempt + 1, step, exc, len(pending))
                    if raise_on_error:
                        raise
                    return result(pending)
                delay = self.backoff * (2**attempt)
                logger.info("rlavr: oracle error at step %d (%s); retry %d in %.2fs", step, exc, attempt + 1, delay)
                time.sleep(delay)
                attempt += 1
                continue
            if on_purchase is not None:
                on_purchase(res)
            labels.update(res.labels)
            bought += res.bought
            reused += res.reused
            resumed += res.resumed
            refused += res.refused  # over the limit: never retried
            retry = list(res.failed) + (list(res.busy) if retry_busy else [])
            if not retry_busy:
                busy += res.busy
            if not retry or attempt >= self.max_retries:
                if retry_busy:
                    busy += res.busy
                if res.failed:
                    logger.warning("rlavr: oracle gave no label for %d prompts at step %d", len(res.failed), step)
                return result(res.failed)
            time.sleep(self.backoff * (2**attempt))
            attempt += 1
            pending = retry

    # ------------------------------------------------------------------ after the policy update
    def update(self, result: StepResult) -> None:
        """Let the strategy learn from the labels available this step (CARE's online classifier update)."""
        hook = getattr(self.strategy, "update", None)
        if hook is not None:
            hook(result.seen_by_strategy, result.acquisition, result.gt_labels)

    # ------------------------------------------------------------------ rewards / advantages (framework-neutral)
    def rewards(self, result: StepResult) -> np.ndarray:
        """``(B, G)`` binary rewards against each group's chosen label; NaN rows for dropped groups."""
        batch = result.batch
        r = batch.correctness(result.labels).astype(np.float64)
        r[result.routes == Route.DROP] = np.nan
        return r

    def advantages(self, result: StepResult, std: Literal["unbiased", "population", "none"] = "unbiased",
                   eps: float | None = None) -> np.ndarray:
        """``(B, G)`` GRPO advantages x group weights, then the strategy's ``transform_advantages`` hook."""
        adv = grpo_advantages(self.rewards(result), std=std, eps=eps) * result.weights[:, None]
        transform = getattr(self.strategy, "transform_advantages", None)
        out = adv if transform is None else transform(result.seen_by_strategy, result.acquisition, adv)
        if np.shape(out) != adv.shape:
            raise ValueError(f"strategy {self.strategy.name!r}.transform_advantages changed the shape "
                             f"{adv.shape} -> {np.shape(out)}")
        return np.asarray(out, dtype=np.float64)

    # ------------------------------------------------------------------ metrics
    def metrics(self, result: StepResult) -> dict[str, float]:
        batch = result.batch
        routes = result.routes
        B = batch.B
        m: dict[str, float] = {
            "route/query": float((routes == Route.QUERY).sum()),
            "route/pseudo": float((routes == Route.PSEUDO).sum()),
            "route/drop": float((routes == Route.DROP).sum()),
            "labels_bought_this_step": float(len(result.bought)),
            "labels_reused_this_step": float(len(result.reused)),
            "oracle_failures_this_step": float(len(result.failed)),
            "oracle_errors_this_step": float(result.oracle_errors),
            "labels_busy_this_step": float(len(result.busy)),
            "budget_spent": float(self.ledger.n_charged),
            "majority_ratio": float(batch.votes.majority_ratio.mean()),
            "valid_ratio": float(batch.valid.mean()),
        }
        ref = batch.reference_labels
        has_ref = np.array([lab is not None for lab in ref], dtype=bool) if ref is not None else np.zeros(B, bool)
        if has_ref.any():
            # label metrics over the groups whose ground truth the oracle's reference() knows
            ok = batch.majority_correct
            corr_gt = batch.reference_correct
            m["label_accuracy"] = float(ok[has_ref].mean())
            pseudo = (routes == Route.PSEUDO) & has_ref
            query = (routes == Route.QUERY) & has_ref
            if pseudo.any():
                m["pseudo_label_accuracy"] = float(ok[pseudo].mean())
            if query.any():
                m["query_vote_wrong_ratio"] = float((~ok[query]).mean())  # useful queries
            keep = (routes != Route.DROP) & has_ref
            if keep.any():
                train_r = batch.correctness(result.labels)
                m["reward_accuracy"] = float((train_r[keep] == corr_gt[keep]).mean())
            m["ground_truth_reward"] = float(corr_gt[has_ref].mean())
            m["pass@G"] = float(corr_gt[has_ref].any(axis=1).mean())
        for k, v in result.acquisition.metrics.items():
            m[f"strategy/{k}"] = float(v)
        m["batch_size"] = float(B)
        return m

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Strategy state, the ledger's position (incl. the run id) and the budget (plain data)."""
        return {"strategy": self.strategy.state_dict(), "ledger": self.ledger.state_dict(),
                "budget": self.budget.model_dump()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the strategy and the run id, and rewind the run's position in the ledger to the checkpoint's.

        The ledger must be the run's own (it holds at least the labels charged at the checkpoint, else
        ``ValueError``, raised before anything is changed). The run id becomes the checkpoint's (a checkpoint
        written before runs were recorded resumes :data:`~rlavr.labels.LEGACY_RUN`, the run a migrated ledger's
        old steps belong to). Steps this run recorded AFTER the checkpoint's position (a run that went on, or
        crashed, after saving) are forgotten, so that the prompts seen again when those steps re-run are
        counted once and a ratio budget allows exactly what it allowed the first time; other runs sharing the
        ledger are not touched. Labels bought after the checkpoint are kept (paid once, reused for free) and
        keep their step key: when a step re-runs, the labels it charged before count against its per-step cap.

        Invariant (tested for every budget form): when the replayed steps see the same batches and the strategy
        (whose state, RNG included, is restored) makes the same choices, a kill + resume charges exactly the
        labels of an uninterrupted run, at the same step keys. In every case, also when the replay sees other
        batches, no step key of the run is charged more than its per-step cap and the global cap is never
        exceeded.
        """
        saved = state.get("ledger", {})
        if saved and saved.get("n_charged", 0) > self.ledger.n_charged:
            raise ValueError(f"load_state_dict: the checkpoint saw {saved['n_charged']} charged labels but the ledger "
                             f"{self.ledger.path!r} holds {self.ledger.n_charged}; resume with the run's own ledger")
        self.strategy.load_state_dict(dict(state["strategy"]))
        if saved:
            self.ledger.run_id = str(saved.get("run_id") or LEGACY_RUN)
        if saved and saved.get("last_step") is not None:  # absent in older checkpoints: keep every step
            dropped = self.ledger.drop_steps_after(int(saved["last_step"]))
            if dropped:
                logger.info("rlavr: forgot %d ledger steps recorded after the checkpoint (step %d)", dropped,
                            int(saved["last_step"]))
