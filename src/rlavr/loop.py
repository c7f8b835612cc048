r"""``AcquisitionLoop``: the acquisition side of any GRPO training loop, independent of the training framework.

The :class:`~rlavr.engine.AcquisitionEngine` decides one batch; the loop is what a trainer integration needs around
it, once per generation round (the TRL trainer, :mod:`rlavr.trl`, is one integration; ``examples/plain_loop.py`` a
plain PyTorch one). It owns the engine and keeps, across rounds: the round counter (the ledger's step key), the
queue of strategy updates not applied yet, the per-round history, the rollout log and the checkpoint state.

One round, top to bottom (``B`` prompts, ``G`` rollouts each; ``[main]``: on the main process only, whose engine
holds the ledger; everything else on every process)::

    # 1. generate B*G completions with the policy; per rollout, plain data the loop can gather and pickle:
    rows = [RowFeatures(id=prompt_id(row, "id"), prompt=prompt_text(p), text=completion_text(c),
                        answer=space.extract(completion_text(c)), length=..., truncated=...), ...]
    # (rows in rank-major order: global row r belongs to group g(r) = r // G)

    # 2. [main] decide: build the RolloutBatch (cluster answers, majority vote), then engine.decide:
    #    strategy.select -> routes / weights / scores, the budget checked BEFORE buying, queried labels bought
    #    through the ledger (persisted before use, never twice); the strategy update is queued (step 6)
    decision = loop.decide(rows, group_size=G, step=step)       # a picklable Decision
    #    ... broadcast `decision` to every process (it is plain data)

    # 3. every process: reward each rollout against its group's training label
    #    (QUERY: the bought ground truth; PSEUDO: the majority answer; DROP: None, and advantage 0 in step 4)
    label_of_row = decision.row_labels(start=rank * B_local, n=B_local)
    r = reward(completions, label_of_row)                       # (B, G)
    #    (or, for reward functions reading a label column: decision.relabel(dataset_rows, "answer", start))

    # 4. GRPO advantages, then the acquisition's say:
    #    A_{g,j} = (r_{g,j} - mean_j r_{g,j}) / (std_j r_{g,j} + eps)
    #    A_{g,j} <- w_g A_{g,j}                                   (group weights: 0 for dropped groups)
    #    A      <- strategy.transform_advantages(batch, acquisition, A)   (only if the rule has the hook)
    adv = loop.transform(adv, decision)                         # numpy or torch in, the same type out
    #    (a process may weigh its own slice: loop.transform(adv_local, decision, start); a rule with the hook
    #    needs the whole round on the main process, which holds the round's batch)

    # 5. every process: record the round (counters, history) from the broadcast decision
    metrics = loop.record(decision)

    # 6. after the optimiser step: the strategy learns from the labels bought (CARE's online classifier);
    #    a failing update stays queued, is retried before the next decision, and a second failure raises
    loop.apply_updates()

Checkpoints: :meth:`AcquisitionLoop.state_dict` / :meth:`AcquisitionLoop.load_state_dict` (plain containers,
Python scalars and tensors: ``torch.save`` it, read it back with ``torch.load(weights_only=True)``).
A strategy with a pool stage is fitted once before training with :meth:`AcquisitionLoop.fit_pool` on ``G``
completions per pool prompt.

Optional hooks are asked through :func:`rlavr.strategies.base.capabilities_of`, so a rule that only satisfies
:class:`~rlavr.strategies.base.StrategyProtocol` (no :class:`~rlavr.strategies.base.Strategy` base class) gets
``transform_advantages`` and ``prompt_sampler`` as well. See ``docs/design.md`` for the maths and the layers.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from rlavr.advantages import to_numpy, weigh_and_transform
from rlavr.answers import AnswerSpace
from rlavr.budget import BudgetView
from rlavr.engine import AcquisitionEngine, StepResult, transform_step_advantages
from rlavr.rollout_log import RolloutLogWriter
from rlavr.rollouts import RowFeatures, build_rollout_batch
from rlavr.strategies.base import Capabilities, Strategy, capabilities_of
from rlavr.types import Acquisition, Label, Route

logger = logging.getLogger(__name__)

__all__ = ["AcquisitionLoop", "Decision", "PendingUpdate", "PoolFit", "UpdateFailure", "pool_fit_wanted",
           "restore_numpy", "transform_step_advantages", "weigh_and_transform", "weights_only_safe"]

A = TypeVar("A")

STATE_VERSION = 1
"""Version of :meth:`AcquisitionLoop.state_dict`'s format (the TRL trainer's ``rlavr_state.pt``); another is refused."""


# ================================================================================================ the decision


@dataclass(frozen=True)
class Decision:
    """What one round decided, the same on every process: plain data (picklable, broadcastable).

    Attributes:
        step: the training step the round belongs to.
        round: the round's position (the ledger's step key; several rounds may share a ``step``).
        group_size: ``G``, rollouts per prompt group.
        routes: ``(B,)`` int8 :class:`~rlavr.types.Route` per group (after oracle-failure fallbacks).
        weights: ``(B,)`` float64 advantage weight per group (0 for dropped groups).
        labels: per group, the label rewards are computed against (``None``: dropped), as the engine chose it.
        majority: per group, the majority-vote answer (``None``: no valid answer).
        train_labels: per group, the label a trainer rewards against (or writes into the label column for its
            reward functions): the bought ground truth for a queried group (in the dataset's format), the
            majority answer in the answer space's label form for a pseudo-labelled group
            (``AnswerSpace.as_label``, e.g. ``\boxed{...}`` for math), and ``None`` for a **dropped** group: it
            trains on nothing, so no reward function can train on it by accident (``AnswerSpace.grade`` counts
            a ``None`` label as wrong: all-zero rewards, advantage 0). Zeroing a dropped group's advantages is
            still the integration's job (see ``docs/integrations.md``); its majority answer stays in
            :attr:`majority`.
        metrics: the round's scalars (routes, labels bought, accuracies, strategy metrics; unprefixed keys).
        budget: the :class:`~rlavr.budget.BudgetView` the strategy was given (``budget.cap`` is the global cap).
        spent: labels charged in the ledger after this round (the run's spend, pool fit included).
    """

    step: int
    round: int
    group_size: int
    routes: np.ndarray
    weights: np.ndarray
    labels: tuple[Label | None, ...]
    majority: tuple[str | None, ...]
    train_labels: tuple[str | None, ...]
    metrics: Mapping[str, float]
    budget: BudgetView | None
    spent: int

    @property
    def B(self) -> int:
        """Prompt groups in the round."""
        return int(self.routes.shape[0])

    @property
    def cap(self) -> int | None:
        """The global label cap at this round (``None``: unlimited or unknown)."""
        return None if self.budget is None else self.budget.cap

    @property
    def dropped(self) -> np.ndarray:
        """``(B,)`` bool: the group is dropped (advantage 0)."""
        return self.routes == Route.DROP

    @property
    def reweights(self) -> bool:
        """Whether any kept group has a weight other than 1 (else weighting is skipped: bitwise GRPO)."""
        return not bool(np.all(self.weights[~self.dropped] == 1.0))

    def group_of(self, start: int = 0, n: int | None = None) -> np.ndarray:
        """Group index of the global rows ``start .. start + n - 1`` (``g(r) = r // G``; default all rows)."""
        count = self.B * self.group_size - start if n is None else n
        return (start + np.arange(count)) // self.group_size

    def row_labels(self, start: int = 0, n: int | None = None) -> list[str | None]:
        """:attr:`train_labels` per row for the global rows ``start .. start + n - 1`` (``None`` for the rows of a
        dropped group)."""
        return [self.train_labels[int(g)] for g in self.group_of(start, n)]

    def relabel(self, rows: Sequence[Mapping[str, Any]], column: str, start: int = 0) -> list[dict[str, Any]]:
        """Copies of the dataset rows ``rows`` (global rows ``start ...``) with ``column`` set to their group's
        :attr:`train_labels` entry (kept as is when already equal, as a string). A dropped group's rows get
        ``None``: the dataset's own value (possibly the ground truth, never bought) must not reach a reward
        function."""
        out = []
        for x, lab in zip(rows, self.row_labels(start, len(rows)), strict=True):
            if lab is None:
                out.append({**x, column: None})
                continue
            same = column in x and x[column] is not None and str(x[column]) == lab
            out.append(dict(x) if same else {**x, column: lab})
        return out

    def route_names(self, start: int = 0, n: int | None = None) -> list[str]:
        """``"query"`` / ``"pseudo"`` / ``"drop"`` per row (for completion logs)."""
        return [Route(int(self.routes[int(g)])).name.lower() for g in self.group_of(start, n)]


@dataclass(frozen=True)
class PoolFit:
    """The outcome of :meth:`AcquisitionLoop.fit_pool` (plain data, broadcastable): the fit's metrics (the
    strategy's values and ``pool_labels_bought`` & co.), the spend and global cap after it and the pool's size."""

    metrics: Mapping[str, float]
    spent: int
    cap: int | None
    prompts: int


# ================================================================================================ pending updates


@dataclass
class PendingUpdate:
    """A decided round whose ``strategy.update`` has not run yet (main process). Keeps the rows so that it can be
    written to a checkpoint as plain data."""

    result: StepResult
    rows: list[RowFeatures]
    hidden: np.ndarray | None
    G: int
    round: int

    def to_state(self) -> dict[str, Any]:
        """Plain data that ``torch.load(weights_only=True)`` reads: rows, the hidden states (a float32
        ``torch.Tensor``), the reference labels the strategy saw, its acquisition, routes / labels (numpy scalars
        turned into Python ones)."""
        import torch  # a core dependency, imported here only: the loop itself runs without it

        res, acq = self.result, self.result.acquisition
        ref = res.seen_by_strategy.reference_labels
        return {
            "round": int(self.round), "step": int(res.batch.step), "G": int(self.G),
            "rows": [{"id": r.id, "prompt": r.prompt, "text": r.text, "answer": r.answer, "length": int(r.length),
                      "truncated": bool(r.truncated),
                      "mean_logprob": None if r.mean_logprob is None else float(r.mean_logprob),
                      "token_logprobs": None if r.token_logprobs is None else [float(v) for v in r.token_logprobs]}
                     for r in self.rows],
            "hidden": None if self.hidden is None else torch.from_numpy(np.array(self.hidden, dtype=np.float32)),
            "reference": None if ref is None else [_plain(v) for v in ref],
            "acquisition": {"routes": [int(v) for v in acq.routes], "weights": [float(v) for v in acq.weights],
                            "scores": [float(v) for v in acq.scores],
                            "metrics": {str(k): _plain(v) for k, v in acq.metrics.items()}},
            "routes": [int(v) for v in res.routes], "weights": [float(v) for v in res.weights],
            "labels": [_plain(v) for v in res.labels],
        }

    @classmethod
    def from_state(cls, d: Mapping[str, Any], space: AnswerSpace) -> PendingUpdate:
        """Inverse of :meth:`to_state` (the batch is rebuilt from the rows, as in the round itself; ``hidden``
        may be a tensor or, in states written before it was one, a numpy array)."""
        rows = [RowFeatures(**{**r, "token_logprobs": None if r["token_logprobs"] is None
                               else tuple(r["token_logprobs"])}) for r in d["rows"]]
        hidden = None if d["hidden"] is None else np.asarray(to_numpy(d["hidden"]), dtype=np.float32)
        batch = build_rollout_batch(rows, int(d["G"]), space, int(d["step"]), hidden)
        if d["reference"] is not None:
            batch = batch.with_reference_labels(d["reference"])
        a = d["acquisition"]
        acq = Acquisition(routes=np.asarray(a["routes"]), weights=np.asarray(a["weights"], dtype=np.float64),
                          scores=np.asarray(a["scores"], dtype=np.float64), metrics=dict(a["metrics"]))
        result = StepResult(batch=batch, acquisition=acq, routes=np.asarray(d["routes"], dtype=np.int8),
                            weights=np.asarray(d["weights"], dtype=np.float64), labels=list(d["labels"]), bought=[],
                            reused=[], failed=[], strategy_batch=batch)
        return cls(result, rows, hidden, int(d["G"]), int(d["round"]))


_NDARRAY_TAG = "__rlavr_ndarray__"


def weights_only_safe(obj: Any) -> Any:
    """``obj`` with every numpy object replaced by something ``torch.load(weights_only=True)`` reads: a numpy
    scalar becomes the Python scalar it holds, a numeric array a tagged ``{"__rlavr_ndarray__": tensor,
    "dtype": ...}`` (any other array a tagged nested list), recursively through dicts, lists and tuples.
    :func:`restore_numpy` undoes it, so a strategy's ``state_dict`` may hold numpy arrays."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "biuf" and obj.dtype != np.float16:
            import torch  # only when there is an array to encode: the loop itself runs without torch

            return {_NDARRAY_TAG: torch.from_numpy(np.ascontiguousarray(obj).copy()), "dtype": obj.dtype.str}
        return {_NDARRAY_TAG: obj.tolist(), "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        return _plain(obj)
    if isinstance(obj, dict):
        return {k: weights_only_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(weights_only_safe(v) for v in obj)
    return obj


def restore_numpy(obj: Any) -> Any:
    """The inverse of :func:`weights_only_safe`: tagged entries become numpy arrays of their dtype again; states
    without tags (every built-in strategy's) come back unchanged."""
    if isinstance(obj, dict):
        if _NDARRAY_TAG in obj and set(obj) == {_NDARRAY_TAG, "dtype"}:
            value = obj[_NDARRAY_TAG]
            data = value.numpy() if hasattr(value, "numpy") else value  # a tensor, or a list
            return np.array(data, dtype=np.dtype(obj["dtype"]))
        return {k: restore_numpy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(restore_numpy(v) for v in obj)
    return obj


def _plain(v: Any) -> Any:
    """A numpy scalar as the Python scalar it holds (``torch.load(weights_only=True)`` refuses numpy objects);
    anything else unchanged."""
    return v.item() if isinstance(v, np.generic) else v


@dataclass
class UpdateFailure:
    """A strategy update that raised on the main process, kept until it is retried (or reported)."""

    exc: BaseException
    where: str
    text: str = field(default="")


# ================================================================================================ advantages


def pool_fit_wanted(strategy: Any) -> bool:
    """Whether ``strategy`` should be fitted on a pool before training (``fit_pool="auto"``): it has a pool stage
    (:attr:`Capabilities.pool_stage <rlavr.strategies.base.Capabilities>`) and, for a
    :class:`~rlavr.strategies.base.Strategy`, its :meth:`~rlavr.strategies.base.Strategy.wants_pool_fit` says a
    fit is due (PivotTrace only with ``calibration="probe"``, UncertaintyConsistency only with
    ``mode="offline"``, each only while not fitted)."""
    if not capabilities_of(strategy).pool_stage:
        return False
    return bool(strategy.wants_pool_fit()) if isinstance(strategy, Strategy) else True


# ================================================================================================ the loop


class AcquisitionLoop:
    """The acquisition side of a training loop (see the module docstring for one round).

    Args:
        engine: the :class:`~rlavr.engine.AcquisitionEngine` (strategy, oracle, budget, ledger, answer space).
        rollout_log: path of the rollout JSONL (one line per prompt group per round, see
            :mod:`rlavr.rollout_log`), written on :meth:`decide`; ``None``: no log.
        log_features: also write log-probabilities and hidden states into the rollout log.

    Attributes:
        history: one dict per recorded round: ``step``, ``round``, the round's metrics, ``budget_spent``.
        rounds: rounds recorded so far (the next round's ledger step key; monotone across resumes).
        spent: labels charged after the last recorded round or pool fit.
        cap: the global cap after the last recorded round or pool fit (``None``: unknown or unlimited).
        pending: decided rounds whose strategy update has not run (main process).
        failure: the last failed strategy update, retried before the next decision.
        pool_metrics: what the last :meth:`fit_pool` returned.
        resumed: state was restored with :meth:`load_state_dict` (or the caller says so).
    """

    def __init__(self, engine: AcquisitionEngine, *, rollout_log: str | Path | None = None,
                 log_features: bool = False) -> None:
        if not isinstance(engine, AcquisitionEngine):
            raise ValueError(f"engine: expected an rlavr AcquisitionEngine, got {type(engine).__name__}")
        self.engine = engine
        self.log_writer = None if rollout_log is None else RolloutLogWriter(rollout_log, features=log_features)
        self.history: list[dict[str, Any]] = []
        self.rounds = 0
        self.spent = int(engine.spent)
        self.cap: int | None = None
        self.pending: list[PendingUpdate] = []
        self.failure: UpdateFailure | None = None
        self.pool_metrics: dict[str, float] = {}
        self.pool_fitted = False
        self.resumed = False
        self.initial_charged = self.spent
        self._warned_ledger = False

    # ------------------------------------------------------------------ what the strategy is
    @property
    def strategy(self) -> Any:
        """The engine's strategy."""
        return self.engine.strategy

    @property
    def capabilities(self) -> Capabilities:
        """What the strategy does besides ``select`` (:func:`~rlavr.strategies.base.capabilities_of`)."""
        return capabilities_of(self.engine.strategy)

    @property
    def answer_space(self) -> AnswerSpace:
        return self.engine.answer_space

    # ------------------------------------------------------------------ one round
    def decide(self, rows: Sequence[RowFeatures], group_size: int, step: int, hidden: np.ndarray | None = None,
               round: int | None = None) -> Decision:
        """Decide one round on the main process: rows -> :class:`~rlavr.types.RolloutBatch` -> ``engine.decide``.

        A strategy update that failed earlier is retried first (a second failure raises). The round's update is
        queued (:meth:`apply_updates`), and the round is written to the rollout log.

        Args:
            rows: the round's ``B * G`` rows in global order (group ``r // G``).
            group_size: ``G``.
            step: the training step (recorded with each bought label).
            hidden: optional ``(B * G, 2, H)`` last prompt / last completion token states.
            round: the ledger's step key (default :attr:`rounds`, the next round).

        Raises:
            RuntimeError: a failed strategy update failed again.
            ValueError: a malformed layout (see :func:`~rlavr.rollouts.build_rollout_batch`).
            BudgetExceededError, OracleFailureError: see :meth:`~rlavr.engine.AcquisitionEngine.decide`.
        """
        position = self.rounds if round is None else int(round)
        if self.failure is not None:  # the last update failed: retry it before this round decides
            logger.warning("rlavr: retrying the failed %s before round %d", self.failure.where, position)
            self.apply_updates()
            if self.failure is not None:
                fail, self.failure = self.failure, None
                raise RuntimeError(f"rlavr: {fail.where} failed twice (after the optimiser step and again before "
                                   f"the next round): {fail.exc!r}") from fail.exc
        if self.initial_charged and not self.resumed and not self._warned_ledger:
            self._warned_ledger = True
            logger.warning("rlavr: the ledger %s already holds %d labels from other runs and this run did not resume "
                           "from a checkpoint; it shares their budget and reuses those labels for free (use a fresh "
                           "ledger_path for an independent run)", self.engine.ledger.path, self.initial_charged)
        batch = build_rollout_batch(rows, group_size, self.engine.answer_space, step, hidden)
        result = self.engine.decide(batch, step, position=position)
        self.pending.append(PendingUpdate(result, list(rows), hidden, int(group_size), position))
        if self.log_writer is not None:
            self.log_writer.write(result, step, strategy=self.engine.strategy.name,
                                  answer_space=self.engine.answer_space.name)
        space = self.engine.answer_space
        majority = list(result.batch.votes.majority_answer)
        # bought ground truth keeps the dataset's format; a majority vote is written in the answer space's label
        # form (math: \boxed{...}, which a reward function parses as gold; a bare "x^2+1" it may not parse)
        # (a dropped group: None, it trains on nothing; see Decision.train_labels)
        written = tuple(None if result.routes[g] == Route.DROP
                        else lab if result.routes[g] == Route.QUERY and lab is not None
                        else None if maj is None else space.as_label(maj)
                        for g, (lab, maj) in enumerate(zip(result.labels, majority, strict=True)))
        return Decision(step=int(step), round=position, group_size=int(group_size),
                        routes=np.asarray(result.routes, dtype=np.int8).copy(),
                        weights=np.asarray(result.weights, dtype=np.float64).copy(),
                        labels=tuple(result.labels), majority=tuple(majority), train_labels=written,
                        metrics={k: float(v) for k, v in result.metrics.items()}, budget=result.budget,
                        spent=int(self.engine.spent))

    def record(self, decision: Decision, extra_metrics: Mapping[str, float] | None = None) -> dict[str, float]:
        """Record a decided round on every process: the round counter, spend, cap and one :attr:`history` entry.

        Returns:
            the round's metrics (``decision.metrics`` plus ``extra_metrics``), as stored in the history.
        """
        metrics = {**{k: float(v) for k, v in decision.metrics.items()},
                   **{k: float(v) for k, v in (extra_metrics or {}).items()}}
        self.rounds = decision.round + 1
        self.spent = int(decision.spent)
        self.cap = decision.cap
        self.history.append({"step": decision.step, "round": decision.round, **metrics,
                             "budget_spent": float(self.spent)})
        return metrics

    def result_of(self, decision: Decision) -> StepResult:
        """The engine's :class:`~rlavr.engine.StepResult` of a decided round whose update is still pending
        (main process).

        Raises:
            RuntimeError: the round is not pending here (another process, or its update already ran).
        """
        for p in reversed(self.pending):
            if p.round == decision.round:
                return p.result
        raise RuntimeError(f"rlavr: round {decision.round} has no pending decision on this process (advantages are "
                           "transformed on the process that decided, before the strategy update)")

    def transform(self, advantages: A, decision: Decision, start: int = 0) -> A:
        """Group weights, then the strategy's ``transform_advantages`` hook (if it has one): see
        :func:`weigh_and_transform`. ``advantages``: numpy or torch, the whole round (``(B, G)`` or ``B * G``
        rows), or, for a rule without the hook, any slice of rows starting at global row ``start``. With the hook,
        call it on the process that decided (it needs the round's batch and acquisition)."""
        if not self.capabilities.transforms_advantages:
            return weigh_and_transform(advantages, decision.weights, decision.routes, decision.group_size,
                                       start=start)
        return transform_step_advantages(self.engine.strategy, self.result_of(decision), advantages)

    # ------------------------------------------------------------------ after the optimiser step
    def apply_updates(self) -> UpdateFailure | None:
        """Run the strategy's ``update`` for every pending round, in round order (main process).

        A failing update stays pending, with the rounds after it, is kept in :attr:`failure` (and in a
        checkpoint saved meanwhile) and is retried before the next :meth:`decide` (or on resume). Never raises
        (raising here could leave other processes waiting in a collective).

        Returns:
            the failure, or ``None`` when everything was applied.
        """
        while self.pending:
            p = self.pending[0]
            try:
                self.engine.update(p.result)
            except Exception as exc:
                logger.error("rlavr: strategy update failed (round %d, step %d)", p.round, p.result.batch.step,
                             exc_info=True)
                self.failure = UpdateFailure(exc, f"strategy {self.engine.strategy.name!r}.update",
                                             traceback.format_exc())
                return self.failure
            self.pending.pop(0)
        self.failure = None  # everything applied (a retried failure included)
        return None

    def take_failure(self) -> UpdateFailure | None:
        """The pending failure, cleared (to be reported)."""
        fail, self.failure = self.failure, None
        return fail

    # ------------------------------------------------------------------ prompts
    def sample_prompts(self, dataset: Sequence[Any], n_prompts: int) -> list[int] | None:
        """The strategy's ``prompt_sampler`` choice of ``n_prompts`` dataset indices, checked; ``None``: the
        trainer's own order (also for a rule without the hook).

        Raises:
            ValueError: the hook returned another number of indices or one outside the dataset.
        """
        if not self.capabilities.samples_prompts:
            return None
        out = self.engine.strategy.prompt_sampler(dataset, n_prompts)
        if out is None:
            return None
        idx = [int(i) for i in out]
        n = len(dataset)
        if len(idx) != n_prompts or any(i < 0 or i >= n for i in idx):
            raise ValueError(f"strategy {self.engine.strategy.name!r}.prompt_sampler returned {len(idx)} indices "
                             f"(expected {n_prompts}, each in [0, {n}))")
        return idx

    # ------------------------------------------------------------------ the pool stage (before training)
    def wants_pool_fit(self) -> bool:
        """Whether the strategy has a pool stage and a fit is due (:func:`pool_fit_wanted`)."""
        return pool_fit_wanted(self.engine.strategy)

    def fit_pool(self, rows: Sequence[RowFeatures], group_size: int, step: int,
                 hidden: np.ndarray | None = None) -> PoolFit:
        """Fit the strategy's pool stage on ``G`` completions per pool prompt (main process): build the pool
        batch, let the strategy say which labels it needs, buy them within the budget (the pool counts as one
        step of prompts seen; labels already owned are free) and fit.

        Returns:
            a :class:`PoolFit` (empty metrics, nothing bought, for a rule without a pool stage).

        The purchase is the engine's (:meth:`~rlavr.engine.AcquisitionEngine.fit_pool`): the strategy only says
        which pool labels it wants (``pool_label_requests``) and fits on them (``fit_pool``); this works for a
        rule that only satisfies :class:`~rlavr.strategies.base.StrategyProtocol` as well.
        """
        engine = self.engine
        pool = build_rollout_batch(rows, group_size, engine.answer_space, step, hidden)
        out = engine.fit_pool(pool)  # a rule without a pool stage: nothing recorded nor bought, {} returned
        assert engine.last_pool_stage is not None
        view = engine.last_pool_stage.budget
        return PoolFit(metrics={k: float(v) for k, v in out.items()}, spent=int(view.spent), cap=view.cap,
                       prompts=pool.B)

    def record_pool_fit(self, fit: PoolFit, extra_metrics: Mapping[str, float] | None = None) -> dict[str, float]:
        """Record a pool fit on every process (spend, cap, :attr:`pool_metrics`); returns the metrics with
        ``pool_prompts`` and ``extra_metrics`` added."""
        metrics = {**fit.metrics, "pool_prompts": float(fit.prompts), **dict(extra_metrics or {})}
        self.spent = int(fit.spent)
        self.cap = fit.cap
        self.pool_fitted = True
        self.pool_metrics = metrics
        return metrics

    # ------------------------------------------------------------------ totals
    def summary(self) -> dict[str, float]:
        """Totals of the run so far, from :attr:`history` (identical on every process).

        ``labels_bought`` (the spend, pool fit included), ``rounds``, ``groups`` (prompt groups routed),
        ``route_query`` / ``route_pseudo`` / ``route_drop`` (groups per route), ``labelled_share`` (share of the
        groups trained on a true label: ``route_query / groups``) and, when the oracle knows ground truth for
        some pseudo-labelled groups, ``pseudo_label_accuracy`` (the rounds' accuracies weighted by their
        pseudo-labelled groups).
        """
        h = self.history
        routes = {r: float(sum(x.get(f"route/{r}", 0.0) for x in h)) for r in ("query", "pseudo", "drop")}
        groups = sum(routes.values())
        out = {"labels_bought": float(self.spent), "rounds": float(len(h)), "groups": groups,
               **{f"route_{r}": v for r, v in routes.items()},
               "labelled_share": routes["query"] / groups if groups else 0.0}
        known = [(x["pseudo_label_accuracy"], x.get("route/pseudo", 0.0)) for x in h if "pseudo_label_accuracy" in x]
        weight = sum(w for _, w in known)
        if weight > 0:
            out["pseudo_label_accuracy"] = sum(a * w for a, w in known) / weight
        return out

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, *, main: bool = True) -> dict[str, Any]:
        """Everything needed to resume acquisition exactly: the engine (strategy incl. its RNG, ledger position,
        budget), spend, round counter, history, pending updates (``main=False``: none, the other processes hold
        no strategy state) and the strategy's name.

        The loop's own entries are plain containers, Python scalars, strings and tensors (a pending update's
        hidden states), and the engine's (the strategy's) numpy arrays and scalars are encoded by
        :func:`weights_only_safe`, so that ``torch.save`` then ``torch.load(weights_only=True)`` reads the state
        back; :meth:`load_state_dict` gives the strategy its numpy arrays back. (A strategy state holding other
        objects, e.g. a scikit-learn model, still needs ``weights_only=False`` or its own encoding.)"""
        return {
            "version": STATE_VERSION,
            "engine": weights_only_safe(self.engine.state_dict()),  # a strategy's numpy arrays, tagged
            "spent": int(self.spent),
            "rounds": int(self.rounds),
            # updates not applied yet (only after a failed update): retried on resume, never lost
            "pending_updates": [p.to_state() for p in self.pending] if main else [],
            "history": [{k: (float(v) if isinstance(v, float | int | np.floating | np.integer) else _plain(v))
                         for k, v in h.items()} for h in self.history],
            "strategy_name": self.engine.strategy.name,
        }

    def load_state_dict(self, state: Mapping[str, Any], *, main: bool = True) -> None:
        """Restore :meth:`state_dict`. With ``main`` (the deciding process): the engine (strategy, ledger position,
        see :meth:`~rlavr.engine.AcquisitionEngine.load_state_dict`) and the pending updates, which are applied
        at once; otherwise only the counters and history.

        Raises:
            ValueError: another format version, or a checkpoint written by another strategy.
            RuntimeError: a pending update failed again.
        """
        if int(state.get("version", 0)) != STATE_VERSION:
            raise ValueError(f"rlavr_state: unsupported version {state.get('version')!r}")
        name = state.get("strategy_name")
        if name is not None and name != self.engine.strategy.name:
            raise ValueError(f"rlavr_state: checkpoint was written by strategy {name!r}, this run uses "
                             f"{self.engine.strategy.name!r}")
        if main:
            self.engine.load_state_dict(restore_numpy(state["engine"]))
            self.pending = [PendingUpdate.from_state(d, self.engine.answer_space)
                            for d in state.get("pending_updates", [])]
            self.failure = None
            if self.pending:  # a checkpoint written after a failed update: retry it now
                logger.warning("rlavr: the checkpoint holds %d strategy updates that had not been applied (a failed "
                               "update); applying them before training resumes", len(self.pending))
                fail = self.apply_updates()
                if fail is not None:
                    self.failure = None
                    raise RuntimeError(f"rlavr: {fail.where} failed again on resume: {fail.exc!r}") from fail.exc
        self.set_counters(state)
        self.resumed = True

    def set_counters(self, state: Mapping[str, Any]) -> None:
        """Take spend, history and round counter from a state (or the subset a main process broadcast)."""
        self.spent = int(state.get("spent", 0))
        self.history = [dict(h) for h in state.get("history", [])]
        self.rounds = int(state.get("rounds", len(self.history)))  # one history entry per round
