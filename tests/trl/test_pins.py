"""The private TRL API rlavr.trl overrides exists with the expected signatures (trl>=1.16,<1.17), and vLLM is
only reached through TRL's flags, with a clear error when it is missing."""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from pathlib import Path

import pytest
from packaging.version import Version
from trl_tiny import BASE_ARGS, exact_reward, load_tokenizer, make_dataset

import trl
from rlavr.trl import RLAVRConfig, RLAVRGRPOTrainer, check_vllm_available
from trl import GRPOTrainer


def params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_vllm_pin_is_trls_supported_range():
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    src = (Path(trl.__file__).parent / "import_utils.py").read_text()
    lo, hi = re.search(r'Version\("([0-9.]+)"\) <= _vllm_base_version <= Version\("([0-9.]+)"\)', src).groups()
    assert f'vllm = ["vllm>={lo},<={hi}"]' in pyproject


def test_trl_version_within_the_pin():
    v = Version(trl.__version__)
    assert Version("1.16") <= v < Version("1.17"), v
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert re.search(r'"trl>=1\.16(\.0)?,<1\.17"', pyproject)


def test_overridden_private_methods_have_the_expected_signatures():
    assert params(GRPOTrainer._calculate_rewards) == ["self", "inputs", "prompts", "completions",
                                                      "completion_ids_list"]
    assert params(GRPOTrainer._generate_and_score_completions) == ["self", "inputs"]
    assert params(GRPOTrainer._generate) == ["self", "prompts"]
    assert params(GRPOTrainer._get_per_token_logps_and_entropies)[:5] == ["self", "model", "input_ids",
                                                                        "attention_mask", "logits_to_keep"]
    assert "batch_size" in params(GRPOTrainer._get_per_token_logps_and_entropies)
    assert params(GRPOTrainer._get_train_sampler) == ["self", "dataset"]
    assert params(GRPOTrainer._save_checkpoint) == ["self", "model", "trial"]
    assert params(GRPOTrainer._load_optimizer_and_scheduler) == ["self", "checkpoint"]
    assert params(GRPOTrainer.log) == ["self", "logs", "start_time"]
    assert params(GRPOTrainer._log_completion_extra) == ["self", "column", "values"]


def test_private_invariants_rlavr_relies_on():
    gen = inspect.getsource(GRPOTrainer._generate)
    # the 8-tuple: rlavr reads prompt ids [0], completion ids [1] and sampling logprobs [4]
    assert "return prompt_ids, completion_ids, tool_mask, completions, logprobs, extra_fields, images, tool_images" in gen
    score = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    assert "rewards_per_func = self._calculate_rewards(inputs, prompts, completions, completion_ids_list)" in score
    assert "unscorable_mask = torch.isnan(rewards_per_func).all(dim=1)" in score  # NaN reward -> advantage 0
    assert "advantages = torch.nan_to_num(advantages, nan=0.0)" in score
    assert "self.args.gradient_accumulation_steps % generate_every != 0" in score  # the no-grad forward rule
    assert '"num_items_in_batch": num_items_in_batch' in score
    sampler = inspect.getsource(GRPOTrainer._get_train_sampler)
    assert "mini_repeat_count=self.num_generations" in sampler  # the round layout StrategySampler reproduces
    assert "repeat_count=self.num_iterations * self.args.steps_per_generation" in sampler
    loss = inspect.getsource(GRPOTrainer._compute_loss)
    assert 'completion_mask * inputs["tool_mask"]' in loss  # tool_mask is a loss-only mask
    rewards = inspect.getsource(GRPOTrainer._calculate_rewards)
    assert "rewards_per_func = gather(rewards_per_func)" in rewards  # returns the GLOBAL tensor


def test_rlavr_overrides_are_the_documented_ones():
    own = {n for n, v in vars(RLAVRGRPOTrainer).items() if callable(v) and n.startswith("_") and not n.startswith("__")
           and hasattr(GRPOTrainer, n)}
    assert own == {"_calculate_rewards", "_generate_and_score_completions", "_generate", "_get_train_sampler",
                   "_get_per_token_logps_and_entropies", "_save_checkpoint", "_load_optimizer_and_scheduler"}


def test_vllm_missing_gives_a_clear_error(tiny_model_path, tmp_path):
    if importlib.util.find_spec("vllm") is not None:  # pragma: no cover - GPU machines
        pytest.skip("vLLM is installed here")
    assert "vllm" not in sys.modules
    with pytest.raises(ImportError, match=re.escape('pip install "rlavr[vllm]"')):
        check_vllm_available()
    with pytest.raises(ImportError, match=re.escape('pip install "rlavr[vllm]"')):  # at config time
        RLAVRConfig(output_dir=str(tmp_path), **BASE_ARGS, use_vllm=True, vllm_mode="colocate", strategy="gt")
    args = RLAVRConfig(output_dir=str(tmp_path), **BASE_ARGS, strategy="gt")
    args.use_vllm = True  # switched on after validation: the trainer checks again
    with pytest.raises(ImportError, match=re.escape('pip install "rlavr[vllm]"')):
        RLAVRGRPOTrainer(model=tiny_model_path, reward_funcs=[exact_reward], args=args,
                         train_dataset=make_dataset(8), processing_class=load_tokenizer(tiny_model_path))
    assert "vllm" not in sys.modules
