"""RLAVRGRPOTrainer on a tiny offline Qwen3 (1 process): GT-equivalence with stock TRL, budget, routes, weights,
drops, mask mode, labels, logging, errors, strategy update timing, CARE end to end, saving/loading."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch
from trl_tiny import (
    BASE_ARGS,
    SeededRollouts,
    exact_reward,
    load_tokenizer,
    make_dataset,
    overlap_reward,
)

from rlavr.budget import BudgetView
from rlavr.labels import CallableOracle, DatasetOracle, OracleError
from rlavr.strategies import Strategy
from rlavr.trl import RLAVRConfig, RLAVRGRPOTrainer
from rlavr.types import Acquisition, Label, RolloutBatch, Route
from trl import GRPOConfig, GRPOTrainer

COMPARED = ("loss", "grad_norm", "reward", "reward_std", "entropy")


# ================================================================================================ helpers


class Recording(RLAVRGRPOTrainer):
    """Keeps, per round, the decision, the rewards and the advantages before/after rlavr's post-processing."""

    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        self.rounds: list[dict[str, Any]] = []

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):  # type: ignore[override]
        r = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self.model.training:
            self.rounds.append({"rewards": r.detach().clone(), "ids": [x["id"] for x in inputs]})
        return r

    def _rlavr_postprocess(self, out, decision, B_l):  # type: ignore[override]
        before = out["advantages"].detach().clone()
        super()._rlavr_postprocess(out, decision, B_l)
        self.rounds[-1].update(decision=dict(decision), before=before, after=out["advantages"].detach().clone(),
                               tool_mask=None if out.get("tool_mask") is None else out["tool_mask"].clone(),
                               completion_mask=out["completion_mask"].clone(),
                               num_items=float(out["num_items_in_batch"]))


def rl_args(tmp_path, **kw: Any) -> RLAVRConfig:
    base = {**BASE_ARGS, "answer_space": "exact", "ledger_path": str(tmp_path / "ledger.sqlite")}
    base.update(kw)
    return RLAVRConfig(output_dir=str(tmp_path / "out"), **base)


def train(tmp_path, model_path: str, cls: type[RLAVRGRPOTrainer] = RLAVRGRPOTrainer, *, seeded: bool = True,
          reward=exact_reward, dataset=None, trainer_kw: Mapping[str, Any] | None = None, **kw: Any):
    tok = load_tokenizer(model_path)
    extra = dict(trainer_kw or {})
    if seeded:
        extra.setdefault("rollout_func", SeededRollouts(tok))
    trainer = cls(model=model_path, reward_funcs=[reward], args=rl_args(tmp_path, **kw),
                  train_dataset=dataset if dataset is not None else make_dataset(32, small=True),
                  processing_class=tok, **extra)
    trainer.train()
    return trainer


def history_of(trainer) -> list[dict[str, float]]:
    return [{k: h[k] for k in COMPARED if k in h} for h in trainer.state.log_history if "loss" in h]


def assert_same_training(a, b) -> None:
    ha, hb = history_of(a), history_of(b)
    assert ha and len(ha) == len(hb)
    assert ha == hb  # bitwise: the floats are identical
    for (na, pa), (nb, pb) in zip(a.model.named_parameters(), b.model.named_parameters(), strict=True):
        assert na == nb and torch.equal(pa, pb), na


# ================================================================================================ test strategies


class HiddenProbe(Strategy):
    """Queries everything (GT-like) but requires hidden states and keeps what it saw."""

    name = "test-hidden-probe"
    requires = frozenset({"answers", "hidden_states"})

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[np.ndarray, np.ndarray, list[str]]] = []

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        self.seen.append((batch.prompt_hidden.copy(), batch.response_hidden.copy(), list(batch.ids)))
        return self.route_by_score(np.zeros(batch.B), budget)


class LogprobProbe(HiddenProbe):
    name = "test-logprob-probe"
    requires = frozenset({"answers", "logprobs"})

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        self.seen.append((batch.mean_logprob.copy(), batch.lengths.copy(), list(batch.ids)))
        return self.route_by_score(np.zeros(batch.B), budget)


class HalfPseudo(Strategy):
    """Pseudo-labels every group; even groups get weight 0.5; optionally negates advantages afterwards."""

    name = "test-half-pseudo"

    def __init__(self, negate: bool = False) -> None:
        super().__init__()
        self.negate = negate
        self.transform_calls = 0

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        w = np.where(np.arange(batch.B) % 2 == 0, 0.5, 1.0)
        return Acquisition(routes=np.full(batch.B, Route.PSEUDO), weights=w, scores=np.zeros(batch.B))

    def transform_advantages(self, batch, acquisition, advantages):
        if not self.negate:
            return advantages
        self.transform_calls += 1
        return -advantages


class Events(Strategy):
    """Random routing that records when select/update run, relative to the trainer's optimiser steps."""

    name = "test-events"

    def __init__(self) -> None:
        super().__init__(seed=3)
        self.trainer: Any = None
        self.events: list[tuple[str, int, Any]] = []

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        self.events.append(("select", self.trainer.state.global_step, batch.step))
        return self.route_by_score(self.rng.random(batch.B), budget)

    def update(self, batch: RolloutBatch, acquisition: Acquisition, labels: Mapping[str, Label]) -> None:
        self.events.append(("update", self.trainer.state.global_step, sorted(labels)))


class Picky(Strategy):
    """Chooses the prompts of even rounds itself (dataset rows 3 and 7), leaves odd rounds to TRL."""

    name = "test-picky"

    def __init__(self, bad: bool = False) -> None:
        super().__init__()
        self.bad = bad
        self.calls: list[int] = []

    def prompt_sampler(self, pool, batch_size):
        self.calls.append(batch_size)
        if self.bad:
            return [0]
        return [3, 7] if len(self.calls) % 2 == 1 else None

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        return self.route_by_score(np.zeros(batch.B), budget)


class Boom(Strategy):
    name = "test-boom"

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        raise ZeroDivisionError("boom in select")


class NeedsAttention(Strategy):
    name = "test-attn"
    requires = frozenset({"answers", "attentions"})

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:  # pragma: no cover - never reached
        return self.route_by_score(np.zeros(batch.B), budget)


# ================================================================================================ GT-equivalence


@pytest.fixture(scope="module")
def stock_runs(tiny_model_path, tmp_path_factory):
    """Stock GRPOTrainer runs (real sampling from the policy), cached per configuration."""
    cache: dict[tuple, GRPOTrainer] = {}

    def get(**kw: Any) -> GRPOTrainer:
        key = tuple(sorted(kw.items()))
        if key not in cache:
            out = tmp_path_factory.mktemp("stock")
            args = GRPOConfig(output_dir=str(out), **{**BASE_ARGS, "max_steps": 3, **kw})
            t = GRPOTrainer(model=tiny_model_path, reward_funcs=[overlap_reward], args=args,
                            train_dataset=make_dataset(32, small=True),
                            processing_class=load_tokenizer(tiny_model_path))
            t.train()
            cache[key] = t
        return cache[key]

    return get


def test_gt_equivalence_with_stock_grpo(tiny_model_path, tmp_path, stock_runs):
    stock = stock_runs()
    ours = train(tmp_path, tiny_model_path, seeded=False, reward=overlap_reward, strategy="gt", budget=None,
                 max_steps=3)
    assert_same_training(stock, ours)
    assert any(h["reward_std"] > 0 for h in history_of(ours))
    assert any(h["grad_norm"] > 0 for h in history_of(ours))  # the comparison is not vacuous
    assert ours.engine.spent == 3 * 2 and all(h["route/query"] == 2 for h in ours.rlavr_history)


def test_hidden_capture_keeps_gt_equivalence(tiny_model_path, tmp_path, stock_runs):
    """Capture during generate (default config) and trunk hook (num_iterations=2) leave training bitwise
    unchanged, and both give the same hidden states on the first round."""
    probe_extra, probe_hook = HiddenProbe(), HiddenProbe()
    extra = train(tmp_path / "a", tiny_model_path, seeded=False, reward=overlap_reward, budget=None, max_steps=3,
                  trainer_kw={"strategy": probe_extra})
    assert_same_training(stock_runs(), extra)
    hook = train(tmp_path / "b", tiny_model_path, seeded=False, reward=overlap_reward, budget=None, max_steps=3,
                 num_iterations=2, trainer_kw={"strategy": probe_hook})
    assert_same_training(stock_runs(num_iterations=2), hook)
    st = extra.rlavr_feature_stats  # default config: read during generate, no extra forward (issue 13)
    assert st["generate_rounds"] == 3 and st["extra_forward_rounds"] == 0 and st["hook_rounds"] == 0
    # num_iterations=2: 3 optimiser steps = 2 generation rounds, both captured by the hook (no extra forward)
    assert hook.rlavr_feature_stats["hook_rounds"] == 2 and hook.rlavr_feature_stats["extra_forward_rounds"] == 0
    assert hook.rlavr_feature_stats["generate_rounds"] == 0
    (hp_a, hr_a, ids_a), (hp_b, hr_b, ids_b) = probe_extra.seen[0], probe_hook.seen[0]
    assert ids_a == ids_b and hp_a.shape == (2, 64) and hr_a.shape == (2, 4, 64)
    np.testing.assert_allclose(hp_a, hp_b, rtol=0, atol=1e-6)
    np.testing.assert_allclose(hr_a, hr_b, rtol=0, atol=1e-6)
    assert np.abs(hr_a).sum() > 0 and not np.allclose(hr_a[:, 0], hr_a[:, 1])


def test_logprobs_from_extra_forward_and_hook_agree(tiny_model_path, tmp_path):
    a, b = LogprobProbe(), LogprobProbe()
    train(tmp_path / "a", tiny_model_path, seeded=False, budget=None, max_steps=1, trainer_kw={"strategy": a})
    train(tmp_path / "b", tiny_model_path, seeded=False, budget=None, max_steps=1, num_iterations=2,
          trainer_kw={"strategy": b})
    (lp_a, len_a, _), (lp_b, len_b, _) = a.seen[0], b.seen[0]
    np.testing.assert_array_equal(len_a, len_b)
    np.testing.assert_allclose(lp_a, lp_b, atol=1e-6)
    assert np.all(lp_a < 0) and np.all(lp_a > -20)


# ================================================================================================ budget, routes, labels


def test_budget_never_exceeded_total(tiny_model_path, tmp_path):
    t = train(tmp_path, tiny_model_path, strategy="random", budget=5, max_steps=4, per_device_train_batch_size=16)
    spent = [h["budget_spent"] for h in t.rlavr_history]
    assert spent == sorted(spent) and spent[-1] == 5 == t.engine.spent == t.engine.ledger.n_bought
    assert sum(h["labels_bought_this_step"] for h in t.rlavr_history) == 5
    assert [h["route/query"] for h in t.rlavr_history] == [4, 1, 0, 0]
    assert all(h["route/query"] + h["route/pseudo"] + h["route/drop"] == 4 for h in t.rlavr_history)
    logged = [h["rlavr/budget_spent"] for h in t.state.log_history if "loss" in h]
    assert logged == spent  # budget_spent is logged as a level, under the rlavr/ prefix


def test_budget_ratio_is_global_and_cumulative(tiny_model_path, tmp_path):
    t = train(tmp_path, tiny_model_path, strategy="entropy", budget=0.3, max_steps=4, per_device_train_batch_size=16)
    for k, h in enumerate(t.rlavr_history):
        assert h["budget_spent"] <= int(0.3 * 4 * (k + 1))
    assert t.engine.spent == int(0.3 * 16)


def test_labels_rewritten_and_rollout_log(tiny_model_path, tmp_path):
    seen: list[tuple[str, str]] = []

    def reward(completions, answer, id, **kw):  # dataset column name
        seen.extend(zip(id, answer, strict=True))
        return exact_reward(completions, answer)

    log = tmp_path / "rollouts.jsonl"
    t = train(tmp_path, tiny_model_path, reward=reward, strategy="random", budget="1/step", max_steps=3,
              per_device_train_batch_size=16, rollout_log_path=str(log))
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(lines) == 3 * 4
    keys = {"step", "id", "prompt", "completions", "answers", "lengths", "mean_logprob", "route", "weight", "score",
            "label_used", "majority_answer", "reference_label"}
    assert keys <= set(lines[0])
    assert {x["answer_space"] for x in lines} == {t.engine.answer_space.name}  # rlavr replay's default space
    ds = make_dataset(32, small=True)
    gt = dict(zip(ds["id"], ds["answer"], strict=True))
    by_key = {(x["step"], x["id"]): x for x in lines}
    assert [sum(x["route"] == "query" for x in lines if x["step"] == s) for s in range(3)] == [1, 1, 1]
    for x in lines:
        assert len(x["completions"]) == len(x["answers"]) == 4 and x["reference_label"] == gt[x["id"]]
        assert x["prompt"] in ds["prompt"]
        if x["route"] == "query":
            assert x["label_used"] == gt[x["id"]] and x["weight"] == 1.0
        elif x["route"] == "pseudo":
            assert x["label_used"] == x["majority_answer"] is not None
    # the reward function saw exactly the chosen label of its group (4 rows per group per round)
    assert len(seen) == 3 * 16
    steps = [s for s in range(3) for _ in range(16)]
    for (pid, ans), s in zip(seen, steps, strict=True):
        x = by_key[(s, pid)]
        assert ans == (x["label_used"] if x["label_used"] is not None else x["majority_answer"]), x
    assert t.engine.spent == 3


def test_drops_get_zero_advantage_and_nan_rewards(tiny_model_path, tmp_path):
    t = train(tmp_path, tiny_model_path, Recording, strategy="random-mask", budget="1/step", max_steps=3,
              per_device_train_batch_size=16)
    n_drop = 0
    for rnd in t.rounds:
        routes = np.repeat(np.asarray(rnd["decision"]["routes"]), 4)
        drop = routes == Route.DROP
        n_drop += int(drop.sum())
        assert torch.isnan(rnd["rewards"][torch.as_tensor(drop)]).all()
        assert not torch.isnan(rnd["rewards"][torch.as_tensor(~drop)]).any()
        assert torch.all(rnd["after"][torch.as_tensor(drop)] == 0)
        assert rnd["tool_mask"] is None  # zero_adv mode adds no mask
    assert n_drop == 3 * 3 * 4
    assert any(torch.any(r["after"] != 0) for r in t.rounds)


def test_mask_mode_removes_drops_from_the_normaliser(tiny_model_path, tmp_path):
    t = train(tmp_path, tiny_model_path, Recording, strategy="random-mask", budget="1/step", max_steps=2,
              per_device_train_batch_size=16, drop_mode="mask")
    for rnd in t.rounds:
        drop = torch.as_tensor(np.repeat(np.asarray(rnd["decision"]["routes"]), 4) == Route.DROP)
        tm, cm = rnd["tool_mask"], rnd["completion_mask"]
        assert tm is not None and torch.all(tm[drop] == 0) and torch.all(tm[~drop] == 1)
        assert rnd["num_items"] == float((cm * tm).sum()) == float(cm[~drop].sum())
        assert rnd["num_items"] < float(cm.sum())


def test_weights_scale_pseudo_advantages(tiny_model_path, tmp_path):
    strat = HalfPseudo()
    t = train(tmp_path, tiny_model_path, Recording, budget=0, max_steps=2, per_device_train_batch_size=16,
              trainer_kw={"strategy": strat})
    halved = False
    for rnd in t.rounds:
        w = torch.as_tensor(np.repeat(rnd["decision"]["weights"], 4), dtype=rnd["before"].dtype)
        assert torch.equal(rnd["after"], rnd["before"] * w)
        halved = halved or bool(torch.any((rnd["before"] != 0) & (w == 0.5)))
    assert halved  # some down-weighted group had a non-zero advantage
    assert t.engine.spent == 0 and strat.transform_calls == 0


def test_transform_advantages_hook(tiny_model_path, tmp_path):
    strat = HalfPseudo(negate=True)
    t = train(tmp_path, tiny_model_path, Recording, budget=0, max_steps=2, per_device_train_batch_size=16,
              trainer_kw={"strategy": strat})
    assert strat.transform_calls == 2
    for rnd in t.rounds:
        w = torch.as_tensor(np.repeat(rnd["decision"]["weights"], 4), dtype=rnd["before"].dtype)
        torch.testing.assert_close(rnd["after"], -(rnd["before"] * w), rtol=0, atol=1e-7)


def test_update_runs_after_the_optimiser_step(tiny_model_path, tmp_path):
    strat = Events()

    class Tr(RLAVRGRPOTrainer):
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            strat.trainer = self

    t = train(tmp_path, tiny_model_path, Tr, budget="1/step", max_steps=3, per_device_train_batch_size=16,
              trainer_kw={"strategy": strat})
    kinds = [(e[0], e[1]) for e in strat.events]
    assert kinds == [("select", 0), ("update", 1), ("select", 1), ("update", 2), ("select", 2), ("update", 3)]
    bought = [e[2] for e in strat.events if e[0] == "update"]
    assert all(len(b) == 1 for b in bought) and t.engine.spent == 3


def test_several_rounds_per_optimiser_step(tiny_model_path, tmp_path):
    """gradient_accumulation_steps=2, steps_per_generation=1: two generation rounds per optimiser step. Every
    round's prompts count for the ratio budget (the ledger keys on a round counter, not on global_step) and every
    round's labels reach strategy.update, in round order, after the optimiser step."""
    strat = Events()

    class Tr(RLAVRGRPOTrainer):
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            strat.trainer = self

    t = train(tmp_path, tiny_model_path, Tr, budget=0.5, max_steps=2, per_device_train_batch_size=8,
              gradient_accumulation_steps=2, steps_per_generation=1, trainer_kw={"strategy": strat})
    assert [(e[0], e[1]) for e in strat.events] == [("select", 0), ("select", 0), ("update", 1), ("update", 1),
                                                    ("select", 1), ("select", 1), ("update", 2), ("update", 2)]
    assert [h["round"] for h in t.rlavr_history] == [0, 1, 2, 3] and [h["step"] for h in t.rlavr_history] == [0, 0, 1, 1]
    ledger = t.engine.ledger
    assert ledger.prompts_seen == 4 * 2  # 4 rounds x B=2 (was 2 x 2: a repeated step key was idempotent)
    assert t.engine.spent == 4  # floor(0.5 x 8); each round buys one of its two prompts
    bought = [i for i, _, _ in ledger.items()]
    updated = [i for e in strat.events if e[0] == "update" for i in e[2]]
    assert sorted(updated) == sorted(bought)  # no round's labels are lost before update


def test_oracle_failure_falls_back(tiny_model_path, tmp_path):
    def fail(ids, prompts):
        raise OracleError("annotator offline")

    oracle = CallableOracle(fail, batched=True)
    t = train(tmp_path, tiny_model_path, strategy="random", budget="2/step", max_steps=2,
              per_device_train_batch_size=16, oracle_max_retries=0, oracle_backoff=0.0,
              trainer_kw={"oracle": oracle})
    assert t.engine.spent == 0
    assert all(h["route/query"] == 0 and h["route/pseudo"] + h["route/drop"] == 4 for h in t.rlavr_history)
    t2 = train(tmp_path / "drop", tiny_model_path, strategy="random", budget="2/step", max_steps=1,
               per_device_train_batch_size=16, oracle_max_retries=0, oracle_backoff=0.0,
               on_oracle_failure="drop", trainer_kw={"oracle": oracle})
    assert t2.rlavr_history[0]["route/drop"] >= 2 and t2.engine.spent == 0


def test_rollout_log_features_make_care_replayable(tiny_model_path, tmp_path):
    from rlavr.bench.replay import replay

    log = tmp_path / "rollouts.jsonl"
    t = train(tmp_path, tiny_model_path, strategy="random", budget="1/step", max_steps=3,
              per_device_train_batch_size=16, rollout_log_path=str(log), rollout_log_features=True)
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    H = t.model.config.hidden_size
    assert len(lines) == 12
    for x in lines:
        assert len(x["prompt_hidden"]) == H and len(x["hidden"]) == 4 and all(len(h) == H for h in x["hidden"])
        assert all(isinstance(v, float) for v in x["mean_logprob"])
    assert any(x["hidden"][0] != x["hidden"][1] for x in lines)  # per-completion states, not one copied
    results = {r.strategy: r for r in replay(log, ["care", "prob"], budget="1/step")}
    assert results["care"].skipped is None and results["prob"].skipped is None
    assert results["care"].metrics["labels_bought"] == 3
    # without the flag the log carries no hidden states, and care is skipped with the reason
    log2 = tmp_path / "plain.jsonl"
    train(tmp_path / "plain", tiny_model_path, strategy="random", budget="1/step", max_steps=1,
          per_device_train_batch_size=16, rollout_log_path=str(log2))
    assert "hidden" not in json.loads(log2.read_text().splitlines()[0])
    assert "hidden states" in (replay(log2, ["care"], budget="1/step")[0].skipped or "")


def test_oracle_timeout_reaches_the_engine(tiny_model_path, tmp_path):
    import time

    def slow(ids, prompts):
        time.sleep(2.0)
        return ["1"] * len(ids)

    t = train(tmp_path, tiny_model_path, strategy="random", budget="2/step", max_steps=1,
              per_device_train_batch_size=16, oracle_max_retries=0, oracle_backoff=0.0, oracle_timeout=0.2,
              trainer_kw={"oracle": CallableOracle(slow, batched=True)})
    assert t.engine.oracle_timeout == 0.2
    assert t.engine.spent == 0  # the late answers were abandoned, never charged
    assert t.rlavr_history[0]["route/query"] == 0


def test_strategy_error_is_raised(tiny_model_path, tmp_path):
    with pytest.raises(ZeroDivisionError, match="boom in select"):
        train(tmp_path, tiny_model_path, budget=1, max_steps=1, trainer_kw={"strategy": Boom()})


def test_strategy_prompt_sampler_chooses_the_prompts(tiny_model_path, tmp_path):
    strat = Picky()
    t = train(tmp_path, tiny_model_path, Recording, budget=None, max_steps=4, trainer_kw={"strategy": strat})
    ids = [r["ids"] for r in t.rounds]
    assert ids[0] == ids[2] == ["p3"] * 4 + ["p7"] * 4  # groups stay contiguous, G rows each
    assert ids[1] != ids[0] and ids[3] != ids[0]  # rounds where the strategy says None keep TRL's order
    assert all(len(set(r[:4])) == 1 and len(set(r[4:])) == 1 for r in ids)
    assert strat.calls[:4] == [2, 2, 2, 2]
    # a strategy without the hook keeps TRL's own sampler (GT-equivalence)
    from trl.trainer.utils import RepeatSampler

    plain = train(tmp_path / "plain", tiny_model_path, strategy="random", budget=1, max_steps=1)
    assert isinstance(plain._get_train_sampler(), RepeatSampler)
    with pytest.raises(ValueError, match="prompt_sampler returned 1 indices"):
        train(tmp_path / "bad", tiny_model_path, budget=None, max_steps=1, trainer_kw={"strategy": Picky(bad=True)})


# ================================================================================================ ids, prompts, oracle


def test_hash_ids_and_conversational_prompts(tiny_model_path, tmp_path):
    ds = make_dataset(16, with_id=False)
    ds = ds.map(lambda r: {"prompt": [{"role": "system", "content": "add"}, {"role": "user", "content": r["prompt"]}]})
    log = tmp_path / "log.jsonl"
    t = train(tmp_path, tiny_model_path, dataset=ds, strategy="gt", budget=None, max_steps=1,
              rollout_log_path=str(log))
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert all(x["id"].startswith("sha1:") and len(x["id"]) == 21 for x in lines)
    prompts = {r[-1]["content"]: a for r, a in zip(ds["prompt"], ds["answer"], strict=True)}
    for x in lines:  # the default oracle found the label through the hashed id; the oracle saw the user turn
        assert x["prompt"] in prompts and x["label_used"] == prompts[x["prompt"]] == x["reference_label"]
    assert t.engine.spent == 2


# ================================================================================================ CARE end to end


def test_care_end_to_end_with_hidden_states(tiny_model_path, tmp_path):
    t = train(tmp_path, tiny_model_path, strategy="care", budget=0.5, max_steps=2, per_device_train_batch_size=16,
              strategy_kwargs={"warmup_steps": 0, "prompt_hidden_dim": 16, "prompt_mid_dim": 16,
                               "resp_mlp_hidden": 8, "resp_mlp_out": 16})
    care = t.strategy
    assert care.name == "care" and care.H == 64 and care.G == 4
    assert care.n_updates == 2  # online update after each optimiser step
    # seeded rollouts come from a rollout_func (no transformers generate): the extra-forward fallback serves
    assert t.rlavr_feature_stats["extra_forward_rounds"] == 2 and t.rlavr_feature_stats["generate_rounds"] == 0
    assert t.engine.spent <= 0.5 * 8 and t.engine.spent > 0
    assert any(k.startswith("strategy/") for k in t.rlavr_history[-1])
    assert {"rlavr/label_accuracy", "rlavr/reward_accuracy", "rlavr/majority_ratio", "rlavr/labels_bought_this_step",
            "rlavr/route/query", "rlavr/budget_spent"} <= set(t.state.log_history[0])
    # the trained policy saves and reloads as a plain transformers model
    out = tmp_path / "saved"
    t.save_model(str(out))
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(str(out))
    for (n, p), (_, q) in zip(t.model.named_parameters(), reloaded.named_parameters(), strict=True):
        assert torch.equal(p, q), n


def test_model_object_and_path_train_identically(tiny_model_path, tmp_path):
    from transformers import AutoModelForCausalLM

    by_path = train(tmp_path / "a", tiny_model_path, strategy="entropy", budget=1, max_steps=2)
    tok = load_tokenizer(tiny_model_path)
    by_obj = RLAVRGRPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_path),
                              reward_funcs=[exact_reward], args=rl_args(tmp_path / "b", strategy="entropy", budget=1,
                                                                        max_steps=2),
                              train_dataset=make_dataset(32, small=True), processing_class=tok,
                              rollout_func=SeededRollouts(tok))
    by_obj.train()
    assert history_of(by_path) == history_of(by_obj)


# ================================================================================================ bad input


def test_bad_inputs(tiny_model_path, tmp_path):
    tok = load_tokenizer(tiny_model_path)
    ds = make_dataset(8)
    grpo = GRPOConfig(output_dir=str(tmp_path), **BASE_ARGS)
    with pytest.raises(ValueError, match="RLAVRConfig"):
        RLAVRGRPOTrainer(model=tiny_model_path, reward_funcs=[exact_reward], args=grpo, train_dataset=ds,
                         processing_class=tok)
    with pytest.raises(ValueError, match="unknown strategy"):
        RLAVRGRPOTrainer(model=tiny_model_path, reward_funcs=[exact_reward], args=rl_args(tmp_path, strategy="nope"),
                         train_dataset=ds, processing_class=tok)
    with pytest.raises(ValueError, match="attentions"):
        RLAVRGRPOTrainer(model=tiny_model_path, reward_funcs=[exact_reward], args=rl_args(tmp_path),
                         train_dataset=ds, processing_class=tok, strategy=NeedsAttention())
    with pytest.raises(ValueError, match="strategy_kwargs"):
        RLAVRGRPOTrainer(model=tiny_model_path, reward_funcs=[exact_reward],
                         args=rl_args(tmp_path, strategy_kwargs={"seed": 1}), train_dataset=ds,
                         processing_class=tok, strategy=HalfPseudo())
    with pytest.raises(ValueError, match="label_column"):
        RLAVRGRPOTrainer(model=tiny_model_path, reward_funcs=[exact_reward],
                         args=rl_args(tmp_path, label_column="solution", strategy="gt"), train_dataset=ds,
                         processing_class=tok)
    with pytest.raises(ValueError, match="oracle"):
        RLAVRGRPOTrainer(model=tiny_model_path, reward_funcs=[exact_reward], args=rl_args(tmp_path, strategy="gt"),
                         train_dataset=ds, processing_class=tok, oracle=object())  # type: ignore[arg-type]
    dup = make_dataset(8).map(lambda r: {"id": "same"})
    with pytest.raises(ValueError, match="two different labels"):
        RLAVRGRPOTrainer(model=tiny_model_path, reward_funcs=[exact_reward], args=rl_args(tmp_path, strategy="gt"),
                         train_dataset=dup, processing_class=tok)


def test_evaluation_spends_nothing(tiny_model_path, tmp_path):
    tok = load_tokenizer(tiny_model_path)
    t = RLAVRGRPOTrainer(model=tiny_model_path, reward_funcs=[exact_reward],
                         args=rl_args(tmp_path, strategy="random", budget=None, max_steps=1,
                                      per_device_eval_batch_size=8),
                         train_dataset=make_dataset(32), eval_dataset=make_dataset(8), processing_class=tok,
                         oracle=DatasetOracle({f"p{i}": "1" for i in range(32)}), rollout_func=SeededRollouts(tok))
    t.train()
    spent, rounds = t.engine.spent, len(t.rlavr_history)
    metrics = t.evaluate()
    assert "eval_reward" in metrics and t.engine.spent == spent and len(t.rlavr_history) == rounds


BROKEN_VLLM_PROBE = r"""
import sys, re
import rlavr, rlavr.trl
from rlavr.trl import RLAVRConfig, check_vllm_available
args = RLAVRConfig(output_dir=sys.argv[1], use_cpu=True, report_to="none", strategy="care", budget=0.2)
assert args.rlavr.strategy == "care" and not args.use_vllm
assert "vllm" not in sys.modules and "rlavr.trl.trainer" not in sys.modules
try:
    RLAVRConfig(output_dir=sys.argv[1], use_cpu=True, report_to="none", use_vllm=True)
except ImportError as exc:
    assert 'pip install "rlavr[vllm]"' in str(exc) and "no vllm distribution" in str(exc), exc
else:
    raise AssertionError("use_vllm=True next to a broken vLLM did not raise")
assert "vllm" not in sys.modules
print("PROBE-OK")
"""


def test_rlavr_trl_import_does_not_import_vllm(tmp_path):
    """A ``vllm`` package whose import raises sits on sys.path: rlavr, rlavr.trl and an RLAVRConfig without
    use_vllm still work (nothing imports vLLM, not even TRL's GRPO trainer module, loaded lazily), and
    use_vllm=True gives rlavr's clear error instead of TRL's import-time traceback."""
    import subprocess

    fake = tmp_path / "site" / "vllm"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise RuntimeError("the fake vllm was imported")\n')
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path / "site")}
    proc = subprocess.run([sys.executable, "-c", BROKEN_VLLM_PROBE, str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "PROBE-OK" in proc.stdout, proc.stderr[-3000:]
    assert "vllm" not in sys.modules


def test_strategy_seed_follows_trl_seed(tiny_model_path, tmp_path):
    """The strategy's private RNG is seeded from TRL's ``seed`` unless strategy_kwargs sets one."""
    tok = load_tokenizer(tiny_model_path)
    ds = make_dataset(8)

    def build(sub: str, **kw: Any) -> RLAVRGRPOTrainer:
        return RLAVRGRPOTrainer(model=tiny_model_path, reward_funcs=[exact_reward],
                                args=rl_args(tmp_path / sub, strategy="random", **kw), train_dataset=ds,
                                processing_class=tok)

    a, b = build("a", seed=0), build("b", seed=1)
    assert (a.strategy.seed, b.strategy.seed) == (0, 1)
    assert a.strategy.rng.random() != b.strategy.rng.random()
    assert build("c", seed=1, strategy_kwargs={"seed": 7}).strategy.seed == 7
