"""Knox et al.'s central experiment: partial-return vs regret learners on regret labels.

For each seed: an MDP (the paper's delivery board, or a random delivery board drawn from the
seed), the largest budget of random segment pairs (uniform start cell, 3 random moves), labelled
by the regret teacher (exact A* from policy iteration; deterministic labels rounded to 2
decimals as the paper's labeller, or stochastic with beta = 1). Nested subsets give each budget.
Both learners fit linear weights over the 6 delivery features; the policy optimal for the
learned reward is scored by its scaled return under the true reward
((V^pi - V^rand) / (V* - V^rand) over start cells; >= 0.9 is "near-optimal").

    python benchmarks/regret_delivery.py --domain both --seeds 10
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny linear solves: threads only contend

import numpy as np
import torch

from pbrl.data import QueryBatch
from pbrl.rewards.regret import TabularPreferenceLearner
from pbrl.tabular import (
    DELIVERY_BOARD,
    TRUE_WEIGHTS,
    delivery_mdp,
    random_delivery_board,
    sample_segment_pairs,
    scaled_return,
    segment_batch,
)
from pbrl.teachers.regret import RegretTeacher, TabularOracle

MODELS = ("partial_return", "regret")


def run_seed(domain: str, seed: int, budgets: list[int], args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(seed)
    if domain == "delivery":
        mdp = delivery_mdp(DELIVERY_BOARD, TRUE_WEIGHTS)
    else:
        board, w = random_delivery_board(rng)
        mdp = delivery_mdp(board, w)
    n_max = max(budgets)
    states, actions = sample_segment_pairs(mdp, n_max, args.horizon, rng)
    q = QueryBatch.from_members([segment_batch(mdp, states[:, j], actions[:, j]) for j in (0, 1)])
    if args.labels == "deterministic":
        teacher = RegretTeacher(TabularOracle(mdp), decimals=2, seed=seed)
    else:
        teacher = RegretTeacher(TabularOracle(mdp), beta=1.0, seed=seed)
    y = np.array([f.target for f in teacher.label(q)])
    out: dict = {"seed": seed, "weights": mdp.weights.tolist(), "scores": {}}
    for n in budgets:
        for model in MODELS:
            learner = TabularPreferenceLearner(mdp, model, lr=args.lr, n_iters=args.n_iters)
            learner.fit(states[:n], actions[:n], y[:n])
            out["scores"][f"{model}/{n}"] = scaled_return(mdp, learner.policy())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--domain", choices=["delivery", "random", "both"], default="both")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--budgets", type=int, nargs="+", default=[10, 30, 100, 300, 1000, 3000])
    ap.add_argument("--labels", choices=["deterministic", "stochastic"], default="deterministic")
    ap.add_argument("--horizon", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--n-iters", type=int, default=1000)
    ap.add_argument("--out", default="benchmarks/results/regret_delivery.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    domains = ["delivery", "random"] if args.domain == "both" else [args.domain]
    results: dict = {"args": vars(args), "domains": {}}
    t0 = time.time()
    for domain in domains:
        runs = []
        for seed in range(args.seeds):
            runs.append(run_seed(domain, seed, args.budgets, args))
            print(f"{domain} seed {seed} done ({time.time() - t0:.0f} s)", flush=True)
        results["domains"][domain] = runs
    results["seconds"] = time.time() - t0
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)

    # markdown table: mean scaled return and fraction near-optimal (>= 0.9) per budget
    for domain, runs in results["domains"].items():
        print(f"\n{domain} ({args.labels} regret labels, {len(runs)} seeds)\n")
        print("| preferences | " + " | ".join(f"{m}: mean / near-opt" for m in MODELS) + " |")
        print("|---|" + "---|" * len(MODELS))
        for n in args.budgets:
            cells = []
            for m in MODELS:
                s = np.array([r["scores"][f"{m}/{n}"] for r in runs])
                cells.append(f"{s.mean():.3f} / {np.mean(s >= 0.9):.0%}")
            print(f"| {n} | " + " | ".join(cells) + " |")
    print(f"\ntotal {results['seconds']:.0f} s; raw scores in {args.out}")


if __name__ == "__main__":
    main()
