"""rlavr in TRL's logs: every metric under ``rlavr/`` and documented in docs/trl.md, rlavr's logger following TRL's
``log_level``, a one-line summary at the end of training, and the strategy and budget in TRL's model card."""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import transformers
from trl_tiny import BASE_ARGS, SeededRollouts, exact_reward, load_tokenizer, make_dataset

from rlavr.trl import RLAVRConfig, RLAVRGRPOTrainer

DOCS = Path(__file__).resolve().parents[2] / "docs" / "trl.md"
# documented keys a short run on the toy data may legitimately not log (they need a pool fit, a pseudo-labelled group
# with a known reference, a queried group, an oracle failure or answers that hit the parser's bounds)
CONDITIONAL = {"rlavr/summary/pseudo_label_accuracy", "rlavr/pseudo_label_accuracy", "rlavr/query_vote_wrong_ratio",
               "rlavr/query_no_signal_ratio"}


@pytest.fixture(autouse=True)
def _restore_log_levels() -> Iterator[None]:
    log = logging.getLogger("rlavr")
    level, verbosity = log.level, transformers.logging.get_verbosity()
    yield
    log.setLevel(level)
    transformers.logging.set_verbosity(verbosity)


def documented_keys() -> set[str]:
    """The backticked ``rlavr/...`` names of docs/trl.md's Logging section (``*`` marks a family)."""
    text = DOCS.read_text(encoding="utf-8")
    section = text[text.index("\n## Logging\n"):]
    section = section[:section.index("\n## ", 1)]
    return set(re.findall(r"`(rlavr/[^`\s]+)`", section))


def build(model_path: str, tmp_path: Any, **kw: Any) -> RLAVRGRPOTrainer:
    tok = load_tokenizer(model_path)
    args = RLAVRConfig(output_dir=str(tmp_path / "out"),
                       **{**BASE_ARGS, "answer_space": "exact", "ledger_path": str(tmp_path / "ledger.sqlite"), **kw})
    return RLAVRGRPOTrainer(model=model_path, reward_funcs=[exact_reward], args=args,
                            train_dataset=make_dataset(32, small=True), processing_class=tok,
                            rollout_func=SeededRollouts(tok))


@pytest.fixture(scope="module")
def trained(tiny_model_path: str, tmp_path_factory: pytest.TempPathFactory) -> RLAVRGRPOTrainer:
    log = logging.getLogger("rlavr")
    level = log.level
    t = build(tiny_model_path, tmp_path_factory.mktemp("logging"), strategy="entropy", budget=0.5,
              per_device_train_batch_size=16)
    t.train()
    log.setLevel(level)
    return t


def test_every_rlavr_metric_is_prefixed_and_documented(trained: RLAVRGRPOTrainer) -> None:
    logged = {k for h in trained.state.log_history for k in h}
    history_keys = {k for h in trained.rlavr_history for k in h} - {"step", "round"}
    # nothing of rlavr's reaches TRL's logs without the prefix (TRL's own batch sizes etc. are left alone)
    unprefixed = {k for k in history_keys if not k.startswith("rlavr/")}
    assert unprefixed and not (unprefixed & logged), unprefixed & logged
    assert {"rlavr/" + k for k in unprefixed} <= logged
    ours = {k for k in logged if k.startswith("rlavr")}
    assert all(k.startswith("rlavr/") for k in ours), ours
    documented = documented_keys()
    patterns = {d for d in documented if "*" in d}
    exact = documented - patterns
    undocumented = {k for k in ours if k not in exact and not any(fnmatch.fnmatchcase(k, p) for p in patterns)}
    assert not undocumented, f"logged but not in docs/trl.md's Logging section: {sorted(undocumented)}"
    # the docs list no key a run cannot log (the conditional ones aside, every exact name was logged here)
    never = exact - ours - CONDITIONAL
    never -= {k for k in never if k.startswith(("rlavr/oracle_failed_to_", "rlavr/pool/"))}
    assert not never, f"documented but not logged: {sorted(never)}"
    assert any(k.startswith("rlavr/strategy/") for k in ours)


def test_history_and_step_metrics_keep_unprefixed_keys(trained: RLAVRGRPOTrainer) -> None:
    h = trained.rlavr_history[-1]
    assert {"route/query", "route/pseudo", "route/drop", "budget_spent", "batch_size", "step", "round"} <= set(h)


def test_summary_in_last_log(trained: RLAVRGRPOTrainer) -> None:
    last = trained.state.log_history[-1]
    assert "train_runtime" in last
    hist = trained.rlavr_history
    q = sum(x["route/query"] for x in hist)
    groups = sum(x["route/query"] + x["route/pseudo"] + x["route/drop"] for x in hist)
    assert last["rlavr/summary/labels_bought"] == trained.engine.spent > 0
    assert last["rlavr/summary/route_query"] == q and last["rlavr/summary/groups"] == groups == 2 * 4
    assert last["rlavr/summary/labelled_share"] == pytest.approx(q / groups)
    assert last["rlavr/summary/rounds"] == len(hist) == 2
    assert trained.rlavr_summary()["labels_bought"] == trained.engine.spent


def test_logger_follows_trl_log_level(tiny_model_path: str, tmp_path: Any) -> None:
    build(tiny_model_path, tmp_path, strategy="random", budget=0.5, log_level="error")
    assert logging.getLogger("rlavr").getEffectiveLevel() == logging.ERROR
    build(tiny_model_path, tmp_path, strategy="random", budget=0.5, log_level="info")
    assert logging.getLogger("rlavr.trl.trainer").getEffectiveLevel() == logging.INFO
    logging.getLogger("rlavr").setLevel(logging.DEBUG)  # "passive" (the default) sets nothing
    build(tiny_model_path, tmp_path, strategy="random", budget=0.5)
    assert logging.getLogger("rlavr").level == logging.DEBUG


def test_one_line_summary_at_train_end(tiny_model_path: str, tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)  # root: what is shown is decided by the rlavr logger's level
    t = build(tiny_model_path, tmp_path, strategy="random", budget=0.5, log_level="info", max_steps=1)
    t.train()
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("rlavr") and "labels bought" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
    line = lines[0]
    assert f"{t.engine.spent} labels bought" in line and "'random'" in line and "50% of prompts" in line
    assert "routes query/pseudo/drop" in line and str(tmp_path / "ledger.sqlite") in line
    # the default log level ("passive") leaves the rlavr logger as the application set it (here WARNING): no line
    logging.getLogger("rlavr").setLevel(logging.WARNING)
    caplog.clear()
    t = build(tiny_model_path, tmp_path / "b", strategy="random", budget=0.5, max_steps=1)
    t.train()
    assert not [r for r in caplog.records if "labels bought" in r.getMessage()]


def test_model_card_names_strategy_and_budget(trained: RLAVRGRPOTrainer) -> None:
    trained.create_model_card(model_name="tiny-rlavr")
    card = (Path(trained.args.output_dir) / "README.md").read_text(encoding="utf-8")
    head = card.split("---")[1]  # the YAML metadata
    assert "- rlavr" in head and "- rlavr-entropy" in head and "- grpo" in head
    assert "strategy `entropy`" in card and "50% of prompts" in card and "budget=0.5" in card
