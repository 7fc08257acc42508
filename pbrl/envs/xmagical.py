"""X-MAGICAL SweepToTop (the cross-embodiment benchmark of XIRL and RAPL) on gymnasium.

Four registered envs, one per embodiment: ``xmagical_sweep_gripper``,
``xmagical_sweep_shortstick``, ``xmagical_sweep_mediumstick``, ``xmagical_sweep_longstick``.
A robot must push three debris squares into the goal band at the top of a 2.2 x 2.2 arena.

Why our own implementation: the PyPI ``x-magical`` (0.0.4) pins ``pymunk~=5.6``, which does
not import on Python >= 3.10 (``collections.Sequence``), imports the unmaintained ``gym``
(0.26, which fails on NumPy 2), and its physics code mutates ``Vec2d`` in place, which
pymunk >= 6 forbids. :mod:`pbrl.envs._xmagical` rebuilds the task on pymunk 7 from the
benchmark's description and numbers; with the same actions it reproduces the package's
body trajectories (run under pymunk 5.6) to about 1e-13 (``tests/envs/test_xmagical.py``
holds the recorded reference).

- **Action** ``Box(-1, 1)``: forward speed (clipped to +-0.8 as in the benchmark), turn
  (relative heading target), and for the gripper the closing of its fingers (``>= pi/8``:
  closed, ``<= 0``: open). 8 env steps per simulated second, 10 physics substeps each.
- **Observation** (float32, the benchmark's state observation): robot x, y; debris x, y
  (3 x 2); cos and sin of the robot's heading; robot-debris distances (3) and debris-top
  distances ``|y - 1|`` (3), both divided by ``2 sqrt 2``; for the gripper its opening.
  16 entries for the sticks, 17 for the gripper. ``obs="pixels"`` gives frames instead.
- **Episodes** last 100 steps (50 for the long stick, as registered by the benchmark) and
  end with ``truncated=True``, never ``terminated``.
- **Variants** (``variant=``): ``"layout"`` (default; the benchmark's TestLayout, which
  XIRL trains on: the debris row is drawn from y in [-0.1, 0.5] and its three columns from
  four), ``"demo"`` (the fixed layout), ``"color"`` (debris and goal colours drawn),
  ``"dynamics"`` (motor and friction strengths drawn). Draws come from ``reset(seed=)``.

Reward factors and the reward (``reward=`` ``"sparse"``, the benchmark's default, or
``"dense"``, its dense option):

====================== ====================================================================
factor                 meaning
====================== ====================================================================
``debris{i}_in_goal``  1 if debris ``i``'s bounding box lies inside the goal zone's, else 0
``debris{i}_distance`` ``|y_i - 1|``, or 0 once ``y_i > 0.88`` (distance to the top line)
====================== ====================================================================

``sparse = mean_i debris{i}_in_goal`` (the fraction of debris in the goal zone, which is
also the benchmark's end-of-episode score); ``dense = -mean_i debris{i}_distance``.
``success``: all three debris in the goal zone.

Simulator state (float64): for each moving body (robot, left and right pupil, [left and
right finger,] debris 0..2) its x, y, angle, vx, vy and angular velocity, then the goal's
and the three debris' colour indices (into :data:`pbrl.envs._xmagical.scene.COLOR_NAMES`):
40 entries for the sticks, 52 for the gripper. Frames are drawn from it by a software
renderer (Pillow; no display, no OpenGL). ``get_env_state`` stores the reset's layout and
the actions since, and restoring rebuilds the world and replays them: pymunk is
deterministic, so the copy continues bit for bit.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from pbrl.envs._xmagical import scene as sc
from pbrl.envs.base import PbrlEnv

TASKS: dict[str, str] = {f"xmagical_sweep_{name}": name for name in sc.EMBODIMENTS}
"""Registry name -> embodiment."""
REWARDS = ("sparse", "dense")
FACTOR_NAMES: tuple[str, ...] = tuple(
    f"debris{i}_{kind}" for kind in ("in_goal", "distance") for i in range(sc.N_DEBRIS)
)
_IN_GOAL = FACTOR_NAMES[: sc.N_DEBRIS]
_DISTANCE = FACTOR_NAMES[sc.N_DEBRIS :]
_GOAL0, _GOAL1, _GOAL2 = _IN_GOAL  # success: every debris in the goal (unrolled, per step)
PYMUNK = "pymunk>=7"


def _require_pymunk() -> None:
    """Raise MissingExtraError unless pymunk 7 or newer is importable."""
    from pbrl.envs import MissingExtraError

    if importlib.util.find_spec("pymunk") is None:
        raise MissingExtraError("X-Magical", "xmagical", PYMUNK)
    from importlib.metadata import version

    if int(version("pymunk").split(".")[0]) < 7:
        raise MissingExtraError("X-Magical", "xmagical", PYMUNK)


def _observation_space(gripper: bool) -> gym.spaces.Box:
    """Bounds of the state observation: what the arena's walls allow."""
    a, n = sc.ARENA_HALF, sc.N_DEBRIS
    far = 2 * a * math.sqrt(2) / sc.D_MAX  # across the arena's diagonal
    low = [-a] * (2 + 2 * n) + [-1.0, -1.0] + [0.0] * (2 * n) + [0.0] * gripper
    high = [a] * (2 + 2 * n) + [1.0, 1.0] + [far] * n + [(a + sc.TOP_Y) / sc.D_MAX] * n
    high += [1.0] * gripper
    return gym.spaces.Box(np.array(low, np.float32), np.array(high, np.float32), dtype=np.float32)


class SweepToTopCore(gym.Env):
    """SweepToTop for one embodiment as a plain gymnasium env (no pbrl extras).

    ``render()`` (``render_mode="rgb_array"``) draws the live world at ``render_size``
    (384, the benchmark's resolution) straight from the simulator's bodies.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": sc.FPS}

    def __init__(
        self,
        embodiment: str,
        variant: str = "layout",
        reward: str = "sparse",
        render_mode: str | None = None,
        render_size: int = 384,
    ):
        _require_pymunk()
        from pbrl.envs._xmagical.draw import Painter
        from pbrl.envs._xmagical.world import SweepWorld

        if embodiment not in sc.EMBODIMENTS:
            raise KeyError(f"unknown embodiment {embodiment!r}; valid: {sorted(sc.EMBODIMENTS)}")
        if variant not in sc.VARIANTS:
            raise ValueError(f"variant must be one of {sc.VARIANTS}, got {variant!r}")
        if reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.embodiment = sc.EMBODIMENTS[embodiment]
        self.variant, self.reward_type = variant, reward
        self.render_mode, self.render_size = render_mode, int(render_size)
        self.max_episode_steps = self.embodiment.max_episode_steps
        dim = self.embodiment.action_dim
        self.action_space = gym.spaces.Box(-1.0, 1.0, (dim,), dtype=np.float32)
        self.observation_space = _observation_space(self.embodiment.gripper)
        self._world_cls = SweepWorld
        self.painter = Painter(self.embodiment)
        self._first_debris = 5 if self.embodiment.gripper else 3
        self._actions: list[np.ndarray] = []
        self.last_factors: dict[str, float] = {}
        self._set_world(SweepWorld(self.embodiment, sc.Layout()))

    def _set_world(self, world: Any) -> None:
        self.world = world
        layout = world.layout
        self._colors = np.array([layout.goal_color, *layout.debris_colors], np.float64)
        self._read_state()

    def _read_state(self) -> None:
        # One fresh flat array per step: the sim state; ``_rows`` is a view of its body part.
        # Read-only, so it can be handed out (info["sim_state"]) without a copy.
        rows = self.world.body_state()
        self._state = np.concatenate((rows.ravel(), self._colors))
        self._state.flags.writeable = False
        self._rows = self._state[: rows.size].reshape(rows.shape)

    # --- gymnasium API ----------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):  # type: ignore[override]
        """New episode; the variant's layout is drawn from ``np_random`` (seeded by ``seed``)."""
        super().reset(seed=seed)
        layout = sc.sample_layout(self.variant, self.np_random)
        self._set_world(self._world_cls(self.embodiment, layout))
        self._actions = []
        self.last_factors = {}
        return self._obs(self._rows), {}

    def step(self, action):  # type: ignore[no-untyped-def,override]
        """One env step (10 physics substeps); truncates at the episode length."""
        action = np.array(action, dtype=np.float64).reshape(-1)
        if action.shape != self.action_space.shape:
            raise ValueError(
                f"action must have shape {self.action_space.shape}, got {action.shape}"
            )
        self.world.set_action(action)
        self.world.step()
        self._actions.append(action)
        self._read_state()
        self.last_factors = self._compute_factors(self._rows)
        reward = self._reward(self.last_factors)
        truncated = len(self._actions) >= self.max_episode_steps
        return self._obs(self._rows), reward, False, truncated, {}

    def render(self) -> np.ndarray | None:  # type: ignore[override]
        """The live frame at ``render_size`` (``render_mode="rgb_array"``), else None."""
        if self.render_mode is None:
            return None
        return self.render_frame(self.render_size, self.render_size)

    def render_frame(self, width: int, height: int) -> np.ndarray:
        """``(height, width, 3)`` uint8 frame of the live world, read from its bodies."""
        poses = np.array([(b.position.x, b.position.y, b.angle) for b in self.world.bodies])
        layout = self.world.layout
        return self.painter.frame(poses, layout.debris_colors, layout.goal_color, width, height)

    # --- task quantities ---------------------------------------------------------------
    # Plain floats: for 3 debris, Python arithmetic beats NumPy's per-call overhead.
    def _obs(self, rows: np.ndarray) -> np.ndarray:
        r = rows.tolist()
        rx, ry, ra = r[0][:3]
        debris = r[self._first_debris : self._first_debris + sc.N_DEBRIS]
        obs = [rx, ry]
        for d in debris:
            obs += d[:2]
        obs += [math.cos(ra), math.sin(ra)]
        obs += [math.hypot(rx - d[0], ry - d[1]) / sc.D_MAX for d in debris]
        obs += [abs(d[1] - sc.TOP_Y) / sc.D_MAX for d in debris]
        if self.embodiment.gripper:
            # The fingers' opening: pi/4 apart is 1 (the benchmark's finger_width).
            obs.append(min(max(math.degrees(r[3][2] - r[4][2]) / 45, 0.0), 1.0))
        return np.array(obs, np.float32)

    def _compute_factors(self, rows: np.ndarray) -> dict[str, float]:
        ys = rows[self._first_debris : self._first_debris + sc.N_DEBRIS, 1].tolist()
        factors = {k: float(v) for k, v in zip(_IN_GOAL, self.world.debris_in_goal(), strict=True)}
        for k, y in zip(_DISTANCE, ys, strict=True):
            factors[k] = 0.0 if y > sc.TOP_REACHED_Y else abs(y - sc.TOP_Y)
        return factors

    def _reward(self, f: Mapping[str, float]) -> float:
        # Summed in index order, like the benchmark's np.mean over the debris list.
        if self.reward_type == "sparse":
            return sum(f[k] for k in _IN_GOAL) / sc.N_DEBRIS
        return -(sum(f[k] for k in _DISTANCE) / sc.N_DEBRIS)

    # --- state -------------------------------------------------------------------------
    def sim_state(self) -> np.ndarray:
        """Flat float64 state: body rows (x, y, angle, vx, vy, w), then colour indices.

        A new read-only array after every reset, step and restore (never changed later).
        """
        return self._state

    def snapshot(self) -> dict[str, Any]:
        """The layout, the actions since reset and the RNG: enough to rebuild the episode."""
        return {
            "layout": self.world.layout,
            "actions": np.array(self._actions, np.float64).reshape(-1, self.embodiment.action_dim),
            "np_random": self.np_random.bit_generator.state,
        }

    def restore(self, snap: Mapping[str, Any]) -> None:
        """Rebuild the world of ``snap`` and replay its actions (pymunk is deterministic)."""
        world = self._world_cls(self.embodiment, snap["layout"])
        actions = [np.array(a, np.float64) for a in snap["actions"]]
        for a in actions:
            world.set_action(a)
            world.step()
        self._set_world(world)
        self._actions = actions
        self.last_factors = self._compute_factors(self._rows) if actions else {}
        self.np_random.bit_generator.state = snap["np_random"]


class XMagicalEnv(PbrlEnv):
    """SweepToTop for one embodiment with reward factors, sim state and re-rendering.

    Keyword arguments: ``variant`` (default ``"layout"``) and ``reward`` (``"sparse"``,
    default, or ``"dense"``); see the module docstring.
    """

    def __init__(self, name: str, seed: int | None = None, **kwargs: Any):
        if name not in TASKS:
            raise KeyError(f"unknown X-Magical task {name!r}; valid: {sorted(TASKS)}")
        core = SweepToTopCore(TASKS[name], **kwargs)
        super().__init__(core, core.max_episode_steps)
        self.core = core
        self.factor_names = FACTOR_NAMES
        self._n_bodies = core.embodiment.n_bodies

    def _get_sim_state(self) -> np.ndarray:
        return self.core.sim_state()

    def _factors(self, info: dict[str, Any]) -> dict[str, float]:
        # The core builds a new dict every step and never touches it again: no copy.
        return self.core.last_factors

    def _success(self, info: dict[str, Any]) -> bool:
        f = self.core.last_factors
        return f[_GOAL0] == f[_GOAL1] == f[_GOAL2] == 1.0

    def reward_from_factors(self, factors: Mapping[str, np.ndarray]) -> np.ndarray:
        """Sparse: mean of ``debris{i}_in_goal``; dense: minus the mean ``debris{i}_distance``."""
        keys = _IN_GOAL if self.core.reward_type == "sparse" else _DISTANCE
        total = sum(np.asarray(factors[k], np.float64) for k in keys) / sc.N_DEBRIS
        return total if self.core.reward_type == "sparse" else -total

    def _render(self, state: np.ndarray, width: int, height: int) -> np.ndarray:
        n = self._n_bodies
        poses = state[: 6 * n].reshape(n, 6)
        colors = state[6 * n :]
        return self.core.painter.frame(poses, colors[1:].astype(int), int(colors[0]), width, height)

    def _snapshot(self) -> dict[str, Any]:
        return self.core.snapshot()

    def _restore(self, snap: dict[str, Any]) -> None:
        self.core.restore(snap)


def register_suite(register: Any) -> None:
    """Registry hook: one entry per embodiment (registered even without pymunk)."""
    for key, embodiment in TASKS.items():

        def factory(seed: int | None = None, _key: str = key, **kw: Any) -> PbrlEnv:
            return XMagicalEnv(_key, seed=seed, **kw)

        register(
            key,
            factory,
            suite="xmagical",
            description=f"X-MAGICAL SweepToTop, {embodiment} embodiment",
        )
