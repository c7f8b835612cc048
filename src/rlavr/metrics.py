"""Classification scores used by the strategies' diagnostics and by ``rlavr replay``, from scikit-learn.

One implementation each, imported everywhere (CARE's ``stage1_auroc`` / ``stage2_macro_recall`` metrics, the
replay's ``reliability_auroc``). They differ from calling scikit-learn directly only at the edges, where a
diagnostic must not raise in the middle of a training run: a score with a single class present is ``nan``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["auroc", "balanced_accuracy", "macro_recall"]


def _pair(a: object, b: object, what: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a), np.asarray(b)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"{what}: the two arrays must be equal 1-D shapes, got {x.shape} and {y.shape}")
    return x, y


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positive`` (ties count one half).

    ``nan`` when one class is empty (scikit-learn raises there)."""
    s, y = _pair(scores, positive, "auroc")
    y = y.astype(bool)
    if y.all() or not y.any():
        return float("nan")
    from sklearn.metrics import roc_auc_score  # imported on first use: scikit-learn takes ~0.5 s to import

    return float(roc_auc_score(y, s.astype(np.float64)))


def macro_recall(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean over the classes present in ``true`` of the per-class recall (``nan`` for empty input).

    Classes that appear only in ``pred`` are not averaged (scikit-learn's ``labels=`` restricted to ``true``)."""
    p, t = _pair(pred, true, "macro_recall")
    if t.size == 0:
        return float("nan")
    from sklearn.metrics import recall_score

    return float(recall_score(t, p, labels=np.unique(t), average="macro", zero_division=0))


def balanced_accuracy(pred: np.ndarray, true: np.ndarray) -> float:
    """Balanced accuracy (= macro recall over the classes of ``true``; ``nan`` for empty input)."""
    p, t = _pair(pred, true, "balanced_accuracy")
    if t.size == 0:
        return float("nan")
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(t, p))
