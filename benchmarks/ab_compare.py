"""Before/after comparison of a benchmark script in ONE invocation: old code vs new code, interleaved.

Runs ``SCRIPT ARGS`` alternately with ``PYTHONPATH=<baseline>/src`` (the old code, e.g. a ``git archive`` of the
base commit) and ``PYTHONPATH=<this checkout>/src``, ``--rounds`` times each (old, new, old, new, ...), so that
both see the same machine load; then prints, for every numeric cell of the script's output tables, the median
old value, the median new value and the ratio old / new (> 1 = the new code is faster). On a shared machine
compare the ratios, not the absolute times.

Usage::

    git archive <base-commit> src | tar -x -C /tmp/rlavr-base
    OMP_NUM_THREADS=1 python benchmarks/ab_compare.py --baseline /tmp/rlavr-base --rounds 3 -- \\
        benchmarks/selection_scaling.py --sizes 1024x16,4096x16 --strategies care,random --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _floats(line: str) -> tuple[str, list[float]] | None:
    """``(label, numbers)`` of a table row: the leading non-numeric words, then every numeric cell."""
    label, nums = [], []
    for tok in line.split():
        try:
            nums.append(float(tok))
        except ValueError:
            if nums:  # a word after numbers (e.g. "yes"/"NO"): not a number, skip
                continue
            label.append(tok)
    if nums and not label and len(nums) > 1:  # a row keyed by its first number (e.g. the batch size)
        label, nums = [line.split()[0]], nums[1:]
    return (" ".join(label), nums) if nums and label else None


def run_once(src: Path, cmd: Sequence[str], raw: bool = False) -> dict[str, list[float]]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, *cmd], env=env, capture_output=True, text=True, check=True).stdout
    if raw:
        print(f"--- PYTHONPATH={src}\n{out}", flush=True)
    rows: dict[str, list[float]] = {}
    for line in out.splitlines():
        parsed = _floats(line)
        if parsed is not None:
            rows[parsed[0]] = parsed[1]
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, help="directory holding the old code's src/ (a git archive)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--raw", action="store_true", help="also print each run's own output")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="-- SCRIPT ARGS")
    args = ap.parse_args(argv)
    cmd = [c for c in args.cmd if c != "--"]
    old_src = Path(args.baseline) / "src"
    if not (old_src / "rlavr").is_dir():
        raise SystemExit(f"--baseline: {old_src}/rlavr does not exist")
    if not cmd or args.rounds < 1:
        raise SystemExit("usage: ab_compare.py --baseline DIR [--rounds N] -- SCRIPT ARGS")
    runs: dict[str, list[dict[str, list[float]]]] = {"old": [], "new": []}
    for _ in range(args.rounds):
        runs["old"].append(run_once(old_src, cmd, args.raw))
        runs["new"].append(run_once(ROOT / "src", cmd, args.raw))
    print(f"A/B: {' '.join(cmd)}; {args.rounds} interleaved rounds; cell = median old -> median new (old/new)")
    for label in runs["new"][0]:
        if label not in runs["old"][0]:
            continue
        n = min(len(r[label]) for k in runs for r in runs[k] if label in r)
        cells = []
        for i in range(n):
            o = statistics.median(r[label][i] for r in runs["old"] if label in r)
            w = statistics.median(r[label][i] for r in runs["new"] if label in r)
            cells.append(f"{o:.4g}->{w:.4g} ({o / w:.2f}x)" if w else f"{o:.4g}->{w:.4g}")
        print(f"{label:<16} " + "  ".join(cells))


if __name__ == "__main__":
    main()
