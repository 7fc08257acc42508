"""Training one policy on one reward program (a candidate of an ICPL round).

The environment's reward never reaches the agent: :class:`ProgramRewardVecEnv` returns 0 and
records every transition ``(s_t, a_t, s_{t+1})``; at the end of each PPO rollout
:class:`RelabelCallback` sends the whole rollout to the sandboxed program in one call, writes
its rewards into the rollout buffer (keeping SB3's time-limit bootstrap terms) and recomputes
returns and advantages. The true return is recorded for the proxy teacher and the evaluator
only; the LLM sees the program's own components and the episode lengths.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from pbrl import envs as pbrl_envs
from pbrl.agents.sb3 import make_vec_env
from pbrl.icpl.sandbox import ProgramError, RewardSandbox, SandboxLimits, SandboxPolicy


class ProgramRewardVecEnv(VecEnvWrapper):
    """Rewards 0 and records ``(obs, action, next_obs)`` of every step until :meth:`take`.

    ``next_obs`` is the real successor (the terminal observation at an episode's end, not the
    reset one). The actions are those the env applied (clipped to the action space).
    """

    def __init__(self, venv: VecEnv):
        super().__init__(venv)
        self._obs: np.ndarray | None = None
        self._act: np.ndarray | None = None
        self.records: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.episodes: list[tuple[float, int]] = []  # (true return, length) of finished ones

    def reset(self) -> np.ndarray:
        """Reset every env."""
        self._obs = self.venv.reset()
        return self._obs

    def step_async(self, actions: np.ndarray) -> None:
        """Remember a_t (as applied), then step."""
        space = self.action_space
        self._act = np.clip(actions, space.low, space.high).astype(np.float32)
        self.venv.step_async(actions)

    def step_wait(self):  # type: ignore[no-untyped-def]
        """Step; reward 0, transitions recorded."""
        next_obs, _true, dones, infos = self.venv.step_wait()
        assert self._obs is not None and self._act is not None
        real_next = np.array(next_obs, dtype=np.float32, copy=True)
        for i, done in enumerate(dones):
            if done and "terminal_observation" in infos[i]:
                real_next[i] = infos[i]["terminal_observation"]
            if "episode" in infos[i]:
                ep = infos[i]["episode"]
                self.episodes.append((float(ep["r"]), int(ep["l"])))
        self.records.append((self._obs.astype(np.float32), self._act, real_next))
        self._obs = next_obs
        return next_obs, np.zeros(len(dones), np.float32), dones, infos

    def take(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The recorded steps as ``(T, N, D)`` arrays, and forget them."""
        obs, act, nxt = (np.stack(x) for x in zip(*self.records, strict=True))
        self.records = []
        return obs, act, nxt


class RelabelCallback(BaseCallback):
    """Replaces a rollout's rewards by the program's, then recomputes returns/advantages."""

    def __init__(self, env: ProgramRewardVecEnv, sandbox: RewardSandbox, normalize: bool):
        super().__init__()
        self.env = env
        self.sandbox = sandbox
        self.normalize = normalize
        self.rms = RunningMeanStd(shape=())
        self.trace: dict[str, list[float]] = {}
        self.true_returns: list[float] = []
        self.error: ProgramError | None = None

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        obs, act, nxt = self.env.take()
        t, n = obs.shape[:2]
        try:
            out = self.sandbox(
                obs.reshape(t * n, -1), act.reshape(t * n, -1), nxt.reshape(t * n, -1)
            )
        except ProgramError as err:
            self.error = err
            raise
        reward = out.total.reshape(t, n)
        self.rms.update(reward.ravel())
        scaled = reward / math.sqrt(self.rms.var + 1e-8) if self.normalize else reward
        buf = self.model.rollout_buffer
        # With zero env rewards, buf.rewards holds only SB3's time-limit bootstrap terms.
        buf.rewards[:] = buf.rewards + scaled.astype(np.float32)
        buf.compute_returns_and_advantage(
            last_values=self.locals["values"], dones=self.locals["dones"]
        )
        self.trace.setdefault("total", []).append(float(out.total.mean()))
        for k, v in out.components.items():
            self.trace.setdefault(k, []).append(float(v.mean()))
        eps = self.env.episodes
        self.env.episodes = []
        self.trace.setdefault("episode_length", []).append(
            float(np.mean([e[1] for e in eps])) if eps else float("nan")
        )
        self.true_returns.append(float(np.mean([e[0] for e in eps])) if eps else float("nan"))


@dataclass
class TrainSpec:
    """One candidate's training job (plain values: it crosses process boundaries).

    Attributes:
        source: the reward program.
        env_name: registry name; ``env_kwargs`` go to :func:`pbrl.envs.make_env`.
        seed: seeds the envs and the policy.
        total_steps: environment steps (summed over envs).
        n_envs: parallel envs in the vector env.
        ppo: keyword arguments of SB3 PPO (``n_steps``, ``batch_size``, ``learning_rate``, ...).
        net_arch: policy and value network widths.
        normalize_reward: divide program rewards by their running standard deviation.
        eval_episodes: deterministic episodes of the final policy (true return).
        clip_steps: steps of the first evaluation episode kept for clips (sim states).
        limits: sandbox limits (:class:`SandboxLimits` fields).
        policy: sandbox policy (:class:`SandboxPolicy` fields).
    """

    source: str
    env_name: str
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    total_steps: int = 100_000
    n_envs: int = 8
    ppo: dict[str, Any] = field(default_factory=dict)
    net_arch: list[int] = field(default_factory=lambda: [64, 64])
    normalize_reward: bool = True
    eval_episodes: int = 3
    clip_steps: int = 100
    limits: dict[str, Any] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)


def evaluate_policy(model: PPO, spec: TrainSpec) -> tuple[list[float], dict[str, np.ndarray]]:
    """True returns of ``eval_episodes`` deterministic episodes, and the first one's clip."""
    returns: list[float] = []
    clip: dict[str, list[Any]] = {"obs": [], "actions": [], "true_reward": [], "sim_state": []}
    for ep in range(spec.eval_episodes):
        env = pbrl_envs.make_env(spec.env_name, seed=spec.seed + 10_000 + ep, **spec.env_kwargs)
        obs, _ = env.reset(seed=spec.seed + 10_000 + ep)
        total, done = 0.0, False
        while not done:
            act, _ = model.predict(obs, deterministic=True)
            nxt, r, term, trunc, info = env.step(act)
            if ep == 0 and len(clip["obs"]) < spec.clip_steps:
                clip["obs"].append(np.asarray(obs, np.float32))
                clip["actions"].append(np.asarray(act, np.float32))
                clip["true_reward"].append(float(r))
                clip["sim_state"].append(np.asarray(info["sim_state"], np.float64))  # pre-step
            total += float(r)
            obs, done = nxt, term or trunc
        returns.append(total)
        env.close()
    arrays = {k: np.asarray(v) for k, v in clip.items()}
    arrays["true_reward"] = arrays["true_reward"].astype(np.float32)
    return returns, arrays


def train_candidate(spec: TrainSpec) -> dict[str, Any]:
    """Train PPO on ``spec.source``; a plain dict with the outcome.

    Keys: ``status`` (``trained`` or ``failed``), ``reason``/``error`` when failed,
    ``trace`` (component name -> per-rollout means, plus ``total`` and ``episode_length``),
    ``train_true_returns`` (per rollout), ``final_returns`` (evaluation), ``task_score_final``,
    ``task_score_max``, ``seconds``, ``clip`` (arrays of the first evaluation episode).
    """
    t0 = time.time()
    torch.manual_seed(spec.seed)
    torch.set_num_threads(1)
    sandbox = RewardSandbox(
        spec.source, limits=SandboxLimits(**spec.limits), policy=SandboxPolicy(**spec.policy)
    )
    venv = None
    try:
        sandbox.start()
        venv = ProgramRewardVecEnv(
            make_vec_env(
                [
                    lambda i=i: pbrl_envs.make_env(
                        spec.env_name, seed=spec.seed + i, **spec.env_kwargs
                    )
                    for i in range(spec.n_envs)
                ]
            )
        )
        venv.seed(spec.seed)
        callback = RelabelCallback(venv, sandbox, spec.normalize_reward)
        model = PPO(
            "MlpPolicy",
            venv,
            seed=spec.seed,
            device="cpu",
            verbose=0,
            policy_kwargs={"net_arch": list(spec.net_arch)},
            **spec.ppo,
        )
        try:
            model.learn(total_timesteps=int(spec.total_steps), callback=callback)
        except ProgramError as err:
            return {
                "status": "failed",
                "reason": err.reason,
                "error": err.message,
                "seconds": time.time() - t0,
            }
        returns, clip = evaluate_policy(model, spec)
        train_true = callback.true_returns
        finite = [r for r in train_true if math.isfinite(r)]
        return {
            "status": "trained",
            "trace": callback.trace,
            "train_true_returns": train_true,
            "final_returns": returns,
            "task_score_final": float(np.mean(returns)),
            "task_score_max": float(max([*finite, float(np.mean(returns))])),
            "seconds": time.time() - t0,
            "layers": dict(sandbox.layers),
            "clip": clip,
        }
    except ProgramError as err:
        return {
            "status": "failed",
            "reason": err.reason,
            "error": err.message,
            "seconds": time.time() - t0,
        }
    finally:
        sandbox.close()
        if venv is not None:
            venv.close()


def random_transitions(
    env_name: str, env_kwargs: Mapping[str, Any], steps: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``steps`` transitions of a uniformly random policy (the probe batch's source)."""
    env = pbrl_envs.make_env(env_name, seed=seed, **dict(env_kwargs))
    obs, _ = env.reset(seed=seed)
    o, a, n = [], [], []
    for _ in range(steps):
        act = env.action_space.sample()
        nxt, _, term, trunc, _ = env.step(act)
        o.append(obs)
        a.append(act)
        n.append(nxt)
        obs = env.reset()[0] if term or trunc else nxt
    env.close()
    return (np.asarray(o, np.float32), np.asarray(a, np.float32), np.asarray(n, np.float32))
