"""Small builders shared by the tests (import with ``from helpers import ...``; ``tests/`` is on ``sys.path``
through ``tests/conftest.py``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from rlavr.answers import AnswerSpace
from rlavr.labels import DatasetOracle
from rlavr.types import Label, PromptGroup, Rollout, RolloutBatch


def make_group(
    gid: str,
    answers: Sequence[str | None],
    *,
    prompt: str | None = None,
    mean_logprobs: Sequence[float] | None = None,
    token_logprobs: Sequence[Sequence[float]] | None = None,
    lengths: Sequence[int] | None = None,
    hidden: np.ndarray | None = None,
    prompt_hidden: np.ndarray | None = None,
) -> PromptGroup:
    """One prompt group whose rollout ``j`` has answer ``answers[j]`` (text = the answer or ``""``)."""
    rollouts = []
    for j, a in enumerate(answers):
        rollouts.append(Rollout(
            text="" if a is None else a,
            answer=a,
            mean_logprob=None if mean_logprobs is None else float(mean_logprobs[j]),
            token_logprobs=None if token_logprobs is None else np.asarray(token_logprobs[j], dtype=np.float64),
            length=0 if lengths is None else int(lengths[j]),
            hidden=None if hidden is None else hidden[j],
        ))
    return PromptGroup(id=gid, prompt=prompt if prompt is not None else f"prompt {gid}", rollouts=tuple(rollouts),
                       prompt_hidden=prompt_hidden)


def make_batch(
    answers: Sequence[Sequence[str | None]],
    *,
    ids: Sequence[str] | None = None,
    space: AnswerSpace | None = None,
    reference_labels: Sequence[Label | None] | None = None,
    mean_logprobs: np.ndarray | None = None,
    token_logprobs: Sequence[Sequence[Sequence[float]]] | None = None,
    step: int = 0,
) -> RolloutBatch:
    """A batch from a ``B x G`` nested list of answers (``None`` = invalid rollout); ids default to ``p0, p1, ...``."""
    ids = list(ids) if ids is not None else [f"p{i}" for i in range(len(answers))]
    groups = [
        make_group(
            gid, group,
            mean_logprobs=None if mean_logprobs is None else mean_logprobs[i],
            token_logprobs=None if token_logprobs is None else token_logprobs[i],
        )
        for i, (gid, group) in enumerate(zip(ids, answers, strict=True))
    ]
    return RolloutBatch.from_groups(groups, space, reference_labels=reference_labels, step=step)


def random_answers(rng: np.random.Generator, B: int, G: int, n_values: int = 4,
                   p_invalid: float = 0.1) -> list[list[str | None]]:
    """``B x G`` random answers drawn from ``n_values`` strings, each invalid with probability ``p_invalid``."""
    vals = rng.integers(0, n_values, size=(B, G))
    inv = rng.random((B, G)) < p_invalid
    return [[None if inv[i, j] else str(vals[i, j]) for j in range(G)] for i in range(B)]


@contextlib.contextmanager
def global_rng_unchanged() -> Iterator[None]:
    """Assert that the body draws nothing from the global numpy / torch / ``random`` RNGs."""
    import random

    np_state = np.random.get_state()
    torch_state = torch.random.get_rng_state().clone()
    py_state = random.getstate()
    yield
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:], \
        "the global numpy RNG was used"
    assert torch.equal(torch.random.get_rng_state(), torch_state), "the global torch RNG was used"
    assert random.getstate() == py_state, "the global `random` RNG was used"


class CountingOracle(DatasetOracle):
    """Dataset lookup that records every id it was asked for, in order (``requested``)."""

    def __init__(self, data: Any) -> None:
        super().__init__(data)
        self.requested: list[str] = []

    def label(self, prompt_ids: Sequence[str], prompts: Sequence[str]) -> list[Label | None]:
        self.requested.extend(prompt_ids)
        return super().label(prompt_ids, prompts)


class WithinOne(AnswerSpace):
    """Integer answers within one of each other are 'equivalent' (a non-transitive, pairwise equivalence)."""

    pairwise = True

    def extract(self, text: str) -> str | None:
        return text or None

    def equivalent(self, a: str, b: str) -> bool:
        return abs(int(a) - int(b)) <= 1
