"""Fixtures for the rlavr.trl tests: one tiny offline Qwen3 + byte tokenizer per session."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from trl_tiny import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-qwen3")


@pytest.fixture(autouse=True)
def _quiet_trl() -> None:
    # TRL warns once per unscorable row ("All reward functions returned None"); not under test here
    logging.getLogger("trl.trainer.grpo_trainer").setLevel(logging.ERROR)
