"""``pbrl-qd``: one quality-diversity run (QDHF and its baselines) with TensorBoard logs.

``pbrl-qd method=qdhf seed=1`` composes ``pbrl/configs/qd/qd.yaml`` (``domain=arm`` or
``domain=maze``, ``method=qdhf|qdhf_base|gt|aurora_pca[_pre]|aurora_ae[_pre]``); the run
directory gets
the resolved ``config.yaml``, TensorBoard scalars (``qd/...``) and archive heatmaps (images),
``history.json`` (metrics every ``log_every`` iterations) and ``final_metrics.json``.
"""

from __future__ import annotations

import json
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
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    domain = make_domain(cfg.domain)
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
    )
    teacher = default_teacher(
        seed=int(cfg.seed) + 1,
        beta=float(cfg.teacher.beta),
        eps_mistake=float(cfg.teacher.eps_mistake),
    )
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
