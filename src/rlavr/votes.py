"""Majority vote over clustered answers: the pseudo-label of a prompt group (TTRL, CARE), vectorised over the batch.

The rules (see docs/concepts.md, "Answers, clustering and the majority vote"):

* invalid answers (``None``, cluster id ``-1``) are skipped;
* clusters are ranked by (-size, first appearance): ties go to the cluster that appeared earliest;
* ``majority_ratio = |top cluster| / G`` where ``G`` counts invalid rollouts too;
* a group with no valid answer has no pseudo-label (``majority = -1``, ratio 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["MajorityVote", "majority_vote"]


@dataclass(frozen=True, eq=False)
class MajorityVote:
    """Per-group majority vote over clustered answers (all arrays have leading dimension ``B``).

    Attributes:
        cluster_ids: ``(B, G)`` cluster id of each rollout, ``-1`` if invalid; ids follow first appearance.
        cluster_sizes: ``(B, G)`` size of cluster ``c`` at column ``c`` (zeros for unused ids).
        majority: ``(B,)`` id of the majority cluster, ``-1`` when no answer is valid.
        majority_size: ``(B,)`` size of the majority cluster (0 when none).
        majority_first: ``(B,)`` rollout index of the majority cluster's first member (-1 when none).
        majority_answer: ``B`` representative answer strings (first member) or ``None``.
        n_valid: ``(B,)`` number of valid rollouts.
    """

    cluster_ids: np.ndarray
    cluster_sizes: np.ndarray
    majority: np.ndarray
    majority_size: np.ndarray
    majority_first: np.ndarray
    majority_answer: list[str | None]
    n_valid: np.ndarray

    @property
    def G(self) -> int:
        """Rollouts per group (invalid ones included)."""
        return int(self.cluster_ids.shape[1])

    @property
    def majority_ratio(self) -> np.ndarray:
        """``(B,)`` majority cluster size / G (invalid rollouts count in G)."""
        return self.majority_size / self.G

    @property
    def in_majority(self) -> np.ndarray:
        """``(B, G)`` bool: rollout is in the majority cluster."""
        return (self.cluster_ids == self.majority[:, None]) & (self.majority[:, None] >= 0)

    @property
    def sorted_cluster_dist(self) -> np.ndarray:
        """``(B, G)`` cluster sizes sorted descending, divided by G, zero-padded (a CARE feature, see docs/strategies/care.md)."""
        return -np.sort(-self.cluster_sizes, axis=1) / self.G

    @property
    def entropy(self) -> np.ndarray:
        """``(B,)`` natural-log entropy of the cluster distribution over VALID answers (0 if none valid)."""
        sizes = self.cluster_sizes.astype(np.float64)
        total = sizes.sum(axis=1, keepdims=True)
        p = np.divide(sizes, total, out=np.zeros_like(sizes), where=total > 0)
        return -(p * np.log(np.maximum(p, 1e-12))).sum(axis=1)


def majority_vote(cluster_ids: np.ndarray, answers: Sequence[Sequence[str | None]]) -> MajorityVote:
    """Majority vote for a batch of clustered groups (vectorised; see module docstring for the rules).

    With ``n[b, c]`` the size of cluster ``c`` in group ``b`` and ``f[b, c]`` the index of its first member, the
    majority is ``argmax_c (n[b, c], -f[b, c])`` in lexicographic order: the largest cluster, ties to the one
    that appeared first. The tie rule uses ``f`` directly, so it holds for any cluster numbering, not only
    the first-appearance numbering of :meth:`~rlavr.answers.AnswerSpace.cluster_batch`.

    Args:
        cluster_ids: ``(B, G)`` cluster id per rollout in ``[-1, G-1]`` (``-1`` = invalid answer).
        answers: the ``B`` groups' answers (the majority answer is the first member of the top cluster).
    """
    ids = np.asarray(cluster_ids)
    if ids.ndim != 2:
        raise ValueError(f"majority_vote: cluster_ids must be (B, G), got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"majority_vote: cluster_ids must be integers, got dtype {ids.dtype}")
    ids = ids.astype(np.int64, copy=False)
    B, G = ids.shape
    if len(answers) != B:
        raise ValueError(f"majority_vote: {len(answers)} answer lists for {B} groups")
    bad_row = next((i for i, a in enumerate(answers) if len(a) != G), None)
    if bad_row is not None:
        raise ValueError(f"majority_vote: answers[{bad_row}] has {len(answers[bad_row])} entries, expected G={G}")
    if ids.size and (ids.max() >= G or ids.min() < -1):
        raise ValueError(f"majority_vote: cluster ids must lie in [-1, G-1={G - 1}], got range [{ids.min()}, {ids.max()}]")
    valid = ids >= 0
    rows = np.broadcast_to(np.arange(B)[:, None], (B, G))
    flat = (rows * G + np.where(valid, ids, 0))[valid]
    sizes = np.bincount(flat, minlength=B * G).reshape(B, G)  # (B, G) size per cluster id
    first_idx = np.full(B * G, G, dtype=np.int64)  # G = "absent"
    cols = np.broadcast_to(np.arange(G)[None, :], (B, G))[valid]
    np.minimum.at(first_idx, flat, cols)
    first_idx = first_idx.reshape(B, G)
    n_valid = valid.sum(axis=1)
    # lexicographic (size desc, first member asc) in one integer key
    top = np.argmax(sizes * (G + 1) + (G - first_idx), axis=1)
    msize = sizes[np.arange(B), top]
    has = msize > 0
    majority = np.where(has, top, -1)
    first = np.where(has, first_idx[np.arange(B), top], -1)
    maj_answer = [answers[i][first[i]] if has[i] else None for i in range(B)]
    return MajorityVote(
        cluster_ids=ids,
        cluster_sizes=sizes,
        majority=majority,
        majority_size=np.where(has, msize, 0),
        majority_first=first,
        majority_answer=maj_answer,
        n_valid=n_valid,
    )
