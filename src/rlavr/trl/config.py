"""``RLAVRConfig``: a :class:`trl.GRPOConfig` with the fields of active label acquisition.

Every ``GRPOConfig`` / ``TrainingArguments`` field keeps its meaning and default. The new fields are validated by a
pydantic model (:class:`RLAVRSettings`) in ``__post_init__``, so a bad value fails when the config is built, with a
:class:`ValueError` naming the field and the value. The class stays a dataclass, so ``HfArgumentParser``
(``TrlParser``) scripts get ``--strategy care --budget 0.2 ...`` on the command line for free.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from rlavr.budget import Budget
from trl import GRPOConfig

__all__ = ["RLAVRConfig", "RLAVRSettings"]

DropMode = Literal["zero_adv", "mask"]
OracleFailure = Literal["auto", "pseudo", "drop", "raise"]
FitPool = Literal["auto", "never"]
InvalidAnswers = Literal["raise", "warn", "ignore"]

DEFAULT_POOL_CAP = 256
"""Prompts of the pre-training pool when ``pool_size`` is not set (or the whole train dataset if smaller)."""



VLLM_HINT = 'pip install "rlavr[vllm]"'


def check_vllm_available() -> None:
    """Raise a clear :class:`ImportError` when ``use_vllm=True`` cannot work; never imports vLLM.

    Missing: no importable ``vllm``. Broken: a ``vllm`` module is found but no installed ``vllm`` distribution
    (a stray directory on ``sys.path``, a half-removed install); TRL would import it while importing its GRPO
    trainer and fail with an unrelated traceback. Supported versions: TRL 1.16's range, the ``rlavr[vllm]`` pin.
    """
    spec = importlib.util.find_spec("vllm")
    if spec is None:
        raise ImportError(f"use_vllm=True needs vLLM, which is not installed. Install it with `{VLLM_HINT}` "
                          "(or set use_vllm=False to generate with transformers).")
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        where = spec.origin or ", ".join(spec.submodule_search_locations or []) or "?"
        raise ImportError(f"use_vllm=True: a `vllm` module is importable from {where} but no vllm distribution is "
                          f"installed (a stray directory on sys.path or a broken install). Reinstall it with "
                          f"`{VLLM_HINT}` (or set use_vllm=False).") from None


class RLAVRSettings(BaseModel):
    """The rlavr-specific fields of :class:`RLAVRConfig`, validated (see the field docs there)."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    strategy: str
    strategy_kwargs: dict[str, Any]
    budget: Budget
    ledger_path: str | None
    answer_space: str
    id_column: str
    label_column: str
    drop_mode: DropMode
    on_oracle_failure: OracleFailure
    rollout_log_path: str | None
    rollout_log_features: bool
    oracle_max_retries: int
    oracle_backoff: float
    oracle_timeout: float | None
    fit_pool: FitPool
    pool_size: int | None
    allow_extra_label_columns: tuple[str, ...] = ()
    on_invalid_answers: InvalidAnswers = "raise"
    invalid_answer_threshold: float = 0.9
    invalid_answer_rounds: int = 3
    allow_foreign_ledger: bool = False

    @field_validator("invalid_answer_threshold")
    @classmethod
    def _invalid_threshold(cls, v: float) -> float:
        if not 0 < v <= 1:  # also rejects NaN
            raise ValueError("must be in (0, 1]: the share of completions without an answer that flags a round")
        return v

    @field_validator("invalid_answer_rounds")
    @classmethod
    def _invalid_rounds(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be an int >= 1")
        return v

    @field_validator("pool_size")
    @classmethod
    def _pool_size(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"must be an int >= 1, or None (the train dataset, at most {DEFAULT_POOL_CAP} prompts)")
        return v

    @field_validator("strategy", "answer_space", "id_column", "label_column")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be a non-empty string")
        return v.strip()

    @model_validator(mode="after")
    def _log_features_need_a_log(self) -> RLAVRSettings:
        if self.rollout_log_features and not self.rollout_log_path:
            raise ValueError("rollout_log_features=True needs rollout_log_path (the JSONL file to write them to)")
        return self

    @field_validator("oracle_max_retries")
    @classmethod
    def _retries(cls, v: int) -> int:
        if v < 0:
            raise ValueError("must be >= 0")
        return v

    @field_validator("oracle_backoff")
    @classmethod
    def _backoff(cls, v: float) -> float:
        if not v >= 0:  # also rejects NaN
            raise ValueError("must be >= 0")
        return v

    @field_validator("oracle_timeout")
    @classmethod
    def _timeout(cls, v: float | None) -> float | None:
        if v is not None and not v > 0:  # also rejects NaN
            raise ValueError("must be > 0 seconds, or None to wait forever")
        return v


def _parse_kwargs(value: dict[str, Any] | str | None) -> dict[str, Any]:
    """``strategy_kwargs`` from a dict, a JSON object string (command line) or ``None``."""
    from rlavr.options import parse_json_object

    return parse_json_object(value, "strategy_kwargs")


def _column_list(value: Any) -> tuple[str, ...]:
    """``allow_extra_label_columns`` as a tuple of names (a list, a comma-separated string, or ``None``)."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [v for v in (p.strip() for p in value.split(",")) if v]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"allow_extra_label_columns: expected a list of column names, got {value!r}")
    return tuple(v.strip() for v in value)


@dataclass
class RLAVRConfig(GRPOConfig):
    r"""``GRPOConfig`` + active label acquisition (RLAVR).

    All ``GRPOConfig`` fields are accepted unchanged. New fields:

    Args:
        strategy: acquisition strategy: a registry name (``"care"``, ``"entropy"``, ``"random-mask"``, see
            ``rlavr strategies``) or ``"path/to/file.py:ClassName"`` (executes that file). A ``strategy=``
            instance passed to :class:`~rlavr.trl.RLAVRGRPOTrainer` overrides it.
        strategy_kwargs: keyword arguments for the strategy's constructor (a dict, or a JSON object string on the
            command line). Without a ``"seed"`` key, a strategy whose constructor takes ``seed`` gets TRL's
            ``seed`` (so ``seed=0`` and ``seed=1`` runs draw differently); ``{"seed": n}`` fixes it.
        budget: label budget, parsed by :meth:`rlavr.budget.Budget.parse`: a float in ``[0, 1]`` is a ratio of the
            prompts seen (``0.2``), an int an absolute number of labels (``500``), a string may say ``"20%"``,
            ``"13/step"`` (at most 13 new labels per generation round), ``"0.2/step"`` or ``"unlimited"``;
            ``None`` = unlimited. The budget is global: all processes share one count. Default ``0.2`` (the
            engine's own default, ``AcquisitionEngine(budget=None)``, is unlimited). ``1`` is ONE label, ``1.0``
            every prompt (an int budget of 1 logs a warning).
        ledger_path: SQLite file of bought labels (default ``<output_dir>/rlavr_ledger.sqlite``). A label in the
            ledger is never bought again, also after a resume. ``":memory:"`` keeps it in memory (lost at exit).
        answer_space: how answers are extracted from completions and compared (``"math"`` = last ``\boxed{}``,
            math-verify equivalence; ``"integer"``, ``"exact"``, ``"knights_knaves"``). An
            :class:`~rlavr.answers.AnswerSpace` object can be passed to the trainer as ``answer_space=`` instead.
        id_column: dataset column with a stable prompt id (the ledger key). If the dataset has no such column,
            the id is ``"sha1:"`` + the first 16 hex digits of the SHA-1 of the prompt (JSON, sorted keys).
        label_column: dataset column the reward functions read the label from. rlavr rewrites it per row before
            the reward functions run: the bought ground truth for queried groups, the majority-vote answer for
            pseudo-labelled ones. The default oracle reads the ground truth from this column of ``train_dataset``.
        drop_mode: ``"zero_adv"``: dropped groups get advantage 0 (their tokens stay in the loss normaliser);
            ``"mask"``: they are also removed from the loss through ``tool_mask`` and a recomputed
            ``num_items_in_batch`` (exact for the ``dapo``/``bnpo``/``cispo``/``vespo`` losses).
        on_oracle_failure: what happens to a queried group whose label could not be obtained after the retries
            (the oracle raised, timed out, answered ``None`` or an invalid value, or another process was still
            buying it). ``"auto"`` (default): the strategy's own policy: dropped for a rule that never trains on
            pseudo-labels (``gt``, every ``-mask`` form, pos-neg pairing, uncertainty consistency) and for CARE,
            the majority vote for the rules that pseudo-label the groups they do not query (``random``,
            ``entropy``, ``prob``, ``oracle``, ``pivottrace``); ``"pseudo"`` (majority vote, weight 1, whatever the
            strategy: warned for a rule that never trains on pseudo-labels), ``"drop"``, or ``"raise"`` (stop
            the run with ``OracleFailureError``, chained to the oracle's error). See
            :class:`~rlavr.engine.AcquisitionEngine`.
        rollout_log_path: optional JSONL file; one line per prompt group per generation round (step, id, prompt,
            completions, answers, lengths, mean_logprob, route, weight, score, label_used, majority_answer,
            reference_label), written by the main process; ``rlavr replay`` reads it.
        rollout_log_features: also log every rollout's mean token log-prob and the last-token hidden states of
            the prompt (``prompt_hidden``, ``H`` floats) and of each completion (``hidden``, ``G x H``), so that
            ``rlavr replay`` can score strategies that need them (Prob, PBC, CARE) on a run trained with any
            strategy. Off by default: when the training strategy does not need these signals they cost the
            feature pass (see the TRL page), and the log grows by about ``(G + 1) * H * 10`` bytes per group.
        oracle_max_retries: oracle retries after a failure (exponential backoff).
        oracle_backoff: first retry delay in seconds (doubles each retry).
        oracle_timeout: seconds one oracle call may take before it counts as a failure (then retried, then
            ``on_oracle_failure``); ``None`` (default) waits forever. A timed-out call is abandoned, not killed: a
            label it returns later is ignored and never charged.
        fit_pool: pool fitting for strategies with a pre-training pool stage (PivotTrace's probe calibration,
            offline uncertainty consistency, positive-negative pairing). ``"auto"`` (default): at the start of
            :meth:`~rlavr.trl.RLAVRGRPOTrainer.train`, if the strategy wants a pool fit (it has a pool stage and
            is not fitted yet) and the run did not resume from a checkpoint (the fitted state is in the
            checkpoint), :meth:`RLAVRGRPOTrainer.fit_pool <rlavr.trl.RLAVRGRPOTrainer.fit_pool>` samples
            ``num_generations`` completions per pool prompt with the current policy and fits the strategy; its
            labels are bought through the ledger, within the budget. ``"never"``: no automatic fit (call
            ``trainer.fit_pool()`` yourself). For every other strategy nothing runs.
        pool_size: prompts of the pool: ``None`` (default) = the train dataset, at most 256 prompts (a seeded
            sample, ``seed``, when the dataset is larger); an int >= 1 = that many (at most the dataset).
        allow_extra_label_columns: columns of ``train_dataset`` besides ``label_column`` that look like labels
            (named like one: ``solution``, ``answer``, ``label``, ``ground_truth``, ``target``, ``gold``, ...; or
            equal to ``label_column`` on most sampled rows) and that you declare harmless: no reward function reads
            ground truth from them. Without it the trainer refuses to start on such a dataset, because rlavr
            rewrites only ``label_column`` and a reward reading another label column trains on labels never bought
            (see :func:`rlavr.trl.guards.check_label_columns`). ``eval_dataset`` is not checked (evaluation rewards
            use the dataset's ground truth and train nothing).
        on_invalid_answers: what happens when almost no completion yields an answer in ``answer_space`` (a round
            with at least ``invalid_answer_threshold`` of its completions answerless): a warning at the first such
            round (answer space and an example completion), then ``"raise"`` (default) stops training with a
            ``ValueError`` after ``invalid_answer_rounds`` such rounds in a row; ``"warn"`` only warns (once per
            streak); ``"ignore"`` does nothing.
        invalid_answer_threshold: share of a round's completions (all processes) without an answer that flags the
            round, in ``(0, 1]`` (default ``0.9``).
        invalid_answer_rounds: consecutive flagged rounds before ``on_invalid_answers="raise"`` stops (default 3).
        allow_foreign_ledger: use a ledger that records another dataset or answer space (its labels are then
            reused as ground truth wherever prompt ids collide). Default ``False``: such a ledger is refused with
            :class:`~rlavr.labels.LedgerMismatchError` naming it (see :class:`~rlavr.engine.AcquisitionEngine`).
    """

    strategy: str = field(
        default="care",
        metadata={"help": "Acquisition strategy: registry name (see `rlavr strategies`) or 'path/to/file.py:Class'."},
    )
    strategy_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Keyword arguments for the strategy (dict or JSON object string)."}
    )
    # `str` second: HfArgumentParser parses a Union as its 2nd member (so the command line passes a string)
    budget: float | str | int | dict | None = field(
        default=0.2,
        metadata={"help": "Label budget: ratio (0.2), total (500), '20%%', '13/step', '0.2/step' or 'unlimited'."},
    )
    ledger_path: str | None = field(
        default=None, metadata={"help": "SQLite label ledger (default <output_dir>/rlavr_ledger.sqlite)."}
    )
    answer_space: str = field(
        default="math", metadata={"help": "Answer extraction/equivalence: math, integer, exact, knights_knaves."}
    )
    id_column: str = field(default="id", metadata={"help": "Dataset column with stable prompt ids."})
    label_column: str = field(
        default="answer", metadata={"help": "Dataset column the reward functions read the label from."}
    )
    drop_mode: str = field(
        default="zero_adv",
        metadata={"help": "How dropped groups leave the loss: 'zero_adv' (advantage 0) or 'mask'.",
                  "choices": ["zero_adv", "mask"]},
    )
    on_oracle_failure: str = field(
        default="auto",
        metadata={"help": "When a queried label cannot be obtained: 'auto' (the strategy's own policy), 'pseudo', "
                          "'drop' or 'raise'.",
                  "choices": ["auto", "pseudo", "drop", "raise"]},
    )
    rollout_log_path: str | None = field(
        default=None, metadata={"help": "Optional JSONL log of every prompt group (read by `rlavr replay`)."}
    )
    rollout_log_features: bool = field(
        default=False, metadata={"help": "Also log mean log-probs and last-token hidden states (for `rlavr replay`)."}
    )
    oracle_max_retries: int = field(default=2, metadata={"help": "Oracle retries after a failure."})
    oracle_backoff: float = field(default=0.5, metadata={"help": "First oracle retry delay (seconds)."})
    oracle_timeout: float | None = field(
        default=None, metadata={"help": "Seconds one oracle call may take (default: wait forever)."}
    )
    fit_pool: str = field(
        default="auto",
        metadata={"help": "Pool fitting before training for strategies with a pool stage: 'auto' or 'never'.",
                  "choices": ["auto", "never"]},
    )
    pool_size: int | None = field(
        default=None, metadata={"help": "Prompts of the pre-training pool (default: the dataset, at most 256)."}
    )
    allow_extra_label_columns: list[str] | None = field(
        default=None,
        metadata={"help": "Dataset columns besides label_column that look like labels but carry no ground truth to "
                          "a reward function (otherwise the trainer refuses to start)."},
    )
    on_invalid_answers: str = field(
        default="raise",
        metadata={"help": "When almost no completion has an answer in answer_space: warn at once, then 'raise' "
                          "after invalid_answer_rounds rounds, or only 'warn', or 'ignore'.",
                  "choices": ["raise", "warn", "ignore"]},
    )
    invalid_answer_threshold: float = field(
        default=0.9, metadata={"help": "Share of completions without an answer that flags a round (0 < x <= 1)."}
    )
    invalid_answer_rounds: int = field(
        default=3, metadata={"help": "Consecutive flagged rounds before on_invalid_answers='raise' stops training."}
    )
    allow_foreign_ledger: bool = field(
        default=False, metadata={"help": "Use a ledger recorded with another dataset or answer space (else refused)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.use_vllm:  # before TRL's GRPO trainer module is imported: it imports vLLM when one is findable
            check_vllm_available()
        self.strategy_kwargs = _parse_kwargs(self.strategy_kwargs)
        if isinstance(self.budget, Budget):  # keep the config JSON-serialisable (report_to backends log it)
            self.budget = self.budget.model_dump(exclude_none=True)  # type: ignore[assignment]
        self._rlavr_settings = self._validate()

    def _validate(self) -> RLAVRSettings:
        try:
            budget = Budget.parse(self.budget)
        except (ValueError, ValidationError) as exc:
            raise ValueError(f"budget: invalid value {self.budget!r}: {exc}") from None
        values: dict[str, Any] = {
            "strategy": self.strategy,
            "strategy_kwargs": self.strategy_kwargs,
            "budget": budget,
            "ledger_path": self.ledger_path,
            "answer_space": self.answer_space,
            "id_column": self.id_column,
            "label_column": self.label_column,
            "drop_mode": self.drop_mode,
            "on_oracle_failure": self.on_oracle_failure,
            "rollout_log_path": self.rollout_log_path,
            "rollout_log_features": self.rollout_log_features,
            "oracle_max_retries": self.oracle_max_retries,
            "oracle_backoff": self.oracle_backoff,
            "oracle_timeout": self.oracle_timeout,
            "fit_pool": self.fit_pool,
            "pool_size": self.pool_size,
            "allow_extra_label_columns": _column_list(self.allow_extra_label_columns),
            "on_invalid_answers": self.on_invalid_answers,
            "invalid_answer_threshold": self.invalid_answer_threshold,
            "invalid_answer_rounds": self.invalid_answer_rounds,
            "allow_foreign_ledger": self.allow_foreign_ledger,
        }
        if isinstance(self.pool_size, bool) or not (self.pool_size is None or isinstance(self.pool_size, int)):
            raise ValueError(f"pool_size: expected an int >= 1 or None, got {self.pool_size!r}")
        for name in ("strategy", "answer_space", "id_column", "label_column", "drop_mode", "on_oracle_failure",
                     "fit_pool", "on_invalid_answers"):
            if not isinstance(values[name], str):
                hint = {"strategy": "; pass a Strategy instance as RLAVRGRPOTrainer(strategy=...)",
                        "answer_space": "; pass an AnswerSpace object as RLAVRGRPOTrainer(answer_space=...)"}
                raise ValueError(f"{name}: expected a string, got {values[name]!r}{hint.get(name, '')}")
        try:
            return RLAVRSettings(**values)
        except ValidationError as exc:
            err = exc.errors()[0]
            name = ".".join(str(p) for p in err["loc"]) or "RLAVRConfig"
            raise ValueError(f"{name}: invalid value {values.get(name)!r}: {err['msg']}") from None

    # ------------------------------------------------------------------ derived values
    @property
    def rlavr(self) -> RLAVRSettings:
        """The validated rlavr settings (re-validated if a field was changed after construction)."""
        return self._validate()

    @property
    def parsed_budget(self) -> Budget:
        """The budget as parsed once by the settings' validation (``self.rlavr.budget``)."""
        return self.rlavr.budget

    def resolved_ledger_path(self) -> str:
        """``ledger_path`` or ``<output_dir>/rlavr_ledger.sqlite``."""
        if self.ledger_path:
            return str(self.ledger_path)
        return os.path.join(self.output_dir or ".", "rlavr_ledger.sqlite")
