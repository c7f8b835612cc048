"""Core data types: rollouts, prompt groups, batches, routes and acquisitions.

One RL step produces ``B`` prompt groups of ``G`` rollouts each. A :class:`RolloutBatch` holds them together
with the derived, vectorised views every strategy needs (``(B, G)`` arrays of answers' cluster ids, lengths,
log-probabilities, hidden states). A strategy reads a batch and returns an :class:`Acquisition`: one
:class:`Route` (query / pseudo / drop), one advantage weight and one score per group.

Validation is strict: empty groups, unequal group sizes, duplicate prompt ids, ids that are not valid UTF-8 text
(lone surrogates), NaN log-probabilities and malformed arrays raise :class:`ValueError` naming the field and the
offending value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from functools import cached_property
from typing import TYPE_CHECKING, Any, cast

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from rlavr.answers import AnswerSpace
    from rlavr.labels import MajorityVote

Label = str
"""A ground-truth or pseudo label: the canonical answer string of a prompt."""


class Route(IntEnum):
    """The fate of one prompt group.

    * ``QUERY``: buy the ground-truth label from the oracle (or reuse one already in the ledger) and reward
      every rollout against it.
    * ``PSEUDO``: reward against the majority-vote answer; the group's advantages are scaled by the
      acquisition weight in ``[0, 1]``.
    * ``DROP``: the group gives no learning signal (advantage 0, optionally removed from the loss).
    """

    QUERY = 0
    PSEUDO = 1
    DROP = 2

    @classmethod
    def parse(cls, value: Route | int | str) -> Route:
        if isinstance(value, Route):
            return value
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                raise ValueError(f"route: unknown route {value!r}; expected one of query, pseudo, drop") from None
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ValueError(f"route: expected a Route, a name or an int code, got {value!r}")
        try:
            return cls(int(value))
        except ValueError:
            raise ValueError(f"route: unknown route code {value!r}; expected 0 (query), 1 (pseudo), 2 (drop)") from None


def _float_array(name: str, value: Any, dtype: type[np.floating]) -> np.ndarray:
    """``value`` as a float array, or a ValueError naming the field (values beyond the dtype's range become inf
    and are rejected by the callers' finiteness checks)."""
    if isinstance(value, str | bytes | Mapping):
        raise ValueError(f"{name}: expected an array of numbers, got {type(value).__name__}")
    try:
        with np.errstate(over="ignore"):
            return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected an array of numbers, got {type(value).__name__} ({exc})") from None


def check_prompt_id(pid: object, where: str = "prompt id") -> str:
    """``pid`` if it is a usable prompt id, else a :class:`ValueError` naming ``where`` and the id (``repr``).

    A prompt id is the ledger key, stored as UTF-8 text, so it must be a non-empty ``str`` that encodes to UTF-8:
    a lone surrogate (``"p\\ud800"``, e.g. from bytes decoded with ``surrogateescape`` or a broken JSON escape)
    has no UTF-8 form and is refused here, before it can reach the ledger or a hash.
    """
    if not isinstance(pid, str) or not pid:
        raise ValueError(f"{where}: expected a non-empty str, got {pid!r}")
    try:
        pid.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{where}: {pid!r} is not valid Unicode text (a lone surrogate {pid[exc.start]!r} at index "
                         f"{exc.start}); prompt ids are stored as UTF-8, so use ids without surrogates "
                         "(e.g. decode the source bytes with errors='replace')") from None
    return pid


def _check_finite(name: str, value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{name}: must be finite, got {value!r}")


@dataclass(frozen=True, slots=True)
class Rollout:
    """One sampled completion of a prompt.

    Attributes:
        text: the decoded completion.
        answer: the extracted answer (``None`` when none could be extracted: an *invalid* rollout).
        mean_logprob: mean per-token log-probability of the completion under the sampling policy.
        token_logprobs: optional per-token log-probabilities (1-D); if given and ``mean_logprob`` is not,
            the mean is derived from them.
        length: number of completion tokens (0 if unknown).
        truncated: whether generation hit the length limit.
        hidden: optional last-token final-layer hidden state of the completion, shape ``(H,)``.
        attention: optional attention statistics (strategy specific, e.g. pivot densities).

    A rollout with no completion tokens is *empty* (:attr:`empty`): its mean log-probability and mean token
    probability are means over zero tokens; see :attr:`RolloutBatch.empty` for the values rlavr gives them.
    """

    text: str = ""
    answer: str | None = None
    mean_logprob: float | None = None
    token_logprobs: np.ndarray | None = None
    length: int = 0
    truncated: bool = False
    hidden: np.ndarray | None = None
    attention: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise ValueError(f"Rollout.text: expected str, got {type(self.text).__name__}")
        if self.answer is not None and not isinstance(self.answer, str):
            raise ValueError(f"Rollout.answer: expected str or None, got {type(self.answer).__name__}")
        if isinstance(self.length, bool) or not isinstance(self.length, int | np.integer):
            raise ValueError(f"Rollout.length: expected an int, got {self.length!r}")
        if self.length < 0:
            raise ValueError(f"Rollout.length: must be >= 0, got {self.length}")
        object.__setattr__(self, "length", int(self.length))
        object.__setattr__(self, "truncated", bool(self.truncated))
        if self.token_logprobs is not None:
            lp = _float_array("Rollout.token_logprobs", self.token_logprobs, np.float64)
            if lp.ndim != 1:
                raise ValueError(f"Rollout.token_logprobs: expected a 1-D array, got shape {lp.shape}")
            if not np.all(np.isfinite(lp)):
                raise ValueError("Rollout.token_logprobs: contains NaN or inf")
            if np.any(lp > 1e-6):
                raise ValueError(f"Rollout.token_logprobs: log-probabilities must be <= 0, max is {lp.max():.4g}")
            object.__setattr__(self, "token_logprobs", lp)
            if self.mean_logprob is None and lp.size:
                object.__setattr__(self, "mean_logprob", float(lp.mean()))
            if self.length == 0:
                object.__setattr__(self, "length", int(lp.size))
        if self.mean_logprob is not None:
            if isinstance(self.mean_logprob, bool) or not isinstance(self.mean_logprob, int | float | np.number):
                raise ValueError(f"Rollout.mean_logprob: expected a float, got {self.mean_logprob!r}")
            object.__setattr__(self, "mean_logprob", float(self.mean_logprob))
        _check_finite("Rollout.mean_logprob", self.mean_logprob)
        if self.mean_logprob is not None and self.mean_logprob > 1e-6:
            raise ValueError(f"Rollout.mean_logprob: must be <= 0, got {self.mean_logprob}")
        if self.hidden is not None:
            h = _float_array("Rollout.hidden", self.hidden, np.float32)
            if h.ndim != 1:
                raise ValueError(f"Rollout.hidden: expected shape (H,), got {h.shape}")
            if not np.all(np.isfinite(h)):
                raise ValueError("Rollout.hidden: contains NaN or inf")
            object.__setattr__(self, "hidden", h)

    @property
    def empty(self) -> bool:
        """The completion has no tokens: no ``mean_logprob``, ``length`` 0 and either ``token_logprobs`` given
        with no entries or an empty ``text`` (a completion of zero tokens decodes to ``""``)."""
        if self.mean_logprob is not None or self.length != 0:
            return False
        if self.token_logprobs is not None:
            return self.token_logprobs.size == 0
        return self.text == ""


@dataclass(frozen=True, slots=True)
class PromptGroup:
    """A prompt and its ``G`` rollouts.

    Attributes:
        id: stable prompt identifier (the ledger key: a prompt labelled once is never charged again); a
            non-empty str that encodes to UTF-8 (:func:`check_prompt_id`).
        prompt: the prompt text (what the oracle sees).
        rollouts: the ``G`` rollouts, in sampling order (order matters: majority-vote ties go to the
            earliest cluster).
        prompt_hidden: optional last-prompt-token hidden state, shape ``(H,)``.
        metadata: free-form extras (task name, difficulty, ...), never used for routing.
    """

    id: str
    prompt: str
    rollouts: tuple[Rollout, ...]
    prompt_hidden: np.ndarray | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_prompt_id(self.id, "PromptGroup.id")
        if not isinstance(self.prompt, str):
            raise ValueError(f"PromptGroup.prompt of {self.id!r}: expected str, got {type(self.prompt).__name__}")
        if isinstance(self.rollouts, Rollout | str) or not isinstance(self.rollouts, Sequence | tuple):
            raise ValueError(f"PromptGroup.rollouts of {self.id!r}: expected a sequence of Rollout, "
                             f"got {type(self.rollouts).__name__}")
        if not isinstance(self.rollouts, tuple):
            object.__setattr__(self, "rollouts", tuple(self.rollouts))
        if len(self.rollouts) == 0:
            raise ValueError(f"PromptGroup.rollouts: group {self.id!r} is empty; every prompt needs >= 1 rollout")
        for j, r in enumerate(self.rollouts):
            if not isinstance(r, Rollout):
                raise ValueError(f"PromptGroup.rollouts[{j}] of {self.id!r}: expected Rollout, got {type(r).__name__}")
        if self.prompt_hidden is not None:
            h = _float_array(f"PromptGroup.prompt_hidden of {self.id!r}", self.prompt_hidden, np.float32)
            if h.ndim != 1:
                raise ValueError(f"PromptGroup.prompt_hidden of {self.id!r}: expected shape (H,), got {h.shape}")
            if not np.all(np.isfinite(h)):
                raise ValueError(f"PromptGroup.prompt_hidden of {self.id!r}: contains NaN or inf")
            object.__setattr__(self, "prompt_hidden", h)

    @property
    def size(self) -> int:
        return len(self.rollouts)

    @property
    def answers(self) -> list[str | None]:
        return [r.answer for r in self.rollouts]


def _check_groups(groups: Sequence[PromptGroup]) -> list[PromptGroup]:
    """Validate the group list of a batch: non-empty, PromptGroup objects, one common size ``G``."""
    if isinstance(groups, PromptGroup | str):
        raise ValueError(f"RolloutBatch.groups: expected a sequence of PromptGroup, got {type(groups).__name__}")
    try:
        groups = list(groups)
    except TypeError:
        raise ValueError(f"RolloutBatch.groups: expected a sequence of PromptGroup, got {type(groups).__name__}") from None
    if not groups:
        raise ValueError("RolloutBatch.groups: a batch needs at least one prompt group")
    for i, g in enumerate(groups):
        if not isinstance(g, PromptGroup):
            raise ValueError(f"RolloutBatch.groups[{i}]: expected PromptGroup, got {type(g).__name__}")
    sizes = {g.size for g in groups}
    if len(sizes) != 1:
        g0 = groups[0].size
        odd = next(g for g in groups if g.size != g0)
        raise ValueError(f"RolloutBatch.groups: unequal group sizes {sorted(sizes)} (group {groups[0].id!r} has "
                         f"{g0} rollouts, group {odd.id!r} has {odd.size}); every prompt must have the same "
                         "number G of rollouts")
    return groups


class RolloutBatch:
    """``B`` prompt groups of equal size ``G``, with vectorised views.

    Build it with :meth:`from_groups` (clusters answers with an :class:`~rlavr.answers.AnswerSpace` and takes the
    majority vote). Derived arrays are computed once, lazily.

    Attributes:
        groups: the prompt groups, in batch order.
        votes: the per-group majority vote (:class:`~rlavr.labels.MajorityVote`).
        answer_space: the extractor/equivalence used for clustering (needed to grade against labels).
        reference_labels: ground-truth labels for every group, present ONLY when the strategy declared
            ``requires={"labels"}`` (research oracles such as Oracle-CAG) or for evaluation; ``None`` otherwise.
        step: the training step this batch belongs to (0-based).
    """

    def __init__(
        self,
        groups: Sequence[PromptGroup],
        votes: MajorityVote,
        answer_space: AnswerSpace,
        reference_labels: Sequence[Label | None] | None = None,
        step: int = 0,
    ) -> None:
        groups = _check_groups(groups)
        ids = [g.id for g in groups]
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            dup = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
            raise ValueError(f"RolloutBatch.groups: duplicate prompt id {dup!r}; ids must be unique within a batch")
        cids = getattr(votes, "cluster_ids", None)
        if not isinstance(cids, np.ndarray) or cids.shape != (len(groups), groups[0].size):
            got = getattr(cids, "shape", type(votes).__name__)
            raise ValueError(f"RolloutBatch.votes: cluster ids of shape {got} do not match "
                             f"(B, G) = ({len(groups)}, {groups[0].size})")
        if reference_labels is not None and len(reference_labels) != len(groups):
            raise ValueError(f"RolloutBatch.reference_labels: expected {len(groups)} labels, got {len(reference_labels)}")
        if step < 0:
            raise ValueError(f"RolloutBatch.step: must be >= 0, got {step}")
        self.groups: list[PromptGroup] = groups
        self.votes = votes
        self.answer_space = answer_space
        self.reference_labels: list[Label | None] | None = (
            None if reference_labels is None else list(reference_labels)
        )
        self.step = step

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_groups(
        cls,
        groups: Sequence[PromptGroup],
        answer_space: AnswerSpace | str | None = None,
        reference_labels: Sequence[Label | None] | None = None,
        step: int = 0,
    ) -> RolloutBatch:
        """Cluster the answers of every group and take the majority vote (TTRL rules).

        ``answer_space`` is an :class:`~rlavr.answers.AnswerSpace` or a name (``"math"``, ``"integer"``, ...);
        default exact string match.
        """
        from rlavr.answers import get_answer_space
        from rlavr.labels import majority_vote

        groups = _check_groups(groups)
        space = get_answer_space(answer_space)
        answers = [g.answers for g in groups]
        votes = majority_vote(space.cluster_batch(answers), answers)
        return cls(groups, votes, space, reference_labels=reference_labels, step=step)

    def with_reference_labels(self, labels: Sequence[Label | None] | None) -> RolloutBatch:
        """A copy of this batch that carries ground-truth labels (for label-peeking strategies / metrics);
        ``None`` gives a copy without them."""
        return RolloutBatch(self.groups, self.votes, self.answer_space, reference_labels=labels, step=self.step)

    # ------------------------------------------------------------------ shapes
    def __len__(self) -> int:
        return len(self.groups)

    @property
    def B(self) -> int:  # the paper's notation
        return len(self.groups)

    @property
    def G(self) -> int:
        return self.groups[0].size

    @cached_property
    def ids(self) -> list[str]:
        return [g.id for g in self.groups]

    @cached_property
    def prompts(self) -> list[str]:
        return [g.prompt for g in self.groups]

    @cached_property
    def answers(self) -> list[list[str | None]]:
        return [g.answers for g in self.groups]

    # ------------------------------------------------------------------ (B, G) arrays
    @cached_property
    def valid(self) -> np.ndarray:
        """``(B, G)`` bool: the rollout has an extractable answer."""
        return self.votes.cluster_ids >= 0

    @cached_property
    def lengths(self) -> np.ndarray:
        """``(B, G)`` int: completion lengths in tokens."""
        return np.array([[r.length for r in g.rollouts] for g in self.groups], dtype=np.int64)

    @cached_property
    def truncated(self) -> np.ndarray:
        return np.array([[r.truncated for r in g.rollouts] for g in self.groups], dtype=bool)

    @cached_property
    def empty(self) -> np.ndarray:
        """``(B, G)`` bool: the rollout is an empty completion (no tokens, :attr:`Rollout.empty`).

        Per-token means of an empty completion are means over zero tokens. rlavr takes them as CARE's Prob and
        verl do (``sum / max(T, 1)``, the same clamp as TRL's masked means): both sums are empty, so its
        :attr:`mean_logprob` is ``0`` and its :attr:`mean_token_prob` is ``0``. For Prob (lowest mean token
        probability first) an empty completion is therefore a lowest-confidence rollout, as in CARE. Note that
        ``exp(mean_logprob)`` is not its mean token probability.
        """
        return np.array([[r.empty for r in g.rollouts] for g in self.groups], dtype=bool).reshape(self.B, self.G)

    @cached_property
    def mean_logprob(self) -> np.ndarray:
        """``(B, G)`` float: mean token log-probability (``0`` for an empty completion, see :attr:`empty`);
        raises if a non-empty rollout lacks it."""
        missing = [(g.id, j) for g in self.groups for j, r in enumerate(g.rollouts)
                   if r.mean_logprob is None and not r.empty]
        if missing:
            gid, j = missing[0]
            raise ValueError(f"RolloutBatch.mean_logprob: rollout {j} of group {gid!r} has no log-probabilities "
                             f"({len(missing)} rollouts missing); this strategy requires 'logprobs'")
        return np.array([[0.0 if r.mean_logprob is None else r.mean_logprob for r in g.rollouts]
                         for g in self.groups], dtype=np.float64).reshape(self.B, self.G)

    @cached_property
    def mean_token_prob(self) -> np.ndarray:
        """``(B, G)`` float: mean per-token probability exp(logp) of each rollout (CARE's Prob baseline).

        Uses per-token log-probabilities when available (the paper's mean of exp), otherwise exp(mean logp)
        (a lower bound by Jensen's inequality; documented fallback). An empty completion has mean token
        probability ``0`` (CARE's ``sum / max(T, 1)`` over zero tokens; see :attr:`empty`).
        """
        tok = [r.token_logprobs for g in self.groups for r in g.rollouts]
        has = np.fromiter((t is not None and t.size > 0 for t in tok), dtype=bool, count=len(tok))
        flat = np.full(len(tok), np.nan, dtype=np.float64)
        if has.any():
            arrs: list[np.ndarray] = [t for t in tok if t is not None and t.size > 0]
            sizes = np.fromiter((a.size for a in arrs), dtype=np.int64, count=len(arrs))
            starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
            # segment sums of exp(logp) in one vectorised pass (no per-rollout numpy call)
            flat[has] = np.add.reduceat(np.exp(np.concatenate(arrs)), starts) / sizes
        out = flat.reshape(self.B, self.G)
        if not has.all():
            out = np.where(has.reshape(self.B, self.G), out, np.exp(self.mean_logprob))
            out = np.where(self.empty, 0.0, out)
        return out

    @cached_property
    def prompt_hidden(self) -> np.ndarray:
        """``(B, H)`` float32 prompt hidden states; raises if missing."""
        if any(g.prompt_hidden is None for g in self.groups):
            gid = next(g.id for g in self.groups if g.prompt_hidden is None)
            raise ValueError(f"RolloutBatch.prompt_hidden: group {gid!r} has no prompt hidden state; "
                             "this strategy requires 'hidden_states'")
        hs = np.stack([g.prompt_hidden for g in self.groups])  # type: ignore[misc]
        return hs.astype(np.float32, copy=False)

    @cached_property
    def response_hidden(self) -> np.ndarray:
        """``(B, G, H)`` float32 response last-token hidden states; raises if missing or ragged."""
        flat = [r.hidden for g in self.groups for r in g.rollouts]
        if any(h is None for h in flat):
            for g in self.groups:
                for j, r in enumerate(g.rollouts):
                    if r.hidden is None:
                        raise ValueError(f"RolloutBatch.response_hidden: rollout {j} of group {g.id!r} has no "
                                         "hidden state; this strategy requires 'hidden_states'")
        dims = {h.shape[0] for h in cast(list[np.ndarray], flat)}
        if len(dims) != 1:
            raise ValueError(f"RolloutBatch.response_hidden: hidden sizes differ across rollouts: {sorted(dims)}")
        # one stack of the B*G vectors (each (H,), validated on construction), then a free reshape
        return np.stack(flat).reshape(self.B, self.G, -1).astype(np.float32, copy=False)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ label-dependent views
    def correctness(self, labels: Sequence[Label | None]) -> np.ndarray:
        """``(B, G)`` bool: rollout j of group i is equivalent to ``labels[i]`` (``None`` label -> all False)."""
        if len(labels) != self.B:
            raise ValueError(f"correctness: expected {self.B} labels, got {len(labels)}")
        return self.answer_space.grade_batch(self.answers, labels)

    @cached_property
    def reference_correct(self) -> np.ndarray:
        """``(B, G)`` bool correctness against :attr:`reference_labels` (only for label-peeking strategies)."""
        if self.reference_labels is None:
            raise ValueError("RolloutBatch.reference_correct: this batch carries no reference labels; "
                             "only strategies with requires={'labels'} (e.g. oracle-cag) get them")
        return self.correctness(self.reference_labels)

    @cached_property
    def pseudo_correct(self) -> np.ndarray:
        """``(B, G)`` bool: rollout j graded against its group's majority answer (the pseudo-label reward;
        all False for a group without one). Needs no ground truth."""
        return self.correctness(self.votes.majority_answer)

    @cached_property
    def majority_correct(self) -> np.ndarray:
        """``(B,)`` bool: the majority-vote answer (the label pseudo rewards use) is equivalent to the reference
        label. The majority cluster's representative decides; with a transitive equivalence every member agrees."""
        corr = self.reference_correct
        has = self.votes.majority >= 0
        # The majority cluster is correct iff its representative (first member) grades correct.
        rep = np.where(has, self.votes.majority_first, 0)
        return has & corr[np.arange(self.B), rep]


@dataclass(frozen=True, eq=False)
class Acquisition:
    """A strategy's decision for every group of a batch.

    Attributes:
        routes: ``(B,)`` int8 array of :class:`Route` codes.
        weights: ``(B,)`` advantage weights in ``[0, 1]`` (1 for queried groups unless the strategy says
            otherwise; ignored for dropped groups).
        scores: ``(B,)`` the strategy's acquisition score for every group (higher = more wanted for a
            label). Always returned, also for groups that were not queried.
        metrics: strategy-specific scalars to log (e.g. classifier precision).
    """

    routes: np.ndarray
    weights: np.ndarray
    scores: np.ndarray
    metrics: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        routes = np.asarray(self.routes)
        if routes.ndim != 1:
            raise ValueError(f"Acquisition.routes: expected shape (B,), got {routes.shape}")
        if routes.dtype == bool or not (np.issubdtype(routes.dtype, np.integer) or np.issubdtype(routes.dtype, np.floating)):
            raise ValueError(f"Acquisition.routes: expected integer Route codes, got dtype {routes.dtype}")
        bad = ~np.isin(routes, [int(r) for r in Route])
        if bad.any():
            raise ValueError(f"Acquisition.routes: unknown route code {routes[bad][0].item()!r} at index "
                             f"{int(np.flatnonzero(bad)[0])}")
        arrays: dict[str, np.ndarray] = {}
        for name in ("weights", "scores"):
            try:
                arrays[name] = np.asarray(getattr(self, name), dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"Acquisition.{name}: expected a (B,) array of numbers ({exc})") from None
        weights, scores = arrays["weights"], arrays["scores"]
        for name, arr in (("weights", weights), ("scores", scores)):
            if arr.shape != routes.shape:
                raise ValueError(f"Acquisition.{name}: shape {arr.shape} does not match routes {routes.shape}")
        if not np.all(np.isfinite(weights)) or np.any((weights < 0) | (weights > 1)):
            i = int(np.flatnonzero(~np.isfinite(weights) | (weights < 0) | (weights > 1))[0])
            raise ValueError(f"Acquisition.weights: must be finite and in [0, 1], got {weights[i].item()!r} at index {i}")
        if np.any(np.isnan(scores)):
            raise ValueError(f"Acquisition.scores: NaN at index {int(np.flatnonzero(np.isnan(scores))[0])}")
        metrics: dict[str, float] = {}
        for k, v in dict(self.metrics).items():
            if not isinstance(k, str):
                raise ValueError(f"Acquisition.metrics: keys must be str, got {k!r}")
            try:
                metrics[k] = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"Acquisition.metrics[{k!r}]: expected a number, got {v!r}") from None
        object.__setattr__(self, "routes", routes.astype(np.int8))
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "metrics", metrics)

    def __len__(self) -> int:
        return int(self.routes.shape[0])

    @property
    def query(self) -> np.ndarray:
        return self.routes == Route.QUERY

    @property
    def pseudo(self) -> np.ndarray:
        return self.routes == Route.PSEUDO

    @property
    def drop(self) -> np.ndarray:
        return self.routes == Route.DROP

    def counts(self) -> dict[str, int]:
        return {"query": int(self.query.sum()), "pseudo": int(self.pseudo.sum()), "drop": int(self.drop.sum())}

    def effective_weights(self) -> np.ndarray:
        """Weights with dropped groups set to 0."""
        return np.where(self.drop, 0.0, self.weights)
