"""Env steps per second of every suite: pbrl's wrapper versus the raw env, and render fps.

For each registered env (or ``--envs``), in this one process:

- **single**: ``pbrl.envs.make_env(name)`` (the :class:`~pbrl.envs.base.PbrlEnv`: reward
  factors, pre-step sim state, episode stats) against ``env.env``, the env it wraps (the
  suite's own env as a user would build it without pbrl: ``gym.make(id)`` for gymnasium
  MuJoCo, the gymnasium adapter over dm_control for dm_control), both stepped with the same
  pre-drawn actions; blocks of ``--block`` steps alternate A B A B ... ``--repeats`` times
  so machine drift cancels, and the median of the per-pair ratios is reported;
- **vector**: ``pbrl.envs.make(name, num_envs=N)`` against a gymnasium ``SyncVectorEnv`` of
  ``N`` raw envs, same alternation;
- **pixels**: ``obs="pixels"`` (84x84, 3 stacked frames) steps per second;
- **render**: ``render_state`` frames per second at 84x84 and 256x256 from stored states.

Target (issue 3): wrapper overhead <= 5 % in state mode.

    python benchmarks/env_speed.py --write-results
    python benchmarks/env_speed.py --envs halfcheetah walker_walk --repeats 5
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np

from pbrl import envs

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## Env steps per second and render speed (issue 3)"


def _actions(space: gym.Space, n: int, seed: int) -> list:
    space.seed(seed)
    return [space.sample() for _ in range(n)]


def _stepper(
    env: gym.Env, acts: list, clock: Callable[[], float] = time.thread_time
) -> Callable[[], float]:
    """A function that steps ``env`` through ``acts`` (resetting at episode ends).

    Returns the seconds on ``clock``: by default the CPU time of this thread
    (``time.thread_time``) — state-mode stepping is single-threaded CPU work, and on a shared
    machine CPU time is far less disturbed by other jobs than wall time, which also counts the
    time the scheduler gave to them. Pixel stepping renders in the GL driver's own threads, so
    it is timed on the wall clock.
    """

    def run() -> float:
        t0 = clock()
        for a in acts:
            _, _, term, trunc, _ = env.step(a)
            if np.any(term) or np.any(trunc):
                if not isinstance(env, gym.vector.VectorEnv):  # vector envs autoreset
                    env.reset()
        return clock() - t0

    return run


def median_ci(values: list[float], level: float = 0.9, resamples: int = 4000) -> tuple:
    """Bootstrap ``level`` confidence interval of the median of ``values`` (percentile method,
    fixed seed): how far the median per-pair ratio could move on a rerun of this machine."""
    rng = np.random.default_rng(0)
    x = np.asarray(values, np.float64)
    meds = np.median(x[rng.integers(0, len(x), (resamples, len(x)))], axis=1)
    lo, hi = np.quantile(meds, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def verdict(lo: float, hi: float, target: float = 0.05) -> str:
    """``met`` when the whole CI of the overhead is at or under ``target``, ``over`` when it
    is all above, else ``noise`` (the machine's noise spans the target)."""
    if hi <= target:
        return "met"
    if lo > target:
        return "over"
    return "noise"


def _alternate(a: Callable[[], float], b: Callable[[], float], repeats: int) -> tuple:
    """Median seconds of ``a`` and ``b``, the median per-pair ratio ``a / b``, the median
    per-pair difference ``a - b`` (seconds) and the 90 % CI of the median ratio."""
    a(), b()  # warm-up
    ta, tb, ratios, diffs = [], [], [], []
    for i in range(repeats):
        if i % 2 == 0:
            x, y = a(), b()
        else:
            y, x = b(), a()
        ta.append(x)
        tb.append(y)
        ratios.append(x / y)
        diffs.append(x - y)
    return (
        statistics.median(ta),
        statistics.median(tb),
        statistics.median(ratios),
        statistics.median(diffs),
        median_ci(ratios),
    )


def bench_env(name: str, args: argparse.Namespace) -> dict[str, float]:
    """All measurements for one env."""
    out: dict[str, float] = {}
    wrapped = envs.make_env(name, seed=0)
    raw = _raw(name, 0)
    acts = _actions(wrapped.action_space, args.block, seed=1)
    tw, tr, ratio, diff, ci = _alternate(_stepper(wrapped, acts), _stepper(raw, acts), args.repeats)
    out["single_pbrl"] = args.block / tw
    out["single_raw"] = args.block / tr
    out["single_overhead"] = ratio - 1.0
    out["single_lo"], out["single_hi"] = ci[0] - 1.0, ci[1] - 1.0
    out["single_us"] = 1e6 * diff / args.block

    n = args.num_envs
    vw = envs.make(name, num_envs=n, seed=0)
    vr = gym.vector.SyncVectorEnv(
        [lambda i=i: _raw(name, i) for i in range(n)],
        autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP,
    )
    vr.reset(seed=list(range(n)))
    vacts = _actions(vw.action_space, max(1, args.block // n), seed=2)
    tw, tr, ratio, diff, ci = _alternate(_stepper(vw, vacts), _stepper(vr, vacts), args.repeats)
    out["vector_pbrl"] = len(vacts) * n / tw
    out["vector_raw"] = len(vacts) * n / tr
    out["vector_overhead"] = ratio - 1.0
    out["vector_lo"], out["vector_hi"] = ci[0] - 1.0, ci[1] - 1.0
    out["vector_us"] = 1e6 * diff / (len(vacts) * n)
    vw.close()
    vr.close()

    pix = envs.make_env(name, seed=0, obs="pixels", pixel_size=84, frame_stack=3)
    pacts = acts[: max(1, args.block // 4)]
    t = min(_stepper(pix, pacts, time.perf_counter)() for _ in range(2))
    out["pixels_sps"] = len(pacts) / t
    pix.close()

    states = []
    wrapped.reset(seed=0)
    for a in acts[:50]:
        _, _, term, trunc, info = wrapped.step(a)
        states.append(info["sim_state"])
        if term or trunc:
            wrapped.reset()
    for size in (84, 256):
        wrapped.render_state(states[0], size, size)  # warm-up (renderer context)
        t0 = time.perf_counter()
        for s in states:
            wrapped.render_state(s, size, size)
        out[f"render_{size}_fps"] = len(states) / (time.perf_counter() - t0)
    wrapped.close()
    return out


def _raw(name: str, seed: int) -> gym.Env:
    env = envs.make_env(name, seed=seed).env  # what the PbrlEnv wraps
    env.reset(seed=seed)
    return env


def write_results(rows: list[tuple[str, str, dict[str, float]]], args: argparse.Namespace) -> None:
    """Replace this benchmark's section of RESULTS.md."""
    cmd = "python benchmarks/env_speed.py " + " ".join(sys.argv[1:])
    lines = [
        SECTION,
        "",
        f"Date: {dt.date.today()}. Machine: {platform.platform()}, CPU only, shared with other "
        f"jobs. Command: `{cmd}`.",
        "",
        "pbrl = `pbrl.envs.make_env(name)` (factors, sim state, episode stats in `info`); raw = "
        "the env it wraps (`.env`: the suite's own env without the pbrl layer), stepped with "
        f"the same actions in alternating blocks of {args.block} steps, {args.repeats} pairs; "
        "steps/s and overhead (median per-pair time ratio - 1) in this thread's CPU time "
        f"(`time.thread_time`). Vector: pbrl = `pbrl.envs.make(name, {args.num_envs})` "
        "(`PbrlSyncVectorEnv`: the contract keys as columns), raw = gymnasium's "
        f"`SyncVectorEnv` of {args.num_envs} raw envs. Pixels: `obs='pixels'`, 84x84, 3 "
        "stacked frames (wall time). Render: "
        "`render_state` frames/s from stored states at the default `render_quality='fast'` "
        "(no shadows/reflections/MSAA; `'full'` is 10-15x slower on CPU). Target: overhead "
        "<= 5 % (state mode). `us/step`: the pbrl layer's cost per env step (median per-pair "
        "time difference / steps): the part that is pbrl's, whatever the simulator costs. "
        "`90 % CI`: bootstrap interval of the median ratio over the pairs (how far a rerun on "
        "this machine could move it); `vs 5 %`: `met` when the whole interval is at or under "
        "5 %, `over` when it is all above, `noise` when the machine's noise spans 5 %.",
        "",
        "| env | suite | single pbrl steps/s | single raw steps/s | overhead | 90 % CI | vs 5 % | "
        "us/step | vector pbrl steps/s | vector raw steps/s | overhead | 90 % CI | vs 5 % | "
        "us/step | pixels steps/s | render 84 fps | render 256 fps |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    tally: dict[str, list[str]] = {"single": [], "vector": []}
    for name, suite, r in rows:
        cells = [name, suite]
        for mode in ("single", "vector"):
            lo, hi = r[f"{mode}_lo"], r[f"{mode}_hi"]
            v = verdict(lo, hi)
            tally[mode].append(v)
            cells += [
                f"{r[f'{mode}_pbrl']:.0f}",
                f"{r[f'{mode}_raw']:.0f}",
                f"{100 * r[f'{mode}_overhead']:+.1f} %",
                f"{100 * lo:+.1f} .. {100 * hi:+.1f} %",
                v,
                f"{r[f'{mode}_us']:.2f}",
            ]
        cells += [f"{r['pixels_sps']:.0f}", f"{r['render_84_fps']:.0f}"]
        cells.append(f"{r['render_256_fps']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for mode in ("single", "vector"):
        t = tally[mode]
        lines.append(
            f"Target (overhead <= 5 %, {mode}, state mode): met on {t.count('met')} of {len(t)} "
            f"envs, over on {t.count('over')}, within the noise on {t.count('noise')}."
        )
    lines.append("")
    block = "\n".join(lines)
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    start = text.find(SECTION + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + block
    else:
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + block + ("" if nxt < 0 else text[nxt:])
    RESULTS.write_text(text)


def main() -> None:
    """Run the benchmark over the chosen envs and print a table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--envs", nargs="*", default=None, help="default: every buildable env")
    p.add_argument(
        "--block", type=int, default=200, help="steps per timed block (vector: / num_envs)"
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=41,
        help="A/B pairs per measurement (many short pairs: machine drift cancels)",
    )
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--write-results", action="store_true")
    args = p.parse_args()
    rows = []
    for name in args.envs or envs.names():
        try:
            r = bench_env(name, args)
        except envs.MissingExtraError as err:
            print(f"{name}: skipped ({err})", flush=True)
            continue
        suite = envs.spec(name).suite
        rows.append((name, suite, r))
        print(
            f"{name:24s} single {r['single_pbrl']:8.0f} vs {r['single_raw']:8.0f} steps/s "
            f"({100 * r['single_overhead']:+.1f} % [{100 * r['single_lo']:+.1f}, "
            f"{100 * r['single_hi']:+.1f}], {r['single_us']:.2f} us) | vector "
            f"{r['vector_pbrl']:8.0f} vs "
            f"{r['vector_raw']:8.0f} ({100 * r['vector_overhead']:+.1f} % "
            f"[{100 * r['vector_lo']:+.1f}, {100 * r['vector_hi']:+.1f}], "
            f"{r['vector_us']:.2f} us) | pixels "
            f"{r['pixels_sps']:6.0f} | render {r['render_84_fps']:6.0f} / "
            f"{r['render_256_fps']:5.0f} fps",
            flush=True,
        )
    if args.write_results:
        write_results(rows, args)


if __name__ == "__main__":
    main()
