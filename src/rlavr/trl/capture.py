r"""Per-rollout features for the TRL trainer: texts, prompt ids, last-token hidden states, token log-probabilities.

Hidden states (CARE, care-spec §3.1) are the decoder trunk's ``last_hidden_state`` (final layer, after the final
norm), cast to float32, at two positions of the left-padded ``prompt ⧺ completion`` sequence of length ``P + C``:

* the last prompt token, position ``P - 1`` (prompts are left-padded, so it is the same column for every row);
* the last completion token, position ``P + \ell_i - 1`` where :math:`\ell_i` is the number of completion tokens of
  row ``i`` (taken from the generated ids, not from ``completion_mask``, which ``mask_truncated_completions`` may
  zero). An empty completion (:math:`\ell_i = 0`) uses the last prompt token.

Two ways to get them, chosen by the trainer:

* :class:`LastTokenCapture` hooks the trunk during a forward TRL already runs (its no-grad "old log-probs"
  forward), so the states cost two index operations per chunk and no extra pass;
* :func:`extra_forward` runs ONE trunk-only no-grad forward (plus the LM head only when log-probabilities are
  needed too) when TRL runs no such forward.

Neither draws from the global RNG (:func:`extra_forward` runs under :func:`torch.random.fork_rng`), which keeps
GT-equivalence with stock TRL bitwise.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from rlavr.types import check_prompt_id

__all__ = [
    "LastTokenCapture",
    "RowFeatures",
    "completion_text",
    "extra_forward",
    "mean_token_logprobs",
    "prompt_id",
    "prompt_text",
    "trunk_of",
]


# ================================================================================================ texts and ids


def _content_text(content: Any) -> str:
    """Text of a chat message's ``content`` (a string or a list of typed blocks; non-text blocks are skipped)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and block.get("type", "text") == "text":
                parts.append(str(block.get("text", "")))
        return "".join(parts)
    return str(content)


def completion_text(completion: str | Sequence[dict[str, Any]]) -> str:
    """The text answers are extracted from: the string itself, or the concatenated contents of the assistant
    messages of a conversational completion (tool results are not the model's answer and are skipped)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence):
        return "".join(_content_text(m.get("content")) for m in completion
                       if isinstance(m, dict) and m.get("role", "assistant") == "assistant")
    raise ValueError(f"completion: expected a string or a list of chat messages, got {type(completion).__name__}")


def prompt_text(prompt: str | Sequence[dict[str, Any]]) -> str:
    """What the oracle sees: the prompt string, or the content of the LAST user message of a conversation (the
    question; system prompts and earlier turns are not repeated to the labeller)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Sequence):
        users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        source = users[-1:] if users else [m for m in prompt if isinstance(m, dict)][-1:]
        return "".join(_content_text(m.get("content")) for m in source)
    raise ValueError(f"prompt: expected a string or a list of chat messages, got {type(prompt).__name__}")


def prompt_id(row: dict[str, Any], id_column: str) -> str:
    """The stable prompt id of a dataset row: ``str(row[id_column])``, or, when the column is absent,
    ``"sha1:" + sha1(json(prompt, sort_keys))[:16]`` (the documented fallback; identical prompts share an id)."""
    if id_column in row and row[id_column] is not None:
        pid = str(row[id_column])
        if not pid:
            raise ValueError(f"id_column {id_column!r}: empty prompt id in row {row!r:.200}")
        return check_prompt_id(pid, f"id_column {id_column!r}")
    if "prompt" not in row:
        raise ValueError(f"id_column {id_column!r}: the row has neither this column nor a 'prompt' to hash "
                         f"(columns: {sorted(row)})")
    blob = json.dumps(row["prompt"], sort_keys=True, default=str, ensure_ascii=False)
    # surrogatepass: a prompt holding a lone surrogate still hashes to a stable, valid id
    return "sha1:" + hashlib.sha1(blob.encode("utf-8", "surrogatepass")).hexdigest()[:16]


# ================================================================================================ per-row features


@dataclass(frozen=True, slots=True)
class RowFeatures:
    """What one process knows about one of its rows (one rollout); plain data, cheap to ``gather_object``.

    Attributes:
        id: prompt id (ledger key).
        prompt: prompt text shown to the oracle.
        text: completion text.
        answer: extracted answer (``None`` = invalid rollout).
        length: completion tokens.
        truncated: the completion hit ``max_completion_length`` without EOS.
        mean_logprob: mean token log-probability (``None`` when the strategy did not ask for log-probabilities).
        token_logprobs: per-token log-probabilities (same condition).
    """

    id: str
    prompt: str
    text: str
    answer: str | None
    length: int
    truncated: bool
    mean_logprob: float | None = None
    token_logprobs: tuple[float, ...] | None = None


def mean_token_logprobs(logps: torch.Tensor, lengths: Sequence[int]) -> tuple[list[float | None], list[tuple[float, ...]]]:
    r"""Per-row mean and list of the first ``lengths[i]`` token log-probabilities of a right-padded ``(B, C)``
    tensor: :math:`\bar\ell_i = \frac{1}{\ell_i}\sum_{t<\ell_i} \log p_{i,t}`.

    Non-finite entries (vLLM reports NaN for tokens it could not score) are left out of both; a row without any
    finite entry has mean ``None``. Values are clipped to ``<= 0`` (fp round-off).
    """
    lp = logps.detach().float().cpu()
    B, C = lp.shape
    lens = torch.as_tensor(list(lengths), dtype=torch.long).clamp(max=C)
    valid = (torch.arange(C)[None, :] < lens[:, None]) & torch.isfinite(lp)
    lp = torch.where(valid, lp.clamp(max=0.0), torch.zeros_like(lp))
    count = valid.sum(dim=1)
    means = (lp.sum(dim=1) / count.clamp(min=1)).tolist()
    rows = [tuple(lp[i][valid[i]].tolist()) for i in range(B)]
    return [m if c > 0 else None for m, c in zip(means, count.tolist(), strict=True)], rows


def ragged_logprobs(values: Sequence[Sequence[float | None]] | None, lengths: Sequence[int]) -> torch.Tensor | None:
    """Right-pad ragged per-token log-probabilities (``None`` entries -> NaN) into a ``(B, C)`` tensor."""
    if values is None:
        return None
    C = max([len(v) for v in values] + [max(lengths, default=0), 1])
    out = torch.full((len(values), C), float("nan"))
    for i, row in enumerate(values):
        if len(row):
            out[i, : len(row)] = torch.tensor([float("nan") if x is None else float(x) for x in row])
    return out


# ================================================================================================ hidden states


def trunk_of(model: nn.Module) -> nn.Module:
    """The decoder trunk whose output is ``last_hidden_state`` (after the final norm).

    Follows TRL's fused LM head (``add_fused_lm_head`` calls ``model.base_model``): unwraps DDP/compile wrappers
    (``.module``), PEFT (``get_base_model()``), then takes ``base_model``.
    """
    m = model
    for _ in range(4):
        inner = getattr(m, "module", None)
        if isinstance(inner, nn.Module):
            m = inner
            continue
        orig = getattr(m, "_orig_mod", None)
        if isinstance(orig, nn.Module):
            m = orig
            continue
        break
    get_base = getattr(m, "get_base_model", None)
    if callable(get_base):
        m = get_base()
    trunk = getattr(m, "base_model", None)
    if not isinstance(trunk, nn.Module) or trunk is m:
        raise ValueError(f"hidden states: cannot find the decoder trunk of {type(m).__name__} (no `base_model` "
                         "submodule); strategies that require 'hidden_states' need a transformers causal LM")
    return trunk


class LastTokenCapture:
    """Forward hook on the trunk keeping only the last-prompt-token and last-completion-token states.

    The hook fires once per forward chunk; chunks are consecutive row ranges (TRL's ``batch_size`` chunking), so
    the rows seen so far give each chunk's offset. Only ``(rows, 2, H)`` float32 is kept, never ``(B, T, H)``.

    Args:
        trunk: the decoder trunk (:func:`trunk_of`).
        prompt_len: ``P``, the padded prompt length (sequence length minus ``logits_to_keep``).
        lengths: completion lengths of all rows of the forward, in row order.
    """

    def __init__(self, trunk: nn.Module, prompt_len: int, lengths: Sequence[int]) -> None:
        if prompt_len < 1:
            raise ValueError(f"LastTokenCapture.prompt_len: must be >= 1, got {prompt_len}")
        self.trunk = trunk
        self.prompt_len = int(prompt_len)
        self.lengths = torch.as_tensor(list(lengths), dtype=torch.long)
        self._chunks: list[torch.Tensor] = []
        self._rows = 0
        self._handle: Any = None
        self.error: str | None = None

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        h = getattr(output, "last_hidden_state", None)
        if h is None:
            h = output[0]
        b, T = h.shape[0], h.shape[1]
        lens = self.lengths[self._rows : self._rows + b].to(h.device)
        if lens.numel() != b or self.error is not None:
            # never raise inside the model's forward: the trainer sees the error and falls back
            self.error = self.error or (f"forward saw {self._rows + b} rows but {self.lengths.numel()} completion "
                                        "lengths were given")
            self._rows += b
            return
        last = (self.prompt_len + lens - 1).clamp(min=self.prompt_len - 1, max=T - 1)
        rows = torch.arange(b, device=h.device)
        hp = h[:, self.prompt_len - 1]
        hr = h[rows, last]
        self._chunks.append(torch.stack([hp, hr], dim=1).detach().float())
        self._rows += b

    def __enter__(self) -> LastTokenCapture:
        self._handle = self.trunk.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @property
    def rows(self) -> int:
        return self._rows

    def result(self) -> torch.Tensor:
        """``(B, 2, H)`` float32: ``[:, 0]`` last prompt token, ``[:, 1]`` last completion token."""
        if self.error is not None:
            raise RuntimeError(f"LastTokenCapture: {self.error}")
        if not self._chunks:
            raise RuntimeError("LastTokenCapture: the trunk hook never fired")
        out = torch.cat(self._chunks, dim=0)
        if out.shape[0] != self.lengths.numel():
            raise RuntimeError(f"LastTokenCapture: captured {out.shape[0]} rows, expected {self.lengths.numel()}")
        return out


@contextmanager
def _fork_rng(device: torch.device) -> Iterator[None]:
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if device.type != "cpu" else "cuda"):
        yield


def _left_right_pad(prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]], pad_id: int,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """``prompt`` left-padded ⧺ ``completion`` right-padded, its attention mask, ``P`` and ``C``."""
    B = len(prompt_ids)
    P = max(1, max(len(p) for p in prompt_ids))
    C = max(1, max((len(c) for c in completion_ids), default=1))
    ids = torch.full((B, P + C), pad_id, dtype=torch.long)
    mask = torch.zeros((B, P + C), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
        if len(p):
            ids[i, P - len(p) : P] = torch.as_tensor(list(p), dtype=torch.long)
            mask[i, P - len(p) : P] = 1
        if len(c):
            ids[i, P : P + len(c)] = torch.as_tensor(list(c), dtype=torch.long)
            mask[i, P : P + len(c)] = 1
    return ids.to(device), mask.to(device), P, C


def extra_forward(
    model: nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    device: torch.device,
    batch_size: int,
    need_hidden: bool,
    logps_fn: Callable[..., tuple[torch.Tensor, Any, Any]] | None = None,
    autocast: Callable[[], Any] | None = None,
    no_checkpointing: Callable[[], Any] | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """ONE no-grad forward over the rows for the features TRL did not compute.

    Args:
        model: the policy (possibly wrapped).
        prompt_ids, completion_ids: the rows' token ids (unpadded).
        pad_token_id: padding id.
        device: where to run.
        batch_size: rows per chunk (TRL's own chunking for no-grad forwards).
        need_hidden: capture last-token hidden states.
        logps_fn: when given, log-probabilities are needed too: ``logps_fn(input_ids, attention_mask,
            logits_to_keep, batch_size=...)`` (the trainer passes TRL's own ``_get_per_token_logps_and_entropies``,
            so temperature and the fused LM head match TRL exactly) and the hidden states are hooked from it.
            Otherwise the trunk alone runs (no LM head).
        autocast: context factory for mixed precision (the accelerator's).
        no_checkpointing: context factory disabling gradient checkpointing for the no-grad pass.

    Returns:
        ``(hidden (B, 2, H) float32 | None, logps (B, C) | None)``.
    """
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"extra_forward: {len(prompt_ids)} prompts but {len(completion_ids)} completions")
    if batch_size < 1:
        raise ValueError(f"extra_forward.batch_size: must be >= 1, got {batch_size}")
    if not need_hidden and logps_fn is None:
        return None, None
    ids, mask, P, C = _left_right_pad(prompt_ids, completion_ids, pad_token_id, device)
    lengths = [len(c) for c in completion_ids]
    auto = autocast if autocast is not None else nullcontext
    nockpt = no_checkpointing if no_checkpointing is not None else nullcontext
    hidden: torch.Tensor | None = None
    logps: torch.Tensor | None = None
    with torch.no_grad(), _fork_rng(device), nockpt():
        if logps_fn is not None:
            capture = LastTokenCapture(trunk_of(model), P, lengths) if need_hidden else None
            with capture if capture is not None else nullcontext():
                logps, _, _ = logps_fn(ids, mask, C, batch_size=batch_size)
            hidden = capture.result() if capture is not None else None
        else:
            trunk = trunk_of(model)
            capture = LastTokenCapture(trunk, P, lengths)
            with capture, auto():
                for start in range(0, ids.shape[0], batch_size):
                    trunk(input_ids=ids[start : start + batch_size],
                          attention_mask=mask[start : start + batch_size], use_cache=False)
            hidden = capture.result()
    return hidden, logps


def finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def stack_hidden(rows: np.ndarray) -> np.ndarray:
    """Validate a gathered ``(N, 2, H)`` hidden-state array (finite, 3-D)."""
    arr = np.asarray(rows, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[1] != 2:
        raise ValueError(f"hidden states: expected shape (rows, 2, H), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr).all(axis=(1, 2)))[0])
        raise ValueError(f"hidden states: row {bad} contains NaN or inf (policy diverged?)")
    return arr
