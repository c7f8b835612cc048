"""Labels: the public names of :mod:`rlavr.votes` (majority vote), :mod:`rlavr.oracles` (ground truth) and
:mod:`rlavr.ledger` (the persistent label ledger), re-exported so that ``from rlavr.labels import ...`` keeps
working. New code imports from those modules directly."""

from __future__ import annotations

from rlavr.ledger import (
    FINGERPRINT_KEY,
    LEGACY_RUN,
    POOL_STEP,
    UNRECORDED_RUN,
    LabelLedger,
    LedgerError,
    LedgerMismatchError,
    PurchaseResult,
    new_run_id,
)
from rlavr.oracles import (
    CallableOracle,
    DatasetOracle,
    Oracle,
    OracleError,
    OracleTimeout,
    call_with_timeout,
    oracle_fingerprint,
    oracle_reference,
)
from rlavr.types import Label
from rlavr.votes import MajorityVote, majority_vote

__all__ = [
    "FINGERPRINT_KEY",
    "LEGACY_RUN",
    "POOL_STEP",
    "UNRECORDED_RUN",
    "CallableOracle",
    "DatasetOracle",
    "Label",
    "LabelLedger",
    "LedgerError",
    "LedgerMismatchError",
    "MajorityVote",
    "Oracle",
    "OracleError",
    "OracleTimeout",
    "PurchaseResult",
    "call_with_timeout",
    "majority_vote",
    "new_run_id",
    "oracle_fingerprint",
    "oracle_reference",
]
