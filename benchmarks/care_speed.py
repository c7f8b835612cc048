"""CARE overhead per RL step: select (features + both classifiers + routing) and update (3 AdamW steps per stage
with replay) on CPU (or a GPU: ``--device cuda``), for G=8 rollouts with hidden size 4096, and how it grows with
the batch size B.

Usage (the machine is shared; heavy jobs serialise on a lock)::

    flock /tmp/rlavr-heavy.lock .venv/bin/python benchmarks/care_speed.py
    .venv/bin/python benchmarks/care_speed.py --hidden 1024 --batches 16,64 --repeats 3   # quick
    python benchmarks/care_speed.py --device cuda                                        # the classifiers on a GPU

``--clock cpu`` times with the CPU time of this process (``time.process_time``, all its threads) instead of wall
time: on a shared machine a job that waits for a core then costs nothing, so the numbers stay comparable under
load (cache and memory-bandwidth contention still show).

Each measured step uses a FRESH batch (built before the clock starts), so select includes stacking the
per-rollout hidden states out of the batch's Python objects, as in training. Budget: ceil(0.2 B) labels per
step (CARE's setting), all with labels for the update. Timings are medians over ``--repeats`` steps after
``--warmup`` untimed steps (the warm-up also fills the replay buffer, so updates mix 16 history samples).
On a GPU the clock is read after ``torch.cuda.synchronize()`` (select already returns host arrays; update's
AdamW steps would otherwise still be queued), and the hidden states start on the host, as the trainer's do.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from _device import require_device, sync

from rlavr.budget import BudgetView
from rlavr.strategies.care import CARE
from rlavr.types import PromptGroup, Rollout, RolloutBatch


def make_batch(rng: np.random.Generator, B: int, G: int, H: int, step: int) -> tuple[RolloutBatch, dict[str, str]]:
    """Random rollouts: answers from a small vocabulary (some invalid), float32 hidden states, lengths."""
    answers = rng.choice(np.array(["1", "2", "3", "4", ""], dtype=object), size=(B, G), p=[.4, .2, .15, .1, .15])
    hidden = rng.standard_normal((B, G, H), dtype=np.float32)
    prompt_hidden = rng.standard_normal((B, H), dtype=np.float32)
    lengths = rng.integers(50, 4000, size=(B, G))
    groups = []
    for i in range(B):
        rollouts = tuple(Rollout(answer=answers[i, j] or None, length=int(lengths[i, j]), hidden=hidden[i, j])
                         for j in range(G))
        groups.append(PromptGroup(id=f"s{step}-{i}", prompt=f"q{step}-{i}", rollouts=rollouts,
                                  prompt_hidden=prompt_hidden[i]))
    labels = {g.id: str(rng.choice(["1", "2", "3", "4"])) for g in groups}
    return RolloutBatch.from_groups(groups, step=step), labels


def time_care(B: int, G: int, H: int, repeats: int, warmup: int, seed: int,
              clock: Callable[[], float] = time.perf_counter, device: str = "cpu") -> dict[str, float]:
    rng = np.random.default_rng(seed)
    strategy = CARE(warmup_steps=0, seed=seed, device=device)
    n_label = math.ceil(0.2 * B)
    sel, upd = [], []
    for t in range(warmup + repeats):
        batch, labels = make_batch(rng, B, G, H, t)  # built before the clock starts
        sync()
        t0 = clock()
        acq = strategy.select(batch, BudgetView.of(n_label, B))
        sync()
        t1 = clock()
        bought = {batch.ids[i]: labels[batch.ids[i]] for i in np.flatnonzero(acq.query)}
        strategy.update(batch, acq, bought)
        sync()
        t2 = clock()
        if t >= warmup:
            sel.append(t1 - t0)
            upd.append(t2 - t1)
    s, u = statistics.median(sel), statistics.median(upd)
    return {"select": s, "update": u, "total": s + u}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--batches", default="16,32,64,128,256,512")
    ap.add_argument("--reference", type=int, default=64, help="batch size the ratios are relative to")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: elapsed time; cpu: CPU time of this process (robust to other jobs on the machine)")
    ap.add_argument("--device", default="cpu", help="where CARE's classifiers run: cpu, cuda or cuda:N")
    args = ap.parse_args(argv)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    sizes = sorted({int(b) for b in args.batches.split(",")} | {args.reference})
    for name in ("hidden", "group", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name}: must be >= 1, got {getattr(args, name)}")
    require_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    where = (f"GPU {torch.cuda.get_device_name(torch.device(args.device))}" if args.device.startswith("cuda")
             else "CPU")
    print(f"CARE select+update on {where}: G={args.group}, H={args.hidden}, budget ceil(0.2 B), torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats} steps, {args.clock} clock")
    rows = {B: time_care(B, args.group, args.hidden, args.repeats, args.warmup, args.seed, clock, args.device)
            for B in sizes}
    ref = rows[args.reference]
    print(f"{'B':>5} {'select ms':>10} {'update ms':>10} {'total ms':>10} {'ms/prompt':>10} "
          f"{'x total vs B=' + str(args.reference):>18} {'x B':>6}")
    for B, r in rows.items():
        print(f"{B:>5} {1e3 * r['select']:>10.1f} {1e3 * r['update']:>10.1f} {1e3 * r['total']:>10.1f} "
              f"{1e3 * r['total'] / B:>10.2f} {r['total'] / ref['total']:>18.2f} {B / args.reference:>6.2f}")


if __name__ == "__main__":
    main()
