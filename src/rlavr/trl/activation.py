"""Whether :class:`~rlavr.trl.RLAVRGRPOTrainer` runs label acquisition, and its default config (``args=None``).

A ``GRPOTrainer`` script swapped for ``RLAVRGRPOTrainer`` may have no label column at all (a reward-model-only
script, TRL's prompt-only datasets). What the trainer does then, when no ``oracle=`` is given
(:func:`resolve_activation`):

* the dataset has ``label_column`` (or an ``oracle=`` is given): acquisition runs (``"active"``);
* no label column, and ``args=None`` (nothing was asked of rlavr) or ``strategy="gt"`` with an unlimited budget
  (``budget=None``: "every label", i.e. plain GRPO): acquisition is OFF (``"inactive"``). The trainer then behaves
  exactly like ``trl.GRPOTrainer``: no oracle, no ledger file, no label rewriting, no rlavr metrics or checkpoint
  files; one WARNING says so and why;
* no label column and a budget that can buy nothing (``0``, ``0/step``): acquisition runs label-free
  (``"label_free"``): the strategy routes and pseudo-labels (majority vote, written into ``label_column``) and
  nothing is ever bought;
* no label column, a strategy that buys labels and a budget above 0: a :class:`ValueError` naming the fixes.

Decided before the model is loaded, from the dataset's column names only (no row is read).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from rlavr.budget import Budget
from rlavr.labels import DatasetOracle
from rlavr.rollouts import prompt_id
from rlavr.trl.config import RLAVRConfig, RLAVRSettings
from rlavr.trl.guards import label_like_columns

logger = logging.getLogger(__name__)

__all__ = ["Activation", "budget_buys_nothing", "default_config", "default_oracle", "is_trl_dataset",
           "resolve_activation"]


@dataclass(frozen=True)
class Activation:
    """What :func:`resolve_activation` decided.

    Attributes:
        mode: ``"active"``, ``"label_free"`` (acquisition without a label source; the budget buys nothing) or
            ``"inactive"`` (plain ``GRPOTrainer``).
        reason: why, in words (empty for ``"active"``); logged by the trainer.
    """

    mode: Literal["active", "label_free", "inactive"]
    reason: str = ""


def default_config(model: Any) -> RLAVRConfig:
    """The config of ``RLAVRGRPOTrainer(args=None)``, built the way ``GRPOTrainer`` builds its own:
    ``RLAVRConfig(f"{model_name}-GRPO")`` (every field at its default; ``model_name``: the last part of the model
    id, e.g. ``Qwen2-0.5B-GRPO``)."""
    from rlavr.trl._compat import config_model_id

    model_name = model if isinstance(model, str) else config_model_id(model.config)
    model_name = str(model_name).split("/")[-1]
    return RLAVRConfig(f"{model_name}-GRPO")


def is_trl_dataset(dataset: Any) -> bool:
    """Whether ``dataset`` is a type ``GRPOTrainer`` accepts as ``train_dataset`` (``datasets.Dataset`` or
    ``IterableDataset``). For anything else (``None``, a list) TRL's own error is raised first."""
    from datasets import Dataset, IterableDataset

    return isinstance(dataset, Dataset | IterableDataset)


def budget_buys_nothing(budget: Budget) -> bool:
    """Whether ``budget`` can never buy a label (a ratio, total or per-step cap of 0)."""
    return any(v is not None and v == 0 for v in (budget.ratio, budget.total, budget.per_step,
                                                  budget.per_step_ratio))


def _show(budget: Budget) -> str:
    return str(budget.model_dump(exclude_none=True) or "unlimited")


def _is_unlimited(budget: Budget) -> bool:
    return all(v is None for v in (budget.ratio, budget.total, budget.per_step, budget.per_step_ratio))


def resolve_activation(dataset: Any, settings: RLAVRSettings, strategy_name: str, *, oracle_given: bool,
                       args_given: bool) -> Activation:
    """Decide whether acquisition runs (see the module docstring for the rules).

    Args:
        dataset: the ``train_dataset`` (only its ``column_names`` are read; ``None`` or unknown columns: active,
            the default oracle then says what is missing).
        settings: the validated rlavr settings (``label_column``, ``budget``).
        strategy_name: the strategy's registry name (``"gt"`` is plain GRPO with an unlimited budget).
        oracle_given: an ``oracle=`` was passed (labels come from it: always active).
        args_given: ``args`` was passed (``False``: the trainer built :func:`default_config`).

    Raises:
        ValueError: no label column, no oracle, and a strategy that buys labels with a budget above 0; the message
            names the column, the columns there are, and the four ways out.
    """
    names = getattr(dataset, "column_names", None)
    col = settings.label_column
    if oracle_given or dataset is None or names is None or col in names:
        return Activation("active")
    budget = settings.budget
    missing = f"train_dataset has no label column {col!r} (columns: {list(names)}) and no oracle= was given"
    named = sorted(label_like_columns(dataset, col, ignore=[settings.id_column]))  # by name: no row is read
    if named:
        missing += f" (label_column={named[0]!r}?)"
    if not args_given:
        return Activation("inactive", f"{missing}, and args=None asks for no label acquisition")
    if strategy_name == "gt" and _is_unlimited(budget):
        return Activation("inactive", f"{missing}; strategy='gt' with an unlimited budget is plain GRPO")
    if budget_buys_nothing(budget):
        return Activation("label_free", f"{missing}; budget={_show(budget)} buys nothing, so strategy "
                                        f"{strategy_name!r} routes and pseudo-labels without a label source")
    raise ValueError(
        f"label_column: {missing}, but strategy {strategy_name!r} with budget={_show(budget)} buys ground-truth "
        f"labels from that column. Fix one of: set label_column= to the column that holds the ground truth (TRL's "
        f"accuracy_reward reads 'solution'); pass oracle= (e.g. rlavr.DatasetOracle or rlavr.CallableOracle); set "
        f"budget=0 to train on pseudo-labels only; or set strategy='gt', budget=None to train exactly like "
        f"trl.GRPOTrainer (acquisition off)")


def default_oracle(dataset: Any, id_column: str, label_column: str) -> DatasetOracle:
    """The oracle used when none is given: ``train_dataset``'s ``id_column -> label_column`` (column access, so a
    large ``datasets.Dataset`` is read column-wise; ids fall back to the prompt hash like the trainer's)."""
    if dataset is None:
        raise ValueError("oracle: no oracle given and no train_dataset to read labels from; pass oracle=...")
    names = getattr(dataset, "column_names", None)
    if names is None or not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise ValueError(f"oracle: cannot build the default DatasetOracle from a {type(dataset).__name__} (an "
                         "IterableDataset, e.g. load_dataset(..., streaming=True), cannot be read ahead, and the "
                         "default oracle needs the whole label column up front); pass oracle=rlavr.DatasetOracle(...) "
                         "(e.g. over the non-streaming dataset's id and label columns) or a rlavr.CallableOracle")
    if label_column not in names:
        raise ValueError(f"label_column: {label_column!r} is not a column of train_dataset (columns: {names}); "
                         "set RLAVRConfig.label_column or pass oracle=...")
    labels = dataset[label_column]
    if id_column in names:
        ids = [prompt_id({id_column: v}, id_column) for v in dataset[id_column]]
    else:
        if "prompt" not in names:
            raise ValueError(f"id_column: {id_column!r} is not a column of train_dataset and there is no 'prompt' "
                             f"column to hash (columns: {names})")
        ids = [prompt_id({"prompt": p}, id_column) for p in dataset["prompt"]]
    table: dict[str, str] = {}
    for i, (pid, lab) in enumerate(zip(ids, labels, strict=True)):
        if lab is None:
            continue
        s = str(lab)
        if table.get(pid, s) != s:
            raise ValueError(f"id_column: prompt id {pid!r} (row {i}) appears with two different labels "
                             f"({table[pid]!r} and {s!r}); ids must identify prompts")
        table[pid] = s
    oracle = DatasetOracle(table)
    oracle.label_column = label_column  # recorded in the ledger's fingerprint (informational)
    return oracle
