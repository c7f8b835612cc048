"""Tests of positive-negative pairing: label-free pre-screen, pair confirmation (charged), sampler, Weighted GRPO."""

from __future__ import annotations

import math
import pickle
import warnings
from typing import Any

import numpy as np
import pytest
import torch

from rlavr.advantages import grpo_advantages
from rlavr.budget import BudgetView
from rlavr.engine import AcquisitionEngine
from rlavr.labels import DatasetOracle
from rlavr.strategies import get_strategy
from rlavr.strategies.posneg_pairing import (
    PosNegPairing,
    PosNegPairingConfig,
    effective_c,
    prescreen,
    reward_map_advantages,
    success_bands,
    weighted_grpo,
)
from rlavr.types import PromptGroup, Rollout, RolloutBatch, Route

S7 = math.sqrt(7)

# G = 8 groups (ids g0..g5)
ANS: list[list[str | None]] = [
    ["a"] * 6 + ["b"] * 2,                           # g0: majority 6 -> q- candidate (alpha 6/8)
    ["a", "a", "b", "b", "c", "c", "d", "d"],         # g1: clusters of 2 -> q+ candidate (alpha 2/8)
    ["a"] * 8,                                        # g2: unanimous -> neither
    ["a"] * 4 + ["b"] * 4,                            # g3: 4/4 -> neither
    ["a"] * 7 + ["b"],                                # g4: majority 7 -> q- candidate (alpha 7/8)
    ["a", "a", "a", "b", "c", "d", "e", None],        # g5: q+ candidate (alpha 3/8)
]
LABELS = {"g0": "a", "g1": "a", "g2": "a", "g3": "a", "g4": "a", "g5": "b"}  # p: 6/8 2/8 1 4/8 7/8 1/8


def make_batch(answers: list[list[str | None]] = ANS, prefix: str = "g") -> RolloutBatch:
    groups = [PromptGroup(id=f"{prefix}{i}", prompt=f"question {i}",
                          rollouts=tuple(Rollout(text=str(a), answer=a) for a in ans))
              for i, ans in enumerate(answers)]
    return RolloutBatch.from_groups(groups)


def rng_state() -> tuple[torch.Tensor, Any]:
    return torch.get_rng_state().clone(), np.random.get_state()


def assert_rng_unchanged(before: tuple[torch.Tensor, Any]) -> None:
    assert torch.equal(torch.get_rng_state(), before[0])
    now, old = np.random.get_state(), before[1]
    assert now[0] == old[0] and np.array_equal(now[1], old[1]) and now[2:] == old[2:]


# ------------------------------------------------------------------------------------------ formulas


def test_bands() -> None:
    assert success_bands(8, 3) == ((1, 3), (5, 7))  # p+ in [.125, .375], p- in [.625, .875]
    assert success_bands(16, 3) == ((1, 3), (13, 15))  # the documented bands: [0.0625, 0.1875], [0.8125, 0.9375]
    assert effective_c(4, 3) == 1 and effective_c(6, 3) == 2 and effective_c(2, 3) == 0
    (plo, phi), _ = success_bands(2, 3)
    assert plo > phi  # empty: nothing can be paired with 2 rollouts
    with pytest.raises(ValueError, match="c: expected"):
        success_bands(8, 0)
    with pytest.raises(ValueError, match="G: expected"):
        effective_c(0, 3)


def test_weighted_grpo_hand_computed() -> None:
    qp = np.array([1.0] + [0.0] * 7)  # rare success
    qn = np.array([1.0] * 7 + [0.0])  # rare failure
    other = np.array([1.0] * 4 + [0.0] * 4)
    adv = grpo_advantages(np.stack([qp, qn, other]), std="population")
    np.testing.assert_allclose(adv[0], [S7] + [-1 / S7] * 7)  # documented: +2.646 / -0.378
    out = weighted_grpo(adv, np.array([1, -1, 0]), w_pos=2.0, lambda_neg=3.0, w_common=0.5)
    np.testing.assert_allclose(out[0], [2 * S7] + [-0.5 / S7] * 7)
    np.testing.assert_allclose(out[1], [0.5 / S7] * 7 + [-3 * S7])
    np.testing.assert_array_equal(out[2], adv[2])  # no role: untouched
    np.testing.assert_array_equal(weighted_grpo(adv, np.array([1, -1, 0])), adv)  # defaults = plain GRPO
    unb = grpo_advantages(qp[None], std="unbiased")
    assert unb[0, 0] == pytest.approx(2.475, abs=1e-3)  # the documented ddof=1 value
    with pytest.raises(ValueError, match="roles"):
        weighted_grpo(adv, np.array([2, 0, 0]))
    with pytest.raises(ValueError, match="expected advantages"):
        weighted_grpo(adv, np.array([1, 0]))


def test_reward_map_literal_reading() -> None:
    qp = np.array([[1.0] + [0.0] * 7])
    adv = grpo_advantages(qp)
    # r = +1 / -3 -> r - mean(r) = (1 + 3)(b - 1/8) x group weight 0.5
    out = reward_map_advantages(adv, np.array([1]), 3.0, np.array([0.5]))
    np.testing.assert_allclose(out[0], 0.5 * 4 * (qp[0] - 1 / 8))
    # group z-scoring after the map is exactly plain GRPO: the affine-invariance the docs warn about
    lam = 3.0
    mapped = np.where(qp == 1, 1.0, -lam)
    np.testing.assert_allclose(grpo_advantages(mapped, std="population"), grpo_advantages(qp, std="population"))
    with pytest.warns(UserWarning, match="no-op"):
        s = PosNegPairing(advantage_mode="reward_map", lambda_neg=lam)
    batch = make_batch([["a"] + ["b"] * 7])
    acq = s.select(batch, BudgetView.of(1, 1))
    a = grpo_advantages(batch.correctness(["a"]).astype(float))
    np.testing.assert_array_equal(s.transform_advantages(batch, acq, a), a)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PosNegPairing(advantage_mode="reward_map", reward_map_scale="none")


# ------------------------------------------------------------------------------------------ pre-screen and pair


def test_prescreen_and_candidate_order() -> None:
    batch = make_batch()
    pos, neg = prescreen(batch, 3)
    assert pos.tolist() == [False, True, False, False, False, True]
    assert neg.tolist() == [True, False, False, False, True, False]
    before = rng_state()
    po, no = PosNegPairing().candidate_order(batch)
    assert_rng_unchanged(before)
    assert po.tolist() == [1, 5] and no.tolist() == [4, 0]  # hardest q+ first, most brittle q- first


def test_fit_pool_picks_rarest_success_and_rarest_failure() -> None:
    s = PosNegPairing()
    out = s.fit_pool(make_batch(), LABELS)
    assert (s.pos_id, s.neg_id) == ("g5", "g4")
    assert out["p_pos"] == 1 / 8 and out["p_neg"] == 7 / 8 and out["pair_found"] == 1.0
    assert out["n_valid_pos"] == 2 and out["n_valid_neg"] == 2
    with pytest.warns(UserWarning, match="valid q-"):
        out = PosNegPairing().fit_pool(make_batch(), {"g1": "a"})
    assert out["pair_found"] == 0.0
    with pytest.raises(ValueError, match="none of the pool"):
        s.fit_pool(make_batch(), {"zz": "a"})


def test_fit_pool_with_engine_buys_until_confirmed() -> None:
    batch = make_batch()
    oracle = DatasetOracle(LABELS)
    s = PosNegPairing()
    engine = AcquisitionEngine(s, oracle)
    out = engine.fit_pool(batch)
    # round 1 buys g1 (first q+ candidate, p = 2/8: valid) and g4 (first q- candidate, 7/8): done
    assert out["labels_spent"] == 2 and engine.spent == 2 and oracle.labels_served == 2
    assert (s.pos_id, s.neg_id) == ("g1", "g4")
    # g1 is unsolvable -> a second round buys g5
    oracle2 = DatasetOracle({**LABELS, "g1": "z"})
    s2 = PosNegPairing()
    e2 = AcquisitionEngine(s2, oracle2)
    out = s2.fit_pool_with_engine(e2, batch)
    assert out["labels_spent"] == 3 and e2.spent == 3 and (s2.pos_id, s2.neg_id) == ("g5", "g4")
    assert s2.labels_spent == 3
    # capped: no pair confirmed within 2 labels -> documented fallback, labels still charged
    s3 = PosNegPairing(max_probe_labels=2)
    e3 = AcquisitionEngine(s3, DatasetOracle({**LABELS, "g1": "z"}))
    with pytest.warns(UserWarning, match="valid q\\+"):
        out = s3.fit_pool_with_engine(e3, batch)
    assert out["pair_found"] == 0.0 and e3.spent == 2 and not s3.fitted
    # labels already in the ledger are used for free
    s4 = PosNegPairing()
    e4 = AcquisitionEngine(s4, oracle, ledger=engine.ledger)
    out = s4.fit_pool_with_engine(e4, batch)
    assert out["labels_spent"] == 0 and e4.spent == 2


def test_prompt_sampler_builds_paired_minibatches() -> None:
    s = PosNegPairing()
    pool = [{"id": f"g{i}", "prompt": "..."} for i in range(6)]
    assert s.prompt_sampler(pool, 4) is None  # not fitted: the trainer's own order
    s.fit_pool(make_batch(), LABELS)
    assert s.prompt_sampler(pool, 2) == [5, 4]
    # more than 2 prompts per round: the pair once, then the pool's other prompts in order (distinct ids)
    assert s.prompt_sampler(pool, 4) == [5, 4, 0, 1]
    assert s.prompt_sampler(pool, 6) == [5, 4, 0, 1, 2, 3]
    dup = pool + [{"id": "g5"}, {"id": "g0"}]  # repeated ids are one prompt
    assert s.prompt_sampler(dup, 6) == [5, 4, 0, 1, 2, 3]
    with pytest.raises(ValueError, match="only 6 distinct prompt ids"):
        s.prompt_sampler(dup, 7)
    with pytest.raises(ValueError, match="batch_size"):
        s.prompt_sampler(pool, 1)
    with pytest.raises(ValueError, match="q- prompt 'g4' is not in the pool"):
        s.prompt_sampler(pool[:4] + pool[5:], 2)
    with pytest.raises(ValueError, match="id column"):
        s.prompt_sampler([{"name": "g5"}], 2)


def test_a_round_of_more_than_two_prompts_trains_the_pair_once_and_charges_nothing_new() -> None:
    """Regression: the sampler repeated the pair to fill a round, and the round's batch refused the repeated
    prompt id ("duplicate prompt id"). Now: the pair once plus fillers, which are dropped (no label bought)."""
    from rlavr.loop import AcquisitionLoop
    from rlavr.rollouts import RowFeatures

    s = PosNegPairing()
    loop = AcquisitionLoop(AcquisitionEngine(s, DatasetOracle(LABELS), budget=4))
    loop.fit_pool([RowFeatures(id=f"g{i}", prompt=f"question {i}", text=str(a), answer=a, length=1,
                               truncated=False) for i, ans in enumerate(ANS) for a in ans], 8, step=0)
    assert s.fitted and (s.pos_id, s.neg_id) == ("g1", "g4")
    spent = loop.engine.spent
    pool = [{"id": f"g{i}"} for i in range(6)]
    idx = loop.sample_prompts(pool, 4)
    assert idx == [1, 4, 0, 2]
    rows = [RowFeatures(id=f"g{i}", prompt=f"question {i}", text=str(a), answer=a, length=1, truncated=False)
            for i in idx for a in ANS[i]]
    d = loop.decide(rows, 8, step=1)  # before: ValueError "duplicate prompt id 'g1'"
    assert d.routes.tolist() == [Route.QUERY, Route.QUERY, Route.DROP, Route.DROP]
    assert loop.engine.spent == spent and d.metrics["labels_bought_this_step"] == 0  # the pair is owned
    assert loop.engine.spent <= 4


# ------------------------------------------------------------------------------------------ routing + advantages


def test_select_pair_mode_and_online_mode() -> None:
    batch = make_batch()
    s = PosNegPairing()
    s.fit_pool(batch, LABELS)
    acq = s.select(batch, BudgetView.of(2, 6))
    assert acq.routes.tolist() == [Route.DROP] * 4 + [Route.QUERY, Route.QUERY]
    assert acq.metrics["pair_mode"] == 1.0 and acq.metrics["pair_in_batch"] == 2
    other = make_batch(prefix="h")
    acq = s.select(other, BudgetView.of(2, 6))
    assert acq.drop.all() and acq.metrics["pair_in_batch"] == 0  # visible when the sampler is not used
    acq = s.select(batch, BudgetView.of(1, 6))
    assert np.flatnonzero(acq.query).tolist() == [5]  # q+ first when only one label is left
    known = np.zeros(6, bool)
    known[4] = True
    acq = s.select(batch, BudgetView(remaining=0, known=known))
    assert np.flatnonzero(acq.query).tolist() == [4]
    # online variant: candidates alternate q+, q-, q+, q- within the budget; the rest is dropped
    online = PosNegPairing()
    acq = online.select(batch, BudgetView.of(3, 6))
    assert np.flatnonzero(acq.query).tolist() == [1, 4, 5]
    np.testing.assert_allclose(acq.scores, [0.25, 1.0, 0, 0, 0.75, 0.5])
    assert acq.drop.sum() == 3


def test_engine_applies_weighted_grpo() -> None:
    batch = make_batch()
    s = PosNegPairing(w_pos=2.0, lambda_neg=3.0)
    s.fit_pool(batch, LABELS)
    engine = AcquisitionEngine(s, DatasetOracle(LABELS), budget=2)
    res = engine.decide(batch, step=0)
    assert sorted(res.bought) == ["g4", "g5"] and engine.spent == 2
    adv = engine.advantages(res)
    plain = grpo_advantages(engine.rewards(res)) * res.weights[:, None]
    mult = np.ones_like(plain)
    mult[5] = np.where(plain[5] > 0, 2.0, 1.0)  # q+ = g5: its one success x w_pos
    mult[4] = np.where(plain[4] < 0, 3.0, 1.0)  # q- = g4: its one failure x lambda_neg
    np.testing.assert_allclose(adv, plain * mult)
    assert adv[5, 3] == pytest.approx(2 * plain[5, 3]) and plain[5, 3] > 0  # rollout 3 answered "b"
    assert np.all(adv[:4] == 0)
    assert s.last_roles is not None and s.last_roles.tolist() == [0, 0, 0, 0, -1, 1]


def test_online_roles_from_success_counts() -> None:
    rewards = np.array([[1.0] + [0.0] * 7, [1.0] * 7 + [0.0], [1.0] * 4 + [0.0] * 4, [0.0] * 8, [1.0] * 3 + [0.0] * 5])
    adv = grpo_advantages(rewards)
    s = PosNegPairing(w_pos=2.0, lambda_neg=4.0)
    batch = make_batch([["a"] * 8] * 5)
    assert s.roles(batch, adv).tolist() == [1, -1, 0, 0, 1]
    acq = s.select(batch, BudgetView.of(0, 5))
    out = s.transform_advantages(batch, acq, adv)
    np.testing.assert_allclose(out[1, 7], 4.0 * adv[1, 7])
    np.testing.assert_allclose(out[4, :3], 2.0 * adv[4, :3])
    np.testing.assert_array_equal(out[2], adv[2])
    with pytest.raises(ValueError, match="expected shape"):
        s.transform_advantages(batch, acq, adv[:, :4])


# ------------------------------------------------------------------------------------------ config + state


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="lambda_neg"):
        PosNegPairing(lambda_neg=-1.0)
    with pytest.raises(ValueError, match="w_pos"):
        PosNegPairingConfig(w_pos=float("inf"))
    with pytest.raises(ValueError, match="c"):
        PosNegPairing(c=0)
    with pytest.raises(ValueError, match="-mask"):
        PosNegPairing(mask=True)
    assert isinstance(get_strategy("weighted-grpo", lambda_neg=2.0), PosNegPairing)


def test_state_dict_round_trip_and_no_global_rng() -> None:
    batch = make_batch()
    before = rng_state()
    s = PosNegPairing(seed=5)
    s.fit_pool(batch, LABELS)
    s.select(batch, BudgetView.of(2, 6))
    state = pickle.loads(pickle.dumps(s.state_dict()))
    t = PosNegPairing(seed=1)
    t.load_state_dict(state)
    assert_rng_unchanged(before)
    assert (t.pos_id, t.neg_id, t.p_hat) == (s.pos_id, s.neg_id, s.p_hat)
    pool = [{"id": f"g{i}"} for i in range(6)]
    assert t.prompt_sampler(pool, 4) == s.prompt_sampler(pool, 4)
    u, v = PosNegPairing(seed=5), PosNegPairing(seed=9)
    v.load_state_dict(u.state_dict())
    a, b = u.select(batch, BudgetView.of(3, 6)), v.select(batch, BudgetView.of(3, 6))
    assert np.array_equal(a.routes, b.routes) and np.array_equal(a.scores, b.scores)


def test_default_weights_amplify_rare_events_not_plain_grpo() -> None:
    """The defaults do what the method describes: rare successes on q+ and rare failures on q- are amplified
    (weights of 1 everywhere would be plain GRPO); common outcomes and role-less groups are unchanged."""
    cfg = PosNegPairingConfig()
    assert cfg.w_pos > 1.0 and cfg.lambda_neg > 1.0 and cfg.w_common == 1.0
    rewards = np.array([[1.0] + [0.0] * 7, [1.0] * 7 + [0.0], [1.0] * 4 + [0.0] * 4])
    adv = grpo_advantages(rewards)
    s = PosNegPairing()
    batch = make_batch([["a"] * 8] * 3)
    acq = s.select(batch, BudgetView.of(0, 3))
    out = s.transform_advantages(batch, acq, adv)
    assert not np.allclose(out, adv)  # not plain GRPO
    np.testing.assert_allclose(out[0, 0], cfg.w_pos * adv[0, 0])  # rare success on q+
    np.testing.assert_allclose(out[1, 7], cfg.lambda_neg * adv[1, 7])  # rare failure on q-
    np.testing.assert_allclose(out[0, 1:], adv[0, 1:])  # common outcomes unchanged
    np.testing.assert_allclose(out[1, :7], adv[1, :7])
    np.testing.assert_array_equal(out[2], adv[2])  # no role: unchanged
    plain = PosNegPairing(w_pos=1.0, lambda_neg=1.0)
    np.testing.assert_allclose(plain.transform_advantages(batch, plain.select(batch, BudgetView.of(0, 3)), adv), adv)
