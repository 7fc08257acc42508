"""QDHF's maze navigation task: a Kheperax-style robot in the standard Kheperax maze, in NumPy.

The paper (``maze/main.py``) runs Kheperax (Grillotti & Cully, JAX/QDax); this is a batched
NumPy rebuild of the same simulator, from Kheperax's source (``kheperax/simu/*.py``):

- the maze is the unit square with the standard Kheperax walls (:data:`STANDARD_WALLS`);
- the robot is a disk of radius 0.015 starting at (0.15, 0.15) facing +y, a differential
  drive with wheel distance ``2 radius``; each step the policy's two outputs in [-1, 1] are
  scaled by 0.025 into the left/right wheel displacements (Kheperax's ``Posture.move`` arc);
- sensors: 3 laser rangefinders at -45, 0 and +45 degrees with range 0.2, reading the
  distance from the centre to the nearest wall along the ray, ``-1`` when no wall lies within
  range (the QDHF setting ``lasers_return_minus_one_if_out_of_range=True``), and 2 bumpers
  (+1 when a wall lies closer than the radius on that side, else -1);
- collisions: a step whose new disk would touch a wall is refused and the robot stays where
  it is for the rest of the episode (Kheperax keeps a robot frozen once its disk touches a
  wall; there the overlapping step itself is taken, here the last free pose is kept, so a
  centre can never end up on the far side of a thin wall - at most 0.025 of difference);
- the policy is an MLP ``obs (5) -> 8 (ReLU) -> 2 (tanh)``, 66 parameters, LeCun-uniform
  weights and zero biases at initialisation (QDax's ``MLP`` with Flax ``Dense``);
- fitness: ``sum_t -||v_t||^2`` over the 250 steps (wheel displacements after clipping),
  remapped as in the paper's code to ``(f + 0.3) / 0.3 * 100`` (so 100 for a robot that
  never moves, about -4 at full speed throughout);
- the ground-truth descriptor is the final (x, y) position (QDax's ``get_final_xy_position``:
  the position recorded at the last of the 250 steps, before that step's move), bounds
  ``[0, 1]^2``; QDHF's feature ``f(x)`` is the recorded (x, y) trajectory, ``(250, 2)``
  flattened to R^500 (the start position first).

Everything is batched over the population: one rollout of ``N`` policies costs 250 steps of
``(N, walls)`` array operations.
"""

from __future__ import annotations

import numpy as np

# (x1, y1, x2, y2) of the standard Kheperax maze's inner walls (kheperax/envs/maze_maps.py).
STANDARD_WALLS: tuple[tuple[float, float, float, float], ...] = (
    (0.25, 0.25, 0.25, 0.75),  # vertical middle
    (0.14, 0.45, 0.0, 0.65),  # obstacle top left
    (0.25, 0.75, 0.0, 0.8),  # wall to the (unused) target
    (0.25, 0.75, 0.66, 0.875),  # wall top right
    (0.355, 0.0, 0.525, 0.185),  # obstacle bottom right
    (0.25, 0.5, 0.75, 0.215),  # funnel bottom
    (1.0, 0.25, 0.435, 0.55),  # funnel top
)
BORDER_WALLS: tuple[tuple[float, float, float, float], ...] = (
    (0.0, 0.0, 1.0, 0.0),
    (0.0, 0.0, 0.0, 1.0),
    (0.0, 1.0, 1.0, 1.0),
    (1.0, 1.0, 1.0, 0.0),
)


def _normalize_angle(a: np.ndarray) -> np.ndarray:
    return np.mod(a + np.pi, 2 * np.pi) - np.pi


class MazeDomain:
    """The maze task; solutions are flat MLP parameter vectors.

    Args:
        episode_length: steps per rollout (paper: 250).
        hidden: hidden units of the policy (paper: 8).
        walls: ``(W, 4)`` inner wall segments; the unit square's borders are always added.
        start: initial ``(x, y, heading)``.
        radius: robot radius.
        laser_range: rangefinder range.
        laser_angles: rangefinder directions relative to the heading.
        action_scale: wheel displacement per step at action 1.
        out_of_range: laser reading when no wall is within range (QDHF: -1; Kheperax's
            default would be the range itself).
    """

    name = "maze"

    def __init__(
        self,
        episode_length: int = 250,
        hidden: int = 8,
        walls: np.ndarray | None = None,
        start: tuple[float, float, float] = (0.15, 0.15, np.pi / 2),
        radius: float = 0.015,
        laser_range: float = 0.2,
        laser_angles: tuple[float, ...] = (-np.pi / 4, 0.0, np.pi / 4),
        action_scale: float = 0.025,
        out_of_range: float = -1.0,
    ):
        if episode_length < 1 or hidden < 1:
            raise ValueError(
                f"episode_length and hidden must be >= 1, got {episode_length}, {hidden}"
            )
        inner = np.asarray(STANDARD_WALLS if walls is None else walls, np.float64).reshape(-1, 4)
        self.walls = np.concatenate([inner, np.asarray(BORDER_WALLS, np.float64)])
        a, b = self.walls[:, :2], self.walls[:, 2:]
        self._a, self._s = a, b - a
        self._s2 = np.maximum((self._s**2).sum(1), 1e-18)
        self.episode_length = int(episode_length)
        self.hidden = int(hidden)
        self.start = tuple(float(v) for v in start)
        self.radius = float(radius)
        self.laser_range = float(laser_range)
        self.laser_angles = np.asarray(laser_angles, np.float64)
        self.action_scale = float(action_scale)
        self.out_of_range = float(out_of_range)
        self.obs_dim = len(self.laser_angles) + 2
        h, o = self.hidden, self.obs_dim
        self.solution_dim = o * h + h + h * 2 + 2
        self.dof = self.solution_dim  # archive solution size (name shared with ArmDomain)
        self.gt_lower = np.zeros(2)
        self.gt_upper = np.ones(2)
        self.feature_dim = 2 * self.episode_length

    # --- geometry (batched) ------------------------------------------------------------
    def wall_distances(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
        """Distances ``(N, W)`` from points to every wall, and the closest points on them."""
        px = np.asarray(x, np.float64)[:, None] - self._a[:, 0]
        py = np.asarray(y, np.float64)[:, None] - self._a[:, 1]
        u = np.clip((px * self._s[:, 0] + py * self._s[:, 1]) / self._s2, 0.0, 1.0)
        vx, vy = u * self._s[:, 0] - px, u * self._s[:, 1] - py  # point -> closest point
        return np.hypot(vx, vy), vx, vy

    def collides(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``(N,)`` True where the robot's disk at ``(x, y)`` touches a wall."""
        return (self.wall_distances(x, y)[0] <= self.radius).any(axis=1)

    def lasers(self, x: np.ndarray, y: np.ndarray, heading: np.ndarray) -> np.ndarray:
        """``(N, L)`` rangefinder readings (``out_of_range`` when no wall is within range)."""
        ang = np.asarray(heading, np.float64)[:, None] + self.laser_angles  # (N, L)
        rx = (self.laser_range * np.cos(ang))[..., None]  # (N, L, 1)
        ry = (self.laser_range * np.sin(ang))[..., None]
        qx = (self._a[:, 0] - np.asarray(x, np.float64)[:, None])[:, None, :]  # (N, 1, W)
        qy = (self._a[:, 1] - np.asarray(y, np.float64)[:, None])[:, None, :]
        sx, sy = self._s[:, 0], self._s[:, 1]
        den = rx * sy - ry * sx
        ok = np.abs(den) > 1e-12
        den = np.where(ok, den, 1.0)
        t = (qx * sy - qy * sx) / den  # along the ray, in units of the range
        u = (qx * ry - qy * rx) / den  # along the wall
        hit = ok & (t >= 0.0) & (t <= 1.0) & (u >= 0.0) & (u <= 1.0)
        dist = np.where(hit, t * self.laser_range, np.inf).min(axis=2)
        return np.where(np.isfinite(dist), dist, self.out_of_range)

    def bumpers(self, x: np.ndarray, y: np.ndarray, heading: np.ndarray) -> np.ndarray:
        """``(N, 2)`` Kheperax bumpers (+1: touching, -1: clear).

        The first reads +1 when a wall closer than the radius lies at a relative angle in
        (-90, 0] degrees, the second in [0, 90) degrees.
        """
        dist, vx, vy = self.wall_distances(x, y)
        diff = _normalize_angle(np.arctan2(vy, vx) - np.asarray(heading)[:, None])
        near = dist < self.radius
        first = (near & (diff <= 0.0) & (diff > -np.pi / 2)).any(axis=1)
        second = (near & (diff >= 0.0) & (diff < np.pi / 2)).any(axis=1)
        return np.stack([np.where(first, 1.0, -1.0), np.where(second, 1.0, -1.0)], axis=1)

    def observe(self, x: np.ndarray, y: np.ndarray, heading: np.ndarray) -> np.ndarray:
        """``(N, obs_dim)`` lasers then bumpers."""
        return np.concatenate([self.lasers(x, y, heading), self.bumpers(x, y, heading)], axis=1)

    def move(
        self, x: np.ndarray, y: np.ndarray, heading: np.ndarray, d_l: np.ndarray, d_r: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Differential-drive arc for wheel displacements ``d_l``, ``d_r`` (no collisions)."""
        wd = 2.0 * self.radius
        alpha = (d_r - d_l) / wd
        turning = np.abs(alpha) > 1e-10
        safe = np.where(turning, alpha, 1.0)
        r = d_l / safe + wd / 2.0
        dx0, dy0 = (np.cos(alpha) - 1.0) * r, np.sin(alpha) * r
        phi = heading - np.pi / 2
        dx = np.where(turning, dx0 * np.cos(phi) - dy0 * np.sin(phi), d_l * np.cos(heading))
        dy = np.where(turning, dx0 * np.sin(phi) + dy0 * np.cos(phi), d_l * np.sin(heading))
        dth = np.where(turning, _normalize_angle(alpha), 0.0)
        return x + dx, y + dy, _normalize_angle(heading + dth)

    # --- policy and rollouts ---------------------------------------------------------------
    def unpack(self, params: np.ndarray) -> tuple[np.ndarray, ...]:
        """``(N, P)`` flat parameters -> ``W1 (N, o, h), b1 (N, h), W2 (N, h, 2), b2 (N, 2)``."""
        params = np.asarray(params, np.float64).reshape(-1, self.solution_dim)
        o, h, n = self.obs_dim, self.hidden, len(params)
        i = 0
        w1 = params[:, i : i + o * h].reshape(n, o, h)
        i += o * h
        b1 = params[:, i : i + h]
        i += h
        w2 = params[:, i : i + h * 2].reshape(n, h, 2)
        i += h * 2
        return w1, b1, w2, params[:, i : i + 2]

    def policy(self, params: np.ndarray, obs: np.ndarray) -> np.ndarray:
        """``(N, 2)`` actions in [-1, 1] of ``N`` MLPs on ``(N, obs_dim)`` observations."""
        w1, b1, w2, b2 = self.unpack(params)
        hid = np.maximum(np.einsum("no,noh->nh", obs, w1) + b1, 0.0)
        return np.tanh(np.einsum("nh,nha->na", hid, w2) + b2)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``(n, P)`` fresh policies: LeCun-uniform weights, zero biases."""
        o, h = self.obs_dim, self.hidden
        w1 = rng.uniform(-1, 1, (n, o * h)) * np.sqrt(3.0 / o)
        w2 = rng.uniform(-1, 1, (n, h * 2)) * np.sqrt(3.0 / h)
        return np.concatenate([w1, np.zeros((n, h)), w2, np.zeros((n, 2))], axis=1)

    def rollout(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run ``N`` policies for an episode.

        Returns:
            ``traj (N, T, 2)`` the position recorded before each step, and ``(N,)`` the raw
            Kheperax fitness ``sum_t -||v_t||^2``.
        """
        params = np.asarray(params, np.float64).reshape(-1, self.solution_dim)
        n, steps = len(params), self.episode_length
        w1, b1, w2, b2 = self.unpack(params)
        x = np.full(n, self.start[0])
        y = np.full(n, self.start[1])
        th = np.full(n, self.start[2])
        stuck = self.collides(x, y)
        traj = np.empty((n, steps, 2))
        ret = np.zeros(n)
        obs = self.observe(x, y, th)
        for t in range(steps):
            traj[:, t, 0], traj[:, t, 1] = x, y
            hid = np.maximum(np.einsum("no,noh->nh", obs, w1) + b1, 0.0)
            act = np.clip(np.tanh(np.einsum("nh,nha->na", hid, w2) + b2), -1.0, 1.0)
            v = np.clip(act * self.action_scale, -self.action_scale, self.action_scale)
            ret -= (v**2).sum(axis=1)
            nx, ny, nth = self.move(x, y, th, v[:, 0], v[:, 1])
            free = ~stuck & ~self.collides(nx, ny)
            stuck = ~free
            x, y, th = np.where(free, nx, x), np.where(free, ny, y), np.where(free, nth, th)
            if t + 1 < steps:
                obs = self.observe(x, y, th)
        return traj, ret

    # --- the QD domain interface ---------------------------------------------------------------
    def evaluate(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One rollout each: ``(objective (N,), measures (N, 2), features (N, 2T))``."""
        traj, ret = self.rollout(params)
        objective = (ret + 0.3) / 0.3 * 100.0
        return objective, traj[:, -1].copy(), traj.reshape(len(traj), -1)

    def objective(self, params: np.ndarray) -> np.ndarray:
        """``(N,)`` remapped fitness (a rollout each)."""
        return self.evaluate(params)[0]

    def measures(self, params: np.ndarray) -> np.ndarray:
        """``(N, 2)`` final position (a rollout each)."""
        return self.evaluate(params)[1]

    def features(self, params: np.ndarray) -> np.ndarray:
        """``(N, 2T)`` flattened trajectory (a rollout each)."""
        return self.evaluate(params)[2]
