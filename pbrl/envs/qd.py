"""QDHF's planar arm and maze robot as one-step envs, so the labelling page can draw them.

``qd_arm`` exists for the human session of ``pbrl-qd domain=arm teacher=human``: a QDHF
triplet's segments store each solution's joint angles as a one-step ``sim_state``, and the
page's clip renderer looks the env up by name and draws that state with
:meth:`~pbrl.envs.base.PbrlEnv.render_state` (a one-frame clip: a still picture).

The env itself is one step long: the action is the joint angles ``theta`` (one per unit
link, in ``[-pi, pi]``), the observation the features ``[cos, sin](cumsum theta)`` and the
reward QDHF's objective ``(1 - Var(theta)) * 100`` (factor ``objective``). The simulator
state is ``theta`` (zeros after a reset).

The picture (:func:`draw_arm`): white background, a grey circle of the arm's reach, the base
as a black square at the centre, the links as dark blue lines with joint dots, and the end
effector as a red disc. World coordinates ``[-reach, reach]^2`` (``reach`` = the number of
links, plus a 5 % margin) map onto the largest centred square of the frame, ``+y`` up.

``qd_maze`` does the same for ``pbrl-qd domain=maze teacher=human``: a solution is a policy,
and what a person compares is where it drives, so a segment stores the robot's recorded
trajectory (QDHF's maze feature, ``(T, 2)`` positions flattened) as the one-step
``sim_state``. The step runs the policy (the action: its flat MLP parameters) in the maze of
:class:`~pbrl.qd.maze.MazeDomain` and ends; the state after a reset is the start position
held for the whole episode. The picture (:func:`draw_maze`): the unit square, ``+y`` up, in
the largest centred square of the frame, white, with the maze's walls in black, the path as
a line whose colour runs from light (start) to dark blue (end), the start as a green disc and
the final position as a red disc.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from pbrl.envs.base import PbrlEnv

ARM_COLOUR = np.array([30, 60, 150], np.uint8)
JOINT_COLOUR = np.array([90, 90, 90], np.uint8)
EFFECTOR_COLOUR = np.array([220, 30, 30], np.uint8)
BASE_COLOUR = np.array([0, 0, 0], np.uint8)
REACH_COLOUR = np.array([200, 200, 200], np.uint8)
WALL_COLOUR = np.array([0, 0, 0], np.uint8)
PATH_START_COLOUR = np.array([150, 190, 240], np.float64)
PATH_END_COLOUR = np.array([20, 40, 140], np.float64)
START_COLOUR = np.array([40, 170, 60], np.uint8)
END_COLOUR = EFFECTOR_COLOUR


def arm_points(theta: np.ndarray) -> np.ndarray:
    """``(dof + 1, 2)`` base, joints and end effector of unit links at angles ``theta``."""
    phi = np.cumsum(np.asarray(theta, np.float64))
    xy = np.stack([np.cos(phi), np.sin(phi)], axis=1).cumsum(axis=0)
    return np.concatenate([np.zeros((1, 2)), xy])


def world_to_pixel(xy: np.ndarray, reach: float, width: int, height: int) -> np.ndarray:
    """``(..., 2)`` world points -> ``(..., 2)`` float pixel ``(row, col)`` of :func:`draw_arm`."""
    xy = np.asarray(xy, np.float64)
    scale = min(width, height) / (2.0 * 1.05 * reach)
    col = (width - 1) / 2.0 + xy[..., 0] * scale
    row = (height - 1) / 2.0 - xy[..., 1] * scale
    return np.stack([row, col], axis=-1)


def draw_arm(theta: np.ndarray, width: int, height: int) -> np.ndarray:
    """``(height, width, 3)`` uint8 picture of the planar arm with unit links at ``theta``."""
    theta = np.asarray(theta, np.float64).reshape(-1)
    if theta.size < 1:
        raise ValueError("an arm posture needs at least one joint angle")
    reach = float(theta.size)
    size = min(width, height)
    pts = world_to_pixel(arm_points(theta), reach, width, height)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.full((height, width, 3), 255, np.uint8)

    # reach circle (1 px ring)
    centre = world_to_pixel(np.zeros(2), reach, width, height)
    radius = reach * size / (2.0 * 1.05 * reach)
    ring = np.abs(np.hypot(rows - centre[0], cols - centre[1]) - radius) <= 0.6
    img[ring] = REACH_COLOUR

    # links: pixels within half the line width of a segment
    half = max(1.0, size / 128.0)
    for a, b in zip(pts[:-1], pts[1:], strict=True):
        _stroke(img, a, b, half, ARM_COLOUR)
    for p in pts[1:-1]:
        _disc(img, p, 1.5 * half, JOINT_COLOUR)
    b = 2.5 * half
    base = (np.abs(rows - pts[0][0]) <= b) & (np.abs(cols - pts[0][1]) <= b)
    img[base] = BASE_COLOUR
    _disc(img, pts[-1], max(2.0, 3.0 * half), EFFECTOR_COLOUR)
    return img


def _stroke(img: np.ndarray, a: np.ndarray, b: np.ndarray, half: float, colour: Any) -> None:
    """Paint the pixels within ``half`` of the segment ``a``-``b`` (pixels ``(row, col)``).

    Only the segment's bounding box is looked at.
    """
    h, w = img.shape[:2]
    r0 = max(0, int(np.floor(min(a[0], b[0]) - half)))
    r1 = min(h, int(np.ceil(max(a[0], b[0]) + half)) + 1)
    c0 = max(0, int(np.floor(min(a[1], b[1]) - half)))
    c1 = min(w, int(np.ceil(max(a[1], b[1]) + half)) + 1)
    if r0 >= r1 or c0 >= c1:
        return
    rows, cols = np.mgrid[r0:r1, c0:c1].astype(np.float64)
    d = b - a
    len2 = float(d @ d)
    t = ((rows - a[0]) * d[0] + (cols - a[1]) * d[1]) / len2 if len2 > 0 else 0.0
    t = np.clip(t, 0.0, 1.0)
    dist = np.hypot(rows - (a[0] + t * d[0]), cols - (a[1] + t * d[1]))
    img[r0:r1, c0:c1][dist <= half] = colour


def _disc(img: np.ndarray, p: np.ndarray, r: float, colour: Any) -> None:
    """Paint the pixels within ``r`` of pixel ``p``."""
    _stroke(img, p, p, r, colour)


def maze_to_pixel(xy: np.ndarray, width: int, height: int) -> np.ndarray:
    """``(..., 2)`` points of the unit square -> float pixel ``(row, col)`` of :func:`draw_maze`."""
    xy = np.asarray(xy, np.float64)
    size = min(width, height) - 1
    left, top = (width - 1 - size) / 2.0, (height - 1 - size) / 2.0
    return np.stack([top + (1.0 - xy[..., 1]) * size, left + xy[..., 0] * size], axis=-1)


def draw_maze(trajectory: np.ndarray, width: int, height: int, walls: Any = None) -> np.ndarray:
    """``(height, width, 3)`` uint8 picture of a maze robot's path.

    Args:
        trajectory: ``(T, 2)`` positions, or the same flattened to ``(2 T,)``.
        width: frame width in pixels.
        height: frame height in pixels.
        walls: ``(W, 4)`` wall segments ``(x1, y1, x2, y2)``; default: the standard
            Kheperax maze with its borders (:class:`~pbrl.qd.maze.MazeDomain`).
    """
    traj = np.asarray(trajectory, np.float64)
    if traj.ndim == 1:
        if traj.size < 2 or traj.size % 2:
            raise ValueError(
                f"a maze trajectory is (T, 2) positions or their 2 T values, got {traj.size}"
            )
        traj = traj.reshape(-1, 2)
    if traj.ndim != 2 or traj.shape[1] != 2:
        raise ValueError(f"a maze trajectory is (T, 2) positions, got shape {traj.shape}")
    if walls is None:
        from pbrl.qd.maze import BORDER_WALLS, STANDARD_WALLS

        walls = (*STANDARD_WALLS, *BORDER_WALLS)
    walls = np.asarray(walls, np.float64).reshape(-1, 4)
    img = np.full((height, width, 3), 255, np.uint8)
    half = max(0.75, min(width, height) / 160.0)
    for x1, y1, x2, y2 in walls:
        a, b = maze_to_pixel(np.array([[x1, y1], [x2, y2]]), width, height)
        _stroke(img, a, b, half, WALL_COLOUR)
    pts = maze_to_pixel(traj, width, height)
    n = len(pts)
    for i in range(n - 1):
        f = i / max(1, n - 2)
        colour = np.round(PATH_START_COLOUR + f * (PATH_END_COLOUR - PATH_START_COLOUR))
        _stroke(img, pts[i], pts[i + 1], half, colour.astype(np.uint8))
    r = max(2.0, 2.5 * half)
    _disc(img, pts[0], r, START_COLOUR)
    _disc(img, pts[-1], r, END_COLOUR)
    return img


class _ArmPosture(gym.Env):
    """The one-step arm: ``step(theta)`` sets the posture and ends the episode."""

    metadata = {"render_modes": [], "render_fps": 30}

    def __init__(self, dof: int) -> None:
        self.dof = int(dof)
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2 * self.dof,), np.float32)
        self.action_space = gym.spaces.Box(-np.pi, np.pi, (self.dof,), np.float32)
        self.theta = np.zeros(self.dof)

    def _obs(self) -> np.ndarray:
        phi = np.cumsum(self.theta)
        return np.concatenate([np.cos(phi), np.sin(phi)]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # type: ignore[override]
        super().reset(seed=seed)
        self.theta = np.zeros(self.dof)
        return self._obs(), {}

    def step(self, action):  # type: ignore[no-untyped-def,override]
        self.theta = np.clip(np.asarray(action, np.float64), -np.pi, np.pi).reshape(self.dof)
        objective = float((1.0 - np.var(self.theta)) * 100.0)
        return self._obs(), objective, True, False, {"objective": objective}


class _OneStepQDEnv(PbrlEnv):
    """A one-step QD env whose simulator state is one 1-D vector, drawn as a still picture.

    The inner env keeps the state in its attribute :attr:`_state_attr` (also the key of the
    snapshot); :meth:`_draw` draws any such vector, whatever its length, so
    :meth:`render_state` takes stored states without knowing the env's sizes in advance.
    """

    factor_names = ("objective",)
    _state_attr: str
    _state_desc: str  # what a state is, for the error on one that is not 1-D

    def _draw(self, state: np.ndarray, width: int, height: int) -> np.ndarray:
        raise NotImplementedError  # pragma: no cover - subclasses draw

    def _get_sim_state(self) -> np.ndarray:
        return getattr(self.env, self._state_attr).copy()

    def _factors(self, info: dict[str, Any]) -> dict[str, float]:
        return {"objective": float(info["objective"])}

    def _render(self, state: np.ndarray, width: int, height: int) -> np.ndarray:
        return self._draw(state, width, height)

    def render_state(self, state: np.ndarray, width: int = 84, height: int = 84) -> np.ndarray:
        """``(height, width, 3)`` uint8 picture of a stored 1-D ``state`` (any length)."""
        state = np.asarray(state, np.float64)
        if state.ndim != 1:
            raise ValueError(f"{self._state_desc}, got shape {state.shape}")
        return self._draw(state, int(width), int(height))

    def _snapshot(self) -> dict[str, Any]:
        return {self._state_attr: self._get_sim_state()}

    def _restore(self, snap: dict[str, Any]) -> None:
        setattr(self.env, self._state_attr, np.array(snap[self._state_attr], np.float64))

    def reward_from_factors(self, factors: Mapping[str, np.ndarray]) -> np.ndarray:
        """The objective itself."""
        return np.asarray(factors["objective"])


class QDArmEnv(_OneStepQDEnv):
    """QDHF's ``dof``-link planar arm (unit links) as a one-step :class:`PbrlEnv`.

    Its state is the joint angles; :meth:`render_state` draws any 1-D joint-angle vector
    (its length sets the number of links).
    """

    _state_attr = "theta"
    _state_desc = "an arm posture is 1-D joint angles"

    def __init__(self, dof: int = 10) -> None:
        if dof < 1:
            raise ValueError(f"dof must be >= 1, got {dof}")
        super().__init__(_ArmPosture(dof), max_episode_steps=1)

    def _draw(self, state: np.ndarray, width: int, height: int) -> np.ndarray:
        return draw_arm(state, width, height)


class _MazeDrive(gym.Env):
    """The one-step maze: ``step(params)`` drives the policy for an episode and ends."""

    metadata = {"render_modes": [], "render_fps": 30}

    def __init__(self, episode_length: int, hidden: int) -> None:
        from pbrl.qd.maze import MazeDomain

        self.domain = MazeDomain(episode_length=episode_length, hidden=hidden)
        d = self.domain
        self.observation_space = gym.spaces.Box(0.0, 1.0, (d.feature_dim,), np.float32)
        self.action_space = gym.spaces.Box(-np.inf, np.inf, (d.solution_dim,), np.float32)
        self.trajectory = self._still()

    def _still(self) -> np.ndarray:
        d = self.domain
        return np.tile(np.asarray(d.start[:2], np.float64), d.episode_length)

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # type: ignore[override]
        super().reset(seed=seed)
        self.trajectory = self._still()
        return self.trajectory.astype(np.float32), {}

    def step(self, action):  # type: ignore[no-untyped-def,override]
        params = np.asarray(action, np.float64).reshape(1, self.domain.solution_dim)
        obj, meas, feats = self.domain.evaluate(params)
        self.trajectory = feats[0].copy()
        info = {"objective": float(obj[0]), "final_x": meas[0, 0], "final_y": meas[0, 1]}
        return self.trajectory.astype(np.float32), float(obj[0]), True, False, info


class QDMazeEnv(_OneStepQDEnv):
    """QDHF's maze robot as a one-step :class:`PbrlEnv` whose state is the trajectory.

    :meth:`render_state` draws any trajectory (flattened ``(2 T,)``), whatever its length.
    """

    _state_attr = "trajectory"
    _state_desc = "a maze state is a flattened (T, 2) trajectory"

    def __init__(self, episode_length: int = 250, hidden: int = 8) -> None:
        super().__init__(_MazeDrive(episode_length, hidden), max_episode_steps=1)
        self._walls = self.env.domain.walls  # type: ignore[attr-defined]

    def _draw(self, state: np.ndarray, width: int, height: int) -> np.ndarray:
        return draw_maze(state, width, height, walls=self._walls)


def register_suite(register: Any) -> None:
    """Registry hook: ``qd_arm`` and ``qd_maze``."""

    def factory(seed: int | None = None, **kw: Any) -> PbrlEnv:
        return QDArmEnv(**kw)

    register(
        "qd_arm",
        factory,
        suite="qd",
        description="QDHF's planar arm, one step (action: joint angles); draws postures",
    )

    def maze_factory(seed: int | None = None, **kw: Any) -> PbrlEnv:
        return QDMazeEnv(**kw)

    register(
        "qd_maze",
        maze_factory,
        suite="qd",
        description="QDHF's maze robot, one step (action: policy parameters); draws its path",
    )
