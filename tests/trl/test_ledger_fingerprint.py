"""The trainer's ledger records what it labels (the default oracle's dataset fingerprint and the answer space): a
ledger of another dataset with colliding prompt ids is refused unless ``allow_foreign_ledger=True``."""

from __future__ import annotations

import pytest
from trl_tiny import BASE_ARGS, exact_reward, load_tokenizer, make_dataset

from rlavr.labels import LabelLedger, LedgerMismatchError
from rlavr.trl import RLAVRConfig, RLAVRGRPOTrainer


def _trainer(model: str, tmp_path, ds, **kw):  # type: ignore[no-untyped-def]
    args = RLAVRConfig(output_dir=str(tmp_path / "out"), **{**BASE_ARGS, "answer_space": "exact",
                                                             "ledger_path": str(tmp_path / "ledger.sqlite"), **kw},
                       strategy="random", budget=0.5)
    return RLAVRGRPOTrainer(model=model, reward_funcs=[exact_reward], args=args, train_dataset=ds,
                            processing_class=load_tokenizer(model))


def test_a_ledger_of_another_dataset_is_refused_by_the_trainer(tiny_model_path, tmp_path):
    first = _trainer(tiny_model_path, tmp_path, make_dataset(8))
    recorded = first.engine.ledger.fingerprint
    assert recorded is not None and recorded["label_column"] == "answer" and recorded["answer_space"] == "exact"
    first.engine.ledger.close()
    _trainer(tiny_model_path, tmp_path, make_dataset(8)).engine.ledger.close()  # the same data again: a resume
    other = make_dataset(8, small=True)  # ids p0..p7 again, other answers
    with pytest.raises(LedgerMismatchError, match="allow_foreign_ledger") as info:
        _trainer(tiny_model_path, tmp_path, other)
    assert str(tmp_path / "ledger.sqlite") in str(info.value)
    forced = _trainer(tiny_model_path, tmp_path, other, allow_foreign_ledger=True)
    forced.engine.ledger.close()
    with LabelLedger(tmp_path / "ledger.sqlite", read_only=True) as led:
        assert led.fingerprint == recorded  # the original record is kept
