"""rlavr.rollout_log: the writer and the reader share one schema (write -> read round trip); every malformed
line is a ValueError naming the line and the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlavr.answers import IntegerAnswers
from rlavr.engine import AcquisitionEngine
from rlavr.labels import DatasetOracle
from rlavr.replay import replay
from rlavr.rollout_log import FIELDS, RolloutLogWriter, group_records, load_rollout_log
from rlavr.rollouts import RowFeatures, build_rollout_batch


def _decided(features: bool) -> Any:
    G, H = 3, 2
    answers = [["1", "1", "2"], ["4", None, "4"]]
    rows = [RowFeatures(id=f"p{g}", prompt=f"q{g}", text=f"= {a}" if a else "??", answer=a, length=2 + j,
                        truncated=j == 2, mean_logprob=-0.5 * (j + 1)) for g, grp in enumerate(answers)
            for j, a in enumerate(grp)]
    hidden = np.arange(len(rows) * 2 * H, dtype=np.float32).reshape(len(rows), 2, H) / 7 if features else None
    batch = build_rollout_batch(rows, G, IntegerAnswers(), step=3, hidden=hidden)
    engine = AcquisitionEngine("random", DatasetOracle({"p0": "1", "p1": "5"}), budget=1, answer_space="integer")
    return engine.decide(batch, 3)


@pytest.mark.parametrize("features", [False, True])
def test_write_then_read_round_trip(tmp_path: Path, features: bool) -> None:
    result = _decided(features)
    path = tmp_path / "a" / "rollouts.jsonl"
    writer = RolloutLogWriter(path, features=features)
    writer.write(result, 3, strategy="random", answer_space="integer")
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == 2 and all(list(rec) == [k for k in FIELDS if k in rec] for rec in lines)
    assert lines[0]["answer_space"] == "integer" and lines[0]["strategy"] == "random"
    assert ("hidden" in lines[0]) is features
    log = load_rollout_log(path)  # the recorded space, no warning
    back = log.batches[0]
    assert back.step == 3 and back.ids == result.batch.ids and back.answers == result.batch.answers
    assert back.reference_labels == ["1", "5"] and log.has_logprobs and log.has_hidden is features
    for g0, g1 in zip(result.batch.groups, back.groups, strict=True):
        assert [r.text for r in g0.rollouts] == [r.text for r in g1.rollouts]
        assert [r.length for r in g0.rollouts] == [r.length for r in g1.rollouts]
        assert [r.truncated for r in g0.rollouts] == [r.truncated for r in g1.rollouts]
        assert [r.mean_logprob for r in g0.rollouts] == [r.mean_logprob for r in g1.rollouts]
        if features:
            np.testing.assert_allclose(g1.prompt_hidden, g0.prompt_hidden, rtol=1e-5)
            np.testing.assert_allclose(np.stack([r.hidden for r in g1.rollouts]),
                                       np.stack([r.hidden for r in g0.rollouts]), rtol=1e-5)
    assert group_records(result, 3, strategy="random", answer_space="integer") == [
        {k: v for k, v in rec.items() if k not in ("prompt_hidden", "hidden")} for rec in lines]


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


