"""Gradient steps per second of CPL at the paper's batch: pbrl's indexed batches against naive
Python-loop baselines, measured side by side in one process.

Setting: CPL's Meta-World state shapes (observation 39, action 4), 2500 segments x 64 steps
(the dense dataset), batch 96 pairs (192 segments x 64 steps = 12288 state-action rows), the
paper's actor (512 x 2, dropout 0.25, deterministic tanh), Adam, in the contrastive phase.
The contents are random (speed does not depend on them). Three ways to run the same update:

- **pbrl**: the dataset in one tensor per field; :class:`pbrl.offline.data.BatchSampler`
  draws the pair indices and gathers the batch; one forward over all 192 segments
  (:meth:`pbrl.offline.cpl.CPLAgent.update`);
- **loop batch**: the dataset as a Python list of per-segment NumPy arrays (as a replay buffer
  of episodes would hold it); each step assembles the batch in a Python loop (``np.stack``),
  copies it to a tensor, then the same batched update;
- **per-segment**: the same list; each step scores every segment with its own forward pass
  in a Python loop, then the same loss and Adam step.

The three are checked to compute the same loss on the same pairs before timing. Blocks of
``--block`` steps of each variant alternate ``--repeats`` times so that machine drift hits
all three alike; the median block rate is reported.

    python benchmarks/offline_speed.py --write-results
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time

import numpy as np
import torch
from offline_common import command, machine, replace_section

from pbrl.offline.cpl import CPLAgent, CPLConfig, cpl_pair_loss
from pbrl.offline.data import BatchSampler, PairBatch, PreferenceData
from pbrl.offline.piql import PIQLAgent, PIQLConfig

SECTION = "## Offline CPL training throughput (issue 7)"


def make_data(n: int, h: int, obs_dim: int, act_dim: int, seed: int = 0) -> PreferenceData:
    """``n`` random segments as one ranking row (CPL's dense layout)."""
    g = torch.Generator().manual_seed(seed)
    return PreferenceData(
        kind="ranking", obs=torch.randn(n, h, obs_dim, generator=g),
        actions=torch.rand(n, h, act_dim, generator=g) * 2 - 1,
        start=torch.zeros(n, dtype=torch.int64), target=None, rank=torch.randperm(n, generator=g),
        group=torch.zeros(n, dtype=torch.int64), env_name="synthetic", teacher_id="t",
    )  # fmt: skip


class LoopData:
    """The same dataset as a list of per-segment NumPy arrays, sampled in Python loops."""

    def __init__(self, data: PreferenceData, seed: int = 0) -> None:
        self.obs = [o.numpy() for o in data.obs]
        self.act = [a.numpy() for a in data.actions]
        assert data.rank is not None
        self.rank = data.rank.tolist()
        self.rng = np.random.default_rng(seed)

    def pairs(self, b: int) -> tuple[list[int], list[int]]:
        n = len(self.obs)
        return self.rng.integers(0, n, b).tolist(), self.rng.integers(0, n, b).tolist()

    def label(self, i: int, j: int) -> float:
        return 1.0 if self.rank[j] < self.rank[i] else 0.5 if i == j else 0.0

    def batch(self, ii: list[int], jj: list[int]) -> PairBatch:
        """Assemble a pair batch sample by sample (the loop-batch baseline)."""
        o1, o2, a1, a2, y = [], [], [], [], []
        for i, j in zip(ii, jj, strict=True):
            o1.append(self.obs[i])
            o2.append(self.obs[j])
            a1.append(self.act[i])
            a2.append(self.act[j])
            y.append(self.label(i, j))
        z = torch.zeros(len(ii), dtype=torch.int64)
        t = torch.as_tensor
        return PairBatch(t(np.stack(o1)), t(np.stack(o2)), t(np.stack(a1)), t(np.stack(a2)),
                         torch.tensor(y), z, z)  # fmt: skip


def per_segment_update(agent: CPLAgent, ld: LoopData, ii: list[int], jj: list[int]) -> float:
    """One CPL step scoring each segment with its own forward pass (the naive baseline)."""
    cfg = agent.cfg
    agent.actor.train()
    s1, s2, y = [], [], []
    for i, j in zip(ii, jj, strict=True):
        for k, out in ((i, s1), (j, s2)):
            o, a = torch.as_tensor(ld.obs[k]), torch.as_tensor(ld.act[k])
            out.append(cfg.alpha * agent.actor.log_prob(o, a).sum())
        y.append(ld.label(i, j))
    loss, _ = cpl_pair_loss(torch.stack(s1), torch.stack(s2), torch.tensor(y), cfg.bias)
    agent.optim.zero_grad(set_to_none=True)
    loss.backward()
    agent.optim.step()
    return float(loss.detach())


def new_agent(obs_dim: int, act_dim: int, dropout: float, seed: int) -> CPLAgent:
    agent = CPLAgent(obs_dim, act_dim, CPLConfig(bc_steps=0, warmup_steps=0, dropout=dropout),
                     seed=seed)  # fmt: skip
    agent.start_contrastive()
    return agent


def check_same_loss(data: PreferenceData, obs_dim: int, act_dim: int) -> float:
    """Loss of the three variants on the same pairs, dropout off; returns the largest gap."""
    ld = LoopData(data, seed=1)
    ii, jj = ld.pairs(8)
    a = new_agent(obs_dim, act_dim, 0.0, 0)
    b = new_agent(obs_dim, act_dim, 0.0, 0)
    batch_idx = ld.batch(ii, jj)
    loss_batched = float(a.losses(batch_idx)["cpl_loss"].detach())
    loss_loop = per_segment_update(b, ld, ii, jj)
    i, j = torch.tensor(ii), torch.tensor(jj)
    assert data.rank is not None
    label = (data.rank[j] < data.rank[i]).float() + 0.5 * (data.rank[j] == data.rank[i]).float()
    gathered = PairBatch(data.obs[i], data.obs[j], data.actions[i], data.actions[j], label, i, j)
    loss_indexed = float(a.losses(gathered)["cpl_loss"].detach())
    return max(abs(loss_batched - loss_loop), abs(loss_indexed - loss_loop))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--segments", type=int, default=2500)
    p.add_argument("--horizon", type=int, default=64)
    p.add_argument("--batch", type=int, default=96, help="pairs per step (paper: 96)")
    p.add_argument("--block", type=int, default=10, help="steps per timed block")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--piql-steps", type=int, default=10, help="P-IQL steps timed per phase")
    p.add_argument("--write-results", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    obs_dim, act_dim = 39, 4
    data = make_data(args.segments, args.horizon, obs_dim, act_dim)
    gap = check_same_loss(data, obs_dim, act_dim)
    print(f"same loss on the same pairs: largest gap {gap:.2e}")
    assert gap < 1e-4, gap

    sampler = BatchSampler(data, "rank", seed=0)
    ld = LoopData(data, seed=0)
    kinds = ("pbrl", "loop batch", "per-segment")
    agents = {k: new_agent(obs_dim, act_dim, 0.25, 0) for k in kinds}

    def step(kind: str) -> None:
        if kind == "pbrl":
            agents[kind].update(sampler.sample(args.batch), 1)
        elif kind == "loop batch":
            agents[kind].update(ld.batch(*ld.pairs(args.batch)), 1)
        else:
            per_segment_update(agents[kind], ld, *ld.pairs(args.batch))

    rates: dict[str, list[float]] = {k: [] for k in agents}
    for k in agents:  # warm-up
        step(k)
    for r in range(args.repeats):
        for k in agents:
            t0 = time.perf_counter()
            for _ in range(args.block):
                step(k)
            rates[k].append(args.block / (time.perf_counter() - t0))
        last = ", ".join(f"{k} {v[-1]:.2f}" for k, v in rates.items())
        print(f"repeat {r + 1}/{args.repeats}: {last}", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}

    # P-IQL at its defaults (reward phase on the same batches; IQL on 12096 transitions)
    pcfg = PIQLConfig(reward_steps=args.piql_steps + 1, total_steps=10 * args.piql_steps)
    piql = PIQLAgent(obs_dim, act_dim, pcfg, data)
    psampler = BatchSampler(data, "rank", seed=0)
    piql.update(psampler.sample(args.batch), 0)
    t0 = time.perf_counter()
    for s in range(1, args.piql_steps + 1):
        piql.update(psampler.sample(args.batch), s)
    piql_reward = args.piql_steps / (time.perf_counter() - t0)
    piql.update(None, args.piql_steps + 1)
    t0 = time.perf_counter()
    for s in range(args.piql_steps + 2, 2 * args.piql_steps + 2):
        piql.update(None, s)
    piql_iql = args.piql_steps / (time.perf_counter() - t0)
    for k, v in med.items():
        print(f"{k}: {v:.2f} steps/s (x{v / med['per-segment']:.1f} of per-segment)")
    print(f"P-IQL reward phase {piql_reward:.2f} steps/s, IQL phase {piql_iql:.2f} steps/s")
    if args.write_results:
        write(args, med, rates, gap, piql_reward, piql_iql)


def write(args: argparse.Namespace, med: dict[str, float], rates: dict[str, list[float]],
          gap: float, piql_reward: float, piql_iql: float) -> None:  # fmt: skip
    rows = args.batch * 2 * args.horizon
    lines = [
        SECTION,
        "",
        f"Date: {dt.date.today()}. Machine: {machine()}; {args.threads} torch thread(s). "
        f"Command: `{command()}`.",
        "",
        f"CPL contrastive steps at the paper's batch: {args.batch} pairs x {args.horizon} steps "
        f"({rows:,} state-action rows), actor 512 x 2 with dropout 0.25, Adam (fused), dataset "
        f"{args.segments} segments x {args.horizon} steps x (39 + 4) floats (Meta-World state "
        "shapes, random contents). The three variants compute the same loss on the same pairs "
        f"(checked before timing: largest gap {gap:.1e}); blocks of {args.block} steps "
        f"alternate {args.repeats} times; median block rate.",
        "",
        "| variant | batch | steps/s (median) | blocks | speed-up over per-segment |",
        "|---|---|---|---|---|",
    ]
    how = {
        "pbrl": "indexed gathers from one tensor, one forward",
        "loop batch": "Python loop + np.stack, one forward",
        "per-segment": "Python loop, one forward per segment",
    }
    for k, v in med.items():
        blocks = ", ".join(f"{x:.2f}" for x in rates[k])
        lines.append(f"| {k} | {how[k]} | {v:.2f} | {blocks} | {v / med['per-segment']:.1f}x |")
    ratio = med["pbrl"] / med["per-segment"]
    lines += [
        "",
        f"pbrl runs at {ratio:.2f}x the per-segment loop here. On a CPU at this batch the MLP's "
        f"arithmetic ({rows:,} rows through 512 x 512 layers, forward and backward) dominates a "
        "step, so assembling the batch in Python costs little; the indexed, one-forward layout "
        "pays off where arithmetic is cheap (a GPU, not measured in this session).",
    ]
    lines += [
        "",
        f"For context, P-IQL at its defaults on the same data: reward phase {piql_reward:.2f} "
        f"steps/s, IQL phase (12,096 transitions, actor + 2 critics + value) {piql_iql:.2f} "
        f"steps/s ({args.piql_steps} steps each, not alternated).",
        "",
        "Paper: no CPU throughput figure. The method notes (from the paper and its code) put the "
        "500k-step Meta-World run at minutes to an hour on a GPU with the whole dataset on the "
        f"device; at the measured pbrl rate one CPU thread needs "
        f"{500_000 / med['pbrl'] / 3600:.0f} h "
        "for 500k steps, so the paper-scale runs need a GPU (`device=cuda`).",
        "",
    ]
    replace_section(SECTION, "\n".join(lines))
    print("wrote", SECTION)


if __name__ == "__main__":
    main()
