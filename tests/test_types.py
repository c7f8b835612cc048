"""Core data types: validation errors name the field and value; vectorised views are right."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import make_batch, make_group
from rlavr.answers import ExactAnswers, MathAnswers
from rlavr.labels import majority_vote
from rlavr.types import Acquisition, PromptGroup, Rollout, RolloutBatch, Route

# ----------------------------------------------------------------------------------------------- Route


@pytest.mark.parametrize(("value", "expected"), [("query", Route.QUERY), (" Pseudo ", Route.PSEUDO), ("DROP", Route.DROP),
                                                  (0, Route.QUERY), (np.int64(2), Route.DROP), (Route.PSEUDO, Route.PSEUDO)])
def test_route_parse(value: object, expected: Route) -> None:
    assert Route.parse(value) is expected  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["label", 3, -1, 1.0, True, None])
def test_route_parse_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="route"):
        Route.parse(value)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------- Rollout


def test_rollout_derives_mean_and_length_from_token_logprobs() -> None:
    r = Rollout(text="x", answer="1", token_logprobs=[-1.0, -3.0])
    assert r.mean_logprob == pytest.approx(-2.0)
    assert r.length == 2
    assert r.token_logprobs.dtype == np.float64


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"mean_logprob": float("nan")}, "Rollout.mean_logprob.*finite"),
    ({"mean_logprob": float("-inf")}, "Rollout.mean_logprob.*finite"),
    ({"mean_logprob": 0.5}, "Rollout.mean_logprob.*<= 0"),
    ({"mean_logprob": "low"}, "Rollout.mean_logprob"),
    ({"token_logprobs": [-0.1, float("nan")]}, "Rollout.token_logprobs.*NaN"),
    ({"token_logprobs": [[-0.1]]}, "Rollout.token_logprobs.*1-D"),
    ({"token_logprobs": [0.3]}, "Rollout.token_logprobs.*<= 0"),
    ({"length": -1}, "Rollout.length.*>= 0"),
    ({"length": 2.5}, "Rollout.length"),
    ({"length": True}, "Rollout.length"),
    ({"answer": 3}, "Rollout.answer"),
    ({"text": None}, "Rollout.text"),
    ({"token_logprobs": object()}, "Rollout.token_logprobs: expected an array of numbers"),
    ({"token_logprobs": "-0.1"}, "Rollout.token_logprobs: expected an array of numbers"),
    ({"hidden": [object()]}, "Rollout.hidden: expected an array of numbers"),
    ({"hidden": np.array([1e300])}, "Rollout.hidden.*NaN or inf"),
    ({"hidden": np.zeros((2, 2))}, "Rollout.hidden.*shape"),
    ({"hidden": np.array([0.0, np.inf])}, "Rollout.hidden.*NaN or inf"),
])
def test_rollout_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Rollout(**kwargs)


# ----------------------------------------------------------------------------------------------- PromptGroup


def test_prompt_group_validation() -> None:
    with pytest.raises(ValueError, match="PromptGroup.rollouts.*'p'.*empty"):
        PromptGroup(id="p", prompt="q", rollouts=())
    with pytest.raises(ValueError, match="PromptGroup.id"):
        PromptGroup(id="", prompt="q", rollouts=(Rollout(),))
    with pytest.raises(ValueError, match=r"PromptGroup.rollouts\[1\]"):
        PromptGroup(id="p", prompt="q", rollouts=(Rollout(), "oops"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="PromptGroup.rollouts.*sequence"):
        PromptGroup(id="p", prompt="q", rollouts=Rollout())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="PromptGroup.prompt"):
        PromptGroup(id="p", prompt=None, rollouts=(Rollout(),))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prompt_hidden.*NaN"):
        PromptGroup(id="p", prompt="q", rollouts=(Rollout(),), prompt_hidden=np.array([np.nan]))
    g = PromptGroup(id="p", prompt="q", rollouts=[Rollout(answer="a"), Rollout()])  # type: ignore[arg-type]
    assert isinstance(g.rollouts, tuple) and g.size == 2 and g.answers == ["a", None]


@pytest.mark.parametrize("pid", ["p\ud800", "\udfff", "a\udc80b"])
def test_prompt_id_with_a_lone_surrogate_is_a_value_error(pid: str) -> None:
    # a lone surrogate has no UTF-8 form: it used to pass here and fail as UnicodeEncodeError in the ledger
    from rlavr.types import check_prompt_id

    with pytest.raises(ValueError, match=r"PromptGroup.id: .*lone surrogate") as info:
        PromptGroup(id=pid, prompt="q", rollouts=(Rollout(),))
    assert repr(pid) in str(info.value)
    with pytest.raises(ValueError, match="lone surrogate"):
        make_batch([["1"], ["1"]], ids=["ok", pid])
    assert check_prompt_id("p\u00e9\U0001F600") == "p\u00e9\U0001F600"  # any valid Unicode is fine
    with pytest.raises(ValueError, match="my ids: expected a non-empty str"):
        check_prompt_id(3, "my ids")


# ----------------------------------------------------------------------------------------------- RolloutBatch


def test_batch_rejects_unequal_group_sizes_naming_groups() -> None:
    groups = [make_group("a", ["1", "1"]), make_group("b", ["1", "2", "3"])]
    with pytest.raises(ValueError, match=r"unequal group sizes \[2, 3\].*'a' has 2.*'b' has 3"):
        RolloutBatch.from_groups(groups)


def test_batch_rejects_empty_and_duplicates_and_non_groups() -> None:
    with pytest.raises(ValueError, match="at least one prompt group"):
        RolloutBatch.from_groups([])
    with pytest.raises(ValueError, match="duplicate prompt id 'a'"):
        RolloutBatch.from_groups([make_group("a", ["1"]), make_group("b", ["1"]), make_group("a", ["2"])])
    with pytest.raises(ValueError, match=r"RolloutBatch.groups\[1\]: expected PromptGroup"):
        RolloutBatch.from_groups([make_group("a", ["1"]), {"id": "b"}])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="sequence of PromptGroup"):
        RolloutBatch.from_groups(make_group("a", ["1"]))  # type: ignore[arg-type]


def test_batch_constructor_checks_votes_labels_and_step() -> None:
    groups = [make_group("a", ["1", "2"]), make_group("b", ["2", "2"])]
    answers = [g.answers for g in groups]
    votes = majority_vote(np.array([[0, 1], [0, 0]]), answers)
    bad_votes = majority_vote(np.array([[0], [0]]), [["1"], ["2"]])
    with pytest.raises(ValueError, match="RolloutBatch.votes"):
        RolloutBatch(groups, bad_votes, ExactAnswers())
    with pytest.raises(ValueError, match="reference_labels: expected 2 labels, got 1"):
        RolloutBatch(groups, votes, ExactAnswers(), reference_labels=["1"])
    with pytest.raises(ValueError, match="RolloutBatch.step"):
        RolloutBatch(groups, votes, ExactAnswers(), step=-1)


def test_batch_vectorised_views() -> None:
    groups = [
        make_group("a", ["1", None, "1"], token_logprobs=[[-0.1, -0.2], [-1.0], [-0.5, -0.5, -0.5]],
                   hidden=np.arange(6, dtype=np.float32).reshape(3, 2), prompt_hidden=np.ones(2)),
        make_group("b", ["2", "3", "3"], mean_logprobs=[-0.1, -0.2, -0.3], lengths=[4, 5, 6],
                   hidden=np.zeros((3, 2)), prompt_hidden=np.zeros(2)),
    ]
    b = RolloutBatch.from_groups(groups)
    assert (b.B, b.G, len(b)) == (2, 3, 2)
    assert b.ids == ["a", "b"] and b.prompts == ["prompt a", "prompt b"]
    np.testing.assert_array_equal(b.valid, [[True, False, True], [True, True, True]])
    np.testing.assert_array_equal(b.lengths, [[2, 1, 3], [4, 5, 6]])
    np.testing.assert_allclose(b.mean_logprob, [[-0.15, -1.0, -0.5], [-0.1, -0.2, -0.3]])
    # mean of exp(token logprob) when tokens are given, exp(mean logprob) otherwise
    expected_a = [np.exp([-0.1, -0.2]).mean(), np.exp(-1.0), np.exp(-0.5)]
    np.testing.assert_allclose(b.mean_token_prob[0], expected_a)
    np.testing.assert_allclose(b.mean_token_prob[1], np.exp([-0.1, -0.2, -0.3]))
    assert b.prompt_hidden.shape == (2, 2) and b.prompt_hidden.dtype == np.float32
    assert b.response_hidden.shape == (2, 3, 2)
    np.testing.assert_array_equal(b.response_hidden[0], np.arange(6).reshape(3, 2))
    np.testing.assert_array_equal(b.truncated, np.zeros((2, 3), dtype=bool))


def test_batch_missing_signals_raise_clearly() -> None:
    b = RolloutBatch.from_groups([make_group("a", ["1", "1"]), make_group("b", ["1", "2"], mean_logprobs=[-1, -1])])
    with pytest.raises(ValueError, match="rollout 0 of group 'a' has no log-probabilities"):
        _ = b.mean_logprob
    with pytest.raises(ValueError, match="group 'a' has no prompt hidden state"):
        _ = b.prompt_hidden
    with pytest.raises(ValueError, match="rollout 0 of group 'a' has no hidden"):
        _ = b.response_hidden
    with pytest.raises(ValueError, match="no reference labels"):
        _ = b.reference_correct
    ragged = RolloutBatch.from_groups([make_group("a", ["1"], hidden=np.zeros((1, 2))),
                                       make_group("b", ["1"], hidden=np.zeros((1, 3)))])
    with pytest.raises(ValueError, match=r"hidden sizes differ.*\[2, 3\]"):
        _ = ragged.response_hidden


def test_correctness_and_majority_correct() -> None:
    b = make_batch([["1/2", "0.5", "3"], ["2", "2", None], [None, None, None]], space=MathAnswers(),
                   reference_labels=["\\frac{1}{2}", "3", "1"])
    np.testing.assert_array_equal(b.reference_correct, [[True, True, False], [False, False, False],
                                                        [False, False, False]])
    np.testing.assert_array_equal(b.majority_correct, [True, False, False])
    assert RolloutBatch.from_groups(b.groups, "math").votes.cluster_ids.tolist() == b.votes.cluster_ids.tolist()
    with pytest.raises(ValueError, match="unknown answer space"):
        RolloutBatch.from_groups(b.groups, "maths")
    with pytest.raises(ValueError, match="expected 3 labels, got 1"):
        b.correctness(["1"])
    np.testing.assert_array_equal(b.correctness([None, "2", None]).sum(axis=1), [0, 2, 0])


# ----------------------------------------------------------------------------------------------- Acquisition


def test_acquisition_normalises_and_views() -> None:
    a = Acquisition(routes=[0, 1, 2, 1], weights=[1, 0.5, 1, 0], scores=[3, 2, 1, np.inf], metrics={"m": np.float32(2)})
    assert a.routes.dtype == np.int8 and a.weights.dtype == np.float64 and len(a) == 4
    assert a.counts() == {"query": 1, "pseudo": 2, "drop": 1}
    np.testing.assert_array_equal(a.effective_weights(), [1, 0.5, 0, 0])
    assert a.metrics == {"m": 2.0} and isinstance(a.metrics["m"], float)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"routes": [[0, 1]], "weights": [1, 1], "scores": [0, 0]}, r"routes: expected shape \(B,\)"),
    ({"routes": [0, 3], "weights": [1, 1], "scores": [0, 0]}, "unknown route code 3 at index 1"),
    ({"routes": [0, 0.5], "weights": [1, 1], "scores": [0, 0]}, "unknown route code 0.5"),
    ({"routes": [True, False], "weights": [1, 1], "scores": [0, 0]}, "routes: expected integer"),
    ({"routes": ["query"], "weights": [1], "scores": [0]}, "routes: expected integer"),
    ({"routes": [0, 1], "weights": [1], "scores": [0, 0]}, r"weights: shape \(1,\) does not match"),
    ({"routes": [0, 1], "weights": [1, 1], "scores": [0]}, r"scores: shape \(1,\) does not match"),
    ({"routes": [0, 1], "weights": [1, np.nan], "scores": [0, 0]}, "weights: must be finite.*index 1"),
    ({"routes": [0, 1], "weights": [1, 1.5], "scores": [0, 0]}, r"weights: .*\[0, 1\], got 1.5"),
    ({"routes": [0, 1], "weights": [-0.1, 1], "scores": [0, 0]}, "weights: .*-0.1 at index 0"),
    ({"routes": [0, 1], "weights": [1, 1], "scores": [0, np.nan]}, "scores: NaN at index 1"),
    ({"routes": [0, 1], "weights": [1, 1], "scores": ["a", "b"]}, "Acquisition.scores: expected"),
    ({"routes": [0], "weights": [1], "scores": [0], "metrics": {"m": "high"}}, r"metrics\['m'\]"),
])
def test_acquisition_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Acquisition(**kwargs)


def test_lone_surrogate_ids_are_value_errors_at_every_entry_point() -> None:
    from rlavr import AcquisitionEngine, DatasetOracle, LabelLedger
    from rlavr.trl.capture import prompt_id

    bad = "p\ud800"
    with LabelLedger(":memory:") as ledger, pytest.raises(ValueError, match="lone surrogate"):
        ledger.get_many([bad])
    engine = AcquisitionEngine("random", DatasetOracle({"p0": "1"}), budget=None)
    with pytest.raises(ValueError, match="buy: ids.*lone surrogate"):
        engine.buy([bad], ["q"], 1, step=0)
    with pytest.raises(ValueError, match="id_column 'id'.*lone surrogate"):
        prompt_id({"id": bad, "prompt": "q"}, "id")
    # a PROMPT holding a lone surrogate still hashes to a stable, valid id
    pid = prompt_id({"prompt": "what is \ud800?"}, "id")
    assert pid.startswith("sha1:") and pid == prompt_id({"prompt": "what is \ud800?"}, "id")
