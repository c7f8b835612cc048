"""rlavr.trl._compat: the accessors of TRL's private API work on trl 1.16 and fail clearly when TRL changes."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from trl_tiny import BASE_ARGS, exact_reward, load_tokenizer, make_dataset

from rlavr.trl import RLAVRConfig, RLAVRGRPOTrainer, _compat
from rlavr.trl._compat import TRLCompatError
from trl import GRPOTrainer

SRC = Path(_compat.__file__).parent


@pytest.fixture(scope="module")
def trainer(tiny_model_path: str, tmp_path_factory: pytest.TempPathFactory) -> RLAVRGRPOTrainer:
    out = tmp_path_factory.mktemp("compat")
    args = RLAVRConfig(output_dir=str(out), **BASE_ARGS, strategy="gt", budget=1.0,
                       ledger_path=str(out / "ledger.sqlite"))
    return RLAVRGRPOTrainer(model=tiny_model_path, reward_funcs=[exact_reward], args=args,
                            train_dataset=make_dataset(8), processing_class=load_tokenizer(tiny_model_path))


def test_accessors_work_on_the_installed_trl(trainer: RLAVRGRPOTrainer) -> None:
    _compat.check_trl()
    assert _compat.is_vlm(trainer) is False
    assert _compat.pad_token_id(trainer) == trainer.processing_class.pad_token_id
    assert set(_compat.metrics(trainer)) >= {"train", "eval"}
    _compat.log_metric(trainer, "rlavr/test_metric", 2.0)
    assert _compat.metrics(trainer)["train"]["rlavr/test_metric"] == [2.0]
    assert isinstance(_compat.runs_policy_nograd_forward(trainer), bool)
    out = _compat.generate_output(trainer._generate(["1+1="]))
    assert len(out.prompt_ids) == len(out.completion_ids) == len(out.completions) == 1  # one completion per prompt
    with _compat.no_gradient_checkpointing(trainer, trainer.model)():
        pass


def test_missing_attributes_fail_with_a_clear_error() -> None:
    bare = SimpleNamespace(args=SimpleNamespace(steps_per_generation=1, gradient_accumulation_steps=1))
    for fn, name in [(_compat.is_vlm, "_is_vlm"), (_compat.pad_token_id, "_tokenizer"),
                     (_compat.metrics, "_metrics"), (_compat.runs_policy_nograd_forward, "num_iterations")]:
        with pytest.raises(TRLCompatError, match=rf"GRPOTrainer\.{name} .*does not exist in the installed trl "
                                                 r"[0-9.]+; rlavr.trl supports trl>=1.16,<1.17"):
            fn(bare)
    with pytest.raises(TRLCompatError, match="_metrics"):
        _compat.metrics(SimpleNamespace(_metrics=defaultdict(list)))  # reshaped: no "train" entry
    with pytest.raises(ValueError, match="pad_token_id"):
        _compat.pad_token_id(SimpleNamespace(_tokenizer=SimpleNamespace(pad_token_id=None)))


def test_a_reshaped_generate_tuple_is_refused() -> None:
    good = _compat.generate_output(tuple(range(8)))
    assert good.prompt_ids == 0 and good.completion_ids == 1 and good.completions == 3 and good.logprobs == 4
    with pytest.raises(TRLCompatError, match=r"_generate returned a 7-tuple, expected the 8-tuple"):
        _compat.generate_output(tuple(range(7)))
    with pytest.raises(TRLCompatError, match="returned dict"):
        _compat.generate_output({"prompt_ids": []})  # type: ignore[arg-type]


def test_a_changed_signature_is_refused() -> None:
    class Renamed(GRPOTrainer):
        def _calculate_rewards(self, inputs, prompts, completions):  # type: ignore[override]
            return None

    class Missing:
        pass

    with pytest.raises(TRLCompatError, match=r"Renamed._calculate_rewards has the parameters .*expected"):
        _compat.check_trl(Renamed)
    with pytest.raises(TRLCompatError, match="Missing._calculate_rewards does not exist"):
        _compat.check_trl(Missing)


def test_only_compat_touches_trls_private_attributes() -> None:
    """Every other file of rlavr.trl goes through _compat for TRL's private attributes (overriding the private
    methods, and calling super() from the override, is the trainer's job)."""
    private = re.compile(r"\b(?:self|trainer)\.(_metrics|_tokenizer|_is_vlm|_log_completion_extra)\b"
                         r"|GRPOTrainer\._get_per_token_logps_and_entropies\(|grpo_trainer\.py:\d+"
                         r"|from trl\.(?:models|trainer)\.utils import")
    offenders = [f"{p.name}:{i}" for p in SRC.glob("*.py") if p.name != "_compat.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if private.search(line)]
    assert offenders == []


def test_generate_positions_are_only_read_in_compat() -> None:
    """What ``_generate`` returns is named by _compat.generate_output, never indexed by position elsewhere."""
    offenders: list[Any] = []
    for p in SRC.glob("*.py"):
        text = p.read_text()
        for name in re.findall(r"(\w+) = (?:super\(\)|self|trainer)\._generate\(", text):
            if re.search(rf"\b{name}\[\d\]", text):
                offenders.append((p.name, name))
    assert offenders == []
    assert all("_compat.generate_output(" in (SRC / f).read_text() for f in ("round.py", "pool.py"))
