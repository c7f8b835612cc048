"""Which rule wins in which regime: each arm's % of GT against the start model's majority vote.

Reads the ``results.json`` of several ``rlavr bench`` runs of the same arms started from different checkpoints
(``--regime low / mid / high``) and prints one Markdown table (cells: % of GT with its 95 % paired-bootstrap
interval, computed within each regime; the best label-budgeted arm in bold, the arms whose paired difference to it
has an interval containing 0 marked ``=``) and, with ``--plot``, draws each arm's % of GT against the start
model's majority@k accuracy. Usage::

    ARMS=gt,ttrl,random,random-mask,entropy-mask,prob-mask,care,care-mask
    for r in low mid high; do rlavr bench --regime $r --strategies $ARMS --seeds 0,1,2 --output-dir runs/reg-$r; done
    python benchmarks/regimes.py low=runs/reg-low mid=runs/reg-mid high=runs/reg-high --plot regimes.png

A regime given without ``name=`` is named after its folder. Partial benchmarks work (arms with fewer seeds are
marked ``(n=...)``); the intervals are those of :func:`rlavr.bench.report.interval_table`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rlavr.bench.report import load_results, pct_gt_vs_start_plot, regime_markdown, regime_rows


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="[name=]results folder or results.json, one per regime")
    ap.add_argument("--plot", default=None, help="write the %% of GT vs majority@k plot here (PNG)")
    ap.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    args = ap.parse_args(argv)
    runs = {}
    for spec in args.runs:
        name, _, path = spec.rpartition("=")
        runs[name or Path(path).name] = load_results(path)
    rows = regime_rows(runs, n_resamples=args.resamples)
    table = regime_markdown(rows)
    print(table)
    if args.plot:
        print(f"\nplot: {pct_gt_vs_start_plot(rows, args.plot)}")
    return table


if __name__ == "__main__":
    main()
