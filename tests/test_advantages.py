"""GRPO advantages, CAG and the class-wise CAG table (docs/design.md#maths-and-decisions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlavr.advantages import (
    admissible_counts,
    cag,
    class_costs,
    classwise_cag,
    classwise_cag_table,
    expected_cag,
    grpo_advantages,
    has_signal,
    oracle_cag,
)
from rlavr.answers import ExactAnswers
from rlavr.labels import majority_vote

# docs/concepts.md, G = 8: rows x (majority size), columns y (correct outside the majority); None = inadmissible
SPEC_TABLE_G8 = [
    [0.0, None, None, None, None],
    [2.828, 4.276, None, None, None],
    [2.828, 4.415, 4.619, None, None],
    [2.828, 4.548, 4.812, 5.060, None],
    [2.828, 4.695, 5.024, 5.329, 5.657],
    [2.828, 4.879, 5.284, 5.657, None],
    [2.828, 5.145, 5.657, None, None],
    [2.828, 5.657, None, None, None],
    [0.0, None, None, None, None],
]


# ----------------------------------------------------------------------------------------------- GRPO


def test_unbiased_matches_torch_std() -> None:
    r = np.array([[1.0, 0.0, 0.0, 1.0, 1.0], [0.2, 0.4, 0.9, 0.1, 0.0]])
    t = torch.tensor(r)
    expected = ((t - t.mean(1, keepdim=True)) / (t.std(1, keepdim=True) + 1e-6)).numpy()  # ddof = 1
    np.testing.assert_allclose(grpo_advantages(r), expected, rtol=1e-12)
    expected_trl = ((t - t.mean(1, keepdim=True)) / (t.std(1, keepdim=True) + 1e-4)).numpy()
    np.testing.assert_allclose(grpo_advantages(r, eps=1e-4), expected_trl, rtol=1e-12)


def test_population_by_hand() -> None:
    r = np.array([1.0, 0.0, 0.0, 0.0])  # mean 1/4, population std sqrt(3)/4
    a = grpo_advantages(r, std="population")
    np.testing.assert_allclose(a, np.array([0.75, -0.25, -0.25, -0.25]) / (math.sqrt(3) / 4))
    np.testing.assert_allclose(a, (r - r.mean()) / np.std(r))
    # constant rewards: exactly 0, no eps (CARE: A = 0 when std < 1e-8)
    assert grpo_advantages(np.ones(4), std="population").tolist() == [0.0] * 4
    np.testing.assert_allclose(grpo_advantages(r, std="none"), r - 0.25)


def test_nan_rewards_are_unscorable() -> None:
    r = np.array([[1.0, np.nan, 0.0, 1.0], [np.nan] * 4, [np.nan, 1.0, np.nan, np.nan]])
    a = grpo_advantages(r)
    scorable = np.array([1.0, 0.0, 1.0])
    np.testing.assert_allclose(a[0, [0, 2, 3]], grpo_advantages(scorable))
    assert a[0, 1] == 0.0
    assert a[1].tolist() == [0.0] * 4 and a[2].tolist() == [0.0] * 4  # one scorable rollout -> A = 0
    assert not np.isnan(grpo_advantages(r, std="population")).any()


def test_grpo_validation() -> None:
    with pytest.raises(ValueError, match="std must be"):
        grpo_advantages(np.zeros(3), std="ddof2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"must be \(B, G\) or \(G,\)"):
        grpo_advantages(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="eps must be"):
        grpo_advantages(np.zeros(3), eps=-1.0)
    with pytest.raises(ValueError, match="inf"):
        grpo_advantages(np.array([0.0, np.inf]))


# ----------------------------------------------------------------------------------------------- CAG


def test_has_signal_iff_the_grpo_advantage_is_not_all_zero() -> None:
    # every 0/1 reward pattern of a group of 4: a signal exactly when some rollout is right and some wrong
    patterns = np.array([[(i >> g) & 1 for g in range(4)] for i in range(16)], dtype=bool)
    adv = grpo_advantages(patterns.astype(np.float64), std="population")
    assert has_signal(patterns).tolist() == (np.abs(adv).max(axis=1) > 0).tolist()
    assert has_signal(patterns).sum() == 14  # all but all-wrong and all-right


def test_cag_is_l2_of_population_advantage_difference() -> None:
    r_true = np.array([[0, 0, 1, 1, 0, 0.0], [1, 1, 0, 0, 0, 0.0]])
    r_pseudo = np.array([[1, 1, 0, 0, 0, 0.0], [1, 1, 0, 0, 0, 0.0]])
    a_t = (r_true - r_true.mean(1, keepdims=True)) / r_true.std(1, keepdims=True)
    a_p = (r_pseudo - r_pseudo.mean(1, keepdims=True)) / r_pseudo.std(1, keepdims=True)
    expected = np.sqrt(((a_t - a_p) ** 2).sum(1))
    np.testing.assert_allclose(cag(r_true, r_pseudo), expected)
    assert cag(r_true, r_pseudo)[1] == 0.0  # vote right -> CAG 0
    with pytest.raises(ValueError, match="same shape"):
        cag(np.zeros(3), np.zeros(4))


def test_oracle_cag_zero_iff_vote_right_and_invalid_get_zero_reward() -> None:
    correct = np.array([[1, 1, 0, 0], [0, 0, 1, 0]], dtype=bool)
    in_maj = np.array([[1, 1, 0, 0], [1, 1, 0, 0]], dtype=bool)
    g = oracle_cag(correct, in_maj)
    assert g[0] == 0.0 and g[1] == pytest.approx(classwise_cag(4, 2, 1))
    valid = np.array([[True] * 4, [True, True, False, True]])
    assert oracle_cag(correct, in_maj, valid)[1] == pytest.approx(math.sqrt(4))  # the correct one was invalid


# ----------------------------------------------------------------------------------------------- class-wise CAG


def test_classwise_table_matches_the_documented_g8_table_exactly() -> None:
    table = classwise_cag_table(8)
    assert table.shape == (9, 9)
    for x, row in enumerate(SPEC_TABLE_G8):
        for y in range(9):
            documented = row[y] if y < len(row) else None
            if documented is None:
                assert table[x, y] == 0.0, (x, y)
            else:
                assert round(float(table[x, y]), 3) == documented, (x, y, table[x, y])


def _closed_form(G: int, x: int, y: int) -> float:
    if x in (0, G):
        return 0.0
    if y == 0:
        return math.sqrt(G)
    p, q = x / G, y / G
    return math.sqrt(2 * G * (1 + math.sqrt(p * q / ((1 - p) * (1 - q)))))


@pytest.mark.parametrize("G", [2, 3, 4, 5, 8, 12, 16])
def test_classwise_table_closed_form(G: int) -> None:
    table = classwise_cag_table(G)
    for x in range(G + 1):
        for y in range(G + 1):
            admissible = y <= x and x + y <= G
            expected = _closed_form(G, x, y) if admissible else 0.0
            assert table[x, y] == pytest.approx(expected, abs=1e-9), (G, x, y)


def test_classwise_cag_lookup_and_errors() -> None:
    assert classwise_cag(8, 3, 2) == pytest.approx(4.812, abs=5e-4)
    np.testing.assert_allclose(classwise_cag(8, np.array([1, 7]), np.array([1, 1])), [4.276, 5.657], atol=5e-4)
    assert classwise_cag(8, 2, 5) == 0.0  # y > x: inadmissible
    with pytest.raises(ValueError, match=r"x must lie in \[0, G=8\]"):
        classwise_cag(8, -1, 0)
    with pytest.raises(ValueError, match=r"y must lie in \[0, G=8\]"):
        classwise_cag(8, 3, 9)
    with pytest.raises(ValueError, match="integer counts"):
        classwise_cag(8, 1.5, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="G must be a positive int"):
        classwise_cag_table(0)
    with pytest.raises(ValueError, match="G must be a positive int"):
        classwise_cag_table(8.0)  # type: ignore[arg-type]
    assert not classwise_cag_table(8).flags.writeable


def test_admissible_counts_and_costs() -> None:
    answers = [
        ["a", "a", "a", "b", "b", "c", None, None],  # x=3, other clusters 2 and 1
        ["a"] * 8,  # unanimous: only class 0
        [None] * 8,  # nothing valid: only class 0
        ["a", "b", "c", "d", "e", "f", "g", "h"],  # x=1, others of size 1
    ]
    v = majority_vote(ExactAnswers().cluster_batch(answers), answers)
    mask = admissible_counts(v.majority_size, v.cluster_sizes, v.majority)
    expected = np.zeros((4, 9), dtype=bool)
    expected[:, 0] = True
    expected[0, [1, 2]] = True
    expected[3, 1] = True
    np.testing.assert_array_equal(mask, expected)
    costs = class_costs(v.majority_size, mask)
    t = classwise_cag_table(8)
    np.testing.assert_allclose(costs[0], np.where(expected[0], t[3], 0.0))
    assert costs[1].tolist() == [0.0] * 9 and costs[2].tolist() == [0.0] * 9  # x = G and x = 0 -> CAG 0
    probs = np.zeros((4, 9))
    probs[0, [0, 2]] = [0.25, 0.75]
    np.testing.assert_allclose(expected_cag(probs, costs)[0], 0.25 * t[3, 0] + 0.75 * t[3, 2])
    with pytest.raises(ValueError, match=r"majority must have shape \(4,\)"):
        admissible_counts(v.majority_size, v.cluster_sizes, v.majority[:2])


@pytest.mark.parametrize("std", ["unbiased", "population", "none"])
def test_one_scorable_rollout_has_advantage_zero_not_r(std: str) -> None:
    # rlavr's convention (verl's would be A = r): a lone reward has no group baseline
    assert grpo_advantages(np.array([[1.0]]), std=std).tolist() == [[0.0]]  # type: ignore[arg-type]
    assert grpo_advantages(np.array([np.nan, 1.0, np.nan]), std=std).tolist() == [0.0, 0.0, 0.0]  # type: ignore[arg-type]


def test_one_rollout_convention_is_documented() -> None:
    from pathlib import Path

    doc = " ".join((grpo_advantages.__doc__ or "").split())
    assert "single scorable rollout" in doc and "verl" in doc and "A = r" in doc
    concepts = (Path(__file__).resolve().parents[1] / "docs" / "concepts.md").read_text(encoding="utf-8")
    assert "single scorable rollout" in concepts and "$A = r$" in concepts
