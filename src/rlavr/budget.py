"""Label budget: how many NEW ground-truth labels may be bought at a step.

A :class:`Budget` combines up to three limits (all optional; none at all = unlimited):

* ``ratio``: a global cap of ``floor(ratio x prompts seen so far)`` labels, counting this step's prompts.
  Unspent budget carries over to later steps. Computed with exact decimal arithmetic (``0.29 x 100 = 29``).
* ``total``: an absolute global cap.
* ``per_step`` / ``per_step_ratio``: at most ``per_step`` labels, or ``ceil(per_step_ratio x B)`` labels, in
  any one step (CARE buys ``ceil(0.2 x 64) = 13`` per step of 64 prompts).

Labels already in the ledger are free and never counted again. The limit is always evaluated against the
ledger's count of charged labels, inside its write lock, *before* anything is bought, so it cannot be
exceeded, by any number of processes sharing the ledger.

A per-step cap is a cap per step *key* of a run: the labels the run has already charged at that key count against
it (``step_charged``), so a step replayed after a resume (the killed attempt's labels of that step are free to
reuse) buys at most what the cap leaves, and a kill + resume spends exactly what an uninterrupted run spends when
the replay sees the same batches (see :meth:`rlavr.engine.AcquisitionEngine.load_state_dict`).
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

logger = logging.getLogger(__name__)
_warned_one_label = False
"""Whether :meth:`Budget.parse` has warned (once per process) about an int budget of 1."""


def _clear(exc: ValidationError, spec: object) -> ValueError:
    """A one-line ``ValueError`` naming the field, the rule and the value, instead of pydantic's dump."""
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "budget"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return ValueError(f"budget.{loc}: {msg}, got {err.get('input')!r} (from {spec!r}); a budget is a share of "
                      "prompts in [0, 1] (0.2, '20%'), a count of labels >= 0 (500), a per-step form ('13/step', "
                      "'0.2/step') or None for unlimited")

__all__ = ["Budget", "BudgetView", "ceil_share", "floor_share"]


def floor_share(ratio: float, n: int) -> int:
    """``floor(ratio x n)`` in exact decimal arithmetic (``floor_share(0.29, 100) == 29``; floats give 28)."""
    return math.floor(Fraction(repr(float(ratio))) * int(n))


def ceil_share(ratio: float, n: int) -> int:
    """``ceil(ratio x n)`` in exact decimal arithmetic (``ceil_share(0.14, 50) == 7``; floats give 8).

    Every "top ``p`` of the batch" count in rlavr goes through this (or :func:`floor_share`), so that a ratio
    typed as a decimal selects the number of groups a reader computes by hand.
    """
    return math.ceil(Fraction(repr(float(ratio))) * int(n))


def _parse_number(body: str, spec: str) -> int | float:
    """``"13"`` -> 13, ``"0.2"`` / ``"2e-1"`` -> 0.2, ``"20%"`` -> 0.2 (exact: ``"29%"`` -> 0.29)."""
    try:
        if body.endswith("%"):
            return float(Fraction(body[:-1]) / 100)
        if body.lstrip("+-").isdigit():
            return int(body)
        return float(body)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"budget: cannot parse {spec!r}; examples: 0.2, '20%', 500, '13/step', '0.2/step'") from None


def _warn_one_label() -> None:
    global _warned_one_label
    if not _warned_one_label:
        _warned_one_label = True
        logger.warning("budget=1 is ONE label for the whole run (an int budget is a count of labels); for a label on "
                       "every prompt use 1.0 or '100%' (a float is a share of prompts). Logged once")


class Budget(BaseModel):
    """Label budget (see module docstring). All fields optional; combine freely.

    Attributes:
        ratio: fraction in ``[0, 1]`` of prompts seen that may be labelled (global, cumulative).
        total: absolute number of labels for the whole run.
        per_step: at most this many new labels per step.
        per_step_ratio: at most ``ceil(per_step_ratio x B)`` new labels per step, ``B`` = prompts in the step.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    ratio: float | None = Field(default=None, ge=0.0, le=1.0)
    total: int | None = Field(default=None, ge=0)
    per_step: int | None = Field(default=None, ge=0)
    per_step_ratio: float | None = Field(default=None, ge=0.0, le=1.0)

    @field_validator("ratio", "total", "per_step", "per_step_ratio", mode="before")
    @classmethod
    def _no_bool(cls, v: object, info: ValidationInfo) -> object:
        if isinstance(v, bool):
            raise ValueError(f"{info.field_name}: expected a number, got {v!r}")
        return v

    @model_validator(mode="after")
    def _finite(self) -> Budget:
        for name in ("ratio", "per_step_ratio"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):
                raise ValueError(f"{name}: must be finite, got {v}")
        return self

    # ------------------------------------------------------------------ constructors
    @classmethod
    def unlimited(cls) -> Budget:
        return cls()

    @classmethod
    def parse(cls, spec: Budget | float | int | str | dict | None) -> Budget:
        """Build a budget from a short form.

        * ``None``, ``"none"``, ``"unlimited"``, ``"inf"`` -> unlimited;
        * a float in ``[0, 1]`` (``0.2``, ``"0.2"``, ``"2e-1"``) or a percentage (``"20%"``) -> ``ratio``;
        * an int (``500``, ``"500"``) -> ``total``;
        * ``"13/step"`` -> ``per_step``; ``"0.2/step"`` or ``"20%/step"`` -> ``per_step_ratio``;
        * a dict of fields, or a :class:`Budget`.

        An int is a COUNT and a float a SHARE: ``1`` is one label for the whole run, ``1.0`` (or ``"100%"``)
        every prompt. Because ``1`` is almost always meant as ``1.0``, an int budget of exactly 1 logs one
        ``logging.WARNING`` per process (the budget is still 1 label).

        Raises:
            ValueError: anything else, in one line naming the field and the value (e.g. a ratio outside
                ``[0, 1]``, a negative count such as ``-1``), never pydantic's multi-line dump.
        """
        if spec is None:
            return cls()
        if isinstance(spec, Budget):
            return spec
        if isinstance(spec, dict):
            return cls._build(spec, spec)
        if isinstance(spec, bool):
            raise ValueError(f"budget: expected a number, got {spec!r}")
        if isinstance(spec, numbers.Integral):
            n = int(spec)
            if n < 0:
                raise ValueError(f"budget.total: a label count must be >= 0, got {n}; an int budget is a number of labels "
                                 "(500), a float in [0, 1] a share of prompts (0.2), None unlimited")
            if n == 1:
                _warn_one_label()
            return cls(total=n)
        if isinstance(spec, numbers.Real):
            v = float(spec)
            if not (math.isfinite(v) and 0.0 <= v <= 1.0):
                raise ValueError(f"budget: a float budget is a ratio and must lie in [0, 1], got {spec}; "
                                 "pass an int for an absolute count")
            return cls(ratio=v)
        if isinstance(spec, str):
            s = spec.strip().lower().replace(" ", "")
            if s in ("", "none", "unlimited", "inf"):
                return cls()
            per_step = s.endswith("/step")
            body = s[: -len("/step")] if per_step else s
            value = _parse_number(body, spec)
            if per_step:
                if isinstance(value, int):
                    return cls._build({"per_step": value}, spec)
                return cls._build({"per_step_ratio": value}, spec)
            return cls.parse(value)
        raise ValueError(f"budget: cannot parse {spec!r} of type {type(spec).__name__}")

    @classmethod
    def _build(cls, fields: dict[str, Any], spec: object) -> Budget:
        try:
            return cls(**fields)
        except ValidationError as exc:
            raise _clear(exc, spec) from None
        except TypeError as exc:  # e.g. non-string keys
            raise ValueError(f"budget: cannot build a budget from {spec!r} ({exc})") from None

    # ------------------------------------------------------------------ arithmetic
    @property
    def is_unlimited(self) -> bool:
        return self.ratio is None and self.total is None and self.per_step is None and self.per_step_ratio is None

    def global_cap(self, prompts_seen: int) -> int | None:
        """Total labels allowed after ``prompts_seen`` prompts (``None`` = no global cap)."""
        caps = []
        if self.ratio is not None:
            caps.append(floor_share(self.ratio, prompts_seen))
        if self.total is not None:
            caps.append(self.total)
        return min(caps) if caps else None

    def step_cap(self, batch_size: int) -> int | None:
        caps = []
        if self.per_step is not None:
            caps.append(self.per_step)
        if self.per_step_ratio is not None:
            caps.append(ceil_share(self.per_step_ratio, batch_size))
        return min(caps) if caps else None

    def allowed(self, charged: int, prompts_seen: int, batch_size: int, step_charged: int = 0) -> int:
        """New labels that may be bought now, given ``charged`` so far and ``prompts_seen`` (including this step).

        ``step_charged``: labels already charged at this step (its step key) by this run, e.g. by an attempt of
        the step that was killed after the checkpoint the run resumed from. They count against the per-step cap,
        so a replayed step never buys more than the step could buy once.
        """
        if charged < 0 or prompts_seen < 0 or batch_size < 0 or step_charged < 0:
            raise ValueError(f"Budget.allowed: counts must be >= 0 (charged={charged}, prompts_seen={prompts_seen}, "
                             f"batch_size={batch_size}, step_charged={step_charged})")
        limit = batch_size
        g = self.global_cap(prompts_seen)
        if g is not None:
            limit = min(limit, g - charged)
        s = self.step_cap(batch_size)
        if s is not None:
            limit = min(limit, s - step_charged)
        return max(0, limit)

    def describe(self) -> str:
        if self.is_unlimited:
            return "unlimited"
        parts = []
        if self.ratio is not None:
            parts.append(f"{self.ratio * 100:g}% of prompts")
        if self.total is not None:
            parts.append(f"{self.total} labels")
        if self.per_step is not None:
            parts.append(f"<= {self.per_step}/step")
        if self.per_step_ratio is not None:
            parts.append(f"<= ceil({self.per_step_ratio:g}·B)/step")
        return ", ".join(parts)


@dataclass(frozen=True, eq=False)
class BudgetView:
    """What a strategy sees of the budget at one step.

    Attributes:
        remaining: NEW labels that may be bought this step (already-owned labels do not count).
        known: ``(B,)`` bool, the group's label is already in the ledger (querying it is free).
        spent: labels charged so far in the run.
        cap: the global cap at this step (``None`` = none).
    """

    remaining: int
    known: np.ndarray
    spent: int = 0
    cap: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.remaining, bool) or not isinstance(self.remaining, int | np.integer) or self.remaining < 0:
            raise ValueError(f"BudgetView.remaining: expected an int >= 0, got {self.remaining!r}")
        known = np.asarray(self.known)
        if known.ndim != 1:
            raise ValueError(f"BudgetView.known: expected a (B,) bool array, got shape {known.shape}")
        if known.size and known.dtype != bool:
            raise ValueError(f"BudgetView.known: expected bool, got dtype {known.dtype}")
        if self.spent < 0:
            raise ValueError(f"BudgetView.spent: must be >= 0, got {self.spent}")
        if self.cap is not None and self.cap < 0:
            raise ValueError(f"BudgetView.cap: must be >= 0 or None, got {self.cap}")
        object.__setattr__(self, "remaining", int(self.remaining))
        object.__setattr__(self, "known", known.astype(bool, copy=False))

    @classmethod
    def unlimited(cls, batch_size: int) -> BudgetView:
        return cls(remaining=batch_size, known=np.zeros(batch_size, dtype=bool))

    @classmethod
    def of(cls, remaining: int, batch_size: int) -> BudgetView:
        return cls(remaining=remaining, known=np.zeros(batch_size, dtype=bool))


def budget_value(text: str) -> float | int | str:
    """A budget typed as text (``rlavr bench --budgets``, ``rlavr replay --budget``, ``name@budget``) as the value
    :meth:`Budget.parse` reads: ``"0.2"`` -> ``0.2``, ``"500"`` -> ``500``, anything else (``"20%"``, ``"2/step"``,
    ``"unlimited"``) unchanged, for :meth:`Budget.parse` to read or refuse."""
    try:
        return float(text) if "." in text and "/" not in text else int(text)
    except ValueError:
        return text
