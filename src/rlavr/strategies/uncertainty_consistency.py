r"""Uncertainty consistency: select the queries whose *subjective* uncertainty agrees with *objective* correctness.

Paper: Yi, Hu, Li, Ouyang, Ding, Liu, *Learn More with Less: Uncertainty Consistency Guided Query Selection for
RLVR*, arXiv 2601.22595 (ICLR 2026). User guide and maths: docs/strategies/uncertainty_consistency.md. Only the
abstract, the first page and secondary sources were readable, so every formula carries a tag (the tags of
docs/strategies/index.md):

* **[V]** verified (abstract / quoted secondary source), **[R]** reconstruction (most defensible reading,
  re-check against the full text), **[D]** a toolkit default, not a paper value.

Notation: a query ``q`` with ``G`` rollouts, binary correctness ``b_i`` and subjective uncertainty ``U_i``
(default the mean token negative log-likelihood ``NLL_i = -(1/T_i) sum_t log p_t`` [D]).

Offline metric [V definition, R use]: the point-biserial correlation coefficient, with ``K1`` correct and
``K0 = G - K1`` wrong rollouts and the *population* std ``s_U``::

    r_pb(q) = (mean(U | b=1) - mean(U | b=0)) / s_U * sqrt(K1 * K0) / G        (= Pearson corr(b, U))

Strongly negative ``r_pb`` = good consistency (confident rollouts are the correct ones) [V, topic page].
Undefined cases (``K1 in {0, G}`` or ``s_U = 0``) give ``r_pb := 0`` [D].

Online score [R, constructed so the verified property holds]::

    C_on(q) = -(1/G) sum_i A_i * U_i ,     A = GRPO advantages of b

With population-std advantages ``(1/G) sum_i A_i U_i = Cov(b, U) / sigma_b = sigma_U * r_pb``, hence

    C_on(q) = -sigma_U(q) * r_pb(q)          (ddof = 1: times sqrt((G-1)/G), up to eps)

a strictly decreasing function of ``r_pb`` at fixed ``sigma_U`` ("strictly negatively correlated with offline
PBC" [V]); with ``u_norm="group_z"`` it is exactly ``-r_pb``. Higher ``C_on`` = more consistent = selected.

Pseudo-labels before labels exist [R, rlavr adaptation]: at selection time ``b`` is unknown, so the
strategy scores with the majority-vote pseudo-rewards ``b~_i = 1[a_i == majority answer]`` (``batch.pseudo_correct``)::

    C_on^pl(q) = -(1/G) sum_i A^pl_i * U_i

Modes:

* ``"faithful"`` (default; the paper's regime, trains only on selected queries): QUERY the ``budget.remaining``
  eligible groups with the largest ``C_on^pl`` (ties: lower majority agreement first), DROP the rest. A group
  is eligible iff ``0 < majority size < G``: a unanimous (or answer-less) group cannot get a gradient from a
  label under group-normalised advantages (all its advantages are 0). Groups whose label is already owned are queried for free.
  Because the rest is dropped, this strategy has no separate ``-mask`` form.
* ``"hybrid"`` (rlavr extension, NOT in the paper): ``C_on^pl > 0`` -> PSEUDO with weight
  ``clip(C_on^pl / tau, 0, 1)``, ``tau`` = the batch's ``hybrid_quantile`` quantile of positive ``C_on^pl`` [D 0.9];
  ``C_on^pl <= 0`` (dissenters more confident than the majority: the pseudo-label is suspect) -> QUERY, most
  negative first, while the budget lasts; everything else -> DROP.
* ``"offline"`` [R]: the paper's offline selection. :meth:`fit_pool` computes ``r_pb`` for every pool query from
  bought labels and keeps the ``pool_ratio`` [V 0.30] most negative; :meth:`prompt_sampler` then samples only
  those prompts and :meth:`select` QUERIES them (labels already owned: free) and drops anything else.

  Pool [D]: the paper selects from the whole training set, so the pool is sized relative to the dataset:
  :meth:`pool_indices` keeps ``n = min(N, max(min(N, 256), ceil(pool_fraction * N)))`` of the ``N`` dataset
  rows [D ``pool_fraction`` 1.0: the whole dataset], drawn uniformly without replacement by a generator seeded
  with ``seed`` (never the global RNG); the TRL trainer uses it unless ``RLAVRConfig.pool_size`` is set.
  Labels are bought in a uniformly random order of the pool (:meth:`pool_label_requests`: owned labels first,
  then a seeded permutation), so a budget smaller than the pool labels a uniform sample of it, never the first
  rows in dataset order. With a ratio budget ``b`` the pool gets ``floor(b * n)`` labels and training uses
  ``ceil(pool_ratio * labelled)`` prompts (e.g. ``b = 0.2``: 6% of the dataset).

After labels arrive [R, optional, ``drop_inconsistent_after_label``, D False]: :meth:`transform_advantages`
recomputes ``C_on`` from the true advantages of queried groups and zeroes groups with ``C_on <= 0``; their labels
stay in the ledger.

The paper's hyper-parameter ``gamma`` could not be recovered and is deliberately NOT implemented.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from rlavr.advantages import grpo_advantages
from rlavr.budget import BudgetView, ceil_share
from rlavr.strategies.base import Strategy
from rlavr.strategies.registry import register
from rlavr.types import Acquisition, Label, PoolProgress, RolloutBatch, Route

__all__ = [
    "UNCERTAINTY_SIGNALS",
    "UncertaintyConsistency",
    "UncertaintyConsistencyConfig",
    "normalise_uncertainty",
    "online_consistency",
    "point_biserial",
    "rollout_uncertainty",
    "topk_entropy",
    "uncertainty_consistency",
]

UncertaintyFn = Callable[[RolloutBatch], np.ndarray]
"""A custom subjective-uncertainty signal: ``fn(batch) -> (B, G)`` finite floats, higher = more uncertain."""


# ============================================================================================ formulas


def _as_2d(name: str, x: np.ndarray) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError(f"{name}: expected shape (B, G) or (G,), got {a.shape}")
    return a


def point_biserial(correct: np.ndarray, uncertainty: np.ndarray) -> np.ndarray:
    r"""Per-query point-biserial correlation ``r_pb`` between correctness and uncertainty [V definition].

    .. math:: r_{pb} = \frac{\bar U_1 - \bar U_0}{s_U}\,\frac{\sqrt{K_1 K_0}}{K}, \qquad s_U = \text{population std}

    which equals the Pearson correlation of ``b`` and ``U``. ``r_pb := 0`` when all rollouts are right, all
    wrong, or ``s_U = 0`` [D] (no evidence; such queries give no GRPO gradient either).

    Args:
        correct: ``(B, G)`` (or ``(G,)``) correctness, bool or {0, 1}.
        uncertainty: same shape, finite subjective uncertainty.
    Returns:
        ``(B,)`` (or a 0-d array for 1-D inputs) in ``[-1, 1]``.
    """
    b = _as_2d("point_biserial.correct", correct)
    u = _as_2d("point_biserial.uncertainty", uncertainty)
    if b.shape != u.shape:
        raise ValueError(f"point_biserial: correct {b.shape} and uncertainty {u.shape} differ in shape")
    if not np.all((b == 0) | (b == 1)):
        raise ValueError("point_biserial.correct: must be binary (bool or 0/1)")
    if not np.all(np.isfinite(u)):
        raise ValueError("point_biserial.uncertainty: contains NaN or inf")
    K = b.shape[1]
    k1 = b.sum(axis=1)
    k0 = K - k1
    mean1 = np.divide((b * u).sum(axis=1), k1, out=np.zeros(b.shape[0]), where=k1 > 0)
    mean0 = np.divide(((1 - b) * u).sum(axis=1), k0, out=np.zeros(b.shape[0]), where=k0 > 0)
    s_u = u.std(axis=1)
    defined = (k1 > 0) & (k0 > 0) & (s_u > 1e-12)
    r = np.divide((mean1 - mean0) * np.sqrt(k1 * k0) / K, s_u, out=np.zeros(b.shape[0]), where=defined)
    r = np.clip(r, -1.0, 1.0)
    return r[0] if np.ndim(correct) == 1 else r


def uncertainty_consistency(correct: np.ndarray, uncertainty: np.ndarray) -> float:
    """Pool-level PBC over all ``(query, rollout)`` pairs [R] (docs/strategies/uncertainty_consistency.md,
    "The maths").

    A diagnostic for an uncertainty *estimator*: strongly negative = high uncertainty goes with wrong answers.
    Also used to validate PivotTrace's pivot-density proxies on the probe set.
    """
    b = np.asarray(correct, dtype=np.float64).reshape(-1)
    u = np.asarray(uncertainty, dtype=np.float64).reshape(-1)
    if b.shape != u.shape:
        raise ValueError(f"uncertainty_consistency: correct has {b.size} entries, uncertainty {u.size}")
    if b.size == 0:
        raise ValueError("uncertainty_consistency: empty input")
    return float(point_biserial(b, u))


def online_consistency(
    rewards: np.ndarray,
    uncertainty: np.ndarray,
    std: Literal["population", "unbiased"] = "population",
    eps: float | None = None,
) -> np.ndarray:
    r"""Online uncertainty consistency ``C_on = -(1/G) sum_i A_i U_i`` per group [R].

    ``A`` = :func:`rlavr.advantages.grpo_advantages` of ``rewards`` (true or pseudo). With ``std="population"``
    ``C_on = -sigma_U * r_pb`` exactly; with ``"unbiased"`` (ddof 1 + eps, what trains the policy)
    ``C_on = -sqrt((G-1)/G) * sigma_U * r_pb * s/(s + eps)``. Zero for zero-variance rewards; invariant to a
    constant shift of ``U`` (``sum_i A_i = 0``).

    Args:
        rewards: ``(B, G)`` binary rewards.
        uncertainty: ``(B, G)`` subjective uncertainty.
        std: advantage std convention.
        eps: eps of the ``"unbiased"`` convention (default that of ``grpo_advantages``).
    Returns:
        ``(B,)`` scores; higher = more consistent.
    """
    r = _as_2d("online_consistency.rewards", rewards)
    u = _as_2d("online_consistency.uncertainty", uncertainty)
    if r.shape != u.shape:
        raise ValueError(f"online_consistency: rewards {r.shape} and uncertainty {u.shape} differ in shape")
    if not np.all(np.isfinite(u)):
        raise ValueError("online_consistency.uncertainty: contains NaN or inf")
    adv = grpo_advantages(r, std=std, eps=eps)
    c = -(adv * u).mean(axis=1)
    return c[0] if np.ndim(rewards) == 1 else c


def consistency_from_advantages(advantages: np.ndarray, uncertainty: np.ndarray) -> np.ndarray:
    """``C_on = -(1/G) sum_i A_i U_i`` for advantages that were already computed (``(B, G)`` -> ``(B,)``)."""
    a = _as_2d("consistency_from_advantages.advantages", advantages)
    u = _as_2d("consistency_from_advantages.uncertainty", uncertainty)
    if a.shape != u.shape:
        raise ValueError(f"consistency_from_advantages: advantages {a.shape} and uncertainty {u.shape} differ")
    return -(a * u).mean(axis=1)


def topk_entropy(topk_logprobs: np.ndarray) -> float:
    r"""Mean token entropy from top-k log-probabilities, renormalised over the k kept tokens [R].

    ``H_t = -sum_k p~_{t,k} log p~_{t,k}`` with ``p~ = softmax(topk_logprobs[t])``; returns ``mean_t H_t``. This
    approximates the exact entropy (which needs the full distribution) from what vLLM returns with
    ``SamplingParams(logprobs=k)``. Store the result as ``Rollout.attention["mean_token_entropy"]``.

    Args:
        topk_logprobs: ``(T, k)`` log-probabilities of the top-k tokens at each of ``T`` positions
            (``-inf`` allowed for missing entries).
    """
    lp = np.asarray(topk_logprobs, dtype=np.float64)
    if lp.ndim != 2 or lp.shape[0] == 0 or lp.shape[1] == 0:
        raise ValueError(f"topk_entropy.topk_logprobs: expected a non-empty (T, k) array, got shape {lp.shape}")
    if np.any(np.isnan(lp)) or np.any(lp == np.inf):
        raise ValueError("topk_entropy.topk_logprobs: contains NaN or +inf")
    m = lp.max(axis=1, keepdims=True)
    if np.any(~np.isfinite(m)):
        raise ValueError("topk_entropy.topk_logprobs: a position has no finite log-probability")
    p = np.exp(lp - m)
    p /= p.sum(axis=1, keepdims=True)
    h = -(p * np.log(np.maximum(p, 1e-300))).sum(axis=1)
    return float(h.mean())


def _nll(batch: RolloutBatch) -> np.ndarray:
    return -batch.mean_logprob


def _ppl(batch: RolloutBatch) -> np.ndarray:
    return np.exp(-batch.mean_logprob)


def _entropy(batch: RolloutBatch) -> np.ndarray:
    out = np.empty((batch.B, batch.G), dtype=np.float64)
    for i, g in enumerate(batch.groups):
        for j, r in enumerate(g.rollouts):
            v = None if r.attention is None else r.attention.get("mean_token_entropy")
            if v is None:
                raise ValueError(f"uncertainty='entropy': rollout {j} of group {g.id!r} has no "
                                 "Rollout.attention['mean_token_entropy'] (compute it with topk_entropy() from "
                                 "top-k log-probs, or from the trainer's forward pass)")
            out[i, j] = float(v)
    return out


UNCERTAINTY_SIGNALS: dict[str, UncertaintyFn] = {"nll": _nll, "ppl": _ppl, "entropy": _entropy}
"""Named subjective-uncertainty signals (higher = more uncertain), each ``fn(batch) -> (B, G)``:

* ``nll``: mean token negative log-likelihood ``-mean_t log p_t`` (needs log-probs) [D default];
* ``ppl``: perplexity ``exp(NLL)``;
* ``entropy``: mean token entropy read from ``Rollout.attention["mean_token_entropy"]`` (see :func:`topk_entropy`).
"""


def rollout_uncertainty(batch: RolloutBatch, signal: str | UncertaintyFn = "nll") -> np.ndarray:
    """``(B, G)`` subjective uncertainty of every rollout from a named signal or a callable (validated)."""
    if callable(signal):
        fn, name = signal, getattr(signal, "__name__", "callable")
    else:
        if signal not in UNCERTAINTY_SIGNALS:
            raise ValueError(f"uncertainty: unknown signal {signal!r}; expected one of "
                             f"{sorted(UNCERTAINTY_SIGNALS)} or a callable batch -> (B, G) array")
        fn, name = UNCERTAINTY_SIGNALS[signal], signal
    u = np.asarray(fn(batch), dtype=np.float64)
    if u.shape != (batch.B, batch.G):
        raise ValueError(f"uncertainty: signal {name!r} returned shape {u.shape}, expected (B, G) = "
                         f"({batch.B}, {batch.G})")
    if not np.all(np.isfinite(u)):
        i, j = np.argwhere(~np.isfinite(u))[0]
        raise ValueError(f"uncertainty: signal {name!r} is not finite ({u[i, j]!r}) at rollout {j} of group "
                         f"{batch.ids[i]!r}")
    return u


def normalise_uncertainty(u: np.ndarray, mode: Literal["none", "batch_z", "group_z"]) -> np.ndarray:
    """Optional normalisation of ``U`` [D ``none``]: ``batch_z`` z-scores over all rollouts of the batch,
    ``group_z`` within each group (population std; a constant group becomes 0). With ``group_z`` the online
    score is exactly ``-r_pb`` (population advantages)."""
    u = np.asarray(u, dtype=np.float64)
    if mode == "none":
        return u
    if mode == "batch_z":
        sd = u.std()
        return (u - u.mean()) / sd if sd > 1e-12 else np.zeros_like(u)
    if mode == "group_z":
        mu = u.mean(axis=1, keepdims=True)
        sd = u.std(axis=1, keepdims=True)
        return np.divide(u - mu, sd, out=np.zeros_like(u), where=sd > 1e-12)
    raise ValueError(f"u_norm: expected 'none', 'batch_z' or 'group_z', got {mode!r}")


_MIN_POOL = 256
"""Smallest offline pool (or the whole dataset if smaller), whatever ``pool_fraction``."""
_POOL_SALT = 0x706F6F6C  # "pool": the pool sample's generator is seeded by (seed, this), never by self.rng's state

# ============================================================================================ config


class UncertaintyConsistencyConfig(BaseModel):
    """Hyper-parameters of :class:`UncertaintyConsistency` (tags: [V] paper, [R] reconstruction, [D] default).

    Attributes:
        mode: ``"faithful"`` (query top ``C_on^pl``, drop rest) [R], ``"hybrid"`` (rlavr extension) or
            ``"offline"`` (pool-level PBC selection via :meth:`~UncertaintyConsistency.fit_pool`) [R].
        uncertainty: ``"nll"`` [D], ``"ppl"``, ``"entropy"`` or a callable ``batch -> (B, G)``.
        u_norm: ``"none"`` [D], ``"batch_z"`` or ``"group_z"``.
        advantage_std: std convention of the advantages inside ``C_on`` [D ``"population"``: the exact
            identity ``C_on = -sigma_U r_pb``; the ranking is the same as ``"unbiased"`` up to eps].
        eps: eps of the ``"unbiased"`` convention [D 1e-6].
        hybrid_quantile: quantile of positive ``C_on^pl`` used as ``tau`` in hybrid mode [D 0.9].
        pool_ratio: fraction of the pool kept by offline selection [V 0.30].
        pool_fraction: offline pool size relative to the dataset: :meth:`~UncertaintyConsistency.pool_indices`
            keeps ``max(min(N, 256), ceil(pool_fraction * N))`` of ``N`` rows, a uniform seeded sample [D 1.0].
        drop_inconsistent_after_label: zero queried groups whose TRUE ``C_on <= 0`` [R, D False].
        id_column: pool row key holding the prompt id, for :meth:`~UncertaintyConsistency.prompt_sampler`.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    mode: Literal["faithful", "hybrid", "offline"] = "faithful"
    uncertainty: Literal["nll", "ppl", "entropy"] | UncertaintyFn = "nll"
    u_norm: Literal["none", "batch_z", "group_z"] = "none"
    advantage_std: Literal["population", "unbiased"] = "population"
    eps: float = Field(default=1e-6, gt=0.0, le=1.0)
    hybrid_quantile: float = Field(default=0.9, gt=0.0, le=1.0)
    pool_ratio: float = Field(default=0.30, gt=0.0, le=1.0)
    pool_fraction: float = Field(default=1.0, gt=0.0, le=1.0)
    drop_inconsistent_after_label: bool = False
    id_column: str = "id"


def _make_config(cls: type[BaseModel], config: BaseModel | Mapping[str, Any] | None,
                 overrides: Mapping[str, Any]) -> Any:
    base: dict[str, Any] = {}
    if isinstance(config, (cls, Mapping)):
        base = dict(config)
    elif config is not None:
        raise ValueError(f"config: expected {cls.__name__}, a dict or None, got {type(config).__name__}")
    return cls.model_validate({**base, **overrides})


# ============================================================================================ strategy


@register(aliases=("pbc",))
class UncertaintyConsistency(Strategy):
    """Uncertainty-consistency query selection (see module docstring for the maths and the tags).

    Args:
        mask: not supported (the faithful mode already trains only on queried prompts).
        seed: seed of the private RNG (used by the offline prompt sampler).
        config: an :class:`UncertaintyConsistencyConfig` or a dict; keyword arguments override its fields.
    """

    name = "uncertainty-consistency"
    description = "Query the prompts whose uncertainty best agrees with (pseudo-)correctness: online PBC score."
    requires = frozenset({"answers", "logprobs"})
    supports_mask = False

    def __init__(self, mask: bool = False, seed: int = 0,
                 config: UncertaintyConsistencyConfig | Mapping[str, Any] | None = None, **overrides: Any) -> None:
        super().__init__(mask=mask, seed=seed)
        self.config: UncertaintyConsistencyConfig = _make_config(UncertaintyConsistencyConfig, config, overrides)
        self.pool_pbc: dict[str, float] = {}
        self.pool_selected: list[str] = []
        self._sampler_queue: list[int] = []
        self.n_labelled_groups = 0
        self.n_sign_agree = 0
        self.n_true_consistent = 0
        self.last_post_label_drops = 0

    @property
    def trains_on_pseudo_labels(self) -> bool:
        """Only in ``mode="hybrid"`` (the rlavr extension); the paper's faithful and offline modes never do."""
        return self.config.mode == "hybrid"

    @property
    def failed_query_route(self) -> Route:
        """DROP in every mode: faithful/offline drop whatever they do not query, and hybrid queries exactly the
        groups whose pseudo-label it finds suspect (``C_on^pl <= 0``), so a failed query must not fall back to it."""
        return Route.DROP

    # ------------------------------------------------------------------ signals
    def uncertainty(self, batch: RolloutBatch) -> np.ndarray:
        """``(B, G)`` subjective uncertainty after ``u_norm``."""
        return normalise_uncertainty(rollout_uncertainty(batch, self.config.uncertainty), self.config.u_norm)

    def pseudo_consistency(self, batch: RolloutBatch) -> np.ndarray:
        """``(B,)`` ``C_on^pl``: online consistency with majority-vote pseudo-rewards [R, rlavr adaptation].

        The pseudo-reward is ``batch.pseudo_correct`` = ``1[a_j == majority answer]`` under the answer space's
        equivalence, exactly the reward pseudo-labelled training and Oracle-CAG use (not majority-cluster
        membership, which differs for a non-transitive equivalence)."""
        pseudo_r = batch.pseudo_correct.astype(np.float64)
        return online_consistency(pseudo_r, self.uncertainty(batch), std=self.config.advantage_std,
                                  eps=self.config.eps)

    @staticmethod
    def eligible(batch: RolloutBatch) -> np.ndarray:
        """``(B,)`` groups where a label can create a gradient: ``0 < majority size < G`` (otherwise every
        advantage is 0 whatever the label)."""
        ms = batch.votes.majority_size
        return (ms > 0) & (ms < batch.G)

    # ------------------------------------------------------------------ select
    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        self.check_batch(batch)
        B = batch.B
        if budget.known.shape != (B,):
            raise ValueError(f"BudgetView.known: shape {budget.known.shape} does not match the batch (B={B})")
        if self.config.mode == "offline":
            return self._select_offline(batch, budget)
        score = self.pseudo_consistency(batch)
        agree = batch.votes.majority_ratio
        elig = self.eligible(batch)
        routes = np.full(B, Route.DROP, dtype=np.int8)
        weights = np.ones(B, dtype=np.float64)
        routes[budget.known] = Route.QUERY
        idx = np.arange(B)
        if self.config.mode == "faithful":
            cand = elig & ~budget.known
            # largest C_on^pl first; ties -> lower agreement alpha; then batch order
            order = np.lexsort((idx, agree, -score))
            chosen = order[cand[order]][: budget.remaining]
            routes[chosen] = Route.QUERY
            metrics = {"consistency_mean": float(score.mean()),
                       "selected_consistency_mean": float(score[chosen].mean()) if chosen.size else 0.0,
                       "eligible": float(elig.sum())}
            return Acquisition(routes=routes, weights=weights, scores=score, metrics=metrics)
        # hybrid [rlavr extension]
        positive = (score > 0) & elig & ~budget.known
        suspect = (score <= 0) & elig & ~budget.known
        order = np.lexsort((idx, agree, score))  # most negative first
        chosen = order[suspect[order]][: budget.remaining]
        routes[chosen] = Route.QUERY
        tau = float(np.quantile(score[score > 0], self.config.hybrid_quantile)) if np.any(score > 0) else 1.0
        pw = np.clip(score / tau, 0.0, 1.0)
        # unanimous groups with a vote: pseudo-labelled at weight 0 would be a no-op; they are dropped
        routes[positive] = Route.PSEUDO
        weights = np.where(positive, pw, weights)
        metrics = {"consistency_mean": float(score.mean()), "hybrid_tau": tau,
                   "suspect": float((score <= 0)[elig].sum()), "eligible": float(elig.sum())}
        # acquisition score: "more wanted for a label" = less consistent in hybrid mode
        return Acquisition(routes=routes, weights=weights, scores=-score, metrics=metrics)

    def _select_offline(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        if not self.pool_selected:
            raise ValueError("UncertaintyConsistency(mode='offline'): call fit_pool(pool_batch, labels) first")
        B = batch.B
        selected = np.isin(np.asarray(batch.ids, dtype=object), np.asarray(self.pool_selected, dtype=object))
        pbc = np.array([self.pool_pbc.get(i, 0.0) for i in batch.ids], dtype=np.float64)
        score = np.where(selected, -pbc, -np.inf)
        routes = np.full(B, Route.DROP, dtype=np.int8)
        routes[selected & budget.known] = Route.QUERY
        todo = selected & ~budget.known
        order = np.lexsort((np.arange(B), -score))
        routes[order[todo[order]][: budget.remaining]] = Route.QUERY
        return Acquisition(routes=routes, weights=np.ones(B), scores=np.where(selected, -pbc, -2.0),
                           metrics={"offline_selected_in_batch": float(selected.sum())})

    # ------------------------------------------------------------------ offline (pool-level) selection
    def wants_pool_fit(self) -> bool:
        """Only ``mode="offline"`` reads the pool; the online modes never do."""
        return self.config.mode == "offline" and not self.pool_selected

    def fit_pool(self, batch: RolloutBatch, labels: Mapping[str, Label]) -> dict[str, float]:
        """Offline PBC selection [R]: rank the pool by ``r_pb`` (true labels) ascending, keep ``pool_ratio``.

        ``labels`` maps prompt id -> ground truth for (a subset of) the pool; only labelled prompts can be
        scored. The engine's pool stage (:meth:`AcquisitionEngine.fit_pool <rlavr.engine.AcquisitionEngine.fit_pool>`)
        buys them through the ledger, as :meth:`pool_label_requests` asks, so they are charged.
        Returns ``{"n_scored", "n_selected", "pbc_mean", "pbc_selected_mean", "pool_pbc"}`` where ``pool_pbc``
        is the pooled PBC of the estimator over all scored rollouts.
        """
        rows = np.array([i in labels for i in batch.ids], dtype=bool)
        if not rows.any():
            raise ValueError("fit_pool.labels: none of the pool's prompt ids has a label")
        lab = [labels.get(i) for i in batch.ids]
        correct = batch.correctness(lab)[rows]
        u = self.uncertainty(batch)[rows]
        r = point_biserial(correct, u)
        ids = [i for i, keep in zip(batch.ids, rows, strict=True) if keep]
        k = max(1, ceil_share(self.config.pool_ratio, len(ids)))
        order = np.lexsort((np.arange(len(ids)), r))  # most negative first
        self.pool_pbc = {i: float(v) for i, v in zip(ids, r, strict=True)}
        self.pool_selected = [ids[j] for j in order[:k]]
        self._sampler_queue = []
        return {"n_scored": float(len(ids)), "n_selected": float(k), "pbc_mean": float(r.mean()),
                "pbc_selected_mean": float(r[order[:k]].mean()),
                "pool_pbc": uncertainty_consistency(correct, u)}

    def pool_indices(self, n_rows: int) -> list[int] | None:
        """Offline mode: the pool rows of a dataset of ``n_rows`` prompts, sorted: ``min(N, max(min(N, 256),
        ceil(pool_fraction * N)))`` of them, drawn uniformly without replacement by a generator seeded with
        ``(seed, "pool")`` only (the same pool on every process and resume; ``self.rng`` is not touched). Other
        modes: ``None`` (no pool).

        Raises:
            ValueError: ``n_rows < 1``.
        """
        if self.config.mode != "offline":
            return None
        if isinstance(n_rows, bool) or not isinstance(n_rows, int | np.integer) or n_rows < 1:
            raise ValueError(f"pool_indices.n_rows: expected an int >= 1, got {n_rows!r}")
        n = int(n_rows)
        size = min(n, max(min(n, _MIN_POOL), ceil_share(self.config.pool_fraction, n)))
        if size == n:
            return list(range(n))
        gen = np.random.default_rng([self.seed, _POOL_SALT])
        return sorted(int(i) for i in gen.choice(n, size, replace=False))

    def pool_label_requests(self, pool: RolloutBatch, progress: PoolProgress) -> list[str]:
        """One round: every pool prompt (the paper assumes a fully labelled pool), labels already owned first,
        then the others in a uniformly random order drawn with the strategy's private RNG. Bought by the engine's
        pool stage, :meth:`AcquisitionEngine.fit_pool <rlavr.engine.AcquisitionEngine.fit_pool>` (charged, never
        twice); with a budget below
        the pool's, a uniform random sample of the pool is labelled and scored (never the first rows)."""
        if progress.rounds:
            return []
        owned = [i for i in pool.ids if i in progress.owned]
        rest = [i for i in pool.ids if i not in progress.owned]
        return owned + [rest[int(k)] for k in self.rng.permutation(len(rest))]

    def prompt_sampler(self, pool: Sequence[Mapping[str, Any]], batch_size: int) -> list[int] | None:
        """Offline mode: indices of the next ``batch_size`` pool rows, drawn from the selected subset (a seeded
        random permutation, refilled when exhausted). Other modes: ``None`` (the trainer's own order)."""
        if self.config.mode != "offline":
            return None
        if batch_size < 1:
            raise ValueError(f"prompt_sampler.batch_size: must be >= 1, got {batch_size}")
        if not self.pool_selected:
            raise ValueError("UncertaintyConsistency.prompt_sampler: call fit_pool first (mode='offline')")
        col = self.config.id_column
        pos: dict[str, int] = {}
        for n, row in enumerate(pool):
            if col not in row:
                raise ValueError(f"prompt_sampler.pool: row {n} has no id column {col!r}")
            pos.setdefault(str(row[col]), n)
        missing = [i for i in self.pool_selected if i not in pos]
        if missing:
            raise ValueError(f"prompt_sampler.pool: selected prompt id {missing[0]!r} is not in the pool "
                             f"({len(missing)} missing)")
        sel = np.array([pos[i] for i in self.pool_selected], dtype=np.int64)
        out: list[int] = []
        while len(out) < batch_size:
            if not self._sampler_queue:
                self._sampler_queue = [int(x) for x in sel[self.rng.permutation(sel.size)]]
            take = batch_size - len(out)
            out += self._sampler_queue[:take]
            self._sampler_queue = self._sampler_queue[take:]
        return out

    # ------------------------------------------------------------------ after labels
    def transform_advantages(self, batch: RolloutBatch, acquisition: Acquisition,
                             advantages: np.ndarray) -> np.ndarray:
        """Optionally zero queried groups whose TRUE ``C_on <= 0`` [R]. ``C_on`` is recomputed from the given
        (true-label) advantages; its sign does not depend on the std convention or on group weights."""
        if not self.config.drop_inconsistent_after_label:
            self.last_post_label_drops = 0
            return advantages
        adv = np.asarray(advantages, dtype=np.float64)
        c = consistency_from_advantages(adv, self.uncertainty(batch))
        kill = acquisition.query & (c <= 0) & np.any(adv != 0, axis=1)
        self.last_post_label_drops = int(kill.sum())
        return np.where(kill[:, None], 0.0, adv)

    def update(self, batch: RolloutBatch, acquisition: Acquisition, labels: Mapping[str, Label]) -> None:
        """Track how well the pseudo-label score predicts the true one on the groups that got labels:
        counts of labelled groups, sign agreement of ``C_on^pl`` and ``C_on``, and true ``C_on > 0``."""
        rows = np.array([i in labels for i in batch.ids], dtype=bool) & acquisition.query
        if not rows.any():
            return
        lab = [labels.get(i) for i in batch.ids]
        u = self.uncertainty(batch)
        true_c = online_consistency(batch.correctness(lab).astype(np.float64), u, std=self.config.advantage_std,
                                    eps=self.config.eps)[rows]
        pl_c = online_consistency(batch.pseudo_correct.astype(np.float64), u, std=self.config.advantage_std,
                                  eps=self.config.eps)[rows]
        self.n_labelled_groups += int(rows.sum())
        self.n_sign_agree += int((np.sign(true_c) == np.sign(pl_c)).sum())
        self.n_true_consistent += int((true_c > 0).sum())

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        s = super().state_dict()
        s.update({"pool_pbc": dict(self.pool_pbc), "pool_selected": list(self.pool_selected),
                  "sampler_queue": list(self._sampler_queue), "n_labelled_groups": self.n_labelled_groups,
                  "n_sign_agree": self.n_sign_agree, "n_true_consistent": self.n_true_consistent})
        return copy.deepcopy(s)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.pool_pbc = {str(k): float(v) for k, v in state.get("pool_pbc", {}).items()}
        self.pool_selected = [str(i) for i in state.get("pool_selected", [])]
        self._sampler_queue = [int(i) for i in state.get("sampler_queue", [])]
        self.n_labelled_groups = int(state.get("n_labelled_groups", 0))
        self.n_sign_agree = int(state.get("n_sign_agree", 0))
        self.n_true_consistent = int(state.get("n_true_consistent", 0))
