"""Answer extraction and equivalence clustering.

An :class:`AnswerSpace` knows three things about a task's answers:

* ``extract(text)``: the answer inside a completion (``None`` if there is none: an *invalid* rollout);
* ``key(answer)``: a canonical string; answers with equal keys are equivalent (fast, hashable);
* ``equivalent(a, b)``: full equivalence (may be slower than keys, e.g. symbolic maths).

Clustering follows TTRL/CARE (care-spec §1.3): a single greedy pass in rollout order; ``None`` answers are
skipped (cluster id ``-1``); each answer joins the *first* existing cluster whose representative (its first
member) is equivalent to it, otherwise it opens a new cluster. Cluster ids are therefore numbered by first
appearance, which is what makes "ties go to the earliest cluster" a plain ``argmax``.

Built-ins: :class:`ExactAnswers` (regex or whole text, exact string match), :class:`IntegerAnswers` (last integer,
used by the addition task), :class:`MathAnswers` (last ``\\boxed{}``, math-verify equivalence) and
:class:`KnightsKnavesAnswers` (last ``<answer>`` block or the whole text, role assignments compared as sets).
Write your own by subclassing :class:`AnswerSpace`; pass it by object wherever an answer space is accepted.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from functools import lru_cache
from typing import ClassVar

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "AnswerSpace",
    "ExactAnswers",
    "IntegerAnswers",
    "KnightsKnavesAnswers",
    "MathAnswers",
    "get_answer_space",
    "last_boxed",
]


class AnswerSpace:
    """Base class: extraction + equivalence for one kind of answer.

    Subclasses override :meth:`extract` and :meth:`key`; set ``pairwise = True`` and override
    :meth:`equivalent` only when equal keys are not enough (e.g. ``1/2`` vs ``0.5``).
    """

    name: ClassVar[str] = "base"
    pairwise: ClassVar[bool] = False
    """Whether :meth:`equivalent` can say "equal" for answers with different keys."""

    def extract(self, text: str) -> str | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def key(self, answer: str) -> str:
        return answer.strip()

    def equivalent(self, a: str, b: str) -> bool:
        return self.key(a) == self.key(b)

    # ---------------------------------------------------------------- clustering
    def cluster(self, answers: Sequence[str | None]) -> np.ndarray:
        """Cluster one group's answers; returns ``(G,)`` int ids (``-1`` = invalid), numbered by first appearance."""
        ids = np.full(len(answers), -1, dtype=np.int64)
        key_to_cluster: dict[str, int] = {}
        reps: list[str] = []
        for j, a in enumerate(answers):
            if a is None:
                continue
            k = self.key(a)
            c = key_to_cluster.get(k)
            if c is None and self.pairwise:
                c = next((ci for ci, rep in enumerate(reps) if self.equivalent(rep, a)), None)
                if c is not None:
                    key_to_cluster[k] = c
            if c is None:
                c = len(reps)
                reps.append(a)
                key_to_cluster[k] = c
            ids[j] = c
        return ids

    def cluster_batch(self, answers: Sequence[Sequence[str | None]]) -> np.ndarray:
        """Cluster every group: ``(B, G)`` int ids."""
        if not answers:
            return np.zeros((0, 0), dtype=np.int64)
        return np.stack([self.cluster(group) for group in answers])

    # ---------------------------------------------------------------- grading
    def grade(self, answer: str | None, label: str | None) -> bool:
        """Whether an extracted answer matches a label (``None`` on either side is never correct)."""
        if answer is None or label is None:
            return False
        return self.equivalent(answer, label)

    def grade_batch(self, answers: Sequence[Sequence[str | None]], labels: Sequence[str | None]) -> np.ndarray:
        """``(B, G)`` bool correctness of every rollout against its group's label."""
        out = np.zeros((len(answers), len(answers[0]) if answers else 0), dtype=bool)
        for i, (group, label) in enumerate(zip(answers, labels, strict=True)):
            if label is None:
                continue
            label_key = self.key(label)
            for j, a in enumerate(group):
                if a is None:
                    continue
                out[i, j] = self.key(a) == label_key or (self.pairwise and self.equivalent(a, label))
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ExactAnswers(AnswerSpace):
    """Exact string match.

    Args:
        pattern: optional regex; the answer is group 1 (or the whole match) of the LAST match in the text.
            Without a pattern the whole stripped text is the answer (empty text -> ``None``).
        case_sensitive: compare case-sensitively (default ``True``).
    """

    name = "exact"

    def __init__(self, pattern: str | None = None, case_sensitive: bool = True) -> None:
        self.pattern = re.compile(pattern, re.DOTALL) if pattern else None
        self.case_sensitive = case_sensitive

    def extract(self, text: str) -> str | None:
        if self.pattern is None:
            s = text.strip()
            return s or None
        matches = list(self.pattern.finditer(text))
        if not matches:
            return None
        m = matches[-1]
        s = (m.group(1) if m.groups() else m.group(0)).strip()
        return s or None

    def key(self, answer: str) -> str:
        s = answer.strip()
        return s if self.case_sensitive else s.lower()

    def __repr__(self) -> str:
        return f"ExactAnswers(pattern={self.pattern.pattern if self.pattern else None!r})"


_INT_RE = re.compile(r"-?\d+")


class IntegerAnswers(AnswerSpace):
    """The LAST integer in the completion (``"a + b = 12"`` -> ``"12"``); equivalence = integer equality.

    Leading zeros and a leading ``+`` are normalised away (``"007"`` == ``"7"``).
    """

    name = "integer"

    def extract(self, text: str) -> str | None:
        matches = _INT_RE.findall(text.replace(",", ""))
        return matches[-1] if matches else None

    def key(self, answer: str) -> str:
        s = answer.strip().lstrip("+")
        try:
            return str(int(s))
        except ValueError:
            return s


# ------------------------------------------------------------------------------------------------ maths


def last_boxed(text: str) -> str | None:
    r"""Content of the LAST ``\boxed{...}`` or ``\fbox{...}`` in ``text``, by brace matching (care-spec §1.1).

    Returns ``None`` when there is no box or the braces do not close.
    """
    idx = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if idx < 0:
        return None
    i = idx
    # ``\boxed 5`` (no braces) form
    rest = text[idx:]
    if rest.startswith("\\boxed ") and not rest.startswith("\\boxed {"):
        content = rest[len("\\boxed ") :].split("$")[0].strip()
        return content or None
    brace = text.find("{", i)
    if brace < 0:
        return None
    depth = 0
    for k in range(brace, len(text)):
        ch = text[k]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                content = text[brace + 1 : k].strip()
                return content or None
    return None


_MATH_STRIP = re.compile(r"\\left|\\right|\\!|\\,|\\;|\\:|\$|\s+")


def _normalise_math(s: str) -> str:
    s = _MATH_STRIP.sub("", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\text{", "\\mathrm{").rstrip(".")
    if s.startswith("\\mathrm{") and s.endswith("}"):
        s = s[len("\\mathrm{") : -1]
    return s


class MathAnswers(AnswerSpace):
    r"""Maths answers: the last ``\boxed{}``; equivalence by normalised string, then math-verify.

    math-verify's ``parse``/``verify`` use ``signal.alarm`` for timeouts, which only works in the main thread
    (elsewhere it raises ``ValueError``). Off the main thread we call them with timeouts disabled; any
    exception (including a timeout) counts as "not equivalent" and is logged at DEBUG level.

    Args:
        timeout_seconds: per-call timeout for math-verify in the main thread.
        use_math_verify: set ``False`` for string-only equivalence (faster, stricter).
        boxed_only: if ``False``, fall back to the last number when there is no ``\boxed{}``.
    """

    name = "math"
    pairwise = True

    def __init__(self, timeout_seconds: int = 5, use_math_verify: bool = True, boxed_only: bool = True) -> None:
        if timeout_seconds <= 0:
            raise ValueError(f"MathAnswers.timeout_seconds: must be > 0, got {timeout_seconds}")
        self.timeout_seconds = timeout_seconds
        self.use_math_verify = use_math_verify
        self.boxed_only = boxed_only
        self._parse = lru_cache(maxsize=65536)(self._parse_uncached)
        self._verify_cache: dict[tuple[str, str], bool] = {}

    def extract(self, text: str) -> str | None:
        boxed = last_boxed(text)
        if boxed is not None or self.boxed_only:
            return boxed
        nums = re.findall(r"-?\d+(?:\.\d+)?(?:/\d+)?", text)
        return nums[-1] if nums else None

    def key(self, answer: str) -> str:
        return _normalise_math(answer)

    def _parse_uncached(self, s: str):  # type: ignore[no-untyped-def]
        from math_verify import parse

        main = threading.current_thread() is threading.main_thread()
        try:
            return parse(f"${s}$", parsing_timeout=self.timeout_seconds if main else None)  # type: ignore[arg-type]
        except Exception as exc:  # pragma: no cover - math-verify internals
            logger.debug("math-verify parse failed for %r: %s", s, exc)
            return []

    def equivalent(self, a: str, b: str) -> bool:
        ka, kb = self.key(a), self.key(b)
        if ka == kb:
            return True
        if not self.use_math_verify:
            return False
        pair = (ka, kb) if ka <= kb else (kb, ka)
        hit = self._verify_cache.get(pair)
        if hit is not None:
            return hit
        from math_verify import verify

        main = threading.current_thread() is threading.main_thread()
        try:
            pa, pb = self._parse(a), self._parse(b)
            if not pa or not pb:
                res = False
            else:
                res = bool(verify(pa, pb, timeout_seconds=self.timeout_seconds if main else None)) or bool(
                    verify(pb, pa, timeout_seconds=self.timeout_seconds if main else None)
                )
        except Exception as exc:  # timeouts and sympy errors -> not equivalent
            logger.debug("math-verify verify failed for %r vs %r: %s", a, b, exc)
            res = False
        if len(self._verify_cache) > 200_000:
            self._verify_cache.clear()
        self._verify_cache[pair] = res
        return res


# ------------------------------------------------------------------------------------------------ K&K

_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_ROLE_RE = re.compile(r"\b([A-Z][a-zA-Z]+)\s+(?:is|are)\s+(?:a|an)\s+([a-zA-Z]+)")
_CANON_RE = re.compile(r"([a-z]+)=([a-z]+)")


class KnightsKnavesAnswers(AnswerSpace):
    """Knights-and-knaves style answers: role assignments ``"Zoey is a fool, and Riley is a sage"``.

    Extraction: the LAST ``<answer>...</answer>`` block if any (an empty last block is invalid, as in
    Logic-RL/CARE), otherwise the whole text. Roles are parsed with ``"<Name> is a|an <role>"``; the canonical
    form is ``name=role|...`` with names sorted and lower-cased, so assignment order does not matter. A text
    with no parseable assignment is invalid (``None``).

    Args:
        require_answer_tag: only accept answers inside ``<answer>`` tags.
    """

    name = "knights_knaves"

    def __init__(self, require_answer_tag: bool = False) -> None:
        self.require_answer_tag = require_answer_tag

    @staticmethod
    def canonical(text: str) -> str | None:
        if _CANON_RE.fullmatch(text.split("|")[0] or "") and "=" in text:
            pairs = dict(_CANON_RE.findall(text))
        else:
            pairs = {n.lower(): r.lower() for n, r in _ROLE_RE.findall(text)}
        if not pairs:
            return None
        return "|".join(f"{n}={pairs[n]}" for n in sorted(pairs))

    def extract(self, text: str) -> str | None:
        blocks = _ANSWER_BLOCK.findall(text)
        if blocks:
            body = blocks[-1].strip()
            if not body:
                return None
        elif self.require_answer_tag:
            return None
        else:
            body = text
        return self.canonical(body)

    def key(self, answer: str) -> str:
        return self.canonical(answer) or answer.strip().lower()


_SPACES: dict[str, type[AnswerSpace]] = {
    "exact": ExactAnswers,
    "integer": IntegerAnswers,
    "math": MathAnswers,
    "knights_knaves": KnightsKnavesAnswers,
    "kk": KnightsKnavesAnswers,
}


def get_answer_space(spec: str | AnswerSpace | None) -> AnswerSpace:
    """Resolve an answer space from a name (``exact``, ``integer``, ``math``, ``knights_knaves``) or an object."""
    if spec is None:
        return ExactAnswers()
    if isinstance(spec, AnswerSpace):
        return spec
    if isinstance(spec, str):
        cls = _SPACES.get(spec.strip().lower())
        if cls is None:
            raise ValueError(f"answer_space: unknown answer space {spec!r}; expected one of {sorted(_SPACES)} "
                             "or an AnswerSpace object")
        return cls()
    raise ValueError(f"answer_space: expected a name or an AnswerSpace, got {type(spec).__name__}")
