r"""Per-rollout features for the TRL trainer: last-token hidden states and token log-probabilities (texts and prompt
ids: :mod:`rlavr.rollouts`, re-exported here).

Hidden states (CARE, ``docs/strategies/care.md``) are the decoder trunk's ``last_hidden_state`` (final layer, after
the final norm), cast to float32, at two positions of the left-padded ``prompt ⧺ completion`` sequence of length
``P + C``:

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

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from rlavr.rollouts import RowFeatures, completion_text, prompt_id, prompt_text, stack_hidden
from rlavr.trl._compat import is_vlm

__all__ = [
    "GenerateCapture",
    "LastTokenCapture",
    "RowFeatures",
    "completion_text",
    "extra_forward",
    "generate_capture_for",
    "mean_token_logprobs",
    "prompt_id",
    "prompt_text",
    "stack_hidden",
    "trunk_of",
]


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


# ================================================================================================ during generate


class GenerateCapture:
    r"""Last-token hidden states and sampled-token log-probabilities recorded DURING ``model.generate``.

    Forward hooks on the decoder trunk and the output embeddings (LM head) watch transformers' own generation
    steps; they only read tensors (no RNG, no change to logits or sampling, so generation is bit-for-bit the
    same as without them):

    * prefill (the trunk sees the whole left-padded prompt): the state of the last prompt column, ``P - 1``;
    * decode step ``s`` (the trunk sees completion token ``s - 1``): the state of that token, kept as the row's
      last completion state until the row has fed back its first EOS (TRL's completions end at the first EOS);
    * the LM head's last-position logits of step ``s`` give ``log_softmax(logits / temperature)``, read at the
      sampled token when it is fed back at step ``s + 1``: one ``(B, V)`` row block at a time, never
      ``(B, T, V)``. The log-probabilities are at the sampling ``temperature`` and before top-k / top-p / min-p
      filtering (what TRL's own no-grad forward computes).

    The last generated token is never fed back by ``generate``; :meth:`finish` runs ONE cached single-token
    trunk step (the generation's KV cache, no LM head) for it when a row ends there (truncated rows, and rows
    whose first EOS is the last step), and reads its log-probability from the last step's logits.

    Args:
        model: the (unwrapped) causal LM that ``generate`` is called on.
        eos_token_ids: the ids that end a completion.
        need_hidden, need_logps: what to record.
        temperature: the sampling temperature (log-probabilities are of ``logits / temperature``).
    """

    def __init__(self, model: nn.Module, eos_token_ids: Sequence[int], *, need_hidden: bool, need_logps: bool,
                 temperature: float) -> None:
        if temperature <= 0:
            raise ValueError(f"GenerateCapture.temperature: must be > 0, got {temperature}")
        self.model = model
        self.trunk = trunk_of(model)
        get_head = getattr(model, "get_output_embeddings", None)
        head = get_head() if callable(get_head) else None
        if need_logps and not isinstance(head, nn.Module):
            raise ValueError(f"GenerateCapture: {type(model).__name__} has no output embeddings (LM head)")
        self.head = head
        self.eos = torch.as_tensor(sorted({int(e) for e in eos_token_ids}), dtype=torch.long)
        self.need_hidden, self.need_logps = bool(need_hidden), bool(need_logps)
        self.temperature = float(temperature)
        self.steps = 0                      # trunk calls seen (prefill + decode steps)
        self.error: str | None = None
        self._handles: list[Any] = []
        self._prompt: torch.Tensor | None = None    # (B, H)
        self._final: torch.Tensor | None = None     # (B, H) latest state of each unfinished row
        self._done: torch.Tensor | None = None      # (B,) the row fed back its first EOS
        self._pending: torch.Tensor | None = None   # (B, V) log-softmax of the last step's logits
        self._logps: list[torch.Tensor] = []        # per step (B,)
        self._last_kwargs: dict[str, Any] = {}

    # -------------------------------------------------------------- hooks (never raise inside generate)
    def _trunk_hook(self, module: nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        if self.error is not None:
            return
        try:
            ids = kwargs.get("input_ids", args[0] if args else None)
            h = getattr(output, "last_hidden_state", None)
            h = output[0] if h is None else h
            if ids is None or h is None:
                self.error = "the trunk was called without input_ids (inputs_embeds generation)"
                return
            last = h[:, -1].detach().float()
            if self.steps == 0:
                self._prompt = last
                self._final = last.clone()
                self._done = torch.zeros(last.shape[0], dtype=torch.bool, device=last.device)
            else:
                assert self._final is not None and self._done is not None
                if ids.shape[0] != self._final.shape[0]:
                    self.error = f"batch size changed during generate ({self._final.shape[0]} -> {ids.shape[0]})"
                    return
                tok = ids[:, -1]
                if self.need_logps and self._pending is not None:
                    self._logps.append(self._pending.gather(1, tok[:, None]).squeeze(1))
                live = ~self._done
                self._final = torch.where(live[:, None], last, self._final)
                self._done = self._done | torch.isin(tok, self.eos.to(tok.device))
            self._last_kwargs = {k: kwargs.get(k) for k in ("past_key_values", "cache", "position_ids",
                                                            "cache_position", "attention_mask")}
            self.steps += 1
        except Exception as exc:  # reported by finish(), the trainer falls back
            self.error = f"{type(exc).__name__}: {exc}"

    def _head_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.error is not None:
            return
        try:
            logits = output[:, -1] if output.dim() == 3 else output
            self._pending = torch.log_softmax(logits.detach().float() / self.temperature, dim=-1)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def __enter__(self) -> GenerateCapture:
        self._handles.append(self.trunk.register_forward_hook(self._trunk_hook, with_kwargs=True))
        if self.need_logps and self.head is not None:
            self._handles.append(self.head.register_forward_hook(self._head_hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    # -------------------------------------------------------------- after generate
    def finish(self, completion_ids: Sequence[Sequence[int]], no_checkpointing: Callable[[], Any] | None = None
               ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(hidden (B, 2, H) float32 | None, logps (B, T) float32 | None)`` for the rows of this generate,
        given TRL's completions (cut after the first EOS). Raises :class:`RuntimeError` when the hooks did not see
        a usable generation (the caller falls back to a forward)."""
        if self.error is not None:
            raise RuntimeError(f"GenerateCapture: {self.error}")
        if self.steps == 0 or self._final is None or self._done is None or self._prompt is None:
            raise RuntimeError("GenerateCapture: the trunk hook never fired during generate")
        B = int(self._final.shape[0])
        lengths = torch.as_tensor([len(c) for c in completion_ids], dtype=torch.long)
        if lengths.numel() != B:
            raise RuntimeError(f"GenerateCapture: generate ran {B} rows but {lengths.numel()} completions came back")
        n_gen = self.steps  # tokens generated = LM-head calls = trunk calls (prefill + decode)
        if int(lengths.max()) > n_gen:
            raise RuntimeError(f"GenerateCapture: a completion has {int(lengths.max())} tokens, generate ran "
                               f"{n_gen} steps")
        dev = self._final.device
        last_tok = torch.as_tensor([int(c[-1]) if len(c) else 0 for c in completion_ids], dtype=torch.long,
                                   device=dev)
        logps = None
        if self.need_logps:
            if self._pending is None:
                raise RuntimeError("GenerateCapture: the LM-head hook never fired during generate")
            # the last generated token's log-prob comes from the last step's logits (it is never fed back)
            steps = [*self._logps, self._pending.gather(1, last_tok[:, None]).squeeze(1)]
            logps = torch.stack(steps, dim=1)[:, :n_gen]
        hidden = None
        if self.need_hidden:
            final = self._final
            open_rows = ~self._done & (lengths.to(dev) == n_gen)   # the last valid token was never fed back
            if bool(open_rows.any()):
                final = torch.where(open_rows[:, None], self._decode_one(last_tok, no_checkpointing), final)
            empty = (lengths == 0).to(dev)
            final = torch.where(empty[:, None], self._prompt, final)
            hidden = torch.stack([self._prompt, final], dim=1)
        self._pending = None
        self._last_kwargs = {}
        return hidden, logps

    def _decode_one(self, tok: torch.Tensor, no_checkpointing: Callable[[], Any] | None) -> torch.Tensor:
        """One cached trunk step on ``tok (B,)``: continues the generation's KV cache, mask and positions."""
        kw = self._last_kwargs
        # transformers < 5.x names the cache ``past_key_values``, later versions ``cache``: pass it back the same way
        name = next((k for k in ("cache", "past_key_values") if kw.get(k) is not None), None)
        if name is None:
            raise RuntimeError("GenerateCapture: generate kept no KV cache (use_cache=False); cannot decode the "
                               "last token without a full forward")
        inputs: dict[str, Any] = {"input_ids": tok[:, None], name: kw[name], "use_cache": True}
        mask = kw.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            inputs["attention_mask"] = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        pos = kw.get("position_ids")
        if isinstance(pos, torch.Tensor):
            inputs["position_ids"] = pos[:, -1:] + 1
        cp = kw.get("cache_position")
        if isinstance(cp, torch.Tensor):
            inputs["cache_position"] = cp[-1:] + 1
        nockpt = no_checkpointing if no_checkpointing is not None else nullcontext
        with torch.no_grad(), _fork_rng(tok.device), nockpt():
            out = self.trunk(**inputs)
        h = getattr(out, "last_hidden_state", None)
        h = out[0] if h is None else h
        return h[:, -1].detach().float()


def generate_capture_for(trainer: Any, *, armed: bool, need_hidden: bool, need_logps: bool
                         ) -> tuple[GenerateCapture | None, str]:
    """The :class:`GenerateCapture` for one round of ``trainer`` (an ``RLAVRGRPOTrainer``), or ``None`` and why.

    Used on TRL's transformers ``generate`` path when the round needs features and TRL runs no no-grad policy
    forward of its own (``armed`` is False: that forward is hooked instead). Not used with vLLM (its sampling
    log-probs and TRL's forward serve), TRL's paged ``generate_batch``, tool calling or a custom ``rollout_func``
    (several or no ``generate`` calls per round), vision-language models or DeepSpeed ZeRO-3 (parameters are
    gathered only inside TRL's generation context): those rounds fall back to one extra forward.
    """
    if armed or not (need_hidden or need_logps):
        return None, "not needed"
    ds = getattr(getattr(trainer, "accelerator", None), "state", None)
    ds_plugin = getattr(ds, "deepspeed_plugin", None)
    reasons = [
        (bool(getattr(trainer, "use_vllm", False)), "vLLM generation"),
        (bool(getattr(trainer, "use_transformers_continuous_batching", False)
              or getattr(getattr(trainer, "args", None), "use_transformers_paged", False)),
         "TRL's paged generate_batch"),
        (bool(getattr(trainer, "tools", None)), "tool calling (several generate calls per round)"),
        (getattr(trainer, "rollout_func", None) is not None, "a custom rollout_func"),
        (is_vlm(trainer), "a vision-language model"),
        (ds_plugin is not None and getattr(ds_plugin, "zero_stage", 0) == 3, "DeepSpeed ZeRO-3"),
    ]
    why = [r for bad, r in reasons if bad]
    if why:
        return None, why[0]
    try:
        cap = GenerateCapture(trainer.model, list(trainer.eos_token_ids), need_hidden=need_hidden,
                              need_logps=need_logps, temperature=float(trainer.temperature))
    except ValueError as exc:
        return None, str(exc)
    return cap, "generate"
