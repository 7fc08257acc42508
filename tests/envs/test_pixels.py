"""``obs="pixels"``: stacked channel-first frames rendered from the sim state, info kept."""

from __future__ import annotations

import numpy as np
import pytest

from pbrl import envs


@pytest.mark.parametrize("name", ["hopper", "cheetah_run"])
def test_pixel_observations_are_stacked_frames_of_the_sim_state(name: str) -> None:
    env = envs.make_env(name, seed=0, obs="pixels", pixel_size=(48, 64), frame_stack=3)
    assert env.observation_space.shape == (9, 48, 64)
    obs, info = env.reset(seed=0)
    assert obs.shape == (9, 48, 64) and obs.dtype == np.uint8
    first = env.render_state(info["sim_state"], width=64, height=48).transpose(2, 0, 1)
    for k in range(3):  # reset fills the stack with the first frame
        np.testing.assert_array_equal(obs[3 * k : 3 * k + 3], first)
    prev = obs
    for _ in range(3):
        obs, reward, _, _, info = env.step(env.action_space.sample())
        assert info["true_reward"] == reward and "reward_factors" in info
        assert info["state_obs"].ndim == 1
        np.testing.assert_array_equal(obs[:6], prev[3:])  # the stack shifts by one frame
        prev = obs
    # The newest frame is the frame of the state after the last step.
    _, _, _, _, info = env.step(env.action_space.sample())
    last = env.render_state(info["sim_state"], width=64, height=48).transpose(2, 0, 1)
    np.testing.assert_array_equal(prev[6:], last)
    env.close()


def test_pixel_vector_env_and_bad_obs_mode() -> None:
    venv = envs.make("walker2d", num_envs=2, seed=0, obs="pixels", pixel_size=32, frame_stack=2)
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (2, 6, 32, 32)
    obs, rew, *_ = venv.step(venv.action_space.sample())
    assert obs.shape == (2, 6, 32, 32) and rew.shape == (2,)
    venv.close()
    with pytest.raises(ValueError, match="obs must be one of"):
        envs.make_env("hopper", obs="rgb")
