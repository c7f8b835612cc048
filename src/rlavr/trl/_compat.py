"""The one file of rlavr that knows TRL's private API (``trl>=1.16,<1.17``).

``RLAVRGRPOTrainer`` overrides private ``GRPOTrainer`` methods and reads a few private attributes. Every such access
goes through a small named accessor here, each checked, so that a TRL release that renames or reshapes one of them
fails in ONE place with an error naming the attribute, the TRL version and the supported range, instead of a
silent wrong result somewhere in a training round:

* :func:`check_trl` (called when the trainer is built): the overridden methods exist with the parameters rlavr
  passes (:data:`OVERRIDES`);
* :func:`generate_output`: ``_generate``'s return tuple, by name (:class:`GenerateOutput`);
* :func:`metrics` / :func:`set_metrics` / :func:`log_metric` (``_metrics``), :func:`tokenizer` /
  :func:`pad_token_id` (``_tokenizer``), :func:`is_vlm`
  (``_is_vlm``), :func:`log_completion_extra` (``_log_completion_extra``), :func:`policy_logps` (TRL's own
  ``_get_per_token_logps_and_entropies``), :func:`no_gradient_checkpointing`, :func:`config_model_id`;
* :func:`runs_policy_nograd_forward`: the rule by which ``GRPOTrainer._generate_and_score_completions`` decides to
  run its no-grad "old log-probs" forward (a copy of TRL's condition; ``tests/trl/test_pins.py`` checks that TRL's
  source still reads the same).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, NamedTuple

SUPPORTED = ">=1.16,<1.17"
"""The TRL versions this module was written against."""

OVERRIDES: dict[str, tuple[str, ...]] = {
    "_calculate_rewards": ("self", "inputs", "prompts", "completions", "completion_ids_list"),
    "_generate_and_score_completions": ("self", "inputs"),
    "_generate": ("self", "prompts"),
    "_get_per_token_logps_and_entropies": ("self", "model", "input_ids", "attention_mask", "logits_to_keep",
                                           "batch_size"),
    "_get_train_sampler": ("self", "dataset"),
    "_save_checkpoint": ("self", "model", "trial"),
    "_load_optimizer_and_scheduler": ("self", "checkpoint"),
    "_log_completion_extra": ("self", "column", "values"),
    "log": ("self", "logs", "start_time"),
}
"""The private (and ``log``) ``GRPOTrainer`` methods rlavr overrides or calls, with their leading parameters."""


class TRLCompatError(RuntimeError):
    """The installed TRL lacks (or reshaped) a private attribute or method that rlavr.trl relies on."""


def _version() -> str:
    try:
        import trl

        return str(trl.__version__)
    except Exception:  # a broken install: the message still names the problem
        return "unknown"


def _error(what: str, detail: str) -> TRLCompatError:
    return TRLCompatError(f"rlavr.trl: {what} {detail} in the installed trl {_version()}; rlavr.trl supports "
                          f"trl{SUPPORTED} (pip install 'trl{SUPPORTED}')")


def _attr(obj: Any, name: str, what: str) -> Any:
    try:
        return getattr(obj, name)
    except AttributeError:
        raise _error(f"GRPOTrainer.{name} ({what})", "does not exist") from None


def check_trl(cls: type | None = None) -> None:
    """Check that ``cls`` (default ``trl.GRPOTrainer``) has every method of :data:`OVERRIDES` with those leading
    parameters.

    Raises:
        TRLCompatError: naming the first missing method or the parameters found instead.
    """
    if cls is None:
        from trl import GRPOTrainer

        cls = GRPOTrainer
    for name, want in OVERRIDES.items():
        fn = getattr(cls, name, None)
        if not callable(fn):
            raise _error(f"{cls.__name__}.{name}", "does not exist")
        got = tuple(inspect.signature(fn).parameters)
        if got[: len(want)] != want:
            raise _error(f"{cls.__name__}.{name}", f"has the parameters {got}, expected {want}")


# ================================================================================================ _generate


class GenerateOutput(NamedTuple):
    """``GRPOTrainer._generate``'s return tuple, by name."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    tool_mask: Any
    completions: list[Any]
    logprobs: list[list[float | None]] | None
    extra_fields: Any
    images: Any
    tool_images: Any


def generate_output(out: Sequence[Any]) -> GenerateOutput:
    """Name the fields of what ``_generate`` returned.

    Raises:
        TRLCompatError: it is not a tuple of :class:`GenerateOutput`'s length.
    """
    n = len(GenerateOutput._fields)
    if not isinstance(out, tuple | list) or len(out) != n:
        got = f"a {len(out)}-tuple" if isinstance(out, tuple | list) else type(out).__name__
        raise _error("GRPOTrainer._generate", f"returned {got}, expected the {n}-tuple {GenerateOutput._fields}")
    return GenerateOutput(*out)


# ================================================================================================ attributes


def metrics(trainer: Any) -> dict[str, Any]:
    """``trainer._metrics``: ``{"train" | "eval": defaultdict(list)}``, TRL's per-window metric lists."""
    value = _attr(trainer, "_metrics", "the logged metrics")
    if not isinstance(value, dict) or "train" not in value:
        raise _error("GRPOTrainer._metrics", f"is a {type(value).__name__} without a 'train' entry")
    return value


def set_metrics(trainer: Any, value: dict[str, Any]) -> None:
    """Replace ``trainer._metrics`` (restored after the pool fit's generation)."""
    metrics(trainer)
    trainer._metrics = value


def log_metric(trainer: Any, name: str, value: float) -> None:
    """Append ``value`` to TRL's training metric ``name`` (averaged over the logging window by TRL)."""
    metrics(trainer)["train"][name].append(float(value))


def tokenizer(trainer: Any) -> Any:
    """``trainer._tokenizer``: the processing class' tokenizer (of a processor, its ``tokenizer``)."""
    return _attr(trainer, "_tokenizer", "the tokenizer")


def pad_token_id(trainer: Any) -> int:
    """The pad token id of :func:`tokenizer`.

    Raises:
        ValueError: the tokenizer has none.
    """
    tok = tokenizer(trainer)
    pad = getattr(tok, "pad_token_id", None)
    if pad is None:
        raise ValueError(f"processing_class: the tokenizer {type(tok).__name__} has no pad_token_id; set one")
    return int(pad)


def is_vlm(trainer: Any) -> bool:
    """``trainer._is_vlm``: the policy is a vision-language model."""
    return bool(_attr(trainer, "_is_vlm", "vision-language flag"))


def log_completion_extra(trainer: Any, column: str, values: list[Any]) -> None:
    """Add a per-completion column to TRL's completion logs."""
    _attr(trainer, "_log_completion_extra", "per-completion log columns")(column, values)


def runs_policy_nograd_forward(trainer: Any) -> bool:
    """Whether TRL computes ``old_per_token_logps`` this round: TRL's condition in
    ``GRPOTrainer._generate_and_score_completions`` (generation not aligned with the optimiser step, or vLLM
    importance-sampling correction)."""
    args = trainer.args
    generate_every = int(args.steps_per_generation or 1) * int(_attr(trainer, "num_iterations", "iterations"))
    return bool(args.gradient_accumulation_steps % generate_every != 0
                or (_attr(trainer, "use_vllm", "vLLM flag")
                    and _attr(trainer, "vllm_importance_sampling_correction", "vLLM importance sampling")))


def policy_logps(trainer: Any, model: Any, input_ids: Any, attention_mask: Any, logits_to_keep: int,
                 batch_size: int) -> Any:
    """TRL's own (not rlavr's overridden) ``_get_per_token_logps_and_entropies`` on ``model``."""
    from trl import GRPOTrainer

    fn = _attr(GRPOTrainer, "_get_per_token_logps_and_entropies", "per-token log-probabilities")
    return fn(trainer, model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size)


def no_gradient_checkpointing(trainer: Any, model: Any) -> Callable[[], AbstractContextManager[Any]]:
    """A factory of TRL's context that turns gradient checkpointing off for a no-grad forward of ``model``."""
    try:
        from trl.models.utils import disable_gradient_checkpointing
    except ImportError as exc:
        raise _error("trl.models.utils.disable_gradient_checkpointing", "does not exist") from exc
    kwargs = trainer.args.gradient_checkpointing_kwargs
    return lambda: disable_gradient_checkpointing(model, kwargs if isinstance(kwargs, dict) else None)


def config_model_id(config: Any) -> str:
    """TRL's model id of a model config (``trl.trainer.utils.get_config_model_id``: the default run name)."""
    try:
        from trl.trainer.utils import get_config_model_id
    except ImportError as exc:
        raise _error("trl.trainer.utils.get_config_model_id", "does not exist") from exc
    return str(get_config_model_id(config))
