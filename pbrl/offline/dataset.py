"""Build offline preference datasets the way CPL and OPPO do, in the core's dataset format.

The recipe (CPL, Hejna et al. 2024, ``scripts/create_comparison_dataset.py`` and
``scripts/add_pref_labels.py``; OPPO, Kang et al. 2023, scripted labels):

1. **Roll out** a sub-optimal policy (an SB3 checkpoint, a SAC oracle trained here on the true
   reward when asked, or uniform random actions) with Gaussian action noise, in lock-step over
   several environments (:func:`collect`); optionally a ``distractor`` policy drives a share
   of the episodes (mixed-quality data, where cloning everything does not recover the task).
2. **Cut segments** of ``H`` steps uniformly over all valid windows (:func:`cut_segments`).
3. **Label** them with one or more label sources (:data:`LABEL_SOURCES`):

   - a scripted B-Pref teacher (``oracle``, ``noisy``, ``mistake``, ``skip``, ``myopic``,
     ``equal``; :mod:`pbrl.teachers`), pairs only;
   - ``regret``: CPL's oracle label ``rl_sum = sum_{t<H-1} r_t + V(s_{H-1}) - V(s_0)``, the
     telescoped advantage sum under an oracle SAC critic, with ``V(s)`` the mean of the
     critic ensemble's ``Q(s, a)`` over ``value_samples`` actions drawn from the oracle policy;
   - ``return``: the segment's true return (the rational teacher's score);
   - ``future_return``: OPPO's scripted score, the true return of the ``foresee`` steps from
     the segment's first step on (cut at the episode's end);
   - ``expert_logprob``: CPL's own preference model with the rollout policy as the optimal
     policy ``pi*``: ``sum_t log pi*(a_t|s_t)`` under the deterministic actor's log-density
     ``-||mu*(s_t) - a_t||^2`` (CPL's configs), ``mu*`` the policy's noiseless action. CPL
     derives ``A*(s, a) = alpha log pi*(a|s)``, so this is the regret label for a policy that
     is (taken as) optimal and has no critic, e.g. Meta-World's scripted expert. Unlike a
     segment's return on a dense-reward task (which grows as the task progresses, so late
     segments win), it scores only how far the executed actions strayed from the expert's,
     wherever in the episode the segment lies.

   Score-based sources give hard labels (0.5 on exact ties), no Bradley-Terry sampling.
4. **Write** a dataset file through :class:`~pbrl.store.FeedbackStore` and its ``export``:

   - ``mode="pairs"``: ``N`` segments -> ``N/2`` disjoint pairs (segment ``i`` vs
     ``i + N/2``; CPL's sparse "comparison" data);
   - ``mode="rank"``: one ranking query over all ``N`` segments per score-based source (CPL's
     dense data: any two segments can be compared). Strict ranking; exact score ties are
     broken by segment index.

   Each label source answers as its own teacher (``teacher_id`` = the source's name), so one
   file can hold several labellings of the same queries; learners pick one with
   ``teacher_id``. Generation settings go to ``<out>.json`` next to the file.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pbrl import __version__ as PBRL_VERSION
from pbrl import envs as pbrl_envs
from pbrl.data import Feedback, Label, QueryBatch, SegmentBatch
from pbrl.store import FeedbackStore
from pbrl.teachers import PRESETS, make_teacher

SCORE_SOURCES: tuple[str, ...] = ("regret", "return", "future_return", "expert_logprob")
"""Label sources that score each segment (usable for rankings)."""

LABEL_SOURCES: tuple[str, ...] = (*SCORE_SOURCES, *PRESETS)
"""Every label source :func:`label_dataset` accepts."""

MODES: tuple[str, ...] = ("pairs", "rank")

PolicyFn = Callable[[np.ndarray], np.ndarray]
"""(obs (B, D_o)) -> actions (B, D_a) in [-1, 1] (scaled action space)."""


class DatasetError(ValueError):
    """A dataset cannot be built as asked; the message says what to change."""


# ---------------------------------------------------------------------------------------------
# 1. Roll out
@dataclass
class Rollouts:
    """Episodes of one environment, concatenated along time.

    Attributes:
        obs: ``(T, D_o)`` float32 observations s_t.
        actions: ``(T, D_a)`` float32 actions a_t, scaled to [-1, 1].
        reward: ``(T,)`` float32 true reward r(s_t, a_t).
        factors: name -> ``(T,)`` float32 reward factors.
        sim_state: ``(T, D_s)`` float64 simulator state before each step, or None.
        episode_start: ``(E + 1,)`` int64 offsets: episode ``e`` is rows
            ``episode_start[e]:episode_start[e + 1]``.
        env_id: ``(E,)`` int64 env copy each episode ran in.
        success: ``(E,)`` bool, whether the task's success flag was ever set (False when the
            task has none).
        env_name: registry name.
        distractor: ``(E,)`` bool, whether the distractor policy drove the episode (all False
            when :func:`collect` had none).
        driver: ``(E,)`` int, which of :func:`collect`'s policies drove the episode (index in
            its ``policy`` sequence; the distractor comes after them).
    """

    obs: np.ndarray
    actions: np.ndarray
    reward: np.ndarray
    factors: dict[str, np.ndarray]
    sim_state: np.ndarray | None
    episode_start: np.ndarray
    env_id: np.ndarray
    success: np.ndarray
    env_name: str
    distractor: np.ndarray | None = None
    driver: np.ndarray | None = None

    @property
    def num_episodes(self) -> int:
        """Number of episodes ``E``."""
        return len(self.episode_start) - 1

    @property
    def lengths(self) -> np.ndarray:
        """``(E,)`` episode lengths."""
        return np.diff(self.episode_start)

    def episode_of(self, rows: np.ndarray) -> np.ndarray:
        """Episode index of each global row in ``rows``."""
        return np.searchsorted(self.episode_start, rows, side="right") - 1

    def episode_returns(self) -> np.ndarray:
        """``(E,)`` undiscounted true return of each episode."""
        return np.add.reduceat(self.reward.astype(np.float64), self.episode_start[:-1])


def _scale(action: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return 2.0 * (action - low) / (high - low) - 1.0


def _unscale(action: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return low + (action + 1.0) * 0.5 * (high - low)


def collect(
    env_name: str,
    policy: PolicyFn | Sequence[PolicyFn],
    num_episodes: int,
    noise: float = 0.3,
    num_envs: int = 4,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    keep_sim_state: bool = True,
    distractor: PolicyFn | None = None,
    distractor_fraction: float = 0.0,
) -> Rollouts:
    """Roll out ``policy`` with Gaussian action noise until ``num_episodes`` episodes end.

    The envs run in lock-step and the policy is called once per step on all of them. Noise is
    added in the scaled action space and clipped to [-1, 1] (CPL: ``noise=0.3``).

    With a ``distractor``, each episode is driven by it instead of ``policy`` with probability
    ``distractor_fraction`` (drawn when the episode starts, from a generator of its own, so the
    action noise is the same draw as without one): a mixed-quality dataset, like data pooled
    from several demonstrators of whom some did something else. ``policy`` may also be a
    sequence of policies (e.g. snapshots of one learning agent, for "replay"-style data): each
    episode is driven by one of them, drawn uniformly when it starts.

    Args:
        env_name: a :mod:`pbrl.envs` registry name.
        policy: batched policy on raw observations, returning scaled actions, or several.
        num_episodes: episodes to finish (the envs' unfinished episodes are dropped).
        noise: standard deviation of the Gaussian action noise.
        num_envs: env copies stepped together (seeded ``seed + i``).
        seed: seeds the envs and the noise.
        env_kwargs: passed to :func:`pbrl.envs.make_env` (e.g. ``max_episode_steps``).
        keep_sim_state: store the simulator states (needed to show clips to people).
        distractor: a second batched policy that drives some episodes (see above).
        distractor_fraction: probability, per episode, that the distractor drives it.
    """
    if num_episodes < 1:
        raise DatasetError(f"num_episodes must be >= 1, got {num_episodes}")
    if noise < 0:
        raise DatasetError(f"noise must be >= 0, got {noise}")
    if not 0.0 <= distractor_fraction <= 1.0:
        raise DatasetError(f"distractor_fraction must be in [0, 1], got {distractor_fraction}")
    if distractor_fraction > 0 and distractor is None:
        raise DatasetError(f"distractor_fraction={distractor_fraction} needs a distractor policy")
    kw = dict(env_kwargs or {})
    envs = [pbrl_envs.make_env(env_name, seed=seed + i, **kw) for i in range(num_envs)]
    rng = np.random.default_rng(seed)
    space = envs[0].action_space
    low, high = space.low.astype(np.float64), space.high.astype(np.float64)
    names = tuple(envs[0].factor_names)
    n_reset = num_envs
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]).astype(np.float32)
    drivers = [policy] if callable(policy) else list(policy)
    if not drivers:
        raise DatasetError("collect needs at least one policy")
    n_pol = len(drivers)
    if distractor is not None:
        drivers.append(distractor)
    mix_rng = np.random.default_rng([seed, 2])
    frac = distractor_fraction if distractor is not None else 0.0

    def new_episode() -> dict[str, Any]:
        ep = _new_episode()
        if frac > 0 and mix_rng.random() < frac:
            ep["driver"] = n_pol  # the distractor
        else:
            ep["driver"] = int(mix_rng.integers(n_pol)) if n_pol > 1 else 0
        return ep

    cur: list[dict[str, Any]] = [new_episode() for _ in envs]
    done_eps: list[tuple[int, dict[str, Any]]] = []
    try:
        while len(done_eps) < num_episodes:
            who = np.array([ep["driver"] for ep in cur], np.int64)
            if (who == who[0]).all():  # one policy for every env: one call
                act = np.asarray(drivers[who[0]](obs), np.float64).reshape(num_envs, -1)
            else:
                act = np.empty((num_envs, int(np.prod(space.shape))), np.float64)
                for d in np.unique(who):
                    rows = who == d
                    act[rows] = np.asarray(drivers[d](obs[rows]), np.float64).reshape(
                        int(rows.sum()), -1
                    )
            if noise > 0:
                act = act + noise * rng.standard_normal(act.shape)
            act = np.clip(act, -1.0, 1.0)
            for i, env in enumerate(envs):
                o, r, term, trunc, info = env.step(_unscale(act[i], low, high).astype(space.dtype))
                ep = cur[i]
                ep["obs"].append(obs[i].copy())
                ep["actions"].append(act[i].astype(np.float32))
                ep["reward"].append(float(r))
                ep["factors"].append([float(info["reward_factors"][k]) for k in names])
                if keep_sim_state:
                    ep["sim_state"].append(np.asarray(info["sim_state"], np.float64))
                ep["success"] = ep["success"] or bool(info.get("success", False))
                if term or trunc:
                    done_eps.append((i, ep))
                    cur[i] = new_episode()
                    o, _ = env.reset(seed=seed + n_reset)
                    n_reset += 1
                obs[i] = o
    finally:
        for env in envs:
            env.close()
    done_eps = done_eps[:num_episodes]
    lengths = np.array([len(ep["reward"]) for _, ep in done_eps], np.int64)
    factors = np.concatenate([np.asarray(ep["factors"], np.float32) for _, ep in done_eps])
    return Rollouts(
        obs=np.concatenate([np.asarray(ep["obs"], np.float32) for _, ep in done_eps]),
        actions=np.concatenate([np.asarray(ep["actions"], np.float32) for _, ep in done_eps]),
        reward=np.concatenate([np.asarray(ep["reward"], np.float32) for _, ep in done_eps]),
        factors={k: factors[:, j].copy() for j, k in enumerate(names)},
        sim_state=np.concatenate([np.asarray(ep["sim_state"]) for _, ep in done_eps])
        if keep_sim_state
        else None,
        episode_start=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        env_id=np.array([i for i, _ in done_eps], np.int64),
        success=np.array([ep["success"] for _, ep in done_eps], bool),
        env_name=env_name,
        distractor=np.array([ep["driver"] == n_pol for _, ep in done_eps], bool),
        driver=np.array([ep["driver"] for _, ep in done_eps], np.int64),
    )


def _new_episode() -> dict[str, Any]:
    return {
        "obs": [],
        "actions": [],
        "reward": [],
        "factors": [],
        "sim_state": [],
        "success": False,
    }


# ---------------------------------------------------------------------------------------------
# Policies to roll out
def load_sb3(path: str | Path, device: str = "cpu") -> Any:
    """Load a stable-baselines3 SAC (or, failing that, PPO) checkpoint ``.zip``."""
    from stable_baselines3 import PPO, SAC

    path = Path(path)
    if not path.exists():
        raise DatasetError(
            f"policy checkpoint {path} does not exist; pass an SB3 .zip saved with model.save(), "
            "'sac-oracle' (with oracle_steps > 0) or 'random'"
        )
    errors = []
    for cls in (SAC, PPO):
        try:
            return cls.load(path, device=device)
        except Exception as e:  # noqa: BLE001 - try the next algorithm, report both below
            errors.append(f"{cls.__name__}: {e}")
    raise DatasetError(f"{path} is neither an SB3 SAC nor a PPO checkpoint ({'; '.join(errors)})")


def sb3_policy(model: Any) -> PolicyFn:
    """Deterministic batched policy of an SB3 model, returning scaled actions."""
    space = model.action_space
    low, high = space.low.astype(np.float64), space.high.astype(np.float64)

    def act(obs: np.ndarray) -> np.ndarray:
        a = model.predict(obs, deterministic=True)[0]
        return np.clip(_scale(np.asarray(a, np.float64), low, high), -1.0, 1.0)

    return act


def random_policy(act_dim: int, seed: int) -> PolicyFn:
    """Uniform random actions in [-1, 1]."""
    rng = np.random.default_rng(seed)
    return lambda obs: rng.uniform(-1.0, 1.0, size=(len(obs), act_dim))


def scripted_policy(env_name: str) -> PolicyFn:
    """Meta-World's hand-written expert for a ``mw_*`` task (``metaworld.policies``).

    ``mw_drawer_open`` -> ``SawyerDrawerOpenV3Policy``; it reads the raw 39-dim observation
    that pbrl's Meta-World envs return and answers actions in [-1, 1]. With action noise it
    is a sub-optimal oracle that needs no training (a stand-in for CPL's SAC oracle when none
    can be trained; it has no critic, so ``regret`` labels are not available with it).
    ``env_name`` may also be any Meta-World task id (``"drawer-close-v3"``), for a policy
    that does another task's job in this task's scene (a distractor: :func:`make_dataset`).
    """
    from pbrl.envs.metaworld import TASKS

    if env_name in TASKS:
        env_id = TASKS[env_name].env_id
    elif env_name.endswith("-v3"):
        env_id = env_name
    else:
        raise DatasetError(
            f"policy=scripted exists for the Meta-World tasks {sorted(TASKS)} (or, as a "
            f"distractor, any Meta-World id such as 'drawer-close-v3'), not {env_name!r}; "
            "use policy=random, sac-oracle or an SB3 .zip"
        )
    try:
        import metaworld.policies as mw_policies
    except ImportError as err:
        raise DatasetError(
            f"policy=scripted needs the Meta-World package ({err}); install it as "
            "docs/envs_metaworld.md describes"
        ) from err

    stem = "".join(w.capitalize() for w in env_id.removesuffix("-v3").split("-"))
    cls = getattr(mw_policies, f"Sawyer{stem}V3Policy", None)
    if cls is None:
        raise DatasetError(
            f"metaworld.policies has no scripted policy Sawyer{stem}V3Policy (for {env_id!r})"
        )
    expert = cls()

    def act(obs: np.ndarray) -> np.ndarray:
        return np.stack([np.clip(expert.get_action(o), -1.0, 1.0) for o in np.asarray(obs)])

    return act


def distractor_policy(spec: str, env_name: str, act_dim: int, seed: int, device: str) -> PolicyFn:
    """The distractor of :func:`make_dataset` from its spec (see its ``distractor`` argument)."""
    if spec == "random":
        return random_policy(act_dim, seed + 11)
    if spec.startswith("scripted:"):
        from pbrl.envs.metaworld import TASKS

        if env_name not in TASKS:
            raise DatasetError(
                f"distractor={spec!r} is a Meta-World scripted policy; it reads the "
                f"observations of Meta-World tasks {sorted(TASKS)}, not of {env_name!r}"
            )
        return scripted_policy(spec.removeprefix("scripted:"))
    if spec in ("scripted", "sac-oracle"):
        raise DatasetError(
            f"distractor={spec!r} is not a distractor spec: use 'random', "
            "'scripted:<Meta-World id>' (e.g. 'scripted:drawer-close-v3') or an SB3 .zip"
        )
    return sb3_policy(load_sb3(spec, device))


def train_sac_oracle(
    env_name: str,
    steps: int,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    device: str = "cpu",
    sac_kwargs: dict[str, Any] | None = None,
) -> Any:
    """Train an SB3 SAC oracle on the env's true reward (CPL's ``configs/oracle/sac.yaml``).

    Defaults follow the paper's oracle: lr 3e-4, tau 0.005, initial temperature 0.1, three
    hidden layers of 256, two critics, batch 512 (``sac_kwargs`` overrides them).
    """
    from stable_baselines3 import SAC
    from stable_baselines3.common.vec_env import DummyVecEnv

    if steps < 1:
        raise DatasetError(
            f"policy='sac-oracle' trains a SAC oracle here and needs oracle_steps >= 1, got "
            f"{steps}; or pass the path of a trained SB3 checkpoint as policy"
        )
    kw = dict(env_kwargs or {})
    venv = DummyVecEnv([lambda: pbrl_envs.make_env(env_name, seed=seed, **kw)])
    args: dict[str, Any] = {
        "learning_rate": 3e-4,
        "tau": 0.005,
        "ent_coef": "auto_0.1",
        "batch_size": 512,
        "learning_starts": min(5000, max(1, steps // 10)),
        "policy_kwargs": {"net_arch": [256, 256, 256], "n_critics": 2},
    }
    args.update(sac_kwargs or {})
    model = SAC("MlpPolicy", venv, seed=seed, device=device, verbose=0, **args)
    model.learn(total_timesteps=int(steps), progress_bar=False)
    return model


def train_ppo_snapshots(
    env_name: str,
    steps: int,
    snapshots: int,
    prefix: str | Path,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    device: str = "cpu",
    ppo_kwargs: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Train SB3 PPO on the env's true reward and save ``snapshots`` checkpoints on the way.

    The snapshots are evenly spaced from the untrained policy (step 0) to the last step, so
    rolling them all out gives the mix of qualities a learning agent's data has (D4RL's
    "medium-replay" is a SAC agent's replay buffer up to medium performance; this is the same
    idea with snapshots of a cheap on-policy learner). PPO: SB3's defaults (lr 3e-4, 2 x 64,
    10 epochs of batch 64) on 4 envs x 512 steps per rollout; ``ppo_kwargs`` overrides them.

    Returns:
        The ``.zip`` paths ``<prefix>_<k>.zip``, first (untrained) to last.
    """
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    if steps < 1 or snapshots < 2:
        raise DatasetError(
            f"policy='ppo-snapshots' trains PPO for oracle_steps >= 1 steps and keeps snapshots "
            f">= 2 checkpoints (the untrained one and the last at least); got oracle_steps="
            f"{steps}, snapshots={snapshots}"
        )
    kw = dict(env_kwargs or {})
    venv = DummyVecEnv(
        [lambda i=i: pbrl_envs.make_env(env_name, seed=seed + i, **kw) for i in range(4)]
    )
    args: dict[str, Any] = {"n_steps": 512, "batch_size": 64}
    args.update(ppo_kwargs or {})
    model = PPO("MlpPolicy", venv, seed=seed, device=device, verbose=0, **args)
    paths, done = [], 0
    for k in range(snapshots):
        target = round(steps * k / (snapshots - 1))
        if target > done:
            model.learn(total_timesteps=target - done, reset_num_timesteps=False,
                        progress_bar=False)  # fmt: skip
            done = target
        path = Path(f"{prefix}_{k}.zip")
        model.save(path)
        paths.append(path)
        log(f"PPO snapshot {k} at {model.num_timesteps:,} steps -> {path}")
    venv.close()
    return paths


# ---------------------------------------------------------------------------------------------
# 2. Cut segments
def cut_segments(
    ro: Rollouts, n: int, horizon: int, rng: np.random.Generator
) -> tuple[SegmentBatch, np.ndarray]:
    """Draw ``n`` segments of ``horizon`` steps uniformly over all valid windows.

    A window is valid when it lies inside one episode. Draws are with replacement (CPL
    samples its segments from a replay buffer by timestep).

    Returns:
        The segments (true reward, factors and sim state included; ``start`` is the time index
        in the episode, ``env_id`` the env copy) and ``(n,)`` int64 global row of each
        segment's first step in ``ro``.
    """
    if horizon < 1:
        raise DatasetError(f"segment_size must be >= 1, got {horizon}")
    windows = np.maximum(ro.lengths - horizon + 1, 0)
    total = int(windows.sum())
    if total == 0:
        raise DatasetError(
            f"no episode is at least segment_size={horizon} steps long (longest: "
            f"{int(ro.lengths.max())}); collect longer episodes or shorten segment_size"
        )
    pick = rng.integers(total, size=n)
    cum = np.cumsum(windows)
    ep = np.searchsorted(cum, pick, side="right")
    t0 = pick - (cum[ep] - windows[ep])
    rows = ro.episode_start[ep] + t0  # (n,)
    idx = rows[:, None] + np.arange(horizon)  # (n, H)
    seg = SegmentBatch(
        obs=ro.obs[idx],
        actions=ro.actions[idx],
        true_reward=ro.reward[idx],
        reward_factors={k: v[idx] for k, v in ro.factors.items()},
        sim_state=None if ro.sim_state is None else ro.sim_state[idx],
        env_id=ro.env_id[ep],
        start=t0.astype(np.int64),
        env_name=ro.env_name,
    )
    return seg, rows.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# 3. Scores
@torch.no_grad()
def critic_values(model: Any, obs: np.ndarray, samples: int = 64, batch: int = 4096) -> np.ndarray:
    """``V(s) = mean_{a ~ pi(s)} mean_e Q_e(s, a)`` of an SB3 SAC model, ``(N,)`` for ``(N, D_o)``.

    As in CPL's ``add_pref_labels.py``: ``samples`` actions per state from the oracle policy,
    the critic ensemble averaged (not minimised).
    """
    if not hasattr(model, "critic"):
        raise DatasetError(
            "regret labels need a SAC oracle with a critic; the given checkpoint has none "
            "(PPO?). Pass critic=<SB3 SAC .zip> or policy=sac-oracle"
        )
    policy = model.policy
    policy.set_training_mode(False)
    out = np.empty(len(obs), np.float64)
    step = max(1, batch // samples)
    for s in range(0, len(obs), step):
        o = torch.as_tensor(obs[s : s + step], dtype=torch.float32, device=model.device)
        rep = o.repeat_interleave(samples, dim=0)
        a = policy.actor(rep, deterministic=False)
        q = torch.cat(policy.critic(rep, a), dim=1).mean(dim=1)  # (B * M,)
        out[s : s + len(o)] = q.view(len(o), samples).mean(dim=1).double().cpu().numpy()
    return out


def regret_scores(
    seg: SegmentBatch, model: Any, samples: int = 64, batch: int = 4096
) -> np.ndarray:
    """CPL's ``rl_sum``: ``sum_{t<H-1} r_t + V(s_{H-1}) - V(s_0)`` per segment, ``(N,)``."""
    assert seg.true_reward is not None
    ends = np.concatenate([seg.obs[:, 0], seg.obs[:, -1]])
    v = critic_values(model, ends, samples, batch)
    n = len(seg)
    return seg.true_reward[:, :-1].astype(np.float64).sum(axis=1) + v[n:] - v[:n]


def future_return_scores(ro: Rollouts, rows: np.ndarray, foresee: int = 200) -> np.ndarray:
    """OPPO's scripted score: ``sum r[start : start + foresee]`` within the episode, ``(N,)``."""
    if foresee < 1:
        raise DatasetError(f"foresee must be >= 1, got {foresee}")
    csum = np.concatenate([[0.0], np.cumsum(ro.reward.astype(np.float64))])
    ep = ro.episode_of(rows)
    end = np.minimum(rows + foresee, ro.episode_start[ep + 1])
    return csum[end] - csum[rows]


def expert_logprob_scores(seg: SegmentBatch, policy: PolicyFn, batch: int = 4096) -> np.ndarray:
    """``sum_t -||mu*(s_t) - a_t||^2`` per segment, ``(N,)``.

    ``mu*`` is the rollout policy's noiseless action (scaled, in [-1, 1]), ``a_t`` the executed
    one; see ``expert_logprob`` in the module docstring.
    """
    n, h = seg.actions.shape[:2]
    obs = seg.obs.reshape(n * h, -1)
    mu = np.concatenate(
        [np.asarray(policy(obs[i : i + batch]), np.float64) for i in range(0, len(obs), batch)]
    )
    err = mu.reshape(seg.actions.shape) - seg.actions.astype(np.float64)
    return -np.square(err).sum(axis=(1, 2))


def score_labels(score_first: np.ndarray, score_second: np.ndarray) -> np.ndarray:
    """Hard labels from scores: ``Label.SECOND`` when the second scores higher, EQUAL on ties."""
    return np.where(
        score_second > score_first,
        int(Label.SECOND),
        np.where(score_second < score_first, int(Label.FIRST), int(Label.EQUAL)),
    )


# ---------------------------------------------------------------------------------------------
# 4. Label and write
def label_dataset(
    seg: SegmentBatch,
    sources: Sequence[str],
    scores: dict[str, np.ndarray],
    mode: str = "pairs",
    seed: int = 0,
    teacher_kwargs: dict[str, Any] | None = None,
) -> tuple[QueryBatch, list[Feedback]]:
    """Queries and labels of every source, ready for a :class:`~pbrl.store.FeedbackStore`.

    Args:
        seg: ``N`` segments (with the true reward, for scripted teachers).
        sources: label sources (:data:`LABEL_SOURCES`); each answers as its own teacher.
        scores: ``(N,)`` per-segment score of every score-based source in ``sources``.
        mode: ``"pairs"`` (``N // 2`` disjoint pairs ``i`` vs ``i + N // 2``) or ``"rank"`` (one
            ranking of all ``N`` segments, score-based sources only).
        seed: seed of the scripted teachers.
        teacher_kwargs: extra :class:`~pbrl.teachers.ScriptedTeacher` arguments.
    """
    if mode not in MODES:
        raise DatasetError(f"unknown mode {mode!r}; valid: {list(MODES)}")
    if not sources:
        raise DatasetError(f"give at least one label source; valid: {list(LABEL_SOURCES)}")
    bad = [s for s in sources if s not in LABEL_SOURCES]
    if bad:
        raise DatasetError(f"unknown label source(s) {bad}; valid: {list(LABEL_SOURCES)}")
    if len(set(sources)) != len(sources):
        raise DatasetError(f"label sources repeat: {list(sources)}")
    now = time.time()
    if mode == "rank":
        scripted = [s for s in sources if s not in SCORE_SOURCES]
        if scripted:
            raise DatasetError(
                f"mode=rank needs per-segment scores, but {scripted} are pairwise B-Pref "
                f"teachers; use sources from {list(SCORE_SOURCES)} or mode=pairs"
            )
        if len(seg) < 2:
            raise DatasetError("mode=rank needs at least 2 segments")
        qb = QueryBatch(segments=seg, k=len(seg), kind="ranking", selector="uniform")
        fbs = []
        for src in sources:
            # Best first; a stable sort of -score breaks exact ties by segment index.
            tied = len(scores[src]) - len(np.unique(scores[src]))
            if tied:
                warnings.warn(
                    f"{tied} of {len(seg)} segments tie on an earlier segment's {src!r} score; a "
                    "ranking has no tied places, so those ties are broken by segment index and "
                    "learners read them as preferences. Use mode=pairs for 0.5 labels on ties",
                    stacklevel=2,
                )
            order = np.argsort(-scores[src], kind="stable")
            fbs.append(
                Feedback(qb.ids[0], Label.FIRST, src, ranking=tuple(order.tolist()), timestamp=now)
            )
        return qb, fbs
    m = len(seg) // 2
    if m < 1:
        raise DatasetError("mode=pairs needs at least 2 segments")
    qb = QueryBatch.from_members([seg[np.arange(m)], seg[np.arange(m, 2 * m)]])
    fbs = []
    for src in sources:
        if src in SCORE_SOURCES:
            s = scores[src]
            labels = score_labels(s[:m], s[m : 2 * m])
            fbs += [
                Feedback(qid, Label(int(lab)), src, timestamp=now)
                for qid, lab in zip(qb.ids, labels, strict=True)
            ]
        else:
            teacher = make_teacher(src, seed=seed, **dict(teacher_kwargs or {}))
            fbs += teacher.label(qb)
    return qb, fbs


def write_dataset(
    path: str | Path, qb: QueryBatch, feedback: Sequence[Feedback], meta: dict[str, Any]
) -> int:
    """Write queries and labels to the dataset file ``path`` (and ``meta`` to ``<path>.json``).

    Goes through a temporary :class:`~pbrl.store.FeedbackStore` and its ``export``, so the file
    is exactly the core's format (``docs/dataset_format.md``). Returns the rows written.
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, FeedbackStore(Path(tmp) / "s.sqlite") as store:
        store.add_queries(qb)
        store.add(list(feedback))
        rows = store.export(path)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, default=str))
    return rows


@dataclass
class MakeResult:
    """What :func:`make_dataset` wrote and measured."""

    path: Path
    rows: int
    segments: int
    episodes: int
    mean_episode_return: float
    success_rate: float
    label_counts: dict[str, dict[str, int]]


def make_dataset(
    env: str,
    out: str | Path,
    policy: str | Sequence[str] = "random",
    labels: Sequence[str] = ("regret",),
    mode: str = "pairs",
    episodes: int = 100,
    segments: int = 1000,
    segment_size: int = 64,
    noise: float = 0.3,
    num_envs: int = 4,
    seed: int = 0,
    critic: str | None = None,
    oracle_steps: int = 0,
    value_samples: int = 64,
    foresee: int = 200,
    keep_sim_state: bool = True,
    env_kwargs: dict[str, Any] | None = None,
    teacher_kwargs: dict[str, Any] | None = None,
    device: str = "cpu",
    log: Callable[[str], None] = print,
    distractor: str | None = None,
    distractor_fraction: float = 0.5,
    snapshots: int = 5,
) -> MakeResult:
    """Roll out, cut, label and write one dataset (what ``pbrl-dataset make`` runs).

    Args:
        env: registry name of the environment.
        out: dataset file to write (``.npz``).
        policy: ``"random"``, ``"scripted"`` (Meta-World's hand-written expert, ``mw_*`` tasks),
            ``"sac-oracle"`` (trains SB3 SAC on the true reward for ``oracle_steps`` steps
            first, saved next to ``out``), the path of an SB3 ``.zip``, or a list of SB3
            ``.zip`` paths (e.g. snapshots of one training run: each episode is driven by one,
            drawn uniformly; "medium-replay"-style data of a learning agent; the ``.json``
            records each one's episodes and mean return), or ``"ppo-snapshots"`` (trains SB3
            PPO for ``oracle_steps`` steps and rolls out ``snapshots`` checkpoints of it, saved
            as ``<out>_ppo_<k>.zip``: :func:`train_ppo_snapshots`).
        labels: label sources (:data:`LABEL_SOURCES`).
        mode: ``"pairs"`` or ``"rank"`` (see the module docstring).
        episodes: rollout episodes (CPL: 2500).
        segments: segments to cut (CPL: 2500 dense, 20000 sparse).
        segment_size: ``H`` (CPL 64; OPPO's windows: 20).
        noise: Gaussian action noise std (CPL 0.3).
        num_envs: env copies stepped in lock-step.
        seed: seeds envs, noise, segment draws and scripted teachers.
        critic: SB3 SAC ``.zip`` whose critic scores ``regret`` labels (default: the rollout
            policy when it is a SAC).
        oracle_steps: SAC training steps for ``policy="sac-oracle"``.
        value_samples: actions per state for ``V(s)`` in ``regret`` labels (CPL 64).
        foresee: look-ahead of ``future_return`` labels (OPPO 200).
        keep_sim_state: keep simulator states (lets people re-watch and label the segments).
        env_kwargs: :func:`pbrl.envs.make_env` arguments.
        teacher_kwargs: extra scripted-teacher arguments.
        device: torch device of the SB3 models.
        log: progress printer.
        distractor: a second policy that drives a ``distractor_fraction`` share of the
            episodes instead of ``policy`` (mixed-quality data: some demonstrators did another
            thing): ``"random"``, ``"scripted:<Meta-World id>"`` (e.g.
            ``"scripted:drawer-close-v3"``: another task's expert in this task's scene), or an
            SB3 ``.zip``. ``expert_logprob`` labels still score against ``policy``; the
            dataset's ``.json`` records which episodes and segments the distractor made.
        distractor_fraction: probability, per episode, that the distractor drives it.
        snapshots: checkpoints kept by ``policy="ppo-snapshots"`` (>= 2).
    """
    t0 = time.perf_counter()
    probe = pbrl_envs.make_env(env, seed=seed, **dict(env_kwargs or {}))
    act_dim = int(np.prod(probe.action_space.shape))
    probe.close()
    out = Path(out)
    model = None
    fn: PolicyFn | list[PolicyFn]
    if "expert_logprob" in labels and (not isinstance(policy, str) or policy == "ppo-snapshots"):
        raise DatasetError(
            "expert_logprob labels score against one policy's noiseless action; with a policy "
            "list or ppo-snapshots, use return, future_return, regret (critic=) or a B-Pref "
            "teacher"
        )
    if not isinstance(policy, str):  # several SB3 snapshots: "replay"-style data
        policy = [str(x) for x in policy]
        if not policy:
            raise DatasetError("policy is an empty list; give one policy or several SB3 .zip")
        bad = [x for x in policy if x in ("random", "scripted", "sac-oracle", "ppo-snapshots")]
        if bad:
            raise DatasetError(
                f"a policy list holds SB3 .zip checkpoints (e.g. snapshots of one training run), "
                f"not {bad}"
            )
        fn = [sb3_policy(load_sb3(x, device)) for x in policy]
        log(f"rolling out {len(fn)} policies, one drawn per episode")
    elif policy == "ppo-snapshots":
        log(f"training PPO on {env}'s true reward for {oracle_steps:,} steps ({snapshots} "
            "snapshots)")  # fmt: skip
        snaps = train_ppo_snapshots(env, oracle_steps, snapshots, out.with_name(out.stem + "_ppo"),
                                    seed, env_kwargs, device, log=log)  # fmt: skip
        fn = [sb3_policy(load_sb3(x, device)) for x in snaps]
    elif policy == "random":
        fn = random_policy(act_dim, seed + 7)
    elif policy == "scripted":
        fn = scripted_policy(env)
    elif policy == "sac-oracle":
        log(f"training a SAC oracle on {env}'s true reward for {oracle_steps:,} steps")
        model = train_sac_oracle(env, oracle_steps, seed, env_kwargs, device)
        oracle_path = out.with_name(out.stem + "_oracle.zip")
        model.save(oracle_path)
        log(f"oracle saved to {oracle_path}")
        fn = sb3_policy(model)
    else:
        model = load_sb3(policy, device)
        fn = sb3_policy(model)
    critic_model = load_sb3(critic, device) if critic else model
    d_fn = None if distractor is None else distractor_policy(distractor, env, act_dim, seed, device)
    if d_fn is not None and not 0.0 < distractor_fraction <= 1.0:
        raise DatasetError(
            f"distractor_fraction must be in (0, 1] when a distractor is given, got "
            f"{distractor_fraction}; drop distractor= for data from the policy alone"
        )
    if "expert_logprob" in labels and policy == "random":
        raise DatasetError(
            "expert_logprob labels score actions against the rollout policy's own noiseless "
            "action, which uniform random actions do not have; use policy=scripted (Meta-World), "
            "sac-oracle or an SB3 .zip"
        )
    if "regret" in labels and (critic_model is None or not hasattr(critic_model, "critic")):
        raise DatasetError(
            "regret labels need an oracle SAC critic: pass critic=<SB3 SAC .zip>, or "
            "policy=<SAC .zip> / policy=sac-oracle"
        )

    ro = collect(
        env, fn, episodes, noise, num_envs, seed, env_kwargs, keep_sim_state,
        distractor=d_fn, distractor_fraction=distractor_fraction if d_fn is not None else 0.0,
    )  # fmt: skip
    rets = ro.episode_returns()
    log(
        f"collected {ro.num_episodes} episodes, {len(ro.reward):,} steps, mean return "
        f"{rets.mean():.2f}, success {ro.success.mean():.2f}"
    )
    rng = np.random.default_rng(seed + 1)
    seg, rows = cut_segments(ro, segments, segment_size, rng)
    mix: dict[str, Any] = {}
    if isinstance(fn, list):
        assert ro.driver is not None
        mix["policy_episodes"] = [int((ro.driver == k).sum()) for k in range(len(fn))]
        mix["policy_mean_return"] = [
            float(rets[ro.driver == k].mean()) if (ro.driver == k).any() else None
            for k in range(len(fn))
        ]
        log("mean return per policy: " + ", ".join(
            "-" if r is None else f"{r:.1f}" for r in mix["policy_mean_return"]))  # fmt: skip
    if d_fn is not None:
        assert ro.distractor is not None
        seg_d = ro.distractor[ro.episode_of(rows)]
        d, p = ro.distractor, ~ro.distractor
        mix |= {
            "distractor": distractor,
            "distractor_fraction": distractor_fraction,
            "distractor_episodes": int(d.sum()),
            "success_rate_policy": float(ro.success[p].mean()) if p.any() else None,
            "success_rate_distractor": float(ro.success[d].mean()) if d.any() else None,
            "distractor_segments": [int(i) for i in np.flatnonzero(seg_d)],
        }
        log(
            f"{int(d.sum())} of {ro.num_episodes} episodes by the distractor {distractor!r} "
            f"(success {mix['success_rate_distractor']}), {int(seg_d.sum())} of {len(seg)} "
            f"segments"
        )
    scores: dict[str, np.ndarray] = {}
    if "regret" in labels:
        scores["regret"] = regret_scores(seg, critic_model, value_samples)
    if "return" in labels:
        scores["return"] = seg.true_reward.astype(np.float64).sum(axis=1)  # type: ignore[union-attr]
    if "future_return" in labels:
        scores["future_return"] = future_return_scores(ro, rows, foresee)
    if "expert_logprob" in labels:
        assert callable(fn)  # a policy list was refused above
        scores["expert_logprob"] = expert_logprob_scores(seg, fn)
    qb, fbs = label_dataset(seg, labels, scores, mode, seed, teacher_kwargs)
    counts: dict[str, dict[str, int]] = {}
    for f in fbs:
        c = counts.setdefault(f.teacher_id, {})
        c[f.label.name.lower()] = c.get(f.label.name.lower(), 0) + 1
    meta = {
        "pbrl_version": PBRL_VERSION,
        "env": env,
        "env_kwargs": dict(env_kwargs or {}),
        "policy": policy,
        "critic": critic,
        "oracle_steps": oracle_steps,
        **({"snapshots": snapshots} if policy == "ppo-snapshots" else {}),
        "labels": list(labels),
        "mode": mode,
        "episodes": ro.num_episodes,
        "steps": int(len(ro.reward)),
        "segments": segments,
        "segment_size": segment_size,
        "noise": noise,
        "seed": seed,
        "value_samples": value_samples,
        "foresee": foresee,
        "mean_episode_return": float(rets.mean()),
        "success_rate": float(ro.success.mean()),
        "label_counts": counts,
        "created": time.time(),
        **mix,
        # each score label's per-segment score, in segment order (pairs: i vs i + N/2)
        "segment_scores": {k: [float(x) for x in v] for k, v in scores.items()},
    }
    n_rows = write_dataset(out, qb, fbs, meta)
    path = out if out.suffix == ".npz" else out.with_name(out.name + ".npz")
    log(f"wrote {path} ({n_rows} rows, {len(seg)} segments) in {time.perf_counter() - t0:.1f}s")
    return MakeResult(
        path=path,
        rows=n_rows,
        segments=len(seg),
        episodes=ro.num_episodes,
        mean_episode_return=float(rets.mean()),
        success_rate=float(ro.success.mean()) if math.isfinite(ro.success.mean()) else 0.0,
        label_counts=counts,
    )
