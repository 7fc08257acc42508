"""gymnasium MuJoCo v5 locomotion behind the :class:`~pbrl.envs.base.PbrlEnv` contract.

Reward factors are the v5 envs' own ``reward_*`` info terms (costs enter with their negative
sign), and the true reward is their sum:

========== ==========================================================================
env        reward = sum of
========== ==========================================================================
halfcheetah reward_forward + reward_ctrl
hopper     reward_forward + reward_ctrl + reward_survive
walker2d   reward_forward + reward_ctrl + reward_survive
ant        reward_forward + reward_ctrl + reward_contact + reward_survive
humanoid   reward_forward + reward_ctrl + reward_contact + reward_survive
========== ==========================================================================

The stored simulator state is ``mj_getState(mjSTATE_FULLPHYSICS)`` (time, qpos, qvel, act,
mocap, plugin state): everything that decides what a frame shows. Checkpoints copy the whole
``MjData`` instead, so a resumed episode continues bit-for-bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium.wrappers import TimeLimit

from pbrl.envs.base import (
    PbrlEnv,
    check_render_quality,
    factor_reader,
    find_wrapper,
    pack_mjdata,
    state_reader,
    unpack_mjdata,
)

_RENDER_STATE = mujoco.mjtState.mjSTATE_FULLPHYSICS

# registry name -> (gymnasium id, reward factor names)
LOCOMOTION: dict[str, tuple[str, tuple[str, ...]]] = {
    "halfcheetah": ("HalfCheetah-v5", ("reward_forward", "reward_ctrl")),
    "hopper": ("Hopper-v5", ("reward_forward", "reward_ctrl", "reward_survive")),
    "walker2d": ("Walker2d-v5", ("reward_forward", "reward_ctrl", "reward_survive")),
    "ant": ("Ant-v5", ("reward_forward", "reward_ctrl", "reward_contact", "reward_survive")),
    "humanoid": (
        "Humanoid-v5",
        ("reward_forward", "reward_ctrl", "reward_contact", "reward_survive"),
    ),
}


class MujocoRenderer:
    """Renders MuJoCo states into frames on a private ``MjData`` (the live one is untouched).

    Uses the model's ``track`` camera when it has one (a camera that follows the body, as
    the v5 locomotion models define), otherwise a free camera following body 1. Frames equal
    ``gym.make(id, render_mode="rgb_array", camera_name="track").render()`` pixel for pixel
    on the same state (tests check this); gymnasium's default camera is not used because in
    gymnasium 1.4 it is a free camera fixed where the robot stood when rendering began.
    """

    def __init__(self, model: mujoco.MjModel, quality: str = "fast"):
        self.model = model
        self.quality = check_render_quality(quality)
        self.data = mujoco.MjData(model)
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}
        cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, "track")
        if cam_id >= 0:
            self.camera: int | mujoco.MjvCamera = cam_id
        else:
            cam = mujoco.MjvCamera()
            mujoco.mjv_defaultFreeCamera(model, cam)
            cam.type = mujoco.mjtCamera.mjCAMERA_TRACKING
            cam.trackbodyid = 1 if model.nbody > 1 else 0
            cam.distance = 4.0
            self.camera = cam

    def render(self, state: np.ndarray, width: int, height: int) -> np.ndarray:
        """``(height, width, 3)`` uint8 frame of a FULLPHYSICS state."""
        key = (width, height)
        if key not in self._renderers:
            # The offscreen buffer must hold the frame; grow the model's default if needed.
            self.model.vis.global_.offwidth = max(self.model.vis.global_.offwidth, width)
            self.model.vis.global_.offheight = max(self.model.vis.global_.offheight, height)
            self._renderers[key] = make_renderer(self.model, height, width, self.quality)
        mujoco.mj_setState(self.model, self.data, state, _RENDER_STATE)
        mujoco.mj_forward(self.model, self.data)
        renderer = self._renderers[key]
        renderer.update_scene(self.data, camera=self.camera)
        return renderer.render().copy()

    def close(self) -> None:
        """Free the GL contexts."""
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()


def make_renderer(model: mujoco.MjModel, height: int, width: int, quality: str) -> mujoco.Renderer:
    """A ``mujoco.Renderer`` with the visual settings of ``quality`` (:data:`RENDER_QUALITIES`).

    ``"fast"`` creates the GL context without multisampling and turns shadows and reflections
    off in the renderer's scene; the model's own settings are left as they were.
    """
    check_render_quality(quality)
    if quality == "full":
        return mujoco.Renderer(model, height=height, width=width)
    samples = model.vis.quality.offsamples
    model.vis.quality.offsamples = 0
    try:
        r = mujoco.Renderer(model, height=height, width=width)
    finally:
        model.vis.quality.offsamples = samples
    r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
    r.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
    return r


def get_state(model: mujoco.MjModel, data: mujoco.MjData) -> np.ndarray:
    """``mj_getState(mjSTATE_FULLPHYSICS)`` as a float64 vector."""
    out = np.empty(mujoco.mj_stateSize(model, _RENDER_STATE), np.float64)
    mujoco.mj_getState(model, data, out, _RENDER_STATE)
    return out


class GymMujocoEnv(PbrlEnv):
    """A gymnasium MuJoCo v5 env with reward factors, sim state and re-rendering."""

    def __init__(
        self,
        gym_id: str,
        factor_names: tuple[str, ...],
        render_quality: str = "fast",
        **kwargs: Any,
    ):
        self.render_quality = check_render_quality(render_quality)
        env = gym.make(gym_id, disable_env_checker=True, **kwargs)
        limit = find_wrapper(env, TimeLimit)
        if limit is None:
            raise ValueError(f"{gym_id} has no time limit; pass max_episode_steps")
        super().__init__(env, limit._max_episode_steps)
        self._limit = limit
        self.factor_names = factor_names
        self._model: mujoco.MjModel = env.unwrapped.model
        self._data: mujoco.MjData = env.unwrapped.data
        self._state_size = mujoco.mj_stateSize(self._model, _RENDER_STATE)
        self._renderer: MujocoRenderer | None = None
        # Bound per instance (shadowing the methods below): no attribute lookups per step.
        self._get_sim_state = state_reader(  # type: ignore[method-assign]
            self._model, self._data, _RENDER_STATE
        )
        self._factors = factor_reader(tuple(factor_names))  # type: ignore[method-assign]

    def _get_sim_state(self) -> np.ndarray:  # replaced per instance by state_reader
        out = np.empty(self._state_size, np.float64)
        mujoco.mj_getState(self._model, self._data, out, _RENDER_STATE)
        return out

    def _factors(self, info: dict[str, Any]) -> dict[str, float]:  # replaced per instance
        return {k: float(info[k]) for k in self.factor_names}

    def reward_from_factors(self, factors: Mapping[str, np.ndarray]) -> np.ndarray:
        """Sum of the factors (each already signed: costs are negative)."""
        return sum(np.asarray(factors[k], np.float64) for k in self.factor_names)

    def _render(self, state: np.ndarray, width: int, height: int) -> np.ndarray:
        if self._renderer is None:
            self._renderer = MujocoRenderer(self._model, self.render_quality)
        return self._renderer.render(state, width, height)

    def _snapshot(self) -> dict[str, Any]:
        return {
            "data": pack_mjdata(self._data),
            "np_random": self.env.unwrapped.np_random.bit_generator.state,
            # this layer counts the steps (it steps under the TimeLimit: base.py)
            "elapsed": self._ep_len,
        }

    def _restore(self, snap: dict[str, Any]) -> None:
        # Copy into the live MjData (other objects hold references to it).
        mujoco.mj_copyData(self._data, self._model, unpack_mjdata(snap["data"]))
        self.env.unwrapped.np_random.bit_generator.state = snap["np_random"]
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


def make_locomotion(name: str, **kwargs: Any) -> GymMujocoEnv:
    """Build a registered locomotion env by its pbrl name (kwargs go to ``gym.make``)."""
    gym_id, factors = LOCOMOTION[name]
    return GymMujocoEnv(gym_id, factors, **kwargs)


def register_suite(register: Any) -> None:
    """Registry hook: one entry per :data:`LOCOMOTION` task."""
    for key, (gym_id, _) in LOCOMOTION.items():

        def factory(seed: int | None = None, _key: str = key, **kw: Any) -> PbrlEnv:
            return make_locomotion(_key, **kw)

        register(key, factory, suite="mujoco", description=f"gymnasium {gym_id}")
