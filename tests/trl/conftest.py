"""Fixtures for the rlavr.trl tests: one tiny offline Qwen3 + byte tokenizer per session."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from trl_tiny import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-qwen3")


@pytest.fixture(scope="session", autouse=True)
def _deterministic_kernels() -> Iterator[None]:
    """``RLAVR_TEST_DETERMINISTIC=1``: deterministic CUDA kernels (``torch.use_deterministic_algorithms``; needs
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8``), so a GPU run of the GT-equivalence tests separates rlavr's own
    differences from the GPU's run-to-run ones (``benchmarks/gpu_check.py`` runs them both ways)."""
    if os.environ.get("RLAVR_TEST_DETERMINISTIC") != "1":
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


@pytest.fixture(autouse=True)
def _quiet_trl() -> None:
    # TRL warns once per unscorable row ("All reward functions returned None"); not under test here
    logging.getLogger("trl.trainer.grpo_trainer").setLevel(logging.ERROR)
