"""Feature helpers of rlavr.trl: log-prob reduction, last-token hidden states (texts, ids and batch assembly:
tests/test_rollouts.py)."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from torch import nn

from rlavr.trl.capture import (
    LastTokenCapture,
    extra_forward,
    mean_token_logprobs,
    ragged_logprobs,
    trunk_of,
)


def test_mean_token_logprobs_and_ragged():
    lp = torch.tensor([[-1.0, -3.0, -9.0], [-2.0, float("nan"), 0.0], [float("nan"), 0.0, 0.0]])
    means, toks = mean_token_logprobs(lp, [2, 2, 1])
    assert means == [-2.0, -2.0, None]
    assert toks == [(-1.0, -3.0), (-2.0,), ()]
    rag = ragged_logprobs([[-1.0, None], [-0.5]], [2, 1])
    assert rag.shape == (2, 2) and torch.isnan(rag[0, 1]) and torch.isnan(rag[1, 1]) and rag[1, 0] == -0.5
    assert ragged_logprobs(None, [1]) is None


def _tiny_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def test_extra_forward_matches_row_by_row_forward(tiny_model_path):
    model = _tiny_model(tiny_model_path)
    prompts = [[20, 21, 14], [22, 26], [30, 31, 32, 33]]
    completions = [[40, 41, 1], [42], []]
    hidden, logps = extra_forward(model, prompts, completions, pad_token_id=0, device=torch.device("cpu"),
                                  batch_size=2, need_hidden=True)
    assert logps is None and hidden.shape == (3, 2, 64) and hidden.dtype == torch.float32
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        with torch.no_grad():
            h = model.model(input_ids=torch.tensor([p + c])).last_hidden_state[0]
        torch.testing.assert_close(hidden[i, 0], h[len(p) - 1], atol=2e-5, rtol=0)
        last = len(p) + len(c) - 1 if c else len(p) - 1  # empty completion -> last prompt token
        torch.testing.assert_close(hidden[i, 1], h[last], atol=2e-5, rtol=0)
    # the global RNG is untouched
    state = torch.get_rng_state()
    extra_forward(model, prompts, completions, pad_token_id=0, device=torch.device("cpu"), batch_size=8,
                  need_hidden=True)
    assert torch.equal(state, torch.get_rng_state())


def test_capture_hook_counts_rows(tiny_model_path):
    model = _tiny_model(tiny_model_path)
    cap = LastTokenCapture(trunk_of(model), prompt_len=2, lengths=[1, 2])
    with cap, torch.no_grad():
        model(input_ids=torch.tensor([[20, 21, 40, 0], [22, 23, 41, 42]]))
    assert cap.result().shape == (2, 2, 64)
    with torch.no_grad():  # the hook is removed on exit
        model(input_ids=torch.tensor([[20, 21]]))
    assert cap.rows == 2
    short = LastTokenCapture(trunk_of(model), prompt_len=2, lengths=[1])  # fewer lengths than rows
    with short, torch.no_grad():  # the hook never raises inside the model's forward...
        out = model(input_ids=torch.tensor([[20, 21, 40], [22, 23, 41]]))
    assert torch.isfinite(out.logits).all()
    with pytest.raises(RuntimeError, match="forward saw 2 rows"):  # ...the trainer sees it and falls back
        short.result()
    with pytest.raises(RuntimeError, match="never fired"):
        LastTokenCapture(trunk_of(model), 2, [1]).result()
    with pytest.raises(ValueError, match="prompt_len"):
        LastTokenCapture(trunk_of(model), 0, [1])
    with pytest.raises(ValueError, match="trunk"):
        trunk_of(nn.Linear(2, 2))




def _generate_rows(model, capture, seed: int, eos: list[int], temperature: float = 0.7):
    """Left-padded prompts of unequal length, sampled completions (some end at an EOS, some are truncated),
    cut after the first EOS like TRL does."""
    from transformers import GenerationConfig

    prompts = [[20, 21, 14, 30, 31], [22, 26], [30, 31, 32], [40], [41, 42, 43, 44], [45, 46]]
    P = max(map(len, prompts))
    ids = torch.tensor([[0] * (P - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
    cfg = GenerationConfig(max_new_tokens=9, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                           pad_token_id=0, eos_token_id=eos, disable_compile=True)
    torch.manual_seed(seed)
    with torch.no_grad(), capture if capture is not None else nullcontext():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
    comps = []
    for row in out[:, P:].tolist():
        cut = next((k for k, t in enumerate(row) if t in eos), len(row) - 1)
        comps.append(row[: cut + 1])
    return prompts, out, comps


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_generate_capture_matches_the_full_forward_and_leaves_sampling_unchanged(tiny_model_path, seed):
    """States and log-probs read during generate equal a full forward over prompt ⧺ completion on every row
    (left padding, EOS-terminated, truncated rows), within float32 tolerance; sampling is bit-for-bit unchanged
    and the global RNG is where it would be without the capture."""
    from rlavr.trl.capture import GenerateCapture

    model = _tiny_model(tiny_model_path)
    eos = [int(t) for t in torch.topk(model.lm_head.weight.norm(dim=1), 12).indices]  # frequent-ish tokens
    _, plain, _ = _generate_rows(model, None, seed, eos)
    rng_plain = torch.get_rng_state()
    cap = GenerateCapture(model, eos, need_hidden=True, need_logps=True, temperature=0.7)
    prompts, out, comps = _generate_rows(model, cap, seed, eos)
    assert torch.equal(plain, out) and torch.equal(rng_plain, torch.get_rng_state())
    lengths = [len(c) for c in comps]
    assert min(lengths) < 9 and max(lengths) == 9   # both kinds of row occur
    hidden, logps = cap.finish(comps)
    assert torch.equal(rng_plain, torch.get_rng_state())
    want_h, _ = extra_forward(model, prompts, comps, pad_token_id=0, device=torch.device("cpu"), batch_size=8,
                              need_hidden=True)
    torch.testing.assert_close(hidden, want_h, atol=1e-5, rtol=1e-5)
    for i, (p, c) in enumerate(zip(prompts, comps, strict=True)):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p + c])).logits[0, len(p) - 1 : -1].float() / 0.7
        want = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(c)[:, None]).squeeze(1)
        torch.testing.assert_close(logps[i, : len(c)], want, atol=1e-5, rtol=1e-5)


def test_generate_capture_reports_instead_of_raising(tiny_model_path):
    from rlavr.trl.capture import GenerateCapture

    model = _tiny_model(tiny_model_path)
    cap = GenerateCapture(model, [1], need_hidden=True, need_logps=False, temperature=1.0)
    with pytest.raises(RuntimeError, match="never fired"):
        cap.finish([[1]])
    with pytest.raises(ValueError, match="temperature"):
        GenerateCapture(model, [1], need_hidden=True, need_logps=False, temperature=0.0)
    prompts, out, comps = _generate_rows(model, cap, 0, [1])
    with pytest.raises(RuntimeError, match="completions came back"):
        cap.finish(comps[:-1])
