"""What the timing scripts of ``benchmarks/`` share about the device they time on (not a script itself)."""

from __future__ import annotations

import torch


def require_device(device: str) -> None:
    """Exit with a clear message when ``device`` (``cpu``, ``cuda``, ``cuda:N``) names a GPU this torch cannot use."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device: {device!r} requested but torch.cuda.is_available() is False "
                         f"(torch {torch.__version__})")


def sync() -> None:
    """Wait for queued GPU work, so that a clock read after it covers that work (nothing to wait for on a CPU, or
    before this process has used CUDA)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
