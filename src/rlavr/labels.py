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
purchase of that id, without being charged again. A reservation of a writer that is still alive (another
process or another ledger object on this machine: its token names the host, the pid and the process start
time) is *in flight*: the other purchase waits for it to be written (up to ``timeout``) instead of asking the
oracle for the same id again, so a label is never paid for twice.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rlavr.types import Label

logger = logging.getLogger(__name__)

__all__ = [
    "CallableOracle",
    "DatasetOracle",
    "LEGACY_RUN",
    "LabelLedger",
    "MajorityVote",
    "Oracle",
    "OracleError",
    "OracleTimeout",
    "POOL_STEP",
    "PurchaseResult",
    "call_with_timeout",
    "majority_vote",
    "new_run_id",
]


# ================================================================================================ majority vote


@dataclass(frozen=True, eq=False)
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
    """Majority vote for a batch of clustered groups (vectorised; see module docstring for the rules).

    With ``n[b, c]`` the size of cluster ``c`` in group ``b`` and ``f[b, c]`` the index of its first member, the
    majority is ``argmax_c (n[b, c], -f[b, c])`` in lexicographic order: the largest cluster, ties to the one
    that appeared first. The tie rule uses ``f`` directly, so it holds for any cluster numbering, not only
    the first-appearance numbering of :meth:`~rlavr.answers.AnswerSpace.cluster_batch`.

    Args:
        cluster_ids: ``(B, G)`` cluster id per rollout in ``[-1, G-1]`` (``-1`` = invalid answer).
        answers: the ``B`` groups' answers (the majority answer is the first member of the top cluster).
    """
    ids = np.asarray(cluster_ids)
    if ids.ndim != 2:
        raise ValueError(f"majority_vote: cluster_ids must be (B, G), got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"majority_vote: cluster_ids must be integers, got dtype {ids.dtype}")
    ids = ids.astype(np.int64, copy=False)
    B, G = ids.shape
    if len(answers) != B:
        raise ValueError(f"majority_vote: {len(answers)} answer lists for {B} groups")
    bad_row = next((i for i, a in enumerate(answers) if len(a) != G), None)
    if bad_row is not None:
        raise ValueError(f"majority_vote: answers[{bad_row}] has {len(answers[bad_row])} entries, expected G={G}")
    if ids.size and (ids.max() >= G or ids.min() < -1):
        raise ValueError(f"majority_vote: cluster ids must lie in [-1, G-1={G - 1}], got range [{ids.min()}, {ids.max()}]")
    valid = ids >= 0
    rows = np.broadcast_to(np.arange(B)[:, None], (B, G))
    flat = (rows * G + np.where(valid, ids, 0))[valid]
    sizes = np.bincount(flat, minlength=B * G).reshape(B, G)  # (B, G) size per cluster id
    first_idx = np.full(B * G, G, dtype=np.int64)  # G = "absent"
    cols = np.broadcast_to(np.arange(G)[None, :], (B, G))[valid]
    np.minimum.at(first_idx, flat, cols)
    first_idx = first_idx.reshape(B, G)
    n_valid = valid.sum(axis=1)
    # lexicographic (size desc, first member asc) in one integer key
    top = np.argmax(sizes * (G + 1) + (G - first_idx), axis=1)
    msize = sizes[np.arange(B), top]
    has = msize > 0
    majority = np.where(has, top, -1)
    first = np.where(has, first_idx[np.arange(B), top], -1)
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


class DatasetOracle:
    """Looks labels up in a table (dict, list of rows or a ``datasets.Dataset``).

    Args:
        data: a mapping ``prompt_id -> label``, or rows (dicts / a ``datasets.Dataset``) with ``id_column`` and
            ``label_column``. A ``None`` label means "no label for this prompt" (the oracle answers ``None``;
            nothing is charged); every other label is stored as ``str(label)``.
        id_column: the column holding prompt ids (rows only).
        label_column: the column holding labels (rows only).

    :meth:`reference` gives free, uncharged access for evaluation metrics and label-peeking research
    strategies (Oracle-CAG); training never uses it to buy.
    """

    def __init__(self, data: Mapping[str, Any] | Iterable[Mapping[str, Any]], id_column: str = "id",
                 label_column: str = "answer") -> None:
        table: dict[str, Label] = {}
        if isinstance(data, Mapping):
            table = {str(k): str(v) for k, v in data.items() if v is not None}
        elif isinstance(data, str | bytes):
            raise ValueError(f"DatasetOracle.data: expected a mapping or rows, got {type(data).__name__}")
        else:
            for n, row in enumerate(data):
                if id_column not in row:
                    raise ValueError(f"DatasetOracle: row {n} has no id column {id_column!r} (columns: {sorted(row)})")
                if label_column not in row:
                    raise ValueError(f"DatasetOracle: row {n} has no label column {label_column!r} (columns: {sorted(row)})")
                key = str(row[id_column])
                if row[label_column] is None:
                    continue
                if key in table and table[key] != str(row[label_column]):
                    raise ValueError(f"DatasetOracle: prompt id {key!r} appears twice with different labels "
                                     f"({table[key]!r} and {str(row[label_column])!r})")
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
        labels: every label now available for the requested ids (already owned + delivered now), exactly as
            persisted in the ledger.
        bought: ids charged in this call (fresh reservations the oracle answered).
        reused: ids whose label was already in the ledger (free).
        refused: ids not bought because the budget was exhausted.
        failed: ids the oracle could not label (fresh ones are released: not charged).
        resumed: stale reservations (a killed writer's) completed in this call; they were charged when they
            were reserved and are not charged again.
        busy: ids another live writer was still buying when this call stopped waiting for it (``timeout``):
            not asked, not charged here; their label is free to every writer once persisted.
        oracle_errors: oracle calls that raised or timed out (and were retried) while producing this result:
            counted by :meth:`AcquisitionEngine.buy <rlavr.engine.AcquisitionEngine.buy>`; a single
            :meth:`LabelLedger.purchase` raises instead, so its results carry 0.
    """

    labels: dict[str, Label]
    bought: list[str]
    reused: list[str]
    refused: list[str]
    failed: list[str]
    resumed: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    oracle_errors: int = 0


POOL_STEP = -1
"""Reserved step key of the pre-training pool stage in the ledger's ``steps`` table (:meth:`LabelLedger.record_pool`).
Below every training step (they count from 0), so the ledger's position (:attr:`LabelLedger.last_step`, MAX over
step keys) and the resume rewind (``drop_steps_after(k)`` deletes keys ``> k >= -1``) never touch it."""


def _process_start(pid: int) -> str:
    """The start time of process ``pid`` in clock ticks since boot (Linux ``/proc``), or ``""`` elsewhere.

    Together with the pid it identifies a process even when pids are reused (a restarted container often gives
    the new trainer the killed one's pid).
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
        return stat[stat.rindex(")") + 2 :].split()[19]  # field 22 (starttime); fields after the command name
    except (OSError, ValueError, IndexError):
        return ""


def _host() -> str:
    return os.uname().nodename if hasattr(os, "uname") else os.environ.get("COMPUTERNAME", "")


def _writer_alive(token: str | None) -> bool:
    """Whether the writer that made a reservation (its ``owner`` token) is still running on this host.

    Tokens are ``owner#host#pid#start#nonce``. A writer on another host, or a token of an older format, cannot be
    checked and counts as not alive (its reservation is resumed, as a killed writer's would be).
    """
    parts = (token or "").split("#")
    if len(parts) != 5 or parts[1] != _host():
        return False
    try:
        pid = int(parts[2])
    except ValueError:
        return False
    if parts[3]:
        return _process_start(pid) == parts[3]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    run_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    n_prompts INTEGER NOT NULL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS label_steps (
    prompt_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    step_key INTEGER
);
CREATE INDEX IF NOT EXISTS label_steps_run_step ON label_steps(run_id, step_key);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_CHUNK = 900  # stay under SQLite's bound-variable limit

LEGACY_RUN = "legacy"
"""Run id given to the steps and labels of a ledger written before runs were recorded (schema migration), and the
run a checkpoint without a run id resumes."""


def new_run_id() -> str:
    """A fresh, unique run id: ``run-<UTC time>-<8 hex digits>`` (``uuid4``: no global RNG is drawn from)."""
    return f"run-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"


def _check_run_id(run_id: object) -> str:
    if not isinstance(run_id, str) or not run_id.strip():
        raise ValueError(f"run_id: expected a non-empty str, got {run_id!r}")
    return run_id


class LabelLedger:
    """Persistent record of bought labels (SQLite, WAL mode). ``":memory:"`` gives a throw-away ledger.

    Several processes may share one ledger file (each opens its own :class:`LabelLedger`); one object may be
    used from several threads (calls are serialised by a lock).

    Args:
        path: database file (created with its parent directories) or ``":memory:"``.
        owner: a name for this writer (e.g. ``"rank0"``), stored with each reservation together with a
            per-object token (host, pid, process start time, nonce), so a writer only ever releases its own
            reservations and can tell a live writer's reservation from a killed one's.
        timeout: seconds to wait for another writer's lock, and for another live writer to finish buying an id
            this writer also wants.
        run_id: the training run this object writes for (default: a fresh :func:`new_run_id`; a resumed run
            sets the checkpoint's, see :attr:`run_id`).

    Runs: several runs may share one ledger (and so one global budget). The prompts each run presents are recorded
    per run (``steps`` is keyed by ``(run_id, step)``), so two runs at the same step number both count, and a
    resume rewinds only its own run (:meth:`drop_steps_after`). :attr:`prompts_seen` and :attr:`n_charged` are
    over all runs (the shared global budget); :attr:`last_step` and :meth:`charged_at` are this run's. The table
    ``label_steps`` records, per label, the run that reserved it and the step key it was bought at (a per-step cap
    counts them). A ledger
    written before runs were recorded is migrated when opened: its steps and labels belong to the run
    :data:`LEGACY_RUN`, each label at the step key of its purchase step; nothing is deleted.
    """

    def __init__(self, path: str | Path = ":memory:", owner: str = "main", timeout: float = 60.0,
                 run_id: str | None = None) -> None:
        if not isinstance(owner, str) or not owner:
            raise ValueError(f"LabelLedger.owner: expected a non-empty str, got {owner!r}")
        if not timeout > 0:
            raise ValueError(f"LabelLedger.timeout: must be > 0, got {timeout!r}")
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.owner = owner
        self.timeout = float(timeout)
        pid = os.getpid()
        self._token = f"{owner.replace('#', '_')}#{_host()}#{pid}#{_process_start(pid)}#{uuid.uuid4().hex[:12]}"
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        if self.path != ":memory:":
            self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        self._migrate_runs()
        self._run_id = new_run_id() if run_id is None else _check_run_id(run_id)

    def _columns(self, table: str) -> set[str]:
        return {row[1] for row in self._conn.execute(f"PRAGMA table_info({table})")}

    def _migrate_runs(self) -> None:
        """Bring a ledger written before runs were recorded (its ``steps`` table is keyed by step alone) to the
        per-run schema, in one transaction (idempotent, safe against a concurrent opener): the old steps are
        copied under :data:`LEGACY_RUN` (the old table is replaced only after the copy) and every label row is
        filed under :data:`LEGACY_RUN` at the step key of its purchase step. Nothing is deleted."""
        with self._lock:
            if "run_id" in self._columns("steps"):
                return
            with self._transaction() as c:
                if "run_id" in self._columns("steps"):  # another process migrated it meanwhile
                    return
                c.execute("ALTER TABLE steps RENAME TO steps_before_runs")
                c.execute("CREATE TABLE steps (run_id TEXT NOT NULL, step INTEGER NOT NULL, "
                          "n_prompts INTEGER NOT NULL, PRIMARY KEY (run_id, step))")
                c.execute("INSERT INTO steps(run_id, step, n_prompts) SELECT ?, step, n_prompts "
                          "FROM steps_before_runs", (LEGACY_RUN,))
                c.execute("DROP TABLE steps_before_runs")
                c.execute("INSERT OR IGNORE INTO label_steps(prompt_id, run_id, step_key) "
                          "SELECT prompt_id, ?, step FROM labels", (LEGACY_RUN,))
            logger.info("rlavr: ledger %s migrated to per-run step accounting (earlier steps and labels belong to "
                        "run %r)", self.path, LEGACY_RUN)

    @property
    def run_id(self) -> str:
        """The run this object records steps and purchases for (set it to resume a run: the engine's
        ``load_state_dict`` sets the checkpoint's)."""
        return self._run_id

    @run_id.setter
    def run_id(self, value: str) -> None:
        self._run_id = _check_run_id(value)

    # ---------------------------------------------------------------- queries
    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._lock:
            return self._conn.execute(sql, params).fetchone()[0]

    def __contains__(self, prompt_id: object) -> bool:
        with self._lock:
            row = self._conn.execute("SELECT status FROM labels WHERE prompt_id=?", (str(prompt_id),)).fetchone()
        return row is not None and row[0] == "bought"

    def __len__(self) -> int:
        return self.n_bought

    @property
    def n_bought(self) -> int:
        """Labels delivered and persisted."""
        return int(self._one("SELECT COUNT(*) FROM labels WHERE status='bought'"))

    @property
    def n_pending(self) -> int:
        """Reservations not (yet) completed: in flight, or left behind by a killed writer."""
        return int(self._one("SELECT COUNT(*) FROM labels WHERE status='pending'"))

    @property
    def n_charged(self) -> int:
        """Labels counted against the budget: bought + pending reservations."""
        return int(self._one("SELECT COUNT(*) FROM labels"))

    @property
    def prompts_seen(self) -> int:
        """Prompt groups presented to the acquisition engine, summed over the distinct steps of every run sharing
        the ledger (the global budget is shared)."""
        return int(self._one("SELECT COALESCE(SUM(n_prompts), 0) FROM steps"))

    def charged_at(self, step_key: int) -> int:
        """Labels charged (bought or reserved) by this run at step key ``step_key``: what a per-step cap has
        used at that step, also by an earlier attempt of the run (killed after the checkpoint it resumed)."""
        return int(self._one("SELECT COUNT(*) FROM label_steps s JOIN labels l ON l.prompt_id = s.prompt_id "
                             "WHERE s.run_id=? AND s.step_key=?", (self._run_id, int(step_key))))

    def runs(self) -> dict[str, dict[str, int]]:
        """Every run recorded in the ledger: ``run_id -> {"prompts_seen", "steps", "last_step", "charged"}``
        (``charged``: labels that run reserved or bought; ``last_step`` is ``-2`` for a run that recorded no
        step). Labels bought through a bare :meth:`purchase` by an old writer carry no run and are not listed."""
        out: dict[str, dict[str, int]] = {}
        with self._lock:
            for run, seen, n, last in self._conn.execute(
                    "SELECT run_id, SUM(n_prompts), COUNT(*), MAX(step) FROM steps GROUP BY run_id"):
                out[run] = {"prompts_seen": int(seen), "steps": int(n), "last_step": int(last), "charged": 0}
            for run, n in self._conn.execute(
                    "SELECT s.run_id, COUNT(*) FROM label_steps s JOIN labels l ON l.prompt_id = s.prompt_id "
                    "GROUP BY s.run_id"):
                out.setdefault(run, {"prompts_seen": 0, "steps": 0, "last_step": -2, "charged": 0})["charged"] = int(n)
        return out

    def known(self, prompt_ids: Sequence[str]) -> np.ndarray:
        """``(len(prompt_ids),)`` bool: a bought label exists (reusing it is free)."""
        owned = self.get_many(prompt_ids)
        return np.fromiter((str(i) in owned for i in prompt_ids), dtype=bool, count=len(prompt_ids))

    def reserved(self, prompt_ids: Sequence[str]) -> np.ndarray:
        """``(len(prompt_ids),)`` bool: a ``pending`` reservation exists (already charged; completing it is free)."""
        ids = list(dict.fromkeys(str(i) for i in prompt_ids))
        pending: set[str] = set()
        with self._lock:
            for k in range(0, len(ids), _CHUNK):
                chunk = ids[k : k + _CHUNK]
                q = ("SELECT prompt_id FROM labels WHERE status='pending' AND prompt_id IN "
                     f"({','.join('?' * len(chunk))})")
                pending.update(pid for (pid,) in self._conn.execute(q, chunk))
        return np.fromiter((str(i) in pending for i in prompt_ids), dtype=bool, count=len(prompt_ids))

    def get(self, prompt_id: str) -> Label | None:
        """The bought label of ``prompt_id``, or ``None``."""
        return self.get_many([prompt_id]).get(str(prompt_id))

    def get_many(self, prompt_ids: Sequence[str]) -> dict[str, Label]:
        """Bought labels of the given ids (ids without one are absent from the result)."""
        out: dict[str, Label] = {}
        ids = list(dict.fromkeys(str(i) for i in prompt_ids))
        with self._lock:
            for k in range(0, len(ids), _CHUNK):
                chunk = ids[k : k + _CHUNK]
                q = ("SELECT prompt_id, label FROM labels WHERE status='bought' AND prompt_id IN "
                     f"({','.join('?' * len(chunk))})")
                out.update({pid: json.loads(lab) for pid, lab in self._conn.execute(q, chunk)})
        return out

    def items(self) -> list[tuple[str, Label, int]]:
        """All bought labels as ``(prompt_id, label, step)``, in purchase order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT prompt_id, label, step FROM labels WHERE status='bought' ORDER BY created, rowid").fetchall()
        return [(p, json.loads(lab), s) for p, lab, s in rows]

    # ---------------------------------------------------------------- steps
    def record_step(self, step: int, n_prompts: int) -> None:
        """Record that ``n_prompts`` groups were presented at ``step`` by this run (idempotent per run and step:
        replays don't double count; another run's step of the same number is counted as well)."""
        if step < 0 or n_prompts < 0:
            raise ValueError(f"record_step: step and n_prompts must be >= 0, got step={step}, n_prompts={n_prompts}")
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO steps(run_id, step, n_prompts) VALUES (?, ?, ?)",
                               (self._run_id, int(step), int(n_prompts)))

    def record_pool(self, n_prompts: int) -> None:
        """Record the pre-training pool stage: ``n_prompts`` groups presented at the reserved step key
        :data:`POOL_STEP` (idempotent: refitting on the same pool does not count it twice; a new size replaces
        the old one). The pool's prompts count as prompts seen (a ratio budget gives the pool its own share)."""
        if isinstance(n_prompts, bool) or not isinstance(n_prompts, int | np.integer) or n_prompts < 0:
            raise ValueError(f"record_pool: n_prompts must be an int >= 0, got {n_prompts!r}")
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO steps(run_id, step, n_prompts) VALUES (?, ?, ?)",
                               (self._run_id, POOL_STEP, int(n_prompts)))

    @property
    def last_step(self) -> int:
        """The highest step key this run recorded (``-1`` when none): the run's position in the ledger."""
        return int(self._one("SELECT COALESCE(MAX(step), -1) FROM steps WHERE run_id=?", (self._run_id,)))

    def drop_steps_after(self, step: int) -> int:
        """Forget the steps this run recorded after ``step`` (rewind the position to a checkpoint's; ``-1``
        forgets all). Other runs' steps, bought labels and reservations are kept. Returns the number forgotten."""
        with self._lock:
            return int(self._conn.execute("DELETE FROM steps WHERE run_id=? AND step > ?",
                                          (self._run_id, int(step))).rowcount)

    # ---------------------------------------------------------------- buying
    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on any error); holds the object lock throughout."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def purchase(
        self,
        prompt_ids: Sequence[str],
        prompts: Sequence[str],
        oracle: Oracle,
        limit: Callable[[int], int] | int,
        step: int,
        position: int | None = None,
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
            position: the step key (the ``record_step`` key of the batch) recorded with each label reservation,
                together with this run's id, so that a per-step cap can count what the step has charged
                (:meth:`charged_at`); ``None`` (the pool stage, bare purchases): counted against no step.

        Raises:
            Whatever the oracle raises (after releasing this call's fresh reservations: nothing is charged).
        """
        if len(prompt_ids) != len(prompts):
            raise ValueError(f"purchase: {len(prompt_ids)} ids but {len(prompts)} prompts")
        if step < 0:
            raise ValueError(f"purchase: step must be >= 0, got {step}")
        if not callable(limit) and (isinstance(limit, bool) or not isinstance(limit, int | np.integer)):
            raise ValueError(f"purchase: limit must be an int or a callable, got {limit!r}")
        text: dict[str, str] = {}
        for i, p in zip(prompt_ids, prompts, strict=True):
            text.setdefault(str(i), p)
        ids = list(text)
        # ---- phase 1: reserve within the budget (one writer at a time)
        with self._transaction() as c:
            existing: dict[str, tuple[str, str | None]] = {}
            for k in range(0, len(ids), _CHUNK):
                chunk = ids[k : k + _CHUNK]
                q = f"SELECT prompt_id, status, label FROM labels WHERE prompt_id IN ({','.join('?' * len(chunk))})"
                existing.update({p: (st, lab) for p, st, lab in c.execute(q, chunk)})
            charged = int(c.execute("SELECT COUNT(*) FROM labels").fetchone()[0])
            allowed = limit(charged) if callable(limit) else int(limit)
            allowed = max(0, int(allowed))
            reused = [i for i in ids if i in existing and existing[i][0] == "bought"]
            # stale reservations (a killed writer): already charged, complete them without charging again
            pending_owner: dict[str, str | None] = {}
            stale_ids = [i for i in ids if i in existing and existing[i][0] == "pending"]
            for k in range(0, len(stale_ids), _CHUNK):
                chunk = stale_ids[k : k + _CHUNK]
                q = f"SELECT prompt_id, owner FROM labels WHERE prompt_id IN ({','.join('?' * len(chunk))})"
                pending_owner.update(dict(c.execute(q, chunk).fetchall()))
            # a live writer's reservation is in flight: wait for its label instead of asking the oracle again
            inflight = [i for i in stale_ids if pending_owner.get(i) != self._token and _writer_alive(pending_owner.get(i))]
            inflight_set = set(inflight)
            resumed = [i for i in stale_ids if i not in inflight_set]
            new = [i for i in ids if i not in existing]
            to_reserve = new[:allowed]
            refused = new[allowed:]
            now = time.time()
            c.executemany(
                "INSERT INTO labels(prompt_id, label, status, step, owner, created) VALUES (?, NULL, 'pending', ?, ?, ?)",
                [(i, int(step), self._token, now) for i in to_reserve],
            )
            # the run and step key that charged each reservation (a per-step cap counts them: charged_at)
            key = None if position is None else int(position)
            c.executemany("INSERT OR REPLACE INTO label_steps(prompt_id, run_id, step_key) VALUES (?, ?, ?)",
                          [(i, self._run_id, key) for i in to_reserve])
        labels: dict[str, Label] = {i: json.loads(existing[i][1]) for i in reused}  # type: ignore[arg-type]
        to_ask = resumed + to_reserve
        if not to_ask:
            waited, busy = self._wait_for(inflight)
            labels.update(waited)
            return PurchaseResult(labels=labels, bought=[], reused=reused + list(waited), refused=refused,
                                  failed=[], busy=busy)
        # ---- phase 2: ask the oracle (no database lock held)
        try:
            answers = list(oracle.label(to_ask, [text[i] for i in to_ask]))
            if len(answers) != len(to_ask):
                raise OracleError(f"oracle returned {len(answers)} labels for {len(to_ask)} prompts")
        except BaseException:
            # nothing was delivered: release the fresh reservations, keep stale ones as they were
            self._release(to_reserve)
            raise
        got = [(i, str(a)) for i, a in zip(to_ask, answers, strict=True) if a is not None]
        failed = [i for i, a in zip(to_ask, answers, strict=True) if a is None]
        # ---- phase 3: persist before use (upsert: the row exists unless someone else removed it)
        now = time.time()
        with self._transaction() as c:
            c.executemany(
                "INSERT INTO labels(prompt_id, label, status, step, owner, created) VALUES (?, ?, 'bought', ?, ?, ?) "
                "ON CONFLICT(prompt_id) DO UPDATE SET label=excluded.label, status='bought', created=excluded.created "
                "WHERE labels.status='pending'",
                [(i, json.dumps(a), int(step), self._token, now) for i, a in got],
            )
        fresh = set(to_reserve)
        self._release([i for i in failed if i in fresh])
        # what is returned is what was persisted (a concurrent writer may have completed a stale id first)
        labels.update(self.get_many([i for i, _ in got]))
        resumed_set = set(resumed)
        waited, busy = self._wait_for(inflight)
        labels.update(waited)
        return PurchaseResult(labels=labels, bought=[i for i, _ in got if i in fresh], reused=reused + list(waited),
                              refused=refused, failed=failed, resumed=[i for i, _ in got if i in resumed_set],
                              busy=busy)

    def _wait_for(self, ids: Sequence[str]) -> tuple[dict[str, Label], list[str]]:
        """Poll until other live writers' reservations of ``ids`` are bought, released or abandoned (their
        writer died), at most ``timeout`` seconds. Returns the labels that arrived and the ids still busy."""
        if not ids:
            return {}, []
        labels: dict[str, Label] = {}
        left = list(ids)
        deadline = time.monotonic() + self.timeout
        delay = 0.01
        while left:
            got = self.get_many(left)
            labels.update(got)
            rows: dict[str, str | None] = {}
            with self._lock:
                for k in range(0, len(left), _CHUNK):
                    chunk = left[k : k + _CHUNK]
                    rows.update(self._conn.execute(
                        f"SELECT prompt_id, owner FROM labels WHERE status='pending' AND prompt_id IN "
                        f"({','.join('?' * len(chunk))})", chunk).fetchall())
            # still pending with a live writer: keep waiting; anything else (bought, released, writer dead) ends
            left = [i for i in left if i not in got and i in rows and _writer_alive(rows[i])]
            if not left or time.monotonic() >= deadline:
                break
            time.sleep(delay)
            delay = min(0.5, delay * 2)
        if left:
            logger.warning("rlavr: %d labels still being bought by another writer after %.0fs; not asked here",
                           len(left), self.timeout)
        return labels, [i for i in ids if i not in labels]  # released, abandoned or still busy: not bought here

    def _release(self, ids: Sequence[str]) -> None:
        """Delete this writer's own pending reservations for ``ids`` (never another writer's, never a bought label)."""
        if not ids:
            return
        with self._transaction() as c:
            c.executemany("DELETE FROM labels WHERE prompt_id=? AND status='pending' AND owner=?",
                          [(i, self._token) for i in ids])
            c.executemany("DELETE FROM label_steps WHERE prompt_id=? AND NOT EXISTS "
                          "(SELECT 1 FROM labels WHERE labels.prompt_id = label_steps.prompt_id)", [(i,) for i in ids])

    # ---------------------------------------------------------------- meta / state
    def set_meta(self, key: str, value: Any) -> None:
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def state_dict(self) -> dict[str, Any]:
        """Position of the ledger (for checkpoints): counts only; the labels stay in the database."""
        return {"path": self.path, "n_bought": self.n_bought, "n_charged": self.n_charged,
                "prompts_seen": self.prompts_seen, "last_step": self.last_step, "run_id": self._run_id}

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> LabelLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LabelLedger(path={self.path!r}, bought={self.n_bought})"
