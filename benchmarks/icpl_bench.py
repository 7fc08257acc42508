"""ICPL on HalfCheetah (issue 8): best-so-far task score per round, a random-label control, PrefPPO.

Arms:

- ``--arm icpl --teachers proxy random``: whole ICPL loops (``pbrl-icpl``), "make the agent run
  forward as fast as possible", K 6 x 5 rounds, one run per (teacher, seed) in
  ``<runs-dir>/<teacher>-s<seed>``. ``proxy`` ranks by the true task score (ICPL's synthetic
  human); ``random`` draws best/worst at random (the control: no preference information).
- ``--arm prefppo --budgets 49 150 1500``: PrefPPO (``pbrl-train agent=prefppo teacher=oracle``)
  at ICPL's PrefPPO query budgets (paper, appendix A.3; 49 matches ICPL's human effort) with
  the same PPO settings and the same env steps (``--steps``) as one ICPL candidate, so both
  compare the final policy of one PPO training: on the best LLM program (ICPL) or on a reward
  model learnt from N oracle labels (PrefPPO). Runs in ``<runs-dir>/prefppo-q<N>-s<seed>``.
- ``--arm ppo``: the same PPO on the env's own reward (``reward=true_reward``: no teacher, no
  unsupervised phase), the reference both learnt rewards are read against; a row of the
  PrefPPO table. Runs in ``<runs-dir>/ppo-true-s<seed>``.
- ``--arm reference``: the env's own reward written as a reward program, trained by
  pbrl-icpl's candidate trainer exactly as an LLM program is (Eureka's "human-engineered
  reward" baseline; HalfCheetah only so far); a row of the PrefPPO table, with the program's
  Pearson r against the env's reward. Runs in ``<runs-dir>/reference-s<seed>``.
- ``--summary``: reads the finished run dirs and writes a RESULTS.md section (``--results``):
  best-so-far true task score per round per arm (mean ± std over seeds and per seed), the
  fraction of sampled programs that compiled (passed the static and probe checks), which
  model answered (``--model-note``), PrefPPO's final return per budget, and the commands.

No capable LLM API is reachable on the benchmark machine, so the default is ``--llm manual``:
each run's chat requests appear as files in ``--relay-dir`` and a capable model answers them by
hand (docs/icpl.md, "Answering by hand"). The answers are cached in ``--cache-dir``/s<seed>
(shared by the arms of one seed: round 0's prompt is the same for proxy and random, so both arms
start from the same six programs — a paired control), and a rerun with that cache replays them
without anybody answering: the recorded answers. The answers of the RESULTS runs are kept in
``benchmarks/icpl_answers/<set>`` (README there; pass it as ``--cache-dir``).

    # the loops (answer the prompts appearing in benchmarks/runs/icpl/relay/pending/)
    python benchmarks/icpl_bench.py --arm icpl --teachers proxy random --seeds 0 1 2 \
        --llm manual --model claude-by-hand --jobs 2
    # PrefPPO at the paper's budgets, same env steps per policy
    python benchmarks/icpl_bench.py --arm prefppo --budgets 49 150 1500 --seeds 0 1 2 --jobs 2
    # the RESULTS.md section
    python benchmarks/icpl_bench.py --summary --seeds 0 1 2 --model-note "Claude ..., by hand"

Scale: the paper trains each candidate for IsaacGym's 3000 PPO epochs (~1M+ steps, method
notes); here ``--steps`` defaults to 200,000 env steps per candidate (pbrl-icpl's own
``train.total_steps``), scaled down from the paper. Measured 2026-12-03 with pbrl-icpl on
halfcheetah, two to five ICPL runs pinned to the 2 cores of this machine: median 37.9 s
per 200,000-step candidate (quartiles 37.2-39.5 s, 96 trainings). One (teacher, seed) loop is
30 trainings plus ``final_eval_seeds`` (5) retrainings of the best program, about 23 min of
training, plus the time the answers take. (An earlier measurement, older code on another host:
156-161 s per 200,000-step candidate, which is why the 2026-12-01 run used 40,960.)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from results_md import RESULTS, write_section  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASK = "make the agent run forward as fast as possible"  # pbrl/configs/icpl/icpl.yaml's default
STEPS = 200_000  # per candidate, pbrl-icpl's train.total_steps: ~38 s on one core here
TITLE = "ICPL on HalfCheetah: LLM-written rewards, proxy vs random labels, PrefPPO (issue 8)"
PAPER = (
    "ICPL paper (arXiv 2410.17233; method notes): best-so-far task score rises over the 5 "
    "iterations (Humanoid run: 5.80 -> 6.11 -> 7.92 -> 8.13 -> 8.23, appendix A.5.2); ICPL "
    "clearly beats PrefPPO with 49 and 150 queries and roughly matches PrefPPO with 15k "
    "queries (no table values available). Pass (method notes): best-so-far rises; the random-"
    "label control does not improve beyond iteration 0."
)
# ICPL's candidate PPO (pbrl/configs/icpl/icpl.yaml train.*), given to PrefPPO too
PPO = {
    "n_envs": 8,
    "n_steps": 256,
    "batch_size": 256,
    "n_epochs": 10,
    "learning_rate": 3.0e-4,
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "clip_range": 0.2,
    "ent_coef": 0.0,
    "net": 64,
    "eval_episodes": 3,
}


def bench_cmd() -> str:
    """This invocation, for the RESULTS section."""
    return "python benchmarks/icpl_bench.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])


# --- ICPL runs --------------------------------------------------------------------------------
def icpl_overrides(args: argparse.Namespace, teacher: str, seed: int) -> list[str]:
    """The ``pbrl-icpl`` overrides of one (teacher, seed) loop."""
    runs = Path(args.runs_dir)
    cache = Path(args.cache_dir) if args.cache_dir else runs / "llm_cache"
    ov = [
        f"env={args.env}",
        f"teacher={teacher}",
        f"seed={seed}",
        f"K={args.K}",
        f"rounds={args.rounds}",
        f"max_samples={args.max_samples}",
        f"train.total_steps={args.steps}",
        f"train.parallel={args.parallel}",
        f"llm={args.llm}",
        f"llm.cache_dir={cache.resolve() / f's{seed}'}",
    ]
    if args.model:
        ov.append(f"llm.model={args.model}")
    if args.llm == "manual":
        relay = Path(args.relay_dir) if args.relay_dir else runs / "relay"
        ov += [f"llm.relay_dir={relay.resolve()}", f"llm.label=s{seed}"]
    if args.llm == "openai":
        if args.base_url:
            ov.append(f"llm.base_url={args.base_url}")
        if args.api_key_env:
            ov.append(f"llm.api_key_env={args.api_key_env}")
    return ov + list(args.override)


def _check_record(run_dir: Path, overrides: list[str]) -> None:
    record = run_dir / "bench_run.json"
    if record.exists():
        saved = json.loads(record.read_text())
        if saved["overrides"] != overrides:
            raise RuntimeError(
                f"{run_dir} holds a run with other settings:\n  {saved['overrides']}\nnot\n  "
                f"{overrides}\nuse another --runs-dir or remove that folder"
            )


def _launch(cmd: list[str], run_dir: Path, overrides: list[str], done: Path, name: str) -> float:
    """Run ``cmd`` (output to ``run_dir/bench.log``) unless ``done`` exists; wall seconds."""
    _check_record(run_dir, overrides)
    if done.exists():
        print(f"{name}: finished earlier in {run_dir}", flush=True)
        return float("nan")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "bench_run.json").write_text(
        json.dumps({"overrides": overrides, "cmd": bench_cmd()}, indent=1)
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    print(f"{name}: started, log {run_dir / 'bench.log'}", flush=True)
    t0 = time.perf_counter()
    with open(run_dir / "bench.log", "ab") as log:
        res = subprocess.run(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        tail = (run_dir / "bench.log").read_text(errors="replace")[-2500:]
        raise RuntimeError(f"{name} failed (exit {res.returncode}); rerun to resume:\n{tail}")
    print(f"{name}: done in {wall:.0f}s", flush=True)
    return wall


def run_icpl(args: argparse.Namespace, teacher: str, seed: int) -> float:
    name = f"{teacher}-s{seed}"
    run_dir = Path(args.runs_dir) / name
    ov = icpl_overrides(args, teacher, seed)
    cmd = [sys.executable, "-m", "pbrl.icpl.cli", *ov, f"hydra.run.dir={run_dir.resolve()}"]
    return _launch(cmd, run_dir, ov, run_dir / "summary.json", name)


# --- PrefPPO runs -----------------------------------------------------------------------------
def prefppo_schedule(steps: int, budget: int) -> dict[str, int]:
    """Unsupervised steps, query interval and batch so that ``budget`` labels are spent in the
    first half of ``steps`` (one feedback round per PPO rollout), then the reward is frozen."""
    rollout = PPO["n_envs"] * PPO["n_steps"]
    unsup = 4 * rollout  # every env has finished an episode (HalfCheetah: 1000 steps) by then
    rounds = max(1, (steps // 2 - unsup) // rollout)
    return {"unsup": unsup, "interact": rollout, "reward_batch": math.ceil(budget / rounds)}


def prefppo_overrides(args: argparse.Namespace, budget: int, seed: int) -> list[str]:
    steps = args.prefppo_steps or args.steps
    s = prefppo_schedule(steps, budget)
    return [
        f"env={args.env}",
        "agent=prefppo",
        "teacher=oracle",
        f"seed={seed}",
        f"num_train_steps={steps}",
        f"max_feedback={budget}",
        f"reward_batch={s['reward_batch']}",
        f"agent.num_unsup_steps={s['unsup']}",
        f"agent.num_interact={s['interact']}",
        f"agent.num_envs={PPO['n_envs']}",
        f"agent.n_steps={PPO['n_steps']}",
        f"agent.batch_size={PPO['batch_size']}",
        f"agent.n_epochs={PPO['n_epochs']}",
        f"agent.learning_rate={PPO['learning_rate']}",
        f"agent.net_arch=[{PPO['net']},{PPO['net']}]",
        f"agent.sb3.gamma={PPO['gamma']}",
        f"agent.sb3.gae_lambda={PPO['gae_lambda']}",
        f"agent.sb3.clip_range={PPO['clip_range']}",
        f"agent.sb3.ent_coef={PPO['ent_coef']}",
        "agent.sb3.use_sde=false",
        f"eval.every={steps}",
        f"eval.episodes={PPO['eval_episodes']}",
        "log.video_every=0",
        f"log.every={max(1000, steps // 20)}",
        f"checkpoint.every={steps}",
        "device=cpu",
        *args.prefppo_override,
    ]


def ppo_true_overrides(args: argparse.Namespace, seed: int) -> list[str]:
    """PPO on the env's own reward with the same settings and steps: the reference a learnt
    reward (PrefPPO's model or ICPL's program) is read against. No teacher, no unsupervised
    phase (``reward=true_reward`` skips both)."""
    feedback = ("max_feedback=", "reward_batch=", "agent.num_unsup_steps=", "agent.num_interact=")
    ov = [o for o in prefppo_overrides(args, 1, seed) if not o.startswith(feedback)]
    return [*ov, "reward=true_reward"]


def run_ppo_true(args: argparse.Namespace, _budget: int, seed: int) -> float:
    name = f"ppo-true-s{seed}"
    run_dir = Path(args.runs_dir) / name
    ov = ppo_true_overrides(args, seed)
    cmd = [sys.executable, "-m", "pbrl", *ov, f"hydra.run.dir={run_dir.resolve()}"]
    return _launch(cmd, run_dir, ov, run_dir / "final_metrics.json", name)


# The env's own reward written as a reward program (Eureka's "human-engineered reward"
# baseline): trained by pbrl-icpl's candidate trainer exactly as an LLM program is. HalfCheetah
# v5 rewards (x_after - x_before) / dt - 0.1 |a|^2. The observation has no x position, so the
# program averages the torso's x velocity (qvel[0], obs[:, 8]) at the two ends of the step: close
# to the env's reward, not equal (--arm reference measures how close and writes it down).
REFERENCE_PROGRAMS = {
    "halfcheetah": (
        "import torch\n"
        "def compute_reward(obs, action, next_obs):\n"
        "    forward = 0.5 * (obs[:, 8] + next_obs[:, 8])\n"
        "    ctrl = 0.1 * torch.sum(action ** 2, dim=-1)\n"
        "    return forward - ctrl, {'forward_velocity': forward, 'ctrl_cost': -ctrl}\n"
    ),
}


class _NoLLM:
    """The chat client of a loop that only trains: it must never be asked."""

    stats: dict[str, int] = {}

    def chat(self, *args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
        raise RuntimeError("--arm reference trains the reference program only; no LLM call")


def reference_agreement(env: str, source: str, steps: int = 2000) -> dict[str, float]:
    """Pearson r and mean |difference| between the reference program and the env's reward on
    ``steps`` random-policy transitions."""
    import torch

    from pbrl import envs as pbrl_envs

    e = pbrl_envs.make_env(env, seed=123)
    obs, _ = e.reset(seed=123)
    o, a, n, r = [], [], [], []
    for _ in range(steps):
        act = e.action_space.sample()
        nxt, rew, term, trunc, _ = e.step(act)
        o.append(obs)
        a.append(act)
        n.append(nxt)
        r.append(rew)
        obs = e.reset()[0] if term or trunc else nxt
    e.close()
    scope: dict[str, Any] = {}
    exec(compile(source, "<reference>", "exec"), scope)  # our own constant, not LLM output
    t = [torch.as_tensor(np.asarray(x, np.float32)) for x in (o, a, n)]
    prog = scope["compute_reward"](*t)[0].numpy().astype(np.float64)
    true = np.asarray(r, np.float64)
    return {
        "pearson": float(np.corrcoef(prog, true)[0, 1]),
        "mean_abs_diff": float(np.mean(np.abs(prog - true))),
        "mean_abs_true": float(np.mean(np.abs(true))),
    }


def reference_one(env: str, steps: int, seed: int, out: Path) -> None:
    """Train the reference program once (the subprocess of ``--arm reference``)."""
    from hydra import compose, initialize_config_module

    from pbrl.icpl.loop import ICPLLoop
    from pbrl.icpl.train import train_candidate

    source = REFERENCE_PROGRAMS[env]
    with initialize_config_module("pbrl.configs.icpl", version_base="1.3"):
        cfg = compose(
            config_name="icpl",
            overrides=[f"env={env}", f"seed={seed}", f"train.total_steps={steps}"],
        )
    loop = ICPLLoop(cfg, out, client=_NoLLM())  # type: ignore[arg-type]
    try:
        spec = loop._spec(source, seed)
    finally:
        loop.close()
    res = train_candidate(spec)
    if res["status"] != "trained":
        raise SystemExit(f"the reference program failed: {res.get('reason')}: {res.get('error')}")
    clip = res.pop("clip", None)
    if clip is not None:  # c0.npz / c0.json: benchmarks/icpl_posture.py reads the gait
        np.savez(out / "c0.npz", **clip)
        keep = ("status", "task_score_final", "final_returns", "seconds")
        (out / "c0.json").write_text(json.dumps({k: res[k] for k in keep}, indent=1))
    record = {
        "source": source,
        "seed": seed,
        "total_steps": steps,
        "task_score_final": res["task_score_final"],
        "final_returns": res["final_returns"],
        "seconds": res["seconds"],
        "agreement": reference_agreement(env, source),
    }
    (out / "reference.json").write_text(json.dumps(record, indent=1))
    print(f"reference {env} seed {seed}: task score {res['task_score_final']:.1f}", flush=True)


def run_reference(args: argparse.Namespace, _budget: int, seed: int) -> float:
    name = f"reference-s{seed}"
    run_dir = Path(args.runs_dir) / name
    ov = [f"env={args.env}", f"seed={seed}", f"train.total_steps={args.steps}"]
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--reference-one",
        str(seed),
        "--env",
        args.env,
        "--steps",
        str(args.steps),
        "--runs-dir",
        str(run_dir.resolve()),
    ]
    return _launch(cmd, run_dir, ov, run_dir / "reference.json", name)


def run_prefppo(args: argparse.Namespace, budget: int, seed: int) -> float:
    name = f"prefppo-q{budget}-s{seed}"
    run_dir = Path(args.runs_dir) / name
    ov = prefppo_overrides(args, budget, seed)
    cmd = [sys.executable, "-m", "pbrl", *ov, f"hydra.run.dir={run_dir.resolve()}"]
    return _launch(cmd, run_dir, ov, run_dir / "final_metrics.json", name)


# --- summary ----------------------------------------------------------------------------------
def _ms(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return "–"
    return f"{np.mean(xs):.1f} ± {np.std(xs):.1f}" if len(xs) > 1 else f"{xs[0]:.1f}"


def read_icpl(run_dir: Path) -> dict[str, Any]:
    """Per round best-so-far, samples, compiled and trained counts of a finished loop."""
    summary = json.loads((run_dir / "summary.json").read_text())
    compiled = samples = trained = 0
    reasons: dict[str, int] = {}
    round_means: list[float | None] = []
    for r in range(len(summary["rounds"])):
        cands = json.loads((run_dir / "rounds" / f"r{r}" / "round.json").read_text())["candidates"]
        scores = [c["task_score_final"] for c in cands if c["status"] == "trained"]
        round_means.append(float(np.mean(scores)) if scores else None)
    for f in sorted((run_dir / "rounds").glob("r*/round.json")):
        for c in json.loads(f.read_text())["candidates"]:
            samples += 1
            compiled += c["status"] != "rejected"
            trained += c["status"] == "trained"
            if c["status"] != "trained":
                reasons[c.get("reason", "?")] = reasons.get(c.get("reason", "?"), 0) + 1
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(run_dir / "config.yaml")
    rec = run_dir / "bench_run.json"
    return {
        "best_so_far": [r["best_so_far"] for r in summary["rounds"]],
        "ranked_best": [r["ranked_best_score"] for r in summary["rounds"]],
        "round_mean": round_means,
        "samples": samples,
        "compiled": compiled,
        "trained": trained,
        "reasons": reasons,
        "llm": summary.get("llm", {}),
        "model": str(cfg.llm.model),
        "llm_name": str(cfg.llm.name),
        "K": int(cfg.K),
        "rounds": int(cfg.rounds),
        "steps": int(cfg.train.total_steps),
        "eval_episodes": int(cfg.train.eval_episodes),
        "cmd": json.loads(rec.read_text())["cmd"] if rec.exists() else None,
        "final": (summary.get("final_eval") or {}).get("task_score_mean"),
        "final_n": len((summary.get("final_eval") or {}).get("task_scores", [])),
    }


def _record(args: argparse.Namespace, name: str, read: Any) -> dict[str, Any] | None:  # noqa: ANN401
    """One run's numbers for the summary: read from its run dir when it finished there (and
    kept as ``<--records>/<name>.json``), else from that record, so a section can be rebuilt
    after the run dirs are gone (the machines here are replaced between sessions)."""
    rec_file = Path(args.records) / f"{name}.json" if args.records else None
    got = read(Path(args.runs_dir) / name)
    if got is not None:
        if rec_file is not None:
            rec_file.parent.mkdir(parents=True, exist_ok=True)
            rec_file.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        return got
    if rec_file is not None and rec_file.exists():
        print(f"{name}: from the record {rec_file} (no finished run dir)", file=sys.stderr)
        return json.loads(rec_file.read_text())
    return None


def _read_icpl_dir(d: Path) -> dict[str, Any] | None:
    if (d / "summary.json").exists():
        return read_icpl(d)
    if d.exists():
        print(f"skipping {d}: no summary.json (not finished)", file=sys.stderr)
    return None


def _read_metrics_dir(name: str) -> Any:  # noqa: ANN401
    def read(d: Path) -> dict[str, Any] | None:
        f = d / name
        if not f.exists():
            return None
        rec = json.loads((d / "bench_run.json").read_text())
        return {**json.loads(f.read_text()), "cmd": rec["cmd"], "overrides": rec.get("overrides")}

    return read


def summarise(args: argparse.Namespace) -> str:
    """The RESULTS.md section body from the finished run dirs (or their ``--records``)."""
    runs = Path(args.runs_dir)
    icpl: dict[str, dict[int, dict[str, Any]]] = {}
    for teacher in args.teachers:
        for seed in args.seeds:
            got = _record(args, f"{teacher}-s{seed}", _read_icpl_dir)
            if got is not None:
                icpl.setdefault(teacher, {})[seed] = got
    pref: dict[int, dict[int, dict[str, Any]]] = {}
    for budget in args.budgets:
        for seed in args.seeds:
            got = _record(
                args, f"prefppo-q{budget}-s{seed}", _read_metrics_dir("final_metrics.json")
            )
            if got is not None:
                pref.setdefault(budget, {})[seed] = got
    reference: dict[int, dict[str, Any]] = {}
    true_ppo: dict[int, dict[str, Any]] = {}
    for seed in args.seeds:
        got = _record(args, f"reference-s{seed}", _read_metrics_dir("reference.json"))
        if got is not None:
            reference[seed] = got
        got = _record(args, f"ppo-true-s{seed}", _read_metrics_dir("final_metrics.json"))
        if got is not None:
            true_ppo[seed] = got
    if not icpl and not pref:
        raise SystemExit(f"no finished runs under {runs}; run the arms first")
    cmds: list[str] = []
    lines = [
        f"Date: {dt.date.today().isoformat()}. Machine: 2 CPU cores, no GPU. Runs: `{runs}`. "
        f"Model that answered: {args.model_note or '(not stated: pass --model-note)'}.",
        "",
    ]
    any_run = next((s for t in icpl.values() for s in t.values()), None)
    if any_run is not None:
        lines += [
            f'ICPL: env {args.env}, task "{TASK}", K {any_run["K"]} x {any_run["rounds"]} '
            f"rounds, {any_run['steps']} env steps of PPO per candidate (scaled down from the "
            "paper's IsaacGym budgets), task score = mean true return of the final policy over "
            f"{any_run['eval_episodes']} deterministic episodes; llm={any_run['llm_name']}, "
            f"llm.model `{any_run['model']}` (answers cached per seed "
            "and shared by the arms of a seed, so proxy and random start from the same round-0 "
            "programs).",
            "",
            "Best-so-far true task score per round (mean ± std over seeds):",
            "",
            "| arm | seeds | "
            + " | ".join(f"round {r}" for r in range(any_run["rounds"]))
            + " | compiled | trained |",
            "|---|---|" + "---|" * any_run["rounds"] + "---|---|",
        ]
        for teacher, per_seed in icpl.items():
            cols = [
                _ms([s["best_so_far"][r] for s in per_seed.values() if r < len(s["best_so_far"])])
                for r in range(any_run["rounds"])
            ]
            samples = sum(s["samples"] for s in per_seed.values())
            comp = sum(s["compiled"] for s in per_seed.values())
            tr = sum(s["trained"] for s in per_seed.values())
            lines.append(
                f"| {teacher} | {len(per_seed)} | "
                + " | ".join(cols)
                + f" | {comp}/{samples} ({comp / max(1, samples):.0%}) | {tr} |"
            )
        lines += [
            "",
            "Mean task score of each round's trained candidates (one training each; mean ± std "
            "over seeds): how good the programs the LLM writes are, where best-so-far is a "
            "maximum over noisy trainings:",
            "",
            "| arm | seeds | " + " | ".join(f"round {r}" for r in range(any_run["rounds"])) + " |",
            "|---|---|" + "---|" * any_run["rounds"],
        ]
        for teacher, per_seed in icpl.items():
            cols = [
                _ms(
                    [
                        s["round_mean"][r]
                        for s in per_seed.values()
                        if r < len(s["round_mean"]) and s["round_mean"][r] is not None
                    ]
                )
                for r in range(any_run["rounds"])
            ]
            lines.append(f"| {teacher} | {len(per_seed)} | " + " | ".join(cols) + " |")
        finals = {
            t: [s["final"] for s in ps.values() if s["final"] is not None] for t, ps in icpl.items()
        }
        if any(finals.values()):
            n = max(s["final_n"] for ps in icpl.values() for s in ps.values())
            lines += [
                "",
                f"The best program of each run (by task score), retrained with {n} seeds "
                "(`final_eval_seeds`, ICPL's num_eval): an unbiased score of the program the "
                "run picked, where best-so-far is the largest of many single noisy trainings:",
                "",
                "| arm | runs | retrained task score (mean ± std over runs) | per run |",
                "|---|---|---|---|",
            ]
            for teacher, vals in finals.items():
                if vals:
                    lines.append(
                        f"| {teacher} | {len(vals)} | {_ms(vals)} | "
                        + ", ".join(f"{v:.1f}" for v in vals)
                        + " |"
                    )
        lines += ["", "Per seed (best-so-far per round; non-trained programs by reason):", ""]
        lines += [
            "| arm | seed | best so far per round | not trained | LLM requests / cache hits |",
            "|---|---|---|---|---|",
        ]
        for teacher, per_seed in icpl.items():
            for seed, s in sorted(per_seed.items()):
                curve = " → ".join("–" if v is None else f"{v:.1f}" for v in s["best_so_far"])
                why = ", ".join(f"{k} {v}" for k, v in sorted(s["reasons"].items())) or "none"
                lines.append(
                    f"| {teacher} | {seed} | {curve} | {why} | "
                    f"{s['llm'].get('requests', 0)} / {s['llm'].get('cache_hits', 0)} |"
                )
                if s["cmd"] and s["cmd"] not in cmds:
                    cmds.append(s["cmd"])
        lines.append("")
    if pref:
        first = next(iter(next(iter(pref.values())).values()))
        steps = next(o.split("=")[1] for o in first["overrides"] if o.startswith("num_train"))
        lines += [
            f"PrefPPO (`pbrl-train agent=prefppo teacher=oracle`) at ICPL's PrefPPO query "
            f"budgets, {steps} env steps (one ICPL candidate's budget) with ICPL's candidate PPO "
            "settings (8 envs x 256 steps, batch 256, 10 epochs, 2 x 64, no gSDE; PrefPPO keeps "
            "B-Pref's clip range decayed linearly to 0, observation normalisation and its "
            "value-head reset after the first reward training); labels spent "
            "one round per rollout in the first half (after 4 rollouts of state-entropy "
            "pre-training), then the reward model is frozen; final "
            "true return over 3 deterministic episodes:",
            "",
            "| arm | seeds | labels used | final true return | per seed |",
            "|---|---|---|---|---|",
        ]
        for budget, per_seed in sorted(pref.items()):
            rets = [m["eval/true_return"] for m in per_seed.values()]
            labels = sorted({int(m.get("pref/labels", 0)) for m in per_seed.values()})
            lines.append(
                f"| PrefPPO {budget} queries | {len(per_seed)} | {', '.join(map(str, labels))} | "
                f"{_ms(rets)} | " + ", ".join(f"{r:.1f}" for r in rets) + " |"
            )
            for m in per_seed.values():
                if m["cmd"] not in cmds:
                    cmds.append(m["cmd"])
        if true_ppo:
            rets = [m["eval/true_return"] for m in true_ppo.values()]
            lines.append(
                f"| PPO on the true reward (reference) | {len(rets)} | none | {_ms(rets)} | "
                + ", ".join(f"{r:.1f}" for r in rets)
                + " |"
            )
            for m in true_ppo.values():
                if m["cmd"] not in cmds:
                    cmds.append(m["cmd"])
        if reference:
            rets = [m["task_score_final"] for m in reference.values()]
            agree = next(iter(reference.values()))["agreement"]
            lines.append(
                f"| the env's reward as a program, ICPL's trainer (reference; Pearson "
                f"{agree['pearson']:.3f} with the env's reward) | {len(rets)} | none | "
                f"{_ms(rets)} | " + ", ".join(f"{r:.1f}" for r in rets) + " |"
            )
            for m in reference.values():
                if m["cmd"] not in cmds:
                    cmds.append(m["cmd"])
        if "proxy" in icpl:
            final = [s["best_so_far"][-1] for s in icpl["proxy"].values()]
            lines.append(
                f"| ICPL proxy (best program, final round) | {len(final)} | "
                f"{any_run['rounds']} rankings of {any_run['K']} | {_ms(final)} | "
                + ", ".join("–" if v is None else f"{v:.1f}" for v in final)
                + " |"
            )
        lines.append("")
    lines += [f"Paper: {PAPER}", "", "Commands:", ""]
    lines += [f"    {c}" for c in cmds]
    lines += [f"    {bench_cmd()}", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--arm", choices=["icpl", "prefppo", "ppo", "reference"], default="icpl")
    p.add_argument("--reference-one", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--summary", action="store_true", help="write the RESULTS section, run nothing")
    p.add_argument(
        "--teachers", nargs="+", default=["proxy", "random"], choices=["proxy", "random"]
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--env", default="halfcheetah")
    p.add_argument("--K", type=int, default=6)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--max-samples", type=int, default=12)
    p.add_argument("--steps", type=int, default=STEPS, help="PPO env steps per ICPL candidate")
    p.add_argument("--parallel", type=int, default=1, help="train.parallel of each ICPL run")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (subprocesses)")
    p.add_argument("--llm", choices=["manual", "local", "openai"], default="manual")
    p.add_argument("--model", default=None, help="llm.model (part of the answer cache key)")
    p.add_argument("--base-url", default=None, help="llm.base_url (--llm openai)")
    p.add_argument("--api-key-env", default=None, help="llm.api_key_env (--llm openai)")
    p.add_argument("--cache-dir", default=None, help="answer cache root (default <runs>/llm_cache)")
    p.add_argument("--relay-dir", default=None, help="--llm manual: relay folder (<runs>/relay)")
    p.add_argument("--runs-dir", default=str(REPO / "benchmarks" / "runs" / "icpl"))
    p.add_argument("--override", nargs="*", default=[], help="extra pbrl-icpl overrides")
    p.add_argument("--budgets", type=int, nargs="+", default=[49, 150, 1500])
    p.add_argument("--prefppo-steps", type=int, default=None, help="default: --steps")
    p.add_argument("--prefppo-override", nargs="*", default=[], help="extra pbrl-train overrides")
    p.add_argument("--model-note", default="", help="who answered, for the RESULTS section")
    p.add_argument(
        "--records",
        default=None,
        help="--summary: a folder of per-run records (<run name>.json); a finished run dir's "
        "numbers are written there, and a run whose dir is gone is read from there",
    )
    p.add_argument("--results", type=Path, default=RESULTS, help="the RESULTS.md to write")
    p.add_argument(
        "--title",
        default=TITLE,
        help="--summary: the section's title (a section of that title is replaced), so that "
        "runs at another --steps get a section of their own",
    )
    args = p.parse_args()
    if args.jobs < 1 or args.parallel < 1:
        p.error("--jobs and --parallel must be >= 1")
    if args.llm == "openai" and not args.model:
        p.error("--llm openai needs --model (and --base-url unless it is OpenAI's)")
    if args.arm == "reference" or args.reference_one is not None:
        if args.env not in REFERENCE_PROGRAMS:
            p.error(
                f"--arm reference has a reference program for {sorted(REFERENCE_PROGRAMS)}, "
                f"not {args.env!r}: add one to REFERENCE_PROGRAMS"
            )
    if args.reference_one is not None:
        reference_one(args.env, args.steps, args.reference_one, Path(args.runs_dir))
        return
    if args.summary:
        body = summarise(args)
        write_section(args.title, body, args.results)
        print(body)
        print(f"wrote the section '{args.title}' to {args.results}")
        return
    if args.arm == "icpl":
        jobs = [(run_icpl, t, s) for s in args.seeds for t in args.teachers]
        if args.llm == "manual":
            relay = Path(args.relay_dir) if args.relay_dir else Path(args.runs_dir) / "relay"
            print(
                f"answer the prompts in {relay.resolve()}/pending/ "
                f"(python -m pbrl.icpl.relay list {relay.resolve()})",
                flush=True,
            )
    elif args.arm == "reference":
        jobs = [(run_reference, 0, s) for s in args.seeds]
    elif args.arm == "ppo":
        jobs = [(run_ppo_true, 0, s) for s in args.seeds]
    else:
        jobs = [(run_prefppo, b, s) for s in args.seeds for b in args.budgets]
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(fn, args, a, s) for fn, a, s in jobs]
        errors = []
        for f in futures:
            try:
                f.result()
            except RuntimeError as err:
                errors.append(str(err))
    if errors:
        print("\n\n".join(errors), file=sys.stderr)
        sys.exit(1)
    print(f"all runs finished in {args.runs_dir}; write the section with --summary", flush=True)


if __name__ == "__main__":
    main()
