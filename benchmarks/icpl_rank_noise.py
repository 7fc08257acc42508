"""How well does one PPO training rank ICPL's reward programs? (issue 8, ``score_seeds``)

ICPL's proxy teacher ranks a round's K programs by the task score of one PPO training each.
This script takes the programs of finished ICPL rounds (``--group RUN_DIR:ROUND``), trains each
program ``--trainings`` N times in all through the loop's own code path (``score_seeds = N``:
the first training is the loop's, read back from the round's ``c<p>.json``; training ``i`` adds
``i * 1_000_000`` to its seed) and measures what a ranking by fewer trainings gets right:

- noise: the pooled within-program std of the task score against the std of the programs'
  means (between), per group;
- held-out pick: for every subset A of m trainings (m = 1 is ICPL, the paper; m > 1 is
  ``score_seeds = m``), pick the program with the best mean over A and score the pick by its
  mean over the other N - m trainings (held out, so unbiased); averaged over subsets, as a
  fraction of the way from a random pick (the group's mean) to the best program by the
  held-out means;
- top-1: how often A's pick is the program with the best held-out mean;
- Kendall's tau between the ranking by A and by the held-out trainings.

``--steps S`` trains every program at ``S`` PPO steps instead of the round's own budget
(does a longer training rank better?). Then nothing is read back from the round: training 1
is retrained with the loop's seed at ``S`` steps, so the seeds match the round's own run.

``--compare DIR`` adds a table against another run of this script on the same groups (its
``--out``, e.g. the rounds' own budget), cut to the trainings both have.

``--parallel P`` trains P programs at once (the loop's process pool; give each its core).
Groups are independent: run several invocations at once (one per core) on the same ``--out``
and finish with one that lists all groups; trainings already in ``--out`` are read back, so
the last call only collects (and with ``--write-results`` writes the RESULTS.md section).

    python benchmarks/icpl_rank_noise.py --trainings 5 --out /work/runs/ranknoise \\
        --group /work/runs/icpl200k/proxy-s0:0 --group /work/runs/icpl200k/proxy-s1:0 \\
        --write-results
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from results_md import write_section

TITLE = "ICPL: how well one PPO training ranks reward programs (issue 8)"
TITLE_STEPS = "ICPL: how well one PPO training ranks reward programs, {steps:,} PPO steps (issue 8)"


class NoLLM:
    """The chat client of a loop that only trains: it must never be asked."""

    stats: dict[str, int] = {}

    def chat(self, *args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
        raise RuntimeError("icpl_rank_noise trains programs only; no LLM call is expected")


def parse_group(text: str) -> tuple[Path, int]:
    run, sep, r = text.rpartition(":")
    if not sep or not r.isdigit():
        raise SystemExit(f"--group {text!r}: expected RUN_DIR:ROUND, e.g. runs/proxy-s0:0")
    path = Path(run)
    if not (path / "rounds" / f"r{r}" / "round.json").exists():
        raise SystemExit(f"--group {text!r}: {path}/rounds/r{r}/round.json does not exist")
    return path, int(r)


def group_name(run: Path, r: int) -> str:
    return f"{run.name}-r{r}"


def round_jobs(rnd: dict[str, Any]) -> list[int]:
    """The candidates a round trained, in training order: ``c<p>.*`` is candidate
    ``round_jobs(rnd)[p]`` of the round record ``rnd``."""
    return [j for j, c in enumerate(rnd["candidates"]) if c["status"] in ("trained", "failed")]


def noise(s: np.ndarray) -> tuple[float, float]:
    """Pooled within-program std and the std of the programs' means of ``s`` (programs x
    trainings)."""
    return float(np.sqrt(np.mean(s.var(axis=1, ddof=1)))), float(s.mean(1).std(ddof=1))


def train_group(
    run: Path, r: int, n: int, out: Path, steps: int | None = None, parallel: int = 1
) -> tuple[np.ndarray, int, bool]:
    """Scores (programs x trainings) of round ``r``'s trained programs, N trainings each,
    the env steps of one training (``steps``: instead of the round's own budget), and
    whether that budget differs from the round's (then nothing was read back)."""
    from pbrl.icpl.loop import ICPLLoop

    rnd = json.loads((run / "rounds" / f"r{r}" / "round.json").read_text())
    cands = rnd["candidates"]
    jobs = round_jobs(rnd)
    cfg = OmegaConf.load(run / "config.yaml")
    own_steps = int(cfg.train.total_steps)
    cfg.score_seeds = n
    cfg.train.parallel = parallel
    if steps is not None:
        cfg.train.total_steps = steps
    gdir = out / group_name(run, r)
    rdir = gdir / "rounds" / f"r{r}"
    rdir.mkdir(parents=True, exist_ok=True)
    # trainings already in --out are read back by file name only: refuse another budget's
    marker = gdir / "rank_noise.json"
    budget = {"source": str(run), "round": r, "total_steps": int(cfg.train.total_steps)}
    if marker.exists() and json.loads(marker.read_text()) != budget:
        raise SystemExit(
            f"{gdir} holds trainings of {json.loads(marker.read_text())}, not {budget}; "
            "use another --out"
        )
    marker.write_text(json.dumps(budget))
    retrained = int(cfg.train.total_steps) != own_steps
    if not retrained:
        for p in range(len(jobs)):  # the loop's own training: read back, not retrained
            for ext in ("json", "npz"):
                src = run / "rounds" / f"r{r}" / f"c{p}.{ext}"
                if src.exists() and not (rdir / src.name).exists():
                    shutil.copy2(src, rdir / src.name)
    loop = ICPLLoop(cfg, gdir, client=NoLLM())  # type: ignore[arg-type]
    try:
        merged = loop._train_scored(r, [cands[j] for j in jobs], rdir)
    finally:
        loop.close()
    key = f"task_score_{cfg.proxy_score}"
    rows = []
    for j, m in zip(jobs, merged, strict=True):
        if m["status"] != "trained":
            print(f"{group_name(run, r)} program {j}: {m['status']} ({m.get('reason')}), left out")
            continue
        rows.append(m["run_scores"][key] if n > 1 else [m[key]])
    return np.asarray(rows, np.float64), int(cfg.train.total_steps), retrained


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-a of two score vectors (ties count as neither)."""
    s = 0.0
    pairs = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        s += np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])
        pairs += 1
    return s / pairs if pairs else math.nan


def pick_stats(scores: np.ndarray, m: int) -> dict[str, float]:
    """Over every subset A of m trainings: the pick by A's mean, scored on the rest."""
    k, n = scores.shape
    gains, top1, taus = [], [], []
    for sub in itertools.combinations(range(n), m):
        rest = [i for i in range(n) if i not in sub]
        a = scores[:, list(sub)].mean(axis=1)
        b = scores[:, rest].mean(axis=1)
        pick = int(np.argmax(a))
        span = b.max() - b.mean()
        gains.append((b[pick] - b.mean()) / span if span > 0 else math.nan)
        top1.append(float(b[pick] == b.max()))
        taus.append(kendall_tau(a, b))
    return {
        "gain": float(np.nanmean(gains)),
        "top1": float(np.mean(top1)),
        "tau": float(np.mean(taus)),
        "subsets": len(gains),
    }


def report(
    groups: dict[str, np.ndarray], n: int, cmd: str, steps: int, retrained: bool = False
) -> str:
    first = (
        "Training 1 is retrained with the loop's seed at this budget (the rounds' own trainings "
        "had another)"
        if retrained
        else "Training 1 is the loop's own (read back from the round)"
    )
    lines = [
        f"Date: {dt.date.today().isoformat()}. Machine: 2 CPU cores, no GPU. Command: `{cmd}`.",
        "",
        f"Each program of the listed ICPL rounds trained {n} times with pbrl-icpl's own code "
        f"path (`score_seeds={n}`; HalfCheetah, {steps:,} PPO steps per training, task score = "
        f"mean true return of 3 deterministic episodes of the final policy). {first}; "
        "training i adds i x 1,000,000 to its seed. "
        "Per group: the programs' task scores; noise = pooled within-program std / std of the "
        "programs' means. For a ranking by the mean of m trainings (m = 1: ICPL; m > 1: "
        "`score_seeds=m`), over every subset of m trainings: *gain* = the held-out mean of the "
        "picked program, as a fraction of the way from a random pick (0) to the best program "
        "by the held-out means (1); *top-1* = how often the pick is that best program (chance "
        "1/K); *tau* = Kendall's tau between the ranking and the held-out one.",
        "",
        "| group | programs | task score per program, mean ± std over trainings | within std "
        "| between std | noise |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in groups.items():
        per = ", ".join(
            f"{m:.0f}±{d:.0f}" for m, d in zip(s.mean(1), s.std(1, ddof=1), strict=True)
        )
        within, between = noise(s)
        lines.append(
            f"| {name} | {len(s)} | {per} | {within:.0f} | {between:.0f} | {within / between:.2f} |"
        )
    lines += [
        "",
        "| m (trainings ranked on) | held-out against | gain | top-1 | tau |",
        "|---|---|---|---|---|",
    ]
    for m in range(1, n):
        st = [pick_stats(s, m) for s in groups.values()]
        lines.append(
            f"| {m} | {n - m} | {np.mean([x['gain'] for x in st]):.2f} | "
            f"{np.mean([x['top1'] for x in st]):.2f} | {np.mean([x['tau'] for x in st]):.2f} |"
        )
    lines += [
        "",
        f"Gain, top-1 and tau are means over the {len(groups)} groups (each over all subsets). "
        "With m near N the held-out mean rests on few trainings, so the columns for different "
        "m are not held out against equally good references; read m = 1 against m = 2.",
    ]
    return "\n".join(lines)


def compare(groups: dict[str, np.ndarray], path: Path) -> str:
    """The same groups' scores from another run of this script (``--compare DIR``, e.g. the
    rounds' own budget), both cut to the trainings they share: noise and the m = 1 pick at
    each budget, and whether the two budgets rank the programs alike."""
    other = {k: np.asarray(v, np.float64) for k, v in json.loads(path.read_text()).items()}
    lines = [
        f"Against `{path}` (the same groups' trainings at another budget), each group cut to "
        "the first n trainings of both, so the columns compare like with like; training i has "
        "the same seed at both budgets. *tau(means)*: Kendall's tau between the programs' "
        "mean scores at the two budgets (1: the same order).",
        "",
        "| group | n | noise here / there | gain (m = 1) here / there | top-1 here / there "
        "| tau (m = 1) here / there | tau(means) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, a in groups.items():
        b = other.get(name)
        if b is None or len(b) != len(a):
            why = "absent" if b is None else f"{len(b)} programs, not {len(a)}"
            lines.append(f"| {name} | - | {path.name}: {why} | | | | |")
            continue
        n = min(a.shape[1], b.shape[1])
        a, b = a[:, :n], b[:, :n]
        ratio = [w / bt for w, bt in (noise(a), noise(b))]
        pa, pb = pick_stats(a, 1), pick_stats(b, 1)
        lines.append(
            f"| {name} | {n} | {ratio[0]:.2f} / {ratio[1]:.2f} | {pa['gain']:.2f} / "
            f"{pb['gain']:.2f} | {pa['top1']:.2f} / {pb['top1']:.2f} | {pa['tau']:.2f} / "
            f"{pb['tau']:.2f} | {kendall_tau(a.mean(1), b.mean(1)):.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--group", action="append", required=True, help="RUN_DIR:ROUND (repeat)")
    ap.add_argument("--trainings", type=int, default=5, help="N trainings per program in all")
    ap.add_argument("--out", type=Path, required=True, help="where the extra trainings go")
    ap.add_argument(
        "--steps", type=int, default=None, help="PPO steps per training (default: the round's)"
    )
    ap.add_argument(
        "--parallel", type=int, default=1, help="trainings at once (processes; default 1)"
    )
    ap.add_argument(
        "--compare", type=Path, default=None, help="another run's --out: compare its scores"
    )
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()
    if args.trainings < 2:
        raise SystemExit("--trainings must be >= 2 (the loop's own training plus at least one)")
    if args.parallel < 1:
        raise SystemExit(f"--parallel must be >= 1, got {args.parallel}")
    if args.compare is not None and not (args.compare / "scores.json").exists():
        raise SystemExit(f"--compare {args.compare}: no scores.json there (run it to the end)")
    if args.steps is not None and args.steps <= 0:
        raise SystemExit(f"--steps must be positive, got {args.steps}")
    groups: dict[str, np.ndarray] = {}
    steps = 0
    retrained = False
    for text in args.group:
        run, r = parse_group(text)
        t0 = time.time()
        s, steps, again = train_group(run, r, args.trainings, args.out, args.steps, args.parallel)
        retrained = retrained or again
        groups[group_name(run, r)] = s
        print(f"{group_name(run, r)}: {len(s)} programs, {time.time() - t0:.0f}s", flush=True)
        print(np.array2string(s, precision=1, max_line_width=200), flush=True)
    cmd = "python benchmarks/icpl_rank_noise.py --trainings {}{} --out {}{} {}".format(
        args.trainings,
        "" if args.steps is None else f" --steps {args.steps}",
        args.out,
        "" if args.compare is None else f" --compare {args.compare}",
        " ".join(f"--group {g}" for g in args.group),
    )
    body = report(groups, args.trainings, cmd, steps, retrained)
    if args.compare is not None:
        body += "\n\n" + compare(groups, args.compare / "scores.json")
    saved = args.out / "scores.json"  # groups of earlier calls on this --out are kept
    old = json.loads(saved.read_text()) if saved.exists() else {}
    saved.write_text(json.dumps({**old, **{k: v.tolist() for k, v in groups.items()}}, indent=1))
    print(body)
    if args.write_results:
        write_section(TITLE if not retrained else TITLE_STEPS.format(steps=steps), body)


if __name__ == "__main__":
    sys.exit(main())
