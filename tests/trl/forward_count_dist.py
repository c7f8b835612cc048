"""Worker for test_forward_count.py (not a test module): counts policy trunk forwards of stock TRL and of rlavr
(hidden states + log-probs, free sampling, default TRL config) on N processes (gloo).

Usage: ``python -m torch.distributed.run --standalone --nproc_per_node 2 forward_count_dist.py OUT_DIR 2 MODEL``.
Every rank writes ``OUT_DIR/rank{r}.json`` with ``{"world", "stock": {...}, "rlavr": {...}, "rounds",
"extra_forward_rounds"}``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from test_forward_count import _count, _probe
from trl_tiny import BASE_ARGS, load_tokenizer, make_dataset, overlap_reward

from rlavr.trl import RLAVRConfig, RLAVRGRPOTrainer
from trl import GRPOConfig, GRPOTrainer


def main() -> None:
    out_dir, expected_world, model_path = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    tok = load_tokenizer(model_path)
    kw = {**BASE_ARGS, "max_steps": 2, "per_device_train_batch_size": 12 // world,
          "ddp_backend": "gloo" if world > 1 else None}
    stock = GRPOTrainer(model=model_path, reward_funcs=[overlap_reward],
                        args=GRPOConfig(output_dir=str(out_dir / "stock"), **kw),
                        train_dataset=make_dataset(32, small=True), processing_class=tok)
    assert stock.accelerator.num_processes == expected_world == world, (stock.accelerator.num_processes, world)
    want = _count(stock)
    ours = RLAVRGRPOTrainer(model=model_path, reward_funcs=[overlap_reward],
                            args=RLAVRConfig(output_dir=str(out_dir / "rlavr"), answer_space="exact",
                                             ledger_path=str(out_dir / "ledger.sqlite"), budget=None, **kw),
                            train_dataset=make_dataset(32, small=True), processing_class=tok,
                            strategy=_probe(frozenset({"hidden_states", "logprobs"})))
    got = _count(ours)
    st = ours.rlavr_feature_stats
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank{rank}.json").write_text(json.dumps({
        "world": world, "stock": dict(want), "rlavr": dict(got), "rounds": st["rounds"],
        "extra_forward_rounds": st["extra_forward_rounds"], "generate_rounds": st["generate_rounds"]}))


if __name__ == "__main__":
    main()
