"""Policy forward passes per round: rlavr's signals cost no extra forward on any TRL configuration (issue 13).

A forward pre-hook on the policy's decoder trunk counts every call, split into

* **full** forwards: no KV cache, or an empty one (generation's prefill, TRL's no-grad "old log-probs" forward,
  the reference forward when the policy serves as reference, the training forward, rlavr's fallback forward);
* **decode** steps: one token on a non-empty KV cache.

For each configuration of the GT-equivalence matrix and each signal (hidden states, log-probs, both) the full
forwards equal stock TRL's exactly; rlavr adds at most one cached single-token decode step per generation round
(the last generated token's hidden state, which ``generate`` never feeds back). Counts, not timings.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch
from trl_tiny import BASE_ARGS, load_tokenizer, make_dataset, overlap_reward

from rlavr.budget import BudgetView
from rlavr.strategies import Strategy
from rlavr.trl import RLAVRConfig, RLAVRGRPOTrainer
from rlavr.trl.capture import trunk_of
from rlavr.types import Acquisition, RolloutBatch
from trl import GRPOConfig, GRPOTrainer


class _Probe(Strategy):
    """Queries everything (GT-like) and requires the signals under test."""

    name = "test-forward-count-probe"
    requires = frozenset({"answers"})

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        if "hidden_states" in self.requires:
            assert np.isfinite(batch.response_hidden).all()
        if "logprobs" in self.requires:
            assert np.isfinite(batch.mean_logprob).all()
        return self.route_by_score(np.zeros(batch.B), budget)


def _probe(signals: frozenset[str]) -> Strategy:
    cls = type("Probe", (_Probe,), {"requires": frozenset({"answers", *signals})})
    return cls()


def _count(trainer: Any) -> Counter[str]:
    """Train with a counting pre-hook on the policy trunk; ``{"full": n, "decode": m}``."""
    counts: Counter[str] = Counter()

    def hook(module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        filled = cache is not None and int(cache.get_seq_length()) > 0
        counts["decode" if filled else "full"] += 1

    handle = trunk_of(trainer.model).register_forward_pre_hook(hook, with_kwargs=True)
    try:
        trainer.train()
    finally:
        handle.remove()
    return counts


CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "num_iterations=2": {"num_iterations": 2},
    "beta>0": {"beta": 0.04},
    "steps_per_generation=2": {"steps_per_generation": 2},
    "gradient_accumulation": {"gradient_accumulation_steps": 2},
    "gradient_checkpointing": {"gradient_checkpointing": True},
}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_policy_forwards_per_round_equal_stock_trl(tiny_model_path, tmp_path, config):
    kw = {**BASE_ARGS, "max_steps": 2, **CONFIGS[config]}
    tok = load_tokenizer(tiny_model_path)
    stock = GRPOTrainer(model=tiny_model_path, reward_funcs=[overlap_reward],
                        args=GRPOConfig(output_dir=str(tmp_path / "stock"), **kw),
                        train_dataset=make_dataset(32, small=True), processing_class=tok)
    want = _count(stock)
    assert want["full"] > 0 and want["decode"] > 0
    for k, signals in enumerate([{"hidden_states"}, {"logprobs"}, {"hidden_states", "logprobs"}]):
        out = tmp_path / f"rlavr{k}"
        args = RLAVRConfig(output_dir=str(out), answer_space="exact", ledger_path=str(out / "ledger.sqlite"),
                           budget=None, **kw)
        ours = RLAVRGRPOTrainer(model=tiny_model_path, reward_funcs=[overlap_reward], args=args,
                                train_dataset=make_dataset(32, small=True), processing_class=tok,
                                strategy=_probe(frozenset(signals)))
        got = _count(ours)
        st = ours.rlavr_feature_stats
        rounds = int(st["rounds"])
        assert rounds > 0 and st["extra_forward_rounds"] == 0, (config, signals, st)
        assert got["full"] == want["full"], (config, signals, got, want)
        # at most one cached single-token step per round, and only for the hidden state of the last token
        extra_steps = got["decode"] - want["decode"]
        assert 0 <= extra_steps <= (rounds if "hidden_states" in signals else 0), (config, signals, got, want)


def test_policy_forwards_per_round_equal_stock_trl_on_two_processes(tiny_model_path, tmp_path):
    """Two processes (torch.distributed.run, gloo on CPU), default TRL config, hidden states + log-probs: on each
    rank the full forwards equal stock TRL's, with at most one cached decode step per round."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("forward_count_dist.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(tmp_path), "2", tiny_model_path]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    for rank in (0, 1):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert r["world"] == 2 and r["rounds"] > 0 and r["extra_forward_rounds"] == 0, r
        assert r["generate_rounds"] == r["rounds"], r
        assert r["rlavr"]["full"] == r["stock"]["full"] > 0, r
        assert 0 <= r["rlavr"]["decode"] - r["stock"]["decode"] <= r["rounds"], r


def test_log_prob_only_fallback_forward_is_counted(tiny_model_path, tmp_path):
    """Where nothing else works (here a custom rollout_func: no transformers generate) the fallback forward runs,
    and ``rlavr_feature_stats`` counts it also when only log-probs were needed (it used to count only rounds that
    needed hidden states)."""
    from trl_tiny import SeededRollouts

    tok = load_tokenizer(tiny_model_path)
    args = RLAVRConfig(output_dir=str(tmp_path / "out"), answer_space="exact",
                       ledger_path=str(tmp_path / "ledger.sqlite"), budget=None, **{**BASE_ARGS, "max_steps": 2})
    t = RLAVRGRPOTrainer(model=tiny_model_path, reward_funcs=[overlap_reward], args=args,
                         train_dataset=make_dataset(32, small=True), processing_class=tok,
                         strategy=_probe(frozenset({"logprobs"})), rollout_func=SeededRollouts(tok))
    t.train()
    st = t.rlavr_feature_stats
    assert st["rounds"] == 2 and st["extra_forward_rounds"] == 2 and st["generate_rounds"] == 0, st
