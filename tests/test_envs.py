"""Every registered env keeps the PbrlEnv contract: factors, sim state, re-rendering, seeding."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from pbrl import envs
from pbrl.envs.base import PbrlEnv

CORE = [
    "halfcheetah",
    "hopper",
    "walker2d",
    "ant",
    "humanoid",
    "walker_walk",
    "walker_run",
    "cheetah_run",
    "quadruped_walk",
    "quadruped_run",
]


def test_registry_lists_core_envs_and_rejects_unknown_names() -> None:
    assert set(CORE) <= set(envs.names())
    with pytest.raises(envs.UnknownEnvError) as err:
        envs.make_env("halfchetah")
    msg = str(err.value)
    assert "halfchetah" in msg and "halfcheetah" in msg and "walker_walk" in msg


@pytest.mark.parametrize("name", CORE)
def test_contract(name: str) -> None:
    env = envs.make_env(name, seed=0)
    assert isinstance(env, PbrlEnv)
    obs, info = env.reset(seed=3)
    assert obs.shape == env.observation_space.shape
    state = info["sim_state"]
    assert state.shape == (env.state_dim,) and state.dtype == np.float64
    rng = np.random.default_rng(0)
    for _ in range(5):
        before = env._get_sim_state()
        act = rng.uniform(env.action_space.low, env.action_space.high).astype(np.float32)
        obs, reward, term, trunc, info = env.step(act)
        # info carries the true reward, factors that reproduce it, and the pre-step state.
        assert info["true_reward"] == reward
        assert set(info["reward_factors"]) == set(env.factor_names)
        np.testing.assert_allclose(
            env.reward_from_factors(info["reward_factors"]), reward, rtol=1e-6, atol=1e-8
        )
        np.testing.assert_array_equal(info["sim_state"], before)
        if term or trunc:
            break
    env.close()


@pytest.mark.parametrize("name", ["halfcheetah", "ant", "walker_walk", "quadruped_walk"])
def test_render_state_matches_live_frame(name: str) -> None:
    """A frame re-rendered from a stored state equals the frame of the live simulator.

    The live frame is rendered from the live physics after a few steps; the stored-state
    frame from a *copy* of the state, on the env's private render data, after more steps have
    moved the live simulator on: they must agree pixel for pixel (same renderer, EGL).
    """
    env = envs.make_env(name, seed=1)
    env.reset(seed=1)
    rng = np.random.default_rng(1)
    for _ in range(10):
        env.step(rng.uniform(env.action_space.low, env.action_space.high))
    live = _live_frame(env, 64, 80)
    stored = env._get_sim_state().copy()
    for _ in range(10):
        env.step(rng.uniform(env.action_space.low, env.action_space.high))
    frame = env.render_state(stored, width=80, height=64)
    assert frame.shape == (64, 80, 3) and frame.dtype == np.uint8
    assert frame.std() > 0  # not a blank image
    np.testing.assert_array_equal(frame, live)
    # Rendering did not disturb the live episode.
    after = env._get_sim_state().copy()
    env.render_state(stored)
    np.testing.assert_array_equal(env._get_sim_state(), after)
    env.close()


def _live_frame(env: PbrlEnv, height: int, width: int) -> np.ndarray:
    """Render the live simulator directly (not through a stored state)."""
    if hasattr(env, "core"):  # dm_control
        return np.asarray(env.core.physics.render(height=height, width=width, camera_id=0))
    model, data = env._model, env._data
    scratch = mujoco.MjData(model)
    scratch.qpos[:], scratch.qvel[:] = data.qpos, data.qvel
    mujoco.mj_forward(model, scratch)
    r = mujoco.Renderer(model, height=height, width=width)
    r.update_scene(scratch, camera=env._renderer.camera if env._renderer else "track")
    frame = r.render().copy()
    r.close()
    return frame


@pytest.mark.parametrize("name", ["hopper", "walker_walk"])
def test_seeding_and_checkpoint_continuation_are_exact(name: str) -> None:
    a, b = envs.make_env(name, seed=7), envs.make_env(name, seed=7)
    np.testing.assert_array_equal(a.reset(seed=7)[0], b.reset(seed=7)[0])
    rng = np.random.default_rng(2)
    acts = rng.uniform(a.action_space.low, a.action_space.high, (40, a.action_space.shape[0]))
    for act in acts[:20]:
        a.step(act)
    snap = a.get_env_state()
    c = envs.make_env(name, seed=123)  # a fresh env in another state
    c.set_env_state(snap)
    for act in acts[20:]:
        oa, ra, ta, tra, ia = a.step(act)
        oc, rc, tc, trc, ic = c.step(act)
        np.testing.assert_array_equal(oa, oc)
        assert (ra, ta, tra) == (rc, tc, trc)
        np.testing.assert_array_equal(ia["sim_state"], ic["sim_state"])
        if ta or tra:
            break


def test_max_episode_steps_truncates_and_reports_episode() -> None:
    env = envs.make_env("halfcheetah", seed=0, max_episode_steps=7)
    env.reset(seed=0)
    total = 0.0
    for _ in range(7):
        _, r, term, trunc, info = env.step(env.action_space.sample())
        total += r
    assert trunc and not term
    assert info["episode"]["l"] == 7
    assert info["episode"]["r"] == pytest.approx(total)


def test_vector_env() -> None:
    venv = envs.make("hopper", num_envs=2, seed=0)
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (2, 11)
    obs, rew, term, trunc, info = venv.step(venv.action_space.sample())
    assert rew.shape == (2,)
    np.testing.assert_allclose(info["true_reward"], rew)
    venv.close()
