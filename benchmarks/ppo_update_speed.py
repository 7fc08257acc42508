"""Time per gradient step of PbrlPPO's fast update versus SB3's own ``PPO.train()``, and per
vector step of its fast rollout versus SB3's ``collect_rollouts``.

One process, one rollout, PrefPPO's settings (pbrl/configs/agent/prefppo.yaml: n_envs 16,
n_steps 500, batch 64, 3 x 256 nets, gSDE with sde_sample_freq 4, decayed clip 0.4, fused
Adam) on HalfCheetah. Both updates start from the same saved state (policy weights, Adam state,
``np.random`` state) on the same rollout buffer and run ``--epochs`` epochs; runs alternate
SB3, fast, SB3, fast, ... ``--repeats`` times so machine drift hits both alike, and the median
per-pair ratio is reported. After each pair the two end states are compared (the fast update
must land on SB3's parameters). Then ``--rollout-repeats`` pairs of one whole rollout (16 envs x
500 steps, env stepping and the VecNormalize wrapper included) with SB3's ``collect_rollouts``
and with PbrlPPO's (``fast_rollout``), alternating likewise.

    python benchmarks/ppo_update_speed.py
    python benchmarks/ppo_update_speed.py --epochs 20 --repeats 5 --write-results
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import VecNormalize

from pbrl import envs as pbrl_envs
from pbrl.agents.sb3 import PbrlPPO, linear_schedule, make_vec_env

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import replace_section  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = "## PPO update speed: pbrl's fast train() vs SB3's train()"
AGENT_CFG = Path(__file__).resolve().parents[1] / "pbrl" / "configs" / "agent" / "prefppo.yaml"


def build(env: str, seed: int) -> PbrlPPO:
    """PbrlPPO at PrefPPO's settings with one collected rollout in its buffer."""
    a = OmegaConf.load(AGENT_CFG)
    sb3_kwargs: dict[str, Any] = dict(OmegaConf.to_container(a.sb3, resolve=True))  # type: ignore[arg-type]
    clip = sb3_kwargs.pop("clip_range")
    n_envs, n_steps = int(a.num_envs), int(a.n_steps)
    venv = make_vec_env([lambda i=i: pbrl_envs.make_env(env, seed=seed + i) for i in range(n_envs)])
    model = PbrlPPO(
        "MlpPolicy",
        VecNormalize(venv, norm_obs=True, norm_reward=False),
        learning_rate=float(a.learning_rate),
        n_steps=n_steps,
        batch_size=int(a.batch_size),
        n_epochs=int(a.n_epochs),
        clip_range=linear_schedule(float(clip)),
        policy_kwargs={
            "net_arch": {"pi": list(a.net_arch), "vf": list(a.net_arch)},
            "optimizer_kwargs": {"fused": bool(a.fused_adam)},
        },
        seed=seed,
        device="cpu",
        **sb3_kwargs,
    )
    # The clip schedule decays over a run of 1M steps; this rollout is at its start.
    model.pbrl_total_timesteps = 1_000_000
    model.set_logger(configure(None, []))
    model.learn(n_envs * n_steps)  # one rollout (and one update, which warms both paths up)
    return model


def snapshot(model: PbrlPPO) -> dict[str, Any]:
    """What an update changes: weights, Adam state, update counter, the global numpy RNG."""
    return {
        "policy": copy.deepcopy(model.policy.state_dict()),
        "optimizer": copy.deepcopy(model.policy.optimizer.state_dict()),
        "n_updates": model._n_updates,
        "np_random": np.random.get_state(),
    }


def restore(model: PbrlPPO, state: dict[str, Any]) -> None:
    """Inverse of :func:`snapshot`."""
    model.policy.load_state_dict(state["policy"])
    model.policy.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
    model._n_updates = state["n_updates"]
    np.random.set_state(state["np_random"])


def timed_update(model: PbrlPPO, fast: bool, start: dict[str, Any]) -> tuple[float, list]:
    """Seconds for one ``train()`` from ``start``; the resulting parameters."""
    restore(model, start)
    model.fast_update = fast
    t0 = time.perf_counter()
    model.train()
    seconds = time.perf_counter() - t0
    return seconds, [p.detach().clone() for p in model.policy.parameters()]


def timed_rollout(model: PbrlPPO, fast: bool) -> float:
    """Seconds for one whole ``collect_rollouts`` (SB3's loop, or PbrlPPO's when ``fast``)."""
    model.fast_rollout = fast
    callback = model._init_callback(None)
    t0 = time.perf_counter()
    model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)  # type: ignore[arg-type]
    return time.perf_counter() - t0


def main() -> None:
    """Measure, print, and optionally write the RESULTS.md section."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--env", default="halfcheetah")
    p.add_argument("--epochs", type=int, default=4, help="epochs per timed update (PrefPPO: 20)")
    p.add_argument("--repeats", type=int, default=5, help="SB3/fast pairs")
    p.add_argument("--rollout-repeats", type=int, default=3, help="SB3/fast rollout pairs")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the bench uses 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write-results", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model = build(args.env, args.seed)
    model.n_epochs = args.epochs
    n = model.rollout_buffer.buffer_size * model.rollout_buffer.n_envs
    steps = args.epochs * -(-n // model.batch_size)
    start = snapshot(model)
    times: dict[str, list[float]] = {"sb3": [], "fast": []}
    max_diff = 0.0
    for r in range(args.repeats):
        t_sb3, p_sb3 = timed_update(model, False, start)
        t_fast, p_fast = timed_update(model, True, start)
        times["sb3"].append(t_sb3)
        times["fast"].append(t_fast)
        diff = max(float((a - b).abs().max()) for a, b in zip(p_sb3, p_fast, strict=True))
        max_diff = max(max_diff, diff)
        print(
            f"pair {r}: SB3 {1e3 * t_sb3 / steps:.3f} ms/step, fast {1e3 * t_fast / steps:.3f} "
            f"ms/step, ratio {t_sb3 / t_fast:.2f}, max |param diff| {diff:.2e}",
            flush=True,
        )
    ratios = [a / b for a, b in zip(times["sb3"], times["fast"], strict=True)]
    ms = {k: 1e3 * statistics.median(v) / steps for k, v in times.items()}
    ratio = statistics.median(ratios)
    print(
        f"median: SB3 {ms['sb3']:.3f} ms/step, fast {ms['fast']:.3f} ms/step, "
        f"ratio {ratio:.2f} (pairs: {', '.join(f'{x:.2f}' for x in ratios)}); "
        f"max |param diff| {max_diff:.2e}"
    )
    rollout: dict[str, list[float]] = {"sb3": [], "fast": []}
    vec_steps = model.n_steps
    for r in range(args.rollout_repeats):
        rollout["sb3"].append(timed_rollout(model, False))
        rollout["fast"].append(timed_rollout(model, True))
        print(
            f"rollout pair {r}: SB3 {1e3 * rollout['sb3'][-1] / vec_steps:.3f} ms/vector step, "
            f"fast {1e3 * rollout['fast'][-1] / vec_steps:.3f}",
            flush=True,
        )
    rollout_ms = {k: 1e3 * statistics.median(v) / vec_steps for k, v in rollout.items() if v}
    if rollout_ms:
        print(
            f"rollout median: SB3 {rollout_ms['sb3']:.3f} ms/vector step, fast "
            f"{rollout_ms['fast']:.3f} ({rollout_ms['sb3'] / rollout_ms['fast']:.2f}x)"
        )
    if args.write_results:
        write_results(args, steps, ms, ratio, ratios, max_diff, rollout_ms)


def write_results(
    args: argparse.Namespace,
    steps: int,
    ms: dict[str, float],
    ratio: float,
    ratios: list[float],
    max_diff: float,
    rollout_ms: dict[str, float],
) -> None:
    """Replace this benchmark's section of RESULTS.md."""
    cmd = "python benchmarks/ppo_update_speed.py " + " ".join(sys.argv[1:])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        HEADER,
        "",
        f"Date: {dt.date.today().isoformat()}. Machine: {os.cpu_count()} CPU cores (shared with "
        f"other jobs, load average {load:.1f} at the end), no GPU, {platform.platform()}; "
        f"{args.threads} torch thread(s). Command: `{cmd}`.",
        "",
        f"Setting: PrefPPO's PPO (pbrl/configs/agent/prefppo.yaml) on {args.env}, one rollout "
        "of 16 envs x 500 steps; each timed update runs "
        f"{args.epochs} epoch(s) = {steps} gradient steps of batch 64 from the same saved state "
        "(weights, Adam state, numpy RNG); SB3 and fast alternate, "
        f"{args.repeats} pairs. `agent.fast_update=false` selects SB3's `train()`.",
        "",
        "| update | ms per gradient step (median) |",
        "|---|---|",
        f"| SB3 `PPO.train()` | {ms['sb3']:.3f} |",
        f"| pbrl fast `train()` | {ms['fast']:.3f} |",
        "",
        f"Speed-up (median of per-pair ratios): **{ratio:.2f}x** (pairs: "
        f"{', '.join(f'{x:.2f}' for x in ratios)}). Largest parameter difference between the "
        f"two updates' results: {max_diff:.1e} (0 = bit-identical).",
        "",
    ]
    if rollout_ms:
        lines += [
            f"Rollout ({args.rollout_repeats} pairs of one 16 x 500-step rollout, env steps "
            "included): SB3 `collect_rollouts` "
            f"{rollout_ms['sb3']:.3f} ms per vector step, pbrl's (`fast_rollout`) "
            f"{rollout_ms['fast']:.3f} ms ({rollout_ms['sb3'] / rollout_ms['fast']:.2f}x).",
            "",
        ]
    replace_section(RESULTS, HEADER, "\n".join(lines))


if __name__ == "__main__":
    main()
