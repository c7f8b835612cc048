"""Tests for CARE (rlavr.strategies.care) on synthetic rollouts where the right routing is known.

The synthetic batches (:func:`make_batch`) encode the truth in the hidden states: the prompt hidden state
carries +/- ``signal`` on coordinate 0 depending on whether the majority vote is correct, every response hidden
state carries +/- ``signal`` on coordinate 1 depending on whether that response is correct. A wrong vote has
``y`` correct non-majority responses (``0 <= y < x``), so Stage II can read the count off the masked responses.
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest
import torch

from rlavr.budget import BudgetView
from rlavr.engine import AcquisitionEngine
from rlavr.features import label_targets, rollout_features
from rlavr.labels import DatasetOracle
from rlavr.strategies import get_strategy
from rlavr.strategies.care import CARE, CAREConfig, CAREMse, _ReplayBuffer, class_balanced_weights
from rlavr.types import PromptGroup, Rollout, RolloutBatch, Route

G = 8
H = 16
B = 32


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # the test machine is small and shared: intra-op threads only add contention for these tiny networks
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_batch(seed: int, step: int = 0, B: int = B, G: int = G, H: int = H, signal: float = 2.0,
               p_correct: float = 0.5, with_reference: bool = False) -> tuple[RolloutBatch, dict[str, str]]:
    """A batch whose hidden states separate correct from wrong majorities (see module docstring)."""
    rng = np.random.default_rng(seed)
    groups, labels = [], {}
    vote_ok = rng.random(B) < p_correct
    for i in range(B):
        x = int(rng.integers(3, 7))
        if vote_ok[i]:
            maj, y = "A", 0
        else:
            maj, y = "W", int(rng.integers(0, min(x - 1, G - x) + 1))
        answers = [maj] * x + ["A"] * y + [None if rng.random() < 0.3 else f"z{j}" for j in range(G - x - y)]
        answers = [answers[p] for p in rng.permutation(G)]
        correct = np.array([a == "A" for a in answers])
        ph = rng.normal(size=H).astype(np.float32)
        ph[0] += signal if vote_ok[i] else -signal
        rh = rng.normal(size=(G, H)).astype(np.float32)
        rh[:, 1] += np.where(correct, signal, -signal)
        rollouts = tuple(Rollout(text=str(a), answer=a, length=int(rng.integers(10, 3000)), hidden=rh[j])
                         for j, a in enumerate(answers))
        gid = f"s{step}-{seed}-{i}"
        groups.append(PromptGroup(id=gid, prompt=f"question {gid}", rollouts=rollouts, prompt_hidden=ph))
        labels[gid] = "A"
    ref = [labels[g.id] for g in groups] if with_reference else None
    return RolloutBatch.from_groups(groups, reference_labels=ref, step=step), labels


def train(strategy: CARE, n_steps: int, budget: int = B, seed0: int = 1000) -> None:
    """n_steps of select + update, learning from the labels of the queried groups."""
    for t in range(n_steps):
        batch, labels = make_batch(seed0 + t, step=t)
        acq = strategy.select(batch, BudgetView.of(budget, batch.B))
        bought = {batch.ids[i]: labels[batch.ids[i]] for i in np.flatnonzero(acq.query)}
        strategy.update(batch, acq, bought)


@pytest.fixture(scope="module")
def trained() -> CARE:
    """CARE trained for 12 steps on fully labelled batches (lr raised so the test stays quick)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        s = CARE(warmup_steps=0, lr=1e-3, seed=3)
        train(s, 12, budget=B)
    finally:
        torch.set_num_threads(n)
    return s


# ============================================================================================== config / registry


def test_config_defaults_are_the_authors_values() -> None:
    c = CAREConfig()
    assert (c.prompt_hidden_dim, c.prompt_mid_dim, c.resp_mlp_hidden, c.resp_mlp_out) == (128, 256, 64, 512)
    assert c.activation == "relu" and c.aux_weight == 1.5 and c.lr == 1e-4 and c.weight_decay == 0.0
    assert (c.buffer_size, c.history_samples, c.train_steps, c.grad_clip) == (2048, 16, 3, 1.0)
    assert (c.class_balance_power, c.class_weight_min, c.class_weight_max) == (0.5, 0.25, 4.0)
    assert (c.prob_gate, c.warmup_steps, c.length_norm) == (0.25, 20, 4000.0)
    assert c.pseudo_weight == "code" and c.objective == "classify" and c.stratified_replay and c.class_balance


@pytest.mark.parametrize("kwargs, field", [
    ({"prob_gate": 1.5}, "prob_gate"), ({"warmup_steps": -1}, "warmup_steps"), ({"lr": 0.0}, "lr"),
    ({"pseudo_weight": "half"}, "pseudo_weight"), ({"objective": "ranking"}, "objective"),
    ({"device": "tpu"}, "device"), ({"class_weight_min": 5.0}, "class_weight_min"),
    ({"betas": (0.9, 1.0)}, "betas"), ({"overlap_ratios": (0.0,)}, "overlap_ratios"),
    ({"buffer_size": 0}, "buffer_size"), ({"no_such_field": 1}, "no_such_field"),
    ({"aux_weight": float("nan")}, "aux_weight"),
])
def test_bad_config_values_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        CARE(**kwargs)


def test_registry_forms() -> None:
    assert isinstance(get_strategy("care"), CARE)
    mse = get_strategy("care-mse")
    assert isinstance(mse, CAREMse) and mse.config.objective == "mse"
    masked = get_strategy("care-mask")
    assert masked.mask and not masked.config.use_pseudo
    assert get_strategy("care", config={"prob_gate": 0.1}, warmup_steps=5).config.prob_gate == 0.1
    with pytest.raises(ValueError, match="use_pseudo"):
        CARE(mask=True, use_pseudo=True)
    with pytest.raises(ValueError, match="objective"):
        CAREMse(objective="classify")
    with pytest.raises(ValueError, match="config"):
        CARE(config=3)  # type: ignore[arg-type]
    assert CARE.requires == frozenset({"answers", "hidden_states"})


def test_missing_hidden_states_raise_a_clear_error() -> None:
    batch, _ = make_batch(0)
    bare = RolloutBatch.from_groups([PromptGroup(id=g.id, prompt=g.prompt, rollouts=tuple(
        Rollout(answer=r.answer, length=r.length) for r in g.rollouts)) for g in batch.groups])
    with pytest.raises(ValueError, match="requires 'hidden_states'"):
        CARE().select(bare, BudgetView.of(4, bare.B))


def test_group_or_hidden_size_change_is_rejected() -> None:
    s = CARE()
    s.select(make_batch(0)[0], BudgetView.of(4, B))
    with pytest.raises(ValueError, match="H=16.*H=8"):
        s.select(make_batch(1, H=8)[0], BudgetView.of(4, B))


# ============================================================================================== learning


def test_classifiers_learn_the_synthetic_signal(trained: CARE) -> None:
    batch, _ = make_batch(7, step=50, with_reference=True)
    acq = trained.select(batch, BudgetView.of(8, batch.B))
    m = acq.metrics
    assert m["stage1_auroc"] > 0.95, m
    assert m["reliable_precision"] >= 0.875, m               # pseudo-labels kept are right
    assert m["stage1_precision"] >= 0.875 and m["stage1_accuracy"] > 0.7, m
    assert m["stage2_macro_recall"] > 0.5, m                # 1/|classes| would be chance
    assert m["query_vote_wrong_ratio"] >= 0.75, m           # queries are spent on wrong votes
    assert m["loss_stage1"] < 0.3 and "loss_stage2" in m and m["buffer_size"] > 0


def test_label_metrics_use_only_groups_with_a_reference_label(trained: CARE) -> None:
    batch, labels = make_batch(8, with_reference=True)
    part = batch.with_reference_labels([lab if i % 2 == 0 else None for i, lab in enumerate(batch.reference_labels)])
    m_full = trained.select(batch, BudgetView.of(8, B)).metrics
    m_part = trained.select(part, BudgetView.of(8, B)).metrics
    even = label_targets(batch, {gid: labels[gid] for gid in batch.ids[::2]})
    assert m_part["true_cag_mean"] == pytest.approx(even.true_cag.mean())
    assert m_full["true_cag_mean"] == pytest.approx(label_targets(batch, labels).true_cag.mean())
    assert "stage1_auroc" in m_part
    none = batch.with_reference_labels([None] * B)
    assert "stage1_auroc" not in trained.select(none, BudgetView.of(8, B)).metrics


def test_label_metrics_reach_the_engine_without_the_decision_seeing_labels(trained: CARE) -> None:
    """Through the engine, ``select`` gets no reference labels (only label-peeking rules do), yet the
    classifier-quality metrics are still logged: the engine calls ``diagnostics`` after the decision."""
    batch, labels = make_batch(21, with_reference=True)
    direct = trained.select(batch, BudgetView.of(4, B))
    state = trained.state_dict()
    seen: list[object] = []
    orig = trained.select

    def spy(b: RolloutBatch, v: BudgetView):  # type: ignore[no-untyped-def]
        seen.append(b.reference_labels)
        return orig(b, v)

    trained.select = spy  # type: ignore[method-assign]
    try:
        eng = AcquisitionEngine(trained, DatasetOracle(labels), budget="4/step", ledger=":memory:")
        res = eng.decide(batch.with_reference_labels(None), step=0)
    finally:
        del trained.select
        trained.load_state_dict(state)
    assert seen == [None]
    assert np.array_equal(res.acquisition.routes, direct.routes)
    for k in ("stage1_precision", "stage1_auroc", "reliable_precision", "stage2_macro_recall", "top_overlap@budget"):
        assert res.metrics[f"strategy/{k}"] == pytest.approx(direct.metrics[k]), k


def test_untrained_classifier_is_near_chance() -> None:
    # negative control for the learning test: the same evaluation before any update
    s = CARE(warmup_steps=0, seed=3)
    aurocs = [s.select(make_batch(k, with_reference=True)[0], BudgetView.of(8, B)).metrics["stage1_auroc"]
              for k in range(3)]
    assert np.mean(aurocs) < 0.9


def test_care_catches_more_wrong_votes_than_random_at_equal_budget(trained: CARE) -> None:
    rnd = get_strategy("random", seed=0)
    care_hits = rnd_hits = 0
    for k in range(4):
        batch, _ = make_batch(500 + k, step=60 + k, with_reference=True)
        wrong = ~batch.majority_correct
        view = BudgetView.of(8, batch.B)
        care_hits += int(wrong[trained.select(batch, view).query].sum())
        rnd_hits += int(wrong[rnd.select(batch, view).query].sum())
    assert care_hits >= 28 and care_hits > rnd_hits + 8, (care_hits, rnd_hits)


def test_care_mse_learns_to_predict_cag() -> None:
    s = CAREMse(warmup_steps=0, lr=1e-3, seed=1)
    batch, _ = make_batch(9, with_reference=True)
    before = s.select(batch, BudgetView.of(8, B)).metrics["stage2_cag_mae"]
    train(s, 20)
    acq = s.select(batch, BudgetView.of(8, B))
    assert acq.metrics["stage2_cag_mae"] < 0.6 * before, (before, acq.metrics["stage2_cag_mae"])
    f = rollout_features(batch)
    assert np.all(acq.scores >= 0) and np.all(acq.scores <= f.max_cost + 1e-12)
    assert "stage2_macro_recall" not in acq.metrics


# ============================================================================================== routing


def test_stage2_masks_inadmissible_classes_and_scores_expected_cag(trained: CARE) -> None:
    batch, _ = make_batch(11)
    s = trained.score(batch)
    f = rollout_features(batch)
    assert s.p2 is not None
    assert np.all(s.p2[~f.admissible] == 0.0)
    np.testing.assert_allclose(s.p2.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(s.expected_cag, (s.p2 * f.class_costs).sum(axis=1))
    acq = trained.select(batch, BudgetView.of(4, B))
    np.testing.assert_allclose(acq.scores, s.expected_cag)


def test_unanimous_and_invalid_groups_score_zero_and_never_enter_R() -> None:
    batch, _ = make_batch(12)
    groups = list(batch.groups)
    groups[0] = PromptGroup(id="unan", prompt="u", prompt_hidden=groups[0].prompt_hidden, rollouts=tuple(
        Rollout(answer="A", hidden=r.hidden) for r in groups[0].rollouts))
    groups[1] = PromptGroup(id="none", prompt="n", prompt_hidden=groups[1].prompt_hidden, rollouts=tuple(
        Rollout(answer=None, hidden=r.hidden) for r in groups[1].rollouts))
    b = RolloutBatch.from_groups(groups)
    s = CARE(warmup_steps=0, prob_gate=1.0)
    acq = s.select(b, BudgetView.of(0, b.B))
    assert acq.scores[0] == 0.0 and acq.scores[1] == 0.0
    assert acq.routes[1] == Route.DROP                       # no majority: cannot be pseudo-labelled
    assert acq.routes[0] == Route.PSEUDO and acq.weights[0] == 0.0   # code weight: clip(E_CAG=0, 0, 1)
    assert (acq.routes == Route.PSEUDO).sum() == b.B - 1


def test_warmup_disables_stage1_until_enough_updates() -> None:
    s = CARE(warmup_steps=3, seed=0)
    k_r = math.ceil(0.25 * B)
    for t in range(5):
        batch, labels = make_batch(t, step=t)
        acq = s.select(batch, BudgetView.of(8, B))
        n_pseudo = int(acq.pseudo.sum())
        assert n_pseudo == (0 if t < 3 else k_r), (t, n_pseudo)
        assert acq.metrics["warmup"] == float(t < 3)
        assert acq.query.sum() == 8 and acq.drop.sum() == B - 8 - n_pseudo
        s.update(batch, acq, {batch.ids[i]: labels[batch.ids[i]] for i in np.flatnonzero(acq.query)})
    assert CARE(warmup_steps=0).select(make_batch(0)[0], BudgetView.of(8, B)).pseudo.sum() == k_r


@pytest.mark.parametrize("remaining", [0, 1, 8, 20, 24, 30, B, 100])
def test_budget_is_respected_and_known_groups_are_free(trained: CARE, remaining: int) -> None:
    batch, _ = make_batch(13)
    known = np.zeros(B, dtype=bool)
    known[[2, 5, 30]] = True
    rem = min(remaining, int((~known).sum()))
    acq = trained.select(batch, BudgetView(remaining=rem, known=known))
    new_queries = acq.query & ~known
    assert new_queries.sum() == min(rem, B - 3)
    assert acq.query[known].all()
    assert not (acq.pseudo & known).any()
    sc = trained.score(batch)
    k_r = math.ceil(0.25 * B)
    n_rel_candidates = B - 3
    if rem <= n_rel_candidates - k_r:
        # the reliable set is the top-k_R by P1 among unlabelled groups; queries never take from it
        rel = acq.pseudo
        assert rel.sum() == k_r
        assert sc.p1[rel].min() >= sc.p1[~rel & ~known].max() - 1e-12
        # the queried groups are the highest E_CAG among the rest
        rest = ~rel & ~known
        if 0 < rem < rest.sum():
            assert sc.expected_cag[new_queries].min() >= sc.expected_cag[rest & ~acq.query].max() - 1e-12
    else:
        # leftover budget goes to R, least reliable first
        assert acq.pseudo.sum() == n_rel_candidates - rem
    np.testing.assert_array_equal(acq.weights[acq.drop], 0.0)
    np.testing.assert_array_equal(acq.weights[acq.query], 1.0)


def test_engine_never_exceeds_the_budget() -> None:
    batches = [make_batch(40 + t, step=t) for t in range(4)]
    oracle = DatasetOracle({k: v for _, lab in batches for k, v in lab.items()})
    engine = AcquisitionEngine(CARE(warmup_steps=1, seed=2), oracle, budget={"per_step": 6, "ratio": 0.2})
    for t, (batch, _) in enumerate(batches):
        res = engine.decide(batch, step=t)
        assert len(res.bought) <= 6
        assert engine.spent <= math.floor(0.2 * B * (t + 1))
        engine.update(res)
        assert res.metrics["strategy/updates"] == t
    assert engine.strategy.n_updates == 4 and len(engine.strategy.buffer) == engine.spent


@pytest.mark.parametrize("mode", ["code", "paper", "one"])
def test_pseudo_weight_modes(trained: CARE, mode: str) -> None:
    s = CARE(warmup_steps=0, lr=1e-3, seed=3, pseudo_weight=mode)
    s.load_state_dict({**trained.state_dict(), "config": {**trained.state_dict()["config"], "pseudo_weight": mode}})
    batch, _ = make_batch(14)
    sc = s.score(batch)
    acq = s.select(batch, BudgetView.of(8, B))
    ps = acq.pseudo
    assert ps.sum() > 0
    if mode == "code":
        np.testing.assert_allclose(acq.weights[ps], np.clip(sc.expected_cag[ps], 0, 1))
    elif mode == "paper":
        np.testing.assert_allclose(acq.weights[ps], sc.p1[ps])
        assert acq.weights[ps].min() < 1.0
    else:
        np.testing.assert_array_equal(acq.weights[ps], 1.0)


# ============================================================================================== ablations


def test_without_pseudo_labels_nothing_is_pseudo_labelled() -> None:
    for s in (CARE(warmup_steps=0, use_pseudo=False), get_strategy("care-mask", warmup_steps=0)):
        acq = s.select(make_batch(15)[0], BudgetView.of(8, B))
        assert acq.pseudo.sum() == 0 and acq.query.sum() == 8 and acq.drop.sum() == B - 8


@pytest.mark.parametrize("fallback", ["random", "reliability", "uniform"])
def test_without_stage2(fallback: str) -> None:
    s = CARE(warmup_steps=0, use_stage2=False, stage2_fallback=fallback, seed=4)
    batch, labels = make_batch(16)
    sc = s.score(batch)
    assert s.stage2 is None and sc.p2 is None
    f = rollout_features(batch)
    if fallback == "reliability":
        np.testing.assert_allclose(sc.expected_cag, 1 - sc.p1)
    elif fallback == "uniform":
        expect = np.array([f.class_costs[i, f.admissible[i]].mean() for i in range(B)])
        np.testing.assert_allclose(sc.expected_cag, expect)
    else:
        twin = CARE(warmup_steps=0, use_stage2=False, stage2_fallback=fallback, seed=4)
        np.testing.assert_array_equal(twin.score(batch).expected_cag, sc.expected_cag)   # same seed, same draw
        assert not np.array_equal(s.score(batch).expected_cag, sc.expected_cag)          # the stream advances
    acq = s.select(batch, BudgetView.of(8, B))
    assert acq.query.sum() == 8 and acq.pseudo.sum() == math.ceil(0.25 * B)
    s.update(batch, acq, labels)
    assert "loss_stage2" not in s.last_losses and "stage2" not in s.state_dict()


def test_aux_and_class_balance_switches() -> None:
    batch, labels = make_batch(17)
    s = CARE(aux_weight=0.0, class_balance=False, stratified_replay=False)
    s.update(batch, s.select(batch, BudgetView.of(8, B)), labels)
    assert s.last_losses["stage1_aux"] == 0.0
    s2 = CARE()
    s2.update(batch, s2.select(batch, BudgetView.of(8, B)), labels)
    assert s2.last_losses["stage1_aux"] > 0.0


# ============================================================================================== training details


def test_class_balanced_weights_by_hand() -> None:
    w = class_balanced_weights(torch.tensor([0, 0, 0, 1]), 3, 0.5, 0.25, 4.0)
    raw = np.array([3 ** -0.5, 1.0])
    np.testing.assert_allclose(w.numpy(), [*(raw / raw.mean()), 0.0], rtol=1e-6)
    w = class_balanced_weights(torch.tensor([0] * 400 + [1]), 2, 0.5, 0.25, 4.0)
    # raw [1/20, 1], mean 0.525 -> [0.095, 1.905]; the first is clipped up to 0.25
    np.testing.assert_allclose(w.numpy(), [0.25, 1 / 0.525], rtol=1e-6)
    np.testing.assert_allclose(class_balanced_weights(torch.tensor([2, 2]), 4, 0.5, 0.25, 4.0).numpy(),
                               [0, 0, 1, 0])


def _samples(n: int, start: int, G: int = 2, H: int = 3) -> dict[str, torch.Tensor]:
    ids = torch.arange(start, start + n)
    return {"prompt_x": ids[:, None].float().expand(n, H + 1 + G).clone(),
            "resp_h": ids[:, None, None].float().expand(n, G, H).clone(),
            "len_norm": torch.zeros(n, G), "mask2": torch.ones(n, G, dtype=torch.bool),
            "admissible": torch.ones(n, G + 1, dtype=torch.bool), "resp_correct": torch.zeros(n, G, dtype=torch.bool),
            "y1": ids % 2, "y2": ids % 3, "cag": ids.float()}


def test_replay_buffer_is_fifo_and_stratified() -> None:
    buf = _ReplayBuffer(capacity=5, H=3, G=2)
    buf.append(_samples(3, 0))
    buf.append(_samples(4, 3))
    assert len(buf) == 5
    np.testing.assert_array_equal(buf.get(np.arange(5))["cag"].numpy(), [2, 3, 4, 5, 6])   # oldest evicted
    buf.append(_samples(7, 10))                                                             # > capacity
    np.testing.assert_array_equal(buf.get(np.arange(5))["cag"].numpy(), [12, 13, 14, 15, 16])
    rng = np.random.default_rng(0)
    big = _ReplayBuffer(capacity=100, H=3, G=2)
    big.append(_samples(60, 0))
    big.append({**_samples(2, 60), "y2": torch.tensor([5, 5])})                            # a rare class
    for _ in range(10):
        idx = big.sample_stratified(rng, 16)
        assert idx.size == 16 and np.unique(idx).size == 16
        labels = big.labels2()[idx]
        assert (labels == 5).sum() == 2 and all((labels == c).sum() >= 4 for c in range(3))
        assert big.sample_uniform(rng, 16).size == 16
    assert big.sample_uniform(rng, 500).size == 62
    restored = _ReplayBuffer.from_state(big.state())
    np.testing.assert_array_equal(restored.labels2(), big.labels2())


def test_update_edge_cases() -> None:
    s = CARE()
    batch, labels = make_batch(18)
    acq = s.select(batch, BudgetView.of(1, B))
    s.update(batch, acq, {})                              # nothing bought: clock advances, nothing trained
    assert s.n_updates == 1 and len(s.buffer) == 0
    before = {k: v.clone() for k, v in s.stage1.state_dict().items()}
    one = {batch.ids[0]: labels[batch.ids[0]]}
    s.update(batch, acq, one)                             # 1 sample: BatchNorm cannot train, buffered only
    assert len(s.buffer) == 1 and all(torch.equal(v, s.stage1.state_dict()[k]) for k, v in before.items())
    s.update(batch, acq, one)                             # now 1 current + 1 history: trains
    assert len(s.buffer) == 2 and s.last_losses["stage1_batch"] == 2.0
    assert not all(torch.equal(v, s.stage1.state_dict()[k]) for k, v in before.items())


def test_update_uses_exactly_the_given_labels() -> None:
    s = CARE(seed=5)
    batch, labels = make_batch(19)
    rows = [3, 9, 20]
    s.update(batch, s.select(batch, BudgetView.of(3, B)), {batch.ids[i]: labels[batch.ids[i]] for i in rows})
    t = label_targets(batch, labels)
    stored = s.buffer.get(np.arange(3))
    np.testing.assert_array_equal(stored["y1"].numpy(), t.vote_correct[rows])
    np.testing.assert_array_equal(stored["y2"].numpy(), t.count[rows])
    np.testing.assert_array_equal(stored["resp_correct"].numpy(), t.resp_correct[rows])
    np.testing.assert_allclose(stored["resp_h"].numpy(), batch.response_hidden[rows])


# ============================================================================================== RNG and resume


def test_no_global_rng_is_touched() -> None:
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    s = CARE(warmup_steps=0, use_stage2=True, seed=1)
    f = CARE(use_stage2=False, stage2_fallback="random")
    for t in range(3):
        batch, labels = make_batch(t, step=t)
        for strat in (s, f):
            acq = strat.select(batch, BudgetView.of(8, B))
            strat.update(batch, acq, labels)
    s2 = CARE(warmup_steps=0, use_stage2=True, seed=1)
    s2.load_state_dict(s.state_dict())
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == py_state
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]


def test_same_seed_same_networks_different_seed_different_networks() -> None:
    batch, _ = make_batch(20)
    a, b, c = CARE(seed=7), CARE(seed=7), CARE(seed=8)
    pa, pb, pc = (x.score(batch).p1 for x in (a, b, c))
    np.testing.assert_array_equal(pa, pb)
    assert not np.array_equal(pa, pc)


@pytest.mark.parametrize("objective", ["classify", "mse"])
def test_resume_continues_exactly(objective: str) -> None:
    kw = {"warmup_steps": 2, "lr": 1e-3, "seed": 11, "objective": objective, "buffer_size": 40}
    ref = CARE(**kw)
    steps = [make_batch(300 + t, step=t) for t in range(7)]

    def run(strat: CARE, part: list) -> list:
        out = []
        for batch, labels in part:
            acq = strat.select(batch, BudgetView.of(10, batch.B))
            strat.update(batch, acq, {batch.ids[i]: labels[batch.ids[i]] for i in np.flatnonzero(acq.query)})
            out.append(acq)
        return out

    run(ref, steps[:4])                       # 4 x 10 samples: the 40-slot buffer is full and wraps next step
    state = ref.state_dict()
    frozen = {k: v.clone() for k, v in state["stage1"].items()}
    blob = io.BytesIO()
    torch.save(state, blob)
    cont = run(ref, steps[4:])
    # the saved state is a snapshot: later training did not change it
    assert all(torch.equal(v, state["stage1"][k]) for k, v in frozen.items())
    blob.seek(0)
    loaded = torch.load(blob, weights_only=True)
    for fresh_state in (state, loaded):
        fresh = CARE(**kw)
        fresh.load_state_dict(fresh_state)
        resumed = run(fresh, steps[4:])
        for a, b in zip(cont, resumed, strict=True):
            np.testing.assert_array_equal(a.routes, b.routes)
            np.testing.assert_array_equal(a.weights, b.weights)
            np.testing.assert_array_equal(a.scores, b.scores)
            assert a.metrics == b.metrics
        for k, v in ref.stage2.state_dict().items():
            assert torch.equal(v, fresh.stage2.state_dict()[k]), k
        assert fresh.n_updates == ref.n_updates == 7
        np.testing.assert_array_equal(fresh.buffer.labels2(), ref.buffer.labels2())


def test_load_state_dict_checks() -> None:
    s = CARE(seed=1)
    state = s.state_dict()                                # before any batch: no networks yet
    fresh = CARE(seed=1)
    fresh.load_state_dict(state)
    assert fresh.stage1 is None
    with pytest.raises(ValueError, match="prob_gate: saved 0.25 vs current 0.1"):
        CARE(prob_gate=0.1).load_state_dict(state)
    with pytest.raises(ValueError, match="not a CARE state_dict"):
        CARE().load_state_dict({"name": "care"})
    with pytest.raises(ValueError, match="strategy 'random'"):
        CARE().load_state_dict({**state, "name": "random"})


# ============================================================================================== device


def test_cuda_device_is_refused_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device: 'cuda' requested but CUDA is not available"):
        CARE(device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_decisions_and_checkpoints_to_cpu() -> None:
    cpu, gpu = CARE(warmup_steps=1, seed=2), CARE(warmup_steps=1, seed=2, device="cuda")
    for t in range(3):
        batch, labels = make_batch(600 + t, step=t)
        a, b = (s.select(batch, BudgetView.of(8, B)) for s in (cpu, gpu))
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-3, atol=1e-4)
        for s, acq in ((cpu, a), (gpu, b)):
            s.update(batch, acq, labels)
    state = gpu.state_dict()
    assert all(v.device.type == "cpu" for v in state["stage1"].values())
    again = CARE(warmup_steps=1, seed=2, device="cuda")
    again.load_state_dict(state)
    batch, _ = make_batch(700)
    np.testing.assert_array_equal(again.select(batch, BudgetView.of(8, B)).scores,
                                  gpu.select(batch, BudgetView.of(8, B)).scores)


# ----------------------------------------------------------------------------------------------- wiring checks
# Tests that fail when the code is wired wrong even though learning would still "work".


def _built(**kw: object) -> tuple[CARE, RolloutBatch, dict[str, str]]:
    s = CARE(**kw)  # type: ignore[arg-type]
    batch, labels = make_batch(7)
    s.select(batch, BudgetView.of(0, batch.B))  # builds the networks for (H, G)
    return s, batch, labels


def _linears(module: torch.nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, torch.nn.Linear)]


def _bns(module: torch.nn.Module) -> list[int]:
    return [m.num_features for m in module.modules() if isinstance(m, torch.nn.BatchNorm1d)]


def test_network_shapes_follow_the_authors_code() -> None:
    s, _, _ = _built()
    assert s.stage1 is not None and s.stage2 is not None
    d_p = H + 1 + G  # [h_p, valid_ratio, cluster_dist(G)]
    # Stage I
    assert _bns(s.stage1.prompt_proj) == [d_p] and _linears(s.stage1.prompt_proj) == [(d_p, 128)]
    assert _bns(s.stage1.resp_proj) == [H + 1]  # [h_r,j, len_norm_j]
    assert _linears(s.stage1.resp_proj) == [(H + 1, 64), (64, 512)]
    for head in (s.stage1.head, s.stage1.aux_head):
        assert _bns(head) == [640] and _linears(head) == [(640, 256), (256, 2)]
    # Stage II: no length feature, no aux head, G+1 count logits
    assert _bns(s.stage2.prompt_proj) == [d_p] and _linears(s.stage2.prompt_proj) == [(d_p, 128)]
    assert _bns(s.stage2.resp_proj) == [H] and _linears(s.stage2.resp_proj) == [(H, 64), (64, 512)]
    assert _bns(s.stage2.head) == [640] and _linears(s.stage2.head) == [(640, 256), (256, G + 1)]
    assert not hasattr(s.stage2, "aux_head")
    # CARE-mse regresses one value
    m, _, _ = _built(objective="mse")
    assert m.stage2 is not None and _linears(m.stage2.head)[-1] == (256, 1)
    # configured sizes reach the layers
    c, _, _ = _built(prompt_hidden_dim=8, prompt_mid_dim=12, resp_mlp_hidden=5, resp_mlp_out=7)
    assert c.stage1 is not None and c.stage2 is not None
    assert _linears(c.stage1.resp_proj) == [(H + 1, 5), (5, 7)] and _linears(c.stage1.head) == [(15, 12), (12, 2)]
    assert _linears(c.stage2.head) == [(15, 12), (12, G + 1)]


def test_optimiser_settings_reach_adamw_param_groups() -> None:
    s, _, _ = _built(lr=3e-3, weight_decay=0.05, betas=(0.8, 0.95))
    for opt in (s.opt1, s.opt2):
        assert isinstance(opt, torch.optim.AdamW) and len(opt.param_groups) == 1
        g = opt.param_groups[0]
        assert g["lr"] == 3e-3 and g["weight_decay"] == 0.05 and tuple(g["betas"]) == (0.8, 0.95)
    assert sum(p.numel() for p in s.opt1.param_groups[0]["params"]) == sum(p.numel() for p in s.stage1.parameters())
    d, _, _ = _built()
    g = d.opt1.param_groups[0]  # type: ignore[union-attr]
    assert g["lr"] == 1e-4 and g["weight_decay"] == 0.0 and tuple(g["betas"]) == (0.9, 0.999)


def test_gradient_clip_and_three_optimiser_steps_per_update(monkeypatch: pytest.MonkeyPatch) -> None:
    s, batch, labels = _built()
    clips: list[float] = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def spy_clip(params, max_norm, *a, **k):  # type: ignore[no-untyped-def]
        clips.append(float(max_norm))
        return real_clip(params, max_norm, *a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy_clip)
    steps = {"opt1": 0, "opt2": 0}
    assert s.opt1 is not None and s.opt2 is not None
    s.opt1.register_step_post_hook(lambda *_: steps.__setitem__("opt1", steps["opt1"] + 1))
    s.opt2.register_step_post_hook(lambda *_: steps.__setitem__("opt2", steps["opt2"] + 1))
    acq = s.select(batch, BudgetView.of(batch.B, batch.B))
    s.update(batch, acq, labels)
    assert steps == {"opt1": 3, "opt2": 3}  # train_steps = 3 per RL step, for each stage
    assert clips == [1.0] * 6
    assert s.opt1.state[next(iter(s.stage1.parameters()))]["step"] == 3  # type: ignore[union-attr]
    # grad_clip=0 switches clipping off; train_steps is honoured
    t, batch2, labels2 = _built(grad_clip=0.0, train_steps=2)
    clips.clear()
    n = {"k": 0}
    assert t.opt1 is not None
    t.opt1.register_step_post_hook(lambda *_: n.__setitem__("k", n["k"] + 1))
    t.update(batch2, t.select(batch2, BudgetView.of(batch2.B, batch2.B)), labels2)
    assert clips == [] and n["k"] == 2


@pytest.mark.parametrize("balance", [True, False])
def test_class_weights_reach_cross_entropy(monkeypatch: pytest.MonkeyPatch, balance: bool) -> None:
    s, batch, labels = _built(class_balance=balance)
    calls: list[tuple[int, torch.Tensor | None]] = []
    real_ce = torch.nn.functional.cross_entropy

    def spy_ce(inp, target, *a, weight=None, **k):  # type: ignore[no-untyped-def]
        calls.append((int(inp.shape[-1]), None if weight is None else weight.detach().cpu().clone()))
        return real_ce(inp, target, *a, weight=weight, **k)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", spy_ce)
    acq = s.select(batch, BudgetView.of(batch.B, batch.B))
    s.update(batch, acq, labels)  # first update: empty buffer, so every training batch is the current one
    t = label_targets(batch, labels)
    w1 = class_balanced_weights(torch.from_numpy(t.vote_correct.astype(np.int64)), 2, 0.5, 0.25, 4.0)
    w2 = class_balanced_weights(torch.from_numpy(t.count.astype(np.int64)), G + 1, 0.5, 0.25, 4.0)
    assert len(calls) == 9  # 3 steps x (Stage-I main, Stage-I aux, Stage-II)
    main = [w for k, w in calls if k == 2][0::2]
    aux = [w for k, w in calls if k == 2][1::2]
    stage2 = [w for k, w in calls if k == G + 1]
    assert len(main) == len(aux) == len(stage2) == 3
    assert all(w is None for w in aux)  # the aux loss is unweighted
    if balance:
        assert not torch.allclose(w1, torch.ones(2))  # the check below would pass vacuously otherwise
        for w in main:
            assert w is not None and torch.allclose(w, w1)
        for w in stage2:
            assert w is not None and torch.allclose(w, w2)
    else:
        assert all(w is None for w in main + stage2)


def test_metric_helpers_hand_computed() -> None:
    from rlavr.metrics import macro_recall as _macro_recall
    from rlavr.strategies.care import _top_overlap

    pred = np.array([0.9, 0.1, 0.8, 0.3, 0.7, 0.2])
    true = np.array([3.0, 0.0, 0.0, 2.0, 2.0, 1.0])
    # top-2 pred = {0, 2}; true top-2 threshold = 2 -> {0, 3, 4}: 1 of 2
    assert _top_overlap(pred, true, 2) == 0.5
    # top-3 pred = {0, 2, 4}: 0 and 4 are in {true >= 2}
    assert _top_overlap(pred, true, 3) == pytest.approx(2 / 3)
    assert _top_overlap(pred, true, 1) == 1.0
    # ties in the true score all count: true top-1 threshold 1 -> {0, 1, 2}
    assert _top_overlap(np.array([0.1, 0.9, 0.5, 0.0, 0.0, 0.0]), np.array([1.0, 1, 1, 0, 0, 0]), 1) == 1.0
    # macro recall: class 0 -> 1/2, class 1 -> 2/3, class 2 -> 0; mean 7/18
    assert _macro_recall(np.array([0, 1, 1, 1, 0, 0]), np.array([0, 0, 1, 1, 1, 2])) == pytest.approx(7 / 18)
    assert _macro_recall(np.array([4, 4]), np.array([4, 4])) == 1.0


def test_stage1_precision_recall_accuracy_hand_computed() -> None:
    from rlavr.strategies.care import CAREScores

    ok = [True, True, False, True, False, False]
    answers = [["A", "A", "W"] if o else ["W", "W", "A"] for o in ok]
    groups = [PromptGroup(id=f"g{i}", prompt="q", rollouts=tuple(Rollout(text=a, answer=a) for a in ans))
              for i, ans in enumerate(answers)]
    batch = RolloutBatch.from_groups(groups, reference_labels=["A"] * 6)
    s = CARE(prob_gate=0.5)
    p1 = np.array([0.9, 0.2, 0.8, 0.7, 0.1, 0.3])
    scores = CAREScores(p1=p1, p2=None, pred_cag=None, expected_cag=np.zeros(6), features=None)  # type: ignore[arg-type]
    routes = np.array([Route.PSEUDO, Route.PSEUDO, Route.QUERY, Route.DROP, Route.DROP, Route.DROP], dtype=np.int8)
    m = s._label_metrics(batch, scores, routes)
    # predicted reliable = top ceil(0.5 * 6) = 3 by P1 = {0, 2, 3}; true reliable = {0, 1, 3}
    assert m["stage1_precision"] == pytest.approx(2 / 3)
    assert m["stage1_recall"] == pytest.approx(2 / 3)
    assert m["stage1_accuracy"] == pytest.approx(4 / 6)  # pred [1,0,1,1,0,0] vs true [1,1,0,1,0,0]
    assert m["reliable_precision"] == 1.0  # the PSEUDO routes {0, 1} both have a correct vote
    assert m["query_vote_wrong_ratio"] == 1.0  # the query {2} has a wrong vote


def test_reliable_set_is_exactly_ceil_p2_b() -> None:
    """p2 = 0.14, B = 50 -> |R| = 7 (floats give ceil(7.000000000000001) = 8)."""
    s = CARE(prob_gate=0.14, warmup_steps=0)
    batch, _ = make_batch(11, B=50)
    assert (batch.votes.majority_size > 0).all()
    acq = s.select(batch, BudgetView.of(0, 50))
    assert acq.metrics["reliable_size"] == 7 and int((acq.routes == Route.PSEUDO).sum()) == 7
    acq = s.select(batch, BudgetView.of(5, 50))
    assert int((acq.routes == Route.PSEUDO).sum()) == 7 and int((acq.routes == Route.QUERY).sum()) == 5


@pytest.mark.parametrize("chunk", [None, 3, 5, 64])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("N", [2, 37])
@pytest.mark.parametrize("widths", [{}, {"resp_mlp_hidden": 8, "resp_mlp_out": 12}])
def test_inference_paths_are_bit_identical_to_forward(chunk: int | None, activation: str, N: int,
                                                      widths: dict) -> None:
    """The chunked / masked-rows scoring paths give exactly the modules' eval-mode forward (decisions unchanged)."""
    from rlavr.strategies.care import Stage1Net, Stage2Net

    gen = torch.Generator().manual_seed(3)
    G, H = 6, 10
    cfg = CAREConfig(activation=activation, **widths)  # default widths, and narrow ones (no row-subset path)
    s1, s2 = Stage1Net(H, G, cfg), Stage2Net(H, G, cfg, n_out=G + 1)
    for net in (s1, s2):
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm1d):  # non-trivial running statistics
                m.running_mean.normal_(generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
        net.eval()
    px = torch.randn(N, H + 1 + G, generator=gen)
    rh = torch.randn(N, G, H, generator=gen)
    ln = torch.rand(N, G, generator=gen)
    mask = torch.rand(N, G, generator=gen) < 0.4
    mask[0] = False                                           # a group without stage-2 responses
    with torch.no_grad():
        want1, _ = s1(px, torch.cat([rh, ln[:, :, None]], dim=2), with_aux=False)
        want2 = s2(px, rh, mask)
    assert torch.equal(s1.main_logits(px, rh, ln, chunk=chunk), want1)
    assert torch.equal(s2.eval_logits(px, rh, mask, chunk=chunk), want2)
