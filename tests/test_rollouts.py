"""rlavr.rollouts: completion / prompt texts, prompt ids (one scheme) and rows -> RolloutBatch."""

from __future__ import annotations

import numpy as np
import pytest

from rlavr.answers import ExactAnswers, IntegerAnswers
from rlavr.rollouts import (
    RowFeatures,
    build_rollout_batch,
    completion_text,
    hashed_id,
    prompt_id,
    prompt_text,
)


def test_texts_and_ids():
    assert completion_text("x = 3") == "x = 3"
    msgs = [{"role": "assistant", "content": "a"}, {"role": "tool", "content": "TOOL"},
            {"role": "assistant", "content": [{"type": "text", "text": "b"}, {"type": "image"}]}]
    assert completion_text(msgs) == "ab"
    conv = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "1+1?"}]
    assert prompt_text(conv) == "1+1?" and prompt_text("2+2=") == "2+2="
    assert prompt_id({"id": 7, "prompt": "q"}, "id") == "7"
    h = prompt_id({"prompt": conv}, "id")
    assert h.startswith("sha1:") and len(h) == 21 and h == prompt_id({"prompt": list(conv)}, "uid")
    assert h != prompt_id({"prompt": "1+1?"}, "id")
    with pytest.raises(ValueError, match="completion"):
        completion_text(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="id_column 'id'"):
        prompt_id({"answer": "1"}, "id")
    with pytest.raises(ValueError, match="empty prompt id"):
        prompt_id({"id": ""}, "id")


def test_multi_turn_completion_is_the_assistant_text_everywhere() -> None:
    """A tool-using conversation: the answer is what the assistant wrote, never the tool's output. The trainer's
    features and the benchmark's reward function read the same text (they used to disagree: the benchmark took
    the LAST message, here the tool result "42")."""
    from rlavr.bench.tasks import AnswerReward
    from rlavr.bench.tasks import completion_text as bench_completion_text
    from rlavr.trl.capture import completion_text as trl_completion_text

    conv = [{"role": "assistant", "content": "let me compute", "tool_calls": [{"name": "calc"}]},
            {"role": "tool", "content": "42"},
            {"role": "assistant", "content": [{"type": "text", "text": " the answer is 7"}]},
            {"role": "tool", "content": "42"}]
    assert completion_text(conv) == "let me compute the answer is 7"
    assert bench_completion_text is completion_text and trl_completion_text is completion_text
    reward = AnswerReward(IntegerAnswers())
    assert reward(prompts=["q"], completions=[conv], answer=["7"]) == [1.0]
    assert reward(prompts=["q"], completions=[conv], answer=["42"]) == [0.0]
    assert completion_text([]) == ""
    with pytest.raises(ValueError, match="completion"):
        completion_text(b"bytes")  # type: ignore[arg-type]


def test_one_hashed_id_scheme() -> None:
    """The trainer's fallback id and the benchmark tasks' ids are the same function (values unchanged)."""
    import hashlib
    import json

    from rlavr.bench.tasks import _prompt_id

    assert hashed_id("1+2=", "addition") == "addition:" + hashlib.sha1(b"1+2=").hexdigest()[:16]
    assert _prompt_id("addition", "1+2=") == hashed_id("1+2=", "addition")
    conv = [{"role": "user", "content": "q"}]
    blob = json.dumps(conv, sort_keys=True, default=str, ensure_ascii=False)
    assert prompt_id({"prompt": conv}, "id") == "sha1:" + hashlib.sha1(blob.encode()).hexdigest()[:16]
    assert hashed_id("\ud800", "x").startswith("x:")  # a lone surrogate still hashes


def _rows(ids: list[str], answers: list[str | None]) -> list[RowFeatures]:
    return [RowFeatures(id=i, prompt=f"q{i}", text=a or "", answer=a, length=2, truncated=False)
            for i, a in zip(ids, answers, strict=True)]


def test_build_rollout_batch_from_split_groups():
    """Two ranks with 6 rows each and G=4: group 1 spans both ranks. Concatenating the ranks' rows (what
    gather_object does) gives the same batch as one process holding all 12 rows."""
    ids = ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    answers = ["1", "1", "2", None, "3", "4", "4", "4", "5", "5", "6", "6"]
    rows = _rows(ids, answers)
    rank0, rank1 = rows[:6], rows[6:]
    hidden = np.arange(12 * 2 * 3, dtype=np.float32).reshape(12, 2, 3)
    one = build_rollout_batch(rows, 4, ExactAnswers(), step=5, hidden=hidden)
    two = build_rollout_batch(rank0 + rank1, 4, ExactAnswers(), step=5,
                              hidden=np.concatenate([hidden[:6], hidden[6:]]))
    assert one.ids == two.ids == ["a", "b", "c"] and one.step == 5
    assert one.votes.majority_answer == two.votes.majority_answer == ["1", "4", "5"]
    np.testing.assert_array_equal(one.prompt_hidden, hidden[[0, 4, 8], 0])
    np.testing.assert_array_equal(one.response_hidden, hidden[:, 1].reshape(3, 4, 3))
    assert one.answers[1] == ["3", "4", "4", "4"]


def test_build_rollout_batch_rejects_bad_layouts():
    with pytest.raises(ValueError, match="multiple of num_generations=4"):
        build_rollout_batch(_rows(["a"] * 6, ["1"] * 6), 4, ExactAnswers(), 0)
    with pytest.raises(ValueError, match="prompt ids"):
        build_rollout_batch(_rows(["a", "a", "b", "b"], ["1"] * 4), 4, ExactAnswers(), 0)
    with pytest.raises(ValueError, match="hidden"):
        build_rollout_batch(_rows(["a"] * 4, ["1"] * 4), 4, ExactAnswers(), 0, hidden=np.zeros((4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        build_rollout_batch(_rows(["a"] * 4, ["1"] * 4), 4, ExactAnswers(), 0,
                            hidden=np.full((4, 2, 3), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="duplicate prompt id"):
        build_rollout_batch(_rows(["a"] * 8, ["1"] * 8), 4, ExactAnswers(), 0)
