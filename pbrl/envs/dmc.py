"""dm_control suite tasks (those B-Pref reports) through a gymnasium interface of our own.

Observations are the task's observation dict flattened in its key order (float32); actions
are the task's Box (``[-1, 1]`` for these tasks); episodes last 1000 control steps
(dm_control's time limit) and end with ``truncated=True``; one control step per env step
(no action repeat, as in BPref's dmc2gym setting ``frame_skip=1``).

Reward factors are recomputed from physics exactly as each task's ``get_reward`` does
(``dm_control.suite``), and the reward is this documented function of them:

=============== ==============================================================================
task            reward_from_factors
=============== ==============================================================================
walker_walk     (3 standing + upright) / 4 * (5 move + 1) / 6
walker_run      same, move speed 8
cheetah_run     run    (= tolerance(speed, (10, inf), margin 10, linear))
quadruped_walk  upright * move
quadruped_run   upright * move (desired speed 5)
=============== ==============================================================================

Raw quantities (``speed``, ``torso_height``) are reported beside them for factor-based
teachers; they do not enter the reward.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from pbrl.envs.base import PbrlEnv

TASKS: dict[str, tuple[str, str]] = {
    "walker_walk": ("walker", "walk"),
    "walker_run": ("walker", "run"),
    "cheetah_run": ("cheetah", "run"),
    "quadruped_walk": ("quadruped", "walk"),
    "quadruped_run": ("quadruped", "run"),
}

_FACTORS: dict[str, tuple[str, ...]] = {
    "walker": ("standing", "upright", "move", "torso_height", "speed"),
    "cheetah": ("run", "speed"),
    "quadruped": ("upright", "move", "speed"),
}


class _DMCCore(gym.Env):
    """The dm_control environment as a plain gymnasium env (no pbrl extras)."""

    metadata = {"render_modes": []}

    def __init__(self, domain: str, task: str, seed: int | None = None):
        from dm_control import suite

        self.domain, self.task_name = domain, task
        self._env = suite.load(domain, task, task_kwargs={"random": seed})
        self.physics = self._env.physics
        self.task = self._env.task
        spec = self._env.action_spec()
        self.action_space = gym.spaces.Box(
            spec.minimum.astype(np.float32), spec.maximum.astype(np.float32), dtype=np.float32
        )
        obs_spec = self._env.observation_spec()
        self._obs_keys = list(obs_spec)
        dim = sum(int(np.prod(obs_spec[k].shape)) for k in self._obs_keys)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), dtype=np.float32)
        self.max_episode_steps = int(round(self._env._step_limit))

    def _flat(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([np.asarray(obs[k], np.float32).ravel() for k in self._obs_keys])

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # type: ignore[override]
        if seed is not None:
            # dm_control draws initial states from the task's RandomState.
            self.task._random = np.random.RandomState(seed)
        ts = self._env.reset()
        return self._flat(ts.observation), {}

    def step(self, action):  # type: ignore[no-untyped-def,override]
        ts = self._env.step(np.asarray(action, np.float64))
        truncated = ts.last()
        return self._flat(ts.observation), float(ts.reward), False, truncated, {}


def _tolerance(
    x: float, bounds: tuple[float, float], margin: float, sigmoid: str, value_at_margin: float
) -> float:
    from dm_control.utils import rewards

    return float(
        rewards.tolerance(
            x, bounds=bounds, margin=margin, sigmoid=sigmoid, value_at_margin=value_at_margin
        )
    )


class DMCEnv(PbrlEnv):
    """A dm_control task with reward factors, sim state and re-rendering."""

    def __init__(self, name: str, seed: int | None = None):
        if name not in TASKS:
            raise KeyError(f"unknown dm_control task {name!r}; valid: {sorted(TASKS)}")
        domain, task = TASKS[name]
        core = _DMCCore(domain, task, seed)
        super().__init__(core, core.max_episode_steps)
        self.core = core
        self.factor_names = _FACTORS[domain]
        self._render_physics = None

    def _get_sim_state(self) -> np.ndarray:
        return np.asarray(self.core.physics.get_state(), np.float64).copy()

    def _factors(self, info: dict[str, Any]) -> dict[str, float]:
        p, task, domain = self.core.physics, self.core.task, self.core.domain
        if domain == "walker":
            standing = _tolerance(p.torso_height(), (1.2, float("inf")), 0.6, "gaussian", 0.1)
            upright = (1.0 + float(p.torso_upright())) / 2.0
            speed = float(p.horizontal_velocity())
            ms = float(task._move_speed)
            move = _tolerance(speed, (ms, float("inf")), ms / 2, "linear", 0.5) if ms else 1.0
            return {
                "standing": standing,
                "upright": upright,
                "move": move,
                "torso_height": float(p.torso_height()),
                "speed": speed,
            }
        if domain == "cheetah":
            speed = float(p.speed())
            return {
                "run": _tolerance(speed, (10.0, float("inf")), 10.0, "linear", 0.0),
                "speed": speed,
            }
        # quadruped
        speed = float(p.torso_velocity()[0])
        ds = float(task._desired_speed)
        move = _tolerance(speed, (ds, float("inf")), ds, "linear", 0.5)
        upright = _tolerance(float(p.torso_upright()), (1.0, float("inf")), 2.0, "linear", 0.0)
        return {"upright": upright, "move": move, "speed": speed}

    def reward_from_factors(self, factors: Mapping[str, np.ndarray]) -> np.ndarray:
        """The task's reward from its factors (see the module table)."""
        f = {k: np.asarray(v, np.float64) for k, v in factors.items()}
        domain = self.core.domain
        if domain == "walker":
            stand = (3.0 * f["standing"] + f["upright"]) / 4.0
            return stand * (5.0 * f["move"] + 1.0) / 6.0
        if domain == "cheetah":
            return f["run"]
        return f["upright"] * f["move"]

    def _render(self, state: np.ndarray, width: int, height: int) -> np.ndarray:
        if self._render_physics is None:
            self._render_physics = self.core.physics.copy(share_model=True)
        p = self._render_physics
        with p.reset_context():
            p.set_state(state)
        return np.asarray(p.render(height=height, width=width, camera_id=0)).copy()

    def _snapshot(self) -> dict[str, Any]:
        env = self.core._env
        return {
            "data": pickle.dumps(self.core.physics.data.ptr),
            "task_random": self.core.task.random.get_state(),
            "step_count": env._step_count,
            "reset_next_step": env._reset_next_step,
        }

    def _restore(self, snap: dict[str, Any]) -> None:
        p = self.core.physics
        mujoco.mj_copyData(p.data.ptr, p.model.ptr, pickle.loads(snap["data"]))
        self.core.task.random.set_state(snap["task_random"])
        self.core._env._step_count = snap["step_count"]
        self.core._env._reset_next_step = snap["reset_next_step"]
