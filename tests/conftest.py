"""Shared test configuration. Keep this small and generic: helpers live in ``tests/helpers.py``.

``tests/`` has no ``__init__.py``; pytest puts this directory on ``sys.path`` (rootdir conftest, "prepend"
import mode), so every test module can ``from helpers import make_batch``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # also under --import-mode=importlib
    sys.path.insert(0, _HERE)


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    """A fresh SQLite ledger file path inside the test's temporary directory."""
    return tmp_path / "ledger" / "labels.sqlite"
