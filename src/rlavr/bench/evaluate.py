r"""Held-out evaluation: greedy accuracy, mean@k, pass@k and majority@k.

For ``N`` eval items with labels :math:`y_i` and the task verifier :math:`v`:

* greedy accuracy :math:`\frac1N\sum_i v(\hat y_i^{\text{greedy}}, y_i)`;
* mean@k :math:`\frac1{Nk}\sum_i\sum_{j\le k} v(\hat y_{ij}, y_i)` over ``k`` samples at ``temperature``
  (the expected training reward under the ground truth);
* pass@k :math:`\frac1N\sum_i \max_j v(\hat y_{ij}, y_i)`;
* majority@k: the fraction of items whose majority-vote answer over the ``k`` samples (TTRL rules,
  :func:`rlavr.votes.majority_vote`) is correct, i.e. how often a pseudo-label would be right.

Sampling draws from a forked global RNG seeded with ``seed``: evaluation never changes the caller's RNG state
(which would break the bitwise equivalence of training runs), and the same model gives the same numbers.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from rlavr.bench.tasks import Task
from rlavr.votes import majority_vote

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["EvalResult", "evaluate", "evaluate_by_difficulty", "generate"]


@dataclass
class EvalResult:
    """Evaluation summary (``mean_at_k``/``pass_at_k``/``majority_at_k`` are ``None`` when ``k == 0``)."""

    n: int
    greedy_accuracy: float
    k: int = 0
    mean_at_k: float | None = None
    pass_at_k: float | None = None
    majority_at_k: float | None = None
    seconds: float = 0.0
    greedy_correct: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool), repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; ``greedy_correct`` as a 0/1 string (one character per item, for paired intervals)."""
        return {"n": self.n, "greedy_accuracy": self.greedy_accuracy, "k": self.k, "mean_at_k": self.mean_at_k,
                "pass_at_k": self.pass_at_k, "majority_at_k": self.majority_at_k, "seconds": self.seconds,
                "greedy_correct": "".join("1" if x else "0" for x in np.asarray(self.greedy_correct, dtype=bool))}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalResult:
        """Inverse of :meth:`to_dict` (``greedy_correct`` empty when the dictionary has none)."""
        bits = str(d.get("greedy_correct") or "")
        return cls(n=int(d["n"]), greedy_accuracy=float(d["greedy_accuracy"]), k=int(d.get("k", 0)),
                   mean_at_k=d.get("mean_at_k"), pass_at_k=d.get("pass_at_k"), majority_at_k=d.get("majority_at_k"),
                   seconds=float(d.get("seconds", 0.0)),
                   greedy_correct=np.array([c == "1" for c in bits], dtype=bool))


def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
             max_new_tokens: int, do_sample: bool = False, temperature: float = 1.0, num_return_sequences: int = 1,
             batch_size: int = 256, seed: int = 0) -> list[str]:
    """Decode completions for string ``prompts`` (left-padded batches, no special tokens added).

    Returns ``len(prompts) * num_return_sequences`` strings, the samples of one prompt contiguous.
    """
    import torch

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: must be >= 1, got {max_new_tokens}")
    if num_return_sequences < 1:
        raise ValueError(f"num_return_sequences: must be >= 1, got {num_return_sequences}")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature: must be > 0 when sampling, got {temperature}")
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    device = model.device
    devices = [device.index or 0] if device.type == "cuda" else []
    out: list[str] = []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for s in range(0, len(prompts), batch_size):
                enc = tokenizer(list(prompts[s : s + batch_size]), return_tensors="pt", padding=True,
                                add_special_tokens=False).to(device)
                kwargs: dict[str, Any] = {"do_sample": do_sample, "num_return_sequences": num_return_sequences}
                if do_sample:
                    kwargs.update(temperature=temperature, top_k=0, top_p=1.0)
                else:
                    kwargs.update(temperature=None, top_k=None, top_p=None)
                gen = cast(Any, model).generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=tokenizer.eos_token_id, **kwargs)
                out += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def evaluate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task,
             rows: Sequence[Mapping[str, str]], k: int = 0, temperature: float = 1.0, seed: int = 0,
             batch_size: int = 256, max_new_tokens: int | None = None) -> EvalResult:
    """Greedy accuracy on ``rows`` and, if ``k > 0``, mean@k / pass@k / majority@k (see module docstring)."""
    if not rows:
        raise ValueError("rows: evaluation needs at least one row")
    if k < 0:
        raise ValueError(f"k: must be >= 0, got {k}")
    t0 = time.perf_counter()
    new = max_new_tokens or task.max_completion_length
    prompts = [r["prompt"] for r in rows]
    answers = [r["answer"] for r in rows]
    greedy = generate(model, tokenizer, prompts, new, do_sample=False, batch_size=batch_size)
    g_ok = task.score(greedy, answers)
    res = EvalResult(n=len(rows), greedy_accuracy=float(g_ok.mean()), k=k, greedy_correct=g_ok)
    if k > 0:
        samples = generate(model, tokenizer, prompts, new, do_sample=True, temperature=temperature,
                           num_return_sequences=k, batch_size=max(1, batch_size // k), seed=seed)
        ok = task.score(samples, [a for a in answers for _ in range(k)]).reshape(len(rows), k)
        space = task.answer_space
        extracted = [[space.extract(samples[i * k + j]) for j in range(k)] for i in range(len(rows))]
        votes = majority_vote(space.cluster_batch(extracted), extracted)
        has = votes.majority >= 0
        first = np.where(has, votes.majority_first, 0)
        maj_ok = has & ok[np.arange(len(rows)), first]
        res.mean_at_k = float(ok.mean())
        res.pass_at_k = float(ok.any(axis=1).mean())
        res.majority_at_k = float(maj_ok.mean())
    res.seconds = time.perf_counter() - t0
    return res


def evaluate_by_difficulty(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task,
                           rows: Sequence[Mapping[str, str]], k: int = 8, temperature: float = 0.7,
                           seed: int = 0, batch_size: int = 64) -> dict[str, dict[str, Any]]:
    """Greedy accuracy, mean@k, pass@k and majority@k overall and per ``difficulty`` column.

    Runs :func:`rlavr.bench.evaluate.evaluate` (the benchmark's own evaluation) once per difficulty; the
    ``"all"`` entry is the row-weighted average of the per-difficulty numbers. Rows without a ``difficulty``
    column count as ``"all"`` only.
    """
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
