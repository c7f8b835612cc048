"""The label ledger: the persistent, crash-safe record of every bought label (SQLite, WAL).

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
oracle for the same id again, so a label is never paid for twice. A stale reservation is *claimed* (its owner
set to the claiming writer) inside the phase-1 transaction, so two live writers that meet the same stale
reservation ask the oracle for it once between them.

The ledger failing is not the oracle failing: every SQLite error is raised as :class:`LedgerError`, naming the
file and the way out. Answers the oracle gave are never asked for again because of a ledger fault: phase 3 is
retried, and if the ledger still cannot be written the answers stay in memory (the next purchase of those ids by
the same :class:`LabelLedger` writes them without asking the oracle) and :class:`LedgerError` stops the caller.
A ledger file is created atomically (a complete SQLite file appears under its name, never an empty one), so an
existing 0-byte, damaged or foreign file is refused, never silently used as an empty ledger. A live ledger is
copied with :meth:`LabelLedger.backup` (``rlavr ledger backup``): the file alone misses the labels still in its
``-wal`` file.
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
from typing import Any

import numpy as np

from rlavr.oracles import Oracle, OracleError
from rlavr.types import Label, check_prompt_id

logger = logging.getLogger(__name__)

__all__ = [
    "FINGERPRINT_KEY",
    "LEGACY_RUN",
    "POOL_STEP",
    "UNRECORDED_RUN",
    "LabelLedger",
    "LedgerError",
    "LedgerMismatchError",
    "PurchaseResult",
    "new_run_id",
]


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

_LEDGER_COLUMNS = frozenset({"prompt_id", "label", "status", "step", "owner", "created"})
"""Columns of the ``labels`` table every rlavr ledger has (a ``labels`` table without them is another app's)."""

FINGERPRINT_KEY = "rlavr.fingerprint"
"""Ledger meta key of what the ledger labels (:meth:`LabelLedger.check_fingerprint`)."""

_PERSIST_ATTEMPTS = 3
_PERSIST_BACKOFF = 0.05  # seconds before the 2nd attempt to write answered labels; doubles


class LedgerError(RuntimeError):
    """The label ledger cannot be used or written. The message names the ledger file and the way out; a SQLite
    failure is chained (``__cause__``) as the real error.

    Raised for a damaged, empty (0-byte), foreign (another application's SQLite file) or read-only ledger file,
    and when a write fails (disk full, lock held past the ledger's ``timeout``, I/O error). It is never an oracle
    failure: the engine does not retry it by asking the oracle again.

    Attributes:
        path: the ledger file.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class LedgerMismatchError(LedgerError, ValueError):
    """The ledger is not this run's: it labels another dataset or answer space (its fingerprint differs), or it
    holds fewer labels than the checkpoint being resumed saw. Also a :class:`ValueError`."""


def _way_out(exc: BaseException, path: str, timeout: float) -> str:
    """What to do about a SQLite error on the ledger ``path`` (one sentence for the error message)."""
    msg = str(exc).lower()
    if "full" in msg:
        return (f"Free disk space (or raise the quota) where {path} lives, then resume from the last checkpoint; "
                "nothing in the ledger is lost.")
    if "locked" in msg or "busy" in msg:
        return (f"Another process held the ledger's write lock for more than timeout={timeout:g}s: find it (e.g. "
                f"`fuser {path}`), or give the ledger a longer timeout.")
    if "readonly" in msg or "read-only" in msg:
        return (f"The file or its folder is not writable (SQLite also writes {path}-wal and {path}-shm beside it): "
                f"fix the permissions, or copy it with `rlavr ledger backup {path} NEW.sqlite` and use the copy.")
    if "malformed" in msg or "not a database" in msg or "corrupt" in msg:
        return (f"The file is damaged or is not a ledger: restore it from a backup (`rlavr ledger backup` copies "
                f"a live ledger) or use another ledger path; `rlavr ledger show {path}` says what it holds.")
    if "unable to open" in msg or "i/o" in msg:
        return f"Check that {path} and its folder exist, are writable and that the storage is healthy."
    return f"`rlavr ledger show {path}` says what the ledger holds."


def _ledger_error(exc: sqlite3.Error, path: str, timeout: float, what: str = "") -> LedgerError:
    name = getattr(exc, "sqlite_errorname", type(exc).__name__)
    doing = f" while {what}" if what else ""
    return LedgerError(f"ledger {path}: SQLite error{doing}: {exc} ({name}). {_way_out(exc, path, timeout)}", path)


class _Cursor:
    """A sqlite3 cursor whose SQLite errors (raised while rows are read) are :class:`LedgerError`."""

    def __init__(self, cursor: sqlite3.Cursor, conn: _Connection) -> None:
        self._cursor = cursor
        self._conn = conn

    def fetchone(self) -> Any:
        with self._conn.guard():
            return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        with self._conn.guard():
            return self._cursor.fetchall()

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount


class _Connection:
    """The ledger's sqlite3 connection: every SQLite error is raised as a :class:`LedgerError` naming the file."""

    def __init__(self, raw: sqlite3.Connection, path: str, timeout: float) -> None:
        self.raw = raw
        self.path = path
        self.timeout = timeout

    @contextmanager
    def guard(self, what: str = "") -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise _ledger_error(exc, self.path, self.timeout, what) from exc

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> _Cursor:
        with self.guard():
            return _Cursor(self.raw.execute(sql, params), self)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> _Cursor:
        with self.guard():
            return _Cursor(self.raw.executemany(sql, rows), self)

    def executescript(self, script: str) -> None:
        with self.guard():
            self.raw.executescript(script)

    @property
    def in_transaction(self) -> bool:
        return self.raw.in_transaction

    def close(self) -> None:
        self.raw.close()


def _write_sqlite_atomically(path: Path, fill: Callable[[sqlite3.Connection], object]) -> bool:
    """Write the SQLite file ``path`` so that it is never seen half made: ``fill`` writes a temporary file beside
    it, which is then hard-linked under the final name (renamed where the file system has no hard links). Returns
    ``False``, leaving the other file as it is, when ``path`` appeared meanwhile. Raises ``OSError`` /
    ``sqlite3.Error`` (the callers word them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        con = sqlite3.connect(tmp)
        try:
            fill(con)
        finally:
            con.close()
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # no hard links on this file system
            if path.exists():
                return False
            os.replace(tmp, path)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _create_ledger_file(path: Path) -> None:
    """Create an empty ledger at ``path`` atomically (:func:`_write_sqlite_atomically`), so a ledger file is never
    seen half made (never 0 bytes). If another process creates it first, its file is kept."""
    where = str(path)
    try:
        _write_sqlite_atomically(path, lambda con: con.executescript(_SCHEMA))
    except (OSError, sqlite3.Error) as exc:
        raise LedgerError(f"ledger {where}: cannot create it ({exc}); check that its folder can be created and "
                          "written", where) from exc


LEGACY_RUN = "legacy"
"""Run id given to the steps and labels of a ledger written before runs were recorded (schema migration), and the
run a checkpoint without a run id resumes."""


UNRECORDED_RUN = "(unrecorded)"
"""What :meth:`LabelLedger.summary` shows as the run of a label row with no run record (written by hand or by a
tool other than rlavr)."""


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
        read_only: open an existing ledger for reading only (``rlavr ledger show`` / ``backup``); every write
            raises :class:`LedgerError` (a ledger written before runs were recorded is then read as it is).

    Raises:
        LedgerError: the file exists but is empty (0 bytes: a truncated copy or a failed write, never a ledger
            rlavr made, so it is refused rather than silently used as an empty ledger whose labels would all be
            bought again), damaged, another application's SQLite file, not writable (unless ``read_only``), or
            cannot be created.
    """

    def __init__(self, path: str | Path = ":memory:", owner: str = "main", timeout: float = 60.0,
                 run_id: str | None = None, *, read_only: bool = False) -> None:
        if not isinstance(owner, str) or not owner:
            raise ValueError(f"LabelLedger.owner: expected a non-empty str, got {owner!r}")
        if not timeout > 0:
            raise ValueError(f"LabelLedger.timeout: must be > 0, got {timeout!r}")
        self.path = str(path)
        if self.path == ":memory:" and read_only:
            raise ValueError("LabelLedger.read_only: an in-memory ledger cannot be opened read-only")
        self.owner = owner
        self.timeout = float(timeout)
        self.read_only = bool(read_only)
        pid = os.getpid()
        self._token = f"{owner.replace('#', '_')}#{_host()}#{pid}#{_process_start(pid)}#{uuid.uuid4().hex[:12]}"
        self._lock = threading.RLock()
        # answers the oracle gave that could not be written (a ledger fault): written, without asking again, by
        # the next purchase of those ids through this object
        self._unsaved: dict[str, Label] = {}
        if self.path == ":memory:":
            raw = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        else:
            raw = self._open_file(Path(self.path))
        self._conn = _Connection(raw, self.path, self.timeout)
        if not self.read_only:
            if self.path != ":memory:":
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SCHEMA)
            self._migrate_runs()
        self._run_id = new_run_id() if run_id is None else _check_run_id(run_id)

    def _open_file(self, path: Path) -> sqlite3.Connection:
        """Connect to the ledger file ``path``: create it atomically if absent (not when read-only), refuse an
        empty, damaged, foreign or unwritable file with a :class:`LedgerError` naming it."""
        where = str(path)
        if path.is_dir():
            raise LedgerError(f"ledger {where}: is a folder, not a ledger file; give the path of a .sqlite file",
                              where)
        if not path.exists():
            if self.read_only:
                raise LedgerError(f"ledger {where}: no such file", where)
            _create_ledger_file(path)
        size = path.stat().st_size
        if size == 0:
            raise LedgerError(
                f"ledger {where}: the file is empty (0 bytes). rlavr never leaves an empty ledger (a new one is "
                "created complete), so this is a truncated copy, a failed write or another program's placeholder; "
                "using it as an empty ledger would lose every label and all spend it should hold. Restore the "
                "ledger from a backup (`rlavr ledger backup`), or, to start a new ledger, delete the file or choose "
                "another ledger path.", where)
        if not self.read_only and not os.access(path, os.W_OK):
            raise LedgerError(
                f"ledger {where}: the file is read-only (no write permission). Make it writable (chmod u+w), or "
                f"copy it with `rlavr ledger backup {where} NEW.sqlite` and use the copy; `rlavr ledger show "
                f"{where}` reads it as it is.", where)
        uri = f"{path.resolve().as_uri()}?mode={'ro' if self.read_only else 'rw'}"
        raw: sqlite3.Connection | None = None
        try:
            raw = sqlite3.connect(uri, uri=True, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            tables = {name for (name,) in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            columns = {row[1] for row in raw.execute("PRAGMA table_info(labels)")} if "labels" in tables else set()
        except sqlite3.Error as exc:
            if raw is not None:
                raw.close()
            if any(k in str(exc).lower() for k in ("not a database", "malformed", "corrupt")):
                raise LedgerError(
                    f"ledger {where}: not a readable SQLite database ({exc}): the file is damaged or is not a "
                    "ledger. Restore it from a backup (`rlavr ledger backup` copies a live ledger) or use another "
                    "ledger path.", where) from exc
            raise _ledger_error(exc, where, self.timeout, "opening it") from exc
        if tables and not columns >= _LEDGER_COLUMNS:
            raw.close()
            what = f"tables {sorted(tables)}" if "labels" not in tables else f"a labels table with columns {sorted(columns)}"
            raise LedgerError(
                f"ledger {where}: a SQLite database of another application ({what}), not an rlavr label ledger; "
                "rlavr never writes into it. Give another ledger path.", where)
        return raw

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
        ids = list(dict.fromkeys(check_prompt_id(str(i), "prompt_ids") for i in prompt_ids))
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
    def _transaction(self) -> Iterator[_Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on any error); holds the object lock throughout.

        The error that ended the transaction is the one raised: SQLite rolls a transaction back itself on some
        errors (``SQLITE_FULL``), and a failing ``ROLLBACK`` never replaces the real error."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    try:
                        self._conn.raw.execute("ROLLBACK")
                    except sqlite3.Error as exc:  # the transaction's own error is the one to report
                        logger.debug("rlavr: ROLLBACK on ledger %s failed: %s", self.path, exc)
                raise

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
            LedgerError: the ledger could not be read or written (not an oracle failure: callers must not retry
                it by asking the oracle again). Answers the oracle gave that could not be written are kept in
                memory and written, without asking the oracle, by this object's next purchase of those ids.
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
            existing: dict[str, tuple[str, str | None, str | None]] = {}
            for k in range(0, len(ids), _CHUNK):
                chunk = ids[k : k + _CHUNK]
                q = ("SELECT prompt_id, status, label, owner FROM labels WHERE prompt_id IN "
                     f"({','.join('?' * len(chunk))})")
                existing.update({p: (st, lab, own) for p, st, lab, own in c.execute(q, chunk)})
            charged = int(c.execute("SELECT COUNT(*) FROM labels").fetchone()[0])
            allowed = limit(charged) if callable(limit) else int(limit)
            allowed = max(0, int(allowed))
            reused = [i for i in ids if i in existing and existing[i][0] == "bought"]
            # stale reservations (a killed writer): already charged, complete them without charging again
            stale_ids = [i for i in ids if i in existing and existing[i][0] == "pending"]
            pending_owner: dict[str, str | None] = {i: existing[i][2] for i in stale_ids}
            # a live writer's reservation is in flight: wait for its label instead of asking the oracle again
            inflight = [i for i in stale_ids if pending_owner.get(i) != self._token and _writer_alive(pending_owner.get(i))]
            inflight_set = set(inflight)
            resumed = [i for i in stale_ids if i not in inflight_set]
            # claim them in this transaction: a live writer meeting them next sees them in flight (ours), so two
            # live writers never both ask the oracle for one stale reservation
            claimed = {i: pending_owner[i] for i in resumed if pending_owner[i] != self._token}
            c.executemany("UPDATE labels SET owner=? WHERE prompt_id=? AND status='pending' AND owner IS ?",
                          [(self._token, i, old) for i, old in claimed.items()])
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
        for i in reused:  # written meanwhile (by another writer): an answer kept in memory is no longer needed
            self._unsaved.pop(i, None)
        to_ask = resumed + to_reserve
        if not to_ask:
            waited, busy = self._wait_for(inflight)
            labels.update(waited)
            return PurchaseResult(labels=labels, bought=[], reused=reused + list(waited), refused=refused,
                                  failed=[], busy=busy)
        # ---- phase 2: ask the oracle (no database lock held), except for answers it gave before that a ledger
        # fault kept from being written: those are never asked for again
        remembered = {i: self._unsaved[i] for i in to_ask if i in self._unsaved}
        asking = [i for i in to_ask if i not in remembered]
        try:
            answers = list(oracle.label(asking, [text[i] for i in asking])) if asking else []
            if len(answers) != len(asking):
                raise OracleError(f"oracle returned {len(answers)} labels for {len(asking)} prompts")
        except BaseException:
            # nothing was delivered: release the fresh reservations, hand the stale ones back as they were
            self._undo(to_reserve, claimed)
            raise
        answer_of: dict[str, Label | None] = {**remembered, **dict(zip(asking, answers, strict=True))}
        got = [(i, str(answer_of[i])) for i in to_ask if answer_of[i] is not None]
        failed = [i for i in to_ask if answer_of[i] is None]
        # ---- phase 3: persist before use (upsert: the row exists unless someone else removed it); the fresh
        # reservations the oracle did not answer are released and the stale ones handed back, in the same commit
        fresh = set(to_reserve)
        self._persist(got, step, release=[i for i in failed if i in fresh],
                      hand_back={i: claimed[i] for i in failed if i in claimed}, fresh=to_reserve, claimed=claimed)
        # what is returned is what was persisted
        labels.update(self.get_many([i for i, _ in got]))
        resumed_set = set(resumed)
        waited, busy = self._wait_for(inflight)
        labels.update(waited)
        return PurchaseResult(labels=labels, bought=[i for i, _ in got if i in fresh], reused=reused + list(waited),
                              refused=refused, failed=failed, resumed=[i for i, _ in got if i in resumed_set],
                              busy=busy)

    def _persist(self, got: Sequence[tuple[str, Label]], step: int, *, release: Sequence[str],
                 hand_back: Mapping[str, str | None], fresh: Sequence[str], claimed: Mapping[str, str | None]) -> None:
        """Phase 3 of :meth:`purchase`: write the oracle's answers ``got`` (one transaction, retried
        ``_PERSIST_ATTEMPTS`` times: a lock held past the timeout may be gone at the next attempt).

        If the ledger still cannot be written, the answers are kept in memory (the next purchase of those ids
        through this object writes them without asking the oracle), this call's reservations are released and
        claimed stale ones handed back where the ledger allows it, and :class:`LedgerError` is raised, chaining
        the SQLite error.
        """
        error: LedgerError | None = None
        for attempt in range(_PERSIST_ATTEMPTS):
            if attempt:
                time.sleep(_PERSIST_BACKOFF * 2 ** (attempt - 1))
            try:
                now = time.time()
                with self._transaction() as c:
                    c.executemany(
                        "INSERT INTO labels(prompt_id, label, status, step, owner, created) VALUES (?, ?, 'bought', ?, ?, ?) "
                        "ON CONFLICT(prompt_id) DO UPDATE SET label=excluded.label, status='bought', created=excluded.created "
                        "WHERE labels.status='pending'",
                        [(i, json.dumps(a), int(step), self._token, now) for i, a in got],
                    )
                    self._undo_in(c, release, hand_back)
            except LedgerError as exc:
                error = exc
                logger.warning("rlavr: writing %d answered labels to the ledger %s failed (attempt %d of %d): %s",
                               len(got), self.path, attempt + 1, _PERSIST_ATTEMPTS, exc.__cause__ or exc)
                continue
            for i, _ in got:
                self._unsaved.pop(i, None)
            return
        assert error is not None
        self._unsaved.update(got)
        try:
            self._undo(fresh, claimed)
            left = ("their reservations were released (nothing is charged for them in the ledger; the oracle did "
                    "answer)")
        except LedgerError:
            left = ("their reservations stay pending (charged once; completed without a new charge by the next "
                    "purchase of these ids, by this process from memory, or after it exits by any writer)")
        cause = error.__cause__ if isinstance(error.__cause__, sqlite3.Error) else None
        detail = f"{cause} ({getattr(cause, 'sqlite_errorname', 'SQLite error')})" if cause else str(error)
        raise LedgerError(
            f"ledger {self.path}: the oracle answered {len(got)} labels but writing them to the ledger failed "
            f"{_PERSIST_ATTEMPTS} times: {detail}. The answers are kept in memory and are written without asking the "
            f"oracle again when this ledger object next buys these ids; {left}. "
            f"{_way_out(cause or error, self.path, self.timeout)}", self.path) from (cause or error)

    def _undo_in(self, c: _Connection, release: Sequence[str], hand_back: Mapping[str, str | None]) -> None:
        """(Inside a transaction.) Delete this writer's pending reservations ``release`` (never another writer's,
        never a bought label) and give the stale reservations in ``hand_back`` their previous owner again."""
        c.executemany("DELETE FROM labels WHERE prompt_id=? AND status='pending' AND owner=?",
                      [(i, self._token) for i in release])
        # a released reservation no longer counts against its step key's per-step cap
        c.executemany("DELETE FROM label_steps WHERE prompt_id=? AND NOT EXISTS "
                      "(SELECT 1 FROM labels WHERE labels.prompt_id = label_steps.prompt_id)", [(i,) for i in release])
        c.executemany("UPDATE labels SET owner=? WHERE prompt_id=? AND status='pending' AND owner=?",
                      [(old, i, self._token) for i, old in hand_back.items()])

    def _undo(self, fresh: Sequence[str], claimed: Mapping[str, str | None]) -> None:
        """Release this writer's fresh reservations ``fresh`` and hand the stale reservations it ``claimed`` back
        to their previous owner (still charged, completed later), in one transaction."""
        if not fresh and not claimed:
            return
        with self._transaction() as c:
            self._undo_in(c, fresh, claimed)

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
        self._undo(ids, {})

    # ---------------------------------------------------------------- meta / state
    def set_meta(self, key: str, value: Any) -> None:
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def check_fingerprint(self, fingerprint: Mapping[str, Any], *, allow_foreign: bool = False) -> None:
        """Check that this ledger labels what ``fingerprint`` describes, and record what it does not say yet.

        ``fingerprint`` maps ``"labels"`` (the oracle's :meth:`DatasetOracle.fingerprint` hash: which ids have which
        labels) and ``"answer_space"`` (its name) to strings or ``None`` (unknown: not checked), plus informational
        keys (``label_column``, ``n_labels``). A key the ledger has not recorded yet (a new ledger, or one written
        before fingerprints existed) is recorded; a compared key that differs means the ledger is another
        dataset's (its labels would be reused as this run's ground truth under colliding ids): refused with
        :class:`LedgerMismatchError`, unless ``allow_foreign`` (then a warning; the recorded fingerprint is kept).
        """
        recorded = self.get_meta(FINGERPRINT_KEY, None)
        recorded = dict(recorded) if isinstance(recorded, Mapping) else {}
        given = {k: v for k, v in fingerprint.items() if v is not None}
        differ = [k for k in ("labels", "answer_space") if k in given and k in recorded and given[k] != recorded[k]]
        if differ:
            def show(fp: Mapping[str, Any]) -> str:
                return ", ".join(f"{k}={fp.get(k)!r}" for k in ("answer_space", "label_column", "n_labels", "labels")
                                 if fp.get(k) is not None)
            msg = (f"ledger {self.path}: it labels another dataset or answer space ({', '.join(differ)} differ): "
                   f"recorded {show(recorded)}; this run {show(given)}. Its labels would be reused as this run's "
                   "ground truth wherever prompt ids collide. Use a new ledger path for this data, or, if the ledger "
                   "is meant to be shared (e.g. the dataset only gained rows), pass allow_foreign_ledger=True.")
            if not allow_foreign:
                raise LedgerMismatchError(msg, self.path)
            logger.warning("rlavr: %s (allowed: allow_foreign_ledger=True)", msg)
            return
        merged = {**given, **recorded}
        if merged != recorded and not self.read_only:
            self.set_meta(FINGERPRINT_KEY, merged)

    @property
    def fingerprint(self) -> dict[str, Any] | None:
        """What the ledger labels, as recorded by :meth:`check_fingerprint` (``None`` if never recorded)."""
        fp = self.get_meta(FINGERPRINT_KEY, None) if "meta" in self._tables() else None
        return dict(fp) if isinstance(fp, Mapping) else None

    def _tables(self) -> dict[str, set[str]]:
        """The ledger's tables and their columns."""
        with self._lock:
            names = [n for (n,) in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            return {n: {row[1] for row in self._conn.execute(f"PRAGMA table_info({n})")} for n in names}

    def backup(self, dst: str | Path) -> Path:
        """Copy the ledger, consistently, to the new file ``dst`` (SQLite's online backup API), and return its path.

        Safe while other processes write the ledger: the copy is one consistent state including the labels still
        in the ``-wal`` file (copying the ``.sqlite`` file alone misses them). The copy is a single self-contained
        file (rollback journal mode; a :class:`LabelLedger` opened on it switches it to WAL). It is written to a
        temporary file beside ``dst`` and then linked under its name, so ``dst`` never exists half written.

        Raises:
            LedgerError: ``dst`` exists (never overwritten), is this ledger, or cannot be written.
        """
        if self.path == ":memory:":
            raise LedgerError("ledger :memory:: an in-memory ledger cannot be backed up to a file", self.path)
        target = Path(dst)
        if target.exists():
            raise LedgerError(f"ledger backup: {target} already exists; a backup never overwrites a file, give a new "
                              "path", self.path)

        def fill(out: sqlite3.Connection) -> None:
            with self._lock, self._conn.guard("backing it up"):
                self._conn.raw.backup(out)
            out.execute("PRAGMA journal_mode=DELETE")

        try:
            written = _write_sqlite_atomically(target, fill)
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(f"ledger {self.path}: backup to {target} failed: {exc}", self.path) from exc
        if not written:
            raise LedgerError(f"ledger backup: {target} appeared while the backup was written; it is left as it is, "
                              "give a new path", self.path)
        return target

    def summary(self, max_pending: int = 20) -> dict[str, Any]:
        """What the ledger holds, for people (``rlavr ledger show``): counts, fingerprint, spend per step.

        Returns a JSON-serialisable dict: ``path``, ``bytes``, ``integrity`` (SQLite's ``quick_check``: ``"ok"``
        or its first problems), ``labels_bought``, ``labels_pending``, ``labels_charged`` (bought + pending: the
        spend the budget counts), ``prompts_seen``, ``fingerprint``, ``meta`` (other metadata), ``by_step`` (one
        row per step: ``step``, ``prompts`` (recorded prompt groups), ``bought`` and ``pending`` labels; grouped by
        ``run_id`` too when the ledger's tables have that column; when only one of them has it, the prompts rows
        are in ``prompts_by_step`` instead) and ``pending`` (up to ``max_pending`` reservations: ``prompt_id``,
        ``step``, ``owner``, ``writer_alive``).
        """
        tables = self._tables()
        label_cols, step_cols = tables.get("labels", set()), tables.get("steps", set())
        with self._lock:
            integrity = [r[0] for r in self._conn.execute("PRAGMA quick_check(5)").fetchall()]
            sk = ["run_id"] if "run_id" in step_cols else []
            if "label_steps" in tables:  # per-run accounting: each label under the run and step key that bought it
                lk = ["run_id"]
                label_rows = self._conn.execute(
                    "SELECT COALESCE(s.run_id, ?) AS r, COALESCE(s.step_key, l.step) AS k, SUM(l.status='bought'), "
                    "SUM(l.status='pending') FROM labels l LEFT JOIN label_steps s ON s.prompt_id = l.prompt_id "
                    "GROUP BY r, k ORDER BY r, k", (UNRECORDED_RUN,)).fetchall()
            else:
                lk = ["run_id"] if "run_id" in label_cols else []
                label_rows = self._conn.execute(
                    f"SELECT {', '.join([*lk, 'step'])}, SUM(status='bought'), SUM(status='pending') FROM labels "
                    f"GROUP BY {', '.join([*lk, 'step'])} ORDER BY {', '.join([*lk, 'step'])}").fetchall()
            step_rows = self._conn.execute(
                f"SELECT {', '.join([*sk, 'step'])}, SUM(n_prompts) FROM steps GROUP BY {', '.join([*sk, 'step'])} "
                f"ORDER BY {', '.join([*sk, 'step'])}").fetchall() if tables.get("steps") else []
            pending = self._conn.execute(
                "SELECT prompt_id, step, owner FROM labels WHERE status='pending' ORDER BY created, rowid LIMIT ?",
                (int(max_pending),)).fetchall()
            meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall()) if "meta" in tables else {}
        by_key: dict[tuple[Any, ...], dict[str, Any]] = {}

        def row(key: tuple[Any, ...], keys: list[str]) -> dict[str, Any]:
            return by_key.setdefault(key, {**dict(zip([*keys, "step"], key, strict=True)), "prompts": 0, "bought": 0,
                                           "pending": 0})

        for *key, bought, pend in label_rows:
            r = row(tuple(key), lk)
            r["bought"], r["pending"] = int(bought or 0), int(pend or 0)
        prompts_by_step: list[dict[str, Any]] | None = None
        if lk == sk:
            for *key, n in step_rows:
                row(tuple(key), sk)["prompts"] = int(n or 0)
        else:
            prompts_by_step = [{**dict(zip([*sk, "step"], key, strict=True)), "prompts": int(n or 0)}
                               for *key, n in step_rows]
        by_step = [by_key[k] for k in sorted(by_key, key=lambda k: (tuple(str(v) for v in k[:-1]), k[-1]))]
        if prompts_by_step is not None:  # the prompts are counted in another grouping: not in these rows
            for r in by_step:
                r.pop("prompts")
        fp = meta.pop(FINGERPRINT_KEY, None)
        out: dict[str, Any] = {
            "path": self.path,
            "bytes": os.path.getsize(self.path) if self.path != ":memory:" else 0,
            "integrity": "ok" if integrity == ["ok"] else integrity,
            "labels_bought": self.n_bought,
            "labels_pending": self.n_pending,
            "labels_charged": self.n_charged,
            "prompts_seen": int(sum(r[-1] or 0 for r in step_rows)),
            "fingerprint": None if fp is None else json.loads(fp),
            "meta": {k: json.loads(v) for k, v in meta.items()},
            "by_step": by_step,
            "pending": [{"prompt_id": pid, "step": st, "owner": own, "writer_alive": _writer_alive(own)}
                        for pid, st, own in pending],
        }
        if prompts_by_step is not None:
            out["prompts_by_step"] = prompts_by_step
        return out

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
