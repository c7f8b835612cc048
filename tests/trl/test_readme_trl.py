r"""The README's "Use it in your TRL script" diff is the whole change for a stock TRL GRPO script, and pseudo-labels
are gold for TRL's own ``accuracy_reward``.

The stock script is written as TRL's docs show it (``GRPOConfig`` + ``GRPOTrainer``, ``trl.rewards.accuracy_reward``,
a dataset with ``prompt`` and ``solution`` columns holding ``\boxed{}`` maths answers); the test applies the
README's diff block to it textually, hunk by hunk, and runs the result.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from trl_tiny import BASE_ARGS, SeededRollouts, load_tokenizer

from rlavr.answers import MathAnswers
from rlavr.labels import LabelLedger
from rlavr.trl import RLAVRGRPOTrainer

pytest.importorskip("math_verify")

ROOT = Path(__file__).resolve().parents[2]

STOCK_SCRIPT = '''\
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer
from trl.rewards import accuracy_reward

questions = [f"What is {a} + {b}? Put the answer in \\\\boxed{{}}." for a in range(4) for b in range(4)]
answers = [f"\\\\boxed{{{a + b}}}" for a in range(4) for b in range(4)]
dataset = Dataset.from_dict({"prompt": PROMPTS, "solution": answers})
REWARD_DEF

training_args = GRPOConfig(
    output_dir=OUTPUT_DIR,
    per_device_train_batch_size=32,
    num_generations=4,
    max_completion_length=8,
    max_steps=2,
    logging_steps=1,
    use_cpu=True,
    bf16=False,
    report_to="none",
    seed=0,
)
trainer = GRPOTrainer(
    model=MODEL,
    reward_funcs=REWARD,
    args=training_args,
    train_dataset=dataset,
)
trainer.train()
'''

PROMPTS = {"plain": "questions", "conversational": '[[{"role": "user", "content": q}] for q in questions]'}
# TRL's accuracy_reward reads chat completions; with plain prompts a script wraps the completion strings
REWARDS = {"plain": ("accuracy", """

def accuracy(completions, solution, **kwargs):
    return accuracy_reward([[{"role": "assistant", "content": c}] for c in completions], solution)
"""), "conversational": ("accuracy_reward", "")}


def stock_script(variant: str, output_dir: Path, model: str) -> str:
    name, definition = REWARDS[variant]
    return (STOCK_SCRIPT.replace("PROMPTS", PROMPTS[variant]).replace("OUTPUT_DIR", repr(str(output_dir)))
            .replace("MODEL", repr(model)).replace("REWARD_DEF\n", definition).replace("REWARD", name))


def readme_diff() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Use it in your TRL script"):]
    m = re.search(r"^```diff\n(.*?)^```", section, flags=re.M | re.S)
    assert m, "README.md: no ```diff block in 'Use it in your TRL script'"
    return m.group(1)


def apply_diff(script: str, diff: str) -> str:
    """Apply a diff of ``@@``-separated hunks textually: each hunk's context + removed lines must occur exactly
    once in ``script`` as consecutive lines, and become its context + added lines."""
    lines = script.splitlines()
    hunks: list[list[str]] = [[]]
    for line in diff.splitlines():
        if line.startswith("@@"):
            hunks.append([])
        else:
            hunks[-1].append(line)
    for hunk in (h for h in hunks if h):
        old = [ln[1:] for ln in hunk if ln[:1] in (" ", "-") or ln == ""]
        new = [ln[1:] for ln in hunk if ln[:1] in (" ", "+") or ln == ""]
        assert all(ln[:1] in (" ", "-", "+") or ln == "" for ln in hunk), hunk
        at = [i for i in range(len(lines) - len(old) + 1) if lines[i:i + len(old)] == old]
        assert len(at) == 1, f"hunk {old!r} matches the stock script {len(at)} times"
        lines[at[0]:at[0] + len(old)] = new
    return "\n".join(lines) + "\n"


def test_readme_diff_is_the_same_in_the_docs() -> None:
    diff = readme_diff()
    for page in ("docs/index.md", "docs/trl.md"):
        assert f"```diff\n{diff}```" in (ROOT / page).read_text(encoding="utf-8"), f"{page} lost the README's diff"


@pytest.mark.parametrize("variant", sorted(PROMPTS))
def test_readme_diff_converts_a_stock_trl_script(variant: str, tiny_model_path: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    stock = stock_script(variant, tmp_path / "stock", tiny_model_path)
    ns_stock: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(stock, f"stock_{variant}.py", "exec"), ns_stock)  # a valid stock TRL script
    assert type(ns_stock["trainer"]).__name__ == "GRPOTrainer"
    converted = apply_diff(stock_script(variant, tmp_path / "out", tiny_model_path), readme_diff())
    assert not re.search(r"\b(GRPOConfig|GRPOTrainer)\b", converted)  # every use of TRL's classes replaced
    assert "from trl.rewards import accuracy_reward" in converted  # the reward function is TRL's, unchanged
    ns: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(converted, f"stock_grpo_script_{variant}.py", "exec"), ns)  # the test's own script
    trainer = ns["trainer"]
    assert isinstance(trainer, RLAVRGRPOTrainer) and trainer.rlavr_active
    assert trainer.args.label_column == "solution" and trainer.engine.answer_space.name == "math"
    assert [h["step"] for h in trainer.state.log_history if "loss" in h] == [1, 2]  # it trained
    ledger = LabelLedger(trainer.args.resolved_ledger_path())  # the default ledger, in output_dir
    assert 0 < ledger.n_charged == trainer.engine.spent <= 0.2 * ledger.prompts_seen  # bought, within the budget
    assert all(re.fullmatch(r"\\boxed\{\d\}", lab) for _, lab, _ in ledger.items())  # the dataset's format


def test_pseudo_labels_are_gold_for_trls_accuracy_reward(tiny_model_path: str, tmp_path: Path) -> None:
    """Majority votes such as ``x^2+1``, ``\\frac{1}{2}`` and ``3.5`` are written as ``\\boxed{...}``: TRL's
    accuracy_reward gives 1.0 exactly to the rollouts that agree with the majority (no ``None``: every group has a
    signal)."""
    from datasets import Dataset
    from trl.rewards import accuracy_reward

    from rlavr.trl import RLAVRConfig

    tok = load_tokenizer(tiny_model_path)
    choices = (r"\boxed{x^2+1}", r"\boxed{\frac{1}{2}}", r"\boxed{3.5}", r"\boxed{7/2}")
    seen: list[tuple[list[str], list[Any], list[float | None]]] = []

    def recorded_accuracy(completions: list[Any], solution: list[Any], **kw: Any) -> list[float | None]:
        out = accuracy_reward(completions, solution)
        seen.append(([c[-1]["content"] for c in completions], list(solution), list(out)))
        return out

    ds = Dataset.from_dict({"prompt": [[{"role": "user", "content": f"q{i}"}] for i in range(16)],
                            "solution": [r"\boxed{1}"] * 16})
    args = RLAVRConfig(output_dir=str(tmp_path / "out"), **{**BASE_ARGS, "per_device_train_batch_size": 16},
                       strategy="ttrl", budget=0, label_column="solution", answer_space="math",
                       ledger_path=str(tmp_path / "ledger.sqlite"))
    t = RLAVRGRPOTrainer(model=tiny_model_path, reward_funcs=[recorded_accuracy], args=args, train_dataset=ds,
                         processing_class=tok, rollout_func=SeededRollouts(tok, choices=choices))
    t.train()
    space = MathAnswers()
    G = args.num_generations
    groups = 0
    for texts, labels, rewards in seen:
        for g in range(len(texts) // G):
            chunk = slice(g * G, (g + 1) * G)
            answers = [space.extract(x) for x in texts[chunk]]
            label = labels[chunk][0]
            assert labels[chunk] == [label] * G, labels[chunk]
            majority = space.extract(label) or label
            expected = [1.0 if space.equivalent(a, majority) else 0.0 for a in answers]
            assert rewards[chunk] == expected, (answers, label, rewards[chunk])
            assert label.startswith("\\boxed{"), label
            groups += 1
    assert groups == 2 * 16 // G  # every group of both rounds, none skipped as unparseable gold
    assert any(label == r"\boxed{x^2+1}" for _, labels, _ in seen for label in labels)
