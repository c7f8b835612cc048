"""examples/trl_grpo_care.py runs offline on CPU, and differs from a stock TRL script by the marked lines only."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

EXAMPLE = Path(__file__).parents[2] / "examples" / "trl_grpo_care.py"


def _load():
    spec = importlib.util.spec_from_file_location("trl_grpo_care_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_example_runs_with_care(tmp_path):
    example = _load()
    trainer = example.main(["--max-steps", "2", "--budget", "0.5", "--dataset-size", "64",
                            "--output-dir", str(tmp_path / "out")])
    assert trainer.strategy.name == "care" and trainer.state.global_step == 2
    assert len(trainer.rlavr_history) == 2 and 0 < trainer.budget_spent <= 0.5 * 8
    assert trainer.strategy.n_updates == 2


def test_example_reward_reads_the_label_column():
    example = _load()
    done = [[{"role": "assistant", "content": "It is 12."}], [{"role": "assistant", "content": "7"}], "none"]
    assert example.correctness_reward(done, ["12", "8", "1"]) == [1.0, 0.0, 0.0]


def test_the_rlavr_diff_is_a_few_lines():
    text = EXAMPLE.read_text()
    marked = [line for line in text.splitlines() if line.rstrip().endswith(("# rlavr",)) or "# rlavr (was" in line]
    assert len(marked) == 4, marked
    # undoing the marked lines gives a stock TRL script: no other rlavr name is used in the code
    code = "\n".join(line for line in text.splitlines() if line not in marked)
    assert not re.search(r"\bRLAVR\w*|\bstrategy=|\bbudget=", code.split("def main", 1)[1].split("trainer.train()")[0])
