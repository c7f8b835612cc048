"""Selection time as the batch grows: B x G from 64 x 8 to 4096 x 16, every strategy, one run, side by side.

"Selection" is what rlavr adds on the main process per generation round before rewards: building the
:class:`~rlavr.types.RolloutBatch` (answer clustering + majority vote, ``from_groups``) and ``strategy.select``.
Label buying (SQLite) and ``update`` are not included (see ``benchmarks/overhead.py`` for the whole step).
Target: < 1 s at 4096 x 16 on CPU, growing linearly in B x G (the fitted log-log slope is printed: 1.0 = linear).

Synthetic rollouts: answers drawn from 6 values with 10 % invalid, mean log-probabilities, lengths, and
(for strategies that need them) float32 hidden states of size ``--hidden``; reference labels for the
label-peeking research strategies. Each (strategy, size) is timed on a fresh batch object ``--repeats`` times
(after one untimed warm-up); the median is reported.

``--device cuda`` runs the classifiers of the strategies that have them (CARE and its ``-mask`` form) on a GPU
(the clock is read after ``torch.cuda.synchronize()``); every other strategy is numpy on the host either way.

``--clock cpu`` times with the CPU time of this process (``time.process_time``, all its threads) instead of wall
time: on a shared machine a job that waits for a core then costs nothing, so the numbers stay comparable under
load (cache and memory-bandwidth contention still show).

Usage::

    flock /tmp/rlavr-heavy.lock .venv/bin/python benchmarks/selection_scaling.py
    .venv/bin/python benchmarks/selection_scaling.py --sizes 64x8,256x8 --strategies entropy,random --repeats 1
    python benchmarks/selection_scaling.py --device cuda                     # CARE's classifiers on the GPU
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
from _device import require_device, sync

from rlavr.budget import BudgetView
from rlavr.strategies import Strategy, available, get_strategy
from rlavr.types import PromptGroup, Rollout, RolloutBatch

DEFAULT_SIZES = "64x8,256x8,1024x8,1024x16,4096x8,4096x16"
DEFAULT_STRATEGIES = "gt,ttrl,random,entropy,prob,oracle,care,pbc,pivot-trace,posneg"


def make_groups(rng: np.random.Generator, B: int, G: int, H: int, hidden: bool) -> tuple[list[PromptGroup], list[str]]:
    vals = rng.integers(0, 6, size=(B, G))
    invalid = rng.random((B, G)) < 0.1
    mlp = -rng.uniform(0.01, 2.0, size=(B, G))
    lengths = rng.integers(5, 500, size=(B, G))
    hs = rng.standard_normal((B, G, H), dtype=np.float32) if hidden else None
    ph = rng.standard_normal((B, H), dtype=np.float32) if hidden else None
    groups = []
    for i in range(B):  # construction is not timed
        rollouts = tuple(Rollout(text=f"answer {vals[i, j]}", answer=None if invalid[i, j] else str(vals[i, j]),
                                 mean_logprob=float(mlp[i, j]), length=int(lengths[i, j]),
                                 hidden=None if hs is None else hs[i, j]) for j in range(G))
        groups.append(PromptGroup(id=f"p{i}", prompt=f"q{i}", rollouts=rollouts,
                                  prompt_hidden=None if ph is None else ph[i]))
    return groups, [str(x) for x in rng.integers(0, 6, size=B)]


def make_strategy(name: str, device: str = "cpu") -> Strategy:
    """The strategy, with its classifiers on ``device`` when it has any (CARE and its ``-mask`` form)."""
    from rlavr.strategies.care import CARE

    strategy = get_strategy(name)
    if device != "cpu" and isinstance(strategy, CARE):
        strategy = get_strategy(name, device=device)
    return strategy


def time_one(name: str, groups: Sequence[PromptGroup], labels: list[str], repeats: int,
             clock: Callable[[], float] = time.perf_counter, device: str = "cpu") -> tuple[float, float]:
    """Median seconds of (from_groups, select) over ``repeats`` runs on fresh batch objects."""
    strategy = make_strategy(name, device)
    B = len(groups)
    # strategies calibrated on a labelled probe pool (PivotTrace) get one; the base hook does nothing
    pool = groups[: min(64, B)]
    strategy.fit_pool(RolloutBatch.from_groups(pool, reference_labels=labels[: len(pool)]),
                      {g.id: lab for g, lab in zip(pool, labels, strict=False)})
    budget = BudgetView.of(math.ceil(0.2 * B), B)
    build, select = [], []
    for r in range(repeats + 1):
        sync()
        t0 = clock()
        batch = RolloutBatch.from_groups(groups, reference_labels=labels if "labels" in strategy.requires else None)
        t1 = clock()
        strategy.select(batch, budget)
        sync()
        t2 = clock()
        if r > 0:
            build.append(t1 - t0)
            select.append(t2 - t1)
    return statistics.median(build), statistics.median(select)


def slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of log y on log x (1.0 = linear scaling)."""
    lx, ly = np.log(np.asarray(x, dtype=float)), np.log(np.maximum(np.asarray(y, dtype=float), 1e-9))
    return float(np.polyfit(lx, ly, 1)[0])


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated BxG sizes")
    ap.add_argument("--strategies", default=DEFAULT_STRATEGIES)
    ap.add_argument("--hidden", type=int, default=128, help="hidden size for strategies that need hidden states")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: elapsed time; cpu: CPU time of this process (robust to other jobs on the machine)")
    ap.add_argument("--device", default="cpu", help="where CARE's classifiers run: cpu, cuda or cuda:N")
    args = ap.parse_args(argv)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    try:
        sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
    except ValueError:
        raise SystemExit(f"--sizes: expected e.g. 64x8,4096x16, got {args.sizes!r}") from None
    if any(len(s) != 2 or min(s) < 1 for s in sizes) or args.repeats < 1 or args.hidden < 1:
        raise SystemExit("--sizes need BxG with B, G >= 1; --repeats and --hidden must be >= 1")
    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    reg = available()
    unknown = [n for n in names if n.lower() not in reg]
    if unknown:
        raise SystemExit(f"--strategies: unknown {unknown}; known: {sorted(reg)}")
    require_device(args.device)
    rng = np.random.default_rng(args.seed)
    data = {}
    for B, G in sizes:
        need_h = any("hidden_states" in reg[n.lower()].requires for n in names)
        data[(B, G)] = make_groups(rng, B, G, args.hidden, need_h)
    cols = [f"{B}x{G}" for B, G in sizes]
    print(f"selection time per round (median of {args.repeats}), seconds ({args.clock} clock); hidden size "
          f"{args.hidden}; budget ceil(0.2 B); classifiers on {args.device}")
    print(f"{'strategy':<14}" + "".join(f"{c:>12}" for c in cols) + f"{'slope':>8}{'<1s@max':>9}")
    build_row: list[float] = []
    for name in names:
        totals: list[float] = []
        err = None
        for B, G in sizes:
            groups, labels = data[(B, G)]
            try:
                b, s = time_one(name, groups, labels, args.repeats, clock, args.device)
            except Exception as exc:  # a strategy that cannot run on synthetic rollouts: say why
                err = f"{type(exc).__name__}: {exc}"
                break
            totals.append(b + s)
            if name == names[0]:
                build_row.append(b)
        if err:
            print(f"{name:<14}  could not run on synthetic rollouts ({err[:100]})")
            continue
        n = [B * G for B, G in sizes]
        print(f"{name:<14}" + "".join(f"{t:>12.4f}" for t in totals) + f"{slope(n, totals):>8.2f}"
              f"{'yes' if totals[-1] < 1.0 else 'NO':>9}")
    if build_row:
        n = [B * G for B, G in sizes]
        print(f"{'(from_groups)':<14}" + "".join(f"{t:>12.4f}" for t in build_row) + f"{slope(n, build_row):>8.2f}")


if __name__ == "__main__":
    main()
