"""rlavr.trl.guards and its use in RLAVRGRPOTrainer: a second label column is refused, a mismatched answer space
warns then stops, TRL environments get one prompt id per episode prompt, and `--help` works through TrlParser."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from datasets import Dataset
from trl_tiny import BASE_ARGS, SeededRollouts, exact_reward, load_tokenizer, make_dataset

from rlavr.answers import get_answer_space
from rlavr.labels import CallableOracle
from rlavr.trl import RLAVRConfig, RLAVRGRPOTrainer
from rlavr.trl.capture import RowFeatures
from rlavr.trl.guards import AnswerRateGuard, check_episode_groups, check_label_columns, label_like_columns


def rl_args(tmp_path: Any, **kw: Any) -> RLAVRConfig:
    base = {**BASE_ARGS, "answer_space": "exact", "ledger_path": str(tmp_path / "ledger.sqlite")}
    base.update(kw)
    return RLAVRConfig(output_dir=str(tmp_path / "out"), **base)


# ================================================================================================ --help


def test_help_through_trlparser_shows_the_budget_help(capsys: pytest.CaptureFixture[str]) -> None:
    from trl import TrlParser

    with pytest.raises(SystemExit) as exc:
        TrlParser((RLAVRConfig,)).parse_args_and_config(args=["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--budget" in out and "'20%'" in out and "--allow_extra_label_columns" in out
    assert "--on_invalid_answers" in out


def test_new_fields_parse_from_the_command_line(tmp_path: Any) -> None:
    from trl import TrlParser

    (cfg,) = TrlParser((RLAVRConfig,)).parse_args_and_config(args=[
        "--output_dir", str(tmp_path), "--use_cpu", "true", "--report_to", "none",
        "--allow_extra_label_columns", "solution", "gold", "--on_invalid_answers", "warn",
        "--invalid_answer_threshold", "0.8", "--invalid_answer_rounds", "4"])
    s = cfg.rlavr
    assert s.allow_extra_label_columns == ("solution", "gold") and s.on_invalid_answers == "warn"
    assert (s.invalid_answer_threshold, s.invalid_answer_rounds) == (0.8, 4)


@pytest.mark.parametrize(("field", "value"), [
    ("on_invalid_answers", "stop"), ("invalid_answer_threshold", 0.0), ("invalid_answer_threshold", 1.5),
    ("invalid_answer_threshold", float("nan")), ("invalid_answer_rounds", 0), ("allow_extra_label_columns", [3]),
])
def test_bad_guard_settings_name_the_field(tmp_path: Any, field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        RLAVRConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **{field: value})


# ================================================================================================ label columns


def test_label_like_columns_by_name_and_by_value() -> None:
    n = 20
    ds = Dataset.from_dict({
        "id": [f"p{i}" for i in range(n)], "prompt": [f"{i}+1=" for i in range(n)],
        "answer": [str(i + 1) for i in range(n)],
        "solution": ["worked"] * n,                                        # name
        "ground_truth": [None] * n,                                        # name (snake case)
        "goldAnswer": ["x"] * n,                                           # name (camel case)
        "final": [f" {i + 1} " for i in range(n)],                         # value (normalised)
        "explanation": [f"so it is \\boxed{{{i + 1}}}" for i in range(n)],  # value (extracted by the answer space)
        "reward_model": [{"style": "rule", "ground_truth": str(i + 1)} for i in range(n)],  # value inside a dict
        "difficulty": [i % 3 for i in range(n)],                           # not a label
        "environment": ["calc"] * n,                                       # not a label
        "completion": [str(i + 1) for i in range(n)],                      # TRL never passes it to rewards
    })
    found = label_like_columns(ds, "answer", ignore=["id"], answer_space=get_answer_space("math"))
    assert set(found) == {"solution", "ground_truth", "goldAnswer", "final", "explanation", "reward_model"}
    assert "name" in found["solution"] and "20 of 20" in found["final"]
    # without an answer space the boxed worked solution is not recognised, the rest is
    assert "explanation" not in label_like_columns(ds, "answer", ignore=["id"])
    # a column equal on fewer than half of the labelled rows is not a label
    half = Dataset.from_dict({"prompt": ["q"] * 10, "answer": [str(i) for i in range(10)],
                              "hint": [str(i) if i < 4 else "?" for i in range(10)]})
    assert label_like_columns(half, "answer") == {}


def test_check_label_columns_names_the_column_and_the_fixes() -> None:
    ds = make_dataset(8).add_column("solution", [str(v) for v in make_dataset(8)["answer"]])
    with pytest.raises(ValueError, match="'solution'") as exc:
        check_label_columns(ds, "answer", "id")
    msg = str(exc.value)
    assert "label_column=" in msg and "remove_columns(['solution'])" in msg and "allow_extra_label_columns" in msg
    check_label_columns(ds, "answer", "id", allowed=["solution"])  # the opt-out
    check_label_columns(ds.remove_columns(["answer"]), "solution", "id")  # the other fix: read `solution`
    check_label_columns(None, "answer", "id")  # environment-owned data: nothing to check
    check_label_columns(make_dataset(8), "answer", "id")  # the plain id/prompt/answer dataset passes


def test_trainer_refuses_a_second_label_column(tiny_model_path: str, tmp_path: Any) -> None:
    """TRL's accuracy_reward reads `solution`: a ttrl run rewriting `answer` would train on the true `solution`."""
    tok = load_tokenizer(tiny_model_path)
    ds = make_dataset(16, small=True)
    ds = ds.add_column("solution", list(ds["answer"]))
    with pytest.raises(ValueError, match="solution"):
        RLAVRGRPOTrainer(model=tiny_model_path, reward_funcs=[exact_reward],
                         args=rl_args(tmp_path, strategy="ttrl", budget=0), train_dataset=ds, processing_class=tok)
    with pytest.raises(ValueError, match="solution"):  # gt too: the same script must not leak once budgeted
        RLAVRGRPOTrainer(model=tiny_model_path, reward_funcs=[exact_reward],
                         args=rl_args(tmp_path, strategy="gt", budget=None), train_dataset=ds, processing_class=tok)
    t = RLAVRGRPOTrainer(model=tiny_model_path, reward_funcs=[exact_reward],
                         args=rl_args(tmp_path, strategy="ttrl", budget=0, allow_extra_label_columns=["solution"]),
                         train_dataset=ds, eval_dataset=ds, processing_class=tok)
    assert t.rlavr_settings.allow_extra_label_columns == ("solution",)


# ================================================================================================ answer rate


def rows(answers: list[str | None]) -> list[RowFeatures]:
    return [RowFeatures(id="p", prompt="q", text=f"text {a}", answer=a, length=1, truncated=False) for a in answers]


def test_answer_rate_guard_streaks(caplog: pytest.LogCaptureFixture) -> None:
    bad, good = rows([None] * 9 + ["1"]), rows([None] * 8 + ["1", "2"])
    g = AnswerRateGuard("math", threshold=0.9, rounds=3, action="raise")
    with caplog.at_level(logging.WARNING, logger="rlavr.trl.guards"):
        g.observe(bad, 0)
        g.observe(bad, 1)
        g.observe(good, 2)  # 80 % invalid: the streak ends
        g.observe(bad, 3)
        g.observe(bad, 4, log=False)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and "answer_space='math'" in warnings[0] and "'text None'" in warnings[0]
    with pytest.raises(ValueError, match=r"on_invalid_answers: 9 of 10 .* 3 rounds in a row \(round 5\)"):
        g.observe(bad, 5)
    w = AnswerRateGuard("math", threshold=0.9, rounds=1, action="warn")
    for i in range(5):
        w.observe(bad, i)  # never raises
    AnswerRateGuard("math", threshold=0.5, rounds=1, action="ignore").observe(bad, 0)


def test_mismatched_answer_space_warns_then_stops(tiny_model_path: str, tmp_path: Any,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """answer_space='math' on completions without \\boxed{} (or any number): every group would be dropped."""
    tok = load_tokenizer(tiny_model_path)

    def make(out: Any, **kw: Any) -> RLAVRGRPOTrainer:
        return RLAVRGRPOTrainer(model=tiny_model_path, reward_funcs=[exact_reward],
                                args=rl_args(out, strategy="ttrl", budget=0, answer_space="math", max_steps=3,
                                             invalid_answer_rounds=2, **kw),
                                train_dataset=make_dataset(32, small=True), processing_class=tok,
                                rollout_func=SeededRollouts(tok, choices=("a", "b c", "=")))

    t = make(tmp_path / "raise")
    with caplog.at_level(logging.WARNING, logger="rlavr.trl.guards"), \
            pytest.raises(ValueError, match=r"answer_space='math'.*2 rounds in a row.*Example completion: 'a|'b c|'="):
        t.train()
    assert any("no answer in answer_space='math'" in r.getMessage() for r in caplog.records)
    assert len(t.rlavr_history) == 1  # round 0 warned and trained, round 1 stopped before deciding
    caplog.clear()
    w = make(tmp_path / "warn", on_invalid_answers="warn")
    with caplog.at_level(logging.WARNING, logger="rlavr.trl.guards"):
        w.train()
    assert len(w.rlavr_history) == 3 and w.rlavr_history[-1]["route/drop"] == 2
    assert sum("no answer in answer_space" in r.getMessage() for r in caplog.records) == 1  # once per streak


# ================================================================================================ environments

TOOL_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "{% if m.get('tool_calls') %}{% for t in m['tool_calls'] %}{{ t['function']['name'] }}"
    "{{ t['function']['arguments'] | tojson }}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def counting_env(G: int, tasks: list[str], name: str) -> type:
    """An environment class whose reset() shows task ``(resets // G) % len(tasks)``: the G rollouts of a row
    share one task (TRL resets them in order), successive rows get different ones; the row carries nothing."""

    class Env:
        resets = 0

        def reset(self, **kwargs: Any) -> str:
            k = (type(self).resets // G) % len(tasks)
            type(self).resets += 1
            return tasks[k]

    Env.__name__ = name
    return Env


def label_of(prompt: str) -> str:
    return str(sum(map(ord, prompt)) % 4 + 1)  # one of SeededRollouts' choices


def env_trainer(model_path: str, tmp_path: Any, train_dataset: Any, factory: Any) -> tuple[RLAVRGRPOTrainer, list]:
    tok = load_tokenizer(model_path)
    tok.chat_template = TOOL_TEMPLATE  # TRL requires a tool-calling template with environment_factory
    asked: list[tuple[str, str]] = []

    def oracle(pid: str, prompt: str) -> str:
        asked.append((pid, prompt))
        return label_of(prompt)

    args = rl_args(tmp_path, strategy="gt", budget=None, max_steps=3, rollout_log_path=str(tmp_path / "log.jsonl"))
    t = RLAVRGRPOTrainer(model=model_path, reward_funcs=[exact_reward], args=args, train_dataset=train_dataset,
                         processing_class=tok, oracle=CallableOracle(oracle), environment_factory=factory,
                         rollout_func=SeededRollouts(tok))
    return t, asked


def check_episode_log(path: Any, asked: list[tuple[str, str]]) -> None:
    log = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(log) == 6
    for g in log:  # every group was rewarded against the label of the prompt it saw
        assert g["label_used"] == label_of(g["prompt"]), g
    by_prompt = {g["prompt"]: g["id"] for g in log}
    assert len(set(by_prompt.values())) == len(by_prompt) > 1  # one id per distinct episode prompt
    assert len(asked) == len(by_prompt)  # each bought once, none reused for another prompt


def test_single_environment_without_dataset_gets_one_id_per_episode(tiny_model_path: str, tmp_path: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    env = counting_env(4, [f"task {k}" for k in range(3)], "Counting")
    t, asked = env_trainer(tiny_model_path, tmp_path, None, env)  # TRL's placeholder rows: all identical
    t.train()
    check_episode_log(tmp_path / "log.jsonl", asked)


def test_multi_environment_with_only_an_environment_column(tiny_model_path: str, tmp_path: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    envs = {"add": counting_env(4, ["add 1 2", "add 3 4"], "Add"),
            "mul": counting_env(4, ["mul 2 2", "mul 1 5", "mul 3 3"], "Mul")}
    ds = Dataset.from_dict({"environment": ["add", "mul"] * 8})
    t, asked = env_trainer(tiny_model_path, tmp_path, ds, envs)
    t.train()  # used to crash: "the row has neither this column nor a 'prompt' to hash"
    check_episode_log(tmp_path / "log.jsonl", asked)


def test_check_episode_groups() -> None:
    def r(pid: str, prompt: str) -> RowFeatures:
        return RowFeatures(id=pid, prompt=prompt, text="", answer=None, length=0, truncated=False)

    seen: dict[str, str] = {}
    check_episode_groups([r("a", "x"), r("a", "x"), r("b", "y"), r("b", "y")], 2, seen)
    assert seen == {"a": "x", "b": "y"}
    with pytest.raises(ValueError, match="rollouts of one dataset row saw different prompts"):
        check_episode_groups([r("sha1:1", "x"), r("sha1:2", "z")], 2, seen)
    with pytest.raises(ValueError, match="'a' came with two different prompts"):
        check_episode_groups([r("a", "z"), r("a", "z")], 2, seen)
