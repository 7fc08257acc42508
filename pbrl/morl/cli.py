"""``pbrl-front``: a Pareto front of policies (C-MORL or PGMORL) with TensorBoard logs.

``pbrl-front env=mo-hopper-2d seed=1`` composes ``pbrl/configs/front/front.yaml``. The run
directory gets the resolved ``config.yaml``; TensorBoard scalars ``front/hv``, ``front/eu``,
``front/sparsity``, ``front/cardinality``, ``charts/eval_steps`` and the front image
``front/plot`` after stage 1 and every later round (x axis: training transitions);
``policies/*.pt`` (every evaluated policy) and ``front.json`` (their vector returns and the
front's ids); ``history.json`` and ``final_metrics.json``. With ``select=teacher`` a teacher
picks one front policy by a clip tournament (``selection.json``, ``select/*`` scalars).

A run checkpoints itself (``checkpoint/``) after planning every round and after every finished
job; ``pbrl-front <run dir>`` or ``pbrl-front ... resume=true`` (the latest front run under
``runs/``) continues it after a crash or a kill, with the front an uninterrupted run would get.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter

from pbrl.cli import OVERRIDES, RUNS, ResumeError, check_resumable
from pbrl.cli import prepare_argv as train_prepare_argv
from pbrl.morl.cmorl import CMORL, Archive, CMORLConfig, eval_env_factory
from pbrl.morl.envs import default_ref_point, objective_names
from pbrl.morl.metrics import EvalProtocol
from pbrl.morl.pgmorl import PGMORL, PGMORLConfig
from pbrl.morl.plot import front_image
from pbrl.morl.ppo import MOPPOConfig
from pbrl.teachers.human import require_web_extra

METHODS = ("cmorl", "pgmorl")
SELECT = ("none", "teacher")


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def build_configs(cfg: DictConfig) -> tuple[CMORLConfig | PGMORLConfig, tuple[str, ...]]:
    """The method's settings and the objective names, from a composed config."""
    if cfg.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {cfg.method!r}")
    objectives = tuple(cfg.objectives) if cfg.objectives else None
    names = objective_names(str(cfg.env), objectives)
    m = len(names)
    ref = tuple(cfg.eval.ref_point) if cfg.eval.ref_point is not None else None
    ref = ref or default_ref_point(str(cfg.env), m)
    if len(ref) != m:
        raise ValueError(f"eval.ref_point has {len(ref)} values but {cfg.env} has {m} objectives")
    eu_step = cfg.eval.eu_step if cfg.eval.eu_step is not None else (0.01 if m == 2 else 0.1)
    protocol = EvalProtocol(
        episodes=int(cfg.eval.episodes), max_steps=int(cfg.eval.max_steps),
        gamma=float(cfg.eval.gamma), ref_point=ref, eu_step=float(eu_step),
        seed=10_000 + int(cfg.seed),
    )  # fmt: skip
    ppo = MOPPOConfig(**_container(cfg.ppo))
    common: dict[str, Any] = {
        "env": str(cfg.env),
        "env_max_steps": cfg.env_max_steps,
        "objectives": objectives,
        "total_steps": int(cfg.total_steps),
        "workers": int(cfg.workers),
        "parallel": str(cfg.parallel),
        "ray_address": None if cfg.ray_address is None else str(cfg.ray_address),
        "seed": int(cfg.seed),
        "ppo": ppo,
        "protocol": protocol,
    }
    if cfg.method == "cmorl":
        return CMORLConfig(**common, **_container(cfg.cmorl)), names
    pg = _container(cfg.pgmorl)
    if pg.get("origin") is not None:
        pg["origin"] = tuple(pg["origin"])
    return PGMORLConfig(**common, **pg), names


def _checkpoint_name() -> str:
    from pbrl.checkpoint import CHECKPOINT

    return CHECKPOINT


# Keys that choose how jobs run or where the labelling page is served, not what is computed:
# a resume may change them.
_EXECUTION_KEYS = frozenset({"workers", "parallel", "ray_address", "human"})


def check_resume(cfg: DictConfig, run_dir: Path) -> None:
    """Check ``resume`` against ``run_dir``, as ``pbrl-train`` does.

    A resume needs a front run there with the same config (only how jobs are executed may
    change); a fresh start needs a directory without a checkpoint.

    Raises:
        ResumeError: what is wrong and what to do instead.
    """
    saved = run_dir / "config.yaml"
    if cfg.resume:
        check_resumable(saved, cfg, "pbrl-front", _EXECUTION_KEYS)
    elif (run_dir / _checkpoint_name()).exists():
        raise ResumeError(
            f"{run_dir} already holds a front run; pass resume=true (or pbrl-front {run_dir}) "
            "to continue it, or choose another hydra.run.dir"
        )


def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Run (or, with ``resume=true``, continue) ``cfg`` in ``run_dir``; returns final metrics."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.select not in SELECT:
        raise ValueError(f"select must be one of {SELECT}, got {cfg.select!r}")
    check_resume(cfg, run_dir)
    method_cfg, names = build_configs(cfg)
    if cfg.parallel == "ray":  # fail before the run directory is claimed
        from pbrl.gpu.ray_sweep import _ray

        _ray()
    if cfg.select == "teacher":
        check_teacher(cfg, names)
    if not cfg.resume:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    torch.set_num_threads(1)

    def log(stage: str, step: int, scores: dict[str, float], archive: Archive) -> None:
        for k, v in scores.items():
            writer.add_scalar(f"front/{k}", float(v), step)
        writer.add_scalar("charts/eval_steps", runner.eval_steps, step)
        front = archive.points(archive.front())
        img = front_image(archive.points(), front, names)
        writer.add_image("front/plot", img, step, dataformats="HWC")
        writer.flush()
        print(
            f"[{cfg.method} {stage}] steps {step}  HV {scores['hv']:.4g}  EU {scores['eu']:.4g}  "
            f"sparsity {scores['sparsity']:.4g}  front {scores['cardinality']}",
            flush=True,
        )

    runner: CMORL | PGMORL
    if isinstance(method_cfg, CMORLConfig):
        runner = CMORL(method_cfg, run_dir, log)
    else:
        runner = PGMORL(method_cfg, run_dir, log)
    purge = None
    if cfg.resume:
        if runner.try_resume():
            purge = runner.tb_step + 1  # drop events logged after the checkpoint
        else:
            print(f"no checkpoint in {run_dir} yet: starting it from the start", file=sys.stderr)
    writer = SummaryWriter(str(run_dir), purge_step=purge)
    final = runner.run()
    runner.archive.save(run_dir / "front.json", names)
    final["eval_steps"] = runner.eval_steps
    final["objectives"] = list(names)
    if cfg.select == "teacher":
        final["selection"] = _select(
            cfg, runner.archive, method_cfg, names, writer, run_dir, runner.env_steps
        )
    writer.close()
    (run_dir / "history.json").write_text(json.dumps(runner.history, indent=1))
    (run_dir / "final_metrics.json").write_text(json.dumps(final, indent=1))
    return final


def check_teacher(cfg: DictConfig, names: tuple[str, ...]) -> np.ndarray:
    """Validate ``select=teacher`` settings before any training; returns the utility weights."""
    m = len(names)
    u = np.asarray(cfg.teacher_utility if cfg.teacher_utility is not None else [1.0 / m] * m)
    if u.shape != (m,) or (u < 0).any():
        raise ValueError(f"teacher_utility must be {m} non-negative weights, got {u.tolist()}")
    if str(cfg.teacher) == "human":
        if not str(cfg.env).startswith("pbrl:"):
            raise ValueError(
                f"select=teacher with teacher=human needs clips a person can watch, re-rendered "
                f"from stored simulator state; {cfg.env} (MO-Gymnasium or the toy) reports no "
                "sim_state. Use a pbrl task (env=pbrl:<task>) or a scripted teacher (oracle, "
                "noisy, ...)"
            )
        require_web_extra("teacher=human")
    return u


def _make_teacher(cfg: DictConfig, run_dir: Path, steps: int) -> tuple[Any, Callable[[], None]]:
    """The selection's teacher and what closes it.

    ``teacher=human`` serves the labelling page over ``run_dir/feedback.sqlite`` (tokens and
    clip cache in ``run_dir/human``), rendering clips of the ``pbrl:<task>`` env from the
    stored sim state; it waits for every answer (``human.timeout`` seconds at most).
    """
    from pbrl.teachers import make_teacher
    from pbrl.teachers.storing import StoringTeacher

    if str(cfg.teacher) != "human":
        return make_teacher(str(cfg.teacher), seed=int(cfg.seed)), lambda: None
    from pbrl.store import FeedbackStore

    store_path = run_dir / "feedback.sqlite"
    store = FeedbackStore(store_path)
    try:
        human = make_teacher(
            "human", seed=int(cfg.seed), store=store_path, state_dir=run_dir / "human",
            env_name=str(cfg.env)[len("pbrl:"):], mode="wait", **_container(cfg.human),
        )  # fmt: skip
    except BaseException:
        store.close()
        raise
    print(human.banner(), flush=True)  # type: ignore[attr-defined]

    def close() -> None:
        human.close()  # type: ignore[attr-defined]
        store.close()

    return StoringTeacher(human, store, step=steps), close


def _select(
    cfg: DictConfig,
    archive: Archive,
    method_cfg: CMORLConfig | PGMORLConfig,
    names: tuple[str, ...],
    writer: SummaryWriter,
    run_dir: Path,
    steps: int,
) -> dict[str, Any]:
    from pbrl.morl.select import select_by_teacher

    u = check_teacher(cfg, names)
    front = archive.front()
    job_cfg = method_cfg if isinstance(method_cfg, CMORLConfig) else method_cfg.job_config()
    env = str(cfg.env)
    teacher, close = _make_teacher(cfg, run_dir, steps)
    try:
        idx, res = select_by_teacher(
            front, eval_env_factory(job_cfg), teacher, u, names,
            clip_length=int(cfg.clip_length), seed=int(cfg.seed),
            env_name=env[len("pbrl:"):] if env.startswith("pbrl:") else env,
        )  # fmt: skip
    finally:
        close()
    utilities = archive.points(front) @ u
    chosen = front[idx]
    out = {
        "policy_id": chosen.id,
        "path": chosen.path,
        "returns": chosen.returns,
        "utility": float(utilities[idx]),
        "best_utility": float(utilities.max()),
        "regret": float(utilities.max() - utilities[idx]),
        "queries": res.queries,
        "coin_flips": res.coin_flips,
        "teacher": str(cfg.teacher),
        "teacher_utility": u.tolist(),
        "matches": [
            {"query_id": q, "first": front[a].id, "second": front[b].id, "winner": front[w].id}
            for (a, b, w), q in zip(res.matches, res.query_ids, strict=True)
        ],
    }
    (run_dir / "selection.json").write_text(json.dumps(out, indent=1))
    for k in ("utility", "best_utility", "regret", "queries"):
        writer.add_scalar(f"select/{k}", float(out[k]), 0)
    img = front_image(
        archive.points(), archive.points(front), names, chosen=np.array(chosen.returns)
    )
    writer.add_image("select/front", img, 0, dataformats="HWC")
    print(
        f"[select] teacher {cfg.teacher}: policy {chosen.id} utility {out['utility']:.4g} "
        f"(best on the front {out['best_utility']:.4g}) after {res.queries} queries",
        flush=True,
    )
    return out


def _is_front_run(path: Path) -> bool:
    cfg = path / "config.yaml"
    if not (path.is_dir() and cfg.exists()):
        return False
    saved = yaml.safe_load(cfg.read_text()) or {}
    return saved.get("method") in METHODS and "cmorl" in saved


def latest_front_run(root: Path = RUNS) -> Path | None:
    """The most recently checkpointed (or started) ``pbrl-front`` run under ``root``."""
    runs = [p for p in [*root.glob("*"), *root.glob("sweep-*/*")] if _is_front_run(p)]
    if not runs:
        return None

    def stamp(p: Path) -> float:
        meta = p / _checkpoint_name() / "meta.json"
        return (meta if meta.exists() else p / "config.yaml").stat().st_mtime

    return max(runs, key=stamp)


def prepare_argv(argv: list[str]) -> list[str]:
    """Turn the resume forms into Hydra overrides with :func:`pbrl.cli.prepare_argv`'s rules.

    ``pbrl-front <run dir> [overrides]`` continues that run with its own overrides;
    ``pbrl-front resume=true`` continues the latest front run under ``runs/``.
    """
    return train_prepare_argv(
        argv,
        is_run_dir=_is_front_run,
        latest=latest_front_run,
        command="pbrl-front",
        what="front run",
        marker="front config.yaml",
    )


@hydra.main(config_path="../configs/front", config_name="front", version_base="1.3")
def _main(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if not cfg.resume and not (run_dir / OVERRIDES).exists():
        task = [o for o in HydraConfig.get().overrides.task if not o.startswith("hydra.")]
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / OVERRIDES).write_text(yaml.safe_dump(list(task)))
    print(f"run directory: {run_dir}  (tensorboard --logdir {run_dir})", flush=True)
    try:
        final = run(cfg, run_dir)
    except (ValueError, ImportError, ResumeError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    return float(final["hv"])


def main() -> None:
    """Console entry point ``pbrl-front`` (``pbrl-front <run dir>`` resumes a run)."""
    try:
        argv = prepare_argv(sys.argv[1:])
    except ResumeError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [sys.argv[0], *argv]
    _main()


if __name__ == "__main__":
    main()
