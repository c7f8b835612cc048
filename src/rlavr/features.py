r"""Rollout-derived features for learned acquisition strategies (CARE: docs/strategies/care.md), vectorised.

Two families of signals (paper Table 3 / App. B.2):

* **prompt level** (shape ``(B, .)``): the last-prompt-token final-layer hidden state :math:`h_p \in R^H`, the
  valid-rollout ratio :math:`v = \#\{j : a_j \neq \varnothing\} / G` and the sorted cluster-size distribution
  :math:`d = \mathrm{sort}_\downarrow(|C_1|, |C_2|, \dots) / G`, zero-padded to ``G`` entries (divided by ``G``,
  not by the number of valid answers; all zeros when no answer is valid);
* **response level** (shape ``(B, G, .)``, rollout order, never sorted): the last-response-token hidden state
  :math:`h_{r,j} \in R^H` and the normalised length :math:`\ell_j = \mathrm{clip}(T_j / L, 0, 1)` with
  ``L = length_norm`` (4000 in CARE's code, a hard-coded constant equal to its max response length).

Structure derived from the answer clusters (no label needed):

* the **stage-2 response mask** :math:`m_j = [a_j \neq \varnothing] \wedge [j \notin C_{maj}]`;
* the **admissible count set** :math:`K \subseteq \{0..G\}`: 0 and the size of every non-majority cluster
  (at most one cluster is the correct answer, so the number of correct non-majority responses is 0 or the
  size of some non-majority cluster), from :func:`rlavr.advantages.admissible_counts`;
* the **class costs** :math:`c_k = \mathrm{CAG}(G, x, k)` on :math:`K` (0 elsewhere), with ``x`` the majority
  size, from :func:`rlavr.advantages.class_costs` / :func:`~rlavr.advantages.classwise_cag_table`.

Label-dependent training targets (only for groups whose ground truth was bought), :func:`label_targets`:
per-response correctness, whether the vote is correct, the **correct non-majority count**
:math:`y = \sum_{C \neq C_{maj},\ C \text{ holds a correct answer}} |C|` (0 when the vote is correct, clipped to
``[0, G]``; docs/design.md#class-wise-cag-and-the-admissible-classes) and the true CAG
:math:`\lVert A(r_{GT}) - A(r_{pseudo}) \rVert_2` (:func:`rlavr.advantages.oracle_cag`).

Strategies declare the signals they read in ``requires``; :func:`require_signals` turns a missing signal into a
clear :class:`ValueError` before any work is done.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from rlavr.advantages import admissible_counts, class_costs, oracle_cag
from rlavr.types import Label, RolloutBatch

__all__ = [
    "DEFAULT_LENGTH_NORM",
    "LabelTargets",
    "RolloutFeatures",
    "correct_nonmajority_count",
    "label_targets",
    "require_signals",
    "rollout_features",
]

DEFAULT_LENGTH_NORM = 4000.0
"""CARE's response-length normaliser: a constant in the authors' code, not the configured max length."""


# ================================================================================================ signal checks


def require_signals(batch: RolloutBatch, requires: Iterable[str], who: str = "strategy") -> None:
    """Raise :class:`ValueError` if ``batch`` lacks a signal named in ``requires``.

    Checked signals: ``"hidden_states"`` (every group's ``prompt_hidden`` and every rollout's ``hidden``, with one
    common size ``H``), ``"logprobs"`` (every non-empty rollout's ``mean_logprob``; an empty completion needs none,
    see :attr:`RolloutBatch.empty`) and ``"labels"`` (reference labels on the
    batch). ``"answers"`` is always present (the batch is clustered on construction); ``"attentions"`` is
    strategy specific and not checked here.
    """
    req = set(requires)
    if "hidden_states" in req and _hidden_ok(batch):
        req.discard("hidden_states")
    if "hidden_states" in req:
        miss_p = [g.id for g in batch.groups if g.prompt_hidden is None]
        miss_r = [(g.id, j) for g in batch.groups for j, r in enumerate(g.rollouts) if r.hidden is None]
        if miss_p or miss_r:
            detail = (f"{len(miss_p)} groups lack prompt_hidden (first: {miss_p[0]!r})" if miss_p else
                      f"{len(miss_r)} rollouts lack hidden (first: rollout {miss_r[0][1]} of {miss_r[0][0]!r})")
            raise ValueError(
                f"{who} requires 'hidden_states' but the batch has none: {detail}. Pass the last-prompt-token "
                "hidden state as PromptGroup.prompt_hidden (H,) and the last-response-token hidden state as "
                "Rollout.hidden (H,) (final layer, after the final norm; the rlavr TRL trainer captures them "
                "from its existing no-grad forward)")
        hp = {int(g.prompt_hidden.shape[0]) for g in batch.groups}  # type: ignore[union-attr]
        hr = {int(r.hidden.shape[0]) for g in batch.groups for r in g.rollouts}  # type: ignore[union-attr]
        if len(hp | hr) != 1:
            raise ValueError(f"{who}: hidden sizes differ within the batch (prompt_hidden sizes {sorted(hp)}, "
                             f"rollout hidden sizes {sorted(hr)}); all must share one H")
    if "logprobs" in req:
        _ = batch.mean_logprob  # raises a clear ValueError naming the first rollout without logprobs
    if "labels" in req and batch.reference_labels is None:
        raise ValueError(f"{who} requires 'labels' (reference labels on the batch) but batch.reference_labels is None")


def _hidden_ok(batch: RolloutBatch) -> bool:
    """Fast path of the ``hidden_states`` check: the batch's stacked (cached) prompt ``(B, H)`` and response
    ``(B, G, H)`` hidden states exist and share one ``H``. ``False`` sends :func:`require_signals` to the
    detailed per-rollout check, which names what is missing."""
    try:
        hp, hr = batch.prompt_hidden, batch.response_hidden
    except ValueError:
        return False
    return hp.ndim == 2 and hr.ndim == 3 and hp.shape[1] == hr.shape[2]


# ================================================================================================ features


@dataclass(frozen=True)
class RolloutFeatures:
    """Label-free features of one batch (all arrays have leading dimension ``B``; see module docstring).

    Attributes:
        valid: ``(B, G)`` bool, the rollout has an extractable answer.
        valid_ratio: ``(B,)`` float32, ``#valid / G``.
        cluster_dist: ``(B, G)`` float32, cluster sizes sorted descending / G, zero-padded.
        length_norm: ``(B, G)`` float32, ``clip(length / L, 0, 1)``.
        majority_size: ``(B,)`` int64, size ``x`` of the majority cluster (0 if no valid answer).
        in_majority: ``(B, G)`` bool, the rollout is in the majority cluster.
        stage2_mask: ``(B, G)`` bool, valid and not in the majority cluster.
        admissible: ``(B, G+1)`` bool, admissible correct-count classes ``K``.
        class_costs: ``(B, G+1)`` float64, ``CAG(G, x, k)`` on ``K``, 0 elsewhere.
        prompt_hidden: ``(B, H)`` float32 or ``None`` (not requested).
        response_hidden: ``(B, G, H)`` float32 or ``None``.
        mean_logprob: ``(B, G)`` float64 or ``None`` (not requested); ``0`` for an empty completion
            (:attr:`RolloutBatch.empty`).
    """

    valid: np.ndarray
    valid_ratio: np.ndarray
    cluster_dist: np.ndarray
    length_norm: np.ndarray
    majority_size: np.ndarray
    in_majority: np.ndarray
    stage2_mask: np.ndarray
    admissible: np.ndarray
    class_costs: np.ndarray
    prompt_hidden: np.ndarray | None = None
    response_hidden: np.ndarray | None = None
    mean_logprob: np.ndarray | None = None

    @property
    def B(self) -> int:
        return int(self.valid.shape[0])

    @property
    def G(self) -> int:
        return int(self.valid.shape[1])

    @property
    def H(self) -> int | None:
        return None if self.prompt_hidden is None else int(self.prompt_hidden.shape[1])

    @property
    def prompt_scalars(self) -> np.ndarray:
        """``(B, 1+G)`` float32: ``[valid_ratio, cluster_dist]`` (CARE's ``prompt_feat``, slots 0..G)."""
        return np.concatenate([self.valid_ratio[:, None], self.cluster_dist], axis=1).astype(np.float32)

    @property
    def scalar_features(self) -> np.ndarray:
        """``(B, 1+2G)`` float32: CARE's ``feat`` vector ``[valid_ratio, cluster_dist, length_norm]``."""
        return np.concatenate([self.prompt_scalars, self.length_norm], axis=1).astype(np.float32)

    @property
    def prompt_input(self) -> np.ndarray:
        """``(B, H+1+G)`` float32: ``[h_p, valid_ratio, cluster_dist]`` (CARE's prompt-encoder input)."""
        if self.prompt_hidden is None:
            raise ValueError("RolloutFeatures.prompt_input: features were built with hidden=False")
        return np.concatenate([self.prompt_hidden, self.prompt_scalars], axis=1)

    @property
    def max_cost(self) -> np.ndarray:
        """``(B,)`` largest admissible class cost (0 for unanimous votes and groups without a valid answer)."""
        return self.class_costs.max(axis=1)

    def take(self, rows: np.ndarray | Sequence[int]) -> RolloutFeatures:
        """The features of a subset of groups, in the order of ``rows``."""
        idx = np.asarray(rows, dtype=np.int64)

        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[idx]

        return RolloutFeatures(
            valid=self.valid[idx], valid_ratio=self.valid_ratio[idx], cluster_dist=self.cluster_dist[idx],
            length_norm=self.length_norm[idx], majority_size=self.majority_size[idx],
            in_majority=self.in_majority[idx], stage2_mask=self.stage2_mask[idx], admissible=self.admissible[idx],
            class_costs=self.class_costs[idx], prompt_hidden=pick(self.prompt_hidden),
            response_hidden=pick(self.response_hidden), mean_logprob=pick(self.mean_logprob))


def rollout_features(
    batch: RolloutBatch,
    *,
    hidden: bool = True,
    logprobs: bool = False,
    length_norm: float = DEFAULT_LENGTH_NORM,
) -> RolloutFeatures:
    """Compute the label-free features of ``batch`` (vectorised; see module docstring for the maths).

    Args:
        batch: the rollouts, clustered and voted.
        hidden: also stack the prompt ``(B, H)`` and response ``(B, G, H)`` hidden states (raises a clear
            :class:`ValueError` if any is missing).
        logprobs: also return the ``(B, G)`` mean token log-probabilities (:attr:`RolloutBatch.mean_logprob`:
            ``0`` for an empty completion).
        length_norm: the length normaliser ``L`` (> 0); lengths are divided by it and clipped to ``[0, 1]``.
    """
    if not isinstance(length_norm, int | float) or not np.isfinite(length_norm) or length_norm <= 0:
        raise ValueError(f"length_norm: must be a finite number > 0, got {length_norm!r}")
    if hidden:
        require_signals(batch, {"hidden_states"}, "rollout_features(hidden=True)")
    votes = batch.votes
    G = batch.G
    valid = batch.valid
    valid_ratio = (valid.sum(axis=1) / G).astype(np.float32)
    cluster_dist = votes.sorted_cluster_dist.astype(np.float32)
    lengths = batch.lengths.astype(np.float64)
    len_norm = np.clip(lengths / float(length_norm), 0.0, 1.0).astype(np.float32)
    x = np.asarray(votes.majority_size, dtype=np.int64)
    in_maj = votes.in_majority
    stage2 = valid & ~in_maj
    adm = admissible_counts(x, votes.cluster_sizes, votes.majority)
    costs = class_costs(x, adm)
    return RolloutFeatures(
        valid=valid, valid_ratio=valid_ratio, cluster_dist=cluster_dist, length_norm=len_norm, majority_size=x,
        in_majority=in_maj, stage2_mask=stage2, admissible=adm, class_costs=costs,
        prompt_hidden=batch.prompt_hidden if hidden else None,
        response_hidden=batch.response_hidden if hidden else None,
        mean_logprob=batch.mean_logprob if logprobs else None,
    )


# ================================================================================================ label targets


def correct_nonmajority_count(
    correct: np.ndarray,
    cluster_ids: np.ndarray,
    cluster_sizes: np.ndarray,
    majority: np.ndarray,
    vote_correct: np.ndarray,
) -> np.ndarray:
    r"""CARE's Stage-II label: the correct non-majority count per group.

    :math:`y = \sum_{c \neq maj} |C_c| \cdot [\exists j \in C_c : \mathrm{correct}_j]`, set to 0 when the vote is
    correct and clipped to ``[0, G]`` (docs/design.md#class-wise-cag-and-the-admissible-classes).

    Args:
        correct: ``(B, G)`` bool per-rollout correctness against the ground truth.
        cluster_ids: ``(B, G)`` cluster id per rollout (-1 invalid).
        cluster_sizes: ``(B, G)`` size per cluster id.
        majority: ``(B,)`` majority cluster id (-1 none).
        vote_correct: ``(B,)`` bool, the majority answer is correct.
    Returns:
        ``(B,)`` int64 counts in ``[0, G]``.
    """
    correct = np.asarray(correct, dtype=bool)
    ids = np.asarray(cluster_ids)
    B, G = ids.shape
    if correct.shape != (B, G):
        raise ValueError(f"correct: shape {correct.shape} does not match cluster_ids {ids.shape}")
    member = ids[:, :, None] == np.arange(G)[None, None, :]                 # (B, G rollouts, G clusters)
    cluster_correct = (member & correct[:, :, None]).any(axis=1)             # (B, G clusters)
    non_major = np.arange(G)[None, :] != np.asarray(majority)[:, None]
    y = (np.asarray(cluster_sizes) * (cluster_correct & non_major)).sum(axis=1)
    return np.where(np.asarray(vote_correct, dtype=bool), 0, np.clip(y, 0, G)).astype(np.int64)


@dataclass(frozen=True)
class LabelTargets:
    """Training targets for the groups of a batch that have a ground-truth label.

    Attributes:
        rows: ``(N,)`` indices of the labelled groups in the batch (batch order).
        resp_correct: ``(N, G)`` bool, rollout graded correct against the label (invalid -> False).
        vote_correct: ``(N,)`` bool, the majority answer is correct (Stage-I label).
        count: ``(N,)`` int64, correct non-majority count (Stage-II label).
        true_cag: ``(N,)`` float64, the true Corrective Advantage Gap.
    """

    rows: np.ndarray
    resp_correct: np.ndarray
    vote_correct: np.ndarray
    count: np.ndarray
    true_cag: np.ndarray

    def __len__(self) -> int:
        return int(self.rows.shape[0])


def label_targets(batch: RolloutBatch, labels: Mapping[str, Label] | Sequence[Label | None],
                  correct: np.ndarray | None = None) -> LabelTargets:
    """Targets for the groups of ``batch`` that have a label.

    Args:
        batch: the batch.
        labels: either a mapping ``prompt_id -> label`` (ids not in the batch are ignored) or a sequence of ``B``
            labels aligned with the batch (``None`` = unlabelled).
        correct: optional ``(B, G)`` correctness already graded against these labels (e.g. the batch's cached
            ``reference_correct``), to avoid grading twice; graded here when omitted.
    """
    if isinstance(labels, Mapping):
        aligned: list[Label | None] = [labels.get(i) for i in batch.ids]
    else:
        aligned = list(labels)
        if len(aligned) != batch.B:
            raise ValueError(f"labels: expected {batch.B} labels aligned with the batch, got {len(aligned)}")
    for i, lab in enumerate(aligned):
        if lab is not None and not isinstance(lab, str):
            raise ValueError(f"labels[{batch.ids[i]!r}]: expected str or None, got {type(lab).__name__}")
    rows = np.array([i for i, lab in enumerate(aligned) if lab is not None], dtype=np.int64)
    G = batch.G
    if rows.size == 0:
        return LabelTargets(rows=rows, resp_correct=np.zeros((0, G), dtype=bool),
                            vote_correct=np.zeros(0, dtype=bool), count=np.zeros(0, dtype=np.int64),
                            true_cag=np.zeros(0, dtype=np.float64))
    if correct is None:
        correct = batch.correctness(aligned)
    elif np.shape(correct) != (batch.B, G):
        raise ValueError(f"correct: expected shape {(batch.B, G)}, got {np.shape(correct)}")
    correct = np.asarray(correct, dtype=bool)[rows] & batch.valid[rows]
    votes = batch.votes
    has = votes.majority[rows] >= 0
    rep = np.where(has, votes.majority_first[rows], 0)
    vote_ok = has & correct[np.arange(rows.size), rep]
    count = correct_nonmajority_count(correct, votes.cluster_ids[rows], votes.cluster_sizes[rows],
                                      votes.majority[rows], vote_ok)
    true = oracle_cag(correct, votes.in_majority[rows], batch.valid[rows])
    return LabelTargets(rows=rows, resp_correct=correct, vote_correct=vote_ok, count=count,
                        true_cag=np.asarray(true, dtype=np.float64))
