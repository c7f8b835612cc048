"""CARE's baseline strategies (docs/strategies/): ordering, forms, scores, RNG hygiene, reproducibility."""

from __future__ import annotations

import math

import numpy as np
import pytest

from helpers import global_rng_unchanged, make_batch
from rlavr.advantages import classwise_cag
from rlavr.budget import BudgetView
from rlavr.engine import AcquisitionEngine
from rlavr.labels import DatasetOracle
from rlavr.strategies import get_strategy
from rlavr.strategies.base import top_k
from rlavr.types import Route

Q, P, D = Route.QUERY, Route.PSEUDO, Route.DROP


def view(remaining: int, B: int, known: list[int] | None = None) -> BudgetView:
    k = np.zeros(B, dtype=bool)
    if known:
        k[known] = True
    return BudgetView(remaining=remaining, known=k)


ALL_FORMS = ["gt", "ttrl", "ttrl-mask", "random", "random-mask", "entropy", "entropy-mask", "prob", "prob-mask",
             "oracle", "oracle-mask", "oracle-decay"]


def _rich_batch(seed: int = 0, B: int = 12, G: int = 6):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    answers = [[None if rng.random() < 0.15 else str(rng.integers(3)) for _ in range(G)] for _ in range(B)]
    toks = [[list(-rng.random(rng.integers(1, 5))) for _ in range(G)] for _ in range(B)]
    labels = [str(rng.integers(3)) for _ in range(B)]
    return make_batch(answers, token_logprobs=toks, reference_labels=labels)


@pytest.mark.parametrize("name", ALL_FORMS)
def test_every_form_returns_scores_and_never_touches_the_global_rng(name: str) -> None:
    batch = _rich_batch()
    strat = get_strategy(name, seed=5)
    with global_rng_unchanged():
        acq = strat.select(batch, view(3, batch.B))
    assert acq.scores.shape == (batch.B,) and np.isfinite(acq.scores).all()
    assert acq.routes.shape == (batch.B,) and ((acq.weights >= 0) & (acq.weights <= 1)).all()
    new_queries = (acq.routes == Q).sum()
    assert new_queries <= 3
    if name.endswith("-mask") and name != "ttrl-mask":
        assert set(acq.routes.tolist()) <= {Q, D}


# ----------------------------------------------------------------------------------------------- gt / ttrl


def test_gt_queries_everything_and_drops_the_tail_beyond_the_budget() -> None:
    batch = make_batch([["1", "2"], ["1", "1"], ["3", None], ["2", "2"]])
    gt = get_strategy("gt")
    assert gt.select(batch, BudgetView.unlimited(4)).routes.tolist() == [Q, Q, Q, Q]
    acq = gt.select(batch, view(2, 4, known=[3]))
    assert acq.routes.tolist() == [Q, Q, D, Q]  # known p3 is free; 2 new in batch order; the rest dropped
    assert acq.scores.tolist() == [4, 3, 2, 1]
    with pytest.raises(ValueError, match="no '-mask' form"):
        get_strategy("gt-mask")


def test_ttrl_pseudo_labels_everything_and_buys_nothing() -> None:
    batch = make_batch([["1", "2", "1"], [None, None, None], ["4", "4", "5"]], reference_labels=["1", "1", "5"])
    acq = get_strategy("ttrl").select(batch, view(3, 3))
    assert acq.routes.tolist() == [P, D, P] and acq.scores.tolist() == [0, 0, 0]
    oracle = DatasetOracle({"p0": "1", "p1": "1", "p2": "5"})
    res = AcquisitionEngine("ttrl", oracle, budget=1.0).decide(batch, 0)
    assert res.labels == ["1", None, "4"] and oracle.calls == 0


def test_ttrl_mask_keeps_only_correct_votes() -> None:
    batch = make_batch([["1", "2", "1"], ["2", "2", "1"], [None, None, None]], reference_labels=["1", "1", "1"])
    acq = get_strategy("ttrl-mask").select(batch, view(0, 3))
    assert acq.routes.tolist() == [P, D, D] and acq.metrics["vote_correct_ratio"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="requires reference labels"):
        get_strategy("ttrl-mask").select(make_batch([["1"]]), view(0, 1))


# ----------------------------------------------------------------------------------------------- random


def test_random_is_reproducible_by_seed_and_state_dict() -> None:
    batch = _rich_batch(B=20)

    def picks(strat, n=3):  # type: ignore[no-untyped-def]
        return [tuple(np.flatnonzero(strat.select(batch, view(4, batch.B)).routes == Q)) for _ in range(n)]

    a, b, c = get_strategy("random", seed=1), get_strategy("random", seed=1), get_strategy("random", seed=2)
    assert picks(a) == picks(b) != picks(c)
    first = get_strategy("random", seed=7)
    picks(first, 2)
    state = first.state_dict()
    expected = picks(first, 2)
    restored = get_strategy("random", seed=0)
    restored.load_state_dict(state)
    assert restored.seed == 7 and picks(restored, 2) == expected
    with pytest.raises(ValueError, match="state is for strategy 'entropy'"):
        restored.load_state_dict({**state, "name": "entropy"})


def test_random_mask_and_known_groups() -> None:
    batch = _rich_batch(B=10)
    acq = get_strategy("random-mask", seed=3).select(batch, view(2, 10, known=[0, 9]))
    assert acq.routes[[0, 9]].tolist() == [Q, Q]
    assert (acq.routes == Q).sum() == 4 and (acq.routes == D).sum() == 6


# ----------------------------------------------------------------------------------------------- entropy / prob


def test_entropy_highest_first_with_stable_ties() -> None:
    answers = [
        ["a", "a", "a", "a"],  # H = 0
        ["a", "b", "c", "d"],  # H = ln 4 (max)
        ["a", "a", "b", "b"],  # H = ln 2
        ["a", "b", "a", "b"],  # H = ln 2 (tie with p2; lower index first)
        ["a", "b", None, None],  # H = ln 2 over VALID answers only (not / G)
        [None, None, None, None],  # H = 0
    ]
    acq = get_strategy("entropy").select(make_batch(answers), view(3, 6))
    np.testing.assert_allclose(acq.scores, [0, math.log(4), math.log(2), math.log(2), math.log(2), 0])
    assert np.flatnonzero(acq.routes == Q).tolist() == [1, 2, 3]
    assert acq.routes.tolist() == [P, Q, Q, Q, P, P]
    assert get_strategy("entropy-mask").select(make_batch(answers), view(3, 6)).routes.tolist() == [D, Q, Q, Q, D, D]


def test_prob_lowest_mean_token_probability_first() -> None:
    toks = [
        [[-0.01], [-0.02]],  # confident
        [[-2.0, -0.1], [-3.0]],  # least confident
        [[-0.5], [-0.5, -0.5]],
    ]
    batch = make_batch([["1", "1"], ["1", "2"], ["2", "2"]], token_logprobs=toks)
    acq = get_strategy("prob").select(batch, view(2, 3))
    v = np.array([np.mean([np.exp(-0.01), np.exp(-0.02)]),
                  np.mean([np.exp([-2.0, -0.1]).mean(), np.exp(-3.0)]),
                  np.exp(-0.5)])
    np.testing.assert_allclose(acq.scores, 1 - v)
    assert acq.routes.tolist() == [P, Q, Q]
    assert acq.metrics["avg_probability_min"] == pytest.approx(v.min())
    with pytest.raises(ValueError, match="no log-probabilities"):
        get_strategy("prob").select(make_batch([["1"]]), view(1, 1))


def test_prob_scores_an_empty_completion_as_lowest_confidence() -> None:
    # rollout 1 of group 0 is an empty completion (an empty token list): CARE's sum/max(T, 1) gives it mean
    # token probability 0, so it is scored (not refused as "no log-probabilities") and pulls its group's v down
    toks = [[[-0.01], []], [[-0.01], [-0.01]]]
    batch = make_batch([["1", None], ["1", "1"]], token_logprobs=toks)
    np.testing.assert_array_equal(batch.empty, [[False, True], [False, False]])
    acq = get_strategy("prob").select(batch, view(1, 2))
    np.testing.assert_allclose(acq.scores, [1 - np.exp(-0.01) / 2, 1 - np.exp(-0.01)])
    assert acq.routes.tolist() == [Q, P]
    np.testing.assert_array_equal(batch.mean_token_prob[0], [np.exp(-0.01), 0.0])
    # the mean log-probability uses the same clamp: 0 over zero tokens (features / other rules read this)
    np.testing.assert_array_equal(batch.mean_logprob, [[-0.01, 0.0], [-0.01, -0.01]])


def test_prob_through_the_engine_with_an_empty_completion_and_mean_only_logprobs() -> None:
    from helpers import make_group
    from rlavr.types import PromptGroup, Rollout, RolloutBatch

    # what the TRL path builds for an empty completion: no token list, no mean, length 0, text ""
    empty = PromptGroup(id="e", prompt="q", rollouts=(Rollout(text="", length=0), Rollout(text="x", mean_logprob=-0.1)))
    batch = RolloutBatch.from_groups([empty, make_group("f", ["1", "1"], mean_logprobs=[-0.2, -0.2])])
    eng = AcquisitionEngine("prob", DatasetOracle({"e": "1", "f": "1"}), budget=1)
    res = eng.decide(batch, 0)
    assert res.bought == ["e"]
    # a non-empty rollout without log-probabilities is still an error
    bad = RolloutBatch.from_groups([PromptGroup(id="g", prompt="q", rollouts=(Rollout(text="x"),))])
    with pytest.raises(ValueError, match="rollout 0 of group 'g' has no log-probabilities"):
        get_strategy("prob").select(bad, view(1, 1))


# ----------------------------------------------------------------------------------------------- oracle


ORACLE_ANSWERS = [
    ["1", "1", "1", "2", "3", "1"],  # vote right -> CAG 0
    ["2", "2", "2", "1", "3", "4"],  # wrong, x=3, y=1
    ["2", "2", "1", "1", "3", "4"],  # tie 2-2: vote "2" (earliest) is wrong, x=2, y=2 -> largest CAG
    ["2", "2", "3", "4", "5", "6"],  # wrong, x=2, y=0 -> sqrt(G)
]
ORACLE_LABELS = ["1", "1", "1", "1"]


def test_oracle_queries_top_true_cag() -> None:
    batch = make_batch(ORACLE_ANSWERS, reference_labels=ORACLE_LABELS)
    acq = get_strategy("oracle").select(batch, view(2, 4))
    np.testing.assert_allclose(acq.scores, [0, classwise_cag(6, 3, 1), classwise_cag(6, 2, 2), math.sqrt(6)])
    assert acq.scores[2] > acq.scores[1] > acq.scores[3] > acq.scores[0]
    assert acq.routes.tolist() == [P, Q, Q, P]
    assert get_strategy("oracle-mask").select(batch, view(2, 4)).routes.tolist() == [D, Q, Q, D]
    assert acq.metrics["vote_correct_ratio"] == 0.25


def test_oracle_decay_weights_pseudo_groups() -> None:
    batch = make_batch(ORACLE_ANSWERS, reference_labels=ORACLE_LABELS)
    acq = get_strategy("oracle-decay").select(batch, view(1, 4))
    assert acq.routes.tolist() == [P, P, Q, P]
    assert acq.weights[0] == 1.0  # right vote: exp(-100 * 0) = 1
    assert acq.weights[1] == pytest.approx(math.exp(-100 * classwise_cag(6, 3, 1))) and acq.weights[1] < 1e-100
    assert acq.weights[3] == pytest.approx(math.exp(-100 * math.sqrt(6)))
    custom = get_strategy("oracle", decay=0.5).select(batch, view(1, 4))
    assert custom.weights[3] == pytest.approx(math.exp(-0.5 * math.sqrt(6)))
    with pytest.raises(ValueError, match="no '-mask' form"):
        get_strategy("oracle-decay-mask")
    with pytest.raises(ValueError, match="decay and mask are exclusive"):
        get_strategy("oracle", decay=1.0, mask=True)
    with pytest.raises(ValueError, match="OracleCAG.decay"):
        get_strategy("oracle", decay=-1.0)


def test_oracle_is_charged_like_any_strategy() -> None:
    batch = make_batch(ORACLE_ANSWERS)
    oracle = DatasetOracle({f"p{i}": lab for i, lab in enumerate(ORACLE_LABELS)})
    eng = AcquisitionEngine("oracle", oracle, budget=0.5)
    res = eng.decide(batch, 0)
    assert sorted(res.bought) == ["p1", "p2"] and eng.ledger.n_charged == 2 and oracle.labels_served == 2


# ----------------------------------------------------------------------------------------------- helpers


def test_top_k_is_stable_and_respects_eligibility() -> None:
    s = np.array([1.0, 3.0, 3.0, 2.0, np.nan])
    assert top_k(s, 2).tolist() == [1, 2]
    assert top_k(s, 10).tolist() == [1, 2, 3, 0, 4]
    assert top_k(s, 2, eligible=np.array([True, False, True, True, True])).tolist() == [2, 3]
    assert top_k(s, 0).tolist() == []


def test_route_by_score_checks_known_shape() -> None:
    with pytest.raises(ValueError, match="BudgetView.known: shape"):
        get_strategy("entropy").select(make_batch([["1"], ["2"]]), view(1, 3))


def test_seed_validation() -> None:
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="seed: expected an int >= 0"):
            get_strategy("random", seed=bad)


def test_selection_path_is_fast() -> None:
    """B = 4096, G = 16: clustering + majority vote + Entropy.select stay far below a second (~0.02 s measured)."""
    import time

    from rlavr.types import PromptGroup, Rollout, RolloutBatch

    rng = np.random.default_rng(0)
    B, G = 4096, 16
    vals = rng.integers(0, 6, size=(B, G)).astype(str)
    invalid = rng.random((B, G)) < 0.1
    groups = [PromptGroup(id=f"p{i}", prompt="q", rollouts=tuple(
        Rollout(answer=None if invalid[i, j] else vals[i, j]) for j in range(G))) for i in range(B)]
    best = math.inf
    for _ in range(2):
        t0 = time.perf_counter()
        batch = RolloutBatch.from_groups(groups)
        acq = get_strategy("entropy").select(batch, view(800, B))
        best = min(best, time.perf_counter() - t0)
    assert (acq.routes == Q).sum() == 800
    assert best < 1.0, f"from_groups + Entropy.select took {best:.3f} s for B={B}, G={G}"


def test_oracle_pseudo_rewards_grade_against_the_majority_answer() -> None:
    """r_pseudo[j] = binary_reward(answer_j, majority label), not cluster membership (they differ
    for a non-transitive equivalence: "2" joined the "1" cluster but is also equivalent to the majority "3")."""
    from helpers import WithinOne
    from rlavr.advantages import cag

    batch = make_batch([["1", "3", "2", "3", "3"]], space=WithinOne(), reference_labels=["1"])
    assert batch.votes.cluster_ids.tolist() == [[0, 1, 0, 1, 1]] and batch.votes.majority_answer == ["3"]
    np.testing.assert_array_equal(batch.pseudo_correct, [[False, True, True, True, True]])
    r_gt = np.array([[1.0, 0, 1, 0, 0]])
    score = get_strategy("oracle").select(batch, view(0, 1)).scores[0]
    assert score == pytest.approx(cag(r_gt, np.array([[0.0, 1, 1, 1, 1]]))[0])
    assert score != pytest.approx(cag(r_gt, np.array([[0.0, 1, 0, 1, 1]]))[0])


# ----------------------------------------------------------------------------------------------- partial ground truth

def test_oracle_never_buys_a_group_without_reference_first() -> None:
    """A group whose reference label is None is unverifiable: score 0, not bought by the peek, pseudo w=1."""
    answers = ORACLE_ANSWERS + [["7", "7", "8", "9", "5", "6"]]
    labels = ORACLE_LABELS + [None]
    batch = make_batch(answers, reference_labels=labels)
    acq = get_strategy("oracle").select(batch, view(2, 5))
    # old code: correctness(None) is all False -> CAG = ||A(pseudo)|| = sqrt(6)-ish, ranked above p3 and bought
    assert acq.scores[4] == 0.0
    assert acq.routes.tolist() == [P, Q, Q, P, P]
    assert acq.metrics["reference_coverage"] == pytest.approx(0.8)
    assert acq.metrics["vote_correct_ratio"] == pytest.approx(0.25)  # over the 4 groups with a reference
    # even with budget for everything, the unverifiable group is not bought (the peek knows nothing about it)
    assert get_strategy("oracle").select(batch, view(5, 5)).routes[4] == P
    assert get_strategy("oracle-mask").select(batch, view(5, 5)).routes[4] == D
    # ... but a label it already owns is used (free)
    assert get_strategy("oracle").select(batch, view(0, 5, known=[4])).routes[4] == Q
    dec = get_strategy("oracle-decay").select(batch, view(1, 5))
    assert dec.routes[4] == P and dec.weights[4] == 1.0  # no evidence, no decay (old: exp(-100*CAG) ~ 0)


def test_ttrl_mask_does_not_count_a_missing_reference_as_a_wrong_vote() -> None:
    batch = make_batch([["1", "2", "1"], ["2", "2", "1"], ["3", "3", "1"]], reference_labels=["1", "1", None])
    acq = get_strategy("ttrl-mask").select(batch, view(0, 3))
    assert acq.routes.tolist() == [P, D, D]
    assert acq.scores.tolist() == [0.0, 1.0, 0.0]  # old: 1.0 for the unverifiable group ("wrong vote")
    assert acq.metrics["vote_correct_ratio"] == 0.5  # old: 1/3
    assert acq.metrics["reference_coverage"] == pytest.approx(2 / 3)


def test_partial_reference_through_the_engine() -> None:
    """The engine attaches reference() labels; an oracle that knows only some prompts gives partial ones."""

    class Partial:
        def label(self, ids, prompts):  # type: ignore[no-untyped-def]
            return [{"p0": "1", "p1": "1"}.get(i, "9") for i in ids]

        def reference(self, ids):  # type: ignore[no-untyped-def]
            return [{"p0": "1", "p1": "1"}.get(i) for i in ids]

    batch = make_batch([["1", "1", "2"], ["2", "2", "1"], ["5", "5", "6"]])
    res = AcquisitionEngine("oracle", Partial(), budget=2).decide(batch, 0)
    # old code bought p1 then p2 (its missing reference looked like an all-wrong group: CAG sqrt(3) > 0)
    assert res.bought == ["p1", "p0"] and res.routes[2] == P


# ----------------------------------------------------------------------------------------------- oracle state

def test_oracle_decay_setting_survives_state_dict() -> None:
    s = get_strategy("oracle", decay=5.0)
    state = s.state_dict()
    assert state["decay"] == 5.0
    with pytest.raises(ValueError, match="decay=5.0"):
        get_strategy("oracle").load_state_dict(state)
    with pytest.raises(ValueError, match="decay"):
        get_strategy("oracle", decay=2.0).load_state_dict(state)
    with pytest.raises(ValueError, match="decay"):
        get_strategy("oracle-decay").load_state_dict(get_strategy("oracle-decay", decay=3.0).state_dict())
    same = get_strategy("oracle", decay=5.0)
    same.load_state_dict(state)
    assert same.decay == 5.0
    plain = get_strategy("oracle")
    plain.load_state_dict(get_strategy("oracle").state_dict())
    assert plain.decay is None
    legacy = {k: v for k, v in state.items() if k != "decay"}  # checkpoints written before decay was saved
    get_strategy("oracle").load_state_dict(legacy)
