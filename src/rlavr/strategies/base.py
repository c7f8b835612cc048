"""The strategy interface and the small helpers every strategy shares.

A strategy is one small class with one required method::

    class MyRule(Strategy):
        name = "my-rule"
        description = "one line for `rlavr strategies`"
        requires = frozenset({"answers"})

        def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
            scores = ...                                   # (B,) higher = more wanted for a label
            return self.route_by_score(scores, budget)     # top scores -> query, rest -> pseudo (or drop if mask)

``select`` never buys labels: it says which groups it wants labelled, and the engine buys them through the
ledger, within the budget. Optional hooks, for strategies that change more than routing, have do-nothing
defaults: :meth:`update` (online learning from bought labels), :meth:`transform_advantages` (reweight
per-rollout advantages), :meth:`diagnostics` (grade the decision against the ground truth, for logging only),
:meth:`prompt_sampler` (choose which prompts to sample), the pool stage (calibrate on a pool before
training: :meth:`pool_label_requests` says which pool labels it wants, the engine buys them,
:meth:`AcquisitionEngine.fit_pool <rlavr.engine.AcquisitionEngine.fit_pool>`, and hands them to :meth:`fit_pool`;
:meth:`wants_pool_fit` says whether a fit is due; the TRL trainer fits automatically at train start),
:meth:`state_dict` / :meth:`load_state_dict`. A strategy never buys: no module of :mod:`rlavr.strategies` imports
the engine.

Strategies never touch the global torch/numpy RNG (that would break GT-equivalence with TRL); use
:meth:`Strategy.rng`, a private ``numpy.random.Generator`` seeded from ``seed`` and saved in ``state_dict``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from rlavr.budget import BudgetView
from rlavr.types import Acquisition, Label, PoolProgress, RolloutBatch, Route

if TYPE_CHECKING:  # pragma: no cover
    from rlavr.engine import AcquisitionEngine

__all__ = ["SIGNALS", "Capabilities", "Strategy", "StrategyProtocol", "capabilities_of", "top_k"]

SIGNALS = frozenset({"answers", "logprobs", "hidden_states", "attentions", "labels"})
"""Signals a strategy may declare in ``requires``. ``labels`` = peeks at ground truth (research only; charged)."""


@runtime_checkable
class StrategyProtocol(Protocol):
    """Structural interface (what the engine calls). Subclassing :class:`Strategy` is the easy way to satisfy it."""

    name: ClassVar[str]
    requires: ClassVar[frozenset[str]]

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition: ...

    def update(self, batch: RolloutBatch, acquisition: Acquisition, labels: Mapping[str, Label]) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class Capabilities:
    """What a strategy does besides ``select``: the one answer every caller (engine, acquisition loop, trainer,
    contract checker) asks, computed once per strategy by :func:`capabilities_of`.

    A hook counts when the strategy's class defines it and, for a :class:`Strategy` subclass, overrides the base
    class's default; a rule that only satisfies :class:`StrategyProtocol` gets every hook it defines.

    Attributes:
        requires: the signals it reads (subset of :data:`SIGNALS`).
        learns: has an ``update`` hook (called after the policy update with the labels bought).
        transforms_advantages: has a ``transform_advantages`` hook.
        samples_prompts: has a ``prompt_sampler`` hook (chooses each round's prompts).
        diagnoses: has a ``diagnostics`` hook (evaluation-only metrics graded against ground truth).
        pool_stage: has a pool stage (``pool_label_requests`` or ``fit_pool``) to run before training.
        supports_mask: a ``-mask`` form exists.
        trains_on_pseudo_labels: ever rewards a group against its majority vote (as configured).
        failed_query_route: where a queried group goes when its label cannot be obtained (PSEUDO or DROP).
        failed_query_weight: the weight of such a group when it goes to PSEUDO.
    """

    requires: frozenset[str]
    learns: bool
    transforms_advantages: bool
    samples_prompts: bool
    diagnoses: bool
    pool_stage: bool
    supports_mask: bool
    trains_on_pseudo_labels: bool
    failed_query_route: Route
    failed_query_weight: float

    @property
    def needs_hidden_states(self) -> bool:
        return "hidden_states" in self.requires

    @property
    def needs_logprobs(self) -> bool:
        return "logprobs" in self.requires

    @property
    def peeks_at_labels(self) -> bool:
        """Declares ``requires={"labels"}``: sees ground truth in ``select`` (research only; charged)."""
        return "labels" in self.requires


def _has_hook(strategy: object, name: str) -> bool:
    """``strategy``'s class defines ``name`` and, for a :class:`Strategy`, not as the base class's default."""
    fn = getattr(type(strategy), name, None)
    if fn is None or not callable(getattr(strategy, name, None)):
        return False
    return fn is not getattr(Strategy, name, None)


def capabilities_of(strategy: object) -> Capabilities:
    """The :class:`Capabilities` of any strategy object (a :class:`Strategy` or a :class:`StrategyProtocol`).

    For a :class:`Strategy` this is :attr:`Strategy.capabilities` (computed once, cached on the instance)."""
    if isinstance(strategy, Strategy):
        return strategy.capabilities
    return _compute_capabilities(strategy)


def _compute_capabilities(strategy: object) -> Capabilities:
    trains = bool(getattr(strategy, "trains_on_pseudo_labels", False))
    route = Route.parse(getattr(strategy, "failed_query_route", Route.PSEUDO if trains else Route.DROP))
    weight = getattr(strategy, "failed_query_weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float | np.number):
        name = getattr(strategy, "name", type(strategy).__name__)
        raise ValueError(f"strategy {name!r}.failed_query_weight: expected a number in [0, 1], got {weight!r}")
    return Capabilities(
        requires=frozenset(getattr(strategy, "requires", frozenset())),
        learns=_has_hook(strategy, "update"),
        transforms_advantages=_has_hook(strategy, "transform_advantages"),
        samples_prompts=_has_hook(strategy, "prompt_sampler"),
        diagnoses=_has_hook(strategy, "diagnostics"),
        pool_stage=_has_hook(strategy, "pool_label_requests") or _has_hook(strategy, "fit_pool"),
        supports_mask=getattr(type(strategy), "supports_mask", False) is True,
        trains_on_pseudo_labels=trains,
        failed_query_route=route,
        failed_query_weight=float(weight),
    )


def top_k(scores: np.ndarray, k: int, eligible: np.ndarray | None = None) -> np.ndarray:
    """Indices of the ``k`` highest scores among ``eligible`` (stable: ties go to the lower index)."""
    scores = np.asarray(scores, dtype=np.float64)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    idx = np.arange(scores.shape[0]) if eligible is None else np.flatnonzero(eligible)
    order = np.argsort(-scores[idx], kind="mergesort")
    return idx[order[:k]]


class Strategy:
    """Base class for acquisition strategies (see module docstring).

    Args:
        mask: the "-mask" form: groups not queried are DROPPED instead of pseudo-labelled.
        seed: seed of the strategy's private RNG.

    Class attributes:
        name: registry name.
        description: one line shown by ``rlavr strategies``.
        requires: signals the strategy reads (subset of :data:`SIGNALS`).
        supports_mask: whether a ``-mask`` form exists (default False). Set it to True only when ``select``
            honours ``self.mask``: with ``mask=True`` a group that is not queried is DROPPED, never PSEUDO
            (:meth:`route_by_score` does this). Only then does the registry accept ``"<name>-mask"`` and
            ``rlavr strategies`` list the form; :func:`rlavr.testing.check_strategy` checks it.

    Oracle failures: :attr:`trains_on_pseudo_labels` declares whether the rule ever rewards a group against its
    majority vote, and :attr:`failed_query_route` / :attr:`failed_query_weight` say where a group it QUERIED goes
    when its label cannot be obtained (the oracle raised, timed out, answered ``None`` or an invalid value, or
    another writer was still buying it). The engine's ``on_oracle_failure="auto"`` (the default) follows them.
    A rule that never trains on pseudo-labels must declare ``trains_on_pseudo_labels = False`` (as a class
    attribute or a property) when it does not use the ``mask`` flag for that: otherwise its failed queries would
    be pseudo-labelled.
    """

    name: ClassVar[str] = "base"
    description: ClassVar[str] = ""
    requires: ClassVar[frozenset[str]] = frozenset({"answers"})
    supports_mask: ClassVar[bool] = False

    def __init__(self, mask: bool = False, seed: int = 0) -> None:
        if mask and not self.supports_mask:
            raise ValueError(f"{type(self).__name__}: has no '-mask' form (mask=True given); a rule whose select "
                             "honours self.mask declares it with the class attribute supports_mask = True")
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"{type(self).__name__}.seed: expected an int >= 0, got {seed!r}")
        self.mask = bool(mask)
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)

    @property
    def capabilities(self) -> Capabilities:
        """What this rule does besides ``select`` (:class:`Capabilities`), computed on first access and cached;
        :meth:`load_state_dict` recomputes it (``mask`` may change there)."""
        caps = self.__dict__.get("_capabilities")
        if caps is None or caps[0] != self.mask:
            caps = (self.mask, _compute_capabilities(self))
            self.__dict__["_capabilities"] = caps
        return caps[1]

    # ------------------------------------------------------------------ oracle-failure policy
    @property
    def trains_on_pseudo_labels(self) -> bool:
        """Whether this rule (as configured) ever rewards a group against its majority-vote pseudo-label.

        Default: ``not self.mask``, the semantics of :meth:`route_by_score` (groups not queried are pseudo-labelled,
        or dropped in the ``-mask`` form). Rules that never pseudo-label (``gt``, every ``-mask`` form, pos-neg
        pairing, faithful/offline uncertainty consistency) return ``False``; the engine then never trains one of
        their groups on a pseudo-label, not even after an oracle failure."""
        return not self.mask

    @property
    def failed_query_route(self) -> Route:
        """Route of a group this rule queried whose label could not be obtained (``on_oracle_failure="auto"``).

        Default: :attr:`Route.PSEUDO <rlavr.types.Route.PSEUDO>` when the rule pseudo-labels the groups it does
        not query anyway (a failed query is then treated exactly like a group the budget did not reach: the
        rule's own behaviour at a slightly smaller budget), else :attr:`Route.DROP <rlavr.types.Route.DROP>`.
        A rule whose queries are, by construction, the groups whose votes it trusts least (CARE's Stage II) drops
        them whatever it does with the others. Only ``PSEUDO`` or ``DROP``."""
        return Route.PSEUDO if self.trains_on_pseudo_labels else Route.DROP

    @property
    def failed_query_weight(self) -> float:
        """Advantage weight of a failed query routed to ``PSEUDO`` by :attr:`failed_query_route` (in ``[0, 1]``).
        Default 1.0 (the weight :meth:`route_by_score` gives pseudo-labelled groups by default)."""
        return 1.0

    # ------------------------------------------------------------------ the one required method
    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        raise NotImplementedError(f"{type(self).__name__}.select")

    # ------------------------------------------------------------------ optional hooks
    def update(self, batch: RolloutBatch, acquisition: Acquisition, labels: Mapping[str, Label]) -> None:
        """Learn from the labels bought for ``batch`` (called after the policy update). Default: nothing."""

    def transform_advantages(self, batch: RolloutBatch, acquisition: Acquisition,
                             advantages: np.ndarray) -> np.ndarray:
        """Reweight ``(B, G)`` per-rollout advantages after routing and group weights. Default: identity."""
        return advantages

    def diagnostics(self, batch: RolloutBatch, acquisition: Acquisition) -> dict[str, float]:
        """Evaluation-only metrics of the decision just made, graded against the ground truth.

        The engine calls it right after :meth:`select` with ``batch`` carrying ``reference_labels`` (when the
        oracle has a free ``reference()`` lookup and the strategy does not peek), so a rule can log, e.g., its
        classifier's precision while its decisions never see a label. Default: nothing."""
        return {}

    def prompt_sampler(self, pool: Sequence[Mapping[str, Any]], batch_size: int) -> list[int] | None:
        """Choose the indices of the next prompts to sample from ``pool``; ``None`` = the trainer's own order."""
        return None

    def fit_pool(self, batch: RolloutBatch, labels: Mapping[str, Label]) -> dict[str, float]:
        """Calibrate on a probe pool with bought labels before training; returns fitted values. Default: nothing."""
        return {}

    def pool_indices(self, n_rows: int) -> list[int] | None:
        """Which rows of a training dataset of ``n_rows`` prompts form this strategy's pool, in dataset order;
        ``None`` (default) = the caller's rule (the TRL trainer: ``RLAVRConfig.pool_size``, else at most 256 rows).

        A strategy whose pool should scale with the dataset overrides it; draws must come from a generator
        seeded by ``self.seed`` alone (never the global RNG, nor ``self.rng``'s state), so that every process
        and every resume builds the same pool. An explicit pool size (``RLAVRConfig.pool_size``, ``fit_pool(
        max_prompts=...)``) takes precedence over it."""
        return None

    def pool_label_requests(self, pool: RolloutBatch, progress: PoolProgress) -> list[str]:
        """Ids of ``pool`` whose labels :meth:`fit_pool` needs next, most wanted first; ``[]`` = enough.

        The pool stage (:meth:`AcquisitionEngine.fit_pool <rlavr.engine.AcquisitionEngine.fit_pool>`) calls it
        before each purchase round with what was obtained so far (a :class:`~rlavr.types.PoolProgress`:
        ``progress.labels``, ``progress.owned`` = labels already in the ledger, free), buys the ids within the
        budget and, when done, calls :meth:`fit_pool` with the labels obtained. Ids already requested in this fit
        are ignored. Default: ``[]`` (no pool labels: simple strategies need no pool stage).
        """
        return []

    def fit_pool_with_engine(self, engine: AcquisitionEngine, pool: RolloutBatch) -> dict[str, float]:
        """Deprecated: call ``engine.fit_pool(pool)`` (:meth:`AcquisitionEngine.fit_pool
        <rlavr.engine.AcquisitionEngine.fit_pool>`), which asks this strategy what to buy, buys it and fits it.
        ``engine`` must be the engine that holds this strategy (``ValueError`` otherwise)."""
        if engine.strategy is not self:
            raise ValueError(f"fit_pool_with_engine.engine: holds strategy {engine.strategy!r}, not this {self!r}; "
                             "call engine.fit_pool(pool) on the engine of this strategy")
        warnings.warn("Strategy.fit_pool_with_engine(engine, pool) is deprecated: call engine.fit_pool(pool)",
                      DeprecationWarning, stacklevel=2)
        return engine.fit_pool(pool)

    def has_pool_stage(self) -> bool:
        """Whether the strategy implements pool fitting (overrides :meth:`pool_label_requests` or
        :meth:`fit_pool`). Simple strategies have none: nothing pool-related ever runs for them.
        Same as ``self.capabilities.pool_stage``."""
        return self.capabilities.pool_stage

    def wants_pool_fit(self) -> bool:
        """Whether this instance should be fitted on a pool before training (what the TRL trainer's
        ``fit_pool="auto"`` asks). Default: it has a pool stage (:meth:`has_pool_stage`) and is not fitted yet
        (a ``fitted`` attribute, if it has one, is false). Override it when the need depends on the
        configuration (e.g. a strategy whose online variant needs no pool)."""
        return self.has_pool_stage() and not bool(getattr(self, "fitted", False))

    # ------------------------------------------------------------------ state
    @property
    def rng(self) -> np.random.Generator:
        """The strategy's private RNG (never the global one)."""
        return self._rng

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "mask": self.mask, "seed": self.seed,
                "rng": copy.deepcopy(self._rng.bit_generator.state)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name", self.name) != self.name:
            raise ValueError(f"{type(self).__name__}.load_state_dict: state is for strategy {state.get('name')!r}, "
                             f"not {self.name!r}")
        self.mask = bool(state.get("mask", self.mask))
        self.seed = int(state.get("seed", self.seed))
        if "rng" in state:
            self._rng.bit_generator.state = copy.deepcopy(state["rng"])

    # ------------------------------------------------------------------ helpers
    @property
    def display_name(self) -> str:
        return f"{self.name}-mask" if self.mask else self.name

    def check_batch(self, batch: RolloutBatch) -> None:
        """Raise a clear error if the batch lacks a signal this strategy requires."""
        if "labels" in self.requires and batch.reference_labels is None:
            raise ValueError(f"strategy {self.display_name!r} requires reference labels (requires={{'labels'}}); "
                             "the engine provides them only through an oracle with a reference() lookup")

    def reference_known(self, batch: RolloutBatch) -> np.ndarray:
        """``(B,)`` bool: the group HAS a reference label (for label-peeking strategies; see :meth:`check_batch`).

        Partial ground truth (an oracle whose ``reference()`` knows only some prompts) is allowed: a group whose
        reference label is ``None`` is *unverifiable*. rlavr's rule for every label-peeking strategy: the peek
        says nothing about such a group, so it is never selected BY the peek, its score is neutral (0) and its
        vote is not counted as wrong (or right) in metrics; it gets the route the strategy gives a group it did
        not select. ``correctness(None)`` is all False, so without this mask an unverifiable group would look
        like "every rollout wrong" (a large CAG, a wrong vote).
        """
        self.check_batch(batch)
        assert batch.reference_labels is not None
        return np.array([lab is not None for lab in batch.reference_labels], dtype=bool)

    def route_by_score(
        self,
        scores: np.ndarray,
        budget: BudgetView,
        eligible: np.ndarray | None = None,
        pseudo_weights: np.ndarray | float = 1.0,
        metrics: Mapping[str, float] | None = None,
    ) -> Acquisition:
        """Standard routing: groups whose label is already owned are queried (free); the ``budget.remaining``
        highest-scoring other ``eligible`` groups are queried; everything else is pseudo-labelled with
        ``pseudo_weights`` (or dropped in the ``-mask`` form).
        """
        scores = np.asarray(scores, dtype=np.float64)
        B = scores.shape[0]
        if budget.known.shape != (B,):
            raise ValueError(f"BudgetView.known: shape {budget.known.shape} does not match the batch (B={B})")
        routes = np.full(B, Route.DROP if self.mask else Route.PSEUDO, dtype=np.int8)
        routes[budget.known] = Route.QUERY
        elig = ~budget.known if eligible is None else (np.asarray(eligible, dtype=bool) & ~budget.known)
        chosen = top_k(scores, budget.remaining, elig)
        routes[chosen] = Route.QUERY
        weights = np.ones(B, dtype=np.float64)
        pw = np.broadcast_to(np.asarray(pseudo_weights, dtype=np.float64), (B,))
        weights = np.where(routes == Route.PSEUDO, pw, weights)
        return Acquisition(routes=routes, weights=weights, scores=np.nan_to_num(scores, nan=0.0, posinf=1e300,
                                                                               neginf=-1e300),
                           metrics=dict(metrics or {}))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mask={self.mask}, seed={self.seed})"
