"""Benchmark tasks: dataset builders, SFT targets and verifiers."""

from __future__ import annotations

import numpy as np
import pytest

from rlavr.bench.tasks import (
    AdditionTask,
    AnswerReward,
    KnightsKnavesTask,
    MathTask,
    completion_text,
    get_task,
)


def test_addition_rows_are_correct_distinct_and_deterministic() -> None:
    task = AdditionTask(min_digits=1, max_digits=3)
    rows = task.rows("train", 2000, seed=3)
    assert rows == task.rows("train", 2000, seed=3)
    assert rows != task.rows("train", 2000, seed=4)
    assert len({r["id"] for r in rows}) == 2000
    for r in rows[:200]:
        a, b = (int(x) for x in r["prompt"].rstrip("=").split("+"))
        assert r["answer"] == str(a + b) and r["id"] == f"add:{a}+{b}"
        assert 0 <= a <= 999 and 0 <= b <= 999
    # digit counts are drawn uniformly; rows are distinct, so the 100 one-digit + one-digit pairs saturate and
    # one-digit operands end up a little under a third
    ops = np.array([[len(x) for x in r["prompt"].rstrip("=").split("+")] for r in rows])
    assert set(np.unique(ops)) == {1, 2, 3}
    assert 0.22 < (ops == 1).mean() < 1 / 3 < (ops == 3).mean() < 0.4


def test_addition_train_and_eval_never_overlap() -> None:
    task = AdditionTask()
    train = task.rows("train", 3000, seed=0)
    sft = task.sft_rows(3000, seed=0)
    ev = task.rows("eval", 500, seed=0)
    ev_ids = {r["id"] for r in ev}
    assert not ev_ids & {r["id"] for r in train}
    assert not ev_ids & {r["id"] for r in sft}
    assert {r["id"] for r in sft} != {r["id"] for r in train}  # an independent stream
    a = np.array([int(r["prompt"].split("+")[0]) for r in ev])
    b = np.array([int(r["prompt"].rstrip("=").split("+")[1]) for r in ev])
    assert task.held_out(a, b).all()


def test_addition_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="min_digits"):
        AdditionTask(min_digits=3, max_digits=2)
    with pytest.raises(ValueError, match="max_completion_length"):
        AdditionTask(max_digits=3, max_completion_length=4)
    with pytest.raises(ValueError, match="n: "):
        AdditionTask(max_digits=1, max_completion_length=3, train_size=10, eval_size=2).rows("train", 100)
    with pytest.raises(ValueError, match="eval_size"):
        AdditionTask(max_digits=1, max_completion_length=3, train_size=10)
    with pytest.raises(ValueError, match="split"):
        AdditionTask().rows("test", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown task"):
        get_task("sudoku")


def test_sft_rows_are_capped_at_capacity() -> None:
    task = AdditionTask(max_digits=1, max_completion_length=3, train_size=10, eval_size=2)
    rows = task.sft_rows(10_000, seed=0)
    assert len(rows) == task.capacity("train") == len({r["id"] for r in rows})


def test_answer_reward_grades_against_the_label_column() -> None:
    reward = AdditionTask().reward_function()
    assert reward.__name__ == "integer_accuracy"
    out = reward(prompts=["1+2="] * 4, completions=["3", "03", "4", "no digits"], answer=["3", "3", "3", "3"])
    assert out == [1.0, 1.0, 0.0, 0.0]
    chat = [[{"role": "assistant", "content": "it is 3"}]]
    assert reward(prompts=["x"], completions=chat, answer=["3"]) == [1.0]
    with pytest.raises(ValueError, match="label column 'answer'"):
        reward(prompts=["x"], completions=["3"], solution=["3"])
    with pytest.raises(ValueError, match="labels for"):
        reward(prompts=["x"], completions=["3", "4"], answer=["3"])
    with pytest.raises(ValueError, match="completion"):
        completion_text(3)
    with pytest.raises(ValueError, match="label_column"):
        AnswerReward(AdditionTask().answer_space, label_column="")


def test_knights_knaves_verifier_is_the_binarised_reasoning_gym_score() -> None:
    import reasoning_gym as rg

    task = KnightsKnavesTask(train_size=20, eval_size=10)
    rows = task.rows("eval", 10, seed=0)
    ds = rg.create_dataset("knights_knaves", size=20, seed=2, n_people=2, depth_constraint=2, width_constraint=2)
    entries = {f"{ds[i]['question']}\nAnswer: ": ds[i] for i in range(len(ds))}
    checked = 0
    for r in rows:
        entry = entries[r["prompt"]]
        gold = r["answer"]
        # the same roles in the other order, one role flipped (partial credit in reasoning-gym), garbage
        parts = [p.strip().rstrip(".") for p in gold.replace(", and ", "|").split("|")]
        swapped = f"{parts[1]}, and {parts[0]}."
        words = entry["metadata"]["knight_knave_terms"]
        flip = {words["knight"]: words["knave"], words["knave"]: words["knight"]}
        name, _, role = parts[0].rpartition(" ")
        wrong = f"{name} {flip.get(role, role)}, and {parts[1]}."
        for cand in (gold, swapped, wrong, "I do not know"):
            rg_score = ds.score_answer(cand, entry=entry)
            ours = bool(task.score([cand], [gold])[0])
            assert ours == (rg_score == 1.0), (cand, gold, rg_score)
            checked += 1
        assert task.score([task.target(r)], [gold]).all()
    assert checked == 40


def test_math_task_boxed_targets_and_equivalence() -> None:
    task = MathTask(train_size=50, eval_size=20)
    train, ev = task.datasets(seed=1)
    assert len(train) == 50 and len(ev) == 20
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in ev}
    assert all(r["prompt"].endswith("Answer in \\boxed{}: ") for r in train)
    assert task.score([task.target(r) for r in train], [r["answer"] for r in train]).all()
    assert task.score(["so \\boxed{0.5}", "\\boxed{1/2}", "1/2", "\\boxed{3}"], ["1/2"] * 4).tolist() == [
        True, True, False, False]
    with pytest.raises(ValueError, match="operators"):
        MathTask(operators=("^",))


def test_reasoning_gym_tasks_fail_clearly_when_the_config_is_too_narrow() -> None:
    task = MathTask(min_digits=1, max_digits=1, operators=("+",), train_size=5, eval_size=5)
    with pytest.raises(ValueError, match="distinct"):
        task.rows("train", 400, seed=0)


# ------------------------------------------------------------------ the task registry


def test_task_names_aliases_and_the_unknown_name_error() -> None:
    from rlavr.bench.tasks import TASKS

    assert TASKS.names() == ["addition", "chat_addition", "knights_knaves", "math"]
    assert TASKS.aliases() == {"add": "addition", "boxed": "math", "kk": "knights_knaves",
                               "knights-knaves": "knights_knaves"}
    assert isinstance(get_task(" ADD ", max_digits=2), AdditionTask) and isinstance(get_task("boxed"), MathTask)
    with pytest.raises(ValueError, match=r"^task: unknown task 'additon'\. Did you mean 'addition'"):
        get_task("additon")


def test_a_task_from_an_entry_point_or_registered_at_run_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import rlavr.registry
    from rlavr.bench.tasks import TASK_GROUP, TASKS

    monkeypatch.setattr(TASKS, "entries", dict(TASKS.entries))
    monkeypatch.setattr(TASKS, "entry_points_loaded", False)

    class Small(AdditionTask):
        name = "small_addition"

    class Plugin(AdditionTask):
        name = "plugin_addition"

    class EP:
        name, value = "plugin_addition", "plugin.tasks:Plugin"

        def load(self) -> type:
            return Plugin

    TASKS.register(Small)
    assert isinstance(get_task("small_addition", max_digits=1, max_completion_length=3, train_size=10,
                               eval_size=2), Small)
    groups: list[str] = []
    monkeypatch.setattr(rlavr.registry, "entry_points", lambda group: groups.append(group) or [EP()])
    assert type(get_task("plugin_addition")) is Plugin and groups == [TASK_GROUP] == ["rlavr.tasks"]
    with pytest.raises(ValueError, match="expected a rlavr.bench.tasks.Task subclass"):
        TASKS.register(dict, name="not_a_task")
