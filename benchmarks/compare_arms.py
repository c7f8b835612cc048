"""Every arm of one benchmark against a baseline arm: its share of full supervision's gain and its difference to
the baseline, with 95 % paired-bootstrap intervals.

Reads the ``results.json`` of an ``rlavr bench`` run (or its folder) and prints one Markdown table: per arm, the
seeds, % of GT's gain over the start model, ``(acc - start) / (acc_gt - start)``, and the paired difference in
greedy accuracy to ``--baseline`` (points), both resampled over seeds and held-out items together
(:func:`rlavr.bench.report.baseline_table`). ``summary.md`` compares each arm with ``gt`` and with the best other
arm; this compares them all with the one arm a new rule has to beat. Usage::

    python benchmarks/compare_arms.py runs/smollm2 --baseline random-mask
"""

from __future__ import annotations

import argparse

from rlavr.bench.report import baseline_markdown, baseline_table, load_results


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", help="an rlavr bench folder or its results.json")
    ap.add_argument("--baseline", default="random-mask", help="arm (or strategy) to compare with (default random-mask)")
    ap.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    args = ap.parse_args(argv)
    if args.resamples < 1:
        raise SystemExit(f"--resamples: must be >= 1, got {args.resamples}")
    try:
        table = baseline_table(load_results(args.results), args.baseline, n_resamples=args.resamples)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    text = baseline_markdown(table, args.baseline)
    print(text)
    return text


if __name__ == "__main__":
    main()
