"""GRPO with CARE active labels: a stock TRL GRPO script where four lines changed (marked ``# rlavr``).

The stock script used ``GRPOConfig`` / ``GRPOTrainer``; the rlavr version imports ``RLAVRConfig`` /
``RLAVRGRPOTrainer`` and adds ``strategy``, ``budget`` and ``answer_space`` to the config. Nothing else changes:
the dataset keeps its ``answer`` column, the reward function still reads ``answer`` (rlavr rewrites it per
prompt group with the bought ground truth or the majority-vote pseudo-label), and every TRL flag (vLLM,
Accelerate, DeepSpeed, PEFT, ``report_to``) works as before.

Runs on CPU, offline, in about a minute with a tiny randomly initialised Qwen3 (it learns nothing in 4 steps;
the point is the plumbing)::

    python examples/trl_grpo_care.py

With a real model (local folder or hub name), on GPUs, with vLLM generation::

    accelerate launch examples/trl_grpo_care.py --model Qwen/Qwen2.5-1.5B-Instruct --max-steps 300 \\
        --batch-size 64 --num-generations 8 --max-completion-length 512 --use-vllm
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from rlavr.trl import RLAVRConfig, RLAVRGRPOTrainer  # rlavr (was: from trl import GRPOConfig, GRPOTrainer)

INT = re.compile(r"-?\d+")


def addition_dataset(n: int, seed: int = 0) -> Dataset:
    """Conversational addition questions with a stable ``id`` and the ground truth in ``answer``."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 50, size=(2, n))
    return Dataset.from_dict({
        "id": [f"add-{i}" for i in range(n)],
        "prompt": [[{"role": "user", "content": f"What is {x} + {y}? Answer with the number only."}]
                   for x, y in zip(a, b, strict=True)],
        "answer": [str(int(x + y)) for x, y in zip(a, b, strict=True)],
    })


def correctness_reward(completions: list[Any], answer: list[str], **kwargs: Any) -> list[float]:
    """1.0 when the last integer of the completion equals the ``answer`` column, else 0.0."""
    rewards = []
    for completion, label in zip(completions, answer, strict=True):
        text = completion[-1]["content"] if isinstance(completion, list) else completion
        found = INT.findall(text)
        rewards.append(float(bool(found) and found[-1] == str(label).strip()))
    return rewards


def tiny_offline_model(folder: Path) -> str:
    """A 2-layer Qwen3 with the byte-level tokenizer (vocabulary 260), saved to ``folder`` (no download)."""
    from rlavr.bench.models import TinyModelConfig, build_tiny_model, build_tokenizer

    tok = build_tokenizer()
    model = build_tiny_model(tok, TinyModelConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                                                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                                  max_position_embeddings=256))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="model folder or hub name (default: a tiny offline Qwen3)")
    p.add_argument("--output-dir", default=None, help="default: a temporary folder")
    p.add_argument("--max-steps", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=16, help="rows (prompt x generation) per device and step")
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--max-completion-length", type=int, default=8)
    p.add_argument("--learning-rate", type=float, default=1e-5)
    p.add_argument("--dataset-size", type=int, default=256)
    p.add_argument("--use-vllm", action="store_true", help="generate with vLLM (needs `pip install \"rlavr[vllm]\"`)")
    p.add_argument("--strategy", default="care", help="rlavr strategy (see `rlavr strategies`)")
    p.add_argument("--budget", default="0.2", help="label budget: 0.2, 500, '13/step', ...")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Any:
    args = parse_args(argv)
    tmp = tempfile.TemporaryDirectory(prefix="rlavr-example-")
    model = args.model or tiny_offline_model(Path(tmp.name) / "tiny-qwen3")
    output_dir = args.output_dir or str(Path(tmp.name) / "out")
    gpu = torch.cuda.is_available()

    config = RLAVRConfig(  # rlavr (was: GRPOConfig)
        output_dir=output_dir,
        per_device_train_batch_size=args.batch_size,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=not gpu,
        bf16=gpu and torch.cuda.is_bf16_supported(),
        gradient_checkpointing=gpu,
        use_vllm=args.use_vllm,
        strategy=args.strategy, budget=args.budget, answer_space="integer",  # rlavr
    )
    trainer = RLAVRGRPOTrainer(  # rlavr (was: GRPOTrainer)
        model=model,
        reward_funcs=[correctness_reward],
        args=config,
        train_dataset=addition_dataset(args.dataset_size),
    )
    trainer.train()

    if trainer.accelerator.is_main_process:
        last = trainer.rlavr_history[-1]
        print(f"\nstrategy {trainer.strategy.name!r}: {trainer.budget_spent} labels bought for "
              f"{trainer.engine.ledger.prompts_seen} prompts seen (budget {trainer.engine.budget.describe()}); "
              f"last round routes query/pseudo/drop = {last['route/query']:.0f}/{last['route/pseudo']:.0f}/"
              f"{last['route/drop']:.0f}")
    trainer.engine.ledger.close()
    tmp.cleanup()
    return trainer


if __name__ == "__main__":
    main()
