"""The batched Franka tasks on Warp's CPU backend: the CPU env's maths, sim state, re-render."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import mujoco
import numpy as np
import pytest
import torch

from pbrl import envs as pbrl_envs
from pbrl.envs import franka as cpu
from pbrl.gpu.sim import FRANKA_TASKS, BatchedMujocoEnv, state_layout

pytest.importorskip(
    "mujoco_warp",
    reason="needs warp-lang and mujoco-warp: pip install 'pbrl[gpu-cpu]' (CUDA: 'pbrl[gpu]')",
)
pytest.importorskip("gymnasium_robotics", reason="the Panda model: pip install 'pbrl[franka]'")

from pbrl.gpu.franka import BatchedFrankaEnv  # noqa: E402

N = 3


@pytest.fixture(scope="module")
def batched() -> Iterator[Callable[..., BatchedFrankaEnv]]:
    """``batched(task, control)``: one env per setting for the module (Warp loads are slow)."""
    cache: dict[tuple[str, str], BatchedFrankaEnv] = {}

    def get(task: str, control: str = "ee") -> BatchedFrankaEnv:
        if (task, control) not in cache:
            env = BatchedMujocoEnv(task, N, seed=1, control=control)
            assert isinstance(env, BatchedFrankaEnv)
            cache[task, control] = env
        return cache[task, control]

    yield get
    for env in cache.values():
        env.close()


@pytest.fixture(scope="module")
def cpu_env() -> Iterator[Callable[..., cpu.FrankaEnv]]:
    """``cpu_env(task, control)``: the CPU suite env, one per setting for the module."""
    cache: dict[tuple[str, str], cpu.FrankaEnv] = {}

    def get(task: str, control: str = "ee") -> cpu.FrankaEnv:
        if (task, control) not in cache:
            cache[task, control] = pbrl_envs.make_env(task, seed=0, control=control)
        return cache[task, control]

    yield get
    for env in cache.values():
        env.close()


def _put(env: cpu.FrankaEnv, state: np.ndarray) -> None:
    """Put the CPU env into a STATE_SIG ``state`` (what FrankaRenderer does, on the live data)."""
    mujoco.mj_setState(env.core.model, env.core.data, state, cpu.STATE_SIG)
    mujoco.mj_forward(env.core.model, env.core.data)


def _check_step(
    env: BatchedFrankaEnv, ref: cpu.FrankaEnv, action: torch.Tensor, world: int
) -> dict[str, torch.Tensor]:
    """Step both from ``world``'s state with the same action; compare everything."""
    state = env.get_sim_state()[world].double().numpy()
    _put(ref, state)
    np.testing.assert_allclose(ref.core._obs(), env._obs[world].numpy(), rtol=0, atol=1e-6)
    _, reward, term, trunc, info = env.step(action)
    o_ref, r_ref, term_ref, _, i_ref = ref.step(action[world].double().numpy())
    np.testing.assert_allclose(info["final_obs"][world].numpy(), o_ref, rtol=1e-4, atol=1e-4)
    for k in env.factor_names:
        got = float(info["reward_factors"][k][world])
        assert got == pytest.approx(i_ref["reward_factors"][k], rel=1e-4, abs=1e-5), k
    assert float(reward[world]) == pytest.approx(r_ref, rel=1e-4, abs=1e-5)
    assert bool(info["success"][world]) == i_ref["success"]
    assert not term.any() and bool(term[world]) == term_ref
    np.testing.assert_array_equal(info["sim_state"][world].double().numpy(), state)
    # reward = the documented weighted sum of the factors, exactly on the device, and as the
    # CPU env's reward_from_factors computes it from the same factors
    torch.testing.assert_close(
        env.reward_from_factors(info["reward_factors"]), reward, rtol=0, atol=0
    )
    cpu_sum = ref.reward_from_factors({k: v.numpy() for k, v in info["reward_factors"].items()})
    np.testing.assert_allclose(cpu_sum, reward.numpy(), rtol=1e-6, atol=1e-6)
    return info


@pytest.mark.parametrize(
    ("task", "control"), [("franka_reach", "ee"), ("franka_reach", "joint"), ("franka_push", "ee")]
)
def test_step_matches_cpu_env(batched, cpu_env, task: str, control: str) -> None:
    env, ref = batched(task, control), cpu_env(task, control)
    assert env.obs_dim == ref.observation_space.shape[0]
    assert env.act_dim == ref.action_space.shape[0] == (4 if control == "ee" else 8)
    assert env.factor_names == ref.factor_names
    assert env.max_episode_steps == cpu.MAX_EPISODE_STEPS[FRANKA_TASKS[task].task]
    env.reset(seed=3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):  # move away from the home pose
        env.step(torch.rand(N, env.act_dim, generator=gen) * 2 - 1)
    # out-of-range actions are clipped as on the CPU
    _check_step(env, ref, (torch.rand(N, env.act_dim, generator=gen) * 2 - 1) * 1.5, world=2)


def test_gripped_cube_contact_step(batched, cpu_env) -> None:
    """The cube between the closing fingers: contacts with both pads, both engines agree."""
    env, ref = batched("franka_push"), cpu_env("franka_push")
    env.reset(seed=0)
    state = env.get_sim_state()
    cube = env._items[0].qpos
    state[:, 1 + cube : 4 + cube] = env.site_xpos[:, env._grip]  # layout: time, qpos, ...
    env.set_sim_state(state)
    close = torch.tensor([[0.0, 0.0, 0.0, 1.0]]).repeat(N, 1)
    for _ in range(2):
        _check_step(env, ref, close, world=1)
    assert ref.core.data.ncon >= 2 and ref.core._held(ref.core.items[0].body)


def test_state_is_mj_getState_with_mocap(batched) -> None:
    import mujoco_warp as mjw

    env = batched("franka_push")
    env.reset(seed=1)
    env.step(torch.full((N, env.act_dim), 0.5))
    data = mujoco.MjData(env.model)
    mjw.get_data_into(data, env.model, env.wd, world_id=1)
    ref = np.empty(mujoco.mj_stateSize(env.model, cpu.STATE_SIG))
    mujoco.mj_getState(env.model, data, ref, cpu.STATE_SIG)
    np.testing.assert_allclose(env.get_sim_state()[1].double().numpy(), ref, rtol=0, atol=1e-6)
    names = [n for n, _ in state_layout(env.model, env.state_sig)]
    assert names == ["time", "qpos", "qvel", "mocap_pos", "mocap_quat"]
    assert ref[0] == pytest.approx(env.dt)  # one control step: 20 x 2 ms
    # the goal drawn at reset is in the state (mocap_pos), where the renderer reads it
    goal = env.mocap_pos[1, env._goal].double().numpy()
    np.testing.assert_allclose(ref[-7:-4], goal, rtol=0, atol=1e-6)


def test_render_state_matches_cpu_env(batched, cpu_env) -> None:
    env, ref = batched("franka_reach"), cpu_env("franka_reach")
    env.reset(seed=2)
    states = [env.step(torch.ones(N, env.act_dim))[4]["sim_state"][0] for _ in range(2)]
    s = states[-1].double().numpy()
    frame = env.render_state(s, 32, 32)
    assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame, ref.render_state(s, 32, 32))
    _put(ref, s)  # the CPU env's live frame in that state is the same picture
    np.testing.assert_array_equal(frame, ref.render_live(32, 32))
    moved = s.copy()
    moved[-7:-4] = (0.35, 0.2, 0.3)  # only the goal marker (mocap) moves
    assert not np.array_equal(frame, env.render_state(moved, 32, 32))
    np.testing.assert_array_equal(env.render_state(moved, 32, 32), ref.render_state(moved, 32, 32))
    with pytest.raises(ValueError, match="sim_state must have shape"):
        env.render_state(s[:-1])


def test_success_flag(batched, cpu_env) -> None:
    """success = 1 exactly when the goal (reach) / cube (push) is within 5 cm; +1 in reward."""
    env, ref = batched("franka_reach"), cpu_env("franka_reach")
    env.reset(seed=4)
    state = env.get_sim_state()
    grip = env.site_xpos[:, env._grip]
    offsets = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.03], [0.0, 0.0, 0.2]])
    state[:, -7:-4] = grip + offsets  # goal on the grip point, 3 cm and 20 cm above it
    env.set_sim_state(state)
    info = _check_step(env, ref, torch.zeros(N, env.act_dim), world=1)  # hold still
    f = info["reward_factors"]
    assert info["success"].tolist() == [True, True, False]
    torch.testing.assert_close(info["success"], f["reach_dist"] < cpu.SUCCESS_DIST)
    torch.testing.assert_close(f["success"], info["success"].float())
    torch.testing.assert_close(info["true_reward"], -f["reach_dist"] + f["success"])

    env, ref = batched("franka_push"), cpu_env("franka_push")
    env.reset(seed=4)
    state = env.get_sim_state()
    cube = 1 + env._items[0].qpos
    state[0, -7:-5] = state[0, cube : cube + 2]  # goal under the cube of world 0
    env.set_sim_state(state)
    info = _check_step(env, ref, torch.zeros(N, env.act_dim), world=0)
    assert info["success"].tolist() == [True, False, False]  # the others start >= 10 cm away
    assert float(info["reward_factors"]["obj_to_goal"][0]) < 1e-3


def test_auto_reset_truncation_and_reset_pose() -> None:
    env = BatchedMujocoEnv("franka_reach", 2, seed=0, max_episode_steps=2, control="joint")
    obs0, info0 = env.reset()
    goals0 = env.mocap_pos[:, env._goal].clone()
    home = torch.as_tensor(cpu.HOME_QPOS, dtype=torch.float32)
    torch.testing.assert_close(env.qpos[:, :7], home.expand(2, 7))
    assert (env.qvel == 0).all() and (info0["sim_state"][:, 0] == 0).all()
    rewards = []
    for _ in range(2):
        obs, reward, term, trunc, info = env.step(torch.full((2, 8), 0.7))
        rewards.append(reward)
    assert trunc.all() and not term.any()
    assert (info["episode_length"] == 2).all()
    torch.testing.assert_close(info["episode_return"], rewards[0] + rewards[1])
    # the worlds restarted: time 0, arm at home, fingers open, a new goal, the new first obs
    assert (env.get_sim_state()[:, 0] == 0).all()
    torch.testing.assert_close(env.qpos[:, :7], home.expand(2, 7))
    torch.testing.assert_close(env.qpos[:, 7:9], torch.full((2, 2), 0.04))
    assert not torch.equal(env.mocap_pos[:, env._goal], goals0)
    assert not torch.equal(info["final_obs"], obs)
    torch.testing.assert_close(obs, env.observe())
    torch.testing.assert_close(obs[:, 22:25], env.mocap_pos[:, env._goal])  # reach: the goal
    assert (env.ep_len == 0).all() and (env.ep_return == 0).all()
    env.close()


@pytest.mark.parametrize("task", sorted(FRANKA_TASKS))
def test_reset_distribution_matches_cpu(batched, task: str) -> None:
    """Goals (and cubes) drawn on the device cover the CPU env's boxes with its constraints."""
    env = batched(task)
    core = cpu.FrankaCore(FRANKA_TASKS[task].task)
    rng = np.random.default_rng(0)
    ref_goal, ref_obj = [], []
    for _ in range(1000):
        core._reset_sim(rng)
        ref_goal.append(core.goal_pos.copy())
        if core.items:
            ref_obj.append(core.item_pos(0).copy())
    ref_goal = np.array(ref_goal)
    layout = env.sample_layout(4000)
    goal = layout["goal"].double().numpy()
    np.testing.assert_allclose(goal.min(0), ref_goal.min(0), atol=0.02)
    np.testing.assert_allclose(goal.max(0), ref_goal.max(0), atol=0.02)
    np.testing.assert_allclose(goal.mean(0), ref_goal.mean(0), atol=0.01)
    if core.items:
        obj = np.array(ref_obj)
        xy = layout["object_xy"].double().numpy()
        np.testing.assert_allclose(xy.min(0), obj[:, :2].min(0), atol=0.02)
        np.testing.assert_allclose(xy.max(0), obj[:, :2].max(0), atol=0.02)
        gap = np.linalg.norm(goal[:, :2] - xy, axis=1)
        assert (
            gap.min() >= 0.1 and np.linalg.norm(ref_goal[:, :2] - obj[:, :2], axis=1).min() >= 0.1
        )
        np.testing.assert_allclose(goal[:, 2], core.items[0].rest_z, atol=1e-6)


def test_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="valid: .*franka_push, franka_reach"):
        BatchedMujocoEnv("franka_grocery", 2)
    with pytest.raises(ValueError, match="CPU suite only"):
        BatchedFrankaEnv("franka_pick_place", 2)
    with pytest.raises(ValueError, match="control must be one of"):
        BatchedMujocoEnv("franka_reach", 2, control="torque")
    with pytest.raises(ValueError, match="unknown camera 'side'"):
        BatchedMujocoEnv("franka_reach", 2, camera="side")


def test_gpu_ppo_loop_runs_on_franka(tmp_path) -> None:
    """The on-device PrefPPO loop on gpu_franka_reach: rounds, evaluation in the CPU twin."""
    from hydra import compose, initialize_config_module

    from pbrl.cli import run

    overrides = [
        "env=gpu_franka_reach",
        "agent=gpu_ppo",
        "device=cpu",
        "experiment=fast",
        "agent.num_envs=2",
        "agent.n_steps=4",
        "agent.batch_size=8",
        "agent.num_seed_steps=0",
        "agent.num_unsup_steps=8",
        "agent.num_interact=8",
        "agent.pool_steps=8",
        "num_train_steps=24",
        "env.kwargs.max_episode_steps=6",
        "segment_size=3",
        "reward_batch=2",
        "large_batch=2",
        "max_feedback=4",
        "heldout_pairs=4",
        "eval.episodes=1",
        "eval.every=24",
        "log.every=8",
        "log.video_every=24",
        "log.video_max_frames=2",
        "log.video_size=32",
        "checkpoint.every=0",
    ]
    with initialize_config_module(config_module="pbrl.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    final = run(cfg, tmp_path)
    assert final["pref/queries"] == 4
    assert np.isfinite(final["eval/true_return"])
    assert (tmp_path / "checkpoint" / "state.pt").exists()


@pytest.mark.slow
def test_pbrl_train_fast_command(tmp_path: Path) -> None:
    """``pbrl-train env=gpu_franka_reach agent=gpu_ppo agent.num_envs=8 device=cpu
    experiment=fast`` end to end (about 3 minutes on 2 CPU cores)."""
    run_dir = tmp_path / "run"
    args = [
        "env=gpu_franka_reach",
        "agent=gpu_ppo",
        "agent.num_envs=8",
        "device=cpu",
        "experiment=fast",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-c", "from pbrl.cli import train; train()", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    for name in ("config.yaml", "final_metrics.json", "feedback.sqlite", "checkpoint/state.pt"):
        assert (run_dir / name).exists(), name
