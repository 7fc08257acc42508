"""morl-baselines' PGMORL as an arm of benchmarks/cmorl_front.py, scored by pbrl's evaluator.

Benchmark-only dependency, NOT one of pbrl's: ``pip install morl-baselines`` (tested with
1.3.0), best into a separate virtual environment that still sees pbrl, because its pins
downgrade packages pbrl uses (pillow, ...)::

    python -m venv --system-site-packages /work/venvs/morlb
    /work/venvs/morlb/bin/pip install morl-baselines==1.3.0
    WANDB_MODE=disabled /work/venvs/morlb/bin/python benchmarks/morlb_pgmorl.py \\
        --env mo-hopper-2d --seed 0 --total 98304 --steps-per-iteration 512 --out s0.json

``cmorl_front.py --arms ... morlb-pgmorl --morlb-python /work/venvs/morlb/bin/python`` runs
this script once per seed. What it does:

1. Trains ``morl_baselines.multi_policy.pgmorl.pgmorl.PGMORL`` (``log=False``: no wandb) with
   pbrl PGMORL's settings: 4 envs, ``pop_size`` 6 (the ``delta_weight`` 0.2 grid), origin = the
   reference point, PPO defaults (identical to :class:`pbrl.morl.ppo.MOPPOConfig`'s).
   morl-baselines' ``train(total_timesteps)`` counts every env's transitions:
   ``max_iterations = total // steps_per_iteration // num_envs // pop_size``; each iteration
   trains every agent on ``steps_per_iteration x num_envs`` transitions; the evolution loop
   runs whole stages of ``evolutionary_iterations`` while ``iteration < max_iterations`` (at
   least one), so the budget is met exactly when ``max_iterations - warmup_iterations`` is a
   multiple of ``evolutionary_iterations`` (and overshot otherwise). The transitions are also
   counted here on the training vector env itself (``env_steps``).
2. Observation normalisation: morl-baselines wraps each of the 4 training envs in gymnasium's
   ``NormalizeObservation`` (then clips to +-10), one running mean/var per env, shared by every
   agent (they step the same vector env). Its internal evaluations (which build its archive,
   population and prediction samples) get ``eval_env`` from the caller; morl-baselines'
   benchmark launcher (experiments/benchmark/launch_experiment.py) passes a raw
   ``mo_gym.make(env_id)``, which feeds un-normalised observations to networks trained on
   normalised ones, and its PGMORL example a fresh ``make_env()`` env with statistics of its
   own (and normalised, clipped rewards). Here ``eval_env`` normalises with the training envs'
   current statistics pooled over the 4 envs (frozen during an episode) and is cut at the
   protocol's ``max_steps``; morl-baselines' own evaluation is otherwise unchanged
   (5 stochastic episodes, discount 0.995). The one addition: ``torch.manual_seed(seed)``
   (morl-baselines seeds numpy and the envs, not torch's network init and sampling).
3. Every policy morl-baselines evaluates after training (end of warm-up and of each evolution
   stage, ``pop_size`` each; as pbrl's archive keeps every trained policy) is snapshotted with
   the pooled observation statistics of that moment, then scored by pbrl's shared evaluator:
   :func:`pbrl.morl.ppo.evaluate_policy` (deterministic: the Gaussian's mean; actions clipped
   to the box as ``ClipAction`` did) under :class:`~pbrl.morl.metrics.EvalProtocol`, and
   :func:`~pbrl.morl.metrics.score_front` on the non-dominated set. The scores of
   morl-baselines' own final Pareto archive (a subset, chosen by its internal evaluation) are
   reported too (``archive_*``).

Writes one JSON object: hv, eu, sparsity, cardinality, env_steps, eval_steps (internal +
scoring), wall_s (training + scoring, imports excluded), points, and the details.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("WANDB_MODE", "disabled")

MISSING = (
    "morl-baselines is not importable by {exe}: it is a benchmark-only dependency of the "
    "morlb-pgmorl arm; install it with `pip install morl-baselines==1.3.0` (best in a venv "
    "made with --system-site-packages, see benchmarks/morlb_pgmorl.py) and pass that venv's "
    "python as --morlb-python"
)


def pooled_stats(vec_env: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of the observations over every sub-env's ``NormalizeObservation``."""
    import gymnasium as gym

    counts, means, variances = [], [], []
    for env in vec_env.envs:
        e = env
        while not isinstance(e, gym.wrappers.NormalizeObservation):
            if not hasattr(e, "env"):
                raise RuntimeError("no NormalizeObservation wrapper in morl-baselines' env")
            e = e.env
        counts.append(float(e.obs_rms.count))
        means.append(np.asarray(e.obs_rms.mean, np.float64))
        variances.append(np.asarray(e.obs_rms.var, np.float64))
    c = np.array(counts)[:, None]
    mu = (c * np.array(means)).sum(0) / c.sum()
    var = (c * (np.array(variances) + (np.array(means) - mu) ** 2)).sum(0) / c.sum()
    return mu, var


class FrozenNormPolicy:
    """A morl-baselines actor behind pbrl's ``Policy`` protocol: normalise, then the mean."""

    def __init__(self, actor_mean: Any, mean: np.ndarray, var: np.ndarray, clip: float = 10.0):
        self.actor_mean = actor_mean
        self.mean, self.var, self.clip = mean, var, clip

    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        import torch

        if not deterministic:
            raise ValueError("the shared evaluator only asks for deterministic actions")
        z = (np.asarray(obs, np.float64) - self.mean) / np.sqrt(self.var + 1e-8)
        z = np.clip(z, -self.clip, self.clip).astype(np.float32)
        with torch.no_grad():
            return self.actor_mean(torch.as_tensor(z)).numpy()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", default="mo-hopper-2d")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--total", type=int, default=98_304, help="transitions, all envs")
    ap.add_argument("--num-envs", type=int, default=4)
    ap.add_argument("--steps-per-iteration", type=int, default=512, help="per env")
    ap.add_argument("--pop-size", type=int, default=6)
    ap.add_argument("--delta-weight", type=float, default=0.2)
    ap.add_argument("--warmup-iterations", type=int, default=4)
    ap.add_argument("--evolutionary-iterations", type=int, default=2)
    ap.add_argument("--episodes", type=int, default=3)
    ap.add_argument("--max-steps", type=int, default=500)
    ap.add_argument("--gamma", type=float, default=0.99, help="evaluation discount")
    ap.add_argument("--ref-point", type=float, nargs="+", default=[-100.0, -100.0])
    ap.add_argument("--eu-step", type=float, default=0.01)
    ap.add_argument("--eval-seed", type=int, default=None, help="default 10000 + seed")
    ap.add_argument("--out", default=None, help="JSON path (default: stdout only)")
    args = ap.parse_args(argv)

    try:
        import mo_gymnasium as mo_gym
        from morl_baselines.multi_policy.pgmorl.pgmorl import PGMORL
    except ImportError as err:
        raise SystemExit(MISSING.format(exe=sys.executable) + f" ({err})") from err
    import gymnasium as gym
    import torch

    from pbrl.morl.envs import MO_GYM, make_mo_env
    from pbrl.morl.metrics import EvalProtocol, score_front
    from pbrl.morl.ppo import evaluate_policy

    torch.set_num_threads(1)
    gym_id = MO_GYM[args.env].gym_id if args.env in MO_GYM else args.env
    ref = np.asarray(args.ref_point, np.float64)
    eval_seed = 10_000 + args.seed if args.eval_seed is None else args.eval_seed
    prot = EvalProtocol(episodes=args.episodes, max_steps=args.max_steps, gamma=args.gamma,
                        ref_point=tuple(ref), eu_step=args.eu_step, seed=eval_seed)  # fmt: skip

    # morl-baselines seeds numpy and the envs but not torch (network init, action sampling)
    torch.manual_seed(args.seed)
    t0 = time.time()
    agent = PGMORL(env_id=gym_id, origin=ref.copy(), num_envs=args.num_envs,
                   pop_size=args.pop_size, warmup_iterations=args.warmup_iterations,
                   steps_per_iteration=args.steps_per_iteration,
                   evolutionary_iterations=args.evolutionary_iterations,
                   delta_weight=args.delta_weight, seed=args.seed, log=False,
                   device="cpu")  # fmt: skip

    # count real training transitions on the shared vector env
    counter = {"train": 0, "internal_eval": 0}
    vstep = agent.env.step

    def counted_step(actions: Any) -> Any:
        counter["train"] += agent.env.num_envs
        return vstep(actions)

    agent.env.step = counted_step  # type: ignore[method-assign]

    class LiveNormEval(gym.ObservationWrapper):
        """The training envs' current pooled normalisation, frozen for each episode."""

        def reset(self, **kw: Any) -> Any:
            self.mu, self.var = pooled_stats(agent.env)
            return super().reset(**kw)

        def step(self, action: Any) -> Any:
            counter["internal_eval"] += 1
            return super().step(action)

        def observation(self, obs: np.ndarray) -> np.ndarray:
            z = (np.asarray(obs, np.float64) - self.mu) / np.sqrt(self.var + 1e-8)
            return np.clip(z, -10.0, 10.0).astype(np.float32)

    eval_env = LiveNormEval(
        gym.wrappers.ClipAction(mo_gym.make(gym_id, max_episode_steps=args.max_steps))
    )
    eval_env.reset(seed=eval_seed)

    # snapshot every policy morl-baselines evaluates (its archive.add sees all of them)
    snaps: list[dict[str, Any]] = []
    archive_add = agent.archive.add

    def add_and_snapshot(candidate: Any, evaluation: np.ndarray) -> None:
        mu, var = pooled_stats(agent.env)
        snaps.append(
            {
                "actor": copy.deepcopy(candidate.networks.actor_mean).eval(),
                "mean": mu,
                "var": var,
                "internal": np.asarray(evaluation, np.float64).copy(),
                "weight": candidate.np_weights.tolist(),
                "global_step": int(agent.global_step),
                # the untrained initial population is not a trained policy (pbrl's archives
                # do not hold it either); it is scored only if it survives in the archive
                "trained": agent.global_step > 0,
            }
        )
        archive_add(candidate, evaluation)

    agent.archive.add = add_and_snapshot  # type: ignore[method-assign]

    agent.train(total_timesteps=args.total, eval_env=eval_env, ref_point=ref.copy())
    train_s = time.time() - t0
    if counter["train"] != agent.global_step:
        print(f"warning: counted {counter['train']} transitions, global_step {agent.global_step}")

    t1 = time.time()
    env_fn = functools.partial(make_mo_env, args.env, max_episode_steps=prot.max_steps)
    points, eval_steps = [], 0
    arch = {tuple(np.asarray(e, np.float64)) for e in agent.archive.evaluations}
    in_arch = [tuple(s["internal"]) in arch for s in snaps]
    keep = [i for i, s in enumerate(snaps) if s["trained"] or in_arch[i]]
    snaps, in_arch = [snaps[i] for i in keep], [in_arch[i] for i in keep]
    for s in snaps:
        ret, n = evaluate_policy(FrozenNormPolicy(s["actor"], s["mean"], s["var"]), env_fn, prot)
        points.append(ret)
        eval_steps += n
    pts = np.array(points, np.float64).reshape(-1, prot.num_objectives)
    trained = np.array([s["trained"] for s in snaps], bool)
    scores = score_front(pts[trained], prot)
    arch_scores = score_front(pts[np.array(in_arch, bool)], prot) if any(in_arch) else {}
    score_s = time.time() - t1
    res: dict[str, Any] = {
        **scores,
        "env_steps": int(counter["train"]),
        "global_step": int(agent.global_step),
        "eval_steps": int(eval_steps + counter["internal_eval"]),
        "scoring_eval_steps": int(eval_steps),
        "internal_eval_steps": int(counter["internal_eval"]),
        "wall_s": train_s + score_s,
        "train_s": train_s,
        "score_s": score_s,
        "num_policies": int(trained.sum()),
        "archive_untrained": int(
            sum(a and not s["trained"] for a, s in zip(in_arch, snaps, strict=True))
        ),
        "archive_size": len(agent.archive.evaluations),
        **{f"archive_{k}": v for k, v in arch_scores.items()},
        "points": pts.tolist(),
        "weights": [s["weight"] for s in snaps],
        "snapshot_steps": [s["global_step"] for s in snaps],
        "trained": trained.tolist(),
        "in_archive": in_arch,
        "internal_returns": [s["internal"].tolist() for s in snaps],
        "seed": args.seed,
        "args": vars(args),
    }
    text = json.dumps(res, indent=1, default=float)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(
        f"morlb-pgmorl s{args.seed}: HV {res['hv']:.4g} EU {res['eu']:.4g} front "
        f"{res['cardinality']} steps {res['env_steps']} eval steps {res['eval_steps']} "
        f"{res['wall_s']:.0f}s",
        flush=True,
    )
    return res


if __name__ == "__main__":
    main()
