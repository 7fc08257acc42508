"""``pbrl-front``: a Pareto front of policies (C-MORL or PGMORL) with TensorBoard logs.

``pbrl-front env=mo-hopper-2d seed=1`` composes ``pbrl/configs/front/front.yaml``. The run
directory gets the resolved ``config.yaml``; TensorBoard scalars ``front/hv``, ``front/eu``,
``front/sparsity``, ``front/cardinality``, ``charts/eval_steps`` and the front image
``front/plot`` after stage 1 and every later round (x axis: training transitions);
``policies/*.pt`` (every evaluated policy) and ``front.json`` (their vector returns and the
front's ids); ``history.json`` and ``final_metrics.json``. With ``select=teacher`` a teacher
picks one front policy by a clip tournament (``selection.json``, ``select/*`` scalars).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter

from pbrl.morl.cmorl import CMORL, Archive, CMORLConfig, eval_env_factory
from pbrl.morl.envs import default_ref_point, objective_names
from pbrl.morl.metrics import EvalProtocol
from pbrl.morl.pgmorl import PGMORL, PGMORLConfig
from pbrl.morl.plot import front_image
from pbrl.morl.ppo import MOPPOConfig

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


def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Run ``cfg`` into ``run_dir``; returns the final metrics."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.select not in SELECT:
        raise ValueError(f"select must be one of {SELECT}, got {cfg.select!r}")
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    torch.set_num_threads(1)
    method_cfg, names = build_configs(cfg)
    writer = SummaryWriter(str(run_dir))

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
    final = runner.run()
    runner.archive.save(run_dir / "front.json", names)
    final["eval_steps"] = runner.eval_steps
    final["objectives"] = list(names)
    if cfg.select == "teacher":
        final["selection"] = _select(cfg, runner.archive, method_cfg, names, writer, run_dir)
    writer.close()
    (run_dir / "history.json").write_text(json.dumps(runner.history, indent=1))
    (run_dir / "final_metrics.json").write_text(json.dumps(final, indent=1))
    return final


def _select(
    cfg: DictConfig,
    archive: Archive,
    method_cfg: CMORLConfig | PGMORLConfig,
    names: tuple[str, ...],
    writer: SummaryWriter,
    run_dir: Path,
) -> dict[str, Any]:
    from pbrl.morl.select import select_by_teacher
    from pbrl.teachers import make_teacher

    m = len(names)
    u = np.asarray(cfg.teacher_utility if cfg.teacher_utility is not None else [1.0 / m] * m)
    if u.shape != (m,) or (u < 0).any():
        raise ValueError(f"teacher_utility must be {m} non-negative weights, got {u.tolist()}")
    if str(cfg.teacher) == "human":
        raise ValueError(
            "select=teacher with teacher=human is not supported yet (front clips carry no "
            "simulator state to render); use a scripted teacher (oracle, noisy, ...)"
        )
    teacher = make_teacher(str(cfg.teacher), seed=int(cfg.seed))
    front = archive.front()
    job_cfg = method_cfg if isinstance(method_cfg, CMORLConfig) else method_cfg.job_config()
    idx, res = select_by_teacher(
        front, eval_env_factory(job_cfg), teacher, u, names,
        clip_length=int(cfg.clip_length), seed=int(cfg.seed), env_name=str(cfg.env),
    )  # fmt: skip
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
        "teacher": str(cfg.teacher),
        "teacher_utility": u.tolist(),
        "matches": [
            {"first": front[a].id, "second": front[b].id, "winner": front[w].id}
            for a, b, w in res.matches
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


@hydra.main(config_path="../configs/front", config_name="front", version_base="1.3")
def _main(cfg: DictConfig) -> float:
    try:
        final = run(cfg, HydraConfig.get().runtime.output_dir)
    except (ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    return float(final["hv"])


def main() -> None:
    """Console entry point ``pbrl-front``."""
    _main()


if __name__ == "__main__":
    main()
