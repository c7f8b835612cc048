r"""Vote reliability: a small calibrated model, trained online on the labels it buys, that says how far each
majority vote can be trusted. It buys labels for the votes it trusts least (``vote-reliability``) or for the groups
where a label is most likely to give a training signal (``vote-signal``), keeps the votes it trusts (as
pseudo-labels) and drops the rest. The maths and the measurements are in ``docs/strategies/vote_reliability.md``.

For group :math:`i` with :math:`G` rollouts, cluster sizes :math:`n_{i,1} \ge n_{i,2} \ge \dots` (valid answers
only), mean completion length :math:`\bar L_i` and length spread :math:`s_{L,i}`, the features are the cheap
rollout statistics

.. math::
    \phi_i = \bigl[\, n_{i,1}/G,\; n_{i,2}/G,\; K_i/G,\; H_i,\; v_i,\; \log(1 + \bar L_i),\;
             s_{L,i} / (1 + \bar L_i),\; t_i \,\bigr]

(majority share, runner-up share, number of clusters, answer entropy, fraction of valid answers, log mean length,
relative length spread, fraction truncated). Two logistic regressions (scikit-learn, L2 with strength ``1/C``;
log-loss fitted, hence calibrated on their training distribution) on standardised features :math:`z` give

.. math::
    r_i = \sigma(w_r^\top z(\phi_i) + b_r) \approx P(\text{the majority vote of } i \text{ is right}), \qquad
    s_i = \sigma(w_s^\top z(\phi_i) + b_s) \approx P(0 < c_i < G),

where :math:`c_i` is the number of rollouts the label will grade correct: a label gives group :math:`i` a non-zero
GRPO advantage exactly when :math:`0 < c_i < G`. Both targets are known exactly for a group whose label was bought,
and the models are refitted after every step on the labels bought so far (a FIFO window of ``max_train``
groups; :math:`s_i` only with ``query_by="signal"``, where it decides something); the rule never sees any other
label. Until ``min_labels`` labels with both outcomes exist (and always with ``learn=False``, the fixed
baseline) :math:`r_i = n_{i,1}/G` and :math:`s_i = 1 - r_i`.

Routing, with :math:`k` = ``budget.remaining``:

* groups whose label is owned already are queried (free);
* *eligible* groups have a valid answer and are not unanimous (:math:`n_{i,1} < G`): a label for a group whose
  :math:`G` answers all agree makes every reward equal, so its advantage is 0 whatever the label says;
* :math:`k_e = \lfloor \epsilon k + u \rfloor` labels (:math:`u \sim U[0,1)` from the rule's own generator,
  :math:`\epsilon` = ``explore``) go to uniformly random eligible groups, so that the models also see labels of
  groups they would not buy (labels bought only where the score is extreme would bias them); the other
  :math:`k - k_e` go to the eligible groups with the highest acquisition score, :math:`1 - r_i`
  (``query_by="reliability"``) or :math:`s_i` (``query_by="signal"``; a vote the rule keeps is then not bought for
  exploitation: its label would change something only if the vote were wrong), ties to the lower index;
* a group not queried is pseudo-labelled (weight 1) when :math:`r_i \ge \tau` (``threshold``), dropped otherwise;
  the ``-mask`` form drops every group it does not query.

A failed query is dropped. Every draw comes from the rule's private generator (a vector of ``B`` uniforms and
one uniform per step, however much is spent); the state (training window, fitted coefficients, generator)
round-trips through ``state_dict``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from rlavr.advantages import has_signal
from rlavr.budget import BudgetView
from rlavr.features import label_targets
from rlavr.strategies.base import Strategy, top_k
from rlavr.strategies.registry import register
from rlavr.types import Acquisition, Label, RolloutBatch, Route

__all__ = ["FEATURE_NAMES", "QUERY_BY", "VoteReliability", "VoteSignal", "vote_features"]

FEATURE_NAMES = ("majority_share", "runner_up_share", "clusters", "entropy", "valid_share", "log_mean_length",
                 "rel_length_spread", "truncated_share")
"""Names of the columns of :func:`vote_features`, in order."""

QUERY_BY = ("reliability", "signal")
"""Acquisition scores: ``reliability`` = :math:`1 - r_i` (least trusted vote first), ``signal`` = :math:`s_i`."""


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


@dataclass
class _Logit:
    """A fitted logistic regression on standardised features: ``sigmoid(((x - mu) / sd) @ coef + intercept)``."""

    coef: np.ndarray
    intercept: float
    mu: np.ndarray
    sd: np.ndarray

    def predict(self, feats: np.ndarray) -> np.ndarray:
        z = (feats - self.mu) / self.sd @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0)))

    def to_state(self) -> dict[str, Any]:
        return {"coef": self.coef.copy(), "intercept": self.intercept, "mu": self.mu.copy(), "sd": self.sd.copy()}

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None) -> _Logit | None:
        if state is None:
            return None
        return cls(coef=np.asarray(state["coef"], dtype=np.float64).copy(), intercept=float(state["intercept"]),
                   mu=np.asarray(state["mu"], dtype=np.float64).copy(),
                   sd=np.asarray(state["sd"], dtype=np.float64).copy())


def _fit_logit(X: np.ndarray, y: np.ndarray, C: float) -> _Logit:
    """scikit-learn's L2 logistic regression (lbfgs, deterministic) on standardised ``X``."""
    from sklearn.linear_model import LogisticRegression  # imported on first fit: keeps `import rlavr` light

    mu = X.mean(axis=0)
    sd = X.std(axis=0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    model = LogisticRegression(C=C, max_iter=200)
    with warnings.catch_warnings(), _one_blas_thread():
        warnings.simplefilter("ignore")  # a not-yet-converged lbfgs on a tiny window is still a usable fit
        model.fit((X - mu) / sd, y)
    return _Logit(coef=np.asarray(model.coef_[0], dtype=np.float64).copy(), intercept=float(model.intercept_[0]),
                  mu=mu, sd=sd)


@register
class VoteReliability(Strategy):
    r"""Buy labels for the least reliable majority votes (or, ``query_by="signal"``, where a label most likely
    gives a training signal), keep the reliable votes, drop the rest (module docstring).

    Args:
        threshold: :math:`\tau \in [0, 1]`; a group not queried is pseudo-labelled when its reliability is at
            least this, dropped otherwise (the ``-mask`` form drops it always). ``1.0`` keeps only votes the model
            is certain of.
        explore: :math:`\epsilon \in [0, 1]`, expected share of each step's purchases spent on uniformly random
            eligible groups (unbiased training data for the models).
        query_by: ``"reliability"`` (buy the lowest :math:`r_i`) or ``"signal"`` (buy the highest :math:`s_i`).
        learn: fit the online models; ``False`` is the fixed baseline :math:`r_i = n_{i,1}/G`, :math:`s_i = 1-r_i`.
        min_labels: labels needed (with both outcomes present) before a model replaces the fixed score.
        max_train: FIFO window of labelled groups the models are fitted on (bounds the fit's cost).
        C: inverse L2 strength of the logistic regressions.
        mask: the ``-mask`` form.
        seed: seed of the private generator.
    """

    name = "vote-reliability"
    description = "Online-learned vote reliability: buy the least reliable votes, keep the reliable, drop the rest."
    requires = frozenset({"answers"})
    supports_mask = True  # select drops every group it does not query when self.mask
    default_query_by: ClassVar[str] = "reliability"

    def __init__(self, threshold: float = 0.8, explore: float = 0.25, query_by: str | None = None,
                 learn: bool = True, min_labels: int = 16, max_train: int = 4096, C: float = 1.0,
                 mask: bool = False, seed: int = 0) -> None:
        super().__init__(mask=mask, seed=seed)
        for field, value in (("threshold", threshold), ("explore", explore)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{type(self).__name__}.{field}: expected a number in [0, 1], got {value!r}")
        query_by = self.default_query_by if query_by is None else query_by
        if query_by not in QUERY_BY:
            raise ValueError(f"{type(self).__name__}.query_by: expected one of {QUERY_BY}, got {query_by!r}")
        for field, value, lo in (("min_labels", min_labels, 2), ("max_train", max_train, 2)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo:
                raise ValueError(f"{type(self).__name__}.{field}: expected an int >= {lo}, got {value!r}")
        if max_train < min_labels:
            raise ValueError(f"{type(self).__name__}.max_train: must be >= min_labels ({min_labels}), got "
                             f"{max_train}")
        if isinstance(C, bool) or not isinstance(C, int | float) or not math.isfinite(C) or C <= 0:
            raise ValueError(f"{type(self).__name__}.C: expected a finite number > 0, got {C!r}")
        if not isinstance(learn, bool):
            raise ValueError(f"{type(self).__name__}.learn: expected a bool, got {learn!r}")
        self.threshold = float(threshold)
        self.explore = float(explore)
        self.query_by = query_by
        self.learn = learn
        self.min_labels = int(min_labels)
        self.max_train = int(max_train)
        self.C = float(C)
        self._X = np.zeros((0, len(FEATURE_NAMES)), dtype=np.float64)  # training window (features)
        self._y = np.zeros(0, dtype=np.int8)                             # 1 = the vote was right
        self._ys = np.zeros(0, dtype=np.int8)                            # 1 = the label gave a signal (0 < c < G)
        self._rel: _Logit | None = None
        self._sig: _Logit | None = None

    # ------------------------------------------------------------------ the models
    @property
    def fitted(self) -> bool:
        """Whether the learned reliability model is in use (else the fixed score :math:`n_{i,1}/G`)."""
        return self._rel is not None

    @property
    def n_train(self) -> int:
        """Labelled groups in the training window."""
        return int(self._y.shape[0])

    def reliability(self, batch: RolloutBatch) -> np.ndarray:
        r"""``(B,)`` :math:`r_i \in [0, 1]`, the estimated probability that group ``i``'s majority vote is right
        (0 for a group without a valid answer)."""
        return self._scores(vote_features(batch), batch)[0]

    def signal(self, batch: RolloutBatch) -> np.ndarray:
        r"""``(B,)`` :math:`s_i \in [0, 1]`, the estimated probability that a label gives group ``i`` a non-zero
        advantage (some but not all rollouts correct); 0 for a unanimous group or one without a valid answer."""
        return self._scores(vote_features(batch), batch)[1]

    def _scores(self, feats: np.ndarray, batch: RolloutBatch) -> tuple[np.ndarray, np.ndarray]:
        votes = batch.votes
        r = feats[:, 0].copy() if self._rel is None else self._rel.predict(feats)
        s = 1.0 - feats[:, 0] if self._sig is None else self._sig.predict(feats)
        has = np.asarray(votes.n_valid) > 0
        r = np.where(has, r, 0.0)
        s = np.where(has & (np.asarray(votes.majority_size) < batch.G), s, 0.0)
        return r, s

    def _fit(self) -> None:
        if not self.learn:
            return
        for attr, y in (("_rel", self._y), ("_sig", self._ys)):
            if attr == "_sig" and self.query_by != "signal":
                continue  # s_i decides nothing in reliability mode: no fit (its targets are still recorded)
            if y.shape[0] >= self.min_labels and y.min() != y.max():
                setattr(self, attr, _fit_logit(self._X, y, self.C))

    # ------------------------------------------------------------------ select / update
    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        B = batch.B
        if budget.known.shape != (B,):
            raise ValueError(f"BudgetView.known: shape {budget.known.shape} does not match the batch (B={B})")
        r, s = self._scores(vote_features(batch), batch)
        # fixed-size draws every step, whatever is spent: the stream does not depend on the budget
        u_order = self.rng.random(B)
        u_count = float(self.rng.random())
        votes = batch.votes
        has = np.asarray(votes.n_valid) > 0
        eligible = has & (np.asarray(votes.majority_size) < batch.G) & ~budget.known
        keep = has & (r >= self.threshold) & (not self.mask)
        k = min(int(budget.remaining), int(eligible.sum()))
        k_explore = min(k, int(math.floor(self.explore * k + u_count)))
        if self.query_by == "signal":
            score = s
            wanted = eligible & ~keep
            if wanted.sum() < k - k_explore:  # not enough groups it does not keep: buy kept ones too
                wanted = eligible
        else:
            score = 1.0 - r
            wanted = eligible
        routes = np.full(B, Route.DROP, dtype=np.int8)
        routes[keep] = Route.PSEUDO
        routes[budget.known] = Route.QUERY
        exploit = top_k(score, k - k_explore, wanted)
        routes[exploit] = Route.QUERY
        rest = eligible.copy()
        rest[exploit] = False
        explore = top_k(u_order, k_explore, rest)
        routes[explore] = Route.QUERY
        metrics = {"reliability_mean": float(r.mean()) if B else 0.0,
                   "signal_mean": float(s.mean()) if B else 0.0,
                   "reliability_model_fitted": float(self._rel is not None),
                   "signal_model_fitted": float(self._sig is not None),
                   "reliability_train_size": float(self.n_train), "explore_queries": float(explore.size),
                   "kept_share": float((routes == Route.PSEUDO).mean()) if B else 0.0}
        return Acquisition(routes=routes, weights=np.ones(B, dtype=np.float64), scores=score, metrics=metrics)

    def update(self, batch: RolloutBatch, acquisition: Acquisition, labels: Mapping[str, Label]) -> None:
        """Add the groups of ``batch`` that have a label in ``labels`` (the labels bought or reused this step;
        nothing else) and a valid answer to the training window, as ``(features, [vote right], [0 < c < G])``,
        and refit the models."""
        t = label_targets(batch, labels)
        if len(t) == 0:
            return
        sel = np.asarray(batch.votes.n_valid)[t.rows] > 0
        if not sel.any():
            return
        correct = t.resp_correct[sel]
        feats = vote_features(batch)[t.rows[sel]]
        self._X = np.concatenate([self._X, feats])[-self.max_train:]
        self._y = np.concatenate([self._y, t.vote_correct[sel].astype(np.int8)])[-self.max_train:]
        signal = has_signal(correct)
        self._ys = np.concatenate([self._ys, signal.astype(np.int8)])[-self.max_train:]
        self._fit()

    # ------------------------------------------------------------------ oracle failures
    @property
    def failed_query_route(self) -> Route:
        """A failed query is dropped: the rule keeps only votes it trusts, and it does not trust the ones it
        chose to buy (or, with ``query_by="signal"``, bought instead of keeping)."""
        return Route.DROP

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update({"threshold": self.threshold, "explore": self.explore, "query_by": self.query_by,
                      "learn": self.learn, "min_labels": self.min_labels, "max_train": self.max_train, "C": self.C,
                      "X": self._X.copy(), "y": self._y.copy(), "y_signal": self._ys.copy(),
                      "reliability_model": None if self._rel is None else self._rel.to_state(),
                      "signal_model": None if self._sig is None else self._sig.to_state()})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for key in ("threshold", "explore", "C"):
            if key in state:
                setattr(self, key, float(state[key]))
        if "query_by" in state:
            if state["query_by"] not in QUERY_BY:
                raise ValueError(f"{type(self).__name__}.load_state_dict: query_by {state['query_by']!r} is not "
                                 f"one of {QUERY_BY}")
            self.query_by = str(state["query_by"])
        if "learn" in state:
            self.learn = bool(state["learn"])
        for key in ("min_labels", "max_train"):
            if key in state:
                setattr(self, key, int(state[key]))
        if "X" in state:
            X = np.asarray(state["X"], dtype=np.float64)
            y = np.asarray(state["y"], dtype=np.int8)
            ys = np.asarray(state.get("y_signal", np.zeros_like(y)), dtype=np.int8)
            if X.ndim != 2 or X.shape[1] != len(FEATURE_NAMES) or y.shape != (X.shape[0],) or ys.shape != y.shape:
                raise ValueError(f"{type(self).__name__}.load_state_dict: training window X {X.shape}, y {y.shape}, "
                                 f"y_signal {ys.shape} do not match (n, {len(FEATURE_NAMES)}), (n,), (n,)")
            self._X, self._y, self._ys = X.copy(), y.copy(), ys.copy()
        if "reliability_model" in state:
            self._rel = _Logit.from_state(state["reliability_model"])
        if "signal_model" in state:
            self._sig = _Logit.from_state(state["signal_model"])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(threshold={self.threshold}, explore={self.explore}, "
                f"query_by={self.query_by!r}, learn={self.learn}, mask={self.mask}, seed={self.seed})")


@register
class VoteSignal(VoteReliability):
    """:class:`VoteReliability` with ``query_by="signal"``: buy the groups where a label most likely gives a
    non-zero advantage (:math:`s_i`), keep the votes it trusts, drop the rest."""

    name = "vote-signal"
    description = "Online-learned: buy where a label most likely gives an advantage, keep reliable votes, drop the rest."
    default_query_by: ClassVar[str] = "signal"
