"""Stable-Baselines3 policy optimisers driven by a learned reward.

The preference loop calls :meth:`SB3Agent.learn` in chunks between feedback rounds; the
environment's reward is replaced by the learned reward in :class:`LearnedRewardVecEnv`, so
SB3 never sees the true reward (it travels in ``info`` for the buffer and the evaluator only).
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper, VecNormalize

RewardFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(obs (B, D_o), action (B, D_a) scaled to [-1, 1]) -> (B,) reward."""

MaybeRewardFn = Callable[[np.ndarray, np.ndarray], np.ndarray | None]
"""A reward function that may return None: then the env's own reward is used."""


def scale_action(action: np.ndarray, space: gym.spaces.Box) -> np.ndarray:
    """Map an env action to [-1, 1] (the convention of SB3's replay buffer and our reward)."""
    low, high = space.low, space.high
    return (2.0 * (action - low) / (high - low) - 1.0).astype(np.float32)


class LearnedRewardVecEnv(VecEnvWrapper):
    """Replaces the env reward by ``reward_fn(s_t, a_t)`` for a whole vector of envs at once.

    The true reward stays in ``info["true_reward"]``. When ``recorder`` is given (on-policy
    agents, which keep no replay buffer), every transition is also added to it so queries can
    be cut from recent episodes.
    """

    def __init__(self, venv: VecEnv, reward_fn: MaybeRewardFn, recorder: Any | None = None):
        super().__init__(venv)
        self.reward_fn = reward_fn
        self.recorder = recorder
        self._obs: np.ndarray | None = None
        self._actions: np.ndarray | None = None

    def reset(self) -> np.ndarray:
        """Reset every env; remember s_0 for the first reward."""
        self._obs = self.venv.reset()
        return self._obs

    def step_async(self, actions: np.ndarray) -> None:
        """Remember a_t, then step."""
        self._actions = actions
        self.venv.step_async(actions)

    def step_wait(self):  # type: ignore[no-untyped-def]
        """Step and replace the reward by ``reward_fn(s_t, a_t)`` (true reward stays in info)."""
        next_obs, _true_rew, dones, infos = self.venv.step_wait()
        assert self._obs is not None and self._actions is not None
        act = scale_action(np.asarray(self._actions, np.float32), self.action_space)
        learned = self.reward_fn(self._obs.astype(np.float32), act)
        reward = np.asarray(_true_rew if learned is None else learned, np.float32)
        if self.recorder is not None:
            real_next = next_obs.copy()
            for i, done in enumerate(dones):
                if done and "terminal_observation" in infos[i]:
                    real_next[i] = infos[i]["terminal_observation"]
            self.recorder.add(self._obs, real_next, act, reward, dones, infos)
        self._obs = next_obs
        return next_obs, reward, dones, infos

    # SB3 pickles nothing of this wrapper; checkpoint the last obs explicitly.
    def get_state(self) -> dict[str, Any]:
        """The last observation (for checkpoints)."""
        return {"obs": None if self._obs is None else self._obs.copy()}

    def set_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`get_state`."""
        self._obs = state["obs"]


class _ScalarWriter(KVWriter):
    """Forwards SB3's logged scalars to our TensorBoard writer under STYLE.md namespaces."""

    RENAME = {"train/": "losses/", "rollout/": "charts/rollout_", "time/": "charts/time_"}

    def __init__(self, sink: Callable[[str, float, int], None]):
        self.sink = sink

    def write(self, key_values: dict[str, Any], key_excluded: dict, step: int = 0) -> None:
        for key, value in key_values.items():
            if not isinstance(value, (int, float, np.floating, np.integer)):
                continue
            for old, new in self.RENAME.items():
                if key.startswith(old):
                    key = new + key[len(old) :]
                    break
            self.sink(key, float(value), step)

    def close(self) -> None:
        pass


class _FixedHorizonMixin:
    """Keeps SB3's progress (lr / clip schedules) relative to the whole run.

    We call ``learn()`` in chunks; SB3 would otherwise restart its schedules every chunk.
    """

    pbrl_total_timesteps: int = 1

    def _update_current_progress_remaining(self, num_timesteps: int, total_timesteps: int) -> None:
        total = max(self.pbrl_total_timesteps, 1)
        self._current_progress_remaining = 1.0 - float(num_timesteps) / float(total)


class PbrlSAC(_FixedHorizonMixin, SAC):
    """SB3 SAC with whole-run schedules."""


class PbrlPPO(_FixedHorizonMixin, PPO):
    """SB3 PPO with whole-run schedules."""


def linear_schedule(start: float) -> Callable[[float], float]:
    """``progress_remaining -> start * progress_remaining`` (BPref's decayed PPO clip)."""

    def f(progress_remaining: float) -> float:
        return start * progress_remaining

    return f


def reset_critic(model: SAC) -> None:
    """Re-initialise SAC's critic, its target and the critic optimiser (PEBBLE step 3).

    The actor and the temperature are kept, as in BPref's ``reset_critic``.
    """
    for module in model.critic.modules():
        if isinstance(module, torch.nn.Linear):
            module.reset_parameters()
    model.critic_target.load_state_dict(model.critic.state_dict())
    model.critic.optimizer = model.critic.optimizer.__class__(
        model.critic.parameters(), **model.critic.optimizer.defaults
    )


# Attributes of an SB3 algorithm that change while it learns and are not model weights.
_SB3_STATE = (
    "num_timesteps",
    "_n_updates",
    "_episode_num",
    "_last_obs",
    "_last_episode_starts",
    "_last_original_obs",
    "_current_progress_remaining",
    "ep_info_buffer",
    "ep_success_buffer",
    "_num_timesteps_at_start",
)


def sb3_state(model: SAC | PPO) -> dict[str, Any]:
    """Everything needed to continue ``model`` exactly: weights, optimisers, counters."""
    buf = io.BytesIO()
    params = model.get_parameters()
    torch.save(params, buf)
    attrs = {k: getattr(model, k, None) for k in _SB3_STATE}
    space_rng = model.action_space.np_random.bit_generator.state
    extra: dict[str, Any] = {}
    if isinstance(model, SAC) and getattr(model, "log_ent_coef", None) is not None:
        extra["log_ent_coef"] = model.log_ent_coef.detach().clone()
    return {
        "params": buf.getvalue(),
        "attrs": pickle.dumps(attrs),
        "space_rng": space_rng,
        "extra": extra,
    }


def load_sb3_state(model: SAC | PPO, state: dict[str, Any]) -> None:
    """Inverse of :func:`sb3_state` on a freshly built model of the same configuration."""
    params = torch.load(io.BytesIO(state["params"]), weights_only=False)
    model.set_parameters(params, exact_match=True, device=model.device)
    for k, v in pickle.loads(state["attrs"]).items():
        setattr(model, k, v)
    model.action_space.np_random.bit_generator.state = state["space_rng"]
    if "log_ent_coef" in state["extra"]:
        with torch.no_grad():
            model.log_ent_coef.copy_(state["extra"]["log_ent_coef"])


def make_vec_env(env_fns: Sequence[Callable[[], gym.Env]]) -> DummyVecEnv:
    """A DummyVecEnv (in-process): MuJoCo steps are microseconds, pipes would dominate."""
    return DummyVecEnv(list(env_fns))


def unwrap_normalize(env: VecEnv) -> VecNormalize | None:
    """The VecNormalize layer of ``env``, if any."""
    while isinstance(env, VecEnvWrapper):
        if isinstance(env, VecNormalize):
            return env
        env = env.venv
    return None


def make_logger(sink: Callable[[str, float, int], None]) -> Logger:
    """An SB3 logger whose only output is our namespaced TensorBoard sink."""
    return Logger(folder=None, output_formats=[_ScalarWriter(sink)])
