"""The acquisition engine: one step of "decide, buy, label", independent of the training framework.

:class:`AcquisitionEngine` owns the strategy, the oracle, the budget and the ledger. Per step it

1. records the step's prompts in the ledger (the ratio budget counts prompts seen);
2. asks the strategy to :meth:`~rlavr.strategies.base.Strategy.select` routes, weights and scores;
3. checks the request against the budget (a strategy asking for more than ``remaining`` new labels is a bug:
   :class:`BudgetExceededError`);
4. buys the queried labels with :meth:`AcquisitionEngine.buy` (the one purchase path, also used by the pool
   stage, :meth:`AcquisitionEngine.fit_pool`: through the ledger, persisted before use, never twice, never over
   budget), retrying oracle failures with exponential backoff; every answer is validated before it is stored or
   charged (an invalid one counts as "no label"); a group whose label could not be obtained (failed, invalid, or
   still being bought by another writer: ``busy``) follows ``on_oracle_failure`` (default ``"auto"``: the
   strategy's own policy);
5. returns a :class:`StepResult` with the label each group is rewarded against (ground truth, majority vote,
   or none for dropped groups), effective weights and metrics.

The TRL trainer (:mod:`rlavr.trl`), the benchmark runner and offline replay all call this one engine, so a
strategy behaves identically everywhere.
"""

from __future__ import annotations

import logging
import math
import reprlib
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

import numpy as np

from rlavr.advantages import grpo_advantages, has_signal, weigh_and_transform
from rlavr.answers import AnswerSpace, get_answer_space
from rlavr.budget import Budget, BudgetView
from rlavr.labels import (
    LEGACY_RUN,
    LabelLedger,
    LedgerError,
    LedgerMismatchError,
    MajorityVote,
    Oracle,
    OracleError,
    PurchaseResult,
    call_with_timeout,
    oracle_fingerprint,
    oracle_reference,
)
from rlavr.pool_stage import (
    PoolStageResult,
    buy_pool_labels,
    pool_budget_view,
    progress_metrics,
    record_round,
)
from rlavr.strategies.base import Capabilities, Strategy, capabilities_of
from rlavr.strategies.registry import get_strategy
from rlavr.types import Acquisition, Label, PoolProgress, RolloutBatch, Route, check_prompt_id

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_MAX_LABEL_CHARS", "AcquisitionEngine", "BudgetExceededError", "OracleFailureError", "StepResult", "transform_step_advantages",
           "check_oracle_answer"]

DEFAULT_MAX_LABEL_CHARS = 65536
"""Default ``max_label_chars``: the longest oracle answer (in characters) the engine stores as a label."""

OnOracleFailure = Literal["auto", "pseudo", "drop", "raise"]

_preview_repr = reprlib.Repr()
_preview_repr.maxstring = 60
_preview_repr.maxother = 60
_preview_repr.maxlist = _preview_repr.maxtuple = _preview_repr.maxdict = _preview_repr.maxset = 4


def _preview(value: Any) -> str:
    """A short, safe ``repr`` of ``value`` for messages (never the whole of a 10 MB answer)."""
    try:
        text = _preview_repr.repr(value)
    except Exception as exc:  # a broken __repr__ must not hide the real problem
        text = f"<{type(value).__name__} with a failing repr: {type(exc).__name__}>"
    if isinstance(value, str | bytes) and len(value) > _preview_repr.maxstring:
        text += f" ({len(value)} {'characters' if isinstance(value, str) else 'bytes'})"
    return text


def check_oracle_answer(value: Any, max_chars: int = DEFAULT_MAX_LABEL_CHARS) -> tuple[Label | None, str | None]:
    """Validate one oracle answer: ``(label, None)`` if it may be stored as ground truth, else ``(None, reason)``.

    Accepted: a ``str`` with a non-blank character and at most ``max_chars`` characters (stored as is), an ``int``
    (not a ``bool``) or a finite ``float`` (stored as ``str(value)``: how labels already flow from
    :class:`~rlavr.labels.DatasetOracle` and :class:`~rlavr.labels.CallableOracle`, e.g. integer answers of a
    dataset), within the same length limit. ``None`` means "no label" and is not an error: ``(None, None)``.
    Everything else (``''``, blank strings, ``bool``, NaN, inf, ``bytes``, lists, dicts, arbitrary objects, an
    over-long label) is refused with the reason.
    """
    if value is None:
        return None, None
    if isinstance(value, bool | np.bool_):
        return None, "a bool is not a label (return the string 'True'/'False' if that is the answer)"
    if isinstance(value, str):
        label = str(value)
    elif isinstance(value, int | np.integer):
        try:
            label = str(int(value))
        except ValueError:  # an int beyond Python's str conversion limit
            return None, f"an int too large to convert (max_label_chars={max_chars})"
    elif isinstance(value, float | np.floating):
        if not math.isfinite(float(value)):
            return None, "not a finite number"
        label = str(value)
    else:
        return None, f"a {type(value).__name__}, not a str, int or finite float"
    if not label.strip():
        return None, "an empty or blank string"
    if len(label) > max_chars:
        return None, f"{len(label)} characters, more than max_label_chars={max_chars}"
    return label, None


class _CheckedOracle:
    """Wraps the user's oracle for one :meth:`AcquisitionEngine.buy` call: validates what it returns BEFORE the
    ledger persists or charges anything.

    The result must be a sequence of one answer per prompt id (a ``str``, ``bytes`` or mapping result, a
    non-iterable or a wrong length raise :class:`~rlavr.labels.OracleError`: a failed call, retried like an
    exception). Each answer goes through :func:`check_oracle_answer`; an invalid one becomes ``None`` (the
    ledger then releases the reservation uncharged and the engine retries it like any unanswered id) and is
    recorded in :attr:`invalid` as ``(prompt_id, preview, reason)`` with one warning per call. Exceptions the
    oracle raises are recorded in :attr:`errors` (so ``on_oracle_failure="raise"`` can chain them).
    """

    def __init__(self, oracle: Oracle, max_chars: int) -> None:
        self.oracle = oracle
        self.max_chars = max_chars
        self.invalid: list[tuple[str, str, str]] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()

    def label(self, prompt_ids: Sequence[str], prompts: Sequence[str]) -> list[Label | None]:
        name = type(self.oracle).__name__
        try:
            raw = self.oracle.label(prompt_ids, prompts)
        except BaseException as exc:
            with self._lock:
                self.errors.append(exc)
            raise
        n = len(prompt_ids)
        if isinstance(raw, str | bytes | bytearray | Mapping) or not isinstance(raw, Iterable):
            raise OracleError(f"oracle {name} returned {type(raw).__name__} {_preview(raw)} for {n} prompts; "
                              f"expected a list of {n} labels (one per prompt, None = no label)")
        try:
            answers = list(raw)
        except TypeError as exc:
            raise OracleError(f"oracle {name} returned an unreadable {type(raw).__name__} ({exc}); expected a list "
                              f"of {n} labels") from exc
        if len(answers) != n:
            raise OracleError(f"oracle {name} returned {len(answers)} labels for {n} prompts")
        out: list[Label | None] = []
        bad: list[tuple[str, str, str]] = []
        for pid, value in zip(prompt_ids, answers, strict=True):
            label, reason = check_oracle_answer(value, self.max_chars)
            if reason is not None:
                bad.append((str(pid), _preview(value), reason))
            out.append(label)
        if bad:
            with self._lock:
                self.invalid.extend(bad)
            shown = "; ".join(f"{pid!r}: {prev} ({why})" for pid, prev, why in bad[:5])
            more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
            logger.warning("rlavr: oracle %s gave %d invalid answers (not stored, not charged; retried like a "
                           "missing label): %s%s", name, len(bad), shown, more)
        return out


class _TimeLimitedOracle:
    """Wraps an oracle so that each ``label`` call gives up after ``timeout`` seconds (see ``oracle_timeout``)."""

    def __init__(self, oracle: Oracle, timeout: float) -> None:
        self.oracle = oracle
        self.timeout = timeout

    def label(self, prompt_ids: Sequence[str], prompts: Sequence[str]) -> list[Label | None]:
        return call_with_timeout(self.oracle, prompt_ids, prompts, self.timeout)


def _private_copy(batch: RolloutBatch, reference_labels: Sequence[Label | None] | None) -> RolloutBatch:
    """A copy of ``batch`` for a strategy hook: its own group list, id/prompt lists and vote arrays, so that
    mutating them in place cannot reach the engine's batch (groups and rollouts are frozen and shared)."""
    v = batch.votes
    votes = MajorityVote(cluster_ids=v.cluster_ids.copy(), cluster_sizes=v.cluster_sizes.copy(),
                         majority=v.majority.copy(), majority_size=v.majority_size.copy(),
                         majority_first=v.majority_first.copy(), majority_answer=list(v.majority_answer),
                         n_valid=v.n_valid.copy())
    return RolloutBatch(list(batch.groups), votes, batch.answer_space, reference_labels=reference_labels,
                        step=batch.step)


class BudgetExceededError(RuntimeError):
    """A strategy asked for more new labels than the budget allows (the engine never buys them)."""


class OracleFailureError(RuntimeError):
    """A queried label could not be obtained and ``on_oracle_failure="raise"`` stops the run.

    Raised by :meth:`AcquisitionEngine.decide` after the retries; chained (``__cause__``) to the oracle's own
    exception when it raised or timed out. Labels bought before the failure stay persisted and charged once (a
    resumed run reuses them); nothing is charged for the failed ids.
    """


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
        oracle_fallback: per queried group whose label could not be obtained (failed, invalid or busy), the
            route it finally took (``PSEUDO`` or ``DROP``; metrics ``oracle_failed_to_pseudo`` /
            ``oracle_failed_to_drop``).
        invalid: ``(prompt_id, preview, reason)`` of every oracle answer refused by validation at this step (not
            stored, not charged; metric ``oracle_invalid_answers``).
        budget: the :class:`~rlavr.budget.BudgetView` the strategy was given (``cap`` = the global cap at this
            step; ``spent`` = labels charged before it). Integrations read the cap here instead of recomputing it.
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
    oracle_fallback: dict[str, Route] = field(default_factory=dict)
    invalid: list[tuple[str, str, str]] = field(default_factory=list)
    budget: BudgetView | None = None

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
            Default ``None`` = **unlimited**: unlike the TRL trainer (``RLAVRConfig.budget`` defaults to ``0.2``)
            the engine is a building block where no budget means no limit; pass one whenever labels cost. An
            int is a count of labels (``1`` = one label in all, which logs a warning), a float a share.
        ledger: a :class:`LabelLedger` or a path (default: in memory, lost at exit).
        answer_space: how answers are extracted/clustered/graded (default exact strings).
        on_oracle_failure: what happens to a queried group whose label could not be obtained after the retries
            (the oracle raised, timed out, answered ``None`` or an invalid value, or another live writer was still
            buying it):

            * ``"auto"`` (default): the strategy's own policy. A rule that never trains on pseudo-labels
              (:attr:`Strategy.trains_on_pseudo_labels <rlavr.strategies.base.Strategy.trains_on_pseudo_labels>`
              false: ``gt``, every ``-mask`` form, pos-neg pairing, uncertainty consistency) DROPS it; the others
              send it where :attr:`~rlavr.strategies.base.Strategy.failed_query_route` says, at
              :attr:`~rlavr.strategies.base.Strategy.failed_query_weight` (``random``, ``entropy``, ``prob``,
              ``oracle``, ``pivottrace``: the majority vote, as for a group the budget did not reach; CARE and
              ``oracle-decay``: DROP). A strategy without these attributes (a bare ``StrategyProtocol``) drops.
            * ``"pseudo"``: the majority-vote pseudo-label at weight 1, whatever the strategy (the default
              before ``"auto"``). Given for a strategy that never trains on pseudo-labels, it is honoured (an explicit
              choice, e.g. to reproduce an older run) with a ``UserWarning`` at construction.
            * ``"drop"``: no training signal for the group.
            * ``"raise"``: stop the run with :class:`OracleFailureError` (chained to the oracle's exception when
              it raised or timed out); labels bought before stay persisted and charged once.

            Either way a pseudo group without any valid answer is dropped, every step with a failure logs one
            warning (how many failed and where they went) and the metrics ``oracle_failed_to_pseudo`` /
            ``oracle_failed_to_drop`` count them.
        max_retries: oracle retries after the first failure.
        backoff: first retry delay in seconds (doubles each retry).
        strategy_kwargs: passed to :func:`get_strategy` when ``strategy`` is a name.
        oracle_timeout: seconds one oracle call may take (``None`` = wait forever). The call runs in a daemon
            worker thread; on timeout it counts as a failed attempt (retried with backoff like an exception)
            and its late answer is discarded, never persisted or charged (see :func:`~rlavr.labels.call_with_timeout`).
        max_label_chars: the longest oracle answer, in characters, stored as a label (default 65536). Every
            answer is validated before the ledger stores or charges it (:func:`check_oracle_answer`: a non-blank
            ``str``, an ``int`` or a finite ``float``, within this limit); an invalid one is not stored, not
            charged, retried like a missing label, reported with its id and a preview (warning, metric
            ``oracle_invalid_answers``), and the group then follows ``on_oracle_failure``.
        allow_foreign_ledger: use a ledger recorded with another dataset or answer space. The ledger records what
            it labels (the oracle's ``fingerprint()``, e.g. :meth:`DatasetOracle.fingerprint
            <rlavr.labels.DatasetOracle.fingerprint>`, and the answer space's name) on first use; by default a
            ledger that labels something else is refused with :class:`~rlavr.labels.LedgerMismatchError` (its labels
            would be reused as ground truth wherever prompt ids collide).

        run_id: the id under which this run's steps and purchases are recorded in the ledger (default: the
            ledger's, a fresh one for a new :class:`~rlavr.labels.LabelLedger`). Several runs may share one ledger
            (one global budget, per-run step accounting); :meth:`load_state_dict` restores the checkpoint's run id.

    Attributes:
        capabilities: what the strategy does besides ``select`` (:class:`~rlavr.strategies.base.Capabilities`),
            computed once; the engine asks it which hooks to call, never the strategy object.
        last_pool_stage: the outcome of the last :meth:`fit_pool` (:class:`~rlavr.pool_stage.PoolStageResult`:
            its metrics, and its ``budget`` view whose ``spent`` / ``cap`` an integration logs), ``None`` before.

    Raises:
        LedgerError: the ledger is damaged, foreign, or another dataset's (:class:`~rlavr.labels.LedgerMismatchError`).
    """

    def __init__(
        self,
        strategy: Strategy | str,
        oracle: Oracle,
        budget: Budget | float | int | str | None = None,
        ledger: LabelLedger | str | None = None,
        answer_space: AnswerSpace | str | None = None,
        on_oracle_failure: OnOracleFailure = "auto",
        max_retries: int = 2,
        backoff: float = 0.5,
        strategy_kwargs: Mapping[str, Any] | None = None,
        oracle_timeout: float | None = None,
        max_label_chars: int = DEFAULT_MAX_LABEL_CHARS,
        allow_foreign_ledger: bool = False,
        run_id: str | None = None,
    ) -> None:
        self.strategy = get_strategy(strategy, **dict(strategy_kwargs or {}))
        self._capabilities = capabilities_of(self.strategy)
        if not callable(getattr(oracle, "label", None)):
            raise ValueError(f"oracle: expected an object with label(prompt_ids, prompts), got {type(oracle).__name__}")
        self.oracle = oracle
        self.budget = Budget.parse(budget)
        self.ledger = ledger if isinstance(ledger, LabelLedger) else LabelLedger(ledger or ":memory:")
        if run_id is not None:
            self.ledger.run_id = run_id
        self.answer_space = get_answer_space(answer_space)
        if not isinstance(on_oracle_failure, str) or on_oracle_failure not in ("auto", "pseudo", "drop", "raise"):
            raise ValueError(f"on_oracle_failure: expected 'auto', 'pseudo', 'drop' or 'raise', got {on_oracle_failure!r}")
        if isinstance(max_label_chars, bool) or not isinstance(max_label_chars, int | np.integer) or max_label_chars < 1:
            raise ValueError(f"max_label_chars: expected an int >= 1, got {max_label_chars!r}")
        try:
            self.ledger.check_fingerprint(self.fingerprint(), allow_foreign=bool(allow_foreign_ledger))
        except BaseException:
            if not isinstance(ledger, LabelLedger):  # opened here: not left open behind the error
                self.ledger.close()
            raise
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
        self.on_oracle_failure: OnOracleFailure = on_oracle_failure
        self.max_label_chars = int(max_label_chars)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self._last_oracle_call: _CheckedOracle | None = None
        self.last_pool_stage: PoolStageResult | None = None
        if on_oracle_failure == "pseudo" and not self._trains_on_pseudo_labels():
            msg = (f"on_oracle_failure='pseudo': strategy {self._strategy_name()!r} never trains on pseudo-labels, "
                   "but its queries that cannot be bought will be pseudo-labelled (majority vote, weight 1) as asked; "
                   "use on_oracle_failure='auto' (or 'drop') to keep its policy")
            warnings.warn(msg, UserWarning, stacklevel=2)
            logger.warning("rlavr: %s", msg)

    # ------------------------------------------------------------------ capabilities
    @property
    def capabilities(self) -> Capabilities:
        """What the strategy does besides ``select`` (:class:`~rlavr.strategies.base.Capabilities`): which
        hooks the engine calls, whether it peeks at labels, its oracle-failure policy. Computed once, at
        construction and again after :meth:`load_state_dict` (which may change the strategy's ``mask``)."""
        return self._capabilities

    # ------------------------------------------------------------------ oracle-failure policy
    def _strategy_name(self) -> str:
        return str(getattr(self.strategy, "display_name", None) or getattr(self.strategy, "name", "?"))

    def _trains_on_pseudo_labels(self) -> bool:
        """The strategy's declaration; a strategy that declares nothing is taken NOT to (the safe side)."""
        return self._capabilities.trains_on_pseudo_labels

    def failure_route(self) -> tuple[Route, float] | None:
        """Where a queried group whose label could not be obtained goes now: ``(route, weight)`` with ``route``
        ``PSEUDO`` or ``DROP``, or ``None`` for ``on_oracle_failure="raise"`` (see the class docstring)."""
        mode = self.on_oracle_failure
        if mode == "raise":
            return None
        if mode == "pseudo":
            return Route.PSEUDO, 1.0
        if mode == "drop" or not self._trains_on_pseudo_labels():
            return Route.DROP, 0.0
        route, weight = self._capabilities.failed_query_route, self._capabilities.failed_query_weight
        if route == Route.QUERY:
            raise ValueError(f"strategy {self._strategy_name()!r}.failed_query_route: must be PSEUDO or DROP, "
                             f"got {route.name}")
        if isinstance(weight, bool) or not isinstance(weight, int | float | np.number) or not (0.0 <= weight <= 1.0):
            raise ValueError(f"strategy {self._strategy_name()!r}.failed_query_weight: expected a number in [0, 1], "
                             f"got {weight!r}")
        return route, (float(weight) if route == Route.PSEUDO else 0.0)

    def _check_acquisition(self, acq: Any, B: int, hook: str) -> Acquisition:
        """Re-validate what a strategy hook returned (its arrays are mutable after construction): an
        :class:`Acquisition` of ``B`` groups, known route codes, finite scores, weights finite in ``[0, 1]``."""
        name = self._strategy_name()
        if not isinstance(acq, Acquisition):
            raise TypeError(f"strategy {name!r}.{hook} returned {type(acq).__name__}, not Acquisition")
        if len(acq) != B:
            raise ValueError(f"strategy {name!r} returned {len(acq)} routes for {B} groups")
        for attr in ("routes", "weights", "scores"):
            arr = getattr(acq, attr)
            if not isinstance(arr, np.ndarray) or arr.shape != (B,):
                raise ValueError(f"strategy {name!r}.{hook}: Acquisition.{attr} must be a ({B},) array, got "
                                 f"{getattr(arr, 'shape', type(arr).__name__)}")
        bad = np.flatnonzero(~np.isin(acq.routes, [int(r) for r in Route]))
        if bad.size:
            raise ValueError(f"strategy {name!r}.{hook}: Acquisition.routes[{int(bad[0])}] = "
                             f"{acq.routes[bad[0]].item()!r} is not a Route code (0 query, 1 pseudo, 2 drop)")
        w = np.asarray(acq.weights, dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(w) | (w < 0) | (w > 1))
        if bad.size:
            raise ValueError(f"strategy {name!r}.{hook}: Acquisition.weights[{int(bad[0])}] = {w[bad[0]].item()!r}; "
                             "weights must be finite and in [0, 1]")
        sc = np.asarray(acq.scores, dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(sc))
        if bad.size:
            raise ValueError(f"strategy {name!r}.{hook}: Acquisition.scores[{int(bad[0])}] = {sc[bad[0]].item()!r}; "
                             "scores must be finite")
        return acq

    # ------------------------------------------------------------------ properties
    def fingerprint(self) -> dict[str, Any]:
        """What this engine's labels are (recorded in and checked against the ledger): the oracle's
        ``fingerprint()`` (``None`` parts when it has none) and the answer space's name."""
        space = self.answer_space
        name = getattr(space, "name", None)
        if not name or name == "base":
            name = f"{type(space).__module__}.{type(space).__qualname__}"
        return {**(oracle_fingerprint(self.oracle) or {}), "answer_space": str(name)}

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
        caps = self._capabilities
        if caps.peeks_at_labels and reference is None:
            raise ValueError(f"strategy {self.strategy.name!r} peeks at labels (requires={{'labels'}}) but the "
                             f"oracle {type(self.oracle).__name__} has no reference() lookup")
        if reference is not None:
            batch = batch.with_reference_labels(reference)
        # the engine's own copy of what it files: ids, prompts and votes are read here, before any strategy hook
        # runs, and every hook gets a private copy of the batch, so a rule that mutates what it is given (sorts
        # batch.ids in place, edits the votes) cannot make the engine file a label under the wrong id
        ids, prompts = list(batch.ids), list(batch.prompts)
        majority = list(batch.votes.majority_answer)
        # the strategy sees the ground truth only when it declares that it peeks (Oracle-CAG); metrics always do
        peeks = caps.peeks_at_labels
        seen = _private_copy(batch, batch.reference_labels if peeks else None)
        view = self.budget_view(batch, key)
        known, remaining = view.known.copy(), int(view.remaining)
        view = replace(view, known=view.known.copy())
        acq = self._check_acquisition(self.strategy.select(seen, view), B, "select")
        # evaluation-only: a strategy may grade the decision it just made against the ground truth (CARE's
        # Stage-I precision, ...); the decision is fixed before, so this cannot leak labels into it
        if caps.diagnoses and not peeks and batch.reference_labels is not None:
            graded = self.strategy.diagnostics(_private_copy(batch, batch.reference_labels), acq)
            acq = replace(self._check_acquisition(acq, B, "diagnostics"), metrics={**acq.metrics, **graded})
        routes = acq.routes.copy()
        weights = acq.weights.copy()
        scores = acq.scores.copy()
        query = np.flatnonzero(routes == Route.QUERY)
        new = query[~known[query]]
        if new.size > remaining:
            raise BudgetExceededError(
                f"strategy {self.strategy.name!r} asked for {new.size} new labels but only {remaining} are "
                f"allowed at step {step} (budget: {self.budget.describe()}, spent {view.spent})")
        # buy in score order (most wanted first), so a shrinking budget keeps the best
        order = query[np.argsort(-scores[query], kind="mergesort")]
        policy = self.failure_route()
        self._last_oracle_call = None
        try:
            purchase = self._buy(ids, prompts, order, remaining, step, B, raise_on_error=policy is None, position=key)
        except Exception as exc:
            call = self._last_oracle_call
            if policy is None and (isinstance(exc, OracleError) or (call is not None and exc in call.errors)):
                raise OracleFailureError(
                    f"rlavr: the oracle failed at step {step} after {self.max_retries} retries ({type(exc).__name__}: "
                    f"{exc}); on_oracle_failure='raise' stops the run (strategy {self._strategy_name()!r}). Labels "
                    "bought before are persisted and charged once; nothing was charged for the failed ids") from exc
            raise
        call = self._last_oracle_call
        reports: list[tuple[str, str, str]] = list(call.invalid) if call is not None else []
        invalid = list({r[0]: r for r in reports}.values())  # the last invalid answer of each id (retries ask again)
        purchase_labels = purchase.labels

        labels: list[Label | None] = [None] * B
        fallback: dict[str, Route] = {}
        for i in range(B):
            if routes[i] == Route.QUERY:
                lab = purchase_labels.get(ids[i])
                if lab is not None:
                    labels[i] = lab
                    continue
                if policy is None:
                    missing = [ids[k] for k in query if purchase_labels.get(ids[k]) is None]
                    bad = {pid: f"{prev} ({why})" for pid, prev, why in invalid}
                    detail = "; ".join(f"{pid!r}: " + ("busy (another writer)" if pid in purchase.busy else
                                                       f"invalid answer {bad[pid]}" if pid in bad else "no label")
                                       for pid in missing[:5])
                    raise OracleFailureError(
                        f"rlavr: {len(missing)} queried labels could not be obtained at step {step} ({detail}"
                        f"{'; ...' if len(missing) > 5 else ''}); on_oracle_failure='raise' stops the run (strategy "
                        f"{self._strategy_name()!r}). Nothing was charged for them")
                routes[i], weights[i] = policy
                fallback[ids[i]] = Route(int(routes[i]))
            if routes[i] == Route.PSEUDO:
                if majority[i] is None:  # no valid answer -> no pseudo-label
                    routes[i] = Route.DROP
                else:
                    labels[i] = majority[i]
        for k, pid in enumerate(ids):
            if pid in fallback:
                fallback[pid] = Route(int(routes[k]))
        weights = np.where(routes == Route.DROP, 0.0, weights)
        if fallback:
            to_pseudo = sum(r == Route.PSEUDO for r in fallback.values())
            logger.warning(
                "rlavr: step %d: %d queried labels could not be obtained (%d failed, %d busy, %d invalid answers); "
                "%d pseudo-labelled, %d dropped (on_oracle_failure=%r, strategy %r)", step, len(fallback),
                len(purchase.failed), len(purchase.busy), len({pid for pid, _, _ in invalid}), to_pseudo,
                len(fallback) - to_pseudo, self.on_oracle_failure, self._strategy_name())
        # resumed: a stale reservation, charged before, free now
        result = StepResult(batch=batch, acquisition=acq, routes=routes, weights=weights, labels=labels,
                            bought=list(purchase.bought), reused=list(purchase.reused) + list(purchase.resumed),
                            failed=list(purchase.failed), strategy_batch=seen, busy=list(purchase.busy),
                            oracle_errors=purchase.oracle_errors, oracle_fallback=fallback, invalid=invalid,
                            budget=view)
        result.metrics = self.metrics(result)
        return result

    def _buy(self, ids: Sequence[str], prompts: Sequence[str], order: np.ndarray, step_left: int, step: int,
             batch_size: int, raise_on_error: bool = False, position: int | None = None) -> PurchaseResult:
        """The labels of ``decide``: groups ``order`` (most wanted first) through :meth:`buy`, at most
        ``step_left`` new ones and never beyond ``budget.allowed`` (evaluated inside the ledger's write lock),
        recorded at step key ``position``."""
        seen = self.ledger.prompts_seen
        at_step = (0 if position is None or self.budget.step_cap(batch_size) is None
                   else self.ledger.charged_at(position))
        return self.buy([ids[i] for i in order], [prompts[i] for i in order],
                        lambda charged: self.budget.allowed(charged, seen, batch_size, step_charged=at_step), step,
                        max_new=step_left, raise_on_error=raise_on_error, position=position)

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
        (training steps through :meth:`decide`, the pre-training pool stage through :meth:`fit_pool` and
        :func:`rlavr.pool_stage.buy_pool_labels`).

        Labels already in the ledger are taken first (free; they survive an oracle outage). The others are
        bought with :meth:`LabelLedger.purchase <rlavr.labels.LabelLedger.purchase>` (reserved within the
        budget, persisted before they are returned, never charged twice); each oracle call is limited to
        ``oracle_timeout`` seconds. An oracle that raises or times out is retried up to ``max_retries`` times
        with exponential ``backoff`` (nothing is charged for a failed call); ids the oracle answered with
        ``None`` are retried the same way. Every answer is validated first (:func:`check_oracle_answer`,
        ``max_label_chars``): an invalid one is never stored nor charged and is retried like ``None``.

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
        ids = [check_prompt_id(str(i), "buy: ids") for i in ids]
        # answers are validated before the ledger persists or charges them (an invalid one becomes None)
        checked = self._last_oracle_call = _CheckedOracle(self.oracle, self.max_label_chars)
        oracle: Oracle = checked if self.oracle_timeout is None else _TimeLimitedOracle(checked, self.oracle_timeout)
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
            except LedgerError:
                # the LEDGER failed, not the oracle: never retried by asking (and paying) the oracle again; answers
                # it gave are kept by the ledger object and written by its next purchase of those ids
                raise
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

    # ------------------------------------------------------------------ the pool stage (before training)
    def fit_pool(self, pool: RolloutBatch) -> dict[str, float]:
        """Run the strategy's pool stage on ``pool``: the strategy says which labels it wants, the engine buys them.

        Round after round the engine asks the strategy's ``pool_label_requests(pool, progress)`` hook (with a
        :class:`~rlavr.types.PoolProgress` of what was obtained so far; ``progress.owned`` = pool labels already in
        the ledger, free) which ids to label next, buys the new ones with :meth:`buy_pool_labels`, and stops when
        the hook asks for nothing it has not asked before or the budget refuses an id. Then it calls the
        strategy's ``fit_pool(pool, labels)`` with the labels obtained (bought or reused) for the requested ids.

        Budget (see :mod:`rlavr.pool_stage`): the pool counts as one pre-training step of ``pool.B`` prompts
        (recorded as prompts seen at :data:`~rlavr.pool_stage.POOL_STEP`, once however often it is refitted), so
        every budget form caps it (ratio, total, per-step); labels already owned are free, none is bought twice;
        ids another live writer is still buying (``busy``) are retried, then reported, never used; the engine's
        ``oracle_timeout`` / ``max_retries`` / ``backoff`` apply, and an oracle still failing after the retries
        raises (labels bought before stay persisted and are reused for free by the next attempt).

        Returns:
            the strategy's ``fit_pool`` values plus ``pool_labels_bought`` / ``_reused`` / ``_refused`` /
            ``_failed`` / ``_busy``; ``{}`` for a strategy without a pool stage (``capabilities.pool_stage``
            false: nothing recorded, nothing bought). The whole outcome, with the budget after the stage
            (``budget.spent``, ``budget.cap``: what an integration logs), is kept in :attr:`last_pool_stage`.
        """
        strategy: Any = self.strategy
        if not self._capabilities.pool_stage:
            self.last_pool_stage = PoolStageResult(metrics={}, budget=pool_budget_view(self, pool), pool_size=pool.B,
                                                   ran=False)
            return {}
        # a rule that only satisfies StrategyProtocol may define one of the two hooks
        ask = getattr(strategy, "pool_label_requests", None)
        fit = getattr(strategy, "fit_pool", None)
        progress = PoolProgress(owned=dict(self.ledger.get_many(pool.ids)))
        while ask is not None:
            asked = set(progress.requested)
            want = [i for i in dict.fromkeys(ask(pool, progress)) if i not in asked]
            if not want:
                break
            res = self.buy_pool_labels(pool, want)
            record_round(progress, want, res)
            if res.refused:
                break  # the budget is exhausted
        out = {} if fit is None else dict(fit(pool, progress.labels))
        out.update(progress_metrics(progress))
        self.last_pool_stage = PoolStageResult(metrics=dict(out), budget=pool_budget_view(self, pool),
                                               progress=progress, pool_size=pool.B)
        return out

    def buy_pool_labels(self, pool: RolloutBatch, prompt_ids: Sequence[str],
                        pool_size: int | None = None) -> PurchaseResult:
        """Buy labels for ``prompt_ids`` of ``pool`` at the pool stage, within the budget (the pool is one
        pre-training step of ``pool_size`` prompts, default ``pool.B``): :func:`rlavr.pool_stage.buy_pool_labels`.
        :meth:`fit_pool` buys through this; call it directly only to buy pool labels outside a strategy's fit."""
        return buy_pool_labels(self, pool, prompt_ids, pool_size=pool_size)

    # ------------------------------------------------------------------ after the policy update
    def update(self, result: StepResult) -> None:
        """Let the strategy learn from the labels available this step (CARE's online classifier update)."""
        if self._capabilities.learns:
            self.strategy.update(result.seen_by_strategy, result.acquisition, result.gt_labels)

    # ------------------------------------------------------------------ rewards / advantages (framework-neutral)
    def rewards(self, result: StepResult) -> np.ndarray:
        """``(B, G)`` binary rewards against each group's chosen label; NaN rows for dropped groups."""
        batch = result.batch
        r = batch.correctness(result.labels).astype(np.float64)
        r[result.routes == Route.DROP] = np.nan
        return r

    def advantages(self, result: StepResult, std: Literal["unbiased", "population", "none"] = "unbiased",
                   eps: float | None = None) -> np.ndarray:
        """``(B, G)`` GRPO advantages x group weights, then the strategy's ``transform_advantages`` hook
        (:func:`transform_step_advantages`, the one implementation every integration uses)."""
        return transform_step_advantages(self.strategy, result, grpo_advantages(self.rewards(result), std=std,
                                                                                eps=eps))

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
            "oracle_failed_to_pseudo": float(sum(r == Route.PSEUDO for r in result.oracle_fallback.values())),
            "oracle_failed_to_drop": float(sum(r == Route.DROP for r in result.oracle_fallback.values())),
            "oracle_invalid_answers": float(len(result.invalid)),
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
                # bought labels that taught GRPO nothing: every rollout right, or every rollout wrong, against the
                # label (constant rewards -> advantage 0 for the whole group)
                m["query_no_signal_ratio"] = float((~has_signal(corr_gt[query])).mean())
            keep = (routes != Route.DROP) & has_ref
            if keep.any():
                train_r = batch.correctness(result.labels)
                m["reward_accuracy"] = float((train_r[keep] == corr_gt[keep]).mean())
            m["ground_truth_reward"] = float(corr_gt[has_ref].mean())
            m["pass@G"] = float(corr_gt[has_ref].any(axis=1).mean())
        for k, v in result.acquisition.metrics.items():
            m[f"strategy/{k}"] = float(v)
        # bounded answer parsing (rlavr.answers.COUNTER_NAMES): what was capped or timed out since the last step
        take = getattr(batch.answer_space, "take_counters", None)
        if take is not None:
            m.update({f"answers/{k}": float(v) for k, v in take().items()})
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
        :class:`~rlavr.labels.LedgerMismatchError`, a ``ValueError``, raised before anything is changed). The run id becomes the checkpoint's (a checkpoint
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
            raise LedgerMismatchError(
                f"load_state_dict: the checkpoint saw {saved['n_charged']} charged labels but the ledger "
                f"{self.ledger.path!r} holds {self.ledger.n_charged}: it is not this run's ledger, or it lost labels "
                "(a new or emptied file, or a copy of the .sqlite file without its -wal file); resume with the run's "
                f"own ledger (the checkpoint's was {saved.get('path')!r}), or restore it from a backup made with "
                "`rlavr ledger backup`; `rlavr ledger show PATH` says what a ledger holds. Never resume on a ledger "
                "missing labels: they would be bought and charged again.", self.ledger.path)
        self.strategy.load_state_dict(dict(state["strategy"]))
        self._capabilities = capabilities_of(self.strategy)  # the restored state may change the mask
        if saved:
            self.ledger.run_id = str(saved.get("run_id") or LEGACY_RUN)
        if saved and saved.get("last_step") is not None:  # absent in older checkpoints: keep every step
            dropped = self.ledger.drop_steps_after(int(saved["last_step"]))
            if dropped:
                logger.info("rlavr: forgot %d ledger steps recorded after the checkpoint (step %d)", dropped,
                            int(saved["last_step"]))


A = TypeVar("A")


def transform_step_advantages(strategy: Any, result: StepResult, advantages: A) -> A:
    """:func:`weigh_and_transform` for one decided step: its weights and routes, and ``strategy``'s
    ``transform_advantages`` hook bound to what the strategy saw (only when
    :attr:`Capabilities.transforms_advantages <rlavr.strategies.base.Capabilities>`)."""
    hook = None
    if capabilities_of(strategy).transforms_advantages:
        def hook(adv: np.ndarray) -> Any:
            return strategy.transform_advantages(result.seen_by_strategy, result.acquisition, adv)
    return weigh_and_transform(advantages, result.weights, result.routes, result.batch.G, hook, strategy.name)
