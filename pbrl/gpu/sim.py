"""``N`` MuJoCo worlds on one device: MuJoCo Warp physics, torch observations and rewards.

:class:`BatchedMujocoEnv` steps ``num_envs`` copies of a gymnasium v5 locomotion model (or of a
Franka manipulation task, :mod:`pbrl.gpu.franka`) with
`MuJoCo Warp <https://github.com/google-deepmind/mujoco_warp>`_ (CUDA kernels, or Warp's CPU
backend) and computes observations, reward factors, termination and resets in torch on the
simulator's own memory: ``warp.to_torch`` gives zero-copy views of the Warp arrays (the CUDA
array interface / DLPack), so nothing crosses to the host per step.

Task definitions reproduce gymnasium's ``*-v5`` envs (default arguments) term by term; the
model is the very ``MjModel`` gymnasium builds (``gym.make(id).unwrapped.model``):

=========== ==================================================================================
task        reward factors (sum = reward); termination
=========== ==================================================================================
halfcheetah reward_forward, reward_ctrl; never terminates
hopper      reward_forward, reward_ctrl, reward_survive; unhealthy (z, angle, state range)
walker2d    reward_forward, reward_ctrl, reward_survive; unhealthy (z, angle)
ant         reward_forward, reward_ctrl, reward_contact, reward_survive; unhealthy (z, NaN)
=========== ==================================================================================

The simulator runs in float32 (MuJoCo Warp's precision), so trajectories drift from the
float64 CPU engine over many steps; one step from the same state agrees to about 1e-4
(``tests/gpu/test_sim_cpu.py``).

Sim state: each step's ``info["sim_state"]`` is the ``(N, D_s)`` state *before* the step in
the layout of ``mj_getState(mjSTATE_FULLPHYSICS)`` (time, qpos, qvel, act; the models have no
history or plugin state), so :meth:`BatchedMujocoEnv.render_state` — the CPU renderer of
:mod:`pbrl.envs.mujoco` — re-renders any stored step exactly as the CPU env of the same name
renders that state.

Franka tasks (:data:`FRANKA_TASKS`: ``franka_reach``, ``franka_push``): constructing
``BatchedMujocoEnv("franka_reach", ...)`` returns a :class:`pbrl.gpu.franka.BatchedFrankaEnv`,
the batched twin of :class:`pbrl.envs.franka.FrankaEnv` (same model, observations, control,
reward factors, success flag, sim state with the mocap goal, renderer); see that module.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
import torch
from gymnasium.wrappers import TimeLimit

from pbrl.envs import franka as franka_suite
from pbrl.envs.base import check_render_quality, find_wrapper
from pbrl.envs.mujoco import LOCOMOTION, MujocoRenderer

__all__ = [
    "FRANKA_TASKS",
    "LOCOMOTION_TASKS",
    "TASKS",
    "BatchedMujocoEnv",
    "FrankaTaskSpec",
    "TaskSpec",
    "make_batched",
    "state_layout",
    "torch_device",
    "warp_available",
]


@dataclass(frozen=True)
class TaskSpec:
    """Constants of one gymnasium v5 locomotion task (its default constructor arguments).

    Attributes:
        cpu_name: the pbrl registry name of the CPU env (rendering, evaluation).
        reset_noise: ``reset_noise_scale``.
        qvel_noise: ``"uniform"`` (``U(-s, s)``) or ``"normal"`` (``s * N(0, 1)``).
        ctrl_cost: ``ctrl_cost_weight``.
        exclude: leading qpos entries left out of the observation.
        clip_qvel: observation clips qvel to ``[-10, 10]`` (hopper, walker2d).
        healthy_z: ``healthy_z_range``; ``None`` for tasks that never terminate.
        healthy_angle: ``healthy_angle_range`` of ``qpos[2]``, or ``None``.
        healthy_state: ``healthy_state_range`` of ``state_vector()[2:]``, or ``None``.
        z_inclusive: the z range is closed (ant) rather than open (hopper, walker2d).
        contact_cost: ``contact_cost_weight`` (ant), 0 otherwise.
        main_body: body whose ``xpos`` gives the forward displacement (ant); ``None`` uses
            ``qpos[0]``.
    """

    cpu_name: str
    reset_noise: float
    qvel_noise: str
    ctrl_cost: float
    exclude: int
    clip_qvel: bool = False
    healthy_z: tuple[float, float] | None = None
    healthy_angle: tuple[float, float] | None = None
    healthy_state: tuple[float, float] | None = None
    z_inclusive: bool = False
    contact_cost: float = 0.0
    main_body: int | None = None

    @property
    def gym_id(self) -> str:
        """The gymnasium id of the task."""
        return LOCOMOTION[self.cpu_name][0]

    @property
    def factor_names(self) -> tuple[str, ...]:
        """Reward factor names, as the CPU env names them."""
        return LOCOMOTION[self.cpu_name][1]


@dataclass(frozen=True)
class FrankaTaskSpec:
    """A Franka task of :mod:`pbrl.envs.franka` on the batched backend.

    Attributes:
        cpu_name: the pbrl registry name of the CPU env (``"franka_reach"``, ...).
    """

    cpu_name: str

    @property
    def task(self) -> str:
        """The task key of :mod:`pbrl.envs.franka` (``"reach"``, ``"push"``)."""
        return franka_suite.TASKS[self.cpu_name]

    @property
    def factor_names(self) -> tuple[str, ...]:
        """Reward factor names, as the CPU env names them."""
        return franka_suite.FACTORS[self.task]


LOCOMOTION_TASKS: dict[str, TaskSpec] = {
    "halfcheetah": TaskSpec("halfcheetah", 0.1, "normal", 0.1, exclude=1),
    "hopper": TaskSpec(
        "hopper",
        5e-3,
        "uniform",
        1e-3,
        exclude=1,
        clip_qvel=True,
        healthy_z=(0.7, math.inf),
        healthy_angle=(-0.2, 0.2),
        healthy_state=(-100.0, 100.0),
    ),
    "walker2d": TaskSpec(
        "walker2d",
        5e-3,
        "uniform",
        1e-3,
        exclude=1,
        clip_qvel=True,
        healthy_z=(0.8, 2.0),
        healthy_angle=(-1.0, 1.0),
    ),
    "ant": TaskSpec(
        "ant",
        0.1,
        "normal",
        0.5,
        exclude=2,
        healthy_z=(0.2, 1.0),
        z_inclusive=True,
        contact_cost=5e-4,
        main_body=1,
    ),
}

FRANKA_TASKS: dict[str, FrankaTaskSpec] = {
    name: FrankaTaskSpec(name) for name in ("franka_reach", "franka_push")
}

# Every batched task (``env=gpu_<name>``): the locomotion ones, then the Franka ones.
TASKS: dict[str, TaskSpec | FrankaTaskSpec] = {**LOCOMOTION_TASKS, **FRANKA_TASKS}

_S = mujoco.mjtState
FULLPHYSICS = int(_S.mjSTATE_FULLPHYSICS)

# Components of mj_getState, in MuJoCo's order (the order of the mjtState bits).
_STATE_PARTS = (
    ("time", _S.mjSTATE_TIME),
    ("qpos", _S.mjSTATE_QPOS),
    ("qvel", _S.mjSTATE_QVEL),
    ("act", _S.mjSTATE_ACT),
    ("history", _S.mjSTATE_HISTORY),
    ("warmstart", _S.mjSTATE_WARMSTART),
    ("ctrl", _S.mjSTATE_CTRL),
    ("qfrc_applied", _S.mjSTATE_QFRC_APPLIED),
    ("xfrc_applied", _S.mjSTATE_XFRC_APPLIED),
    ("eq_active", _S.mjSTATE_EQ_ACTIVE),
    ("mocap_pos", _S.mjSTATE_MOCAP_POS),
    ("mocap_quat", _S.mjSTATE_MOCAP_QUAT),
    ("userdata", _S.mjSTATE_USERDATA),
    ("plugin", _S.mjSTATE_PLUGIN),
)
# The components the batched backend gathers from (and writes into) its worlds.
_GATHERED = ("time", "qpos", "qvel", "act", "mocap_pos", "mocap_quat")


def state_layout(model: mujoco.MjModel, sig: int = FULLPHYSICS) -> list[tuple[str, int]]:
    """``(component, size)`` of ``mj_getState(sig)`` for ``model``, empty ones left out.

    Args:
        model: the model.
        sig: an ``mjtState`` signature (``mjSTATE_FULLPHYSICS`` by default; the Franka tasks
            add the mocap bodies' positions and orientations).

    Raises:
        ValueError: the signature asks for state the batched backend does not gather (e.g.
            history of delays, plugin state).
    """
    layout = [(name, mujoco.mj_stateSize(model, bit)) for name, bit in _STATE_PARTS if sig & bit]
    total = mujoco.mj_stateSize(model, sig)
    if sum(s for _, s in layout) != total:
        raise ValueError(f"unexpected mj_getState layout {layout} (total {total})")
    extra = [(n, s) for n, s in layout if n not in _GATHERED and s]
    if extra:
        raise ValueError(
            f"the batched backend gathers {'/'.join(_GATHERED)} only, but this model also has "
            f"{extra} state; use the CPU suite (pbrl.envs) for it"
        )
    return [(n, s) for n, s in layout if s]


def warp_available() -> bool:
    """Whether ``warp`` and ``mujoco_warp`` import."""
    try:
        import mujoco_warp  # noqa: F401
        import warp  # noqa: F401
    except ImportError:
        return False
    return True


def _import_warp() -> tuple[Any, Any]:
    try:
        import warp as wp

        wp.config.quiet = True
        import mujoco_warp as mjw
    except ImportError as err:
        from pbrl.gpu import WARP_EXTRA_HINT

        raise ImportError(
            f"the GPU simulation backend needs warp-lang and mujoco-warp ({err.name} is "
            f"missing); {WARP_EXTRA_HINT}"
        ) from err
    return wp, mjw


def torch_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> cuda when available; a cuda device without CUDA raises a clear error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={str(device)!r} but CUDA is not available; use cpu or auto")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type != "cpu":
        raise ValueError(f"unsupported device {str(device)!r}; use cpu, cuda, cuda:N or auto")
    return dev


class BatchedMujocoEnv:
    """``num_envs`` worlds of a gymnasium v5 locomotion task, stepped together on ``device``.

    A vector env in the gymnasium style, on torch tensors: ``reset`` and ``step`` take and
    return ``(N, ...)`` tensors on ``device``; finished worlds are reset inside ``step``
    (auto-reset, as SB3's vector envs do), the observation returned for them is the first of
    the new episode and ``info["final_obs"]`` holds the last one of the old.

    ``step`` info (all tensors on ``device``):

    - ``"true_reward"``: ``(N,)`` the task's reward, also returned as the reward;
    - ``"reward_factors"``: name -> ``(N,)`` terms, ``reward = sum`` (:meth:`reward_from_factors`);
    - ``"sim_state"``: ``(N, D_s)`` float32 FULLPHYSICS state before the step;
    - ``"final_obs"``: ``(N, D_o)`` observation after the step, before any auto-reset;
    - ``"episode_return"``, ``"episode_length"``: ``(N,)`` totals of the episodes that ended
      in this step (meaningful where ``terminated | truncated``).

    A Franka task name (:data:`FRANKA_TASKS`) builds a
    :class:`pbrl.gpu.franka.BatchedFrankaEnv` instead (same contract, plus ``info["success"]``
    and the mocap goal in the sim state; it also takes ``control`` and ``camera``).

    Args:
        task: one of :data:`TASKS`.
        num_envs: worlds ``N``.
        seed: seeds the reset noise (a torch generator on ``device``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        max_episode_steps: truncate episodes after this many steps (default: the task's 1000).
        render_quality: of :meth:`render_state` (see :data:`pbrl.envs.base.RENDER_QUALITIES`).
        nconmax: contacts allocated per world (MuJoCo Warp's default when ``None``).
        njmax: constraint rows allocated per world (MuJoCo Warp's default when ``None``).
        cuda_graph: on CUDA, capture one env step (``frame_skip`` physics steps) in a CUDA
            graph and replay it (removes the Python/launch overhead of ~100 kernels per step).
    """

    # mj_getState signature of the sim state (info["sim_state"], render_state).
    state_sig: int = FULLPHYSICS

    def __new__(cls, task: str, *args: Any, **kwargs: Any) -> BatchedMujocoEnv:
        """A Franka task name builds the Franka twin (:mod:`pbrl.gpu.franka`)."""
        if cls is BatchedMujocoEnv and task in FRANKA_TASKS:
            from pbrl.gpu.franka import BatchedFrankaEnv

            return super().__new__(BatchedFrankaEnv)
        return super().__new__(cls)

    def __init__(
        self,
        task: str,
        num_envs: int,
        seed: int = 0,
        device: str | torch.device = "cpu",
        max_episode_steps: int | None = None,
        render_quality: str = "fast",
        nconmax: int | None = None,
        njmax: int | None = None,
        cuda_graph: bool = True,
    ):
        if task not in LOCOMOTION_TASKS:
            raise ValueError(f"unknown GPU task {task!r}; valid: {', '.join(sorted(TASKS))}")
        self._init_common(task, num_envs, device, render_quality)
        self.spec = LOCOMOTION_TASKS[task]
        self.env_name = self.spec.cpu_name  # registry name of the CPU twin (render, eval)
        self.factor_names = self.spec.factor_names

        probe = gym.make(self.spec.gym_id, disable_env_checker=True)
        limit = find_wrapper(probe, TimeLimit)
        task_limit = int(limit._max_episode_steps) if limit is not None else 1000
        self._set_episode_limit(task_limit, max_episode_steps)
        env = probe.unwrapped
        self.model: mujoco.MjModel = env.model
        self.frame_skip = int(env.frame_skip)
        self.dt = float(self.model.opt.timestep) * self.frame_skip
        self.single_observation_space = probe.observation_space
        self.single_action_space = probe.action_space
        init_qpos, init_qvel = env.init_qpos.copy(), env.init_qvel.copy()
        probe.close()

        self._init_simulator(seed, nconmax, njmax, cuda_graph)
        self.init_qpos = torch.as_tensor(init_qpos, dtype=torch.float32, device=self.device)
        self.init_qvel = torch.as_tensor(init_qvel, dtype=torch.float32, device=self.device)
        self._x_prev = torch.zeros(self.num_envs, device=self.device)

    # --- construction (shared with pbrl.gpu.franka) ------------------------------------------
    def _init_common(
        self, task: str, num_envs: int, device: str | torch.device, render_quality: str
    ) -> None:
        """Check the arguments every task takes; import Warp."""
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.wp, self.mjw = _import_warp()
        self.task = task
        self.num_envs = int(num_envs)
        self.device = torch_device(device)
        self.render_quality = check_render_quality(render_quality)

    def _set_episode_limit(self, task_limit: int, max_episode_steps: int | None) -> None:
        self.max_episode_steps = min(task_limit, int(max_episode_steps or task_limit))
        if self.max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")

    def _init_simulator(
        self, seed: int, nconmax: int | None, njmax: int | None, cuda_graph: bool
    ) -> None:
        """Put :attr:`model` on the device in ``num_envs`` worlds; torch views of its arrays.

        Needs ``model``, ``single_observation_space`` and ``single_action_space`` set.
        """
        self.obs_dim = int(np.prod(self.single_observation_space.shape))
        self.act_dim = int(np.prod(self.single_action_space.shape))
        self._layout = state_layout(self.model, self.state_sig)
        self.state_dim = sum(s for _, s in self._layout)

        wp = self.wp
        self.wp_device = "cpu" if self.device.type == "cpu" else f"cuda:{self.device.index}"
        # Warp runs on a stream of its own: a CUDA graph cannot be captured on torch's default
        # (legacy NULL) stream, where Warp reports "unknown stream".
        self._side: Any = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._wp_side: Any = None  # its Warp handle, made once Warp is initialised
        with self._warp_scope():
            self.wm = self.mjw.put_model(self.model)
            self.wd = self.mjw.make_data(
                self.model, nworld=self.num_envs, nconmax=nconmax, njmax=njmax
            )
        t = wp.to_torch
        self.qpos, self.qvel, self.ctrl = t(self.wd.qpos), t(self.wd.qvel), t(self.wd.ctrl)
        self.time = t(self.wd.time)
        self.act = t(self.wd.act)
        self.xpos = t(self.wd.xpos)  # (N, nbody, 3)
        self.cfrc_ext = t(self.wd.cfrc_ext)  # (N, nbody, 6)
        self.mocap_pos = t(self.wd.mocap_pos)  # (N, nmocap, 3)
        self.mocap_quat = t(self.wd.mocap_quat)  # (N, nmocap, 4)
        self._zeroed = [
            t(getattr(self.wd, name))
            for name in ("qacc_warmstart", "qfrc_applied", "xfrc_applied", "act", "ctrl")
        ]
        self.nefc = t(self.wd.nefc)
        self.act_low = torch.as_tensor(self.single_action_space.low, device=self.device)
        self.act_high = torch.as_tensor(self.single_action_space.high, device=self.device)
        self._graph: Any = None
        self._use_graph = bool(cuda_graph) and self.device.type == "cuda"

        self.generator = torch.Generator(device=self.device).manual_seed(int(seed))
        n = self.num_envs
        self.ep_return = torch.zeros(n, device=self.device)
        self.ep_len = torch.zeros(n, dtype=torch.int64, device=self.device)
        self._obs = torch.zeros(n, self.obs_dim, device=self.device)
        self._renderer: Any = None

    # --- warp plumbing ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _warp_scope(self) -> Iterator[None]:
        """Run Warp on this env's device; on CUDA on the env's own stream.

        That stream waits for the work already queued on torch's current stream, and torch's
        current stream waits for the Warp work before anything queued after it.
        """
        wp = self.wp
        with wp.ScopedDevice(self.wp_device):
            if self._side is None:
                yield
                return
            if self._wp_side is None:
                self._wp_side = wp.stream_from_torch(self._side)
            current = torch.cuda.current_stream(self.device)
            self._side.wait_stream(current)
            try:
                with wp.ScopedStream(self._wp_side):
                    yield
            finally:
                current.wait_stream(self._side)

    def _physics(self) -> None:
        """``frame_skip`` physics steps, then ``cfrc_ext`` (as gymnasium's ``do_simulation``)."""
        for _ in range(self.frame_skip):
            self.mjw.step(self.wm, self.wd)
        if self.spec.contact_cost:
            self.mjw.rne_postconstraint(self.wm, self.wd)

    def _simulate(self) -> None:
        with self._warp_scope():
            if not self._use_graph:
                self._physics()
                return
            wp = self.wp
            if self._graph is None:
                self._physics()  # load every kernel module before capturing
                # restore is not needed: the caller re-writes the state it stepped from
                with wp.ScopedCapture() as capture:
                    self._physics()
                self._graph = capture.graph
                return
            wp.capture_launch(self._graph)

    def _forward(self) -> None:
        with self._warp_scope():
            self.mjw.forward(self.wm, self.wd)

    def _check_action(self, action: torch.Tensor | np.ndarray) -> torch.Tensor:
        action = torch.as_tensor(action, dtype=torch.float32, device=self.device)
        if action.shape != (self.num_envs, self.act_dim):
            raise ValueError(
                f"action must be ({self.num_envs}, {self.act_dim}), got {tuple(action.shape)}"
            )
        return action

    # --- task maths -------------------------------------------------------------------------
    def _x(self) -> torch.Tensor:
        """Forward coordinate used for the velocity (gymnasium reads it after ``mj_step``)."""
        if self.spec.main_body is None:
            return self.qpos[:, 0].clone()
        return self.xpos[:, self.spec.main_body, 0].clone()

    def _contact_forces(self) -> torch.Tensor:
        return self.cfrc_ext.clamp(-1.0, 1.0)  # Ant-v5 contact_force_range

    def observe(self) -> torch.Tensor:
        """``(N, D_o)`` observation of the current state (gymnasium's ``_get_obs``)."""
        s = self.spec
        qvel = self.qvel.clamp(-10.0, 10.0) if s.clip_qvel else self.qvel
        parts = [self.qpos[:, s.exclude :], qvel]
        if s.contact_cost:  # Ant-v5 include_cfrc_ext_in_observation=True
            parts.append(self._contact_forces()[:, 1:].reshape(self.num_envs, -1))
        return torch.cat(parts, dim=1).float()

    def _healthy(self) -> torch.Tensor:
        s = self.spec
        n = self.num_envs
        ok = torch.ones(n, dtype=torch.bool, device=self.device)
        if s.healthy_z is None:
            return ok
        if s.healthy_state is not None:
            lo, hi = s.healthy_state
            state = torch.cat([self.qpos, self.qvel], dim=1)[:, 2:]
            ok &= ((state > lo) & (state < hi)).all(dim=1)
        if s.main_body is not None:  # ant: finite state vector, closed z range on qpos[2]
            ok &= torch.isfinite(torch.cat([self.qpos, self.qvel], dim=1)).all(dim=1)
        z_idx = 2 if s.main_body is not None else 1
        z = self.qpos[:, z_idx]
        lo, hi = s.healthy_z
        ok &= (z >= lo) & (z <= hi) if s.z_inclusive else (z > lo) & (z < hi)
        if s.healthy_angle is not None:
            lo, hi = s.healthy_angle
            angle = self.qpos[:, 2]
            ok &= (angle > lo) & (angle < hi)
        return ok

    def _factors(self, action: torch.Tensor, x_before: torch.Tensor, healthy: torch.Tensor):
        s = self.spec
        out = {
            "reward_forward": (self._x() - x_before) / self.dt,
            "reward_ctrl": -s.ctrl_cost * action.square().sum(dim=1),
        }
        if "reward_contact" in self.factor_names:
            out["reward_contact"] = -s.contact_cost * self._contact_forces().square().sum(
                dim=(1, 2)
            )
        if "reward_survive" in self.factor_names:
            out["reward_survive"] = healthy.float()
        return {k: out[k].float() for k in self.factor_names}

    def reward_from_factors(self, factors: Mapping[str, Any]) -> Any:
        """The reward as the sum of the (signed) factors; torch or numpy, any shape."""
        return sum(factors[k] for k in self.factor_names)

    # --- state ------------------------------------------------------------------------------
    def _state_views(self) -> dict[str, torch.Tensor]:
        """``(N, size)`` views of the simulator arrays of each :attr:`state_sig` component."""
        n = self.num_envs
        views = {"time": self.time[:, None], "qpos": self.qpos, "qvel": self.qvel}
        views["act"] = self.act
        views["mocap_pos"] = self.mocap_pos.view(n, self.mocap_pos[0].numel())
        views["mocap_quat"] = self.mocap_quat.view(n, self.mocap_quat[0].numel())
        return views

    def get_sim_state(self) -> torch.Tensor:
        """``(N, D_s)`` float32 :attr:`state_sig` state of every world (on ``device``)."""
        views = self._state_views()
        return torch.cat([views[name] for name, _ in self._layout], dim=1).float()

    def set_sim_state(self, state: torch.Tensor | np.ndarray, mask: torch.Tensor | None = None):
        """Write :attr:`state_sig` states into the worlds (all, or where ``mask``), then forward.

        Args:
            state: ``(N, D_s)`` (or ``(k, D_s)`` for the ``k`` worlds selected by ``mask``).
            mask: ``(N,)`` bool; ``None`` sets every world.
        """
        state = torch.as_tensor(state, dtype=torch.float32, device=self.device)
        if state.ndim != 2 or state.shape[1] != self.state_dim:
            raise ValueError(f"state must be (k, {self.state_dim}), got {tuple(state.shape)}")
        idx = (
            torch.arange(self.num_envs, device=self.device)
            if mask is None
            else mask.nonzero().squeeze(1)
        )
        if state.shape[0] != idx.numel():
            raise ValueError(f"{idx.numel()} worlds selected but {state.shape[0]} states given")
        views = self._state_views()
        col = 0
        for name, size in self._layout:
            views[name][idx] = state[:, col : col + size]
            col += size
        self._forward()
        self._sync_derived(idx)

    def _sync_derived(self, idx: torch.Tensor) -> None:
        """After a forward of a written state: what the task keeps besides the simulator."""
        self._x_prev[idx] = self._x()[idx]
        self._obs[idx] = self.observe()[idx]

    # --- gymnasium-style API ----------------------------------------------------------------
    def _clear_worlds(self, idx: torch.Tensor) -> None:
        """``mj_resetData``'s zeros in the worlds ``idx`` (the task then writes its pose)."""
        for z in self._zeroed:
            z[idx] = 0
        self.time[idx] = 0
        self.cfrc_ext[idx] = 0

    def _reset_worlds(self, mask: torch.Tensor) -> None:
        """Reset the worlds where ``mask`` (gymnasium ``reset_model``), then ``mj_forward``."""
        idx = mask.nonzero().squeeze(1)
        k = int(idx.numel())
        if k == 0:
            return
        s, g = self.spec, self.generator
        nq, nv = self.qpos.shape[1], self.qvel.shape[1]
        noise = s.reset_noise
        qpos = self.init_qpos + (torch.rand(k, nq, generator=g, device=self.device) * 2 - 1) * noise
        if s.qvel_noise == "normal":
            qvel = self.init_qvel + noise * torch.randn(k, nv, generator=g, device=self.device)
        else:
            qvel = (
                self.init_qvel
                + (torch.rand(k, nv, generator=g, device=self.device) * 2 - 1) * noise
            )
        self._clear_worlds(idx)
        self.qpos[idx] = qpos
        self.qvel[idx] = qvel
        self._forward()
        # mj_forward leaves cfrc_ext as mj_resetData set it (zeros), as on the CPU
        self.cfrc_ext[idx] = 0
        self._sync_derived(idx)
        self.ep_return[idx] = 0
        self.ep_len[idx] = 0

    def reset(self, seed: int | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """Reset every world; returns ``(obs (N, D_o), {"sim_state": (N, D_s)})``."""
        if seed is not None:
            self.generator.manual_seed(int(seed))
        self._reset_worlds(torch.ones(self.num_envs, dtype=torch.bool, device=self.device))
        return self._obs.clone(), {"sim_state": self.get_sim_state()}

    def step(
        self, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Advance every world by one env step (``frame_skip`` physics steps).

        Args:
            action: ``(N, D_a)`` actions; they are written to ``ctrl`` as given (MuJoCo clamps
                them to the control range, gymnasium does the same) and the control cost uses
                them unclipped, as gymnasium does.

        Returns:
            ``obs, reward, terminated, truncated, info`` (see the class docstring).
        """
        action = self._check_action(action)
        before = self.get_sim_state()
        x_before = self._x_prev.clone()
        self.ctrl.copy_(action)
        self._simulate()
        obs = self.observe()
        healthy = self._healthy()
        factors = self._factors(action, x_before, healthy)
        reward = self.reward_from_factors(factors)
        self._x_prev.copy_(self._x())
        return self._finish_step(before, obs, reward, factors, ~healthy, {})

    def _finish_step(
        self,
        before: torch.Tensor,
        obs: torch.Tensor,
        reward: torch.Tensor,
        factors: dict[str, torch.Tensor],
        terminated: torch.Tensor,
        extra: dict[str, Any],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Episode totals, truncation, the info dict and the auto-reset of finished worlds."""
        self.ep_return += reward
        self.ep_len += 1
        truncated = (self.ep_len >= self.max_episode_steps) & ~terminated
        done = terminated | truncated
        info: dict[str, Any] = {
            "true_reward": reward,
            "reward_factors": factors,
            "sim_state": before,
            "final_obs": obs,
            "episode_return": self.ep_return.clone(),
            "episode_length": self.ep_len.clone(),
            **extra,
        }
        self._obs.copy_(obs)
        if bool(done.any()):
            self._reset_worlds(done)
        return self._obs.clone(), reward, terminated, truncated, info

    def contact_overflow(self) -> bool:
        """Whether any world hit the ``njmax`` constraint limit (raise ``njmax`` then)."""
        return bool((self.nefc >= self.wd.njmax).any()) if hasattr(self.wd, "njmax") else False

    # --- rendering --------------------------------------------------------------------------
    def _make_renderer(self) -> Any:
        return MujocoRenderer(self.model, self.render_quality)

    def render_state(self, state: np.ndarray, width: int = 84, height: int = 84) -> np.ndarray:
        """``(height, width, 3)`` uint8 frame of one stored state, by the CPU renderer.

        The same code and camera as the CPU env of :attr:`env_name` (``pbrl.envs.mujoco``,
        ``pbrl.envs.franka``), so a state renders to the same frame whichever backend produced
        it.
        """
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (self.state_dim,):
            raise ValueError(
                f"sim_state must have shape ({self.state_dim},), got {state.shape}; pass one "
                "step's state, e.g. segment.sim_state[i, t]"
            )
        if self._renderer is None:
            self._renderer = self._make_renderer()
        return self._renderer.render(state, int(width), int(height))

    def make_cpu_env(self, seed: int | None = None, **kwargs: Any) -> gym.Env:
        """The CPU twin from the pbrl registry (evaluation, labelling clips)."""
        from pbrl import envs as pbrl_envs

        kwargs.setdefault("render_quality", self.render_quality)
        return pbrl_envs.make_env(
            self.env_name, seed=seed, max_episode_steps=self.max_episode_steps, **kwargs
        )

    def close(self) -> None:
        """Free the renderer's GL contexts."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


def make_batched(
    task: str, num_envs: int, seed: int = 0, device: str = "cpu", **kwargs: Any
) -> BatchedMujocoEnv:
    """Build a :class:`BatchedMujocoEnv`; ``task`` may carry a ``gpu_`` prefix."""
    return BatchedMujocoEnv(task.removeprefix("gpu_"), num_envs, seed=seed, device=device, **kwargs)
