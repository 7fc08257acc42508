"""B-Pref feedback-efficiency protocol: PEBBLE (oracle teacher) vs SAC on the true reward.

Both arms are ``pbrl-train`` runs with identical SAC settings, steps and seeds; the only
difference is ``reward=true_reward`` (the normaliser). The score is PEBBLE's final evaluation
return divided by SAC's (B-Pref's "return normalised by the same RL algorithm trained on the
true reward").

    python benchmarks/feedback_efficiency.py --env walker_walk --steps 30000 --seeds 0 \
        --max-feedback 1000 --write-results

A long run can be split: with ``--runs-dir`` the runs are kept and an arm already finished there
with the same settings is reused, ``--jobs`` runs arms at once and ``--arms`` picks arms, e.g.
two machines' worth of arms, then one call that only collects and writes:

    python benchmarks/feedback_efficiency.py --steps 60000 --seeds 1 --jobs 2 --runs-dir R
    python benchmarks/feedback_efficiency.py --steps 60000 --seeds 0 --arms sac --runs-dir R
    python benchmarks/feedback_efficiency.py --steps 60000 --seeds 0 1 --runs-dir R --write-results

An arm that was stopped part-way (a machine's session ended) continues from its last
checkpoint when the same command runs again on the same ``--runs-dir``; ``--checkpoint-every``
sets how much a stop can cost (default: one checkpoint at the end, as for short runs):

    python benchmarks/feedback_efficiency.py --steps 500000 --seeds 0 --arms pebble \
        --checkpoint-every 20000 --runs-dir R

The method notes' controls run as extra arms beside the same SAC normaliser and add columns
(``--arms pebble sac random_labels no_pretrain_relabel``): PEBBLE with random labels
(``teacher=mistake teacher.eps_mistake=0.5``) and PEBBLE without pre-training and without
relabelling (``agent.num_unsup_steps=0 agent.relabel=false``, the PEBBLE paper's ablations).
PEBBLE should be clearly above both. ``--title`` writes a section of its own.

B-Pref's own protocol (walker_walk, 1000 labels, 500k steps, 10 seeds, SAC 2 x 1024 with batch
1024) needs a GPU; the flags shrink it to what a CPU can run, and the results section says so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from results_md import replace_section

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## Feedback efficiency (B-Pref protocol)"
PAPER = (
    "B-Pref/PEBBLE (paper, figure-level only): PEBBLE with ~1000 oracle labels approaches SAC "
    "on the true reward on walker_walk (no table values published; unverified reading of the "
    "curves). REED (CoRL 2023, paper abstract): PEBBLE-style baselines at 50 labels recover 38% "
    "and 21% of true-reward SAC on DMC locomotion."
)


ARMS = {
    # arm: (run-dir prefix, extra overrides, what it is)
    "pebble": ("pebble", [], "PEBBLE"),
    "sac": ("sac_true", ["reward=true_reward"], "SAC on the true reward (the normaliser)"),
    # the method notes' controls (PEBBLE, ablations in its section 4.3):
    "random_labels": (
        "random_labels",
        ["teacher=mistake", "teacher.eps_mistake=0.5"],
        "PEBBLE with random labels (every label flipped with probability 0.5)",
    ),
    "no_pretrain_relabel": (
        "no_pretrain_relabel",
        ["agent.num_unsup_steps=0", "agent.relabel=false"],
        "PEBBLE without state-entropy pre-training and without relabelling",
    ),
}
"""The arms: ``pebble`` and ``sac`` make the table; the two controls add columns."""


def run_arm(args: argparse.Namespace, seed: int, arm: str, root: Path) -> dict:
    prefix, extra, _ = ARMS[arm]
    name = f"{prefix}-{args.env}-s{seed}"
    run_dir = root / name
    overrides = [
        f"env={args.env}",
        f"seed={seed}",
        f"num_train_steps={args.steps}",
        f"max_feedback={args.max_feedback}",
        f"reward_batch={args.reward_batch}",
        f"agent.num_seed_steps={args.seed_steps}",
        f"agent.num_unsup_steps={args.unsup_steps}",
        f"agent.num_interact={args.interact}",
        f"agent.net_arch=[{args.net},{args.net}]",
        f"agent.batch_size={args.batch}",
        f"agent.learning_rate={args.lr}",
        f"eval.every={args.eval_every}",
        "eval.episodes=5",
        "log.video_every=0",
        f"checkpoint.every={args.checkpoint_every or args.steps}",
        f"hydra.run.dir={run_dir}",
    ]
    if args.query:
        overrides.append(f"query={args.query}")
    overrides += extra
    record = run_dir / "bench_arm.json"
    if record.exists():  # finished earlier into --runs-dir with the same settings: reuse it
        saved = json.loads(record.read_text())
        if saved["overrides"] == overrides:
            print(f"{name}: reusing the finished run in {run_dir}", flush=True)
            return saved["result"]
        raise RuntimeError(
            f"{run_dir} holds a run with other settings ({saved['overrides']}); use another "
            "--runs-dir or remove it"
        )
    cmd = [sys.executable, "-m", "pbrl", *overrides]
    parts_file = run_dir / "bench_parts.json"  # wall time of each launch of an unfinished arm
    parts = json.loads(parts_file.read_text()) if parts_file.exists() else []
    if (run_dir / "config.yaml").exists():  # stopped part-way: continue from its checkpoint
        print(f"{name}: continuing the unfinished run in {run_dir}", flush=True)
        cmd.append("resume=true")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    parts.append(0.0)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "bench_arm.log"  # the run's progress lines, every launch appended
    with log.open("a") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        while True:  # record the time spent every 10 s: a killed arm keeps its wall time
            try:
                proc.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                pass
            finally:
                parts[-1] = time.perf_counter() - t0
                parts_file.write_text(json.dumps(parts))
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed (see {log}):\n{log.read_text()[-3000:]}")
    wall = sum(parts)
    final = json.loads((run_dir / "final_metrics.json").read_text())
    result = {
        "name": name,
        "wall_s": wall,
        "return": final["eval/true_return"],
        "labels": final.get("pref/labels", 0),
        "launches": len(parts),
        "cmd": " ".join(o for o in overrides if not o.startswith("hydra.")),
    }
    record.write_text(json.dumps({"overrides": overrides, "result": result}, indent=1))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--env", default="walker_walk")
    p.add_argument("--steps", type=int, default=30000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--max-feedback", type=int, default=1000)
    p.add_argument("--reward-batch", type=int, default=100)
    p.add_argument("--seed-steps", type=int, default=1000)
    p.add_argument("--unsup-steps", type=int, default=4000)
    p.add_argument("--interact", type=int, default=2500)
    p.add_argument("--net", type=int, default=256)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=5e-4)  # BPref walker script: 5e-4
    p.add_argument("--eval-every", type=int, default=10000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--query",
        default=None,
        help="query selector (the `query` config group; default: the config's, uniform)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help="env steps between checkpoints (default: only at the end); with --runs-dir an "
        "arm stopped part-way continues from its last one when the command runs again",
    )
    p.add_argument(
        "--runs-dir",
        default=None,
        help="keep the runs here (default: a temporary directory); an arm already finished "
        "there with the same settings is reused, so a long benchmark can be run in parts",
    )
    p.add_argument("--jobs", type=int, default=1, help="arms run at once (subprocesses)")
    p.add_argument(
        "--arms",
        nargs="+",
        choices=list(ARMS),
        default=["pebble", "sac"],
        help="run these arms (default: pebble sac); the controls random_labels and "
        "no_pretrain_relabel add columns; a run without both pebble and sac needs --runs-dir "
        "and no --write-results",
    )
    p.add_argument(
        "--title",
        default=None,
        help="appended to the RESULTS section's title (a section of its own, e.g. for another "
        "code version), so --write-results leaves the plain section alone",
    )
    p.add_argument("--write-results", action="store_true")
    args = p.parse_args()
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    complete = {"pebble", "sac"} <= set(args.arms)
    if not complete and (args.runs_dir is None or args.write_results):
        p.error("--arms without both pebble and sac needs --runs-dir and no --write-results")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.runs_dir) if args.runs_dir else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        jobs = [(seed, arm) for seed in args.seeds for arm in args.arms]
        with ThreadPoolExecutor(args.jobs) as pool:
            futures = {job: pool.submit(run_arm, args, *job, root) for job in jobs}
            done = {job: f.result() for job, f in futures.items()}
        if not complete:
            print(f"ran {args.arms} for seeds {args.seeds} into {root}")
            return
        controls = [a for a in args.arms if a not in ("pebble", "sac")]
        for seed in args.seeds:
            sac = done[(seed, "sac")]
            norm = {a: _normalised(done[(seed, a)], sac) for a in ["pebble", *controls]}
            rows.append((seed, {a: done[(seed, a)] for a in args.arms}, norm))
            pebble = done[(seed, "pebble")]
            print(
                f"seed {seed}: PEBBLE {pebble['return']:.1f} ({pebble['labels']:.0f} labels, "
                f"{pebble['wall_s']:.0f}s) | SAC true reward {sac['return']:.1f} "
                f"({sac['wall_s']:.0f}s) | normalised {norm['pebble']:.2f}"
                + "".join(f" | {a} {norm[a]:.2f}" for a in controls),
                flush=True,
            )
    print(f"mean normalised return: {_mean_std([r[2]['pebble'] for r in rows])}")
    if args.write_results:
        write_results(args, rows, controls)


def _normalised(arm: dict, sac: dict) -> float:
    return arm["return"] / sac["return"] if sac["return"] else float("nan")


def _mean_std(xs: list[float]) -> str:
    m = sum(xs) / len(xs)
    sd = (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0
    return f"{m:.2f} ± {sd:.2f}"


def write_results(args: argparse.Namespace, rows: list, controls: list[str]) -> None:
    cmd = "python benchmarks/feedback_efficiency.py " + shlex.join(sys.argv[1:])
    header = f"{SECTION}: {args.env}" + (f", {args.title}" if args.title else "")
    names = {"random_labels": "random labels", "no_pretrain_relabel": "no pre-training/relabel"}
    lines = [
        header,
        "",
        f"Date: {dt.date.today().isoformat()}. Machine: 2 CPU cores, no GPU. Command: `{cmd}`.",
        "",
        f"Settings: env {args.env}, {args.steps} env steps, oracle teacher, budget "
        f"{args.max_feedback} queries in rounds of {args.reward_batch} every {args.interact} "
        f"steps after {args.seed_steps} seed + {args.unsup_steps} pre-training steps; SAC "
        f"2 x {args.net}, batch {args.batch}, lr {args.lr}; query selection "
        f"{args.query or 'uniform'}; evaluation 5 episodes. The SAC arm "
        "is the same `pbrl-train` with `reward=true_reward`.",
        "",
    ]
    for a in controls:
        lines.append(f"- control `{a}`: {ARMS[a][2]} (`{' '.join(ARMS[a][1])}`).")
    if controls:
        lines.append("")
    head = "| seed | PEBBLE return | labels | SAC (true reward) return | normalised |"
    rule = "|---|---|---|---|---|"
    for a in controls:
        head += f" {names[a]} return | {names[a]} normalised |"
        rule += "---|---|"
    lines += [head, rule]
    for seed, arms, norm in rows:
        line = (
            f"| {seed} | {arms['pebble']['return']:.1f} | {arms['pebble']['labels']:.0f} | "
            f"{arms['sac']['return']:.1f} | {norm['pebble']:.2f} |"
        )
        for a in controls:
            line += f" {arms[a]['return']:.1f} | {norm[a]:.2f} |"
        lines.append(line)
    mean = f"| mean ± std | | | | {_mean_std([r[2]['pebble'] for r in rows])} |"
    for a in controls:
        mean += f" | {_mean_std([r[2][a] for r in rows])} |"
    lines += [
        mean,
        "",
        f"Paper: {PAPER}",
        "",
        f"Scale note: B-Pref runs 500k steps x 10 seeds with SAC 2 x 1024 (batch 1024); this CPU "
        f"run uses {args.steps} steps and {len(rows)} seed(s), so it checks the pipeline's "
        "direction, not the paper's band.",
        "",
    ]
    replace_section(RESULTS, header, "\n".join(lines))


if __name__ == "__main__":
    main()
