r"""Benchmark reports: JSON, CSV, a Markdown table and matplotlib plots.

Aggregation (per arm = strategy at a budget, over its seeds :math:`s = 1..n`): the mean and the sample standard
deviation (``ddof=1``; 0 for one seed) of final greedy accuracy, mean@k, labels bought and wall time, and of

.. math:: \%\,\mathrm{GT}_s = 100 \cdot \mathrm{acc}_s(\text{arm}) / \mathrm{acc}_s(\text{gt@100\%}),

computed per seed against the full-supervision arm of the same seed (blank when no GT arm ran for that seed or
its accuracy is 0), and, given the starting checkpoint's accuracy :math:`a_0`, the share of GT's *improvement*

.. math:: \%\,\mathrm{GT\ gain}_s = 100 \cdot (\mathrm{acc}_s(\text{arm}) - a_0) / (\mathrm{acc}_s(\text{gt@100\%}) - a_0),

which is the stricter number (blank when GT did not improve on the start). The functions take the plain dictionaries of ``results.json``, so a report can be rebuilt
from the file alone (:func:`load_results`).

Confidence intervals (:func:`interval_table`). A final accuracy varies with the training seed *and* with the
finite held-out set, so every interval comes from a **two-level (hierarchical) paired bootstrap**: each of
``n_resamples`` resamples draws seeds with replacement from the seeds the compared arms share, and held-out items
with replacement from the items; the statistic is the mean correctness over the drawn (seed, item) pairs. The
same draws are used for every arm, so differences are *paired* (same seeds, same items). Reported: per arm the
95 % percentile interval of its accuracy; its difference to ``gt`` (and its % of GT) and to the best other
label-budgeted arm (the one with the highest mean accuracy, ``gt`` and ``ttrl`` excluded). ``scipy.stats.bootstrap``
resamples one axis only, while seeds and items are crossed here (every seed is scored on every item), hence the
resampling is written out (vectorised, with a private ``numpy.random.Generator``; deterministic). With 2-3 seeds
the seed level of the bootstrap is coarse: read the intervals as approximate, and the per-seed values beside them.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from rlavr.bench.runner import BenchResult

__all__ = ["accuracy_interval_plot", "accuracy_vs_labels_plot", "accuracy_vs_steps_plot", "baseline_markdown",
           "baseline_table", "hierarchical_bootstrap",
           "interval_table", "load_results", "markdown_table", "pct_gt_vs_start_plot", "regime_markdown",
           "regime_rows", "summarize", "write_all", "write_csv"]

GT_NAMES = ("gt", "ground-truth")


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def _is_gt_reference(arm: Mapping[str, Any]) -> bool:
    return str(arm["strategy"]).lower() in GT_NAMES and arm["budget_label"] == "100%"


def summarize(arms: Sequence[Mapping[str, Any]], start_accuracy: float | None = None) -> list[dict[str, Any]]:
    """One row per ``strategy@budget`` (first-appearance order) with mean/std over seeds (see module docstring).

    ``start_accuracy`` (the starting checkpoint's greedy accuracy) enables the ``pct_gt_gain`` column.
    """
    if not arms:
        raise ValueError("arms: nothing to summarise (no arm results)")
    gt_acc = {int(a["seed"]): float(a["final"]["greedy_accuracy"]) for a in arms if _is_gt_reference(a)}
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for a in arms:
        groups.setdefault(str(a["arm"]), []).append(a)
    rows = []
    for name, runs in groups.items():
        acc = [float(r["final"]["greedy_accuracy"]) for r in runs]
        pct = [100.0 * float(r["final"]["greedy_accuracy"]) / gt_acc[int(r["seed"])]
               for r in runs if gt_acc.get(int(r["seed"]), 0.0) > 0]
        gain = [] if start_accuracy is None else [
            100.0 * (float(r["final"]["greedy_accuracy"]) - start_accuracy) / (gt_acc[int(r["seed"])] - start_accuracy)
            for r in runs if gt_acc.get(int(r["seed"]), -1.0) > start_accuracy]
        mean_k = [r["final"]["mean_at_k"] for r in runs if r["final"].get("mean_at_k") is not None]
        row: dict[str, Any] = {
            "arm": name, "strategy": runs[0]["strategy"], "budget": runs[0]["budget_label"], "seeds": len(runs),
            "accuracy": _mean_std(acc), "pct_gt": _mean_std(pct) if pct else (float("nan"), float("nan")),
            "pct_gt_gain": _mean_std(gain) if gain else (float("nan"), float("nan")),
            "mean_at_k": _mean_std([float(x) for x in mean_k]) if mean_k else (float("nan"), float("nan")),
            "k": int(runs[0]["final"].get("k") or 0),
            "labels_bought": _mean_std([float(r["labels_bought"]) for r in runs]),
            "label_ratio": _mean_std([float(r["label_ratio"]) for r in runs]),
            "wall_seconds": _mean_std([float(r["wall_seconds"]) for r in runs]),
            "pseudo_label_accuracy": _mean_std([float(r["history_summary"].get("pseudo_label_accuracy", float("nan")))
                                                for r in runs]),
        }
        rows.append(row)
    return rows


def _correctness(runs: Sequence[Mapping[str, Any]]) -> dict[int, np.ndarray]:
    """Per seed, the per-item greedy correctness of one arm (``{}`` when results.json predates it)."""
    out: dict[int, np.ndarray] = {}
    for r in runs:
        bits = str(r["final"].get("greedy_correct") or "")
        if bits:
            out[int(r["seed"])] = np.frombuffer(bits.encode(), dtype=np.uint8) == ord("1")
    return out


def hierarchical_bootstrap(correct: np.ndarray, n_resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """Bootstrap distribution of the mean accuracy of several arms, resampled together (module docstring).

    Args:
        correct: ``(A, S, N)`` 0/1 correctness of A arms on the same S seeds and N held-out items.
        n_resamples: bootstrap resamples R.
        seed: the private generator's seed.

    Returns:
        ``(A, R)``: per arm, the mean correctness of each resample (draws shared by all arms: paired).
    """
    x = np.asarray(correct, dtype=np.float64)
    if x.ndim != 3 or 0 in x.shape:
        raise ValueError(f"correct: expected a non-empty (arms, seeds, items) array, got shape {x.shape}")
    _, S, N = x.shape
    rng = np.random.default_rng(seed)
    item_w = np.stack([np.bincount(rng.integers(0, N, N), minlength=N) for _ in range(n_resamples)])  # (R, N)
    seed_w = np.stack([np.bincount(rng.integers(0, S, S), minlength=S) for _ in range(n_resamples)])  # (R, S)
    per_seed = np.einsum("asn,rn->ars", x, item_w) / N  # item-resampled mean per seed
    return np.einsum("ars,rs->ar", per_seed, seed_w) / S


def _interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    lo, hi = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def _paired_bootstrap(per_seed: Sequence[Mapping[int, np.ndarray]], n_resamples: int, seed: int) -> np.ndarray | None:
    """:func:`hierarchical_bootstrap` of several arms' per-seed correctness on the seeds they share (``None`` when
    they share none, or their item counts differ)."""
    seeds = sorted(set.intersection(*[set(c) for c in per_seed]))
    if not seeds or len({c[s].size for c in per_seed for s in seeds}) != 1:
        return None
    return hierarchical_bootstrap(np.stack([np.stack([c[s] for s in seeds]) for c in per_seed]),
                                  n_resamples=n_resamples, seed=seed)


def interval_table(arms: Sequence[Mapping[str, Any]], n_resamples: int = 2000, seed: int = 0
                   ) -> dict[str, dict[str, Any]]:
    """Per arm: bootstrap intervals of its accuracy, of its difference to ``gt`` and to the best other
    label-budgeted arm, and of its % of GT (module docstring). Arms without per-item results get nothing.

    Returns ``{arm: {"accuracy": (lo, hi), "vs_gt": (mean, lo, hi), "pct_gt": (mean, lo, hi),
    "vs_best": (other arm, mean, lo, hi)}}``, accuracies as fractions, % of GT in percent; a key is absent when
    it cannot be computed (no shared seeds, no ``gt`` arm, no other budgeted arm).
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for a in arms:
        groups.setdefault(str(a["arm"]), []).append(a)
    corr = {name: _correctness(runs) for name, runs in groups.items()}
    corr = {k: v for k, v in corr.items() if v}
    gt = next((name for name, runs in groups.items() if _is_gt_reference(runs[0]) and name in corr), None)
    budgeted = [name for name, runs in groups.items() if name in corr and not _is_gt_reference(runs[0])
                and str(runs[0]["strategy"]).lower() != "ttrl"]
    means = {name: float(np.mean([c.mean() for c in corr[name].values()])) for name in corr}

    def paired(names: list[str]) -> np.ndarray | None:
        return _paired_bootstrap([corr[n] for n in names], n_resamples, seed)

    out: dict[str, dict[str, Any]] = {}
    for name in corr:
        row: dict[str, Any] = {}
        own = paired([name])
        if own is not None:
            row["accuracy"] = _interval(own[0])
        if gt is not None and name != gt:
            both = paired([name, gt])
            if both is not None:
                d = both[0] - both[1]
                row["vs_gt"] = (float(d.mean()), *_interval(d))
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratio = 100 * both[0] / both[1]
                ratio = ratio[np.isfinite(ratio)]
                if ratio.size:
                    row["pct_gt"] = (float(ratio.mean()), *_interval(ratio))
        others = [n for n in budgeted if n != name]
        if name in budgeted and others:
            best = max(others, key=lambda n: means[n])
            both = paired([name, best])
            if both is not None:
                d = both[0] - both[1]
                row["vs_best"] = (best, float(d.mean()), *_interval(d))
        out[name] = row
    return out


def baseline_table(data: Mapping[str, Any], baseline: str, n_resamples: int = 2000, seed: int = 0
                   ) -> dict[str, dict[str, Any]]:
    """Per arm: its paired difference to the arm ``baseline`` and its share of ``gt``'s gain over the start model.

    Both are resampled like :func:`interval_table` (seeds and items together, on the seeds the arms share). The
    share of the gain is ``(acc - start) / (acc_gt - start)`` per resample, with the start model's per-item
    results resampled with the same items (the start model is the same on every seed); resamples where ``gt``
    gained nothing are left out. ``data`` is a ``results.json`` (:func:`load_results`); ``baseline`` an arm name
    (``"random-mask@25%"``) or a strategy run at one budget (``"random-mask"``).

    Returns ``{arm: {"seeds": [...], "vs_baseline": (mean, lo, hi), "pct_gain": (mean, lo, hi)}}``, differences as
    fractions, the gain share in percent; a key is absent when it cannot be computed.
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for a in data["arms"]:
        groups.setdefault(str(a["arm"]), []).append(a)
    corr = {name: c for name, runs in groups.items() if (c := _correctness(runs))}
    matches = [n for n in groups if n == baseline or str(groups[n][0]["strategy"]) == baseline]
    if len(matches) != 1:
        raise ValueError(f"baseline: {baseline!r} names {len(matches)} arms ({matches}); arms: {sorted(groups)}")
    base = matches[0]
    gt = next((n for n, runs in groups.items() if _is_gt_reference(runs[0]) and n in corr), None)
    bits = str((data.get("start") or {}).get("greedy_correct") or "")
    start = np.frombuffer(bits.encode(), dtype=np.uint8) == ord("1") if bits else None
    out: dict[str, dict[str, Any]] = {}
    for name, c in corr.items():
        row: dict[str, Any] = {"seeds": sorted(c)}
        if name != base and base in corr:
            both = _paired_bootstrap([c, corr[base]], n_resamples, seed)
            if both is not None:
                d = both[0] - both[1]
                row["vs_baseline"] = (float(d.mean()), *_interval(d))
        if gt is not None and name != gt and start is not None:
            trio = _paired_bootstrap([c, corr[gt], {s: start for s in c}], n_resamples, seed)
            if trio is not None:
                with np.errstate(divide="ignore", invalid="ignore"):
                    g = 100 * (trio[0] - trio[2]) / (trio[1] - trio[2])
                g = g[np.isfinite(g)]
                if g.size:
                    row["pct_gain"] = (float(g.mean()), *_interval(g))
        out[name] = row
    return out


def baseline_markdown(table: Mapping[str, Mapping[str, Any]], baseline: str) -> str:
    """A Markdown table of :func:`baseline_table`: per arm, seeds, % of GT's gain and Δ vs the baseline."""
    lines = [f"| arm | seeds | % of GT's gain [95% CI] | Δ vs {baseline} (points) [95% CI] |", "|---|---|---|---|"]
    for name, row in table.items():
        gain = row.get("pct_gain")
        cells = [name, ",".join(map(str, row["seeds"])),
                 "–" if gain is None else f"{gain[0]:.0f} [{gain[1]:.0f}, {gain[2]:.0f}]",
                 _fmt_ci(row.get("vs_baseline"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt_ci(t: tuple[float, ...] | None, scale: float = 100.0, digits: int = 1, signed: bool = True) -> str:
    if not t:
        return "–"
    spec = f"{'+' if signed else ''}.{digits}f"

    def num(x: float) -> str:
        return f"{round(scale * x, digits) + 0.0:{spec}}"  # + 0.0: a value that rounds to -0.0 prints as 0.0

    m, lo, hi = t[-3:]
    return f"{num(m)} [{num(lo)}, {num(hi)}]"


def _fmt(ms: tuple[float, float], pct: bool = False, digits: int = 1) -> str:
    m, s = ms
    if not math.isfinite(m):
        return "–"
    if pct:
        return f"{100 * m:.{digits}f} ± {100 * s:.{digits}f}"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def markdown_table(summary: Sequence[Mapping[str, Any]], start: Mapping[str, Any] | None = None,
                   intervals: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The results table (accuracies in %, mean ± std over seeds), and with ``intervals`` (from
    :func:`interval_table`) a second table of 95 % bootstrap intervals and paired differences."""
    text = _main_table(summary, start)
    if intervals:
        text += "\n\n" + _interval_markdown(summary, intervals)
    return text


def _interval_markdown(summary: Sequence[Mapping[str, Any]], intervals: Mapping[str, Mapping[str, Any]]) -> str:
    head = ["strategy", "budget", "greedy acc (%) [95% CI]", "Δ vs gt (points) [95% CI]", "% of GT [95% CI]",
            "best other budgeted arm", "Δ vs it (points) [95% CI]"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary:
        iv = intervals.get(str(r["arm"]), {})
        acc = iv.get("accuracy")
        acc_txt = "–" if acc is None else f"{100 * r['accuracy'][0]:.1f} [{100 * acc[0]:.1f}, {100 * acc[1]:.1f}]"
        best = iv.get("vs_best")
        lines.append("| " + " | ".join([
            str(r["strategy"]), str(r["budget"]), acc_txt, _fmt_ci(iv.get("vs_gt")),
            _fmt_ci(iv.get("pct_gt"), scale=1.0, signed=False), "–" if best is None else str(best[0]),
            _fmt_ci(best)]) + " |")
    return ("95 % intervals: two-level paired bootstrap over seeds and held-out items (2,000 resamples); "
            "Δ = difference in greedy accuracy on the same seeds and items.\n\n" + "\n".join(lines))


def _main_table(summary: Sequence[Mapping[str, Any]], start: Mapping[str, Any] | None = None) -> str:
    k = next((int(r["k"]) for r in summary if r.get("k")), 0)
    head = ["strategy", "budget", "seeds", "greedy acc (%)", "% of GT", "% of GT gain"]
    if k:
        head.append(f"mean@{k} (%)")
    head += ["labels bought", "label share (%)", "pseudo-label acc (%)", "wall time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary:
        cells = [str(r["strategy"]), str(r["budget"]), str(r["seeds"]), _fmt(r["accuracy"], pct=True),
                 _fmt(r["pct_gt"]), _fmt(r["pct_gt_gain"], digits=0)]
        if k:
            cells.append(_fmt(r["mean_at_k"], pct=True))
        cells += [_fmt(r["labels_bought"], digits=0), _fmt(r["label_ratio"], pct=True),
                  _fmt(r["pseudo_label_accuracy"], pct=True), _fmt(r["wall_seconds"], digits=0)]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    if start is not None:
        extra = ""
        if start.get("mean_at_k") is not None:
            extra = (f", mean@{start['k']} {100 * start['mean_at_k']:.1f} %, majority@{start['k']} "
                     f"{100 * start['majority_at_k']:.1f} %")
        text = (f"Start checkpoint: greedy accuracy {100 * start['greedy_accuracy']:.1f} %{extra} "
                f"({start['n']} held-out items).\n\n" + text)
    return text


def write_csv(arms: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """One row per arm and seed."""
    path = Path(path)
    cols = ["strategy", "budget_label", "seed", "greedy_accuracy", "mean_at_k", "pass_at_k", "majority_at_k",
            "labels_bought", "prompts_seen", "label_ratio", "steps", "train_seconds", "wall_seconds",
            "pseudo_label_accuracy", "label_accuracy", "query_vote_wrong_ratio", "query_no_signal_ratio", "error"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for a in arms:
            fin, hist = a["final"], a.get("history_summary", {})
            w.writerow({"strategy": a["strategy"], "budget_label": a["budget_label"], "seed": a["seed"],
                        "greedy_accuracy": fin["greedy_accuracy"], "mean_at_k": fin.get("mean_at_k"),
                        "pass_at_k": fin.get("pass_at_k"), "majority_at_k": fin.get("majority_at_k"),
                        "labels_bought": a["labels_bought"], "prompts_seen": a["prompts_seen"],
                        "label_ratio": a["label_ratio"], "steps": a["steps"], "train_seconds": a["train_seconds"],
                        "wall_seconds": a["wall_seconds"], "pseudo_label_accuracy": hist.get("pseudo_label_accuracy"),
                        "label_accuracy": hist.get("label_accuracy"),
                        "query_vote_wrong_ratio": hist.get("query_vote_wrong_ratio"),
                        "query_no_signal_ratio": hist.get("query_no_signal_ratio"), "error": a.get("error")})
    return path


def _curves(arms: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
    """Per arm: steps, mean/std accuracy and mean labels bought at each evaluated step common to all seeds."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for a in arms:
        groups.setdefault(str(a["arm"]), []).append(a)
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, runs in groups.items():
        common = sorted(set.intersection(*[{float(p["step"]) for p in r["curve"]} for r in runs]))
        if not common:
            continue
        acc = np.array([[next(p["greedy_accuracy"] for p in r["curve"] if float(p["step"]) == s) for s in common]
                        for r in runs], dtype=np.float64)
        lab = np.array([[next(p["labels_bought"] for p in r["curve"] if float(p["step"]) == s) for s in common]
                        for r in runs], dtype=np.float64)
        out[name] = {"step": np.asarray(common), "acc": acc.mean(0), "std": acc.std(0, ddof=1) if len(runs) > 1
                     else np.zeros(len(common)), "labels": lab.mean(0)}
    return out


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _curve_ylabel(arms: Sequence[Mapping[str, Any]], curve_items: int | None, final_points: bool) -> str:
    """The y label of a curve plot; it names the items the curve was measured on when they are fewer than the final
    evaluation's (``rlavr bench`` evaluates its curve on the first ``curve_eval_size`` held-out items)."""
    final_n = max((int(a["final"]["n"]) for a in arms if a.get("final") and a["final"].get("n")), default=0)
    if curve_items is None or not final_n or curve_items >= final_n:
        return "held-out greedy accuracy (%)"
    if final_points:
        return f"greedy acc. (%): lines first {curve_items}, dots all {final_n}"
    return f"greedy accuracy (%), first {curve_items} of {final_n} held-out"


def _save_accuracy_plot(plt: Any, fig: Any, ax: Any, path: str | Path, xlabel: str, title: str,
                        ylabel: str = "held-out greedy accuracy (%)") -> Path:
    """Label, title, grid and legend of an accuracy plot; write it to ``path`` and close the figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def accuracy_vs_steps_plot(arms: Sequence[Mapping[str, Any]], path: str | Path, title: str = "",
                           curve_items: int | None = None) -> Path:
    """Held-out greedy accuracy against training steps, mean ± std over seeds (TTRL's collapse shows here).

    The ± std band is clipped to 0-100 %, the range an accuracy can take (a collapsed arm's band would otherwise
    reach below 0). ``curve_items``: how many held-out items the curve was measured on (the run's
    ``curve_eval_size``); when fewer than the final evaluation's, the y label says so.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for name, c in _curves(arms).items():
        (line,) = ax.plot(c["step"], 100 * c["acc"], marker="o", ms=3, label=name)
        low, high = (np.clip(100 * (c["acc"] + sign * c["std"]), 0.0, 100.0) for sign in (-1.0, 1.0))
        ax.fill_between(c["step"], low, high, alpha=0.15, color=line.get_color())
    return _save_accuracy_plot(plt, fig, ax, path, "training step", title or "accuracy vs steps",
                               _curve_ylabel(arms, curve_items, final_points=False))


def accuracy_vs_labels_plot(arms: Sequence[Mapping[str, Any]], path: str | Path, title: str = "",
                            curve_items: int | None = None) -> Path:
    """Held-out accuracy against ground-truth labels bought (curves over training; final points with std bars).

    Label-free TTRL stays on the vertical axis (0 labels); full supervision runs furthest right. ``curve_items``
    as in :func:`accuracy_vs_steps_plot`: the lines are on those items, the final points on all of them.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    summary = {r["arm"]: r for r in summarize(arms)}
    for name, c in _curves(arms).items():
        (line,) = ax.plot(c["labels"], 100 * c["acc"], alpha=0.6, label=name)
        s = summary[name]
        ax.errorbar([s["labels_bought"][0]], [100 * s["accuracy"][0]], xerr=[s["labels_bought"][1]],
                    yerr=[100 * s["accuracy"][1]], fmt="o", color=line.get_color(), capsize=3)
    ax.set_xscale("symlog", linthresh=10)
    return _save_accuracy_plot(plt, fig, ax, path, "ground-truth labels bought", title or "accuracy vs labels bought",
                               _curve_ylabel(arms, curve_items, final_points=True))


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a ``results.json`` (or the folder holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    if not p.is_file():
        raise ValueError(f"results: {p} does not exist")
    data = json.loads(p.read_text())
    if "arms" not in data:
        raise ValueError(f"results: {p} has no 'arms' (not a results.json written by rlavr bench)")
    return data


def write_report(data: Mapping[str, Any], out: str | Path) -> str:
    """Write ``results.csv``, ``summary.md`` and the two plots from ``results.json``-style data; returns the table."""
    out = Path(out)
    arms = data["arms"]
    write_csv(arms, out / "results.csv")
    start = data.get("start")
    summary = summarize(arms, None if not start else float(start["greedy_accuracy"]))
    intervals = interval_table(arms)
    table = markdown_table(summary, start, intervals)
    cfg = data.get("config", {})
    title = f"{cfg.get('task', '')}: {cfg.get('steps', '?')} steps x {cfg.get('prompts_per_step', '?')} prompts " \
            f"x G={cfg.get('num_generations', '?')}"
    (out / "summary.md").write_text(f"# rlavr bench: {title}\n\n{table}\n\n![accuracy vs steps](accuracy_vs_steps.png)"
                                    f"\n![accuracy vs labels](accuracy_vs_labels.png)\n")
    curve_items = cfg.get("curve_eval_size")
    curve_items = None if curve_items is None else int(curve_items)
    accuracy_vs_steps_plot(arms, out / "accuracy_vs_steps.png", title=title, curve_items=curve_items)
    accuracy_vs_labels_plot(arms, out / "accuracy_vs_labels.png", title=title, curve_items=curve_items)
    if any(iv.get("accuracy") for iv in intervals.values()):
        accuracy_interval_plot(summary, intervals, out / "accuracy_intervals.png", title=title)
        with open(out / "summary.md", "a", encoding="utf-8") as f:
            f.write("![accuracy with 95% intervals](accuracy_intervals.png)\n")
    return table


def accuracy_interval_plot(summary: Sequence[Mapping[str, Any]], intervals: Mapping[str, Mapping[str, Any]],
                           path: str | Path, title: str = "") -> Path:
    """Final greedy accuracy per arm with its 95 % bootstrap interval as error bars (seeds and items)."""
    plt = _plt()
    rows = [r for r in summary if intervals.get(str(r["arm"]), {}).get("accuracy")]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(rows) + 2), 4.5), dpi=120)
    means = np.array([100 * r["accuracy"][0] for r in rows])
    lo = np.array([100 * intervals[str(r["arm"])]["accuracy"][0] for r in rows])
    hi = np.array([100 * intervals[str(r["arm"])]["accuracy"][1] for r in rows])
    xs = np.arange(len(rows))
    ax.errorbar(xs, means, yerr=[means - lo, hi - means], fmt="o", capsize=4)
    ax.set_xticks(xs, [str(r["arm"]) for r in rows], rotation=30, ha="right")
    ax.set_ylabel("held-out greedy accuracy (%)")
    ax.set_title(title or "final accuracy, 95 % bootstrap intervals")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def regime_rows(runs: Mapping[str, Mapping[str, Any]], n_resamples: int = 2000, seed: int = 0
                ) -> list[dict[str, Any]]:
    """One row per (regime, arm) from several benchmarks of the same arms started from different checkpoints.

    Args:
        runs: ``{regime name: results.json data}`` (:func:`load_results`), e.g. ``{"low": ..., "mid": ...}``.
        n_resamples, seed: passed to :func:`interval_table` (the intervals are computed within each regime).

    Returns:
        Rows ``{"regime", "start_majority", "start_greedy", "arm", "strategy", "seeds", "accuracy", "is_gt",
        "pct_gt": (mean, lo, hi) | None, "best": bool, "tied_with_best": bool}``, accuracies as fractions, % of GT
        in percent. ``best`` marks the label-budgeted arm (not ``gt``, not ``ttrl``) with the highest mean
        accuracy in its regime; ``tied_with_best`` marks the other budgeted arms whose paired difference to it
        has a 95 % interval that contains 0 (they cannot be told apart on these seeds and items).
    """
    rows: list[dict[str, Any]] = []
    for regime, data in runs.items():
        arms = data["arms"]
        start = data.get("start") or {}
        summary = summarize(arms)
        intervals = interval_table(arms, n_resamples=n_resamples, seed=seed)
        is_gt = {str(r["arm"]): str(r["strategy"]).lower() in GT_NAMES and r["budget"] == "100%" for r in summary}
        budgeted = [r for r in summary if not is_gt[str(r["arm"])] and str(r["strategy"]).lower() != "ttrl"]
        best = max(budgeted, key=lambda r: r["accuracy"][0])["arm"] if budgeted else None
        for r in summary:
            iv = intervals.get(str(r["arm"]), {})
            vs_best = iv.get("vs_best")
            tied = (r in budgeted and r["arm"] != best and vs_best is not None and vs_best[0] == best
                    and vs_best[2] <= 0.0 <= vs_best[3])
            rows.append({"regime": regime, "start_majority": start.get("majority_at_k"),
                         "start_greedy": start.get("greedy_accuracy"), "arm": str(r["arm"]),
                         "strategy": str(r["strategy"]), "seeds": int(r["seeds"]), "accuracy": r["accuracy"][0],
                         "is_gt": is_gt[str(r["arm"])], "pct_gt": iv.get("pct_gt"), "best": r["arm"] == best,
                         "tied_with_best": bool(tied)})
    return rows


def regime_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of :func:`regime_rows`: one column per regime (ordered by the start model's majority
    accuracy), one row per arm (``gt`` and ``ttrl`` first, then the budgeted arms run in the most regimes, by their
    mean % of GT over those regimes, best first), cells ``% of GT [95 % CI]`` (``gt``: its accuracy); the best budgeted arm
    of each regime in bold, the arms tied with it marked ``=``, an arm with fewer seeds than the most marked
    ``(n=...)``."""
    regimes = sorted({str(r["regime"]) for r in rows},
                     key=lambda g: next(float(r["start_majority"] or 0) for r in rows if r["regime"] == g))
    cell = {(str(r["regime"]), str(r["arm"])): r for r in rows}

    def rank(arm: str) -> tuple[int, int, float]:  # gt, ttrl, then arms run in more regimes, then mean % of GT
        own = [r for r in rows if r["arm"] == arm]
        if any(r["is_gt"] for r in own):
            return (0, 0, 0.0)
        if any(str(r["strategy"]).lower() == "ttrl" for r in own):
            return (1, 0, 0.0)
        pct = [r["pct_gt"][0] for r in own if r["pct_gt"] is not None]
        return (2, -len(pct), -float(np.mean(pct)) if pct else 0.0)

    arms = sorted(dict.fromkeys(str(r["arm"]) for r in rows), key=rank)
    head = ["arm"]
    for g in regimes:
        r0 = next(r for r in rows if r["regime"] == g)
        maj = r0["start_majority"]
        head.append(f"{g} (majority@k {100 * maj:.1f} %)" if maj is not None else g)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in arms:
        cells = [a]
        for g in regimes:
            r = cell.get((g, a))
            if r is None:
                cells.append("–")
                continue
            p = r["pct_gt"]
            txt = f"{100 * r['accuracy']:.1f} %" if p is None else f"{p[0]:.1f} [{p[1]:.1f}, {p[2]:.1f}]"
            if r["best"]:
                txt = f"**{txt}**"
            elif r["tied_with_best"]:
                txt = f"= {txt}"
            cells.append(f"{txt} (n={r['seeds']})" if r["seeds"] < max(x["seeds"] for x in rows) else txt)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pct_gt_vs_start_plot(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Each arm's % of GT (95 % interval as error bars) against the start model's majority@k accuracy, one line
    per arm across the regimes of :func:`regime_rows` (``gt`` itself, always 100 %, is left out)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.0, 5.2), dpi=120)
    arms = [a for a in dict.fromkeys(str(r["arm"]) for r in rows) if not any(r["arm"] == a and r["is_gt"] for r in rows)]
    width = 2.0  # points of majority accuracy over which the arms are spread, so the error bars do not overlap
    colors = plt.get_cmap("tab20").colors
    markers = "osD^vP*Xh<>p"
    for i, a in enumerate(arms):
        pts = sorted((r for r in rows if r["arm"] == a and r["pct_gt"] is not None and r["start_majority"] is not None),
                     key=lambda r: r["start_majority"])
        if not pts:
            continue
        x = np.array([100 * r["start_majority"] for r in pts]) + width * (i - (len(arms) - 1) / 2) / max(len(arms), 1)
        m = np.array([r["pct_gt"][0] for r in pts])
        lo = np.array([r["pct_gt"][1] for r in pts])
        hi = np.array([r["pct_gt"][2] for r in pts])
        ax.errorbar(x, m, yerr=[m - lo, hi - m], marker=markers[i % len(markers)], color=colors[(2 * i) % 20
                    if i < 10 else (2 * i + 1) % 20], capsize=3, label=a, alpha=0.85)
    ax.axhline(90, color="grey", ls="--", lw=1)
    return _save_accuracy_plot(plt, fig, ax, path, "start model's majority@k accuracy (%)",
                               title or "% of GT against the start model's majority vote",
                               ylabel="% of GT's final accuracy [95 % CI]")


def write_all(bench: BenchResult) -> str:
    """Write every file of a finished benchmark (``results.json`` first); returns the Markdown table."""
    data = bench.to_dict()
    (bench.output_dir / "results.json").write_text(json.dumps(data, indent=2, default=float))
    return write_report(data, bench.output_dir)
