"""On-device PPO pieces and the ``agent=gpu_ppo`` loop, on the CPU."""

import json
import sqlite3

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from pbrl.gpu.ppo import (
    PPOConfig,
    RunningNorm,
    SegmentPool,
    TorchPPO,
    knn_intrinsic_reward,
)


def test_running_norm_matches_numpy() -> None:
    x = torch.randn(3, 50, 4, dtype=torch.float64) * 3 + 1
    norm = RunningNorm(4)
    for chunk in x:
        norm.update(chunk)
    flat = x.reshape(-1, 4).numpy()
    np.testing.assert_allclose(norm.mean.numpy(), flat.mean(0), atol=1e-5)
    np.testing.assert_allclose(norm.var.numpy(), flat.var(0), rtol=1e-3)


def test_gae_matches_reference() -> None:
    t, n = 5, 3
    cfg = PPOConfig(n_steps=t, gamma=0.9, gae_lambda=0.8, net_arch=(8,))
    ppo = TorchPPO(2, 1, torch.tensor([-1.0]), torch.tensor([1.0]), n, cfg, torch.device("cpu"))
    st = ppo.storage
    g = torch.Generator().manual_seed(0)
    st.rewards.copy_(torch.rand(t, n, generator=g))
    st.values.copy_(torch.rand(t, n, generator=g))
    st.dones[2, 1] = 1.0
    st.dones[4, 0] = 1.0
    st.bootstrap[4, 0] = 0.5  # a truncation
    last = torch.randn(n, 2, generator=g)
    ppo.compute_returns(last)
    next_v = ppo.policy.value(ppo.obs_norm(last)).detach().numpy()
    r, v, d, b = (a.numpy() for a in (st.rewards, st.values, st.dones, st.bootstrap))
    adv = np.zeros((t, n))
    gae = np.zeros(n)
    for i in reversed(range(t)):
        nv = next_v if i == t - 1 else v[i + 1]
        delta = r[i] + b[i] + 0.9 * nv * (1 - d[i]) - v[i]
        gae = delta + 0.9 * 0.8 * (1 - d[i]) * gae
        adv[i] = gae
    np.testing.assert_allclose(st.advantages.numpy(), adv, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(st.returns.numpy(), adv + v, rtol=1e-5, atol=1e-6)


def test_segment_pool_keeps_episodes_apart() -> None:
    pool = SegmentPool(10, 2, 1, 1, 3, ("a", "b"), torch.device("cpu"), env_name="hopper")
    episode = torch.tensor([0, 1])
    for t in range(12):  # env 0: episodes of 4 steps; env 1: one long episode
        if t % 4 == 0 and t:
            episode = episode + torch.tensor([2, 0])
        step = torch.tensor([t % 4, t])
        obs = torch.stack([episode.float(), step.float()], 1)[:, :1] * 100 + step[:, None]
        pool.add(
            obs,
            torch.zeros(2, 1),
            torch.ones(2),
            {"a": torch.ones(2) * t, "b": torch.zeros(2)},
            torch.full((2, 3), float(t)),
            episode,
            step,
        )
    segs = pool.sample(200, 3, torch.Generator().manual_seed(0))
    assert segs.sim_state.shape == (200, 3, 3) and segs.sim_state.dtype == np.float64
    assert segs.env_name == "hopper"
    o = segs.obs[..., 0]
    assert (np.diff(o, axis=1) == 1).all()  # consecutive steps of one episode only
    assert set(np.unique(segs.env_id)) == {0, 1}
    np.testing.assert_array_equal(segs.reward_factors["a"], segs.sim_state[..., 0])
    short = SegmentPool(10, 1, 1, 1, 1, ("a",), torch.device("cpu"))
    with pytest.raises(ValueError, match="lower segment_size"):
        short.sample(1, 5, torch.Generator())


def test_knn_reward() -> None:
    # the reference is a sample of other states: the k-th of them, the state not counted
    ref = torch.tensor([[1.0], [2.0], [10.0]])
    obs = torch.tensor([[0.0], [9.0]])
    torch.testing.assert_close(knn_intrinsic_reward(obs, ref, k=1), torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(knn_intrinsic_reward(obs, ref, k=2), torch.tensor([2.0, 7.0]))


class DriftingEnv:
    """Observations that drift by 5 per step: the normaliser moves during a rollout."""

    num_envs = 4

    def __init__(self) -> None:
        self.t = 0

    def step(self, action: torch.Tensor):  # noqa: ANN201
        self.t += 1
        obs = torch.full((4, 3), 5.0 * self.t) + torch.arange(4.0)[:, None]
        false = torch.zeros(4, dtype=torch.bool)
        info = {
            "final_obs": obs,
            "episode_return": torch.zeros(4),
            "episode_length": torch.zeros(4),
        }
        return obs, torch.zeros(4), false, false, info


def test_ppo_ratio_is_one_before_the_first_step_under_drifting_normalisation() -> None:
    """The update evaluates log-probs at the inputs the actions were sampled at; re-normalising
    stored raw observations with the end-of-rollout statistics made the ratio drift from 1."""
    cfg = PPOConfig(n_steps=16, n_epochs=1, batch_size=64, learning_rate=0.0, net_arch=(8,))
    ppo = TorchPPO(3, 2, -torch.ones(2), torch.ones(2), 4, cfg, torch.device("cpu"), seed=0)
    with torch.no_grad():
        ppo.policy.actor[-1].weight.mul_(300.0)  # a policy whose mean depends on the input
    env = DriftingEnv()
    obs, _ = ppo.collect(env, torch.zeros(4, 3))
    ppo.compute_returns(obs)
    assert ppo.update()["train/clip_fraction"] == 0.0


def test_gpu_ppo_loop_runs_on_cpu(tmp_path) -> None:
    pytest.importorskip(
        "mujoco_warp",
        reason="needs warp-lang and mujoco-warp: pip install 'pbrl[gpu-cpu]' (CUDA: 'pbrl[gpu]')",
    )
    from pbrl.cli import run

    overrides = [
        "env=gpu_halfcheetah",
        "agent=gpu_ppo",
        "device=cpu",
        "experiment=fast",
        "agent.num_envs=4",
        "agent.n_steps=16",
        "agent.batch_size=32",
        "agent.num_seed_steps=0",
        "agent.num_unsup_steps=64",
        "agent.num_interact=64",
        "agent.pool_steps=32",
        "num_train_steps=192",
        "env.kwargs.max_episode_steps=20",
        "segment_size=5",
        "reward_batch=4",
        "large_batch=2",
        "max_feedback=8",
        "heldout_pairs=8",
        "query=disagreement",
        "eval.episodes=1",
        "eval.every=128",
        "log.every=64",
        "log.video_every=192",
        "log.video_max_frames=2",
        "log.video_size=32",
        "checkpoint.every=0",
    ]
    with initialize_config_module(config_module="pbrl.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    final = run(cfg, tmp_path)
    assert final["pref/queries"] == 8  # two rounds of 4 within the budget
    # the round is the CPU loop's (pbrl.loops.feedback): same scalars
    assert final["pref/labels"] == 8 and final["pref/skips"] == 0
    assert np.isfinite(final["eval/true_return"])
    assert 0.0 <= final["pref/accuracy_heldout"] <= 1.0
    assert json.loads((tmp_path / "final_metrics.json").read_text())["pref/queries"] == 8
    assert (tmp_path / "checkpoint" / "state.pt").exists()
    with sqlite3.connect(tmp_path / "feedback.sqlite") as db:
        tables = {r[0] for r in db.execute("select name from sqlite_master where type='table'")}
    assert tables
    # the checkpoint restores into a fresh loop built from the same config
    from pbrl.gpu.loop import GpuPreferenceLoop

    loop = GpuPreferenceLoop(cfg, tmp_path / "resumed")
    try:
        state = torch.load(tmp_path / "checkpoint" / "state.pt", weights_only=False)
        loop.load_state_dict(state)
        assert loop.step == 192 and loop.queries_used == 8 and loop.reward_active
        torch.testing.assert_close(loop.env.get_sim_state(), state["env"]["sim_state"])
    finally:
        loop.close()
    # rewards whose device evaluation this loop does not do stop at start-up, naming the valid
    with initialize_config_module(config_module="pbrl.configs", version_base="1.3"):
        bad = compose(config_name="train", overrides=[*overrides, "reward=heron"])
    from pbrl.loops.feedback import RunError

    with pytest.raises(RunError, match="supports reward=bradley_terry or true_reward"):
        GpuPreferenceLoop(bad, tmp_path / "bad")


def test_a_first_round_shorter_than_a_segment_stops_before_simulating() -> None:
    """1 rollout of 16 steps per world before the first round cannot hold a 25-step segment:
    the loop says so at start-up, with the settings that fix it (found on CUDA, where the
    run failed only after pre-training)."""
    from pbrl.gpu.loop import check_first_round
    from pbrl.loops.feedback import RunError

    base = [
        "env=gpu_hopper",
        "agent=gpu_ppo",
        "agent.num_envs=1024",
        "agent.n_steps=16",
        "agent.num_seed_steps=0",
        "segment_size=25",
    ]
    with initialize_config_module(config_module="pbrl.configs", version_base="1.3"):
        short = compose(config_name="train", overrides=[*base, "agent.num_unsup_steps=16384"])
        enough = compose(config_name="train", overrides=[*base, "agent.num_unsup_steps=32768"])
        true_r = compose(
            config_name="train", overrides=[*base, "agent.num_unsup_steps=0", "reward=true_reward"]
        )
    with pytest.raises(RunError, match=r"after 16 steps per world.*num_unsup_steps>=32768"):
        check_first_round(short)
    check_first_round(enough)
    check_first_round(true_r)  # no feedback rounds at all
