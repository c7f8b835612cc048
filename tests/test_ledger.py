"""The SQLite label ledger: :mod:`rlavr.ledger` (two-phase purchases, live and stale reservations, ledger faults,
damaged files, backup, summary, fingerprints)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlavr.ledger import LabelLedger
from rlavr.oracles import CallableOracle, OracleError

# ----------------------------------------------------------------------------------------------- ledger


class CountingOracle:
    """Dataset lookup that records every id it was asked for."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table
        self.asked: list[str] = []

    def label(self, prompt_ids, prompts):  # type: ignore[no-untyped-def]
        self.asked += list(prompt_ids)
        return [self.table.get(i) for i in prompt_ids]


class RaisingOracle:
    def __init__(self) -> None:
        self.calls = 0

    def label(self, prompt_ids, prompts):  # type: ignore[no-untyped-def]
        self.calls += 1
        raise OracleError("service down")


TABLE = {f"p{i}": str(i) for i in range(20)}


def test_labels_are_committed_before_use(ledger_path: Path) -> None:
    ledger = LabelLedger(ledger_path)
    res = ledger.purchase(["p1", "p2"], ["q1", "q2"], CountingOracle(TABLE), limit=5, step=0)
    assert res.labels == {"p1": "1", "p2": "2"} and res.bought == ["p1", "p2"]
    # the moment purchase returns, another connection (another process) already sees the labels
    con = sqlite3.connect(ledger_path)
    rows = con.execute("SELECT prompt_id, label, status FROM labels ORDER BY prompt_id").fetchall()
    assert rows == [("p1", '"1"', "bought"), ("p2", '"2"', "bought")]
    con.close()
    ledger.close()


def test_reservation_is_committed_before_the_oracle_is_called(ledger_path: Path) -> None:
    """Phase 1 commits the reservation: while the oracle runs, a second connection sees it as charged."""
    seen: dict[str, object] = {}

    class PeekingOracle:
        def label(self, prompt_ids, prompts):  # type: ignore[no-untyped-def]
            con = sqlite3.connect(ledger_path)
            seen["rows"] = con.execute("SELECT prompt_id, status FROM labels").fetchall()
            con.close()
            return ["x" for _ in prompt_ids]

    with LabelLedger(ledger_path) as ledger:
        ledger.purchase(["a"], ["q"], PeekingOracle(), limit=1, step=0)
    assert seen["rows"] == [("a", "pending")]


def test_never_charged_twice_and_reuse_is_free() -> None:
    ledger = LabelLedger()
    oracle = CountingOracle(TABLE)
    ledger.purchase(["p1", "p2", "p1"], ["q", "q", "q"], oracle, limit=10, step=0)
    assert ledger.n_charged == 2 and oracle.asked == ["p1", "p2"]
    res = ledger.purchase(["p2", "p3"], ["q", "q"], oracle, limit=0, step=1)  # no new budget: reuse only
    assert res.reused == ["p2"] and res.refused == ["p3"] and res.bought == []
    assert res.labels == {"p2": "2"} and oracle.asked == ["p1", "p2"]
    assert ledger.n_charged == 2 and "p2" in ledger and "p3" not in ledger
    assert ledger.known(["p3", "p1"]).tolist() == [False, True]
    assert ledger.get("p1") == "1" and ledger.get("zz") is None
    assert [i for i, _, _ in ledger.items()] == ["p1", "p2"]


def test_limit_is_respected_in_priority_order() -> None:
    ledger = LabelLedger()
    res = ledger.purchase(["p5", "p3", "p9", "p1"], ["q"] * 4, CountingOracle(TABLE), limit=2, step=0)
    assert res.bought == ["p5", "p3"] and res.refused == ["p9", "p1"]
    # a callable limit sees the ledger's charged count (2)
    res = ledger.purchase(["p7", "p8"], ["q"] * 2, CountingOracle(TABLE), limit=lambda charged: 3 - charged, step=1)
    assert res.bought == ["p7"] and ledger.n_charged == 3


def test_failed_oracle_charges_nothing() -> None:
    ledger = LabelLedger()
    oracle = RaisingOracle()
    with pytest.raises(OracleError):
        ledger.purchase(["p1", "p2"], ["q", "q"], oracle, limit=5, step=0)
    assert ledger.n_charged == 0 and ledger.n_pending == 0
    # an oracle without a label for an id: not charged either
    res = ledger.purchase(["p1", "zz"], ["q", "q"], CountingOracle(TABLE), limit=5, step=0)
    assert res.failed == ["zz"] and res.bought == ["p1"] and ledger.n_charged == 1


def test_wrong_length_answer_releases_reservations() -> None:
    class Short:
        def label(self, ids, prompts):  # type: ignore[no-untyped-def]
            return ["x"]

    ledger = LabelLedger()
    with pytest.raises(OracleError, match="returned 1 labels for 2 prompts"):
        ledger.purchase(["a", "b"], ["q", "q"], Short(), limit=5, step=0)
    assert ledger.n_charged == 0


def test_stale_pending_reservation_is_completed_without_double_charge(ledger_path: Path) -> None:
    # a writer reserved p1 (charged) and was killed before the oracle answered
    LabelLedger(ledger_path).close()  # create the file and schema
    con = sqlite3.connect(ledger_path)
    con.execute("INSERT INTO labels VALUES ('p1', NULL, 'pending', 0, 'dead#1#x', 0.0)")
    con.commit()
    con.close()
    ledger = LabelLedger(ledger_path)
    assert ledger.n_charged == 1 and ledger.n_pending == 1 and "p1" not in ledger
    assert ledger.reserved(["p1", "p2"]).tolist() == [True, False]
    oracle = CountingOracle(TABLE)
    res = ledger.purchase(["p1"], ["q"], oracle, limit=0, step=3)  # no new budget needed
    assert res.resumed == ["p1"] and res.bought == [] and res.labels == {"p1": "1"}
    assert oracle.asked == ["p1"] and ledger.n_charged == 1 and ledger.n_pending == 0 and "p1" in ledger


def test_stale_reservation_kept_when_oracle_fails() -> None:
    ledger = LabelLedger()
    ledger._conn.execute("INSERT INTO labels VALUES ('p1', NULL, 'pending', 0, 'dead#1#x', 0.0)")
    with pytest.raises(OracleError):
        ledger.purchase(["p1", "p2"], ["q", "q"], RaisingOracle(), limit=5, step=0)
    # p2's fresh reservation released; the stale one (charged before) kept for a later completion
    assert ledger.n_charged == 1 and ledger.n_pending == 1


def test_release_never_deletes_another_writers_reservation(ledger_path: Path) -> None:
    first = LabelLedger(ledger_path, owner="rank0")
    second = LabelLedger(ledger_path, owner="rank1", timeout=0.2)
    started, release = threading.Event(), threading.Event()

    class SlowOracle:
        def label(self, ids, prompts):  # type: ignore[no-untyped-def]
            started.set()
            release.wait(10)
            return ["slow" for _ in ids]

    t = threading.Thread(target=lambda: first.purchase(["a"], ["q"], SlowOracle(), limit=1, step=0))
    t.start()
    assert started.wait(10)
    # while rank0 waits on its oracle, rank1 asks for the same id: it waits for rank0 (not its own oracle),
    # gives up after its timeout with the id reported busy, and its clean-up leaves rank0's reservation alone
    other = CountingOracle({})
    res = second.purchase(["a"], ["q"], other, limit=1, step=0)
    assert res.busy == ["a"] and res.resumed == [] and res.failed == [] and res.labels == {}
    assert other.asked == []
    assert second.n_pending == 1  # rank0's reservation survives
    release.set()
    t.join(10)
    assert second.get("a") == "slow" and second.n_charged == 1
    first.close()
    second.close()


def test_budget_is_counted_from_the_ledger_and_resume_reopens_it(ledger_path: Path) -> None:
    with LabelLedger(ledger_path, run_id="r1") as ledger:
        ledger.record_step(0, 8)
        ledger.record_step(1, 8)
        ledger.record_step(1, 8)  # replaying a step does not double count
        ledger.purchase(["p1", "p2", "p3"], ["q"] * 3, CountingOracle(TABLE), limit=3, step=1)
        ledger.set_meta("seed", {"s": 1})
    oracle = CountingOracle(TABLE)
    with LabelLedger(ledger_path) as other_run:  # a new run: shares the global counts, has no position yet
        assert other_run.prompts_seen == 16 and other_run.n_charged == 3 and other_run.last_step == -1
    with LabelLedger(ledger_path, run_id="r1") as reopened:  # the run resumed (its id from the checkpoint)
        assert reopened.prompts_seen == 16 and reopened.n_charged == 3 and len(reopened) == 3
        assert reopened.get_meta("seed") == {"s": 1} and reopened.get_meta("nope", 7) == 7
        res = reopened.purchase(["p1", "p2", "p3", "p4"], ["q"] * 4, oracle, limit=1, step=2)
        assert res.reused == ["p1", "p2", "p3"] and res.bought == ["p4"] and oracle.asked == ["p4"]
        assert reopened.state_dict() == {"path": str(ledger_path), "n_bought": 4, "n_charged": 4, "prompts_seen": 16,
                                         "last_step": 1, "run_id": "r1"}
        # rewinding to a checkpoint's position forgets later steps, never labels
        reopened.record_step(2, 8)
        reopened.record_step(3, 8)
        assert reopened.drop_steps_after(1) == 2
        assert reopened.prompts_seen == 16 and reopened.last_step == 1 and reopened.n_charged == 4
        assert reopened.drop_steps_after(-1) == 2 and reopened.prompts_seen == 0 and reopened.last_step == -1
        assert len(reopened) == 4


def test_ledger_argument_validation() -> None:
    ledger = LabelLedger()
    with pytest.raises(ValueError, match="2 ids but 1 prompts"):
        ledger.purchase(["a", "b"], ["q"], CountingOracle({}), limit=1, step=0)
    with pytest.raises(ValueError, match="step must be >= 0"):
        ledger.purchase(["a"], ["q"], CountingOracle({}), limit=1, step=-1)
    with pytest.raises(ValueError, match="limit must be an int or a callable"):
        ledger.purchase(["a"], ["q"], CountingOracle({}), limit=1.5, step=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="record_step"):
        ledger.record_step(-1, 3)
    with pytest.raises(ValueError, match="LabelLedger.owner"):
        LabelLedger(owner="")


def test_many_ids_exceed_sqlite_variable_limit() -> None:
    ledger = LabelLedger()
    ids = [f"id{i}" for i in range(2500)]
    res = ledger.purchase(ids, ids, CallableOracle(lambda pid, p: p), limit=2000, step=0)
    assert len(res.bought) == 2000 and len(res.refused) == 500
    assert ledger.known(ids).sum() == 2000 and len(ledger.get_many(ids)) == 2000


# ------------------------------------------------------------------ in-flight reservations of live writers
def test_writer_liveness_from_the_reservation_token(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from rlavr.ledger import _host, _process_start, _writer_alive

    led = LabelLedger(tmp_path / "l.sqlite", owner="rank#0")
    assert _writer_alive(led._token) and led._token.startswith("rank_0#")  # '#' in the owner cannot break it
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    assert not _writer_alive(f"w#{_host()}#{pid}#{_process_start(pid)}#abc")  # exited
    me = os.getpid()
    assert not _writer_alive(f"w#{_host()}#{me}#1#abc")  # same pid, another process start: a reused pid
    assert not _writer_alive(f"w#another-host#{me}#{_process_start(me)}#abc")
    assert not _writer_alive("main#1234#abcdef") and not _writer_alive(None)  # older token format
    led.close()


class _GateOracle:
    def __init__(self) -> None:
        self.asked: list[str] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def label(self, ids: list[str], prompts: list[str]) -> list[str]:
        self.asked += ids
        self.entered.set()
        assert self.release.wait(10)
        return [f"L{i}" for i in ids]


def test_a_live_writers_reservation_is_waited_for_not_bought_again(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    a, b = LabelLedger(path, owner="a"), LabelLedger(path, owner="b", timeout=10)
    slow = _GateOracle()
    out: dict[str, object] = {}
    t = threading.Thread(target=lambda: out.setdefault("a", a.purchase(["p1"], ["q"], slow, 5, step=0)))
    t.start()
    assert slow.entered.wait(10)  # a reserved p1 and is asking its oracle
    fast = _GateOracle()
    fast.release.set()
    threading.Timer(0.3, slow.release.set).start()
    res = b.purchase(["p1", "p2"], ["q", "q2"], fast, 5, step=0)
    t.join(10)
    assert fast.asked == ["p2"] and slow.asked == ["p1"]  # p1 was never asked twice
    assert res.labels == {"p1": "Lp1", "p2": "Lp2"} and res.bought == ["p2"] and res.reused == ["p1"]
    assert res.busy == [] and out["a"].bought == ["p1"]  # type: ignore[attr-defined]
    assert a.n_charged == 2
    a.close(), b.close()


def test_waiting_gives_up_after_the_timeout_without_asking_or_charging(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    a, b = LabelLedger(path, owner="a"), LabelLedger(path, owner="b", timeout=0.2)
    slow = _GateOracle()
    t = threading.Thread(target=lambda: a.purchase(["p1"], ["q"], slow, 5, step=0))
    t.start()
    assert slow.entered.wait(10)
    fast = _GateOracle()
    fast.release.set()
    res = b.purchase(["p1"], ["q"], fast, 5, step=0)
    assert res.busy == ["p1"] and res.labels == {} and res.bought == [] and fast.asked == []
    slow.release.set()
    t.join(10)
    assert b.get("p1") == "Lp1" and b.n_charged == 1  # bought once, by a; free to b from now on
    again = b.purchase(["p1"], ["q"], fast, 5, step=1)
    assert again.reused == ["p1"] and fast.asked == []
    a.close(), b.close()


# ------------------------------------------------------------------ ledger faults: the ledger failing is not the oracle
class _FailingWrites:
    """Wraps a ledger's connection: the statements matching ``match`` raise ``error`` (``times`` times, then pass)."""

    def __init__(self, ledger: LabelLedger, match: str, error: str, times: int = 10**9) -> None:
        self.conn, self.match, self.error, self.times = ledger._conn, match, error, times
        self.failures = 0
        ledger._conn = self  # type: ignore[assignment]

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.conn, name)

    def _maybe_fail(self, sql: str) -> None:
        if self.match in sql and self.failures < self.times:
            self.failures += 1
            with self.conn.guard():
                raise sqlite3.OperationalError(self.error)

    def execute(self, sql, params=()):  # type: ignore[no-untyped-def]
        self._maybe_fail(sql)
        return self.conn.execute(sql, params)

    def executemany(self, sql, rows):  # type: ignore[no-untyped-def]
        self._maybe_fail(sql)
        return self.conn.executemany(sql, rows)


PERSIST = "VALUES (?, ?, 'bought'"  # the phase-3 statement that writes answered labels


def test_disk_full_after_the_oracle_answered_raises_the_real_error_and_never_asks_again(ledger_path: Path) -> None:
    """Real SQLITE_FULL (max_page_count reached once the oracle answered): SQLite rolls the transaction back itself,
    so the old ``ROLLBACK`` masked the error with 'cannot rollback - no transaction is active'."""
    from rlavr.ledger import LedgerError

    ledger = LabelLedger(ledger_path)
    pages = ledger._conn.execute("PRAGMA page_count").fetchone()[0]
    table = {f"p{i}": "x" * 400 for i in range(40)}
    asked: list[str] = []

    def fill_the_disk(ids, prompts):  # type: ignore[no-untyped-def]
        asked.extend(ids)
        ledger._conn.execute(f"PRAGMA max_page_count={pages}")  # no room for the answers
        return [table[i] for i in ids]

    ids = sorted(table)
    with pytest.raises(LedgerError) as info:
        ledger.purchase(ids, ids, CallableOracle(fill_the_disk, batched=True), limit=40, step=0)
    err = info.value
    assert str(ledger_path) in str(err) and "database or disk is full" in str(err) and "Free disk space" in str(err)
    assert "cannot rollback" not in str(err)
    assert isinstance(err.__cause__, sqlite3.OperationalError) and "full" in str(err.__cause__)
    assert sorted(asked) == ids  # asked once
    # the reservations were released: nothing charged for labels the ledger does not hold
    assert ledger.n_charged == 0 and ledger.n_pending == 0 and "released" in str(err)
    # disk space freed: the same purchase writes the answers it already has, without asking the oracle again
    ledger._conn.execute("PRAGMA max_page_count=1073741823")
    res = ledger.purchase(ids, ids, CallableOracle(fill_the_disk, batched=True), limit=40, step=0)
    assert sorted(res.bought) == ids and res.labels == table and sorted(asked) == ids
    assert ledger.n_charged == ledger.n_bought == 40 and ledger.n_pending == 0
    ledger.close()


def test_a_transient_write_failure_is_retried_with_the_answers_already_received() -> None:
    ledger = LabelLedger()
    faults = _FailingWrites(ledger, PERSIST, "database is locked", times=2)
    oracle = CountingOracle(TABLE)
    res = ledger.purchase(["p1", "p2", "p3"], ["q"] * 3, oracle, limit=3, step=0)
    assert faults.failures == 2 and oracle.asked == ["p1", "p2", "p3"]  # written at the 3rd attempt, asked once
    assert res.bought == ["p1", "p2", "p3"] and res.labels == {"p1": "1", "p2": "2", "p3": "3"}
    assert ledger.n_charged == ledger.n_bought == 3 and ledger.n_pending == 0


def test_a_write_lock_held_past_the_timeout_stops_with_the_ledger_error(ledger_path: Path) -> None:
    """Another connection takes the write lock while the oracle answers and keeps it past the ledger's timeout."""
    from rlavr.ledger import LedgerError

    ledger = LabelLedger(ledger_path, timeout=0.1)
    holder = sqlite3.connect(ledger_path, isolation_level=None)
    asked: list[str] = []

    def lock_then_answer(ids, prompts):  # type: ignore[no-untyped-def]
        asked.extend(ids)
        holder.execute("BEGIN IMMEDIATE")
        return [TABLE[i] for i in ids]

    oracle = CallableOracle(lock_then_answer, batched=True)
    with pytest.raises(LedgerError) as info:
        ledger.purchase(["p1", "p2"], ["q"] * 2, oracle, limit=2, step=0)
    assert str(ledger_path) in str(info.value) and "database is locked" in str(info.value)
    assert "timeout=0.1s" in str(info.value) and isinstance(info.value.__cause__, sqlite3.OperationalError)
    assert "stay pending" in str(info.value)  # the lock also kept the release from being written
    holder.execute("ROLLBACK")
    assert ledger.n_pending == 2 and ledger.n_bought == 0  # charged once, never delivered yet
    res = ledger.purchase(["p1", "p2"], ["q"] * 2, oracle, limit=0, step=1)  # no new budget needed
    assert asked == ["p1", "p2"]  # never asked again
    assert res.labels == {"p1": "1", "p2": "2"} and res.resumed == ["p1", "p2"] and res.bought == []
    assert ledger.n_charged == ledger.n_bought == 2 and ledger.n_pending == 0
    holder.close()
    ledger.close()


def test_a_read_failure_is_a_ledger_error_naming_the_file(ledger_path: Path) -> None:
    from rlavr.ledger import LedgerError

    ledger = LabelLedger(ledger_path)
    _FailingWrites(ledger, "SELECT COUNT(*) FROM labels", "disk I/O error")
    with pytest.raises(LedgerError, match="disk I/O error") as info:
        ledger.purchase(["p1"], ["q"], CountingOracle(TABLE), limit=1, step=0)
    assert str(ledger_path) in str(info.value) and info.value.path == str(ledger_path)


# ------------------------------------------------------------------ stale reservations: claimed atomically
def _insert_stale(ledger: LabelLedger, pid: str, owner: str = "dead#1#x") -> None:
    ledger._conn.execute("INSERT INTO labels VALUES (?, NULL, 'pending', 0, ?, 0.0)", (pid, owner))


def test_two_live_writers_meeting_one_stale_reservation_ask_the_oracle_once(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    a, b = LabelLedger(path, owner="a"), LabelLedger(path, owner="b", timeout=10)
    _insert_stale(a, "p1")  # a killed writer's reservation: charged, never delivered
    slow = _GateOracle()
    out: dict[str, object] = {}
    t = threading.Thread(target=lambda: out.setdefault("a", a.purchase(["p1"], ["q"], slow, 0, step=1)))
    t.start()
    assert slow.entered.wait(10)  # a claimed p1 and is asking its oracle
    fast = _GateOracle()
    fast.release.set()
    threading.Timer(0.3, slow.release.set).start()
    res = b.purchase(["p1"], ["q"], fast, 0, step=1)
    t.join(10)
    assert slow.asked == ["p1"] and fast.asked == []  # one oracle call for the stale reservation
    assert out["a"].resumed == ["p1"] and res.reused == ["p1"] and res.labels == {"p1": "Lp1"}  # type: ignore[attr-defined]
    assert a.n_charged == 1 and a.n_pending == 0
    a.close(), b.close()


def test_a_claimed_stale_reservation_is_handed_back_when_the_oracle_fails() -> None:
    ledger = LabelLedger()
    _insert_stale(ledger, "p1")
    with pytest.raises(OracleError):
        ledger.purchase(["p1"], ["q"], RaisingOracle(), limit=5, step=0)
    owner = ledger._conn.execute("SELECT owner FROM labels WHERE prompt_id='p1'").fetchone()[0]
    assert owner == "dead#1#x" and ledger.n_pending == 1  # still the killed writer's: completed by the next buyer
    res = ledger.purchase(["p1"], ["q"], CountingOracle(TABLE), limit=0, step=0)
    assert res.resumed == ["p1"] and ledger.n_charged == 1


# ------------------------------------------------------------------ damaged, empty, foreign and read-only files
def test_an_empty_file_is_refused_not_used_as_an_empty_ledger(ledger_path: Path) -> None:
    from rlavr.ledger import LedgerError

    ledger_path.parent.mkdir(parents=True)
    ledger_path.write_bytes(b"")
    with pytest.raises(LedgerError, match="0 bytes") as info:
        LabelLedger(ledger_path)
    assert str(ledger_path) in str(info.value) and "backup" in str(info.value)
    assert ledger_path.stat().st_size == 0  # left as it was


def test_a_new_ledger_is_created_complete(ledger_path: Path) -> None:
    LabelLedger(ledger_path).close()
    assert ledger_path.stat().st_size > 0 and [p.name for p in ledger_path.parent.iterdir() if "tmp" in p.name] == []
    with sqlite3.connect(ledger_path) as c:
        assert {"labels", "steps", "meta"} <= {n for (n,) in c.execute("SELECT name FROM sqlite_master")}


@pytest.mark.parametrize("kind", ["garbage", "truncated-header", "foreign", "foreign-labels"])
def test_damaged_or_foreign_files_raise_a_ledger_error_naming_the_path(tmp_path: Path, kind: str) -> None:
    from rlavr.ledger import LedgerError

    path = tmp_path / "l.sqlite"
    if kind == "garbage":
        path.write_bytes(b"not a database at all " * 200)
    elif kind == "truncated-header":
        LabelLedger(path).close()
        path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 84)
    else:
        with sqlite3.connect(path) as c:
            c.execute("CREATE TABLE users(name TEXT)" if kind == "foreign" else "CREATE TABLE labels(x INTEGER)")
    before = path.read_bytes()
    with pytest.raises(LedgerError) as info:
        LabelLedger(path)
    msg = str(info.value)
    assert str(path) in msg and info.value.path == str(path)
    assert ("another application" in msg) if kind.startswith("foreign") else ("damaged" in msg and "backup" in msg)
    assert path.read_bytes() == before  # never written into


def test_a_read_only_ledger_is_refused_for_writing_and_readable_with_read_only(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from rlavr.ledger import LedgerError

    path = tmp_path / "l.sqlite"
    with LabelLedger(path) as ledger:
        ledger.purchase(["p1"], ["q"], CountingOracle(TABLE), limit=1, step=0)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if str(p) == str(path) and mode == os.W_OK
                        else real_access(p, mode, **k))
    with pytest.raises(LedgerError, match="read-only") as info:
        LabelLedger(path)
    assert str(path) in str(info.value) and "rlavr ledger backup" in str(info.value)
    with LabelLedger(path, read_only=True) as ro:
        assert ro.get("p1") == "1" and ro.n_charged == 1
        with pytest.raises(LedgerError, match="readonly") as info:
            ro.purchase(["p2"], ["q"], CountingOracle(TABLE), limit=1, step=0)
        assert str(path) in str(info.value) and "not writable" in str(info.value)
    with pytest.raises(LedgerError, match="no such file"):
        LabelLedger(tmp_path / "absent.sqlite", read_only=True)


# ------------------------------------------------------------------ backup and summary
def test_backup_of_a_live_ledger_keeps_the_labels_still_in_the_wal(tmp_path: Path) -> None:
    import shutil

    from rlavr.ledger import LedgerError

    live = LabelLedger(tmp_path / "live.sqlite")
    live.purchase([f"p{i}" for i in range(10)], ["q"] * 10, CountingOracle(TABLE), limit=10, step=0)
    live.record_step(0, 12)
    assert (tmp_path / "live.sqlite-wal").stat().st_size > 0  # the labels are in the WAL
    shutil.copy(tmp_path / "live.sqlite", tmp_path / "cp.sqlite")  # the wrong way: the file alone
    with LabelLedger(tmp_path / "cp.sqlite") as copied:
        assert copied.n_charged < 10
    out = live.backup(tmp_path / "sub" / "backup.sqlite")
    assert out == tmp_path / "sub" / "backup.sqlite" and not (tmp_path / "sub" / "backup.sqlite-wal").exists()
    with LabelLedger(out) as restored:
        assert restored.items() == live.items() and restored.prompts_seen == 12 and restored.n_charged == 10
    with pytest.raises(LedgerError, match="already exists"):
        live.backup(out)  # never overwritten
    with pytest.raises(LedgerError, match="in-memory"):
        LabelLedger().backup(tmp_path / "m.sqlite")
    live.close()


def test_summary_counts_spend_per_run_and_step(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with LabelLedger(path, run_id="r1") as ledger:
        ledger.record_step(0, 4)
        ledger.record_step(1, 4)
        ledger.purchase(["p1", "p2"], ["q"] * 2, CountingOracle(TABLE), limit=2, step=0, position=0)
        ledger.purchase(["p3"], ["q"], CountingOracle(TABLE), limit=1, step=1, position=1)
        ledger.check_fingerprint({"labels": "sha256:abc", "answer_space": "exact"})
    with LabelLedger(path, run_id="r2") as other:  # a second run sharing the ledger
        other.record_step(0, 6)
        other.purchase(["p4"], ["q"], CountingOracle(TABLE), limit=1, step=0, position=0)
        _insert_stale(other, "p9")
        info = other.summary()
    assert info["labels_bought"] == 4 and info["labels_pending"] == 1 and info["labels_charged"] == 5
    assert info["integrity"] == "ok" and info["prompts_seen"] == 14
    assert info["fingerprint"] == {"labels": "sha256:abc", "answer_space": "exact"}
    assert info["by_step"] == [{"run_id": "(unrecorded)", "step": 0, "prompts": 0, "bought": 0, "pending": 1},
                               {"run_id": "r1", "step": 0, "prompts": 4, "bought": 2, "pending": 0},
                               {"run_id": "r1", "step": 1, "prompts": 4, "bought": 1, "pending": 0},
                               {"run_id": "r2", "step": 0, "prompts": 6, "bought": 1, "pending": 0}]
    assert info["pending"] == [{"prompt_id": "p9", "step": 0, "owner": "dead#1#x", "writer_alive": False}]
    with LabelLedger(path, read_only=True) as ledger:
        assert ledger.summary()["by_step"] == info["by_step"]


def test_a_ledger_of_another_dataset_is_refused_unless_allowed(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    from rlavr.ledger import LedgerError, LedgerMismatchError

    path = tmp_path / "l.sqlite"
    with LabelLedger(path) as ledger:
        ledger.check_fingerprint({"labels": "sha256:aaa", "label_column": "answer", "answer_space": "math"})
        ledger.check_fingerprint({"labels": "sha256:aaa", "label_column": "solution", "answer_space": "math"})
        ledger.check_fingerprint({"labels": None, "answer_space": "math"})  # unknown parts are not compared
        for other in ({"labels": "sha256:bbb", "answer_space": "math"}, {"answer_space": "exact"}):
            with pytest.raises(LedgerMismatchError) as info:
                ledger.check_fingerprint(other)
            assert str(path) in str(info.value) and "allow_foreign_ledger=True" in str(info.value)
            assert isinstance(info.value, LedgerError) and isinstance(info.value, ValueError)
        with caplog.at_level("WARNING"):
            ledger.check_fingerprint({"labels": "sha256:bbb", "answer_space": "math"}, allow_foreign=True)
        assert "allow_foreign_ledger=True" in caplog.text
        assert ledger.fingerprint == {"labels": "sha256:aaa", "label_column": "answer", "answer_space": "math"}


def test_a_ledger_without_a_fingerprint_gets_one_on_first_use(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with LabelLedger(path) as ledger:  # as written before fingerprints existed
        ledger.purchase(["p1"], ["q"], CountingOracle(TABLE), limit=1, step=0)
        assert ledger.fingerprint is None
        ledger.check_fingerprint({"labels": "sha256:aaa", "answer_space": "exact"})
    with LabelLedger(path) as ledger:
        assert ledger.fingerprint == {"labels": "sha256:aaa", "answer_space": "exact"}


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), limit=st.integers(0, 12), failures=st.integers(0, 8),
       error=st.sampled_from(["database or disk is full", "database is locked", "disk I/O error"]))
def test_write_faults_never_ask_twice_and_leave_the_accounting_exact(n: int, limit: int, failures: int,
                                                                     error: str) -> None:
    """Whatever the number of failed writes, buying until it succeeds asks the oracle at most once per id and ends
    with every charged label bought (nothing pending), within the limit."""
    import rlavr.ledger as ledger_mod
    from rlavr.ledger import LedgerError

    saved, ledger_mod._PERSIST_BACKOFF = ledger_mod._PERSIST_BACKOFF, 0.0
    try:
        ledger = LabelLedger()
        faults = _FailingWrites(ledger, PERSIST, error, times=failures)
        oracle = CountingOracle(TABLE)
        ids = [f"p{i}" for i in range(n)]
        raised = 0
        for _ in range(5):
            try:
                res = ledger.purchase(ids, ["q"] * n, oracle, limit=limit, step=0)
                break
            except LedgerError as exc:
                raised += 1
                assert error in str(exc) and isinstance(exc.__cause__, sqlite3.OperationalError)
        else:
            pytest.fail("still failing after the faults ran out")
        assert raised == (failures // 3 if min(n, limit) else 0)  # 3 write attempts per purchase
        assert len(oracle.asked) == len(set(oracle.asked)) == min(n, limit)
        assert sorted(res.bought) == sorted(ids[:limit]) and res.labels == {i: TABLE[i] for i in ids[:limit]}
        assert ledger.n_pending == 0 and ledger.n_charged == ledger.n_bought == min(n, limit)
        assert faults.failures == (failures if min(n, limit) else 0)  # every write attempt met a fault first
    finally:
        ledger_mod._PERSIST_BACKOFF = saved
