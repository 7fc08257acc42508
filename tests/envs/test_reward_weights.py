"""Reward engineering through ``reward_weights`` (pbrl/envs/base.py): the agent's reward is a
user-chosen weighted sum of the env's reward factors, while everything that scores the task
(``info["true_reward"]``, the factors, the episode stats, the vector env's columns and
:func:`pbrl.metrics.evaluate`) stays on the true reward.

Each weighted env is checked against an unweighted twin driven by the same seed and actions.
"""

from __future__ import annotations

import numpy as np
import pytest

from pbrl import envs
from pbrl.metrics import evaluate

# Pendulum: the HERON paper's beta = 0.5 heuristic, r = -(z1 + beta z2 + beta^2 z3), plus a
# bias so the constant term is covered. HalfCheetah: weights that differ from the true sum.
WEIGHTS = {
    "pendulum": {"theta_sq": -1.0, "theta_dot_sq": -0.5, "torque_sq": -0.25, "bias": 0.3},
    "halfcheetah": {"reward_forward": 2.0, "reward_ctrl": 5.0},
}
STEPS = {"pendulum": 50, "halfcheetah": 40}  # episode length: several episodes per test


def _weighted(weights: dict[str, float], factors: dict[str, float]) -> float:
    """The documented function: sum_k w_k factor_k + bias (absent factors weigh 0)."""
    return weights.get("bias", 0.0) + sum(w * factors[k] for k, w in weights.items() if k != "bias")


def _actions(env, n: int, seed: int) -> np.ndarray:
    space = env.action_space
    rng = np.random.default_rng(seed)
    # Beyond the bounds on purpose (the pendulum's factors use the clipped torque).
    return rng.uniform(1.5 * space.low, 1.5 * space.high, (n, *space.shape)).astype(np.float32)


@pytest.mark.parametrize("name", sorted(WEIGHTS))
def test_weighted_reward_is_the_sum_of_factors_and_true_reward_is_unchanged(name: str) -> None:
    w, n_ep = WEIGHTS[name], STEPS[name]
    env = envs.make_env(name, seed=0, max_episode_steps=n_ep, reward_weights=w)
    ref = envs.make_env(name, seed=0, max_episode_steps=n_ep)
    assert env.reward_weights == w and ref.reward_weights is None
    env.reset(seed=5)
    ref.reset(seed=5)
    episodes, differs, ret = 0, 0, 0.0
    for a in _actions(env, 3 * n_ep + 7, 1):
        obs, r, term, trunc, info = env.step(a)
        ref_obs, ref_r, ref_term, ref_trunc, ref_info = ref.step(a)
        np.testing.assert_array_equal(obs, ref_obs)
        assert (term, trunc) == (ref_term, ref_trunc)
        assert info["reward_factors"] == ref_info["reward_factors"]
        assert info["true_reward"] == ref_info["true_reward"] == ref_r
        assert r == pytest.approx(_weighted(w, info["reward_factors"]), rel=1e-12, abs=1e-12)
        differs += abs(r - ref_r) > 1e-6
        ret += ref_r
        if term or trunc:
            assert info["episode"] == ref_info["episode"]
            assert info["episode"]["r"] == pytest.approx(ret, rel=1e-12)
            episodes, ret = episodes + 1, 0.0
            env.reset()
            ref.reset()
    assert episodes == 3
    assert differs > n_ep  # the weights really change the returned reward


def test_vector_env_returns_the_weighted_reward_and_keeps_true_columns() -> None:
    w = WEIGHTS["pendulum"]
    venv = envs.make("pendulum", 4, seed=2, max_episode_steps=30, reward_weights=w)
    ref = envs.make("pendulum", 4, seed=2, max_episode_steps=30)
    assert venv._columns is not None  # the sub-envs write the contract keys as columns
    rng = np.random.default_rng(3)
    episodes = 0
    for _ in range(75):
        a = rng.uniform(-3.0, 3.0, (4, 1)).astype(np.float32)
        obs, r, term, trunc, info = venv.step(a)
        ref_obs, ref_r, _, _, ref_info = ref.step(a)
        np.testing.assert_array_equal(obs, ref_obs)
        stepped = info.get("_true_reward", np.zeros(4, bool))
        np.testing.assert_array_equal(stepped, ref_info.get("_true_reward", np.zeros(4, bool)))
        if stepped.any():
            np.testing.assert_array_equal(info["true_reward"], ref_info["true_reward"])
            np.testing.assert_array_equal(info["true_reward"][stepped], ref_r[stepped])
            f = info["reward_factors"]
            for k in ("theta_sq", "theta_dot_sq", "torque_sq"):
                np.testing.assert_array_equal(f[k], ref_info["reward_factors"][k])
            expected = np.array([_weighted(w, {k: f[k][i] for k in f}) for i in range(4)])
            np.testing.assert_allclose(r[stepped], expected[stepped], rtol=1e-6)
            assert np.all(np.abs(r[stepped] - ref_r[stepped]) > 0)
        if "episode" in info:
            np.testing.assert_array_equal(info["_episode"], ref_info["_episode"])
            np.testing.assert_array_equal(info["episode"]["r"], ref_info["episode"]["r"])
            episodes += int(info["_episode"].sum())
    assert episodes == 8  # two 30-step episodes per env (plus NEXT_STEP reset steps)
    venv.close()
    ref.close()


def test_unknown_or_bad_weights_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown factor name.*'theta'.*theta_sq, theta_dot_sq"):
        envs.make_env("pendulum", reward_weights={"theta": -1.0})
    with pytest.raises(ValueError, match="reward_forward, reward_ctrl"):
        envs.make("halfcheetah", 2, reward_weights={"forward": 1.0})
    with pytest.raises(ValueError, match="must be a number"):
        envs.make_env("pendulum", reward_weights={"theta_sq": "minus one"})
    with pytest.raises(ValueError, match="must be finite"):
        envs.make_env("pendulum", reward_weights={"theta_sq": float("nan")})
    with pytest.raises(ValueError, match="names no reward factor"):
        envs.make_env("pendulum", reward_weights={"bias": 1.0})
    env = envs.make_env("pendulum", seed=0, reward_weights={"theta_sq": -1.0})
    env.set_reward_weights(None)  # back to the true reward
    _, r, _, _, info = env.step(np.zeros(1, np.float32))
    assert env.reward_weights is None and r == info["true_reward"]


def test_evaluate_scores_a_weighted_env_on_the_true_reward() -> None:
    def policy(obs: np.ndarray) -> np.ndarray:
        return np.clip(-2.0 * obs[:, 1:2] - 0.5 * obs[:, 2:3], -2.0, 2.0)

    w = WEIGHTS["pendulum"]
    kw = {"max_episode_steps": 60}
    weighted = [envs.make_env("pendulum", reward_weights=w, **kw) for _ in range(3)]
    plain = [envs.make_env("pendulum", **kw) for _ in range(3)]
    res_w = evaluate(weighted, policy, None, seed=11)
    res_p = evaluate(plain, policy, None, seed=11)
    np.testing.assert_array_equal(res_w.true_return, res_p.true_return)
    np.testing.assert_array_equal(res_w.length, res_p.length)

    # Without weights the true return is the sum of the returned rewards, bit for bit; with
    # them the returned rewards sum to something else.
    for env, want_true in ((plain[0], True), (weighted[0], False)):
        obs, _ = env.reset(seed=11)
        total, done = 0.0, False
        while not done:
            obs, r, term, trunc, _ = env.step(policy(obs[None])[0])
            total += r
            done = term or trunc
        assert bool(total == res_p.true_return[0]) is want_true


def test_pbrl_train_trains_sac_on_the_weighted_reward(tmp_path) -> None:
    """``+env.kwargs.reward_weights`` reaches the loop's envs: SAC's replay buffer holds the
    weighted reward while the stored true reward and the evaluation stay the task's."""
    from hydra import compose, initialize_config_module

    from pbrl.loops.online import PreferenceLoop

    over = [
        "env=pendulum",
        "agent=pebble",
        "reward=true_reward",
        "log.progress=none",
        "num_train_steps=300",
        "agent.num_seed_steps=250",
        "agent.batch_size=32",
        "agent.net_arch=[32,32]",
        "eval.every=300",
        "eval.episodes=1",
        "log.every=300",
        "log.video_every=0",
        "checkpoint.every=0",
        "+env.kwargs.max_episode_steps=100",
        "+env.kwargs.reward_weights={theta_sq:-1,theta_dot_sq:-0.5,torque_sq:-0.25}",
    ]
    with initialize_config_module("pbrl.configs", version_base="1.3"):
        cfg = compose("train", overrides=over)
    loop = PreferenceLoop(cfg, tmp_path / "run")
    w = {"theta_sq": -1.0, "theta_dot_sq": -0.5, "torque_sq": -0.25}
    assert all(e.reward_weights == w for e in [*loop.train_envs, *loop.eval_envs])
    final = loop.run()
    buf = loop.buffer
    n = buf.size()
    assert n == 300
    f = buf.factors[:n, 0].astype(np.float64)  # (n, 3) in factor_names order
    names = buf.factor_names
    weighted = sum(w[k] * f[:, j] for j, k in enumerate(names))
    true = -(f[:, 0] + 0.1 * f[:, 1] + 0.001 * f[:, 2])
    np.testing.assert_allclose(buf.rewards[:n, 0], weighted, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(buf.true_reward[:n, 0], true, rtol=1e-5, atol=1e-5)
    assert np.abs(weighted - true).max() > 0.1
    # One 100-step evaluation episode on the true reward: within the true reward's range.
    assert -100 * (np.pi**2 + 0.1 * 64 + 0.004) <= final["eval/true_return"] <= 0.0
