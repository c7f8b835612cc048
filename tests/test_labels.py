"""``rlavr.labels``: the old import path of the majority vote, the oracles and the ledger keeps working."""

from __future__ import annotations

import rlavr.labels as labels
from rlavr import ledger, oracles, votes


def test_labels_re_exports_the_public_names_of_votes_oracles_and_ledger() -> None:
    for module in (votes, oracles, ledger):
        for name in module.__all__:
            assert getattr(labels, name) is getattr(module, name), f"rlavr.labels.{name}"
            assert name in labels.__all__, name
    assert not [name for name in labels.__all__ if name.startswith("_")]
    for name in labels.__all__:
        assert hasattr(labels, name), name
