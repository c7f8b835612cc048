"""rlavr.trl.round: the label column TRL's reward functions see."""

from __future__ import annotations

import numpy as np

from rlavr.budget import BudgetView
from rlavr.engine import AcquisitionEngine
from rlavr.labels import DatasetOracle
from rlavr.loop import AcquisitionLoop
from rlavr.rollouts import RowFeatures
from rlavr.strategies.base import Strategy
from rlavr.trl.round import label_column_rows
from rlavr.types import Acquisition, RolloutBatch, Route

G = 4
ANSWERS = [["1", "1", "2", "1"], ["2", "2", "1", "3"], [None, None, None, None]]


class QueryDropPseudo(Strategy):
    name = "round-fixed"

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        return Acquisition(routes=np.array([Route.QUERY, Route.DROP, Route.PSEUDO]),
                           weights=np.array([1.0, 0.0, 1.0]), scores=np.zeros(3))


def test_the_trl_label_column_keeps_the_majority_of_dropped_groups() -> None:
    loop = AcquisitionLoop(AcquisitionEngine(QueryDropPseudo(), DatasetOracle({"p0": "1", "p1": "1", "p2": "1"})))
    rows = [RowFeatures(id=f"p{g}", prompt=f"q{g}", text=a or "", answer=a, length=3, truncated=False)
            for g, group in enumerate(ANSWERS) for a in group]
    d = loop.decide(rows, G, step=0)
    assert d.train_labels == ("1", None, None)  # the Decision itself: no label for dropped groups
    data = [{"id": f"p{r // G}", "answer": "1"} for r in range(3 * G)]
    out = label_column_rows(d, loop.answer_space, data[G:], "answer", start=G)
    # inside the TRL adapter only: the dropped group's majority (rewards NaN there), the no-answer group's own value
    assert [x["answer"] for x in out] == ["2"] * G + ["1"] * G
