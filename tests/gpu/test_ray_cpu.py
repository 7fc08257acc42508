"""Sweeps on a local Ray instance: the plain-Ray path and Hydra's Ray launcher."""

import json
import os
import subprocess
import sys

import pytest

from pbrl.gpu.ray_sweep import expand_overrides


def _needs_ray_and_warp():
    """The sweeps need ray and the Warp envs; ``expand_overrides`` (pure Python) needs neither."""
    ray = pytest.importorskip("ray", reason="needs ray: pip install 'pbrl[ray]'")
    pytest.importorskip(
        "mujoco_warp",
        reason="needs warp-lang and mujoco-warp: pip install 'pbrl[gpu-cpu]' (CUDA: 'pbrl[gpu]')",
    )
    return ray


# A job of a few seconds: the true reward (no teacher), 2 worlds, 32 steps.
TINY = [
    "env=gpu_halfcheetah",
    "agent=gpu_ppo",
    "reward=true_reward",
    "device=cpu",
    "experiment=fast",
    "agent.num_envs=2",
    "agent.n_steps=16",
    "agent.batch_size=16",
    "num_train_steps=32",
    "env.kwargs.max_episode_steps=10",
    "eval.episodes=1",
    "log.video_every=0",
    "checkpoint.every=0",
]


def test_expand_overrides() -> None:
    jobs = expand_overrides(["a=1", "seed=0,1", "b=x,y"])
    assert jobs == [
        ["a=1", "seed=0", "b=x"],
        ["a=1", "seed=0", "b=y"],
        ["a=1", "seed=1", "b=x"],
        ["a=1", "seed=1", "b=y"],
    ]
    assert expand_overrides(["net=[1,2]"]) == [["net=[1,2]"]]


@pytest.mark.slow
def test_two_job_sweep_on_local_ray(tmp_path) -> None:
    from pbrl.gpu.ray_sweep import run_sweep

    ray = _needs_ray_and_warp()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results = run_sweep(expand_overrides([*TINY, "seed=0,1"]), tmp_path, num_cpus=1)
    finally:
        ray.shutdown()
    assert len(results) == 2
    for i, res in enumerate(results):
        assert "eval/true_return" in res
        saved = json.loads((tmp_path / str(i) / "final_metrics.json").read_text())
        assert saved["eval/true_return"] == res["eval/true_return"]
    assert (tmp_path / "0" / "config.yaml").read_text() != (
        tmp_path / "1" / "config.yaml"
    ).read_text()


@pytest.mark.slow
def test_hydra_ray_launcher_sweep(tmp_path) -> None:
    _needs_ray_and_warp()
    pytest.importorskip(
        "hydra_plugins.hydra_ray_launcher",
        reason="needs hydra-ray-launcher: pip install 'pbrl[ray]'",
    )
    cmd = [
        sys.executable,
        "-c",
        "from pbrl.cli import train; train()",
        "--multirun",
        *TINY,
        "seed=0,1",
        "hydra/launcher=pbrl_ray",
        "hydra.launcher.ray.init.num_cpus=2",
        f"hydra.sweep.dir={tmp_path}",
    ]
    out = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    runs = sorted(p.parent for p in tmp_path.glob("*/final_metrics.json"))
    assert [p.name for p in runs] == ["0-s0", "1-s1"]
