"""The TRL side of the pool stage: sample the pool's prompts, generate ``G`` completions per prompt with TRL's own
``_generate`` on every process, gather them, and let :meth:`AcquisitionLoop.fit_pool
<rlavr.loop.AcquisitionLoop.fit_pool>` buy the labels and fit on the main process."""

from __future__ import annotations

import copy
import logging
import math
import time
from typing import Any

import numpy as np
import torch

from rlavr.rollouts import RowFeatures, prompt_id
from rlavr.strategies.base import Strategy
from rlavr.trl import _compat
from rlavr.trl.config import DEFAULT_POOL_CAP
from rlavr.trl.distributed import gather_rows, on_main_then_broadcast
from rlavr.trl.round import Round, local_rows, local_signals

logger = logging.getLogger(__name__)

__all__ = ["auto_fit_pool", "fit_pool", "pool_rows"]


def pool_rows(dataset: Any, strategy: Any, *, seed: int, pool_size: int | None, id_column: str,
              max_prompts: int | None) -> list[dict[str, Any]]:
    """The pool's dataset rows, identical on every process: the whole dataset when it has at most ``max_prompts``
    (else ``pool_size``, else the strategy's own :meth:`~rlavr.strategies.base.Strategy.pool_indices`, else 256)
    rows, else a sample drawn with a private generator seeded by ``seed`` (in dataset order); one row per prompt
    id.

    Raises:
        ValueError: no dataset, one that cannot be indexed or is empty, a bad ``max_prompts``, a row without
            ``prompt``.
    """
    if dataset is None:
        raise ValueError("fit_pool: no dataset; pass dataset=... or give the trainer a train_dataset")
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise ValueError(f"fit_pool: cannot sample a pool from a {type(dataset).__name__} (an IterableDataset "
                         "cannot be indexed); pass dataset=<a datasets.Dataset or a list of rows>")
    cap = max_prompts if max_prompts is not None else pool_size
    cap = DEFAULT_POOL_CAP if cap is None else cap
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ValueError(f"fit_pool.max_prompts: expected an int >= 1, got {cap!r}")
    n = len(dataset)
    if n == 0:
        raise ValueError("fit_pool: the dataset is empty")
    own = (strategy.pool_indices(n) if max_prompts is None and pool_size is None
           and isinstance(strategy, Strategy) else None)  # a pool sized by the strategy (e.g. offline PBC)
    idx = own if own is not None else range(n) if cap >= n else np.sort(
        np.random.default_rng(int(seed)).choice(n, cap, replace=False))
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i in idx:
        row = dict(dataset[int(i)])
        if "prompt" not in row:
            raise ValueError(f"fit_pool: dataset row {int(i)} has no 'prompt' column (columns: {sorted(row)})")
        pid = prompt_id(row, id_column)
        if pid not in seen:
            seen.add(pid)
            rows.append(row)
    return rows


def _generate_local(trainer: Any, rows: list[dict[str, Any]], G: int) -> tuple[list[RowFeatures],
                                                                                 torch.Tensor | None]:
    """This process' share of one pool chunk: ``G`` completions per row through TRL's own generation path
    (``_generate``: transformers, vLLM or ``rollout_func``, same sampling settings as training), then the
    features the strategy requires (log-probs / hidden states from vLLM or ONE no-grad forward)."""
    inputs = [row for row in rows for _ in range(G)]
    prompts = [x["prompt"] for x in inputs]
    out = _compat.generate_output(trainer._generate(prompts))
    rnd = Round(prompt_ids=[list(map(int, p)) for p in out.prompt_ids],
                completion_ids=[list(map(int, c)) for c in out.completion_ids], sampling_logps=out.logprobs)
    hidden, logps = local_signals(trainer, rnd, list(out.completion_ids))
    feats = local_rows(trainer, inputs, prompts, out.completions, list(out.completion_ids), logps)
    return feats, hidden


def auto_fit_pool(trainer: Any) -> None:
    """``fit_pool="auto"`` at train start: fit when the strategy has a pool stage, wants a fit (asked on the
    main process, which holds the strategy's state) and the run did not resume from a checkpoint. For a
    strategy without a pool stage nothing runs (no collective, no RNG draw)."""
    loop = trainer.rlavr_loop
    if (trainer.rlavr_settings.fit_pool != "auto" or loop.resumed or loop.pool_fitted
            or not loop.capabilities.pool_stage):
        return
    if on_main_then_broadcast(trainer.accelerator, loop.wants_pool_fit, "checking whether the strategy needs a "
                              "pool fit"):
        trainer.fit_pool()


def fit_pool(trainer: Any, dataset: Any, max_prompts: int | None) -> dict[str, float]:
    """Generate the pool on every process and fit the strategy on the main process (see
    :meth:`RLAVRGRPOTrainer.fit_pool <rlavr.trl.RLAVRGRPOTrainer.fit_pool>`); returns the recorded metrics."""
    if trainer._rlavr_round is not None:
        raise RuntimeError("fit_pool: cannot run inside a generation round")
    if trainer.environment_factories is not None:
        raise ValueError("fit_pool: environment_factory datasets are not supported; fit the strategy yourself "
                         "with trainer.engine.fit_pool(pool_batch)")
    loop, acc, args = trainer.rlavr_loop, trainer.accelerator, trainer.args
    G = trainer._group_size()
    settings = trainer.rlavr_settings
    rows = pool_rows(trainer.train_dataset if dataset is None else dataset, loop.strategy, seed=int(args.seed),
                     pool_size=settings.pool_size, id_column=settings.id_column, max_prompts=max_prompts)
    per_rank = max(1, int(args.per_device_train_batch_size) * int(args.steps_per_generation or 1) // G)
    n_proc, rank = int(acc.num_processes), int(acc.process_index)
    per_round = per_rank * n_proc
    model = trainer._policy()
    was_training = model.training
    metrics_backup = copy.deepcopy(_compat.metrics(trainer))
    tokens_seen = trainer.state.num_input_tokens_seen
    all_rows: list[RowFeatures] = []
    hidden_parts: list[np.ndarray] = []
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    t0 = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(int(args.seed) + 7919 * (rank + 1))
            model.train()  # TRL generates in train mode: num_generations, same sampling settings
            for r in range(math.ceil(len(rows) / per_round)):
                start = r * per_round + rank * per_rank
                n_real = max(0, min(per_rank, len(rows) - start))
                # every process generates the same number of groups (collectives inside): pad with the last row
                mine = [rows[min(start + k, len(rows) - 1)] for k in range(per_rank)]
                error: str | None = None
                feats: list[RowFeatures] = []
                hidden: torch.Tensor | None = None
                try:
                    feats, hidden = _generate_local(trainer, mine, G)
                except Exception as exc:  # reported on every rank below
                    error = f"rank {rank}: {type(exc).__name__}: {exc}"
                    logger.error("rlavr: pool generation failed on %s", error, exc_info=True)
                got = gather_rows(acc, feats, error, hidden=hidden, hidden_rows=per_rank * G, keep=n_real * G,
                                  hidden_size=trainer._hidden_size if trainer._rlavr_needs_hidden else None)
                got.raise_errors("pool generation")
                all_rows += got.rows
                if got.hidden is not None:
                    hidden_parts.append(got.hidden)
    finally:
        model.train(was_training)
        _compat.set_metrics(trainer, metrics_backup)
        trainer.state.num_input_tokens_seen = tokens_seen
    hidden_all = np.concatenate(hidden_parts) if hidden_parts else None
    gen_seconds = time.perf_counter() - t0
    fit = on_main_then_broadcast(acc, lambda: loop.fit_pool(all_rows, G, int(trainer.state.global_step), hidden_all),
                                 f"the pool stage of strategy {loop.strategy.name!r} (engine.fit_pool)")
    metrics = loop.record_pool_fit(fit, {"pool_generation_seconds": gen_seconds})
    logger.info("rlavr: fitted %r on a pool of %d prompts x %d completions: %s", loop.strategy.name, fit.prompts, G,
                {k: round(v, 4) for k, v in metrics.items()})
    return metrics
