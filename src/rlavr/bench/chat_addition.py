"""The mixed-difficulty chat addition task of the SmolLM2 preset (task name ``chat_addition``).

:class:`ChatAdditionTask` is a benchmark :class:`~rlavr.bench.tasks.Task` for chat models: the user turn
``"What is {a} + {b}? Reply with only the number."`` through SmolLM2's chat template; the answer is the LAST
integer in the completion (:class:`rlavr.answers.IntegerAnswers`; the model often restates ``"a + b = c"``); a
mix of one-digit + one-digit questions (the majority vote is often right) and two-digit + one-digit questions
(the majority vote is usually confidently wrong) -- the regime where buying labels matters. The task registry
(:data:`rlavr.bench.tasks.TASKS`) names it lazily, so ``get_task("chat_addition")`` imports this module on first
use. See docs/smollm2.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np
from pydantic import Field, model_validator

from rlavr.answers import AnswerSpace, IntegerAnswers
from rlavr.bench.tasks import Row, Split, Task

__all__ = [
    "ADDITION_TEMPLATE",
    "DIFFICULTIES",
    "SMOLLM2_SYSTEM_PROMPT",
    "ChatAdditionTask",
    "difficulty_of",
]

ADDITION_TEMPLATE = "What is {a} + {b}? Reply with only the number."
"""The user turn of the chat addition task."""
SMOLLM2_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
"""The system turn SmolLM2's chat template inserts when the conversation has none."""
DIFFICULTIES: tuple[str, ...] = ("1+1", "2+1")
"""``"1+1"``: one-digit a (0-9) + one-digit b (0-9); ``"2+1"``: two-digit a (10-99) + one-digit b (0-9)."""


def _pairs(difficulty: str) -> list[tuple[int, int]]:
    """All ``(a, b)`` questions of one difficulty, in a fixed order."""
    if difficulty == "1+1":
        return [(a, b) for a in range(10) for b in range(10)]
    if difficulty == "2+1":
        return [(a, b) for a in range(10, 100) for b in range(10)]
    raise ValueError(f"difficulty: expected one of {list(DIFFICULTIES)}, got {difficulty!r}")


def difficulty_of(a: int, b: int) -> str:
    """``"1+1"`` for two one-digit operands (0-9), ``"2+1"`` for a two-digit a (10-99) and a one-digit b (0-9)."""
    if 0 <= a <= 9 and 0 <= b <= 9:
        return "1+1"
    if 10 <= a <= 99 and 0 <= b <= 9:
        return "2+1"
    raise ValueError(f"(a, b): expected 0-9 + 0-9 or 10-99 + 0-9, got ({a}, {b})")


class ChatAdditionTask(Task):
    """Mixed-difficulty addition for chat models (see module docstring).

    Rows are ``{"id", "prompt", "answer", "difficulty"}``. ``prompt`` is the user turn
    ``"What is {a} + {b}? Reply with only the number."`` already rendered with SmolLM2's ChatML chat template
    (its default system prompt, then the generation prompt ``<|im_start|>assistant\\n``), so every runner,
    the TRL trainer and :func:`rlavr.bench.evaluate.evaluate` see exactly the text the model was tuned on
    (tested against ``tokenizer.apply_chat_template``). :meth:`messages` gives the conversational form
    for TRL datasets of the ``[{"role": "user", ...}]`` kind. ``answer`` is ``str(a + b)``; a completion's
    answer is its LAST integer (:class:`~rlavr.answers.IntegerAnswers`).

    Questions: ``"1+1"`` = a, b in 0-9 (100 questions), ``"2+1"`` = a in 10-99, b in 0-9 (900 questions).
    The held-out set is ``round(eval_size x easy_fraction)`` one-digit and the rest two-digit questions, drawn
    by a generator seeded with ``seed`` only; the train split is every other question, so train and eval never
    overlap. Within a split the two difficulties are interleaved in a seeded random order.

    Attributes:
        easy_fraction: fraction of one-digit questions in both splits.
        system_prompt: the system turn (SmolLM2's default; ``""`` renders no system turn).
        max_completion_length: new tokens per completion (12: enough for ``"a + b = c"``).
    """

    name: ClassVar[str] = "chat_addition"
    description: ClassVar[str] = ("chat 'What is a + b?' mixing 1-digit+1-digit and 2-digit+1-digit questions; "
                                  "answer = last integer (SmolLM2 preset)")
    easy_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    system_prompt: str = SMOLLM2_SYSTEM_PROMPT
    max_completion_length: int = Field(default=12, ge=1, le=256)
    train_size: int = Field(default=120, ge=1)
    eval_size: int = Field(default=40, ge=1)

    @model_validator(mode="after")
    def _check_sizes(self) -> ChatAdditionTask:
        e_easy, e_hard = self._split_counts(self.eval_size)
        if e_easy >= len(_pairs("1+1")) or e_hard >= len(_pairs("2+1")):
            raise ValueError(f"eval_size: {self.eval_size} held-out questions at easy_fraction={self.easy_fraction} "
                             f"leave no one-digit or two-digit question to train on ({e_easy} of 100 / {e_hard} of 900)")
        return self

    def make_answer_space(self) -> AnswerSpace:
        return IntegerAnswers()

    def _split_counts(self, n: int) -> tuple[int, int]:
        easy = round(n * self.easy_fraction)
        return easy, n - easy

    def _eval_pairs(self, seed: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(one-digit, two-digit) held-out questions for ``seed``."""
        rng = np.random.default_rng([seed, 0xC4A7])
        e_easy, e_hard = self._split_counts(self.eval_size)
        easy, hard = _pairs("1+1"), _pairs("2+1")
        return ([easy[i] for i in rng.permutation(len(easy))[:e_easy]],
                [hard[i] for i in rng.permutation(len(hard))[:e_hard]])

    def messages(self, a: int, b: int) -> list[dict[str, str]]:
        """The conversational prompt (user turn only; the chat template adds SmolLM2's system turn)."""
        return [{"role": "user", "content": ADDITION_TEMPLATE.format(a=a, b=b)}]

    def render(self, a: int, b: int) -> str:
        """The prompt text: SmolLM2's ChatML chat template applied with ``add_generation_prompt=True``."""
        system = f"<|im_start|>system\n{self.system_prompt}<|im_end|>\n" if self.system_prompt else ""
        return (f"{system}<|im_start|>user\n{ADDITION_TEMPLATE.format(a=a, b=b)}<|im_end|>\n"
                "<|im_start|>assistant\n")

    def row(self, a: int, b: int) -> Row:
        """The row of question ``a + b``."""
        return {"id": f"{self.name}:{a}+{b}", "prompt": self.render(a, b), "answer": str(a + b),
                "difficulty": difficulty_of(a, b)}

    def rows(self, split: Split, n: int, seed: int = 0, stream: int = 0) -> list[Row]:
        self._check_split(split, n)
        eval_easy, eval_hard = self._eval_pairs(seed)
        if split == "eval":
            if n > self.eval_size:
                raise ValueError(f"n: {n} eval rows requested but eval_size is {self.eval_size}")
            pool_easy, pool_hard = eval_easy, eval_hard
            rng = np.random.default_rng([seed, 1, 0xC4A7])
        else:
            taken = set(eval_easy) | set(eval_hard)
            pool_easy = [p for p in _pairs("1+1") if p not in taken]
            pool_hard = [p for p in _pairs("2+1") if p not in taken]
            rng = np.random.default_rng([seed, 0, stream, 0xC4A7])
        n_easy, n_hard = self._split_counts(n)
        if n_easy > len(pool_easy) or n_hard > len(pool_hard):
            raise ValueError(f"n: {n} {split} rows at easy_fraction={self.easy_fraction} need {n_easy} one-digit and "
                             f"{n_hard} two-digit questions; only {len(pool_easy)} / {len(pool_hard)} are in the "
                             f"{split} split")
        chosen = ([pool_easy[i] for i in rng.permutation(len(pool_easy))[:n_easy]]
                  + [pool_hard[i] for i in rng.permutation(len(pool_hard))[:n_hard]])
        return [self.row(*chosen[i]) for i in rng.permutation(len(chosen))]

    def target(self, row: Mapping[str, str]) -> str:
        return str(row["answer"])
