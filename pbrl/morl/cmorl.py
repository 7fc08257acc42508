"""C-MORL (Liu et al., ICLR 2025): constrained policy optimisation to fill a Pareto front.

Stage 1 (initialisation)
    One :class:`~pbrl.morl.ppo.MOPPO` policy per weight of a simplex grid (step
    ``delta_weight``), trained on the linear scalarisation; every ``eval_interval`` updates the
    policy is evaluated by the shared evaluator and archived.
Stage 2 (extension), repeated until the step budget is spent
    1. Select ``num_select`` policies of the non-dominated archive by crowding distance (largest
       first, never one that was selected before while others remain).
    2. For each selected policy ``pi_r`` and objective ``l``: copy it and run ``update_iter``
       PPO updates that maximise ``G_l`` subject to ``G_j >= beta G_j(pi_r)`` for ``j != l``
       through a log barrier with parameter ``t``; evaluate and archive after every update.

Barriers (``barrier=``):

``"paper"`` (default; the paper's C-MORL-IPO)
    loss = L_CLIP(A_l) - (1/t) sum_{j != l} log(G^_j(theta) - b_j), with the first-order
    estimate G^_j(theta) = G_j(pi_old) + kappa E[clip(rho) A_j] (kappa = 1 / (1 - gamma), the
    performance-difference lemma; A_j in raw reward units) where G_j(pi_old) is the last
    evaluated return of the iterate, and the threshold b_j = beta G_j(pi_r) taken from the
    selected policy's evaluated return. For a negative G_j(pi_r) (e.g. an energy cost)
    ``beta G_j`` would lie *above* the parent, so b_j = G_j(pi_r) - (1 - beta) |G_j(pi_r)|
    (the same fraction of slack on either sign). Where the estimate is infeasible the log is
    continued linearly below ``eps_j = 1e-3 max(1, |G_j(pi_r)|)`` so its gradient keeps pushing
    back towards the feasible side (an extended log barrier) instead of vanishing.
``"code"`` (the official ``ppo.py: ipo_update``)
    per minibatch c_j = clip(rho) mean(R_j), e_j = beta mean(R_j) over the normalised value
    targets R_j, loss adds -mean log(max(c_j - e_j, 1e-3)) / t. This only keeps rho above beta
    for objectives with positive mean return; it is not relative to G_j(pi_r), and its gradient
    is zero wherever the clamp is active (docs/cmorl.md).
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import random
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pbrl.morl.envs import make_mo_env
from pbrl.morl.metrics import (
    EvalProtocol,
    crowding_distance,
    pareto_mask,
    score_front,
    simplex_grid,
)
from pbrl.morl.ppo import MOPPO, MOPPOConfig, evaluate_policy

BARRIERS = ("paper", "code")
PARALLEL = ("process", "ray")


def extended_log(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``log(x)`` for ``x >= eps``, its tangent ``log(eps) + (x - eps) / eps`` below."""
    safe = torch.maximum(x, eps)
    return torch.where(x >= eps, safe.log(), eps.log() + (x - eps) / eps)


def constraint_threshold(parent: np.ndarray, beta: float) -> np.ndarray:
    """``b_j``: ``beta G_j`` for positive returns, ``G_j - (1 - beta)|G_j|`` in general."""
    parent = np.asarray(parent, np.float64)
    return parent - (1.0 - beta) * np.abs(parent)


class PaperBarrier:
    """The paper's interior-point term for objective ``l`` (see the module docstring).

    Args:
        objective: ``l``, the objective being maximised.
        parent_return: ``(m,)`` evaluated return of the selected policy ``pi_r``.
        current_return: ``(m,)`` last evaluated return of the policy being optimised.
        beta: constraint fraction (0.9).
        t: barrier parameter (20): the barrier weighs ``1 / t``.
        kappa: factor from a mean raw advantage to a return change (``1 / (1 - gamma)``).
    """

    def __init__(
        self,
        objective: int,
        parent_return: np.ndarray,
        current_return: np.ndarray,
        beta: float,
        t: float,
        kappa: float,
    ):
        m = len(parent_return)
        self.others = torch.tensor([j for j in range(m) if j != objective], dtype=torch.long)
        self.threshold = torch.as_tensor(constraint_threshold(parent_return, beta)).float()
        self.current = torch.as_tensor(np.asarray(current_return, np.float64)).float()
        parent = torch.as_tensor(np.abs(np.asarray(parent_return, np.float64))).float()
        self.eps = 1e-3 * torch.clamp(parent, min=1.0)
        self.t = float(t)
        self.kappa = float(kappa)

    def estimate(self, ratio: torch.Tensor, adv_raw: torch.Tensor, clip: float) -> torch.Tensor:
        """``(m,)`` first-order estimate ``G_j(pi_old) + kappa E[(clip(rho) - 1) A_j]``.

        The performance-difference term is zero at ``rho = 1`` only in expectation: a batch's
        GAE advantages from a lagging critic have a non-zero mean, which ``kappa`` (200 at
        gamma 0.995) would add to the measured ``G_j(pi_old)``. Subtracting 1 from the ratio
        leaves the gradient unchanged and makes the estimate exactly ``G_j(pi_old)`` at
        ``theta_old``, so critic noise does not decide whether the constraint binds.
        """
        r = ratio.clamp(1 - clip, 1 + clip)[:, None]
        return self.current + self.kappa * ((r - 1.0) * adv_raw).mean(0)

    def loss(
        self, ratio: torch.Tensor, adv_raw: torch.Tensor, returns: torch.Tensor, clip: float
    ) -> torch.Tensor:
        """``-(1/t) sum_{j != l} log(G^_j - b_j)`` (extended below ``eps_j``)."""
        gap = (self.estimate(ratio, adv_raw, clip) - self.threshold)[self.others]
        return -extended_log(gap, self.eps[self.others]).sum() / self.t


class CodeBarrier:
    """The official code's per-minibatch term (``ipo_update``) for objective ``l``, as it runs.

    There ``ratio`` is ``(B, 1)`` (its Gaussian's log-probs are summed with ``keepdim``), so
    ``c = clip(rho) * mean_b(R)`` is ``(B, m)`` and ``torch.cat((c[:l], c[l + 1:]))`` removes
    minibatch **row** ``l``, not objective ``l``: every objective, ``l`` included, enters the
    barrier. This reproduces that term (the code's, not its evident intent ``j != l``).
    """

    def __init__(self, objective: int, num_objectives: int, beta: float, t: float):
        self.objective = int(objective)
        self.num_objectives = int(num_objectives)
        self.beta = float(beta)
        self.t = float(t)

    def loss(
        self, ratio: torch.Tensor, adv_raw: torch.Tensor, returns: torch.Tensor, clip: float
    ) -> torch.Tensor:
        """``-mean_{rows b != l, all j} log(max(c_bj - e_j, 1e-3)) / t``."""
        mean_r = returns.mean(0)  # (m,)
        c = ratio.clamp(1 - clip, 1 + clip)[:, None] * mean_r  # (B, m)
        e = self.beta * mean_r
        terms = -torch.log(torch.clamp(c - e, min=1e-3))
        keep = torch.arange(len(ratio), device=ratio.device) != self.objective
        return terms[keep].mean() / self.t


@dataclass
class FrontPolicy:
    """One archived policy.

    Attributes:
        id: unique within the run.
        path: its checkpoint (a :meth:`MOPPO.state_dict` saved with ``torch.save``).
        returns: ``(m,)`` vector return from the shared evaluator.
        weight: the scalarisation it was trained with (one-hot ``e_l`` in stage 2).
        stage: ``"init"`` or ``"extend"`` (or a baseline's stage name).
        parent: id of the selected policy it was extended from.
        objective: ``l`` it was pushed along (stage 2).
        env_steps: training transitions this policy's lineage had used when it was saved.
    """

    id: int
    path: str
    returns: list[float]
    weight: list[float]
    stage: str
    parent: int | None = None
    objective: int | None = None
    env_steps: int = 0


@dataclass
class CMORLConfig:
    """C-MORL settings (defaults: the official mo-hopper-2d script and ``arguments.py``).

    ``total_steps`` and ``init_steps`` count real transitions from all parallel envs (the
    official scripts count ``num_steps`` per process, i.e. 1/4 of the transitions); evaluation
    episodes are counted apart.
    """

    env: str = "mo-hopper-2d"
    env_max_steps: int | None = None  # training episodes cut here (None: the task's limit)
    objectives: tuple[str, ...] | None = None  # pbrl:<task> only
    total_steps: int = 6_000_000
    init_steps: int = 4_000_000
    delta_weight: float = 0.2
    num_select: int = 5
    beta: float = 0.9
    t: float = 20.0
    barrier: str = "paper"
    update_iter: int = 20
    eval_interval: int = 10
    buffer_size: int = 200
    workers: int = 1
    parallel: str = "process"  # process | ray (run_jobs)
    ray_address: str | None = None  # parallel=ray: a running cluster (None: a local instance)
    seed: int = 0
    ppo: MOPPOConfig = field(default_factory=MOPPOConfig)
    protocol: EvalProtocol = field(default_factory=EvalProtocol)

    def __post_init__(self) -> None:
        if self.parallel not in PARALLEL:
            raise ValueError(f"parallel must be one of {PARALLEL}, got {self.parallel!r}")
        if self.barrier not in BARRIERS:
            raise ValueError(f"barrier must be one of {BARRIERS}, got {self.barrier!r}")
        if not 0 < self.beta < 1:
            raise ValueError(f"beta must lie in (0, 1), got {self.beta}")
        if self.t <= 0:
            raise ValueError(f"t must be > 0, got {self.t}")
        if not 0 <= self.init_steps <= self.total_steps:
            raise ValueError("need 0 <= init_steps <= total_steps")
        if self.num_select < 1 or self.update_iter < 1 or self.eval_interval < 1:
            raise ValueError("num_select, update_iter and eval_interval must be >= 1")


def env_factory(cfg: CMORLConfig) -> Callable[[], Any]:
    """A picklable builder of one training env."""
    return functools.partial(
        make_mo_env, cfg.env, max_episode_steps=cfg.env_max_steps, objectives=cfg.objectives
    )


def eval_env_factory(cfg: CMORLConfig) -> Callable[[], Any]:
    """A picklable builder of one evaluation env (episodes cut at ``protocol.max_steps``)."""
    return functools.partial(
        make_mo_env, cfg.env, max_episode_steps=cfg.protocol.max_steps, objectives=cfg.objectives
    )


# --- jobs (module-level so worker processes can run them) -------------------------------------
@dataclass
class Job:
    """One unit of parallel work: train a policy (``weight``) or extend one (``objective``)."""

    kind: str  # "train" or "extend"
    cfg: CMORLConfig
    out_dir: str
    tag: str
    seed: int
    iterations: int
    weight: list[float]
    eval_every: int
    parent: FrontPolicy | None = None
    objective: int | None = None
    start_steps: int = 0
    eval_at_start: bool = False


@dataclass
class JobResult:
    """What a job hands back: the policies it saved and the steps it spent."""

    policies: list[dict[str, Any]]
    env_steps: int
    eval_steps: int
    seconds: float
    last_stats: dict[str, float]
    start_return: list[float] | None = None


def _stage_name(job: Job) -> str:
    if job.kind == "extend":
        return "extend"
    return "init" if job.parent is None else "evolve"


def run_job(job: Job) -> JobResult:
    """Train or extend one policy, evaluating and saving it along the way."""
    torch.set_num_threads(1)
    t0 = time.time()
    cfg = job.cfg
    env_fn, eval_fn = env_factory(cfg), eval_env_factory(cfg)
    state = None
    if job.parent is not None:
        state = torch.load(job.parent.path, weights_only=False)
    learner = MOPPO(env_fn, np.asarray(job.weight), cfg.ppo, seed=job.seed, state=state)
    kappa = 1.0 / max(1.0 - cfg.ppo.gamma, 1e-6)
    current = None if job.parent is None else np.asarray(job.parent.returns, np.float64)
    saved: list[dict[str, Any]] = []
    eval_steps = 0
    stats: dict[str, float] = {}
    start_return = None
    try:
        if job.eval_at_start:
            ret0, n = evaluate_policy(learner.policy(), eval_fn, cfg.protocol)
            eval_steps += n
            start_return = ret0.tolist()
        for k in range(job.iterations):
            barrier = None
            if job.kind == "extend":
                assert job.parent is not None and job.objective is not None
                parent_ret = np.asarray(job.parent.returns, np.float64)
                if cfg.barrier == "paper":
                    barrier = PaperBarrier(
                        job.objective,
                        parent_ret,
                        current,
                        cfg.beta,
                        cfg.t,
                        kappa,  # type: ignore[arg-type]
                    )
                else:
                    barrier = CodeBarrier(job.objective, learner.m, cfg.beta, cfg.t)
            stats = learner.train_iteration(barrier)
            if (k + 1) % job.eval_every == 0 or k == job.iterations - 1:
                ret, n = evaluate_policy(learner.policy(), eval_fn, cfg.protocol)
                eval_steps += n
                current = ret
                path = Path(job.out_dir) / f"{job.tag}-u{k + 1}.pt"
                torch.save(learner.state_dict(), path)
                saved.append(
                    {
                        "path": str(path),
                        "returns": ret.tolist(),
                        "weight": list(job.weight),
                        "stage": _stage_name(job),
                        "parent": None if job.parent is None else job.parent.id,
                        "objective": job.objective,
                        "env_steps": job.start_steps + learner.env_steps,
                    }
                )
    finally:
        learner.close()
    return JobResult(saved, learner.env_steps, eval_steps, time.time() - t0, stats, start_return)


def _ray_backend(address: str | None, workers: int) -> Any:
    """Ray, initialised (``address``: a cluster; ``None``: a local instance of ``workers`` CPUs)."""
    from pbrl.gpu.ray_sweep import _ray

    ray = _ray()  # ImportError naming the extra: pip install 'pbrl[ray]'
    if not ray.is_initialized():
        local_cpus = workers if address is None and workers > 1 else None
        ray.init(address=address, num_cpus=local_cpus, include_dashboard=False, log_to_driver=True)
    return ray


def run_jobs(
    jobs: Sequence[Job],
    workers: int,
    parallel: str = "process",
    done: dict[int, JobResult] | None = None,
    on_result: Callable[[int, JobResult], None] | None = None,
    ray_address: str | None = None,
) -> list[JobResult]:
    """Run ``jobs``; returns their results in job order.

    Jobs are pure functions of their :class:`Job` (and the parent checkpoint it names), so the
    backend does not change a result: ``parallel="process"`` runs them in this process
    (``workers <= 1``) or in ``workers`` spawned processes, ``parallel="ray"`` as Ray tasks of
    one CPU each (on the cluster at ``ray_address``, else a local instance of ``workers`` CPUs
    unless Ray is initialised already).

    Args:
        jobs: the round's jobs.
        workers: parallel processes (``process``) or local Ray CPUs (``ray``).
        parallel: ``"process"`` or ``"ray"``.
        done: results of jobs that finished before (a resumed round); they are not rerun.
        on_result: called in this process as ``on_result(index, result)`` when a job ends.
        ray_address: a running Ray cluster (``"auto"`` finds it); ``None``: see above.

    Raises:
        ImportError: ``parallel="ray"`` without Ray installed (the message names the extra).
    """
    if parallel not in PARALLEL:
        raise ValueError(f"parallel must be one of {PARALLEL}, got {parallel!r}")
    results: dict[int, JobResult] = dict(done or {})
    todo = [i for i in range(len(jobs)) if i not in results]

    def finish(i: int, r: JobResult) -> None:
        results[i] = r
        if on_result is not None:
            on_result(i, r)

    if parallel == "ray" and todo:
        ray = _ray_backend(ray_address, workers)
        remote = ray.remote(num_cpus=1)(run_job)
        pending = {remote.remote(jobs[i]): i for i in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                finish(pending.pop(ref), ray.get(ref))
    elif workers <= 1 or len(todo) <= 1:
        for i in todo:
            finish(i, run_job(jobs[i]))
    elif todo:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx) as pool:
            futures = {pool.submit(run_job, jobs[i]): i for i in todo}
            for fut in as_completed(futures):
                finish(futures[fut], fut.result())
    return [results[i] for i in range(len(jobs))]


# --- archive -----------------------------------------------------------------------------------
class Archive:
    """Every evaluated policy of a run, and the non-dominated front among them.

    The front keeps points that dominate-or-equal the reference point; above ``buffer_size``
    it keeps the largest crowding distances (the official policy buffer of 200).
    """

    def __init__(self, ref_point: Sequence[float], buffer_size: int = 200):
        self.ref = np.asarray(ref_point, np.float64)
        self.buffer_size = int(buffer_size)
        self.policies: list[FrontPolicy] = []
        self.selected: set[int] = set()

    def add(self, records: Sequence[dict[str, Any]]) -> list[FrontPolicy]:
        """Append saved policies (dicts of :class:`FrontPolicy` fields without ``id``)."""
        out = []
        for r in records:
            p = FrontPolicy(id=len(self.policies), **r)
            self.policies.append(p)
            out.append(p)
        return out

    def points(self, policies: Sequence[FrontPolicy] | None = None) -> np.ndarray:
        """``(n, m)`` returns of ``policies`` (default: all)."""
        ps = self.policies if policies is None else policies
        if not ps:
            return np.zeros((0, self.ref.shape[0]))
        return np.array([p.returns for p in ps], np.float64)

    def front(self) -> list[FrontPolicy]:
        """The non-dominated policies (duplicates of a return kept once), capped by crowding."""
        cands = [p for p in self.policies if (np.asarray(p.returns) >= self.ref).all()]
        if not cands:
            return []
        pts = self.points(cands)
        keep = np.flatnonzero(pareto_mask(pts))
        _, first = np.unique(pts[keep], axis=0, return_index=True)
        keep = keep[np.sort(first)]
        if keep.size > self.buffer_size:
            cd = crowding_distance(pts[keep])
            keep = keep[np.sort(np.argsort(-cd, kind="stable")[: self.buffer_size])]
        return [cands[i] for i in keep]

    def select(self, num_select: int) -> list[FrontPolicy]:
        """Up to ``num_select`` front policies with the largest crowding distance.

        The distance is computed over the whole front (C-MORL ``EP.filter_by_crowding_
        distance``), then policies selected before are skipped: the edges of the front's gaps
        keep their large distances after the front's extremes have been picked (a distance
        over the unselected policies alone would give the new extremes of that subset, next
        to the old ones, infinite distance). When every front policy has been selected the
        memory is cleared (the official code stops selecting).
        """
        front = self.front()
        if not front:
            return []
        if all(p.id in self.selected for p in front):
            self.selected.clear()
        cd = crowding_distance(self.points(front))
        order = [i for i in np.argsort(-cd, kind="stable") if front[i].id not in self.selected]
        chosen = [front[i] for i in order[:num_select]]
        self.selected.update(p.id for p in chosen)
        return chosen

    def save(self, path: str | Path, objectives: Sequence[str] = ()) -> None:
        """Write every policy and the front (ids) as JSON."""
        front_ids = [p.id for p in self.front()]
        data = {
            "objectives": list(objectives),
            "ref_point": self.ref.tolist(),
            "front": front_ids,
            "policies": [asdict(p) for p in self.policies],
        }
        Path(path).write_text(json.dumps(data, indent=1))

    @staticmethod
    def load(path: str | Path) -> tuple[Archive, list[int]]:
        """Read a :meth:`save` file; returns the archive and the saved front ids."""
        data = json.loads(Path(path).read_text())
        arch = Archive(data["ref_point"])
        arch.policies = [FrontPolicy(**p) for p in data["policies"]]
        return arch, list(data["front"])


Logger = Callable[[str, int, dict[str, float], Archive], None]


@dataclass
class RoundPlan:
    """A round whose jobs are fixed: its stage name, jobs, and the results already in."""

    stage: str
    jobs: list[Job]
    done: dict[int, JobResult] = field(default_factory=dict)


class RoundLoop:
    """Rounds of parallel jobs with a checkpoint after every planned round and finished job.

    A subclass plans round ``k`` in :meth:`plan_round` (``None``: the budget is spent) and
    folds its results into the archive in :meth:`_record`. The checkpoint
    (:func:`pbrl.checkpoint.write_checkpoint`, ``out_dir/checkpoint/``) holds the archive
    with every policy's vector return and file, the step counters, the history, the round
    counter, the planned round with the results of its finished jobs, the global RNG states,
    the TensorBoard step, and :meth:`extra_state`. A job is the unit of work: one killed
    mid-way is rerun from its start, which gives the same result bit for bit (a job is a pure
    function of its :class:`Job` and its parent's saved file). A finished job's policy state
    lives in its ``policies/*.pt`` files; its optimiser ends with it (every job starts a fresh
    Adam, C-MORL's stage 2 and our PGMORL alike).
    """

    job_cfg: CMORLConfig  # workers, parallel backend, evaluator
    archive: Archive

    def __init__(self, out_dir: str | Path, log: Logger | None):
        self.out_dir = Path(out_dir)
        self.policy_dir = self.out_dir / "policies"
        self.policy_dir.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.env_steps = 0
        self.eval_steps = 0
        self.history: list[dict[str, Any]] = []
        self.rounds_done = 0
        self.plan: RoundPlan | None = None
        self.tb_step = -1  # the last step logged through ``log`` (-1: none)
        self._t0 = time.time()

    # --- the loop --------------------------------------------------------------------------
    def plan_round(self, k: int) -> RoundPlan | None:
        """Round ``k``'s stage and jobs, or ``None`` when the run is over."""
        raise NotImplementedError

    def _record(self, stage: str, results: Sequence[JobResult], jobs: Sequence[Job]) -> None:
        raise NotImplementedError

    def _score(self, stage: str) -> dict[str, float]:
        """Score the front, append a history row, log it and save ``front.json``."""
        scores = score_front(self.archive.points(self.archive.front()), self.job_cfg.protocol)
        self.history.append(
            {"stage": stage, "env_steps": self.env_steps, "eval_steps": self.eval_steps,
             "seconds": time.time() - self._t0, **scores}
        )  # fmt: skip
        if self.log is not None:
            self.log(stage, self.env_steps, scores, self.archive)
            self.tb_step = self.env_steps
        self.archive.save(self.out_dir / "front.json")
        return scores

    def _job_done(self, i: int, result: JobResult) -> None:
        assert self.plan is not None
        self.plan.done[i] = result
        self.save_checkpoint()

    def run_rounds(self) -> None:
        """Plan, run and record rounds until :meth:`plan_round` says the run is over."""
        while True:
            if self.plan is None:
                self.plan = self.plan_round(self.rounds_done)
                if self.plan is None:
                    break
                self.save_checkpoint()
            plan = self.plan
            jc = self.job_cfg
            results = run_jobs(
                plan.jobs, jc.workers, jc.parallel, done=plan.done, on_result=self._job_done,
                ray_address=jc.ray_address,
            )  # fmt: skip
            self._record(plan.stage, results, plan.jobs)
            self.plan = None
            self.rounds_done += 1
            self.save_checkpoint()

    def summary(self) -> dict[str, Any]:
        """Final scores, budgets and the front (ids and returns)."""
        front = self.archive.front()
        out = dict(self.history[-1]) if self.history else {}
        out.update(
            {
                "front_ids": [p.id for p in front],
                "front_returns": [p.returns for p in front],
                "policies": len(self.archive.policies),
            }
        )
        return out

    # --- checkpoint / resume -------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        """A subclass's own state (default: none)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`extra_state`."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run bit for bit (see the class docstring)."""
        return {
            "archive": {
                "policies": [asdict(p) for p in self.archive.policies],
                "selected": sorted(self.archive.selected),
            },
            "env_steps": self.env_steps,
            "eval_steps": self.eval_steps,
            "history": self.history,
            "rounds_done": self.rounds_done,
            "plan": self.plan,
            "tb_step": self.tb_step,
            "seconds": time.time() - self._t0,
            "rng": {
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "python": random.getstate(),
            },
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict` on a loop built from the same config."""
        self.archive.policies = [FrontPolicy(**p) for p in state["archive"]["policies"]]
        self.archive.selected = set(state["archive"]["selected"])
        self.env_steps = int(state["env_steps"])
        self.eval_steps = int(state["eval_steps"])
        self.history = list(state["history"])
        self.rounds_done = int(state["rounds_done"])
        self.plan = state["plan"]
        self.tb_step = int(state["tb_step"])
        self._t0 = time.time() - float(state["seconds"])
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        self.load_extra_state(state["extra"])

    def save_checkpoint(self) -> Path:
        """Atomically replace ``out_dir/checkpoint/``.

        Its ``meta.json`` step counts the training steps spent, the finished jobs of the
        current round included.
        """
        from pbrl.checkpoint import write_checkpoint

        step = self.env_steps
        if self.plan is not None:
            step += sum(r.env_steps for r in self.plan.done.values())
        return write_checkpoint(self.out_dir, self.state_dict(), step)

    def try_resume(self) -> bool:
        """Load ``out_dir``'s checkpoint if there is one; True if resumed."""
        from pbrl.checkpoint import read_checkpoint

        state = read_checkpoint(self.out_dir)
        if state is None:
            return False
        self.load_state_dict(state)
        pending = "" if self.plan is None else (
            f", round {self.plan.stage!r} with {len(self.plan.done)}/{len(self.plan.jobs)} "
            "jobs done"
        )  # fmt: skip
        print(
            f"resumed {self.out_dir} after {self.rounds_done} rounds at {self.env_steps:,} "
            f"steps{pending}",
            file=sys.stderr,
        )
        return True


class CMORL(RoundLoop):
    """The two-stage C-MORL loop (the module docstring gives the algorithm).

    Args:
        cfg: settings.
        out_dir: where checkpoints (``policies/``, ``checkpoint/``) and ``front.json`` go.
        log: called after stage 1 and after every extension round with
            ``(stage, env_steps, scores, archive)``; ``scores`` has ``hv``, ``eu``,
            ``sparsity``, ``cardinality``.
    """

    def __init__(self, cfg: CMORLConfig, out_dir: str | Path, log: Logger | None = None):
        super().__init__(out_dir, log)
        self.cfg = self.job_cfg = cfg
        self.archive = Archive(cfg.protocol.ref_point, cfg.buffer_size)

    def _record(self, stage: str, results: Sequence[JobResult], jobs: Sequence[Job]) -> None:
        for r in results:
            self.archive.add(r.policies)
            self.env_steps += r.env_steps
            self.eval_steps += r.eval_steps
        self._score(stage)

    def initial_jobs(self) -> list[Job]:
        """Stage 1: one job per simplex weight, sharing ``init_steps`` equally."""
        cfg = self.cfg
        weights = simplex_grid(cfg.protocol.num_objectives, cfg.delta_weight)
        iters = cfg.init_steps // len(weights) // cfg.ppo.batch_size
        if iters < 1:
            raise ValueError(
                f"init_steps={cfg.init_steps} is too small for {len(weights)} weights x "
                f"{cfg.ppo.batch_size} steps per update; raise it or lower ppo.num_steps"
            )
        return [
            Job(
                "train",
                cfg,
                str(self.policy_dir),
                f"init-w{i}",
                cfg.seed * 1000 + i,
                iters,
                w.tolist(),
                cfg.eval_interval,
            )  # fmt: skip
            for i, w in enumerate(weights)
        ]

    def extension_jobs(self, round_idx: int) -> list[Job]:
        """Stage 2: the selected policies x objectives for one round (empty: budget spent)."""
        cfg = self.cfg
        m = cfg.protocol.num_objectives
        left = cfg.total_steps - self.env_steps
        selected = self.archive.select(cfg.num_select)
        if not selected:
            return []
        per_update = len(selected) * m * cfg.ppo.batch_size
        iters = min(cfg.update_iter, left // per_update)
        if iters < 1:
            return []
        jobs = []
        for p in selected:
            for obj in range(m):
                idx = len(jobs)
                jobs.append(
                    Job(
                        "extend",
                        cfg,
                        str(self.policy_dir),
                        f"ext{round_idx}-p{p.id}-o{obj}",
                        cfg.seed * 1000 + 100 * (round_idx + 1) + idx,
                        iters,
                        np.eye(m)[obj].tolist(),
                        1,
                        parent=p,
                        objective=obj,
                        start_steps=p.env_steps,
                    )  # fmt: skip
                )
        return jobs

    def plan_round(self, k: int) -> RoundPlan | None:
        """Round 0: stage 1; round ``k >= 1``: extension round ``k - 1``."""
        if k == 0:
            return RoundPlan("init", self.initial_jobs())
        jobs = self.extension_jobs(k - 1)
        return RoundPlan(f"extend{k - 1}", jobs) if jobs else None

    def run(self) -> dict[str, Any]:
        """Run both stages (from the loaded checkpoint, if any); returns the final summary."""
        self.run_rounds()
        return self.summary()
