"""What a SweepToTop scene is made of: sizes, embodiments, colours, layouts (no simulator).

Numbers are those of the X-MAGICAL benchmark (Zakka et al., "XIRL", CoRL 2021; the
``x-magical`` package): a 2.2 x 2.2 arena, a robot of radius 0.2, three square debris of
area ``pi * 0.12**2``, and a goal band across the top of the arena. Physics and drawing
both read their geometry from here, so what is simulated and what is drawn agree.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field

import numpy as np

# --- the arena ---------------------------------------------------------------------------
ARENA_HALF = 1.1
"""Inner walls at x, y = +-1.1."""
VIEW_HALF = ARENA_HALF * 1.02
"""The allocentric camera shows 2% beyond the walls on each side."""
WALL_RADIUS = 1.0
"""The walls are thick segments outside the arena (radius 1, friction 0.8)."""
WALL_FRICTION = 0.8

GOAL_LEFT, GOAL_TOP, GOAL_HEIGHT, GOAL_WIDTH = -1.2, 1.16, 0.4, 2.4
"""Goal zone: a sensor box spanning the arena's width, y in [0.76, 1.16]."""
GOAL_CENTRE = (GOAL_LEFT + GOAL_WIDTH / 2, GOAL_TOP - GOAL_HEIGHT / 2)
TOP_Y = 1.0
"""Distances of the dense reward are measured to this line."""
TOP_REACHED_Y = 0.88
"""Above this height a debris counts as at the top for the dense reward."""
D_MAX = 2.8284271247461903
"""Normaliser of the state observation's distances (2 sqrt 2)."""

# --- time ------------------------------------------------------------------------------
FPS = 8
"""Env steps per simulated second."""
PHYS_STEPS = 10
"""Physics substeps per env step."""
PHYS_ITERATIONS = 10
COLLISION_SLOP = 0.01
DT = 1.0 / FPS / PHYS_STEPS

# --- robot -----------------------------------------------------------------------------
ROBOT_RAD = 0.2
ROBOT_MASS = 1.0
ROBOT_POSE = ((0.0, -0.6), 0.0)
SPEED_LIMIT = 4.0 * ROBOT_RAD
"""``action[0]`` (forward speed) is clipped to +-0.8."""
TURN_LIMIT = 1.5
ROBOT_FRICTION = 0.5
FINGER_FRICTION = 5.0
FINGER_OPEN = math.pi / 8
"""A gripper finger turns between 0 (closed) and pi/8 (open) from the body's axis."""
LINE_THICKNESS = 0.01
"""Inset of the light inner part of the gripper's fingers."""

# --- debris ----------------------------------------------------------------------------
N_DEBRIS = 3
SHAPE_RAD = ROBOT_RAD * 0.6
SQUARE_SIDE = math.sqrt(math.pi) * SHAPE_RAD
"""A square of the same area as a circle of radius ``SHAPE_RAD``."""
DEBRIS_MASS = 0.01
DEBRIS_FRICTION = 0.5
DEMO_DEBRIS_XY = ((-0.5, 0.0), (0.0, 0.0), (0.5, 0.0))
LAYOUT_X_SLOTS = tuple(float(x) for x in np.arange(-0.8, 0.8, 4.0 * SHAPE_RAD))
"""Random layouts put the three debris in three of these four columns ..."""
LAYOUT_Y_RANGE = (-0.1, 0.5)
"""... on one row drawn uniformly from this range."""


@dataclass(frozen=True)
class PhysicsVariables:
    """Motor and friction strengths; ``variant="dynamics"`` draws them from their ranges."""

    robot_pos_joint_max_force: float = 5.0
    robot_rot_joint_max_force: float = 1.0
    robot_finger_max_force: float = 4.0
    shape_trans_joint_max_force: float = 1.5
    shape_rot_joint_max_force: float = 0.1


PHYSICS_RANGES: dict[str, tuple[float, float]] = {
    "robot_pos_joint_max_force": (3.2, 5.5),
    "robot_rot_joint_max_force": (0.7, 1.5),
    "robot_finger_max_force": (2.5, 4.5),
    "shape_trans_joint_max_force": (1.0, 1.8),
    "shape_rot_joint_max_force": (0.07, 0.15),
}


# --- colours ---------------------------------------------------------------------------
def _rgb(r: int, g: int, b: int) -> tuple[float, float, float]:
    return (r / 255.0, g / 255.0, b / 255.0)


def darken(rgb: tuple[float, float, float]) -> tuple[float, float, float]:
    """Lightness times 0.9 (HLS)."""
    h, lum, s = colorsys.rgb_to_hls(*rgb)
    return colorsys.hls_to_rgb(h, max(0.0, lum * 0.9), s)


def lighten(rgb: tuple[float, float, float], times: float = 1.0) -> tuple[float, float, float]:
    """Distance to white divided by ``1.4 ** times`` (HLS)."""
    h, lum, s = colorsys.rgb_to_hls(*rgb)
    return colorsys.hls_to_rgb(h, 1.0 - (1.0 - lum) / 1.4**times, s)


GREY = _rgb(162, 163, 175)
COLOR_NAMES = ("red", "green", "blue", "yellow")
"""Debris and goal colours (indices into this tuple are stored in the sim state)."""
BASE_COLORS = {
    "red": lighten(_rgb(0xEE, 0x1F, 0x60), 1.7),
    "green": lighten(_rgb(0x85, 0x94, 0x38), 1.7),
    "blue": lighten(_rgb(0x3B, 0x7E, 0xA1), 1.7),
    "yellow": lighten(_rgb(0xFD, 0xB5, 0x15), 1.7),
}


def to_uint8(rgb: tuple[float, float, float]) -> tuple[int, int, int]:
    """0-1 floats to 0-255 ints (rounded)."""
    return tuple(int(round(c * 255)) for c in rgb)  # type: ignore[return-value]


# --- embodiments -----------------------------------------------------------------------
@dataclass(frozen=True)
class Embodiment:
    """One of the four robots: a stick (``length`` x ``thickness``) or the gripper.

    Sizes are in robot radii, as the benchmark gives them. ``eye_xy`` is the offset of the
    (right) googly eye from the body's centre.
    """

    name: str
    gripper: bool
    length: float = 0.0
    thickness: float = 0.0
    eye_xy: tuple[float, float] = field(default=(0.0, 0.0))

    @property
    def action_dim(self) -> int:
        """Forward speed, turn (and the gripper's closing)."""
        return 3 if self.gripper else 2

    @property
    def n_bodies(self) -> int:
        """Moving bodies: robot, two pupils, (two fingers,) three debris."""
        return 3 + (2 if self.gripper else 0) + N_DEBRIS

    @property
    def max_episode_steps(self) -> int:
        """100 steps; the long stick solves the task faster and gets 50 (as in the benchmark)."""
        return 50 if self.name == "longstick" else 100

    def stick_vertices(self) -> np.ndarray:
        """``(4, 2)`` corners of the stick in the body frame (width along x)."""
        hw, hh = self.length * ROBOT_RAD / 2, self.thickness * ROBOT_RAD / 2
        return np.array([(-hw, hh), (hw, hh), (hw, -hh), (-hw, -hh)])


EMBODIMENTS: dict[str, Embodiment] = {
    "gripper": Embodiment("gripper", True, eye_xy=(0.4 * ROBOT_RAD, 0.3 * ROBOT_RAD)),
    "shortstick": Embodiment("shortstick", False, 1.5, 0.5, (0.3 * ROBOT_RAD, 0.0)),
    "mediumstick": Embodiment("mediumstick", False, 3.0, 0.5, (0.3 * ROBOT_RAD, 0.0)),
    "longstick": Embodiment("longstick", False, 8.0, 0.5, (0.3 * ROBOT_RAD, 0.0)),
}

EYE_RADIUS = 0.2 * ROBOT_RAD
PUPIL_RADIUS = 0.12 * ROBOT_RAD
PUPIL_OFFSET = 0.07 * ROBOT_RAD
"""The pupil sits this far up from the eye's centre, turned by the pupil body's lag."""


def _rect(w: float, h: float) -> np.ndarray:
    """Corners of a ``w`` x ``h`` rectangle about the origin, counter-clockwise."""
    return np.array([(w / 2, h / 2), (-w / 2, h / 2), (-w / 2, -h / 2), (w / 2, -h / 2)])


def _rotate(pts: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return pts @ np.array([[c, s], [-s, c]])


def finger_parts(upper: float, fore: float, thick: float, side: int) -> list[np.ndarray]:
    """The two boxes of a gripper finger in the finger's frame: upper arm and forearm.

    The finger's origin is the root of the upper arm, which points up (+y); the forearm
    sits on its tip, bent inwards by pi/8 (``side`` -1: left finger, +1: right finger).
    """
    bend = side * math.pi / 8
    upper_arm = _rect(thick, upper) + (0.0, upper / 2)
    # The forearm's inner bottom corner meets the upper arm's inner top corner.
    elbow = (
        np.array((side * thick / 2, upper))
        + _rotate(np.array([(-side * thick / 2, fore / 2)]), bend)[0]
    )
    forearm = _rotate(_rect(thick, fore), bend) + elbow
    return [upper_arm, forearm]


FINGER_UPPER, FINGER_FORE, FINGER_THICK = 1.1 * ROBOT_RAD, 0.7 * ROBOT_RAD, 0.25 * ROBOT_RAD
FINGER_MASS = ROBOT_MASS / 8
FINGER_ROOTS = ((-0.45 * ROBOT_RAD, 0.1 * ROBOT_RAD), (0.45 * ROBOT_RAD, 0.1 * ROBOT_RAD))
"""Finger pivots in the body frame (left, right)."""


def finger_outer(side: int) -> list[np.ndarray]:
    """Collision (and outer drawn) boxes of the finger on ``side``."""
    return finger_parts(FINGER_UPPER, FINGER_FORE, FINGER_THICK, side)


def finger_inner(side: int) -> list[np.ndarray]:
    """The lighter inner boxes drawn over :func:`finger_outer`."""
    t = 2 * LINE_THICKNESS
    parts = finger_parts(FINGER_UPPER - t, FINGER_FORE - t, FINGER_THICK - t, side)
    return [p + (0.0, LINE_THICKNESS) for p in parts]


# --- layouts ---------------------------------------------------------------------------
VARIANTS = ("demo", "layout", "color", "dynamics")
"""``demo``: the fixed layout. ``layout`` (the benchmark's TestLayout, which XIRL trains
on): the debris row and columns are drawn. ``color``: debris and goal colours are drawn.
``dynamics``: the motor and friction strengths are drawn."""


@dataclass(frozen=True)
class Layout:
    """Everything a reset decides: debris poses and colours, goal colour, physics variables."""

    debris_xy: tuple[tuple[float, float], ...] = DEMO_DEBRIS_XY
    debris_colors: tuple[int, ...] = (0, 0, 0)
    goal_color: int = 0
    physics: PhysicsVariables = PhysicsVariables()


def sample_layout(variant: str, rng: np.random.Generator) -> Layout:
    """The layout of one reset of ``variant`` (see :data:`VARIANTS`), drawn from ``rng``."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if variant == "demo":
        return Layout()
    if variant == "layout":
        y = float(rng.uniform(*LAYOUT_Y_RANGE))
        xs = rng.choice(np.array(LAYOUT_X_SLOTS), size=N_DEBRIS, replace=False)
        return Layout(debris_xy=tuple((float(x), y) for x in xs))
    if variant == "color":
        goal = int(rng.integers(len(COLOR_NAMES)))
        debris = tuple(int(c) for c in rng.integers(len(COLOR_NAMES), size=N_DEBRIS))
        return Layout(debris_colors=debris, goal_color=goal)
    values = {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in PHYSICS_RANGES.items()}
    return Layout(physics=PhysicsVariables(**values))
