r"""Run ``pbrl-train`` jobs as Ray tasks, without Hydra's launcher plugins.

``hydra/launcher=ray`` (the ``hydra-ray-launcher`` plugin) is the first choice for sweeps; this
module is the plain-Ray path for what the plugin does not cover (parallel candidate training
for ICPL/C-MORL populations, clusters where the plugin's pins conflict): each job is one list of
``pbrl-train`` overrides, composed with Hydra's compose API inside a Ray worker and run with
:func:`pbrl.cli.run` in its own run directory.

    python -m pbrl.gpu.ray_sweep --jobs 2 --gpus-per-job 1 -- env=gpu_hopper agent=gpu_ppo \\
        seed=0,1

A ``key=a,b`` override expands into one job per value (the cartesian product over all such
keys), as Hydra's basic sweeper does.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["expand_overrides", "run_job", "run_sweep"]


def _ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise ImportError(
            "the Ray sweep path needs ray, which is not installed; install it with "
            "`pip install 'pbrl[ray]'`"
        ) from err
    return ray


def expand_overrides(overrides: Sequence[str]) -> list[list[str]]:
    """The cartesian product of ``key=a,b`` overrides (values without commas stay as they are)."""
    axes: list[list[str]] = []
    for o in overrides:
        key, sep, value = o.partition("=")
        if sep and "," in value and not value.startswith(("[", "{", "'", '"')):
            axes.append([f"{key}={v}" for v in value.split(",")])
        else:
            axes.append([o])
    return [list(c) for c in itertools.product(*axes)]


def run_job(overrides: Sequence[str], run_dir: str) -> dict[str, float]:
    """Compose ``train.yaml`` with ``overrides`` and run one job in ``run_dir`` (any process)."""
    import yaml
    from hydra import compose, initialize_config_module

    from pbrl.cli import OVERRIDES, run

    with initialize_config_module(config_module="pbrl.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    (path / OVERRIDES).write_text(yaml.safe_dump(list(overrides)))
    return run(cfg, path)


def run_sweep(
    jobs: Sequence[Sequence[str]],
    sweep_dir: str | Path,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    address: str | None = None,
) -> list[dict[str, float]]:
    """Run each override list as a Ray task; returns each job's final scalars, in order.

    Args:
        jobs: one list of ``pbrl-train`` overrides per job.
        sweep_dir: job ``i`` writes into ``sweep_dir/i``.
        num_cpus: CPUs Ray reserves per job.
        num_gpus: GPUs Ray reserves per job (1: one GPU per job; fractions share a GPU).
        address: a running cluster (``ray start --head``; ``"auto"`` finds it); ``None``
            starts a local instance when Ray is not initialised yet.
    """
    ray = _ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=True)
    remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(run_job)
    sweep_dir = Path(sweep_dir).resolve()
    refs = [remote.remote(list(j), str(sweep_dir / str(i))) for i, j in enumerate(jobs)]
    return list(ray.get(refs))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m pbrl.gpu.ray_sweep [options] -- overrides...``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep-dir", default="runs/ray-sweep")
    p.add_argument("--cpus-per-job", type=float, default=1.0)
    p.add_argument("--gpus-per-job", type=float, default=0.0)
    p.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    jobs = expand_overrides(args.overrides)
    results = run_sweep(jobs, args.sweep_dir, args.cpus_per_job, args.gpus_per_job, args.address)
    for job, res in zip(jobs, results, strict=True):
        print(" ".join(job), "->", res.get("eval/true_return", float("nan")))


if __name__ == "__main__":
    main(sys.argv[1:])
