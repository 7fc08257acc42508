"""``pbrl-qd``: one quality-diversity run (QDHF and its baselines) with TensorBoard logs.

``pbrl-qd method=qdhf seed=1`` composes ``pbrl/configs/qd/qd.yaml`` (``domain=arm`` or
``domain=maze``, ``method=qdhf|qdhf_base|gt|aurora_pca[_pre]|aurora_ae[_pre]``); the run
directory gets
the resolved ``config.yaml``, TensorBoard scalars (``qd/...``) and archive heatmaps (images),
``history.json`` (metrics every ``log_every`` iterations) and ``final_metrics.json``.

``teacher=human`` (``domain=arm`` or ``domain=maze``): people answer the triplets on the
labelling page (:mod:`pbrl.human`), which draws each solution's arm posture or the maze
robot's path; the triplets and answers go to
``run_dir/feedback.sqlite``, tokens to ``run_dir/human``, settings under ``human:``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter

from pbrl.qd.arm import ArmDomain
from pbrl.qd.maze import MazeDomain
from pbrl.qd.qdhf import Domain, QDConfig, QDHFRun, default_teacher
from pbrl.teachers.base import Teacher
from pbrl.teachers.human import require_web_extra
from pbrl.teachers.storing import StoringTeacher

JUDGED = ("qdhf", "qdhf_base")
"""Methods that ask the teacher (the others never show a triplet)."""


def make_domain(dcfg: DictConfig) -> Domain:
    """The QD domain named by ``dcfg.name`` (``arm`` or ``maze``) with its settings."""
    if dcfg.name == "arm":
        return ArmDomain(int(dcfg.dof))
    if dcfg.name == "maze":
        return MazeDomain(episode_length=int(dcfg.episode_length), hidden=int(dcfg.hidden))
    raise ValueError(f"unknown QD domain {dcfg.name!r}; valid: arm, maze (domain=...)")


def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, float]:
    """Run the QD experiment ``cfg`` and write its outputs into ``run_dir``."""
    run_dir = Path(run_dir)
    # Refuse what cannot run before anything is written into the run directory.
    domain = make_domain(cfg.domain)
    if str(cfg.teacher.name) == "human":
        check_human(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    torch.manual_seed(int(cfg.seed))
    # the networks are tiny: extra threads only add contention (15x slower on a busy CPU)
    torch.set_num_threads(int(cfg.torch_threads))
    qd_cfg = QDConfig(
        method=str(cfg.method),
        iterations=int(cfg.iterations),
        batch_size=int(cfg.batch_size),
        init_pop=int(cfg.init_pop),
        sigma=float(cfg.sigma),
        line_sigma=float(cfg.line_sigma),
        grid=tuple(int(g) for g in cfg.grid),  # type: ignore[arg-type]
        n_pref=int(cfg.n_pref),
        update_fractions=tuple(float(f) for f in cfg.update_fractions),
        latent_dim=int(cfg.latent_dim),
        log_every=int(cfg.log_every),
        seed=int(cfg.seed),
        fit=dict(OmegaConf.to_container(cfg.fit, resolve=True) or {}),  # type: ignore[arg-type]
        ae_fit=dict(OmegaConf.to_container(cfg.ae_fit, resolve=True) or {}),  # type: ignore[arg-type]
        archive_backend=str(cfg.get("archive_backend", "pbrl")),
    )
    teacher, close = make_teacher(cfg, run_dir)
    try:
        return _run(cfg, run_dir, qd_cfg, domain, teacher)
    finally:
        close()


def check_human(cfg: DictConfig) -> None:
    """Refuse ``teacher=human`` where no person could answer (before anything starts)."""
    if cfg.domain.name not in ("arm", "maze"):
        raise ValueError(
            f"teacher=human needs pictures a person can compare; domain={cfg.domain.name} has no "
            "renderer for its solutions (domain=arm and domain=maze draw them). Use the "
            "simulated judge (teacher=simulated) for this domain"
        )
    if str(cfg.method) not in JUDGED:
        raise ValueError(
            f"method={cfg.method} asks no similarity judgements; teacher=human is for method="
            + " or method=".join(JUDGED)
        )
    require_web_extra("teacher=human")


def make_teacher(cfg: DictConfig, run_dir: Path) -> tuple[Teacher, Callable[[], None]]:
    """The run's judge and what closes it: the simulated one, or the labelling page.

    ``teacher=human`` serves the page over ``run_dir/feedback.sqlite`` (tokens in
    ``run_dir/human``) and waits for every triplet's answers (``human.timeout`` s at most).
    """
    name = str(cfg.teacher.name)
    if name == "simulated":
        teacher = default_teacher(
            seed=int(cfg.seed) + 1,
            beta=float(cfg.teacher.beta),
            eps_mistake=float(cfg.teacher.eps_mistake),
        )
        return teacher, lambda: None
    if name != "human":
        raise ValueError(f"unknown QD teacher {name!r}; valid: simulated, human (teacher=...)")
    check_human(cfg)
    from pbrl.store import FeedbackStore
    from pbrl.teachers import make_teacher as make_named_teacher

    h = dict(OmegaConf.to_container(cfg.human, resolve=True) or {})  # type: ignore[arg-type]
    title = h.pop("title", None) or f"pbrl-qd {cfg.domain.name} {cfg.method}"
    store_path = run_dir / "feedback.sqlite"
    store = FeedbackStore(store_path)
    try:
        human = make_named_teacher(
            "human", seed=int(cfg.seed), store=store_path, state_dir=run_dir / "human",
            env_name=f"qd_{cfg.domain.name}", mode="wait", max_frames=2, title=title, **h,
        )  # fmt: skip
    except BaseException:
        store.close()
        raise
    print(human.banner(), flush=True)

    def close() -> None:
        human.close()
        store.close()

    return StoringTeacher(human, store, total=int(cfg.n_pref)), close


def _run(
    cfg: DictConfig, run_dir: Path, qd_cfg: QDConfig, domain: Domain, teacher: Teacher
) -> dict[str, float]:
    writer = SummaryWriter(str(run_dir))

    def log_image(tag: str, img: np.ndarray, step: int) -> None:
        writer.add_image(tag, img, step, dataformats="HWC")

    qd = QDHFRun(
        qd_cfg,
        domain=domain,
        teacher=teacher,
        log=writer.add_scalar,
        log_image=log_image,
    )
    final = qd.run()
    writer.flush()
    writer.close()
    (run_dir / "history.json").write_text(json.dumps(qd.history, indent=2))
    (run_dir / "final_metrics.json").write_text(json.dumps(final, indent=2))
    print(
        f"[qd {cfg.domain.name} {cfg.method} s{cfg.seed}] QD score "
        f"{final['qd_score_all']:.2f} / coverage "
        f"{final['coverage_all']:.2f}% (all solutions), {final['qd_score_archive']:.2f} / "
        f"{final['coverage_archive']:.2f}% (archive), {final['seconds']:.1f}s",
        flush=True,
    )
    return final


@hydra.main(config_path="../configs/qd", config_name="qd", version_base="1.3")
def _main(cfg: DictConfig) -> float:
    final = run(cfg, HydraConfig.get().runtime.output_dir)
    return float(final["qd_score_all"])


def main() -> None:
    """Console entry point ``pbrl-qd``."""
    _main()


if __name__ == "__main__":
    main()
