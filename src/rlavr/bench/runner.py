r"""The side-by-side benchmark: strategies x budgets x seeds, one starting checkpoint, one data order.

For every seed ``s`` and every arm (strategy, budget) the runner

1. loads the SAME starting checkpoint (the cached SFT warm start of :mod:`rlavr.bench.models`, or ``--model``);
2. trains it with :class:`rlavr.trl.RLAVRGRPOTrainer` for ``steps`` optimiser steps of ``prompts_per_step``
   prompts x ``num_generations`` rollouts, with TRL seed ``s`` (so every arm of a seed sees the same prompt
   order and, until their policies diverge, the same samples), the task's :class:`~rlavr.bench.tasks.AnswerReward`
   and the strategy's acquisition within the budget;
3. evaluates greedy accuracy on the first ``curve_eval_size`` held-out items every ``eval_every`` steps (the
   curves) and, at the end, greedy accuracy, mean@k, pass@k and majority@k on the whole held-out set (samples
   drawn at the training ``temperature``).

Budgets. ``gt`` is full supervision (unlimited budget: every prompt is labelled) and ``ttrl`` buys nothing (budget
0), whatever ``budgets`` says; they are run once per seed and are the two references. ``name@budget`` forces a
budget for one strategy (``gt@0.2``: ground truth for the first 20 % of prompts, the rest dropped). Every other
strategy runs at every budget in ``budgets``.

"% of GT" of an arm is its final greedy accuracy divided by that of ``gt`` with the same seed (per seed, then
averaged). Everything is written under ``output_dir`` (see :func:`run_bench`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rlavr.bench.evaluate import EvalResult, evaluate
from rlavr.bench.models import REGIMES, SFTConfig, TinyModelConfig, load_model, warm_start
from rlavr.bench.tasks import Task, get_task
from rlavr.budget import Budget, budget_value

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

logger = logging.getLogger(__name__)

__all__ = ["ArmResult", "ArmSpec", "BenchConfig", "BenchResult", "default_output_dir", "plan_arms", "run_arm",
           "run_bench", "split_strategy_spec"]

BUDGET_FREE: dict[str, float] = {"gt": 1.0, "ground-truth": 1.0, "ttrl": 0.0, "ttrl-mask": 0.0}
"""Strategies whose natural budget does not depend on ``budgets``: GT labels everything, TTRL nothing."""


def split_strategy_spec(spec: str) -> tuple[str, float | int | str | None]:
    """``"care@0.2"`` -> ``("care", 0.2)``; ``"care"`` -> ``("care", None)`` (no forced budget).

    Raises:
        ValueError: an empty name or an empty or unparsable budget after ``@`` (naming the spec).
    """
    name, sep, forced = spec.partition("@")
    name = name.strip()
    if not name:
        raise ValueError(f"strategies: empty strategy name in {spec!r}")
    if not sep:
        return name, None
    forced = forced.strip()
    if not forced:
        raise ValueError(f"strategies: empty budget after '@' in {spec!r}; write e.g. '{name}@0.2' "
                         f"(or '{name}@unlimited'), or drop the '@' to run it at every budget")
    value = budget_value(forced)
    try:
        Budget.parse(value)
    except ValueError as exc:
        raise ValueError(f"strategies: bad budget {forced!r} in {spec!r}: {exc}") from None
    return name, value


def build_strategy(name: str, kwargs: Mapping[str, Any]) -> Any:
    """Build a strategy for ``rlavr bench`` / ``rlavr replay`` (registry lookup, ``file.py:Class`` import,
    constructor keywords), turning every failure into a ``ValueError`` that names ``strategies`` or
    ``strategy_kwargs``, so that an unknown name or a bad keyword is a config error, before any work."""
    from pydantic import ValidationError

    from rlavr.strategies import get_strategy

    try:
        return get_strategy(name, **dict(kwargs))
    except ValidationError as exc:  # a strategy's own pydantic config rejected a keyword
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise ValueError(f"strategy_kwargs: {name!r}: {loc}: {err['msg']} (got {err.get('input')!r})") from None
    except ValueError as exc:
        where = f"strategy_kwargs: {name!r}" if kwargs else "strategies"
        raise ValueError(f"{where}: {str(exc).removeprefix('strategy: ')}") from None
    except Exception as exc:  # a user file that fails to import, a constructor that raises TypeError, ...
        raise ValueError(f"strategies: could not build strategy {name!r} with strategy_kwargs {dict(kwargs)!r}: "
                         f"{type(exc).__name__}: {exc}") from None


class BenchConfig(BaseModel):
    """Configuration of ``rlavr bench`` (every field is a command-line option; see ``docs/benchmarks.md``).

    Attributes:
        task / task_kwargs: the task (``addition``, ``knights_knaves``, ``math``) and its config fields.
        strategies: strategy names (registry names, ``-mask`` forms, ``file.py:Class``; ``name@budget`` forces
            a budget for that strategy).
        budgets: label budgets (anything :meth:`rlavr.budget.Budget.parse` takes: ``0.2``, ``"20%"``, ``500``).
        seeds: TRL seeds; each seed runs every arm.
        steps: optimiser steps per arm; prompts_per_step: distinct prompts per step; num_generations: G.
        learning_rate / lr_scheduler / temperature / beta / loss_type: GRPO settings.
        model: a local folder or hub name loaded with ``from_pretrained`` instead of the tiny warm start.
        tiny_model / sft: the tiny model and its warm start (ignored with ``model``).
        eval_every / curve_eval_size: the learning-curve evaluation; eval_k: samples for mean@k at the end.
        strategy_kwargs: per-strategy constructor keywords, keyed by strategy name.
        drop_mode: how dropped groups leave the loss (``zero_adv`` as in CARE's code, or ``mask``).
        log_rollouts: write each arm's rollout JSONL (for ``rlavr replay``).
        log_features: also log mean log-probs and last-token hidden states in it (``RLAVRConfig.
            rollout_log_features``), so that replay can score Prob, PBC and CARE on any arm's rollouts; implies
            ``log_rollouts``. Costs a feature pass per step in arms whose strategy does not need these signals.
        output_dir: results folder (default ``./rlavr_runs/<timestamp>``).
        cache_dir: warm-start cache (default ``$RLAVR_CACHE`` or ``~/.cache/rlavr``).
        data_seed: seed of the train/eval data (the same for every arm and seed).
        device: ``"cpu"`` (the embedded default, reproducible on any machine), ``"cuda"`` (fails with a clear
            error when CUDA is unavailable) or ``"auto"`` (CUDA when available). The tiny model's SFT warm start
            always runs on the CPU, so its cached checkpoint is the same everywhere.
        bf16: train in bfloat16 mixed precision (CUDA only).
        use_vllm: generate with vLLM through TRL's ``use_vllm`` in ``colocate`` mode (CUDA and ``pip install
            rlavr[vllm]`` needed; the import is lazy and a missing vLLM is a clear error).
        start_model: where the tiny model's start comes from (ignored with ``model``): ``"auto"`` (default) takes
            the start model shipped with rlavr when one matches the task, model and SFT configs exactly (the
            default task's does), the same weights on every machine, else builds one by SFT here (cached);
            ``"sft"`` always builds by SFT (cached per library versions, thread count and CPU kernel family).
        threads: torch's intra-op CPU threads for the whole run (``torch.set_num_threads``); ``0`` keeps torch's
            default (one per core). Fixed at 2 by default because the float rounding of CPU kernels, hence the
            trained weights and the table, depends on the thread count: the same count on every machine keeps
            runs comparable. Recorded in ``results.json`` with the library versions.
        regime: the start model's quality on the default task (tiny model only): ``"low"``, ``"mid"`` (the default
            start) or ``"high"``, a majority vote over 8 samples right on about 30 / 50 / 70 % of held-out items.
            Sets ``sft.steps`` to :data:`rlavr.bench.models.REGIMES` (a shipped start model for each); giving
            another ``sft.steps`` as well is an error.
        resume: continue the benchmark in ``output_dir`` (which must then be given): finished arms whose recorded
            config hash matches are kept, interrupted or changed arms rerun from scratch, arms of new strategies,
            budgets or seeds are added, and the table is rebuilt over every finished arm of the folder. Every
            other setting must equal the folder's first run (``bench_config.json``), else a ``ValueError``.
    """

    model_config = ConfigDict(extra="forbid")

    task: str = "addition"
    task_kwargs: dict[str, Any] = Field(default_factory=dict)
    strategies: list[str] = Field(default_factory=lambda: ["gt", "ttrl", "random", "entropy", "care"])
    budgets: list[float | int | str] = Field(default_factory=lambda: [0.2])  # type: ignore[arg-type]
    seeds: list[int] = Field(default_factory=lambda: [0, 1])
    steps: int = Field(default=250, ge=1)
    prompts_per_step: int = Field(default=16, ge=1)
    num_generations: int = Field(default=8, ge=2)
    learning_rate: float = Field(default=5e-5, gt=0.0, le=1.0)
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    temperature: float = Field(default=1.0, gt=0.0)
    beta: float = Field(default=0.0, ge=0.0)
    loss_type: str = "dapo"
    model: str | None = None
    tiny_model: TinyModelConfig = Field(default_factory=TinyModelConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    eval_every: int = Field(default=25, ge=1)
    curve_eval_size: int = Field(default=200, ge=1)
    eval_k: int = Field(default=8, ge=0)
    strategy_kwargs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    drop_mode: Literal["zero_adv", "mask"] = "zero_adv"
    log_rollouts: bool = False
    log_features: bool = False
    output_dir: Path | None = None
    cache_dir: Path | None = None
    data_seed: int = Field(default=0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    bf16: bool = False
    use_vllm: bool = False
    start_model: Literal["auto", "sft"] = "auto"
    threads: int = Field(default=2, ge=0, le=1024)
    resume: bool = False
    regime: Literal["low", "mid", "high"] | None = None

    def resolved_device(self) -> str:
        """``"cpu"`` or ``"cuda"``: where the arms train, after checking this machine can do what was asked.

        Raises:
            ValueError: ``cuda`` requested without CUDA, or ``bf16`` / ``use_vllm`` on a CPU-only run.
            ImportError: ``use_vllm`` without vLLM installed (found without importing it).
        """
        import torch

        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device: 'cuda' requested but torch.cuda.is_available() is False "
                             f"(torch {torch.__version__}); use --device cpu or install a CUDA build of torch")
        if device == "cpu" and (self.bf16 or self.use_vllm):
            raise ValueError(f"device: resolved to 'cpu' (no CUDA here), but bf16={self.bf16} / "
                             f"use_vllm={self.use_vllm} need a GPU")
        if self.use_vllm:
            from rlavr.trl.config import check_vllm_available  # not .trainer: TRL imports a broken vLLM

            check_vllm_available()
        return device

    @field_validator("strategies")
    @classmethod
    def _strategies(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one strategy is needed")
        out = [s.strip() for s in v]
        if any(not s for s in out):
            raise ValueError(f"empty strategy name in {v!r}")
        if len(set(out)) != len(out):
            raise ValueError(f"duplicate strategies in {v!r}")
        return out

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, v: list[float | int | str]) -> list[float | int | str]:
        if not v:
            raise ValueError("at least one budget is needed")
        for b in v:
            Budget.parse(b)  # raises a ValueError naming the value
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("at least one seed is needed")
        if any(s < 0 for s in v) or len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct ints >= 0, got {v!r}")
        return v

    @model_validator(mode="after")
    def _check(self) -> BenchConfig:
        get_task(self.task, **self.task_kwargs)  # validates the task config early
        names = [split_strategy_spec(spec)[0] for spec in self.strategies]  # bad 'name@budget' forms raise
        unknown = set(self.strategy_kwargs) - set(names)
        if unknown:
            raise ValueError(f"strategy_kwargs: keys {sorted(unknown)} are not among the strategies {self.strategies}")
        for name in dict.fromkeys(names):
            build_strategy(name, self.strategy_kwargs.get(name, {}))
        arms = [a.arm for a in plan_arms(self) if a.seed == self.seeds[0]]
        twice = sorted({a for a in arms if arms.count(a) > 1})
        if twice:
            raise ValueError(f"strategies: arms {twice} would run twice (strategies {self.strategies} with budgets "
                             f"{self.budgets}); each arm writes the same folder, so list it once")
        if self.regime is not None:
            steps = REGIMES[self.regime]
            if self.model is not None:
                raise ValueError(f"regime: sets the tiny model's start; got regime={self.regime!r} with model="
                                 f"{self.model!r}")
            if self.sft.steps not in (SFTConfig().steps, steps):
                raise ValueError(f"regime: {self.regime!r} means {steps} SFT steps; got sft.steps={self.sft.steps} "
                                 "as well (give one of them)")
            self.sft = self.sft.model_copy(update={"steps": steps})
        if self.resume and self.output_dir is None:
            raise ValueError("resume: needs the benchmark folder to continue (--resume DIR / output_dir)")
        for flag in ("bf16", "use_vllm"):
            if getattr(self, flag) and self.device == "cpu":
                raise ValueError(f"{flag}: needs a GPU; got {flag}=True with device='cpu' (use device 'cuda' or 'auto')")
        return self

    def get_task(self) -> Task:
        return get_task(self.task, **self.task_kwargs)


@dataclass(frozen=True)
class ArmSpec:
    """One training run: a strategy at a budget with a seed."""

    strategy: str
    budget: float | int | str
    seed: int

    @property
    def budget_label(self) -> str:
        b = Budget.parse(self.budget)
        if b.ratio is not None and b.total is None and b.per_step is None and b.per_step_ratio is None:
            return f"{b.ratio:.0%}"
        return b.describe() if not b.is_unlimited else "100%"

    @property
    def arm(self) -> str:
        """``strategy@budget`` (the row of the results table)."""
        return f"{self.strategy}@{self.budget_label}"

    @property
    def name(self) -> str:
        return f"{self.arm}-seed{self.seed}"

    @property
    def slug(self) -> str:
        """The arm's folder name: :attr:`name` with every character but letters, digits, ``-``, ``_`` and ``.``
        replaced by ``_`` (``gt@100%-seed0`` -> ``gt_100_-seed0``). Kept as is on purpose: ``--resume`` finds the
        finished arms of existing folders by it (see docs/benchmarks.md, "Arm folder names")."""
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in self.name)


RESUME_FREE_FIELDS = ("strategies", "budgets", "seeds", "strategy_kwargs", "output_dir", "resume")
"""BenchConfig fields a ``--resume`` may change (they add arms); every other field must equal the first run's."""
BENCH_CONFIG_FILE = "bench_config.json"


def base_config(cfg: BenchConfig) -> dict[str, Any]:
    """The settings every arm of one benchmark folder shares (the config less :data:`RESUME_FREE_FIELDS`)."""
    data: dict[str, Any] = json.loads(cfg.model_dump_json())
    return {k: v for k, v in data.items() if k not in RESUME_FREE_FIELDS}


def arm_config_hash(cfg: BenchConfig, spec: ArmSpec, start_sha256: str | None) -> str:
    """Hash of everything that determines one arm's result: the shared settings, the arm (strategy, budget,
    seed), its strategy's keyword arguments and the start model's weights. ``--resume`` keeps a finished arm only
    when the hash recorded in its ``result.json`` equals this. ``strategy_seed`` records that the strategy's RNG
    follows the arm's seed (since rlavr seeds it from TRL's ``seed``); arms finished before that drew from seed 0
    in every arm and are re-run."""
    kwargs = cfg.strategy_kwargs.get(spec.strategy, {})
    payload = {"base": base_config(cfg), "strategy": spec.strategy, "budget": spec.budget, "seed": spec.seed,
               "strategy_kwargs": kwargs, "start": start_sha256,
               "strategy_seed": kwargs.get("seed", spec.seed)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_resume(cfg: BenchConfig, out: Path) -> None:
    """Refuse a ``--resume`` whose shared settings differ from the folder's first run (naming each field)."""
    saved_file = out / BENCH_CONFIG_FILE
    if not saved_file.is_file():
        if (out / "arms").is_dir():
            raise ValueError(f"resume: {out} has arms but no {BENCH_CONFIG_FILE} (not written by this version of "
                             "rlavr bench); rerun into a new --output-dir")
        return
    saved = json.loads(saved_file.read_text()).get("base", {})
    now = base_config(cfg)
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if diff:
        detail = "; ".join(f"{k}: {saved.get(k)!r} there, {now.get(k)!r} now" for k in diff)
        raise ValueError(f"resume: the settings differ from the benchmark in {out} ({detail}); resume with the same "
                         "options (only --strategies, --budgets, --seeds and --strategy-kwargs may change) or use a "
                         "new --output-dir")


def load_finished_arms(out: Path) -> dict[str, ArmResult]:
    """The finished arms of a benchmark folder, by slug (an arm is finished when its ``result.json`` exists:
    it is written last, atomically)."""
    found: dict[str, ArmResult] = {}
    for f in sorted((out / "arms").glob("*/result.json")):
        try:
            found[f.parent.name] = ArmResult.from_dict(json.loads(f.read_text()))
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("rlavr bench: ignoring unreadable %s (%s); the arm reruns if planned", f, exc)
    return found


def table_order(out: Path, arms: Sequence[ArmResult]) -> list[ArmResult]:
    """``arms`` in a stable table order across sittings: the arms already in the folder's ``results.json`` keep its
    order, the others follow in the order given (so a ``--resume`` that lists fewer or other strategies does not
    reshuffle the table)."""
    try:
        before = [(str(a["arm"]), int(a["seed"])) for a in json.loads((out / "results.json").read_text())["arms"]]
    except (OSError, ValueError, KeyError, TypeError):
        before = []
    rank = {key: i for i, key in reversed(list(enumerate(before)))}
    return sorted(arms, key=lambda a: rank.get((a.spec.arm, a.spec.seed), len(rank)))  # stable: new arms keep order


def plan_arms(cfg: BenchConfig) -> list[ArmSpec]:
    """The arms to run, seed-major (see module docstring for the budget rules)."""
    arms: list[ArmSpec] = []
    for seed in cfg.seeds:
        for spec in cfg.strategies:
            name, forced = split_strategy_spec(spec)
            if forced is not None:
                arms.append(ArmSpec(name, forced, seed))
            elif name.lower() in BUDGET_FREE:
                arms.append(ArmSpec(name, BUDGET_FREE[name.lower()], seed))
            else:
                arms.extend(ArmSpec(name, b, seed) for b in cfg.budgets)
    return arms


@dataclass
class ArmResult:
    """What one arm produced (see :meth:`to_dict` for the JSON layout)."""

    spec: ArmSpec
    final: EvalResult
    curve: list[dict[str, float]]
    labels_bought: int
    prompts_seen: int
    wall_seconds: float
    train_seconds: float
    steps: int
    history_summary: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    config_hash: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ArmResult:
        """Inverse of :meth:`to_dict` (an arm kept by ``--resume``)."""
        return cls(spec=ArmSpec(str(d["strategy"]), d["budget"], int(d["seed"])),
                   final=EvalResult.from_dict(d["final"]), curve=list(d.get("curve", [])),
                   labels_bought=int(d["labels_bought"]), prompts_seen=int(d["prompts_seen"]),
                   wall_seconds=float(d.get("wall_seconds", 0.0)), train_seconds=float(d.get("train_seconds", 0.0)),
                   steps=int(d.get("steps", 0)), history_summary=dict(d.get("history_summary", {})),
                   error=d.get("error"), config_hash=d.get("config_hash"))

    def to_dict(self) -> dict[str, Any]:
        return {"config_hash": self.config_hash,
                "strategy": self.spec.strategy, "budget": self.spec.budget, "budget_label": self.spec.budget_label,
                "arm": self.spec.arm, "seed": self.spec.seed, "final": self.final.to_dict(),
                "curve": self.curve, "labels_bought": self.labels_bought, "prompts_seen": self.prompts_seen,
                "label_ratio": self.labels_bought / self.prompts_seen if self.prompts_seen else 0.0,
                "wall_seconds": self.wall_seconds, "train_seconds": self.train_seconds, "steps": self.steps,
                "history_summary": self.history_summary, "error": self.error}


@dataclass
class BenchResult:
    """The whole benchmark: config, starting point, arms, and where the files are."""

    config: BenchConfig
    start: EvalResult
    model_info: dict[str, Any]
    arms: list[ArmResult]
    output_dir: Path
    wall_seconds: float
    environment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"config": json.loads(self.config.model_dump_json()), "start": self.start.to_dict(),
                "model": self.model_info, "environment": self.environment,
                "arms": [a.to_dict() for a in self.arms], "wall_seconds": self.wall_seconds}


def default_output_dir() -> Path:
    return Path("rlavr_runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


# ================================================================================================ one arm


def _summarise_history(history: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Means over the run of the per-round metrics that say how good the labels were."""
    keys = ("label_accuracy", "pseudo_label_accuracy", "reward_accuracy", "ground_truth_reward", "majority_ratio",
            "route/query", "route/pseudo", "route/drop", "query_vote_wrong_ratio", "query_no_signal_ratio")
    out: dict[str, float] = {}
    for k in keys:
        vals = [float(h[k]) for h in history if k in h and h[k] is not None and math.isfinite(float(h[k]))]
        if vals:
            out[k] = sum(vals) / len(vals)
    return out


def _quiet_libraries() -> None:
    """TRL/transformers talk a lot at INFO/WARNING level on CPU; the benchmark reports its own progress."""
    for name in ("transformers", "trl", "accelerate", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="trl")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_arm(cfg: BenchConfig, spec: ArmSpec, model_path: str, task: Task, train_rows: Sequence[Mapping[str, str]],
            eval_rows: Sequence[Mapping[str, str]], arm_dir: Path,
            on_step: Callable[[int, dict[str, float]], None] | None = None) -> ArmResult:
    """Train one arm from ``model_path`` and evaluate it (see module docstring)."""
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback

    from rlavr.trl import RLAVRConfig, RLAVRGRPOTrainer

    _quiet_libraries()
    t_wall = time.perf_counter()
    arm_dir.mkdir(parents=True, exist_ok=True)
    model, tok = load_model(model_path)
    curve_rows = list(eval_rows[: cfg.curve_eval_size])
    curve: list[dict[str, float]] = []

    device = cfg.resolved_device()
    gpu_kwargs: dict[str, Any] = {"use_vllm": True, "vllm_mode": "colocate"} if cfg.use_vllm else {}
    args = RLAVRConfig(
        output_dir=str(arm_dir / "trainer"), use_cpu=device == "cpu", bf16=cfg.bf16, report_to="none",
        save_strategy="no", **gpu_kwargs,
        disable_tqdm=True, gradient_checkpointing=False, seed=spec.seed, data_seed=spec.seed,
        per_device_train_batch_size=cfg.prompts_per_step * cfg.num_generations,
        num_generations=cfg.num_generations, max_completion_length=task.max_completion_length,
        max_steps=cfg.steps, learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=0, temperature=cfg.temperature, beta=cfg.beta, loss_type=cfg.loss_type,
        logging_steps=max(1, cfg.eval_every), log_completions=False,
        strategy=spec.strategy, strategy_kwargs=dict(cfg.strategy_kwargs.get(spec.strategy, {})),
        budget=spec.budget, ledger_path=str(arm_dir / "ledger.sqlite"), answer_space=task.answer_space.name,
        id_column="id", label_column="answer", drop_mode=cfg.drop_mode, on_oracle_failure="auto",
        rollout_log_path=str(arm_dir / "rollouts.jsonl") if cfg.log_rollouts or cfg.log_features else None,
        rollout_log_features=cfg.log_features,
    )
    for stale in ("ledger.sqlite", "rollouts.jsonl"):
        if (arm_dir / stale).exists():
            (arm_dir / stale).unlink()

    class _Curve(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            step = int(state.global_step)
            info: dict[str, float] = {"labels_bought": float(trainer.budget_spent)}
            if step % cfg.eval_every == 0 or step == cfg.steps:
                ev = evaluate(trainer.model, tok, task, curve_rows, k=0)  # type: ignore[arg-type]
                info["greedy_accuracy"] = ev.greedy_accuracy
                curve.append({"step": float(step), "labels_bought": float(trainer.budget_spent),
                              "greedy_accuracy": ev.greedy_accuracy})
            if on_step is not None:
                on_step(step, info)

    trainer = RLAVRGRPOTrainer(model=model, reward_funcs=[task.reward_function("answer")], args=args,
                               train_dataset=Dataset.from_list([dict(r) for r in train_rows]),
                               processing_class=tok, answer_space=task.answer_space, callbacks=[_Curve()])
    trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout; the progress bars report
    t_train = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - t_train
    final = evaluate(trainer.model, tok, task, eval_rows, k=cfg.eval_k,  # type: ignore[arg-type]
                     temperature=cfg.temperature, seed=spec.seed)
    history = list(trainer.rlavr_history)
    with open(arm_dir / "history.jsonl", "w", encoding="utf-8") as f:
        for h in history:
            f.write(json.dumps(h, default=float) + "\n")
    result = ArmResult(spec=spec, final=final, curve=curve, labels_bought=int(trainer.budget_spent),
                       prompts_seen=int(trainer.engine.ledger.prompts_seen), wall_seconds=0.0,
                       train_seconds=train_seconds, steps=int(trainer.state.global_step),
                       history_summary=_summarise_history(history))
    trainer.engine.ledger.close()
    result.wall_seconds = time.perf_counter() - t_wall
    result.config_hash = arm_config_hash(cfg, spec, _start_sha256(model_path))
    tmp = arm_dir / "result.json.tmp"  # written last and atomically: its presence marks a finished arm
    tmp.write_text(json.dumps(result.to_dict(), indent=2, default=float))
    os.replace(tmp, arm_dir / "result.json")
    return result


def _start_sha256(model_path: str | Path) -> str | None:
    from rlavr.bench.models import file_sha256

    weights = Path(model_path) / "model.safetensors"
    return file_sha256(weights) if weights.is_file() else None


# ================================================================================================ the benchmark


def prepare_model(cfg: BenchConfig, task: Task, console: Console | None = None) -> tuple[str, dict[str, Any]]:
    """The starting checkpoint: ``cfg.model`` as given, or the cached tiny warm start (built if missing)."""
    if cfg.model is not None:
        return cfg.model, {"source": "from_pretrained", "model": cfg.model}
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]SFT warm start[/]"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), console=console,
                  transient=True, disable=console is None) as progress:
        bar = progress.add_task("sft", total=cfg.sft.steps, loss=float("nan"))

        def on_step(step: int, loss: float) -> None:
            progress.update(bar, completed=step, loss=loss)

        path, meta = warm_start(task, cfg.tiny_model, cfg.sft, data_seed=cfg.data_seed, cache_dir=cfg.cache_dir,
                                on_step=on_step, use_shipped=cfg.start_model == "auto")
    return str(path), {"source": "tiny-shipped" if meta.get("shipped") else "tiny-sft", "path": str(path), **meta}


def environment_info(model_path: str | Path | None = None) -> dict[str, Any]:
    """What the numbers of a run depend on besides its config: library versions, Python, platform, torch's
    thread count and CPU kernel family, and the SHA-256 of the start model's weights (``model.safetensors``)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    versions: dict[str, str | None] = {}
    for pkg in ("rlavr", "torch", "transformers", "trl", "accelerate", "datasets", "numpy", "tokenizers",
                "math-verify", "reasoning-gym", "scikit-learn", "scipy"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    info: dict[str, Any] = {"versions": versions, "python": platform.python_version(),
                            "platform": platform.platform(), "machine": platform.machine(),
                            "torch_threads": torch.get_num_threads(),
                            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                            "cuda": torch.version.cuda if torch.cuda.is_available() else None}
    info["start_model_sha256"] = None if model_path is None else _start_sha256(model_path)
    return info


START_FILE = "start.json"
"""The start model's evaluation, kept in the results folder so that ``--resume`` does not evaluate it again."""


def _start_key(cfg: BenchConfig, env: Mapping[str, Any]) -> str:
    """Hash of what the start evaluation depends on: the shared settings (task, held-out set, ``eval_k``,
    temperature, ``curve_eval_size``, device, threads, ...) and the environment (start model's SHA-256, library
    versions, thread count, CPU kernel family)."""
    payload = {"base": base_config(cfg), "environment": env}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_start(cfg: BenchConfig, out: Path, env: Mapping[str, Any], start: EvalResult, start_curve: float) -> None:
    """Write ``start.json`` (atomically) for a later ``--resume``."""
    tmp = out / f".{START_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"key": _start_key(cfg, env), "start": start.to_dict(), "start_curve": start_curve}))
    os.replace(tmp, out / START_FILE)


def reused_start(cfg: BenchConfig, out: Path, env: Mapping[str, Any]) -> tuple[EvalResult, float] | None:
    """The start evaluation of an earlier sitting in ``out``, when the start model, the settings and the
    environment are the same (then it would give the same numbers: evaluation is seeded and deterministic on one
    machine); ``None`` otherwise. A folder written before ``start.json`` existed is read from its ``results.json``
    (its ``start`` and the step-0 point of an arm's curve) when its recorded environment matches."""
    try:
        saved = json.loads((out / START_FILE).read_text())
        if saved.get("key") == _start_key(cfg, env):
            return EvalResult.from_dict(saved["start"]), float(saved["start_curve"])
        return None
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("rlavr bench: ignoring unreadable %s (%s); evaluating the start model again",
                       out / START_FILE, exc)
        return None
    try:
        data = json.loads((out / "results.json").read_text())
        if data.get("environment") != json.loads(json.dumps(env, default=str)) or not data.get("start"):
            return None
        curve0 = next(float(a["curve"][0]["greedy_accuracy"]) for a in data["arms"]
                      if a.get("curve") and float(a["curve"][0]["step"]) == 0.0)
        start = EvalResult.from_dict(data["start"])
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return None
    save_start(cfg, out, env, start, curve0)
    return start, curve0


def run_bench(cfg: BenchConfig, console: Console | None = None) -> BenchResult:
    """Run every arm and write the results (see :mod:`rlavr.bench.report` for the files).

    Files under ``output_dir``: ``results.json`` (everything), ``results.csv`` (one row per arm),
    ``summary.md`` (the table), ``accuracy_vs_steps.png``, ``accuracy_vs_labels.png``, and per arm
    ``arms/<arm>/{result.json,history.jsonl[,rollouts.jsonl]}``, and ``bench_config.json`` (the settings
    ``resume`` checks). torch's thread count is set to ``cfg.threads`` for the run and restored after.
    """
    import torch

    before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run_bench(cfg, console)
    finally:
        torch.set_num_threads(before)


def _run_bench(cfg: BenchConfig, console: Console | None) -> BenchResult:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from rlavr.bench import report

    _quiet_libraries()
    t0 = time.perf_counter()
    out = Path(cfg.output_dir) if cfg.output_dir is not None else default_output_dir()
    out.mkdir(parents=True, exist_ok=True)
    task = cfg.get_task()
    arms = plan_arms(cfg)
    device = cfg.resolved_device()  # fail fast on a missing GPU or vLLM
    # fail fast on unknown strategies, before any training
    from rlavr.strategies import get_strategy

    for s in {a.strategy for a in arms}:
        get_strategy(s, **cfg.strategy_kwargs.get(s, {}))
    train_rows, eval_rows = task.datasets(seed=cfg.data_seed)
    model_path, model_info = prepare_model(cfg, task, console)
    env = environment_info(model_path)
    if cfg.resume:
        check_resume(cfg, out)  # before the start evaluation: a refused resume costs nothing
    reused = reused_start(cfg, out, env) if cfg.resume else None
    if reused is not None:
        start, start_curve = reused
    else:
        model, tok = load_model(model_path)
        cast(Any, model).to(device)
        start = evaluate(model, tok, task, eval_rows, k=cfg.eval_k, temperature=cfg.temperature, seed=cfg.data_seed)
        start_curve = evaluate(model, tok, task, eval_rows[: cfg.curve_eval_size], k=0).greedy_accuracy
        del model
        save_start(cfg, out, env, start, start_curve)
    if console is not None:
        if reused is not None:
            console.print(f"[dim]start evaluation reused from {out / START_FILE} (same start model, settings and "
                          "environment)[/]")
        sampled = "" if start.mean_at_k is None or start.majority_at_k is None else (
            f", mean@{cfg.eval_k} {start.mean_at_k:.1%}, majority@{cfg.eval_k} {start.majority_at_k:.1%}")
        console.print(f"[bold]start[/] {model_info.get('source')}: greedy {start.greedy_accuracy:.1%}{sampled}"
                      f" on {start.n} held-out items; {len(arms)} arms x {cfg.steps} steps -> {out}")
        console.print(f"[dim]start model sha256 {str(env['start_model_sha256'])[:16]}, torch {env['versions']['torch']}, "
                      f"{env['torch_threads']} threads, {env['cpu_capability']}[/]")
    finished = load_finished_arms(out) if cfg.resume else {}
    (out / BENCH_CONFIG_FILE).write_text(json.dumps({"base": base_config(cfg)}, indent=2, default=str))
    start_sha = env["start_model_sha256"]
    planned = {spec.slug for spec in arms}
    # arms of earlier sittings that this call does not plan stay in the table (same settings: check_resume)
    extra = [a for slug, a in finished.items() if slug not in planned]
    results: list[ArmResult] = []

    def save_partial() -> None:
        report.write_all(BenchResult(config=cfg, start=start, model_info=model_info,
                                     arms=table_order(out, results + extra),
                                     output_dir=out, wall_seconds=time.perf_counter() - t0, environment=env))

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
                  disable=console is None) as progress:
        overall = progress.add_task("[bold]arms", total=len(arms), info="")
        for spec in arms:
            bar = progress.add_task(f"  {spec.name}", total=cfg.steps, info="")

            def on_step(step: int, info: dict[str, float], _bar: Any = bar) -> None:
                txt = f"labels {int(info['labels_bought'])}"
                if "greedy_accuracy" in info:
                    txt += f" acc {info['greedy_accuracy']:.1%}"
                progress.update(_bar, completed=step, info=txt)

            kept = finished.get(spec.slug)
            if kept is not None and kept.config_hash == arm_config_hash(cfg, spec, start_sha):
                if not kept.curve or kept.curve[0].get("step") != 0.0:
                    kept.curve.insert(0, {"step": 0.0, "labels_bought": 0.0, "greedy_accuracy": start_curve})
                results.append(kept)
                progress.update(bar, completed=cfg.steps, info=f"kept {kept.final.greedy_accuracy:.1%} (finished before)")
                progress.advance(overall)
                continue
            arm_dir = out / "arms" / spec.slug
            if cfg.resume and arm_dir.exists():  # interrupted (no result.json) or changed: restart from scratch
                shutil.rmtree(arm_dir)
            res = run_arm(cfg, spec, model_path, task, train_rows, eval_rows, arm_dir, on_step)
            res.curve.insert(0, {"step": 0.0, "labels_bought": 0.0, "greedy_accuracy": start_curve})
            results.append(res)
            save_partial()  # results.json and the table grow arm by arm: a kill loses at most the running arm
            progress.update(bar, info=f"final {res.final.greedy_accuracy:.1%} labels {res.labels_bought} "
                                      f"({res.wall_seconds:.0f}s)")
            progress.advance(overall)
    bench = BenchResult(config=cfg, start=start, model_info=model_info, arms=table_order(out, results + extra), output_dir=out,
                        wall_seconds=time.perf_counter() - t0, environment=env)
    report.write_all(bench)
    return bench
