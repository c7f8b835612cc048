"""The shipped checker: ``rlavr.testing.check_strategy`` (pytest-friendly) and ``rlavr check`` (exit 0 / 1 / 2),
same checks and messages; a rule that declares a ``-mask`` form but ignores ``self.mask`` fails both."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rlavr.cli import app
from rlavr.testing import CHECKS, ContractReport, RuleLoadError, StrategyContractError, check_strategy

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = {
    "answer-margin": f"{ROOT / 'strategies' / 'answer_margin.py'}:AnswerMargin",
    "length-disagreement": f"{ROOT / 'strategies' / 'length_disagreement.py'}:LengthDisagreement",
    "low-agreement": f"{ROOT / 'strategies' / 'template.py'}:LowAgreement",
}

RULES = textwrap.dedent('''
    import numpy as np
    from rlavr.strategies import Strategy
    from rlavr.types import Acquisition, Route


    class Good(Strategy):
        name = "good-rule"
        supports_mask = True

        def select(self, batch, budget):
            return self.route_by_score(1.0 - batch.votes.majority_ratio, budget, eligible=batch.votes.n_valid > 0)


    class IgnoresMask(Strategy):
        """Declares a -mask form, but pseudo-labels every group it does not query whatever self.mask says."""

        name = "ignores-mask"
        supports_mask = True

        def select(self, batch, budget):
            acq = self.route_by_score(batch.votes.entropy, budget)
            routes = np.where(acq.routes == Route.QUERY, Route.QUERY, Route.PSEUDO).astype(np.int8)
            return Acquisition(routes=routes, weights=np.ones(batch.B), scores=acq.scores)


    class GlobalRng(Strategy):
        name = "global-rng"

        def select(self, batch, budget):
            return self.route_by_score(np.random.random(batch.B), budget)


    class NoName(Strategy):
        def select(self, batch, budget):
            return self.route_by_score(np.zeros(batch.B), budget)
''')


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    f = tmp_path / "my_rules.py"
    f.write_text(RULES)
    return f


def test_checking_leaves_the_callers_global_rngs_alone() -> None:
    """The no-global-rng check seeds the global RNGs to watch them, and puts the caller's states back."""
    import random

    import torch

    np.random.seed(7)
    random.seed(7)
    torch.manual_seed(7)
    expected = np.random.random(), random.random(), float(torch.rand(1))
    np.random.seed(7)
    random.seed(7)
    torch.manual_seed(7)
    check_strategy(EXAMPLES["low-agreement"], checks=["no-global-rng"])
    assert (np.random.random(), random.random(), float(torch.rand(1))) == expected


def _invoke(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["check", *args])
    return res.exit_code, res.output


# ====================================================================================== check_strategy


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_rules_pass(name: str) -> None:
    report = check_strategy(EXAMPLES[name])
    assert isinstance(report, ContractReport) and report.ok and report.strategy == name
    # every check ran on both forms (all three examples declare a -mask form)
    assert "mask-never-pseudo [mask]" in report.passed and "select-valid [plain]" in report.passed
    assert len(report.passed) == len(report.outcomes) >= len(CHECKS) + 5


def test_a_rule_ignoring_self_mask_fails(rules: Path) -> None:
    with pytest.raises(StrategyContractError) as info:
        check_strategy(f"{rules}:IgnoresMask")
    err = info.value
    assert isinstance(err, AssertionError)  # pytest reports it as a failure
    text = str(err)
    assert text.startswith("strategy 'ignores-mask' failed")
    assert "FAIL mask-never-pseudo [mask]: ignores-mask-mask: the -mask form routed groups" in text
    assert "set supports_mask = False" in text
    # only the -mask form is wrong: every plain check passes
    assert all(o.form == "mask" for o in err.report.failed)
    assert "engine-budget [plain]" in err.report.passed


def test_every_failure_is_listed_with_its_message(rules: Path) -> None:
    report = check_strategy(f"{rules}:GlobalRng", raise_on_failure=False)
    assert not report.ok
    failed = {o.label: o.message for o in report.failed}
    assert set(failed) == {"no-global-rng [plain]", "deterministic [plain]", "state-round-trip [plain]"}
    assert "drew from the global numpy RNG; use self.rng" in failed["no-global-rng [plain]"]
    assert "two instances with the same seed disagree" in failed["deterministic [plain]"]
    assert "FAIL no-global-rng [plain]" in str(report) and "ok   select-valid [plain]" in str(report)


def test_class_object_and_declaration(rules: Path) -> None:
    from rlavr.strategies.registry import _load_from_file

    good = _load_from_file(f"{rules}:Good")
    assert check_strategy(good).ok  # a class object, as in a notebook or a pytest file
    report = check_strategy(_load_from_file(f"{rules}:NoName"), raise_on_failure=False)
    assert [o.label for o in report.failed] == ["declaration [plain]"]
    assert "needs a class attribute `name`" in report.failed[0].message
    with pytest.raises(TypeError, match="not an instance"):
        check_strategy(good())
    with pytest.raises(RuleLoadError, match="does not exist"):
        check_strategy(str(rules.with_name("missing.py")) + ":Good")
    with pytest.raises(ValueError, match="do not fit"):
        check_strategy(good, nope=1)


def test_builtins_by_name() -> None:
    assert check_strategy("random", checks=["select-valid", "mask-never-pseudo"]).passed == [
        "select-valid [plain]", "select-valid [mask]", "mask-never-pseudo [mask]"]
    assert check_strategy("gt", checks=["no-undeclared-mask"]).passed == ["no-undeclared-mask [plain]"]


def test_importing_rlavr_testing_needs_neither_pytest_nor_hypothesis() -> None:
    code = ("import sys; sys.modules['pytest'] = None; sys.modules['hypothesis'] = None; "
            "import rlavr.testing; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


# ====================================================================================== rlavr check


def test_cli_passes_the_example_rules() -> None:
    code, out = _invoke(EXAMPLES["answer-margin"])
    assert code == 0, out
    assert "strategy 'answer-margin' passes all 25 contract checks" in out


def test_cli_fails_a_rule_ignoring_self_mask_with_the_same_messages(rules: Path) -> None:
    code, out = _invoke(f"{rules}:IgnoresMask")
    assert code == 1, out
    with pytest.raises(StrategyContractError) as info:
        check_strategy(f"{rules}:IgnoresMask")
    for line in str(info.value).splitlines():
        assert line in out, line


def test_cli_kwargs(rules: Path) -> None:
    code, out = _invoke(EXAMPLES["answer-margin"], "--kwargs", '{"min_margin": 0.25}')
    assert code == 0, out
    code, out = _invoke(EXAMPLES["answer-margin"], "--kwargs", '{"nope": 1}')
    assert code == 2 and "do not fit" in out


@pytest.mark.parametrize(("spec", "message"), [
    ("{dir}/missing.py:Good", "does not exist"),
    ("{rules}:Missing", "defines no 'Missing'"),
    ("{rules}", "expected 'path/to/file.py:ClassName'"),
    ("no-such-rule", "not a registered name"),
    ("{dir}/raises.py:X", "importing the file raised RuntimeError: boom"),
])
def test_cli_bad_path_exits_2(rules: Path, spec: str, message: str) -> None:
    (rules.parent / "raises.py").write_text("raise RuntimeError('boom')\n")
    code, out = _invoke(spec.format(dir=rules.parent, rules=rules))
    assert code == 2, out
    assert message in " ".join(out.replace("│", " ").split()), out


class _ProtocolOnly:
    """Satisfies StrategyProtocol without subclassing Strategy: no transform_advantages, no prompt_sampler."""

    name = "protocol-only"
    requires = frozenset({"answers"})
    trains_on_pseudo_labels = True

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def select(self, batch, budget):  # type: ignore[no-untyped-def]
        from rlavr.types import Acquisition, Route

        routes = np.full(batch.B, Route.PSEUDO, np.int8)
        routes[budget.known] = Route.QUERY
        return Acquisition(routes=routes, weights=np.ones(batch.B), scores=np.zeros(batch.B))

    def update(self, batch, acquisition, labels) -> None:  # type: ignore[no-untyped-def]
        pass

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


def test_hooks_are_detected_through_capabilities_for_a_protocol_only_rule() -> None:
    """The checker asks capabilities_of(rule) which optional hooks exist: a rule that satisfies StrategyProtocol
    without transform_advantages is not called on it (before: AttributeError in no-global-rng)."""
    report = check_strategy(_ProtocolOnly, raise_on_failure=False,
                            checks=["no-global-rng", "optional-hooks", "deterministic", "pseudo-declaration"])
    assert report.ok, str(report)
