"""Pool fitting inside RLAVRGRPOTrainer: strategies with a pre-training pool stage (PivotTrace, pos-neg pairing,
offline uncertainty consistency) are fitted at train start (fit_pool="auto"), their pool labels are charged within
the budget, a resumed run neither refits nor re-buys, and strategies without a pool stage run nothing new."""

from __future__ import annotations

from typing import Any

import pytest
from trl_tiny import BASE_ARGS, SeededRollouts, exact_reward, load_tokenizer, make_dataset

from helpers import CountingOracle
from rlavr.labels import POOL_STEP, DatasetOracle
from rlavr.loop import pool_fit_wanted
from rlavr.pool_stage import pool_step_charged
from rlavr.trl import RLAVRConfig, RLAVRGRPOTrainer
from rlavr.trl.pool import pool_rows

PIVOT = {"detector": "lexical", "min_probes": 8, "probe_window": 2}


def table() -> dict[str, str]:
    ds = make_dataset(32, small=True)
    return dict(zip(ds["id"], ds["answer"], strict=True))


def make(model_path: str, tmp_path: Any, oracle: DatasetOracle, *, seeded: bool = True, callbacks: Any = None,
         **kw: Any) -> RLAVRGRPOTrainer:
    tok = load_tokenizer(model_path)
    args = RLAVRConfig(output_dir=str(tmp_path / "out"),
                       **{**BASE_ARGS, "answer_space": "exact", "ledger_path": str(tmp_path / "ledger.sqlite"), **kw})
    extra = {"rollout_func": SeededRollouts(tok)} if seeded else {}
    return RLAVRGRPOTrainer(model=model_path, reward_funcs=[exact_reward], args=args,
                            train_dataset=make_dataset(32, small=True), processing_class=tok, oracle=oracle,
                            callbacks=callbacks, **extra)


def test_pivottrace_fits_its_pool_with_the_policy_and_trains(tiny_model_path, tmp_path):
    oracle = CountingOracle(table())
    # real sampling from the tiny policy (TRL's transformers generate path), not the seeded rollout_func
    t = make(tiny_model_path, tmp_path, oracle, seeded=False, strategy="pivottrace", strategy_kwargs=PIVOT,
             budget=0.25)
    assert pool_fit_wanted(t.strategy)
    t.train()  # before: "call fit_pool(...) before select" at the first round
    m = t.rlavr_pool_metrics
    assert t.strategy.fitted and t.strategy.fit_detector == "lexical" and m["pool_prompts"] == 32
    assert m["pool_labels_bought"] == 8 == m["n_probes"]  # floor(0.25 x 32) labels for 8 probes
    ledger = t.engine.ledger
    assert pool_step_charged(t.engine) == 8 and ledger.get_meta("rlavr.pool_labels_charged") == 8
    # the pool is one step of prompts seen; the budget holds over pool + training
    assert ledger.prompts_seen == 32 + 2 * 2 and ledger.n_charged <= int(0.25 * ledger.prompts_seen)
    assert t.budget_spent == ledger.n_charged and len(oracle.requested) == len(set(oracle.requested))
    assert [h["budget_spent"] for h in t.rlavr_history][0] >= 8
    logged = [h for h in t.state.log_history if "rlavr/pool/pool_labels_bought" in h]
    assert len(logged) == 1 and logged[0]["rlavr/pool/pool_labels_bought"] == 8
    assert t.state.global_step == 2 and all("loss" in h for h in t.state.log_history[:2])


def test_posneg_pairing_fits_a_pair_and_trains(tiny_model_path, tmp_path):
    oracle = CountingOracle(table())
    t = make(tiny_model_path, tmp_path, oracle, strategy="posneg-pairing", budget=12)
    t.train()
    m = t.rlavr_pool_metrics
    assert m["pair_found"] == 1 and t.strategy.fitted  # seeded rollouts: a q+ / q- pair among 4 labels
    assert m["pool_labels_bought"] == 4 == m["labels_spent"] and len(oracle.requested) == 4
    # training samples the paired minibatch; its two labels were bought by the pool stage: free now
    for h in t.rlavr_history:
        assert h["strategy/pair_mode"] == 1 and h["labels_bought_this_step"] == 0 and h["route/query"] == 2
    assert t.engine.ledger.n_charged == 4 <= 12 and t.state.global_step == 2


def test_posneg_pairing_with_four_prompts_per_round_trains_the_pair_once(tiny_model_path, tmp_path):
    # regression: the sampler repeated the pair to fill 4 prompts and the round refused the duplicate prompt ids
    oracle = CountingOracle(table())
    t = make(tiny_model_path, tmp_path, oracle, strategy="posneg-pairing", budget=12, per_device_train_batch_size=16)
    t.train()
    m = t.rlavr_pool_metrics
    assert m["pair_found"] == 1
    for h in t.rlavr_history:  # the pair (owned) + 2 fillers, dropped: nothing bought during training
        assert h["strategy/pair_in_batch"] == 2 and h["route/query"] == 2 and h["route/drop"] == 2
        assert h["labels_bought_this_step"] == 0
    # only the pool stage bought, each label once, within the budget
    assert t.engine.ledger.n_charged == m["pool_labels_bought"] == len(set(oracle.requested)) == len(oracle.requested)
    assert t.engine.ledger.n_charged <= 12 and t.state.global_step == 2


def test_resume_neither_refits_nor_rebuys(tiny_model_path, tmp_path):
    oracle = CountingOracle(table())
    kw = dict(strategy="pivottrace", strategy_kwargs=PIVOT, budget=0.25, max_steps=4, save_strategy="steps",
              save_steps=2)
    first = make(tiny_model_path, tmp_path, oracle, **kw)
    first.train()
    bought_first = list(oracle.requested)
    assert first.rlavr_pool_metrics["pool_labels_bought"] == 8
    resumed = make(tiny_model_path, tmp_path, oracle, **kw)
    calls: list[Any] = []
    resumed.fit_pool = lambda *a, **k: calls.append(a) or {}  # type: ignore[method-assign]
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    assert calls == [] and resumed.rlavr_pool_metrics == {}
    # the fitted thresholds and plan came from the checkpoint
    assert resumed.strategy.fitted and resumed.strategy.plan == first.strategy.plan
    assert len(oracle.requested) == len(set(oracle.requested))  # no pool (or training) label bought twice
    assert set(oracle.requested[len(bought_first):]).isdisjoint(bought_first)
    assert resumed.engine.ledger.n_charged <= int(0.25 * resumed.engine.ledger.prompts_seen)


def test_a_manual_refit_reuses_the_pool_labels_for_free(tiny_model_path, tmp_path):
    oracle = CountingOracle(table())
    t = make(tiny_model_path, tmp_path, oracle, strategy="pivottrace", strategy_kwargs=PIVOT, budget=0.25,
             fit_pool="never")
    assert t.fit_pool()["pool_labels_bought"] == 8
    n = len(oracle.requested)
    again = t.fit_pool()
    assert again["pool_labels_bought"] == 0 and len(oracle.requested) == n
    assert t.engine.ledger.prompts_seen == 32  # the pool step is recorded once
    t.train()  # fit_pool="never": the manual fit is used, no automatic one
    assert len([h for h in t.state.log_history if "rlavr/pool/pool_prompts" in h]) == 1


def test_offline_uncertainty_consistency_gets_logprobs_for_its_pool(tiny_model_path, tmp_path):
    oracle = CountingOracle(table())
    t = make(tiny_model_path, tmp_path, oracle, strategy="uncertainty-consistency",
             strategy_kwargs={"mode": "offline"}, budget=0.5, pool_size=8, max_steps=1)
    t.train()
    m = t.rlavr_pool_metrics
    assert m["pool_prompts"] == 8 and m["n_scored"] == 4 == m["pool_labels_bought"]  # floor(0.5 x 8)
    assert t.strategy.pool_selected


def test_strategies_without_a_pool_stage_run_nothing(tiny_model_path, tmp_path):
    oracle = CountingOracle(table())
    t = make(tiny_model_path, tmp_path, oracle, strategy="random", budget="2/step", max_steps=1)
    rollouts = t.rollout_func
    assert not pool_fit_wanted(t.strategy) and t.fit_pool() == {}
    assert rollouts.calls == 0 and t.engine.ledger.prompts_seen == 0
    t.train()
    assert rollouts.calls == 1 and t.rlavr_pool_metrics == {} and t.engine.ledger.last_step != POOL_STEP
    # configuration-dependent pool stages: fixed-threshold PivotTrace and online PBC need no pool
    fixed = make(tiny_model_path, tmp_path / "f", oracle, strategy="pivottrace",
                 strategy_kwargs={**PIVOT, "calibration": "fixed"})
    online = make(tiny_model_path, tmp_path / "o", oracle, strategy="uncertainty-consistency")
    assert not pool_fit_wanted(fixed.strategy) and not pool_fit_wanted(online.strategy)


def test_config_fields_are_validated(tmp_path):
    base = {**BASE_ARGS, "output_dir": str(tmp_path)}
    assert RLAVRConfig(**base).fit_pool == "auto" and RLAVRConfig(**base).pool_size is None
    with pytest.raises(ValueError, match="fit_pool"):
        RLAVRConfig(**base, fit_pool="always")
    with pytest.raises(ValueError, match="pool_size"):
        RLAVRConfig(**base, pool_size=0)
    with pytest.raises(ValueError, match="pool_size"):
        RLAVRConfig(**base, pool_size=True)


def test_pool_rows_come_from_the_strategy_when_it_sizes_its_pool() -> None:
    """Offline uncertainty consistency sizes its own pool relative to the dataset (a seeded uniform sample);
    an explicit pool_size / max_prompts still wins; other strategies keep the 256-row rule."""

    from rlavr.strategies.registry import get_strategy

    rows = [{"id": f"r{i}", "prompt": f"q{i}"} for i in range(600)]

    def fake(strategy: Any, pool_size: int | None = None) -> Any:
        return {"strategy": strategy, "seed": 0, "pool_size": pool_size, "id_column": "id"}

    uc = get_strategy("uncertainty-consistency", mode="offline", pool_fraction=0.5, seed=4)
    got = pool_rows(rows, **fake(uc), max_prompts=None)
    want = [rows[i]["id"] for i in uc.pool_indices(600) or []]
    assert [r["id"] for r in got] == want and len(want) == 300
    assert len(pool_rows(rows, **fake(uc, pool_size=10), max_prompts=None)) == 10
    assert len(pool_rows(rows, **fake(uc), max_prompts=20)) == 20
    pt = get_strategy("pivottrace")
    assert len(pool_rows(rows, **fake(pt), max_prompts=None)) == 256
