"""Labels: majority vote (pseudo-labels), oracles (ground truth) and the persistent label ledger.

Majority vote follows TTRL / CARE (care-spec §1.4), vectorised over the batch:

* invalid answers (``None``, cluster id ``-1``) are skipped;
* clusters are ranked by (-size, first appearance): ties go to the cluster that appeared earliest;
* ``majority_ratio = |top cluster| / G`` where ``G`` counts invalid rollouts too;
* a group with no valid answer has no pseudo-label (``majority = -1``, ratio 0).

:class:`LabelLedger` is the single source of truth for spending: every bought label is written to SQLite and
committed *before* it is used; a prompt id in the ledger is never charged again; spend is counted from the
ledger (so it survives crashes and restarts). Buying is a two-phase protocol so that the budget can never be
exceeded, even with several processes writing to one ledger file:

1. ``BEGIN IMMEDIATE`` (one writer at a time): count what is spent or reserved, reserve at most what the budget
   allows (rows with ``status='pending'``), commit.
2. Call the oracle for the reserved ids (no lock held).
3. Write the labels (``status='bought'``) and commit; release reservations the oracle did not answer.

A reservation left behind by a killed process still counts against the budget and is completed on the next
purchase of that id, without being charged again.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rlavr.types import Label

logger = logging.getLogger(__name__)

__all__ = [
    "CallableOracle",
    "DatasetOracle",
    "LabelLedger",
    "MajorityVote",
    "Oracle",
    "OracleError",
    "PurchaseResult",
    "majority_vote",
]


# ================================================================================================ majority vote


@dataclass(frozen=True)
class MajorityVote:
    """Per-group majority vote over clustered answers (all arrays have leading dimension ``B``).

    Attributes:
        cluster_ids: ``(B, G)`` cluster id of each rollout, ``-1`` if invalid; ids follow first appearance.
        cluster_sizes: ``(B, G)`` size of cluster ``c`` at column ``c`` (zeros for unused ids).
        majority: ``(B,)`` id of the majority cluster, ``-1`` when no answer is valid.
        majority_size: ``(B,)`` size of the majority cluster (0 when none).
        majority_first: ``(B,)`` rollout index of the majority cluster's first member (-1 when none).
        majority_answer: ``B`` representative answer strings (first member) or ``None``.
        n_valid: ``(B,)`` number of valid rollouts.
    """

    cluster_ids: np.ndarray
    cluster_sizes: np.ndarray
    majority: np.ndarray
    majority_size: np.ndarray
    majority_first: np.ndarray
    majority_answer: list[str | None]
    n_valid: np.ndarray

    @property
    def G(self) -> int:  # noqa: N802
        return int(self.cluster_ids.shape[1])

    @property
    def majority_ratio(self) -> np.ndarray:
        """``(B,)`` majority cluster size / G (invalid rollouts count in G)."""
        return self.majority_size / self.G

    @property
    def in_majority(self) -> np.ndarray:
        """``(B, G)`` bool: rollout is in the majority cluster."""
        return (self.cluster_ids == self.majority[:, None]) & (self.majority[:, None] >= 0)

    @property
    def sorted_cluster_dist(self) -> np.ndarray:
        """``(B, G)`` cluster sizes sorted descending, divided by G, zero-padded (CARE feature, care-spec §3.2)."""
        return -np.sort(-self.cluster_sizes, axis=1) / self.G

    @property
    def entropy(self) -> np.ndarray:
        """``(B,)`` natural-log entropy of the cluster distribution over VALID answers (0 if none valid)."""
        sizes = self.cluster_sizes.astype(np.float64)
        total = sizes.sum(axis=1, keepdims=True)
        p = np.divide(sizes, total, out=np.zeros_like(sizes), where=total > 0)
        return -(p * np.log(np.maximum(p, 1e-12))).sum(axis=1)


def majority_vote(cluster_ids: np.ndarray, answers: Sequence[Sequence[str | None]]) -> MajorityVote:
    """Majority vote for a batch of clustered groups (vectorised; see module docstring for the rules)."""
    ids = np.asarray(cluster_ids, dtype=np.int64)
    if ids.ndim != 2:
        raise ValueError(f"majority_vote: cluster_ids must be (B, G), got shape {ids.shape}")
    B, G = ids.shape
    if len(answers) != B:
        raise ValueError(f"majority_vote: {len(answers)} answer lists for {B} groups")
    if np.any(ids >= G) or np.any(ids < -1):
        raise ValueError(f"majority_vote: cluster ids must lie in [-1, G-1={G - 1}], got range [{ids.min()}, {ids.max()}]")
    onehot = ids[:, :, None] == np.arange(G)[None, None, :]  # (B, G, G)
    sizes = onehot.sum(axis=1)  # (B, G) size per cluster id
    n_valid = (ids >= 0).sum(axis=1)
    top = np.argmax(sizes, axis=1)  # first max -> earliest cluster (ids follow first appearance)
    msize = sizes[np.arange(B), top]
    has = msize > 0
    majority = np.where(has, top, -1)
    first = np.where(has, np.argmax(ids == majority[:, None], axis=1), -1)
    maj_answer = [answers[i][first[i]] if has[i] else None for i in range(B)]
    return MajorityVote(
        cluster_ids=ids,
        cluster_sizes=sizes,
        majority=majority,
        majority_size=np.where(has, msize, 0),
        majority_first=first,
        majority_answer=maj_answer,
        n_valid=n_valid,
    )


# ================================================================================================ oracles


class OracleError(RuntimeError):
    """An oracle could not produce a label (raised by oracles; caught and handled by the engine)."""


@runtime_checkable
class Oracle(Protocol):
    """Produces ground-truth labels. Every call is a purchase: only the engine calls it, through the ledger.

    ``label`` returns one label per requested prompt, in order; ``None`` means "no label available" (the
    reservation is released and nothing is charged).
    """

    def label(self, prompt_ids: Sequence[str], prompts: Sequence[str]) -> list[Label | None]: ...


class DatasetOracle:
    """Looks labels up in a table (dict, list of rows or a ``datasets.Dataset``).

    Args:
        data: a mapping ``prompt_id -> label``, or rows (dicts / a ``datasets.Dataset``) with ``id_column`` and
            ``label_column``.
        id_column: the column holding prompt ids (rows only).
        label_column: the column holding labels (rows only).

    :meth:`reference` gives free, uncharged access for evaluation metrics and label-peeking research
    strategies (Oracle-CAG); training never uses it to buy.
    """

    def __init__(self, data: Mapping[str, Any] | Iterable[Mapping[str, Any]], id_column: str = "id",
                 label_column: str = "answer") -> None:
        table: dict[str, Label] = {}
        if isinstance(data, Mapping):
            table = {str(k): str(v) for k, v in data.items()}
        else:
            for n, row in enumerate(data):
                if id_column not in row:
                    raise ValueError(f"DatasetOracle: row {n} has no id column {id_column!r} (columns: {sorted(row)})")
                if label_column not in row:
                    raise ValueError(f"DatasetOracle: row {n} has no label column {label_column!r} (columns: {sorted(row)})")
                key = str(row[id_column])
                if key in table and table[key] != str(row[label_column]):
                    raise ValueError(f"DatasetOracle: prompt id {key!r} appears twice with different labels")
                table[key] = str(row[label_column])
        self._table = table
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


class CallableOracle:
    """Wraps a function ``fn(prompt_id, prompt) -> label`` (e.g. a human-in-the-loop or an API).

    Args:
        fn: the labelling function; may raise (the engine retries and then falls back, see
            :class:`~rlavr.engine.AcquisitionEngine`).
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
        return [None if x is None else str(x) for x in out]

    def reference(self, prompt_ids: Sequence[str]) -> list[Label | None]:
        if self._reference_fn is None:
            raise NotImplementedError("CallableOracle: no reference_fn given; label metrics are unavailable")
        return self._reference_fn(prompt_ids)


def oracle_reference(oracle: Oracle, prompt_ids: Sequence[str]) -> list[Label | None] | None:
    """Uncharged ground truth for metrics if the oracle offers it, else ``None``."""
    ref = getattr(oracle, "reference", None)
    if ref is None:
        return None
    try:
        return list(ref(prompt_ids))
    except NotImplementedError:
        return None


# ================================================================================================ ledger


@dataclass(frozen=True)
class PurchaseResult:
    """Outcome of :meth:`LabelLedger.purchase`.

    Attributes:
        labels: every label now available for the requested ids (already owned + newly bought).
        bought: ids charged in this call.
        reused: ids whose label was already in the ledger (free).
        refused: ids not bought because the budget was exhausted.
        failed: ids the oracle could not label (not charged).
    """

    labels: dict[str, Label]
    bought: list[str]
    reused: list[str]
    refused: list[str]
    failed: list[str]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    prompt_id TEXT PRIMARY KEY,
    label TEXT,
    status TEXT NOT NULL CHECK (status IN ('pending', 'bought')),
    step INTEGER NOT NULL,
    owner TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS steps (
    step INTEGER PRIMARY KEY,
    n_prompts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class LabelLedger:
    """Persistent record of bought labels (SQLite, WAL mode). ``":memory:"`` gives a throw-away ledger.

    Args:
        path: database file (created with its parent directories) or ``":memory:"``.
        owner: a name for this writer (e.g. ``"rank0"``), stored with each reservation.
        timeout: seconds to wait for another writer's lock.
    """

    def __init__(self, path: str | Path = ":memory:", owner: str = "main", timeout: float = 60.0) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.owner = owner
        self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        if self.path != ":memory:":
            self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)

    # ---------------------------------------------------------------- queries
    def __contains__(self, prompt_id: str) -> bool:
        row = self._conn.execute("SELECT status FROM labels WHERE prompt_id=?", (prompt_id,)).fetchone()
        return row is not None and row[0] == "bought"

    def __len__(self) -> int:
        return self.n_bought

    @property
    def n_bought(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM labels WHERE status='bought'").fetchone()[0])

    @property
    def n_charged(self) -> int:
        """Labels counted against the budget: bought + pending reservations."""
        return int(self._conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0])

    @property
    def prompts_seen(self) -> int:
        """Prompt groups presented to the acquisition engine (summed over distinct steps)."""
        return int(self._conn.execute("SELECT COALESCE(SUM(n_prompts), 0) FROM steps").fetchone()[0])

    def known(self, prompt_ids: Sequence[str]) -> np.ndarray:
        """``(len(prompt_ids),)`` bool: a bought label exists (reusing it is free)."""
        owned = self.get_many(prompt_ids)
        return np.array([i in owned for i in prompt_ids], dtype=bool)

    def get_many(self, prompt_ids: Sequence[str]) -> dict[str, Label]:
        out: dict[str, Label] = {}
        ids = list(dict.fromkeys(prompt_ids))
        for k in range(0, len(ids), 900):  # SQLite variable limit
            chunk = ids[k : k + 900]
            q = f"SELECT prompt_id, label FROM labels WHERE status='bought' AND prompt_id IN ({','.join('?' * len(chunk))})"
            out.update({pid: json.loads(lab) for pid, lab in self._conn.execute(q, chunk)})
        return out

    def items(self) -> list[tuple[str, Label, int]]:
        """All bought labels as ``(prompt_id, label, step)``, in purchase order."""
        rows = self._conn.execute("SELECT prompt_id, label, step FROM labels WHERE status='bought' ORDER BY created, rowid")
        return [(p, json.loads(lab), s) for p, lab, s in rows]

    # ---------------------------------------------------------------- steps
    def record_step(self, step: int, n_prompts: int) -> None:
        """Record that ``n_prompts`` groups were presented at ``step`` (idempotent per step: replays don't double count)."""
        if step < 0 or n_prompts < 0:
            raise ValueError(f"record_step: step and n_prompts must be >= 0, got step={step}, n_prompts={n_prompts}")
        self._conn.execute("INSERT OR REPLACE INTO steps(step, n_prompts) VALUES (?, ?)", (step, n_prompts))

    # ---------------------------------------------------------------- buying
    def purchase(
        self,
        prompt_ids: Sequence[str],
        prompts: Sequence[str],
        oracle: Oracle,
        limit: Callable[[int], int] | int,
        step: int,
    ) -> PurchaseResult:
        """Buy labels for ``prompt_ids`` (in priority order) without exceeding the budget.

        Args:
            prompt_ids: ids to label, most wanted first; duplicates are ignored.
            prompts: the prompt texts (what the oracle sees), aligned with ``prompt_ids``.
            oracle: the label source.
            limit: the most NEW labels that may be charged in this call: an int, or a function of the number
                already charged in the ledger (evaluated inside the write lock, so concurrent writers can
                never jointly overspend a global budget).
            step: training step recorded with each label.
        """
        if len(prompt_ids) != len(prompts):
            raise ValueError(f"purchase: {len(prompt_ids)} ids but {len(prompts)} prompts")
        text = dict(zip(prompt_ids, prompts, strict=True))
        ids = list(dict.fromkeys(str(i) for i in prompt_ids))
        c = self._conn
        # ---- phase 1: reserve within the budget (one writer at a time)
        c.execute("BEGIN IMMEDIATE")
        try:
            existing = {}
            for k in range(0, len(ids), 900):
                chunk = ids[k : k + 900]
                q = f"SELECT prompt_id, status, label FROM labels WHERE prompt_id IN ({','.join('?' * len(chunk))})"
                existing.update({p: (s, lab) for p, s, lab in c.execute(q, chunk)})
            charged = int(c.execute("SELECT COUNT(*) FROM labels").fetchone()[0])
            allowed = limit(charged) if callable(limit) else int(limit)
            allowed = max(0, int(allowed))
            reused = [i for i in ids if existing.get(i, ("", None))[0] == "bought"]
            # stale reservations (a killed writer): already charged, complete them without charging again
            resumed = [i for i in ids if existing.get(i, ("", None))[0] == "pending"]
            new = [i for i in ids if i not in existing]
            to_reserve = new[:allowed]
            refused = new[allowed:]
            now = time.time()
            c.executemany(
                "INSERT INTO labels(prompt_id, label, status, step, owner, created) VALUES (?, NULL, 'pending', ?, ?, ?)",
                [(i, step, self.owner, now) for i in to_reserve],
            )
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        labels = {i: json.loads(existing[i][1]) for i in reused}
        to_ask = resumed + to_reserve
        failed: list[str] = []
        bought: list[str] = []
        if to_ask:
            # ---- phase 2: ask the oracle (no lock held)
            try:
                answers = list(oracle.label(to_ask, [text[i] for i in to_ask]))
                if len(answers) != len(to_ask):
                    raise OracleError(f"oracle returned {len(answers)} labels for {len(to_ask)} prompts")
            except BaseException:
                # nothing was delivered: release the fresh reservations, keep stale ones as they were
                self._release(to_reserve)
                raise
            # ---- phase 3: persist before use
            got = [(i, a) for i, a in zip(to_ask, answers, strict=True) if a is not None]
            failed = [i for i, a in zip(to_ask, answers, strict=True) if a is None]
            c.execute("BEGIN IMMEDIATE")
            try:
                c.executemany(
                    "UPDATE labels SET label=?, status='bought', created=? WHERE prompt_id=?",
                    [(json.dumps(str(a)), time.time(), i) for i, a in got],
                )
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            self._release([i for i in failed if i in set(to_reserve)])
            labels.update({i: str(a) for i, a in got})
            bought = [i for i, _ in got]
        return PurchaseResult(labels=labels, bought=bought, reused=reused, refused=refused, failed=failed)

    def _release(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.executemany("DELETE FROM labels WHERE prompt_id=? AND status='pending'", [(i,) for i in ids])
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    # ---------------------------------------------------------------- meta / state
    def set_meta(self, key: str, value: Any) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def state_dict(self) -> dict[str, Any]:
        """Position of the ledger (for checkpoints): counts only; the labels stay in the database."""
        return {"path": self.path, "n_bought": self.n_bought, "n_charged": self.n_charged,
                "prompts_seen": self.prompts_seen}

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> LabelLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LabelLedger(path={self.path!r}, bought={self.n_bought})"
