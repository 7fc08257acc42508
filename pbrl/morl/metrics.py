"""Front metrics shared by every multi-objective method (C-MORL, PGMORL, ...).

All objectives are **maximised**. A front is an ``(n, m)`` array of vector returns, one row per
policy. The functions here are pure: the evaluation *protocol* (episodes, length, discount)
lives in :class:`EvalProtocol` and :func:`pbrl.morl.ppo.evaluate_policy`; :func:`score_front`
turns the vector returns it produced into the numbers every method is compared on.

- :func:`hypervolume`: exact, for any number of objectives (a sweep in 2-D, slicing by the last
  objective above: HSO, While et al. 2006), of the points that strictly dominate the reference.
- :func:`expected_utility`: ``mean_{w in grid} max_{pi} w . G_pi`` over an integer simplex grid
  (:func:`simplex_grid`), so every grid point is kept (the official C-MORL code filters
  ``sum(w) == 1`` with float equality and silently drops some; see docs/cmorl.md).
- :func:`sparsity`: PGMORL's (Xu et al. 2020) mean squared gap between neighbours, per objective,
  of the non-dominated front (morl-baselines ``performance_indicators.sparsity``).
- :func:`crowding_distance`: NSGA-II's, with the ``max == min`` guard (that objective adds 0
  instead of the NaN of a 0 / 0).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


def _as_points(points: np.ndarray | Sequence[Sequence[float]], name: str = "points") -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim == 1 and arr.size == 0:
        return arr.reshape(0, 0)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be an (n, m) array of vector returns, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def pareto_mask(points: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """``(n,)`` bool: True where no other point dominates the row (maximisation).

    ``q`` dominates ``p`` when ``q >= p`` everywhere and ``q > p`` somewhere. Exact duplicates do
    not dominate each other, so both copies are kept (use :func:`non_dominated` to drop them).
    """
    pts = _as_points(points)
    n = pts.shape[0]
    if n == 0:
        return np.zeros(0, bool)
    ge = (pts[None, :, :] >= pts[:, None, :]).all(-1)  # ge[i, j]: j >= i everywhere
    gt = (pts[None, :, :] > pts[:, None, :]).any(-1)
    return ~(ge & gt).any(axis=1)


def non_dominated(
    points: np.ndarray | Sequence[Sequence[float]], return_index: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The non-dominated rows of ``points`` without duplicates (first copy kept).

    Args:
        points: ``(n, m)`` vector returns.
        return_index: also return the kept rows' indices into ``points``.
    """
    pts = _as_points(points)
    idx = np.flatnonzero(pareto_mask(pts))
    if idx.size:
        _, first = np.unique(pts[idx], axis=0, return_index=True)
        idx = idx[np.sort(first)]
    return (pts[idx], idx) if return_index else pts[idx]


def _hv_2d(y: np.ndarray) -> float:
    """Area dominated by positive points ``y`` (n, 2) above the origin (sweep over x)."""
    order = np.argsort(-y[:, 0], kind="stable")
    area, y_max = 0.0, 0.0
    for x_i, y_i in y[order]:
        if y_i > y_max:
            area += x_i * (y_i - y_max)
            y_max = y_i
    return area


def _hv_rec(y: np.ndarray) -> float:
    """Volume dominated by positive points ``y`` (n, d) above the origin."""
    n, d = y.shape
    if n == 0:
        return 0.0
    if d == 1:
        return float(y.max())
    y = y[pareto_mask(y)]
    if d == 2:
        return _hv_2d(y)
    # Slice along the last objective: between consecutive levels z_(k+1) < z <= z_k the
    # cross-section is the (d-1)-volume of the points whose last objective is >= z_k.
    order = np.argsort(-y[:, -1], kind="stable")
    y = y[order]
    n = y.shape[0]
    levels = np.append(y[:, -1], 0.0)
    total = 0.0
    for k in range(n):
        depth = levels[k] - levels[k + 1]
        if depth > 0:
            total += depth * _hv_rec(y[: k + 1, :-1])
    return total


def hypervolume(
    points: np.ndarray | Sequence[Sequence[float]], ref_point: Sequence[float] | np.ndarray
) -> float:
    """Exact hypervolume (maximisation) of ``points`` with respect to ``ref_point``.

    Only points strictly better than the reference in every objective count (as in pymoo's
    indicator applied by morl-baselines and C-MORL); the rest add nothing.

    Args:
        points: ``(n, m)`` vector returns.
        ref_point: ``(m,)`` the reference (a lower bound on every objective).
    """
    pts = _as_points(points)
    ref = np.asarray(ref_point, dtype=np.float64).reshape(-1)
    if pts.size == 0:
        return 0.0
    if pts.shape[1] != ref.shape[0]:
        raise ValueError(
            f"ref_point has {ref.shape[0]} objectives but the points have {pts.shape[1]}"
        )
    y = pts - ref
    y = y[(y > 0).all(axis=1)]
    return float(_hv_rec(y))


def simplex_grid(num_objectives: int, step: float) -> np.ndarray:
    """All weights ``w >= 0`` with ``sum(w) = 1`` on a grid of spacing ``step``.

    Built from integer compositions ``k / n`` (``n = 1 / step``), so no point is lost to float
    rounding: ``C(n + m - 1, m - 1)`` rows, e.g. 101 for 2 objectives at 0.01, 66 for 3 at 0.1.

    Args:
        num_objectives: ``m >= 1``.
        step: grid spacing; ``1 / step`` must be an integer (0.2, 0.1, 0.01, 0.5, 1, ...).
    """
    if num_objectives < 1:
        raise ValueError(f"num_objectives must be >= 1, got {num_objectives}")
    if not 0 < step <= 1:
        raise ValueError(f"step must lie in (0, 1], got {step}")
    n = round(1.0 / step)
    if not math.isclose(n * step, 1.0, rel_tol=1e-9, abs_tol=1e-12):
        raise ValueError(f"1 / step must be an integer, got step={step} (1/step = {1 / step})")
    rows = [c for c in itertools.product(range(n + 1), repeat=num_objectives - 1) if sum(c) <= n]
    ints = np.array([[*c, n - sum(c)] for c in rows], dtype=np.float64)
    return ints / n


def expected_utility(points: np.ndarray | Sequence[Sequence[float]], weights: np.ndarray) -> float:
    """``mean_w max_i w . points_i``: the mean best linear utility over ``weights`` (k, m)."""
    pts = _as_points(points)
    w = _as_points(weights, "weights")
    if pts.shape[0] == 0:
        return float("nan")
    if pts.shape[1] != w.shape[1]:
        raise ValueError(f"weights have {w.shape[1]} objectives but the points {pts.shape[1]}")
    return float((w @ pts.T).max(axis=1).mean())


def sparsity(points: np.ndarray | Sequence[Sequence[float]]) -> float:
    """PGMORL's sparsity: ``sum_j sum_i (P_j(i+1) - P_j(i))^2 / (n - 1)`` over sorted objectives.

    Computed on the given points (pass the non-dominated front); 0 for fewer than 2 points.
    """
    pts = _as_points(points)
    n = pts.shape[0]
    if n < 2:
        return 0.0
    s = np.sort(pts, axis=0)
    return float((np.diff(s, axis=0) ** 2).sum() / (n - 1))


def cardinality(points: np.ndarray | Sequence[Sequence[float]]) -> int:
    """Number of distinct non-dominated points."""
    pts = _as_points(points)
    return int(non_dominated(pts).shape[0]) if pts.shape[0] else 0


def crowding_distance(points: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """NSGA-II crowding distance of each row, ``(n,)``; boundary points get ``inf``.

    ``CD_i = sum_k (f_k(next) - f_k(prev)) / (f_k,max - f_k,min)`` over each objective's sorted
    order. An objective on which all points agree (``max == min``) contributes 0 (the official
    C-MORL code divides by zero there and returns NaN, which then wins or loses every argmax
    at random). With fewer than 3 points every distance is ``inf``.
    """
    pts = _as_points(points)
    n, m = pts.shape if pts.size else (pts.shape[0], 0)
    cd = np.zeros(n, np.float64)
    if n < 3:
        return np.full(n, np.inf)
    for k in range(m):
        order = np.argsort(pts[:, k], kind="stable")
        f = pts[order, k]
        span = f[-1] - f[0]
        if span <= 0:
            continue
        cd[order[0]] = np.inf
        cd[order[-1]] = np.inf
        cd[order[1:-1]] += (f[2:] - f[:-2]) / span
    return cd


@dataclass(frozen=True)
class EvalProtocol:
    """How every method's policies are scored, so that fronts are comparable.

    Attributes:
        episodes: deterministic evaluation episodes per policy (C-MORL ``eval_num`` 5).
        max_steps: steps per evaluation episode (C-MORL 500; MO-Gymnasium registers 1000).
        gamma: discount of the evaluated vector return (C-MORL ``eval_gamma`` 0.99).
        ref_point: ``(m,)`` hypervolume reference (C-MORL mo-hopper-2d: ``(-100, -100)``).
        eu_step: spacing of the expected-utility weight grid (0.01 for 2 objectives, 0.1 for 3
            in C-MORL's scripts).
        seed: seed of the first evaluation episode (episode ``i`` uses ``seed + i``).
    """

    episodes: int = 5
    max_steps: int = 500
    gamma: float = 0.99
    ref_point: tuple[float, ...] = (-100.0, -100.0)
    eu_step: float = 0.01
    seed: int = 10_000
    weights: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.episodes < 1 or self.max_steps < 1:
            raise ValueError("EvalProtocol needs episodes >= 1 and max_steps >= 1")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"EvalProtocol.gamma must lie in (0, 1], got {self.gamma}")
        object.__setattr__(self, "ref_point", tuple(float(r) for r in self.ref_point))
        object.__setattr__(self, "weights", simplex_grid(len(self.ref_point), self.eu_step))

    @property
    def num_objectives(self) -> int:
        """Number of objectives ``m`` (the reference point's length)."""
        return len(self.ref_point)


def score_front(points: np.ndarray | Sequence[Sequence[float]], protocol: EvalProtocol) -> dict:
    """The shared scores of a set of vector returns: ``hv``, ``eu``, ``sparsity``, ``cardinality``.

    The front is the non-dominated subset of ``points``; dominated points never change any score.
    """
    pts = _as_points(points)
    if pts.shape[0] and pts.shape[1] != protocol.num_objectives:
        raise ValueError(
            f"points have {pts.shape[1]} objectives, the protocol {protocol.num_objectives}"
        )
    front = non_dominated(pts) if pts.shape[0] else pts
    return {
        "hv": hypervolume(front, protocol.ref_point),
        "eu": expected_utility(front, protocol.weights),
        "sparsity": sparsity(front),
        "cardinality": int(front.shape[0]),
    }
