"""Drop-in TRL integration: :class:`RLAVRConfig` (a ``GRPOConfig``) and :class:`RLAVRGRPOTrainer` (a ``GRPOTrainer``).

Turning a TRL GRPO script into an rlavr script::

    from rlavr.trl import RLAVRConfig, RLAVRGRPOTrainer      # instead of GRPOConfig, GRPOTrainer
    args = RLAVRConfig(..., strategy="care", budget=0.2)       # every GRPOConfig field + acquisition fields
    trainer = RLAVRGRPOTrainer(model=..., reward_funcs=..., args=args, train_dataset=ds)

vLLM is used only through TRL's own flags (``use_vllm``, ``vllm_mode``); it is never imported by rlavr. The trainer
module (which imports TRL's ``GRPOTrainer``, and TRL imports vLLM whenever one is findable) is loaded on first use
of :class:`RLAVRGRPOTrainer`, so ``import rlavr.trl`` and :class:`RLAVRConfig` work even next to a broken vLLM, and
``RLAVRConfig(use_vllm=True)`` reports a missing or broken vLLM clearly (:func:`check_vllm_available`).
Tested against ``trl>=1.16,<1.17`` (the trainer overrides private ``GRPOTrainer`` methods).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rlavr.trl.config import RLAVRConfig, RLAVRSettings, check_vllm_available

if TYPE_CHECKING:
    from rlavr.trl.trainer import RLAVRGRPOTrainer, build_rollout_batch

__all__ = ["RLAVRConfig", "RLAVRGRPOTrainer", "RLAVRSettings", "build_rollout_batch", "check_vllm_available"]

_LAZY = {"RLAVRGRPOTrainer", "build_rollout_batch"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from rlavr.trl import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
