"""PbrlPPO's fast update must give SB3's PPO update: same parameters, optimiser state and logs.

Two PbrlPPO models are built from the same seed on the same real env; both collect the same
rollouts, one is updated by SB3's own ``train()`` and the other by the fast path (the
hand-written gradient for Tanh/ReLU MLPs, autograd for other activations).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stable_baselines3.common.logger import configure

from pbrl import envs as pbrl_envs
from pbrl.agents.sb3 import (
    PbrlPPO,
    _ManualMlp,
    fast_update_unsupported,
    linear_schedule,
    make_vec_env,
)

N_ENVS, N_STEPS, ITERATIONS = 2, 64, 2


def _trained(
    fast: bool,
    use_sde: bool,
    target_kl: float | None,
    ent_coef: float,
    activation: type[torch.nn.Module] = torch.nn.Tanh,
    clip_range_vf: float | None = None,
) -> PbrlPPO:
    venv = make_vec_env([lambda i=i: pbrl_envs.make_env("pendulum", seed=i) for i in range(N_ENVS)])
    model = PbrlPPO(
        "MlpPolicy",
        venv,
        learning_rate=3e-4,
        n_steps=N_STEPS,
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
            "optimizer_kwargs": {"fused": True},
        },
        seed=3,
        device="cpu",
        fast_update=fast,
    )
    model.pbrl_total_timesteps = 10 * N_ENVS * N_STEPS
    model.set_logger(configure(None, []))
    model.learn(ITERATIONS * N_ENVS * N_STEPS)
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
