"""GRPO in plain PyTorch + Transformers, with rlavr's ``AcquisitionLoop`` choosing which prompts get a bought label.

No TRL: this file is the smallest complete integration of rlavr into a training loop (``docs/integrations.md``
explains each call for other trainers). The policy is rlavr's shipped start model for the ``addition`` task (a
1 M-parameter Qwen3 warm-started on ``a+b=`` sums, loaded from the package, no download); the oracle is a table
of the task's answers. Each step, top to bottom:

    1. sample G completions for each of B prompts           (own seed per step; the global RNG is left alone)
    2. one forward pass: token log-probs (for the loss) and last-token hidden states (for rules that read them)
    3. loop.decide(rows)    -> Decision: route per group (query / pseudo / drop), labels bought within the budget
    4. reward r_{g,j} = 1[answer_{g,j} == label_g]      label_g: bought ground truth (query) or majority (pseudo)
    5. A_{g,j} = (r_{g,j} - mean_j r_{g,j}) / (std_j r_{g,j} + eps);  loop.transform(A): weights, strategy hook
    6. loss = -mean_i A_i * (1/|y_i|) sum_t log pi(y_{i,t} | x_i, y_{i,<t});  optimiser step
    7. loop.record(decision); loop.apply_updates()       (a rule that learns, e.g. CARE, learns here)

Run (about 10 s on 2 CPU cores)::

    python examples/plain_loop.py --steps 8 --strategy entropy --budget 0.2
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlavr.answers import AnswerSpace
from rlavr.bench.models import shipped_start_model
from rlavr.bench.tasks import AdditionTask
from rlavr.engine import AcquisitionEngine
from rlavr.labels import DatasetOracle
from rlavr.loop import AcquisitionLoop
from rlavr.rollouts import RowFeatures
from rlavr.strategies import get_strategy

POOL = 40
"""Prompts of the pool stage (only for a rule that has one): at a 0.2 budget it buys floor(0.2 * 40) = 8 labels."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="GRPO in plain PyTorch with rlavr's AcquisitionLoop (no TRL).")
    p.add_argument("--steps", type=int, default=8, help="GRPO steps (one generation round each)")
    p.add_argument("--strategy", default="entropy", help="an rlavr strategy name (see `rlavr strategies`)")
    p.add_argument("--budget", default="0.2", help="labels: a share of prompts (0.2), a count (50), '2/step'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for the ledger, rollout log and checkpoint (default: temp)")
    p.add_argument("--prompts", type=int, default=8, help="B, prompts per step")
    p.add_argument("--generations", type=int, default=8, help="G, completions per prompt")
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (a 1 M-parameter model gains nothing)")
    return p.parse_args(argv)


def train_rows(args: argparse.Namespace, task: AdditionTask) -> list[dict[str, str]]:
    """The RL prompts with their answers, ``{"id", "prompt", "answer"}`` (the oracle's table; ids are its keys)."""
    return task.rows("train", max(args.steps * args.prompts, POOL), seed=args.seed)


def make_loop(args: argparse.Namespace, task: AdditionTask, rows: list[dict[str, str]], out: Path) -> AcquisitionLoop:
    """Strategy + oracle + budget + ledger -> engine -> loop. One ledger per run, owned by the deciding process."""
    with torch.random.fork_rng(devices=[]):  # a rule may build nn.Modules: keep the global RNG untouched
        strategy = get_strategy(args.strategy, default_seed=args.seed)
    engine = AcquisitionEngine(strategy, oracle=DatasetOracle(rows), budget=args.budget,
                               ledger=str(out / "labels.sqlite"), answer_space=task.answer_space)
    return AcquisitionLoop(engine, rollout_log=out / "rollouts.jsonl")


def rollout(model: Any, tok: Any, space: AnswerSpace, batch: list[dict[str, str]], G: int, max_new: int,
            seed: int) -> dict[str, Any]:
    """Steps 1-2: sample G completions per prompt (rank-major: row r belongs to group r // G), one forward pass."""
    enc = tok([r["prompt"] for r in batch], return_tensors="pt", padding=True, add_special_tokens=False)
    P = enc["input_ids"].shape[1]  # left-padded prompt length
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # sampling draws from a forked RNG seeded per step: reproducible, nothing leaks
        seqs = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new,
                              num_return_sequences=G, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    comp = seqs[:, P:]  # (B*G, T) completion tokens
    eos = comp == tok.eos_token_id
    mask = (eos.cumsum(1) - eos.long()) == 0  # the tokens up to and including the first end of text
    attn = torch.cat([enc["attention_mask"].repeat_interleave(G, 0), mask.long()], dim=1)
    out = model(input_ids=seqs, attention_mask=attn, output_hidden_states=True)
    # log pi(y_t | x, y_<t): the logits at position P-1+t predict completion token t
    logp = torch.log_softmax(out.logits[:, P - 1 : -1].float(), -1).gather(-1, comp[..., None]).squeeze(-1)
    length = mask.sum(1)
    h = out.hidden_states[-1].detach().float()
    last = P - 1 + length.clamp(min=1)  # the last completion token's position
    hidden = torch.stack([h[:, P - 1], h[torch.arange(len(h)), last]], 1).numpy()  # (B*G, 2, H)
    texts = tok.batch_decode(comp, skip_special_tokens=True)
    lp = logp.detach()
    rows = [RowFeatures(id=batch[i // G]["id"], prompt=batch[i // G]["prompt"], text=text, answer=space.extract(text),
                        length=int(length[i]), truncated=not bool(eos[i].any()),
                        mean_logprob=float(lp[i, : length[i]].mean()) if length[i] else 0.0,
                        token_logprobs=tuple(lp[i, : length[i]].tolist()))
            for i, text in enumerate(texts)]
    return {"rows": rows, "hidden": hidden, "logp": logp, "mask": mask.float()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="rlavr-plain-loop-"))
    out.mkdir(parents=True, exist_ok=True)
    B, G = args.prompts, args.generations
    task = AdditionTask()
    space = task.answer_space  # extracts the last integer; the majority vote and the rewards both use it
    train = train_rows(args, task)
    shipped = shipped_start_model(task)  # the packaged warm start (about 50 % majority@8 on held-out sums)
    if shipped is None:
        raise SystemExit("rlavr's shipped start model for the addition task is missing (reinstall rlavr)")
    folder = shipped[0]
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    loop = make_loop(args, task, train, out)
    want_hidden = loop.capabilities.needs_hidden_states  # CARE's classifier reads last-token hidden states

    # before training: a rule with a pool stage (e.g. PivotTrace's probe) says which labels it needs; the loop buys
    if loop.wants_pool_fit():
        with torch.no_grad():
            r = rollout(model, tok, space, train[:POOL], G, task.max_completion_length, seed=args.seed + 10**6)
        fit = loop.fit_pool(r["rows"], G, step=0, hidden=r["hidden"] if want_hidden else None)
        print("pool stage:", loop.record_pool_fit(fit))

    for step in range(args.steps):
        # the rule may choose the prompts (prompt_sampler); None: our own order
        idx = loop.sample_prompts(train, B)
        batch = [train[i] for i in (idx if idx is not None else range(step * B, (step + 1) * B))]
        r = rollout(model, tok, space, batch, G, task.max_completion_length, seed=args.seed * 10**4 + step)

        # decide (on the main process in a multi-process run, then broadcast: a Decision is plain data)
        decision = loop.decide(r["rows"], group_size=G, step=step, hidden=r["hidden"] if want_hidden else None)

        # reward against the group's training label: bought ground truth (query), majority vote (pseudo), None (drop)
        labels = decision.row_labels()
        rewards = np.array([float(space.grade(x.answer, lab)) for x, lab in zip(r["rows"], labels, strict=True)])
        rewards = rewards.reshape(B, G)
        truth = np.mean([space.grade(x.answer, batch[i // G]["answer"]) for i, x in enumerate(r["rows"])])  # eval only

        # GRPO: A_{g,j} = (r_{g,j} - mean_j r_g) / (std_j r_g + eps), then A <- w_g A and the rule's own hook
        adv = (rewards - rewards.mean(1, keepdims=True)) / (rewards.std(1, ddof=1, keepdims=True) + 1e-4)
        adv = loop.transform(adv, decision)
        adv[decision.dropped] = 0.0  # drop mode "zero_adv": a dropped group carries no signal
        A = torch.as_tensor(adv, dtype=torch.float32).reshape(-1)

        # policy gradient (on-policy, one update per batch, so PPO's ratio is 1 and its clip inactive):
        # L = -1/(BG) sum_i A_i * (1/|y_i|) sum_t log pi(y_{i,t}),  the mean over each completion's tokens
        logp_seq = (r["logp"] * r["mask"]).sum(1) / r["mask"].sum(1).clamp(min=1)
        loss = -(A * logp_seq).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

        # every process records the round; the main process lets the rule learn from the labels it bought
        kept = ~decision.dropped  # a dropped group has no label (None): its rewards are 0 and mean nothing
        reward = float(rewards[kept].mean()) if kept.any() else 0.0
        m = loop.record(decision, {"reward": reward, "accuracy": float(truth), "loss": loss.item()})
        loop.apply_updates()
        print(f"step {step}: query {m['route/query']:.0f} pseudo {m['route/pseudo']:.0f} drop {m['route/drop']:.0f}"
              f" | labels bought {m['labels_bought_this_step']:.0f}, spent {decision.spent}/{decision.cap}"
              f" | reward (kept groups) {m['reward']:.3f} (true accuracy {m['accuracy']:.3f}) loss {m['loss']:+.4f}", flush=True)

        # checkpoint halfway (a real run saves model and optimiser beside it), then resume as a restarted run does
        if step + 1 == max(1, args.steps // 2):
            torch.save(loop.state_dict(), out / "rlavr_state.pt")  # plain data and tensors: weights_only-safe
            loop.engine.ledger.close()
            loop = make_loop(args, task, train, out)  # a fresh process: same ledger file, state from the checkpoint
            loop.load_state_dict(torch.load(out / "rlavr_state.pt", weights_only=True))
            print(f"checkpoint: saved and restored at round {loop.rounds} (spent {loop.spent})", flush=True)

    if (failure := loop.take_failure()) is not None:  # retried before every decide; the last one is reported here
        print(f"warning: the last strategy update failed: {failure.exc!r}")
    summary = {**loop.summary(), "cap": loop.cap, "ledger": str(out / "labels.sqlite")}
    print("summary:", {k: round(v, 3) if isinstance(v, float) else v for k, v in summary.items()})
    loop.engine.ledger.close()
    return summary


if __name__ == "__main__":
    main()
