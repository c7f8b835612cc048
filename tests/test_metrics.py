"""rlavr.metrics: scikit-learn's scores with nan (not an exception) where a class is missing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import rankdata

from rlavr.metrics import auroc, balanced_accuracy, macro_recall


def _rank_auroc(s: np.ndarray, y: np.ndarray) -> float:
    r = rankdata(s)
    n1, n0 = int(y.sum()), int((~y).sum())
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def test_auroc_matches_the_rank_sum_formula_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        s = rng.integers(0, 5, 40).astype(float)  # many ties
        y = rng.random(40) < 0.4
        assert auroc(s, y) == pytest.approx(_rank_auroc(s, y), abs=1e-12)
    assert auroc(np.array([0.1, 0.9]), np.array([False, True])) == 1.0


def test_edges_are_nan_and_bad_shapes_raise():
    assert math.isnan(auroc(np.array([0.3, 0.4]), np.array([True, True])))
    assert math.isnan(macro_recall(np.array([]), np.array([])))
    with pytest.raises(ValueError, match="auroc"):
        auroc(np.zeros(3), np.zeros(4, bool))


def test_macro_recall_averages_the_classes_of_true_only():
    true = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 3])  # class 3 only predicted
    assert macro_recall(pred, true) == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert balanced_accuracy(np.array([0, 1, 1]), np.array([0, 1, 0])) == pytest.approx(0.75)
