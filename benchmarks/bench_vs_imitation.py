"""pbrl PrefPPO versus imitation's preference comparisons: wall time and final true return.

Per seed, one after the other in this script (the order alternates between seeds so that drift
in machine load does not favour one side): (a) ``pbrl-train agent=prefppo env=halfcheetah
teacher=oracle ...`` in the main environment and (b) benchmarks/imitation_prefcomp.py in
benchmarks/.venv-imitation (``bash benchmarks/setup_imitation_venv.sh`` makes it), both with the
same env steps T, label budget B, queries per round, segment length 50, PPO settings, seed and
thread count. Each side is timed as a whole subprocess (start-up, training, final 10-episode
evaluation). Reports the per-seed and mean ratio imitation / pbrl and the returns; with
``--write-results`` it writes a section of benchmarks/RESULTS.md.

Target (core issue): pbrl >= 2x faster (ratio >= 2) at equal or better final true return.

    python benchmarks/bench_vs_imitation.py --steps 32000 --max-feedback 100 --seeds 0 1 \\
        --unsup-steps 4000 --interact 4000 --write-results

--steps must be a multiple of num_envs x n_steps x rounds (rounds = max(2, ceil(B / 128))) so
both sides train the same number of PPO rollouts (PPO stops only at rollout boundaries).

HalfCheetah-v5 (pbrl, gymnasium 1.x) and HalfCheetah-v4 (imitation, gymnasium 0.29) are the same
task: with mujoco 3.17 the same seed and actions give bit-identical observations and rewards.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_md import replace_section

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
VENV_PY = HERE / ".venv-imitation" / "bin" / "python"
IMITATION_SCRIPT = HERE / "imitation_prefcomp.py"
HEADER = "## Speed versus imitation (preference comparisons): HalfCheetah"
TARGET = "pbrl >= 2x faster (imitation / pbrl wall time >= 2) at equal or better final true return"
ENVS = {"halfcheetah": "HalfCheetah-v4"}  # pbrl env name -> the same task in gymnasium 0.29


def _thread_env(threads: int) -> dict[str, str]:
    n = str(threads)
    return {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n}


def pbrl_overrides(args: argparse.Namespace, seed: int) -> list[str]:
    return [
        "agent=prefppo",
        f"env={args.env}",
        "teacher=oracle",
        "query=uniform",
        f"max_feedback={args.max_feedback}",
        f"num_train_steps={args.steps}",
        f"seed={seed}",
        f"reward_batch={args.reward_batch}",
        "segment_size=50",
        f"agent.num_envs={args.num_envs}",
        f"agent.n_steps={args.n_steps}",
        f"agent.num_unsup_steps={args.unsup_steps}",
        f"agent.num_interact={args.interact}",
        # imitation's PPO runs n_epochs (20) on every rollout: so does pbrl's here, in
        # pre-training too (B-Pref's unsuper_n_epochs 50 is PrefPPO's default)
        "agent.unsup_n_epochs=null",
        # Neither side evaluates, renders or checkpoints during the run: one final evaluation
        # of 10 episodes each (pbrl still writes its end-of-run checkpoint).
        f"eval.every={2 * args.steps}",
        "eval.episodes=10",
        "log.video_every=0",
        "checkpoint.every=0",
        "log.progress=none",
        *args.pbrl_extra,
    ]


def run_pbrl(args: argparse.Namespace, seed: int, root: Path) -> dict:
    run_dir = root / f"pbrl-s{seed}"
    exe = shutil.which("pbrl-train")
    cmd = [exe] if exe else [sys.executable, "-m", "pbrl"]
    cmd += [*pbrl_overrides(args, seed), f"hydra.run.dir={run_dir}"]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=_thread_env(args.threads), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"pbrl seed {seed} failed ({' '.join(cmd)}):\n{res.stderr[-3000:]}")
    final = json.loads((run_dir / "final_metrics.json").read_text())
    return {
        "wall_s": wall,
        "true_return": float(final["eval/true_return"]),
        "labels": final.get("pref/labels"),
        "agent_steps": int(final.get("charts/time_total_timesteps", -1)),
    }


def imitation_args(args: argparse.Namespace, seed: int) -> list[str]:
    return [
        f"--env={ENVS[args.env]}",
        f"--seed={seed}",
        f"--total-timesteps={args.steps}",
        f"--total-comparisons={args.max_feedback}",
        "--fragment-length=50",
        f"--num-envs={args.num_envs}",
        f"--n-steps={args.n_steps}",
        f"--queries-per-round={args.reward_batch}",
        "--eval-episodes=10",
        *args.imitation_extra,
    ]


def run_imitation(args: argparse.Namespace, seed: int) -> dict:
    cmd = [str(args.imitation_python), str(IMITATION_SCRIPT), *imitation_args(args, seed)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=_thread_env(args.threads), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        raise RuntimeError(f"imitation seed {seed} failed ({' '.join(cmd)}):\n{res.stderr[-3000:]}")
    out = json.loads(lines[-1])
    return {
        "wall_s": wall,
        "true_return": float(out["true_return"]),
        "labels": out["comparisons"],
        "env_steps": out["env_steps"],
        "agent_steps": out["agent_steps"],
        "inner_wall_s": out["wall_s"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--env", default="halfcheetah", choices=sorted(ENVS))
    p.add_argument("--steps", type=int, default=352_000, help="env steps T, both sides")
    p.add_argument("--max-feedback", type=int, default=1400, help="label budget B, both sides")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--reward-batch", type=int, default=128, help="queries per feedback round")
    p.add_argument("--num-envs", type=int, default=16, help="PrefPPO default 16")
    p.add_argument("--n-steps", type=int, default=500, help="PPO rollout per env (default 500)")
    p.add_argument("--unsup-steps", type=int, default=32000, help="pbrl only: pre-training")
    p.add_argument("--interact", type=int, default=16000, help="pbrl only: steps between rounds")
    p.add_argument("--threads", type=int, default=1, help="OMP/MKL threads, both sides")
    p.add_argument("--pbrl-extra", nargs="*", default=[], help="more pbrl-train overrides")
    p.add_argument("--imitation-extra", nargs="*", default=[], help="more imitation args")
    p.add_argument("--imitation-python", type=Path, default=VENV_PY)
    p.add_argument("--allow-unaligned", action="store_true")
    p.add_argument("--write-results", action="store_true")
    args = p.parse_args()

    if not args.imitation_python.exists():
        sys.exit(f"{args.imitation_python} missing: run bash benchmarks/setup_imitation_venv.sh")
    rollout = args.num_envs * args.n_steps
    chunks = max(2, math.ceil(args.max_feedback / args.reward_batch))  # imitation's learn() calls
    if args.steps % (rollout * chunks) and not args.allow_unaligned:
        # PPO only stops at rollout boundaries: pbrl trains ceil(T / rollout) rollouts, imitation
        # ceil(T / chunks / rollout) in each of its chunks; unaligned T gives them unequal work.
        sys.exit(
            f"--steps {args.steps} is not a multiple of num_envs x n_steps x rounds = "
            f"{rollout} x {chunks}: the two sides would train different numbers of PPO rollouts "
            "(pass --allow-unaligned to run anyway)"
        )
    if args.unsup_steps >= args.steps:
        sys.exit(
            f"--unsup-steps {args.unsup_steps} >= --steps {args.steps}: pbrl would never ask a "
            "query; lower --unsup-steps"
        )

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-vs-imitation-") as tmp:
        for k, seed in enumerate(args.seeds):
            order = ["pbrl", "imitation"] if k % 2 == 0 else ["imitation", "pbrl"]
            res = {}
            for side in order:
                print(f"seed {seed}: {side} ...", file=sys.stderr, flush=True)
                res[side] = (
                    run_pbrl(args, seed, Path(tmp)) if side == "pbrl" else run_imitation(args, seed)
                )
                print(f"  {side}: {json.dumps(res[side])}", file=sys.stderr, flush=True)
            ratio = res["imitation"]["wall_s"] / res["pbrl"]["wall_s"]
            rows.append({"seed": seed, "first": order[0], "ratio": ratio, **res})

    ratios = [r["ratio"] for r in rows]
    mean_ratio = sum(ratios) / len(ratios)
    geo_ratio = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
    ret_p = sum(r["pbrl"]["true_return"] for r in rows) / len(rows)
    ret_i = sum(r["imitation"]["true_return"] for r in rows) / len(rows)
    met = mean_ratio >= 2.0 and ret_p >= ret_i
    summary = {
        "mean_ratio": mean_ratio,
        "geomean_ratio": geo_ratio,
        "pbrl_return": ret_p,
        "imitation_return": ret_i,
        "target_met": met,
        "rows": rows,
    }
    print(json.dumps(summary, indent=2))
    if args.write_results:
        write_results(args, rows, summary)


def write_results(args: argparse.Namespace, rows: list, s: dict) -> None:
    cmd = "python benchmarks/bench_vs_imitation.py " + " ".join(sys.argv[1:])
    pbrl_cmd = "pbrl-train " + " ".join(pbrl_overrides(args, 0)).replace("seed=0", "seed=<s>")
    imi_cmd = "benchmarks/.venv-imitation/bin/python benchmarks/imitation_prefcomp.py " + " ".join(
        imitation_args(args, 0)
    ).replace("--seed=0", "--seed=<s>")
    machine = f"{os.cpu_count()} CPU cores (shared with other jobs), no GPU, {platform.platform()}"
    lines = [
        HEADER,
        "",
        f"Date: {dt.date.today().isoformat()}. Machine: {machine}; {args.threads} torch/OMP "
        f"thread(s) per side. Command: `{cmd}`.",
        "",
        f"pbrl side: `{pbrl_cmd}`.",
        "",
        f"imitation side (imitation 1.0.1, gymnasium 0.29.1, SB3 2.2.1, mujoco 3.17.0): "
        f"`{imi_cmd}`.",
        "",
        "Wall time: whole subprocess, start-up and final 10-episode evaluation included; the "
        "two sides run one after the other, first side alternating by seed. imitation env steps "
        "include the extra rollouts it takes to cut its first queries (pbrl takes none).",
        "",
        "| seed | first | pbrl wall s | imitation wall s | ratio (imit / pbrl) "
        "| pbrl return | imitation return | labels (pbrl / imit) | agent steps (pbrl / imit) "
        "| imitation env steps |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pb, im = r["pbrl"], r["imitation"]
        lines.append(
            f"| {r['seed']} | {r['first']} | {pb['wall_s']:.1f} | {im['wall_s']:.1f} "
            f"| {r['ratio']:.2f} | {pb['true_return']:.1f} | {im['true_return']:.1f} "
            f"| {pb['labels']:.0f} / {im['labels']} | {pb['agent_steps']} / {im['agent_steps']} "
            f"| {im['env_steps']} |"
        )
    lines += [
        f"| mean | | | | {s['mean_ratio']:.2f} (geomean {s['geomean_ratio']:.2f}) "
        f"| {s['pbrl_return']:.1f} | {s['imitation_return']:.1f} | | | |",
        "",
        f"Target: {TARGET}. Met: {'yes' if s['target_met'] else 'no'}.",
        "",
        "Not matched (see benchmarks/imitation_prefcomp.py): imitation has no state-entropy "
        "pre-training, uses one reward net (3 x 256, linear output) instead of an ensemble of 3 "
        "(tanh), trains it 1 epoch a round (200 on the first) without early stopping, needs at "
        "least 2 feedback rounds and spreads them evenly over the run.",
    ]
    if len(rows) < 3 or args.steps < 100_000:
        lines += [
            "",
            f"Scale note: {args.steps} env steps x {len(rows)} seed(s) is a smoke-scale run; "
            "returns at this scale say little about either method's final performance.",
        ]
    replace_section(RESULTS, HEADER, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
