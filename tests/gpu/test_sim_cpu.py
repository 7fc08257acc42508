"""The batched MuJoCo Warp backend on the CPU: gymnasium-equal maths, sim state, re-render."""

import gymnasium as gym
import mujoco
import numpy as np
import pytest
import torch

from pbrl import envs as pbrl_envs
from pbrl.gpu.sim import LOCOMOTION_TASKS, BatchedMujocoEnv, state_layout

pytest.importorskip(
    "mujoco_warp",
    reason="needs warp-lang and mujoco-warp: pip install 'pbrl[gpu-cpu]' (CUDA: 'pbrl[gpu]')",
)

FULL = mujoco.mjtState.mjSTATE_FULLPHYSICS


def _gym_at(task: str, state: np.ndarray):
    """The gymnasium env of ``task`` put into the FULLPHYSICS ``state``."""
    env = gym.make(LOCOMOTION_TASKS[task].gym_id, disable_env_checker=True).unwrapped
    env.reset(seed=0)
    mujoco.mj_setState(env.model, env.data, state, FULL)
    mujoco.mj_forward(env.model, env.data)
    return env


@pytest.mark.parametrize("task", sorted(LOCOMOTION_TASKS))
def test_step_matches_gymnasium(task: str) -> None:
    env = BatchedMujocoEnv(task, 3, seed=1)
    obs, info = env.reset()
    gen = torch.Generator().manual_seed(0)
    # Move away from the initial pose (velocities, ground contacts). Ant: its first contacts
    # differ by a few percent between MuJoCo Warp and the C engine (docs/gpu.md), so the
    # exact comparison uses a contact-free step and test_ant_contact_step checks the rest.
    for _ in range(0 if task == "ant" else 3):
        obs, *_ = env.step(torch.rand(3, env.act_dim, generator=gen) * 2 - 1)
    state = env.get_sim_state()[2].double().numpy()
    g = _gym_at(task, state)
    # same qpos/qvel -> same observation (ant's contact forces are zero after mj_forward alone)
    if task != "ant":
        np.testing.assert_allclose(g._get_obs(), obs[2].numpy(), rtol=0, atol=1e-6)
    a = torch.rand(3, env.act_dim, generator=gen) * 2 - 1
    _, reward, term, trunc, info = env.step(a)
    o_ref, r_ref, term_ref, _, i_ref = g.step(a[2].double().numpy())
    np.testing.assert_allclose(info["final_obs"][2].numpy(), o_ref, rtol=1e-3, atol=1e-3)
    for k in env.factor_names:
        assert float(info["reward_factors"][k][2]) == pytest.approx(i_ref[k], rel=1e-3, abs=1e-3)
    assert float(reward[2]) == pytest.approx(r_ref, rel=1e-3, abs=1e-3)
    assert bool(term[2]) == term_ref
    np.testing.assert_array_equal(info["sim_state"][2].double().numpy(), state)
    # reward = sum of factors, exactly, for every world
    total = env.reward_from_factors(info["reward_factors"])
    torch.testing.assert_close(total, reward, rtol=0, atol=0)
    assert env.obs_dim == g.observation_space.shape[0]
    assert env.factor_names == pbrl_envs.make_env(task).factor_names


def test_ant_contact_step() -> None:
    env = BatchedMujocoEnv("ant", 2, seed=0)
    env.reset()
    for _ in range(12):  # the ant falls onto its feet
        _, reward, _, _, info = env.step(torch.full((2, env.act_dim), 0.3))
    forces = env.cfrc_ext.clamp(-1, 1)
    assert forces.abs().sum() > 0  # in contact
    # the observation and contact cost are Ant-v5's formulas on the simulator's arrays
    ref = torch.cat([env.qpos[:, 2:], env.qvel, forces[:, 1:].reshape(2, -1)], dim=1)
    torch.testing.assert_close(info["final_obs"], ref)
    torch.testing.assert_close(
        info["reward_factors"]["reward_contact"], -5e-4 * forces.square().sum(dim=(1, 2))
    )
    state = env.get_sim_state()[0].double().numpy()
    g = _gym_at("ant", state)
    a = torch.full((2, env.act_dim), -0.2)
    env.step(a)
    g.step(a[0].double().numpy())
    # with contacts the engines agree to a few percent per step (float32, solver details)
    np.testing.assert_allclose(env.qpos[0].double().numpy(), g.data.qpos, rtol=0, atol=0.02)


def test_state_layout_is_mj_getState() -> None:
    import mujoco_warp as mjw

    env = BatchedMujocoEnv("halfcheetah", 2, seed=0)
    env.reset()
    env.step(torch.full((2, env.act_dim), 0.5))
    data = mujoco.MjData(env.model)
    mjw.get_data_into(data, env.model, env.wd, world_id=1)
    ref = np.empty(mujoco.mj_stateSize(env.model, FULL))
    mujoco.mj_getState(env.model, data, ref, FULL)
    np.testing.assert_allclose(env.get_sim_state()[1].double().numpy(), ref, rtol=0, atol=1e-6)
    assert [n for n, _ in state_layout(env.model)] == ["time", "qpos", "qvel"]
    assert ref[0] == pytest.approx(env.dt)  # time advanced by one env step


def test_render_state_matches_cpu_env() -> None:
    env = BatchedMujocoEnv("halfcheetah", 2, seed=0)
    env.reset()
    states = [env.step(torch.ones(2, env.act_dim))[4]["sim_state"][0] for _ in range(4)]
    cpu = pbrl_envs.make_env("halfcheetah", seed=0)
    s = states[-1].double().numpy()
    frame = env.render_state(s, 32, 32)
    assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame, cpu.render_state(s, 32, 32))
    # the CPU env's live frame in that state is the same picture
    mujoco.mj_setState(cpu.unwrapped.model, cpu.unwrapped.data, s, FULL)
    np.testing.assert_array_equal(frame, cpu.render_live(32, 32))
    other = states[0].double().numpy()
    other[1] += 1.0  # a visibly different pose renders differently
    assert not np.array_equal(frame, env.render_state(other, 32, 32))
    with pytest.raises(ValueError, match="sim_state must have shape"):
        env.render_state(s[:-1])
    env.close()
    cpu.close()


def test_truncation_auto_reset_and_termination() -> None:
    env = BatchedMujocoEnv("hopper", 3, seed=0, max_episode_steps=4)
    env.reset()
    for _ in range(4):
        obs, reward, term, trunc, info = env.step(torch.zeros(3, env.act_dim))
    assert trunc.all() and not term.any()
    assert (info["episode_length"] == 4).all()
    # after the auto-reset the worlds start over: time 0 and a fresh initial pose
    st = env.get_sim_state()
    assert (st[:, 0] == 0).all()
    assert not torch.equal(info["final_obs"], obs)
    # an unhealthy pose terminates: hopper below its z range
    bad = env.get_sim_state()
    bad[0, 2] = 0.3  # qpos[1] (z); layout: time, qpos, qvel
    env.set_sim_state(bad)
    _, _, term, trunc, info = env.step(torch.zeros(3, env.act_dim))
    assert bool(term[0]) and not bool(trunc[0])
    assert float(info["reward_factors"]["reward_survive"][0]) == 0.0
    assert float(info["reward_factors"]["reward_survive"][1]) == 1.0


def test_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="valid: ant, franka_push, franka_reach, halfcheetah"):
        BatchedMujocoEnv("humanoidstandup", 2)
    env = BatchedMujocoEnv("halfcheetah", 2)
    with pytest.raises(ValueError, match=r"action must be \(2, 6\)"):
        env.step(torch.zeros(3, 6))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            BatchedMujocoEnv("halfcheetah", 2, device="cuda")
