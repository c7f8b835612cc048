"""Offline replay on a hand-made rollout log whose metrics are worked out by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from rlavr.replay import auroc, load_rollout_log, replay, replay_table

# (step, id, answers, reference); G = 4, budget 20 % of 5 prompts per step -> 1 label per step
GROUPS: list[tuple[int, str, list[str | None], str | None]] = [
    (0, "g0", ["1", "1", "1", "2"], "1"),  # vote right, entropy 0.562
    (0, "g1", ["5", "5", "3", "3"], "3"),  # vote wrong (tie -> earliest), entropy ln 2, CAG 4
    (0, "g2", ["7", "7", "7", "7"], "8"),  # vote wrong but CAG 0 (both reward vectors constant)
    (0, "g3", ["4", None, "4", "9"], "9"),  # vote wrong, entropy 0.637, CAG 3.552
    (0, "g4", ["6", "6", "6", "6"], "6"),
    (0, "nolabel", ["1", "2", "3", "4"], None),  # no ground truth: left out of the replay
    (1, "h0", ["2", "3", "2", "3"], "2"),  # vote right, entropy ln 2
    (1, "h1", ["8", "8", "9", None], "9"),  # vote wrong, entropy 0.637, CAG 3.552
    (1, "h2", ["1", "1", "1", "1"], "1"),
    (1, "h3", ["2", "2", "2", "2"], "2"),
    (1, "h4", ["3", "3", "3", "3"], "3"),
]
CAG_G1, CAG_G3 = 4.0, math.sqrt(12.6188)


def write_log(path: Path, groups: list[tuple[int, str, list[str | None], str | None]] = GROUPS,
              **extra: Any) -> Path:
    with open(path, "w") as f:
        for step, gid, answers, ref in groups:
            rec = {"step": step, "id": gid, "prompt": f"q{gid}", "completions": [f"= {a}" if a else "??" for a in answers],
                   "answers": answers, "lengths": [2] * 4, "truncated": [False] * 4, "mean_logprob": None,
                   "route": "pseudo", "weight": 1.0, "score": 0.0, "label_used": None, "majority_answer": None,
                   "reference_label": ref, "bought": False, "strategy": "ttrl", **extra}
            f.write(json.dumps(rec) + "\n")
    return path


def test_hand_computed_metrics(tmp_path: Path) -> None:
    log = load_rollout_log(write_log(tmp_path / "log.jsonl"), "integer")
    assert [b.B for b in log.batches] == [5, 5] and log.skipped_groups == 1
    assert not log.has_logprobs and not log.has_hidden
    res = {r.strategy: r for r in replay(log, ["entropy", "oracle", "prob", "care"], budget=0.2,
                                         answer_space="integer")}
    ent, orc = res["entropy"].metrics, res["oracle"].metrics
    # entropy buys g1 (wrong vote, caught) then h0 (right vote): 1 of 2 queries caught, 1 of 4 wrong votes
    assert ent["labels_bought"] == 2 and ent["wrong_votes"] == 4
    assert ent["catch_precision"] == pytest.approx(0.5) and ent["catch_recall"] == pytest.approx(0.25)
    assert ent["cag_captured"] == pytest.approx(CAG_G1 / (CAG_G1 + CAG_G3), abs=1e-4)
    entropy_scores = [0.5623, 0.6931, 0.0, 0.6365, 0.0, 0.6931, 0.6365, 0.0, 0.0, 0.0]
    wrong = [0, 1, 1, 1, 0, 0, 1, 0, 0, 0]
    assert ent["reliability_auroc"] == pytest.approx(roc_auc_score(wrong, entropy_scores))
    # pseudo route: 8 groups, 3 of them wrong (g2, g3, h1)
    assert ent["pseudo_label_accuracy"] == pytest.approx(5 / 8) and ent["drop_share"] == 0.0
    # the label-peeking oracle buys g1 and h1: every query catches a wrong vote, all the CAG it could get
    assert orc["catch_precision"] == 1.0 and orc["catch_recall"] == 0.5 and orc["cag_captured"] == pytest.approx(1.0)
    assert "log-probabilities" in (res["prob"].skipped or "")
    assert "hidden states" in (res["care"].skipped or "")
    table = replay_table(list(res.values()))
    assert "| entropy | 20% of prompts | 2 | 50.0 | 25.0 | 53.0 |" in table
    assert "skipped: requires hidden states" in table


def test_random_replay_is_seeded_and_budget_bounded(tmp_path: Path) -> None:
    path = write_log(tmp_path / "log.jsonl")
    a = replay(path, ["random"], budget=0.4, answer_space="integer")[0].metrics
    b = replay(path, ["random"], budget=0.4, answer_space="integer")[0].metrics
    assert a == b and a["labels_bought"] == 4  # floor(0.4 * 5) = 2 per step
    assert replay(path, ["random"], budget=0, answer_space="integer")[0].metrics["labels_bought"] == 0


def test_logprobs_and_hidden_states_enable_more_strategies(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    groups = [(s, f"p{s}-{i}", [str(rng.integers(0, 3)) for _ in range(4)], str(rng.integers(0, 3)))
              for s in range(3) for i in range(10)]
    path = tmp_path / "log.jsonl"
    with open(path, "w") as f:
        for step, gid, answers, ref in groups:
            f.write(json.dumps({"step": step, "id": gid, "answers": answers, "reference_label": ref,
                                "mean_logprob": rng.uniform(-2, 0, 4).tolist(),
                                "prompt_hidden": rng.normal(size=8).tolist(),
                                "hidden": rng.normal(size=(4, 8)).tolist()}) + "\n")
    res = replay(path, ["prob", "care"], budget=0.2, answer_space="integer")
    assert all(r.skipped is None for r in res)
    assert all(r.metrics["labels_bought"] == 6 for r in res)


def test_auroc_matches_sklearn_and_handles_ties() -> None:
    rng = np.random.default_rng(1)
    s = rng.integers(0, 5, 300).astype(float)
    y = rng.random(300) < 0.3
    assert auroc(s, y) == pytest.approx(roc_auc_score(y, s))
    assert auroc(np.array([1.0, 2.0]), np.array([True, True])) != auroc(np.array([1.0]), np.array([True]))
    assert math.isnan(auroc(np.array([1.0, 2.0]), np.array([False, False])))
    with pytest.raises(ValueError, match="auroc"):
        auroc(np.zeros(3), np.zeros(2, dtype=bool))


def test_bad_logs_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_rollout_log(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"step": 0, "id": "a", "answers": ["1"]}\nnot json\n')
    with pytest.raises(ValueError, match="line 2"):
        load_rollout_log(tmp_path / "bad.jsonl")
    (tmp_path / "ragged.jsonl").write_text('{"step": 0, "id": "a", "answers": ["1", "2"], "reference_label": "1"}\n'
                                           '{"step": 0, "id": "b", "answers": ["1"], "reference_label": "1"}\n')
    with pytest.raises(ValueError, match="group of 1 rollouts"):
        load_rollout_log(tmp_path / "ragged.jsonl")
    (tmp_path / "nolabel.jsonl").write_text('{"step": 0, "id": "a", "answers": ["1"]}\n')
    with pytest.raises(ValueError, match="no prompt group with a ground-truth label"):
        load_rollout_log(tmp_path / "nolabel.jsonl")
    (tmp_path / "noid.jsonl").write_text('{"step": 0, "answers": ["1"]}\n')
    with pytest.raises(ValueError, match="'id'"):
        load_rollout_log(tmp_path / "noid.jsonl")
    (tmp_path / "text.jsonl").write_text('{"step": 0, "id": "a", "completions": ["x = 3"], "reference_label": "3"}\n')
    # no recorded space, none given: the documented default ("exact"), with a warning (test_replay_answer_space_*)
    assert load_rollout_log(tmp_path / "text.jsonl").batches[0].answer_space.name == "exact"
    assert load_rollout_log(tmp_path / "text.jsonl", "integer").batches[0].answers == [["3"]]
    with pytest.raises(ValueError, match="strategies"):
        replay(write_log(tmp_path / "ok.jsonl"), [], answer_space="integer")


def test_replay_answer_space_defaults_to_the_one_the_log_records(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """The trainer records answer_space on every line: replay uses it unless told otherwise; a log without it
    uses the documented default ("exact") and warns; mixed spaces are refused."""
    from rlavr.replay import DEFAULT_ANSWER_SPACE, recorded_answer_space

    rec = {"step": 0, "id": "a", "completions": ["x = 3", "y = 3", "4"], "reference_label": "3"}
    (tmp_path / "int.jsonl").write_text(json.dumps({**rec, "answer_space": "integer"}) + "\n")
    assert recorded_answer_space(tmp_path / "int.jsonl") == "integer"
    with caplog.at_level("WARNING", logger="rlavr.rollout_log"):
        log = load_rollout_log(tmp_path / "int.jsonl")
    assert log.batches[0].answer_space.name == "integer" and log.batches[0].answers == [["3", "3", "4"]]
    assert not caplog.records
    assert replay(tmp_path / "int.jsonl", ["random"], budget=1.0)[0].metrics["labels_bought"] == 1
    # a given space wins, with a warning naming the recorded one
    with caplog.at_level("WARNING", logger="rlavr.rollout_log"):
        assert load_rollout_log(tmp_path / "int.jsonl", "exact").batches[0].answer_space.name == "exact"
    assert any("'integer'" in r.getMessage() for r in caplog.records)
    caplog.clear()
    # nothing recorded: the default, and a warning that says what to pass
    (tmp_path / "old.jsonl").write_text(json.dumps(rec) + "\n")
    assert recorded_answer_space(tmp_path / "old.jsonl") is None
    with caplog.at_level("WARNING", logger="rlavr.rollout_log"):
        assert load_rollout_log(tmp_path / "old.jsonl").batches[0].answer_space.name == DEFAULT_ANSWER_SPACE
    assert any("records no answer space" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    # mixed spaces, or one that cannot be built: clear errors
    (tmp_path / "mixed.jsonl").write_text(json.dumps({**rec, "answer_space": "integer"}) + "\n"
                                          + json.dumps({**rec, "id": "b", "answer_space": "exact"}) + "\n")
    with pytest.raises(ValueError, match="line 2 .*answer_space='exact'"):
        load_rollout_log(tmp_path / "mixed.jsonl")
    (tmp_path / "custom.jsonl").write_text(json.dumps({**rec, "answer_space": "my-space"}) + "\n")
    with pytest.raises(ValueError, match="my-space.*--answer-space"):
        load_rollout_log(tmp_path / "custom.jsonl")
