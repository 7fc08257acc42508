"""The QDHF loop: MAP-Elites on descriptors learned from similarity judgements.

Progressive QDHF (Ding et al., ICML 2024; official ``arm/main.py``), for ``n`` iterations:

1. iteration 1: an initial population (arm: 100 uniform); ``N/4`` triplets of fresh random
   solutions are judged by the teacher; fit the projection; build the archive with bounds
   from the min/max of the projected current solutions; insert them;
2. every iteration: ask a batch (Gaussian emitter: random elites plus ``N(0, sigma^2)``),
   evaluate the objective and the learned descriptor, insert; every solution also enters a
   ground-truth "all solutions" archive over the true measure;
3. at iterations ``1 + 0.1n, 1 + 0.25n, 1 + 0.5n`` (official: 101, 251, 501): ``N/4`` new
   triplets of current elites, judged and appended; the projection is refitted from scratch
   on all judgements; the archive is rebuilt from the current elites with the new
   descriptors and bounds (elites that now share a cell keep only the best).

Methods (``method=``): ``qdhf`` (progressive, above), ``qdhf_base`` (one fit with all ``N``
judgements of random solutions at iteration 1), ``gt`` (MAP-Elites on the true measure),
``aurora_pca`` (PCA of the features refitted on the same schedule, AURORA-"Inc") and
``aurora_pca_pre`` (PCA fitted once on the initial population).

Metrics (ground truth, 50 x 50 grid over the true measure's bounds; objective on 0..100):
QD score = sum of the elites' objectives / #cells, coverage = % cells filled; "archive" maps
the final archive's solutions into a fresh ground-truth archive, "all" holds every solution
ever evaluated. Both are reported (rebuilding drops colliding elites, so "archive" is lower).

Judgements go through the :class:`~pbrl.teachers.base.Teacher` protocol: each triplet of
solutions becomes a ``kind="triplet"`` query whose segments hold the features as ``obs``,
the solution as ``actions`` and the true measure as reward factors ``measure_0..``, which
only the teacher reads, so a person (web session) or any teacher can stand in.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pbrl.data import Label, QueryBatch, SegmentBatch
from pbrl.qd.archive import GridArchive
from pbrl.qd.arm import ArmDomain
from pbrl.qd.projection import fit_pca, fit_projection
from pbrl.teachers.base import Teacher
from pbrl.teachers.similarity import SimilarityTeacher

METHODS: tuple[str, ...] = ("qdhf", "qdhf_base", "gt", "aurora_pca", "aurora_pca_pre")


@dataclass
class QDConfig:
    """Settings of one QD run (defaults: the official arm experiment)."""

    method: str = "qdhf"
    iterations: int = 1000
    batch_size: int = 100
    init_pop: int = 100
    sigma: float = 0.1
    grid: tuple[int, int] = (50, 50)
    n_pref: int = 1000  # total judgements (qdhf: n_pref / 4 per update)
    update_fractions: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5)
    latent_dim: int = 2
    log_every: int = 20
    seed: int = 0
    fit: dict[str, Any] = field(default_factory=dict)  # fit_projection overrides

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown QD method {self.method!r}; valid: {list(METHODS)}")
        self.grid = tuple(int(g) for g in self.grid)  # type: ignore[assignment]

    def update_iterations(self) -> list[int]:
        """Iterations (1-based) at which the descriptor is (re)fitted."""
        if self.method in ("qdhf_base", "aurora_pca_pre", "gt"):
            return [1]
        return sorted({1 + int(round(f * self.iterations)) for f in self.update_fractions})


def triplet_query(domain: ArmDomain, thetas: np.ndarray) -> QueryBatch:
    """A ``kind="triplet"`` query batch from ``(M, 3, dof)`` solutions (ref, x_1, x_2)."""
    members = []
    for j in range(3):
        th = thetas[:, j]
        g = domain.measures(th)
        members.append(
            SegmentBatch(
                obs=domain.features(th)[:, None].astype(np.float32),
                actions=th[:, None].astype(np.float32),
                true_reward=domain.objective(th)[:, None].astype(np.float32),
                reward_factors={f"measure_{k}": g[:, k : k + 1] for k in range(g.shape[1])},
                env_name="qd_arm",
            )
        )
    return QueryBatch.from_members(members, kind="triplet")


def default_teacher(seed: int = 0, **kwargs: Any) -> SimilarityTeacher:
    """The simulated judge of the paper: end-effector distances, noiseless by default."""
    return SimilarityTeacher(factor_names=("measure_0", "measure_1"), seed=seed, **kwargs)


class QDHFRun:
    """One QD run on the arm; :meth:`run` returns the final metrics.

    Args:
        cfg: settings.
        domain: the task (default: the 10-DoF arm).
        teacher: answers triplet queries (default: :func:`default_teacher`).
        log: optional ``log(tag, value, iteration)`` sink (TensorBoard scalars).
        log_image: optional ``log_image(tag, image (H, W, 3) uint8, iteration)`` sink.
    """

    def __init__(
        self,
        cfg: QDConfig,
        domain: ArmDomain | None = None,
        teacher: Teacher | None = None,
        log: Callable[[str, float, int], None] | None = None,
        log_image: Callable[[str, np.ndarray, int], None] | None = None,
    ):
        self.cfg = cfg
        self.domain = domain or ArmDomain()
        self.teacher = teacher or default_teacher(seed=cfg.seed + 1)
        self.rng = np.random.default_rng(cfg.seed)
        self.log = log or (lambda tag, value, it: None)
        self.log_image = log_image
        d = self.domain
        self.gt_all = GridArchive(cfg.grid, d.gt_lower, d.gt_upper, d.dof)
        self.archive: GridArchive | None = None
        self.describe: Callable[[np.ndarray], np.ndarray] = d.measures
        self.judged_feats = np.zeros((0, 3, d.feature_dim), np.float32)
        self.judged_y = np.zeros(0, np.float32)
        self.fit_acc: list[float] = []
        self.judgements = 0
        self.history: list[dict[str, float]] = []

    # --- descriptors ---------------------------------------------------------------
    def _judge(self, thetas: np.ndarray) -> None:
        """Ask the teacher about ``(M, 3, dof)`` triplets; append answered ones."""
        queries = triplet_query(self.domain, thetas)
        feedback = self.teacher.label(queries)
        pos = {qid: i for i, qid in enumerate(queries.ids)}
        keep, y = [], []
        for fb in feedback:
            if fb.label in (Label.FIRST, Label.SECOND) and fb.query_id in pos:
                keep.append(pos[fb.query_id])
                y.append(1.0 if fb.label == Label.SECOND else -1.0)
        self.judgements += len(queries)
        feats = self.domain.features(thetas.reshape(-1, self.domain.dof))
        feats = feats.reshape(len(thetas), 3, -1).astype(np.float32)
        self.judged_feats = np.concatenate([self.judged_feats, feats[keep]])
        self.judged_y = np.concatenate([self.judged_y, np.asarray(y, np.float32)])

    def _distinct_triplets(self, pool: np.ndarray, m: int) -> np.ndarray:
        """``(m, 3, dof)`` triplets of distinct members of ``pool`` (official: with repeats)."""
        n = len(pool)
        if n < 3:
            idx = self.rng.integers(0, n, size=(m, 3))
        else:
            idx = np.argsort(self.rng.random((m, n)), axis=1)[:, :3]
        return pool[idx]

    def _refit(self, it: int, current: np.ndarray) -> None:
        """Gather judgements (QDHF) or refit PCA, then set ``self.describe``."""
        cfg, d = self.cfg, self.domain
        if cfg.method == "gt":
            self.describe = d.measures
            return
        if cfg.method.startswith("aurora"):
            mean, comps = fit_pca(d.features(current), cfg.latent_dim)
            self.describe = lambda th: (d.features(th) - mean) @ comps
            return
        n_new = cfg.n_pref if cfg.method == "qdhf_base" else cfg.n_pref // 4
        if it == 1:  # fresh random solutions (official)
            pool = d.sample(3 * n_new, self.rng).reshape(n_new, 3, d.dof)
        else:
            pool = self._distinct_triplets(current, n_new)
        self._judge(pool)
        res = fit_projection(
            self.judged_feats,
            self.judged_y,
            latent_dim=cfg.latent_dim,
            seed=cfg.seed + it,
            **cfg.fit,
        )
        self.fit_acc.append(res.accuracy)
        self.log("qd/refit_val_acc", res.accuracy, it)
        self.log("qd/refit_judgements", float(self.judgements), it)
        model = res.model
        self.describe = lambda th: model.project(d.features(th))

    def _rebuild(self, solutions: np.ndarray) -> None:
        """New archive over the current descriptor, bounds from ``solutions``' descriptors."""
        cfg, d = self.cfg, self.domain
        z = self.describe(solutions)
        if cfg.method == "gt":
            lower, upper = d.gt_lower, d.gt_upper
        else:
            lower, upper = z.min(axis=0), z.max(axis=0)
            span = np.maximum(upper - lower, 1e-9)
            upper = lower + span  # degenerate (all equal) descriptors still form a grid
        self.archive = GridArchive(cfg.grid, lower, upper, d.dof)
        self.archive.add(solutions, d.objective(solutions), z)

    # --- metrics ---------------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        """QD score and coverage on the ground-truth grid, archive and all solutions."""
        assert self.archive is not None
        d = self.domain
        gt = GridArchive(self.cfg.grid, d.gt_lower, d.gt_upper, d.dof)
        sols, _, _ = self.archive.elites()
        gt.add(sols, d.objective(sols), d.measures(sols))
        return {
            "qd_score_archive": gt.qd_score(),
            "coverage_archive": gt.coverage(),
            "qd_score_all": self.gt_all.qd_score(),
            "coverage_all": self.gt_all.coverage(),
            "archive_size": float(len(self.archive)),
            "projection_val_acc": self.fit_acc[-1] if self.fit_acc else math.nan,
            "judgements": float(self.judgements),
        }

    # --- the loop --------------------------------------------------------------------
    def run(self) -> dict[str, float]:
        """All iterations; returns the final metrics (plus wall time)."""
        cfg, d = self.cfg, self.domain
        updates = set(cfg.update_iterations())
        t0 = time.perf_counter()
        for it in range(1, cfg.iterations + 1):
            if it in updates:
                if self.archive is None:
                    current = d.sample(cfg.init_pop, self.rng)
                else:
                    current = self.archive.elites()[0]
                self._refit(it, current)
                self._rebuild(current)
                if it == 1:
                    self.gt_all.add(current, d.objective(current), d.measures(current))
            assert self.archive is not None
            parents = self.archive.sample_elites(cfg.batch_size, self.rng)
            sols = parents + cfg.sigma * self.rng.standard_normal(parents.shape)
            obj = d.objective(sols)
            self.archive.add(sols, obj, self.describe(sols))
            self.gt_all.add(sols, obj, d.measures(sols))
            if it % cfg.log_every == 0 or it == cfg.iterations:
                m = self.metrics()
                m["iteration"] = float(it)
                self.history.append(m)
                for k, v in m.items():
                    if k != "iteration":
                        self.log(f"qd/{k}", v, it)
        final = self.metrics()
        final["seconds"] = time.perf_counter() - t0
        if self.log_image is not None:
            self.log_image("qd/archive_all_gt", self.gt_all.heatmap(), cfg.iterations)
            gt = GridArchive(cfg.grid, d.gt_lower, d.gt_upper, d.dof)
            assert self.archive is not None
            sols = self.archive.elites()[0]
            gt.add(sols, d.objective(sols), d.measures(sols))
            self.log_image("qd/archive_final_gt", gt.heatmap(), cfg.iterations)
            self.log_image("qd/archive_learned", self.archive.heatmap(), cfg.iterations)
        return final
