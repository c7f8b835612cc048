"""1 vs 2 processes (torch.distributed.run, gloo on CPU): identical routes, labels, rewards and spend.

``accelerate launch --num_processes 2 --cpu`` starts a single process on this kind of machine
(docs/design.md#several-processes), so the test launches ``python -m torch.distributed.run --standalone --nproc_per_node 2``. Both runs get the
same rollouts from the seeded harness (TRL seeds each rank ``seed + rank``, so free sampling would be a different
random experiment per layout). The global batch is 3 groups of G=4 = 12 rows; with 2 processes each rank holds
6 rows and group 1 is split across the ranks.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).with_name("dist_script.py")
NAMES = ("random", "random-mask", "hidden-entropy")


def _run(cmd: list[str], timeout: int = 300) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


@pytest.fixture(scope="module")
def runs(tiny_model_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, str(SCRIPT), str(out), "1", tiny_model_path])
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT),
          str(out), "2", tiny_model_path])

    def load(p: str) -> dict:
        return json.loads((out / p).read_text())

    return load("w1/rank0.json"), load("w2/rank0.json"), load("w2/rank1.json")


def _same_rewards(a: list[float], b: list[float]) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)


@pytest.mark.distributed
@pytest.mark.parametrize("name", NAMES)
def test_one_vs_two_processes(runs, name):
    one, two0, two1 = runs
    assert (one["world"], two0["world"], two1["world"]) == (1, 2, 2)
    a, b, c = one[name], two0[name], two1[name]
    assert len(a["rounds"]) == len(b["rounds"]) == len(c["rounds"]) == 3
    for ra, rb, rc in zip(a["rounds"], b["rounds"], c["rounds"], strict=True):
        # identical decisions everywhere (both ranks of the 2-process run hold the broadcast copy)
        assert ra["decision"] == rb["decision"] == rc["decision"]
        # TRL's gathered reward tensor is the same, dropped rows are NaN in both
        assert _same_rewards(ra["rewards"], rb["rewards"]) and _same_rewards(rb["rewards"], rc["rewards"])
        # rank 0 holds global rows 0-5 and rank 1 rows 6-11: together the 1-process advantages
        np.testing.assert_allclose(rb["local_advantages"] + rc["local_advantages"], ra["local_advantages"],
                                   rtol=0, atol=1e-6)
        assert ra["num_items"] == rb["num_items"] == rc["num_items"]
    assert a["spent"] == b["spent"] == c["spent"] > 0
    assert a["history"] == b["history"] == c["history"]
    assert a["ledger"] == b["ledger"]

    def strip(log: list[dict]) -> list[dict]:
        return [{k: v for k, v in x.items() if k != "mean_logprob"} for x in log]

    assert strip(a["log"]) == strip(b["log"])
    la, lb = np.asarray(a["losses"]), np.asarray(b["losses"])
    assert np.all(np.isfinite(la)) and np.all(np.isfinite(lb))
    np.testing.assert_allclose(la[:, 0], lb[:, 0], rtol=0, atol=1e-6)  # losses (DDP reduction order only)
    np.testing.assert_allclose(la[:, 1], lb[:, 1], rtol=1e-5, atol=1e-6)  # grad norms


@pytest.mark.distributed
def test_groups_split_across_ranks_and_hidden_states(runs):
    one, two0, _ = runs
    # 6 rows per rank with G=4: the second group's rollouts live on both ranks
    log = two0["random"]["log"]
    assert [len(x["completions"]) for x in log[:3]] == [4, 4, 4]
    h1, h2 = one["hidden-entropy"]["hidden0"], two0["hidden-entropy"]["hidden0"]
    assert np.asarray(h1["response"]).shape == (3, 4, 64)
    np.testing.assert_allclose(h1["prompt"], h2["prompt"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(h1["response"], h2["response"], rtol=0, atol=1e-5)
    # mask mode with an exhausted budget drops everything: the loss stays finite (normaliser clamped)
    rounds = two0["random-mask"]["rounds"]
    assert any(r["num_items"] == 0 for r in rounds)
    assert all(math.isfinite(x) for pair in two0["random-mask"]["losses"] for x in pair)


@pytest.mark.distributed
def test_answerless_rounds_stop_every_rank_at_the_same_round(runs):
    one, two0, two1 = runs
    a, b, c = one["answerless"], two0["answerless"], two1["answerless"]
    assert a["error"] is not None and "2 rounds in a row" in a["error"]
    assert a == b == c and a["rounds"] == 1  # the same global count on every rank: nobody waits in a collective
