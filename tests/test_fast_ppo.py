"""PbrlPPO's fast paths must give SB3's PPO: same rollouts, parameters, optimiser state and logs.

Two PbrlPPO models are built from the same seed on the same real env; both collect the same
rollouts, one is updated by SB3's own ``train()`` and the other by the fast path (the
hand-written gradient for Tanh/ReLU MLPs, autograd for other activations). The fast rollout
(:meth:`PbrlPPO.collect_rollouts`) is checked against SB3's ``collect_rollouts`` the same way,
through VecNormalize and time-limit truncations; the numpy tanh both use against ``torch.tanh``;
the vector env's info copy against ``copy.deepcopy``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import VecNormalize

from pbrl import envs as pbrl_envs
from pbrl.agents.sb3 import (
    PbrlDummyVecEnv,
    PbrlPPO,
    _ManualMlp,
    copy_info,
    fast_rollout_unsupported,
    fast_update_unsupported,
    linear_schedule,
    load_sb3_state,
    make_vec_env,
    sb3_state,
    tanh_,
)

N_ENVS, N_STEPS, ITERATIONS = 2, 64, 2


def _trained(
    fast: bool,
    use_sde: bool,
    target_kl: float | None,
    ent_coef: float,
    activation: type[torch.nn.Module] = torch.nn.Tanh,
    clip_range_vf: float | None = None,
    fast_rollout: bool | None = None,
    n_steps: int = N_STEPS,
    iterations: int = ITERATIONS,
    normalize: bool = False,
    optimizer_kwargs: dict | None = None,
) -> PbrlPPO:
    venv = make_vec_env([lambda i=i: pbrl_envs.make_env("pendulum", seed=i) for i in range(N_ENVS)])
    model = PbrlPPO(
        "MlpPolicy",
        VecNormalize(venv, norm_obs=True, norm_reward=False) if normalize else venv,
        learning_rate=3e-4,
        n_steps=n_steps,
        batch_size=32,
        n_epochs=4,
        gamma=0.99,
        gae_lambda=0.92,
        ent_coef=ent_coef,
        clip_range=linear_schedule(0.4),
        use_sde=use_sde,
        sde_sample_freq=4,
        target_kl=target_kl,
        clip_range_vf=clip_range_vf,
        policy_kwargs={
            "net_arch": {"pi": [32, 32], "vf": [32, 32]},
            "activation_fn": activation,
            "optimizer_kwargs": {"fused": True} if optimizer_kwargs is None else optimizer_kwargs,
        },
        seed=3,
        device="cpu",
        fast_update=fast,
        fast_rollout=fast_rollout,
    )
    model.pbrl_total_timesteps = 10 * N_ENVS * n_steps
    model.set_logger(configure(None, []))
    model.learn(iterations * N_ENVS * n_steps)
    return model


def _optimiser_tensors(model: PbrlPPO) -> list[torch.Tensor]:
    state = model.policy.optimizer.state_dict()["state"]
    return [t for k in sorted(state) for t in (state[k]["step"], *state[k].values())]


@pytest.mark.parametrize(
    ("use_sde", "target_kl", "ent_coef", "activation", "clip_range_vf"),
    [
        (True, None, 0.0, torch.nn.Tanh, None),  # PrefPPO's set-up
        (False, None, 0.01, torch.nn.Tanh, None),
        (True, 3e-4, 0.0, torch.nn.Tanh, None),  # KL early stop
        (False, 3e-5, 0.01, torch.nn.ReLU, 0.05),
        (True, None, 0.01, torch.nn.ELU, None),  # autograd path
        (False, 3e-5, 0.0, torch.nn.ELU, 0.05),  # autograd path, KL early stop
    ],
)
def test_fast_update_matches_sb3(
    use_sde: bool,
    target_kl: float | None,
    ent_coef: float,
    activation: type[torch.nn.Module],
    clip_range_vf: float | None,
) -> None:
    torch.set_num_threads(1)
    sb3 = _trained(False, use_sde, target_kl, ent_coef, activation, clip_range_vf)
    fast = _trained(True, use_sde, target_kl, ent_coef, activation, clip_range_vf)
    assert fast_update_unsupported(fast) is None
    manual = _ManualMlp.unsupported(fast.policy) is None
    assert manual == (activation is not torch.nn.ELU)

    # Same data: the second rollout comes from the first update's weights, so it agrees up to
    # that update's float rounding (every random draw is the same).
    for name in ("actions", "advantages", "log_probs"):
        np.testing.assert_allclose(
            getattr(fast.rollout_buffer, name),
            getattr(sb3.rollout_buffer, name),
            rtol=1e-5,
            atol=1e-5,
            err_msg=name,
        )
    assert fast._n_updates == sb3._n_updates
    if target_kl is not None:  # the KL stop fired (so the test covers it) at the same minibatch
        assert sb3._n_updates < ITERATIONS * sb3.n_epochs

    for p_fast, p_sb3 in zip(fast.policy.parameters(), sb3.policy.parameters(), strict=True):
        torch.testing.assert_close(p_fast, p_sb3, rtol=1e-5, atol=1e-6)
    for t_fast, t_sb3 in zip(_optimiser_tensors(fast), _optimiser_tensors(sb3), strict=True):
        torch.testing.assert_close(t_fast, t_sb3, rtol=1e-5, atol=1e-7)
    # The update did something (so equal parameters are not two untouched inits): Adam took
    # more steps than one rollout's minibatches.
    steps = {float(s["step"]) for s in sb3.policy.optimizer.state_dict()["state"].values()}
    assert min(steps) > N_ENVS * N_STEPS / 32

    logged_sb3 = {k: v for k, v in sb3.logger.name_to_value.items() if k.startswith("train/")}
    logged_fast = {k: v for k, v in fast.logger.name_to_value.items() if k.startswith("train/")}
    assert logged_fast.keys() == logged_sb3.keys()
    for key, value in logged_sb3.items():
        assert logged_fast[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("optimizer_kwargs", [{"foreach": True}, {"fused": True, "amsgrad": True}])
def test_flat_adam_matches_per_parameter_adam(optimizer_kwargs: dict) -> None:
    """The flat-buffer Adam of the fast update, for torch's foreach and AMSGrad variants too."""
    torch.set_num_threads(1)
    kw = dict(target_kl=None, ent_coef=0.0, optimizer_kwargs=optimizer_kwargs)
    sb3 = _trained(False, True, **kw)  # type: ignore[arg-type]
    fast = _trained(True, True, **kw)  # type: ignore[arg-type]
    for p_fast, p_sb3 in zip(fast.policy.parameters(), sb3.policy.parameters(), strict=True):
        torch.testing.assert_close(p_fast, p_sb3, rtol=1e-5, atol=1e-6)
    for t_fast, t_sb3 in zip(_optimiser_tensors(fast), _optimiser_tensors(sb3), strict=True):
        torch.testing.assert_close(t_fast, t_sb3, rtol=1e-5, atol=1e-7)
    # The parameters and Adam's moments now live in one buffer each (what makes it one call).
    params = list(fast.policy.parameters())
    assert len({p.untyped_storage().data_ptr() for p in params}) == 1
    state = fast.policy.optimizer.state
    assert len({state[p]["exp_avg"].untyped_storage().data_ptr() for p in params}) == 1
    # A checkpoint round trip through SB3's own save/load gives the same model.
    restored = _trained(True, True, iterations=0, **kw)  # type: ignore[arg-type]
    load_sb3_state(restored, sb3_state(fast))
    for p_back, p_fast in zip(restored.policy.parameters(), params, strict=True):
        torch.testing.assert_close(p_back, p_fast, rtol=0, atol=0)
    for t_back, t_fast in zip(_optimiser_tensors(restored), _optimiser_tensors(fast), strict=True):
        torch.testing.assert_close(t_back, t_fast, rtol=0, atol=0)


def test_unsupported_setups_fall_back_to_sb3() -> None:
    venv = make_vec_env([lambda: pbrl_envs.make_env("pendulum", seed=0)])
    model = PbrlPPO("MlpPolicy", venv, n_steps=16, batch_size=16, seed=0, use_sde=True)
    assert fast_update_unsupported(model) is None
    squashed = PbrlPPO(
        "MlpPolicy",
        venv,
        n_steps=16,
        batch_size=16,
        seed=0,
        use_sde=True,
        policy_kwargs={"squash_output": True},
    )
    assert "squash" in str(fast_update_unsupported(squashed))


@pytest.mark.parametrize(
    ("use_sde", "activation", "iterations", "tol"),
    [
        (True, torch.nn.ReLU, 2, 1e-6),  # no tanh: SB3's numbers up to batching of bootstraps
        (False, torch.nn.ReLU, 2, 1e-6),
        (True, torch.nn.Tanh, 1, 1e-4),  # PrefPPO's set-up: 1-ulp tanh differences, amplified
        (False, torch.nn.Tanh, 1, 1e-4),  # by the pendulum's dynamics along the trajectory
    ],
)
def test_fast_rollout_matches_sb3(
    use_sde: bool, activation: type[torch.nn.Module], iterations: int, tol: float
) -> None:
    """Rollouts of 300 steps per env through VecNormalize (pendulum truncates at 200)."""
    torch.set_num_threads(1)
    kw = dict(
        target_kl=None,
        ent_coef=0.0,
        activation=activation,
        n_steps=300,
        iterations=iterations,
        normalize=True,
    )
    sb3 = _trained(False, use_sde, fast_rollout=False, **kw)  # type: ignore[arg-type]
    rng_sb3 = (torch.get_rng_state(), np.random.get_state()[1])
    fast = _trained(False, use_sde, fast_rollout=True, **kw)  # type: ignore[arg-type]
    rng_fast = (torch.get_rng_state(), np.random.get_state()[1])
    assert fast_rollout_unsupported(fast) is None
    assert fast_rollout_unsupported(sb3) is None and not sb3.fast_rollout
    # Same random draws: both runs leave torch's and numpy's generators in the same state.
    assert torch.equal(rng_fast[0], rng_sb3[0])
    np.testing.assert_array_equal(rng_fast[1], rng_sb3[1])
    # The rollout crossed episode ends, so truncation bootstrapping was exercised.
    assert fast.rollout_buffer.episode_starts.sum() == sb3.rollout_buffer.episode_starts.sum() > 0
    for name in ("observations", "actions", "rewards", "values", "log_probs", "returns"):
        np.testing.assert_allclose(
            getattr(fast.rollout_buffer, name),
            getattr(sb3.rollout_buffer, name),
            rtol=tol,
            atol=tol,
            err_msg=name,
        )
    np.testing.assert_allclose(  # GAE sums the reward differences over 200-step episodes
        fast.rollout_buffer.advantages, sb3.rollout_buffer.advantages, rtol=tol, atol=10 * tol
    )
    assert fast.num_timesteps == sb3.num_timesteps
    assert [e["l"] for e in fast.ep_info_buffer] == [e["l"] for e in sb3.ep_info_buffer]
    np.testing.assert_allclose(fast._last_obs, sb3._last_obs, rtol=tol, atol=tol)


def _ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    def ordered(x: torch.Tensor) -> torch.Tensor:
        i = x.view(torch.int32).long()
        return torch.where(i < 0, -(i & 0x7FFFFFFF), i)

    return (ordered(a) - ordered(b)).abs()


def test_numpy_tanh_within_one_ulp_of_torch() -> None:
    x = torch.cat(
        [
            torch.linspace(-12.0, 12.0, 400_001),
            torch.randn(200_000) * 3,
            torch.randn(50_000) * 1e-4,
            torch.tensor([0.0, -0.0, 1e-30, -1e-30, 30.0, -30.0, float("inf"), -float("inf")]),
        ]
    )
    ours = tanh_(x.clone())
    exact = torch.tanh(x.double()).float()  # the correctly rounded value (up to double rounding)
    assert int(_ulp_distance(ours, torch.tanh(x)).max()) <= 1
    assert int(_ulp_distance(ours, exact).max()) <= 1
    assert torch.isnan(tanh_(torch.tensor([float("nan")]))).all()
    # Paths numpy does not take (non-contiguous, float64) are torch's own tanh.
    block = torch.randn(8, 6)
    expected = torch.tanh(block).t()
    assert torch.equal(tanh_(block.t()), expected)  # in place, on the strided view
    wide = torch.randn(8, 6, dtype=torch.float64)
    expected = torch.tanh(wide)
    assert torch.equal(tanh_(wide), expected)


def test_vec_env_infos_equal_deepcopy() -> None:
    venv = make_vec_env([lambda i=i: pbrl_envs.make_env("pendulum", seed=i) for i in range(2)])
    assert isinstance(venv, PbrlDummyVecEnv)
    venv.reset()
    for _ in range(200):  # up to the time limit: terminal observations in the last infos
        _, _, dones, infos = venv.step(np.full((2, 1), 0.5, np.float32))
        for fresh, kept in zip(infos, venv.buf_infos, strict=True):
            assert fresh.keys() == kept.keys()
            assert fresh is not kept and fresh["sim_state"] is not kept["sim_state"]
            np.testing.assert_array_equal(fresh["sim_state"], kept["sim_state"])
            assert fresh["reward_factors"] == kept["reward_factors"]
            assert fresh["reward_factors"] is not kept["reward_factors"]
    assert dones.all() and "terminal_observation" in infos[0]
    nested = {"a": [np.arange(3), (1.5, "x")], "b": {"c": np.float32(2)}, "d": object()}
    out = copy_info(nested)
    ref = copy.deepcopy(nested)
    assert out["a"][0] is not nested["a"][0] and out["a"][1] == ref["a"][1]
    assert out["b"] == ref["b"] and out["d"] is not nested["d"]


def test_linear_clip_schedule_stops_at_zero() -> None:
    """SB3 overshoots the run's steps by up to one rollout, so the last update's
    progress_remaining is slightly negative; the decayed clip range stays at 0 there."""
    clip = linear_schedule(0.2)
    assert clip(1.0) == pytest.approx(0.2) and clip(0.5) == pytest.approx(0.1)
    assert clip(1.0 - 1_001_472 / 1_000_000) == 0.0
