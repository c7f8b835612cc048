"""The benchmark runner end to end on a tiny model (a few GRPO steps per arm through RLAVRGRPOTrainer)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from rlavr.bench.models import SFTConfig, TinyModelConfig, build_tiny_model, build_tokenizer, sft_train
from rlavr.bench.replay import replay
from rlavr.bench.runner import ArmSpec, BenchConfig, plan_arms, run_bench, split_strategy_spec
from rlavr.bench.tasks import AdditionTask

SMALL = TinyModelConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, head_dim=16)
TASK_KW = {"max_digits": 2, "max_completion_length": 4, "train_size": 60, "eval_size": 30}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model briefly SFT'd on 1-digit addition, saved like any user checkpoint."""
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    tok = build_tokenizer()
    model = build_tiny_model(tok, SMALL)
    sft_train(model, tok, AdditionTask(**TASK_KW), SFTConfig(steps=30, batch_size=64, warmup_steps=5, pool_size=500))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_plan_arms_budget_rules() -> None:
    cfg = BenchConfig(strategies=["gt", "ttrl", "random", "entropy@0.5"], budgets=[0.1, "20%"], seeds=[0, 1])
    arms = plan_arms(cfg)
    assert [a.arm for a in arms if a.seed == 0] == ["gt@100%", "ttrl@0%", "random@10%", "random@20%", "entropy@50%"]
    assert len(arms) == 10 and [a.seed for a in arms[:5]] == [0] * 5
    assert ArmSpec("care", 0.2, 3).name == "care@20%-seed3"
    assert ArmSpec("random", 500, 0).budget_label == "500 labels"


@pytest.mark.parametrize("kwargs, field", [
    ({"task": "chess"}, "task"),
    ({"budgets": [1.5]}, "budget"),
    ({"budgets": []}, "budgets"),
    ({"seeds": [0, 0]}, "seeds"),
    ({"strategies": ["gt", "gt"]}, "strategies"),
    ({"strategy_kwargs": {"care": {}}, "strategies": ["gt"]}, "strategy_kwargs"),
    ({"steps": 0}, "steps"),
    ({"task_kwargs": {"max_digits": 9}}, "max_digits"),
    ({"task_kwargs": {"max_digits": 1, "max_completion_length": 3}}, "train_size"),
])
def test_config_validation_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        BenchConfig(**kwargs)


def test_device_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert BenchConfig().device == "cpu" and BenchConfig().resolved_device() == "cpu"
    assert BenchConfig(device="auto").resolved_device() == "cpu"
    with pytest.raises(ValueError, match="device: 'cuda' requested"):
        BenchConfig(device="cuda").resolved_device()
    with pytest.raises(ValueError, match="use_vllm=True need a GPU"):
        BenchConfig(device="auto", use_vllm=True).resolved_device()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert BenchConfig(device="auto").resolved_device() == "cuda"
    assert BenchConfig(device="cuda", bf16=True).resolved_device() == "cuda"
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real_find_spec(name, *a))
    with pytest.raises(ImportError, match=r"rlavr\[vllm\]"):
        BenchConfig(device="cuda", use_vllm=True).resolved_device()


def test_unknown_strategy_fails_before_training(tmp_path: Path, tiny_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="strategies: unknown strategy 'entropyy'. Did you mean 'entropy'"):
        run_bench(BenchConfig(model=str(tiny_checkpoint), strategies=["gt", "entropyy"], output_dir=tmp_path,
                              task_kwargs=TASK_KW))
    assert not (tmp_path / "arms").exists()


@pytest.mark.parametrize("strategies, message", [
    (["care@x"], "bad budget 'x' in 'care@x'"),
    (["care@"], "empty budget after '@' in 'care@'"),
    (["care@ "], "empty budget after '@'"),
    (["care@-3"], "bad budget '-3'"),
    (["@0.2"], "empty strategy name"),
    (["care@0.2", "care@20%"], r"arms \['care@20%'\] would run twice"),
])
def test_forced_budgets_are_validated_by_the_config(strategies: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BenchConfig(strategies=strategies)


def test_forced_budget_forms() -> None:
    cfg = BenchConfig(strategies=["gt@0.5", "random@500", "entropy@2/step", "care@0.1/step", "prob@20%"], seeds=[0])
    assert [a.budget for a in plan_arms(cfg)] == [0.5, 500, "2/step", "0.1/step", "20%"]
    assert split_strategy_spec(" care @ 0.2 ") == ("care", 0.2)
    assert split_strategy_spec("care") == ("care", None)


def test_strategy_kwargs_are_checked_by_the_config() -> None:
    with pytest.raises(ValueError, match="strategy_kwargs: 'random'.*bogus"):
        BenchConfig(strategies=["random"], strategy_kwargs={"random": {"bogus": 1}})


def test_run_bench_end_to_end(tmp_path: Path, tiny_checkpoint: Path) -> None:
    cfg = BenchConfig(model=str(tiny_checkpoint), strategies=["gt", "ttrl", "random", "entropy"], budgets=[0.25],
                      seeds=[0], steps=4, prompts_per_step=4, num_generations=4, learning_rate=1e-3, eval_every=2,
                      curve_eval_size=20, eval_k=2, task_kwargs=TASK_KW, log_features=True, output_dir=tmp_path)
    res = run_bench(cfg)
    arms = {a.spec.arm: a for a in res.arms}
    assert list(arms) == ["gt@100%", "ttrl@0%", "random@25%", "entropy@25%"]
    assert arms["gt@100%"].labels_bought == 16 and arms["ttrl@0%"].labels_bought == 0
    assert arms["random@25%"].labels_bought == arms["entropy@25%"].labels_bought == 4  # floor(0.25 * 16)
    assert all(a.prompts_seen == 16 and a.steps == 4 for a in res.arms)
    for a in res.arms:
        assert [c["step"] for c in a.curve] == [0.0, 2.0, 4.0]
        assert a.curve[0]["greedy_accuracy"] == res.arms[0].curve[0]["greedy_accuracy"]  # same start
        assert 0.0 <= a.final.greedy_accuracy <= 1.0 and a.final.n == 30
    # same seed -> every arm saw the same prompts in the same order
    orders = []
    for a in res.arms:
        lines = [json.loads(x) for x in (tmp_path / "arms" / a.spec.slug / "rollouts.jsonl").read_text().splitlines()]
        orders.append([(x["step"], x["id"]) for x in lines])
    assert all(o == orders[0] for o in orders) and len(orders[0]) == 16
    data = json.loads((tmp_path / "results.json").read_text())
    assert len(data["arms"]) == 4 and data["model"]["source"] == "from_pretrained"
    for name in ("results.csv", "summary.md", "accuracy_vs_steps.png", "accuracy_vs_labels.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "| entropy | 25% | 1 |" in (tmp_path / "summary.md").read_text()
    # how useful the bought labels were: the run's means, also in results.csv
    for a in res.arms:
        if a.labels_bought:
            h = a.history_summary
            assert 0.0 <= h["query_no_signal_ratio"] <= 1.0 and 0.0 <= h["query_vote_wrong_ratio"] <= 1.0
    with open(tmp_path / "results.csv", newline="") as f:
        rows = {r["strategy"]: r for r in csv.DictReader(f)}
    assert rows["gt"]["query_no_signal_ratio"] != "" and rows["ttrl"]["query_no_signal_ratio"] == ""
    # the trainer's log replays offline
    # (log_features implies the log, and its hidden states let CARE replay on the gt arm's rollouts)
    rep = replay(tmp_path / "arms" / "gt_100_-seed0" / "rollouts.jsonl", ["random", "oracle", "care"], budget=0.25,
                 answer_space="integer")
    assert [r.skipped for r in rep] == [None, None, None]
    assert [r.metrics["labels_bought"] for r in rep] == [4.0, 4.0, 4.0]


def test_run_bench_builds_and_caches_the_warm_start(tmp_path: Path) -> None:
    cfg = BenchConfig(strategies=["ttrl"], seeds=[0], steps=2, prompts_per_step=2, num_generations=2,
                      eval_every=2, curve_eval_size=10, eval_k=0, task_kwargs=TASK_KW, tiny_model=SMALL,
                      sft=SFTConfig(steps=3, batch_size=8, warmup_steps=1, pool_size=20), cache_dir=tmp_path / "cache",
                      output_dir=tmp_path / "run1")
    first = run_bench(cfg)
    assert first.model_info["source"] == "tiny-sft" and first.model_info["cached"] is False
    second = run_bench(cfg.model_copy(update={"output_dir": tmp_path / "run2"}))
    assert second.model_info["cached"] is True and second.model_info["path"] == first.model_info["path"]
    assert second.start.greedy_accuracy == first.start.greedy_accuracy


@pytest.mark.slow
@pytest.mark.parametrize("task", ["math", "knights_knaves"])
def test_reasoning_gym_tasks_run_through_the_benchmark(tmp_path: Path, task: str) -> None:
    """The two reasoning-gym tasks end to end: warm start, GRPO through RLAVRGRPOTrainer, evaluation (~30-120 s)."""
    cfg = BenchConfig(task=task, task_kwargs={"train_size": 50, "eval_size": 20}, strategies=["gt", "entropy"],
                      budgets=[0.5], seeds=[0], steps=2, prompts_per_step=2, num_generations=4, eval_every=2,
                      curve_eval_size=10, eval_k=2, tiny_model=SMALL, cache_dir=tmp_path / "cache",
                      sft=SFTConfig(steps=10, batch_size=16, warmup_steps=2, pool_size=200), output_dir=tmp_path / "run")
    res = run_bench(cfg)
    assert [a.labels_bought for a in res.arms] == [4, 2]
    assert all(a.final.n == 20 and a.steps == 2 for a in res.arms)


def _small_cfg(checkpoint: Path, out: Path, **kw: object) -> BenchConfig:
    base = dict(model=str(checkpoint), strategies=["gt", "ttrl"], budgets=[0.25], seeds=[0], steps=2,
                prompts_per_step=2, num_generations=2, eval_every=2, curve_eval_size=10, eval_k=0,
                task_kwargs=TASK_KW, output_dir=out)
    base.update(kw)
    return BenchConfig(**base)  # type: ignore[arg-type]


def test_resume_keeps_finished_arms_reruns_interrupted_ones_and_adds_new(
        tmp_path: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rlavr.bench.runner as runner

    ran: list[str] = []
    real = runner.run_arm

    def counting(cfg: BenchConfig, spec: ArmSpec, *a: object, **kw: object) -> object:
        ran.append(spec.name)
        return real(cfg, spec, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "run_arm", counting)
    out = tmp_path / "bench"
    first = run_bench(_small_cfg(tiny_checkpoint, out))
    assert ran == ["gt@100%-seed0", "ttrl@0%-seed0"]
    assert json.loads((out / "arms" / "gt_100_-seed0" / "result.json").read_text())["config_hash"]
    # a kill -9 during the ttrl arm: its result.json (written last, atomically) is missing
    (out / "arms" / "ttrl_0_-seed0" / "result.json").unlink()
    ran.clear()
    res = run_bench(_small_cfg(tiny_checkpoint, out, strategies=["gt", "ttrl", "random"], resume=True))
    assert ran == ["ttrl@0%-seed0", "random@25%-seed0"]  # gt kept, ttrl restarted, random added
    arms = {a.spec.name: a for a in res.arms}
    assert set(arms) == {"gt@100%-seed0", "ttrl@0%-seed0", "random@25%-seed0"}
    assert arms["gt@100%-seed0"].final.greedy_accuracy == first.arms[0].final.greedy_accuracy
    assert arms["gt@100%-seed0"].curve[0]["step"] == 0.0
    assert len(json.loads((out / "results.json").read_text())["arms"]) == 3
    # a new seed, and an arm not planned this time stays in the table
    ran.clear()
    res = run_bench(_small_cfg(tiny_checkpoint, out, strategies=["gt"], seeds=[1], resume=True))
    assert ran == ["gt@100%-seed1"]
    assert len(res.arms) == 4 and "| random | 25% | 1 |" in (out / "summary.md").read_text()
    # the table keeps the first sittings' order; the new arm comes last (not first, as this call planned it)
    assert [a.spec.name for a in res.arms] == ["gt@100%-seed0", "ttrl@0%-seed0", "random@25%-seed0", "gt@100%-seed1"]
    saved = [(a["arm"], a["seed"]) for a in json.loads((out / "results.json").read_text())["arms"]]
    assert saved == [("gt@100%", 0), ("ttrl@0%", 0), ("random@25%", 0), ("gt@100%", 1)]
    # an arm whose recorded hash does not match (edited, or another start model) reruns
    f = out / "arms" / "gt_100_-seed0" / "result.json"
    data = json.loads(f.read_text())
    data["config_hash"] = "0" * 16
    f.write_text(json.dumps(data))
    ran.clear()
    run_bench(_small_cfg(tiny_checkpoint, out, strategies=["gt"], resume=True))
    assert ran == ["gt@100%-seed0"]


def test_resume_reuses_the_start_evaluation(tmp_path: Path, tiny_checkpoint: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A sitting evaluates the start model once and keeps it in start.json; --resume reads it back (a SmolLM2
    start evaluation on 200 questions takes minutes), also from a folder that only has results.json."""
    import rlavr.bench.runner as runner

    out = tmp_path / "bench"
    first = run_bench(_small_cfg(tiny_checkpoint, out, strategies=["gt"]))
    saved = json.loads((out / "start.json").read_text())
    assert saved["start"]["greedy_correct"] and saved["key"]
    calls: list[int] = []
    real = runner.evaluate

    def counting(model: object, tok: object, task: object, rows: list[object], **kw: object) -> object:
        calls.append(len(rows))
        return real(model, tok, task, rows, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "evaluate", counting)
    res = run_bench(_small_cfg(tiny_checkpoint, out, strategies=["gt"], resume=True))
    assert calls == []  # nothing evaluated: the start came from start.json, the arm was kept
    assert res.start.to_dict() == first.start.to_dict()
    assert res.arms[0].curve[0] == first.arms[0].curve[0]
    # a folder from before start.json: read from results.json, and start.json written for next time
    (out / "start.json").unlink()
    res = run_bench(_small_cfg(tiny_checkpoint, out, strategies=["gt"], resume=True))
    assert calls == [] and res.start.to_dict() == first.start.to_dict() and (out / "start.json").is_file()
    # another environment (here: a recorded key that does not match) evaluates the start again
    saved = json.loads((out / "start.json").read_text())
    (out / "start.json").write_text(json.dumps({**saved, "key": "0" * 16}))
    res = run_bench(_small_cfg(tiny_checkpoint, out, strategies=["gt"], resume=True))
    assert len(calls) == 2  # the start and the learning curve's start point
    again, before = res.start.to_dict(), first.start.to_dict()
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in before.items() if k != "seconds"}
    # a fresh run (not a resume) always evaluates
    calls.clear()
    run_bench(_small_cfg(tiny_checkpoint, tmp_path / "fresh", strategies=["gt"]))
    assert calls[:2] == [30, 10]


def test_resume_refuses_changed_settings_and_needs_a_folder(tmp_path: Path, tiny_checkpoint: Path) -> None:
    out = tmp_path / "bench"
    run_bench(_small_cfg(tiny_checkpoint, out, strategies=["ttrl"]))
    with pytest.raises(ValueError, match=r"resume: the settings differ .*steps: 2 there, 3 now"):
        run_bench(_small_cfg(tiny_checkpoint, out, strategies=["ttrl"], steps=3, resume=True))
    with pytest.raises(ValueError, match="resume: needs the benchmark folder"):
        BenchConfig(resume=True)


def test_results_record_the_environment_and_restore_threads(tmp_path: Path, tiny_checkpoint: Path) -> None:
    import torch

    before = torch.get_num_threads()
    res = run_bench(_small_cfg(tiny_checkpoint, tmp_path, strategies=["ttrl"], threads=1))
    assert torch.get_num_threads() == before
    env = json.loads((tmp_path / "results.json").read_text())["environment"]
    assert env["torch_threads"] == 1 and env["versions"]["torch"] and env["versions"]["transformers"]
    from rlavr.bench.models import file_sha256

    assert env["start_model_sha256"] == file_sha256(tiny_checkpoint / "model.safetensors")
    assert res.arms[0].final.greedy_correct.size == res.arms[0].final.n


def test_arm_hash_records_the_strategy_seed(tmp_path: Path) -> None:
    """The strategy's RNG follows the arm's seed; a strategy_kwargs seed overrides it and changes the hash."""
    from rlavr.bench.runner import ArmSpec, BenchConfig, arm_config_hash

    cfg = BenchConfig(output_dir=str(tmp_path))
    fixed = BenchConfig(output_dir=str(tmp_path), strategy_kwargs={"random": {"seed": 0}})
    spec = ArmSpec("random", 0.2, 1)
    assert arm_config_hash(cfg, spec, None) != arm_config_hash(fixed, spec, None)
    assert arm_config_hash(cfg, spec, None) == arm_config_hash(BenchConfig(output_dir=str(tmp_path)), spec, None)
