"""``python -m pbrl.visual.train``: SAC or PPO on RAPL's visual reward, with TensorBoard logs.

``python -m pbrl.visual.train [reward=rapl|rlhf|true_reward] [agent.algo=sac|ppo] [env.name=...]
[encoder.path=...] [encoder.aligned=false] [experiment=fast] ...`` composes
``pbrl/configs/rapl/rl.yaml``; the run directory gets the resolved config, TensorBoard
scalars (``eval/``, ``train/``, ``rapl/`` or ``rlhf/``, ``align/``, ``losses/``), the aligned
encoder (``encoder/``) or the RLHF reward model (``reward_model/``), the demos (``demos.npz``),
a checkpoint and ``final_metrics.json``. ``resume=true hydra.run.dir=<run dir>`` continues a
run from its checkpoint. ``align.teacher=human`` asks people on the labelling page instead of
the simulated end-user (:mod:`pbrl.visual.human`). See :mod:`pbrl.visual.rl`.
"""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from pbrl.visual.rl import train_on_rapl_reward


@hydra.main(config_path="../configs/rapl", config_name="rl", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns the final evaluation success rate."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    plain.pop("hydra", None)
    final = train_on_rapl_reward(
        plain, HydraConfig.get().runtime.output_dir, resume=bool(cfg.resume)
    )
    return float(final.get("eval/success_rate", float("nan")))


if __name__ == "__main__":
    main()
