"""``StrategySampler``: TRL's prompt layout with each round's prompts chosen by the strategy's ``prompt_sampler``."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from torch.utils.data import Sampler

from rlavr.loop import AcquisitionLoop
from rlavr.trl.distributed import on_main_then_broadcast

__all__ = ["StrategySampler"]


class StrategySampler(Sampler[int]):
    """TRL's ``RepeatSampler`` layout with the prompts of each round chosen by ``strategy.prompt_sampler``.

    Each round takes ``n_prompts`` dataset indices and yields every index ``G`` times (one group), the whole round
    ``repeat`` times (``num_iterations x steps_per_generation``), exactly like TRL's sampler. The indices come from
    :meth:`AcquisitionLoop.sample_prompts <rlavr.loop.AcquisitionLoop.sample_prompts>` on the main process,
    broadcast to every process; when it returns ``None`` the round keeps TRL's own (seeded, shuffled) prompts. The
    epoch has as many rounds as TRL's sampler, which this class consumes alongside.

    The data loader fetches a round before the previous one is trained (prefetch), so a prompt sampler must not
    depend on the labels of the round just before; the built-in ones are fitted once before training
    (``fit_pool``).

    Args:
        loop: the trainer's acquisition loop (its strategy chooses).
        accelerator: the trainer's ``Accelerator`` (the choice is broadcast).
        base: TRL's own sampler.
        dataset: the dataset the indices point into.
        n_prompts: prompts per round.
        G: rollouts per prompt.
        repeat: times each round is yielded.
    """

    def __init__(self, loop: AcquisitionLoop, accelerator: Any, base: Sampler[int], dataset: Any, n_prompts: int,
                 G: int, repeat: int) -> None:
        self.loop = loop
        self.accelerator = accelerator
        self.base = base
        self.dataset = dataset
        self.n_prompts = int(n_prompts)
        self.G = int(G)
        self.repeat = int(repeat)
        self.rounds = 0

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def _choose(self) -> list[int] | None:
        return on_main_then_broadcast(self.accelerator, lambda: self.loop.sample_prompts(self.dataset, self.n_prompts),
                                      "prompt_sampler")

    def __iter__(self) -> Iterator[int]:
        size = self.n_prompts * self.G * self.repeat
        base = iter(self.base)
        while True:
            own = list(itertools.islice(base, size))
            if len(own) < size:
                return
            chosen = self._choose()
            self.rounds += 1
            if chosen is None:
                yield from own
                continue
            for _ in range(self.repeat):
                for index in chosen:
                    for _ in range(self.G):
                        yield index
