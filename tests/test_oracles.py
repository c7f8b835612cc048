"""Oracles: :mod:`rlavr.oracles` (dataset and callable oracles, fingerprints, the uncharged reference)."""

from __future__ import annotations

import pytest

from rlavr.oracles import CallableOracle, DatasetOracle, OracleError, oracle_reference


def test_dataset_oracle_forms_and_errors() -> None:
    o = DatasetOracle({"a": 1, "b": None})
    assert o.label(["a", "b", "c"], ["", "", ""]) == ["1", None, None]
    assert o.labels_served == 1 and o.calls == 1 and len(o) == 1
    rows = DatasetOracle([{"id": 1, "answer": "x"}, {"id": 2, "answer": "y"}, {"id": 1, "answer": "x"}])
    assert rows.reference(["1", "2"]) == ["x", "y"]
    with pytest.raises(ValueError, match="appears twice with different labels"):
        DatasetOracle([{"id": 1, "answer": "x"}, {"id": 1, "answer": "z"}])
    with pytest.raises(ValueError, match="row 0 has no label column 'answer'"):
        DatasetOracle([{"id": 1, "label": "x"}])
    with pytest.raises(ValueError, match="row 1 has no id column 'id'"):
        DatasetOracle([{"id": 1, "answer": "x"}, {"answer": "x"}])


def test_callable_oracle() -> None:
    o = CallableOracle(lambda pid, prompt: None if pid == "b" else prompt.upper())
    assert o.label(["a", "b"], ["x", "y"]) == ["X", None]
    batched = CallableOracle(lambda ids, prompts: ids[:1], batched=True)
    with pytest.raises(OracleError, match="returned 1 labels for 2 prompts"):
        batched.label(["a", "b"], ["x", "y"])
    assert oracle_reference(o, ["a"]) is None  # no reference_fn -> metrics unavailable, not an error
    assert oracle_reference(CallableOracle(str, reference_fn=lambda ids: list(ids)), ["a"]) == ["a"]
    with pytest.raises(ValueError, match="CallableOracle.fn"):
        CallableOracle(3)  # type: ignore[arg-type]


def test_dataset_oracle_fingerprint_identifies_the_labels() -> None:
    rows = [{"id": "a", "answer": 1}, {"id": "b", "answer": "2"}]
    fp = DatasetOracle(rows).fingerprint()
    assert fp["labels"].startswith("sha256:") and fp["label_column"] == "answer" and fp["n_labels"] == 2
    assert DatasetOracle(rows[::-1]).fingerprint()["labels"] == fp["labels"]  # row order does not matter
    assert DatasetOracle({"a": "1", "b": "2"}).fingerprint()["labels"] == fp["labels"]
    assert DatasetOracle({"a": "1", "b": "3"}).fingerprint()["labels"] != fp["labels"]  # a label differs
    assert DatasetOracle({"a": "1"}).fingerprint()["labels"] != fp["labels"]  # a row less
