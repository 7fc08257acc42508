"""dm_control suite tasks (those B-Pref reports) through a gymnasium interface of our own.

Observations are the task's observation dict flattened in its key order (float32); the
action space is ``Box(-1, 1)``: the task's own for walker and cheetah, mapped affinely onto
the task's bounds for quadruped (as B-Pref's ``dmc2gym`` does); episodes last 1000 control steps
(dm_control's time limit) and end with ``truncated=True``, never ``terminated``; one control
step per env step (no action repeat: B-Pref builds these tasks with ``dmc2gym.make`` and its
default ``frame_skip=1``). ``reset(seed=s)`` re-seeds the task's ``RandomState(s)``, which
draws the initial state.

Reward factors are recomputed from physics exactly as each task's ``get_reward`` does
(``dm_control/suite/{walker,cheetah,quadruped}.py``), and the reward is this documented
function of them:

=============== ==============================================================================
task            reward_from_factors
=============== ==============================================================================
walker_walk     (3 standing + upright) / 4 * (5 move + 1) / 6
                standing = tolerance(torso_height, (1.2, inf), margin 0.6, gaussian, 0.1)
                upright  = (1 + torso_upright) / 2
                move     = tolerance(speed, (1, inf), margin 0.5, linear, 0.5)
walker_run      same, move speed 8 (margin 4)
cheetah_run     run = tolerance(speed, (10, inf), margin 10, linear, 0)
quadruped_walk  upright * move
                upright = tolerance(torso_upright, (1, inf), margin 2, linear, 0)
                move    = tolerance(torso_velocity_x, (0.5, inf), margin 0.5, linear, 0.5)
quadruped_run   upright * move (desired speed 5)
=============== ==============================================================================

Raw quantities (``speed``, ``torso_height``) are reported beside them for factor-based
teachers; they do not enter the reward.

The stored simulator state is ``physics.get_state()`` (qpos, qvel, act): what decides a frame
of these tasks (no mocap bodies, static terrain). Checkpoints copy the whole ``mjData``.

Stepping: :class:`DMCEnv` steps the task itself in dm_control's order (``before_step``,
``physics.step``, observation, step limit, ``get_termination``) but without the task's
``get_reward``, whose array ``tolerance`` and named indexing cost more than the reward
factors pbrl computes anyway: the reward is the table's function of the factors (equal to
``get_reward`` to ~1 ulp), and walker's and cheetah's observations are gathered from
``mjData`` by one index. The trajectory is dm_control's, bit for bit (tests step both side
by side through an episode end); it runs 1.2-1.7x faster than ``Environment.step``
(``benchmarks/env_speed.py``: its ``raw`` column is dm_control's own step).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from pbrl.envs.base import (
    PbrlEnv,
    check_render_quality,
    gather_reader,
    pack_mjdata,
    state_reader,
    unpack_mjdata,
)

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

# physics.get_state()'s layout, read with one C call instead of three array copies.
_STATE_SIG = (
    mujoco.mjtState.mjSTATE_QPOS | mujoco.mjtState.mjSTATE_QVEL | mujoco.mjtState.mjSTATE_ACT
)


def _lower_tolerance(lower: float, margin: float, sigmoid: str, value_at_margin: float):
    """``dm_control.utils.rewards.tolerance(x, (lower, inf), margin, sigmoid, value)``.

    A scalar closure: dm_control's array version costs ~10 us per call, which matters
    inside SAC's step loop. Same arithmetic in float64 (agrees to the last ulp or so).
    """
    if sigmoid == "gaussian":
        scale = float(np.sqrt(-2.0 * np.log(value_at_margin)))

        def tol(x: float) -> float:
            if x >= lower:
                return 1.0
            d = (lower - x) / margin * scale
            return math.exp(-0.5 * d * d)

    elif sigmoid == "linear":
        scale = 1.0 - value_at_margin

        def tol(x: float) -> float:
            if x >= lower:
                return 1.0
            d = (lower - x) / margin * scale
            return 1.0 - d if abs(d) < 1.0 else 0.0

    else:
        raise ValueError(f"unsupported sigmoid {sigmoid!r}; valid: gaussian, linear")
    return tol


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
        self.action_space = gym.spaces.Box(-1.0, 1.0, spec.shape, dtype=np.float32)
        # Tasks whose controls are not [-1, 1] (quadruped: lift [-1, 1.1], extend
        # [-0.8, 0.8]) get dmc2gym's affine map, so agents see the same space as in B-Pref.
        low, high = spec.minimum.astype(np.float64), spec.maximum.astype(np.float64)
        self._rescale = None
        if not (np.all(low == -1.0) and np.all(high == 1.0)):
            self._rescale = (low, high - low)
        obs_spec = self._env.observation_spec()
        self._obs_keys = tuple(obs_spec)
        dim = sum(int(np.prod(obs_spec[k].shape)) for k in self._obs_keys)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), dtype=np.float32)
        self.max_episode_steps = int(round(self._env._step_limit))

    def _flat(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([np.ravel(obs[k]) for k in self._obs_keys]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # type: ignore[override]
        """Reset; ``seed`` re-seeds the task's RandomState (initial-state draws)."""
        if seed is not None:
            self.task._random = np.random.RandomState(seed)
        ts = self._env.reset()
        return self._flat(ts.observation), {}

    def step(self, action):  # type: ignore[no-untyped-def,override]
        """One control step; the time limit ends the episode as truncation."""
        action = np.asarray(action, np.float64)
        if self._rescale is not None:
            low, width = self._rescale
            action = (action + 1.0) / 2.0 * width + low
        ts = self._env.step(action)
        return self._flat(ts.observation), float(ts.reward), False, ts.last(), {}

    def close(self) -> None:
        """Free the physics (dm_control's Environment has no close of its own)."""
        self.physics.free()


def _factor_fn(domain: str, physics: Any, task: Any) -> Callable[[Any], dict[str, float]]:
    """A closure ``f(info=None)`` computing the task's reward factors from the live physics.

    (``info`` is ignored: the signature is :meth:`PbrlEnv._factors`'s, so the closure can
    stand in for it without a second call per step.)

    Physics quantities are read from pre-resolved indices into flat views of the raw
    ``mjData`` arrays (the same entries the suite's ``Physics`` helpers read through named
    indexing, which is ~10x slower). The views stay valid: reset, ``set_env_state`` and
    re-rendering all write into the same buffers.
    """
    model, data = physics.model, physics.data.ptr
    torso = model.name2id("torso", "body")
    xpos_z = data.xpos.reshape(-1)[3 * torso + 2 : 3 * torso + 3]
    xmat_zz = data.xmat.reshape(-1)[9 * torso + 8 : 9 * torso + 9]
    sensordata = data.sensordata
    assert np.shares_memory(xpos_z, data.xpos) and np.shares_memory(xmat_zz, data.xmat)
    if domain == "walker":
        vel_adr = int(model.sensor_adr[model.name2id("torso_subtreelinvel", "sensor")])
        standing_tol = _lower_tolerance(1.2, 0.6, "gaussian", 0.1)
        ms = float(task._move_speed)
        move_tol = _lower_tolerance(ms, ms / 2, "linear", 0.5) if ms else (lambda x: 1.0)

        def walker(info: Any = None) -> dict[str, float]:
            height = float(xpos_z[0])
            speed = float(sensordata[vel_adr])
            return {
                "standing": standing_tol(height),
                "upright": (1.0 + float(xmat_zz[0])) / 2.0,
                "move": move_tol(speed),
                "torso_height": height,
                "speed": speed,
            }

        return walker
    if domain == "cheetah":
        vel_adr = int(model.sensor_adr[model.name2id("torso_subtreelinvel", "sensor")])
        run_tol = _lower_tolerance(10.0, 10.0, "linear", 0.0)

        def cheetah(info: Any = None) -> dict[str, float]:
            speed = float(sensordata[vel_adr])
            return {"run": run_tol(speed), "speed": speed}

        return cheetah
    if domain == "quadruped":
        vel_adr = int(model.sensor_adr[model.name2id("velocimeter", "sensor")])
        ds = float(task._desired_speed)
        move_tol = _lower_tolerance(ds, ds, "linear", 0.5)
        # _upright_reward(deviation_angle=0): bounds (cos 0, inf), margin 1 + cos 0.
        dev = float(np.cos(np.deg2rad(0)))
        upright_tol = _lower_tolerance(dev, 1.0 + dev, "linear", 0.0)

        def quadruped(info: Any = None) -> dict[str, float]:
            speed = float(sensordata[vel_adr])
            return {
                "upright": upright_tol(float(xmat_zz[0])),
                "move": move_tol(speed),
                "speed": speed,
            }

        return quadruped
    raise KeyError(f"no reward factors for dm_control domain {domain!r}; valid: {sorted(_FACTORS)}")


def _reward_of(domain: str) -> Callable[[Mapping[str, Any]], Any]:
    """The task's reward as the module table's function of its factors (floats or arrays)."""
    if domain == "walker":
        return lambda f: (3.0 * f["standing"] + f["upright"]) / 4.0 * (5.0 * f["move"] + 1.0) / 6.0
    if domain == "cheetah":
        return lambda f: f["run"]
    if domain == "quadruped":
        return lambda f: f["upright"] * f["move"]
    raise KeyError(f"no reward for dm_control domain {domain!r}; valid: {sorted(_FACTORS)}")


def _observation_reader(core: _DMCCore) -> Callable[[], np.ndarray] | None:
    """``() -> core._flat(task.get_observation(physics))`` without the suite's named indexing.

    For walker and cheetah, whose observations are plain entries of ``mjData`` (walker:
    ``xmat[1:, [xx, xz]]``, the torso's ``xpos`` z, ``qvel``; cheetah: ``qpos[1:]``,
    ``qvel``), gathered by one index (:func:`~pbrl.envs.base.gather_reader`). Checked against
    the task's own ``get_observation`` when built; None for other domains or on a mismatch
    (the caller then uses the task's).
    """
    physics = core.physics
    data, model = physics.data.ptr, physics.model
    if core.domain == "walker":
        torso = model.name2id("torso", "body")
        rows = np.arange(1, model.nbody)
        sources = [
            (data.xmat, np.stack([9 * rows, 9 * rows + 2], axis=1).reshape(-1)),
            (data.xpos, np.array([3 * torso + 2])),
            (data.qvel, np.arange(data.qvel.size)),
        ]
        keys = ("orientations", "height", "velocity")
    elif core.domain == "cheetah":
        sources = [
            (data.qpos, np.arange(1, data.qpos.size)),
            (data.qvel, np.arange(data.qvel.size)),
        ]
        keys = ("position", "velocity")
    else:
        return None
    if core._obs_keys != keys:
        return None
    take = gather_reader(sources, keep=physics)
    if take is None:
        return None
    f32 = np.float32

    def read() -> np.ndarray:
        return take().astype(f32)

    if not np.array_equal(read(), core._flat(core.task.get_observation(physics))):
        return None
    return read


def _fused_step(core: _DMCCore, factors: Callable[[], dict[str, float]], cache: list) -> Any:
    """``core.step`` without the task's ``get_reward``: the reward comes from the factors.

    dm_control's ``Environment.step`` computes the reward with its array ``tolerance`` and
    named indexing (13 us a step on cheetah_run, 29 us on walker_walk, of 25-130 us of
    physics), while pbrl computes the same terms as its reward factors anyway; so the
    layer steps the task itself — dm_control's order (``before_step``, ``physics.step``,
    observation, step count and time limit, ``get_termination``) — and takes the reward as
    the documented function of the factors (equal to the task's ``get_reward`` to ~1 ulp:
    tests check it on every step). The factors go to :meth:`DMCEnv._factors` through
    ``cache``. Returns None when the task draws its reward into the scene
    (``visualize_reward``), which needs ``get_reward`` in ``after_step``.
    """
    env, physics, task = core._env, core.physics, core.task
    if getattr(task, "_visualize_reward", False):
        return None
    reward_of = _reward_of(core.domain)
    read_obs = _observation_reader(core)
    if read_obs is None:
        get_obs, flat = task.get_observation, core._flat

        def read_obs() -> np.ndarray:
            return flat(get_obs(physics))

    before, advance, termination = task.before_step, physics.step, task.get_termination
    n_sub, limit, rescale = env._n_sub_steps, env._step_limit, core._rescale
    asarray, f64, core_step = np.asarray, np.float64, core.step

    def step(action):  # type: ignore[no-untyped-def]
        if env._reset_next_step:  # dm_control would reset here: the core's own path
            return core_step(action)
        action = asarray(action, f64)
        if rescale is not None:
            low, width = rescale
            action = (action + 1.0) / 2.0 * width + low
        before(action, physics)
        advance(n_sub)
        obs = read_obs()
        f = cache[0] = factors()
        n = env._step_count = env._step_count + 1
        last = n >= limit or termination(physics) is not None
        if last:
            env._reset_next_step = True
        return obs, reward_of(f), False, last, {}

    return step


def render_physics(physics: Any, height: int, width: int, quality: str = "fast") -> np.ndarray:
    """``physics.render`` from the suite's tracking camera (0) at ``quality``.

    ``"fast"``: no shadows or reflections, and the GL context (created on the first render)
    without multisampling — see :data:`pbrl.envs.base.RENDER_QUALITIES`.
    """
    if check_render_quality(quality) == "full":
        return physics.render(height=height, width=width, camera_id=0)
    physics.model.vis.quality.offsamples = 0  # read when the context is first made
    return physics.render(
        height=height,
        width=width,
        camera_id=0,
        render_flag_overrides={"shadow": False, "reflection": False},
    )


class DMCEnv(PbrlEnv):
    """A dm_control task with reward factors, sim state and re-rendering.

    ``render_state`` sets the stored state on the live physics, renders with
    ``physics.render(height, width, camera_id=0)`` (the suite's tracking camera) and copies
    the live ``mjData`` back, so the episode is untouched.
    """

    def __init__(self, name: str, seed: int | None = None, render_quality: str = "fast"):
        self.render_quality = check_render_quality(render_quality)
        if name not in TASKS:
            raise KeyError(f"unknown dm_control task {name!r}; valid: {sorted(TASKS)}")
        domain, task = TASKS[name]
        core = _DMCCore(domain, task, seed)
        super().__init__(core, core.max_episode_steps)
        self.core = core
        self.factor_names = _FACTORS[domain]
        self._model_ptr, self._data_ptr = core.physics.model.ptr, core.physics.data.ptr
        self._state_size = mujoco.mj_stateSize(self._model_ptr, _STATE_SIG)
        self._saved: mujoco.MjData | None = None
        # Per-step hooks as closures over their C arguments, bound on the instance (they
        # shadow the methods below): no attribute lookups per step.
        compute = _factor_fn(domain, core.physics, core.task)
        cache: list = [None]  # the fused step's factors, handed to _factors once

        def factors(info: Any = None) -> dict[str, float]:
            f = cache[0]
            if f is None:
                return compute()
            cache[0] = None
            return f

        self._factors = factors  # type: ignore[method-assign]
        self._fused = _fused_step(core, compute, cache)
        self._get_sim_state = state_reader(  # type: ignore[method-assign]
            self._model_ptr, self._data_ptr, _STATE_SIG
        )

    def _find_inner_step(self) -> None:
        # Step with the fused step (no get_reward) where the core is stepped directly.
        super()._find_inner_step()
        if self._fused is not None and self._inner_step == self.core.step:
            self._inner_step = self._fused

    def _get_sim_state(self) -> np.ndarray:  # replaced per instance by state_reader
        out = np.empty(self._state_size, np.float64)
        mujoco.mj_getState(self._model_ptr, self._data_ptr, out, _STATE_SIG)
        return out

    def _factors(self, info: dict[str, Any]) -> dict[str, float]:  # replaced per instance
        raise NotImplementedError  # pragma: no cover - DMCEnv.__init__ binds _factor_fn's

    def reward_from_factors(self, factors: Mapping[str, np.ndarray]) -> np.ndarray:
        """The task's reward from its factors (see the module table)."""
        f = {k: np.asarray(v, np.float64) for k, v in factors.items()}
        return _reward_of(self.core.domain)(f)

    def _render(self, state: np.ndarray, width: int, height: int) -> np.ndarray:
        # Render on the live physics (one GL context per env) and put its whole mjData back
        # afterwards, so the episode continues bit-for-bit (tests check this).
        p = self.core.physics
        if self._saved is None:
            self._saved = mujoco.MjData(p.model.ptr)
        mujoco.mj_copyData(self._saved, p.model.ptr, p.data.ptr)
        try:
            with p.reset_context():  # reset, set the state, then mj_forward (kinematics)
                p.set_state(state)
            return np.asarray(render_physics(p, height, width, self.render_quality)).copy()
        finally:
            mujoco.mj_copyData(p.data.ptr, p.model.ptr, self._saved)

    def _snapshot(self) -> dict[str, Any]:
        env = self.core._env
        return {
            "data": pack_mjdata(self.core.physics.data.ptr),
            "task_random": self.core.task.random.get_state(),
            "step_count": env._step_count,
            "reset_next_step": env._reset_next_step,
        }

    def _restore(self, snap: dict[str, Any]) -> None:
        p = self.core.physics
        mujoco.mj_copyData(p.data.ptr, p.model.ptr, unpack_mjdata(snap["data"]))
        self.core.task.random.set_state(snap["task_random"])
        self.core._env._step_count = snap["step_count"]
        self.core._env._reset_next_step = snap["reset_next_step"]


def register_suite(register: Any) -> None:
    """Registry hook: one entry per :data:`TASKS` task."""
    for key, (domain, task) in TASKS.items():

        def factory(seed: int | None = None, _key: str = key, **kw: Any) -> PbrlEnv:
            return DMCEnv(_key, seed=seed, **kw)

        register(key, factory, suite="dm_control", description=f"dm_control {domain}-{task}")
