"""pyribs' ``GridArchive`` behind :class:`pbrl.qd.archive.GridArchive`'s interface.

Selected with ``archive_backend=ribs`` (``pbrl-qd``) or ``QDConfig(archive_backend="ribs")``;
needs ``pip install 'pbrl[qd]'`` (``ribs>=0.12,<0.13``). Storage and insertion are pyribs'
(``learning_rate=None``, ``threshold_min=-inf``: plain MAP-Elites, the best objective per
cell; a batch's best per cell, first on ties); the per-elite extras live in an extra field.
``epsilon=0`` so that cell indices equal ours: pyribs' default ``epsilon=1e-6`` moves a
measure lying within ``1e-6 x`` cell width below a cell boundary into the next cell.
Out-of-range measures are clipped into the edge cells by both. pyribs rejects non-finite
measures (``ValueError``); ours clips ``+-inf`` into the edge cells. ``add``'s status marks
every solution of a batch that beat its cell's previous elite (pyribs), ours only the one
kept per cell.

The elites are read back ordered by cell index, like ours, so that sampling with the same
generator picks the same elites and both backends give identical runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pbrl.qd.archive import GridArchive


def _import_ribs():  # noqa: ANN202
    try:
        from ribs.archives import GridArchive as RibsArchive
    except ImportError as e:
        raise ImportError(
            "archive_backend=ribs needs pyribs: pip install 'pbrl[qd]' "
            "(or archive_backend=pbrl, the built-in archive)"
        ) from e
    return RibsArchive


class RibsGridArchive(GridArchive):
    """Same constructor and methods as :class:`~pbrl.qd.archive.GridArchive`.

    The dense per-cell arrays (``occupied``, ``objective``, ``solutions``, ``measures``,
    ``extras``) are read-only views rebuilt from pyribs after each insertion.
    """

    def __init__(
        self,
        dims: Sequence[int],
        lower: Sequence[float] | np.ndarray,
        upper: Sequence[float] | np.ndarray,
        solution_dim: int,
        extra_dim: int = 0,
    ):
        ribs_archive = _import_ribs()
        self._set_grid(dims, lower, upper)  # the built-in archive's checks and grid
        self.solution_dim = int(solution_dim)
        self.extra_dim = int(extra_dim)
        extra_fields = {"extras": ((self.extra_dim,), np.float64)} if self.extra_dim else None
        self.ribs = ribs_archive(
            solution_dim=self.solution_dim,
            dims=self.dims,
            ranges=list(zip(self.lower.tolist(), self.upper.tolist(), strict=True)),
            epsilon=0.0,
            dtype=np.float64,
            extra_fields=extra_fields,
        )
        self._cache: dict[str, np.ndarray] | None = None

    # dense per-cell views of pyribs' store (what the built-in archive keeps)
    def _dense(self) -> dict[str, np.ndarray]:
        if self._cache is None:
            fields = ["index", "solution", "objective", "measures"]
            if self.extra_dim:
                fields.append("extras")
            data = self.ribs.data(fields, return_type="dict")
            idx = np.asarray(data["index"], np.int64)
            d = self._empty_store()
            d["occupied"][idx] = True
            d["objective"][idx] = data["objective"]
            d["solutions"][idx] = data["solution"]
            d["measures"][idx] = data["measures"]
            if self.extra_dim:
                d["extras"][idx] = data["extras"]
            self._cache = d
        return self._cache

    @property
    def occupied(self) -> np.ndarray:  # type: ignore[override]
        """``(cells,)`` whether each cell holds an elite."""
        return self._dense()["occupied"]

    @property
    def objective(self) -> np.ndarray:  # type: ignore[override]
        """``(cells,)`` elite objectives (``-inf``: empty)."""
        return self._dense()["objective"]

    @property
    def solutions(self) -> np.ndarray:  # type: ignore[override]
        """``(cells, solution_dim)`` elite solutions."""
        return self._dense()["solutions"]

    @property
    def measures(self) -> np.ndarray:  # type: ignore[override]
        """``(cells, m)`` elite measures."""
        return self._dense()["measures"]

    @property
    def extras(self) -> np.ndarray:  # type: ignore[override]
        """``(cells, extra_dim)`` elite extras."""
        return self._dense()["extras"]

    def __len__(self) -> int:
        return len(self.ribs)

    def index_of(self, measures: np.ndarray) -> np.ndarray:
        """``(N,)`` flat cell index of each ``(N, m)`` measure (pyribs' ``index_of``)."""
        measures = np.asarray(measures, np.float64).reshape(-1, len(self.dims))
        return np.asarray(self.ribs.index_of(measures), np.int64)

    def add(
        self,
        solutions: np.ndarray,
        objectives: np.ndarray,
        measures: np.ndarray,
        extras: np.ndarray | None = None,
    ) -> np.ndarray:
        """Insert a batch into pyribs; returns pyribs' ``(N,)`` status.

        0: not better than its cell's elite before the batch, 1: better than it, 2: its cell
        was empty. Unlike the built-in archive's, it is nonzero for every such solution, not
        only the one kept per cell (the archive contents are the same).
        """
        solutions = np.asarray(solutions, np.float64).reshape(-1, self.solution_dim)
        objectives = np.asarray(objectives, np.float64).reshape(-1)
        measures = np.asarray(measures, np.float64).reshape(len(objectives), -1)
        if len(objectives) == 0:
            return np.zeros(0, np.int64)
        fields = {}
        if self.extra_dim:
            if extras is None:
                raise ValueError(f"this archive keeps extras: pass extras=(N, {self.extra_dim})")
            fields["extras"] = np.asarray(extras, np.float64).reshape(
                len(objectives), self.extra_dim
            )
        info = self.ribs.add(solutions, objectives, measures, **fields)
        self._cache = None
        return np.asarray(info["status"], np.int64)
