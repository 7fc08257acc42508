"""benchmarks/icpl_bench.py's reference arm: the env's reward written as a reward program."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

from pbrl.icpl.sandbox import RewardSandbox, check_source
from pbrl.icpl.train import random_transitions

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _bench():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("_bench_icpl_bench", BENCH / "icpl_bench.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


def test_halfcheetah_reference_program_tracks_the_env_reward_and_passes_the_sandbox():
    bench = _bench()
    source = bench.REFERENCE_PROGRAMS["halfcheetah"]
    check_source(source)  # the static rules an LLM program meets
    obs, act, nxt = random_transitions("halfcheetah", {}, 200, seed=5)
    with RewardSandbox(source) as sb:
        out = sb.probe(obs[:64], act[:64], nxt[:64])
    assert out.total.shape == (64,)
    assert set(out.components) == {"forward_velocity", "ctrl_cost"}
    # obs[:, 8] is the torso's x velocity: a wrong index would not track the env's reward
    agree = bench.reference_agreement("halfcheetah", source, steps=600)
    assert agree["pearson"] > 0.9, agree
    assert agree["mean_abs_diff"] < 0.5 * agree["mean_abs_true"], agree
    np.testing.assert_allclose(
        out.components["ctrl_cost"], -0.1 * np.sum(act[:64] ** 2, axis=-1), rtol=1e-5, atol=1e-6
    )
