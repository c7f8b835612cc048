"""Majority vote (TTRL rules): :mod:`rlavr.votes`."""

from __future__ import annotations

import numpy as np
import pytest

from rlavr.answers import ExactAnswers
from rlavr.votes import majority_vote


def _vote(answers: list[list[str | None]]):  # type: ignore[no-untyped-def]
    return majority_vote(ExactAnswers().cluster_batch(answers), answers)


# ----------------------------------------------------------------------------------------------- majority vote


def test_tie_goes_to_earliest_cluster() -> None:
    v = _vote([["b", "a", "a", "b"], ["x", "y", "z", "y"], ["c", None, "d", None]])
    assert v.majority_answer == ["b", "y", "c"]
    assert v.majority.tolist() == [0, 1, 0]
    assert v.majority_first.tolist() == [0, 1, 0]
    assert v.majority_size.tolist() == [2, 2, 1]


def test_invalid_answers_are_skipped_and_count_in_g() -> None:
    v = _vote([[None, None, "a", "b", "b"], [None, None, None, None, "q"]])
    assert v.majority_answer == ["b", "q"]
    np.testing.assert_allclose(v.majority_ratio, [2 / 5, 1 / 5])  # G counts the invalid rollouts
    assert v.n_valid.tolist() == [3, 1]


def test_all_invalid_has_no_pseudo_label() -> None:
    v = _vote([[None, None, None], ["a", "a", "b"]])
    assert v.majority_answer == [None, "a"]
    assert v.majority.tolist() == [-1, 0] and v.majority_first.tolist() == [-1, 0]
    assert v.majority_ratio.tolist() == [0.0, 2 / 3]
    assert v.entropy[0] == 0.0
    assert not v.in_majority[0].any()
    assert v.in_majority[1].tolist() == [True, True, False]


def test_tie_rule_does_not_depend_on_cluster_numbering() -> None:
    # ids not numbered by first appearance: cluster 1 appears first, so it wins the 2-2 tie
    v = majority_vote(np.array([[1, 0, 0, 1]]), [["p", "q", "q", "p"]])
    assert v.majority.tolist() == [1] and v.majority_answer == ["p"] and v.majority_first.tolist() == [0]


def test_entropy_and_sorted_distribution() -> None:
    v = _vote([["a", "a", "b", None], ["a", "b", "c", "d"], ["a", "a", "a", "a"]])
    p = np.array([2 / 3, 1 / 3])
    np.testing.assert_allclose(v.entropy, [-(p * np.log(p)).sum(), np.log(4), 0.0])
    np.testing.assert_allclose(v.sorted_cluster_dist[0], [0.5, 0.25, 0, 0])
    np.testing.assert_array_equal(v.cluster_sizes[1], [1, 1, 1, 1])


def test_majority_vote_validation() -> None:
    with pytest.raises(ValueError, match=r"must be \(B, G\)"):
        majority_vote(np.zeros(3, dtype=int), [["a"]])
    with pytest.raises(ValueError, match="2 answer lists for 1 groups"):
        majority_vote(np.zeros((1, 2), dtype=int), [["a", "a"], ["b", "b"]])
    with pytest.raises(ValueError, match=r"cluster ids must lie in \[-1, G-1=1\]"):
        majority_vote(np.array([[0, 2]]), [["a", "b"]])
    with pytest.raises(ValueError, match=r"answers\[0\] has 1 entries, expected G=2"):
        majority_vote(np.array([[0, 0]]), [["a"]])
    with pytest.raises(ValueError, match="must be integers"):
        majority_vote(np.array([[0.0, 1.0]]), [["a", "b"]])
