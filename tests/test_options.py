"""The one JSON-object option parser (:func:`rlavr.options.parse_json_object`), used by the CLI and RLAVRConfig."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlavr.options import parse_json_object


@pytest.mark.parametrize("value", [None, "", "   "])
def test_nothing_is_an_empty_dict(value: str | None) -> None:
    assert parse_json_object(value, "x") == {}


def test_dicts_and_json_objects() -> None:
    given_dict = {"a": 1}
    out = parse_json_object(given_dict, "x")
    assert out == given_dict and out is not given_dict  # a copy
    assert parse_json_object(' {"care": {"prob_gate": 0.1}} ', "x") == {"care": {"prob_gate": 0.1}}


@pytest.mark.parametrize(("value", "match"), [
    ("{oops", r"^task-kwargs: expected a JSON object, got '\{oops' \("),
    ("[1]", r"^task-kwargs: expected a JSON object, got '\[1\]'$"),
    (3, r"^task-kwargs: expected a dict \(or a JSON object string\), got 3$"),
    ({1: "a"}, r"^task-kwargs: keys must be strings, got 1$"),
])
def test_errors_name_the_option_and_the_value(value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_json_object(value, "task-kwargs")


@given(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5) | st.none(), max_size=5))
def test_a_dumped_object_reads_back(obj: dict) -> None:
    import json

    assert parse_json_object(json.dumps(obj), "x") == obj


def test_cli_and_config_share_it() -> None:
    """``rlavr bench --strategy-kwargs`` and ``RLAVRConfig(strategy_kwargs=...)`` word the same error."""
    import typer

    from rlavr.cli import _json_option
    from rlavr.trl.config import _parse_kwargs

    with pytest.raises(typer.BadParameter, match=r"strategy-kwargs: expected a JSON object, got '\[1\]'"):
        _json_option("[1]", "strategy-kwargs")
    with pytest.raises(ValueError, match=r"strategy_kwargs: expected a JSON object, got '\[1\]'"):
        _parse_kwargs("[1]")
    assert _json_option('{"a": 1}', "x") == _parse_kwargs('{"a": 1}') == {"a": 1}
