"""Franka Panda manipulation on the batched MuJoCo Warp backend: twins of :mod:`pbrl.envs.franka`.

:class:`BatchedFrankaEnv` steps ``N`` worlds of ``franka_reach`` or ``franka_push`` (the tasks
of :data:`pbrl.gpu.sim.FRANKA_TASKS`; ``env=gpu_franka_reach`` / ``env=gpu_franka_push``) and
reproduces the CPU env (:class:`pbrl.envs.franka.FrankaEnv`) term by term:

- **model**: the very ``MjModel`` the CPU env builds (:func:`pbrl.envs.franka.load_model`: the
  Panda of gymnasium-robotics in pbrl's scene, gravity-compensated arm, position servos);
- **control** (``control=``, as the CPU env): ``"ee"`` (default; action ``(4,)``: a Cartesian
  move of the grip point of up to ``EE_STEP`` m per axis and the gripper) or ``"joint"``
  (action ``(8,)``: joint target offsets of up to ``JOINT_STEP`` rad and the gripper). The
  ``"ee"`` damped-least-squares IK runs on the device in torch, float64, once per env step:
  the grip-site Jacobian of the 7 hinge joints is ``[axis_j x (p - anchor_j); axis_j]`` from
  the simulator's ``xaxis``/``xanchor`` (what ``mj_jacSite`` computes for hinges), the
  orientation error is ``mju_subQuat`` of the site quaternion (``xquat`` of the hand times the
  site's ``quat``), and the 6x6 system is one batched ``torch.linalg.solve`` — a few dozen
  small kernels against the 20 physics steps' thousands, so the twin keeps the CPU env's
  default control mode;
- **observation**: the CPU layout (reach 28, push 44), the grip point's velocity as
  ``J_p qvel`` (what ``mj_objectVelocity`` returns for the site);
- **step**: the clipped action becomes the servo targets, :data:`~pbrl.envs.franka.N_SUBSTEPS`
  physics steps, then ``mj_kinematics`` (the CPU env's closing ``mj_forward`` computes the
  same positions; the rest of it does not feed the next step, which starts with a forward);
- **reward factors, reward, success**: ``reach_dist``, ``obj_to_goal`` (push), ``ctrl_cost``,
  ``success`` with the CPU env's definitions; ``reward = sum(w * factor)`` with
  :data:`pbrl.envs.franka.WEIGHTS` (:meth:`BatchedFrankaEnv.reward_from_factors`, torch or
  numpy); ``info["success"]`` is the ``(N,)`` bool flag ``factor success == 1``;
- **episodes**: never terminate, truncated after 50 (reach) / 100 (push) steps; auto-reset
  draws the CPU env's reset distribution (arm at ``HOME_QPOS``, fingers open; reach: goal
  uniform in ``[0.3, 0.65] x [-0.25, 0.25] x [0.05, 0.35]``; push: cube uniform in
  ``[0.4, 0.6] x [-0.2, 0.2]`` resting on the table, goal uniform in
  ``[0.35, 0.65] x [-0.25, 0.25]`` at least 10 cm from it) from a torch generator;
- **sim state**: ``mj_getState`` of :data:`pbrl.envs.franka.STATE_SIG` (FULLPHYSICS plus the
  mocap goal's position and orientation), float32, so :meth:`BatchedFrankaEnv.render_state`
  — the CPU env's :class:`~pbrl.envs.franka.FrankaRenderer`, same model and camera — renders
  a device state to the CPU env's frame of it.

``pick_place`` and ``grocery`` are not ported: their ``grasp`` factor reads the contact list
(both finger pads touching the object), which would need a gather over MuJoCo Warp's
flat contact arrays.

``render_quality`` is accepted for the common signature; the Franka scene has no shadows or
reflections at either quality (its XML turns them off), as on the CPU env.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
import torch

from pbrl.envs import franka as cpu
from pbrl.gpu.sim import FRANKA_TASKS, BatchedMujocoEnv

__all__ = ["CONTROLS", "BatchedFrankaEnv"]

CONTROLS = ("ee", "joint")

# Reset distributions of pbrl.envs.franka (FrankaCore._place_reach / _place_push).
_REACH_GOAL = ((0.3, -0.25, cpu.TABLE_Z + 0.05), (0.65, 0.25, cpu.TABLE_Z + 0.35))
_PUSH_OBJECT_XY = ((0.4, -0.2), (0.6, 0.2))
_PUSH_GOAL_XY = ((0.35, -0.25), (0.65, 0.25))
_PUSH_MIN_GAP = 0.1  # m between the cube and the goal at reset
_FINGER_OPEN = 0.04  # m per finger at reset


def _quat_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product of ``(..., 4)`` quaternions ``(w, x, y, z)`` (``mju_mulQuat``)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def _quat_to_rotvec(q: torch.Tensor) -> torch.Tensor:
    """Rotation vector of ``(..., 4)`` quaternions, angle in ``(-pi, pi]`` (``mju_quat2Vel``)."""
    v = q[..., 1:]
    sin_half = v.norm(dim=-1)
    angle = 2.0 * torch.atan2(sin_half, q[..., 0])
    angle = torch.where(angle > math.pi, angle - 2.0 * math.pi, angle)
    axis = v / sin_half.clamp_min(1e-15)[..., None]  # v = 0 gives angle 0: a zero vector
    return axis * angle[..., None]


class BatchedFrankaEnv(BatchedMujocoEnv):
    """``num_envs`` worlds of a Franka task, stepped together on ``device``.

    The contract of :class:`~pbrl.gpu.sim.BatchedMujocoEnv` (``(N, ...)`` tensors, auto-reset,
    ``info`` with ``true_reward``, ``reward_factors``, ``sim_state`` before the step,
    ``final_obs``, episode totals) plus ``info["success"]`` (``(N,)`` bool); the sim state is
    :data:`pbrl.envs.franka.STATE_SIG`'s (with the mocap goal). See the module docstring.

    Usually built as ``BatchedMujocoEnv("franka_reach", N, ...)`` or via
    :func:`pbrl.gpu.sim.make_batched`.

    Args:
        task: one of :data:`pbrl.gpu.sim.FRANKA_TASKS` (``"franka_reach"``, ``"franka_push"``).
        num_envs: worlds ``N``.
        seed: seeds the reset distribution (a torch generator on ``device``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        max_episode_steps: truncate sooner than the task's limit (reach 50, push 100).
        render_quality: checked and kept for the common signature (Franka frames are the same
            at both qualities).
        nconmax: contacts allocated per world (MuJoCo Warp's default when ``None``).
        njmax: constraint rows allocated per world (MuJoCo Warp's default when ``None``).
        cuda_graph: on CUDA, capture one env step's physics in a CUDA graph and replay it.
        control: ``"ee"`` (default) or ``"joint"``, as the CPU env's ``control``.
        camera: the model camera :meth:`render_state` uses (``"front"`` or ``"top"``).
    """

    state_sig: int = int(cpu.STATE_SIG)

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
        control: str = "ee",
        camera: str = "front",
    ):
        if task not in FRANKA_TASKS:
            raise ValueError(
                f"unknown Franka GPU task {task!r}; valid: {', '.join(sorted(FRANKA_TASKS))} "
                "(pick_place and grocery run on the CPU suite only: pbrl.envs.franka)"
            )
        if control not in CONTROLS:
            raise ValueError(f"control must be one of {CONTROLS}, got {control!r}")
        self._init_common(task, num_envs, device, render_quality)
        self.spec = FRANKA_TASKS[task]
        self.env_name = task  # registry name of the CPU twin (render, eval)
        self.control = control
        self.camera = camera
        self.factor_names = self.spec.factor_names
        self._weights = tuple(cpu.WEIGHTS[self.spec.task].items())

        core = cpu.FrankaCore(self.spec.task, control=control)  # the CPU env's model and spaces
        m = self.model = core.model
        try:
            m.camera(camera)
        except KeyError as err:
            cams = [m.camera(i).name for i in range(m.ncam)]
            raise ValueError(f"unknown camera {camera!r}; the Franka model has {cams}") from err
        self._set_episode_limit(core.max_episode_steps, max_episode_steps)
        self.frame_skip = cpu.N_SUBSTEPS
        self.dt = float(m.opt.timestep) * self.frame_skip
        self.single_observation_space = core.observation_space
        self.single_action_space: gym.spaces.Box = core.action_space
        self._items = core.items
        self._goal = int(m.body_mocapid[m.body("goal").id])
        self._grip = int(m.site("grip").id)
        self._hand = int(m.site_bodyid[self._grip])
        # The arm's 7 hinges lead the joints, qpos and dofs (FrankaCore checks qpos/dofs):
        # the Jacobian reads xaxis[:, :7] and xanchor[:, :7].
        if [int(m.dof_jntid[i]) for i in range(7)] != list(range(7)) or any(
            m.jnt_type[j] != mujoco.mjtJoint.mjJNT_HINGE for j in range(7)
        ):
            raise RuntimeError("the Panda's 7 hinge joints must lead the model (layout changed)")

        self._init_simulator(seed, nconmax, njmax, cuda_graph)
        t = self.wp.to_torch
        self.site_xpos = t(self.wd.site_xpos)  # (N, nsite, 3)
        self.site_xmat = t(self.wd.site_xmat)  # (N, nsite, 3, 3)
        self.xquat = t(self.wd.xquat)  # (N, nbody, 4)
        self.xaxis = t(self.wd.xaxis)  # (N, njnt, 3)
        self.xanchor = t(self.wd.xanchor)  # (N, njnt, 3)

        dev, f64 = self.device, torch.float64
        grip_quat = np.zeros(4)
        mujoco.mju_mat2Quat(grip_quat, cpu.GRIP_ROT.ravel())
        self._grip_quat = torch.as_tensor(grip_quat, dtype=f64, device=dev)
        self._site_quat = torch.as_tensor(m.site_quat[self._grip], dtype=f64, device=dev)
        self._home = torch.as_tensor(cpu.HOME_QPOS, dtype=f64, device=dev)
        self._ws_low = torch.as_tensor(cpu.WORKSPACE[0], dtype=f64, device=dev)
        self._ws_high = torch.as_tensor(cpu.WORKSPACE[1], dtype=f64, device=dev)
        self._ctrl_low = torch.as_tensor(m.actuator_ctrlrange[:7, 0], dtype=f64, device=dev)
        self._ctrl_high = torch.as_tensor(m.actuator_ctrlrange[:7, 1], dtype=f64, device=dev)
        self._damping = cpu._IK_DAMPING * torch.eye(6, dtype=f64, device=dev)
        self._qpos0 = torch.as_tensor(m.qpos0, dtype=torch.float32, device=dev)
        mocap_bodies = sorted(
            (int(m.body_mocapid[b]), b) for b in range(m.nbody) if m.body_mocapid[b] >= 0
        )
        self._mocap_pos0 = torch.as_tensor(
            np.stack([m.body_pos[b] for _, b in mocap_bodies]), dtype=torch.float32, device=dev
        )
        self._mocap_quat0 = torch.as_tensor(
            np.stack([m.body_quat[b] for _, b in mocap_bodies]), dtype=torch.float32, device=dev
        )

    # --- physics and control ----------------------------------------------------------------
    def _physics(self) -> None:
        """``N_SUBSTEPS`` physics steps, then the positions of the new state."""
        for _ in range(self.frame_skip):
            self.mjw.step(self.wm, self.wd)
        self.mjw.kinematics(self.wm, self.wd)

    def _jacobian(self, dtype: torch.dtype) -> torch.Tensor:
        """``(N, 6, 7)`` grip-site Jacobian (translation rows, then rotation) of the arm."""
        axis = self.xaxis[:, :7].to(dtype)
        anchor = self.xanchor[:, :7].to(dtype)
        point = self.site_xpos[:, self._grip, None].to(dtype)
        jacp = torch.linalg.cross(axis, point - anchor, dim=-1)  # (N, 7, 3)
        return torch.cat([jacp, axis], dim=2).transpose(1, 2)

    def _ik(self, move: torch.Tensor) -> torch.Tensor:
        """``(N, 7)`` float64 joint targets moving the grip point by ``EE_STEP * move``.

        The CPU env's ``FrankaCore._ik``, batched: the target is kept in the workspace, the
        grip frame is pulled to ``GRIP_ROT``, the null space towards ``HOME_QPOS``.
        """
        f64 = torch.float64
        x = self.site_xpos[:, self._grip].to(f64)
        target = torch.minimum(
            torch.maximum(x + cpu.EE_STEP * move.to(f64), self._ws_low), self._ws_high
        )
        quat = _quat_mul(self.xquat[:, self._hand].to(f64), self._site_quat)
        conj = quat * torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=f64, device=self.device)
        rotvec = _quat_to_rotvec(_quat_mul(conj, self._grip_quat))  # mju_subQuat, site frame
        rot = self.site_xmat[:, self._grip].to(f64)
        err = torch.cat([target - x, (rot @ rotvec[..., None]).squeeze(-1)], dim=1)
        jac = self._jacobian(f64)
        jac_t = jac.transpose(1, 2)
        q = self.qpos[:, :7].to(f64)
        pull = cpu._NULL_GAIN * (self._home - q)
        rhs = torch.stack([err, (jac @ pull[..., None]).squeeze(-1)], dim=2)  # (N, 6, 2)
        y = torch.linalg.solve_ex(jac @ jac_t + self._damping, rhs).result  # SPD: no check
        return q + pull + (jac_t @ (y[..., 0] - y[..., 1])[..., None]).squeeze(-1)

    def _apply_control(self, a: torch.Tensor) -> None:
        """Servo targets from the clipped action ``a`` (``FrankaCore.step``)."""
        if self.control == "ee":
            target = self._ik(a[:, :3])
        else:
            target = self.qpos[:, :7].double() + cpu.JOINT_STEP * a[:, :7].double()
        target = torch.minimum(torch.maximum(target, self._ctrl_low), self._ctrl_high)
        self.ctrl[:, :7] = target.float()
        self.ctrl[:, 7] = 0.02 * (1.0 - a[:, -1])  # -1: open (0.04 m per finger), +1: closed

    # --- observation and factors ------------------------------------------------------------
    def observe(self) -> torch.Tensor:
        """``(N, D_o)`` observation of the current state (``FrankaCore._obs``)."""
        q, qd = self.qpos, self.qvel
        grip = self.site_xpos[:, self._grip]
        vel = (self._jacobian(torch.float32)[:, :3] @ qd[:, :7, None]).squeeze(-1)
        parts = [grip, vel, q[:, 7:8] + q[:, 8:9], qd[:, 7:8] + qd[:, 8:9], q[:, :7], qd[:, :7]]
        for item in self._items:
            pos = self.xpos[:, item.body]
            parts += [
                pos,
                pos - grip,
                q[:, item.qpos + 3 : item.qpos + 7],
                qd[:, item.qvel : item.qvel + 6],
            ]
        goal = self.mocap_pos[:, self._goal]
        parts.append(goal)
        parts.append(goal - (grip if not self._items else self.xpos[:, self._items[0].body]))
        return torch.cat(parts, dim=1).float()

    def _task_factors(self, a: torch.Tensor) -> dict[str, torch.Tensor]:
        """Reward factors of the current state after the clipped action ``a``."""
        grip = self.site_xpos[:, self._grip]
        goal = self.mocap_pos[:, self._goal]
        out = {"ctrl_cost": a[:, :-1].square().sum(dim=1)}
        if not self._items:  # reach
            dist = (grip - goal).norm(dim=1)
            out |= {"reach_dist": dist, "success": (dist < cpu.SUCCESS_DIST).float()}
        else:  # push
            pos = self.xpos[:, self._items[0].body]
            to_goal = (pos - goal).norm(dim=1)
            out |= {
                "reach_dist": (grip - pos).norm(dim=1),
                "obj_to_goal": to_goal,
                "success": (to_goal < cpu.SUCCESS_DIST).float(),
            }
        return {k: out[k].float() for k in self.factor_names}

    def reward_from_factors(self, factors: Mapping[str, Any]) -> Any:
        """``sum(w * factor)`` with the task's :data:`pbrl.envs.franka.WEIGHTS`; torch or numpy."""
        total: Any = 0.0
        for name, w in self._weights:
            total = total + w * factors[name]
        return total

    # --- state and episodes -----------------------------------------------------------------
    def _sync_derived(self, idx: torch.Tensor) -> None:
        self._obs[idx] = self.observe()[idx]

    def sample_layout(self, k: int) -> dict[str, torch.Tensor]:
        """Draw ``k`` resets' goals (and cube positions) from the CPU env's distribution.

        Returns:
            ``{"goal": (k, 3)}``, plus ``"object_xy": (k, 2)`` for push.
        """
        g, dev = self.generator, self.device

        def uniform(box: tuple[tuple[float, ...], tuple[float, ...]], n: int) -> torch.Tensor:
            lo = torch.tensor(box[0], device=dev)
            hi = torch.tensor(box[1], device=dev)
            return lo + (hi - lo) * torch.rand(n, len(box[0]), generator=g, device=dev)

        if not self._items:
            return {"goal": uniform(_REACH_GOAL, k)}
        xy = uniform(_PUSH_OBJECT_XY, k)
        goal_xy = uniform(_PUSH_GOAL_XY, k)
        while True:  # redraw goals closer than 10 cm to the cube, as the CPU env does
            near = (goal_xy - xy).norm(dim=1) < _PUSH_MIN_GAP
            n_near = int(near.sum())
            if n_near == 0:
                break
            goal_xy[near] = uniform(_PUSH_GOAL_XY, n_near)
        rest = torch.full((k, 1), self._items[0].rest_z, device=dev)
        return {"goal": torch.cat([goal_xy, rest], dim=1), "object_xy": xy}

    def _reset_worlds(self, mask: torch.Tensor) -> None:
        """Reset the worlds where ``mask`` (``FrankaCore._reset_sim``), then ``mj_forward``."""
        idx = mask.nonzero().squeeze(1)
        k = int(idx.numel())
        if k == 0:
            return
        home = self._home.float()
        self._clear_worlds(idx)
        qpos = self._qpos0.expand(k, -1).clone()
        qpos[:, :7] = home
        qpos[:, 7:9] = _FINGER_OPEN
        self.ctrl[idx, :7] = home
        self.ctrl[idx, 7] = _FINGER_OPEN
        self.mocap_pos[idx] = self._mocap_pos0
        self.mocap_quat[idx] = self._mocap_quat0
        layout = self.sample_layout(k)
        self.mocap_pos[idx, self._goal] = layout["goal"]
        for item in self._items:  # push: the cube rests upright at its drawn position
            pose = torch.zeros(k, 7, device=self.device)
            pose[:, :2] = layout["object_xy"]
            pose[:, 2] = item.rest_z
            pose[:, 3] = 1.0
            qpos[:, item.qpos : item.qpos + 7] = pose
        self.qpos[idx] = qpos
        self.qvel[idx] = 0
        self._forward()
        self._sync_derived(idx)
        self.ep_return[idx] = 0
        self.ep_len[idx] = 0

    def step(
        self, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Advance every world by one control step (:data:`~pbrl.envs.franka.N_SUBSTEPS`).

        Args:
            action: ``(N, D_a)`` actions, clipped to ``[-1, 1]`` (as the CPU env does); the
                control cost uses the clipped arm part.

        Returns:
            ``obs, reward, terminated, truncated, info``; ``terminated`` is always false, and
            ``info["success"]`` is the ``(N,)`` bool success flag of the step.
        """
        action = self._check_action(action)
        before = self.get_sim_state()
        a = action.clamp(-1.0, 1.0)
        self._apply_control(a)
        self._simulate()
        obs = self.observe()
        factors = self._task_factors(a)
        reward = self.reward_from_factors(factors)
        terminated = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        success = factors["success"] > 0.5
        return self._finish_step(before, obs, reward, factors, terminated, {"success": success})

    # --- rendering and the CPU twin ---------------------------------------------------------
    def _make_renderer(self) -> cpu.FrankaRenderer:
        return cpu.FrankaRenderer(self.model, self.camera)

    def make_cpu_env(self, seed: int | None = None, **kwargs: Any) -> gym.Env:
        """The CPU twin (``pbrl.envs.franka.FrankaEnv``, same control and camera)."""
        from pbrl import envs as pbrl_envs

        kwargs.setdefault("control", self.control)
        kwargs.setdefault("camera", self.camera)
        return pbrl_envs.make_env(
            self.env_name, seed=seed, max_episode_steps=self.max_episode_steps, **kwargs
        )
