"""Answer extraction and equivalence clustering.

An :class:`AnswerSpace` knows three things about a task's answers:

* ``extract(text)``: the answer inside a completion (``None`` if there is none: an *invalid* rollout);
* ``key(answer)``: a canonical string; answers with equal keys are equivalent (fast, hashable);
* ``equivalent(a, b)``: full equivalence (may be slower than keys, e.g. symbolic maths).

Clustering follows TTRL/CARE (docs/concepts.md, "Answers, clustering and the majority vote"): a single greedy pass in rollout order; ``None`` answers are
skipped (cluster id ``-1``); each answer joins the *first* existing cluster whose representative (its first
member) is equivalent to it, otherwise it opens a new cluster. Cluster ids are therefore numbered by first
appearance, which is what makes "ties go to the earliest cluster" a plain ``argmax``.

Built-ins: :class:`ExactAnswers` (regex or whole text, exact string match), :class:`IntegerAnswers` (last integer,
used by the addition task), :class:`MathAnswers` (last ``\\boxed{}``, math-verify equivalence) and
:class:`KnightsKnavesAnswers` (last ``<answer>`` block or the whole text, role assignments compared as sets).
Write your own by subclassing :class:`AnswerSpace`; pass it by object wherever an answer space is accepted, or
give it a name: ``ANSWER_SPACES.register(MySpace)`` in this process, or an entry point in the
``rlavr.answer_spaces`` group of an installed package (docs/api.md, "Answers").

Bounded work. A policy can emit anything, e.g. a 1 MB completion, or a power tower ``x^{x^{...}}`` that takes
math-verify seconds to parse at 100 characters and minutes at 1 000. The built-in spaces therefore read only the last ``max_text_chars`` characters of a
completion (default :data:`DEFAULT_MAX_TEXT_CHARS`), refuse an extracted answer longer than ``max_answer_chars``
(an invalid rollout, ``None``; default :data:`DEFAULT_MAX_ANSWER_CHARS`, :data:`MATH_MAX_ANSWER_CHARS` for maths),
and :class:`MathAnswers` bounds every math-verify call by ``timeout_seconds`` in any thread. Each of these events
is counted on the space (:meth:`AnswerSpace.take_counters`, logged by the engine as ``answers/<name>`` per step)
and logged once at WARNING level.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np

from rlavr import _mathverify
from rlavr.registry import Registry

logger = logging.getLogger(__name__)

__all__ = [
    "COUNTER_NAMES",
    "DEFAULT_MAX_ANSWER_CHARS",
    "DEFAULT_MAX_TEXT_CHARS",
    "MATH_MAX_ANSWER_CHARS",
    "ANSWER_SPACES",
    "ANSWER_SPACE_GROUP",
    "AnswerSpace",
    "ExactAnswers",
    "IntegerAnswers",
    "KnightsKnavesAnswers",
    "MathAnswers",
    "first_appearance_ids",
    "get_answer_space",
    "last_boxed",
]


DEFAULT_MAX_TEXT_CHARS = 100_000
"""Built-in spaces extract from the last 100 000 characters of a completion (about 25k tokens; a completion
this long keeps its final answer at the end). Extraction is linear: about 0.25 s per MB of text, uncapped."""

DEFAULT_MAX_ANSWER_CHARS = 10_000
"""An extracted answer longer than this is refused (invalid, ``None``) by the built-in spaces."""

MATH_MAX_ANSWER_CHARS = 1_000
""":class:`MathAnswers` refuses longer answers: math-verify's parse grows with the answer (a sum of 1 000
characters: ~0.4 s; nested fractions: ~1 s; 3 000 characters: ~7 s) and real answers are far shorter."""

COUNTER_NAMES = ("text_capped", "answer_too_long", "long_answers_compared_by_key", "parse_timeouts",
                 "verify_timeouts", "batch_budget_compared_by_key")
"""The events an answer space counts (:meth:`AnswerSpace.take_counters`):

* ``text_capped``: a completion longer than ``max_text_chars``; only its last ``max_text_chars`` were read;
* ``answer_too_long``: an extracted answer longer than ``max_answer_chars``, refused (the rollout is invalid);
* ``long_answers_compared_by_key``: an equivalence check given an over-long answer (e.g. one passed to the engine
  API directly, not extracted) compared keys only, without math-verify;
* ``parse_timeouts`` / ``verify_timeouts``: a math-verify ``parse`` / equivalence check ran past
  ``timeout_seconds`` (the check counts as "not equivalent");
* ``batch_budget_compared_by_key``: a check inside one ``cluster_batch`` / ``grade_batch`` call compared keys only
  because that call had already spent ``batch_timeout_seconds`` in math-verify."""

_COUNTER_LOCK = threading.Lock()
_BATCH = threading.local()  # per thread: {id(space): deadline} of the cluster_batch / grade_batch calls running


def _check_cap(owner: str, name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{owner}.{name}: expected an int >= 1 or None (no limit), got {value!r}")
    return int(value)


def _preview(s: str, n: int = 60) -> str:
    return repr(s) if len(s) <= n else f"{s[:n]!r}... ({len(s)} chars)"


class AnswerSpace:
    """Base class: extraction + equivalence for one kind of answer.

    Subclasses override :meth:`extract` and :meth:`key`; set ``pairwise = True`` and override
    :meth:`equivalent` only when equal keys are not enough (e.g. ``1/2`` vs ``0.5``).

    Length caps: ``max_text_chars`` and ``max_answer_chars`` (``None``: no limit). The built-in spaces apply them
    in :meth:`extract`; a custom space applies them by extracting from :meth:`window` ``(text)`` and returning
    :meth:`accept` ``(answer)``. Both count what they cut (:meth:`take_counters`).
    """

    name: ClassVar[str] = "base"
    pairwise: ClassVar[bool] = False
    """Whether :meth:`equivalent` can say "equal" for answers with different keys."""
    max_text_chars: int | None = DEFAULT_MAX_TEXT_CHARS
    """Extraction reads only the last ``max_text_chars`` characters of a completion (``None``: all of it)."""
    max_answer_chars: int | None = DEFAULT_MAX_ANSWER_CHARS
    """An extracted answer longer than this is invalid (``None``: no limit)."""

    def _set_caps(self, max_text_chars: int | None, max_answer_chars: int | None) -> None:
        owner = type(self).__name__
        self.max_text_chars = _check_cap(owner, "max_text_chars", max_text_chars)
        self.max_answer_chars = _check_cap(owner, "max_answer_chars", max_answer_chars)

    # ---------------------------------------------------------------- bounded work and its counters
    def window(self, text: str) -> str:
        """The part of ``text`` extraction reads: its last ``max_text_chars`` characters (counted as
        ``text_capped`` when that cuts something)."""
        n = self.max_text_chars
        if n is not None and len(text) > n:
            self._count("text_capped", "rlavr: %s read only the last %d characters of a completion of %d "
                        "characters (max_text_chars; counted in answers/text_capped)", type(self).__name__, n,
                        len(text))
            return text[-n:]
        return text

    def accept(self, answer: str | None) -> str | None:
        """``answer``, or ``None`` (an invalid rollout, counted as ``answer_too_long``) when it is longer than
        ``max_answer_chars``."""
        m = self.max_answer_chars
        if answer is not None and m is not None and len(answer) > m:
            self._count("answer_too_long", "rlavr: %s refused an answer of %d characters (max_answer_chars=%d; "
                        "the rollout counts as invalid; counted in answers/answer_too_long): %s",
                        type(self).__name__, len(answer), m, _preview(answer))
            return None
        return answer

    def _count(self, counter: str, message: str | None = None, *args: object, n: int = 1) -> None:
        """Add ``n`` to ``counter``; log ``message`` at WARNING level the first time this space counts it."""
        with _COUNTER_LOCK:
            counts = self.__dict__.setdefault("_counts", dict.fromkeys(COUNTER_NAMES, 0))
            counts[counter] = counts.get(counter, 0) + n
            warned = self.__dict__.setdefault("_warned", set())
            first = counter not in warned
            warned.add(counter)
        if first and message is not None:
            logger.warning(message + " (logged once per space and event)", *args)

    @property
    def counters(self) -> dict[str, int]:
        """Cumulative counts of the bounded-work events (:data:`COUNTER_NAMES`) since this space was made."""
        with _COUNTER_LOCK:
            total = dict.fromkeys(COUNTER_NAMES, 0)
            total.update(self.__dict__.get("_counts") or {})
            for k, v in (self.__dict__.get("_taken") or {}).items():
                total[k] = total.get(k, 0) + v
            return total

    def take_counters(self) -> dict[str, int]:
        """The counts (every name in :data:`COUNTER_NAMES`, zeros included) since the previous call; the engine
        calls it once per step and logs the result as ``answers/<name>``. Thread-safe."""
        with _COUNTER_LOCK:
            counts = self.__dict__.get("_counts") or {}
            out = dict.fromkeys(COUNTER_NAMES, 0)
            out.update(counts)
            taken = self.__dict__.setdefault("_taken", {})
            for k, v in counts.items():
                taken[k] = taken.get(k, 0) + v
            self.__dict__["_counts"] = dict.fromkeys(COUNTER_NAMES, 0)
            return out

    def extract(self, text: str) -> str | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def key(self, answer: str) -> str:
        return answer.strip()

    def equivalent(self, a: str, b: str) -> bool:
        return self.key(a) == self.key(b)

    def as_label(self, answer: str) -> str:
        """The label string a pseudo-label ``answer`` (an answer :meth:`extract` returned, e.g. a group's majority
        vote) is written as into the label column that the reward functions read.

        The base class and the built-in ``exact``, ``integer`` and ``knights_knaves`` spaces return ``answer``
        unchanged (their extracted answers are already in label form). Override it when extraction strips a
        wrapper that a reward function needs to parse a label as gold: :meth:`MathAnswers.as_label` writes
        ``\\boxed{answer}``. Bought ground truth is never passed through it (it keeps the dataset's format).
        """
        return answer

    # ---------------------------------------------------------------- clustering
    def cluster(self, answers: Sequence[str | None], _cache: dict[tuple[str, str], bool] | None = None,
                _keys: dict[str, str] | None = None) -> np.ndarray:
        """Cluster one group's answers; returns ``(G,)`` int ids (``-1`` = invalid), numbered by first appearance.

        Greedy (docs/concepts.md): answer ``j`` joins the first cluster whose representative (first member) is
        equivalent to it, else opens a new one. Equal keys are equivalent by definition, so an answer whose key
        was already placed goes where that key went (one :meth:`key` call per answer, one :meth:`equivalent`
        call per (representative, new key) pair at most).
        """
        ids = np.full(len(answers), -1, dtype=np.int64)
        key_to_cluster: dict[str, int] = {}
        reps: list[str] = []
        rep_keys: list[str] = []
        cache = {} if _cache is None else _cache
        keys = {} if _keys is None else _keys
        for j, a in enumerate(answers):
            if a is None:
                continue
            k = keys.get(a)
            if k is None:
                k = keys[a] = self.key(a)
            c = key_to_cluster.get(k)
            if c is None and self.pairwise:
                for ci, (rep, rk) in enumerate(zip(reps, rep_keys, strict=True)):
                    hit = cache.get((rk, k))
                    if hit is None:
                        hit = bool(self.equivalent(rep, a))
                        cache[(rk, k)] = hit
                    if hit:
                        c = ci
                        break
            if c is None:
                c = len(reps)
                reps.append(a)
                rep_keys.append(k)
            key_to_cluster[k] = c
            ids[j] = c
        return ids

    def cluster_batch(self, answers: Sequence[Sequence[str | None]]) -> np.ndarray:
        """Cluster every group: ``(B, G)`` int ids, each row numbered by first appearance.

        Non-pairwise spaces take a vectorised path: every distinct answer string is keyed once for the whole
        batch, keys become integer codes, and the per-row renumbering by first appearance is done with numpy
        (:func:`first_appearance_ids`). Pairwise spaces run the greedy pass per group, sharing one equivalence
        cache across the batch.
        """
        B = len(answers)
        if B == 0:
            return np.zeros((0, 0), dtype=np.int64)
        G = len(answers[0])
        for i, group in enumerate(answers):
            if len(group) != G:
                raise ValueError(f"cluster_batch: answers[{i}] has {len(group)} entries, answers[0] has {G}; "
                                 "every group must have the same size G")
        if self.pairwise:
            cache: dict[tuple[str, str], bool] = {}
            keys: dict[str, str] = {}
            return np.stack([self.cluster(group, cache, keys) for group in answers]).reshape(B, G)
        return first_appearance_ids(self.key_codes(answers))

    def key_codes(self, answers: Sequence[Sequence[str | None]]) -> np.ndarray:
        """``(B, G)`` int: a batch-wide integer code per distinct :meth:`key` (``-1`` for ``None``)."""
        B = len(answers)
        G = len(answers[0]) if B else 0
        raw_code: dict[str, int] = {}
        flat = np.fromiter(
            (-1 if a is None else raw_code.setdefault(a, len(raw_code)) for group in answers for a in group),
            dtype=np.int64, count=B * G)
        key_code: dict[str, int] = {}
        raw_to_key = np.fromiter((key_code.setdefault(self.key(a), len(key_code)) for a in raw_code),
                                 dtype=np.int64, count=len(raw_code))
        if raw_to_key.size == 0:
            return np.full((B, G), -1, dtype=np.int64)
        return np.where(flat >= 0, raw_to_key[np.maximum(flat, 0)], -1).reshape(B, G)

    # ---------------------------------------------------------------- grading
    def grade(self, answer: str | None, label: str | None) -> bool:
        """Whether an extracted answer matches a label (``None`` on either side is never correct)."""
        if answer is None or label is None:
            return False
        return self.equivalent(answer, label)

    def grade_batch(self, answers: Sequence[Sequence[str | None]], labels: Sequence[str | None]) -> np.ndarray:
        """``(B, G)`` bool correctness of every rollout against its group's label.

        A rollout is correct iff its key equals the label's key or (pairwise spaces) :meth:`equivalent` says so;
        ``None`` answers and ``None`` labels are never correct. Each distinct (answer key, label key) pair is
        decided once per call.
        """
        if len(answers) != len(labels):
            raise ValueError(f"grade_batch: {len(answers)} answer groups but {len(labels)} labels")
        out = np.zeros((len(answers), len(answers[0]) if answers else 0), dtype=bool)
        keys: dict[str, str] = {}
        decided: dict[tuple[str, str], bool] = {}
        for i, (group, label) in enumerate(zip(answers, labels, strict=True)):
            if label is None:
                continue
            label_key = self.key(label)
            for j, a in enumerate(group):
                if a is None:
                    continue
                k = keys.get(a)
                if k is None:
                    k = keys[a] = self.key(a)
                if k == label_key:
                    out[i, j] = True
                elif self.pairwise:
                    hit = decided.get((k, label_key))
                    if hit is None:
                        hit = decided[(k, label_key)] = bool(self.equivalent(a, label))
                    out[i, j] = hit
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def first_appearance_ids(codes: np.ndarray) -> np.ndarray:
    """Renumber each row's non-negative codes ``0, 1, 2, ...`` by first appearance (``-1`` stays ``-1``).

    Vectorised over the batch: ``np.unique`` over ``row * K + code`` finds each (row, code) pair's first
    column; a lexsort by (row, first column) gives each pair its rank within its row.
    """
    codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim != 2:
        raise ValueError(f"first_appearance_ids: codes must be (B, G), got shape {codes.shape}")
    B, G = codes.shape
    out = np.full((B, G), -1, dtype=np.int64)
    valid = codes >= 0
    if not valid.any():
        return out
    K = int(codes.max()) + 1
    rows, cols = np.nonzero(valid)  # row-major: within a row, columns increase
    flat = rows * K + codes[rows, cols]
    uniq, first_pos, inverse = np.unique(flat, return_index=True, return_inverse=True)
    urow = uniq // K
    order = np.lexsort((cols[first_pos], urow))
    sorted_rows = urow[order]
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size) - np.searchsorted(sorted_rows, sorted_rows, side="left")
    out[rows, cols] = rank[inverse.reshape(-1)]
    return out


class ExactAnswers(AnswerSpace):
    """Exact string match.

    Args:
        pattern: optional regex; the answer is group 1 (or the whole match) of the LAST match in the text
            (searched in the last ``max_text_chars`` characters). Without a pattern the whole stripped text is the
            answer (empty text -> ``None``; never cut by ``max_text_chars``, refused above ``max_answer_chars``).
        case_sensitive: compare case-sensitively (default ``True``).
        max_text_chars: read only the last this many characters of a completion (``None``: all).
        max_answer_chars: an answer longer than this is invalid (``None``: no limit).
    """

    name = "exact"

    def __init__(self, pattern: str | None = None, case_sensitive: bool = True, *,
                 max_text_chars: int | None = DEFAULT_MAX_TEXT_CHARS,
                 max_answer_chars: int | None = DEFAULT_MAX_ANSWER_CHARS) -> None:
        self.pattern = re.compile(pattern, re.DOTALL) if pattern else None
        self.case_sensitive = case_sensitive
        self._set_caps(max_text_chars, max_answer_chars)

    def extract(self, text: str) -> str | None:
        if self.pattern is None:
            s = text.strip()
            return self.accept(s or None)
        matches = list(self.pattern.finditer(self.window(text)))
        if not matches:
            return None
        m = matches[-1]
        s = (m.group(1) if m.groups() else m.group(0)).strip()
        return self.accept(s or None)

    def key(self, answer: str) -> str:
        s = answer.strip()
        return s if self.case_sensitive else s.lower()

    def __repr__(self) -> str:
        return f"ExactAnswers(pattern={self.pattern.pattern if self.pattern else None!r})"


_INT_RE = re.compile(r"(?<![\d.])-?\d+(?![\d.])|(?<![\d.])-?\d+(?=\.(?!\d))")


class IntegerAnswers(AnswerSpace):
    """The LAST integer in the completion (``"a + b = 12"`` -> ``"12"``); equivalence = integer equality.

    Thousands separators are removed (``"1,000"`` -> ``"1000"``); a minus sign counts only when it is not a
    binary minus between digits (``"3-5"`` -> ``"5"``, ``"= -5"`` -> ``"-5"``); digits that are part of a decimal
    number are not integers (``"3.75"`` -> ``None``; a sentence-final ``"42."`` is ``"42"``). Leading zeros and a
    leading ``+`` are normalised away in keys (``"007"`` == ``"7"``).

    Args:
        max_text_chars: read only the last this many characters of a completion (``None``: all).
        max_answer_chars: an answer longer than this is invalid (``None``: no limit).
    """

    name = "integer"

    def __init__(self, *, max_text_chars: int | None = DEFAULT_MAX_TEXT_CHARS,
                 max_answer_chars: int | None = DEFAULT_MAX_ANSWER_CHARS) -> None:
        self._set_caps(max_text_chars, max_answer_chars)

    def extract(self, text: str) -> str | None:
        matches = _INT_RE.findall(self.window(text).replace(",", ""))
        return self.accept(matches[-1]) if matches else None

    def key(self, answer: str) -> str:
        s = answer.strip().lstrip("+")
        try:
            return str(int(s))
        except ValueError:
            return s


# ------------------------------------------------------------------------------------------------ maths


def last_boxed(text: str) -> str | None:
    r"""Content of the LAST ``\boxed{...}`` or ``\fbox{...}`` in ``text``, by brace matching.

    Nested braces are matched (``\boxed{\frac{1}{2}}`` -> ``\frac{1}{2}``). The ``\boxed 5`` form (a space, no
    brace) takes the text up to the next ``$`` or end of line. Returns ``None`` when there is no box, the box
    is empty, or its braces do not close (a truncated completion): the LAST box decides, an earlier complete
    box is not used as a fallback.
    """
    if not isinstance(text, str):
        raise ValueError(f"last_boxed: expected str, got {type(text).__name__}")
    idx = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if idx < 0:
        return None
    cmd_end = idx + (len("\\boxed") if text.startswith("\\boxed", idx) else len("\\fbox"))
    rest = text[cmd_end:]
    stripped = rest.lstrip(" \t")
    if not stripped.startswith("{"):
        if rest[:1] in (" ", "\t") and stripped:
            content = re.split(r"[$\n]", stripped, maxsplit=1)[0].strip()
            return content or None
        return None
    brace = cmd_end + (len(rest) - len(stripped))
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


@lru_cache(maxsize=1 << 16)
def _normalise_math(s: str) -> str:
    s = _MATH_STRIP.sub("", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\text{", "\\mathrm{").rstrip(".")
    if s.startswith("\\mathrm{") and s.endswith("}"):
        s = s[len("\\mathrm{") : -1]
    return s


def _unbox(s: str) -> str:
    r"""The content of ``s`` when ``s`` is one whole ``\boxed{...}`` (surrounding spaces and ``$`` ignored), else
    ``s`` itself (the same object)."""
    t = s.strip().strip("$").strip()
    head = "\\boxed{"
    if not t.startswith(head) or not t.endswith("}"):
        return s
    depth = 0  # the box's brace must close at the very end: "\boxed{1}+\boxed{2}" is not one box
    for k in range(len(head) - 1, len(t)):
        depth += t[k] == "{"
        depth -= t[k] == "}"
        if depth == 0:
            inner = t[len(head) : k].strip()
            return inner if k == len(t) - 1 and inner else s
    return s


class MathAnswers(AnswerSpace):
    r"""Maths answers: the last ``\boxed{}``; equivalence by normalised string, then math-verify.

    Bounded work, in every thread. Extraction reads the last ``max_text_chars`` characters of a completion and
    refuses answers longer than ``max_answer_chars`` (default :data:`MATH_MAX_ANSWER_CHARS`); an over-long answer
    handed to :meth:`equivalent` directly is compared by key only. Every math-verify call (each ``parse``, each
    ``verify`` direction) is limited to ``timeout_seconds``; a call that runs past it counts as "not equivalent",
    is counted (``parse_timeouts`` / ``verify_timeouts``, :meth:`take_counters`) and the first one is logged at
    WARNING level. How: math-verify's own timeouts use ``signal.alarm`` and only work in the main thread, so rlavr
    turns them off and bounds the calls itself: in the main thread with a ``SIGALRM`` timer; in any other thread
    (e.g. the TRL trainer's) in one persistent worker subprocess, killed (and restarted on the next check) when a
    check outlives ``4 * timeout_seconds + 10`` seconds. The first check off the main thread waits for the worker
    to start (about a second, at most ``WORKER_START_SECONDS``); if it cannot start, checks run unbounded in the
    calling thread, with one WARNING. Results are cached per answer pair.

    Args:
        timeout_seconds: limit of one math-verify call, in seconds (> 0).
        batch_timeout_seconds: math-verify time one :meth:`cluster_batch` / :meth:`grade_batch` call may spend
            (``None``: no limit); once spent, its remaining checks compare keys only (counted as
            ``batch_budget_compared_by_key``). Two groups of 8 distinct 1 000-character sums otherwise take
            about 40 s of pairwise math-verify checks, each well under ``timeout_seconds``.
        use_math_verify: set ``False`` for string-only equivalence (faster, stricter).
        boxed_only: if ``False``, fall back to the last number when there is no ``\boxed{}``.
        max_text_chars: read only the last this many characters of a completion (``None``: all).
        max_answer_chars: an answer longer than this is invalid (``None``: no limit; unbounded parse cost).
    """

    name = "math"
    pairwise = True
    max_answer_chars: int | None = MATH_MAX_ANSWER_CHARS
    WORKER_START_SECONDS: ClassVar[float] = 120.0

    def __init__(self, timeout_seconds: float = 5, use_math_verify: bool = True, boxed_only: bool = True, *,
                 max_text_chars: int | None = DEFAULT_MAX_TEXT_CHARS,
                 max_answer_chars: int | None = MATH_MAX_ANSWER_CHARS,
                 batch_timeout_seconds: float | None = 30.0) -> None:
        for name, v in (("timeout_seconds", timeout_seconds), ("batch_timeout_seconds", batch_timeout_seconds)):
            if v is None and name == "batch_timeout_seconds":
                continue
            if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0 or v == float("inf"):
                raise ValueError(f"MathAnswers.{name}: must be a finite number > 0, got {v!r}")
        self.timeout_seconds = timeout_seconds
        self.batch_timeout_seconds = batch_timeout_seconds
        self.use_math_verify = use_math_verify
        self.boxed_only = boxed_only
        self._set_caps(max_text_chars, max_answer_chars)
        self._init_caches()

    def _init_caches(self) -> None:
        self._parse_cache: dict[Any, tuple[list[Any], bool]] = {}
        self._verify_cache: dict[tuple[str, str], bool] = {}

    def __getstate__(self) -> dict[str, object]:
        # caches hold sympy objects: rebuild them instead of pickling/deep-copying
        return {k: v for k, v in self.__dict__.items() if k not in ("_parse_cache", "_verify_cache")}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._init_caches()

    def extract(self, text: str) -> str | None:
        text = self.window(text)
        boxed = last_boxed(text)
        if boxed is not None or self.boxed_only:
            return self.accept(boxed)
        nums = re.findall(r"-?\d+(?:\.\d+)?(?:/\d+)?", text)
        return self.accept(nums[-1]) if nums else None

    def key(self, answer: str) -> str:
        return _normalise_math(_unbox(answer))

    def as_label(self, answer: str) -> str:
        r"""``\boxed{answer}``: the form a maths reward parses as gold.

        TRL's ``accuracy_reward`` parses the label column with math-verify's default extraction, which reads
        ``\boxed{...}`` or ``$...$`` but not every bare answer (``x^2+1`` parses as nothing, ``x^2 + 1`` as ``1``,
        ``\sqrt{2}`` and ``\dfrac{3}{4}`` as nothing), so a bare majority vote would give its group no reward
        signal. The boxed form parses for every answer :meth:`extract` returns (it came out of a box), and
        :meth:`key` unwraps it, so grading against it (:meth:`grade`, rlavr's ``AnswerReward``) is unchanged. An
        answer that is already one whole ``\boxed{...}`` is returned as it is.
        """
        if _unbox(answer) is not answer:
            return answer
        return "\\boxed{" + answer + "}"

    def equivalent(self, a: str, b: str) -> bool:
        a, b = _unbox(a), _unbox(b)  # a label written by as_label compares like its answer
        ka, kb = self.key(a), self.key(b)
        if ka == kb:
            return True
        if not self.use_math_verify:
            return False
        m = self.max_answer_chars
        if m is not None and max(len(a), len(b)) > m:
            long = a if len(a) > m else b
            self._count("long_answers_compared_by_key", "rlavr: MathAnswers compared an answer of %d characters "
                        "by key only, without math-verify (max_answer_chars=%d; counted in "
                        "answers/long_answers_compared_by_key): %s", len(long), m, _preview(long))
            return False
        pair = (ka, kb) if ka <= kb else (kb, ka)
        hit = self._verify_cache.get(pair)
        if hit is not None:
            return hit
        deadline = getattr(_BATCH, "deadlines", {}).get(id(self))
        if deadline is not None and time.monotonic() > deadline:  # not cached: a later batch may decide it
            self._count("batch_budget_compared_by_key", "rlavr: MathAnswers spent batch_timeout_seconds=%s in "
                        "math-verify within one batch; its remaining checks compare keys only (counted in "
                        "answers/batch_budget_compared_by_key)", self.batch_timeout_seconds)
            return False
        res, parse_timeouts, verify_timed_out = self._math_verify(a, b)
        if parse_timeouts:
            self._count("parse_timeouts", "rlavr: math-verify parse ran past timeout_seconds=%s comparing %s and %s; "
                        "an answer that cannot be parsed in time is 'not equivalent' to anything but its own key "
                        "(counted in answers/parse_timeouts)", self.timeout_seconds, _preview(a), _preview(b),
                        n=parse_timeouts)
        if verify_timed_out:
            self._count("verify_timeouts", "rlavr: a math-verify equivalence check ran past timeout_seconds=%s "
                        "comparing %s and %s; counted as 'not equivalent' (counted in answers/verify_timeouts)",
                        self.timeout_seconds, _preview(a), _preview(b))
        if len(self._verify_cache) > 200_000:
            self._verify_cache.clear()
        self._verify_cache[pair] = res
        return res

    @contextlib.contextmanager
    def _batch_budget(self) -> Iterator[None]:
        """Give the math-verify checks of one batch call ``batch_timeout_seconds`` (the outermost call's)."""
        deadlines: dict[int, float] = _BATCH.__dict__.setdefault("deadlines", {})
        if self.batch_timeout_seconds is None or id(self) in deadlines:
            yield
            return
        deadlines[id(self)] = time.monotonic() + float(self.batch_timeout_seconds)
        try:
            yield
        finally:
            deadlines.pop(id(self), None)

    def cluster_batch(self, answers: Sequence[Sequence[str | None]]) -> np.ndarray:
        with self._batch_budget():
            return super().cluster_batch(answers)

    def grade_batch(self, answers: Sequence[Sequence[str | None]], labels: Sequence[str | None]) -> np.ndarray:
        with self._batch_budget():
            return super().grade_batch(answers, labels)

    def _math_verify(self, a: str, b: str) -> tuple[bool, int, bool]:
        """``(equivalent, parse_timeouts, verify_timed_out)`` by math-verify, bounded in whatever thread."""
        if _mathverify.alarm_available():
            if len(self._parse_cache) > 65536:
                self._parse_cache.clear()
            return _mathverify.equivalent_strings(a, b, float(self.timeout_seconds), self._parse_cache)
        out = _WORKER.equivalent(a, b, float(self.timeout_seconds), self.WORKER_START_SECONDS)
        if out is not None:
            return out
        # no worker (it could not start): the old behaviour, unbounded, in this thread
        return _mathverify.equivalent_strings(a, b, None, self._parse_cache)


class _MathVerifyWorker:
    """The math-verify worker subprocess shared by every :class:`MathAnswers` of this process (one check at a
    time): started on the first check made off the main thread, killed when a check outlives its hard
    deadline, restarted on the next check. Runs ``rlavr/_mathverify.py`` by path with this process's
    ``sys.path`` (it imports neither rlavr nor ``__main__``)."""

    def __init__(self, argv: Sequence[str] | None = None, slack_seconds: float = 10.0) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._buf = b""
        self._broken = False
        self.argv = list(argv) if argv is not None else self.default_argv()
        self.slack_seconds = slack_seconds
        """Hard deadline of one check: ``4 * timeout_seconds + slack_seconds`` (two parses, two verifies)."""

    @staticmethod
    def default_argv() -> list[str]:
        path = os.path.abspath(_mathverify.__file__)
        paths = [p for p in sys.path if p and p != os.path.dirname(path)]
        code = (f"import sys; sys.path[:] = {paths!r}; import runpy; "
                f"runpy.run_path({path!r}, run_name='__main__')")
        return [sys.executable, "-c", code]

    def _start(self, start_seconds: float) -> bool:
        if os.name != "posix":  # select() on pipes: POSIX only
            return False
        try:
            self._proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0,
                                          close_fds=True)
        except OSError as exc:
            logger.warning("rlavr: cannot start the math-verify worker process (%s)", exc)
            return False
        self._buf = b""
        line = self._readline(time.monotonic() + start_seconds)
        try:
            ready = line is not None and bool(json.loads(line).get("ready"))
        except ValueError:
            ready = False
        if not ready:
            self._kill()
        return ready

    def _readline(self, deadline: float) -> bytes | None:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:  # EOF: the worker died
                return None
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
            for f in (proc.stdin, proc.stdout):
                if f is not None:
                    f.close()

    def equivalent(self, a: str, b: str, seconds: float, start_seconds: float) -> tuple[bool, int, bool] | None:
        """The check in the worker, or ``None`` when no worker can run (then the caller checks unbounded)."""
        with self._lock:
            if self._broken:
                return None
            if self._proc is None or self._proc.poll() is not None:
                self._proc = None
                if not self._start(start_seconds):
                    self._broken = True
                    logger.warning("rlavr: the math-verify worker process did not start; equivalence checks off "
                                   "the main thread now run WITHOUT a timeout")
                    return None
            assert self._proc is not None and self._proc.stdin is not None
            try:
                data = memoryview((json.dumps({"a": a, "b": b, "t": seconds}) + "\n").encode())
                while data:
                    data = data[os.write(self._proc.stdin.fileno(), data):]
            except OSError:
                self._kill()
                return False, 0, True
            line = self._readline(time.monotonic() + 4 * seconds + self.slack_seconds)
            if line is None:  # past the hard deadline (or the worker died): end it, the check timed out
                self._kill()
                return False, 0, True
            try:
                out = json.loads(line)
                return bool(out["eq"]), int(out["parse_timeouts"]), bool(out["verify_timeout"])
            except (ValueError, KeyError, TypeError):  # not a reply: the worker is confused, end it
                self._kill()
                return False, 0, True

    def close(self) -> None:
        with self._lock:
            self._kill()

    def _forget(self) -> None:
        """In a forked child: the worker (and maybe a held lock) belong to the parent; start afresh."""
        self._lock = threading.Lock()
        self._proc = None
        self._buf = b""


_WORKER = _MathVerifyWorker()
atexit.register(_WORKER.close)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _WORKER._forget())


# ------------------------------------------------------------------------------------------------ K&K

_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
# "<Name> is/are a|an <role>", every word case-insensitive (``ZOEY IS A KNIGHT``, ``Zoey Is A Knight``), like the
# reasoning-gym scorer that lower-cases the whole answer. _ROLE_RE_FREE is the reading of untagged free text: there
# a name must start with a capital letter, which is what tells "Zoey is a knight" from "each is a knave" in reasoning.
_ROLE_RE = re.compile(r"\b([a-z][a-z'\-]+)\s+(?:is|are)\s+(?:a|an)\s+([a-z]+)", re.IGNORECASE)
_ROLE_RE_FREE = re.compile(r"\b([A-Z][a-zA-Z'\-]+)\s+(?i:is|are)\s+(?i:a|an)\s+([a-zA-Z]+)")
_CANON_SEG = re.compile(r"\s*([A-Za-z][A-Za-z'\-]*)\s*=\s*([A-Za-z]+)\s*")
_CANON_SPLIT = re.compile(r"[|,;\n]")
# capitalised words that start "X is a ..." sentences in explanations but are never character names
_NOT_NAMES = frozenset({
    "a", "an", "and", "but", "each", "either", "every", "everyone", "he", "hence", "her", "his", "i", "if", "it",
    "neither", "no", "nobody", "none", "not", "one", "or", "she", "so", "somebody", "someone", "that", "the",
    "then", "there", "therefore", "these", "they", "this", "those", "thus", "we", "what", "which", "who", "you",
})


class KnightsKnavesAnswers(AnswerSpace):
    """Knights-and-knaves style answers: role assignments ``"Zoey is a fool, and Riley is a sage"``.

    Extraction: the LAST ``<answer>...</answer>`` block if any (an empty last block is invalid, as in
    Logic-RL/CARE ``kk.py``: no fallback to an earlier block), otherwise the whole text. Roles are parsed

    1. from the canonical form ``name=role|name=role`` (separators ``|``, ``,``, ``;`` or newlines), else
    2. from sentences ``"<Name> is/are a|an <role>"``, case-insensitively (``ZOEY IS A KNIGHT``); in untagged
       free text a name must be capitalised; pronouns and connectives such as "It", "This", "Then" are not
       names.

    The canonical string is ``name=role|...`` with names sorted and everything lower-cased, so assignment
    order does not matter. A text with no parseable assignment is invalid (``None``); so is an answer block
    that gives one name two different roles (in untagged free text the last assignment of a name wins).

    CARE/Logic-RL take the expected names from the ground truth and call an answer missing one of them
    invalid. Extraction here runs before any label is known, so the label-free reading is used: the names the
    answer mentions. Grading is unaffected (an answer missing a name never equals the label's canonical form).

    Args:
        require_answer_tag: only accept answers inside ``<answer>`` tags.
        max_text_chars: read only the last this many characters of a completion (``None``: all).
        max_answer_chars: a canonical answer longer than this is invalid (``None``: no limit).
    """

    name = "knights_knaves"

    def __init__(self, require_answer_tag: bool = False, *, max_text_chars: int | None = DEFAULT_MAX_TEXT_CHARS,
                 max_answer_chars: int | None = DEFAULT_MAX_ANSWER_CHARS) -> None:
        self.require_answer_tag = require_answer_tag
        self._set_caps(max_text_chars, max_answer_chars)

    @staticmethod
    def canonical(text: str, last_wins: bool = False, free_text: bool = False) -> str | None:
        """``name=role|...`` (sorted, lower-case) for a role assignment text; ``None`` if unparseable.

        Matching is case-insensitive (``ZOEY IS A KNIGHT`` and ``Zoey Is A Knight`` read as ``zoey=knight``, as
        in the reasoning-gym scorer). A name given two different roles makes the text ``None`` (ambiguous), unless
        ``last_wins`` (used for free text without ``<answer>`` tags, where reasoning tries hypotheses before the
        conclusion). With ``free_text`` a sentence's name must start with a capital letter (``Zoey``, ``ZOEY``),
        so that words of the reasoning ("each is a knave") are not read as names.
        """
        segments = [seg for seg in _CANON_SPLIT.split(text) if seg.strip()]
        canon = [m for m in (_CANON_SEG.fullmatch(seg) for seg in segments) if m is not None]
        found: list[tuple[str, str]]
        if segments and len(canon) == len(segments):
            found = [(m.group(1), m.group(2)) for m in canon]
        else:
            role_re = _ROLE_RE_FREE if free_text else _ROLE_RE
            found = [(n, r) for n, r in role_re.findall(text) if n.lower() not in _NOT_NAMES]
        pairs: dict[str, str] = {}
        for n, r in found:
            n, r = n.lower(), r.lower()
            if last_wins:
                pairs[n] = r
            elif pairs.setdefault(n, r) != r:
                return None  # one name, two roles: ambiguous
        if not pairs:
            return None
        return "|".join(f"{n}={pairs[n]}" for n in sorted(pairs))

    def extract(self, text: str) -> str | None:
        text = self.window(text)
        blocks = _ANSWER_BLOCK.findall(text)
        if blocks:
            body = blocks[-1].strip()
            if not body:
                return None
            return self.accept(self.canonical(body))
        if self.require_answer_tag:
            return None
        return self.accept(self.canonical(text, last_wins=True, free_text=True))

    def key(self, answer: str) -> str:
        return self.canonical(answer) or answer.strip().lower()

    def __repr__(self) -> str:
        return f"KnightsKnavesAnswers(require_answer_tag={self.require_answer_tag})"


def _check_space_class(obj: Any, origin: str) -> type[AnswerSpace]:
    """A registered answer space must be an :class:`AnswerSpace` subclass (built with no arguments by name)."""
    if not isinstance(obj, type) or not issubclass(obj, AnswerSpace):
        raise ValueError(f"answer space {origin}: expected an AnswerSpace subclass, got {obj!r}")
    return obj


ANSWER_SPACE_GROUP = "rlavr.answer_spaces"
"""Entry-point group of answer spaces from installed packages (``name = "package.module:SpaceClass"``)."""

ANSWER_SPACES: Registry[type[AnswerSpace]] = Registry("answer space", field="answer_space", group=ANSWER_SPACE_GROUP,
                                                      validate=_check_space_class, logger=logger)
"""Answer-space classes by name (the class's ``name``; ``kk`` is an alias of ``knights_knaves``)."""
ANSWER_SPACES.register(ExactAnswers)
ANSWER_SPACES.register(IntegerAnswers)
ANSWER_SPACES.register(MathAnswers)
ANSWER_SPACES.register(KnightsKnavesAnswers, aliases=("kk",))


def get_answer_space(spec: str | AnswerSpace | None) -> AnswerSpace:
    """Resolve an answer space from a registered name (``exact``, ``integer``, ``math``, ``knights_knaves``,
    plugins: :data:`ANSWER_SPACES`), built with its defaults, or return an object unchanged (``None``: exact)."""
    if spec is None:
        return ExactAnswers()
    if isinstance(spec, AnswerSpace):
        return spec
    if isinstance(spec, str):
        return ANSWER_SPACES.get(spec, hint="; or pass an AnswerSpace object")()
    raise ValueError(f"answer_space: expected a name or an AnswerSpace, got {type(spec).__name__}")
