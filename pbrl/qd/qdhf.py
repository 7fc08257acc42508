"""The QDHF loop: MAP-Elites on descriptors learned from similarity judgements.

Progressive QDHF (Ding et al., ICML 2024; official ``arm/main.py`` and ``maze/main.py``), for
``n`` iterations:

1. iteration 1: an initial population (arm: 100 uniform; maze: 200 fresh policies); ``N/4``
   triplets of fresh random
   solutions are judged by the teacher; fit the projection; build the archive with bounds
   from the min/max of the projected current solutions; insert them;
2. every iteration: ask a batch (iso-line emitter: random elites ``x1`` plus
   ``N(0, sigma^2)`` plus ``line_sigma N(0, 1) (x2 - x1)``; arm: sigma 0.1, maze: 0.2, both
   line_sigma 0, i.e. Gaussian), evaluate the objective and the learned descriptor, insert;
   every solution also enters a ground-truth "all solutions" archive over the true measure;
3. at iterations ``1 + 0.1n, 1 + 0.25n, 1 + 0.5n`` (official: 101, 251, 501): ``N/4`` new
   triplets of current elites, judged and appended; the projection is refitted from scratch
   on all judgements; the archive is rebuilt from the current elites with the new
   descriptors and bounds (elites that now share a cell keep only the best).

Methods (``method=``): ``qdhf`` (progressive, above), ``qdhf_base`` (one fit with all ``N``
judgements of random solutions at iteration 1), ``gt`` (MAP-Elites on the true measure),
``aurora_pca`` / ``aurora_ae`` (PCA or the 64-32-2-32-64 autoencoder of the features,
refitted on the same schedule, AURORA-"Inc") and ``aurora_pca_pre`` / ``aurora_ae_pre``
(fitted once on the initial population, AURORA-"Pre").

Domains (:class:`~pbrl.qd.arm.ArmDomain`, :class:`~pbrl.qd.maze.MazeDomain`) give
``evaluate(solutions) -> (objective, true measure, features)``; the archives keep each
elite's true measure and features beside it, so refits and metrics need no re-evaluation.

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
from pbrl.qd.archive import BACKENDS, GridArchive, make_archive
from pbrl.qd.arm import ArmDomain
from pbrl.qd.maze import MazeDomain
from pbrl.qd.projection import fit_autoencoder, fit_pca, fit_projection
from pbrl.teachers.base import Teacher
from pbrl.teachers.similarity import SimilarityTeacher

METHODS: tuple[str, ...] = (
    "qdhf",
    "qdhf_base",
    "gt",
    "aurora_pca",
    "aurora_pca_pre",
    "aurora_ae",
    "aurora_ae_pre",
)
ONE_FIT = ("qdhf_base", "aurora_pca_pre", "aurora_ae_pre", "gt")
Domain = ArmDomain | MazeDomain


@dataclass
class QDConfig:
    """Settings of one QD run (defaults: the official arm experiment)."""

    method: str = "qdhf"
    iterations: int = 1000
    batch_size: int = 100
    init_pop: int = 100
    sigma: float = 0.1  # iso-line emitter: Gaussian step
    line_sigma: float = 0.0  # iso-line emitter: step along (x2 - x1) (QDHF: 0)
    grid: tuple[int, int] = (50, 50)
    n_pref: int = 1000  # total judgements (qdhf: n_pref / 4 per update)
    update_fractions: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5)
    latent_dim: int = 2
    log_every: int = 20
    seed: int = 0
    fit: dict[str, Any] = field(default_factory=dict)  # fit_projection overrides
    ae_fit: dict[str, Any] = field(default_factory=dict)  # fit_autoencoder overrides
    archive_backend: str = "pbrl"  # pbrl (built-in) | ribs (pyribs' GridArchive; pbrl[qd])

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown QD method {self.method!r}; valid: {list(METHODS)}")
        if self.archive_backend not in BACKENDS:
            raise ValueError(
                f"unknown archive_backend {self.archive_backend!r}; valid: {list(BACKENDS)}"
            )
        self.grid = tuple(int(g) for g in self.grid)  # type: ignore[assignment]

    def update_iterations(self) -> list[int]:
        """Iterations (1-based) at which the descriptor is (re)fitted."""
        if self.method in ONE_FIT:
            return [1]
        return sorted({1 + int(round(f * self.iterations)) for f in self.update_fractions})


def triplet_query(
    domain: Domain,
    thetas: np.ndarray,
    evaluated: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> QueryBatch:
    """A ``kind="triplet"`` query batch from ``(M, 3, dof)`` solutions (ref, x_1, x_2).

    Each segment also stores what the labelling page draws as a one-step ``sim_state`` of the
    domain's env (:mod:`pbrl.envs.qd`): the joint angles for the arm (``qd_arm``), the
    recorded trajectory (the features) for the maze (``qd_maze``).

    ``evaluated``: ``domain.evaluate`` of the ``3 M`` flattened solutions when already known
    (objective ``(3M,)``, measures ``(3M, m)``, features ``(3M, D)``).
    """
    m = len(thetas)
    flat = thetas.reshape(3 * m, -1)
    obj, meas, feats = domain.evaluate(flat) if evaluated is None else evaluated
    obj, meas, feats = obj.reshape(m, 3), meas.reshape(m, 3, -1), feats.reshape(m, 3, -1)
    name = getattr(domain, "name", "arm")
    # what the qd_<name> env draws on the labelling page: arm postures, maze trajectories
    drawn = {"arm": thetas, "maze": feats}.get(name)
    members = []
    for j in range(3):
        g = meas[:, j]
        members.append(
            SegmentBatch(
                obs=feats[:, j][:, None].astype(np.float32),
                actions=thetas[:, j][:, None].astype(np.float32),
                true_reward=obj[:, j][:, None].astype(np.float32),
                reward_factors={f"measure_{k}": g[:, k : k + 1] for k in range(g.shape[1])},
                sim_state=None if drawn is None else drawn[:, j][:, None].astype(np.float64),
                env_name=f"qd_{name}",
            )
        )
    return QueryBatch.from_members(members, kind="triplet")


def default_teacher(seed: int = 0, **kwargs: Any) -> SimilarityTeacher:
    """The simulated judge of the paper: end-effector distances, noiseless by default."""
    return SimilarityTeacher(factor_names=("measure_0", "measure_1"), seed=seed, **kwargs)


class QDHFRun:
    """One QD run; :meth:`run` returns the final metrics.

    Args:
        cfg: settings.
        domain: the task (default: the 10-DoF arm; :class:`~pbrl.qd.maze.MazeDomain`).
        teacher: answers triplet queries (default: :func:`default_teacher`).
        log: optional ``log(tag, value, iteration)`` sink (TensorBoard scalars).
        log_image: optional ``log_image(tag, image (H, W, 3) uint8, iteration)`` sink.
    """

    def __init__(
        self,
        cfg: QDConfig,
        domain: Domain | None = None,
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
        self.n_meas = len(d.gt_lower)
        # extras kept per elite: the true measure, then the features
        self.extra_dim = self.n_meas + d.feature_dim
        self.gt_all = self._archive(d.gt_lower, d.gt_upper, d.solution_dim)
        self.archive: GridArchive | None = None
        # descriptor from (features, true measure); the true measure only for method=gt
        self.describe: Callable[[np.ndarray, np.ndarray], np.ndarray] = lambda f, g: g
        self.judged_feats = np.zeros((0, 3, d.feature_dim), np.float32)
        self.judged_y = np.zeros(0, np.float32)
        self.fit_acc: list[float] = []
        self.ae_val_loss: list[float] = []
        self.judgements = 0
        self.evaluations = 0
        self.history: list[dict[str, float]] = []

    def _archive(
        self, lower: np.ndarray, upper: np.ndarray, solution_dim: int, extra_dim: int = 0
    ) -> GridArchive:
        """An empty archive of the configured backend over ``cfg.grid``."""
        return make_archive(
            self.cfg.archive_backend, self.cfg.grid, lower, upper, solution_dim, extra_dim
        )

    def _evaluate(self, sols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self.evaluations += len(sols)
        return self.domain.evaluate(sols)

    # --- descriptors ---------------------------------------------------------------
    def _judge(
        self, thetas: np.ndarray, evaluated: tuple[np.ndarray, np.ndarray, np.ndarray]
    ) -> None:
        """Ask the teacher about ``(M, 3, dof)`` triplets; append answered ones."""
        queries = triplet_query(self.domain, thetas, evaluated)
        feedback = self.teacher.label(queries)
        pos = {qid: i for i, qid in enumerate(queries.ids)}
        keep, y = [], []
        for fb in feedback:
            if fb.label in (Label.FIRST, Label.SECOND) and fb.query_id in pos:
                keep.append(pos[fb.query_id])
                y.append(1.0 if fb.label == Label.SECOND else -1.0)
        self.judgements += len(queries)
        feats = evaluated[2].reshape(len(thetas), 3, -1).astype(np.float32)
        self.judged_feats = np.concatenate([self.judged_feats, feats[keep]])
        self.judged_y = np.concatenate([self.judged_y, np.asarray(y, np.float32)])
        if not len(self.judged_y):
            raise RuntimeError(
                f"none of the {len(queries)} similarity triplets got a usable answer (each was "
                "skipped, judged equal or left unanswered), so no descriptor can be fitted"
            )

    def _distinct_triplets(self, n: int, m: int) -> np.ndarray:
        """``(m, 3)`` indices of distinct members of a pool of ``n`` (official: with repeats)."""
        if n < 3:
            return self.rng.integers(0, n, size=(m, 3))
        return np.argsort(self.rng.random((m, n)), axis=1)[:, :3]

    def _refit(self, it: int, current: tuple[np.ndarray, ...]) -> None:
        """Gather judgements (QDHF) or refit PCA / the autoencoder, then set ``describe``."""
        cfg, d = self.cfg, self.domain
        sols, _, meas, feats = current
        if cfg.method == "gt":
            self.describe = lambda f, g: g
            return
        if cfg.method.startswith("aurora_pca"):
            mean, comps = fit_pca(feats, cfg.latent_dim)
            self.describe = lambda f, g: (f - mean) @ comps
            return
        if cfg.method.startswith("aurora_ae"):
            res_ae = fit_autoencoder(feats, cfg.latent_dim, seed=cfg.seed + it, **cfg.ae_fit)
            self.ae_val_loss.append(res_ae.val_loss[-1])
            self.log("qd/ae_val_loss", res_ae.val_loss[-1], it)
            self.log("qd/ae_epochs", float(res_ae.epochs), it)
            ae = res_ae.model
            self.describe = lambda f, g: ae.project(f)
            return
        n_new = cfg.n_pref if cfg.method == "qdhf_base" else cfg.n_pref // 4
        if it == 1:  # fresh random solutions (official)
            pool = d.sample(3 * n_new, self.rng)
            evaluated = self._evaluate(pool)
            pool = pool.reshape(n_new, 3, -1)
        else:  # current elites, already evaluated
            idx = self._distinct_triplets(len(sols), n_new).reshape(-1)
            pool = sols[idx].reshape(n_new, 3, -1)
            evaluated = (current[1][idx], meas[idx], feats[idx])
        self._judge(pool, evaluated)
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
        self.describe = lambda f, g: model.project(f)

    def _rebuild(self, current: tuple[np.ndarray, ...]) -> None:
        """New archive over the current descriptor, bounds from ``current``'s descriptors."""
        cfg, d = self.cfg, self.domain
        sols, obj, meas, feats = current
        z = self.describe(feats, meas)
        if cfg.method == "gt":
            lower, upper = d.gt_lower, d.gt_upper
        else:
            lower, upper = z.min(axis=0), z.max(axis=0)
            span = np.maximum(upper - lower, 1e-9)
            upper = lower + span  # degenerate (all equal) descriptors still form a grid
        self.archive = self._archive(lower, upper, d.solution_dim, self.extra_dim)
        self.archive.add(sols, obj, z, np.concatenate([meas, feats], axis=1))

    def _current(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The archive's elites: ``(solutions, objectives, true measures, features)``."""
        assert self.archive is not None
        sols, obj, _ = self.archive.elites()
        ex = self.archive.elite_extras()
        return sols, obj, ex[:, : self.n_meas], ex[:, self.n_meas :]

    # --- metrics ---------------------------------------------------------------------
    def _gt_archive(self) -> GridArchive:
        """The final archive's elites on the ground-truth grid."""
        d = self.domain
        gt = self._archive(d.gt_lower, d.gt_upper, d.solution_dim)
        sols, obj, meas, _ = self._current()
        gt.add(sols, obj, meas)
        return gt

    def metrics(self) -> dict[str, float]:
        """QD score and coverage on the ground-truth grid, archive and all solutions."""
        assert self.archive is not None
        gt = self._gt_archive()
        return {
            "qd_score_archive": gt.qd_score(),
            "coverage_archive": gt.coverage(),
            "qd_score_all": self.gt_all.qd_score(),
            "coverage_all": self.gt_all.coverage(),
            "archive_size": float(len(self.archive)),
            "projection_val_acc": self.fit_acc[-1] if self.fit_acc else math.nan,
            "ae_val_loss": self.ae_val_loss[-1] if self.ae_val_loss else math.nan,
            "judgements": float(self.judgements),
            "judgements_answered": float(len(self.judged_y)),
            "evaluations": float(self.evaluations),
        }

    # --- the loop --------------------------------------------------------------------
    def _ask(self) -> np.ndarray:
        """Iso-line variation of random elites (Gaussian when ``line_sigma = 0``)."""
        cfg = self.cfg
        assert self.archive is not None
        x1 = self.archive.sample_elites(cfg.batch_size, self.rng)
        sols = x1 + cfg.sigma * self.rng.standard_normal(x1.shape)
        if cfg.line_sigma > 0:
            x2 = self.archive.sample_elites(cfg.batch_size, self.rng)
            sols += cfg.line_sigma * self.rng.standard_normal((len(x1), 1)) * (x2 - x1)
        return sols

    def run(self) -> dict[str, float]:
        """All iterations; returns the final metrics (plus wall time)."""
        cfg, d = self.cfg, self.domain
        updates = set(cfg.update_iterations())
        t0 = time.perf_counter()
        for it in range(1, cfg.iterations + 1):
            if it in updates:
                if self.archive is None:
                    init = d.sample(cfg.init_pop, self.rng)
                    current = (init, *self._evaluate(init))
                    self.gt_all.add(current[0], current[1], current[2])
                else:
                    current = self._current()
                self._refit(it, current)
                self._rebuild(current)
            assert self.archive is not None
            sols = self._ask()
            obj, meas, feats = self._evaluate(sols)
            self.archive.add(
                sols, obj, self.describe(feats, meas), np.concatenate([meas, feats], axis=1)
            )
            self.gt_all.add(sols, obj, meas)
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
            self.log_image("qd/archive_final_gt", self._gt_archive().heatmap(), cfg.iterations)
            assert self.archive is not None
            self.log_image("qd/archive_learned", self.archive.heatmap(), cfg.iterations)
        return final
