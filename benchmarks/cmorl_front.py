"""C-MORL vs PGMORL (ours and morl-baselines') on one env at one step budget, one evaluator.

    python benchmarks/cmorl_front.py                       # CPU scale (see SCALES), 3 seeds
    python benchmarks/cmorl_front.py --scale paper --workers 6   # the paper's budget
    python benchmarks/cmorl_front.py --arms cmorl pgmorl morlb-pgmorl \
        --morlb-python /work/venvs/morlb/bin/python      # + morl-baselines' PGMORL

Arms: ``cmorl`` and ``pgmorl`` (pbrl's) share MOPPO, the jobs, the archive and EvalProtocol
(episodes, length, gamma, reference point, EU grid). ``morlb-pgmorl`` is morl-baselines'
PGMORL (a benchmark-only dependency: ``pip install morl-baselines``, best in its own venv, see
benchmarks/morlb_pgmorl.py), run by ``--morlb-python`` in a subprocess with the same budget
(4 envs x ``num_steps`` per iteration, warm-up / evolution iterations of the scale) and its
trained policies scored by the same EvalProtocol. Steps count every parallel env's
transitions; evaluation episodes are counted apart. Writes the ``## C-MORL vs PGMORL ...``
section of benchmarks/RESULTS.md.

Seeds already in ``<--out>/results.json`` (same env and scale) are reused, so a run can grow:
``--seeds 3`` and later ``--seeds 6`` on the same ``--out`` trains seeds 3-5 only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from results_md import write_section  # noqa: E402

from pbrl.morl.cmorl import CMORL, CMORLConfig  # noqa: E402
from pbrl.morl.metrics import EvalProtocol  # noqa: E402
from pbrl.morl.pgmorl import PGMORL, PGMORLConfig  # noqa: E402
from pbrl.morl.ppo import MOPPOConfig  # noqa: E402

# name -> (total steps, C-MORL init steps, PPO num_steps per env, PGMORL warm-up / evolution
# iterations, C-MORL update_iter, eval episodes, eval max steps)
SCALES = {
    "tiny": dict(
        total=3_072,
        init=1_536,
        num_steps=64,
        warm=1,
        evo=1,
        update_iter=1,
        episodes=2,
        max_steps=100,
    ),  # fmt: skip  (a plumbing check of every arm, seconds to a minute each)
    "smoke": dict(
        total=49_152,
        init=24_576,
        num_steps=512,
        warm=2,
        evo=1,
        update_iter=1,
        episodes=2,
        max_steps=300,
    ),  # fmt: skip
    "cpu": dict(
        total=98_304,
        init=49_152,
        num_steps=512,
        warm=4,
        evo=2,
        update_iter=1,
        episodes=3,
        max_steps=500,
    ),  # fmt: skip
    "paper": dict(
        total=6_000_000,
        init=4_000_000,
        num_steps=2048,
        warm=80,
        evo=20,
        update_iter=20,
        episodes=5,
        max_steps=500,
    ),  # fmt: skip
}


MORLB = Path(__file__).with_name("morlb_pgmorl.py")
ARMS = ("cmorl", "pgmorl", "morlb-pgmorl")


def check_morlb(python: str) -> None:
    """Fail early, naming the install, when ``python`` cannot import morl-baselines."""
    probe = "import morl_baselines.multi_policy.pgmorl.pgmorl, pbrl.morl.ppo"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    r = subprocess.run([python, "-c", probe], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        err = (r.stderr.strip().splitlines() or ["?"])[-1]
        raise SystemExit(
            f"the morlb-pgmorl arm needs morl-baselines and pbrl importable by {python} ({err}); "
            "install it with `pip install morl-baselines==1.3.0` (e.g. in a venv made with "
            "--system-site-packages) and pass --morlb-python"
        )


def run_morlb(env: str, seed: int, scale: dict, out: Path, python: str) -> dict:
    """morl-baselines' PGMORL at the scale's budget, scored by EvalProtocol (a subprocess)."""
    path = out / f"morlb-pgmorl-s{seed}.json"
    cmd = [python, str(MORLB), "--env", env, "--seed", str(seed), "--total", str(scale["total"]),
           "--num-envs", "4", "--steps-per-iteration", str(scale["num_steps"]),
           "--warmup-iterations", str(scale["warm"]),
           "--evolutionary-iterations", str(scale["evo"]), "--episodes", str(scale["episodes"]),
           "--max-steps", str(scale["max_steps"]), "--gamma", "0.99",
           "--ref-point", "-100", "-100", "--eu-step", "0.01", "--eval-seed", str(10_000 + seed),
           "--out", str(path)]  # fmt: skip
    env_vars = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    with open(out / f"morlb-pgmorl-s{seed}.log", "w") as log:
        r = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env_vars)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}); see {log.name}")
    return json.loads(path.read_text())


def run_one(
    method: str, env: str, seed: int, scale: dict, workers: int, out: Path, morlb_python: str
) -> dict:
    if method == "morlb-pgmorl":
        res = run_morlb(env, seed, scale, out, morlb_python)
        print(f"{method} s{seed}: HV {res['hv']:.4g} EU {res['eu']:.4g} front "
              f"{res['cardinality']} steps {res['env_steps']} eval steps {res['eval_steps']} "
              f"{res['wall_s']:.0f}s", flush=True)  # fmt: skip
        return res
    ppo = MOPPOConfig(num_envs=4, num_steps=scale["num_steps"])
    prot = EvalProtocol(episodes=scale["episodes"], max_steps=scale["max_steps"], gamma=0.99,
                        ref_point=(-100.0, -100.0), eu_step=0.01, seed=10_000 + seed)  # fmt: skip
    t0 = time.time()
    if method == "cmorl":
        cfg = CMORLConfig(env=env, total_steps=scale["total"], init_steps=scale["init"],
                          update_iter=scale["update_iter"], eval_interval=10**9, seed=seed,
                          workers=workers, ppo=ppo, protocol=prot)  # fmt: skip
        res = CMORL(cfg, out / f"cmorl-s{seed}").run()
    else:
        pcfg = PGMORLConfig(env=env, total_steps=scale["total"], warmup_iterations=scale["warm"],
                            evolutionary_iterations=scale["evo"], seed=seed, workers=workers,
                            ppo=ppo, protocol=prot)  # fmt: skip
        res = PGMORL(pcfg, out / f"pgmorl-s{seed}").run()
    res["wall_s"] = time.time() - t0
    print(f"{method} s{seed}: HV {res['hv']:.4g} EU {res['eu']:.4g} front {res['cardinality']} "
          f"steps {res['env_steps']} eval steps {res['eval_steps']} {res['wall_s']:.0f}s",
          flush=True)  # fmt: skip
    return res


def load_done(out: Path, env: str, scale: str) -> dict[str, dict[int, dict]]:
    """Per arm, the seeds an earlier run into ``out`` finished (``out/results.json``).

    A longer ``--seeds`` on the same ``--out`` then trains only the new seeds. Rows record
    their seed, env and scale; a results.json of another env or scale is refused rather than
    mixed in, and one written before rows carried them is taken as seeds 0, 1, ... of this
    env and scale, as the loop below wrote them.
    """
    path = out / "results.json"
    if not path.exists():
        return {}
    done: dict[str, dict[int, dict]] = {}
    for method, rows in json.loads(path.read_text()).items():
        for i, row in enumerate(rows):
            got = (row.setdefault("env", env), row.setdefault("scale", scale))
            if got != (env, scale):
                raise SystemExit(
                    f"{path} holds {method} runs of env {got[0]} at scale {got[1]}, not "
                    f"{env} at {scale}: pass another --out (or move that file away)"
                )
            done.setdefault(method, {})[int(row.setdefault("seed", i))] = row
    return done


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--env", default="mo-hopper-2d")
    ap.add_argument("--scale", default="cpu", choices=sorted(SCALES))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", default="runs/bench-cmorl")
    ap.add_argument("--arms", nargs="+", default=list(ARMS[:2]), choices=ARMS)
    ap.add_argument(
        "--morlb-python",
        default=os.environ.get("MORLB_PYTHON", sys.executable),
        help="python that imports morl-baselines and pbrl (morlb-pgmorl arm)",
    )
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument(
        "--from-json",
        default=None,
        help="rewrite the section from a results.json of an earlier run (no training)",
    )
    ap.add_argument("--cores", default="2 loaded CPU cores", help="the machine, for the text")
    ap.add_argument("--note", default="", help="a reading paragraph to add after the ratios")
    args = ap.parse_args()
    scale = SCALES[args.scale]
    if args.from_json:
        rows = json.loads(Path(args.from_json).read_text())
        args.arms = [m for m in ARMS if m in rows]
        args.seeds = len(next(iter(rows.values())))
    else:
        if "morlb-pgmorl" in args.arms:
            check_morlb(args.morlb_python)
        torch.set_num_threads(1)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        done = load_done(out, args.env, args.scale)
        rows = {m: [] for m in args.arms}
        for seed in range(args.seeds):
            for method in rows:
                if seed in done.get(method, {}):
                    print(f"{method} s{seed}: reused from {out / 'results.json'}", flush=True)
                    res = done[method][seed]
                else:
                    res = run_one(
                        method, args.env, seed, scale, args.workers, out, args.morlb_python
                    )
                    res.update(seed=seed, env=args.env, scale=args.scale)
                rows[method].append(res)
                (out / "results.json").write_text(json.dumps(rows, indent=1, default=float))
    body = report(rows, args, scale)
    if not args.no_write:
        write_section(f"C-MORL vs PGMORL on {args.env} (issue 9)", body)
    print(body)


def report(rows: dict[str, list[dict]], args: argparse.Namespace, scale: dict) -> str:
    """The RESULTS.md section: table, ratios of C-MORL to each PGMORL, and the caveats."""

    def arr(method: str, key: str) -> np.ndarray:
        return np.array([r[key] for r in rows[method]], float)

    def ms(method: str, key: str, div: float = 1.0) -> str:
        v = arr(method, key) / div
        return f"{v.mean():.4g} ± {v.std():.2g}"

    head = "| method | HV (x1e4) | EU | sparsity | front size | train steps | eval steps | wall s |"
    table = [head, "|---|---|---|---|---|---|---|---|"]
    for method in rows:
        table.append(
            f"| {method} | {ms(method, 'hv', 1e4)} | {ms(method, 'eu')} | "
            f"{ms(method, 'sparsity')} | {ms(method, 'cardinality')} | "
            f"{ms(method, 'env_steps')} | {ms(method, 'eval_steps')} | {ms(method, 'wall_s')} |"
        )
    lines = []
    if "cmorl" in rows:
        for base in ("pgmorl", "morlb-pgmorl"):
            if base not in rows:
                continue
            part = []
            for key, name in (("hv", "HV"), ("eu", "EU"), ("wall_s", "wall time")):
                c, b = arr("cmorl", key), arr(base, key)
                wins = int((c >= b).sum()) if key != "wall_s" else int((c <= b).sum())
                tag = "C-MORL >=" if key != "wall_s" else "C-MORL faster in"
                part.append(f"{name} {c.mean() / b.mean():.3f} ({tag} {wins}/{len(c)} seeds)")
            lines.append(f"- C-MORL / {base}: " + "; ".join(part) + ".")
    if "morlb-pgmorl" in rows:
        m = rows["morlb-pgmorl"]
        lines.append(
            f"- morlb-pgmorl detail: {np.mean([r['num_policies'] for r in m]):.0f} trained "
            "policies per seed scored (every one its evaluations saw after training); its own "
            f"final archive alone (chosen by its internal evaluation) scores HV "
            f"{np.mean([r.get('archive_hv', 0.0) for r in m]) / 1e4:.4g}e4, EU "
            f"{np.mean([r.get('archive_eu', float('nan')) for r in m]):.4g}; eval steps = "
            f"its internal evaluations ({np.mean([r['internal_eval_steps'] for r in m]):.0f}) "
            f"+ scoring ({np.mean([r['scoring_eval_steps'] for r in m]):.0f}); wall s = "
            f"training {np.mean([r['train_s'] for r in m]):.0f} + scoring "
            f"{np.mean([r['score_s'] for r in m]):.0f} (imports excluded)."
        )
    arms = " ".join(rows)
    cmd = (
        f"OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/cmorl_front.py --env {args.env} "
        f"--scale {args.scale} --seeds {args.seeds} --workers {args.workers} --arms {arms}"
    )
    if "morlb-pgmorl" in rows:
        cmd += " --morlb-python /work/venvs/morlb/bin/python"  # fmt: skip
    nl = chr(10)
    return f"""Command: `{cmd}` ({datetime.date.today().isoformat()}; {args.cores}).
Scale `{args.scale}`: {scale}. Train steps count all 4 envs' transitions; evaluation
({scale["episodes"]} deterministic episodes of {scale["max_steps"]} steps, gamma 0.99, reference
(-100, -100), EU on the 101-point grid) is the same `EvalProtocol` for every arm and counted
apart. `cmorl` and `pgmorl` are pbrl's (`pbrl.morl`); `morlb-pgmorl` is morl-baselines 1.3.0's
PGMORL (benchmarks/morlb_pgmorl.py: 4 envs x {scale["num_steps"]} steps per iteration, pop 6,
{scale["warm"]} warm-up + {scale["evo"]}-iteration evolution stages, origin = the reference
point, its PPO defaults equal pbrl's), whose trained policies are re-scored by pbrl's
evaluator with the observation normalisation they were trained with. Mean ± std over
{args.seeds} seeds.

{nl.join(table)}

{nl.join(lines)}
{nl + args.note.strip() + nl if args.note.strip() else ""}
Paper (Liu et al. 2025, 1.5e6 nominal steps x 4 envs, against morl-baselines' PGMORL): C-MORL
up to +35% HV and +9% EU over PGMORL across its benchmarks (per-environment values are not
given in the notes). This budget is {scale["total"]:,} transitions per seed, about
{6e6 / scale["total"]:.0f}x below the paper's 6e6: every method spends most of it in its first
stage (C-MORL's Pareto initialisation, PGMORL's warm-up), so this compares the pipelines at a
small budget, not a reproduction of the paper's gap; the `paper` scale reproduces the budget
(days of CPU time on 2 cores).
"""


if __name__ == "__main__":
    main()
