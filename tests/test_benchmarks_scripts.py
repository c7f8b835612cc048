"""Smoke tests of the performance scripts in ``benchmarks/``: each runs as a subprocess with the tiniest shapes
and steps its options accept, exits 0 and prints its numbers.

They check that the scripts still run against the current code (``overhead.py`` wraps the trainer's
``_rlavr_decide``, ``engine.update``, ``rlavr_feature_stats`` and ``rlavr_history``, which a refactor of the
trainer could rename), not what they measure; the measured numbers are in docs/benchmarks.md.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
NUM = r"[-+]?\d+(?:\.\d+)?"


def run_script(name: str, args: list[str], tmp_path: Path, timeout: float = 240) -> str:
    """Run ``benchmarks/<name>`` with ``args`` (rlavr's cache in ``tmp_path``); return stdout, checking exit 0."""
    env = {**os.environ, "RLAVR_CACHE": str(tmp_path / "cache"), "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / name), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{name} {args} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_every_script_has_a_smoke_test() -> None:
    scripts = [p.name for p in BENCH.glob("*.py") if not p.name.startswith("_")]  # _device.py: shared helpers
    assert sorted(scripts) == sorted(SMOKE), "add a smoke test for the new script"


def _overhead(tmp_path: Path) -> None:
    # one timed step of 2 prompts x 2 rollouts, no SFT (the warm start's cache goes to tmp_path); CARE exercises
    # every timed part (decide, feature pass, update)
    out = run_script("overhead.py", ["--shapes", "2x2", "--steps", "1", "--warmup", "0", "--strategies", "care",
                                     "--sft-steps", "0", "--clock", "cpu"], tmp_path)
    assert re.search(r"^model: tiny Qwen3 [\d,]+ params.*; cpu clock$", out, flags=re.M), out
    assert re.search(rf"^\s*2x2 stock GRPO\s+{NUM}\s+{NUM}\s+{NUM}%\s+{NUM}%", out, flags=re.M), out
    row = re.search(rf"^\s*2x2 care\s+({NUM})\s+({NUM})\s+({NUM})%\s+({NUM})%\s+decide {NUM} \+ features {NUM} "
                    rf"\+ update {NUM} ms \((extra forward|generate|TRL hook|none), ({NUM}) extra forwards/round\)",
                    out, flags=re.M)
    assert row, out
    assert float(row.group(1)) > 0 and float(row.group(2)) > 0  # a step time and CARE's own time
    # TRL's default config: the features are read during generation, no extra forward (issue 13)
    assert row.group(5) == "generate" and float(row.group(6)) == 0, out
    rows = _import("gpu_check").overhead_rows(out)  # what gpu_check.py reads of this output
    assert [r["strategy"] for r in rows] == ["stock GRPO", "care"] and rows[1]["feature_source"] == "generate"
    assert rows[1]["step_ms"] == float(row.group(1)) and rows[1]["strategy_ms"] == float(row.group(2))


def _import(name: str) -> Any:
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


def _gpu_check(tmp_path: Path) -> None:
    # on CPU at the smallest sizes: the tests step, a model of the shape of a saved config with random weights,
    # the bench arms and their ledger check; overhead, selection and care_speed have their own smoke tests here
    sys.path.insert(0, str(ROOT / "tests" / "trl"))
    try:
        from trl_tiny import build_tiny_model
    finally:
        sys.path.remove(str(ROOT / "tests" / "trl"))
    files = tmp_path / "files"
    files.mkdir()
    saved = Path(build_tiny_model(tmp_path / "tiny"))
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (files / name).write_bytes((saved / name).read_bytes())
    out = run_script("gpu_check.py", ["--device", "cpu", "--smoke", "--out", str(tmp_path / "out"),
                                      "--smollm2-files", str(files), "--skip", "overhead,selection,care_speed"],
                     tmp_path)
    assert re.search(r"^ok  tests_default\s.*[1-9]\d* passed, 0 failed", out, flags=re.M), out
    assert re.search(r"^ok  bench\s.*problems \[\]$", out, flags=re.M), out
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["model"].endswith("random weights") and report["model_params"] > 0
    assert set(report["steps"]["bench"]["seconds_per_step"]) == {"gt", "random", "care"}
    assert (tmp_path / "out" / "bench_results.json").is_file() and (tmp_path / "out" / "gpu_check.log").stat().st_size
    # the ledger check is not vacuous: a gt arm that bought fewer labels than it saw prompts is reported
    bench = tmp_path / "bench"
    (bench / "arms").mkdir(parents=True)
    data = json.loads((tmp_path / "out" / "bench_results.json").read_text())
    for arm in data["arms"]:
        if arm["strategy"] == "gt":
            arm["labels_bought"] -= 1
    (bench / "results.json").write_text(json.dumps(data))
    problems = _import("gpu_check").check_bench(bench)
    assert any(p.startswith("gt: bought") for p in problems) and any("expected one ledger" in p for p in problems)


def _selection_scaling(tmp_path: Path) -> None:
    # every default strategy at two tiny sizes (pivot-trace's probe pool needs B >= 8), hidden size 4
    out = run_script("selection_scaling.py", ["--sizes", "8x4,16x4", "--hidden", "4", "--repeats", "1", "--clock", "cpu"],
                     tmp_path)
    assert "(cpu clock)" in out, out
    selection_scaling = _import("selection_scaling")
    assert "could not run" not in out, out
    for name in selection_scaling.DEFAULT_STRATEGIES.split(","):
        assert re.search(rf"^{re.escape(name)}\s+{NUM}\s+{NUM}\s+{NUM}\s+(yes|NO)$", out, flags=re.M), (name, out)
    assert re.search(rf"^\(from_groups\)\s+{NUM}\s+{NUM}\s+{NUM}$", out, flags=re.M), out


def _care_speed(tmp_path: Path) -> None:
    out = run_script("care_speed.py", ["--hidden", "8", "--group", "2", "--batches", "2", "--reference", "2",
                                       "--repeats", "1", "--warmup", "0", "--threads", "1", "--clock", "cpu"], tmp_path)
    assert "CARE select+update on CPU: G=2, H=8" in out and "cpu clock" in out, out
    row = re.search(rf"^\s*2\s+({NUM})\s+({NUM})\s+({NUM})\s+{NUM}\s+1\.00\s+1\.00$", out, flags=re.M)
    assert row, out
    assert float(row.group(3)) == pytest.approx(float(row.group(1)) + float(row.group(2)), abs=0.15)


def _ab_compare(tmp_path: Path) -> None:
    # this checkout as its own baseline, one round of the tiniest care_speed run
    out = run_script("ab_compare.py", ["--baseline", str(ROOT), "--rounds", "1", "--", str(BENCH / "care_speed.py"),
                                       "--hidden", "8", "--group", "2", "--batches", "2", "--reference", "2",
                                       "--repeats", "1", "--warmup", "0", "--threads", "1"], tmp_path)
    assert out.startswith("A/B: "), out
    assert re.search(rf"^2\s+{NUM}->{NUM} \({NUM}x\)", out, flags=re.M), out


def _build_start_model(tmp_path: Path) -> None:
    # two SFT steps, 10 held-out items, shipped into tmp_path (never into the package)
    out = run_script("build_start_model.py", ["--sft-steps", "2", "--eval-k", "0", "--eval-rows", "10",
                                               "--dest", str(tmp_path / "shipped")], tmp_path)
    assert re.search(rf'"greedy": {NUM}', out) and '"n": 10' in out, out
    shipped = list((tmp_path / "shipped").glob("addition-*/manifest.json"))
    assert len(shipped) == 1 and (shipped[0].parent / "model.safetensors").is_file(), out


def _regimes(tmp_path: Path) -> None:
    # two synthetic regimes (results.json with per-item results), the table and the plot
    import json

    def arms(bits: dict[str, str]) -> list[dict[str, object]]:
        out = []
        for name, b in bits.items():
            for seed in (0, 1):
                out.append({"strategy": name, "budget": 1.0 if name == "gt" else 0.2,
                            "budget_label": "100%" if name == "gt" else "20%", "arm": name, "seed": seed,
                            "final": {"n": len(b), "greedy_accuracy": b.count("1") / len(b), "greedy_correct": b},
                            "curve": [], "labels_bought": 1, "prompts_seen": 1, "label_ratio": 0.2,
                            "wall_seconds": 1.0, "train_seconds": 1.0, "steps": 1, "history_summary": {}})
        return out

    for name, maj, care in (("lo", 0.3, "1" * 40 + "0" * 20), ("hi", 0.7, "1" * 55 + "0" * 5)):
        d = tmp_path / name
        d.mkdir()
        (d / "results.json").write_text(json.dumps({"start": {"majority_at_k": maj}, "arms": arms(
            {"gt": "1" * 60, "care": care, "random-mask": "1" * 30 + "0" * 30})}))
    out = run_script("regimes.py", [f"low={tmp_path / 'lo'}", str(tmp_path / "hi"), "--plot", "r.png",
                                    "--resamples", "100"], tmp_path)
    assert out.splitlines()[0] == "| arm | low (majority@k 30.0 %) | hi (majority@k 70.0 %) |", out
    assert re.search(rf"^\| care \| \*\*{NUM} \[{NUM}, {NUM}\]\*\* \| \*\*9[0-2]\.\d \[", out, flags=re.M), out
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def _compare_arms(tmp_path: Path) -> None:
    # one synthetic benchmark with per-item results: every arm against random-mask
    import json

    n = 60
    arms = []
    for name, bits in {"gt": "1" * n, "care": "1" * 45 + "0" * 15, "random-mask": "1" * 30 + "0" * 30}.items():
        for seed in (0, 1):
            arms.append({"strategy": name, "arm": name, "budget_label": "100%" if name == "gt" else "20%",
                         "seed": seed, "final": {"n": n, "greedy_correct": bits}})
    (tmp_path / "results.json").write_text(json.dumps({"start": {"greedy_correct": "1" * 15 + "0" * 45},
                                                       "arms": arms}))
    out = run_script("compare_arms.py", [str(tmp_path), "--baseline", "random-mask", "--resamples", "100"], tmp_path)
    assert out.splitlines()[0] == "| arm | seeds | % of GT's gain [95% CI] | Δ vs random-mask (points) [95% CI] |", out
    row = re.search(rf"^\| care \| 0,1 \| ({NUM}) \[{NUM}, {NUM}\] \| ({NUM}) \[{NUM}, {NUM}\] \|$", out, flags=re.M)
    assert row, out
    assert abs(float(row[1]) - 200 / 3) < 5 and abs(float(row[2]) - 25.0) < 3, out  # 2/3 of the gain, +25 points
    bad = subprocess.run([sys.executable, str(BENCH / "compare_arms.py"), str(tmp_path), "--baseline", "prob-mask"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "baseline: 'prob-mask' names 0 arms" in bad.stderr, bad


SMOKE = {"overhead.py": _overhead, "regimes.py": _regimes, "compare_arms.py": _compare_arms, "build_start_model.py": _build_start_model,
         "selection_scaling.py": _selection_scaling, "care_speed.py": _care_speed, "ab_compare.py": _ab_compare,
         "gpu_check.py": _gpu_check}


@pytest.mark.parametrize("script", sorted(SMOKE))
def test_benchmark_script_runs_and_prints_its_numbers(script: str, tmp_path: Path) -> None:
    SMOKE[script](tmp_path)
