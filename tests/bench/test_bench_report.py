"""Benchmark reports: aggregation maths, Markdown, CSV and plots from results.json-style data."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest

from rlavr.bench import report


def arm(strategy: str, budget: str, seed: int, acc: float, labels: int, curve: list[tuple[int, int, float]],
        pseudo_acc: float | None = None) -> dict[str, Any]:
    hist = {} if pseudo_acc is None else {"pseudo_label_accuracy": pseudo_acc}
    return {"strategy": strategy, "budget": 0.2, "budget_label": budget, "arm": f"{strategy}@{budget}", "seed": seed,
            "final": {"n": 100, "greedy_accuracy": acc, "k": 4, "mean_at_k": acc / 2, "pass_at_k": acc,
                      "majority_at_k": acc, "seconds": 1.0},
            "curve": [{"step": float(s), "labels_bought": float(b), "greedy_accuracy": a} for s, b, a in curve],
            "labels_bought": labels, "prompts_seen": 100, "label_ratio": labels / 100, "wall_seconds": 10.0 + seed,
            "train_seconds": 9.0, "steps": 20, "history_summary": hist, "error": None}


ARMS = [
    arm("gt", "100%", 0, 0.60, 100, [(0, 0, 0.4), (10, 50, 0.5), (20, 100, 0.6)]),
    arm("gt", "100%", 1, 0.50, 100, [(0, 0, 0.4), (10, 50, 0.45), (20, 100, 0.5)]),
    arm("ttrl", "0%", 0, 0.30, 0, [(0, 0, 0.4), (10, 0, 0.35), (20, 0, 0.3)], pseudo_acc=0.35),
    arm("ttrl", "0%", 1, 0.20, 0, [(0, 0, 0.4), (10, 0, 0.3), (20, 0, 0.2)], pseudo_acc=0.25),
    arm("care", "20%", 0, 0.57, 20, [(0, 0, 0.4), (10, 10, 0.5), (20, 20, 0.57)], pseudo_acc=0.8),
    arm("care", "20%", 1, 0.50, 20, [(0, 0, 0.4), (10, 10, 0.45), (20, 20, 0.5)], pseudo_acc=0.9),
]


def test_summary_means_stds_and_percent_of_gt_per_seed() -> None:
    rows = {r["arm"]: r for r in report.summarize(ARMS)}
    assert list(rows) == ["gt@100%", "ttrl@0%", "care@20%"]
    care = rows["care@20%"]
    assert care["accuracy"][0] == pytest.approx(0.535)
    assert care["accuracy"][1] == pytest.approx(math.sqrt(2 * 0.035**2))  # sample std of {0.57, 0.50}
    # % of GT is per seed: 0.57/0.60 = 95 %, 0.50/0.50 = 100 %
    assert care["pct_gt"][0] == pytest.approx(97.5)
    assert rows["gt@100%"]["pct_gt"] == (pytest.approx(100.0), pytest.approx(0.0))
    assert rows["ttrl@0%"]["pct_gt"][0] == pytest.approx(100 * (0.3 / 0.6 + 0.2 / 0.5) / 2)
    assert care["labels_bought"] == (20.0, 0.0)
    assert care["pseudo_label_accuracy"][0] == pytest.approx(0.85)
    assert math.isnan(rows["gt@100%"]["pseudo_label_accuracy"][0])
    with pytest.raises(ValueError, match="arms"):
        report.summarize([])


def test_percent_of_gt_is_blank_without_a_gt_arm() -> None:
    rows = report.summarize([a for a in ARMS if a["strategy"] != "gt"])
    assert all(math.isnan(r["pct_gt"][0]) for r in rows)
    assert "| care | 20% | 2 | 53.5 ± 4.9 | – | – |" in report.markdown_table(rows)


def test_markdown_table_and_start_line() -> None:
    start = {"n": 100, "greedy_accuracy": 0.4, "k": 4, "mean_at_k": 0.25, "majority_at_k": 0.3}
    text = report.markdown_table(report.summarize(ARMS, start_accuracy=0.4), start)
    assert text.startswith("Start checkpoint: greedy accuracy 40.0 %, mean@4 25.0 %, majority@4 30.0 %")
    assert "| strategy | budget | seeds | greedy acc (%) | % of GT | % of GT gain | mean@4 (%) |" in text
    # gain: (0.57-0.4)/(0.6-0.4) = 85 %, (0.50-0.4)/(0.50-0.4) = 100 %
    assert ("| care | 20% | 2 | 53.5 ± 4.9 | 97.5 ± 3.5 | 92 ± 11 | 26.7 ± 2.5 | 20 ± 0 | 20.0 ± 0.0 | 85.0 ± 7.1 | "
            "10 ± 1 |") in text
    ttrl = next(r for r in report.summarize(ARMS, start_accuracy=0.4) if r["strategy"] == "ttrl")
    assert ttrl["pct_gt_gain"][0] == pytest.approx(100 * ((0.3 - 0.4) / 0.2 + (0.2 - 0.4) / 0.1) / 2)
    assert math.isnan(report.summarize(ARMS, start_accuracy=0.7)[0]["pct_gt_gain"][0])  # GT below the start


def test_write_report_files(tmp_path: Path) -> None:
    data = {"config": {"task": "addition", "steps": 20, "prompts_per_step": 5, "num_generations": 4},
            "start": {"n": 100, "greedy_accuracy": 0.4, "k": 0, "mean_at_k": None, "majority_at_k": None},
            "arms": ARMS}
    (tmp_path / "results.json").write_text(json.dumps(data))
    loaded = report.load_results(tmp_path)
    table = report.write_report(loaded, tmp_path)
    assert "care" in table and (tmp_path / "summary.md").read_text().count("|") > 20
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and rows[4]["strategy"] == "care" and float(rows[4]["greedy_accuracy"]) == 0.57
    for name in ("accuracy_vs_steps.png", "accuracy_vs_labels.png"):
        png = (tmp_path / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    with pytest.raises(ValueError, match="does not exist"):
        report.load_results(tmp_path / "nope")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="arms"):
        report.load_results(tmp_path / "bad.json")


def test_curves_average_seeds_on_common_steps() -> None:
    curves = report._curves(ARMS)
    c = curves["ttrl@0%"]
    assert c["step"].tolist() == [0.0, 10.0, 20.0]
    assert c["acc"].tolist() == pytest.approx([0.4, 0.325, 0.25])
    assert curves["gt@100%"]["labels"].tolist() == [0.0, 50.0, 100.0]


@pytest.fixture
def plotted_axes(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The axes of every accuracy plot drawn in the test, in order (captured just before saving)."""
    seen: list[Any] = []
    save = report._save_accuracy_plot

    def keep_axes(plt: Any, fig: Any, ax: Any, *args: Any, **kwargs: Any) -> Path:
        seen.append(ax)
        return save(plt, fig, ax, *args, **kwargs)

    monkeypatch.setattr(report, "_save_accuracy_plot", keep_axes)
    return seen


def test_steps_plot_band_stays_within_0_and_100(tmp_path: Path, plotted_axes: list[Any]) -> None:
    # seeds far apart near 0 and 100: mean ± std would reach below 0 and above 100
    arms = [arm("ttrl", "0%", s, a, 0, [(0, 0, 0.4), (10, 0, a)]) for s, a in enumerate((0.0, 0.3))]
    arms += [arm("gt", "100%", s, a, 100, [(0, 0, 0.4), (10, 100, a)]) for s, a in enumerate((1.0, 0.7))]
    report.accuracy_vs_steps_plot(arms, tmp_path / "steps.png")
    ys = [y for band in plotted_axes[0].collections for y in band.get_paths()[0].vertices[:, 1]]
    assert min(ys) == pytest.approx(0.0) and max(ys) == pytest.approx(100.0)


def test_curve_plots_name_the_items_the_curve_was_measured_on(tmp_path: Path, plotted_axes: list[Any]) -> None:
    # the arms' final evaluation is on 100 items; a curve on the first 40 must not read as "held-out accuracy"
    report.accuracy_vs_steps_plot(ARMS, tmp_path / "a.png", curve_items=40)
    report.accuracy_vs_labels_plot(ARMS, tmp_path / "b.png", curve_items=40)
    report.accuracy_vs_steps_plot(ARMS, tmp_path / "c.png", curve_items=100)
    report.accuracy_vs_steps_plot(ARMS, tmp_path / "d.png")
    labels = [ax.get_ylabel() for ax in plotted_axes]
    assert "first 40 of 100" in labels[0]
    assert "lines first 40," in labels[1] and "dots all 100" in labels[1]
    assert labels[2] == labels[3] == "held-out greedy accuracy (%)"
    # write_report takes the size from the run's config
    plotted_axes.clear()
    report.write_report({"arms": ARMS, "config": {"curve_eval_size": 40}}, tmp_path)
    assert "first 40 of 100" in plotted_axes[0].get_ylabel()


def _with_items(a: dict[str, Any], bits: str) -> dict[str, Any]:
    out = json.loads(json.dumps(a))
    out["final"]["greedy_correct"] = bits
    out["final"]["n"] = len(bits)
    out["final"]["greedy_accuracy"] = bits.count("1") / len(bits)
    return out


def test_hierarchical_bootstrap_is_paired_deterministic_and_validated() -> None:
    import numpy as np

    rng = np.random.default_rng(1)
    x = rng.random((1, 3, 200)) < 0.6
    same = report.hierarchical_bootstrap(np.concatenate([x, x]), n_resamples=300)
    assert same.shape == (2, 300) and np.array_equal(same[0], same[1])  # paired: identical arms never differ
    again = report.hierarchical_bootstrap(np.concatenate([x, x]), n_resamples=300)
    assert np.array_equal(same, again)  # private generator: deterministic
    ones = report.hierarchical_bootstrap(np.ones((1, 2, 50)), n_resamples=100)
    assert np.all(ones == 1.0)
    assert abs(float(same[0].mean()) - float(x.mean())) < 0.02
    with pytest.raises(ValueError, match="correct: expected a non-empty"):
        report.hierarchical_bootstrap(np.ones((2, 50)))


def test_interval_table_differences_to_gt_and_best_other_arm(tmp_path: Path) -> None:
    n = 200
    gt = [_with_items(arm("gt", "100%", s, 0, 100, [(0, 0, 0.4)]), "1" * n) for s in (0, 1)]
    good = [_with_items(arm("care", "20%", s, 0, 20, [(0, 0, 0.4)]), ("10" * n)[:n]) for s in (0, 1)]
    bad = [_with_items(arm("random", "20%", s, 0, 20, [(0, 0, 0.4)]), "1" * (n // 10) + "0" * (n - n // 10))
           for s in (0, 1)]
    ttrl = [_with_items(arm("ttrl", "0%", s, 0, 0, [(0, 0, 0.4)]), "0" * n) for s in (0, 1)]
    arms = gt + good + bad + ttrl
    iv = report.interval_table(arms, n_resamples=500)
    assert iv["gt@100%"]["accuracy"] == (1.0, 1.0) and "vs_gt" not in iv["gt@100%"]
    m, lo, hi = iv["care@20%"]["vs_gt"]
    assert m == pytest.approx(-0.5, abs=0.02) and lo < -0.4 and hi < 0  # half right vs all right
    assert iv["care@20%"]["pct_gt"][0] == pytest.approx(50, abs=2)
    best, d, lo, hi = iv["care@20%"]["vs_best"]
    assert best == "random@20%" and d == pytest.approx(0.4, abs=0.02) and lo > 0  # care is clearly better
    assert iv["random@20%"]["vs_best"][0] == "care@20%"
    assert "vs_best" not in iv["ttrl@0%"]  # the label-free reference is not a budgeted arm
    # old results.json without per-item results: no intervals, the table still renders
    assert report.interval_table(ARMS) == {}
    data = {"config": {"task": "addition"}, "start": {"n": n, "greedy_accuracy": 0.4, "k": 0}, "arms": arms}
    table = report.write_report(data, tmp_path)
    assert "95 % intervals" in table and "| care | 20% | 50.0 [" in table
    assert (tmp_path / "accuracy_intervals.png").read_bytes()[:4] == b"\x89PNG"


def test_baseline_table_gain_share_and_difference_to_the_baseline() -> None:
    n = 200
    # start right on the first quarter; gt on all; care on the first three quarters; random-mask on the first half
    start = "1" * (n // 4) + "0" * (n - n // 4)
    bits = {"gt": "1" * n, "care": "1" * (3 * n // 4) + "0" * (n // 4), "random-mask": "1" * (n // 2) + "0" * (n // 2)}
    arms = [_with_items(arm(name, "100%" if name == "gt" else "20%", s, 0, 20, [(0, 0, 0.4)]), b)
            for name, b in bits.items() for s in (0, 1)]
    data = {"start": {"n": n, "greedy_accuracy": 0.25, "greedy_correct": start}, "arms": arms}
    t = report.baseline_table(data, "random-mask", n_resamples=500)
    m, lo, hi = t["care@20%"]["pct_gain"]
    assert m == pytest.approx(100 * (0.75 - 0.25) / (1 - 0.25), abs=2) and lo < m < hi  # two thirds of the gain
    assert t["random-mask@20%"]["pct_gain"][0] == pytest.approx(100 / 3, abs=2)
    m, lo, hi = t["care@20%"]["vs_baseline"]
    assert m == pytest.approx(0.25, abs=0.01) and lo > 0  # 25 points ahead, clearly
    assert "vs_baseline" not in t["random-mask@20%"] and "pct_gain" not in t["gt@100%"]
    assert t["care@20%"]["seeds"] == [0, 1]
    assert report.baseline_table(data, "random-mask@20%", n_resamples=50).keys() == t.keys()  # by arm name too
    text = report.baseline_markdown(t, "random-mask")
    assert "| care@20% | 0,1 | 67 [" in text and "| +25.0 [" in text
    # no start per-item results: no gain share, the differences remain
    t = report.baseline_table({"start": {"n": n}, "arms": arms}, "random-mask", n_resamples=50)
    assert "pct_gain" not in t["care@20%"] and "vs_baseline" in t["care@20%"]
    with pytest.raises(ValueError, match="baseline: 'prob-mask' names 0 arms"):
        report.baseline_table(data, "prob-mask")


def _regime(gt_bits: str, arms_bits: dict[str, str], majority: float) -> dict[str, Any]:
    """A two-seed results.json-style benchmark with per-item results; ``arms_bits`` maps strategy to its bits."""
    arms = [_with_items(arm("gt", "100%", s, 0, 100, [(0, 0, 0.4)]), gt_bits) for s in (0, 1)]
    for name, bits in arms_bits.items():
        budget = "0%" if name == "ttrl" else "20%"
        arms += [_with_items(arm(name, budget, s, 0, 20, [(0, 0, 0.4)]), bits) for s in (0, 1)]
    return {"start": {"n": len(gt_bits), "greedy_accuracy": 0.4, "k": 8, "majority_at_k": majority}, "arms": arms}


def test_regime_rows_best_arm_ties_and_plot(tmp_path: Path) -> None:
    n = 200
    gt = "1" * n
    high_bits = "1" * 180 + "0" * 20   # 90 % of GT
    tie_bits = "1" * 178 + "0" * 22    # 89 %: not separable from 90 % on 200 items
    low_bits = "1" * 100 + "0" * 100   # 50 %: clearly behind
    runs = {"high": _regime(gt, {"ttrl": low_bits, "care": tie_bits, "random-mask": high_bits, "random": low_bits},
                            majority=0.7),
            "low": _regime(gt, {"ttrl": "0" * n, "care": high_bits, "random-mask": low_bits, "random": low_bits},
                           majority=0.3)}
    rows = report.regime_rows(runs, n_resamples=400)
    by = {(r["regime"], r["arm"]): r for r in rows}
    assert by[("high", "random-mask@20%")]["best"] and not by[("high", "care@20%")]["best"]
    assert by[("high", "care@20%")]["tied_with_best"] and not by[("high", "random@20%")]["tied_with_best"]
    assert by[("low", "care@20%")]["best"] and not by[("low", "random-mask@20%")]["tied_with_best"]
    assert not by[("low", "ttrl@0%")]["best"] and not by[("low", "ttrl@0%")]["tied_with_best"]  # not budgeted
    m, lo, hi = by[("high", "random-mask@20%")]["pct_gt"]
    assert m == pytest.approx(90, abs=1) and lo < m < hi
    assert by[("low", "gt@100%")]["is_gt"] and by[("low", "gt@100%")]["pct_gt"] is None
    assert by[("low", "care@20%")]["start_majority"] == 0.3
    table = report.regime_markdown(rows)
    lines = table.splitlines()
    assert lines[0] == "| arm | low (majority@k 30.0 %) | high (majority@k 70.0 %) |"  # ordered by majority
    # references first, then by mean % of GT over the regimes: care (90, 89), random-mask (50, 90), random (50, 50)
    assert [line.split(" | ")[0][2:] for line in lines[2:]] == ["gt@100%", "ttrl@0%", "care@20%", "random-mask@20%",
                                                                 "random@20%"]
    care = next(line for line in lines if line.startswith("| care@20%"))
    assert care.split(" | ")[1].startswith("**90.") and care.split(" | ")[2].startswith("= 89.")
    path = report.pct_gt_vs_start_plot(rows, tmp_path / "regimes.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_regime_markdown_marks_arms_with_fewer_seeds() -> None:
    runs = {"mid": _regime("1" * 50, {"care": "1" * 40 + "0" * 10}, majority=0.5)}
    runs["mid"]["arms"] = runs["mid"]["arms"][:-1]  # care on one seed only
    table = report.regime_markdown(report.regime_rows(runs, n_resamples=100))
    assert "(n=1)" in next(line for line in table.splitlines() if line.startswith("| care@20%"))
    assert "(n=" not in next(line for line in table.splitlines() if line.startswith("| gt@100%"))


def test_interval_cells_never_print_minus_zero() -> None:
    """A mean difference of -0.004 points rounds to 0.0 and prints as +0.0, not -0.0 (seen in a docs table)."""
    from rlavr.bench.report import _fmt_ci

    assert _fmt_ci((-0.00004, -0.046, 0.044)) == "+0.0 [-4.6, +4.4]"
    assert _fmt_ci((-0.0123, -0.02, -0.0004)) == "-1.2 [-2.0, +0.0]"
    assert _fmt_ci((0.5, 0.4, 0.6), signed=False) == "50.0 [40.0, 60.0]"
    assert _fmt_ci(None) == "–"
