"""Worker for test_distributed.py (not a test module): trains three tiny rlavr configurations on 1 or N processes.

Usage: ``python -m torch.distributed.run --nproc_per_node N dist_script.py OUT_DIR N MODEL_DIR`` (or plain
``python dist_script.py OUT_DIR 1 MODEL_DIR``). Every rank writes ``OUT_DIR/rank{r}.json`` with its per-round
decisions, gathered rewards, spend, losses and (round 0) hidden states. The global generation batch is always 12
rows = 3 prompt groups of G=4; with 2 processes each holds 6 rows, so group 1 is split across the two ranks.
Rollouts come from the seeded harness (a function of the global row), so every layout sees the same rollouts.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from trl_tiny import BASE_ARGS, SeededRollouts, exact_reward, load_tokenizer, make_dataset

from rlavr.budget import BudgetView
from rlavr.strategies.entropy import Entropy
from rlavr.trl import RLAVRConfig, RLAVRGRPOTrainer
from rlavr.types import Acquisition, RolloutBatch


class HiddenEntropy(Entropy):
    """Entropy routing that also requires (and records) hidden states."""

    name = "test-hidden-entropy"
    requires = frozenset({"answers", "hidden_states"})

    def __init__(self) -> None:
        super().__init__()
        self.hidden: list[dict[str, list]] = []

    def select(self, batch: RolloutBatch, budget: BudgetView) -> Acquisition:
        self.hidden.append({"prompt": batch.prompt_hidden.tolist(), "response": batch.response_hidden.tolist()})
        return super().select(batch, budget)


class Recording(RLAVRGRPOTrainer):
    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        self.rounds: list[dict[str, Any]] = []

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):  # type: ignore[override]
        r = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self.model.training:
            self.rounds.append({"rewards": r[:, 0].tolist()})
        return r

    def _rlavr_postprocess(self, out, decision, B_l):  # type: ignore[override]
        super()._rlavr_postprocess(out, decision, B_l)
        d = {k: decision[k] for k in ("routes", "weights", "labels", "majority", "spent", "step")}
        self.rounds[-1].update(decision=d, local_advantages=out["advantages"].tolist(),
                               num_items=float(out["num_items_in_batch"]))


CONFIGS: dict[str, dict[str, Any]] = {
    "random": {"strategy": "random", "budget": "1/step"},
    "random-mask": {"strategy": "random-mask", "budget": 2, "drop_mode": "mask"},
    "hidden-entropy": {"budget": "1/step"},
}


def answerless(work: Path, world: int, model_path: str, tok: Any) -> dict[str, Any]:
    """answer_space='math' on completions without any answer: every rank must stop at the same round."""
    args = RLAVRConfig(output_dir=str(work), **{**BASE_ARGS, "max_steps": 3, "per_device_train_batch_size": 12 // world},
                       answer_space="math", ledger_path=str(work / "ledger.sqlite"), strategy="ttrl", budget=0,
                       invalid_answer_rounds=2, ddp_backend="gloo" if world > 1 else None)
    trainer = RLAVRGRPOTrainer(model=model_path, reward_funcs=[exact_reward], args=args,
                               train_dataset=make_dataset(32, small=True), processing_class=tok,
                               rollout_func=SeededRollouts(tok, choices=("a", "b c", "=")))
    try:
        trainer.train()
    except ValueError as exc:
        return {"error": str(exc).split(" Example completion")[0], "rounds": len(trainer.rlavr_history)}
    return {"error": None, "rounds": len(trainer.rlavr_history)}


def main() -> None:
    out_dir, expected_world, model_path = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    tok = load_tokenizer(model_path)
    result: dict[str, Any] = {"world": world, "rank": rank}
    for name, cfg in CONFIGS.items():
        work = out_dir / f"w{world}" / name
        strategy = HiddenEntropy() if name == "hidden-entropy" else None
        args = RLAVRConfig(output_dir=str(work), **{**BASE_ARGS, "max_steps": 3,
                                                   "per_device_train_batch_size": 12 // world},
                           answer_space="exact", ledger_path=str(work / "ledger.sqlite"),
                           rollout_log_path=str(work / "rollouts.jsonl"),
                           ddp_backend="gloo" if world > 1 else None, **cfg)
        trainer = Recording(model=model_path, reward_funcs=[exact_reward], args=args,
                            train_dataset=make_dataset(32, small=True), processing_class=tok,
                            rollout_func=SeededRollouts(tok), strategy=strategy)
        assert trainer.accelerator.num_processes == expected_world == world, (trainer.accelerator.num_processes,
                                                                              expected_world, world)
        trainer.train()
        entry: dict[str, Any] = {
            "rounds": trainer.rounds,
            "spent": trainer.budget_spent,
            "history": [{k: v for k, v in h.items() if k != "rlavr/feature_seconds"} for h in trainer.rlavr_history],
            "losses": [[h["loss"], h["grad_norm"]] for h in trainer.state.log_history if "loss" in h],
        }
        if rank == 0:
            entry["ledger"] = [[i, lab, s] for i, lab, s in trainer.engine.ledger.items()]
            entry["log"] = [json.loads(x) for x in (work / "rollouts.jsonl").read_text().splitlines()]
        if strategy is not None and rank == 0:
            entry["hidden0"] = strategy.hidden[0]
        result[name] = entry
    result["answerless"] = answerless(out_dir / f"w{world}" / "answerless", world, model_path, tok)
    (out_dir / f"w{world}").mkdir(parents=True, exist_ok=True)
    (out_dir / f"w{world}" / f"rank{rank}.json").write_text(json.dumps(result))
    np.testing.assert_equal(world, expected_world)


if __name__ == "__main__":
    main()
