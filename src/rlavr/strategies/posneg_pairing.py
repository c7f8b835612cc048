r"""Positive-negative pairing with Weighted GRPO ("Beyond Variance").

Paper: Sheng, Li, Pang, Peng, Ma, *Beyond Variance: Prompt-Efficient RLVR via Rare-Event Amplification and
Bidirectional Pairing*, arXiv 2602.03452. User guide and maths: docs/strategies/posneg_pairing.md. Only the
abstract and a third-party method note were readable: **[V]** verified, **[R]** reconstruction, **[D]** toolkit
default (the tags of docs/strategies/index.md).

Idea [V]: every update uses one *pair*: a hard-but-solvable prompt ``q+`` (low but non-zero success rate) as a
positive anchor and an easy-but-brittle prompt ``q-`` (high but not perfect success rate) whose rare failures
give explicit negative signal; Weighted GRPO amplifies rare successes on ``q+`` and rare failures on ``q-``.
Selection happens once, before training [V, note].

Bands with ``G`` rollouts and ``c`` [D 3]: ``q-``: ``p in [1 - c/G, 1 - 1/G]`` [V]; ``q+``: ``p in [1/G, c/G]``
[R, by symmetry]. Preference [R]: ``q+`` with the smallest ``p`` (rarest success), ``q-`` with the largest ``p``
below 1 (rarest failure); ties broken by the private seeded RNG.

Label cost [R, rlavr adaptation]: the paper probes a labelled pool; here candidates are pre-screened
WITHOUT labels from the majority vote. Correct rollouts form exactly one answer cluster, so ``p * G`` is the size
of some cluster; hence a group can be a ``q+`` only if one of its clusters has size in ``[1, c]`` (candidates
ranked by majority agreement ``alpha`` ascending: hardest first) and a ``q-`` only if its majority cluster has
size in ``[G - c, G - 1]`` (ranked by ``alpha`` descending). :meth:`PosNegPairing.pool_label_requests` then asks,
round after round, for the labels of the next candidate of each still-unconfirmed role until a valid pair is
confirmed or ``max_probe_labels`` is spent; the engine's pool stage (:meth:`AcquisitionEngine.fit_pool
<rlavr.engine.AcquisitionEngine.fit_pool>`) buys them (charged through the ledger, never twice) and the total
spent is reported (``labels_spent``).

Weighted GRPO [V phrases, R formula], applied by :meth:`PosNegPairing.transform_advantages` to the ``(B, G)``
advantages AFTER group normalisation and group weights (``AcquisitionEngine.advantages`` calls it; a trainer
integration must call it on the per-group matrix before the loss)::

    A'_i = w_pos    * A_i   if q = q+ and b_i = 1      (rare successes)
    A'_i = lambda_neg * A_i if q = q- and b_i = 0      (rare failures)
    A'_i = w_common * A_i   otherwise, for q+ / q-      (common outcomes)      [D w_pos = lambda_neg = 2, w_common = 1]

Defaults [D]: ``w_pos = lambda_neg = 2.0``, ``w_common = 1.0``. The paper's values are unknown (sweep
``{0.5, 1, 2, 4}``), but weights of 1 would make the method plain GRPO on the pair, which is not what it
describes ("amplify rare successes on q+", "strong negative penalties" for rare failures on q-); 2 is the middle
of the sweep and doubles exactly the two rare-event advantages the method is about, leaving common outcomes and
every group without a role unchanged. ``w_pos = lambda_neg = 1`` gives plain GRPO back. The hook sees
advantages, not rewards: for binary rewards ``A_i = (b_i - p)/(s + eps)`` with ``0 < p < 1``, so ``b_i = 1`` iff
``A_i > 0`` exactly (non-binary reward shaping breaks this inference). Groups with all-zero advantages are left
alone (no signal to reweight).

The method note's literal reading, ``advantage_mode="reward_map"`` [V phrase "+1 or -lambda before group
normalisation"]: ``r_i = +1`` if ``b_i = 1`` else ``-lambda_neg``. With ``reward_map_scale="group_std"`` this is
an affine map of ``b`` and group z-scoring undoes it: the advantages are IDENTICAL to GRPO for every ``lambda``
(a warning is emitted at construction). With ``"none"`` (mean-centring only):
``A'_i = (r_i - mean r) * w_q = (1 + lambda_neg)(b_i - p) * w_q`` (``w_q`` = the group's acquisition weight), so
``lambda`` is a global ``(1 + lambda)`` scale.

Roles: after :meth:`PosNegPairing.fit_pool` the pair's prompt ids carry the roles; before (the online per-batch
variant [R]) a group's role comes from its empirical success count ``n = #(A_i > 0)``: ``q+`` if ``1 <= n <= c``,
``q-`` if ``G - c <= n <= G - 1``.

Routing: pair mode QUERIES the pair (labels already owned from probing: free) and DROPS everything else (the
fillers :meth:`PosNegPairing.prompt_sampler` adds to rounds of more than two prompts: a round holds each prompt
once, so the pair is not repeated); online
mode QUERIES pre-screened candidates alternately (best ``q+`` candidate, best ``q-`` candidate, ...) within the
budget and DROPS the rest. Pseudo-labels are never used, so there is no ``-mask`` form.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rlavr.budget import BudgetView
from rlavr.strategies.base import Strategy
from rlavr.strategies.registry import register
from rlavr.strategies.uncertainty_consistency import _make_config
from rlavr.types import Acquisition, Label, PoolProgress, RolloutBatch, Route

__all__ = [
    "PosNegPairing",
    "PosNegPairingConfig",
    "effective_c",
    "prescreen",
    "reward_map_advantages",
    "success_bands",
    "weighted_grpo",
]


class PosNegPairingConfig(BaseModel):
    """Hyper-parameters of :class:`PosNegPairing` ([V] paper / note, [R] reconstruction, [D] default).

    Attributes:
        c: band width: ``q+`` has ``1..c`` successes, ``q-`` has ``G-c..G-1`` out of ``G`` [D 3, V for ``q-``].
        w_pos: multiplier of rare successes on ``q+`` [D 2.0: amplified, as the method describes; 1.0 = GRPO].
        lambda_neg: multiplier of rare failures on ``q-`` [D 2.0: a stronger penalty; 1.0 = GRPO].
        w_common: multiplier of the common outcomes of ``q+`` / ``q-`` [D 1.0].
        advantage_mode: ``"multiplier"`` (the reconstruction) [R] or ``"reward_map"`` (literal note) [V phrase].
        reward_map_scale: ``"group_std"`` (provably a no-op, warns) or ``"none"`` (mean-centred).
        max_probe_labels: most labels the pool stage buys to confirm a pair (:meth:`PosNegPairing.pool_label_requests`)
            [D 16].
        id_column: the pool row key holding the prompt id, for :meth:`PosNegPairing.prompt_sampler`.
    """

    model_config = ConfigDict(extra="forbid")

    c: int = Field(default=3, ge=1)
    w_pos: float = Field(default=2.0, ge=0.0)
    lambda_neg: float = Field(default=2.0, ge=0.0)
    w_common: float = Field(default=1.0, ge=0.0)
    advantage_mode: Literal["multiplier", "reward_map"] = "multiplier"
    reward_map_scale: Literal["group_std", "none"] = "group_std"
    max_probe_labels: int = Field(default=16, ge=2)
    id_column: str = "id"

    @model_validator(mode="after")
    def _finite(self) -> PosNegPairingConfig:
        for name in ("w_pos", "lambda_neg", "w_common"):
            v = getattr(self, name)
            if not np.isfinite(v):
                raise ValueError(f"{name}: must be finite, got {v}")
        return self


# ============================================================================================ formulas


def effective_c(G: int, c: int) -> int:
    """``min(c, (G - 1) // 2)``: the band width actually used for ``G`` rollouts, so that the ``q+`` band
    ``[1, c]`` and the ``q-`` band ``[G - c, G - 1]`` never overlap [D] (``G = 4`` gives 1; ``G <= 2`` gives 0:
    no prompt can be paired)."""
    if G < 1:
        raise ValueError(f"G: expected >= 1 rollouts per prompt, got {G}")
    if c < 1:
        raise ValueError(f"c: expected an int >= 1, got {c}")
    return min(c, (G - 1) // 2)


def success_bands(G: int, c: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Success-count bands ``((1, c'), (G - c', G - 1))`` for ``q+`` and ``q-`` with ``c' = effective_c(G, c)``
    (empty bands, lower > upper, when ``c' = 0``)."""
    ce = effective_c(G, c)
    return (1, ce), (G - ce, G - 1)


def prescreen(batch: RolloutBatch, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Label-free candidate masks ``(pos, neg)``, each ``(B,)`` bool [R] (see module docstring).

    ``pos``: some answer cluster has size in ``[1, c]``; ``neg``: the majority cluster has size in
    ``[G - c, G - 1]`` (``c`` clipped by :func:`effective_c`). A group matching both is a ``q-`` candidate only.
    """
    (plo, phi), (nlo, nhi) = success_bands(batch.G, c)
    sizes = batch.votes.cluster_sizes
    pos = ((sizes >= plo) & (sizes <= phi)).any(axis=1)
    ms = batch.votes.majority_size
    neg = (ms >= nlo) & (ms <= nhi)
    return pos & ~neg, neg


def _roles_from_advantages(adv: np.ndarray, c: int) -> np.ndarray:
    G = adv.shape[1]
    (plo, phi), (nlo, nhi) = success_bands(G, c)
    n = (adv > 0).sum(axis=1)
    active = np.any(adv != 0, axis=1)
    return np.where(active & (n >= plo) & (n <= phi), 1, np.where(active & (n >= nlo) & (n <= nhi), -1, 0))


def weighted_grpo(advantages: np.ndarray, roles: np.ndarray, w_pos: float = 1.0, lambda_neg: float = 1.0,
                  w_common: float = 1.0) -> np.ndarray:
    """Weighted GRPO multipliers [R] on ``(B, G)`` group-normalised advantages; ``roles`` is ``(B,)`` in
    ``{+1 (q+), -1 (q-), 0 (other: unchanged)}``. Successes are ``A > 0`` (binary rewards)."""
    a = np.asarray(advantages, dtype=np.float64)
    r = np.asarray(roles)
    if a.ndim != 2 or r.shape != (a.shape[0],):
        raise ValueError(f"weighted_grpo: expected advantages (B, G) and roles (B,), got {a.shape} and {r.shape}")
    if not np.all(np.isin(r, (-1, 0, 1))):
        raise ValueError(f"weighted_grpo.roles: values must be -1, 0 or +1, got {np.unique(r).tolist()}")
    pos, neg = (r == 1)[:, None], (r == -1)[:, None]
    mult = np.where(pos & (a > 0), w_pos, np.where(neg & (a < 0), lambda_neg, np.where(pos | neg, w_common, 1.0)))
    return a * mult


def reward_map_advantages(advantages: np.ndarray, roles: np.ndarray, lambda_neg: float,
                          group_weights: np.ndarray) -> np.ndarray:
    """Literal reading with mean-centring only: ``(1 + lambda)(b - p) * w`` for role groups [V phrase, R]."""
    a = np.asarray(advantages, dtype=np.float64)
    b = (a > 0).astype(np.float64)
    p = b.mean(axis=1, keepdims=True)
    mapped = (1.0 + lambda_neg) * (b - p) * np.asarray(group_weights, dtype=np.float64)[:, None]
    apply = (np.asarray(roles) != 0)[:, None] & np.any(a != 0, axis=1, keepdims=True)
    return np.where(apply, mapped, a)


# ============================================================================================ strategy


@register(aliases=("posneg", "weighted-grpo"))
class PosNegPairing(Strategy):
    """Positive-negative pairing + Weighted GRPO (see the module docstring for the maths and the tags).

    Args:
        mask: not supported (pseudo-labels are never used).
        seed: seed of the private RNG (tie-breaks).
        config: a :class:`PosNegPairingConfig` or a dict; keyword arguments override its fields.
    """

    name = "posneg-pairing"
    description = "Train on a hard-but-solvable q+ and an easy-but-brittle q- pair with Weighted GRPO advantages."
    requires = frozenset({"answers"})
    supports_mask = False

    @property
    def trains_on_pseudo_labels(self) -> bool:
        """Never (pair and online modes only QUERY or DROP): a failed query is dropped."""
        return False

    def __init__(self, mask: bool = False, seed: int = 0,
                 config: PosNegPairingConfig | Mapping[str, Any] | None = None, **overrides: Any) -> None:
        super().__init__(mask=mask, seed=seed)
        self.config: PosNegPairingConfig = _make_config(PosNegPairingConfig, config, overrides)
        if self.config.advantage_mode == "reward_map" and self.config.reward_map_scale == "group_std":
            warnings.warn("PosNegPairing: reward_map (+1, -lambda_neg) followed by group z-scoring is an affine "
                          "map of binary rewards, so the advantages are identical to plain GRPO for every "
                          "lambda_neg (a no-op); use advantage_mode='multiplier' or reward_map_scale='none'",
                          UserWarning, stacklevel=2)
        self.pos_id: str | None = None
        self.neg_id: str | None = None
        self.p_hat: dict[str, float] = {}
        self.labels_spent = 0
        self._pool_progress: PoolProgress | None = None  # the pool stage's record, read by fit_pool
        self.last_roles: np.ndarray | None = None

    @property
    def fitted(self) -> bool:
        return self.pos_id is not None and self.neg_id is not None

    # ------------------------------------------------------------------ candidate ranking
    def candidate_order(self, batch: RolloutBatch) -> tuple[np.ndarray, np.ndarray]:
        """Indices of ``q+`` candidates (agreement ascending) and ``q-`` candidates (descending); ties by RNG."""
        pos, neg = prescreen(batch, self.config.c)
        alpha = batch.votes.majority_ratio
        tie = self.rng.random(batch.B)
        pos_order = np.lexsort((tie, alpha))
        neg_order = np.lexsort((tie, -alpha))
        return pos_order[pos[pos_order]], neg_order[neg[neg_order]]

    # ------------------------------------------------------------------ pool-level pair selection
    def fit_pool(self, batch: RolloutBatch, labels: Mapping[str, Label]) -> dict[str, float]:
        """Choose the pair among the labelled prompts of the pool: ``q+`` with the smallest success rate in
        ``[1/G, c/G]``, ``q-`` with the largest in ``[1 - c/G, 1 - 1/G]`` (ties: private RNG).

        If no labelled prompt falls in one of the bands, no pair is fixed (documented fallback): a
        ``UserWarning`` says which role is missing, the strategy stays in (or returns to) the online per-batch
        variant, and the returned ``pair_found`` is 0.

        Called by the engine's pool stage (:meth:`AcquisitionEngine.fit_pool
        <rlavr.engine.AcquisitionEngine.fit_pool>`) after the purchases :meth:`pool_label_requests` asked for,
        it also returns ``labels_spent``, the labels that stage bought (accumulated in :attr:`labels_spent`).

        Raises:
            ValueError: no prompt of the pool has a label.
        """
        progress, self._pool_progress = self._pool_progress, None
        out = self._choose_pair(batch, labels)
        if progress is not None:  # after the engine's pool stage: what it bought for this fit
            spent = len(progress.bought)
            self.labels_spent += spent
            out["labels_spent"] = float(spent)
        return out

    def _choose_pair(self, batch: RolloutBatch, labels: Mapping[str, Label]) -> dict[str, float]:
        (plo, phi), (nlo, nhi) = success_bands(batch.G, self.config.c)
        rows = np.array([i in labels for i in batch.ids], dtype=bool)
        if not rows.any():
            raise ValueError("fit_pool.labels: none of the pool's prompt ids has a label")
        n_succ = batch.correctness([labels.get(i) for i in batch.ids]).sum(axis=1)
        tie = self.rng.random(batch.B)
        pos_ok = rows & (n_succ >= plo) & (n_succ <= phi)
        neg_ok = rows & (n_succ >= nlo) & (n_succ <= nhi)
        out = {"n_labelled": float(rows.sum()), "n_valid_pos": float(pos_ok.sum()),
               "n_valid_neg": float(neg_ok.sum())}
        missing = [f"{role} ({lo}..{hi} of G={batch.G} correct)" for role, ok, lo, hi in
                   (("q+", pos_ok, plo, phi), ("q-", neg_ok, nlo, nhi)) if not ok.any()]
        if missing:
            warnings.warn(f"PosNegPairing.fit_pool: no labelled prompt is a valid {' or '.join(missing)} among "
                          f"{int(rows.sum())} labelled; no pair fixed, the online per-batch variant is used. "
                          "Label more candidates (engine.fit_pool) or use more rollouts per prompt",
                          UserWarning, stacklevel=3)  # the caller of fit_pool
            self.pos_id = self.neg_id = None
            self.p_hat = {}
            return {**out, "pair_found": 0.0}
        pos_order = np.lexsort((tie, n_succ))
        neg_order = np.lexsort((tie, -n_succ))
        ip = int(pos_order[pos_ok[pos_order]][0])
        ineg = int(neg_order[neg_ok[neg_order]][0])
        self.pos_id, self.neg_id = batch.ids[ip], batch.ids[ineg]
        G = batch.G
        self.p_hat = {self.pos_id: float(n_succ[ip] / G), self.neg_id: float(n_succ[ineg] / G)}
        return {**out, "pair_found": 1.0, "p_pos": self.p_hat[self.pos_id], "p_neg": self.p_hat[self.neg_id]}

    def pool_label_requests(self, pool: RolloutBatch, progress: PoolProgress) -> list[str]:
        """Confirm a pair buying as few labels as possible: labels already in the ledger first (free), then each
        round the next pre-screened candidate of every role not yet confirmed, until both roles are confirmed,
        the candidates run out or ``max_probe_labels`` labels were bought (refused / failed ids are not retried)."""
        c = self.config
        self._pool_progress = progress  # one record per fit, updated by the engine: fit_pool reads the spend
        if "queues" not in progress.scratch:  # the candidate order is drawn once per fit (private RNG)
            pos_c, neg_c = self.candidate_order(pool)
            progress.scratch["queues"] = ([pool.ids[i] for i in pos_c], [pool.ids[i] for i in neg_c])
        owned = [] if progress.rounds else [i for i in pool.ids if i in progress.owned]
        have = {**progress.owned, **progress.labels}
        left = c.max_probe_labels - len(progress.bought)
        (plo, phi), (nlo, nhi) = success_bands(pool.G, c.c)
        rows = np.array([i in have for i in pool.ids], dtype=bool)
        n = pool.correctness([have.get(i) for i in pool.ids]).sum(axis=1)
        asked = set(progress.requested)
        want: list[str] = []
        for queue, lo, hi in zip(progress.scratch["queues"], (plo, nlo), (phi, nhi), strict=True):
            if left - len(want) <= 0 or (rows & (n >= lo) & (n <= hi)).any():
                continue
            nxt = next((pid for pid in queue if pid not in have and pid not in asked and pid not in want), None)
            if nxt is not None:
                want.append(nxt)
        return owned + want if want else owned

    # ------------------------------------------------------------------ batch composition
    def prompt_sampler(self, pool: Sequence[Mapping[str, Any]], batch_size: int) -> list[int] | None:
        """Paired minibatches: ``[q+, q-]`` pool indices, then, for ``batch_size > 2``, the first other prompts
        of the pool in its order (one row per distinct id) as fillers. Every prompt id appears at most once per
        round: a round is one :class:`~rlavr.types.RolloutBatch`, whose ids are unique (the ledger's key). In pair
        mode :meth:`select` drops the fillers (no label asked, nothing charged; generated, but zero advantage), so
        exactly the pair trains, as in the paper. ``None`` before :meth:`fit_pool` (online variant: trainer's
        order).

        Raises:
            ValueError: ``batch_size < 2``, a row without the id column, the pair missing from the pool, or fewer
                than ``batch_size`` distinct prompt ids in the pool.
        """
        if not self.fitted:
            return None
        if batch_size < 2:
            raise ValueError(f"prompt_sampler.batch_size: a paired minibatch needs >= 2 prompts, got {batch_size}")
        col = self.config.id_column
        where: dict[str, int] = {}
        for n, row in enumerate(pool):
            if col not in row:
                raise ValueError(f"prompt_sampler.pool: row {n} has no id column {col!r}")
            where.setdefault(str(row[col]), n)
        for role, pid in (("q+", self.pos_id), ("q-", self.neg_id)):
            if pid not in where:
                raise ValueError(f"prompt_sampler.pool: the {role} prompt {pid!r} is not in the pool")
        if batch_size > len(where):
            raise ValueError(f"prompt_sampler.batch_size: {batch_size} prompts per round, but the pool has only "
                             f"{len(where)} distinct prompt ids (a round holds each prompt once)")
        pair = [where[self.pos_id], where[self.neg_id]]  # type: ignore[index]
        fillers = [n for pid, n in where.items() if pid not in (self.pos_id, self.neg_id)]
        return pair + fillers[: batch_size - 2]

    # ------------------------------------------------------------------ routing
    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        self.check_batch(batch)
        B = batch.B
        if budget.known.shape != (B,):
            raise ValueError(f"BudgetView.known: shape {budget.known.shape} does not match the batch (B={B})")
        routes = np.full(B, Route.DROP, dtype=np.int8)
        scores = np.zeros(B, dtype=np.float64)
        if self.fitted:
            ids = np.asarray(batch.ids, dtype=object)
            order = np.concatenate([np.flatnonzero(ids == self.pos_id), np.flatnonzero(ids == self.neg_id)])
            # 0 here means the trainer is not sampling the pair (use prompt_sampler): nothing trains
            metrics = {"pair_mode": 1.0, "pair_in_batch": float(order.size)}
        else:
            pos_c, neg_c = self.candidate_order(batch)
            n = max(pos_c.size, neg_c.size)
            inter = np.full((n, 2), -1, dtype=np.int64)
            inter[: pos_c.size, 0] = pos_c
            inter[: neg_c.size, 1] = neg_c
            order = inter.reshape(-1)
            order = order[order >= 0]
            metrics = {"pair_mode": 0.0, "pos_candidates": float(pos_c.size), "neg_candidates": float(neg_c.size)}
        scores[order] = 1.0 - np.arange(order.size) / max(order.size, 1)
        known = budget.known[order]
        routes[order[known]] = Route.QUERY
        routes[order[~known][: budget.remaining]] = Route.QUERY
        return Acquisition(routes=routes, weights=np.ones(B), scores=scores, metrics=metrics)

    # ------------------------------------------------------------------ Weighted GRPO
    def roles(self, batch: RolloutBatch, advantages: np.ndarray) -> np.ndarray:
        """``(B,)`` roles: by prompt id after :meth:`fit_pool`, else by empirical success-count band."""
        if self.fitted:
            ids = np.asarray(batch.ids, dtype=object)
            return np.where(ids == self.pos_id, 1, np.where(ids == self.neg_id, -1, 0)).astype(np.int64)
        return _roles_from_advantages(np.asarray(advantages, dtype=np.float64), self.config.c)

    def transform_advantages(self, batch: RolloutBatch, acquisition: Acquisition,
                             advantages: np.ndarray) -> np.ndarray:
        a = np.asarray(advantages, dtype=np.float64)
        if a.shape != (batch.B, batch.G):
            raise ValueError(f"transform_advantages.advantages: expected shape ({batch.B}, {batch.G}), got {a.shape}")
        roles = self.roles(batch, a)
        self.last_roles = roles
        c = self.config
        if c.advantage_mode == "multiplier":
            return weighted_grpo(a, roles, c.w_pos, c.lambda_neg, c.w_common)
        if c.reward_map_scale == "group_std":
            return a  # provably identical to GRPO (warned at construction)
        return reward_map_advantages(a, roles, c.lambda_neg, acquisition.effective_weights())

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        s = super().state_dict()
        s.update({"pos_id": self.pos_id, "neg_id": self.neg_id, "p_hat": dict(self.p_hat),
                  "labels_spent": self.labels_spent})
        return copy.deepcopy(s)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.pos_id = state.get("pos_id")
        self.neg_id = state.get("neg_id")
        self.p_hat = {str(k): float(v) for k, v in state.get("p_hat", {}).items()}
        self.labels_spent = int(state.get("labels_spent", 0))
