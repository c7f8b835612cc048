"""vote-reliability: buys the least reliable votes, keeps the reliable ones, drops the rest; its online model sees
only the labels it bought; budget, mask form, state and determinism."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import global_rng_unchanged, make_batch, make_group, random_answers
from rlavr.budget import BudgetView
from rlavr.engine import AcquisitionEngine
from rlavr.labels import DatasetOracle
from rlavr.strategies import get_strategy
from rlavr.strategies.vote_reliability import FEATURE_NAMES, VoteReliability, VoteSignal, vote_features
from rlavr.testing import check_strategy
from rlavr.types import RolloutBatch, Route

Q, P, D = Route.QUERY, Route.PSEUDO, Route.DROP


def view(remaining: int, B: int, known: list[int] | None = None) -> BudgetView:
    k = np.zeros(B, dtype=bool)
    if known:
        k[known] = True
    return BudgetView(remaining=remaining, known=k)


# majority shares 2/4, 3/4, 4/4 (unanimous), 1/4 (all different), 3/4, no valid answer
ANSWERS = [["1", "1", "2", "3"], ["4", "4", "4", "5"], ["6", "6", "6", "6"], ["1", "2", "3", "4"],
           ["7", "7", "7", None], [None, None, None, None]]


def test_prior_queries_the_lowest_majority_share_among_non_unanimous_groups() -> None:
    batch = make_batch(ANSWERS)
    strat = VoteReliability(explore=0.0, threshold=0.7)
    acq = strat.select(batch, view(2, batch.B))
    # reliability before any label = majority share x/G; lowest first: p3 (1/4), p0 (2/4)
    assert acq.routes.tolist() == [Q, P, P, Q, P, D]
    np.testing.assert_allclose(acq.scores, [0.5, 0.25, 0.0, 0.75, 0.25, 1.0])


def test_groups_below_the_threshold_are_dropped_and_the_mask_form_never_pseudo_labels() -> None:
    batch = make_batch(ANSWERS)
    acq = VoteReliability(explore=0.0, threshold=0.8).select(batch, view(1, batch.B))
    # 3/4 = 0.75 < 0.8: dropped; unanimous 4/4 kept (its advantage is 0 either way); no answer: dropped
    assert acq.routes.tolist() == [D, D, P, Q, D, D]
    masked = get_strategy("vote-reliability-mask", explore=0.0, threshold=0.0).select(batch, view(1, batch.B))
    assert masked.routes.tolist() == [D, D, D, Q, D, D]
    assert not get_strategy("vote-reliability-mask").trains_on_pseudo_labels


def test_unanimous_groups_and_groups_without_answers_are_never_bought() -> None:
    batch = make_batch(ANSWERS)
    acq = VoteReliability(explore=1.0).select(batch, view(6, batch.B))
    assert set(np.flatnonzero(acq.routes == Q).tolist()) == {0, 1, 3, 4}  # p2 unanimous, p5 no answer


def test_known_groups_are_queried_for_free() -> None:
    batch = make_batch(ANSWERS)
    acq = VoteReliability(explore=0.0).select(batch, view(0, batch.B, known=[2, 5]))
    assert acq.routes[2] == Q and acq.routes[5] == Q
    assert (acq.routes == Q).sum() == 2


def _labelled_batch(seed: int, B: int = 16, G: int = 8) -> tuple[RolloutBatch, dict[str, str]]:
    """Groups whose majority share says whether the vote is right: share >= 5/8 -> the label is the majority."""
    rng = np.random.default_rng(seed)
    groups, labels = [], {}
    for i in range(B):
        x = int(rng.integers(2, G))
        answers = ["7"] * x + [str(10 + j) for j in range(G - x)]
        gid = f"s{seed}-{i}"
        groups.append(make_group(gid, answers, lengths=[3] * G))
        labels[gid] = "7" if x >= 5 else "99"
    return RolloutBatch.from_groups(groups), labels


def test_the_model_learns_only_from_the_labels_it_is_given() -> None:
    strat = VoteReliability(min_labels=4)
    batch, labels = _labelled_batch(0)
    bought = dict(list(labels.items())[:5])
    # the batch carries every reference label; update must use only the bought ones
    full = batch.with_reference_labels([labels[i] for i in batch.ids])
    strat.update(full, None, bought)  # type: ignore[arg-type]
    assert strat.n_train == 5
    expected = [int(labels[i] == batch.votes.majority_answer[j]) for j, i in enumerate(batch.ids) if i in bought]
    assert strat._y.tolist() == expected
    np.testing.assert_allclose(strat._X, vote_features(batch)[: 5])


def test_through_the_engine_the_training_window_holds_exactly_the_labels_bought() -> None:
    rng = np.random.default_rng(3)
    # the oracle knows every label (and offers them as free references); the rule may learn only what it buys
    oracle_labels = {f"t{step}-{i}": str(rng.integers(3)) for step in range(6) for i in range(8)}
    strat = VoteReliability(min_labels=4)
    engine = AcquisitionEngine(strat, DatasetOracle(oracle_labels), budget=0.25)
    bought = 0
    for step in range(6):
        answers = random_answers(rng, 8, 6, n_values=3)
        ids = [f"t{step}-{i}" for i in range(8)]
        res = engine.decide(make_batch(answers, ids=ids), step=step)
        engine.update(res)
        bought += len(res.bought)
    assert bought > 0
    assert strat.n_train == bought  # never a reference label it did not buy


def test_learned_reliability_separates_right_from_wrong_votes() -> None:
    strat = VoteReliability(min_labels=8)
    for s in range(4):
        batch, labels = _labelled_batch(s)
        strat.update(batch, None, labels)  # type: ignore[arg-type]
    assert strat.fitted
    batch, labels = _labelled_batch(10)
    r = strat.reliability(batch)
    right = np.array([labels[i] == "7" for i in batch.ids])
    assert r[right].min() > r[~right].max()


def test_learn_false_never_fits_and_the_model_waits_for_both_outcomes() -> None:
    fixed = VoteReliability(learn=False, min_labels=2)
    batch, labels = _labelled_batch(0)
    fixed.update(batch, None, labels)  # type: ignore[arg-type]
    assert not fixed.fitted and fixed.n_train == 16
    one_class = VoteReliability(min_labels=2)
    one_class.update(batch, None, {i: batch.votes.majority_answer[j] for j, i in enumerate(batch.ids)})  # type: ignore[arg-type,misc]
    assert not one_class.fitted  # every vote right: nothing to separate


def test_the_training_window_is_bounded() -> None:
    strat = VoteReliability(min_labels=4, max_train=20)
    for s in range(3):
        batch, labels = _labelled_batch(s)
        strat.update(batch, None, labels)  # type: ignore[arg-type]
    assert strat.n_train == 20 and strat._X.shape == (20, len(FEATURE_NAMES))


def _trained(seed: int = 0, cls: type[VoteReliability] = VoteReliability) -> VoteReliability:
    strat = cls(min_labels=8, seed=seed)
    for s in range(3):
        batch, labels = _labelled_batch(s)
        strat.select(batch, view(4, batch.B))
        strat.update(batch, None, labels)  # type: ignore[arg-type]
    return strat


@pytest.mark.parametrize("cls", [VoteReliability, VoteSignal])
def test_state_round_trip_gives_the_same_later_decisions(cls: type[VoteReliability]) -> None:
    a = _trained(cls=cls)
    state = pickle.loads(pickle.dumps(a.state_dict()))
    b = cls(seed=99, threshold=0.1, query_by="reliability")
    b.load_state_dict(state)
    assert b.threshold == a.threshold and b.query_by == a.query_by and b.fitted
    assert (b._sig is not None) == (cls is VoteSignal)  # s_i is fitted only where it decides something
    for s in (20, 21):
        batch, labels = _labelled_batch(s)
        x, y = a.select(batch, view(5, batch.B)), b.select(batch, view(5, batch.B))
        assert x.routes.tolist() == y.routes.tolist()
        np.testing.assert_array_equal(x.scores, y.scores)
        a.update(batch, x, labels)  # type: ignore[arg-type]
        b.update(batch, y, labels)  # type: ignore[arg-type]


def test_the_same_seed_gives_the_same_decisions_and_no_global_draw() -> None:
    runs = []
    for _ in range(2):
        strat = VoteReliability(seed=7, explore=0.5, min_labels=8)
        routes = []
        with global_rng_unchanged():
            for s in range(4):
                batch, labels = _labelled_batch(s)
                acq = strat.select(batch, view(5, batch.B))
                strat.update(batch, acq, {i: labels[i] for i, r in zip(batch.ids, acq.routes, strict=True) if r == Q})
                routes.append(acq.routes.tolist())
        runs.append(routes)
    assert runs[0] == runs[1]
    other = VoteReliability(seed=8, explore=0.5, min_labels=8)
    batch, _ = _labelled_batch(0)
    assert any(other.select(batch, view(5, batch.B)).routes.tolist() != runs[0][0] for _ in range(3))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), B=st.integers(1, 12), G=st.integers(1, 6), remaining=st.integers(0, 14),
       explore=st.floats(0.0, 1.0), mask=st.booleans(), n_known=st.integers(0, 3),
       query_by=st.sampled_from(["reliability", "signal"]), threshold=st.floats(0.0, 1.0))
def test_budget_is_never_exceeded(seed: int, B: int, G: int, remaining: int, explore: float,
                                  mask: bool, n_known: int, query_by: str, threshold: float) -> None:
    rng = np.random.default_rng(seed)
    strat = VoteReliability(explore=explore, mask=mask, seed=seed, min_labels=2, query_by=query_by,
                            threshold=threshold)
    warm = make_batch(random_answers(rng, 6, 4, n_values=2))
    strat.update(warm, None, {i: str(rng.integers(2)) for i in warm.ids})  # type: ignore[arg-type]
    batch = make_batch(random_answers(rng, B, G, n_values=3, p_invalid=0.3))
    known = sorted(rng.choice(B, size=min(n_known, B), replace=False).tolist())
    acq = strat.select(batch, view(remaining, B, known))
    new = (acq.routes == Q) & ~np.isin(np.arange(B), known)
    assert new.sum() <= remaining
    assert (acq.routes[known] == Q).all()
    assert np.isfinite(acq.scores).all() and ((acq.weights >= 0) & (acq.weights <= 1)).all()
    if mask:
        assert P not in acq.routes.tolist()


def test_failed_queries_are_dropped() -> None:
    assert VoteReliability().failed_query_route == Route.DROP


@pytest.mark.parametrize(("kwargs", "field"), [({"threshold": 1.5}, "threshold"), ({"explore": -0.1}, "explore"),
                                              ({"min_labels": 1}, "min_labels"), ({"C": 0.0}, "C"),
                                              ({"max_train": 4, "min_labels": 8}, "max_train"),
                                              ({"learn": 1}, "learn"), ({"query_by": "cag"}, "query_by")])
def test_bad_options_are_refused_with_the_field_named(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=f"VoteReliability.{field}"):
        VoteReliability(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs", [{}, {"learn": False, "threshold": 0.7}, {"explore": 0.0, "min_labels": 2},
                                    {"query_by": "signal", "min_labels": 2}])
def test_passes_the_strategy_contract(kwargs: dict[str, object]) -> None:
    check_strategy(VoteReliability, **kwargs)


def test_signal_mode_buys_where_a_label_gives_an_advantage_and_reliability_mode_the_least_trusted_votes() -> None:
    # in _labelled_batch a label gives a signal exactly when the vote is right (x >= 5): the label is the
    # majority answer, held by x of the G = 8 rollouts; below, no rollout holds the label (all rewards 0)
    kw = {"min_labels": 8, "explore": 0.0, "threshold": 1.0}
    rel, sig = VoteReliability(**kw), VoteSignal(**kw)
    for s in range(4):
        batch, labels = _labelled_batch(s)
        rel.update(batch, None, labels)  # type: ignore[arg-type]
        sig.update(batch, None, labels)  # type: ignore[arg-type]
    assert sig.query_by == "signal" and sig._sig is not None
    batch, labels = _labelled_batch(11)
    useful = np.array([labels[i] == "7" for i in batch.ids])
    assert 0 < useful.sum() < batch.B - 3
    by_signal = sig.select(batch, view(3, batch.B)).routes == Q
    by_reliability = rel.select(batch, view(3, batch.B)).routes == Q
    assert useful[by_signal].all() and not useful[by_reliability].any()


def test_signal_targets_are_recorded_from_the_bought_labels() -> None:
    strat = VoteSignal(min_labels=4)
    batch = make_batch([["1", "1", "2", "3"], ["4", "4", "4", "4"], ["5", "6", None, "6"]])
    strat.update(batch, None, {"p0": "2", "p1": "4", "p2": "9"})  # type: ignore[arg-type]
    assert strat._y.tolist() == [0, 1, 0]       # vote right?
    assert strat._ys.tolist() == [1, 0, 0]      # 0 < correct < G? (p1: all right, p2: none right)


def test_signal_mode_does_not_buy_a_vote_it_keeps_while_others_are_left() -> None:
    batch = make_batch(ANSWERS)  # shares 2/4, 3/4, 4/4, 1/4, 3/4, none
    acq = VoteSignal(explore=0.0, threshold=0.7).select(batch, view(2, batch.B))
    # prior s = 1 - share; p1 and p4 (3/4 >= 0.7) are kept, so the two purchases go to p3 and p0
    assert acq.routes.tolist() == [Q, P, P, Q, P, D]
    acq = VoteSignal(explore=0.0, threshold=0.7).select(batch, view(4, batch.B))
    assert acq.routes.tolist() == [Q, Q, P, Q, Q, D]  # budget left over: kept votes are bought too


def test_vote_features_are_the_documented_statistics() -> None:
    g0 = make_group("a", ["1", "1", "2", None], lengths=[2, 2, 4, 8])
    g1 = make_group("b", [None, None, None, None], lengths=[0, 0, 0, 0])
    f = vote_features(RolloutBatch.from_groups([g0, g1]))
    assert f.shape == (2, len(FEATURE_NAMES))
    p = np.array([2 / 3, 1 / 3])
    np.testing.assert_allclose(f[0], [2 / 4, 1 / 4, 2 / 4, -(p * np.log(p)).sum(), 3 / 4, np.log(1 + 4.0),
                                      np.std([2, 2, 4, 8]) / 5.0, 0.0])
    np.testing.assert_allclose(f[1], [0, 0, 0, 0, 0, 0, 0, 0])
