"""Overhead: wall time of PEBBLE (oracle teacher) over plain SAC on the true reward.

Both arms run in this one process, alternated A B A B ... so that machine drift cancels:

- **SAC**: plain stable-baselines3 ``SAC`` on ``gym.make("HalfCheetah-v5")`` (true reward,
  SB3's own ``ReplayBuffer``), timed around ``learn(N)``;
- **PEBBLE**: ``pbrl.loops.online.PreferenceLoop`` built from the composed Hydra config
  (``agent=pebble teacher=oracle env=halfcheetah``), timed around ``loop.run()``.

The SAC settings of both arms are read from the same composed config (``agent.*``: learning
rate, batch, net_arch, tau, gamma, target_update_interval, ent_coef ``auto_0.1``, train_freq,
gradient_steps, ``learning_starts = agent.num_seed_steps``), so they cannot drift apart.
Evaluation, videos and periodic checkpoints are off during training in both arms; pbrl's
``run()`` still ends with one forced evaluation episode and one checkpoint, which plain SAC
does not do: the ratio is reported with and without that tail.

One PEBBLE run and one SAC run are then profiled with cProfile and the time grouped (SAC
updates, env stepping, learned reward per step, buffer add, k-NN reward, feedback rounds split
into their parts, ...), side by side.

    python benchmarks/overhead.py --steps 6000 --repeats 2 --net 256 --batch 256 --write-results

The ratio depends on the network width: SAC's own cost (the denominator) shrinks with the net
while most of PEBBLE's extra work (buffer bookkeeping, feedback rounds) does not. B-Pref's
2 x 1024 / batch 1024 makes the ratio smaller; small nets (e.g. 64 / 64) are a worst case.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf
from stable_baselines3 import SAC
from stable_baselines3.common.buffers import ReplayBuffer

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## Overhead (PEBBLE vs plain SAC)"
TARGET = 1.10
BASELINE_FUSED = False  # set from --baseline-fused
LOAD = ["?"]  # 1-minute load average when the benchmark started


# --------------------------------------------------------------------------------------------
# configuration
def schedule(args: argparse.Namespace) -> dict[str, int]:
    """PEBBLE's feedback schedule scaled to ``--steps`` (flags override each entry)."""
    n = args.steps
    seed_steps = args.seed_steps if args.seed_steps is not None else max(n // 12, 100)
    unsup = args.unsup_steps if args.unsup_steps is not None else n // 6
    interact = args.interact if args.interact is not None else n // 4
    first = seed_steps + unsup
    rounds = 1 + max(0, (n - 1 - first) // interact) if first < n else 0
    batch = args.reward_batch
    budget = args.max_feedback if args.max_feedback is not None else rounds * batch
    return {
        "num_seed_steps": seed_steps,
        "num_unsup_steps": unsup,
        "num_interact": interact,
        "reward_batch": batch,
        "max_feedback": budget,
        "rounds": min(rounds, -(-budget // batch) if batch else 0),
    }


def compose_cfg(args: argparse.Namespace) -> DictConfig:
    """The PEBBLE config (``pbrl/configs/train.yaml`` + overrides), as ``pbrl-train`` builds it."""
    s = schedule(args)
    overrides = [
        "agent=pebble",
        "teacher=oracle",
        f"query={args.query}",
        "env=halfcheetah",
        f"seed={args.seed}",
        "device=cpu",
        f"num_train_steps={args.steps}",
        f"agent.num_seed_steps={s['num_seed_steps']}",
        f"agent.num_unsup_steps={s['num_unsup_steps']}",
        f"agent.num_interact={s['num_interact']}",
        f"reward_batch={s['reward_batch']}",
        f"max_feedback={s['max_feedback']}",
        f"agent.net_arch=[{args.net},{args.net}]",
        f"agent.batch_size={args.batch}",
        # evaluation / video / periodic checkpoints off during training (run() still ends
        # with one forced evaluation and one checkpoint: timed separately as the "tail")
        f"eval.every={10 * args.steps}",
        "eval.episodes=1",
        "log.video_every=0",
        "log.progress=none",
        "checkpoint.every=0",
    ]
    with initialize_config_module("pbrl.configs", version_base="1.3"):
        return compose("train", overrides=overrides)


def make_sac(cfg: DictConfig) -> SAC:
    """Plain SB3 SAC on the raw gymnasium env with exactly PEBBLE's SAC settings."""
    a = cfg.agent
    sb3_kwargs = dict(OmegaConf.to_container(a.sb3, resolve=True) or {})
    return SAC(
        "MlpPolicy",
        gym.make("HalfCheetah-v5"),
        learning_rate=a.learning_rate,
        buffer_size=int(cfg.num_train_steps),
        learning_starts=int(a.num_seed_steps),
        batch_size=int(a.batch_size),
        # SB3's default Adam unless --baseline-fused: then the same fused Adam kernel pbrl
        # uses (agent.fused_adam), which isolates the cost of PEBBLE's own machinery
        policy_kwargs={
            "net_arch": list(a.net_arch),
            **({"optimizer_kwargs": {"fused": True}} if BASELINE_FUSED else {}),
        },
        seed=int(cfg.seed),
        device="cpu",
        verbose=0,
        **sb3_kwargs,
    )


# --------------------------------------------------------------------------------------------
# timed arms
def run_sac(cfg: DictConfig, profiler: cProfile.Profile | None = None) -> dict[str, float]:
    model = make_sac(cfg)
    t0, c0 = time.perf_counter(), time.process_time()
    with _profiling(profiler):
        model.learn(total_timesteps=int(cfg.num_train_steps), progress_bar=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert model.num_timesteps == int(cfg.num_train_steps), model.num_timesteps
    model.env.close()
    return {"wall": wall, "cpu": cpu, "train": wall, "tail": 0.0}


def run_pebble(cfg: DictConfig, profiler: cProfile.Profile | None = None) -> dict[str, float]:
    from pbrl.loops.online import PreferenceLoop

    with tempfile.TemporaryDirectory(prefix="pbrl-overhead-") as tmp:
        loop = PreferenceLoop(cfg, Path(tmp) / "run")
        tm = Timers()
        for name in ("_evaluate", "save_checkpoint"):
            tm.wrap(loop, name, "tail")
        t0, c0 = time.perf_counter(), time.process_time()
        with _profiling(profiler):
            loop.run()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert loop.step == int(cfg.num_train_steps), loop.step
        labels = loop.queries_used
        loop.close()
    return {
        "wall": wall,
        "cpu": cpu,
        "train": wall - tm.acc["tail"],
        "tail": tm.acc["tail"],
        "queries": labels,
    }


class Timers:
    """Wall time accumulated in chosen methods of chosen objects (a light profile).

    Each wrapped call costs ~1 µs, against ~10 ms of SAC update per env step, so unlike
    cProfile this does not distort the run it measures; the benchmark's ratio comes from the
    same run as its breakdown.
    """

    def __init__(self) -> None:
        self.acc: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, obj: Any, name: str, key: str) -> None:
        fn = getattr(obj, name)
        self.acc.setdefault(key, 0.0)
        self.calls.setdefault(key, 0)

        def timed(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.acc[key] += time.perf_counter() - t
                self.calls[key] += 1

        setattr(obj, name, timed)


def run_interleaved(cfg: DictConfig, chunk: int) -> dict[str, Any]:
    """Both arms in one process, alternating every ``chunk`` env steps.

    Plain SAC goes on with ``learn(chunk, reset_num_timesteps=False)``, PEBBLE with
    ``PreferenceLoop.run(until=...)`` (the same steps as one ``run()``; tested in
    tests/test_loop.py). Which arm goes first alternates from chunk to chunk. A slow drift of
    the machine's speed (other tenants, frequency) then hits both arms alike, where two whole
    runs one after the other each see a different stretch of it. Both arms' main pieces are
    timed as they run (:class:`Timers`): the breakdown is of the measured run itself.
    """
    from pbrl.loops.online import PreferenceLoop

    total = int(cfg.num_train_steps)
    sac = make_sac(cfg)
    acc: dict[str, Any] = {"sac": 0.0, "sac_cpu": 0.0, "pebble": 0.0, "pebble_cpu": 0.0}
    tm = Timers()
    with tempfile.TemporaryDirectory(prefix="pbrl-overhead-") as tmp:
        loop = PreferenceLoop(cfg, Path(tmp) / "run")
        for name in ("_evaluate", "save_checkpoint"):
            tm.wrap(loop, name, "pebble.tail")
        for arm, model in (("sac", sac), ("pebble", loop.model)):
            tm.wrap(model, "train", f"{arm}.train")
            tm.wrap(model, "collect_rollouts", f"{arm}.collect")
            tm.wrap(model, "_sample_action", f"{arm}.action")
            tm.wrap(model.env, "step_wait", f"{arm}.env")
            tm.wrap(model.replay_buffer, "add", f"{arm}.add")
        buf, learner = loop.buffer, loop.learner
        tm.wrap(buf, "_intrinsic", "pebble.knn")
        tm.wrap(buf, "_flush_rewards", "pebble.fill")
        tm.wrap(buf, "relabel", "pebble.relabel")
        tm.wrap(learner, "train", "pebble.reward_train")
        tm.wrap(loop, "_feedback_round", "pebble.feedback")
        tm.wrap(loop, "_first_feedback", "pebble.first_feedback")
        # the critic reset and its reset_update SAC updates: _first_feedback minus its round
        first_feedback = loop._first_feedback

        def first_feedback_split() -> None:
            fb0 = tm.acc["pebble.feedback"]
            t0 = time.perf_counter()
            first_feedback()
            acc["reset"] = time.perf_counter() - t0 - (tm.acc["pebble.feedback"] - fb0)

        loop._first_feedback = first_feedback_split

        def step_sac() -> None:
            n = min(chunk, total - sac.num_timesteps)
            if n > 0:
                sac.learn(n, reset_num_timesteps=sac.num_timesteps == 0, progress_bar=False)

        def step_pebble() -> None:
            if loop.step < total:
                loop.run(until=min(loop.step + chunk, total))
                if loop.step >= total:
                    loop.run()  # the end-of-run tail (forced evaluation + checkpoint)

        i = 0
        while sac.num_timesteps < total or loop.step < total:
            order = (("sac", step_sac), ("pebble", step_pebble))
            for arm, fn in order if i % 2 == 0 else order[::-1]:
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                acc[arm] += time.perf_counter() - t0
                acc[f"{arm}_cpu"] += time.process_time() - c0
            i += 1
        assert sac.num_timesteps == total and loop.step == total, (sac.num_timesteps, loop.step)
        acc["queries"] = loop.queries_used
        loop.close()
    sac.env.close()
    acc["tail"] = tm.acc["pebble.tail"]
    acc["train"] = acc["pebble"] - acc["tail"]
    acc["timers"] = dict(tm.acc)
    return acc


def table_breakdown(res: dict[str, Any]) -> str:
    """Where each arm's time went in an interleaved run (seconds, from :class:`Timers`)."""
    t = res["timers"]
    # the reset_update SAC updates also count in pebble.train: taken out there
    reset_upd = res.get("reset", 0.0)
    upd_p = t["pebble.train"] - t["pebble.knn"] - t["pebble.fill"] - reset_upd
    rows = [
        ("SAC gradient updates (`SAC.train`)", t["sac.train"], upd_p),
        ("  k-NN state-entropy reward (pre-training, in sampling)", 0.0, t["pebble.knn"]),
        ("  deferred learned rewards filled in sampling", 0.0, t["pebble.fill"]),
        ("action sampling (`_sample_action`)", t["sac.action"], t["pebble.action"]),
        ("env step (+ learned-reward wrapper)", t["sac.env"], t["pebble.env"]),
        ("replay-buffer add", t["sac.add"], t["pebble.add"]),
        (
            "rest of `collect_rollouts`",
            t["sac.collect"] - t["sac.action"] - t["sac.env"] - t["sac.add"],
            t["pebble.collect"] - t["pebble.action"] - t["pebble.env"] - t["pebble.add"],
        ),
        ("feedback rounds (`_feedback_round`)", 0.0, t["pebble.feedback"]),
        ("  reward-model training", 0.0, t["pebble.reward_train"]),
        ("  relabelling the buffer", 0.0, t["pebble.relabel"]),
        (
            "  queries, teacher, store",
            0.0,
            t["pebble.feedback"] - t["pebble.reward_train"] - t["pebble.relabel"],
        ),
        ("critic reset + `reset_update` SAC updates", 0.0, reset_upd),
        ("end of run: forced evaluation + checkpoint", 0.0, res["tail"]),
    ]
    top = [r for r in rows if not r[0].startswith("  ")]
    counted_s = sum(r[1] for r in top)
    counted_p = sum(r[2] for r in top) + t["pebble.knn"] + t["pebble.fill"]
    rest = ("rest (SB3 loop, logging, chunking)", res["sac"] - counted_s, res["pebble"] - counted_p)
    rows.append(rest)
    rows.append(("total", res["sac"], res["pebble"]))
    lines = [
        "| where | plain SAC s | PEBBLE s | extra s | extra as % of SAC |",
        "|---|---|---|---|---|",
    ]
    for name, a, b in rows:
        label = name if not name.startswith("  ") else "&nbsp;&nbsp;" + name.strip()
        lines.append(
            f"| {label} | {a:.2f} | {b:.2f} | {b - a:+.2f} | {100 * (b - a) / res['sac']:+.1f} |"
        )
    return "\n".join(lines)


@contextlib.contextmanager
def _profiling(profiler: cProfile.Profile | None) -> Iterator[None]:
    if profiler is None:
        yield
        return
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()


# --------------------------------------------------------------------------------------------
# profile grouping
class Prof:
    """Cumulative times of functions (matched by file-path suffix and name) in a profile."""

    def __init__(self, profiler: cProfile.Profile):
        self.stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]

    @staticmethod
    def _match(key: tuple[str, int, str], where: tuple[Any, ...]) -> bool:
        """``where``: (file-path suffix, name) or (suffix, name, first line) when one file
        has several functions of that name; the suffix may be a tuple of suffixes."""
        path, line, name = key
        if len(where) > 2 and line != where[2]:
            return False
        return name == where[1] and path.replace(os.sep, "/").endswith(where[0])

    def cum(self, where: tuple[Any, ...], caller: tuple[Any, ...] | None = None) -> float:
        """Cumulative seconds in ``where``; with ``caller`` only calls made from it."""
        total = 0.0
        for key, (_cc, _nc, _tt, ct, callers) in self.stats.items():
            if not self._match(key, where):
                continue
            if caller is None:
                total += ct
            else:
                total += sum(v[3] for c, v in callers.items() if self._match(c, caller))
        return total


# the online loop's methods live in these files (cProfile keys: file-path suffixes)
ONLINE = (
    "pbrl/loops/online.py",
    "pbrl/loops/base.py",
    "pbrl/loops/feedback.py",
    "pbrl/checkpoint.py",
)
BUFFER = "pbrl/buffer.py"
SB3_SAC = "stable_baselines3/sac/sac.py"
OFFPOL = "stable_baselines3/common/off_policy_algorithm.py"
DUMMY = "stable_baselines3/common/vec_env/dummy_vec_env.py"
CHEETAH = "gymnasium/envs/mujoco/half_cheetah_v5.py"


def _first_line(cls_name: str) -> int:
    """First line of ``step_wait`` of ``pbrl.agents.sb3.<cls_name>`` (cProfile's key)."""
    import pbrl.agents.sb3 as sb3_mod

    return getattr(sb3_mod, cls_name).step_wait.__code__.co_firstlineno


def group_pebble(p: Prof) -> list[tuple[str, float]]:
    """PEBBLE's profile in rows (seconds, profiled run); the last row is the rest."""
    total = p.cum((ONLINE, "run"))
    intrinsic = p.cum((BUFFER, "_intrinsic"))
    reset_upd = p.cum((SB3_SAC, "train"), caller=(ONLINE, "_first_feedback"))
    fb = p.cum((ONLINE, "_feedback_round"))
    # pbrl/agents/sb3.py has two step_wait: the learned-reward wrapper's and PbrlDummyVecEnv's
    # (SB3's DummyVecEnv without the deepcopy of infos), which it calls to step the env.
    reward_wait = ("pbrl/agents/sb3.py", "step_wait", _first_line("LearnedRewardVecEnv"))
    dummy_wait = ("pbrl/agents/sb3.py", "step_wait", _first_line("PbrlDummyVecEnv"))
    env = p.cum(dummy_wait, caller=reward_wait) + p.cum((DUMMY, "step_wait"), caller=reward_wait)
    rows = [
        (
            "SAC gradient updates (`SAC.train`, k-NN excluded)",
            p.cum((SB3_SAC, "train")) - intrinsic - reset_upd,
        ),
        ("action sampling (`_sample_action`)", p.cum((OFFPOL, "_sample_action"))),
        ("env stepping (`PbrlDummyVecEnv.step_wait`)", env),
        (
            "  of which MuJoCo `HalfCheetahEnv.step` (+ final eval episode)",
            -p.cum((CHEETAH, "step")),
        ),
        (
            "learned reward per step (`LearnedRewardVecEnv.step_wait` - env)",
            p.cum(reward_wait) - env,
        ),
        ("replay-buffer add (`PbrlReplayBuffer.add`)", p.cum((BUFFER, "add"))),
        ("intrinsic k-NN reward (pre-training, in `SAC.train`)", intrinsic),
        ("feedback rounds (`_feedback_round`)", fb),
        (
            "  query sampling (`sample_segments` + `QueryBatch`)",
            -(
                p.cum((BUFFER, "sample_segments"), caller=(ONLINE, "_feedback_round"))
                + p.cum(("pbrl/data.py", "from_members"), caller=(ONLINE, "_feedback_round"))
            ),
        ),
        (
            "  query selection (`Selector.select` + labelled set)",
            -(p.cum(("pbrl/queries.py", "select")) + p.cum((ONLINE, "_labelled_queries"))),
        ),
        ("  teacher (`ScriptedTeacher.label`)", -p.cum(("pbrl/teachers/scripted.py", "label"))),
        (
            "  store writes (`add_queries`, `add`)",
            -(
                p.cum(("pbrl/store.py", "add_queries"))
                + p.cum(("pbrl/store.py", "add"), caller=(ONLINE, "_feedback_round"))
            ),
        ),
        (
            "  store reads (`training_arrays`, `counts`)",
            -(
                p.cum(("pbrl/store.py", "training_arrays"))
                + p.cum(("pbrl/store.py", "counts"), caller=(ONLINE, "_feedback_round"))
            ),
        ),
        (
            "  reward-model training (`BTRewardLearner.train`)",
            -p.cum(("pbrl/rewards/bradley_terry.py", "train")),
        ),
        ("  relabelling (`PbrlReplayBuffer.relabel`)", -p.cum((BUFFER, "relabel"))),
        (
            "critic reset + `reset_update` SAC updates",
            p.cum((ONLINE, "_first_feedback"))
            - p.cum((ONLINE, "_feedback_round"), caller=(ONLINE, "_first_feedback")),
        ),
        (
            "logging (`_log`, SB3 `_dump_logs` -> TensorBoard)",
            p.cum((ONLINE, "_log")) + p.cum((OFFPOL, "_dump_logs")),
        ),
        ("`learn()` setup per chunk (`_setup_learn`)", p.cum((OFFPOL, "_setup_learn"))),
        (
            "end of run: forced eval episode + checkpoint",
            p.cum((ONLINE, "_evaluate")) + p.cum((ONLINE, "save_checkpoint")),
        ),
    ]
    return _finish(rows, total)


def group_sac(p: Prof) -> dict[str, float]:
    """The plain-SAC profile in the same rows (keys match :func:`group_pebble`)."""
    total = p.cum((OFFPOL, "learn"))
    env = p.cum((DUMMY, "step_wait"))
    return {
        "SAC gradient updates (`SAC.train`, k-NN excluded)": p.cum((SB3_SAC, "train")),
        "action sampling (`_sample_action`)": p.cum((OFFPOL, "_sample_action")),
        "env stepping (`DummyVecEnv.step_wait`)": env,
        "  of which MuJoCo `HalfCheetahEnv.step` (+ final eval episode)": p.cum((CHEETAH, "step")),
        "replay-buffer add (`PbrlReplayBuffer.add`)": p.cum(
            ("stable_baselines3/common/buffers.py", "add")
        ),
        "logging (`_log`, SB3 `_dump_logs` -> TensorBoard)": p.cum((OFFPOL, "_dump_logs")),
        "`learn()` setup per chunk (`_setup_learn`)": p.cum((OFFPOL, "_setup_learn")),
        "total": total,
    }


def _finish(rows: list[tuple[str, float]], total: float) -> list[tuple[str, float]]:
    # Negative values mark sub-rows (already counted in their parent row).
    counted = sum(v for _, v in rows if v > 0)
    rows = [(k, abs(v)) for k, v in rows]
    rows.append(("other (SB3 loop, callbacks, numpy glue, ...)", total - counted))
    rows.append(("total", total))
    return rows


# --------------------------------------------------------------------------------------------
# per-step micro-benchmarks of the hot path (no profiler distortion)
def micro(cfg: DictConfig, n: int = 3000) -> list[tuple[str, float, float]]:
    """Microseconds per call of PEBBLE's per-step pieces next to plain SAC's equivalents."""
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    from pbrl import envs as pbrl_envs
    from pbrl.agents.sb3 import LearnedRewardVecEnv, make_vec_env
    from pbrl.buffer import PbrlReplayBuffer
    from pbrl.rewards.bradley_terry import BTRewardLearner

    rng = np.random.default_rng(0)
    out: list[tuple[str, float, float]] = []

    def per_call(fn: Callable[[], Any], reps: int = n) -> float:
        fn()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t) / reps * 1e6

    # env step: SB3's Monitor+DummyVecEnv on raw gym vs pbrl's PbrlEnv in DummyVecEnv
    raw = DummyVecEnv([lambda: Monitor(gym.make("HalfCheetah-v5"))])
    pb = make_vec_env([lambda: pbrl_envs.make_env("halfcheetah", seed=0)])
    act = rng.uniform(-1, 1, (n + 1, 1, 6)).astype(np.float32)
    for v in (raw, pb):
        v.seed(0)
        v.reset()
    it = iter(range(10**9))
    t_raw = per_call(lambda: raw.step(act[next(it) % n]))
    t_pb = per_call(lambda: pb.step(act[next(it) % n]))
    out.append(("env step (Monitor+DummyVecEnv vs PbrlEnv+DummyVecEnv)", t_raw, t_pb))

    # learned-reward wrapper: before the first reward training (zeros) and after (ensemble)
    r = cfg.reward
    learner = BTRewardLearner(
        17,
        6,
        ensemble_size=r.ensemble_size,
        hidden=r.hidden,
        n_layers=r.n_layers,
        device="cpu",
        seed=0,
    )
    for label, fn in (
        ("learned-reward wrapper, reward inactive (zeros)", lambda o, a: np.zeros(len(o))),
        ("learned-reward wrapper, ensemble reward_fn (1 x 3 MLP)", learner.reward_fn),
    ):
        w = LearnedRewardVecEnv(
            make_vec_env([lambda: pbrl_envs.make_env("halfcheetah", seed=0)]), fn
        )
        w.reset()
        t_w = per_call(lambda w=w: w.step(act[next(it) % n]))
        out.append((label + " (step incl. env)", t_pb, t_w))
        w.close()

    # replay-buffer add: SB3 ReplayBuffer vs PbrlReplayBuffer, fed real infos
    pb.reset()
    steps = []
    obs = pb.reset()
    for i in range(n):
        a = act[i]
        nobs, rew, done, infos = pb.step(a)
        steps.append((obs, nobs, a, rew, done, infos))
        obs = nobs
    sp = pb.observation_space
    b_sb3 = ReplayBuffer(n, sp, pb.action_space, device="cpu")
    b_pb = PbrlReplayBuffer(
        n,
        sp,
        pb.action_space,
        device="cpu",
        state_dim=pbrl_envs.make_env("halfcheetah").state_dim,
        factor_names=("reward_forward", "reward_ctrl"),
        env_name="halfcheetah",
    )
    for name, buf in (("sb3", b_sb3), ("pbrl", b_pb)):
        k = iter(range(10**9))
        t = per_call(lambda buf=buf, k=k: buf.add(*steps[next(k) % n]), reps=n - 1)
        if name == "sb3":
            t_sb3 = t
        else:
            out.append(("replay-buffer add (ReplayBuffer vs PbrlReplayBuffer)", t_sb3, t))
    raw.close()
    pb.close()
    return out


# --------------------------------------------------------------------------------------------
# report
def fmt_settings(args: argparse.Namespace, cfg: DictConfig) -> str:
    s = schedule(args)
    a = cfg.agent
    return (
        f"HalfCheetah-v5, {args.steps} env steps, seed {args.seed}, torch threads "
        f"{torch.get_num_threads()}. SAC (both arms, from `agent=pebble`): net_arch "
        f"{list(a.net_arch)}, batch {a.batch_size}, lr {a.learning_rate}, tau {a.sb3.tau}, "
        f"gamma {a.sb3.gamma}, target_update_interval {a.sb3.target_update_interval}, ent_coef "
        f"{a.sb3.ent_coef}, train_freq {a.sb3.train_freq}, gradient_steps "
        f"{a.sb3.gradient_steps}, learning_starts = num_seed_steps = {s['num_seed_steps']}. "
        f"PEBBLE schedule: num_unsup_steps {s['num_unsup_steps']}, num_interact "
        f"{s['num_interact']}, reward_batch {s['reward_batch']}, max_feedback "
        f"{s['max_feedback']} ({s['rounds']} feedback rounds), query {cfg.query.name}, "
        f"segment {cfg.segment_size}, reset_update {a.reset_update}, reward model "
        f"{cfg.reward.ensemble_size} x {cfg.reward.n_layers} x {cfg.reward.hidden} (max "
        f"{cfg.reward.max_epochs} epochs, early stop at acc {cfg.reward.acc_target}). "
        f"Evaluation, video and periodic checkpoints off in both arms; pbrl's `run()` ends "
        f"with one forced evaluation episode + one checkpoint (the 'tail', not in plain SAC)."
    )


def table_ratios(rows: list[dict[str, float]]) -> tuple[str, float, float]:
    lines = [
        "| repeat | SAC `learn()` s | PEBBLE `run()` s | of which end tail s | ratio | "
        "ratio w/o tail | SAC CPU s | PEBBLE CPU s | CPU-time ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows):
        lines.append(
            f"| {i} | {r['sac']:.1f} | {r['pebble']:.1f} | {r['tail']:.1f} | "
            f"{r['pebble'] / r['sac']:.3f} | {r['train'] / r['sac']:.3f} | "
            f"{r['sac_cpu']:.1f} | {r['pebble_cpu']:.1f} | {r['pebble_cpu'] / r['sac_cpu']:.3f} |"
        )
    med = statistics.median(r["pebble"] / r["sac"] for r in rows)
    med_t = statistics.median(r["train"] / r["sac"] for r in rows)
    med_c = statistics.median(r["pebble_cpu"] / r["sac_cpu"] for r in rows)
    lines.append(f"| **median** | | | | **{med:.3f}** | **{med_t:.3f}** | | | **{med_c:.3f}** |")
    return "\n".join(lines), med, med_t, med_c


def table_profile(peb: list[tuple[str, float]], sac: dict[str, float]) -> str:
    tot_p = dict(peb)["total"]
    tot_s = sac["total"]
    lines = [
        "| where | PEBBLE s | % of PEBBLE | plain SAC s | extra s (PEBBLE - SAC) | "
        "extra as % of SAC |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in peb:
        s = sac.get(name, 0.0 if name != "total" else tot_s)
        if name.startswith("other"):
            s = tot_s - sum(x for k, x in sac.items() if k != "total" and not k.startswith("  "))
        extra = v - s
        label = name if not name.startswith("  ") else "&nbsp;&nbsp;" + name.strip()
        lines.append(
            f"| {label} | {v:.2f} | {100 * v / tot_p:.1f} | {s:.2f} | {extra:+.2f} | "
            f"{100 * extra / tot_s:+.1f} |"
        )
    return "\n".join(lines)


def table_micro(rows: list[tuple[str, float, float]]) -> str:
    lines = [
        "| per-step piece | plain SAC µs | PEBBLE µs | extra µs/step |",
        "|---|---|---|---|",
    ]
    for name, a, b in rows:
        lines.append(f"| {name} | {a:.1f} | {b:.1f} | {b - a:+.1f} |")
    return "\n".join(lines)


def write_results(sub_header: str, body: str) -> None:
    """Create/replace ``sub_header``'s block inside the Overhead section of RESULTS.md."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    intro = (
        f"{SECTION}\n\nTarget: PEBBLE (oracle teacher) wall time ≤ {TARGET:.2f}× plain SB3 SAC "
        "on the true reward at the same env steps, measured side by side in one process "
        "(`benchmarks/overhead.py`). One block per network size; the ratio depends on it "
        "(SAC's own cost shrinks with the net, most of PEBBLE's extra work does not).\n"
    )
    start = text.find(SECTION + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + intro
        start = text.find(SECTION + "\n")
    nxt = text.find("\n## ", start + len(SECTION))
    end = len(text) if nxt < 0 else nxt + 1
    section = text[start:end]
    block = f"{sub_header}\n\n{body.strip()}\n"
    b0 = section.find(sub_header + "\n")
    if b0 < 0:
        section = section.rstrip("\n") + "\n\n" + block
    else:
        b1 = section.find("\n### ", b0 + len(sub_header))
        section = section[:b0] + block + ("" if b1 < 0 else section[b1:])
    section = section.rstrip("\n") + "\n"
    rest = text[end:]
    text = text[:start] + section + ("\n" + rest.lstrip("\n") if rest.strip() else "")
    RESULTS.write_text(text)


# --------------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=6000, help="env steps per run (both arms)")
    p.add_argument("--repeats", type=int, default=2, help="A/B pairs, alternated")
    p.add_argument(
        "--net",
        type=int,
        default=256,
        help="hidden width of SAC's 2-layer actor/critic (B-Pref: 1024)",
    )
    p.add_argument("--batch", type=int, default=256, help="SAC batch size (B-Pref: 1024)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seed-steps", type=int, default=None, help="default steps/12 (min 100)")
    p.add_argument("--unsup-steps", type=int, default=None, help="default steps/6")
    p.add_argument("--interact", type=int, default=None, help="default steps/4")
    p.add_argument("--reward-batch", type=int, default=128, help="queries per round (B-Pref)")
    p.add_argument("--max-feedback", type=int, default=None, help="default: every round full")
    p.add_argument("--query", default="uniform", help="query rule (pbrl's default: uniform)")
    p.add_argument(
        "--baseline-fused",
        action="store_true",
        help="plain SAC also uses torch's fused Adam (pbrl's default); off: SB3's default Adam",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core box torch's default of 2 threads "
        "oversubscribes and made a 64-wide SAC update ~40x slower in our measurement)",
    )
    p.add_argument(
        "--interleave",
        type=int,
        default=0,
        metavar="N",
        help="run both arms at once in this process, alternating every N env steps (drift "
        "of the machine's speed then hits both alike); 0: whole runs one after the other",
    )
    p.add_argument("--no-profile", action="store_true", help="skip the cProfile runs")
    p.add_argument("--write-results", action="store_true")
    args = p.parse_args()
    global BASELINE_FUSED
    BASELINE_FUSED = bool(args.baseline_fused)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("MUJOCO_GL", "egl")

    cfg = compose_cfg(args)
    LOAD[0] = f"{os.getloadavg()[0]:.1f}"
    print(fmt_settings(args, cfg), flush=True)
    rows: list[dict[str, float]] = []
    breakdown = ""
    for i in range(args.repeats if args.interleave else 0):
        res = run_interleaved(cfg, args.interleave)
        print(
            f"repeat {i} (interleaved every {args.interleave} steps): SAC {res['sac']:.1f} s "
            f"wall / {res['sac_cpu']:.1f} s CPU, PEBBLE {res['pebble']:.1f} s wall / "
            f"{res['pebble_cpu']:.1f} s CPU: ratio {res['pebble'] / res['sac']:.3f}",
            flush=True,
        )
        rows.append(res)
        breakdown = table_breakdown(res)
        print(breakdown, flush=True)
    for i in range(0 if args.interleave else args.repeats):
        # alternate which arm goes first so a slow drift hits both equally
        order = ("sac", "pebble") if i % 2 == 0 else ("pebble", "sac")
        res: dict[str, float] = {}
        for arm in order:
            out = run_sac(cfg) if arm == "sac" else run_pebble(cfg)
            res[arm], res[f"{arm}_cpu"] = out["wall"], out["cpu"]
            if arm == "pebble":
                res["tail"], res["train"] = out["tail"], out["train"]
            print(f"repeat {i} {arm}: {out['wall']:.1f} s wall, {out['cpu']:.1f} s CPU", flush=True)
        rows.append(res)
        print(f"repeat {i}: ratio {res['pebble'] / res['sac']:.3f}", flush=True)
    ratio_table, med, med_t, med_c = table_ratios(rows)
    print(ratio_table)

    prof_table = micro_table = ""
    if not args.no_profile:
        pr_p, pr_s = cProfile.Profile(), cProfile.Profile()
        run_pebble(cfg, pr_p)
        run_sac(cfg, pr_s)
        prof_table = table_profile(group_pebble(Prof(pr_p)), group_sac(Prof(pr_s)))
        print(prof_table)
        micro_table = table_micro(micro(cfg))
        print(micro_table)

    verdict = "holds" if med <= TARGET else "does not hold"
    verdict_t = "holds" if med_t <= TARGET else "does not hold"
    cmd = "python benchmarks/overhead.py " + " ".join(sys.argv[1:])
    body = (
        f"Date: {dt.date.today().isoformat()}. Machine: {os.cpu_count()} CPU cores, no GPU "
        f"({platform.processor() or platform.machine()}; load average {LOAD[0]} at the "
        f"start, {os.getloadavg()[0]:.1f} at the end). Command: "
        f"`{cmd}`.\n\n"
        f"Settings: {fmt_settings(args, cfg)}\n\n"
        f"Median PEBBLE/SAC ratio over {args.repeats} "
        + (
            f"interleaved pairs (the two runs in step, alternating every {args.interleave} "
            "env steps)"
            if args.interleave
            else "alternated pairs"
        )
        + f": **{med:.3f}×** for the "
        f"whole `run()` (target ≤ {TARGET:.2f}×: {verdict}); **{med_t:.3f}×** without the "
        f"end-of-run evaluation + checkpoint ({verdict_t}); **{med_c:.3f}×** in this process's "
        "CPU time (`time.process_time`, torch on one thread).\n\n"
        f"{ratio_table}\n"
    )
    if args.interleave:
        body += (
            "\nWhere the time went in the last pair (timers on both arms' main methods during "
            "the measured run, ~1 µs per call; sub-rows are part of the row above them):\n\n"
            f"{breakdown}\n"
        )
    if prof_table:
        body += (
            "\nWhere the time goes (one cProfile run of each arm; profiler overhead inflates "
            "Python-heavy rows, so use the shares, not the absolute seconds; sub-rows are "
            "part of the row above them):\n\n"
            f"{prof_table}\n\nPer-step hot path, timed without the profiler (µs per call):"
            f"\n\n{micro_table}\n"
        )
    if args.write_results:
        base = "SAC with fused Adam" if args.baseline_fused else "SB3's default SAC"
        write_results(
            f"### net {args.net} x 2, batch {args.batch}, {args.steps} steps, baseline {base}",
            body,
        )
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
