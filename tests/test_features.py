"""Tests for rlavr.features: rollout-derived features and CARE's label targets."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlavr.advantages import classwise_cag_table, oracle_cag
from rlavr.features import (
    correct_nonmajority_count,
    label_targets,
    require_signals,
    rollout_features,
)
from rlavr.types import PromptGroup, Rollout, RolloutBatch

H = 6


def _batch(answer_rows: list[list[str | None]], lengths: list[list[int]] | None = None, hidden: bool = True,
           labels: list[str | None] | None = None, seed: int = 0) -> RolloutBatch:
    rng = np.random.default_rng(seed)
    groups = []
    for i, answers in enumerate(answer_rows):
        rolls = tuple(Rollout(text=str(a), answer=a, length=(lengths[i][j] if lengths else 0),
                              hidden=rng.normal(size=H).astype(np.float32) if hidden else None)
                      for j, a in enumerate(answers))
        groups.append(PromptGroup(id=f"g{i}", prompt=f"q{i}", rollouts=rolls,
                                  prompt_hidden=rng.normal(size=H).astype(np.float32) if hidden else None))
    return RolloutBatch.from_groups(groups, reference_labels=labels)


ROWS = [
    ["a", "b", "a", None, "c", "a", "b", None],   # x=3, clusters a3 b2 c1
    ["z"] * 8,                                      # unanimous
    [None] * 8,                                     # no valid answer
    ["p", "q", "r", "s", "t", "u", "v", "w"],       # all singletons, x=1 (earliest wins)
]


def test_features_by_hand() -> None:
    lengths = [[0, 2000, 4000, 8000, 1, 10, 100, 3999]] + [[4] * 8] * 3
    f = rollout_features(_batch(ROWS, lengths))
    assert (f.B, f.G, f.H) == (4, 8, H)
    np.testing.assert_allclose(f.valid_ratio, [6 / 8, 1.0, 0.0, 1.0])
    np.testing.assert_allclose(f.cluster_dist[0], np.array([3, 2, 1, 0, 0, 0, 0, 0]) / 8)
    np.testing.assert_allclose(f.cluster_dist[1], np.array([8, 0, 0, 0, 0, 0, 0, 0]) / 8)
    assert not f.cluster_dist[2].any()
    np.testing.assert_allclose(f.cluster_dist[3], np.full(8, 1 / 8))
    np.testing.assert_allclose(f.length_norm[0], np.clip(np.array(lengths[0]) / 4000, 0, 1), rtol=1e-6)
    assert f.length_norm.max() <= 1.0 and f.length_norm.dtype == np.float32
    np.testing.assert_array_equal(f.majority_size, [3, 8, 0, 1])
    np.testing.assert_array_equal(f.stage2_mask[0], [False, True, False, False, True, False, True, False])
    assert not f.stage2_mask[1].any() and not f.stage2_mask[2].any()
    np.testing.assert_array_equal(f.stage2_mask[3], [False] + [True] * 7)
    # admissible counts: 0 and every non-majority cluster size (here b=2, c=1)
    np.testing.assert_array_equal(np.flatnonzero(f.admissible[0]), [0, 1, 2])
    np.testing.assert_array_equal(np.flatnonzero(f.admissible[1]), [0])
    np.testing.assert_array_equal(np.flatnonzero(f.admissible[2]), [0])
    np.testing.assert_array_equal(np.flatnonzero(f.admissible[3]), [0, 1])
    table = classwise_cag_table(8)
    np.testing.assert_allclose(f.class_costs[0, :3], table[3, :3])
    np.testing.assert_allclose(f.class_costs[0, :3], [2.828, 4.548, 4.812], atol=1e-3)
    assert not f.class_costs[0, 3:].any()
    assert not f.class_costs[1].any() and not f.class_costs[2].any()   # unanimous / no valid: cost 0
    np.testing.assert_allclose(f.max_cost, [table[3, 2], 0, 0, table[1, 1]])
    # composite inputs
    assert f.scalar_features.shape == (4, 17) and f.prompt_input.shape == (4, H + 9)
    np.testing.assert_allclose(f.scalar_features[:, 0], f.valid_ratio)
    np.testing.assert_allclose(f.prompt_input[:, :H], f.prompt_hidden)
    sub = f.take([3, 0])
    np.testing.assert_array_equal(sub.majority_size, [1, 3])
    np.testing.assert_array_equal(sub.response_hidden, f.response_hidden[[3, 0]])


def test_custom_length_norm_and_errors() -> None:
    b = _batch([["a"] * 4], [[10, 20, 30, 40]])
    np.testing.assert_allclose(rollout_features(b, length_norm=20).length_norm[0], [0.5, 1, 1, 1])
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="length_norm"):
            rollout_features(b, length_norm=bad)


def test_missing_hidden_states_give_a_clear_error() -> None:
    b = _batch(ROWS, hidden=False)
    f = rollout_features(b, hidden=False)          # fine without hidden states
    assert f.prompt_hidden is None and f.H is None
    with pytest.raises(ValueError, match="hidden_states.*prompt_hidden"):
        rollout_features(b)
    with pytest.raises(ValueError, match="prompt_input"):
        _ = f.prompt_input
    with pytest.raises(ValueError, match="my-rule requires 'hidden_states'"):
        require_signals(b, {"answers", "hidden_states"}, "my-rule")
    with pytest.raises(ValueError, match="logprobs"):
        require_signals(b, {"logprobs"}, "my-rule")
    with pytest.raises(ValueError, match="labels"):
        require_signals(b, {"labels"}, "my-rule")
    require_signals(b, {"answers"}, "my-rule")


def test_unequal_hidden_sizes_are_rejected() -> None:
    rolls = (Rollout(answer="a", hidden=np.zeros(4, np.float32)), Rollout(answer="a", hidden=np.zeros(5, np.float32)))
    b = RolloutBatch.from_groups([PromptGroup(id="x", prompt="q", rollouts=rolls, prompt_hidden=np.zeros(4))])
    with pytest.raises(ValueError, match="hidden sizes differ"):
        rollout_features(b)


def test_label_targets_by_hand() -> None:
    rows = [
        ["a", "b", "a", None, "c", "a", "b", None],   # label b: vote wrong, count 2
        ["a", "b", "a", None, "c", "a", "b", None],   # label a: vote right, count 0
        ["z"] * 8,                                    # label q: vote wrong, nobody right, count 0
        [None] * 8,                                   # label a: no vote
    ]
    b = _batch(rows)
    t = label_targets(b, {"g0": "b", "g1": "a", "g2": "q", "g3": "a", "other": "x"})
    np.testing.assert_array_equal(t.rows, [0, 1, 2, 3])
    np.testing.assert_array_equal(t.vote_correct, [False, True, False, False])
    np.testing.assert_array_equal(t.count, [2, 0, 0, 0])
    np.testing.assert_array_equal(t.resp_correct[0], [0, 1, 0, 0, 0, 0, 1, 0])
    np.testing.assert_allclose(t.true_cag[0], classwise_cag_table(8)[3, 2])   # CAG(x=3, y=2)
    np.testing.assert_allclose(t.true_cag[1:], 0.0)
    # partial labels and aligned sequences
    t2 = label_targets(b, [None, "a", None, None])
    np.testing.assert_array_equal(t2.rows, [1])
    assert len(label_targets(b, {})) == 0
    # pre-graded correctness (shared with the engine) gives the same targets
    aligned = ["b", "a", "q", "a"]
    t3 = label_targets(b, aligned, correct=b.correctness(aligned))
    np.testing.assert_array_equal(t3.count, t.count)
    np.testing.assert_allclose(t3.true_cag, t.true_cag)
    with pytest.raises(ValueError, match="correct: expected shape"):
        label_targets(b, aligned, correct=np.zeros((4, 3), bool))
    with pytest.raises(ValueError, match="expected 4 labels"):
        label_targets(b, ["a"])
    with pytest.raises(ValueError, match="expected str"):
        label_targets(b, {"g0": 3})  # type: ignore[dict-item]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from(["a", "b", "c", "d", None]), min_size=6, max_size=6), min_size=1,
                max_size=6),
       st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=6, max_size=6))
def test_label_targets_match_a_brute_force_reference(rows: list[list[str | None]], labels: list[str]) -> None:
    b = _batch(rows)
    labels = labels[: len(rows)]
    t = label_targets(b, labels)
    f = rollout_features(b)
    bl = b.with_reference_labels(labels)
    np.testing.assert_array_equal(t.vote_correct, bl.majority_correct)
    np.testing.assert_allclose(t.true_cag, oracle_cag(bl.reference_correct, b.votes.in_majority, b.valid))
    for i, answers in enumerate(rows):
        maj = b.votes.majority_answer[i]
        if maj is not None and maj == labels[i]:
            expect = 0
        else:
            expect = sum(1 for a in answers if a is not None and a == labels[i] and a != maj)
        assert t.count[i] == expect
        # exact-match answers: at most one cluster is correct, so the label is admissible
        assert f.admissible[i, t.count[i]]
        # the true CAG of a wrong vote is the class-wise CAG of (x, count)
        if not t.vote_correct[i]:
            assert t.true_cag[i] == pytest.approx(classwise_cag_table(6)[f.majority_size[i], t.count[i]])


def test_correct_nonmajority_count_shapes_and_clipping() -> None:
    ids = np.array([[0, 0, 1, 2]])
    sizes = np.array([[2, 1, 1, 0]])
    # two non-majority clusters "correct" (non-transitive grading): sizes summed
    out = correct_nonmajority_count(np.array([[False, False, True, True]]), ids, sizes, np.array([0]),
                                    np.array([False]))
    np.testing.assert_array_equal(out, [2])
    with pytest.raises(ValueError, match="correct: shape"):
        correct_nonmajority_count(np.zeros((1, 3), bool), ids, sizes, np.array([0]), np.array([False]))


# ------------------------------------------------------------------ the old (pre issue 13) builder, test-only reference


def _reference_rollout_features(batch: RolloutBatch, length_norm: float = 4000.0) -> dict[str, np.ndarray]:
    """The feature builder as it was before the single-stack hidden-state path: per-rollout checks and one
    ``np.stack`` per group. Kept here only to pin the fast builder to it."""
    from rlavr.advantages import admissible_counts, class_costs

    for g in batch.groups:
        assert g.prompt_hidden is not None and all(r.hidden is not None for r in g.rollouts)
    votes, G, valid = batch.votes, batch.G, batch.valid
    x = np.asarray(votes.majority_size, dtype=np.int64)
    adm = admissible_counts(x, votes.cluster_sizes, votes.majority)
    lengths = np.array([[r.length for r in g.rollouts] for g in batch.groups], dtype=np.int64)
    return {
        "valid": valid, "valid_ratio": (valid.sum(axis=1) / G).astype(np.float32),
        "cluster_dist": votes.sorted_cluster_dist.astype(np.float32),
        "length_norm": np.clip(lengths.astype(np.float64) / float(length_norm), 0.0, 1.0).astype(np.float32),
        "majority_size": x, "in_majority": votes.in_majority, "stage2_mask": valid & ~votes.in_majority,
        "admissible": adm, "class_costs": class_costs(x, adm),
        "prompt_hidden": np.stack([g.prompt_hidden for g in batch.groups]).astype(np.float32),
        "response_hidden": np.stack([np.stack([r.hidden for r in g.rollouts]) for g in batch.groups]
                                    ).astype(np.float32),
    }


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), B=st.integers(1, 12), G=st.integers(1, 9), h=st.integers(1, 5),
       n_vals=st.integers(1, 4))
def test_fast_feature_builder_equals_the_reference(seed: int, B: int, G: int, h: int, n_vals: int) -> None:
    rng = np.random.default_rng(seed)
    vals = [None, *(str(v) for v in range(n_vals))]
    groups = [PromptGroup(id=f"g{i}", prompt=f"q{i}", prompt_hidden=rng.normal(size=h).astype(np.float32),
                          rollouts=tuple(Rollout(answer=vals[int(rng.integers(len(vals)))],
                                                 length=int(rng.integers(0, 9000)),
                                                 hidden=rng.normal(size=h).astype(np.float32)) for _ in range(G)))
              for i in range(B)]
    batch = RolloutBatch.from_groups(groups)
    fast = rollout_features(batch, hidden=True)
    ref = _reference_rollout_features(RolloutBatch.from_groups(groups))
    for name, want in ref.items():
        got = getattr(fast, name)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
