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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["Budget", "BudgetView"]


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
        """``0.2`` -> ratio, ``500`` -> total, ``"20%"`` -> ratio, ``"13/step"`` -> per step, ``None`` -> unlimited."""
        if spec is None:
            return cls()
        if isinstance(spec, Budget):
            return spec
        if isinstance(spec, dict):
            return cls(**spec)
        if isinstance(spec, bool):
            raise ValueError(f"budget: expected a number, got {spec!r}")
        if isinstance(spec, int):
            return cls(total=spec)
        if isinstance(spec, float):
            if not 0.0 <= spec <= 1.0:
                raise ValueError(f"budget: a float budget is a ratio and must lie in [0, 1], got {spec}; "
                                 "pass an int for an absolute count")
            return cls(ratio=spec)
        if isinstance(spec, str):
            s = spec.strip().lower()
            try:
                if s in ("", "none", "unlimited", "inf"):
                    return cls()
                if s.endswith("%"):
                    return cls.parse(float(s[:-1]) / 100.0)
                if s.endswith("/step"):
                    v = s[: -len("/step")]
                    return cls(per_step_ratio=float(v)) if "." in v else cls(per_step=int(v))
                return cls.parse(float(s) if "." in s else int(s))
            except ValueError as exc:
                if "budget" in str(exc) or "validation" in str(exc):
                    raise
                raise ValueError(f"budget: cannot parse {spec!r}; examples: 0.2, '20%', 500, '13/step'") from None
        raise ValueError(f"budget: cannot parse {spec!r} of type {type(spec).__name__}")

    # ------------------------------------------------------------------ arithmetic
    @property
    def is_unlimited(self) -> bool:
        return self.ratio is None and self.total is None and self.per_step is None and self.per_step_ratio is None

    def global_cap(self, prompts_seen: int) -> int | None:
        """Total labels allowed after ``prompts_seen`` prompts (``None`` = no global cap)."""
        caps = []
        if self.ratio is not None:
            caps.append(math.floor(Fraction(repr(self.ratio)) * prompts_seen))
        if self.total is not None:
            caps.append(self.total)
        return min(caps) if caps else None

    def step_cap(self, batch_size: int) -> int | None:
        caps = []
        if self.per_step is not None:
            caps.append(self.per_step)
        if self.per_step_ratio is not None:
            caps.append(math.ceil(Fraction(repr(self.per_step_ratio)) * batch_size))
        return min(caps) if caps else None

    def allowed(self, charged: int, prompts_seen: int, batch_size: int) -> int:
        """New labels that may be bought now, given ``charged`` so far and ``prompts_seen`` (including this step)."""
        if charged < 0 or prompts_seen < 0 or batch_size < 0:
            raise ValueError(f"Budget.allowed: counts must be >= 0 (charged={charged}, prompts_seen={prompts_seen}, "
                             f"batch_size={batch_size})")
        limit = batch_size
        g = self.global_cap(prompts_seen)
        if g is not None:
            limit = min(limit, g - charged)
        s = self.step_cap(batch_size)
        if s is not None:
            limit = min(limit, s)
        return max(0, limit)

    def describe(self) -> str:
        if self.is_unlimited:
            return "unlimited"
        parts = []
        if self.ratio is not None:
            parts.append(f"{self.ratio:.0%} of prompts")
        if self.total is not None:
            parts.append(f"{self.total} labels")
        if self.per_step is not None:
            parts.append(f"<= {self.per_step}/step")
        if self.per_step_ratio is not None:
            parts.append(f"<= ceil({self.per_step_ratio:g}·B)/step")
        return ", ".join(parts)


@dataclass(frozen=True)
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
        if self.remaining < 0:
            raise ValueError(f"BudgetView.remaining: must be >= 0, got {self.remaining}")
        object.__setattr__(self, "known", np.asarray(self.known, dtype=bool))

    @classmethod
    def unlimited(cls, batch_size: int) -> BudgetView:
        return cls(remaining=batch_size, known=np.zeros(batch_size, dtype=bool))

    @classmethod
    def of(cls, remaining: int, batch_size: int) -> BudgetView:
        return cls(remaining=remaining, known=np.zeros(batch_size, dtype=bool))
