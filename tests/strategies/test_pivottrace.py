"""Tests of PivotTrace: attention / lexical pivot detection, probe calibration (charged), three-way routing."""

from __future__ import annotations

import math
import pickle
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlavr.budget import Budget, BudgetView
from rlavr.engine import AcquisitionEngine
from rlavr.labels import DatasetOracle
from rlavr.strategies import get_strategy
from rlavr.strategies.pivottrace import (
    PivotDetectorConfig,
    PivotTrace,
    PivotTraceConfig,
    annotate_attention_pivots,
    attention_pivot_scores,
    buy_probe_labels,
    default_pivot_layers,
    detect_pivots,
    lexical_pivot_counts,
    pivot_densities,
    stratified_probe_indices,
)
from rlavr.types import PromptGroup, Rollout, RolloutBatch, Route


def rng_state() -> tuple[torch.Tensor, Any]:
    return torch.get_rng_state().clone(), np.random.get_state()


def assert_rng_unchanged(before: tuple[torch.Tensor, Any]) -> None:
    assert torch.equal(torch.get_rng_state(), before[0])
    now, old = np.random.get_state(), before[1]
    assert now[0] == old[0] and np.array_equal(now[1], old[1]) and now[2:] == old[2:]


# ------------------------------------------------------------------------------------------ pools

# acc per prompt (G = 2): prompt i has 10 - i "wait" markers in 100 tokens -> U_i = 10 * (10 - i) per 1k
ACC = [0.0, 0.0, 0.5, 0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0]
ROLL_ANSWERS = {0.0: ("w", "x"), 0.5: ("r", "w"), 1.0: ("r", "r")}


def lexical_pool(acc: list[float] = ACC, prefix: str = "q", markers: list[int] | None = None) -> RolloutBatch:
    groups = []
    for i, a in enumerate(acc):
        k = (10 - i) if markers is None else markers[i]
        text = " ".join(["wait"] * k + ["step"] * (20 - k))
        rolls = tuple(Rollout(text=text, answer=ans, length=100) for ans in ROLL_ANSWERS[a])
        groups.append(PromptGroup(id=f"{prefix}{i}", prompt=f"question {i}", rollouts=rolls))
    return RolloutBatch.from_groups(groups)


def fitted(**kw: Any) -> tuple[PivotTrace, RolloutBatch, dict[str, float]]:
    batch = lexical_pool()
    s = PivotTrace(probe_window=2, detector="lexical", **kw)
    out = s.fit_pool(batch, {f"q{i}": "r" for i in range(10)})
    return s, batch, out


# ------------------------------------------------------------------------------------------ detection


def test_detect_pivots_exact_rule() -> None:
    cfg = PivotDetectorConfig(smooth=1, baseline=20, min_history=16, kappa=2.5, min_gap=16, min_sigma=1e-3)
    d = np.zeros(26)
    d[20] = 1.0
    assert detect_pivots(d, cfg).tolist() == [20]
    early = np.zeros(26)
    early[5] = 1.0  # fewer than min_history preceding tokens: no baseline, no pivot
    assert detect_pivots(early, cfg).tolist() == []
    assert detect_pivots(np.zeros(10), cfg).tolist() == []
    plateau = np.zeros(30)
    plateau[20:23] = 1.0  # a plateau peaks once, at its last token (strict fall afterwards)
    assert detect_pivots(plateau, cfg).tolist() == [22]


def test_detect_pivots_on_noisy_signal_and_min_gap() -> None:
    rng = np.random.default_rng(0)
    d = 0.2 + rng.normal(0, 0.005, 400)
    d[150:153] += 0.3
    d[300:303] += 0.3
    piv = detect_pivots(d, PivotDetectorConfig(smooth=4, kappa=5.0))  # kappa=2.5 also flags noise peaks
    assert len(piv) == 2 and 150 <= piv[0] < 160 and 300 <= piv[1] < 310
    close = 0.2 + np.zeros(300)
    close[[200, 205]] = 0.9
    assert len(detect_pivots(close, PivotDetectorConfig(smooth=1, min_gap=16))) == 1
    assert detect_pivots(close, PivotDetectorConfig(smooth=1, min_gap=4)).tolist() == [200, 205]
    with pytest.raises(ValueError, match="NaN"):
        detect_pivots(np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="1-D"):
        detect_pivots(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="min_history"):
        PivotDetectorConfig(baseline=8, min_history=16)


def test_lexical_counts_on_word_boundaries() -> None:
    text = "Wait, but however... Actually hmm. Let me   check. butter awaits wait's Alternatively"
    assert lexical_pivot_counts([text]).tolist() == [7]
    assert lexical_pivot_counts(["nothing to see", "BUT"]).tolist() == [0, 1]
    assert lexical_pivot_counts(["x y z"], markers=("y",)).tolist() == [1]


# characters that stress the joined scan: markers' letters in both cases, re's special case folds (long s, Kelvin
# sign, dotted / dotless i), apostrophes, the join separator itself, whitespace, hyphens, word characters
_TRICKY = list("waitbuhmoevrlycksWAITBUHMS") + ["\u017f", "\u212a", "\u0130", "\u0131", "'", "\x00", " ", "\n",
                                                  "\t", "-", "_", "3", "\u00e9", ".", ","]


def _per_text_counts(texts: list[str], markers: tuple[str, ...]) -> list[int]:
    """The definition: the case-insensitive marker regex run on each text alone."""
    from rlavr.strategies.pivottrace import _marker_regex

    rx = _marker_regex(markers)
    return [len(rx.findall(t)) for t in texts]


@settings(max_examples=150, deadline=None)
@given(texts=st.lists(st.text(alphabet=st.sampled_from(_TRICKY), max_size=30) | st.sampled_from(
           ["wait", "but", "let me", "check", "let me\ncheck", "butter", "x'but", "WAIT'", "Hmm", "\u017fo", "let me double-check"]),
           max_size=40),
       markers=st.sampled_from([None, ("wait", "but"), ("s", "k", "i"), ("let me check", "-x", "'tis", "é"),
                                ("\u017f", "\u212a\u212a"), ("(x", "a.b", "  ", "")]))
def test_joined_lexical_scan_counts_exactly_like_one_scan_per_text(texts: list[str], markers: Any) -> None:
    from rlavr.strategies.pivottrace import DEFAULT_LEXICAL_MARKERS

    mk = DEFAULT_LEXICAL_MARKERS if markers is None else markers
    assert lexical_pivot_counts(texts, mk).tolist() == _per_text_counts(texts, mk)


def test_joined_lexical_scan_crosses_its_chunks_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    import rlavr.strategies.pivottrace as pt

    texts = ["wait", "", "but but", "let me", "check", "hmm'", "x"] * 5
    monkeypatch.setattr(pt, "_JOIN_TEXTS", 3)  # texts scanned 3 per joined string: several chunks
    assert lexical_pivot_counts(texts).tolist() == _per_text_counts(texts, pt.DEFAULT_LEXICAL_MARKERS)
    assert lexical_pivot_counts(["a\x00b"], markers=("a\x00b",)).tolist() == [1]  # the per-text path


def test_densities_of_some_rows_equal_a_batch_of_those_groups() -> None:
    rng = np.random.default_rng(3)
    words = ["wait", "but", "the", "so", "Actually", "x"]
    groups = [PromptGroup(id=f"g{i}", prompt=f"q{i}", rollouts=tuple(
        Rollout(text=" ".join(rng.choice(words, size=rng.integers(0, 12))), answer=str(rng.integers(0, 3)),
                length=int(rng.integers(0, 3)) * int(rng.integers(1, 50))) for _ in range(4))) for i in range(12)]
    batch = RolloutBatch.from_groups(groups)
    rows = np.array([7, 2, 11, 0])
    sub = RolloutBatch.from_groups([groups[i] for i in rows])
    for det in ("auto", "lexical"):
        got, used = pivot_densities(batch, det, rows=rows)
        want, used_sub = pivot_densities(sub, det)
        np.testing.assert_array_equal(got, want)
        assert used == used_sub == "lexical"
    full, _ = pivot_densities(batch, "lexical")
    np.testing.assert_array_equal(full[rows], pivot_densities(batch, "lexical", rows=rows)[0])
    # zero-length rollouts fall back to the word count (at least 1)
    assert (batch.lengths == 0).any()


class _UniformAttention(torch.nn.Module):
    """Fake LM: every query attends uniformly to all keys j <= t."""

    def __init__(self, heads: int = 2) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.heads = heads

    def forward(self, input_ids: torch.Tensor, output_attentions: bool = False, use_cache: bool = False) -> Any:
        T = input_ids.shape[1]
        a = torch.tril(torch.ones(T, T))
        a = a / a.sum(-1, keepdim=True)
        return SimpleNamespace(attentions=(a.expand(1, self.heads, T, T),))


def test_attention_scores_hand_computed() -> None:
    # W = 2, uniform attention: d_t = mean_{j<=t} min(t-j, 2)/2 -> [0, 1/4, 1/2, 5/8]
    m = _UniformAttention()
    np.testing.assert_allclose(attention_pivot_scores(m, [1, 2, 3, 4], layers=[0], window=2),
                               [0, 0.25, 0.5, 0.625], atol=1e-7)
    np.testing.assert_allclose(attention_pivot_scores(m, torch.tensor([[1, 2, 3, 4]]), response_start=2,
                                                      layers=[0], window=2), [0.5, 0.625], atol=1e-7)
    with pytest.raises(ValueError, match="response_start"):
        attention_pivot_scores(m, [1, 2], response_start=2)
    with pytest.raises(ValueError, match="layers"):
        attention_pivot_scores(m, [1, 2], layers=[3])
    with pytest.raises(ValueError, match="integer token ids"):
        attention_pivot_scores(m, np.array([0.5, 1.5]))
    assert default_pivot_layers(2) == (1,) and default_pivot_layers(24) == (12, 16, 20)


@pytest.fixture(scope="module")
def tiny_qwen3() -> Any:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = transformers.Qwen3ForCausalLM(cfg)
    return model


def test_attention_scores_on_tiny_qwen3(tiny_qwen3: Any) -> None:
    model = tiny_qwen3
    model.set_attn_implementation("sdpa")
    ids = torch.tensor([(7 * k + 3) % 64 for k in range(24)])
    with pytest.raises(ValueError, match="eager"):
        attention_pivot_scores(model, ids)
    model.set_attn_implementation("eager")
    model.train()
    before = rng_state()
    d = attention_pivot_scores(model, ids, response_start=6, window=8)
    assert_rng_unchanged(before)
    assert model.training  # mode restored
    assert d.shape == (18,) and d.dtype == np.float32 and np.all((d >= 0) & (d <= 1))
    # independent reference from the raw attention maps of the default layer (1 of 2)
    model.eval()
    with torch.no_grad():
        att = model(ids[None], output_attentions=True).attentions[1][0]  # (H, T, T)
    pos = torch.arange(24)
    dist = (pos[:, None] - pos[None, :]).clamp(0, 8) / 8
    ref = (att * dist).sum(-1).mean(0)[6:]
    np.testing.assert_allclose(d, ref.numpy(), atol=1e-6)
    assert d[0] > 0  # a response token attends to the prompt


def test_annotate_and_attention_detector_reported(tiny_qwen3: Any) -> None:
    model = tiny_qwen3
    model.set_attn_implementation("eager")
    cfg = PivotDetectorConfig(smooth=1, baseline=8, min_history=4, min_gap=2, window=8)
    groups = []
    for i in range(2):
        rolls, ids, starts = [], [], []
        for j in range(2):
            rolls.append(Rollout(text="wait wait", answer=str(j), length=20))
            ids.append(torch.tensor([(5 * k + i + 3 * j) % 64 for k in range(26)]))
            starts.append(6)
        done = annotate_attention_pivots(model, rolls, ids, starts, cfg)
        for r in done:
            assert set(r.attention) >= {"pivot_scores", "pivot_count", "pivot_density", "pivot_detector"}
            assert r.attention["pivot_density"] == pytest.approx(1000 * r.attention["pivot_count"] / 20)
        groups.append(PromptGroup(id=f"a{i}", prompt="p", rollouts=tuple(done)))
    batch = RolloutBatch.from_groups(groups)
    dens, used = pivot_densities(batch, "auto", cfg)
    assert used == "attention"
    s = PivotTrace(calibration="fixed", pivots=cfg)
    acq = s.select(batch, BudgetView.of(1, 2))
    assert s.last_detector == "attention" and acq.metrics["detector_attention"] == 1.0
    np.testing.assert_allclose(acq.scores, dens.mean(axis=1))
    lex = PivotTrace(calibration="fixed", detector="lexical")
    acq = lex.select(batch, BudgetView.of(1, 2))
    assert lex.last_detector == "lexical" and acq.metrics["detector_attention"] == 0.0
    with pytest.raises(ValueError, match="equal lengths"):
        annotate_attention_pivots(model, [Rollout()], [], [])


def test_missing_attention_signal_is_a_clear_error() -> None:
    batch = lexical_pool()
    with pytest.raises(ValueError, match="annotate_attention_pivots"):
        pivot_densities(batch, "attention")
    s = PivotTrace(detector="attention", calibration="fixed")
    assert "attentions" in s.requires and "attentions" not in PivotTrace.requires
    with pytest.raises(ValueError, match="no Rollout.attention"):
        s.select(batch, BudgetView.of(1, 10))
    # auto falls back to the lexical proxy and says so
    dens, used = pivot_densities(batch, "auto")
    assert used == "lexical"
    np.testing.assert_allclose(dens[:, 0], [10.0 * (10 - i) for i in range(10)])
    bad = RolloutBatch.from_groups([PromptGroup(id="b", prompt="p", rollouts=(
        Rollout(answer="1", attention={"pivot_density": -1.0}),))])
    with pytest.raises(ValueError, match="pivot_density"):
        pivot_densities(bad, "attention")


def attention_pool(acc: list[float] = ACC, prefix: str = "q", density: list[float] | None = None) -> RolloutBatch:
    """Like lexical_pool, but every rollout also carries an attention ``pivot_density`` (about 10x lower)."""
    groups = []
    for i, g in enumerate(lexical_pool(acc, prefix).groups):
        d = (10 - i) if density is None else density[i]
        rolls = tuple(Rollout(text=r.text, answer=r.answer, length=r.length,
                              attention={"pivot_density": float(d), "pivot_detector": "attention"})
                      for r in g.rollouts)
        groups.append(PromptGroup(id=g.id, prompt=g.prompt, rollouts=rolls))
    return RolloutBatch.from_groups(groups)


def test_detector_is_pinned_to_the_fitted_one() -> None:
    """Thresholds fitted on attention densities are never applied to lexical ones (and vice versa)."""
    s = PivotTrace(probe_window=2)  # detector="auto"
    out = s.fit_pool(attention_pool(), {f"q{i}": "r" for i in range(10)})
    assert s.fit_detector == "attention" and s.detector == "attention"
    assert out["fit_detector_attention"] == 1.0 and out["detector_attention"] == 1.0
    assert s.u_ann == 6.0  # U_4 on the attention scale (lexical scale would be 60)
    # an unseen batch without attentions: old code silently fell back to lexical (U = 70 > u_ann = 6 -> annotate)
    unseen = lexical_pool([0.0], prefix="n", markers=[7])
    with pytest.raises(ValueError, match="fitted with the 'attention' detector"):
        s.select(unseen, BudgetView.of(1, 1))
    # with attention signals, unseen prompts are routed on the attention scale
    acq = s.select(attention_pool([0.0, 0.0], prefix="n", density=[7.0, 3.0]), BudgetView.of(2, 2))
    assert acq.routes.tolist() == [Route.QUERY, Route.DROP] and acq.metrics["detector_attention"] == 1.0
    assert acq.metrics["unseen_prompts"] == 2.0
    # pool prompts keep their fitted route and U: a training batch without attentions (vLLM) is fine
    pool_lex = lexical_pool()
    acq = s.select(pool_lex, BudgetView.of(2, 10))
    assert acq.metrics["detector_attention"] == 1.0 and acq.metrics["unseen_prompts"] == 0.0
    np.testing.assert_allclose(acq.scores, [10.0 - i for i in range(10)])
    # the pin survives state_dict / load_state_dict
    t = PivotTrace(probe_window=2)
    t.load_state_dict(s.state_dict())
    assert t.detector == "attention"
    with pytest.raises(ValueError, match="fitted with the 'attention' detector"):
        t.select(unseen, BudgetView.of(1, 1))
    # fitted on lexical densities: a batch that HAS attentions is still scored lexically (auto would switch)
    lex = PivotTrace(probe_window=2)
    lex.fit_pool(lexical_pool(), {f"q{i}": "r" for i in range(10)})
    assert lex.fit_detector == "lexical"
    acq = lex.select(attention_pool([0.0], prefix="n"), BudgetView.of(1, 1))
    assert acq.metrics["detector_attention"] == 0.0 and acq.scores[0] == 100.0  # lexical U, not 10
    # a refit uses config.detector again and re-pins
    lex.fit_pool(attention_pool(), {f"q{i}": "r" for i in range(10)})
    assert lex.fit_detector == "attention" and lex.u_ann == 6.0


# ------------------------------------------------------------------------------------------ calibration


def test_fit_pool_thresholds_hand_computed() -> None:
    # probes in rank order have acc [0,0,.5,0,.5,1,1,1,1,1]; windows of 2: [0,.25,.25,.25,.75,1,1,1,1]
    # first window >= a_lo=.5 starts at probe 4 -> u_ann = U_4 = 60 (annotate U > 60: prompts 0-3);
    # windows stay >= a_hi=.95 from probe 5 -> u_skip = U_5 = 50 (drop U <= 50: prompts 5-9); prompt 4 pseudo.
    s, batch, out = fitted()
    assert out["u_ann"] == pytest.approx(60.0) and out["u_skip"] == pytest.approx(50.0)
    assert (out["annotate_fraction"], out["pseudo_fraction"], out["drop_fraction"]) == (0.4, 0.1, 0.5)
    assert out["probe_accuracy_mean"] == pytest.approx(np.mean(ACC))
    assert out["probe_spearman"] < -0.8 and out["probe_pbc"] < 0  # calibrated: more pivots, less accuracy
    assert out["detector_attention"] == 0.0
    assert [s.plan[f"q{i}"] for i in range(10)] == [0, 0, 0, 0, 1, 2, 2, 2, 2, 2]


def test_fit_pool_degenerate_curves() -> None:
    never = PivotTrace(probe_window=2, detector="lexical")
    out = never.fit_pool(lexical_pool([0.0] * 10), {f"q{i}": "r" for i in range(10)})
    assert out["u_ann"] == -math.inf and out["annotate_fraction"] == 1.0  # pseudo-labels never trustworthy
    always = PivotTrace(probe_window=2, detector="lexical")
    out = always.fit_pool(lexical_pool([1.0] * 10), {f"q{i}": "r" for i in range(10)})
    assert out["u_skip"] == pytest.approx(100.0) and out["drop_fraction"] == 1.0  # everything mastered
    with pytest.raises(ValueError, match="probe_window"):
        PivotTrace(detector="lexical").fit_pool(lexical_pool(), {"q0": "r"})


def test_stratified_probes_cover_every_rank_stratum() -> None:
    rng = np.random.default_rng(0)
    order = rng.permutation(100)
    picked = stratified_probe_indices(order, 10, rng)
    rank = np.empty(100, dtype=int)
    rank[order] = np.arange(100)
    assert sorted((rank[picked] // 10).tolist()) == list(range(10))
    with pytest.raises(ValueError, match="m must lie"):
        stratified_probe_indices(order, 0, rng)
    s = PivotTrace()
    assert s.n_probes(100) == 32 and s.n_probes(2000) == 60 and s.n_probes(10) == 10


def test_probe_purchase_is_charged_through_the_ledger() -> None:
    batch = lexical_pool()
    oracle = DatasetOracle({f"q{i}": "r" for i in range(10)})
    engine = AcquisitionEngine("pivottrace", oracle, budget=Budget(total=5))
    ids = [f"q{i}" for i in range(8)]
    res = buy_probe_labels(engine, batch, ids)
    assert len(res.bought) == 5 and len(res.refused) == 3
    assert engine.spent == 5 and engine.ledger.n_bought == 5 and oracle.labels_served == 5
    again = buy_probe_labels(engine, batch, ids[:5])
    assert again.bought == [] and sorted(again.reused) == sorted(ids[:5]) and engine.spent == 5
    ratio = AcquisitionEngine("pivottrace", oracle, budget=0.3)
    assert len(buy_probe_labels(ratio, batch, ids).bought) == 3  # 30% of the 10-prompt pool
    with pytest.raises(ValueError, match="not in the pool"):
        buy_probe_labels(engine, batch, ["zz"])


def test_fit_pool_with_engine_then_probes_are_reused_free() -> None:
    batch = lexical_pool()
    oracle = DatasetOracle({f"q{i}": "r" for i in range(10)})
    s = PivotTrace(detector="lexical", min_probes=8, probe_window=2, seed=3)
    engine = AcquisitionEngine(s, oracle)
    before = rng_state()
    out = engine.fit_pool(batch)
    assert_rng_unchanged(before)
    assert out["pool_labels_bought"] == 8 and out["n_probes"] == 8 and engine.spent == 8
    assert oracle.labels_served == 8
    probes = {pid for pid in batch.ids if pid in engine.ledger}
    assert len(probes) == 8
    res = engine.decide(batch, step=0)
    assert set(res.reused) == probes  # every probe label is training data, reused for free
    assert set(res.bought).isdisjoint(probes) and engine.spent == 8 + len(res.bought)
    assert all(res.routes[batch.ids.index(p)] == Route.QUERY for p in probes)


# ------------------------------------------------------------------------------------------ routing


def test_three_way_routing_after_calibration() -> None:
    s, batch, _ = fitted()
    before = rng_state()
    acq = s.select(batch, BudgetView.of(2, 10))
    assert_rng_unchanged(before)
    R = Route
    assert acq.routes.tolist() == [R.QUERY, R.QUERY, R.PSEUDO, R.PSEUDO, R.PSEUDO] + [R.DROP] * 5
    np.testing.assert_allclose(acq.weights[:5], [1, 1, 0.5, 0.5, 1.0])  # overflow at 0.5, middle at 1
    np.testing.assert_allclose(acq.scores, [10.0 * (10 - i) for i in range(10)])
    assert acq.metrics["annotate_overflow"] == 2 and acq.metrics["detector_attention"] == 0.0
    # owned labels (probes) are queried for free even in the drop region
    known = np.zeros(10, bool)
    known[9] = True
    acq = s.select(batch, BudgetView(remaining=0, known=known))
    assert acq.routes[9] == Route.QUERY and acq.query.sum() == 1
    # -mask: pseudo routes are dropped
    m, _, _ = fitted(mask=True)
    acq = m.select(batch, BudgetView.of(2, 10))
    assert acq.routes.tolist() == [R.QUERY, R.QUERY] + [R.DROP] * 8


def test_unseen_prompts_use_thresholds_and_fixed_mode() -> None:
    s, _, _ = fitted()
    new = lexical_pool([0.0, 0.0, 0.0], prefix="n", markers=[7, 6, 5])  # U = 70, 60, 50
    acq = s.select(new, BudgetView.of(3, 3))
    assert acq.routes.tolist() == [Route.QUERY, Route.PSEUDO, Route.DROP]
    fixed = PivotTrace(calibration="fixed", detector="lexical")
    acq = fixed.select(lexical_pool(), BudgetView.of(10, 10))
    # ceil(0.293 * 10) = 3 annotated, round(0.579 * 10) = 6 kept
    assert acq.routes.tolist() == [Route.QUERY] * 3 + [Route.PSEUDO] * 3 + [Route.DROP] * 4
    with pytest.raises(ValueError, match="fit_pool"):
        PivotTrace(detector="lexical").select(lexical_pool(), BudgetView.of(1, 10))


def test_config_validation_and_registry() -> None:
    with pytest.raises(ValueError, match="a_lo"):
        PivotTraceConfig(a_lo=0.9, a_hi=0.5)
    with pytest.raises(ValueError, match="annotate_fraction"):
        PivotTrace(annotate_fraction=0.7, train_fraction=0.5)
    with pytest.raises(ValueError, match="detector"):
        PivotTrace(detector="magic")
    assert isinstance(get_strategy("pivot-trace-mask"), PivotTrace)


def test_state_dict_round_trip() -> None:
    s, batch, _ = fitted()
    state = pickle.loads(pickle.dumps(s.state_dict()))
    t = PivotTrace(probe_window=2, detector="lexical", seed=99)
    t.load_state_dict(state)
    assert t.fitted and t.plan == s.plan and t.u_ann == s.u_ann and t.u_skip == s.u_skip
    view = BudgetView.of(2, 10)
    a, b = s.select(batch, view), t.select(batch, view)
    assert np.array_equal(a.routes, b.routes) and np.array_equal(a.weights, b.weights)
    assert s.probe_ids(batch) == t.probe_ids(batch)  # same RNG stream from the state


def test_auto_fallback_to_the_lexical_proxy_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    """detector='auto' without attention signals (the TRL trainer, vLLM) falls back to the keyword proxy: one
    logging WARNING per instance, a counter, and the metric detector_fallback; explicit 'lexical' is silent."""
    batch = lexical_pool()
    s = PivotTrace(calibration="fixed")  # detector="auto"
    with caplog.at_level("WARNING", logger="rlavr.strategies.pivottrace"):
        acq = s.select(batch, BudgetView.of(2, batch.B))
        acq2 = s.select(batch, BudgetView.of(2, batch.B))
    warned = [r for r in caplog.records if "fell back to the lexical proxy" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelname == "WARNING" and warned[0].name == "rlavr.strategies.pivottrace"
    assert s.fallback_count == 2
    assert acq.metrics["detector_fallback"] == 1.0 and acq2.metrics["detector_fallback"] == 1.0
    caplog.clear()
    with caplog.at_level("WARNING", logger="rlavr.strategies.pivottrace"):
        lex = PivotTrace(calibration="fixed", detector="lexical")
        assert lex.select(batch, BudgetView.of(2, batch.B)).metrics["detector_fallback"] == 0.0
        att = PivotTrace(calibration="fixed")
        assert att.select(attention_pool(), BudgetView.of(2, batch.B)).metrics["detector_fallback"] == 0.0
    assert not caplog.records and lex.fallback_count == 0 and att.fallback_count == 0
    # fit_pool reports it too
    out = PivotTrace(probe_window=2).fit_pool(batch, {f"q{i}": "r" for i in range(10)})
    assert out["detector_fallback"] == 1.0
