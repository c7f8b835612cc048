r"""Models for the benchmark: a tiny Qwen3 + byte-level tokenizer built offline, an SFT warm start, a cache.

RL needs a policy that is sometimes right: a randomly initialised model never earns a reward, so the benchmark
first *warm-starts* a tiny model with supervised fine-tuning on the task (docs/design.md#the-benchmarks-tiny-model: a 1.08 M-parameter
Qwen3 trained 60 s on addition reaches about 40 % greedy accuracy, leaving room for RL to improve). The
warm-started checkpoint is cached under a key that hashes everything that determines it (task data config,
model config, SFT config, tokenizer recipe, library versions), so every strategy, seed and later run starts
from the SAME weights.

Tokenizer (docs/design.md#the-benchmarks-tiny-model): byte-level BPE with no merges, i.e. 256 byte tokens + 4 specials
(``<|pad|>``, ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``), vocabulary 260; for ASCII it is exactly
character-level, never produces an unknown token, and ``decode(encode(s)) == s``. Padding is on the left (for
generation); end of text ``<|endoftext|>``; a ChatML template is set for conversational prompts.

SFT objective: the mean cross-entropy of the target tokens (answer + end of text) given the prompt,

.. math:: \mathcal{L} = -\frac{1}{\sum_i |y_i|}\sum_i \sum_{t} \log p_\theta(y_{i,t} \mid x_i, y_{i,<t}),

prompt tokens are not trained on; AdamW with a linear warm-up to ``lr`` over ``warmup_steps`` then constant
(the recipe of docs/design.md#the-benchmarks-tiny-model). Batches are drawn with replacement from a pool of distinct train-split rows by a private
``torch.Generator``, so the run is deterministic for a given config (given the same torch build and threads).

Cache: ``$RLAVR_CACHE`` or ``~/.cache/rlavr``; checkpoints live in ``models/<key>/`` and are written to a temporary
folder first and renamed, under a file lock, so concurrent runs never see half-written weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rlavr.bench.tasks import Task

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

__all__ = [
    "REGIMES",
    "SFTConfig",
    "SPECIAL_TOKENS",
    "TinyModelConfig",
    "build_tiny_model",
    "build_tokenizer",
    "cache_root",
    "load_model",
    "recipe_key",
    "ship_start_model",
    "shipped_start_model",
    "sft_train",
    "warm_start",
    "warm_start_key",
]

SPECIAL_TOKENS = ("<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
RECIPE_VERSION = 1
"""Bump when the tokenizer/model/SFT recipe changes in a way that invalidates cached checkpoints."""
SFT_META = "rlavr_sft.json"


class TinyModelConfig(BaseModel):
    """A Qwen3 decoder built from scratch (defaults: docs/design.md#the-benchmarks-tiny-model, 4 layers, d=128, 1.08 M parameters).

    Attributes:
        num_hidden_layers, hidden_size, intermediate_size, num_attention_heads, num_key_value_heads, head_dim:
            the usual Qwen3 sizes (``head_dim * num_attention_heads`` need not equal ``hidden_size``).
        max_position_embeddings: RoPE context (no parameters; must cover prompt + completion).
        init_seed: seed of the weight initialisation (drawn under ``torch.random.fork_rng``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_hidden_layers: int = Field(default=4, ge=1, le=48)
    hidden_size: int = Field(default=128, ge=8)
    intermediate_size: int = Field(default=512, ge=8)
    num_attention_heads: int = Field(default=4, ge=1)
    num_key_value_heads: int = Field(default=4, ge=1)
    head_dim: int = Field(default=32, ge=4)
    max_position_embeddings: int = Field(default=1024, ge=16)
    init_seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> TinyModelConfig:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_key_value_heads: must divide num_attention_heads ({self.num_attention_heads}), "
                             f"got {self.num_key_value_heads}")
        return self


REGIMES: dict[str, int] = {"low": 320, "mid": 350, "high": 480}
"""Start-model regimes of the default task: SFT steps of the tiny model, chosen so that the start model's majority
vote over 8 samples is right on about 30 %, 50 % and 70 % of held-out sums. Measured on the shipped start models
(500 held-out sums, T = 1): low 35.6 %, mid 51.2 % (the default), high 68.0 % majority@8; greedy 42.2 / 53.6 /
73.6 %. SFT greedy accuracy jumps from ~1 % (200 steps) and 17 % (300) to ~70 % (400 steps), which is why the
regimes are shipped artefacts and not a formula (``docs/benchmarks.md``, "Regimes")."""


class SFTConfig(BaseModel):
    """Supervised warm start (defaults: ~60 s on 2 CPU cores; ``steps`` = the ``mid`` regime of :data:`REGIMES`).

    Attributes:
        steps: optimiser steps (a step budget, not a time budget, so the checkpoint is deterministic).
        batch_size: sequences per step.
        lr: peak AdamW learning rate; warmup_steps: linear warm-up length.
        weight_decay: AdamW weight decay.
        pool_size: distinct train-split rows batches are drawn from (with replacement).
        seed: data-order seed.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(default=350, ge=0)
    batch_size: int = Field(default=128, ge=1)
    lr: float = Field(default=1e-3, gt=0.0, le=1.0)
    warmup_steps: int = Field(default=100, ge=0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    pool_size: int = Field(default=20_000, ge=1)
    seed: int = Field(default=0, ge=0)


# ================================================================================================ building


def build_tokenizer() -> PreTrainedTokenizerBase:
    """The byte-level, no-merge tokenizer (vocabulary 260; docs/design.md#the-benchmarks-tiny-model), built offline in milliseconds."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=256 + len(SPECIAL_TOKENS), special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["0123456789+-*/= abc"], trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=None, eos_token="<|endoftext|>",
                                     pad_token="<|pad|>", padding_side="left")
    hf_tok.chat_template = CHAT_TEMPLATE
    return hf_tok


def build_tiny_model(tokenizer: PreTrainedTokenizerBase, config: TinyModelConfig | None = None) -> PreTrainedModel:
    """A randomly initialised ``Qwen3ForCausalLM`` (tied embeddings) sized for ``tokenizer``.

    The initialisation draws from a forked global RNG seeded with ``config.init_seed``, so it neither depends on
    nor disturbs the caller's RNG state.
    """
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = config or TinyModelConfig()
    qcfg = Qwen3Config(vocab_size=len(tokenizer), hidden_size=cfg.hidden_size,
                       intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_hidden_layers,
                       num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
                       head_dim=cfg.head_dim, max_position_embeddings=cfg.max_position_embeddings,
                       tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        model = Qwen3ForCausalLM(qcfg)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.eos_token_id
    return model


def load_model(path_or_name: str | Path, dtype: str = "float32") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer with ``from_pretrained`` (a local folder or a hub name).

    A tokenizer without a pad token gets its end-of-text token as pad; padding goes to the left (generation).

    Raises:
        ValueError: the path does not exist / the name cannot be loaded, or an unknown ``dtype``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in dtypes:
        raise ValueError(f"dtype: expected one of {sorted(dtypes)}, got {dtype!r}")
    spec = str(path_or_name)
    local = Path(spec).expanduser()
    if local.exists():
        spec = str(local)
    elif spec.startswith((".", "/", "~")):
        raise ValueError(f"model: local path {spec!r} does not exist")
    try:
        tok = AutoTokenizer.from_pretrained(spec)
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtypes[dtype])
    except OSError as exc:
        raise ValueError(f"model: cannot load {spec!r} with from_pretrained ({exc})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


# ================================================================================================ SFT


def _encode_pool(task: Task, tokenizer: PreTrainedTokenizerBase, rows: list[dict[str, str]]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``(N, T)`` input ids, attention mask and labels (``-100`` on prompt and padding)."""
    import torch

    eos = tokenizer.eos_token_id
    prompts = tokenizer([r["prompt"] for r in rows], add_special_tokens=False)["input_ids"]
    targets = tokenizer([task.target(r) for r in rows], add_special_tokens=False)["input_ids"]
    seqs = [p + t + [eos] for p, t in zip(prompts, targets, strict=True)]
    T = max(len(s) for s in seqs)
    n = len(seqs)
    ids = torch.full((n, T), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((n, T), -100, dtype=torch.long)
    mask = torch.zeros((n, T), dtype=torch.long)
    for i, (p, s) in enumerate(zip(prompts, seqs, strict=True)):  # one-off tokenisation, not a hot path
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        labels[i, len(p) : len(s)] = ids[i, len(p) : len(s)]
    return ids, mask, labels


def sft_train(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task,
              config: SFTConfig | None = None, data_seed: int = 0,
              on_step: Callable[[int, float], None] | None = None) -> dict[str, float]:
    """Supervised warm start on ``task`` (see module docstring). Returns ``{"loss", "steps", "seconds"}``."""
    import torch

    cfg = config or SFTConfig()
    if cfg.steps == 0:
        return {"loss": float("nan"), "steps": 0.0, "seconds": 0.0}
    rows = task.sft_rows(cfg.pool_size, seed=data_seed)
    ids, mask, labels = _encode_pool(task, tokenizer, rows)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0)
    model.train()
    t0 = time.perf_counter()
    loss_v = float("nan")
    for step in range(cfg.steps):
        idx = torch.randint(0, ids.shape[0], (cfg.batch_size,), generator=gen)
        m = mask[idx]
        width = int(m.sum(dim=1).max())  # trim the common right padding of this batch
        out = model(input_ids=ids[idx, :width], attention_mask=m[:, :width], labels=labels[idx, :width])
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        sched.step()
        loss_v = float(out.loss.detach())
        if on_step is not None:
            on_step(step + 1, loss_v)
    model.eval()
    return {"loss": loss_v, "steps": float(cfg.steps), "seconds": time.perf_counter() - t0}


# ================================================================================================ cache


def cache_root() -> Path:
    """``$RLAVR_CACHE`` if set, else ``~/.cache/rlavr``."""
    env = os.environ.get("RLAVR_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rlavr"


def recipe_key(task: Task, model_config: TinyModelConfig, sft_config: SFTConfig, data_seed: int = 0) -> str:
    """Hash of the warm start's *recipe* (task data config, model config, SFT config, tokenizer recipe), without
    the machine: the name under which a shipped start model is found (:func:`shipped_start_model`)."""
    payload = {"recipe": RECIPE_VERSION, "task": task.fingerprint(), "model": model_config.model_dump(),
               "sft": sft_config.model_dump(), "data_seed": data_seed}
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return f"{task.name}-{hashlib.sha256(blob).hexdigest()[:16]}"


def warm_start_key(task: Task, model_config: TinyModelConfig, sft_config: SFTConfig, data_seed: int = 0) -> str:
    """Hash of everything that determines an SFT-built checkpoint: the recipe (:func:`recipe_key`) and the
    machine's side of it, i.e. the torch and transformers versions, torch's intra-op thread count and the CPU
    kernel family torch dispatches to (``torch.backends.cpu.get_cpu_capability()``). SFT is deterministic for
    a fixed key but chaotic across any of these (a different thread count alone moved greedy accuracy by
    ~10 points), so a cached checkpoint is never reused across them."""
    from importlib.metadata import version

    import torch

    payload = {"recipe": recipe_key(task, model_config, sft_config, data_seed),
               "torch": version("torch"), "transformers": version("transformers"),
               "threads": torch.get_num_threads(), "cpu": torch.backends.cpu.get_cpu_capability()}
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return f"{task.name}-{hashlib.sha256(blob).hexdigest()[:16]}"


# ================================================================================================ shipped


SHIPPED_DIR = Path(__file__).resolve().parent / "start_models"
"""Start models shipped with the package: ``start_models/<recipe key>/`` (``from_pretrained`` folders)."""
MANIFEST = "manifest.json"


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file (hex), read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def shipped_start_model(task: Task, model_config: TinyModelConfig | None = None,
                        sft_config: SFTConfig | None = None, data_seed: int = 0) -> tuple[Path, dict[str, Any]] | None:
    """The start model shipped with rlavr for exactly this recipe, or ``None`` when none is shipped.

    The default benchmark starts from a FIXED artefact rather than from an SFT run on the user's machine: SFT of
    the tiny model is chaotic across thread counts, CPU kernels and library versions (the same recipe gave
    greedy accuracies from 31 % to 53 % on different set-ups), so a table measured from one build could not be
    reproduced from another. The folder's ``manifest.json`` records the SHA-256 of every file; each is checked
    here, and a mismatch (a damaged install) is an error, never a silent different start.

    Raises:
        ValueError: a shipped file is missing or its hash differs from the manifest (reinstall rlavr).
    """
    key = recipe_key(task, model_config or TinyModelConfig(), sft_config or SFTConfig(), data_seed)
    folder = SHIPPED_DIR / key
    if not (folder / MANIFEST).is_file():
        return None
    manifest: dict[str, Any] = json.loads((folder / MANIFEST).read_text())
    for name, digest in manifest["sha256"].items():
        f = folder / name
        if not f.is_file() or file_sha256(f) != digest:
            raise ValueError(f"start model: {f} is missing or does not match its SHA-256 in {folder / MANIFEST} "
                             f"(a damaged install: reinstall rlavr, or pass --start-model sft to build one)")
    meta: dict[str, Any] = json.loads((folder / SFT_META).read_text()) if (folder / SFT_META).is_file() else {}
    meta.update({"key": key, "shipped": True, "sha256": manifest["sha256"].get("model.safetensors"),
                 "built_with": manifest.get("built_with", {})})
    return folder, meta


def ship_start_model(checkpoint: str | Path, task: Task, model_config: TinyModelConfig | None = None,
                     sft_config: SFTConfig | None = None, data_seed: int = 0,
                     dest_root: str | Path | None = None) -> Path:
    """Copy an SFT-built checkpoint into ``start_models/<recipe key>/`` with a manifest of SHA-256 hashes and
    the environment that built it (maintainers: ``benchmarks/build_start_model.py``)."""
    import platform
    from importlib.metadata import version

    import torch

    key = recipe_key(task, model_config or TinyModelConfig(), sft_config or SFTConfig(), data_seed)
    dest = Path(dest_root or SHIPPED_DIR) / key
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(checkpoint, dest)
    hashes = {p.name: file_sha256(p) for p in sorted(dest.iterdir()) if p.is_file() and p.name != MANIFEST}
    built_with = {"torch": version("torch"), "transformers": version("transformers"),
                  "threads": torch.get_num_threads(), "cpu": torch.backends.cpu.get_cpu_capability(),
                  "python": platform.python_version(), "machine": platform.machine()}
    (dest / MANIFEST).write_text(json.dumps({"recipe_key": key, "sha256": hashes, "built_with": built_with},
                                            indent=2, sort_keys=True) + "\n")
    return dest


def warm_start(task: Task, model_config: TinyModelConfig | None = None, sft_config: SFTConfig | None = None,
               data_seed: int = 0, cache_dir: str | Path | None = None, force: bool = False,
               on_step: Callable[[int, float], None] | None = None,
               evaluate_rows: int = 200, use_shipped: bool = True) -> tuple[Path, dict[str, Any]]:
    """The SFT-warm-started tiny model for ``task``; returns ``(checkpoint folder, metadata)``.

    With ``use_shipped`` (default) and a start model shipped for exactly this recipe
    (:func:`shipped_start_model`), that fixed artefact is returned: the same weights on every machine. Otherwise
    (other tasks or configs, ``use_shipped=False`` or ``force``) the model is trained by SFT here and cached under
    :func:`warm_start_key` (recipe + library versions + thread count + CPU kernel family).

    The metadata (also saved as ``rlavr_sft.json`` in the folder) holds the configs, the parameter count, the
    SFT loss and time, and the greedy accuracy on the first ``evaluate_rows`` eval items; a shipped model's also
    holds ``shipped=True``, its weights' ``sha256`` and the environment that built it.
    """
    from rlavr.bench.evaluate import evaluate

    mcfg = model_config or TinyModelConfig()
    scfg = sft_config or SFTConfig()
    if use_shipped and not force:
        shipped = shipped_start_model(task, mcfg, scfg, data_seed)
        if shipped is not None:
            path, shipped_meta = shipped
            return path, {**shipped_meta, "cached": True}
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    key = warm_start_key(task, mcfg, scfg, data_seed)
    final = root / "models" / key
    (root / "models").mkdir(parents=True, exist_ok=True)
    with FileLock(root / "models" / f"{key}.lock"):
        if final.is_dir() and (final / SFT_META).is_file() and not force:
            cached: dict[str, Any] = json.loads((final / SFT_META).read_text())
            cached["cached"] = True
            return final, cached
        tok = build_tokenizer()
        model = build_tiny_model(tok, mcfg)
        stats = sft_train(model, tok, task, scfg, data_seed=data_seed, on_step=on_step)
        rows = task.rows("eval", min(evaluate_rows, task.eval_size), seed=data_seed)
        ev = evaluate(model, tok, task, rows, k=0)
        meta: dict[str, Any] = {"key": key, "shipped": False, "task": task.fingerprint(), "model": mcfg.model_dump(),
                                "sft": scfg.model_dump(), "data_seed": data_seed,
                                "n_params": int(sum(p.numel() for p in model.parameters())),
                                "sft_loss": stats["loss"], "sft_seconds": stats["seconds"],
                                "eval_rows": len(rows), "greedy_accuracy": ev.greedy_accuracy}
        tmp = root / "models" / f".{key}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / SFT_META).write_text(json.dumps(meta, indent=2, default=str))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    meta["sha256"] = file_sha256(final / "model.safetensors") if (final / "model.safetensors").is_file() else None
    meta["cached"] = False
    return final, meta
