"""Label-less runs, ``args=None`` and TRL-first validation of ``RLAVRGRPOTrainer`` (docs/trl.md, "Without a label
column"; :mod:`rlavr.trl.activation`)."""

from __future__ import annotations

import logging
import os
from typing import Any

import pytest
from trl_tiny import BASE_ARGS, SeededRollouts, load_tokenizer, make_dataset, overlap_reward

from rlavr.budget import Budget
from rlavr.trl import RLAVRConfig, RLAVRGRPOTrainer
from rlavr.trl.activation import budget_buys_nothing, resolve_activation
from trl import GRPOConfig, GRPOTrainer

COMPARED = ("loss", "grad_norm", "reward", "reward_std", "entropy")


def prompt_only(n: int = 32) -> Any:
    return make_dataset(n, small=True, with_id=False).remove_columns(["answer"])


def prompt_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """A label-free reward (like a reward model): depends on the completion only."""
    return [float(len(c) % 3) + 0.1 * c.count("1") for c in completions]


def history(trainer: Any) -> list[dict[str, float]]:
    return [{k: h[k] for k in COMPARED if k in h} for h in trainer.state.log_history if "loss" in h]


def rl_args(tmp_path: Any, **kw: Any) -> RLAVRConfig:
    return RLAVRConfig(output_dir=str(tmp_path / "out"), **{**BASE_ARGS, "answer_space": "exact", **kw})


# ================================================================================================ the rules


def test_resolve_activation_rules() -> None:
    ds = prompt_only(4)

    def settings(**kw: Any) -> Any:
        return RLAVRConfig(output_dir="x", report_to="none", use_cpu=True, bf16=False, **kw).rlavr

    def mode(name: str = "care", args_given: bool = True, oracle_given: bool = False, **kw: Any) -> str:
        return resolve_activation(ds, settings(strategy=name, **kw), name, oracle_given=oracle_given,
                                  args_given=args_given).mode

    assert mode(args_given=False) == "inactive"  # args=None: the default config asks for nothing
    assert mode("gt", budget=None) == "inactive"
    assert mode(budget=0) == "label_free" and mode(budget="0/step") == "label_free"
    assert mode(oracle_given=True) == "active"
    assert mode(label_column="prompt") == "active"  # the column is there
    with pytest.raises(ValueError, match=r"label_column: .*no label column 'answer'.*oracle=.*budget=0.*"
                                         r"strategy='gt', budget=None"):
        mode(budget=0.2)
    with pytest.raises(ValueError, match="strategy 'gt'"):
        mode("gt", budget=5)  # gt with a finite budget drops the rest: it needs the labels
    assert budget_buys_nothing(Budget.parse(0)) and not budget_buys_nothing(Budget.parse(None))


# ================================================================================================ trainer level


def test_args_none_builds_a_default_config_like_trl(tiny_model_path, tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.chdir(tmp_path)
    # GRPOConfig's defaults ask for bf16, which transformers refuses on a machine without a bf16 GPU (stock TRL's
    # args=None fails there too): pretend one is there; nothing is trained here
    import transformers.training_args

    monkeypatch.setattr(transformers.training_args, "is_torch_bf16_gpu_available", lambda: True)
    tok = load_tokenizer(tiny_model_path)
    stock = GRPOTrainer(model=tiny_model_path, reward_funcs=[prompt_reward], train_dataset=prompt_only(8),
                        processing_class=tok)
    with caplog.at_level(logging.WARNING, logger="rlavr.trl.trainer"):
        ours = RLAVRGRPOTrainer(model=tiny_model_path, reward_funcs=[prompt_reward], train_dataset=prompt_only(8),
                                processing_class=tok)
    assert isinstance(ours.args, RLAVRConfig)
    assert ours.args.output_dir == stock.args.output_dir == "tiny-qwen3-GRPO"
    assert ours.args.strategy == "care" and ours.args.budget == 0.2  # the documented defaults
    assert not ours.rlavr_active and "args=None" in ours.rlavr_activation.reason
    assert sum("acquisition is OFF" in r.getMessage() for r in caplog.records) == 1
    # with a label column, args=None is an active run with the documented defaults
    active = RLAVRGRPOTrainer(model=tiny_model_path, reward_funcs=[prompt_reward],
                              train_dataset=make_dataset(8), processing_class=tok)
    assert active.rlavr_active and active.engine.strategy.name == "care"


def test_label_less_gt_trains_exactly_like_grpo(tiny_model_path, tmp_path, caplog) -> None:
    """TRL's prompt-only datasets and reward-model-only scripts: gt + budget=None is plain GRPO, bit for bit, with
    no ledger file and no rlavr metric."""
    tok = load_tokenizer(tiny_model_path)
    stock = GRPOTrainer(model=tiny_model_path, reward_funcs=[prompt_reward],
                        args=GRPOConfig(output_dir=str(tmp_path / "stock"), **{**BASE_ARGS, "max_steps": 3}),
                        train_dataset=prompt_only(), processing_class=tok)
    stock.train()
    with caplog.at_level(logging.WARNING, logger="rlavr.trl.trainer"):
        ours = RLAVRGRPOTrainer(model=tiny_model_path, reward_funcs=[prompt_reward],
                                args=rl_args(tmp_path, strategy="gt", budget=None, max_steps=3),
                                train_dataset=prompt_only(), processing_class=tok)
    assert not ours.rlavr_active
    assert [r.getMessage() for r in caplog.records if "acquisition is OFF" in r.getMessage()] == [
        "rlavr: acquisition is OFF, training exactly like trl.GRPOTrainer (no oracle, no ledger, no label "
        "rewriting): train_dataset has no label column 'answer' (columns: ['prompt']) and no oracle= was given; "
        "strategy='gt' with an unlimited budget is plain GRPO. To acquire labels, set RLAVRConfig.label_column to "
        "the column holding the ground truth or pass oracle=."]
    ours.train()
    assert history(ours) == history(stock) and len(history(ours)) == 3
    assert any(h["grad_norm"] > 0 for h in history(ours))  # the comparison is not vacuous
    assert ours.rlavr_history == [] and ours.engine.spent == 0
    assert not any(k.startswith(("rlavr", "route/", "budget")) for h in ours.state.log_history for k in h)
    assert not os.path.exists(ours.args.resolved_ledger_path())
    with pytest.raises(ValueError, match="fit_pool: acquisition is off"):
        ours.fit_pool()


def test_label_less_strategy_with_a_budget_is_a_clear_error(tiny_model_path, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"label_column: train_dataset has no label column 'answer' \(columns: "
                                         r"\['prompt'\]\) and no oracle= was given, but strategy 'care'"):
        RLAVRGRPOTrainer(model="/nonexistent/model/never/loaded", reward_funcs=[prompt_reward],
                         args=rl_args(tmp_path, strategy="care", budget=0.2), train_dataset=prompt_only(8))


def test_label_less_budget_zero_runs_label_free(tiny_model_path, tmp_path) -> None:
    tok = load_tokenizer(tiny_model_path)
    seen: list[list[Any]] = []

    def reads_label(completions: list[Any], answer: list[Any], **kw: Any) -> list[float]:
        seen.append(list(answer))
        return [float(c.strip() == a) for c, a in zip(completions, answer, strict=True)]

    t = RLAVRGRPOTrainer(model=tiny_model_path, reward_funcs=[reads_label],
                         args=rl_args(tmp_path, strategy="ttrl", budget=0, max_steps=2,
                                      ledger_path=str(tmp_path / "l.sqlite")),
                         train_dataset=prompt_only(), processing_class=tok, rollout_func=SeededRollouts(tok))
    assert t.rlavr_active and t.rlavr_activation.mode == "label_free"
    t.train()
    assert t.engine.spent == 0 and len(t.rlavr_history) == 2
    assert seen and all(a in ("1", "2", "3", "4") for batch in seen for a in batch)  # majority votes written


def test_streaming_dataset_needs_an_oracle(tmp_path) -> None:
    stream = make_dataset(8).to_iterable_dataset()
    with pytest.raises(ValueError, match=r"IterableDataset, e\.g\. load_dataset\(\.\.\., streaming=True\).*"
                                         r"pass oracle="):
        RLAVRGRPOTrainer(model="/nonexistent/model/never/loaded", reward_funcs=[overlap_reward],
                         args=rl_args(tmp_path, strategy="gt", budget=None), train_dataset=stream)


def test_trl_validates_its_own_arguments_first(tiny_model_path, tmp_path) -> None:
    tok = load_tokenizer(tiny_model_path)
    args = rl_args(tmp_path, strategy="gt", budget=None)
    with pytest.raises(ValueError, match="`train_dataset` is required unless an `environment_factory`"):
        RLAVRGRPOTrainer(model=tiny_model_path, reward_funcs=[overlap_reward], args=args, processing_class=tok)
    with pytest.raises(TypeError, match="`train_dataset` must be a `Dataset` or `IterableDataset`, got `list`"):
        RLAVRGRPOTrainer(model=tiny_model_path, reward_funcs=[overlap_reward], args=args, processing_class=tok,
                         train_dataset=[{"prompt": "1+1=", "answer": "2"}])


def test_a_mistyped_label_column_is_named() -> None:
    ds = make_dataset(4)  # columns id, prompt, answer
    settings = RLAVRConfig(output_dir="x", report_to="none", use_cpu=True, bf16=False, strategy="gt", budget=None,
                           label_column="solution").rlavr
    act = resolve_activation(ds, settings, "gt", oracle_given=False, args_given=True)
    assert act.mode == "inactive" and "(label_column='answer'?)" in act.reason
    with pytest.raises(ValueError, match=r"\(label_column='answer'\?\)"):
        resolve_activation(ds, RLAVRConfig(output_dir="x", report_to="none", use_cpu=True, bf16=False,
                                           label_column="solution").rlavr, "care", oracle_given=False,
                           args_given=True)
