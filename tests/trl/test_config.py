"""RLAVRConfig: GRPOConfig fields untouched, rlavr fields validated with clear errors, CLI-parsable."""

from __future__ import annotations

import json

import pytest
from transformers import HfArgumentParser

from rlavr.budget import Budget
from rlavr.trl import RLAVRConfig
from trl import GRPOConfig

BASE = dict(use_cpu=True, bf16=False, report_to="none")


def test_defaults_and_grpo_fields(tmp_path):
    cfg = RLAVRConfig(output_dir=str(tmp_path), **BASE, num_generations=4, per_device_train_batch_size=8)
    assert isinstance(cfg, GRPOConfig)
    assert (cfg.strategy, cfg.answer_space, cfg.id_column, cfg.label_column) == ("care", "math", "id", "answer")
    assert cfg.parsed_budget == Budget(ratio=0.2)
    assert cfg.drop_mode == "zero_adv" and cfg.on_oracle_failure == "auto"
    assert cfg.resolved_ledger_path() == str(tmp_path / "rlavr_ledger.sqlite")
    assert cfg.num_generations == 4 and cfg.per_device_train_batch_size == 8
    # every GRPOConfig default is unchanged
    stock = GRPOConfig(output_dir=str(tmp_path), **BASE, num_generations=4, per_device_train_batch_size=8)
    for name, value in stock.to_dict().items():
        assert cfg.to_dict()[name] == value, name
    json.loads(cfg.to_json_string())  # serialisable (TrainingArguments logs it)


@pytest.mark.parametrize(("spec", "expected"), [
    (0.25, Budget(ratio=0.25)), (40, Budget(total=40)), ("20%", Budget(ratio=0.2)),
    ("13/step", Budget(per_step=13)), ("0.2/step", Budget(per_step_ratio=0.2)), (None, Budget()),
    ("unlimited", Budget()), ("0.3", Budget(ratio=0.3)),
])
def test_budget_forms(tmp_path, spec, expected):
    assert RLAVRConfig(output_dir=str(tmp_path), **BASE, budget=spec).parsed_budget == expected


@pytest.mark.parametrize("mode", ["auto", "pseudo", "drop", "raise"])
def test_on_oracle_failure_modes(tmp_path, mode):
    """Every engine mode reaches the validated settings (the trainer passes them to AcquisitionEngine)."""
    cfg = RLAVRConfig(output_dir=str(tmp_path), **BASE, on_oracle_failure=mode)
    assert cfg.rlavr.on_oracle_failure == mode
    (parsed,) = HfArgumentParser(RLAVRConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--use_cpu", "--report_to", "none", "--on_oracle_failure", mode])
    assert parsed.on_oracle_failure == mode


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("budget", 1.5, "budget"),
    ("budget", "lots", "budget"),
    ("budget", -3, "budget"),
    ("drop_mode", "remove", "drop_mode"),
    ("on_oracle_failure", "retry", "on_oracle_failure"),
    ("strategy_kwargs", "{not json", "strategy_kwargs"),
    ("strategy_kwargs", "[1, 2]", "strategy_kwargs"),
    ("label_column", " ", "label_column"),
    ("id_column", "", "id_column"),
    ("strategy", "", "strategy"),
    ("oracle_max_retries", -1, "oracle_max_retries"),
    ("oracle_backoff", float("nan"), "oracle_backoff"),
    ("oracle_timeout", 0, "oracle_timeout"),
    ("rollout_log_features", True, "rollout_log_path"),
    ("oracle_timeout", -2.5, "oracle_timeout"),
])
def test_bad_values_name_the_field(tmp_path, field, value, needle):
    with pytest.raises(ValueError, match=needle):
        RLAVRConfig(output_dir=str(tmp_path), **BASE, **{field: value})


def test_budget_object_and_objects_in_string_fields(tmp_path):
    cfg = RLAVRConfig(output_dir=str(tmp_path), **BASE, budget=Budget(per_step=3, total=10))
    assert cfg.parsed_budget == Budget(per_step=3, total=10)
    json.loads(cfg.to_json_string())
    from rlavr.strategies import get_strategy

    with pytest.raises(ValueError, match=r"strategy: expected a string.*RLAVRGRPOTrainer\(strategy=\.\.\.\)"):
        RLAVRConfig(output_dir=str(tmp_path), **BASE, strategy=get_strategy("random"))


def test_strategy_kwargs_json_and_dict(tmp_path):
    a = RLAVRConfig(output_dir=str(tmp_path), **BASE, strategy_kwargs='{"seed": 3, "mask": true}')
    b = RLAVRConfig(output_dir=str(tmp_path), **BASE, strategy_kwargs={"seed": 3, "mask": True})
    assert a.strategy_kwargs == b.strategy_kwargs == {"seed": 3, "mask": True}
    assert RLAVRConfig(output_dir=str(tmp_path), **BASE).strategy_kwargs == {}


def test_command_line(tmp_path):
    parser = HfArgumentParser(RLAVRConfig)
    (cfg,) = parser.parse_args_into_dataclasses([
        "--output_dir", str(tmp_path), "--use_cpu", "--bf16", "false", "--strategy", "entropy-mask",
        "--budget", "13/step", "--strategy_kwargs", '{"seed": 5}', "--drop_mode", "mask",
        "--ledger_path", str(tmp_path / "l.sqlite"), "--num_generations", "4"])
    assert cfg.strategy == "entropy-mask" and cfg.parsed_budget == Budget(per_step=13)
    assert cfg.strategy_kwargs == {"seed": 5} and cfg.drop_mode == "mask" and cfg.num_generations == 4
    assert cfg.resolved_ledger_path() == str(tmp_path / "l.sqlite")
    (cfg2,) = parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--use_cpu", "--budget", "0.1"])
    assert cfg2.parsed_budget == Budget(ratio=0.1)
    with pytest.raises(SystemExit):  # argparse rejects the choice before __post_init__
        parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--drop_mode", "nope"])


def test_changed_field_is_revalidated(tmp_path):
    cfg = RLAVRConfig(output_dir=str(tmp_path), **BASE)
    cfg.drop_mode = "bogus"
    with pytest.raises(ValueError, match="drop_mode"):
        _ = cfg.rlavr
