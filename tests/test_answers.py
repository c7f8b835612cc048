"""Answer extraction and equivalence clustering (care-spec §1.1-1.3)."""

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
    """math-verify's signal-based timeouts raise off the main thread; the space disables them there."""
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
