"""A MAP-Elites grid archive with batched insertion (keeps the best solution per cell).

Same semantics as pyribs' ``GridArchive`` (``ribs >= 0.5``): ``dims`` cells per measure
between ``lower`` and ``upper``; measures outside the bounds fall into the edge cells; a
solution enters a cell that is empty or holds a worse objective. A whole batch is inserted
with a few array operations (within a batch, the best solution per cell wins).

:func:`make_archive` picks the backend: ``"pbrl"`` (this class, the default) or ``"ribs"``
(:class:`pbrl.qd.ribs_archive.RibsGridArchive`, pyribs' ``GridArchive`` behind the same
interface; ``pip install 'pbrl[qd]'``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class GridArchive:
    """Elites on a regular grid over the measure space.

    Args:
        dims: cells per measure dimension, e.g. ``(50, 50)``.
        lower, upper: ``(m,)`` bounds of the measures.
        solution_dim: size of a solution vector.
        extra_dim: size of an optional per-elite vector kept beside the solution (e.g. the
            true measure and the features, so that rebuilding and scoring the archive needs
            no re-evaluation).
    """

    def __init__(
        self,
        dims: Sequence[int],
        lower: Sequence[float] | np.ndarray,
        upper: Sequence[float] | np.ndarray,
        solution_dim: int,
        extra_dim: int = 0,
    ):
        self._set_grid(dims, lower, upper)
        self.solution_dim = int(solution_dim)
        self.extra_dim = int(extra_dim)
        store = self._empty_store()
        self.occupied, self.objective = store["occupied"], store["objective"]
        self.solutions, self.measures = store["solutions"], store["measures"]
        self.extras = store["extras"]

    def _empty_store(self) -> dict[str, np.ndarray]:
        """The per-cell arrays of an empty archive (every backend's dense layout)."""
        return {
            "occupied": np.zeros(self.cells, bool),
            "objective": np.full(self.cells, -np.inf),
            "solutions": np.zeros((self.cells, self.solution_dim)),
            "measures": np.zeros((self.cells, len(self.dims))),
            "extras": np.zeros((self.cells, self.extra_dim)),
        }

    def _set_grid(
        self,
        dims: Sequence[int],
        lower: Sequence[float] | np.ndarray,
        upper: Sequence[float] | np.ndarray,
    ) -> None:
        """Check and set ``dims``, ``lower``, ``upper`` and ``cells`` (every backend's grid)."""
        self.dims = tuple(int(d) for d in dims)
        self.lower = np.asarray(lower, np.float64).reshape(-1)
        self.upper = np.asarray(upper, np.float64).reshape(-1)
        if len(self.lower) != len(self.dims) or len(self.upper) != len(self.dims):
            raise ValueError(
                f"need one bound per measure dimension ({len(self.dims)}), got "
                f"{len(self.lower)} and {len(self.upper)}"
            )
        if not np.all(self.upper > self.lower):
            raise ValueError(f"upper bounds must exceed lower ones, got {self.lower}, {self.upper}")
        self.cells = int(np.prod(self.dims))

    def __len__(self) -> int:
        return int(self.occupied.sum())

    def index_of(self, measures: np.ndarray) -> np.ndarray:
        """``(N,)`` flat cell index of each ``(N, m)`` measure (clipped into the grid)."""
        measures = np.asarray(measures, np.float64).reshape(-1, len(self.dims))
        dims = np.asarray(self.dims)
        # dims * (m - lower) / (upper - lower): pyribs' order of operations (same cells)
        grid = np.floor(dims * (measures - self.lower) / (self.upper - self.lower))
        grid = np.clip(grid.astype(np.int64), 0, dims - 1)
        return np.ravel_multi_index(grid.T, self.dims)

    def add(
        self,
        solutions: np.ndarray,
        objectives: np.ndarray,
        measures: np.ndarray,
        extras: np.ndarray | None = None,
    ) -> np.ndarray:
        """Insert a batch; returns ``(N,)`` status: 0 rejected, 1 improved a cell, 2 new cell.

        ``extras`` (``(N, extra_dim)``) is required when the archive has ``extra_dim > 0``.
        """
        solutions = np.asarray(solutions, np.float64).reshape(-1, self.solution_dim)
        objectives = np.asarray(objectives, np.float64).reshape(-1)
        measures = np.asarray(measures, np.float64).reshape(len(objectives), -1)
        if self.extra_dim:
            if extras is None:
                raise ValueError(f"this archive keeps extras: pass extras=(N, {self.extra_dim})")
            extras = np.asarray(extras, np.float64).reshape(len(objectives), self.extra_dim)
        idx = self.index_of(measures)
        status = np.zeros(len(idx), np.int64)
        if len(idx) == 0:
            return status
        # best candidate per cell within the batch: sort by cell, then objective descending
        order = np.lexsort((-objectives, idx))
        first = np.ones(len(order), bool)
        first[1:] = idx[order][1:] != idx[order][:-1]
        cand = order[first]
        cells = idx[cand]
        better = objectives[cand] > self.objective[cells]
        cand, cells = cand[better], cells[better]
        status[cand] = np.where(self.occupied[cells], 1, 2)
        self.occupied[cells] = True
        self.objective[cells] = objectives[cand]
        self.solutions[cells] = solutions[cand]
        self.measures[cells] = measures[cand]
        if self.extra_dim:
            assert extras is not None
            self.extras[cells] = extras[cand]
        return status

    def elites(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(solutions, objectives, measures)`` of the occupied cells."""
        occ = self.occupied
        return self.solutions[occ], self.objective[occ], self.measures[occ]

    def elite_extras(self) -> np.ndarray:
        """``(n_elites, extra_dim)`` extras of the occupied cells (order of :meth:`elites`)."""
        return self.extras[self.occupied]

    def sample_elites(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``(n, solution_dim)`` elites drawn uniformly with replacement."""
        cells = np.flatnonzero(self.occupied)
        if len(cells) == 0:
            raise RuntimeError("cannot sample elites from an empty archive")
        return self.solutions[rng.choice(cells, size=n)]

    def qd_score(self) -> float:
        """Sum of the elites' objectives divided by the number of cells (QDHF's QD score)."""
        return float(self.objective[self.occupied].sum() / self.cells)

    def coverage(self) -> float:
        """Percentage of cells filled."""
        return 100.0 * float(self.occupied.mean())

    def heatmap(self, vmin: float = 0.0, vmax: float = 100.0) -> np.ndarray:
        """``(dims[1], dims[0], 3)`` uint8 image of the elites' objectives (black: empty).

        Rows run over the second measure (top = high), columns over the first.
        """
        if len(self.dims) != 2:
            raise ValueError("heatmap needs a 2-D archive")
        obj = self.objective.reshape(self.dims).T[::-1]  # (dim1, dim0), high measure on top
        occ = self.occupied.reshape(self.dims).T[::-1]
        t = np.clip((obj - vmin) / (vmax - vmin), 0.0, 1.0)
        # a dark-blue -> yellow ramp (viridis-like endpoints)
        lo, hi = np.array([68, 1, 84], np.float64), np.array([253, 231, 37], np.float64)
        img = lo + t[..., None] * (hi - lo)
        img[~occ] = 0.0
        return img.astype(np.uint8)


BACKENDS: tuple[str, ...] = ("pbrl", "ribs")


def make_archive(
    backend: str,
    dims: Sequence[int],
    lower: Sequence[float] | np.ndarray,
    upper: Sequence[float] | np.ndarray,
    solution_dim: int,
    extra_dim: int = 0,
) -> GridArchive:
    """A grid archive of the named backend (``pbrl`` or ``ribs``), same arguments as above."""
    if backend == "pbrl":
        return GridArchive(dims, lower, upper, solution_dim, extra_dim)
    if backend == "ribs":
        from pbrl.qd.ribs_archive import RibsGridArchive

        return RibsGridArchive(dims, lower, upper, solution_dim, extra_dim)
    raise ValueError(f"unknown archive backend {backend!r}; valid: {list(BACKENDS)}")
