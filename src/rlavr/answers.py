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
    "first_appearance_ids",
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
    def cluster(self, answers: Sequence[str | None], _cache: dict[tuple[str, str], bool] | None = None,
                _keys: dict[str, str] | None = None) -> np.ndarray:
        """Cluster one group's answers; returns ``(G,)`` int ids (``-1`` = invalid), numbered by first appearance.

        Greedy (care-spec §1.3): answer ``j`` joins the first cluster whose representative (first member) is
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


_INT_RE = re.compile(r"(?<![\d.])-?\d+(?![\d.])|(?<![\d.])-?\d+(?=\.(?!\d))")


class IntegerAnswers(AnswerSpace):
    """The LAST integer in the completion (``"a + b = 12"`` -> ``"12"``); equivalence = integer equality.

    Thousands separators are removed (``"1,000"`` -> ``"1000"``); a minus sign counts only when it is not a
    binary minus between digits (``"3-5"`` -> ``"5"``, ``"= -5"`` -> ``"-5"``); digits that are part of a decimal
    number are not integers (``"3.75"`` -> ``None``; a sentence-final ``"42."`` is ``"42"``). Leading zeros and a
    leading ``+`` are normalised away in keys (``"007"`` == ``"7"``).
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
        self._init_caches()

    def _init_caches(self) -> None:
        self._parse = lru_cache(maxsize=65536)(self._parse_uncached)
        self._verify_cache: dict[tuple[str, str], bool] = {}

    def __getstate__(self) -> dict[str, object]:
        # caches hold sympy objects and a bound lru_cache: rebuild them instead of pickling/deep-copying
        return {k: v for k, v in self.__dict__.items() if k not in ("_parse", "_verify_cache")}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._init_caches()

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
    """

    name = "knights_knaves"

    def __init__(self, require_answer_tag: bool = False) -> None:
        self.require_answer_tag = require_answer_tag

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
        blocks = _ANSWER_BLOCK.findall(text)
        if blocks:
            body = blocks[-1].strip()
            if not body:
                return None
            return self.canonical(body)
        if self.require_answer_tag:
            return None
        return self.canonical(text, last_wins=True, free_text=True)

    def key(self, answer: str) -> str:
        return self.canonical(answer) or answer.strip().lower()

    def __repr__(self) -> str:
        return f"KnightsKnavesAnswers(require_answer_tag={self.require_answer_tag})"


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
