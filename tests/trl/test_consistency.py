"""rlavr.trl.consistency: the answer space is checked against the reward functions on rollouts with a bought label."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from trl_tiny import BASE_ARGS, SeededRollouts, load_tokenizer

from rlavr.answers import ExactAnswers
from rlavr.trl.consistency import RewardAgreementCheck

NAN = float("nan")


def test_warns_once_when_a_binary_reward_disagrees(caplog: pytest.LogCaptureFixture) -> None:
    check = RewardAgreementCheck(ExactAnswers(), ["agrees", "disagrees", "graded"], min_rows=2)
    answers = ["a", "a", "b", "b", None]
    labels = ["a", "a", "b", None, "a"]
    rewards = np.array([[1, 0, 0.3], [1, 0, 0.5], [1, 0, 0.7], [0, 1, 0.1], [0, 1, 0.2]], dtype=float)
    with caplog.at_level(logging.WARNING, logger="rlavr.trl.consistency"):
        check.observe(["x"] * 5, answers, labels, rewards)
        check.observe(["x"] * 5, answers, labels, rewards)
    assert check.decided == {"agrees": 0.0, "disagrees": 1.0}  # "graded" (not 0/1) is never judged
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "'disagrees' disagree on 4 of 4 rollouts" in msgs[0]
    assert "answer_space='exact'" in msgs[0]


def test_waits_for_enough_correct_rollouts_and_stops() -> None:
    check = RewardAgreementCheck(ExactAnswers(), ["r"], min_rows=4, max_rounds=3)
    wrong = np.zeros((4, 1))
    for _ in range(3):  # every rollout wrong on both sides: nothing to learn, keep looking
        check.observe(["x"] * 4, ["b"] * 4, ["a"] * 4, wrong)
    assert check.decided == {} and check.done  # gave up after max_rounds
    nan = RewardAgreementCheck(ExactAnswers(), ["r"], min_rows=1)
    nan.observe(["x"], ["a"], ["a"], np.array([[NAN]]))
    assert nan.decided == {}  # a reward returning None says nothing


def test_trainer_warns_about_an_answer_space_that_parses_unlike_accuracy_reward(tiny_model_path, tmp_path, caplog):
    """answer_space='integer' next to TRL's accuracy_reward on \\boxed{} fractions: warned; 'math': silent."""
    accuracy_reward = pytest.importorskip("trl.rewards").accuracy_reward
    from datasets import Dataset

    from rlavr.trl import RLAVRConfig, RLAVRGRPOTrainer

    tok = load_tokenizer(tiny_model_path)
    ds = Dataset.from_dict({"prompt": [[{"role": "user", "content": f"q{i}"}] for i in range(8)],
                            "solution": [r"\boxed{\frac{1}{2}}"] * 8})
    choices = (r"\boxed{\frac{1}{2}}", r"\boxed{0.5}", r"\boxed{1/2}", r"\boxed{3}")

    def run(space: str, out: str) -> list[str]:
        args = RLAVRConfig(output_dir=str(tmp_path / out), **{**BASE_ARGS, "max_steps": 1}, strategy="gt",
                           budget=None, label_column="solution", answer_space=space,
                           ledger_path=str(tmp_path / f"{out}.sqlite"))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="rlavr.trl.consistency"):
            RLAVRGRPOTrainer(model=tiny_model_path, reward_funcs=[accuracy_reward], args=args, train_dataset=ds,
                             processing_class=tok, rollout_func=SeededRollouts(tok, choices=choices)).train()
        return [r.getMessage() for r in caplog.records if r.name == "rlavr.trl.consistency"]

    warned = run("integer", "int")
    assert len(warned) == 1 and "answer_space='integer' and reward function 'accuracy_reward'" in warned[0]
    assert run("math", "math") == []



