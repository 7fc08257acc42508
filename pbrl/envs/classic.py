"""gymnasium classic control behind the :class:`~pbrl.envs.base.PbrlEnv` contract.

``pendulum`` is gymnasium ``Pendulum-v1`` (200-step episodes, torque ``u`` in ``[-2, 2]``),
HERON's smallest setting (Bukharin et al., Pendulum with the factors below). Its reward
factors are the three costs of gymnasium's reward, each computed from the state *before* the
step and the clipped torque, as gymnasium does:

================ =============================================================
factor           value
================ =============================================================
``theta_sq``     ``angle_normalize(theta) ** 2`` (angle wrapped to ``[-pi, pi)``)
``theta_dot_sq`` ``theta_dot ** 2``
``torque_sq``    ``clip(u, -2, 2) ** 2``
================ =============================================================

All three are costs (lower is better, unlike the signed MuJoCo factors), and the true reward
is ``-(theta_sq + 0.1 * theta_dot_sq + 0.001 * torque_sq)`` — gymnasium's own reward
(tests check equality step by step). A HERON teacher on them needs
``directions=[lower, lower, lower]``.

The stored simulator state is ``(theta, theta_dot, last_u)``: the pendulum's state plus the
torque of the step that led to it, which gymnasium draws as an arrow (``NaN`` after a reset,
when gymnasium draws none). :meth:`PendulumEnv.render_state` re-draws a state with
gymnasium's own renderer on a private env, so a 500 x 500 frame equals
``gym.make("Pendulum-v1", render_mode="rgb_array").render()`` pixel for pixel. Rendering
needs pygame (``pip install 'gymnasium[classic-control]'``); it draws headless through SDL's
offscreen driver, no display needed. Other sizes are drawn natively at that size (the scene
scales with the canvas); a non-square size is drawn square and centre-cropped.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.pendulum import PendulumEnv as GymPendulum
from gymnasium.wrappers import TimeLimit

from pbrl.envs.base import PbrlEnv, find_wrapper

PENDULUM_FACTORS: tuple[str, ...] = ("theta_sq", "theta_dot_sq", "torque_sq")
PENDULUM_WEIGHTS: dict[str, float] = {"theta_sq": 1.0, "theta_dot_sq": 0.1, "torque_sq": 0.001}
"""Cost weights of gymnasium's Pendulum-v1 reward (``reward = -sum w_k factor_k``)."""


def angle_normalize(theta: np.ndarray | float) -> np.ndarray:
    """``theta`` wrapped to ``[-pi, pi)``, the form gymnasium's Pendulum reward uses."""
    return ((np.asarray(theta, np.float64) + np.pi) % (2 * np.pi)) - np.pi


class PendulumRenderer:
    """Draws ``(theta, theta_dot, last_u)`` states with gymnasium's own Pendulum renderer.

    One private ``rgb_array`` Pendulum per canvas size; the live env is never touched.
    """

    def __init__(self) -> None:
        try:
            import pygame  # noqa: F401
        except ImportError:
            from pbrl.envs import MissingExtraError

            raise MissingExtraError(
                "classic-control (pendulum rendering)",
                None,
                "pygame",
                "install it with `pip install 'gymnasium[classic-control]'` (or `pip install "
                "pygame`); stepping the env works without it, only frames need it",
            ) from None
        # No display here: SDL's offscreen driver draws into memory.
        if not os.environ.get("DISPLAY"):
            os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")
        self._envs: dict[int, GymPendulum] = {}

    def render(self, state: np.ndarray, width: int, height: int) -> np.ndarray:
        """``(height, width, 3)`` uint8 frame of a stored state."""
        side = max(width, height)
        env = self._envs.get(side)
        if env is None:
            env = GymPendulum(render_mode="rgb_array")
            env.screen_dim = side
            self._envs[side] = env
        env.state = np.array(state[:2], np.float64)
        env.last_u = None if np.isnan(state[2]) else float(state[2])
        frame = env.render()
        top, left = (side - height) // 2, (side - width) // 2
        return np.ascontiguousarray(frame[top : top + height, left : left + width])

    def close(self) -> None:
        """Close the private envs (quits pygame's display module)."""
        for env in self._envs.values():
            env.close()
        self._envs.clear()


class PendulumEnv(PbrlEnv):
    """gymnasium ``Pendulum-v1`` with cost factors, ``(theta, theta_dot, last_u)`` sim state.

    Args:
        **kwargs: go to ``gym.make("Pendulum-v1", ...)`` (e.g. ``max_episode_steps``, ``g``).
    """

    factor_names = PENDULUM_FACTORS

    def __init__(self, **kwargs: Any) -> None:
        env = gym.make("Pendulum-v1", disable_env_checker=True, **kwargs)
        limit = find_wrapper(env, TimeLimit)
        if limit is None:
            raise ValueError("Pendulum-v1 has no time limit; pass max_episode_steps")
        super().__init__(env, limit._max_episode_steps)
        self._limit = limit
        self._pend: GymPendulum = env.unwrapped  # type: ignore[assignment]
        self._renderer: PendulumRenderer | None = None

    def _get_sim_state(self) -> np.ndarray:
        out = np.empty(3, np.float64)
        out[:2] = self._pend.state
        last_u = self._pend.last_u
        out[2] = np.nan if last_u is None else last_u
        return out

    def _factors(self, info: dict[str, Any]) -> dict[str, float]:
        # From the pre-step state, as gymnasium's reward: PbrlEnv.step calls this before it
        # replaces self._state (the state the agent acted on) with the post-step one.
        assert self._state is not None
        th, thdot, _ = self._state.tolist()
        th = (th + math.pi) % (2 * math.pi) - math.pi  # angle_normalize, on a Python float
        u = float(self._pend.last_u)  # the clipped torque gymnasium just applied
        return {"theta_sq": th * th, "theta_dot_sq": thdot * thdot, "torque_sq": u * u}

    def reward_from_factors(self, factors: Mapping[str, np.ndarray]) -> np.ndarray:
        """``-(theta_sq + 0.1 theta_dot_sq + 0.001 torque_sq)`` (gymnasium's reward)."""
        return -sum(w * np.asarray(factors[k], np.float64) for k, w in PENDULUM_WEIGHTS.items())

    def _render(self, state: np.ndarray, width: int, height: int) -> np.ndarray:
        if self._renderer is None:
            self._renderer = PendulumRenderer()
        return self._renderer.render(state, width, height)

    def _snapshot(self) -> dict[str, Any]:
        return {
            "state": np.array(self._pend.state, np.float64),
            "last_u": self._pend.last_u,
            "np_random": self._pend.np_random.bit_generator.state,
            # this layer counts the steps (it steps under the TimeLimit: base.py)
            "elapsed": self._ep_len,
        }

    def _restore(self, snap: dict[str, Any]) -> None:
        self._pend.state = np.array(snap["state"], np.float64)
        self._pend.last_u = snap["last_u"]
        self._pend.np_random.bit_generator.state = snap["np_random"]
        self._limit._elapsed_steps = snap["elapsed"]
        order = self.env
        while hasattr(order, "env"):
            if hasattr(order, "_has_reset"):
                order._has_reset = True
            order = order.env

    def close(self) -> None:
        """Close the env and the renderer."""
        if self._renderer is not None:
            self._renderer.close()
        super().close()


def register_suite(register: Any) -> None:
    """Registry hook: ``pendulum``."""

    def factory(seed: int | None = None, **kw: Any) -> PbrlEnv:
        return PendulumEnv(**kw)

    register(
        "pendulum",
        factory,
        suite="classic",
        description="gymnasium Pendulum-v1 (factors theta_sq, theta_dot_sq, torque_sq)",
    )
