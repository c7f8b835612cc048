"""The user-style rules in the top-level ``strategies/`` folder: their maths, their validation, and both ways
of loading them (by path, and by entry point).

The rules are not part of the installed ``rlavr`` package (the folder is outside ``src/``), so rlavr's own
``pyproject.toml`` does not list them as entry points. The entry-point path is tested the way a plugin
package is seen by ``importlib.metadata``: a temporary ``*.dist-info`` directory with an ``entry_points.txt``
is put on ``sys.path`` together with the folder holding the modules, and the registry is asked to rescan.
The shared contract suite (``tests/contract``) runs every rule here through the same checks as the built-ins.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rlavr.budget import BudgetView
from rlavr.engine import AcquisitionEngine
from rlavr.labels import DatasetOracle
from rlavr.strategies import available, get_strategy, registry
from rlavr.types import PromptGroup, Rollout, RolloutBatch, Route

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "strategies"
PATHS = {
    "answer-margin": f"{RULES / 'answer_margin.py'}:AnswerMargin",
    "length-disagreement": f"{RULES / 'length_disagreement.py'}:LengthDisagreement",
    "low-agreement": f"{RULES / 'template.py'}:LowAgreement",
}


def batch(answer_rows: list[list[str | None]], lengths: list[list[int]] | None = None) -> RolloutBatch:
    groups = []
    for i, row in enumerate(answer_rows):
        lens = lengths[i] if lengths else [5] * len(row)
        groups.append(PromptGroup(id=f"p{i}", prompt=f"q{i}", rollouts=tuple(
            Rollout(text=str(a), answer=a, length=n) for a, n in zip(row, lens, strict=True))))
    return RolloutBatch.from_groups(groups)


def none_known(B: int, remaining: int) -> BudgetView:
    return BudgetView(remaining=remaining, known=np.zeros(B, bool))


# ====================================================================================== maths


def test_answer_margin_scores_and_routes() -> None:
    b = batch([["1", "1", "1", "1"],      # unanimous: margin 1
               ["1", "2", "1", "2"],      # tie: margin 0
               ["1", "1", "2", None],     # 2 vs 1: margin 1/4
               [None, None, None, None]])  # no answer: never queried
    rule = get_strategy(PATHS["answer-margin"], min_margin=0.3, gamma=1.0)
    acq = rule.select(b, none_known(4, 1))
    np.testing.assert_allclose(acq.scores, [0.0, 1.0, 0.75, 0.0])
    assert acq.routes.tolist() == [Route.PSEUDO, Route.QUERY, Route.DROP, Route.DROP]
    assert acq.weights[0] == 1.0  # margin**gamma = 1
    assert acq.metrics["close_call_dropped"] == 2.0
    # with budget 2 the 2-vs-1 group is queried next; the no-answer group never is
    acq2 = rule.select(b, none_known(4, 3))
    assert acq2.routes[2] == Route.QUERY and acq2.routes[3] != Route.QUERY


def test_answer_margin_function_matches_a_loop() -> None:
    from importlib import util

    spec = util.spec_from_file_location("am_check", RULES / "answer_margin.py")
    assert spec and spec.loader
    mod = util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(0)
    sizes = rng.integers(0, 5, size=(50, 6))
    expected = [(sorted(r)[-1] - sorted(r)[-2]) / 6 for r in sizes.tolist()]
    np.testing.assert_allclose(mod.answer_margin(sizes, 6), expected)
    np.testing.assert_allclose(mod.answer_margin(np.array([[3], [0]]), 1), [3.0, 0.0])  # G = 1


def test_length_disagreement_scores() -> None:
    b = batch([["1", "1", "2"], ["1", "2", "3"], ["1", "1", "1"]],
              lengths=[[10, 10, 10], [1, 100, 1000], [3, 30, 300]])
    rule = get_strategy(PATHS["length-disagreement"])
    acq = rule.select(b, none_known(3, 1))
    np.testing.assert_allclose(acq.scores, np.log1p([[10, 10, 10], [1, 100, 1000], [3, 30, 300]]).std(axis=1))
    assert acq.routes.tolist() == [Route.PSEUDO, Route.QUERY, Route.PSEUDO]
    mixed = get_strategy(PATHS["length-disagreement"], entropy_mix=1.0).select(b, none_known(3, 1))
    np.testing.assert_allclose(mixed.scores, b.votes.entropy)


def test_template_rule_is_one_minus_agreement() -> None:
    b = batch([["1", "1", "2", "2"], ["1", "1", "1", "2"], [None, None, None, None]])
    rule = get_strategy(PATHS["low-agreement"], mask=True)
    acq = rule.select(b, none_known(3, 1))
    np.testing.assert_allclose(acq.scores, [0.5, 0.25, 1.0])
    assert acq.routes.tolist() == [Route.QUERY, Route.DROP, Route.DROP]  # all-invalid group is not eligible


@pytest.mark.parametrize(("name", "kwargs", "field"), [
    ("answer-margin", {"min_margin": 1.5}, "min_margin"), ("answer-margin", {"min_margin": "0.2"}, "min_margin"),
    ("answer-margin", {"gamma": -1.0}, "gamma"), ("answer-margin", {"gamma": float("nan")}, "gamma"),
    ("length-disagreement", {"entropy_mix": 2.0}, "entropy_mix"),
    ("length-disagreement", {"entropy_mix": True}, "entropy_mix"),
    ("low-agreement", {"pseudo_weight": -0.1}, "pseudo_weight"), ("low-agreement", {"seed": -3}, "seed"),
    ("low-agreement", {"no_such_option": 1}, "no_such_option"),
])
def test_bad_options_raise_value_error_naming_the_field(name: str, kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        get_strategy(PATHS[name], **kwargs)


def test_path_loading_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        get_strategy(f"{tmp_path / 'missing.py'}:Rule")
    with pytest.raises(ValueError, match="defines no 'Nope'"):
        get_strategy(f"{RULES / 'answer_margin.py'}:Nope")


def test_path_loading_executes_the_file(tmp_path: Path) -> None:
    """What the docs warn about: loading a rule by path runs the file's top-level code."""
    marker = tmp_path / "ran"
    rule = tmp_path / "side_effect.py"
    rule.write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('executed')\n"
        "from rlavr.strategies import Strategy\n"
        "class R(Strategy):\n"
        "    name = 'side-effect'\n"
        "    def select(self, batch, budget):\n"
        "        return self.route_by_score(batch.votes.entropy, budget)\n")
    get_strategy(f"{rule}:R")
    assert marker.read_text() == "executed"


# ====================================================================================== entry points


@pytest.fixture
def user_rules_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake installed distribution exposing the user rules in the ``rlavr.strategies`` entry-point group."""
    dist = tmp_path / "rlavr_user_rules-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rlavr-user-rules\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[rlavr.strategies]\n"
        "answer-margin = answer_margin:AnswerMargin\n"
        "length-disagreement = length_disagreement:LengthDisagreement\n"
        "low-agreement = template:LowAgreement\n")
    monkeypatch.syspath_prepend(str(tmp_path))   # finds the dist-info
    monkeypatch.syspath_prepend(str(RULES))      # makes the modules importable
    monkeypatch.setattr(registry.STRATEGIES, "entries", dict(registry.STRATEGIES.entries))  # restored after the test
    monkeypatch.setattr(registry.STRATEGIES, "entry_points_loaded", False)
    for mod in ("answer_margin", "length_disagreement", "template"):
        monkeypatch.delitem(__import__("sys").modules, mod, raising=False)
    return dist


def test_user_rules_load_by_entry_point(user_rules_plugin: Path) -> None:
    names = available()
    for name in ("answer-margin", "length-disagreement", "low-agreement"):
        assert name in names, f"entry point {name!r} not registered"
        assert names[name].__module__ in ("answer_margin", "length_disagreement", "template")
    rule = get_strategy("answer-margin-mask", min_margin=0.1)
    assert rule.mask and rule.min_margin == 0.1  # type: ignore[attr-defined]
    b = batch([["1", "2", "1", "2"], ["1", "1", "1", "1"]])
    eng = AcquisitionEngine("length-disagreement", DatasetOracle({"p0": "1", "p1": "1"}), budget=0.5)
    res = eng.decide(b, step=0)
    assert res.routes.tolist().count(Route.QUERY) == 1 and eng.spent == 1

