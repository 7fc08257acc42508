"""PbrlSAC's target critic moves every ``target_update_interval`` gradient steps of the run."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch

from pbrl.agents.sb3 import PbrlSAC


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
