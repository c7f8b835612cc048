"""Through the TRL trainer: a failed query follows the strategy's policy (``on_oracle_failure="auto"``), and
``"raise"`` stops ``train()`` with the oracle's error (issue 17, item 2)."""

from __future__ import annotations

import pytest
from test_trainer import train  # tests/trl is on sys.path (pytest's prepend import mode)

from rlavr.engine import OracleFailureError
from rlavr.labels import CallableOracle, OracleError


def _offline(ids, prompts):  # type: ignore[no-untyped-def]
    raise OracleError("annotator offline")


def test_a_mask_rule_never_trains_on_a_failed_querys_pseudo_label(tiny_model_path, tmp_path):
    t = train(tmp_path, tiny_model_path, strategy="random-mask", budget="2/step", max_steps=1,
              per_device_train_batch_size=16, oracle_max_retries=0, oracle_backoff=0.0,
              trainer_kw={"oracle": CallableOracle(_offline, batched=True)})
    assert t.engine.on_oracle_failure == "auto" and t.engine.spent == 0
    for h in t.rlavr_history:
        assert h["route/pseudo"] == 0 and h["route/query"] == 0
        assert h["oracle_failed_to_drop"] == 2 and h["oracle_failed_to_pseudo"] == 0


def test_raise_stops_training_with_the_oracles_error(tiny_model_path, tmp_path):
    with pytest.raises(OracleFailureError) as info:
        train(tmp_path, tiny_model_path, strategy="random", budget="2/step", max_steps=1,
              per_device_train_batch_size=16, oracle_max_retries=0, oracle_backoff=0.0,
              on_oracle_failure="raise", trainer_kw={"oracle": CallableOracle(_offline, batched=True)})
    assert isinstance(info.value.__cause__, OracleError)
