"""Answer extraction and equivalence clustering (docs/design.md#answers-equivalence-and-the-majority-vote)."""

from __future__ import annotations

import copy
import pickle
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import random_answers
from rlavr.answers import (
    AnswerSpace,
    ExactAnswers,
    IntegerAnswers,
    KnightsKnavesAnswers,
    MathAnswers,
    first_appearance_ids,
    get_answer_space,
    last_boxed,
)

# ----------------------------------------------------------------------------------------------- \boxed


@pytest.mark.parametrize(("text", "expected"), [
    (r"so \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
    (r"\boxed{1} first, then \boxed{ 2 }", "2"),
    (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
    (r"\boxed{a^{b^{c}}} tail", "a^{b^{c}}"),
    (r"\fbox{7}", "7"),
    (r"\boxed{1} and \fbox{3}", "3"),
    (r"$\boxed 5$ done", "5"),
    (r"\boxed {4}", "4"),
    (r"\boxed{}", None),
    (r"\boxed{1} then truncated \boxed{2", None),  # the LAST box decides; no fallback to an earlier one
    (r"\boxed", None),
    ("no box here", None),
])
def test_last_boxed(text: str, expected: str | None) -> None:
    assert last_boxed(text) == expected


def test_last_boxed_rejects_non_str() -> None:
    with pytest.raises(ValueError, match="last_boxed"):
        last_boxed(None)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------- maths


@pytest.mark.parametrize(("a", "b"), [("1/2", "0.5"), (r"\frac12", r"\frac{1}{2}"), (r"\dfrac{1}{2}", "0.5"),
                                      ("2", "2.0"), (r"\left(1, 2\right)", "(1,2)")])
def test_math_equivalent(a: str, b: str) -> None:
    space = MathAnswers()
    assert space.equivalent(a, b) and space.equivalent(b, a)
    assert space.grade(a, b)


@pytest.mark.parametrize(("a", "b"), [("1/2", "0.4"), ("2", "3"), (r"\frac{1}{3}", "0.5")])
def test_math_not_equivalent(a: str, b: str) -> None:
    assert not MathAnswers().equivalent(a, b)


def test_math_string_only_mode_and_extraction() -> None:
    strict = MathAnswers(use_math_verify=False)
    assert not strict.equivalent("1/2", "0.5")
    assert strict.equivalent(r"\dfrac{1}{2}", r"\frac{1}{2}")  # normalised keys
    assert MathAnswers().extract(r"we get \boxed{\frac{3}{4}}") == r"\frac{3}{4}"
    assert MathAnswers().extract("the answer is 12") is None
    assert MathAnswers(boxed_only=False).extract("the answer is 12") == "12"
    with pytest.raises(ValueError, match="timeout_seconds"):
        MathAnswers(timeout_seconds=0)


def test_math_verify_from_a_worker_thread() -> None:
    """math-verify's signal-based timeouts raise off the main thread; the space bounds the check itself there
    (in its worker process) and gives the same answers."""
    space = MathAnswers()
    out: dict[str, object] = {}

    def work() -> None:
        try:
            out["eq"] = space.equivalent("1/2", "0.5")
            out["neq"] = space.equivalent("1/3", "0.5")
            out["cluster"] = space.cluster([r"\frac{1}{2}", "0.5", "3"]).tolist()
        except Exception as exc:  # pragma: no cover - the assertion below reports it
            out["error"] = exc

    t = threading.Thread(target=work)
    t.start()
    t.join(timeout=60)
    assert "error" not in out, out.get("error")
    assert out == {"eq": True, "neq": False, "cluster": [0, 0, 1]}


def test_math_space_pickles_and_deepcopies() -> None:
    space = MathAnswers(timeout_seconds=3)
    assert space.equivalent("1/2", "0.5")
    for clone in (pickle.loads(pickle.dumps(space)), copy.deepcopy(space)):
        assert clone.timeout_seconds == 3 and clone.equivalent("0.5", "1/2")


# ----------------------------------------------------------------------------------------------- integers / exact


@pytest.mark.parametrize(("text", "expected"), [
    ("3 + 9 = 12", "12"), ("1,000 apples", "1000"), ("3-5", "5"), ("so x = -5", "-5"), ("answer: 42.", "42"),
    ("pi is 3.14", None), ("none", None), ("7 then 0.5", "7"),
])
def test_integer_extraction(text: str, expected: str | None) -> None:
    assert IntegerAnswers().extract(text) == expected


def test_integer_keys() -> None:
    sp = IntegerAnswers()
    assert sp.equivalent("007", "7") and sp.equivalent("+3", "3") and not sp.equivalent("-3", "3")


def test_exact_answers() -> None:
    sp = ExactAnswers(pattern=r"answer:\s*(\w+)")
    assert sp.extract("answer: foo ... answer: Bar") == "Bar"
    assert sp.extract("nothing") is None
    assert ExactAnswers().extract("   ") is None
    assert not ExactAnswers().equivalent("Bar", "bar")
    assert ExactAnswers(case_sensitive=False).equivalent("Bar", " bar ")


# ----------------------------------------------------------------------------------------------- knights & knaves


def test_kk_order_independent_canonical() -> None:
    sp = KnightsKnavesAnswers()
    a = sp.extract("<answer>Zoey is a knight, and Riley is a knave</answer>")
    b = sp.extract("<answer>(1) Riley is a knave\n(2) Zoey is a knight</answer>")
    assert a == b == "riley=knave|zoey=knight"
    assert sp.extract("<answer>zoey=knight|riley=knave</answer>") == a
    assert sp.extract("Riley = Knave, Zoey=knight") == a
    assert sp.equivalent("Zoey is a knight and Riley is a knave", "riley=knave|zoey=knight")
    assert not sp.equivalent("Zoey is a knight", "riley=knave|zoey=knight")  # a missing name is wrong


def test_kk_empty_last_answer_block_is_invalid() -> None:
    sp = KnightsKnavesAnswers()
    assert sp.extract("<answer>Zoey is a knight</answer> later <answer>  </answer>") is None
    assert sp.extract("<ANSWER>Zoey is a knave</ANSWER>") == "zoey=knave"


def test_kk_contradictions_pronouns_and_tags() -> None:
    sp = KnightsKnavesAnswers()
    assert sp.extract("<answer>Zoey is a knight. Zoey is a knave.</answer>") is None
    # untagged free text: reasoning tries hypotheses; the last assignment of a name wins
    assert sp.extract("Suppose Zoey is a knight... contradiction, so Zoey is a knave.") == "zoey=knave"
    assert sp.extract("It is a knight. This is a knave. Zoey is a knave.") == "zoey=knave"
    assert sp.extract("no roles at all") is None
    assert KnightsKnavesAnswers(require_answer_tag=True).extract("Zoey is a knight") is None


# ----------------------------------------------------------------------------------------------- clustering


class _WithinOne(AnswerSpace):
    """Non-transitive test equivalence: integers within 1 of each other."""

    pairwise = True

    def extract(self, text: str) -> str | None:
        return text or None

    def key(self, answer: str) -> str:
        return str(int(answer))

    def equivalent(self, a: str, b: str) -> bool:
        return abs(int(a) - int(b)) <= 1


def test_greedy_clustering_uses_first_representative() -> None:
    # 2 joins 1's cluster; 3 is NOT within 1 of the representative 1 (only of the member 2) -> new cluster
    ids = _WithinOne().cluster(["1", "2", None, "3", "4", "2"])
    assert ids.tolist() == [0, 0, -1, 1, 1, 0]


def test_clustering_joins_first_equivalent_cluster() -> None:
    # reps 1 and 4 (distance 3); 5 is equivalent to rep 4 only; 3 is equivalent to 4 only (|3-1| = 2)
    assert _WithinOne().cluster(["1", "4", "5", "3", "0"]).tolist() == [0, 1, 1, 1, 0]


def test_cluster_numbering_and_invalid() -> None:
    sp = ExactAnswers()
    assert sp.cluster(["b", None, "a", "b", "c", None]).tolist() == [0, -1, 1, 0, 2, -1]
    assert sp.cluster([None, None]).tolist() == [-1, -1]
    np.testing.assert_array_equal(sp.cluster_batch([["x", "y"], [None, "y"]]), [[0, 1], [-1, 0]])
    assert sp.cluster_batch([]).shape == (0, 0)
    with pytest.raises(ValueError, match=r"answers\[1\] has 1 entries"):
        sp.cluster_batch([["a", "b"], ["a"]])


def test_math_clusters_equivalent_spellings() -> None:
    ids = MathAnswers().cluster_batch([["0.5", r"\frac{1}{2}", "1/2", "2", None, "2.0"]])
    assert ids.tolist() == [[0, 0, 0, 1, -1, 1]]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.one_of(st.none(), st.sampled_from(["a", "b", " a", "c", "B", "d "])),
                         min_size=5, max_size=5), min_size=1, max_size=8),
       st.booleans())
def test_fast_path_matches_greedy_reference(answers: list[list[str | None]], case_sensitive: bool) -> None:
    """The vectorised non-pairwise path equals the per-group greedy pass (the reference definition)."""
    sp = ExactAnswers(case_sensitive=case_sensitive)
    np.testing.assert_array_equal(sp.cluster_batch(answers), np.stack([sp.cluster(g) for g in answers]))


def test_first_appearance_ids_large_random() -> None:
    rng = np.random.default_rng(0)
    answers = random_answers(rng, 200, 16, n_values=7, p_invalid=0.2)
    sp = IntegerAnswers()
    np.testing.assert_array_equal(sp.cluster_batch(answers), np.stack([sp.cluster(g) for g in answers]))
    codes = np.array([[5, -1, 5, 2, 9], [-1, -1, -1, -1, -1]])
    assert first_appearance_ids(codes).tolist() == [[0, -1, 0, 1, 2], [-1, -1, -1, -1, -1]]
    with pytest.raises(ValueError, match="first_appearance_ids"):
        first_appearance_ids(np.zeros(3, dtype=int))


def test_grade_batch() -> None:
    sp = MathAnswers()
    out = sp.grade_batch([["0.5", None, "1"], ["2", "2", "3"]], [r"\frac12", None])
    assert out.tolist() == [[True, False, False], [False, False, False]]
    with pytest.raises(ValueError, match="grade_batch: 1 answer groups but 2 labels"):
        sp.grade_batch([["1"]], ["1", "2"])


def test_get_answer_space() -> None:
    assert isinstance(get_answer_space("math"), MathAnswers)
    assert isinstance(get_answer_space(" KK "), KnightsKnavesAnswers)
    assert isinstance(get_answer_space(None), ExactAnswers)
    sp = IntegerAnswers()
    assert get_answer_space(sp) is sp
    with pytest.raises(ValueError, match="unknown answer space 'maths'"):
        get_answer_space("maths")
    with pytest.raises(ValueError, match="answer_space"):
        get_answer_space(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", [
    "<answer>ZOEY IS A KNIGHT, AND RILEY IS A KNAVE</answer>",
    "<answer>Zoey Is A Knight, And Riley Is A Knave</answer>",
    "<answer>zoey is a knight and riley is a knave</answer>",
    "ZOEY IS A KNIGHT. RILEY IS A KNAVE.",
    "So Zoey Is A Knight and Riley Is A Knave.",
])
def test_kk_role_sentences_are_case_insensitive(text: str) -> None:
    # the reasoning-gym scorer lower-cases the answer before reading it; so does rlavr
    assert KnightsKnavesAnswers().extract(text) == "riley=knave|zoey=knight"


def test_kk_labels_in_any_case_grade_alike() -> None:
    sp = KnightsKnavesAnswers()
    assert sp.key("ZOEY IS A KNIGHT, AND RILEY IS A KNAVE") == "riley=knave|zoey=knight"
    assert sp.grade(sp.extract("<answer>Zoey is a knight, Riley is a knave</answer>"), "ZOEY IS A KNIGHT AND RILEY IS A KNAVE")


def test_kk_free_text_names_still_need_a_capital() -> None:
    # untagged reasoning: "each is a knave" is not a person called "each", nor is "puzzle" a name
    sp = KnightsKnavesAnswers()
    assert sp.extract("the puzzle is a trap, so Zoey Is A Knave") == "zoey=knave"


# ----------------------------------------------------------------------------------------------- bounded parsing


def test_a_1mb_math_completion_is_capped_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    from rlavr.answers import COUNTER_NAMES

    sp = MathAnswers()
    huge = "\\boxed{" + "1+" * 500_000 + "1}"  # 1 MB: its box starts before the last max_text_chars characters
    with caplog.at_level("WARNING", logger="rlavr.answers"):
        assert sp.extract(huge) is None
        assert sp.extract(huge) is None
    long_box = "so \\boxed{" + "1+" * 2_000 + "1}"  # fits the window, but the answer is over max_answer_chars
    assert sp.extract(long_box) is None
    assert sp.extract("so \\boxed{1+1}") == "1+1"
    got = sp.take_counters()
    assert set(got) == set(COUNTER_NAMES)
    assert got["text_capped"] == 2 and got["answer_too_long"] == 1
    assert sp.take_counters() == dict.fromkeys(COUNTER_NAMES, 0)  # per call: counts since the previous take
    assert sp.counters["text_capped"] == 2  # cumulative
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "max_text_chars" in r.getMessage()]
    assert len(warnings) == 1  # once, not per rollout


def test_caps_are_configurable_and_validated() -> None:
    text = "x" * 50 + " \\boxed{" + "1+" * 600 + "1}"
    assert MathAnswers().extract(text) is None  # 1 201 characters > 1 000
    assert MathAnswers(max_answer_chars=None).extract(text) == "1+" * 600 + "1"
    assert MathAnswers(max_text_chars=20).extract(text) is None
    assert IntegerAnswers(max_text_chars=3).extract("12 then 345") == "345"
    assert IntegerAnswers(max_text_chars=2).extract("12 then 345") == "45"  # reads only the tail
    assert IntegerAnswers(max_answer_chars=2).extract("then 345") is None
    assert KnightsKnavesAnswers(max_answer_chars=5).extract("<answer>Zoey is a knight</answer>") is None
    assert ExactAnswers(max_answer_chars=3).extract("abcd") is None
    assert ExactAnswers(max_text_chars=2).extract("abcd") == "abcd"  # whole-text answers are never cut
    for bad in (0, -1, 1.5, True, "10"):
        with pytest.raises(ValueError, match="max_text_chars"):
            MathAnswers(max_text_chars=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="max_answer_chars"):
            ExactAnswers(max_answer_chars=bad)  # type: ignore[arg-type]


def test_an_over_long_answer_given_directly_is_compared_by_key_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import rlavr._mathverify as mv

    def boom(*args: object, **kwargs: object) -> object:
        raise AssertionError("math-verify must not see an over-long answer")

    monkeypatch.setattr(mv, "equivalent_strings", boom)
    sp = MathAnswers(max_answer_chars=10)
    long = "1+" * 20 + "1"
    assert not sp.equivalent(long, "41")
    assert sp.equivalent(long, long + " ")  # equal keys stay equal
    assert sp.take_counters()["long_answers_compared_by_key"] == 1


def test_a_1mb_batch_is_handled_and_the_engine_logs_the_counters() -> None:
    from rlavr.engine import AcquisitionEngine
    from rlavr.labels import DatasetOracle
    from rlavr.types import PromptGroup, Rollout, RolloutBatch

    sp = MathAnswers()
    huge = "\\boxed{" + "1+" * 500_000 + "1}"
    groups = []
    for g in range(2):
        texts = [huge] * 7 + ["so \\boxed{2}"]
        groups.append(PromptGroup(id=f"p{g}", prompt="q", rollouts=tuple(Rollout(text=t, answer=sp.extract(t))
                                                                        for t in texts)))
    batch = RolloutBatch.from_groups(groups, sp)
    assert batch.valid.sum() == 2
    res = AcquisitionEngine("ttrl", DatasetOracle({"p0": "2", "p1": "2"})).decide(batch, 0)
    assert res.metrics["answers/text_capped"] == 14.0
    assert res.metrics["answers/parse_timeouts"] == 0.0


def _slow_parse_worker() -> list[str]:
    """argv of a math-verify worker whose parse sleeps for a minute on an answer containing 'SLOW' (the worker's
    timer interrupts it) or 'HANG' (SIGALRM blocked first: only the parent's hard deadline ends it)."""
    import sys

    code = """
import signal, time, math_verify
real = math_verify.parse
def parse(s, *a, **k):
    if "HANG" in s:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    if "SLOW" in s or "HANG" in s:
        time.sleep(60)
    return real(s, *a, **k)
math_verify.parse = parse
from rlavr._mathverify import _serve
_serve()
"""
    return [sys.executable, "-c", code]


def _in_thread(fn):  # type: ignore[no-untyped-def]
    out: dict[str, object] = {}

    def work() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:
            out["error"] = exc

    t = threading.Thread(target=work)
    t.start()
    t.join(timeout=120)
    assert not t.is_alive(), "the check did not end"
    assert "error" not in out, out.get("error")
    return out["value"]


def test_a_slow_parse_off_the_main_thread_times_out_and_is_counted(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import rlavr.answers as answers

    worker = answers._MathVerifyWorker(argv=_slow_parse_worker(), slack_seconds=1.0)
    monkeypatch.setattr(answers, "_WORKER", worker)
    sp = MathAnswers(timeout_seconds=0.5)
    try:
        with caplog.at_level("WARNING", logger="rlavr.answers"):
            # math-verify's own timeout is off in a thread; the worker's timer stops the slow parse
            assert _in_thread(lambda: sp.equivalent("SLOW+1", "2")) is False
            assert sp.take_counters()["parse_timeouts"] == 1
            assert _in_thread(lambda: sp.equivalent("1/2", "0.5")) is True  # the same worker goes on
            first = worker._proc
            # a check the timer cannot stop: the parent's hard deadline kills the worker
            assert _in_thread(lambda: sp.equivalent("HANG+1", "2")) is False
            assert worker._proc is None
            assert sp.take_counters()["verify_timeouts"] == 1
            assert _in_thread(lambda: sp.equivalent("2/4", "0.5")) is True  # a fresh worker for the next check
            assert worker._proc is not None and worker._proc is not first
    finally:
        worker.close()
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("parse_timeouts" in m for m in warned) and any("verify_timeouts" in m for m in warned)


def test_a_slow_parse_in_the_main_thread_times_out_and_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import math_verify

    real = math_verify.parse

    def slow(s: str, *args: object, **kwargs: object) -> object:
        if "SLOW" in s:
            time.sleep(60)
        return real(s, *args, **kwargs)

    monkeypatch.setattr(math_verify, "parse", slow)
    sp = MathAnswers(timeout_seconds=1)
    assert sp.equivalent("SLOW+1", "2") is False
    assert sp.equivalent("SLOW+1", "3") is False  # the timed-out parse is cached: no second wait
    assert sp.take_counters()["parse_timeouts"] == 1


@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("0123456789 ,.-+{}\\boxedZoyisaknght<>/=|")), max_size=300),
       n_text=st.integers(1, 80), n_answer=st.integers(1, 20))
def test_capped_extraction_never_returns_an_over_long_answer(text: str, n_text: int, n_answer: int) -> None:
    for sp in (MathAnswers(max_text_chars=n_text, max_answer_chars=n_answer, boxed_only=False),
               IntegerAnswers(max_text_chars=n_text, max_answer_chars=n_answer),
               KnightsKnavesAnswers(max_text_chars=n_text, max_answer_chars=n_answer),
               ExactAnswers(r"(\d+)", max_text_chars=n_text, max_answer_chars=n_answer)):
        a = sp.extract(text)
        assert a is None or len(a) <= n_answer
        # reading the tail only: the answer is what the uncapped space finds in the last n_text characters
        uncapped = type(sp)(**{**_caps_free(sp), "max_text_chars": None, "max_answer_chars": n_answer})
        assert a == uncapped.extract(text[-n_text:])
        counts = sp.take_counters()
        assert counts["text_capped"] == int(len(text) > n_text)


def _caps_free(sp: AnswerSpace) -> dict:
    if isinstance(sp, MathAnswers):
        return {"boxed_only": sp.boxed_only}
    if isinstance(sp, ExactAnswers):
        return {"pattern": sp.pattern.pattern if sp.pattern else None}
    return {}


def test_one_batch_call_spends_at_most_its_math_verify_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import rlavr._mathverify as mv

    calls: list[tuple[str, str]] = []

    def slow_check(a: str, b: str, seconds: object, cache: object) -> tuple[bool, int, bool]:
        calls.append((a, b))
        time.sleep(0.3)
        return False, 0, False

    monkeypatch.setattr(mv, "equivalent_strings", slow_check)
    sp = MathAnswers(batch_timeout_seconds=0.5)
    ids = sp.cluster_batch([["1", "2", "3", "4", "5", "6"]])  # 15 distinct pairs of math-verify work
    assert ids.tolist() == [[0, 1, 2, 3, 4, 5]]
    assert 1 <= len(calls) <= 3  # then the budget is spent: the rest compare keys
    got = sp.take_counters()
    assert got["batch_budget_compared_by_key"] == 15 - len(calls)
    n = len(calls)
    assert sp.equivalent("7", "8") is False and len(calls) == n + 1  # outside a batch call: no batch budget
    sp.grade_batch([["9"]], ["10"])  # a new call has a new budget
    assert len(calls) == n + 2
    assert sp.cluster_batch([["1", "6"]]).tolist() == [[0, 1]] and len(calls) == n + 3  # unchecked: not cached
    with pytest.raises(ValueError, match="batch_timeout_seconds"):
        MathAnswers(batch_timeout_seconds=0)
    assert MathAnswers(batch_timeout_seconds=None).batch_timeout_seconds is None


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_use_the_parents_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import rlavr.answers as answers

    worker = answers._MathVerifyWorker(argv=["unused"])
    worker._proc = object()  # type: ignore[assignment]  # stands for the parent's live worker
    monkeypatch.setattr(answers, "_WORKER", worker)
    pid = os.fork()
    if pid == 0:  # child: the at-fork hook forgot the parent's worker (its pipes would mix both processes' checks)
        os._exit(0 if answers._WORKER._proc is None else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert worker._proc is not None  # the parent keeps its own
    worker._proc = None


# ----------------------------------------------------------------------------------------------- label form


@pytest.mark.parametrize("answer", [r"\frac{1}{2}", "x^2+1", "3.5", r"\sqrt{2}", r"\dfrac{3}{4}", "-7", "x^2 + 1"])
def test_math_pseudo_label_is_gold_for_trls_accuracy_reward(answer: str) -> None:
    """The majority vote written as a label (as_label) is parsed as gold by TRL's accuracy_reward, which gives 1.0
    to the rollouts that agree with it and 0.0 to the others; the bare extracted form is not always gold."""
    accuracy_reward = pytest.importorskip("trl.rewards").accuracy_reward
    sp = MathAnswers()
    texts = [f"I think it is \\boxed{{{answer}}}.", f"So \\boxed{{{answer}}}", r"no: \boxed{12345}"]
    majority = sp.extract(texts[0])
    assert majority == answer
    label = sp.as_label(majority)
    assert label == f"\\boxed{{{answer}}}"
    completions = [[{"role": "assistant", "content": t}] for t in texts]
    assert accuracy_reward(completions, [label] * 3) == [1.0, 1.0, 0.0]
    assert sp.grade(majority, label) and sp.key(label) == sp.key(majority)  # rlavr's own grading is unchanged


def test_bare_math_labels_are_not_gold_for_trl() -> None:
    """Why as_label exists: math-verify parses these bare answers as nothing (reward None: no signal) or wrongly."""
    accuracy_reward = pytest.importorskip("trl.rewards").accuracy_reward
    c = [[{"role": "assistant", "content": r"\boxed{x^2+1}"}]]
    assert accuracy_reward(c, ["x^2+1"]) == [None]
    assert accuracy_reward(c, [MathAnswers().as_label("x^2+1")]) == [1.0]


def test_as_label_forms() -> None:
    sp = MathAnswers(use_math_verify=False)
    assert sp.as_label(r"\boxed{5}") == r"\boxed{5}"  # already one whole box
    assert sp.as_label(r"\boxed{1}+\boxed{2}") == r"\boxed{\boxed{1}+\boxed{2}}"  # not one box
    assert sp.grade("x^2+1", r"\boxed{x^2+1}") and sp.grade("5", r"$\boxed{5}$")  # key unwraps, no math-verify
    assert not sp.grade("5", r"\boxed{1}+\boxed{5}")
    for space in (ExactAnswers(), IntegerAnswers(), KnightsKnavesAnswers()):
        assert space.as_label("x^2+1") == "x^2+1"  # identity: extracted answers are already labels


def test_math_verify_compares_a_boxed_label_like_its_answer() -> None:
    sp = MathAnswers()
    assert sp.equivalent("0.5", sp.as_label(r"\frac{1}{2}")) and sp.equivalent(sp.as_label("1/2"), r"\frac{1}{2}")
    assert not sp.equivalent("0.5", sp.as_label(r"\frac{1}{3}"))
    assert sp.grade_batch([["0.5", "2", None]], [sp.as_label(r"\frac{1}{2}")]).tolist() == [[True, False, False]]
