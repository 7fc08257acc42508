"""PGMORL (Xu et al., ICML 2020): prediction-guided evolutionary MORL, as a baseline.

A simplified but faithful version of morl-baselines' ``multi_policy/pgmorl/pgmorl.py`` on the
same :class:`~pbrl.morl.ppo.MOPPO`, jobs and shared evaluator as C-MORL:

1. **Warm-up**: ``pop_size`` policies on a simplex grid of weights (step ``delta_weight``),
   each evaluated, trained ``warmup_iterations`` PPO iterations, and evaluated again.
2. **Evolution**, until the step budget is spent:
   a. *Prediction*: for every policy ``pi`` of the population and every candidate weight ``w``
      (a simplex grid of step ``delta_weight / 2``), predict its return after training with
      ``w``: ``F(pi) + dF(w)`` where each objective's improvement follows PGMORL's hyperbolic
      model ``dF_j(w) = A (e^{a(w_j - b)} - 1) / (e^{a(w_j - b)} + 1) + c``, fitted by weighted
      least squares to the recorded ``(w, F_before, F_after)`` samples of the policies nearest
      to ``pi`` in objective space (weights decay with that distance).
   b. *Task selection*: greedily pick ``pop_size`` (policy, weight) tasks, each maximising
      ``HV + sparsity_coef x sparsity`` of the current front plus the predicted points so far.
   c. Train every task ``evolutionary_iterations`` iterations from its policy's checkpoint,
      evaluate, record the samples, archive.
   d. *Population*: PGMORL's performance buffer: objective space split into sectors around
      ``origin`` (2 objectives: ``num_performance_buffer`` angular sectors; more: cells of the
      L1-normalised direction on a grid), keeping the ``performance_buffer_size`` policies of
      largest distance from ``origin`` per sector.

Departures (docs/cmorl.md): no per-task PPO-optimiser state carried across stages (a fresh Adam
per task), and sectors for 3+ objectives on a direction grid instead of equal solid angles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from pbrl.morl.cmorl import (
    Archive,
    CMORLConfig,
    FrontPolicy,
    Job,
    JobResult,
    Logger,
    RoundLoop,
    RoundPlan,
)
from pbrl.morl.metrics import EvalProtocol, hypervolume, non_dominated, simplex_grid
from pbrl.morl.metrics import sparsity as sparsity_of
from pbrl.morl.ppo import MOPPOConfig


@dataclass
class PGMORLConfig:
    """PGMORL settings (morl-baselines defaults; steps count every parallel env)."""

    env: str = "mo-hopper-2d"
    env_max_steps: int | None = None
    objectives: tuple[str, ...] | None = None
    total_steps: int = 6_000_000
    warmup_iterations: int = 80
    evolutionary_iterations: int = 20
    delta_weight: float = 0.2
    num_weight_candidates: int | None = None  # None: the grid of step delta_weight / 2
    sparsity_coef: float = -1.0
    num_performance_buffer: int = 100
    performance_buffer_size: int = 2
    origin: tuple[float, ...] | None = None  # None: the protocol's reference point
    workers: int = 1
    parallel: str = "process"  # process | ray (pbrl.morl.cmorl.run_jobs)
    ray_address: str | None = None
    seed: int = 0
    ppo: MOPPOConfig = field(default_factory=MOPPOConfig)
    protocol: EvalProtocol = field(default_factory=EvalProtocol)

    def job_config(self) -> CMORLConfig:
        """The job settings shared with C-MORL (env, PPO, evaluator)."""
        return CMORLConfig(
            env=self.env, env_max_steps=self.env_max_steps, objectives=self.objectives,
            total_steps=self.total_steps, init_steps=0, workers=self.workers,
            parallel=self.parallel, ray_address=self.ray_address, seed=self.seed, ppo=self.ppo,
            protocol=self.protocol,
        )  # fmt: skip


def hyperbolic(w: np.ndarray, a_big: float, a: float, b: float, c: float) -> np.ndarray:
    """PGMORL's improvement model ``A (e^{a(w-b)} - 1) / (e^{a(w-b)} + 1) + c``."""
    return a_big * np.tanh(a * (np.asarray(w) - b) / 2.0) + c


@dataclass
class Sample:
    """One observed training outcome: weight, return before, return after."""

    weight: np.ndarray
    before: np.ndarray
    after: np.ndarray


def fit_improvement(samples: Sequence[Sample], anchor: np.ndarray, j: int) -> np.ndarray:
    """Parameters ``(A, a, b, c)`` of objective ``j``'s model near ``anchor`` (F of a policy).

    Samples are weighted by ``exp(-d^2 / (2 s^2))`` of their before-return's distance ``d`` to
    ``anchor`` (``s``: the median distance), as PGMORL favours a policy's neighbourhood.
    """
    x = np.array([s.weight[j] for s in samples])
    y = np.array([s.after[j] - s.before[j] for s in samples])
    d = np.array([np.linalg.norm(s.before - anchor) for s in samples])
    scale = max(float(np.median(d)), 1e-6)
    sw = np.sqrt(np.exp(-0.5 * (d / scale) ** 2) + 1e-6)
    y_scale = max(float(np.abs(y).max()), 1e-6)

    def resid(p: np.ndarray) -> np.ndarray:
        return sw * (hyperbolic(x, *p) - y / y_scale)

    lo, hi = [0.0, 0.1, -5.0, -5.0], [5.0, 50.0, 5.0, 5.0]
    sol = least_squares(resid, x0=[1.0, 1.0, 0.5, 0.0], bounds=(lo, hi))
    p = sol.x.copy()
    p[0] *= y_scale
    p[3] *= y_scale
    return p


class PGMORL(RoundLoop):
    """The PGMORL loop on the shared jobs, archive, evaluator and checkpoints (module docstring).

    Round 0 is the warm-up, round ``k >= 1`` evolution stage ``k - 1``; the checkpoint adds
    the prediction samples, the population and the task-selection generator to
    :class:`~pbrl.morl.cmorl.RoundLoop`'s.
    """

    def __init__(self, cfg: PGMORLConfig, out_dir: str | Path, log: Logger | None = None):
        super().__init__(out_dir, log)
        self.cfg = cfg
        self.job_cfg = cfg.job_config()
        self.archive = Archive(cfg.protocol.ref_point, buffer_size=10**9)
        self.samples: list[Sample] = []
        self.origin = np.asarray(
            cfg.origin if cfg.origin is not None else cfg.protocol.ref_point, np.float64
        )
        self.population: list[FrontPolicy] = []
        self.rng = np.random.default_rng(cfg.seed)

    # --- bookkeeping --------------------------------------------------------------------
    def _record(self, stage: str, results: Sequence[JobResult], jobs: Sequence[Job]) -> None:
        for job, r in zip(jobs, results, strict=True):
            added = self.archive.add(r.policies)
            self.env_steps += r.env_steps
            self.eval_steps += r.eval_steps
            before = r.start_return if job.parent is None else job.parent.returns
            if before is not None and added:
                self.samples.append(
                    Sample(
                        np.asarray(job.weight), np.asarray(before), np.asarray(added[-1].returns)
                    )
                )
        self.population = self.performance_buffer()
        self._score(stage)

    def extra_state(self) -> dict[str, Any]:
        """Samples, population (ids) and the task-selection generator."""
        return {
            "samples": [(s.weight, s.before, s.after) for s in self.samples],
            "population": [p.id for p in self.population],
            "rng": self.rng.bit_generator.state,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`extra_state` (after the archive is loaded)."""
        self.samples = [Sample(*s) for s in state["samples"]]
        self.population = [self.archive.policies[i] for i in state["population"]]
        self.rng.bit_generator.state = state["rng"]

    def performance_buffer(self) -> list[FrontPolicy]:
        """PGMORL's population: the farthest policies from ``origin`` per sector."""
        cfg = self.cfg
        sectors: dict[Any, list[tuple[float, FrontPolicy]]] = {}
        for p in self.archive.policies:
            v = np.asarray(p.returns) - self.origin
            if (v < 0).any():
                continue
            if v.shape[0] == 2:
                angle = math.atan2(v[1], v[0])
                key: Any = min(
                    int(angle / (math.pi / 2) * cfg.num_performance_buffer),
                    cfg.num_performance_buffer - 1,
                )
            else:
                step = 1.0 / max(2, round(cfg.num_performance_buffer ** (1 / (v.shape[0] - 1))))
                key = tuple(np.round(v / max(v.sum(), 1e-12) / step).astype(int))
            sectors.setdefault(key, []).append((float(np.linalg.norm(v)), p))
        out: list[FrontPolicy] = []
        for items in sectors.values():
            items.sort(key=lambda t: -t[0])
            out += [p for _, p in items[: cfg.performance_buffer_size]]
        return out or list(self.archive.front())

    # --- prediction-guided task selection ----------------------------------------------------
    def predict(self, policy: FrontPolicy, weights: np.ndarray) -> np.ndarray:
        """``(K, m)`` predicted returns of ``policy`` after training with each weight."""
        f = np.asarray(policy.returns, np.float64)
        m = f.shape[0]
        if len(self.samples) < 4:
            return np.repeat(f[None], len(weights), axis=0)
        out = np.repeat(f[None], len(weights), axis=0)
        for j in range(m):
            p = fit_improvement(self.samples, f, j)
            out[:, j] += hyperbolic(weights[:, j], *p)
        return out

    def select_tasks(self) -> list[tuple[FrontPolicy, np.ndarray]]:
        """Greedy ``pop_size`` tasks maximising predicted ``HV + sparsity_coef x sparsity``."""
        cfg = self.cfg
        m = cfg.protocol.num_objectives
        weights = simplex_grid(m, cfg.delta_weight / 2)
        if cfg.num_weight_candidates is not None and cfg.num_weight_candidates < len(weights):
            pick = self.rng.choice(len(weights), cfg.num_weight_candidates, replace=False)
            weights = weights[np.sort(pick)]
        cands: list[tuple[FrontPolicy, np.ndarray, np.ndarray]] = []
        for p in self.population:
            preds = self.predict(p, weights)
            cands += [(p, weights[k], preds[k]) for k in range(len(weights))]
        virtual = self.archive.points(self.archive.front())
        pop_size = len(simplex_grid(m, cfg.delta_weight))
        chosen: list[tuple[FrontPolicy, np.ndarray]] = []
        for _ in range(min(pop_size, len(cands))):
            best, best_score = -1, -math.inf
            for k, (_, _, pred) in enumerate(cands):
                pts = np.vstack([virtual, pred[None]])
                front = non_dominated(pts)
                score = hypervolume(front, cfg.protocol.ref_point)
                score += cfg.sparsity_coef * sparsity_of(front)
                if score > best_score:
                    best, best_score = k, score
            p, w, pred = cands.pop(best)
            chosen.append((p, w))
            virtual = np.vstack([virtual, pred[None]])
        return chosen

    # --- the loop ------------------------------------------------------------------------------
    def plan_round(self, k: int) -> RoundPlan | None:
        """Round 0: the warm-up; round ``k >= 1``: evolution stage ``k - 1`` (``None``: done)."""
        cfg, jc = self.cfg, self.job_cfg
        batch = cfg.ppo.batch_size
        weights = simplex_grid(cfg.protocol.num_objectives, cfg.delta_weight)
        if k == 0:
            warm = min(cfg.warmup_iterations, cfg.total_steps // (len(weights) * batch))
            if warm < 1:
                raise ValueError(
                    f"total_steps={cfg.total_steps} cannot pay one PPO iteration ({batch} steps) "
                    f"for each of {len(weights)} warm-up weights"
                )
            jobs = [
                Job(
                    "train",
                    jc,
                    str(self.policy_dir),
                    f"warm-w{i}",
                    cfg.seed * 1000 + i,
                    warm,
                    w.tolist(),
                    warm,
                    eval_at_start=True,
                )  # fmt: skip
                for i, w in enumerate(weights)
            ]
            return RoundPlan("warmup", jobs)
        stage = k - 1
        left = cfg.total_steps - self.env_steps
        iters = min(cfg.evolutionary_iterations, left // (len(weights) * batch))
        if iters < 1:
            return None
        tasks = self.select_tasks()
        jobs = [
            Job(
                "train",
                jc,
                str(self.policy_dir),
                f"evo{stage}-t{i}-p{p.id}",
                cfg.seed * 1000 + 100 * (stage + 1) + i,
                iters,
                w.tolist(),
                iters,
                parent=p,
                start_steps=p.env_steps,
            )  # fmt: skip
            for i, (p, w) in enumerate(tasks)
        ]
        return RoundPlan(f"evolution{stage}", jobs)

    def run(self) -> dict[str, Any]:
        """Warm-up, then evolution stages until ``total_steps``; returns the final summary.

        Starts from the loaded checkpoint, if any (:meth:`RoundLoop.try_resume`).
        """
        self.run_rounds()
        return self.summary()
