"""Franka Emika Panda manipulation in MuJoCo: reach, push, pick-and-place and grocery packing.

The robot is a real Panda model: its kinematic chain (link masses, joint ranges, finger pads)
and STL meshes come from the installed ``gymnasium-robotics`` package
(``gymnasium_robotics/envs/assets/kitchen_franka/franka_assets``: ``chain.xml`` and
``meshes/``, Apache-2.0, after Vikash Kumar's franka_sim; the package itself is MIT). Nothing
is copied into pbrl or downloaded: :func:`load_model` builds, at load time, a small MJCF that
includes that ``chain.xml`` by absolute path beside pbrl's own files in
``pbrl/envs/assets/franka/`` (defaults, actuators, finger coupling, the table scene, each
task's objects). Without gymnasium-robotics the names still register and building one raises
:class:`~pbrl.envs.MissingExtraError`.

Control (``control=``):

- ``"ee"`` (default): action ``(4,)`` in ``[-1, 1]``: a Cartesian move of the grip point (the
  point between the fingertip pads) of up to :data:`EE_STEP` m per step along x, y, z, and the
  gripper (``-1`` open, ``+1`` closed). Damped-least-squares inverse kinematics on the
  site Jacobian turns the move, with the gripper kept pointing down, into joint targets for
  the arm's position servos; the null space pulls towards the home posture.
- ``"joint"``: action ``(8,)``: joint target offsets of up to :data:`JOINT_STEP` rad from the
  current joint angles, and the gripper as above.

Observation (float32): grip point position (3) and velocity (3), finger opening and its rate
(2), arm joint angles (7) and velocities (7); then per object (push, pick_place: the cube;
grocery: eggs, can, jar) its position (3), position relative to the grip point (3),
orientation quaternion (4) and velocity (6, linear then angular); then the goal position (3;
grocery: the mat's centre) and the goal relative to the grip point (reach) or to the first
object (3). Sizes: reach 28, push and pick_place 44, grocery 76.

One env step is :data:`N_SUBSTEPS` physics steps of 2 ms (25 Hz control). Episodes never
terminate; they are truncated after the task's ``max_episode_steps``. ``info["success"]``
is the task's success flag at that step.

Reward factors (``info["reward_factors"]``; distances in metres, "grip" is the grip point):

=============== ===========================================================================
factor          meaning
=============== ===========================================================================
reach_dist      grip to what it should reach: the goal (reach), the object (push,
                pick_place), the nearest grocery item not yet on the mat (grocery; 0 when none)
grasp           1 when both finger pads touch the object (grocery: any item), else 0
lift            object height above its resting height, clipped to [0, goal height above it]
obj_to_goal     object centre to goal (push, pick_place); grocery: mean over the items of the
                horizontal distance from the item's centre to the mat (0 inside it)
in_goal         grocery: fraction of the items resting on the mat (inside it, not lifted)
ctrl_cost       squared norm of the arm part of the action (the gripper command excluded)
success         1 when the task is solved at this step (reach, push, pick_place: within
                :data:`SUCCESS_DIST` of the goal; grocery: every item rests on the mat)
fragile_gap     grocery, hidden criterion: horizontal distance from the egg carton (fragile)
                to the nearer of the heavy items (can, jar)
fragile_apart   grocery, hidden criterion: 1 when ``fragile_gap >= FRAGILE_GAP``
user_success    grocery, hidden criterion: ``success * fragile_apart``
=============== ===========================================================================

The reward is ``sum(w * factor)`` with the weights of :data:`WEIGHTS` (a factor missing from a
task's weights does not enter its reward):

=========== ===================================================================================
task        reward
=========== ===================================================================================
reach       -reach_dist - 0.01 ctrl_cost + success
push        -0.5 reach_dist - obj_to_goal - 0.01 ctrl_cost + success
pick_place  -0.5 reach_dist + 0.25 grasp + lift - obj_to_goal - 0.01 ctrl_cost + success
grocery     -0.5 reach_dist + 0.25 grasp - obj_to_goal + in_goal - 0.01 ctrl_cost + success
=========== ===================================================================================

The grocery task is RAPL-style: its reward only asks for the three items (egg carton, tin
can, glass jar) on the bag mat, whatever the arrangement, while the arrangement a person wants
(the fragile eggs kept apart from the heavy can and jar, so nothing is crushed) is plain in
the picture and absent from the reward. ``fragile_gap``, ``fragile_apart`` and
``user_success`` carry that hidden criterion for a synthetic teacher (e.g. RAPL's privileged
ranking); they are factors with weight 0, so a reward learner must recover them from
preferences over rendered clips.

The stored simulator state is ``mj_getState`` of ``mjSTATE_FULLPHYSICS`` plus the mocap
bodies' positions and orientations (the goal marker and the bag mat are mocap bodies):
everything a frame shows. Frames come from the fixed ``"front"`` camera on a private
``MjData``; checkpoints copy the whole live ``MjData``, so a resumed episode continues
bit-for-bit.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import gymnasium as gym
import mujoco
import numpy as np

from pbrl.envs.base import PbrlEnv, pack_mjdata, unpack_mjdata

ROBOT_PACKAGE = "gymnasium-robotics"  # the PyPI distribution that ships the Panda model
_ROBOT_MODULE = "gymnasium_robotics"
_ROBOT_SUBDIR = ("envs", "assets", "kitchen_franka", "franka_assets")
ASSETS = Path(__file__).parent / "assets" / "franka"

STATE_SIG = (
    mujoco.mjtState.mjSTATE_FULLPHYSICS
    | mujoco.mjtState.mjSTATE_MOCAP_POS
    | mujoco.mjtState.mjSTATE_MOCAP_QUAT
)

N_SUBSTEPS = 20  # 20 x 2 ms = one 25 Hz control step
EE_STEP = 0.05  # m of grip-point target offset per unit of action
JOINT_STEP = 0.1  # rad of joint target offset per unit of action
SUCCESS_DIST = 0.05  # m, reach / push / pick_place success radius
FRAGILE_GAP = 0.15  # m, grocery: the eggs count as "apart" from heavy items beyond this
TABLE_Z = 0.0  # height of the table top

# Home posture: grip point at (0.45, 0, 0.25) pointing straight down, fingers along y
# (found once by damped-least-squares IK from a bent-elbow guess; tests check it).
HOME_QPOS = np.array([0.0, -0.2318, 0.0, -2.4605, 0.0, 0.6586, 0.0])
# Grip frame orientation to hold in "ee" control: x forward, z down (columns = axes).
GRIP_ROT = np.diag([1.0, -1.0, -1.0])
# Grip-point targets are kept in this box (m), above the table and inside the reach.
WORKSPACE = (np.array([0.25, -0.4, 0.025]), np.array([0.8, 0.4, 0.5]))
_IK_DAMPING = 1e-4  # lambda^2 of the damped least squares
_NULL_GAIN = 0.1  # pull of the null-space motion towards HOME_QPOS per step

_ARM_JOINTS = tuple(f"robot:panda0_joint{i}" for i in range(1, 8))
_FINGER_JOINTS = ("robot:panda0_finger_joint1", "robot:panda0_finger_joint2")
_FINGER_BODIES = ("panda0_leftfinger", "panda0_rightfinger")
_GRIP_SITE_Z = 0.24  # on link7: between the fingertip pads

WEIGHTS: dict[str, dict[str, float]] = {
    "reach": {"reach_dist": -1.0, "ctrl_cost": -0.01, "success": 1.0},
    "push": {"reach_dist": -0.5, "obj_to_goal": -1.0, "ctrl_cost": -0.01, "success": 1.0},
    "pick_place": {
        "reach_dist": -0.5,
        "grasp": 0.25,
        "lift": 1.0,
        "obj_to_goal": -1.0,
        "ctrl_cost": -0.01,
        "success": 1.0,
    },
    "grocery": {
        "reach_dist": -0.5,
        "grasp": 0.25,
        "obj_to_goal": -1.0,
        "in_goal": 1.0,
        "ctrl_cost": -0.01,
        "success": 1.0,
    },
}

FACTORS: dict[str, tuple[str, ...]] = {
    "reach": ("reach_dist", "ctrl_cost", "success"),
    "push": ("reach_dist", "obj_to_goal", "ctrl_cost", "success"),
    "pick_place": ("reach_dist", "grasp", "lift", "obj_to_goal", "ctrl_cost", "success"),
    "grocery": (
        "reach_dist",
        "grasp",
        "obj_to_goal",
        "in_goal",
        "ctrl_cost",
        "success",
        "fragile_gap",
        "fragile_apart",
        "user_success",
    ),
}

MAX_EPISODE_STEPS = {"reach": 50, "push": 100, "pick_place": 100, "grocery": 400}

TASKS: dict[str, str] = {
    "franka_reach": "reach",
    "franka_push": "push",
    "franka_pick_place": "pick_place",
    "franka_grocery": "grocery",
}

_DESCRIPTIONS = {
    "reach": "Franka Panda: move the gripper to a goal point",
    "push": "Franka Panda: push a cube to a goal on the table",
    "pick_place": "Franka Panda: pick a cube and place it at a goal, often in the air",
    "grocery": "Franka Panda: pack groceries on a mat (hidden: eggs apart from heavy items)",
}


def task_reward(task: str, factors: Mapping[str, Any]) -> Any:
    """The task's reward ``sum(w * factor)`` (:data:`WEIGHTS`), vectorised over any shape."""
    total: Any = 0.0
    for name, w in WEIGHTS[task].items():
        total = total + w * np.asarray(factors[name], np.float64)
    return total


def robot_assets_dir() -> Path:
    """Directory of the installed Panda model (``chain.xml``, ``meshes/``).

    Raises:
        MissingExtraError: gymnasium-robotics is not installed.
    """
    spec = importlib.util.find_spec(_ROBOT_MODULE)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        from pbrl.envs import MissingExtraError

        raise MissingExtraError("Franka", "franka", ROBOT_PACKAGE)
    root = Path(next(iter(spec.submodule_search_locations))).joinpath(*_ROBOT_SUBDIR)
    if not (root / "chain.xml").is_file():
        raise FileNotFoundError(
            f"{ROBOT_PACKAGE} is installed but has no Panda model at {root}; pbrl needs a "
            "version that ships kitchen_franka/franka_assets (1.4 does)"
        )
    return root


def load_model(task: str) -> mujoco.MjModel:
    """The model of ``task``: pbrl's scene and objects around the installed Panda.

    The robot's bodies get gravity compensation (the real arm's controller provides it), and
    a ``grip`` site is added between the fingertip pads. Each call returns a fresh copy of a
    model compiled once per process (compiling the meshes takes ~10x longer than copying).

    Raises:
        MissingExtraError: gymnasium-robotics is not installed.
    """
    if task not in WEIGHTS:
        raise KeyError(f"unknown Franka task {task!r}; valid: {sorted(WEIGHTS)}")
    return copy.deepcopy(_compile(task, robot_assets_dir()))


@functools.cache
def _compile(task: str, robot: Path) -> mujoco.MjModel:
    def path(p: Path) -> str:  # an absolute path as an XML attribute value
        return quoteattr(str(p))

    # Robot first, so its joints lead qpos; every file is included by absolute path.
    xml = f"""<mujoco model="franka_{task}">
  <compiler meshdir={path(robot / "meshes")}/>
  <include file={path(ASSETS / "panda.xml")}/>
  <include file={path(ASSETS / "scene.xml")}/>
  <worldbody><include file={path(robot / "chain.xml")}/></worldbody>
  <include file={path(ASSETS / f"{task}.xml")}/>
</mujoco>"""
    spec = mujoco.MjSpec.from_string(xml)
    for body in spec.bodies:
        if body.name.startswith("panda0_"):
            body.gravcomp = 1.0
    # The chain's own end-effector marker would show in frames; keep it in a hidden group.
    spec.site("end_effector").group = 5
    spec.body("panda0_link7").add_site(
        name="grip",
        pos=[0.0, 0.0, _GRIP_SITE_Z],
        quat=[0.92388, 0.0, 0.0, -0.382683],  # the fingers' frame: opening along site y
        size=[0.01, 0.01, 0.01],
        group=5,
    )
    return spec.compile()


@dataclass(frozen=True)
class _Item:
    """A free body of the task: its body id, qpos/qvel addresses and resting height."""

    name: str
    body: int
    qpos: int
    qvel: int
    rest_z: float


def _item(model: mujoco.MjModel, name: str) -> _Item:
    body = model.body(name).id
    jnt = int(model.body_jntadr[body])
    geom = int(model.body_geomadr[body])  # the first geom is the collision shape
    cylinder = model.geom_type[geom] == mujoco.mjtGeom.mjGEOM_CYLINDER
    half_height = float(model.geom_size[geom, 1 if cylinder else 2])
    return _Item(
        name,
        body,
        int(model.jnt_qposadr[jnt]),
        int(model.jnt_dofadr[jnt]),
        TABLE_Z + half_height,
    )


def _dist_to_rect(xy: np.ndarray, center: np.ndarray, half: np.ndarray) -> float:
    """Horizontal distance from ``xy`` to an axis-aligned rectangle (0 inside)."""
    out = np.maximum(np.abs(xy - center) - half, 0.0)
    return float(np.sqrt(out @ out))


class FrankaCore(gym.Env):
    """A Franka task as a plain gymnasium env (reward and factors, no pbrl sim-state extras).

    Args:
        task: ``"reach"``, ``"push"``, ``"pick_place"`` or ``"grocery"``.
        control: ``"ee"`` (Cartesian grip-point moves, default) or ``"joint"``.
    """

    metadata = {"render_modes": []}

    def __init__(self, task: str, control: str = "ee"):
        if control not in ("ee", "joint"):
            raise ValueError(f"control must be 'ee' or 'joint', got {control!r}")
        self.task, self.control = task, control
        self.model = load_model(task)
        self.data = mujoco.MjData(self.model)
        m = self.model
        self.max_episode_steps = MAX_EPISODE_STEPS[task]
        self.factor_names = FACTORS[task]
        self._weights = tuple(WEIGHTS[task].items())

        arm = [int(m.jnt_qposadr[m.joint(j).id]) for j in _ARM_JOINTS]
        fingers = [int(m.jnt_qposadr[m.joint(j).id]) for j in _FINGER_JOINTS]
        if arm + fingers != list(range(9)) or any(
            int(m.jnt_dofadr[m.joint(j).id]) != i for i, j in enumerate(_ARM_JOINTS)
        ):
            raise RuntimeError("the Panda's joints must lead qpos and qvel (model layout changed)")
        self._grip = m.site("grip").id
        self._fingers = tuple(m.body(b).id for b in _FINGER_BODIES)
        self._geom_body = np.asarray(m.geom_bodyid)
        self._jacp = np.zeros((3, m.nv))
        self._jacr = np.zeros((3, m.nv))
        self._jac = np.zeros((6, 7))
        self._damping = _IK_DAMPING * np.eye(6)
        self._rhs = np.zeros((6, 2))
        self._quat, self._rotvec = np.zeros(4), np.zeros(3)
        self._grip_quat = np.zeros(4)
        mujoco.mju_mat2Quat(self._grip_quat, GRIP_ROT.ravel())
        self._ctrl_low = m.actuator_ctrlrange[:7, 0].copy()
        self._ctrl_high = m.actuator_ctrlrange[:7, 1].copy()

        if task == "grocery":
            self.items = tuple(_item(m, n) for n in ("eggs", "can", "jar"))
            self._bag = int(m.body_mocapid[m.body("bag").id])
            self._bag_half = m.geom_size[m.geom("bag").id, :2].copy()
        else:
            self.items = (_item(m, "object"),) if task != "reach" else ()
            self._goal = int(m.body_mocapid[m.body("goal").id])

        n_act = 4 if control == "ee" else 8
        self.action_space = gym.spaces.Box(-1.0, 1.0, (n_act,), np.float32)
        self._elapsed = 0
        self._reset_sim(np.random.default_rng(0))
        obs_dim = self._obs().shape[0]
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)

    # --- reset ------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):  # type: ignore[override]
        """Arm at home, fingers open; object and goal drawn from the env's ``np_random``."""
        super().reset(seed=seed)
        self._reset_sim(self.np_random)
        self._elapsed = 0
        return self._obs(), {}

    def _reset_sim(self, rng: np.random.Generator) -> None:
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        d.qpos[:7] = HOME_QPOS
        d.qpos[7:9] = 0.04
        d.ctrl[:7] = HOME_QPOS
        d.ctrl[7] = 0.04
        getattr(self, f"_place_{self.task}")(rng)
        mujoco.mj_forward(m, d)

    def _set_item(self, item: _Item, x: float, y: float) -> None:
        self.data.qpos[item.qpos : item.qpos + 7] = (x, y, item.rest_z, 1.0, 0.0, 0.0, 0.0)

    def _place_reach(self, rng: np.random.Generator) -> None:
        goal = rng.uniform((0.3, -0.25, TABLE_Z + 0.05), (0.65, 0.25, TABLE_Z + 0.35))
        self.data.mocap_pos[self._goal] = goal

    def _place_object_and_goal(self, rng: np.random.Generator, max_lift: float) -> None:
        obj = self.items[0]
        xy = rng.uniform((0.4, -0.2), (0.6, 0.2))
        while True:  # a goal at least 10 cm away, so no episode starts solved
            goal_xy = rng.uniform((0.35, -0.25), (0.65, 0.25))
            if np.linalg.norm(goal_xy - xy) >= 0.1:
                break
        self._set_item(obj, *xy)
        lift = rng.uniform(0.0, max_lift) if max_lift > 0 else 0.0
        self.data.mocap_pos[self._goal] = (*goal_xy, obj.rest_z + lift)

    def _place_push(self, rng: np.random.Generator) -> None:
        self._place_object_and_goal(rng, 0.0)

    def _place_pick_place(self, rng: np.random.Generator) -> None:
        self._place_object_and_goal(rng, 0.25)

    def _place_grocery(self, rng: np.random.Generator) -> None:
        side = 1.0 if rng.uniform() < 0.5 else -1.0  # the mat's side; the items start opposite
        bag = (0.5 + rng.uniform(-0.04, 0.04), side * rng.uniform(0.17, 0.22), TABLE_Z)
        self.data.mocap_pos[self._bag] = bag
        placed: list[np.ndarray] = []
        for item in self.items:
            while True:  # off the mat, 12 cm apart: room for the open gripper between them
                xy = np.array([rng.uniform(0.38, 0.62), -side * rng.uniform(0.06, 0.28)])
                if all(np.linalg.norm(xy - p) >= 0.12 for p in placed):
                    break
            placed.append(xy)
            self._set_item(item, *xy)

    # --- step -------------------------------------------------------------------------
    def step(self, action):  # type: ignore[no-untyped-def,override]
        """Apply the command for :data:`N_SUBSTEPS` physics steps; factors go in the info."""
        a = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
        if a.shape != self.action_space.shape:
            raise ValueError(f"action must have shape {self.action_space.shape}, got {a.shape}")
        m, d = self.model, self.data
        if self.control == "ee":
            target = self._ik(a[:3])
        else:
            target = d.qpos[:7] + JOINT_STEP * a[:7]
        d.ctrl[:7] = np.clip(target, self._ctrl_low, self._ctrl_high)
        d.ctrl[7] = 0.02 * (1.0 - a[-1])  # -1: open (0.04 m per finger), +1: closed
        for _ in range(N_SUBSTEPS):
            mujoco.mj_step(m, d)
        # Bring positions, contacts and Jacobians up to the new state: the observation, the
        # factors and the next IK read them, and the live frame then shows this state.
        mujoco.mj_forward(m, d)
        self._elapsed += 1
        factors = self._factors(float(a[:-1] @ a[:-1]))
        reward = 0.0
        for name, w in self._weights:  # task_reward's sum, in its order, on Python floats
            reward += w * factors[name]
        truncated = self._elapsed >= self.max_episode_steps
        info = {"factors": factors, "is_success": bool(factors["success"])}
        return self._obs(), reward, False, truncated, info

    def _ik(self, move: np.ndarray) -> np.ndarray:
        """Joint targets that move the grip point by ``EE_STEP * move`` and keep it down."""
        d, rhs = self.data, self._rhs
        x = d.site_xpos[self._grip]
        rhs[:3, 0] = np.minimum(np.maximum(x + EE_STEP * move, WORKSPACE[0]), WORKSPACE[1]) - x
        # Orientation error: the world-frame rotation vector taking the grip frame to GRIP_ROT.
        mujoco.mju_mat2Quat(self._quat, d.site_xmat[self._grip])
        mujoco.mju_subQuat(self._rotvec, self._grip_quat, self._quat)
        rhs[3:, 0] = d.site_xmat[self._grip].reshape(3, 3) @ self._rotvec
        mujoco.mj_jacSite(self.model, d, self._jacp, self._jacr, self._grip)
        jac = self._jac
        jac[:3], jac[3:] = self._jacp[:, :7], self._jacr[:, :7]
        q = d.qpos[:7]
        pull = _NULL_GAIN * (HOME_QPOS - q)
        # dq = J+ err + (I - J+ J) pull with J+ = J^T (J J^T + lambda^2 I)^-1: one solve.
        rhs[:, 1] = jac @ pull
        y = np.linalg.solve(jac @ jac.T + self._damping, rhs)
        return q + pull + jac.T @ (y[:, 0] - y[:, 1])

    # --- observation and factors ------------------------------------------------------
    @property
    def grip_pos(self) -> np.ndarray:
        """``(3,)`` world position of the grip point."""
        return self.data.site_xpos[self._grip]

    @property
    def goal_pos(self) -> np.ndarray:
        """``(3,)`` goal position (reach, push, pick_place) or the mat's centre (grocery)."""
        idx = self._bag if self.task == "grocery" else self._goal
        return self.data.mocap_pos[idx]

    def item_pos(self, i: int = 0) -> np.ndarray:
        """``(3,)`` world position of the task's ``i``-th free body."""
        return self.data.xpos[self.items[i].body]

    def _obs(self) -> np.ndarray:
        d = self.data
        grip = d.site_xpos[self._grip]
        vel = np.empty(6)
        mujoco.mj_objectVelocity(self.model, d, mujoco.mjtObj.mjOBJ_SITE, self._grip, vel, 0)
        parts = [
            grip,
            vel[3:],  # linear velocity of the grip point, world frame
            d.qpos[7:8] + d.qpos[8:9],  # finger opening
            d.qvel[7:8] + d.qvel[8:9],
            d.qpos[:7],
            d.qvel[:7],
        ]
        for item in self.items:
            pos = d.xpos[item.body]
            parts += [
                pos,
                pos - grip,
                d.qpos[item.qpos + 3 : item.qpos + 7],
                d.qvel[item.qvel : item.qvel + 6],
            ]
        goal = self.goal_pos
        parts.append(goal)
        parts.append(goal - (grip if self.task == "reach" else d.xpos[self.items[0].body]))
        return np.concatenate(parts).astype(np.float32)

    def _held(self, body: int) -> bool:
        """Both finger pads touch ``body``."""
        n = self.data.ncon
        if n == 0:
            return False
        pairs = self._geom_body[self.data.contact.geom[:n]]
        left, right = self._fingers
        with_body = (pairs == body).any(axis=1)
        return bool(
            (with_body & (pairs == left).any(axis=1)).any()
            and (with_body & (pairs == right).any(axis=1)).any()
        )

    def _factors(self, ctrl_cost: float) -> dict[str, float]:
        d = self.data
        grip = d.site_xpos[self._grip]
        if self.task == "reach":
            dist = float(np.linalg.norm(grip - self.goal_pos))
            success = float(dist < SUCCESS_DIST)
            return {"reach_dist": dist, "ctrl_cost": ctrl_cost, "success": success}
        if self.task == "grocery":
            return self._grocery_factors(grip, ctrl_cost)
        obj = self.items[0]
        pos = d.xpos[obj.body]
        goal = self.goal_pos
        to_goal = float(np.linalg.norm(pos - goal))
        out = {
            "reach_dist": float(np.linalg.norm(grip - pos)),
            "obj_to_goal": to_goal,
            "ctrl_cost": ctrl_cost,
            "success": float(to_goal < SUCCESS_DIST),
        }
        if self.task == "pick_place":
            out["grasp"] = float(self._held(obj.body))
            out["lift"] = float(np.clip(pos[2] - obj.rest_z, 0.0, goal[2] - obj.rest_z))
        return out

    def _grocery_factors(self, grip: np.ndarray, ctrl_cost: float) -> dict[str, float]:
        d = self.data
        center = self.goal_pos[:2]
        pos = np.stack([d.xpos[it.body] for it in self.items])
        out_dist = np.array([_dist_to_rect(p[:2], center, self._bag_half) for p in pos])
        rest = np.array([it.rest_z for it in self.items])
        on_mat = (out_dist == 0.0) & (pos[:, 2] < rest + 0.01)
        away = [np.linalg.norm(grip - p) for p, o in zip(pos, out_dist, strict=True) if o > 0]
        gap = float(min(np.linalg.norm(pos[0, :2] - pos[k, :2]) for k in (1, 2)))
        success = float(on_mat.all())
        apart = float(gap >= FRAGILE_GAP)
        return {
            "reach_dist": float(min(away)) if away else 0.0,
            "grasp": float(any(self._held(it.body) for it in self.items)),
            "obj_to_goal": float(out_dist.mean()),
            "in_goal": float(on_mat.mean()),
            "ctrl_cost": ctrl_cost,
            "success": success,
            "fragile_gap": gap,
            "fragile_apart": apart,
            "user_success": success * apart,
        }


class FrankaRenderer:
    """Frames of stored states from a fixed camera, on a private ``MjData``."""

    def __init__(self, model: mujoco.MjModel, camera: str = "front"):
        self.model = model
        self.data = mujoco.MjData(model)
        self.camera = model.camera(camera).id
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}

    def render(self, state: np.ndarray, width: int, height: int) -> np.ndarray:
        """``(height, width, 3)`` uint8 frame of a :data:`STATE_SIG` state."""
        key = (width, height)
        if key not in self._renderers:
            vis = self.model.vis.global_
            vis.offwidth, vis.offheight = max(vis.offwidth, width), max(vis.offheight, height)
            self._renderers[key] = mujoco.Renderer(self.model, height=height, width=width)
        mujoco.mj_setState(self.model, self.data, state, STATE_SIG)
        mujoco.mj_forward(self.model, self.data)
        renderer = self._renderers[key]
        renderer.update_scene(self.data, camera=self.camera)
        return renderer.render().copy()

    def close(self) -> None:
        """Free the GL contexts."""
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()


class FrankaEnv(PbrlEnv):
    """A Franka task with reward factors, success flag, sim state and re-rendering.

    Args:
        name: a key of :data:`TASKS` (``"franka_reach"``, ...).
        control: ``"ee"`` (default) or ``"joint"``; see the module docstring.
        camera: the model camera frames are rendered from (``"front"`` or ``"top"``).
    """

    def __init__(self, name: str, control: str = "ee", camera: str = "front"):
        if name not in TASKS:
            raise KeyError(f"unknown Franka task {name!r}; valid: {sorted(TASKS)}")
        core = FrankaCore(TASKS[name], control=control)
        super().__init__(core, core.max_episode_steps)
        self.core = core
        self.factor_names = core.factor_names
        self._model, self._data = core.model, core.data
        self._state_size = mujoco.mj_stateSize(core.model, STATE_SIG)
        self._camera = camera
        core.model.camera(camera)  # fail now on an unknown camera name
        self._renderer: FrankaRenderer | None = None

    def _get_sim_state(self) -> np.ndarray:
        out = np.empty(self._state_size, np.float64)
        mujoco.mj_getState(self._model, self._data, out, STATE_SIG)
        return out

    def _factors(self, info: dict[str, Any]) -> dict[str, float]:
        return info.pop("factors")  # published as info["reward_factors"]

    def _success(self, info: dict[str, Any]) -> bool | None:
        return info.pop("is_success")  # published as info["success"]

    def reward_from_factors(self, factors: Mapping[str, np.ndarray]) -> np.ndarray:
        """``sum(w * factor)`` with the task's :data:`WEIGHTS` (see the module table)."""
        return task_reward(self.core.task, factors)

    def _render(self, state: np.ndarray, width: int, height: int) -> np.ndarray:
        if self._renderer is None:
            self._renderer = FrankaRenderer(self._model, self._camera)
        return self._renderer.render(state, width, height)

    def _snapshot(self) -> dict[str, Any]:
        return {
            "data": pack_mjdata(self._data),
            "np_random": self.core.np_random.bit_generator.state,
            "elapsed": self.core._elapsed,
        }

    def _restore(self, snap: dict[str, Any]) -> None:
        mujoco.mj_copyData(self._data, self._model, unpack_mjdata(snap["data"]))
        self.core.np_random.bit_generator.state = snap["np_random"]
        self.core._elapsed = int(snap["elapsed"])

    def close(self) -> None:
        """Close the renderer."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        super().close()


def register_suite(register: Any) -> None:
    """Registry hook: one entry per :data:`TASKS` task (registered even without the extra)."""
    for key, task in TASKS.items():

        def factory(seed: int | None = None, _key: str = key, **kw: Any) -> PbrlEnv:
            return FrankaEnv(_key, **kw)

        register(key, factory, suite="franka", description=_DESCRIPTIONS[task])
