r"""Vote reliability: a small calibrated model, trained online on the labels it buys, that says how far each
majority vote can be trusted. It buys labels for the votes it trusts least, keeps the votes it trusts (as
pseudo-labels) and drops the rest. The maths and the measurements are in ``docs/strategies/vote_reliability.md``.

For group :math:`i` with :math:`G` rollouts, cluster sizes :math:`n_{i,1} \ge n_{i,2} \ge \dots` (valid answers
only), mean completion length :math:`\bar L_i` and length spread :math:`s_{L,i}`, the features are the cheap
rollout statistics

.. math::
    \phi_i = \bigl[\, n_{i,1}/G,\; n_{i,2}/G,\; K_i/G,\; H_i,\; v_i,\; \log(1 + \bar L_i),\;
             s_{L,i} / (1 + \bar L_i),\; t_i \,\bigr]

(majority share, runner-up share, number of clusters, answer entropy, fraction of valid answers, log mean length,
relative length spread, fraction truncated). The reliability is

.. math:: r_i = \sigma(w^\top z(\phi_i) + b) \approx P(\text{majority vote of } i \text{ is right} \mid \phi_i),

a logistic regression (scikit-learn, L2 with strength ``1/C``; log-loss fitted, hence calibrated on its training
distribution) on standardised features :math:`z`, refitted after every step on the labels bought so far (a FIFO
window of ``max_train`` groups). Its target is :math:`y = [\text{vote right}]`, known exactly for a group whose
label was bought; the rule never sees any other label. Until ``min_labels`` labels of both classes exist (and
always with ``learn=False``, the fixed baseline) :math:`r_i = n_{i,1}/G`.

Routing, with :math:`k` = ``budget.remaining``:

* groups whose label is owned already are queried (free);
* *eligible* groups have a valid answer and are not unanimous (:math:`n_{i,1} < G`): a label for a group whose
  :math:`G` answers all agree makes every reward equal, so its advantage is 0 whatever the label says;
* :math:`k_e = \lfloor \epsilon k + u \rfloor` labels (:math:`u \sim U[0,1)` from the rule's own generator,
  :math:`\epsilon` = ``explore``) go to uniformly random eligible groups, so that the model also sees labels of
  votes it trusts (groups bought only for low reliability would bias it); the other :math:`k - k_e` go to the
  eligible groups with the lowest :math:`r_i` (score :math:`1 - r_i`, ties to the lower index);
* a group not queried is pseudo-labelled (weight 1) when :math:`r_i \ge \tau` (``threshold``), dropped otherwise;
  the ``-mask`` form drops every group it does not query.

A failed query is dropped (the queried groups are the least trusted votes). Every draw comes from the rule's
private generator (two vectors of ``B`` uniforms and one uniform per step, however much is spent); the state
(training window, fitted coefficients, generator) round-trips through ``state_dict``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from rlavr.budget import BudgetView
from rlavr.features import label_targets
from rlavr.strategies.base import Strategy, top_k
from rlavr.strategies.registry import register
from rlavr.types import Acquisition, Label, RolloutBatch, Route

__all__ = ["FEATURE_NAMES", "VoteReliability", "vote_features"]

FEATURE_NAMES = ("majority_share", "runner_up_share", "clusters", "entropy", "valid_share", "log_mean_length",
                 "rel_length_spread", "truncated_share")
"""Names of the columns of :func:`vote_features`, in order."""


def vote_features(batch: RolloutBatch) -> np.ndarray:
    """``(B, 8)`` float64 rollout statistics per group (:data:`FEATURE_NAMES`), all from the answers and lengths
    (no extra forward pass), vectorised over the batch."""
    votes = batch.votes
    G = max(batch.G, 1)
    B = batch.B
    sizes = np.asarray(votes.cluster_sizes, dtype=np.float64).reshape(B, -1)
    if sizes.shape[1] >= 2:
        top2 = -np.partition(-sizes, 1, axis=1)[:, :2]
        first, second = top2.max(axis=1), top2.min(axis=1)
    else:
        first = sizes[:, 0] if sizes.shape[1] else np.zeros(B)
        second = np.zeros(B)
    n_clusters = (sizes > 0).sum(axis=1)
    lengths = np.asarray(batch.lengths, dtype=np.float64).reshape(B, -1)
    mean_len = lengths.mean(axis=1) if lengths.shape[1] else np.zeros(B)
    spread = lengths.std(axis=1) if lengths.shape[1] else np.zeros(B)
    trunc = np.asarray(batch.truncated, dtype=np.float64).reshape(B, -1)
    feats = np.stack([first / G, second / G, n_clusters / G, np.asarray(votes.entropy, dtype=np.float64),
                      np.asarray(votes.n_valid, dtype=np.float64) / G, np.log1p(np.maximum(mean_len, 0.0)),
                      spread / (1.0 + np.maximum(mean_len, 0.0)),
                      trunc.mean(axis=1) if trunc.shape[1] else np.zeros(B)], axis=1)
    return np.nan_to_num(feats, nan=0.0, posinf=0.0, neginf=0.0)


_BLAS_CONTROLLER: Any = None


def _one_blas_thread() -> Any:
    """Context that runs BLAS on one thread: a fit on a few hundred rows is slower with a thread pool, and far
    slower when the pool's threads spin on a busy machine. The controller is built once per process."""
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")


@register
class VoteReliability(Strategy):
    """Buy labels for the least reliable majority votes, keep the reliable ones, drop the rest (module docstring).

    Args:
        threshold: :math:`\\tau \\in [0, 1]`; a group not queried is pseudo-labelled when its reliability is at
            least this, dropped otherwise (the ``-mask`` form drops it always). ``1.0`` keeps only votes the model
            is certain of.
        explore: :math:`\\epsilon \\in [0, 1]`, expected share of each step's purchases spent on uniformly random
            eligible groups (unbiased training data for the model).
        learn: fit the online model; ``False`` is the fixed baseline :math:`r_i = n_{i,1}/G`.
        min_labels: labels needed (with both outcomes present) before the model replaces the fixed score.
        max_train: FIFO window of labelled groups the model is fitted on (bounds the fit's cost).
        C: inverse L2 strength of the logistic regression.
        mask: the ``-mask`` form.
        seed: seed of the private generator.
    """

    name = "vote-reliability"
    description = ("Online calibrated vote-reliability model on cheap rollout statistics: buy the least reliable "
                   "votes, keep votes above a threshold, drop the rest.")
    requires = frozenset({"answers"})
    supports_mask = True  # select drops every group it does not query when self.mask

    def __init__(self, threshold: float = 0.8, explore: float = 0.25, learn: bool = True, min_labels: int = 16,
                 max_train: int = 4096, C: float = 1.0, mask: bool = False, seed: int = 0) -> None:
        super().__init__(mask=mask, seed=seed)
        for field, value in (("threshold", threshold), ("explore", explore)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"VoteReliability.{field}: expected a number in [0, 1], got {value!r}")
        for field, value, lo in (("min_labels", min_labels, 2), ("max_train", max_train, 2)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo:
                raise ValueError(f"VoteReliability.{field}: expected an int >= {lo}, got {value!r}")
        if max_train < min_labels:
            raise ValueError(f"VoteReliability.max_train: must be >= min_labels ({min_labels}), got {max_train}")
        if isinstance(C, bool) or not isinstance(C, int | float) or not math.isfinite(C) or C <= 0:
            raise ValueError(f"VoteReliability.C: expected a finite number > 0, got {C!r}")
        if not isinstance(learn, bool):
            raise ValueError(f"VoteReliability.learn: expected a bool, got {learn!r}")
        self.threshold = float(threshold)
        self.explore = float(explore)
        self.learn = learn
        self.min_labels = int(min_labels)
        self.max_train = int(max_train)
        self.C = float(C)
        self._X = np.zeros((0, len(FEATURE_NAMES)), dtype=np.float64)  # training window (features)
        self._y = np.zeros(0, dtype=np.int8)                             # 1 = the vote was right
        self._coef: np.ndarray | None = None                             # on standardised features
        self._intercept = 0.0
        self._mu = np.zeros(len(FEATURE_NAMES))
        self._sd = np.ones(len(FEATURE_NAMES))

    # ------------------------------------------------------------------ the model
    @property
    def fitted(self) -> bool:
        """Whether the learned model is in use (else the fixed score :math:`n_{i,1}/G`)."""
        return self._coef is not None

    @property
    def n_train(self) -> int:
        """Labelled groups in the training window."""
        return int(self._y.shape[0])

    def reliability(self, batch: RolloutBatch) -> np.ndarray:
        """``(B,)`` :math:`r_i \\in [0, 1]`, the estimated probability that group ``i``'s majority vote is right
        (0 for a group without a valid answer)."""
        feats = vote_features(batch)
        return self._reliability(feats, batch)

    def _reliability(self, feats: np.ndarray, batch: RolloutBatch) -> np.ndarray:
        if self._coef is None:
            r = feats[:, 0].copy()
        else:
            z = (feats - self._mu) / self._sd
            r = 1.0 / (1.0 + np.exp(-np.clip(z @ self._coef + self._intercept, -50.0, 50.0)))
        return np.where(np.asarray(batch.votes.n_valid) > 0, r, 0.0)

    def _fit(self) -> None:
        y = self._y
        if not self.learn or y.shape[0] < self.min_labels or y.min() == y.max():
            return
        from sklearn.linear_model import LogisticRegression  # imported on first fit: keeps `import rlavr` light

        X = self._X
        mu = X.mean(axis=0)
        sd = X.std(axis=0)
        sd = np.where(sd > 1e-12, sd, 1.0)
        model = LogisticRegression(C=self.C, max_iter=200)
        with warnings.catch_warnings(), _one_blas_thread():
            warnings.simplefilter("ignore")  # a not-yet-converged lbfgs on a tiny window is still a usable fit
            model.fit((X - mu) / sd, y)
        self._coef = np.asarray(model.coef_[0], dtype=np.float64).copy()
        self._intercept = float(model.intercept_[0])
        self._mu, self._sd = mu, sd

    # ------------------------------------------------------------------ select / update
    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        B = batch.B
        if budget.known.shape != (B,):
            raise ValueError(f"BudgetView.known: shape {budget.known.shape} does not match the batch (B={B})")
        feats = vote_features(batch)
        r = self._reliability(feats, batch)
        # fixed-size draws every step, whatever is spent: the stream does not depend on the budget
        u_order = self.rng.random(B)
        u_count = float(self.rng.random())
        votes = batch.votes
        eligible = (np.asarray(votes.n_valid) > 0) & (np.asarray(votes.majority_size) < batch.G) & ~budget.known
        k = min(int(budget.remaining), int(eligible.sum()))
        k_explore = min(k, int(math.floor(self.explore * k + u_count)))
        routes = np.full(B, Route.DROP, dtype=np.int8)
        keep = (r >= self.threshold) & (np.asarray(votes.n_valid) > 0)
        if not self.mask:
            routes[keep] = Route.PSEUDO
        routes[budget.known] = Route.QUERY
        exploit = top_k(1.0 - r, k - k_explore, eligible)
        routes[exploit] = Route.QUERY
        rest = eligible.copy()
        rest[exploit] = False
        explore = top_k(u_order, k_explore, rest)
        routes[explore] = Route.QUERY
        metrics = {"reliability_mean": float(r.mean()) if B else 0.0,
                   "reliability_model_fitted": float(self.fitted), "reliability_train_size": float(self.n_train),
                   "explore_queries": float(explore.size),
                   "kept_share": float((routes == Route.PSEUDO).mean()) if B else 0.0}
        return Acquisition(routes=routes, weights=np.ones(B, dtype=np.float64), scores=1.0 - r, metrics=metrics)

    def update(self, batch: RolloutBatch, acquisition: Acquisition, labels: Mapping[str, Label]) -> None:
        """Add the groups of ``batch`` that have a label in ``labels`` (the labels bought or reused this step;
        nothing else) to the training window, as ``(features, [vote right])``, and refit the model."""
        t = label_targets(batch, labels)
        rows = t.rows[np.asarray(batch.votes.n_valid)[t.rows] > 0] if len(t) else t.rows
        if rows.size == 0:
            return
        ok = t.vote_correct[np.isin(t.rows, rows)]
        feats = vote_features(batch)[rows]
        self._X = np.concatenate([self._X, feats])[-self.max_train:]
        self._y = np.concatenate([self._y, ok.astype(np.int8)])[-self.max_train:]
        self._fit()

    # ------------------------------------------------------------------ oracle failures
    @property
    def failed_query_route(self) -> Route:
        """A failed query is dropped: the groups it queries are the votes it trusts least."""
        return Route.DROP

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update({"threshold": self.threshold, "explore": self.explore, "learn": self.learn,
                      "min_labels": self.min_labels, "max_train": self.max_train, "C": self.C,
                      "X": self._X.copy(), "y": self._y.copy(),
                      "coef": None if self._coef is None else self._coef.copy(), "intercept": self._intercept,
                      "mu": self._mu.copy(), "sd": self._sd.copy()})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for key in ("threshold", "explore", "C"):
            if key in state:
                setattr(self, key, float(state[key]))
        if "learn" in state:
            self.learn = bool(state["learn"])
        for key in ("min_labels", "max_train"):
            if key in state:
                setattr(self, key, int(state[key]))
        if "X" in state:
            X = np.asarray(state["X"], dtype=np.float64)
            if X.ndim != 2 or X.shape[1] != len(FEATURE_NAMES):
                raise ValueError(f"VoteReliability.load_state_dict: X has shape {X.shape}, expected (n, "
                                 f"{len(FEATURE_NAMES)})")
            self._X = X.copy()
            self._y = np.asarray(state["y"], dtype=np.int8).copy()
        coef = state.get("coef", self._coef)
        self._coef = None if coef is None else np.asarray(coef, dtype=np.float64).copy()
        self._intercept = float(state.get("intercept", self._intercept))
        self._mu = np.asarray(state.get("mu", self._mu), dtype=np.float64).copy()
        self._sd = np.asarray(state.get("sd", self._sd), dtype=np.float64).copy()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(threshold={self.threshold}, explore={self.explore}, learn={self.learn}, "
                f"mask={self.mask}, seed={self.seed})")
