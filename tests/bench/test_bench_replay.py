"""Offline replay on a hand-made rollout log whose metrics are worked out by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from rlavr.bench.replay import auroc, load_rollout_log, replay, replay_table

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


# ------------------------------------------------------------------ malformed lines: a ValueError naming the line

def _record(**over: Any) -> dict[str, Any]:
    """A valid G = 3, H = 2 record with features; ``over`` replaces (or, with ``DROP``, removes) fields."""
    rec: dict[str, Any] = {"step": 0, "id": "a", "prompt": "q", "completions": ["= 1", "= 2", "= 1"],
                           "answers": ["1", "2", "1"], "lengths": [2, 2, 2], "truncated": [False, False, True],
                           "mean_logprob": [-0.5, -1.0, -0.25], "prompt_hidden": [0.1, 0.2],
                           "hidden": [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], "reference_label": "1",
                           "label_used": None, "bought": False}
    for k, v in over.items():
        if v is DROP:
            rec.pop(k, None)
        else:
            rec[k] = v
    return rec


DROP = object()


def _write_lines(path: Path, *records: Any) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_a_valid_record_with_features_loads(tmp_path: Path) -> None:
    log = load_rollout_log(_write_lines(tmp_path / "ok.jsonl", _record(), _record(id="b", step=1)), "integer")
    assert log.has_logprobs and log.has_hidden and [b.B for b in log.batches] == [1, 1]
    g = log.batches[0].groups[0]
    assert [r.length for r in g.rollouts] == [2, 2, 2] and [r.truncated for r in g.rollouts] == [False, False, True]
    assert g.rollouts[1].hidden is not None and g.rollouts[1].hidden.tolist() == [0.0, 1.0]


@pytest.mark.parametrize("over, message", [
    ({"lengths": [2]}, "'lengths' has 1 entries but the group has 3 rollouts"),
    ({"mean_logprob": [-0.5, -1.0]}, "'mean_logprob' has 2 entries but the group has 3 rollouts"),
    ({"truncated": [False, False, True, True]}, "'truncated' has 4 entries"),
    ({"hidden": 5}, "'hidden' must be a G x H list of lists"),
    ({"hidden": [[1.0, 0.0], [0.0, 1.0, 2.0], [0.5, 0.5]]}, r"'hidden'\[1\] has 3 numbers, expected H = 2"),
    ({"hidden": [[1.0, 0.0], [0.0, 1.0]]}, "3 rows of 2 numbers"),
    ({"hidden": [[1.0, 0.0], [0.0, "x"], [0.5, 0.5]]}, r"'hidden'\[1\]\[1\] must be a finite number"),
    ({"hidden": [[1.0, 0.0], 7, [0.5, 0.5]]}, r"'hidden'\[1\] must be a list of numbers"),
    ({"prompt_hidden": []}, "'prompt_hidden' is empty"),
    ({"prompt_hidden": 3}, "'prompt_hidden' must be a list of numbers"),
    ({"prompt_hidden": DROP}, "'hidden' is given without 'prompt_hidden'"),
    ({"hidden": DROP}, "'prompt_hidden' is given without 'hidden'"),
    ({"answers": "12"}, "'answers' must be a list"),
    ({"answers": ["1", ["2"], "1"]}, r"answers\[1\] must be a string, a number or null"),
    ({"completions": "= 1"}, "'completions' must be a list"),
    ({"completions": ["= 1", 2, "= 1"]}, r"completions\[1\] must be a string"),
    ({"completions": ["= 1"]}, "1 completions but 3 answers"),
    ({"answers": [], "completions": []}, "the group has no rollouts"),
    ({"lengths": [2, -1, 2]}, r"lengths\[1\] must be an int >= 0"),
    ({"lengths": [2, 2.5, 2]}, r"lengths\[1\] must be an int >= 0"),
    ({"truncated": [0, 1, 0]}, r"truncated\[0\] must be true or false"),
    ({"mean_logprob": [-0.5, 0.7, -1.0]}, r"mean_logprob\[1\] must be a finite log-probability <= 0"),
    ({"mean_logprob": "bad"}, "'mean_logprob' must be a list"),
    ({"step": "3"}, "'step' must be an int >= 0"),
    ({"step": -1}, "'step' must be an int >= 0"),
    ({"id": ["a"]}, "'id' must be a non-empty string or an int"),
    ({"prompt": 3}, "'prompt' must be a string"),
    ({"reference_label": {"x": 1}}, "'reference_label' must be a string, a number or null"),
    ({"bought": "yes"}, "'bought' must be true or false"),
])
def test_malformed_fields_name_the_line_and_the_field(tmp_path: Path, over: dict[str, Any], message: str) -> None:
    path = _write_lines(tmp_path / "bad.jsonl", _record(id="first"), _record(**over))
    with pytest.raises(ValueError, match=f"line 2 of .*{message}"):
        load_rollout_log(path, "integer")


def test_hidden_size_and_group_size_must_match_earlier_lines(tmp_path: Path) -> None:
    wide = _record(id="b", prompt_hidden=[0.1, 0.2, 0.3], hidden=[[1.0, 0.0, 0.0]] * 3)
    with pytest.raises(ValueError, match=r"line 2 .*'prompt_hidden' has 3 numbers, expected H = 2"):
        load_rollout_log(_write_lines(tmp_path / "h.jsonl", _record(), wide), "integer")
    small = _record(id="b", answers=["1", "1"], completions=["1", "1"], lengths=[1, 1], truncated=[False] * 2,
                    mean_logprob=[-1.0, -1.0], hidden=[[0.0, 0.0]] * 2)
    with pytest.raises(ValueError, match="line 2 .*group of 2 rollouts, earlier groups had 3"):
        load_rollout_log(_write_lines(tmp_path / "g.jsonl", _record(), small), "integer")


_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True),
                       st.text(max_size=4))
_json_value = st.recursive(_json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                               st.dictionaries(st.text(max_size=3), inner,
                                                                               max_size=3)), max_leaves=12)
_FIELDS = ["step", "id", "prompt", "completions", "answers", "lengths", "truncated", "mean_logprob",
           "prompt_hidden", "hidden", "reference_label", "label_used", "bought"]


@st.composite
def _malformed_line(draw: st.DrawFn) -> str:
    rec = _record(id="fuzz")
    for key in draw(st.lists(st.sampled_from(_FIELDS), min_size=1, max_size=3, unique=True)):
        how = draw(st.sampled_from(["replace", "drop", "element", "shorten", "lengthen"]))
        value = rec.get(key)
        if how == "drop":
            rec.pop(key, None)
        elif how == "element" and isinstance(value, list) and value:
            j = draw(st.integers(0, len(value) - 1))
            value[j] = draw(_json_value)
        elif how == "shorten" and isinstance(value, list):
            rec[key] = value[: draw(st.integers(0, max(0, len(value) - 1)))]
        elif how == "lengthen" and isinstance(value, list):
            rec[key] = value + draw(st.lists(_json_value, min_size=1, max_size=2))
        else:
            rec[key] = draw(_json_value)
    if draw(st.booleans()):
        return json.dumps(rec)
    return draw(st.sampled_from([json.dumps(rec)[:-1], "[1, 2]", "null", '"x"', "{", json.dumps(rec) + "}"]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=_malformed_line(), first=st.booleans(), answer_space=st.sampled_from([None, "integer"]))
def test_fuzz_malformed_lines_raise_value_error_only(tmp_path: Path, line: str, first: bool,
                                                     answer_space: str | None) -> None:
    good = json.dumps(_record(id="good", step=1))
    path = _write_lines(tmp_path / "fuzz.jsonl", *([line, good] if first else [good, line]))
    try:
        log = load_rollout_log(path, answer_space)
    except ValueError as exc:
        assert f"line {1 if first else 2} of" in str(exc) or "holds no prompt group" in str(exc), str(exc)
        return
    # a line that loads is a usable one: strategies run on it without another kind of error
    for r in replay(log, ["entropy", "prob", "random"], budget=0.5, answer_space=answer_space):
        assert r.skipped is None or "requires" in r.skipped


def test_replay_answer_space_defaults_to_the_one_the_log_records(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """The trainer records answer_space on every line: replay uses it unless told otherwise; a log without it
    uses the documented default ("exact") and warns; mixed spaces are refused."""
    from rlavr.bench.replay import DEFAULT_ANSWER_SPACE, recorded_answer_space

    rec = {"step": 0, "id": "a", "completions": ["x = 3", "y = 3", "4"], "reference_label": "3"}
    (tmp_path / "int.jsonl").write_text(json.dumps({**rec, "answer_space": "integer"}) + "\n")
    assert recorded_answer_space(tmp_path / "int.jsonl") == "integer"
    with caplog.at_level("WARNING", logger="rlavr.bench.replay"):
        log = load_rollout_log(tmp_path / "int.jsonl")
    assert log.batches[0].answer_space.name == "integer" and log.batches[0].answers == [["3", "3", "4"]]
    assert not caplog.records
    assert replay(tmp_path / "int.jsonl", ["random"], budget=1.0)[0].metrics["labels_bought"] == 1
    # a given space wins, with a warning naming the recorded one
    with caplog.at_level("WARNING", logger="rlavr.bench.replay"):
        assert load_rollout_log(tmp_path / "int.jsonl", "exact").batches[0].answer_space.name == "exact"
    assert any("'integer'" in r.getMessage() for r in caplog.records)
    caplog.clear()
    # nothing recorded: the default, and a warning that says what to pass
    (tmp_path / "old.jsonl").write_text(json.dumps(rec) + "\n")
    assert recorded_answer_space(tmp_path / "old.jsonl") is None
    with caplog.at_level("WARNING", logger="rlavr.bench.replay"):
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
