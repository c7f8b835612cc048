"""Tiny-model factory, tokenizer, SFT warm start + cache, from_pretrained loading and evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rlavr.bench.evaluate import evaluate, generate
from rlavr.bench.models import (
    SFTConfig,
    TinyModelConfig,
    build_tiny_model,
    build_tokenizer,
    cache_root,
    load_model,
    sft_train,
    warm_start,
    warm_start_key,
)
from rlavr.bench.tasks import AdditionTask

SMALL = TinyModelConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, head_dim=16)
TASK = AdditionTask(max_digits=2, max_completion_length=4, train_size=200, eval_size=60)


def test_tokenizer_is_byte_level_and_round_trips() -> None:
    tok = build_tokenizer()
    assert len(tok) == 260 and tok.padding_side == "left"
    for s in ["12+7=", "Calculate 4 - 1. Answer in \\boxed{}: ", "Zoey is a fool, and Riley is a sage.", "é→"]:
        ids = tok(s, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == s
    assert len(tok("12+7=", add_special_tokens=False)["input_ids"]) == 5  # one token per ASCII character


def test_default_tiny_model_matches_the_feasibility_recipe_and_keeps_the_global_rng() -> None:
    tok = build_tokenizer()
    state = torch.get_rng_state()
    model = build_tiny_model(tok)
    assert torch.equal(state, torch.get_rng_state())
    assert sum(p.numel() for p in model.parameters()) == 1_083_264  # 1.08 M (docs/design.md)
    again = build_tiny_model(tok)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters(), strict=True))
    other = build_tiny_model(tok, TinyModelConfig(init_seed=1))
    assert not torch.equal(next(model.parameters()), next(other.parameters()))
    with pytest.raises(ValueError, match="num_key_value_heads"):
        TinyModelConfig(num_attention_heads=4, num_key_value_heads=3)


def test_sft_learns_and_is_deterministic() -> None:
    tok = build_tokenizer()
    cfg = SFTConfig(steps=30, batch_size=32, warmup_steps=5, pool_size=500)
    losses: list[float] = []
    m1 = build_tiny_model(tok, SMALL)
    sft_train(m1, tok, TASK, cfg, on_step=lambda s, loss: losses.append(loss))
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    m2 = build_tiny_model(tok, SMALL)
    sft_train(m2, tok, TASK, cfg)
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters(), strict=True))


def test_warm_start_is_cached_by_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = SFTConfig(steps=3, batch_size=8, warmup_steps=1, pool_size=100)
    path, meta = warm_start(TASK, SMALL, cfg, cache_dir=tmp_path, evaluate_rows=20)
    assert meta["cached"] is False and path.parent == tmp_path / "models"
    assert (path / "model.safetensors").is_file() and (path / "rlavr_sft.json").is_file()
    assert meta["n_params"] == sum(p.numel() for p in build_tiny_model(build_tokenizer(), SMALL).parameters())
    again, meta2 = warm_start(TASK, SMALL, cfg, cache_dir=tmp_path, evaluate_rows=20)
    assert again == path and meta2["cached"] is True and meta2["greedy_accuracy"] == meta["greedy_accuracy"]
    # anything that changes the checkpoint changes the key
    keys = {warm_start_key(TASK, SMALL, cfg), warm_start_key(TASK, SMALL, SFTConfig(steps=4)),
            warm_start_key(AdditionTask(), SMALL, cfg), warm_start_key(TASK, TinyModelConfig(), cfg),
            warm_start_key(TASK, SMALL, cfg, data_seed=1)}
    assert len(keys) == 5
    monkeypatch.setenv("RLAVR_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"


def test_load_model_from_a_saved_folder(tmp_path: Path) -> None:
    tok = build_tokenizer()
    model = build_tiny_model(tok, SMALL)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded, ltok = load_model(tmp_path / "m")
    assert ltok.padding_side == "left" and ltok.pad_token_id == tok.pad_token_id
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), loaded.parameters(), strict=True))
    with pytest.raises(ValueError, match="does not exist"):
        load_model(tmp_path / "missing")
    with pytest.raises(ValueError, match="dtype"):
        load_model(tmp_path / "m", dtype="int8")


def test_evaluate_metrics_are_consistent_and_leave_the_rng_alone() -> None:
    tok = build_tokenizer()
    model = build_tiny_model(tok, SMALL)
    sft_train(model, tok, TASK, SFTConfig(steps=40, batch_size=64, warmup_steps=5, pool_size=1000))
    rows = TASK.rows("eval", 60)
    state = torch.get_rng_state()
    res = evaluate(model, tok, TASK, rows, k=4, seed=3, batch_size=16)
    assert torch.equal(state, torch.get_rng_state())
    # greedy accuracy is the verifier applied to one-by-one greedy decoding (batching/padding changes nothing)
    single = [generate(model, tok, [r["prompt"]], TASK.max_completion_length)[0] for r in rows[:10]]
    assert np.array_equal(TASK.score(single, [r["answer"] for r in rows[:10]]), res.greedy_correct[:10])
    assert res.n == 60 and res.k == 4
    assert 0 <= res.mean_at_k <= res.pass_at_k <= 1  # type: ignore[operator]
    assert res.majority_at_k <= res.pass_at_k  # type: ignore[operator]
    assert evaluate(model, tok, TASK, rows, k=4, seed=3, batch_size=16).to_dict() | {"seconds": 0} == \
        res.to_dict() | {"seconds": 0}  # same seed and batching -> same samples
    with pytest.raises(ValueError, match="rows"):
        evaluate(model, tok, TASK, [], k=0)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, tok, ["1+1="], 3, do_sample=True, temperature=0.0)


def test_default_task_starts_from_the_shipped_model_on_every_machine(tmp_path: Path) -> None:
    """The default recipe (and each regime) resolves to a shipped, hash-verified artefact: no SFT runs here."""
    from rlavr.bench.models import REGIMES, file_sha256, shipped_start_model
    from rlavr.bench.tasks import get_task

    task = get_task("addition")
    for regime, steps in REGIMES.items():
        found = shipped_start_model(task, sft_config=SFTConfig(steps=steps))
        assert found is not None, regime
        folder, meta = found
        assert meta["shipped"] is True and meta["sha256"] == file_sha256(folder / "model.safetensors")
        assert meta["sft"]["steps"] == steps
    path, meta = warm_start(task, cache_dir=tmp_path)  # default configs: the mid regime
    assert meta["shipped"] is True and meta["sft"]["steps"] == REGIMES["mid"] == SFTConfig().steps
    assert not (tmp_path / "models").exists()  # nothing was trained or cached
    model, tok = load_model(path)
    assert sum(p.numel() for p in model.parameters()) == meta["n_params"]
    # another recipe has no shipped model: SFT runs (tested elsewhere); use_shipped=False forces SFT too
    assert shipped_start_model(task, sft_config=SFTConfig(steps=7)) is None


def test_a_damaged_shipped_model_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import rlavr.bench.models as models
    from rlavr.bench.tasks import get_task

    task = get_task("addition")
    src, _ = models.shipped_start_model(task)  # type: ignore[misc]
    copy = tmp_path / "start_models"
    shutil.copytree(src.parent, copy)
    monkeypatch.setattr(models, "SHIPPED_DIR", copy)
    assert models.shipped_start_model(task) is not None
    weights = copy / src.name / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match its SHA-256"):
        models.shipped_start_model(task)


def test_ship_start_model_writes_a_verifiable_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    import rlavr.bench.models as models

    tok = build_tokenizer()
    ckpt = tmp_path / "ckpt"
    build_tiny_model(tok, SMALL).save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    dest = models.ship_start_model(ckpt, TASK, SMALL, SFTConfig(steps=3), dest_root=tmp_path / "shipped")
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["recipe_key"] == dest.name and "model.safetensors" in manifest["sha256"]
    assert manifest["built_with"]["threads"] == torch.get_num_threads()
    monkeypatch.setattr(models, "SHIPPED_DIR", tmp_path / "shipped")
    path, meta = warm_start(TASK, SMALL, SFTConfig(steps=3), cache_dir=tmp_path / "cache")
    assert path == dest and meta["shipped"] is True
    path2, meta2 = warm_start(TASK, SMALL, SFTConfig(steps=3), cache_dir=tmp_path / "cache", use_shipped=False)
    assert meta2["shipped"] is False and path2 != dest


def test_warm_start_key_depends_on_threads() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = warm_start_key(TASK, SMALL, SFTConfig())
        torch.set_num_threads(2)
        two = warm_start_key(TASK, SMALL, SFTConfig())
    finally:
        torch.set_num_threads(before)
    assert one != two
