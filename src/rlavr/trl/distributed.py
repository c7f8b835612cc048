"""The one collective pattern of rlavr.trl: gather every process' rows, decide on the main process, broadcast.

Every training round and every pool chunk runs it on EVERY process, in the same order:

1. :func:`gather_rows`: each process contributes its rows (and, when the strategy reads them, its ``(n, 2, H)``
   hidden states) and the error it hit computing them, if any. Errors travel through the gather instead of being
   raised before it, so no process is left waiting in a collective; afterwards every process holds the same
   :class:`Gathered` (rows in rank-major order, TRL's global order).
2. :func:`on_main_then_broadcast`: the main process (which holds the ledger and the strategy's state) runs the
   decision; the result, or its exception, is broadcast, and every process returns the result or raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np
import torch
from accelerate.utils import broadcast_object_list, gather_object

from rlavr.rollouts import RowFeatures

logger = logging.getLogger(__name__)

__all__ = ["Gathered", "gather_rows", "on_main_then_broadcast"]

T = TypeVar("T")


@dataclass
class Gathered:
    """What :func:`gather_rows` returns on every process.

    Attributes:
        rows: every process' rows, concatenated in rank order.
        errors: the processes' errors (``"rank k: Type: message"``), empty when none failed.
        hidden: the ``(len(rows), 2, H)`` hidden states in the same order, or ``None`` when not gathered.
    """

    rows: list[RowFeatures]
    errors: list[str]
    hidden: np.ndarray | None

    def raise_errors(self, what: str) -> None:
        """Raise on every process (they hold the same errors) when any process failed.

        Raises:
            RuntimeError: ``"rlavr: <what> failed on <errors>"``.
        """
        if self.errors:
            raise RuntimeError(f"rlavr: {what} failed on " + "; ".join(self.errors))


def gather_rows(accelerator: Any, rows: Sequence[RowFeatures], error: str | None, *,
                hidden: torch.Tensor | None = None, hidden_rows: int = 0, hidden_size: Callable[[], int] | None = None,
                keep: int | None = None) -> Gathered:
    """Gather every process' rows (``gather_object``) and, with ``hidden_size``, their hidden states
    (``accelerator.gather``: every process must send ``hidden_rows`` rows; a process whose states are missing or
    malformed, e.g. after an error, sends zeros of ``hidden_size()`` so that the collective still matches).

    Args:
        accelerator: the trainer's ``Accelerator``.
        rows: this process' rows.
        error: this process' error (``None``: none).
        hidden: this process' ``(hidden_rows, 2, H)`` states.
        hidden_rows: the rows of ``hidden`` every process sends.
        hidden_size: ``H`` (called only when a process must send zeros); ``None``: do not gather hidden states.
        keep: keep only each process' first ``keep`` rows (and states) (the pool's padded last chunk).
    """
    got = gather_object([{"rows": list(rows if keep is None else rows[:keep]), "error": error}])
    gathered = [row for p in got for row in p["rows"]]
    errors = [p["error"] for p in got if p["error"]]
    if hidden_size is None:
        return Gathered(gathered, errors, None)
    if hidden is None or hidden.shape[0] != hidden_rows:
        hidden = torch.zeros((hidden_rows, 2, int(hidden_size())), dtype=torch.float32)
    full = accelerator.gather(hidden.to(accelerator.device).float().contiguous()).cpu().numpy()
    if keep is None:
        return Gathered(gathered, errors, full)
    parts = [full[k * hidden_rows : k * hidden_rows + len(p["rows"])] for k, p in enumerate(got)]
    return Gathered(gathered, errors, np.concatenate(parts) if parts else None)


def on_main_then_broadcast(accelerator: Any, fn: Callable[[], T], what: str) -> T:
    """Run ``fn`` on the main process only and broadcast its result to every process.

    An exception on the main process is broadcast as well, so that every process raises instead of waiting in
    a collective: the main process re-raises the original exception, the others a ``RuntimeError`` naming
    ``what``. The result must be picklable.
    """
    payload: list[Any] = [None]
    failure: BaseException | None = None
    if accelerator.is_main_process:
        try:
            payload[0] = {"value": fn(), "error": None}
        except Exception as exc:  # re-raised on every process after the broadcast
            failure = exc
            payload[0] = {"value": None, "error": f"{type(exc).__name__}: {exc}"}
    broadcast_object_list(payload, from_process=0)
    msg = payload[0]
    if msg["error"]:
        if failure is not None:
            raise failure
        raise RuntimeError(f"rlavr: {what} failed on the main process ({msg['error']}); see its log")
    return cast(T, msg["value"])
