"""SAC or PPO on RAPL's visual reward: episode-level OT rewards written back into storage.

RAPL (Tian et al., ICLR 2024) rewards a rollout by optimal transport between its embedded
frames and an expert demonstration's, in the space of a frame encoder aligned on preference
triplets (:mod:`pbrl.rewards.rapl`). The transport plan is global, so the reward of step ``t``
depends on the whole episode and is known only when the episode ends. The paper runs PPO and
writes the rewards into the rollout storage before GAE; here SAC does the same with its
replay buffer:

1. **Collect**: each env step is stored at once (observation, action, the simulator state),
   its reward unknown (``NaN``) and the row marked *pending*;
2. **Relabel**: when the episode ends, its frames are rendered from the stored simulator
   states at the encoder's resolution, embedded in one batch, matched to the expert demos by
   batched Sinkhorn, and the per-step OT rewards are written into the episode's rows, which
   become *ready*;
3. **Learn**: SAC samples only ready rows (:class:`EpisodicRewardBuffer.sample`), so it never
   learns from a step whose reward is not yet known; learning starts once
   ``learning_starts`` steps (at least one whole episode) are stored.

**PPO** (``agent.algo=ppo``, the paper's learner; settings ``agent.ppo.*``) gets the same
rewards in its rollout storage before GAE (:class:`EpisodicRolloutRelabel`, an SB3 callback):
SB3 fills the rollout with the env's rewards and computes GAE; at the rollout's end the
callback renders and scores every episode that ended in it (one batch, the same
:class:`EpisodeReward`), overwrites those steps' rewards, keeping the
``gamma * V(s_T)`` SB3 adds at time-limit truncations, and recomputes returns and
advantages with the same last values. An episode still running when the rollout ends is
rewarded on the part played so far (its frames up to the env's current state); when it ends
in a later rollout, that rollout's steps get the whole episode's rewards. The default
``n_steps`` is a multiple of the episode length, so with fixed-length episodes (X-Magical
only truncates) no episode is cut; ``rapl/partial_episode_steps`` counts the steps that were.

Which frame rewards step ``t``: the frame *after* the action, ``o_{t+1}`` (rendered from the
next step's pre-step state, or from the final state for the last step), so ``r_t`` scores
the consequence of ``a_t``; the demo's frames are its post-step states too.

:func:`train_on_rapl_reward` runs one experiment: it loads an aligned encoder (or aligns one
first on triplets of rollouts ranked by
:class:`~pbrl.teachers.visual.VisualCriterionTeacher`, or by people on the labelling page with
``align.teacher=human``, :mod:`pbrl.visual.human`), makes the expert demos with the
suite's scripted policy (:func:`scripted_policy`) or loads them, trains SAC (or PPO) and logs
``eval/true_return``, ``eval/success_rate``, ``eval/rapl_return``, ``train/...`` and the
reward's cost per episode (``rapl/render_ms``, ``rapl/embed_ms``, ``rapl/ot_ms``) to
TensorBoard. ``reward="true_reward"`` trains on the env's own reward (the baseline);
``encoder.aligned=false`` rewards with the frozen pretrained backbone's features (the paper's
ImNet-OT baseline); ``reward="rlhf"`` is the paper's RLHF baseline, a per-frame reward learned
with Bradley-Terry on the same videos and triplet queries (:mod:`pbrl.visual.rlhf`,
:func:`learn_rlhf_reward`), relabelled the same way (its tags are ``rlhf/...``,
``eval/rlhf_return``, ``train/rlhf_return``). The command line is
``python -m pbrl.visual.train``.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize
from torch.utils.tensorboard import SummaryWriter

from pbrl import envs as pbrl_envs
from pbrl.agents.sb3 import (
    PbrlPPO,
    PbrlSAC,
    load_sb3_state,
    make_logger,
    make_vec_env,
    sb3_state,
)
from pbrl.buffer import PbrlReplayBuffer
from pbrl.checkpoint import Checkpointed
from pbrl.data import QueryBatch, SegmentBatch
from pbrl.envs.base import PbrlEnv, find_wrapper
from pbrl.rewards.ot import CostName, Transform, ot_rewards
from pbrl.rewards.rapl import RAPLReward, triplets_from_feedback
from pbrl.teachers.base import Teacher
from pbrl.teachers.visual import VisualCriterionTeacher
from pbrl.visual.encoders import FrameEncoder
from pbrl.visual.human import cfg_get as _cfg_get
from pbrl.visual.rlhf import RLHFReward

EpisodeRewardFn = Callable[[Sequence[np.ndarray]], list[np.ndarray]]
"""``[states (T_i, D_s)]`` (post-step states of finished episodes) -> ``[(T_i,) rewards]``."""

FINAL_STATE = "final_sim_state"
"""Info key of the simulator state after an episode's last step (:class:`FinalSimState`)."""


REWARD_KINDS: tuple[str, ...] = ("rapl", "rlhf", "true_reward")
"""``reward=``: RAPL's OT reward, the RLHF baseline's Bradley-Terry reward, the env's own."""

ALGOS: tuple[str, ...] = ("sac", "ppo")
"""``agent.algo=``: SAC (rewards written into the replay buffer) or PPO (into the rollout)."""


class RaplRunError(RuntimeError):
    """A RAPL run cannot go on as configured; the message says why and what to change."""


# ----------------------------------------------------------------------------------------
# environments and expert demonstrations
class FinalSimState(gym.Wrapper):
    """Adds ``info["final_sim_state"]``, the state after the last step, when an episode ends.

    Every step's info carries the state *before* the step (the :class:`PbrlEnv` contract), so
    the state after step ``t`` is the next step's ``info["sim_state"]``; only the last one is
    missing, and the vector env resets right after it.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        pbrl = find_wrapper(env, PbrlEnv)
        if pbrl is None:
            raise TypeError(
                f"FinalSimState wraps a pbrl env (pbrl.envs.make_env), got {type(env).__name__}"
            )
        self._pbrl: PbrlEnv = pbrl

    def step(self, action):  # type: ignore[no-untyped-def,override]
        """Step; on the episode's last step add the post-step simulator state."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            info[FINAL_STATE] = np.array(self._pbrl.live_sim_state(), np.float64)
        return obs, reward, terminated, truncated, info

    def render_state(self, state: np.ndarray, width: int = 84, height: int = 84) -> np.ndarray:
        """See :meth:`PbrlEnv.render_state`."""
        return self._pbrl.render_state(state, width, height)


def _wrap_angle(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


class XMagicalSweeper:
    """Scripted SweepToTop expert for the stick embodiments (and the gripper, fingers open).

    It sweeps the debris up in passes: each pass takes the debris that fit under the stick
    together (sorted by x), drives to a point below them, pushes straight up until they
    reach the goal band, then backs down and moves on. With the long stick one pass takes
    all three. Reads the state observation (robot x, y; debris x, y; cos and sin heading).
    """

    def __init__(self, env_name: str):
        from pbrl.envs._xmagical import scene as sc
        from pbrl.envs.xmagical import TASKS

        if env_name not in TASKS:
            raise KeyError(f"{env_name!r} is not an X-Magical SweepToTop env: {sorted(TASKS)}")
        emb = sc.EMBODIMENTS[TASKS[env_name]]
        self.gripper = emb.gripper
        width = emb.length * sc.ROBOT_RAD if not emb.gripper else 2.0 * sc.ROBOT_RAD
        self.reach = max(width - sc.SQUARE_SIDE, 0.0)  # x span of debris one pass can take
        self.x_max = max(sc.ARENA_HALF - width / 2, 0.0)  # keep the stick inside the walls
        # A stick too long to turn near the debris (long stick) starts pushing at once.
        self.turn_free = width < 1.0
        self.speed = sc.SPEED_LIMIT
        self._phase = "approach"
        self._group: list[int] = []
        self._done: set[int] = set()

    def reset(self) -> None:
        """Forget the passes of the previous episode."""
        self._phase, self._group, self._done = "approach", [], set()

    def _steer(self, heading: float, rx: float, ry: float, px: float, py: float) -> np.ndarray:
        dx, dy = px - rx, py - ry
        want = math.atan2(-dx, dy)  # heading 0 faces +y; forward is (-sin a, cos a)
        err = _wrap_angle(want - heading)
        speed = self.speed * max(math.cos(err), 0.0) * min(1.0, math.hypot(dx, dy) / 0.15 + 0.3)
        return np.array([speed, float(np.clip(err, -1.5, 1.5))])

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """Action for one state observation."""
        rx, ry = float(obs[0]), float(obs[1])
        debris = np.asarray(obs[2:8], np.float64).reshape(3, 2)
        heading = math.atan2(float(obs[9]), float(obs[8]))
        todo = [i for i in np.argsort(debris[:, 0]) if debris[i, 1] < 0.9 and i not in self._done]
        if not self._group or self._phase == "next":
            if not todo:
                act = np.array([0.0, float(np.clip(_wrap_angle(-heading), -1.5, 1.5))])
                return self._out(act)
            first = debris[todo[0], 0]
            self._group = [int(i) for i in todo if debris[i, 0] - first <= self.reach]
            self._phase = "approach" if self.turn_free else "push"
        g = debris[self._group]
        cx = float(np.clip((g[:, 0].min() + g[:, 0].max()) / 2, -self.x_max, self.x_max))
        low = float(g[:, 1].min())
        if self._phase == "approach":
            target = (cx, low - 0.4)
            if math.hypot(rx - target[0], ry - target[1]) < 0.1:
                self._phase = "push"
            else:
                return self._out(self._steer(heading, rx, ry, *target))
        if self._phase == "push":
            if (g[:, 1] > 0.95).all() or ry > 0.75:
                self._done.update(self._group)
                self._phase = "back"
            else:
                ahead = 0.5 if self.turn_free else 2.0  # gentle steering for a long stick
                return self._out(self._steer(heading, rx, ry, cx, ry + ahead))
        # back: reverse down, heading up, below the remaining debris row
        rest = [i for i in todo if i not in self._done]
        floor = float(debris[rest, 1].min()) - 0.4 if rest else -0.5
        if ry <= floor or not rest:
            self._phase = "next"
            self._group = []
            return self._out(np.zeros(2))
        return self._out(np.array([-self.speed, float(np.clip(_wrap_angle(-heading), -1.5, 1.5))]))

    def _out(self, act: np.ndarray) -> np.ndarray:
        return np.append(act, 0.0) if self.gripper else act


class FrankaReacher:
    """Scripted ``franka_reach`` expert: move the grip point straight to the goal."""

    def __init__(self, env_name: str):
        if env_name != "franka_reach":
            raise KeyError(f"FrankaReacher is for franka_reach, got {env_name!r}")
        from pbrl.envs.franka import EE_STEP

        self.step = float(EE_STEP)

    def reset(self) -> None:
        """Nothing to forget."""

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """Action for one state observation (the goal relative to the grip is its last 3)."""
        move = np.clip(np.asarray(obs[-3:], np.float64) / self.step, -1.0, 1.0)
        return np.append(move, -1.0)


def scripted_policy(env_name: str) -> XMagicalSweeper | FrankaReacher:
    """The suite's scripted expert for ``env_name`` (X-Magical SweepToTop, ``franka_reach``).

    Raises:
        RaplRunError: no scripted expert exists; the message says to give demos by path.
    """
    if env_name.startswith("xmagical_sweep_"):
        return XMagicalSweeper(env_name)
    if env_name == "franka_reach":
        return FrankaReacher(env_name)
    raise RaplRunError(
        f"no scripted expert for {env_name!r} (there are: xmagical_sweep_*, franka_reach); give "
        "demo.path=<.npz with sim_state (K, T, D_s) or frames (K, T, H, W, 3)>"
    )


@dataclass
class Rollouts:
    """Episodes of one env: ``(N, T)`` arrays plus post-step simulator states.

    Attributes:
        post_states: ``(N, T, D_s)`` state after each step (what step ``t``'s frame shows).
        pre_states: ``(N, T, D_s)`` state before each step (``SegmentBatch.sim_state``).
        true_reward: ``(N, T)`` env reward.
        success: ``(N,)`` success at any step.
        factors: name -> ``(N, T)`` reward factors.
    """

    post_states: np.ndarray
    pre_states: np.ndarray
    true_reward: np.ndarray
    success: np.ndarray
    factors: dict[str, np.ndarray] = field(default_factory=dict)

    def segments(self, env_name: str) -> SegmentBatch:
        """The episodes as a :class:`SegmentBatch` (states after each step; no observations).

        The teacher's criteria read the *final* state, so the post-step states are given as
        ``sim_state`` (the state after the last action is then the segment's last).
        """
        n, t = self.true_reward.shape
        z = np.zeros((n, t, 1), np.float32)
        return SegmentBatch(
            z,
            z,
            self.true_reward.astype(np.float32),
            reward_factors={k: v.astype(np.float32) for k, v in self.factors.items()},
            sim_state=self.post_states,
            env_name=env_name,
        )


def collect_rollouts(
    env_name: str,
    n: int,
    seed: int,
    policy: Callable[[np.ndarray], np.ndarray] | None = None,
    random_prob: float | Sequence[float] = 1.0,
    hold: int = 8,
    env_kwargs: Mapping[str, Any] | None = None,
) -> Rollouts:
    """``n`` episodes mixing a policy with held random actions.

    Every ``hold`` steps a new random action is drawn (uniform over the action space); with
    probability ``random_prob`` (per episode, or one value for all) the random action is taken
    for those steps, else ``policy``'s. ``policy=None`` is pure random play.
    """
    env = pbrl_envs.make_env(env_name, seed=seed, **dict(env_kwargs or {}))
    rng = np.random.default_rng(seed)
    probs = np.broadcast_to(np.asarray(random_prob, np.float64), (n,))
    low, high = env.action_space.low, env.action_space.high
    post, pre, rew, succ = [], [], [], []
    factors: dict[str, list[np.ndarray]] = {}
    for ep in range(n):
        obs, info = env.reset(seed=seed * 100_003 + ep)
        if policy is not None and hasattr(policy, "reset"):
            policy.reset()
        s_pre, r_ep, f_ep, ok = [], [], [], False
        use_random, a_rand = True, env.action_space.sample()
        done = False
        t = 0
        while not done:
            if t % hold == 0:
                use_random = policy is None or rng.random() < probs[ep]
                a_rand = rng.uniform(low, high).astype(np.float32)
            act = a_rand if use_random else np.asarray(policy(obs), np.float32)  # type: ignore[misc]
            obs, r, term, trunc, info = env.step(np.clip(act, low, high))
            s_pre.append(info["sim_state"])
            r_ep.append(r)
            f_ep.append(info["reward_factors"])
            ok |= bool(info.get("success", False))
            done = term or trunc
            t += 1
        states = np.asarray(s_pre, np.float64)
        final = np.asarray(env.live_sim_state(), np.float64)
        pre.append(states)
        post.append(np.concatenate([states[1:], final[None]]))
        rew.append(np.asarray(r_ep, np.float64))
        succ.append(ok)
        for k in f_ep[0]:
            factors.setdefault(k, []).append(np.array([f[k] for f in f_ep], np.float64))
    env.close()
    lengths = {len(r) for r in rew}
    if len(lengths) != 1:
        raise RaplRunError(
            f"{env_name} episodes ended after {sorted(lengths)} steps; rollouts for alignment "
            "and demos need one length (use an env whose episodes only truncate)"
        )
    return Rollouts(
        np.stack(post),
        np.stack(pre),
        np.stack(rew),
        np.asarray(succ),
        {k: np.stack(v) for k, v in factors.items()},
    )


def make_demos(
    env_name: str, n: int, seed: int, env_kwargs: Mapping[str, Any] | None = None
) -> Rollouts:
    """The best ``n`` of ``4 n`` episodes of the scripted expert (:func:`scripted_policy`).

    Episodes are ranked by success, then true return: the expert is not perfect (e.g. a long
    stick cannot take debris in the two outer columns in one pass), and a demo should show
    the task done.
    """
    rolls = collect_rollouts(
        env_name, 4 * n, seed, scripted_policy(env_name), random_prob=0.0, env_kwargs=env_kwargs
    )
    order = np.lexsort((-rolls.true_reward.sum(1), ~rolls.success))[:n]
    return Rollouts(
        rolls.post_states[order],
        rolls.pre_states[order],
        rolls.true_reward[order],
        rolls.success[order],
        {k: v[order] for k, v in rolls.factors.items()},
    )


def save_demos(path: str | Path, demos: Rollouts) -> None:
    """Write demos as ``.npz``: ``sim_state (K, T, D_s)`` post-step states, ``true_reward``."""
    np.savez_compressed(
        path, sim_state=demos.post_states, true_reward=demos.true_reward, success=demos.success
    )


def load_demo_frames(path: str | Path, env: Any, size: int) -> np.ndarray:
    """``(K, T, size, size, 3)`` uint8 demo frames from ``path`` (``.npz``).

    The file holds ``sim_state (K, T, D_s)`` (states after each step, rendered here with
    ``env``) or ``frames (K, T, H, W, 3)`` uint8 (resized by the encoder).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"demo file {path} does not exist")
    with np.load(path) as data:
        if "frames" in data:
            frames = np.asarray(data["frames"])
            if frames.ndim == 4:
                frames = frames[None]
            if frames.ndim != 5 or frames.dtype != np.uint8:
                raise ValueError(
                    f"{path}: frames must be (K, T, H, W, 3) uint8, not {frames.shape}"
                )
            return frames
        if "sim_state" in data:
            return render_states(env, np.asarray(data["sim_state"], np.float64), size)
    raise KeyError(f"{path} holds neither 'sim_state' (K, T, D_s) nor 'frames' (K, T, H, W, 3)")


def render_states(env: Any, states: np.ndarray, size: int) -> np.ndarray:
    """``(..., size, size, 3)`` uint8 frames of ``(..., D_s)`` simulator states."""
    flat = states.reshape(-1, states.shape[-1])
    out = np.empty((len(flat), size, size, 3), np.uint8)
    for i, s in enumerate(flat):
        out[i] = env.render_state(s, width=size, height=size)
    return out.reshape(*states.shape[:-1], size, size, 3)


# ----------------------------------------------------------------------------------------
# the reward of finished episodes
@dataclass
class RewardCost:
    """Accumulated cost of the episode rewards (seconds), for ``rapl/*_ms`` per episode."""

    episodes: int = 0
    frames: int = 0
    render_s: float = 0.0
    embed_s: float = 0.0
    ot_s: float = 0.0

    def per_episode_ms(self) -> dict[str, float]:
        """Mean milliseconds per episode of rendering, embedding, Sinkhorn and in all."""
        n = max(self.episodes, 1)
        parts = {
            "render_ms": 1e3 * self.render_s / n,
            "embed_ms": 1e3 * self.embed_s / n,
            "ot_ms": 1e3 * self.ot_s / n,
        }
        parts["total_ms"] = sum(parts.values())
        return parts


class EpisodeReward:
    """The reward of finished episodes from their frames: render post-step states, score.

    Subclasses give :meth:`rewards_of_frames`; episodes are rendered at ``image_size`` from
    their stored simulator states by ``env``, one batch per episode length, and the time
    spent is accumulated in :attr:`cost_log`.
    """

    def __init__(self, env: Any, image_size: int):
        self.env = env
        self.image_size = int(image_size)
        self.cost_log = RewardCost()

    def rewards_of_frames(self, frames: np.ndarray) -> np.ndarray:
        """``(B, T)`` per-step rewards of ``(B, T, S, S, 3)`` frames (timed)."""
        raise NotImplementedError

    def __call__(self, episodes: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per-step rewards of finished episodes given by their post-step states.

        Episodes of one length are scored in one batch (all frames embedded at once and,
        for OT, one batched Sinkhorn); other lengths in their own batches.
        """
        out: list[np.ndarray | None] = [None] * len(episodes)
        by_len: dict[int, list[int]] = {}
        for i, s in enumerate(episodes):
            by_len.setdefault(len(s), []).append(i)
        for idx in by_len.values():
            t0 = time.perf_counter()
            frames = render_states(self.env, np.stack([episodes[i] for i in idx]), self.image_size)
            self.cost_log.render_s += time.perf_counter() - t0
            r = self.rewards_of_frames(frames)
            for j, i in enumerate(idx):
                out[i] = r[j]
        self.cost_log.episodes += len(episodes)
        self.cost_log.frames += sum(len(s) for s in episodes)
        return [o for o in out if o is not None]


class EpisodeOTReward(EpisodeReward):
    """RAPL's episode reward: render post-step states, embed, OT against the demos.

    Args:
        env: anything with ``render_state(state, width, height)`` for the training env.
        embed: ``(N, S, S, 3)`` uint8 frames -> ``(N, D)`` embeddings (no gradient needed).
        demo_frames: ``(K, T_e, S, S, 3)`` uint8 expert frames (embedded once here).
        image_size: ``S``, the encoder's resolution (frames are rendered at it).
        cost, eps, n_iters, transform, scale: as :func:`pbrl.rewards.ot.ot_rewards`.
    """

    def __init__(
        self,
        env: Any,
        embed: Callable[[np.ndarray], torch.Tensor],
        demo_frames: np.ndarray,
        image_size: int,
        cost: CostName = "cosine",
        eps: float = 0.05,
        n_iters: int = 200,
        transform: Transform = "frame",
        scale: float = 1.0,
    ):
        if demo_frames.ndim != 5:
            raise ValueError(f"demo_frames must be (K, T, H, W, 3), got {demo_frames.shape}")
        super().__init__(env, image_size)
        self.embed_fn = embed
        self.cost: CostName = cost
        self.eps, self.n_iters = float(eps), int(n_iters)
        self.transform: Transform = transform
        self.scale = float(scale)
        k, t = demo_frames.shape[:2]
        with torch.no_grad():
            self.demo_embed = self.embed_fn(demo_frames.reshape(k * t, *demo_frames.shape[2:]))
        self.demo_embed = self.demo_embed.reshape(k, t, -1)

    def rewards_of_frames(self, frames: np.ndarray) -> np.ndarray:
        """``(B, T)`` per-step rewards of ``(B, T, S, S, 3)`` frames (timed)."""
        b, t = frames.shape[:2]
        t0 = time.perf_counter()
        with torch.no_grad():
            z = self.embed_fn(frames.reshape(b * t, *frames.shape[2:])).reshape(b, t, -1)
        t1 = time.perf_counter()
        r, _ = ot_rewards(
            z,
            self.demo_embed.to(z.device),
            cost=self.cost,
            eps=self.eps,
            n_iters=self.n_iters,
            transform=self.transform,
            scale=self.scale,
        )
        t2 = time.perf_counter()
        self.cost_log.embed_s += t1 - t0
        self.cost_log.ot_s += t2 - t1
        return r.cpu().numpy().astype(np.float32)


class EpisodeFrameReward(EpisodeReward):
    """A per-frame learned reward (the RLHF baseline's) on the same relabelling path.

    Args:
        env: anything with ``render_state(state, width, height)`` for the training env.
        model: the reward model (:meth:`RLHFReward.frame_rewards`).
    """

    def __init__(self, env: Any, model: RLHFReward):
        super().__init__(env, model.encoder.image_size)
        self.model = model

    def rewards_of_frames(self, frames: np.ndarray) -> np.ndarray:
        """``(B, T)`` per-step rewards of ``(B, T, S, S, 3)`` frames (timed)."""
        t0 = time.perf_counter()
        r = self.model.episode_rewards(frames)
        self.cost_log.embed_s += time.perf_counter() - t0
        return r


# ----------------------------------------------------------------------------------------
# the replay buffer
class EpisodicRewardBuffer(PbrlReplayBuffer):
    """A :class:`PbrlReplayBuffer` whose rewards are written per episode when it ends.

    Steps are stored as they come, with reward ``NaN`` and marked pending; when an env
    column's episode ends, ``episode_reward_fn`` gets the episode's post-step states (the
    stored pre-step state of each next step, and ``info["final_sim_state"]`` for the last)
    and its per-step rewards are written into exactly those rows, which become ready.
    :meth:`sample` draws only ready rows. Finished episodes are summarised in
    :attr:`finished` (drained by the caller for logging).

    Args:
        episode_reward_fn: ``[states (T_i, D_s)] -> [(T_i,) rewards]``.
        Others: as :class:`PbrlReplayBuffer`.
    """

    def __init__(self, *args: Any, episode_reward_fn: EpisodeRewardFn | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.state_dim == 0:
            raise ValueError("EpisodicRewardBuffer renders stored sim states: give state_dim > 0")
        self.episode_reward_fn = episode_reward_fn
        self.ready = np.zeros((self.buffer_size, self.n_envs), bool)
        self._pending: list[list[int]] = [[] for _ in range(self.n_envs)]
        self._ep_success = np.zeros(self.n_envs, bool)
        self.finished: list[dict[str, float]] = []

    def add(
        self,
        obs: np.ndarray,
        next_obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    ) -> None:
        """Store one vector step (reward unknown), then relabel the episodes it finished."""
        if isinstance(infos, Mapping):
            raise TypeError("EpisodicRewardBuffer takes one info dict per env column (SB3 layout)")
        p = self.pos
        for e in range(self.n_envs):
            if len(self._pending[e]) >= self.buffer_size:
                raise RaplRunError(
                    f"an episode is longer than the replay buffer ({self.buffer_size} rows per "
                    "env column): its first steps were overwritten before its reward was known; "
                    "make the buffer larger"
                )
        self.ready[p] = False  # the row is overwritten (ring) and not yet rewarded
        super().add(obs, next_obs, action, np.full(self.n_envs, np.nan, np.float32), done, infos)
        done_b = np.asarray(done).reshape(self.n_envs).astype(bool)
        ended: list[tuple[int, np.ndarray]] = []
        for e in range(self.n_envs):
            self._pending[e].append(p)
            self._ep_success[e] |= bool(infos[e].get("success", False))
            if done_b[e]:
                final = infos[e].get(FINAL_STATE)
                if final is None:
                    raise KeyError(
                        f"the last step's info lacks {FINAL_STATE!r}; wrap each env in "
                        "pbrl.visual.rl.FinalSimState"
                    )
                rows = np.asarray(self._pending[e], np.int64)
                post = np.concatenate([self.sim_state[rows[1:], e], np.asarray(final)[None]])
                ended.append((e, post))
        if ended:
            self._relabel_finished(ended)

    def _relabel_finished(self, ended: list[tuple[int, np.ndarray]]) -> None:
        if self.episode_reward_fn is None:
            raise RaplRunError("EpisodicRewardBuffer has no episode_reward_fn to call")
        rewards = self.episode_reward_fn([post for _, post in ended])
        for (e, _), r in zip(ended, rewards, strict=True):
            rows = np.asarray(self._pending[e], np.int64)
            r = np.asarray(r, np.float32).reshape(-1)
            if r.shape != rows.shape:
                raise ValueError(f"episode reward has shape {r.shape}, expected {rows.shape}")
            self.rewards[rows, e] = r
            self.ready[rows, e] = True
            self.finished.append(
                {
                    "rapl_return": float(r.sum()),
                    "true_return": float(self.true_reward[rows, e].sum()),
                    "length": float(len(rows)),
                    "success": float(self._ep_success[e]),
                }
            )
            self._pending[e] = []
            self._ep_success[e] = False

    def n_ready(self) -> int:
        """Stored transitions whose reward is known (sampleable)."""
        return int(self.ready[: self.size()].sum())

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> ReplayBufferSamples:
        """``batch_size`` transitions drawn uniformly over the *ready* rows (env columns too).

        Uniform over ready (row, column) pairs by rejection: draws land on a pending row with
        probability (pending steps) / (stored steps), at most one episode per column.
        """
        if self.reward_mode != "stored":
            raise RaplRunError("EpisodicRewardBuffer supports reward_mode='stored' only")
        upper = self.size()
        if self.n_ready() == 0:
            raise RaplRunError(
                "no episode has finished yet, so no stored step has a reward; set "
                "learning_starts to at least one episode's length times the number of envs"
            )
        rows = np.random.randint(0, upper, size=batch_size)
        cols = np.random.randint(0, self.n_envs, size=batch_size)
        bad = ~self.ready[rows, cols]
        while bad.any():
            k = int(bad.sum())
            rows[bad] = np.random.randint(0, upper, size=k)
            cols[bad] = np.random.randint(0, self.n_envs, size=k)
            bad = ~self.ready[rows, cols]
        data = (
            self._normalize_obs(self.observations[rows, cols, :], env),
            self.actions[rows, cols, :],
            self._normalize_obs(self.next_observations[rows, cols, :], env),
            (self.dones[rows, cols] * (1 - self.timeouts[rows, cols])).reshape(-1, 1),
            self._normalize_reward(self.rewards[rows, cols].reshape(-1, 1), env),
        )
        return ReplayBufferSamples(*tuple(map(self.to_torch, data)))

    def state_dict(self) -> dict[str, np.ndarray]:
        """:meth:`PbrlReplayBuffer.state_dict` plus the ready mask and the pending rows."""
        out = super().state_dict()
        out["ready"] = self.ready[: self.size()].copy()
        width = max((len(p) for p in self._pending), default=0)
        pend = np.full((self.n_envs, width), -1, np.int64)
        for e, p in enumerate(self._pending):
            pend[e, : len(p)] = p
        out["pending"] = pend
        out["ep_success"] = self._ep_success.copy()
        return out

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Inverse of :meth:`state_dict`."""
        super().load_state_dict(state)
        size = self.size()
        self.ready[:] = False
        self.ready[:size] = np.asarray(state["ready"], bool)
        self._pending = [[int(r) for r in row if r >= 0] for row in np.asarray(state["pending"])]
        self._ep_success = np.asarray(state["ep_success"], bool).copy()


# ----------------------------------------------------------------------------------------
# PPO: the rollout storage
class EpisodicRolloutRelabel(BaseCallback):
    """PPO's rollout rewards rewritten with the episode-level reward before GAE.

    SB3's ``collect_rollouts`` stores each step with the env's reward, computes returns and
    advantages, then calls :meth:`on_rollout_end`. There this callback overwrites the stored
    rewards with ``episode_reward_fn``'s per-step rewards and recomputes returns and
    advantages with the same last values and dones:

    - a step of an episode that *ended* in this rollout gets its per-step reward for the whole
      episode (its post-step states rendered and scored in one batch with the others);
    - a step of an episode still *running* when the rollout ends gets the reward of the
      episode so far (post-step states from its first step, which may lie in an earlier
      rollout, to the env's current state). For OT this is the partial video matched to the
      demos; when the episode ends in a later rollout, that rollout's steps get the rewards
      of the whole episode. With fixed-length episodes and ``n_steps`` a multiple of their
      length no episode is ever cut (:attr:`partial_steps` counts the steps that were);
    - SB3 adds ``gamma * V(terminal observation)`` to the reward of a step whose episode was
      cut by the time limit. That term is kept: it is the stored reward minus the env reward
      this callback saw at that step (read in :meth:`_on_step`, before SB3 adds it).

    Finished episodes are summarised in :attr:`finished` like
    :attr:`EpisodicRewardBuffer.finished`.

    Args:
        episode_reward_fn: ``[states (T_i, D_s)] -> [(T_i,) rewards]``.
        envs: the vector env's envs (each wraps a :class:`PbrlEnv` in :class:`FinalSimState`);
            the current state of a running episode is read from them at the rollout's end.
    """

    def __init__(self, episode_reward_fn: EpisodeRewardFn, envs: Sequence[gym.Env]):
        super().__init__()
        self.episode_reward_fn = episode_reward_fn
        pbrl = [find_wrapper(e, PbrlEnv) for e in envs]
        if any(p is None for p in pbrl):
            raise TypeError("EpisodicRolloutRelabel needs pbrl envs (pbrl.envs.make_env)")
        self._pbrl: list[PbrlEnv] = pbrl  # type: ignore[assignment]
        n = len(envs)
        # the running episode of each env column, from its first step (maybe an earlier rollout)
        self._states: list[list[np.ndarray]] = [[] for _ in range(n)]  # pre-step sim states
        self._true = np.zeros(n, np.float64)
        self._success = np.zeros(n, bool)
        # this rollout
        self._rows: list[list[int]] = [[] for _ in range(n)]
        self._ended: list[tuple[int, list[int], np.ndarray, float, bool]] = []
        self._env_reward = np.zeros((0, n), np.float32)
        self._t = 0
        self.finished: list[dict[str, float]] = []
        self.partial_steps = 0

    def _on_rollout_start(self) -> None:
        n_steps = int(self.model.rollout_buffer.buffer_size)
        self._env_reward = np.zeros((n_steps, len(self._pbrl)), np.float32)
        self._rows = [[] for _ in self._pbrl]
        self._ended = []
        self._t = 0

    def _on_step(self) -> bool:
        infos = self.locals["infos"]
        dones = np.asarray(self.locals["dones"]).astype(bool)
        t = self._t
        # the env's reward, before SB3 adds the truncation bootstrap to it in place
        self._env_reward[t] = np.asarray(self.locals["rewards"], np.float32)
        for e, info in enumerate(infos):
            self._states[e].append(np.asarray(info["sim_state"], np.float64))
            self._rows[e].append(t)
            self._true[e] += float(info.get("true_reward", self._env_reward[t, e]))
            self._success[e] |= bool(info.get("success", False))
            if dones[e]:
                final = info.get(FINAL_STATE)
                if final is None:
                    raise KeyError(
                        f"the last step's info lacks {FINAL_STATE!r}; wrap each env in "
                        "pbrl.visual.rl.FinalSimState"
                    )
                post = np.stack([*self._states[e][1:], np.asarray(final, np.float64)])
                self._ended.append(
                    (e, self._rows[e], post, float(self._true[e]), bool(self._success[e]))
                )
                self._states[e], self._rows[e] = [], []
                self._true[e], self._success[e] = 0.0, False
        self._t += 1
        return True

    def _on_rollout_end(self) -> None:
        buf = self.model.rollout_buffer
        n = self._t
        if n != buf.buffer_size:
            raise RaplRunError(
                f"the rollout stopped after {n} of {buf.buffer_size} steps; its rewards are not "
                "all known"
            )
        jobs = [(e, rows, post) for e, rows, post, _, _ in self._ended]
        for e, rows in enumerate(self._rows):
            if rows:  # the episode goes on: score the part played so far
                now = np.asarray(self._pbrl[e].live_sim_state(), np.float64)
                jobs.append((e, rows, np.stack([*self._states[e][1:], now])))
                self.partial_steps += len(rows)
        rewards = self.episode_reward_fn([post for _, _, post in jobs])
        bootstrap = buf.rewards[:n] - self._env_reward[:n]  # gamma V(s_T) at truncations, else 0
        written = np.zeros(buf.rewards.shape, bool)
        for (e, rows, post), r in zip(jobs, rewards, strict=True):
            r = np.asarray(r, np.float32).reshape(-1)
            if r.shape != (len(post),):
                raise ValueError(f"episode reward has shape {r.shape}, expected ({len(post)},)")
            idx = np.asarray(rows, np.int64)
            buf.rewards[idx, e] = r[len(r) - len(idx) :] + bootstrap[idx, e]
            written[idx, e] = True
        assert written.all(), "every rollout step belongs to an ended or a running episode"
        n_ended = len(self._ended)
        for (_, _, post, true_ret, ok), r in zip(self._ended, rewards[:n_ended], strict=True):
            self.finished.append(
                {
                    "rapl_return": float(np.sum(r)),
                    "true_return": true_ret,
                    "length": float(len(post)),
                    "success": float(ok),
                }
            )
        buf.compute_returns_and_advantage(
            last_values=self.locals["values"], dones=np.asarray(self.locals["dones"])
        )

    def state_dict(self) -> dict[str, Any]:
        """The running episodes (their pre-step states so far), to continue a run exactly."""
        return {
            "states": [np.asarray(s, np.float64) for s in self._states],
            "true": self._true.copy(),
            "success": self._success.copy(),
            "partial_steps": self.partial_steps,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self._states = [list(np.asarray(s, np.float64)) for s in state["states"]]
        self._true = np.asarray(state["true"], np.float64).copy()
        self._success = np.asarray(state["success"], bool).copy()
        self.partial_steps = int(state["partial_steps"])


# ----------------------------------------------------------------------------------------
# the encoder
def _same_ot_as_aligned(rapl: RAPLReward, ot: Mapping[str, Any], path: str | Path) -> None:
    """Refuse OT settings other than those the encoder was aligned with.

    The method notes' pitfall: train and deploy with the same cost (and eps, iterations).
    """
    saved = {"cost": rapl.cost, "eps": rapl.eps, "n_iters": rapl.n_iters}
    defaults = {"cost": "cosine", "eps": 0.05, "n_iters": 200}
    for key, was in saved.items():
        now = ot.get(key, defaults[key])
        same = now == was if key == "cost" else math.isclose(float(now), float(was))
        if not same:
            raise RaplRunError(
                f"the encoder in {path} was aligned with ot.{key}={was!r} but this run asks "
                f"ot.{key}={now!r}: RAPL must score with the cost it was aligned with; set "
                f"ot.{key}={was!r} (or align a new encoder: encoder.path=null)"
            )


def load_rapl(path: str | Path, device: str = "cpu") -> RAPLReward:
    """A :class:`RAPLReward` saved by :meth:`RAPLReward.save` (``rapl.pt`` + ``rapl.json``)."""
    path = Path(path).expanduser()
    if not (path / "rapl.pt").is_file() or not (path / "rapl.json").is_file():
        raise FileNotFoundError(
            f"{path} holds no saved RAPL encoder (rapl.pt and rapl.json from RAPLReward.save); "
            "give encoder.path=<that directory> or leave it null to align one first"
        )
    hp = json.loads((path / "rapl.json").read_text())
    enc_cfg = dict(hp["encoder"])
    # The state dict holds every weight, so the pretrained file need not be read again.
    encoder = FrameEncoder(**enc_cfg, pretrained=False)
    rapl = RAPLReward(
        encoder,
        cost=hp["cost"],
        eps=hp["eps"],
        n_iters=int(hp.get("n_iters", 200)),  # saved since pbrl 0.1's audit fix; 200 before
        loss=hp["loss"],
        beta=hp["beta"],
        transform=hp["transform"],
        scale=hp["scale"],
        device=device,
    )
    rapl.load_state_dict(torch.load(path / "rapl.pt", map_location=device, weights_only=False))
    rapl.encoder.eval()
    return rapl


@dataclass
class PreferenceData:
    """The end-user's answered triplet queries about rendered alignment videos.

    Attributes:
        frames: ``(N, T, S, S, 3)`` uint8 frames of the ``N`` videos (every ``stride``-th
            post-step frame), at the encoder's size ``S``.
        ordered: ``(M, 3)`` video indices of the answered triplets, ordered (most preferred,
            neutral, least preferred). One per answer: a query several people answered
            gives several, an unanswered or skipped one none.
        equal: ``(M,)`` bool, triplets answered "all about the same".
        asked: queries asked.
        teacher_ids: who answered (sorted, e.g. ``["visual"]`` or ``["human:alice"]``).
    """

    frames: np.ndarray
    ordered: np.ndarray
    equal: np.ndarray
    asked: int = 0
    teacher_ids: list[str] = field(default_factory=list)


def preference_data(
    env_name: str,
    image_size: int,
    n_videos: int = 100,
    n_triplets: int = 150,
    stride: int = 2,
    equal_margin: float = 0.05,
    criterion: str = "auto",
    seed: int = 0,
    env_kwargs: Mapping[str, Any] | None = None,
    teacher: Teacher | None = None,
) -> PreferenceData:
    """Videos and the end-user's answers to triplet queries about them.

    Videos: ``n_videos`` episodes of ``env_name`` mixing the scripted expert (when the suite
    has one) with held random actions, the random share drawn per episode in [0, 1], so the
    pool spans expert-like to random play. Triplets: ``n_triplets`` random 3-clip ranking
    queries answered by :class:`VisualCriterionTeacher` (``criterion``: a named criterion,
    ``"auto"``, or ``"true_return"`` for the env's own return). One ``seed`` gives the same
    videos and queries to every reward learned from them (RAPL's encoder, the RLHF reward).

    ``teacher`` (default: the simulated end-user above) answers instead, e.g. people on the
    labelling page (``align.teacher=human``): the queries' segments carry the videos'
    post-step simulator states (``sim_state``) and ``env_name``, from which the page renders
    the clips. Its answers may be fewer (unanswered, skipped) or more (several people) than
    the queries; none at all is an error.
    """
    rng = np.random.default_rng(seed)
    try:
        policy: Callable[[np.ndarray], np.ndarray] | None = scripted_policy(env_name)
    except RaplRunError:
        policy = None
    probs = rng.uniform(0.0, 1.0, n_videos)
    rolls = collect_rollouts(env_name, n_videos, seed + 7, policy, probs, env_kwargs=env_kwargs)
    segs = rolls.segments(env_name)
    env = pbrl_envs.make_env(env_name, seed=seed, **dict(env_kwargs or {}))
    frames = render_states(env, rolls.post_states[:, stride - 1 :: stride], image_size)
    env.close()
    if criterion == "true_return":
        crit: Any = lambda s: s.true_reward.sum(axis=1)  # noqa: E731 - a one-line criterion
    else:
        crit = criterion
    if teacher is None:
        teacher = VisualCriterionTeacher(crit, equal_margin=equal_margin, seed=seed)
    idx = np.argsort(rng.random((n_triplets, n_videos)), axis=1)[:, :3]
    queries = QueryBatch.from_members([segs[idx[:, j]] for j in range(3)], kind="ranking")
    feedback = teacher.label(queries)
    qi, order, equal = triplets_from_feedback(queries, feedback)
    if len(qi) == 0:
        raise RaplRunError(
            f"none of the {n_triplets} alignment queries was answered (all skipped or timed "
            "out); nothing to learn from. Answer some (align.teacher=human: human.timeout) or "
            "ask more (align.triplets)"
        )
    who = sorted({fb.teacher_id for fb in feedback})
    return PreferenceData(frames, idx[qi[:, None], order], equal, n_triplets, who)


def fit_on_preferences(
    learner: RAPLReward, data: PreferenceData
) -> tuple[dict[str, Any], torch.Tensor | None]:
    """Fit ``learner`` on ``data``'s triplets; returns its stats and the cached features.

    With a frozen backbone the features of every video frame are computed once, ``(N, T,
    F)``, and the triplets index them; otherwise the learner trains on the frames.
    """
    frames = data.frames
    n, t, size = frames.shape[:3]
    t0 = time.perf_counter()
    feats: torch.Tensor | None = None
    if not learner.encoder.train_backbone:  # frozen backbone: its features once, for all triplets
        with torch.no_grad():
            feats = learner.encoder.features(frames.reshape(n * t, size, size, 3)).reshape(n, t, -1)
    t_feat = time.perf_counter() - t0
    t1 = time.perf_counter()
    if feats is not None:
        stats = learner.fit(None, data.equal, features=feats[data.ordered])
    else:
        stats = learner.fit(frames[data.ordered], data.equal)
    stats = {k: v for k, v in stats.items() if k != "history"}
    stats.update(
        videos=int(n),
        triplets=int(len(data.ordered)),
        equal_triplets=int(data.equal.sum()),
        triplets_asked=int(data.asked),
        teachers=list(data.teacher_ids),
        features_s=t_feat,
        fit_s=time.perf_counter() - t1,
    )
    return stats, feats


def align_encoder(
    env_name: str,
    encoder_kwargs: Mapping[str, Any],
    n_videos: int = 100,
    n_triplets: int = 150,
    epochs: int = 100,
    stride: int = 2,
    equal_margin: float = 0.05,
    criterion: str = "auto",
    seed: int = 0,
    env_kwargs: Mapping[str, Any] | None = None,
    ot: Mapping[str, Any] | None = None,
    device: str = "cpu",
    teacher: Teacher | None = None,
) -> tuple[RAPLReward, dict[str, Any]]:
    """Align a frame encoder on triplets of rollouts ranked by the simulated end-user.

    The videos and queries are :func:`preference_data`'s (``teacher``: who answers them,
    default the simulated end-user); the backbone's features are
    computed once and the head is fitted with the paper's loss (:meth:`RAPLReward.fit`).

    Returns:
        The aligned reward learner and ``{"val_accuracy", "val_loss", "best_epoch", ...}``.
    """
    rapl = RAPLReward(
        encoder_kwargs=dict(encoder_kwargs), epochs=epochs, seed=seed, device=device, **(ot or {})
    )
    data = preference_data(
        env_name,
        rapl.encoder.image_size,
        n_videos,
        n_triplets,
        stride,
        equal_margin,
        criterion,
        seed,
        env_kwargs,
        teacher,
    )
    stats, _ = fit_on_preferences(rapl, data)
    return rapl, stats


def learn_rlhf_reward(
    env_name: str,
    encoder_kwargs: Mapping[str, Any],
    n_videos: int = 100,
    n_triplets: int = 150,
    stride: int = 2,
    equal_margin: float = 0.05,
    criterion: str = "auto",
    seed: int = 0,
    env_kwargs: Mapping[str, Any] | None = None,
    rlhf: Mapping[str, Any] | None = None,
    device: str = "cpu",
    teacher: Teacher | None = None,
) -> tuple[RLHFReward, dict[str, Any]]:
    """The RLHF baseline's reward, learned from the same videos and queries as RAPL's encoder.

    :func:`preference_data` with the same arguments and ``seed`` as :func:`align_encoder`
    gives the same triplets; :class:`~pbrl.visual.rlhf.RLHFReward` fits a per-frame cost on
    the frozen backbone's features with the Bradley-Terry loss over the pairs each triplet
    implies, and its RL reward is standardised by the costs of all the videos' frames.

    ``encoder_kwargs`` (``backbone``, ``image_size``; ``embed_dim`` is 1) and ``rlhf``
    (``lr``, ``epochs``, ``batch_size``, ``val_frac``, ``loss``, ``scale``) configure
    :class:`RLHFReward`; the other arguments are :func:`preference_data`'s.

    Returns:
        The reward model and ``{"val_accuracy" (held-out pairs ordered right), ...}``.
    """
    kw = {k: v for k, v in dict(rlhf or {}).items() if k != "path"}
    enc_kw = {k: v for k, v in dict(encoder_kwargs).items() if k != "embed_dim"}
    model = RLHFReward(encoder_kwargs=enc_kw, seed=seed, device=device, **kw)
    data = preference_data(
        env_name,
        model.encoder.image_size,
        n_videos,
        n_triplets,
        stride,
        equal_margin,
        criterion,
        seed,
        env_kwargs,
        teacher,
    )
    stats, feats = fit_on_preferences(model, data)
    if feats is not None:
        with torch.no_grad():
            model.set_normalisation(model.encoder.head(feats))
    else:
        model.normalise_frames(data.frames)
    stats.update(cost_mean=model.cost_mean, cost_std=model.cost_std)
    return model, stats


# ----------------------------------------------------------------------------------------
# the run
class RaplRun(Checkpointed):
    """One SAC or PPO run on the RAPL reward (or a baseline reward) writing into ``run_dir``.

    Args:
        cfg: a plain mapping with the keys of ``pbrl/configs/rapl/rl.yaml``.
        run_dir: TensorBoard events, ``config.json``, the encoder (``encoder/``), the demos
            (``demos.npz``), checkpoints and ``final_metrics.json`` go here.
    """

    def __init__(self, cfg: Mapping[str, Any], run_dir: str | Path):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        seed = int(cfg["seed"])
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        threads = _cfg_get(cfg, "threads")
        if threads:
            torch.set_num_threads(int(threads))
        self.device = "cuda" if cfg["device"] == "auto" and torch.cuda.is_available() else "cpu"
        if cfg["device"] not in ("auto", "cpu"):
            self.device = str(cfg["device"])
        self.reward_kind = str(cfg["reward"])
        if self.reward_kind not in REWARD_KINDS:
            raise RaplRunError(f"reward={self.reward_kind!r}; valid: {', '.join(REWARD_KINDS)}")
        from pbrl.visual.human import check_align_teacher

        self.align_teacher = check_align_teacher(cfg)  # before anything starts
        # the learned reward's tags: rapl/*, train/rapl_return (OT arms) or rlhf/*, ...
        self.tag = "rlhf" if self.reward_kind == "rlhf" else "rapl"
        self.env_name = str(cfg["env"]["name"])
        self.env_kwargs = dict(_cfg_get(cfg, "env.kwargs", {}) or {})
        self.writer = SummaryWriter(str(self.run_dir))
        self.last: dict[str, float] = {}
        (self.run_dir / "config.json").write_text(json.dumps(cfg, indent=2, default=str))

        # --- encoder and demos (every arm scores its evaluation with them when given) --------
        self.scorer: EpisodeReward | None = None
        if self.reward_kind == "rlhf":
            self.scorer = self._build_rlhf_scorer()
        elif self.reward_kind == "rapl" or _cfg_get(cfg, "eval.rapl_return", False):
            self.scorer = self._build_scorer()

        # --- the agent ---------------------------------------------------------------------
        a = cfg["agent"]
        self.algo = str(a.get("algo", "sac"))
        if self.algo not in ALGOS:
            raise RaplRunError(f"agent.algo={self.algo!r}; valid: {', '.join(ALGOS)}")
        n_envs = int(a.get("num_envs", 1))
        venv = make_vec_env(
            [
                lambda i=i: FinalSimState(
                    pbrl_envs.make_env(self.env_name, seed=seed + i, **self.env_kwargs)
                )
                for i in range(n_envs)
            ]
        )
        self.train_envs = venv.envs
        probe = self.train_envs[0]
        pbrl_env = find_wrapper(probe, PbrlEnv)
        assert pbrl_env is not None
        self.max_episode_steps = int(pbrl_env.max_episode_steps)
        self.eval_envs = [
            pbrl_envs.make_env(self.env_name, seed=seed + 10_000 + i, **self.env_kwargs)
            for i in range(int(cfg["eval"]["episodes"]))
        ]
        self.relabel: EpisodicRolloutRelabel | None = None
        self.buffer: PbrlReplayBuffer | None = None
        if self.algo == "ppo":
            self.model: PbrlSAC | PbrlPPO = self._build_ppo(venv, n_envs, seed)
        else:
            self.model = self._build_sac(venv, n_envs, seed)
        self.model.pbrl_total_timesteps = int(cfg["num_train_steps"])
        self.model.set_logger(make_logger(self._sb3_scalar))
        self.next_eval = int(cfg["eval"]["every"])
        ck = int(_cfg_get(cfg, "checkpoint.every", 0))
        self.next_ckpt = ck if ck > 0 else math.inf
        self._train_eps: list[dict[str, float]] = []

    # --- setup -------------------------------------------------------------------------
    def _build_sac(self, venv: Any, n_envs: int, seed: int) -> PbrlSAC:
        """SAC whose replay buffer gets each episode's rewards when it ends."""
        cfg, a = self.cfg, self.cfg["agent"]
        pbrl_env = find_wrapper(self.train_envs[0], PbrlEnv)
        assert pbrl_env is not None
        buffer_size = int(_cfg_get(cfg, "agent.buffer_size", int(cfg["num_train_steps"])))
        learning_starts = int(a["learning_starts"])
        buffer_kwargs: dict[str, Any] = {
            "state_dim": int(pbrl_env.state_dim),
            "factor_names": tuple(pbrl_env.factor_names),
            "env_name": self.env_name,
        }
        if self.reward_kind in ("rapl", "rlhf"):
            if learning_starts < self.max_episode_steps * n_envs:
                raise RaplRunError(
                    f"agent.learning_starts={learning_starts} is shorter than one episode "
                    f"({self.max_episode_steps} steps x {n_envs} envs): SAC would sample before "
                    "any reward is known; raise it"
                )
            buffer_cls: type = EpisodicRewardBuffer
            buffer_kwargs["episode_reward_fn"] = self.scorer
        else:
            buffer_cls = PbrlReplayBuffer
        policy_kwargs: dict[str, Any] = {"net_arch": list(a["net_arch"])}
        if bool(a.get("fused_adam", True)):
            policy_kwargs["optimizer_kwargs"] = {"fused": True}
        model = PbrlSAC(
            "MlpPolicy",
            venv,
            learning_rate=float(a["learning_rate"]),
            buffer_size=max(buffer_size, self.max_episode_steps * n_envs + 1),
            learning_starts=learning_starts,
            batch_size=int(a["batch_size"]),
            gamma=float(a["gamma"]),
            tau=float(a["tau"]),
            train_freq=int(a["train_freq"]),
            gradient_steps=int(a["gradient_steps"]),
            replay_buffer_class=buffer_cls,
            replay_buffer_kwargs=buffer_kwargs,
            policy_kwargs=policy_kwargs,
            seed=seed,
            device=self.device,
        )
        assert isinstance(model.replay_buffer, PbrlReplayBuffer)
        self.buffer = model.replay_buffer
        return model

    def _build_ppo(self, venv: Any, n_envs: int, seed: int) -> PbrlPPO:
        """PPO whose rollout rewards are rewritten per episode before GAE (``agent.ppo.*``).

        ``agent.ppo.n_steps`` null: whole episodes, the multiple of the episode length
        nearest 2048 steps over all envs, so no episode is cut at a rollout's end.
        """
        a = self.cfg["agent"]
        p = dict(a.get("ppo") or {})
        length = self.max_episode_steps
        n_steps = p.get("n_steps")
        if n_steps is None:
            n_steps = max(1, round(2048 / (n_envs * length))) * length
        n_steps = int(n_steps)
        if self.reward_kind in ("rapl", "rlhf"):
            if n_steps % length:
                print(
                    f"[{self.tag}] agent.ppo.n_steps={n_steps} is not a multiple of the episode "
                    f"length {length}: episodes cut by a rollout's end are rewarded on the part "
                    "played so far",
                    flush=True,
                )
            assert self.scorer is not None
            self.relabel = EpisodicRolloutRelabel(self.scorer, self.train_envs)
        batch = max(2, n_steps * n_envs // int(p.get("n_minibatches", 4)))
        policy_kwargs: dict[str, Any] = {
            "net_arch": {"pi": list(a["net_arch"]), "vf": list(a["net_arch"])},
            "log_std_init": float(p.get("log_std_init", 0.0)),
        }
        if bool(a.get("fused_adam", True)):
            policy_kwargs["optimizer_kwargs"] = {"fused": True}
        return PbrlPPO(
            "MlpPolicy",
            venv,
            learning_rate=float(p.get("learning_rate", 3e-4)),
            n_steps=n_steps,
            batch_size=batch,
            n_epochs=int(p.get("n_epochs", 10)),
            gamma=float(a["gamma"]),
            gae_lambda=float(p.get("gae_lambda", 0.95)),
            clip_range=float(p.get("clip_range", 0.1)),
            ent_coef=float(p.get("ent_coef", 0.0)),
            max_grad_norm=float(p.get("max_grad_norm", 1.0)),
            policy_kwargs=policy_kwargs,
            seed=seed,
            device=self.device,
        )

    def _align_kwargs(self) -> dict[str, Any]:
        """The alignment videos and queries (``align.*``), shared by RAPL and RLHF."""
        al = self.cfg["align"]
        return {
            "env_name": str(_cfg_get(self.cfg, "align.env", self.env_name)),
            "n_videos": int(al["videos"]),
            "n_triplets": int(al["triplets"]),
            "stride": int(al["stride"]),
            "equal_margin": float(al["equal_margin"]),
            "criterion": str(al["criterion"]),
            "seed": int(self.cfg["seed"]),
            "env_kwargs": self.env_kwargs if _cfg_get(self.cfg, "align.env") is None else None,
            "device": self.device,
        }

    def _fit_on_preferences(
        self, fit: Callable[..., tuple[Any, dict[str, Any]]], **kwargs: Any
    ) -> tuple[Any, dict[str, Any]]:
        """``fit`` (:func:`align_encoder`, :func:`learn_rlhf_reward`) on ``align.*``'s videos.

        The queries are answered by ``align.teacher`` (people: the labelling page is served
        until the answers are in; its ``human/*`` scalars join the stats).
        """
        from pbrl.visual.human import make_align_teacher

        al = self._align_kwargs()
        what = "RLHF reward" if self.reward_kind == "rlhf" else "RAPL alignment"
        teacher, close = make_align_teacher(
            self.cfg, self.run_dir, al["env_name"], al["env_kwargs"], f"{what} {al['env_name']}"
        )
        try:
            model, stats = fit(teacher=teacher, **al, **kwargs)
        finally:
            page = close()
        stats.update(page)
        return model, stats

    def _log_fit(self, stats: dict[str, Any], what: str) -> None:
        (self.run_dir / "align.json").write_text(json.dumps(stats, indent=2))
        for k in ("val_accuracy", "val_loss", "seconds", "triplets", "triplets_asked"):
            if stats.get(k) is not None and math.isfinite(float(stats[k])):
                self._scalar(f"align/{k}", float(stats[k]), 0)
        print(
            f"[{self.tag}] {what} on {stats['triplets']} triplets of {stats['videos']} videos "
            f"({', '.join(stats.get('teachers', []))}): "
            f"held-out accuracy {stats['val_accuracy']:.2f}, {stats['seconds']:.0f}s",
            flush=True,
        )

    def _build_rlhf_scorer(self) -> EpisodeFrameReward:
        """The RLHF baseline's per-frame reward, learned on RAPL's videos and queries."""
        cfg = self.cfg
        enc = cfg["encoder"]
        path = _cfg_get(cfg, "rlhf.path")
        saved = self.run_dir / "reward_model"
        if path is None and (saved / "rlhf.pt").is_file():
            path = saved  # a resumed run reuses the reward it learned
        if path is not None:
            model = RLHFReward.load(path, device=self.device)
        else:
            t0 = time.perf_counter()
            model, stats = self._fit_on_preferences(
                learn_rlhf_reward,
                encoder_kwargs={"backbone": enc["backbone"], "image_size": int(enc["image_size"])},
                rlhf=dict(cfg.get("rlhf") or {}),
            )
            model.save(saved)
            stats["seconds"] = time.perf_counter() - t0
            self._log_fit(stats, "Bradley-Terry reward learned")
        render_env = pbrl_envs.make_env(self.env_name, seed=int(cfg["seed"]), **self.env_kwargs)
        self._render_env = render_env
        return EpisodeFrameReward(render_env, model)

    def _build_scorer(self) -> EpisodeOTReward:
        cfg, seed = self.cfg, int(self.cfg["seed"])
        enc = cfg["encoder"]
        ot = dict(cfg["ot"])
        path = _cfg_get(cfg, "encoder.path")
        saved = self.run_dir / "encoder"
        if path is None and (saved / "rapl.pt").is_file():
            path = saved  # a resumed run reuses the encoder it aligned
        encoder_kwargs = {
            "backbone": enc["backbone"],
            "embed_dim": int(enc["embed_dim"]),
            "image_size": int(enc["image_size"]),
        }
        if not bool(enc["aligned"]):
            # ImNet-OT: the pretrained backbone's features, no head, no preferences.
            rapl = RAPLReward(encoder_kwargs=encoder_kwargs, device=self.device, seed=seed, **ot)
            encoder = rapl.encoder
            embed: Callable[[np.ndarray], torch.Tensor] = encoder.features
        else:
            if path is not None:
                rapl = load_rapl(path, device=self.device)
                _same_ot_as_aligned(rapl, ot, path)
            else:
                t0 = time.perf_counter()
                rapl, stats = self._fit_on_preferences(
                    align_encoder,
                    encoder_kwargs=encoder_kwargs,
                    epochs=int(cfg["align"]["epochs"]),
                    ot=ot,
                )
                rapl.save(saved)
                stats["seconds"] = time.perf_counter() - t0
                self._log_fit(stats, "aligned")
            encoder = rapl.encoder
            embed = rapl.encoder.__call__
        encoder.eval()
        render_env = pbrl_envs.make_env(self.env_name, seed=seed, **self.env_kwargs)
        self._render_env = render_env
        size = encoder.image_size
        demo_path = _cfg_get(cfg, "demo.path")
        if demo_path is None and (self.run_dir / "demos.npz").is_file():
            demo_path = self.run_dir / "demos.npz"  # a resumed run reuses its demos
        if demo_path is not None:
            demo_frames = load_demo_frames(demo_path, render_env, size)
        else:
            demos = make_demos(self.env_name, int(cfg["demo"]["n"]), seed + 5, self.env_kwargs)
            save_demos(self.run_dir / "demos.npz", demos)
            self._scalar("demo/success_rate", float(demos.success.mean()), 0)
            self._scalar("demo/true_return", float(demos.true_reward.sum(1).mean()), 0)
            demo_frames = render_states(render_env, demos.post_states, size)
        return EpisodeOTReward(
            render_env,
            embed,
            demo_frames,
            image_size=size,
            cost=ot.get("cost", "cosine"),
            eps=float(ot.get("eps", 0.05)),
            n_iters=int(ot.get("n_iters", 200)),
            transform=ot.get("transform", "frame"),
            scale=float(ot.get("scale", 1.0)),
        )

    # --- logging -------------------------------------------------------------------------
    def _scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)
        self.last[tag] = float(value)

    def _sb3_scalar(self, tag: str, value: float, step: int) -> None:
        self._scalar(tag, value, self.step)

    @property
    def step(self) -> int:
        """Environment steps so far (summed over envs)."""
        return int(self.model.num_timesteps)

    def _log_training_episodes(self) -> None:
        src: EpisodicRewardBuffer | EpisodicRolloutRelabel | None = self.relabel
        if isinstance(self.buffer, EpisodicRewardBuffer):
            src = self.buffer
        if src is not None and src.finished:
            eps, src.finished = src.finished, []
            for key in ("true_return", "success"):
                self._scalar(f"train/{key}", float(np.mean([e[key] for e in eps])), self.step)
            learned = float(np.mean([e["rapl_return"] for e in eps]))
            self._scalar(f"train/{self.tag}_return", learned, self.step)
            if self.scorer is not None:
                for k, v in self.scorer.cost_log.per_episode_ms().items():
                    self._scalar(f"{self.tag}/{k}", v, self.step)

    # --- evaluation ----------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Deterministic episodes on the eval envs: true return, success, learned return."""
        seed = int(self.cfg["seed"]) + 10_000
        returns, successes, posts = [], [], []
        for i, env in enumerate(self.eval_envs):
            obs, _ = env.reset(seed=seed + i)
            done, ret, ok, states = False, 0.0, False, []
            while not done:
                act = self.model.predict(obs[None], deterministic=True)[0][0]
                obs, r, term, trunc, info = env.step(act)
                states.append(info["sim_state"])
                ret += float(r)
                ok |= bool(info.get("success", False))
                done = term or trunc
            final = np.asarray(env.live_sim_state(), np.float64)
            after = np.asarray(states[1:]).reshape(-1, len(final))
            posts.append(np.concatenate([after, final[None]]))
            returns.append(ret)
            successes.append(ok)
        out = {
            "eval/true_return": float(np.mean(returns)),
            "eval/true_return_std": float(np.std(returns)),
            "eval/success_rate": float(np.mean(successes)),
        }
        if self.scorer is not None:
            saved = self.scorer.cost_log
            self.scorer.cost_log = RewardCost()  # evaluation cost is not training cost
            r = self.scorer(posts)
            self.scorer.cost_log = saved
            out[f"eval/{self.tag}_return"] = float(np.mean([x.sum() for x in r]))
        for k, v in out.items():
            self._scalar(k, v, self.step)
        return out

    # --- the loop ------------------------------------------------------------------------
    def run(self) -> dict[str, float]:
        """Train until ``num_train_steps``; evaluate, log, checkpoint; returns final scalars."""
        total = int(self.cfg["num_train_steps"])
        t_start = time.perf_counter()
        while self.step < total:
            stop = min(self.next_eval, self.next_ckpt, total)
            t0, s0 = time.perf_counter(), self.step
            self.model.learn(
                total_timesteps=max(1, int(stop) - self.step),
                reset_num_timesteps=False,
                log_interval=1,
                progress_bar=False,
                callback=self.relabel,
            )
            # SB3 writes what it recorded at its next dump (PPO: the next rollout; SAC: the
            # next episode end), so the chunk's last losses would be lost at the end: now.
            self.model.logger.dump(self.step)
            dt = time.perf_counter() - t0
            self._scalar("charts/sps", (self.step - s0) / max(dt, 1e-9), self.step)
            self._log_training_episodes()
            if self.step >= self.next_eval:
                res = self.evaluate()
                self._progress(res)
                while self.next_eval <= self.step:
                    self.next_eval += int(self.cfg["eval"]["every"])
            if self.step >= self.next_ckpt:
                self.save_checkpoint()
                while self.next_ckpt <= self.step:
                    self.next_ckpt += int(self.cfg["checkpoint"]["every"])
            self.writer.flush()
        if self.last.get("_eval_step") != self.step:
            self._progress(self.evaluate())
        self._scalar("charts/seconds", time.perf_counter() - t_start, self.step)
        if self.scorer is not None:
            c = self.scorer.cost_log
            for k, v in c.per_episode_ms().items():
                self.last[f"{self.tag}/{k}"] = v
            self.last[f"{self.tag}/episodes_scored"] = float(c.episodes)
        if self.relabel is not None:
            self.last[f"{self.tag}/partial_episode_steps"] = float(self.relabel.partial_steps)
        if _cfg_get(self.cfg, "checkpoint.every", 0) or _cfg_get(self.cfg, "checkpoint.final"):
            self.save_checkpoint()
        self.writer.flush()
        final = {k: v for k, v in self.last.items() if not k.startswith("_")}
        (self.run_dir / "final_metrics.json").write_text(json.dumps(final, indent=2))
        return final

    def _progress(self, res: Mapping[str, float]) -> None:
        self.last["_eval_step"] = self.step
        key = f"eval/{self.tag}_return"
        extra = f" | {self.tag} return {res[key]:.1f}" if key in res else ""
        print(
            f"[{self.algo} {self.reward_kind} {self.env_name} s{self.cfg['seed']}] "
            f"step {self.step:,}/{int(self.cfg['num_train_steps']):,} | "
            f"eval return {res['eval/true_return']:.2f} | "
            f"success {res['eval/success_rate']:.2f}{extra}",
            flush=True,
        )

    # --- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The agent, its buffer (SAC) or running episodes (PPO), envs, RNGs and the schedule."""
        return {
            "sb3": sb3_state(self.model),
            "buffer": None if self.buffer is None else self.buffer.state_dict(),
            "relabel": None if self.relabel is None else self.relabel.state_dict(),
            "envs": [find_wrapper(e, PbrlEnv).get_env_state() for e in self.train_envs],
            "loop": {"next_eval": self.next_eval, "next_ckpt": self.next_ckpt, "last": self.last},
            "rng": {
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "python": random.getstate(),
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict` on a run built from the same config."""
        load_sb3_state(self.model, state["sb3"])
        if self.buffer is not None:
            self.buffer.load_state_dict(state["buffer"])
        if self.relabel is not None:
            self.relabel.load_state_dict(state["relabel"])
        for env, s in zip(self.train_envs, state["envs"], strict=True):
            find_wrapper(env, PbrlEnv).set_env_state(s)
        for k, v in state["loop"].items():
            setattr(self, k, v)
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])

    def close(self) -> None:
        """Close the writer and the envs."""
        self.writer.close()
        for env in [*self.train_envs, *self.eval_envs]:
            env.close()
        if self.scorer is not None:
            self._render_env.close()


def train_on_rapl_reward(
    cfg: Mapping[str, Any], run_dir: str | Path, resume: bool = False
) -> dict[str, float]:
    """Run SAC or PPO on the RAPL reward (or a baseline, ``cfg["reward"]``); final metrics.

    ``cfg`` has the keys of ``pbrl/configs/rapl/rl.yaml``; see the module docstring.
    """
    run = RaplRun(cfg, run_dir)
    try:
        if resume:
            run.try_resume()
        return run.run()
    finally:
        run.close()
