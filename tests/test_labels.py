"""Majority vote (TTRL rules), oracles and the SQLite label ledger."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from rlavr.answers import ExactAnswers
from rlavr.labels import (
    CallableOracle,
    DatasetOracle,
    LabelLedger,
    OracleError,
    majority_vote,
    oracle_reference,
)


def _vote(answers: list[list[str | None]]):  # type: ignore[no-untyped-def]
    return majority_vote(ExactAnswers().cluster_batch(answers), answers)


# ----------------------------------------------------------------------------------------------- majority vote


def test_tie_goes_to_earliest_cluster() -> None:
    v = _vote([["b", "a", "a", "b"], ["x", "y", "z", "y"], ["c", None, "d", None]])
    assert v.majority_answer == ["b", "y", "c"]
    assert v.majority.tolist() == [0, 1, 0]
    assert v.majority_first.tolist() == [0, 1, 0]
    assert v.majority_size.tolist() == [2, 2, 1]


def test_invalid_answers_are_skipped_and_count_in_g() -> None:
    v = _vote([[None, None, "a", "b", "b"], [None, None, None, None, "q"]])
    assert v.majority_answer == ["b", "q"]
    np.testing.assert_allclose(v.majority_ratio, [2 / 5, 1 / 5])  # G counts the invalid rollouts
    assert v.n_valid.tolist() == [3, 1]


def test_all_invalid_has_no_pseudo_label() -> None:
    v = _vote([[None, None, None], ["a", "a", "b"]])
    assert v.majority_answer == [None, "a"]
    assert v.majority.tolist() == [-1, 0] and v.majority_first.tolist() == [-1, 0]
    assert v.majority_ratio.tolist() == [0.0, 2 / 3]
    assert v.entropy[0] == 0.0
    assert not v.in_majority[0].any()
    assert v.in_majority[1].tolist() == [True, True, False]


def test_tie_rule_does_not_depend_on_cluster_numbering() -> None:
    # ids not numbered by first appearance: cluster 1 appears first, so it wins the 2-2 tie
    v = majority_vote(np.array([[1, 0, 0, 1]]), [["p", "q", "q", "p"]])
    assert v.majority.tolist() == [1] and v.majority_answer == ["p"] and v.majority_first.tolist() == [0]


def test_entropy_and_sorted_distribution() -> None:
    v = _vote([["a", "a", "b", None], ["a", "b", "c", "d"], ["a", "a", "a", "a"]])
    p = np.array([2 / 3, 1 / 3])
    np.testing.assert_allclose(v.entropy, [-(p * np.log(p)).sum(), np.log(4), 0.0])
    np.testing.assert_allclose(v.sorted_cluster_dist[0], [0.5, 0.25, 0, 0])
    np.testing.assert_array_equal(v.cluster_sizes[1], [1, 1, 1, 1])


def test_majority_vote_validation() -> None:
    with pytest.raises(ValueError, match=r"must be \(B, G\)"):
        majority_vote(np.zeros(3, dtype=int), [["a"]])
    with pytest.raises(ValueError, match="2 answer lists for 1 groups"):
        majority_vote(np.zeros((1, 2), dtype=int), [["a", "a"], ["b", "b"]])
    with pytest.raises(ValueError, match=r"cluster ids must lie in \[-1, G-1=1\]"):
        majority_vote(np.array([[0, 2]]), [["a", "b"]])
    with pytest.raises(ValueError, match=r"answers\[0\] has 1 entries, expected G=2"):
        majority_vote(np.array([[0, 0]]), [["a"]])
    with pytest.raises(ValueError, match="must be integers"):
        majority_vote(np.array([[0.0, 1.0]]), [["a", "b"]])


# ----------------------------------------------------------------------------------------------- oracles


def test_dataset_oracle_forms_and_errors() -> None:
    o = DatasetOracle({"a": 1, "b": None})
    assert o.label(["a", "b", "c"], ["", "", ""]) == ["1", None, None]
    assert o.labels_served == 1 and o.calls == 1 and len(o) == 1
    rows = DatasetOracle([{"id": 1, "answer": "x"}, {"id": 2, "answer": "y"}, {"id": 1, "answer": "x"}])
    assert rows.reference(["1", "2"]) == ["x", "y"]
    with pytest.raises(ValueError, match="appears twice with different labels"):
        DatasetOracle([{"id": 1, "answer": "x"}, {"id": 1, "answer": "z"}])
    with pytest.raises(ValueError, match="row 0 has no label column 'answer'"):
        DatasetOracle([{"id": 1, "label": "x"}])
    with pytest.raises(ValueError, match="row 1 has no id column 'id'"):
        DatasetOracle([{"id": 1, "answer": "x"}, {"answer": "x"}])


def test_callable_oracle() -> None:
    o = CallableOracle(lambda pid, prompt: None if pid == "b" else prompt.upper())
    assert o.label(["a", "b"], ["x", "y"]) == ["X", None]
    batched = CallableOracle(lambda ids, prompts: ids[:1], batched=True)
    with pytest.raises(OracleError, match="returned 1 labels for 2 prompts"):
        batched.label(["a", "b"], ["x", "y"])
    assert oracle_reference(o, ["a"]) is None  # no reference_fn -> metrics unavailable, not an error
    assert oracle_reference(CallableOracle(str, reference_fn=lambda ids: list(ids)), ["a"]) == ["a"]
    with pytest.raises(ValueError, match="CallableOracle.fn"):
        CallableOracle(3)  # type: ignore[arg-type]


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

    from rlavr.labels import _host, _process_start, _writer_alive

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
