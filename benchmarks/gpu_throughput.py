"""Env steps per second: the batched MuJoCo Warp backend vs pbrl's CPU vector env.

    python benchmarks/gpu_throughput.py --task halfcheetah --device cpu --n 1 16 64 256
    python benchmarks/gpu_throughput.py --task hopper --device cuda --n 1024 4096 16384 --full-loop
    python benchmarks/gpu_throughput.py --task franka_reach --device cpu --n 8 64

Both sides step random actions for ``--seconds`` per setting after a warm-up:

- ``batched``: :class:`pbrl.gpu.sim.BatchedMujocoEnv` (torch tensors on ``--device``, auto-reset,
  reward factors and sim state computed every step);
- ``cpu vector``: ``pbrl.envs.make(task, N)``, gymnasium's ``SyncVectorEnv`` of the pbrl CPU env
  (what ``agent=prefppo`` steps through SB3), skipped above ``--cpu-max-n`` worlds.

``--full-loop`` also times the whole on-device PrefPPO iteration (rollout with segment-pool
writes, learned reward on the device, GAE, PPO update) per env step. The results replace the
``## GPU backend throughput (<device>)`` section of ``benchmarks/RESULTS.md`` (locomotion
tasks) or ``## GPU backend throughput, <task> (<device>)`` (the Franka tasks, whose CPU side
is the Franka suite env with the same control, ``ee`` by default, stepped ``N`` times).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import write_section  # noqa: E402


def _rate(step, n: int, seconds: float) -> float:
    """Env steps per second of ``step()`` (one call = ``n`` env steps)."""
    step()
    step()  # warm-up (kernel loads, CUDA graph capture)
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or calls < 3:
        step()
        calls += 1
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return calls * n / (time.perf_counter() - t0)


def batched_rate(task: str, n: int, device: str, seconds: float) -> float:
    """Steps/s of the batched backend with ``n`` worlds."""
    from pbrl.gpu.sim import BatchedMujocoEnv

    env = BatchedMujocoEnv(task, n, seed=0, device=device)
    env.reset()
    g = torch.Generator(device=env.device).manual_seed(0)

    def step() -> None:
        env.step(torch.rand(n, env.act_dim, generator=g, device=env.device) * 2 - 1)

    return _rate(step, n, seconds)


def cpu_vector_rate(task: str, n: int, seconds: float) -> float:
    """Steps/s of ``pbrl.envs.make(task, n)`` (gymnasium SyncVectorEnv of PbrlEnv)."""
    from pbrl import envs as pbrl_envs

    venv = pbrl_envs.make(task, num_envs=n, seed=0)
    rng = np.random.default_rng(0)
    shape = venv.action_space.shape

    def step() -> None:
        venv.step(rng.uniform(-1, 1, size=shape))

    rate = _rate(step, n, seconds)
    venv.close()
    return rate


def full_loop_rate(task: str, n: int, device: str, seconds: float) -> float:
    """Env steps/s of whole PrefPPO iterations (rollout, learned reward, GAE, update)."""
    from pbrl.gpu.ppo import PPOConfig, SegmentPool, TorchPPO
    from pbrl.gpu.sim import BatchedMujocoEnv
    from pbrl.rewards.bradley_terry import RewardEnsemble

    env = BatchedMujocoEnv(task, n, seed=0, device=device)
    obs, _ = env.reset()
    cfg = PPOConfig(n_steps=32, batch_size=max(32 * n // 4, 64))
    ppo = TorchPPO(env.obs_dim, env.act_dim, env.act_low, env.act_high, n, cfg, env.device)
    reward = RewardEnsemble(env.obs_dim, env.act_dim).to(env.device)
    pool = SegmentPool(64, n, env.obs_dim, env.act_dim, env.state_dim, env.factor_names, env.device)
    ep = torch.zeros(n, dtype=torch.int64, device=env.device)

    def record(o, a, info) -> None:
        pool.add(o, a, info["true_reward"], info["reward_factors"], info["sim_state"], ep, ep)

    state = {"obs": obs}

    def iteration() -> None:
        state["obs"], _ = ppo.collect(env, state["obs"], on_step=record)
        st = ppo.storage
        with torch.no_grad():
            x = torch.cat([st.obs, ppo.scale_action(st.env_actions)], dim=-1)
            st.rewards.copy_(reward(x.reshape(-1, x.shape[-1])).mean(0).view(st.t, st.n))
        ppo.compute_returns(state["obs"])
        ppo.update()

    return _rate(iteration, n * cfg.n_steps, seconds)


def main() -> None:
    """Measure and write the RESULTS.md section."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="halfcheetah")
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, nargs="+", default=[1, 16, 64, 256])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--cpu-max-n", type=int, default=256)
    p.add_argument("--full-loop", action="store_true")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()

    rows = []
    for n in args.n:
        b = batched_rate(args.task, n, args.device, args.seconds)
        c = cpu_vector_rate(args.task, n, args.seconds) if n <= args.cpu_max_n else float("nan")
        f = full_loop_rate(args.task, n, args.device, args.seconds) if args.full_loop else None
        rows.append((n, b, c, f))
        extra = f", full loop {f:,.0f}" if f is not None else ""
        print(f"N={n}: batched {b:,.0f} steps/s, cpu vector {c:,.0f} steps/s{extra}", flush=True)

    from pbrl.gpu.sim import LOCOMOTION_TASKS

    dev = args.device
    kind = "cuda" if dev.startswith("cuda") else "cpu"
    section = (
        f"GPU backend throughput ({kind})"
        if args.task in LOCOMOTION_TASKS
        else f"GPU backend throughput, {args.task} ({kind})"
    )
    if dev.startswith("cuda"):
        machine = torch.cuda.get_device_name(torch.device(dev))
    else:
        machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    cmd = "python benchmarks/gpu_throughput.py " + " ".join(sys.argv[1:])
    head = "| N | batched (MuJoCo Warp) steps/s | CPU vector env steps/s | ratio |"
    sep = "|---:|---:|---:|---:|"
    if args.full_loop:
        head += " full PrefPPO loop steps/s |"
        sep += "---:|"
    lines = [head, sep]
    for n, b, c, f in rows:
        line = (
            f"| {n} | {b:,.0f} | {c:,.0f} | {b / c:.2f} |"
            if c == c
            else f"| {n} | {b:,.0f} | - | - |"
        )
        if args.full_loop:
            line += f" {f:,.0f} |"
        lines.append(line)
    body = (
        f"`{cmd}` — {datetime.date.today().isoformat()}, task `{args.task}`, device `{dev}` "
        f"({machine}). Random actions, auto-reset, reward factors and sim state every step; "
        f"the CPU side is `pbrl.envs.make(task, N)` (gymnasium SyncVectorEnv, float64 MuJoCo).\n\n"
        + "\n".join(lines)
    )
    if not args.no_write:
        write_section(section, body)


if __name__ == "__main__":
    main()
