r"""Benchmark tasks: a dataset builder, an SFT target and a verifier per task.

Every task produces rows ``{"id", "prompt", "answer"}`` (the columns :class:`rlavr.trl.RLAVRGRPOTrainer` reads
by default: ``id_column="id"``, ``label_column="answer"``), split into a ``train`` pool (RL prompts and SFT
warm-start data) and a disjoint held-out ``eval`` set. Prompt ids are content hashes, so the same prompt always
has the same id (the label ledger never charges twice for it) and two different prompts never share one.

Built-in tasks:

* ``addition`` (default): ``"{a}+{b}="`` -> ``"{a+b}"``, operands of ``min_digits``..``max_digits`` digits
  (the number of digits is uniform, then the value is uniform among numbers with that many digits; rows are
  distinct, so the 100 one-digit + one-digit pairs saturate and are a little rarer than that). A pair
  ``(a, b)`` is held out iff ``splitmix64(a * 2^20 + b) mod eval_modulus == 0``, so train and eval can never
  overlap whatever their sizes. Answers: :class:`~rlavr.answers.IntegerAnswers` (last integer).
* ``knights_knaves``: reasoning-gym ``knights_knaves`` (``n_people`` inhabitants); the reward is the
  *binarised* reasoning-gym score (1 iff every role is right; reasoning-gym's partial credit ``0.3 + 0.7 m/n``
  counts as 0). Answers: :class:`~rlavr.answers.KnightsKnavesAnswers`, whose set equality of role assignments
  is exactly ``score_answer(...) == 1.0`` (tested).
* ``math``: reasoning-gym ``basic_arithmetic`` problems asking for a ``\boxed{}`` answer; the model is taught to
  answer ``\boxed{v}``. Answers: :class:`~rlavr.answers.MathAnswers` (last ``\boxed{}``, math-verify equivalence).

Tasks are looked up by name in :data:`TASKS` (a :class:`rlavr.registry.Registry`): the built-ins above, the SmolLM2
preset's ``chat_addition`` (:mod:`rlavr.bench.chat_addition`, imported on first use), tasks registered at run time
(``TASKS.register(MyTask)``) and installed packages' entry points in the ``rlavr.tasks`` group (docs/api.md).

reasoning-gym datasets are deterministic given their seed; the train pool uses seed ``2 * seed + 1`` (plus
``2e6 * stream`` for the SFT stream) and the eval set ``2 * seed + 2``, and any train question that also occurs
in the eval set is removed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from rlavr.answers import AnswerSpace, IntegerAnswers, KnightsKnavesAnswers, MathAnswers
from rlavr.registry import Registry
from rlavr.rollouts import completion_text, hashed_id

__all__ = [
    "AdditionTask",
    "AnswerReward",
    "KnightsKnavesTask",
    "MathTask",
    "TASKS",
    "TASK_GROUP",
    "Task",
    "completion_text",
    "get_task",
]

Split = Literal["train", "eval"]
Row = dict[str, str]


def _prompt_id(task: str, prompt: str) -> str:
    return hashed_id(prompt, task)


class AnswerReward:
    """TRL reward function: ``1.0`` iff the completion's extracted answer is equivalent to ``kwargs[label_column]``.

    ``RLAVRGRPOTrainer`` rewrites the label column per group with the label the strategy chose (ground truth
    for queried groups, majority vote for pseudo-labelled ones), so this one function serves every strategy.
    A completion with no extractable answer gets 0.

    Args:
        answer_space: extraction + equivalence.
        label_column: the dataset column holding the label (default ``"answer"``).
    """

    def __init__(self, answer_space: AnswerSpace, label_column: str = "answer") -> None:
        if not isinstance(answer_space, AnswerSpace):
            raise ValueError(f"AnswerReward.answer_space: expected an AnswerSpace, got {type(answer_space).__name__}")
        if not label_column:
            raise ValueError(f"AnswerReward.label_column: expected a non-empty column name, got {label_column!r}")
        self.answer_space = answer_space
        self.label_column = label_column
        self.__name__ = f"{answer_space.name}_accuracy"  # TRL logs rewards/<__name__>/mean

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        if self.label_column not in kwargs:
            raise ValueError(f"AnswerReward: the batch has no label column {self.label_column!r} "
                             f"(columns: {sorted(k for k in kwargs if not k.startswith(('trainer_', 'log_')))})")
        labels = kwargs[self.label_column]
        if len(labels) != len(completions):
            raise ValueError(f"AnswerReward: {len(labels)} labels for {len(completions)} completions")
        space = self.answer_space
        return [1.0 if space.grade(space.extract(completion_text(c)), None if lab is None else str(lab)) else 0.0
                for c, lab in zip(completions, labels, strict=True)]


class Task(BaseModel, ABC):
    """A benchmark task (pydantic config; see module docstring).

    Attributes:
        max_completion_length: generation limit in tokens for RL and evaluation (byte-level tokenizer: 1 token
            per ASCII character, plus the end-of-text token).
        eval_size: held-out evaluation items.
        train_size: RL training prompts.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ClassVar[str] = "base"
    description: ClassVar[str] = ""
    max_completion_length: int = Field(default=8, ge=1, le=4096)
    train_size: int = Field(default=4000, ge=1)
    eval_size: int = Field(default=500, ge=1)

    _space: AnswerSpace | None = PrivateAttr(default=None)

    # ------------------------------------------------------------------ verifier
    @abstractmethod
    def make_answer_space(self) -> AnswerSpace:
        """A fresh answer space (extraction + equivalence) for this task."""

    @property
    def answer_space(self) -> AnswerSpace:
        if self._space is None:
            self._space = self.make_answer_space()
        return self._space

    def reward_function(self, label_column: str = "answer") -> AnswerReward:
        return AnswerReward(self.answer_space, label_column=label_column)

    def score(self, completions: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """``(N,)`` bool: completion ``i`` is correct against ``answers[i]`` (the task's verifier)."""
        if len(completions) != len(answers):
            raise ValueError(f"score: {len(completions)} completions for {len(answers)} answers")
        space = self.answer_space
        return np.fromiter((space.grade(space.extract(c), a) for c, a in zip(completions, answers, strict=True)),
                           dtype=bool, count=len(completions))

    # ------------------------------------------------------------------ data
    @abstractmethod
    def rows(self, split: Split, n: int, seed: int = 0, stream: int = 0) -> list[Row]:
        """``n`` distinct rows ``{"id", "prompt", "answer"}`` of ``split``, deterministic given ``seed``.

        ``stream`` draws an independent sample of the same split (``0``: RL prompts, ``1``: SFT warm start); the
        eval split, and so what the train split excludes, depends on ``seed`` only.
        """

    @abstractmethod
    def target(self, row: Mapping[str, str]) -> str:
        """The completion SFT teaches for ``row`` (the end-of-text token is appended by the trainer)."""

    def capacity(self, split: Split) -> int | None:
        """How many distinct rows :meth:`rows` can draw from ``split`` (``None``: practically unbounded)."""
        return None

    def sft_rows(self, n: int, seed: int) -> list[Row]:
        """Warm-start rows: ``n`` (at most :meth:`capacity`) drawn from the train distribution, never from eval."""
        cap = self.capacity("train")
        return self.rows("train", n if cap is None else min(n, cap), seed=seed, stream=1)

    def datasets(self, seed: int = 0) -> tuple[list[Row], list[Row]]:
        """``(train, eval)`` rows of the configured sizes."""
        return self.rows("train", self.train_size, seed), self.rows("eval", self.eval_size, seed)

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this task's data (for cache keys)."""
        return {"task": self.name, **self.model_dump()}

    @staticmethod
    def _check_split(split: str, n: int) -> None:
        if split not in ("train", "eval"):
            raise ValueError(f"split: expected 'train' or 'eval', got {split!r}")
        if not isinstance(n, int | np.integer) or n < 0:
            raise ValueError(f"n: expected an int >= 0, got {n!r}")


# ================================================================================================ addition


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Vectorised SplitMix64 finaliser (a fixed, well-mixed hash of uint64 keys)."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class AdditionTask(Task):
    """Multi-digit addition ``"a+b="`` -> ``"a+b"`` (see module docstring).

    Attributes:
        min_digits / max_digits: operand digit range (1..6).
        eval_modulus: one pair in ``eval_modulus`` (by hash) is held out.
    """

    name: ClassVar[str] = "addition"
    description: ClassVar[str] = "a+b= with 1-3 digit operands; answer = last integer (built in, no downloads)"
    min_digits: int = Field(default=1, ge=1, le=6)
    max_digits: int = Field(default=3, ge=1, le=6)
    eval_modulus: int = Field(default=10, ge=2)
    max_completion_length: int = Field(default=5, ge=1, le=64)

    @model_validator(mode="after")
    def _check(self) -> AdditionTask:
        if self.min_digits > self.max_digits:
            raise ValueError(f"min_digits: must be <= max_digits ({self.max_digits}), got {self.min_digits}")
        need = self.max_digits + 2  # digits of the sum + end-of-text
        if self.max_completion_length < need:
            raise ValueError(f"max_completion_length: {self.max_digits}-digit sums need >= {need} tokens "
                             f"(digits + end of text), got {self.max_completion_length}")
        splits: tuple[tuple[Split, int], ...] = (("train", self.train_size), ("eval", self.eval_size))
        for split, size in splits:
            if size > self.capacity(split):
                raise ValueError(f"{split}_size: {size} distinct {split} pairs requested but at most "
                                 f"{self.capacity(split)} exist for {self.min_digits}-{self.max_digits} digit "
                                 "operands")
        return self

    def make_answer_space(self) -> AnswerSpace:
        return IntegerAnswers()

    def _draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        d = rng.integers(self.min_digits, self.max_digits + 1, size=(n, 2))
        lo = np.where(d == 1, 0, 10 ** (d - 1))
        hi = 10**d  # exclusive
        return (lo + np.floor(rng.random((n, 2)) * (hi - lo))).astype(np.int64)

    def held_out(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``(N,)`` bool: the pair belongs to the eval split."""
        key = (np.asarray(a, dtype=np.uint64) << np.uint64(20)) + np.asarray(b, dtype=np.uint64)
        return _splitmix64(key) % np.uint64(self.eval_modulus) == 0

    def capacity(self, split: Split) -> int:
        """Half the pairs of ``split`` (beyond that, rejection sampling of distinct pairs gets slow)."""
        lo_d = 0 if self.min_digits == 1 else 10 ** (self.min_digits - 1)
        space = (10**self.max_digits - lo_d) ** 2
        frac = 1.0 / self.eval_modulus if split == "eval" else 1.0 - 1.0 / self.eval_modulus
        return int(0.5 * space * frac)

    def rows(self, split: Split, n: int, seed: int = 0, stream: int = 0) -> list[Row]:
        self._check_split(split, n)
        if n > self.capacity(split):
            raise ValueError(f"n: {n} distinct {split} pairs requested but at most {self.capacity(split)} can be "
                             f"drawn for {self.min_digits}-{self.max_digits} digit operands")
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, stream, 0xADD])
        pairs = np.zeros((0, 2), dtype=np.int64)
        while pairs.shape[0] < n:
            cand = self._draw(rng, max(64, 4 * (n - pairs.shape[0]) * (self.eval_modulus if split == "eval" else 1)))
            keep = self.held_out(cand[:, 0], cand[:, 1]) == (split == "eval")
            pairs = np.concatenate([pairs, cand[keep]])
            _, first = np.unique(pairs, axis=0, return_index=True)
            pairs = pairs[np.sort(first)]
        pairs = pairs[:n]
        return [{"id": f"add:{a}+{b}", "prompt": f"{a}+{b}=", "answer": str(a + b)} for a, b in pairs.tolist()]

    def target(self, row: Mapping[str, str]) -> str:
        return str(row["answer"])


# ================================================================================================ reasoning-gym


class _ReasoningGymTask(Task):
    """Shared logic of the reasoning-gym tasks (dataset name + config, dedup between splits)."""

    rg_dataset: ClassVar[str] = ""

    def rg_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def format_prompt(self, question: str) -> str:
        return question

    def _items(self, size: int, seed: int) -> list[dict[str, Any]]:
        import reasoning_gym as rg

        ds = rg.create_dataset(self.rg_dataset, size=size, seed=seed, **self.rg_config())
        return [ds[i] for i in range(len(ds))]

    def rows(self, split: Split, n: int, seed: int = 0, stream: int = 0) -> list[Row]:
        self._check_split(split, n)
        eval_seed = 2 * seed + 2
        if split == "eval":
            items = self._items(max(n, 1) * 2, eval_seed)
            excluded: set[str] = set()
        else:
            # odd seeds never meet the even eval seeds; streams are far apart
            items = self._items(max(n, 1) * 2, 2 * seed + 1 + 2_000_000 * stream)
            excluded = {str(x["question"]) for x in self._items(max(self.eval_size, 1) * 2, eval_seed)}
        out: list[Row] = []
        seen: set[str] = set()
        for item in items:
            q = str(item["question"])
            if q in excluded or q in seen:
                continue
            seen.add(q)
            prompt = self.format_prompt(q)
            out.append({"id": _prompt_id(self.name, prompt), "prompt": prompt, "answer": str(item["answer"])})
            if len(out) == n:
                return out
        raise ValueError(f"n: reasoning-gym {self.rg_dataset!r} with {self.rg_config()} gave only {len(out)} distinct "
                         f"{split} questions out of {len(items)}; ask for fewer (n={n}) or widen the config")

    def fingerprint(self) -> dict[str, Any]:
        from importlib.metadata import version

        return {**super().fingerprint(), "reasoning_gym": version("reasoning-gym")}


class KnightsKnavesTask(_ReasoningGymTask):
    """reasoning-gym ``knights_knaves`` with a binarised score (see module docstring)."""

    name: ClassVar[str] = "knights_knaves"
    description: ClassVar[str] = "reasoning-gym knights & knaves; reward 1 iff every role is right"
    rg_dataset: ClassVar[str] = "knights_knaves"
    n_people: int = Field(default=2, ge=2, le=6)
    depth_constraint: int = Field(default=2, ge=1, le=4)
    width_constraint: int = Field(default=2, ge=1, le=4)
    max_completion_length: int = Field(default=64, ge=8, le=4096)

    def rg_config(self) -> dict[str, Any]:
        return {"n_people": self.n_people, "depth_constraint": self.depth_constraint,
                "width_constraint": self.width_constraint}

    def format_prompt(self, question: str) -> str:
        return f"{question}\nAnswer: "

    def make_answer_space(self) -> AnswerSpace:
        return KnightsKnavesAnswers()

    def target(self, row: Mapping[str, str]) -> str:
        return str(row["answer"])


class MathTask(_ReasoningGymTask):
    r"""reasoning-gym ``basic_arithmetic`` problems answered as ``\boxed{v}`` (see module docstring)."""

    name: ClassVar[str] = "math"
    description: ClassVar[str] = "reasoning-gym basic_arithmetic, answer in \\boxed{}; math-verify equivalence"
    rg_dataset: ClassVar[str] = "basic_arithmetic"
    min_terms: int = Field(default=2, ge=2, le=6)
    max_terms: int = Field(default=2, ge=2, le=6)
    min_digits: int = Field(default=1, ge=1, le=4)
    max_digits: int = Field(default=2, ge=1, le=4)
    operators: tuple[str, ...] = ("+", "-", "*")
    max_completion_length: int = Field(default=16, ge=4, le=4096)

    @model_validator(mode="after")
    def _check(self) -> MathTask:
        if self.min_terms > self.max_terms:
            raise ValueError(f"min_terms: must be <= max_terms ({self.max_terms}), got {self.min_terms}")
        if self.min_digits > self.max_digits:
            raise ValueError(f"min_digits: must be <= max_digits ({self.max_digits}), got {self.min_digits}")
        bad = [op for op in self.operators if op not in ("+", "-", "*", "/")]
        if bad or not self.operators:
            raise ValueError(f"operators: expected a non-empty subset of + - * /, got {self.operators!r}")
        return self

    def rg_config(self) -> dict[str, Any]:
        return {"min_terms": self.min_terms, "max_terms": self.max_terms, "min_digits": self.min_digits,
                "max_digits": self.max_digits, "operators": tuple(self.operators), "allow_parentheses": False,
                "format_style": "simple", "whitespace": "single"}

    def format_prompt(self, question: str) -> str:
        return f"{question} Answer in \\boxed{{}}: "

    def make_answer_space(self) -> AnswerSpace:
        return MathAnswers()

    def target(self, row: Mapping[str, str]) -> str:
        return f"\\boxed{{{row['answer']}}}"


def _check_task_class(obj: Any, origin: str) -> type[Task]:
    """A registered task must be a :class:`Task` subclass (built from its config fields by name)."""
    if not isinstance(obj, type) or not issubclass(obj, Task):
        raise ValueError(f"task {origin}: expected a rlavr.bench.tasks.Task subclass, got {obj!r}")
    return obj


TASK_GROUP = "rlavr.tasks"
"""Entry-point group of benchmark tasks from installed packages (``name = "package.module:TaskClass"``)."""

TASKS: Registry[type[Task]] = Registry("task", field="task", group=TASK_GROUP, validate=_check_task_class)
"""Benchmark task classes by name (aliases: ``add``, ``kk``, ``knights-knaves``, ``boxed``)."""
TASKS.register(AdditionTask, aliases=("add",))
TASKS.register(KnightsKnavesTask, aliases=("kk", "knights-knaves"))
TASKS.register(MathTask, aliases=("boxed",))
TASKS.register_lazy("chat_addition", "rlavr.bench.chat_addition:ChatAdditionTask")


def get_task(spec: str | Task, **kwargs: Any) -> Task:
    """Build a task from its registered name (``addition``, ``knights_knaves``, ``math``, ``chat_addition``,
    plugins: :data:`TASKS`) and config fields, or pass one."""
    if isinstance(spec, Task):
        if kwargs:
            raise ValueError(f"get_task: keyword arguments {sorted(kwargs)} given with a Task instance")
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"task: expected a task name or a Task, got {type(spec).__name__}")
    return TASKS.get(spec)(**kwargs)

