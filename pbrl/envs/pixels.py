"""Pixel observations for any :class:`~pbrl.envs.base.PbrlEnv`: stacked frames from sim state.

``make(name, obs="pixels", pixel_size=84, frame_stack=3)`` wraps the suite's env in
:class:`PixelObservation`. Frames come from the same ``render_state`` that re-renders clips,
so what the agent sees and what a person is shown are the same picture.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from pbrl.envs.base import PbrlEnv


class PixelObservation(gym.Wrapper):
    """Observation = the last ``frame_stack`` RGB frames, channel-first ``(3k, H, W)`` uint8.

    The info contract of the wrapped env (true reward, factors, sim state, success) is kept;
    the vector observation is available as ``info["state_obs"]``.
    """

    def __init__(self, env: PbrlEnv, size: int | tuple[int, int] = 84, frame_stack: int = 3):
        if not isinstance(env, PbrlEnv):
            raise TypeError(f"PixelObservation wraps a PbrlEnv, got {type(env).__name__}")
        super().__init__(env)
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if h < 1 or w < 1 or frame_stack < 1:
            raise ValueError(f"pixel_size and frame_stack must be >= 1, got {size}, {frame_stack}")
        self.height, self.width, self.frame_stack = h, w, int(frame_stack)
        self.observation_space = gym.spaces.Box(0, 255, (3 * self.frame_stack, h, w), np.uint8)
        self._frames: deque[np.ndarray] = deque(maxlen=self.frame_stack)
        self._pbrl = env

    def _frame(self) -> np.ndarray:
        frame = self._pbrl.render_live(self.width, self.height)
        return np.ascontiguousarray(frame.transpose(2, 0, 1))

    def _obs(self) -> np.ndarray:
        return np.concatenate(list(self._frames), axis=0)

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # type: ignore[override]
        """Reset; the first frame fills the whole stack."""
        state_obs, info = self.env.reset(seed=seed, options=options)
        frame = self._frame()
        self._frames.clear()
        for _ in range(self.frame_stack):
            self._frames.append(frame)
        info["state_obs"] = state_obs
        return self._obs(), info

    def step(self, action):  # type: ignore[no-untyped-def,override]
        """Step and push the new frame."""
        state_obs, reward, terminated, truncated, info = self.env.step(action)
        self._frames.append(self._frame())
        info["state_obs"] = state_obs
        return self._obs(), reward, terminated, truncated, info

    # --- the PbrlEnv surface, passed through ------------------------------------------
    @property
    def factor_names(self) -> tuple[str, ...]:
        """Reward factor names of the wrapped env."""
        return self._pbrl.factor_names

    @property
    def state_dim(self) -> int:
        """Size of ``info["sim_state"]``."""
        return self._pbrl.state_dim

    def reward_from_factors(self, factors: Mapping[str, np.ndarray]) -> np.ndarray:
        """See :meth:`PbrlEnv.reward_from_factors`."""
        return self._pbrl.reward_from_factors(factors)

    def render_state(self, state: np.ndarray, width: int = 84, height: int = 84) -> np.ndarray:
        """See :meth:`PbrlEnv.render_state`."""
        return self._pbrl.render_state(state, width, height)

    def render_live(self, width: int = 84, height: int = 84) -> np.ndarray:
        """See :meth:`PbrlEnv.render_live`."""
        return self._pbrl.render_live(width, height)

    def set_max_episode_steps(self, n: int) -> None:
        """See :meth:`PbrlEnv.set_max_episode_steps`."""
        self._pbrl.set_max_episode_steps(n)

    @property
    def max_episode_steps(self) -> int:
        """Episode length limit of the wrapped env."""
        return self._pbrl.max_episode_steps

    def get_env_state(self) -> dict[str, Any]:
        """The wrapped env's state plus the frame stack."""
        return {"env": self._pbrl.get_env_state(), "frames": [f.copy() for f in self._frames]}

    def set_env_state(self, snap: dict[str, Any]) -> None:
        """Inverse of :meth:`get_env_state`."""
        self._pbrl.set_env_state(snap["env"])
        self._frames.clear()
        self._frames.extend(np.array(f) for f in snap["frames"])
