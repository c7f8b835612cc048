"""The one pre-parser of budgets typed as text (:func:`rlavr.budget.budget_value`): ``rlavr bench --budgets``,
``rlavr replay --budget`` and ``name@budget`` read a budget the same way."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlavr.budget import Budget, budget_value


@pytest.mark.parametrize(("text", "value"), [
    ("0.2", 0.2), ("500", 500), ("0", 0), ("1.0", 1.0), ("20%", "20%"), ("2/step", "2/step"),
    ("0.5/step", "0.5/step"), ("unlimited", "unlimited"), ("1e3", "1e3"), ("", ""),
])
def test_numbers_become_numbers_and_the_rest_is_left_to_budget_parse(text: str, value: object) -> None:
    got = budget_value(text)
    assert got == value and type(got) is type(value)


@given(st.integers(0, 10**9))
def test_integers_read_back(n: int) -> None:
    assert budget_value(str(n)) == n and Budget.parse(budget_value(str(n))) == Budget.parse(n)


def test_cli_and_bench_runner_share_it() -> None:
    from rlavr.bench.runner import split_strategy_spec

    assert split_strategy_spec("care@0.2") == ("care", 0.2)
    assert split_strategy_spec("care@500") == ("care", 500)
    assert split_strategy_spec("care@2/step") == ("care", "2/step")
