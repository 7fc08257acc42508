"""The classic-control suite (pbrl/envs/classic.py) keeps the PbrlEnv contract.

The pendulum's factors and reward are checked against an independent gymnasium Pendulum-v1
driven by the same seed and actions, its re-rendered frames against that env's live
``rgb_array`` frames, and its checkpoints by bit-exact continuation.
"""

from __future__ import annotations

import sys

import gymnasium as gym
import numpy as np
import pytest

from pbrl import envs
from pbrl.envs.base import PbrlEnv
from pbrl.envs.classic import PENDULUM_FACTORS, PendulumEnv, angle_normalize


def _actions(n: int, seed: int) -> np.ndarray:
    # Beyond the [-2, 2] torque limit on purpose: the factors must use the clipped torque.
    return np.random.default_rng(seed).uniform(-3.0, 3.0, (n, 1)).astype(np.float32)


def test_pendulum_is_registered_in_the_classic_suite() -> None:
    assert envs.names("classic") == ["pendulum"]
    env = envs.make_env("pendulum", seed=0)
    assert isinstance(env, PbrlEnv) and env.factor_names == PENDULUM_FACTORS
    assert env.observation_space.shape == (3,) and env.action_space.shape == (1,)
    assert env.max_episode_steps == 200 and env.state_dim == 3


def test_factors_and_reward_match_an_independent_gymnasium_pendulum() -> None:
    env = envs.make_env("pendulum")
    ref = gym.make("Pendulum-v1")
    obs, info = env.reset(seed=3)
    ref_obs, _ = ref.reset(seed=3)
    np.testing.assert_array_equal(obs, ref_obs)
    for a in _actions(60, 0):
        th, thdot = ref.unwrapped.state
        u = float(np.clip(a[0], -2.0, 2.0))
        obs, r, term, trunc, info = env.step(a)
        ref_obs, ref_r, *_ = ref.step(a)
        np.testing.assert_array_equal(obs, ref_obs)
        assert r == info["true_reward"] == pytest.approx(float(ref_r), abs=0.0)
        f = info["reward_factors"]
        assert f["theta_sq"] == pytest.approx(((th + np.pi) % (2 * np.pi) - np.pi) ** 2)
        assert 0.0 <= f["theta_sq"] <= np.pi**2
        assert f["theta_dot_sq"] == pytest.approx(thdot**2)
        assert f["torque_sq"] == pytest.approx(u * u)
        # gymnasium computes 0.001 u^2 in float32 (NumPy 2 promotion), hence the tolerance.
        assert float(env.reward_from_factors(f)) == pytest.approx(r, abs=1e-6)
        expected = -(f["theta_sq"] + 0.1 * f["theta_dot_sq"] + 0.001 * f["torque_sq"])
        assert float(env.reward_from_factors(f)) == pytest.approx(expected, rel=1e-12)
    # Vectorised over arrays of factors.
    table = {k: np.full((2, 4), 1.0) for k in PENDULUM_FACTORS}
    np.testing.assert_allclose(env.reward_from_factors(table), np.full((2, 4), -1.101))


def test_angle_normalize_wraps_to_minus_pi_pi() -> None:
    x = np.array([0.0, np.pi / 2, 3 * np.pi / 2, -3 * np.pi / 2, 7.0])
    np.testing.assert_allclose(
        angle_normalize(x), [0.0, np.pi / 2, -np.pi / 2, np.pi / 2, 7.0 - 2 * np.pi]
    )


def test_episodes_truncate_and_report_the_true_return() -> None:
    env = envs.make_env("pendulum", seed=0, max_episode_steps=25)
    env.reset(seed=0)
    total, info, trunc = 0.0, {}, False
    for t, a in enumerate(_actions(25, 1)):
        _, r, term, trunc, info = env.step(a)
        total += r
        assert not term and (trunc == (t == 24))
    assert info["episode"] == {"r": pytest.approx(total), "l": 25}


def test_vector_env_carries_the_info_contract() -> None:
    venv = envs.make("pendulum", num_envs=2, seed=0)
    venv.reset(seed=0)
    _, r, _, _, info = venv.step(_actions(2, 2))
    np.testing.assert_array_equal(r, info["true_reward"])
    assert info["sim_state"].shape == (2, 3)
    assert set(PENDULUM_FACTORS) <= set(info["reward_factors"])
    venv.close()


def test_render_state_equals_gymnasium_frames_pixel_for_pixel() -> None:
    pytest.importorskip("pygame")
    env = envs.make_env("pendulum")
    ref = gym.make("Pendulum-v1", render_mode="rgb_array")
    _, info = env.reset(seed=7)
    ref.reset(seed=7)
    assert np.isnan(info["sim_state"][2])  # no torque yet: gymnasium draws no arrow
    np.testing.assert_array_equal(env.render_state(info["sim_state"], 500, 500), ref.render())
    frames = []
    for a in _actions(6, 3):
        live = ref.render()  # the state the next action is taken in
        ref.step(a)
        _, _, _, _, info = env.step(a)  # info["sim_state"]: that same pre-step state
        stored = env.render_state(info["sim_state"], 500, 500)
        assert stored.dtype == np.uint8 and stored.shape == (500, 500, 3)
        np.testing.assert_array_equal(stored, live)
        frames.append(stored)
    # The frames actually change (the arrow and the rod move), so equality is not vacuous.
    assert any(not np.array_equal(frames[0], f) for f in frames[1:])
    # Other sizes: drawn natively; non-square ones centre-cropped from a square canvas.
    small = env.render_state(info["sim_state"], 84, 84)
    assert small.shape == (84, 84, 3) and small.min() < 255
    assert env.render_state(info["sim_state"], 64, 48).shape == (48, 64, 3)
    with pytest.raises(ValueError, match="sim_state must have shape"):
        env.render_state(info["sim_state"][:2])
    env.close()
    ref.close()


def test_render_without_pygame_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pygame", None)  # import pygame -> ImportError
    env = envs.make_env("pendulum", seed=0)
    env.step(np.zeros(1, np.float32))  # stepping needs no pygame
    with pytest.raises(envs.MissingExtraError, match=r"pygame.*classic-control"):
        env.render_live()


def test_checkpoint_continues_bit_for_bit() -> None:
    env = PendulumEnv()
    env.reset(seed=11)
    for a in _actions(30, 4):
        env.step(a)
    snap = env.get_env_state()
    acts = _actions(200, 5)

    def roll() -> list:
        out = []
        for a in acts:
            obs, r, term, trunc, info = env.step(a)
            out.append((obs.copy(), r, trunc))
            if term or trunc:
                obs, _ = env.reset()  # the env's own RNG: restored by the snapshot too
                out.append((obs.copy(), 0.0, False))
        return out

    first = roll()
    env.set_env_state(snap)
    second = roll()
    assert len(first) == len(second)
    for (o1, r1, t1), (o2, r2, t2) in zip(first, second, strict=True):
        np.testing.assert_array_equal(o1, o2)
        assert r1 == r2 and t1 == t2
