"""PbrlSAC: the target critic moves every ``target_update_interval`` gradient steps of the run;
the actor's log-std is B-Pref's tanh-squashed one when ``log_std_bounds`` is set."""

from __future__ import annotations

import math

import gymnasium as gym
import pytest
import torch
from stable_baselines3.sac.policies import Actor

from pbrl.agents.sb3 import BoundedLogStdActor, PbrlSAC


@pytest.mark.parametrize(("interval", "gradient_steps"), [(2, 1), (3, 2), (1, 1)])
def test_target_update_interval_counts_the_runs_gradient_steps(
    interval: int, gradient_steps: int
) -> None:
    model = PbrlSAC(
        "MlpPolicy", gym.make("Pendulum-v1"), learning_starts=0, batch_size=16,
        target_update_interval=interval, gradient_steps=gradient_steps,
        policy_kwargs={"net_arch": [16, 16]}, seed=0, device="cpu",
    )  # fmt: skip
    model.learn(64)  # fills the buffer (and trains)
    moved = []
    for _ in range(12):
        before = [p.detach().clone() for p in model.critic_target.parameters()]
        n0 = model._n_updates
        model.train(gradient_steps, batch_size=16)
        changed = any(
            not torch.equal(a, b)
            for a, b in zip(before, model.critic_target.parameters(), strict=True)
        )
        # SB3 (interval > 1, one step per call) would move it on every call.
        want = any((n0 + j) % interval == 0 for j in range(gradient_steps))
        moved.append(changed == want)
    assert all(moved)
    assert model.tau == 0.005 and model.target_update_interval == interval


def _sac(log_std_bounds: object) -> PbrlSAC:
    return PbrlSAC(
        "MlpPolicy", gym.make("Pendulum-v1"), learning_starts=0, batch_size=16,
        policy_kwargs={"net_arch": [16, 16], "log_std_bounds": log_std_bounds},
        seed=0, device="cpu",
    )  # fmt: skip


def test_bounded_actor_squashes_the_log_std_into_b_prefs_range() -> None:
    model = _sac([-5, 2])
    actor = model.actor
    assert isinstance(actor, BoundedLogStdActor)
    with torch.no_grad():  # push the raw log-std far out both ways
        actor.log_std.weight.zero_()
        obs = torch.zeros(3, 3)
        for raw, want in [(-50.0, -5.0), (0.0, -1.5), (50.0, 2.0), (0.3, None)]:
            actor.log_std.bias.fill_(raw)
            _mean, log_std, _ = actor.get_action_dist_params(obs)
            want = -5.0 + 3.5 * (math.tanh(raw) + 1.0) if want is None else want
            assert torch.allclose(log_std, torch.full_like(log_std, want), atol=1e-6)


def test_no_bounds_is_sb3s_actor_and_its_clamp() -> None:
    model = _sac(None)
    assert type(model.actor) is Actor
    with torch.no_grad():
        model.actor.log_std.weight.zero_()
        model.actor.log_std.bias.fill_(-50.0)
        _mean, log_std, _ = model.actor.get_action_dist_params(torch.zeros(2, 3))
    assert torch.all(log_std == -20.0)


def test_bounded_actor_saves_and_loads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = _sac([-5, 2])
    model.learn(32)
    model.save(tmp_path / "sac")
    loaded = PbrlSAC.load(tmp_path / "sac", device="cpu")
    assert isinstance(loaded.actor, BoundedLogStdActor)
    assert loaded.actor.log_std_bounds == (-5.0, 2.0)
    obs = torch.randn(4, 3)
    with torch.no_grad():
        a = model.actor.get_action_dist_params(obs)[1]
        b = loaded.actor.get_action_dist_params(obs)[1]
    assert torch.equal(a, b)


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="low < high"):
        _sac([2, -5])
