"""Oracles: where ground-truth labels come from. Every call is a purchase, made by the engine through the ledger
(:class:`~rlavr.ledger.LabelLedger`); see docs/concepts.md, "Oracle answers" and "Oracle failures".

Built-ins: :class:`DatasetOracle` (a table of labels) and :class:`CallableOracle` (a function: a person, an API).
Any object with ``label(prompt_ids, prompts)`` satisfies :class:`Oracle`. :func:`call_with_timeout` bounds one
call; :func:`oracle_fingerprint` says what an oracle labels (recorded in the ledger); :func:`oracle_reference` is
the uncharged lookup used for metrics.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rlavr.types import Label

__all__ = [
    "CallableOracle",
    "DatasetOracle",
    "Oracle",
    "OracleError",
    "OracleTimeout",
    "call_with_timeout",
    "oracle_fingerprint",
    "oracle_reference",
]


class OracleError(RuntimeError):
    """An oracle could not produce a label (raised by oracles; caught and handled by the engine)."""


class OracleTimeout(OracleError):
    """An oracle call did not return within the engine's ``oracle_timeout`` (see :func:`call_with_timeout`)."""


def call_with_timeout(oracle: Oracle, prompt_ids: Sequence[str], prompts: Sequence[str],
                      timeout: float | None) -> list[Label | None]:
    """``oracle.label(prompt_ids, prompts)`` in a daemon worker thread, giving up after ``timeout`` seconds.

    On timeout :class:`OracleTimeout` is raised and the call is *abandoned*: whatever it returns later is
    discarded, never persisted and never charged (the caller releases its reservations; a retry asks again).
    The worker is a daemon thread, so a hung oracle can neither block the step nor the interpreter's exit.
    Because an abandoned call may still be running when the retry starts, an oracle used with a timeout must
    tolerate concurrent calls. ``timeout=None`` calls the oracle directly in the current thread.
    """
    if timeout is None:
        return list(oracle.label(prompt_ids, prompts))
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["result"] = list(oracle.label(prompt_ids, prompts))
        except BaseException as exc:  # handed to the caller below (or dropped with a late answer)
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="rlavr-oracle-call", daemon=True).start()
    if not done.wait(timeout):
        raise OracleTimeout(f"oracle {type(oracle).__name__} gave no answer for {len(prompt_ids)} prompts within "
                            f"oracle_timeout={timeout:g}s; its late answer will be discarded")
    if "error" in box:
        raise box["error"]
    return box["result"]


@runtime_checkable
class Oracle(Protocol):
    """Produces ground-truth labels. Every call is a purchase: only the engine calls it, through the ledger.

    ``label`` returns one label per requested prompt, in order; ``None`` means "no label available" (the
    reservation is released and nothing is charged).
    """

    def label(self, prompt_ids: Sequence[str], prompts: Sequence[str]) -> list[Label | None]: ...


def _missing(value: Any) -> bool:
    """``None`` or a float NaN (how pandas / ``datasets`` spell a missing value): no label."""
    return value is None or (isinstance(value, float | np.floating) and bool(np.isnan(value)))


class DatasetOracle:
    """Looks labels up in a table (dict, list of rows or a ``datasets.Dataset``).

    Args:
        data: a mapping ``prompt_id -> label``, or rows (dicts / a ``datasets.Dataset``) with ``id_column`` and
            ``label_column``. A ``None`` (or float NaN: a missing value in pandas) label means "no label for this
            prompt" (the oracle answers ``None``; nothing is charged); every other label is stored as
            ``str(label)`` (the engine still validates it before buying: an empty label is refused).
        id_column: the column holding prompt ids (rows only).
        label_column: the column holding labels (rows only).

    :meth:`reference` gives free, uncharged access for evaluation metrics and label-peeking research
    strategies (Oracle-CAG); training never uses it to buy. :meth:`fingerprint` identifies the table, so that a
    ledger of another dataset is not reused as this one's ground truth (see :meth:`LabelLedger.check_fingerprint`).

    Attributes:
        label_column: the column the labels come from (``None`` for a mapping unless set); informational, shown in
            the fingerprint.
    """

    def __init__(self, data: Mapping[str, Any] | Iterable[Mapping[str, Any]], id_column: str = "id",
                 label_column: str = "answer") -> None:
        table: dict[str, Label] = {}
        if isinstance(data, Mapping):
            table = {str(k): str(v) for k, v in data.items() if not _missing(v)}
        elif isinstance(data, str | bytes):
            raise ValueError(f"DatasetOracle.data: expected a mapping or rows, got {type(data).__name__}")
        else:
            for n, row in enumerate(data):
                if id_column not in row:
                    raise ValueError(f"DatasetOracle: row {n} has no id column {id_column!r} (columns: {sorted(row)})")
                if label_column not in row:
                    raise ValueError(f"DatasetOracle: row {n} has no label column {label_column!r} (columns: {sorted(row)})")
                key = str(row[id_column])
                if _missing(row[label_column]):
                    continue
                if key in table and table[key] != str(row[label_column]):
                    raise ValueError(f"DatasetOracle: prompt id {key!r} appears twice with different labels "
                                     f"({table[key]!r} and {str(row[label_column])!r})")
                table[key] = str(row[label_column])
        self._table = table
        self.label_column: str | None = None if isinstance(data, Mapping) else label_column
        self._labels_hash: str | None = None
        self.calls = 0
        self.labels_served = 0

    def __len__(self) -> int:
        return len(self._table)

    def label(self, prompt_ids: Sequence[str], prompts: Sequence[str]) -> list[Label | None]:
        self.calls += 1
        out = [self._table.get(str(i)) for i in prompt_ids]
        self.labels_served += sum(x is not None for x in out)
        return out

    def reference(self, prompt_ids: Sequence[str]) -> list[Label | None]:
        """Uncharged lookup for evaluation / label-peeking research strategies."""
        return [self._table.get(str(i)) for i in prompt_ids]

    def fingerprint(self) -> dict[str, Any]:
        """What this oracle labels: ``{"labels": "sha256:...", "label_column": ..., "n_labels": ...}``.

        ``labels`` is the SHA-256 of the sorted ``(prompt_id, label)`` pairs (computed once, O(N log N)): two
        oracles have the same one exactly when they give every id the same label. Any change of the table (a row
        added or removed, a label corrected) changes it. ``label_column`` (``None`` for a mapping) and ``n_labels``
        are informational: they are shown in messages and by ``rlavr ledger show``, never compared.
        """
        if self._labels_hash is None:
            digest = hashlib.sha256()
            for pid in sorted(self._table):
                digest.update(json.dumps([pid, self._table[pid]], ensure_ascii=False).encode("utf-8", "surrogatepass"))
                digest.update(b"\n")
            self._labels_hash = f"sha256:{digest.hexdigest()}"
        return {"labels": self._labels_hash, "label_column": self.label_column, "n_labels": len(self._table)}


def _as_label(value: Any) -> Any:
    """A :class:`CallableOracle` answer as a label where that is unambiguous (``str``; ``int`` / finite ``float``
    as ``str``); anything else unchanged, for the engine's validation to refuse."""
    if value is None or isinstance(value, str | bool | np.bool_):
        return value
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating) and np.isfinite(value):
        return str(value)
    return value


class CallableOracle:
    """Wraps a function ``fn(prompt_id, prompt) -> label`` (e.g. a human-in-the-loop or an API).

    Args:
        fn: the labelling function; may raise (the engine retries and then falls back, see
            :class:`~rlavr.engine.AcquisitionEngine`). Its answers are returned as labels: ``str`` as is, ``int``
            and finite ``float`` as ``str(x)``, ``None`` = no label; any other value (NaN, ``bool``, ``bytes``,
            lists, objects) is passed through unchanged so that the engine refuses it (never stored as its
            ``str()``, never charged; see :func:`~rlavr.engine.check_oracle_answer`).
        batched: if ``True``, ``fn(prompt_ids, prompts) -> list[label]`` is called once per purchase.
        reference_fn: optional uncharged lookup for evaluation metrics.
    """

    def __init__(self, fn: Callable[..., Any], batched: bool = False,
                 reference_fn: Callable[[Sequence[str]], list[Label | None]] | None = None) -> None:
        if not callable(fn):
            raise ValueError(f"CallableOracle.fn: expected a callable, got {type(fn).__name__}")
        self.fn = fn
        self.batched = batched
        self._reference_fn = reference_fn

    def label(self, prompt_ids: Sequence[str], prompts: Sequence[str]) -> list[Label | None]:
        if self.batched:
            out = list(self.fn(list(prompt_ids), list(prompts)))
            if len(out) != len(prompt_ids):
                raise OracleError(f"CallableOracle: batched fn returned {len(out)} labels for {len(prompt_ids)} prompts")
        else:
            out = [self.fn(i, p) for i, p in zip(prompt_ids, prompts, strict=True)]
        return [_as_label(x) for x in out]

    def reference(self, prompt_ids: Sequence[str]) -> list[Label | None]:
        if self._reference_fn is None:
            raise NotImplementedError("CallableOracle: no reference_fn given; label metrics are unavailable")
        return self._reference_fn(prompt_ids)


def oracle_fingerprint(oracle: Oracle) -> dict[str, Any] | None:
    """The oracle's ``fingerprint()`` (what it labels) as a dict, or ``None`` when it has none.

    An oracle may define ``fingerprint()`` returning a string or a mapping with a ``"labels"`` key (see
    :meth:`DatasetOracle.fingerprint`); it is recorded in the ledger the oracle fills, and a ledger recorded with
    another one is refused (:meth:`LabelLedger.check_fingerprint`).
    """
    fn = getattr(oracle, "fingerprint", None)
    if not callable(fn):
        return None
    fp = fn()
    if fp is None:
        return None
    if isinstance(fp, str):
        return {"labels": fp}
    if not isinstance(fp, Mapping) or not isinstance(fp.get("labels"), str):
        raise ValueError(f"oracle {type(oracle).__name__}.fingerprint(): expected a string or a mapping with a "
                         f"'labels' string, got {fp!r}")
    return dict(fp)


def oracle_reference(oracle: Oracle, prompt_ids: Sequence[str]) -> list[Label | None] | None:
    """Uncharged ground truth for metrics if the oracle offers it, else ``None``."""
    ref = getattr(oracle, "reference", None)
    if ref is None:
        return None
    try:
        return list(ref(prompt_ids))
    except NotImplementedError:
        return None
