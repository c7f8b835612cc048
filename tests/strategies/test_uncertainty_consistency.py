"""Tests of the uncertainty-consistency strategy (PBC offline, advantage x uncertainty online)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr

from rlavr.advantages import grpo_advantages
from rlavr.budget import Budget, BudgetView
from rlavr.engine import AcquisitionEngine
from rlavr.labels import DatasetOracle
from rlavr.strategies import get_strategy
from rlavr.strategies.uncertainty_consistency import (
    UncertaintyConsistency,
    UncertaintyConsistencyConfig,
    consistency_from_advantages,
    normalise_uncertainty,
    online_consistency,
    point_biserial,
    rollout_uncertainty,
    topk_entropy,
    uncertainty_consistency,
)
from rlavr.types import PromptGroup, Rollout, RolloutBatch, Route


def make_batch(answers: list[list[str | None]], logprobs: list[list[float]] | None = None,
               ids: list[str] | None = None, attention: list[list[dict]] | None = None) -> RolloutBatch:
    groups = []
    for i, ans in enumerate(answers):
        rolls = tuple(
            Rollout(text=str(a), answer=a,
                    mean_logprob=None if logprobs is None else logprobs[i][j],
                    attention=None if attention is None else attention[i][j])
            for j, a in enumerate(ans))
        groups.append(PromptGroup(id=ids[i] if ids else f"q{i}", prompt=f"prompt {i}", rollouts=rolls))
    return RolloutBatch.from_groups(groups)


def global_rng_state() -> tuple[torch.Tensor, tuple]:
    return torch.get_rng_state().clone(), np.random.get_state()


def assert_global_rng_unchanged(before: tuple[torch.Tensor, tuple]) -> None:
    t, n = before
    assert torch.equal(torch.get_rng_state(), t)
    now = np.random.get_state()
    assert now[0] == n[0] and np.array_equal(now[1], n[1]) and now[2:] == n[2:]


# ------------------------------------------------------------------------------------------ formulas


def test_point_biserial_worked_example() -> None:
    # worked example: b = [1,1,0,0], U = [1,2,3,4] -> (1.5 - 3.5)/sqrt(1.25) * sqrt(4)/4 = -0.8944
    assert point_biserial(np.array([1, 1, 0, 0]), np.array([1.0, 2, 3, 4])) == pytest.approx(-2 / math.sqrt(5))


def test_online_consistency_worked_example_both_std_conventions() -> None:
    b, u = np.array([1.0, 1, 0, 0]), np.array([1.0, 2, 3, 4])
    # population: A = [1,1,-1,-1] -> C = -(1+2-3-4)/4 = 1 = -sigma_U * r_pb = -sqrt(1.25) * (-2/sqrt(5))
    assert online_consistency(b, u) == pytest.approx(1.0)
    # ddof 1: A = +-0.5/sqrt(1/3) = +-0.8660 -> C = 0.8660 (eps 1e-6 changes the 7th digit)
    assert online_consistency(b, u, std="unbiased") == pytest.approx(math.sqrt(3) / 2, rel=1e-5)


def test_point_biserial_undefined_cases_are_zero() -> None:
    b = np.array([[1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 1, 0]])
    u = np.array([[1.0, 2, 3, 4], [1, 2, 3, 4], [2, 2, 2, 2]])
    np.testing.assert_array_equal(point_biserial(b, u), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(online_consistency(b.astype(float), u), [0.0, 0.0, 0.0])


def test_point_biserial_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="binary"):
        point_biserial(np.array([0.5, 1.0]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="NaN"):
        point_biserial(np.array([0, 1]), np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="shape"):
        point_biserial(np.array([0, 1, 1]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="uncertainty"):
        online_consistency(np.array([0.0, 1.0]), np.array([np.inf, 1.0]))


group = st.integers(min_value=2, max_value=12).flatmap(
    lambda g: st.tuples(
        st.lists(st.booleans(), min_size=g, max_size=g),
        st.lists(st.floats(min_value=-5, max_value=5, allow_nan=False, allow_subnormal=False), min_size=g,
                 max_size=g),
    ))


@settings(max_examples=150, deadline=None)
@given(group)
def test_point_biserial_is_pearson_and_online_identity(data: tuple[list[bool], list[float]]) -> None:
    b = np.array(data[0], dtype=float)
    u = np.array(data[1])
    r = float(point_biserial(b, u))
    G = b.size
    if 0 < b.sum() < G and u.std() > 1e-6:
        assert r == pytest.approx(np.corrcoef(b, u)[0, 1], abs=1e-9)
    # the theorem behind the online score: C_on = -sigma_U r_pb (population), x sqrt((G-1)/G) (ddof 1)
    assert float(online_consistency(b, u)) == pytest.approx(-u.std() * r, abs=1e-9)
    s_b = b.std(ddof=1)
    shrink = s_b / (s_b + 1e-6) if s_b > 0 else 0.0
    expect_unb = -math.sqrt((G - 1) / G) * u.std() * r * shrink
    assert float(online_consistency(b, u, std="unbiased")) == pytest.approx(expect_unb, abs=1e-9)
    # shift invariance (sum of advantages is 0)
    assert float(online_consistency(b, u + 3.7)) == pytest.approx(float(online_consistency(b, u)), abs=1e-9)


def test_online_score_strictly_decreasing_in_pbc_at_fixed_uncertainty() -> None:
    """Random U per trial, ALL non-degenerate correctness patterns: C_on is a strictly decreasing function of r_pb."""
    rng = np.random.default_rng(1)
    G = 8
    patterns = ((np.arange(2**G)[:, None] >> np.arange(G)) & 1).astype(float)
    patterns = patterns[(patterns.sum(1) > 0) & (patterns.sum(1) < G)]
    for _ in range(20):
        u = np.broadcast_to(rng.gamma(2.0, 0.5, G), patterns.shape)
        r = point_biserial(patterns, u)
        c = online_consistency(patterns, u)
        order = np.argsort(r, kind="stable")
        dr, dc = np.diff(r[order]), np.diff(c[order])
        distinct = dr > 1e-9
        assert np.all(dc[distinct] < 0)
        assert np.allclose(dc[~distinct], 0, atol=1e-9)
        assert spearmanr(r, c).statistic == pytest.approx(-1.0)


def test_online_score_rank_correlation_on_random_groups() -> None:
    """Across many random groups (random sigma_U): strongly negative rank correlation, exactly -1 with group_z."""
    rng = np.random.default_rng(2)
    B, G = 3000, 8
    b = (rng.random((B, G)) < rng.random((B, 1))).astype(float)
    u = rng.gamma(2.0, 0.5, (B, G))
    keep = (b.sum(1) > 0) & (b.sum(1) < G)
    b, u = b[keep], u[keep]
    r = point_biserial(b, u)
    assert spearmanr(r, online_consistency(b, u)).statistic < -0.9
    assert spearmanr(r, online_consistency(b, u, std="unbiased")).statistic < -0.9
    uz = normalise_uncertainty(u, "group_z")
    cz = online_consistency(b, uz)
    np.testing.assert_allclose(cz, -r, atol=1e-9)  # exactly -r_pb
    assert spearmanr(r, cz).statistic == pytest.approx(-1.0)


def test_normalise_uncertainty_modes() -> None:
    u = np.array([[1.0, 3.0], [5.0, 5.0]])
    np.testing.assert_allclose(normalise_uncertainty(u, "none"), u)
    np.testing.assert_allclose(normalise_uncertainty(u, "group_z"), [[-1, 1], [0, 0]])
    z = normalise_uncertainty(u, "batch_z")
    assert z.mean() == pytest.approx(0) and z.std() == pytest.approx(1)
    with pytest.raises(ValueError, match="u_norm"):
        normalise_uncertainty(u, "minmax")  # type: ignore[arg-type]


def test_pooled_consistency_and_topk_entropy() -> None:
    assert uncertainty_consistency(np.array([[1, 0], [1, 0]]), np.array([[0.0, 1.0], [0.0, 1.0]])) == pytest.approx(-1)
    # uniform top-2 at each position -> ln 2; a one-hot (-inf) position -> 0
    lp = np.array([[math.log(0.5), math.log(0.5)], [0.0, -np.inf]])
    assert topk_entropy(lp) == pytest.approx(math.log(2) / 2)
    with pytest.raises(ValueError, match="topk_logprobs"):
        topk_entropy(np.zeros((0, 3)))


def test_consistency_from_advantages_matches_grpo() -> None:
    rng = np.random.default_rng(3)
    b = (rng.random((5, 6)) < 0.5).astype(float)
    u = rng.random((5, 6))
    np.testing.assert_allclose(consistency_from_advantages(grpo_advantages(b, std="population"), u),
                               online_consistency(b, u))


# ------------------------------------------------------------------------------------------ signals


def test_uncertainty_signals_and_errors() -> None:
    batch = make_batch([["1", "2"]], logprobs=[[-0.5, -2.0]])
    np.testing.assert_allclose(rollout_uncertainty(batch, "nll"), [[0.5, 2.0]])
    np.testing.assert_allclose(rollout_uncertainty(batch, "ppl"), [[math.exp(0.5), math.exp(2.0)]])
    np.testing.assert_allclose(rollout_uncertainty(batch, lambda b: np.ones((1, 2))), [[1, 1]])
    with pytest.raises(ValueError, match="unknown signal 'foo'"):
        rollout_uncertainty(batch, "foo")
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        rollout_uncertainty(batch, lambda b: np.ones(2))
    with pytest.raises(ValueError, match="not finite"):
        rollout_uncertainty(batch, lambda b: np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="mean_token_entropy"):
        rollout_uncertainty(batch, "entropy")
    ent = make_batch([["1", "2"]], attention=[[{"mean_token_entropy": 0.3}, {"mean_token_entropy": 0.7}]])
    np.testing.assert_allclose(rollout_uncertainty(ent, "entropy"), [[0.3, 0.7]])


def test_missing_logprobs_is_a_clear_error() -> None:
    batch = make_batch([["1", "1", "2", "2"]])
    with pytest.raises(ValueError, match="logprobs"):
        UncertaintyConsistency().select(batch, BudgetView.of(1, 1))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="mode"):
        UncertaintyConsistency(mode="greedy")
    with pytest.raises(ValueError, match="pool_ratio"):
        UncertaintyConsistencyConfig(pool_ratio=1.5)
    with pytest.raises(ValueError, match="-mask"):
        UncertaintyConsistency(mask=True)
    with pytest.raises(ValueError, match="extra|not permitted|gamma"):
        UncertaintyConsistency(gamma=0.5)
    s = get_strategy("pbc", mode="hybrid", u_norm="group_z")
    assert isinstance(s, UncertaintyConsistency) and s.config.mode == "hybrid"


# ------------------------------------------------------------------------------------------ selection


# Four groups of G = 4 (pseudo-reward = in the majority cluster); uncertainty = NLL = -logprob.
ANS = [
    ["a", "a", "a", "b"],  # q0: majority confident, dissenter uncertain -> consistent
    ["a", "a", "a", "b"],  # q1: majority uncertain, dissenter confident -> inconsistent
    ["a", "a", "a", "a"],  # q2: unanimous -> never queried
    ["a", "a", "b", "c"],  # q3: consistent, lower agreement
]
LP = [
    [-0.1, -0.2, -0.3, -2.0],
    [-2.0, -1.5, -1.8, -0.1],
    [-0.1, -0.2, -0.3, -0.4],
    [-0.1, -0.2, -1.0, -1.5],
]


def expected_pseudo_consistency() -> np.ndarray:
    pseudo = np.array([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]], dtype=float)
    u = -np.array(LP)
    a = np.zeros_like(pseudo)
    for i in range(4):  # hand GRPO with population std, loop on purpose (independent of the vectorised code)
        m, s = pseudo[i].mean(), pseudo[i].std()
        a[i] = (pseudo[i] - m) / s if s > 0 else 0.0
    return -(a * u).mean(axis=1)


def test_pseudo_consistency_hand_computed() -> None:
    batch = make_batch(ANS, LP)
    c = UncertaintyConsistency().pseudo_consistency(batch)
    np.testing.assert_allclose(c, expected_pseudo_consistency())
    # q0 by hand: A = [1,1,1,-3]/sqrt(3); U = [.1,.2,.3,2] -> C = -(0.6 - 6)/(4 sqrt 3) = 0.7794
    assert c[0] == pytest.approx(5.4 / (4 * math.sqrt(3)))
    assert c[0] > 0 > c[1] and c[2] == 0


def test_faithful_selects_most_consistent_within_budget_and_drops_rest() -> None:
    batch = make_batch(ANS, LP)
    before = global_rng_state()
    acq = UncertaintyConsistency().select(batch, BudgetView.of(2, 4))
    assert_global_rng_unchanged(before)
    c = expected_pseudo_consistency()
    np.testing.assert_allclose(acq.scores, c)
    top2 = set(np.argsort(-np.where([True, True, False, True], c, -np.inf))[:2].tolist())
    assert set(np.flatnonzero(acq.query).tolist()) == top2
    assert acq.counts() == {"query": 2, "pseudo": 0, "drop": 2}
    # budget 4 > eligible 3: the unanimous group is still not queried
    acq = UncertaintyConsistency().select(batch, BudgetView.of(4, 4))
    assert acq.routes[2] == Route.DROP and acq.query.sum() == 3
    # budget 0: nothing new; an owned label is queried for free
    view = BudgetView(remaining=0, known=np.array([False, False, True, False]))
    acq = UncertaintyConsistency().select(batch, view)
    assert np.flatnonzero(acq.query).tolist() == [2]


def test_ties_go_to_lower_agreement() -> None:
    # identical pseudo-reward / uncertainty patterns -> equal scores; y has lower agreement (an invalid answer)
    lp = [[-0.1, -0.1, -0.1, -0.1]] * 2
    tie = make_batch([["a", "a", "b", "b"], ["a", "a", "b", None]], lp, ids=["x", "y"])
    s = UncertaintyConsistency(uncertainty=lambda b: np.array([[0.0, 0.0, 1.0, 1.0]] * 2))
    c = s.pseudo_consistency(tie)
    assert c[0] == pytest.approx(c[1]) and c[0] > 0
    assert tie.votes.majority_ratio.tolist() == [0.5, 0.5]  # same agreement ...
    acq = s.select(tie, BudgetView.of(1, 2))
    assert acq.query.tolist() == [True, False]  # ... so batch order decides
    tie2 = make_batch([["a", "a", "a", "b"], ["a", "a", "b", "c"]], lp, ids=["x", "y"])
    s2 = UncertaintyConsistency(uncertainty=lambda b: np.where(b.votes.in_majority, 0.0, 1.0) * np.array(
        [[1.0], [1.0]]))
    c2 = s2.pseudo_consistency(tie2)
    # x: pseudo [1,1,1,0], U [0,0,0,1] -> C = sqrt(3)/4; y: pseudo [1,1,0,0], U [0,0,1,1] -> C = 1/2
    np.testing.assert_allclose(c2, [math.sqrt(3) / 4, 0.5])
    s3 = UncertaintyConsistency(uncertainty=lambda b: np.array([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    acq3 = s3.select(tie2, BudgetView.of(1, 2))  # all scores 0 -> lower agreement (y: 2/4 < x: 3/4) first
    assert acq3.query.tolist() == [False, True]


def test_hybrid_routes_and_weights() -> None:
    batch = make_batch(ANS, LP)
    s = UncertaintyConsistency(mode="hybrid", hybrid_quantile=1.0)
    acq = s.select(batch, BudgetView.of(1, 4))
    c = expected_pseudo_consistency()
    assert acq.routes.tolist() == [Route.PSEUDO, Route.QUERY, Route.DROP, Route.PSEUDO]
    tau = max(c[0], c[3])
    np.testing.assert_allclose(acq.weights[[0, 3]], np.clip(c[[0, 3]] / tau, 0, 1))
    np.testing.assert_allclose(acq.scores, -c)
    acq0 = s.select(batch, BudgetView.of(0, 4))
    assert acq0.routes[1] == Route.DROP  # a suspect vote without budget is not trained on


def test_engine_integration_respects_budget() -> None:
    batch = make_batch(ANS, LP)
    oracle = DatasetOracle({"q0": "a", "q1": "b", "q2": "a", "q3": "a"})
    eng = AcquisitionEngine("uncertainty-consistency", oracle, budget=Budget(per_step=1))
    res = eng.decide(batch, step=0)
    assert res.bought == ["q0"] and eng.spent == 1
    assert res.routes.tolist() == [Route.QUERY, Route.DROP, Route.DROP, Route.DROP]
    adv = eng.advantages(res)
    assert np.all(adv[1:] == 0) and np.any(adv[0] != 0)


def test_transform_drops_inconsistent_after_labels_and_update_tracks_sign() -> None:
    batch = make_batch(ANS, LP)
    labels = ["a", "b", "a", "a"]  # q1's true answer is the confident dissenter
    true_r = batch.correctness(labels).astype(float)
    s = UncertaintyConsistency(drop_inconsistent_after_label=True)
    acq = s.select(batch, BudgetView.of(4, 4))
    adv = grpo_advantages(true_r)
    out = s.transform_advantages(batch, acq, adv)
    true_c = online_consistency(true_r, -np.array(LP))
    for i in range(4):
        if acq.query[i] and true_c[i] <= 0 and np.any(adv[i] != 0):
            assert np.all(out[i] == 0)
        else:
            np.testing.assert_array_equal(out[i], adv[i])
    # q1: true reward [0,0,0,1], the correct rollout is the confident one -> consistent, kept
    assert true_c[1] > 0 and np.any(out[1] != 0)
    assert s.last_post_label_drops == int(sum(acq.query[i] and true_c[i] <= 0 and np.any(adv[i] != 0)
                                              for i in range(4)))
    s.update(batch, acq, {k: v for k, v in zip(batch.ids, labels, strict=True)})
    pl_c = expected_pseudo_consistency()
    q = acq.query
    assert s.n_labelled_groups == int(q.sum())
    assert s.n_sign_agree == int((np.sign(pl_c[q]) == np.sign(true_c[q])).sum())
    assert s.n_true_consistent == int((true_c[q] > 0).sum())
    # default: identity
    s_off = UncertaintyConsistency()
    assert s_off.transform_advantages(batch, acq, adv) is adv


# ------------------------------------------------------------------------------------------ offline mode


def offline_pool() -> tuple[RolloutBatch, dict[str, str]]:
    rng = np.random.default_rng(4)
    n, G = 10, 4
    ans = [["r" if rng.random() < 0.5 else f"w{j}" for j in range(G)] for _ in range(n)]
    for a in ans:
        a[0], a[1] = "r", "w"  # every group mixed
    lp = (-rng.gamma(2.0, 0.5, (n, G))).tolist()
    return make_batch(ans, lp), {f"q{i}": "r" for i in range(n)}


def test_offline_fit_pool_selects_most_negative_pbc() -> None:
    batch, labels = offline_pool()
    s = UncertaintyConsistency(mode="offline", pool_ratio=0.3)
    with pytest.raises(ValueError, match="fit_pool"):
        s.select(batch, BudgetView.of(3, 10))
    out = s.fit_pool(batch, labels)
    r = point_biserial(batch.correctness(list(labels.values())), -batch.mean_logprob)
    expect = [batch.ids[i] for i in np.argsort(r, kind="stable")[:3]]
    assert s.pool_selected == expect and out["n_selected"] == 3
    assert out["pbc_selected_mean"] == pytest.approx(np.sort(r)[:3].mean())
    view = BudgetView(remaining=1, known=np.isin(batch.ids, expect[:2]))
    acq = s.select(batch, view)
    assert set(np.asarray(batch.ids)[acq.query]) == set(expect)  # 2 owned + 1 bought
    assert acq.drop.sum() == 7
    with pytest.raises(ValueError, match="none of the pool"):
        s.fit_pool(batch, {"zz": "r"})


def test_offline_prompt_sampler_and_state_round_trip() -> None:
    batch, labels = offline_pool()
    pool = [{"id": f"q{i}", "prompt": "..."} for i in range(10)]
    s = UncertaintyConsistency(mode="offline", seed=7)
    assert UncertaintyConsistency().prompt_sampler(pool, 4) is None
    s.fit_pool(batch, labels)
    before = global_rng_state()
    first = s.prompt_sampler(pool, 2)
    assert_global_rng_unchanged(before)
    state = s.state_dict()
    s2 = UncertaintyConsistency(mode="offline", seed=0)
    s2.load_state_dict(state)
    assert s2.pool_selected == s.pool_selected and s2.pool_pbc == s.pool_pbc
    nxt = [s.prompt_sampler(pool, 4) for _ in range(3)]
    assert [s2.prompt_sampler(pool, 4) for _ in range(3)] == nxt
    sel = {int(x[1:]) for x in s.pool_selected}
    assert set(first) <= sel and all(set(b) <= sel for b in nxt)
    # every selected prompt appears once per epoch of the permutation
    s3 = UncertaintyConsistency(mode="offline")
    s3.fit_pool(batch, labels)
    assert sorted(s3.prompt_sampler(pool, 3)) == sorted(sel)
    with pytest.raises(ValueError, match="not in the pool"):
        s3.prompt_sampler(pool[:1], 3)
    with pytest.raises(ValueError, match="batch_size"):
        s3.prompt_sampler(pool, 0)
    with pytest.raises(ValueError, match="not 'uncertainty-consistency'|not"):
        s3.load_state_dict({**state, "name": "care"})


def test_offline_fit_pool_with_engine_charges_the_pool_labels() -> None:
    batch, labels = offline_pool()
    oracle = DatasetOracle(labels)
    s = UncertaintyConsistency(mode="offline")
    engine = AcquisitionEngine(s, oracle, budget=Budget(total=6))
    out = engine.fit_pool(batch)
    assert out["pool_labels_bought"] == 6 and out["pool_labels_refused"] == 4 and engine.spent == 6
    assert out["n_scored"] == 6 and out["n_selected"] == 2  # ceil(0.3 * 6)
    labelled = set(engine.ledger.get_many(batch.ids))
    assert len(labelled) == 6 and set(s.pool_pbc) == labelled  # a seeded uniform sample, not the first 6 rows
    res = engine.decide(batch, step=0)  # selected prompts are owned: queried for free, the rest dropped
    assert res.bought == [] and sorted(res.reused) == sorted(s.pool_selected)


# ------------------------------------------------------------------------------------------ pseudo-reward definition


def test_pseudo_consistency_grades_against_the_majority_answer_not_cluster_membership() -> None:
    """The pseudo-reward is batch.pseudo_correct (what training and Oracle-CAG use). With a non-transitive
    equivalence "2" joins the "1" cluster but is also equivalent to the majority "3": membership says 0, the
    reward pseudo-labelled training gives it says 1."""
    from helpers import WithinOne

    lp = [-0.1, -2.0, -0.2, -1.5, -1.0]
    rolls = tuple(Rollout(text=a, answer=a, mean_logprob=v) for a, v in zip(["1", "3", "2", "3", "3"], lp, strict=True))
    batch = RolloutBatch.from_groups([PromptGroup(id="q0", prompt="p", rollouts=rolls)], WithinOne())
    member = batch.votes.in_majority.astype(float)
    pseudo = batch.pseudo_correct.astype(float)
    assert member.tolist() != pseudo.tolist()
    s = UncertaintyConsistency()
    u = s.uncertainty(batch)
    got = s.pseudo_consistency(batch)
    want = online_consistency(pseudo, u, std=s.config.advantage_std, eps=s.config.eps)
    np.testing.assert_allclose(got, want)
    assert not np.allclose(got, online_consistency(member, u, std=s.config.advantage_std, eps=s.config.eps))
    # update() tracks sign agreement with the same pseudo-reward
    acq = s.select(batch, BudgetView.of(1, 1))
    s.update(batch, acq, {"q0": "1"})
    true_c = online_consistency(batch.correctness(["1"]).astype(float), u, std=s.config.advantage_std,
                                eps=s.config.eps)
    assert s.n_sign_agree == int(np.sign(true_c[0]) == np.sign(want[0]))


def test_offline_pool_labels_are_bought_in_a_uniform_seeded_order_not_pool_order() -> None:
    """With a budget below the pool's size, the labelled prompts are a seeded uniform sample of the pool."""
    batch, labels = offline_pool()
    bought: list[frozenset[str]] = []
    for seed in range(8):
        s = UncertaintyConsistency(mode="offline", seed=seed)
        engine = AcquisitionEngine(s, DatasetOracle(labels), budget=3)
        before = global_rng_state()
        out = engine.fit_pool(batch)
        assert_global_rng_unchanged(before)
        assert out["pool_labels_bought"] == 3 and engine.spent == 3
        bought.append(frozenset(engine.ledger.get_many(batch.ids)))
    assert len(set(bought)) > 1  # depends on the seed...
    assert any(b != {"q0", "q1", "q2"} for b in bought)  # ...and is not the pool's first rows
    s = UncertaintyConsistency(mode="offline", seed=3)
    again = AcquisitionEngine(s, DatasetOracle(labels), budget=3)
    s.fit_pool_with_engine(again, batch)
    assert frozenset(again.ledger.get_many(batch.ids)) == bought[3]  # reproducible


def test_offline_pool_indices_sized_relative_to_the_dataset() -> None:
    s = UncertaintyConsistency(mode="offline", seed=1)
    assert UncertaintyConsistency().pool_indices(1000) is None  # online modes have no pool
    assert s.pool_indices(100) == list(range(100))  # default: the whole dataset
    assert s.pool_indices(10_000) == list(range(10_000))
    half = UncertaintyConsistency(mode="offline", seed=1, pool_fraction=0.25)
    before = global_rng_state()
    idx = half.pool_indices(2000)
    assert_global_rng_unchanged(before)
    assert idx is not None and len(idx) == 500 and len(set(idx)) == 500 and idx == sorted(idx)
    assert idx[0] >= 0 and idx[-1] < 2000 and idx != list(range(500))  # a sample, not the first rows
    assert np.mean(idx) == pytest.approx(1000, rel=0.1)  # spread over the dataset
    assert half.pool_indices(2000) == idx  # same pool on every call / process / resume
    half.rng.random(5)  # the private RNG's state does not change the pool
    assert half.pool_indices(2000) == idx
    assert UncertaintyConsistency(mode="offline", seed=2, pool_fraction=0.25).pool_indices(2000) != idx
    assert len(half.pool_indices(400) or []) == 256  # at least 256 rows
    assert half.pool_indices(100) == list(range(100))  # or the whole dataset if smaller
    with pytest.raises(ValueError, match="n_rows"):
        half.pool_indices(0)
    with pytest.raises(ValueError, match="pool_fraction"):
        UncertaintyConsistencyConfig(pool_fraction=0.0)
