"""Drop-in TRL integration: :class:`RLAVRConfig` (a ``GRPOConfig``) and :class:`RLAVRGRPOTrainer` (a ``GRPOTrainer``).

Turning a TRL GRPO script into an rlavr script::

    from rlavr.trl import RLAVRConfig, RLAVRGRPOTrainer      # instead of GRPOConfig, GRPOTrainer
    args = RLAVRConfig(..., strategy="care", budget=0.2)       # every GRPOConfig field + acquisition fields
    trainer = RLAVRGRPOTrainer(model=..., reward_funcs=..., args=args, train_dataset=ds)

vLLM is used only through TRL's own flags (``use_vllm``, ``vllm_mode``); it is never imported by rlavr.
Tested against ``trl>=1.16,<1.17`` (the trainer overrides private ``GRPOTrainer`` methods).
"""

from rlavr.trl.config import RLAVRConfig, RLAVRSettings
from rlavr.trl.trainer import RLAVRGRPOTrainer, build_rollout_batch, check_vllm_available

__all__ = ["RLAVRConfig", "RLAVRGRPOTrainer", "RLAVRSettings", "build_rollout_batch", "check_vllm_available"]
