"""The morl-baselines PGMORL arm of benchmarks/cmorl_front.py: its pieces that need no training."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


class _Vec:
    def __init__(self, envs):
        self.envs = envs


def test_pooled_stats_equal_the_stats_of_all_observations():
    morlb = _load("morlb_pgmorl")
    rng = np.random.default_rng(0)
    data = [rng.normal(i, 1 + i, size=(50 * (i + 1), 3)) for i in range(3)]
    envs = []
    for d in data:
        env = gym.wrappers.NormalizeObservation(gym.make("Pendulum-v1"))
        env.obs_rms.mean, env.obs_rms.var, env.obs_rms.count = d.mean(0), d.var(0), len(d)
        envs.append(gym.wrappers.ClipAction(env))  # found below other wrappers too
    mu, var = morlb.pooled_stats(_Vec(envs))
    every = np.concatenate(data)
    np.testing.assert_allclose(mu, every.mean(0), rtol=1e-10)
    np.testing.assert_allclose(var, every.var(0), rtol=1e-10)
    with pytest.raises(RuntimeError, match="NormalizeObservation"):
        morlb.pooled_stats(_Vec([gym.make("Pendulum-v1")]))


def test_frozen_norm_policy_normalises_clips_and_takes_the_mean():
    morlb = _load("morlb_pgmorl")
    pol = morlb.FrozenNormPolicy(torch.nn.Identity(), np.array([1.0, -2.0]), np.array([4.0, 0.0]))
    act = pol.act(np.array([[3.0, -2.0], [1.0, 5.0]]))
    np.testing.assert_allclose(act, [[1.0, 0.0], [0.0, 10.0]], atol=1e-5)  # 7 / 1e-4 -> clip 10
    assert act.dtype == np.float32
    with pytest.raises(ValueError):
        pol.act(np.zeros((1, 2)), deterministic=False)


def test_missing_morl_baselines_names_the_install():
    if importlib.util.find_spec("morl_baselines") is not None:
        pytest.skip("morl_baselines is importable here; the error path needs a python without it")
    front = _load("cmorl_front")
    with pytest.raises(SystemExit, match="pip install morl-baselines"):
        front.check_morlb(sys.executable)
