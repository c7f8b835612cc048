"""Test helpers for rlavr.trl: a tiny offline Qwen3 + byte-level tokenizer, a toy dataset, reward functions and a
seeded rollout harness (importable by the tests and by the 2-process script, which runs outside pytest)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

SPECIALS = ["<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]

TEST_DEVICE = os.environ.get("RLAVR_TEST_DEVICE", "cpu")
"""Where the TRL tests train: ``cpu`` (CI, the default) or ``cuda`` (``benchmarks/gpu_check.py`` runs the
GT-equivalence tests on a GPU with ``RLAVR_TEST_DEVICE=cuda``)."""
if TEST_DEVICE not in ("cpu", "cuda"):
    raise ValueError(f"RLAVR_TEST_DEVICE: expected 'cpu' or 'cuda', got {TEST_DEVICE!r}")

BASE_ARGS: dict[str, Any] = dict(
    use_cpu=TEST_DEVICE == "cpu", bf16=False, report_to="none", save_strategy="no", disable_tqdm=True,
    gradient_checkpointing=False, per_device_train_batch_size=8, num_generations=4, max_completion_length=8,
    max_steps=2, seed=0, logging_steps=1, learning_rate=1e-3, beta=0.0,
)


def build_tiny_model(out: str | os.PathLike[str]) -> str:
    """Byte-level BPE with no merges (vocab 260) + a 2-layer Qwen3 (90k params), saved (docs/design.md)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    out = str(out)
    if os.path.exists(os.path.join(out, "model.safetensors")):
        return out
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=256 + len(SPECIALS), special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["0123456789+-*/= abc"], trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=None, eos_token="<|endoftext|>",
                                     pad_token="<|pad|>", padding_side="left")
    hf_tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    cfg = Qwen3Config(vocab_size=len(hf_tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                      tie_word_embeddings=True, pad_token_id=hf_tok.pad_token_id,
                      eos_token_id=hf_tok.eos_token_id, bos_token_id=hf_tok.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen3ForCausalLM(cfg)
    model.generation_config.pad_token_id = hf_tok.pad_token_id
    model.generation_config.eos_token_id = hf_tok.eos_token_id
    model.save_pretrained(out)
    hf_tok.save_pretrained(out)
    return out


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def make_dataset(n: int = 32, with_id: bool = True, small: bool = False) -> Any:
    """``n`` addition prompts ``"a+b="`` with string answers (and ids ``p0..``). ``small=True`` maps the answers
    to ``(a+b) % 4 + 1`` so that they fall in :class:`SeededRollouts`' default choices (queried groups then get
    non-constant rewards)."""
    from datasets import Dataset

    rng = np.random.default_rng(1234)
    a = rng.integers(0, 10, size=n)
    b = rng.integers(0, 10, size=n)
    data: dict[str, list[Any]] = {"prompt": [f"{x}+{y}=" for x, y in zip(a, b, strict=True)],
                                  "answer": [str(int((x + y) % 4 + 1 if small else x + y)) for x, y in zip(a, b, strict=True)]}
    if with_id:
        data = {"id": [f"p{i}" for i in range(n)], **data}
    return Dataset.from_dict(data)


def overlap_reward(completions: Sequence[str], answer: Sequence[str], **kwargs: Any) -> list[float]:
    """A graded, label-dependent reward that is rarely constant within a group, even for a random model: the
    share of the label's characters present in the completion plus a small length-dependent term."""
    out = []
    for c, a in zip(completions, answer, strict=True):
        chars = set(str(a))
        out.append(sum(ch in c for ch in chars) / max(1, len(chars)) + 0.1 * (len(c) % 3))
    return out


def exact_reward(completions: Sequence[str], answer: Sequence[str], **kwargs: Any) -> list[float]:
    """1 if the stripped completion equals the label (the ExactAnswers semantics); chat completions too."""
    texts = [c if isinstance(c, str) else "".join(m["content"] for m in c) for c in completions]
    return [float(c.strip() == str(a).strip()) for c, a in zip(texts, answer, strict=True)]


class SeededRollouts:
    """A ``rollout_func`` whose completions depend only on (seed, step, prompt, global row): identical for any
    number of processes (TRL seeds each rank differently, so free sampling cannot be compared across layouts).

    Each completion is one of ``choices`` (+ EOS), drawn with prompt-dependent probabilities, so some groups agree
    (high majority ratio) and others do not.
    """

    def __init__(self, tokenizer: Any, choices: Sequence[str] = ("1", "2", "3", "4"), seed: int = 0) -> None:
        self.tok = tokenizer
        self.choices = list(choices)
        self.seed = seed
        self.calls = 0

    def _probs(self, prompt: str) -> np.ndarray:
        h = int(hashlib.sha1(prompt.encode()).hexdigest()[:8], 16)
        sharp = 0.3 + 3.0 * (h % 7) / 6.0
        logits = -sharp * np.arange(len(self.choices), dtype=np.float64)
        logits = np.roll(logits, h % len(self.choices))
        p = np.exp(logits - logits.max())
        return p / p.sum()

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, Any]:
        self.calls += 1
        step = int(trainer.state.global_step)
        offset = trainer.accelerator.process_index * len(prompts)
        texts = [p if isinstance(p, str) else p[-1]["content"] for p in prompts]
        prompt_ids = self.tok(texts, add_special_tokens=False)["input_ids"]
        eos = self.tok.eos_token_id
        completion_ids = []
        for i, text in enumerate(texts):
            key = f"{self.seed}|{step}|{offset + i}|{text}".encode()
            rng = np.random.default_rng(int(hashlib.sha1(key).hexdigest()[:12], 16))
            ans = self.choices[int(rng.choice(len(self.choices), p=self._probs(text)))]
            completion_ids.append(self.tok(ans, add_special_tokens=False)["input_ids"] + [eos])
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}


def losses(trainer: Any) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def tiny_model_dir(root: str | os.PathLike[str]) -> str:
    return build_tiny_model(Path(root) / "tiny-qwen3")
