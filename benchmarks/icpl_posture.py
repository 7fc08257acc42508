"""Is a HalfCheetah policy upright or on its back? The posture of ICPL trainings' clips.

HalfCheetah policies trained by PPO often settle into running on their back ("flipped"), a
mode reached early in training that a policy seldom leaves; it runs slower than the upright
gait. This script reads the clips that ICPL trainings store (``c<p>[.s<i>].npz``: the sim
states of the final policy's first ``clip_steps`` evaluation steps, as
``mj_getState(mjSTATE_FULLPHYSICS)``) in the group directories of ``icpl_rank_noise.py``'s
``--out`` or in an ICPL run's ``rounds/r<k>``, decodes the torso pitch with MuJoCo, and
reports, per training, the task score and the mean cosine of the pitch over the clip's last
quarter (1: upright, -1: on its back; every episode starts upright, and a policy that flips
has done so by then). A training counts as flipped when that mean is below 0.

    python benchmarks/icpl_posture.py /work/runs/ranknoise1m/proxy-s0-r0 ...

A directory's programs are keyed by round and index (``r<k> c<p>``), so a whole ICPL run
directory lists every round's programs. Per directory: each program's trainings (score,
posture); then the split of all task scores by posture, and how much of the within-program
variance the posture explains (the share of the pooled within-program sum of squares that goes
once each program's flipped and upright trainings are centred apart). For an ICPL run
directory, also the posture of each round's best and worst program (``round.json``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np
from icpl_rank_noise import round_jobs

STEM = re.compile(r"^c(\d+)(?:\.s(\d+))?\.npz$")


def pitch_cos(model: mujoco.MjModel, data: mujoco.MjData, states: np.ndarray) -> float:
    """Mean cos(torso pitch) over the last quarter of a clip's FULLPHYSICS states (a policy
    that flips does so within its first ~70 steps; the start is upright for every policy)."""
    spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
    if states.shape[1] != mujoco.mj_stateSize(model, spec):
        raise SystemExit(
            f"clip states have {states.shape[1]} columns, HalfCheetah's FULLPHYSICS state "
            f"{mujoco.mj_stateSize(model, spec)}: these are not HalfCheetah clips"
        )
    out = []
    for s in states[-max(1, len(states) // 4) :]:
        mujoco.mj_setState(model, data, s, spec)
        out.append(np.cos(data.qpos[2]))  # rooty: the torso's pitch
    return float(np.mean(out))


def round_dirs(path: Path) -> list[Path]:
    """An ICPL run directory's ``rounds/r<k>`` folders in round order."""
    return sorted(path.glob("rounds/r*"), key=lambda d: int(d.name[1:]))


def read_dir(path: Path, model: mujoco.MjModel, data: mujoco.MjData) -> dict[str, list]:
    """{"r<k> c<p>": [(training, score, cos pitch), ...]} of one directory's trained clips."""
    rdirs = round_dirs(path) or [path]
    progs: dict[str, list] = {}
    for rdir in rdirs:
        for f in sorted(rdir.glob("c*.npz")):
            m = STEM.match(f.name)
            if not m:
                continue
            res = json.loads(f.with_suffix(".json").read_text())
            if res.get("status") != "trained":
                continue
            p, i = int(m.group(1)), int(m.group(2) or 0)
            c = pitch_cos(model, data, np.load(f)["sim_state"])
            key = f"{rdir.name} c{p}"
            progs.setdefault(key, []).append((i, float(res["task_score_final"]), c))
    for v in progs.values():
        v.sort()
    return progs


def round_picks(path: Path, progs: dict[str, list]) -> list[tuple[str, str]]:
    """The posture of each round's best and worst program of an ICPL run directory (from
    ``round.json``; the loop's own training ``c<p>`` of the picked candidate)."""
    out = []
    for rdir in round_dirs(path):
        f = rdir / "round.json"
        if not f.exists():
            continue
        rnd = json.loads(f.read_text())
        jobs = round_jobs(rnd)
        pick = []
        for which in ("best", "worst"):
            j = rnd.get(which)
            runs = progs.get(f"{rdir.name} c{jobs.index(j)}") if j in jobs else None
            pick.append("-" if not runs else ("F" if runs[0][2] < 0 else "U"))
        out.append((pick[0], pick[1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dirs", nargs="+", type=Path, help="group or run directories")
    ap.add_argument(
        "--vs",
        nargs="+",
        type=Path,
        default=None,
        help="as many directories, the same groups at another budget: count the trainings "
        "(same program, same training index, so the same seed) whose posture agrees",
    )
    args = ap.parse_args()
    if args.vs is not None and len(args.vs) != len(args.dirs):
        raise SystemExit(
            f"--vs takes one directory per directory ({len(args.dirs)}), got {len(args.vs)}"
        )
    env = gym.make("HalfCheetah-v5")
    model = env.unwrapped.model
    data = mujoco.MjData(model)
    flipped, upright = [], []
    ss_total = ss_left = 0.0
    agree = paired = 0
    best_flipped = rounds = 0
    for k, d in enumerate(args.dirs):
        progs = read_dir(d, model, data)
        if not progs:
            raise SystemExit(f"{d}: no trained clips (c<p>.npz with a trained c<p>.json)")
        if args.vs is not None:
            other = read_dir(args.vs[k], model, data)
            for key, runs in progs.items():
                theirs = {i: c for i, _, c in other.get(key, [])}
                for i, _, c in runs:
                    if i in theirs:
                        paired += 1
                        agree += (c < 0) == (theirs[i] < 0)
        print(f"{d}:")
        picks = round_picks(d, progs)
        if picks:
            print(
                "  best / worst per round: "
                + ", ".join(f"r{r} {b}/{w}" for r, (b, w) in enumerate(picks))
            )
            best_flipped += sum(b == "F" for b, _ in picks)
            rounds += len(picks)
        for key, runs in progs.items():
            desc = ", ".join(f"{s:.0f} ({'F' if c < 0 else 'U'} {c:+.2f})" for _, s, c in runs)
            print(f"  {key}: {desc}")
            s = np.array([x[1] for x in runs])
            f = np.array([x[2] < 0 for x in runs])
            flipped += list(s[f])
            upright += list(s[~f])
            ss_total += float(((s - s.mean()) ** 2).sum())
            for part in (s[f], s[~f]):
                if len(part):
                    ss_left += float(((part - part.mean()) ** 2).sum())
    n = len(flipped) + len(upright)
    print(f"trainings: {n}; flipped (mean cos pitch < 0): {len(flipped)}")
    for name, xs in (("flipped", flipped), ("upright", upright)):
        if xs:
            sd = np.std(xs, ddof=1) if len(xs) > 1 else 0.0
            print(
                f"  {name}: task score {np.mean(xs):.0f} ± {sd:.0f}"
                f" (min {min(xs):.0f}, max {max(xs):.0f})"
            )
    if rounds:
        print(
            f"rounds whose best program (the loop's training) is flipped: {best_flipped} of "
            f"{rounds}"
        )
    if args.vs is not None:
        print(f"same posture as in --vs (same program and seed): {agree} of {paired} trainings")
    if ss_total > 0:
        print(
            f"within-program sum of squares explained by the posture: {1 - ss_left / ss_total:.2f}"
        )


if __name__ == "__main__":
    sys.exit(main())
