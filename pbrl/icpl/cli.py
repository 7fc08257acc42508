"""``pbrl-icpl``: one ICPL run (LLM-written rewards ranked by a teacher) with TensorBoard logs.

``pbrl-icpl env=ant task="make the ant run forward as fast as possible" llm.model=gpt-4o``
composes ``pbrl/configs/icpl/icpl.yaml``. The run directory gets the resolved
``config.yaml``, ``rounds/r<i>/`` (prompt, candidates, traces, clips), ``llm_cache/``,
TensorBoard events and ``summary.json``. Running again with ``hydra.run.dir=<that dir>``
resumes it: finished rounds and trainings are read back and LLM answers come from the cache.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from pbrl.icpl.llm import LLMError
from pbrl.icpl.loop import ICPLError, main_print, run


@hydra.main(config_path="../configs/icpl", config_name="icpl", version_base="1.3")
def _main(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    print(f"run directory: {run_dir}  (tensorboard --logdir {run_dir})", flush=True)
    try:
        summary = run(cfg, run_dir)
    except (ICPLError, LLMError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    main_print(summary)
    best = summary["best_task_score"]
    return float("nan") if best is None else float(best)


def main() -> None:
    """Console entry point ``pbrl-icpl``."""
    _main()


if __name__ == "__main__":
    main()
