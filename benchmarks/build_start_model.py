"""Build the start model that ships with rlavr for the default benchmark (maintainers only).

``rlavr bench`` starts the default task from a FIXED checkpoint shipped in
``src/rlavr/bench/start_models/<recipe key>/`` instead of running SFT on the user's machine, because SFT of the
tiny model is chaotic across thread counts, CPU kernels and library versions (docs/benchmarks.md,
"Reproducibility"). This script runs that SFT once, here, with one torch thread, prints the checkpoint's
held-out accuracies, and copies it with a manifest of SHA-256 hashes into the package::

    python benchmarks/build_start_model.py                 # default task and configs
    python benchmarks/build_start_model.py --sft-steps 480 # the `high` regime's start model
    python benchmarks/build_start_model.py --dry-run       # build and evaluate, ship nothing

Changing the shipped model changes every number of the documented default table: rerun the benchmark after.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from rlavr.bench.evaluate import evaluate
from rlavr.bench.models import REGIMES, SFTConfig, load_model, ship_start_model, warm_start
from rlavr.bench.tasks import get_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="addition")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the SFT run (default 1)")
    ap.add_argument("--sft-steps", type=int, default=None,
                    help=f"SFT steps (default {SFTConfig().steps}; the regimes: {REGIMES})")
    ap.add_argument("--eval-k", type=int, default=8)
    ap.add_argument("--eval-rows", type=int, default=None, help="held-out items evaluated (default: all)")
    ap.add_argument("--dest", default=None, help="folder that receives <recipe key>/ (default: the package's)")
    ap.add_argument("--dry-run", action="store_true", help="build and evaluate only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    task = get_task(args.task)
    sft = SFTConfig() if args.sft_steps is None else SFTConfig(steps=args.sft_steps)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        path, meta = warm_start(task, sft_config=sft, cache_dir=cache, force=True, use_shipped=False)
        model, tok = load_model(path)
        _, eval_rows = task.datasets(seed=0)
        eval_rows = eval_rows[: args.eval_rows] if args.eval_rows else eval_rows
        ev = evaluate(model, tok, task, eval_rows, k=args.eval_k, temperature=1.0, seed=0)
        print(json.dumps({"sft_loss": meta["sft_loss"], "sft_seconds": round(meta["sft_seconds"], 1),
                          "greedy": ev.greedy_accuracy, f"mean@{args.eval_k}": ev.mean_at_k,
                          f"majority@{args.eval_k}": ev.majority_at_k, "n": ev.n,
                          "seconds": round(time.perf_counter() - t0, 1)}, indent=2))
        if not args.dry_run:
            print("shipped to", ship_start_model(path, task, sft_config=sft, dest_root=args.dest))


if __name__ == "__main__":
    main()
