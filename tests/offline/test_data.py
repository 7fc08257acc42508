"""Dataset building (format, labels) and the CPL/OPPO batch samplers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pbrl.data import Label
from pbrl.offline.data import BatchSampler, DatasetFormatError, PreferenceData, load_preferences
from pbrl.offline.dataset import (
    DatasetError,
    Rollouts,
    collect,
    future_return_scores,
    label_dataset,
    make_dataset,
    regret_scores,
    score_labels,
    scripted_policy,
)
from pbrl.store import FeedbackStore


def _ranked(n: int = 12, groups: int = 2) -> PreferenceData:
    per = n // groups
    rank = torch.cat([torch.randperm(per, generator=torch.Generator().manual_seed(g)) for g in
                      range(groups)])  # fmt: skip
    return PreferenceData(
        kind="ranking",
        obs=torch.arange(n, dtype=torch.float32)[:, None, None].expand(n, 3, 2).clone(),
        actions=torch.zeros(n, 3, 1),
        start=torch.zeros(n, dtype=torch.long),
        target=None,
        rank=rank,
        group=torch.arange(groups).repeat_interleave(per),
        env_name="x",
        teacher_id="t",
    )


def test_rank_mode_labels_follow_the_ranking_within_a_row() -> None:
    d = _ranked()
    s = BatchSampler(d, "rank", seed=0)
    for _ in range(20):
        b = s.sample(12)
        i = b.obs1[:, 0, 0].long()
        j = b.obs2[:, 0, 0].long()
        assert (d.group[i] == d.group[j]).all()  # pairs stay inside one ranking
        want = torch.where(d.rank[j] < d.rank[i], 1.0, torch.where(i == j, 0.5, 0.0))
        assert torch.equal(b.label, want)
    # the first index walks through permutations: one epoch visits every segment once
    s2 = BatchSampler(d, "rank", seed=1)
    seen = torch.cat([s2.sample(4).obs1[:, 0, 0] for _ in range(3)]).long()
    assert sorted(seen.tolist()) == list(range(12))


def test_score_mode_batches_one_row_and_comparison_needs_pairs() -> None:
    d = _ranked()
    b = BatchSampler(d, "score", seed=0).sample(100)
    idx = b.obs[:, 0, 0].long()
    assert len(idx) == 6 and len(set(d.group[idx].tolist())) == 1
    assert torch.equal(b.score, -d.rank[idx].float())
    with pytest.raises(DatasetFormatError, match="needs pair rows"):
        BatchSampler(d, "comparison")


def test_a_split_of_several_rankings_keeps_pairs_and_score_batches_inside_one_row() -> None:
    """split() shuffles segments, so a row is no longer a contiguous index range."""
    d = _ranked(24, 3)
    train, held = d.split(0.25, seed=0)
    assert held is not None
    for part in (train, held):
        rank_s, score_s = BatchSampler(part, "rank", seed=0), BatchSampler(part, "score", seed=0)
        for _ in range(30):
            b = rank_s.sample(8)
            i, j = b.obs1[:, 0, 0].long(), b.obs2[:, 0, 0].long()  # original segment ids
            assert (d.group[i] == d.group[j]).all()
            want = torch.where(d.rank[j] < d.rank[i], 1.0, torch.where(i == j, 0.5, 0.0))
            assert torch.equal(b.label, want)
            idx = score_s.sample(100).obs[:, 0, 0].long()
            assert len(set(d.group[idx].tolist())) == 1
            assert len(idx) == int((part.group == d.group[idx[0]]).sum())  # the whole row


def _timed(n: int = 10, h: int = 8) -> PreferenceData:
    """Segments whose observation is (segment, step) and action the step, ranked by index."""
    seg = torch.arange(n, dtype=torch.float32)[:, None].expand(n, h)
    step = torch.arange(h, dtype=torch.float32)[None].expand(n, h)
    return PreferenceData(
        kind="ranking", obs=torch.stack([seg, step], -1), actions=step[..., None].clone(),
        start=torch.arange(n) * 100, target=None, rank=torch.arange(n),
        group=torch.zeros(n, dtype=torch.long), env_name="x", teacher_id="t",
    )  # fmt: skip


@pytest.mark.parametrize("mode", ["rank", "comparison", "score"])
def test_sub_segments_are_aligned_windows_covering_every_offset(mode: str) -> None:
    d = _timed()
    if mode == "comparison":  # pair rows: segment i against segment i + 5
        d = PreferenceData(
            kind="pair", obs=torch.stack([d.obs[:5], d.obs[5:]], 1),
            actions=torch.stack([d.actions[:5], d.actions[5:]], 1),
            start=torch.stack([d.start[:5], d.start[5:]], 1), target=torch.ones(5), rank=None,
            group=None, env_name="x", teacher_id="t",
        )  # fmt: skip
    s = BatchSampler(d, mode, seed=0, segment_length=3)
    offsets: set[int] = set()
    for _ in range(60):
        b = s.sample(4)
        sides = [(b.obs, b.act, b.start)] if mode == "score" else [
            (b.obs1, b.act1, b.start1), (b.obs2, b.act2, b.start2)]  # fmt: skip
        for obs, act, start in sides:
            assert obs.shape[1] == 3 and act.shape[1] == 3
            off = obs[:, 0, 1]
            assert (off == off[0]).all()  # one offset per side of a batch
            assert torch.equal(obs[..., 1], off[:, None] + torch.arange(3.0))  # consecutive
            assert torch.equal(act[..., 0], obs[..., 1])  # actions aligned with observations
            assert torch.equal(start, obs[:, 0, 0].long() * 100 + off.long())
            offsets.add(int(off[0]))
    assert offsets == set(range(8 - 3 + 1))  # 0..H-L inclusive
    with pytest.raises(DatasetFormatError, match="segment_length=9"):
        BatchSampler(d, mode, segment_length=9)


def test_whole_length_sub_segments_leave_the_stream_unchanged() -> None:
    d = _timed()
    a, b = BatchSampler(d, "rank", seed=4), BatchSampler(d, "rank", seed=4, segment_length=8)
    for _ in range(5):
        x, y = a.sample(3), b.sample(3)
        assert torch.equal(x.obs1, y.obs1) and torch.equal(x.obs2, y.obs2)


def test_future_return_and_score_labels() -> None:
    ro = Rollouts(
        obs=np.zeros((7, 1), np.float32), actions=np.zeros((7, 1), np.float32),
        reward=np.array([1, 2, 3, 4, 10, 20, 30], np.float32), factors={}, sim_state=None,
        episode_start=np.array([0, 4, 7]), env_id=np.zeros(2, np.int64),
        success=np.zeros(2, bool), env_name="x",
    )  # fmt: skip
    # look-ahead 2 from rows 0, 3 (cut at the episode end), 4, 6
    got = future_return_scores(ro, np.array([0, 3, 4, 6]), foresee=2)
    assert got.tolist() == [3.0, 4.0, 30.0, 30.0]
    lab = score_labels(np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 1.0]))
    assert lab.tolist() == [int(Label.SECOND), int(Label.EQUAL), int(Label.FIRST)]


def test_rank_mode_refuses_pairwise_teachers(rng: np.random.Generator) -> None:
    from pbrl.data import SegmentBatch

    seg = SegmentBatch(np.zeros((4, 2, 1)), np.zeros((4, 2, 1)), np.zeros((4, 2)))
    with pytest.raises(DatasetError, match="pairwise B-Pref"):
        label_dataset(seg, ["oracle"], {}, mode="rank")


@pytest.fixture(scope="module")
def hopper_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from stable_baselines3 import SAC

    from pbrl.envs import make_env

    tmp = tmp_path_factory.mktemp("ds")
    sac = SAC("MlpPolicy", make_env("hopper", seed=0), learning_starts=50, batch_size=32,
              policy_kwargs={"net_arch": [16, 16]}, seed=0)  # fmt: skip
    sac.learn(80)
    sac.save(tmp / "sac.zip")
    make_dataset(
        "hopper", tmp / "pairs.npz", policy=str(tmp / "sac.zip"),
        labels=["regret", "return", "oracle"], mode="pairs", episodes=12, segments=40,
        segment_size=5, num_envs=2, value_samples=8, log=lambda s: None,
    )  # fmt: skip
    return tmp


def test_made_dataset_is_the_core_format_with_correct_labels(hopper_set: Path) -> None:
    path = hopper_set / "pairs.npz"
    z = np.load(path)
    assert int(z["schema_version"]) == 1 and int(z["k"]) == 2
    assert z["obs"].shape == (60, 2, 5, 11) and set(z["teacher_id"]) == {
        "regret", "return", "oracle"
    }  # fmt: skip
    assert (path.with_suffix(".json")).exists()
    with FeedbackStore(hopper_set / "re.sqlite") as st:  # importable by the core store
        assert st.import_(path) == (20, 60)
    ret = z["true_reward"].sum(-1)
    r = z["teacher_id"] == "return"
    want = np.where(ret[r, 1] > ret[r, 0], 1, np.where(ret[r, 1] < ret[r, 0], 0, 2))
    assert np.array_equal(z["label"][r], want)
    o = z["teacher_id"] == "oracle"
    assert np.array_equal(z["label"][o], z["label"][r])  # the rational teacher agrees
    # regret labels: recompute rl_sum with the same critic (V from 8 samples is stochastic, so
    # compare with a tolerance-free ordering only where the margin is large)
    from stable_baselines3 import SAC

    from pbrl.data import SegmentBatch

    model = SAC.load(hopper_set / "sac.zip")
    g = z["teacher_id"] == "regret"
    seg = SegmentBatch(
        z["obs"][g].reshape(-1, 5, 11), z["actions"][g].reshape(-1, 5, 3),
        z["true_reward"][g].reshape(-1, 5),
    )  # fmt: skip
    torch.manual_seed(0)
    sc = regret_scores(seg, model, samples=256).reshape(-1, 2)
    clear = np.abs(sc[:, 1] - sc[:, 0]) > 0.5
    assert clear.sum() >= 5
    assert np.array_equal(z["label"][g][clear], (sc[clear, 1] > sc[clear, 0]).astype(int))
    d = load_preferences(path, "regret")
    assert d.kind == "pair" and d.obs.shape == (20, 2, 5, 11)
    assert d.actions.abs().max() <= 1 - 1e-5
    with pytest.raises(DatasetFormatError, match="3 teachers"):
        load_preferences(path)


def test_scripted_meta_world_expert_beats_random_and_is_refused_elsewhere(tmp_path: Path) -> None:
    pytest.importorskip("metaworld")
    with pytest.raises(DatasetError, match="policy=scripted exists for the Meta-World tasks"):
        scripted_policy("hopper")
    kw = {"max_episode_steps": 60}
    runs = {
        p: make_dataset("mw_drawer_open", tmp_path / f"{p}.npz", policy=p, labels=["return"],
                        mode="rank", episodes=2, segments=8, segment_size=16, noise=0.1,
                        num_envs=2, env_kwargs=kw, keep_sim_state=False, log=lambda s: None)
        for p in ("scripted", "random")
    }  # fmt: skip
    # the expert reaches and pulls the handle within 60 steps; random actions do not
    assert runs["scripted"].mean_episode_return > 2 * runs["random"].mean_episode_return


def test_expert_logprob_labels_rank_by_distance_to_the_experts_actions(tmp_path: Path) -> None:
    pytest.importorskip("metaworld")
    kw = {"max_episode_steps": 40}
    with pytest.raises(DatasetError, match="expert_logprob labels score actions"):
        make_dataset("mw_drawer_open", tmp_path / "r.npz", policy="random",
                     labels=["expert_logprob"], episodes=1, segments=4, segment_size=8,
                     env_kwargs=kw, log=lambda s: None)  # fmt: skip
    path = tmp_path / "d.npz"
    make_dataset("mw_drawer_open", path, policy="scripted", labels=["expert_logprob"],
                 mode="rank", episodes=2, segments=12, segment_size=8, noise=0.3, num_envs=2,
                 env_kwargs=kw, keep_sim_state=False, log=lambda s: None)  # fmt: skip
    z = np.load(path)
    obs, act = z["obs"][0], z["actions"][0]  # (12, 8, 39), (12, 8, 4)
    mu = scripted_policy("mw_drawer_open")(obs.reshape(-1, obs.shape[-1])).reshape(act.shape)
    score = -np.square(mu - act).sum(axis=(1, 2))
    assert (score < 0).all()  # noisy actions stray from the expert's
    # the stored ranking is best first by the recomputed score
    np.testing.assert_array_equal(z["ranking"][0], np.argsort(-score, kind="stable"))
    # without noise the executed actions are the expert's: every score is 0
    make_dataset("mw_drawer_open", tmp_path / "n.npz", policy="scripted",
                 labels=["expert_logprob"], mode="rank", episodes=1, segments=4, segment_size=8,
                 noise=0.0, num_envs=1, env_kwargs=kw, keep_sim_state=False,
                 log=lambda s: None)  # fmt: skip
    z = np.load(tmp_path / "n.npz")
    obs, act = z["obs"][0], z["actions"][0]
    mu = scripted_policy("mw_drawer_open")(obs.reshape(-1, obs.shape[-1])).reshape(act.shape)
    np.testing.assert_allclose(mu, act, atol=1e-6)


def test_a_distractor_drives_its_share_of_episodes_and_is_recorded(tmp_path: Path) -> None:
    pytest.importorskip("metaworld")
    kw = {"max_episode_steps": 20}
    opener, closer = scripted_policy("mw_drawer_open"), scripted_policy("drawer-close-v3")
    ro = collect("mw_drawer_open", opener, 8, noise=0.0, num_envs=2, seed=3, env_kwargs=kw,
                 keep_sim_state=False, distractor=closer, distractor_fraction=0.5)  # fmt: skip
    assert ro.distractor is not None and 0 < ro.distractor.sum() < 8
    for e in range(ro.num_episodes):
        rows = slice(ro.episode_start[e], ro.episode_start[e + 1])
        who = closer if ro.distractor[e] else opener
        np.testing.assert_allclose(ro.actions[rows], who(ro.obs[rows]), atol=1e-6)
    # the two experts disagree somewhere in every episode (else the test proves nothing)
    first = slice(ro.episode_start[0], ro.episode_start[1])
    assert np.abs(opener(ro.obs[first]) - closer(ro.obs[first])).max() > 0.1
    # without a distractor the rollouts are the same draw as before the option existed
    a = collect("mw_drawer_open", opener, 2, noise=0.3, num_envs=2, seed=3, env_kwargs=kw,
                keep_sim_state=False)  # fmt: skip
    b = collect("mw_drawer_open", opener, 2, noise=0.3, num_envs=2, seed=3, env_kwargs=kw,
                keep_sim_state=False, distractor=closer, distractor_fraction=0.0)  # fmt: skip
    np.testing.assert_array_equal(a.actions, b.actions)
    assert b.distractor is not None and not b.distractor.any()

    # make_dataset: the spec, the record in <out>.json, and expert_logprob against the policy
    path = tmp_path / "mix.npz"
    made = make_dataset("mw_drawer_open", path, policy="scripted", labels=["expert_logprob"],
                        mode="rank", episodes=4, segments=16, segment_size=8, noise=0.0,
                        num_envs=2, env_kwargs=kw, keep_sim_state=False, log=lambda s: None,
                        distractor="scripted:drawer-close-v3", distractor_fraction=0.5)  # fmt: skip
    import json

    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["distractor"] == "scripted:drawer-close-v3" and meta["distractor_fraction"] == 0.5
    d_seg = np.zeros(made.segments, bool)
    d_seg[meta["distractor_segments"]] = True
    z = np.load(path)
    obs, act = z["obs"][0], z["actions"][0]
    mu = opener(obs.reshape(-1, obs.shape[-1])).reshape(act.shape)
    score = -np.square(mu - act).sum(axis=(1, 2))
    np.testing.assert_allclose(score[~d_seg], 0.0, atol=1e-9)  # noiseless expert segments
    assert (score[d_seg] <= 0).all() and d_seg.any() and (~d_seg).any()

    for bad, msg in [("scripted", "not a distractor spec"), ("scripted:nope", "Meta-World"),
                     ("/no/such.zip", "does not exist")]:  # fmt: skip
        with pytest.raises(DatasetError, match=msg):
            make_dataset("mw_drawer_open", tmp_path / "x.npz", policy="scripted",
                         labels=["expert_logprob"], episodes=1, segments=2, segment_size=4,
                         env_kwargs=kw, log=lambda s: None, distractor=bad)  # fmt: skip
    with pytest.raises(DatasetError, match="distractor_fraction must be in"):
        make_dataset("mw_drawer_open", tmp_path / "x.npz", policy="scripted",
                     labels=["expert_logprob"], episodes=1, segments=2, segment_size=4,
                     env_kwargs=kw, log=lambda s: None, distractor="random",
                     distractor_fraction=1.5)  # fmt: skip
    with pytest.raises(DatasetError, match="Meta-World scripted policy"):
        make_dataset("hopper", tmp_path / "x.npz", policy="random", labels=["return"],
                     episodes=1, segments=2, segment_size=4, log=lambda s: None,
                     distractor="scripted:drawer-close-v3")  # fmt: skip


def test_a_policy_list_drives_each_episode_with_one_of_its_snapshots(tmp_path: Path) -> None:
    import json

    from stable_baselines3 import PPO

    from pbrl import envs as pbrl_envs
    from pbrl.offline.dataset import load_sb3, sb3_policy

    env = pbrl_envs.make_env("hopper", seed=0)
    zips = []
    for k in range(3):  # three differently initialised "snapshots"
        PPO("MlpPolicy", env, n_steps=64, seed=k, device="cpu").save(tmp_path / f"p{k}.zip")
        zips.append(str(tmp_path / f"p{k}.zip"))
    env.close()
    fns = [sb3_policy(load_sb3(z)) for z in zips]
    kw = {"max_episode_steps": 15}
    ro = collect("hopper", fns, 9, noise=0.0, num_envs=3, seed=1, env_kwargs=kw,
                 keep_sim_state=False)  # fmt: skip
    assert ro.driver is not None and len(set(ro.driver.tolist())) > 1
    assert ro.distractor is not None and not ro.distractor.any()
    for e in range(ro.num_episodes):
        rows = slice(ro.episode_start[e], ro.episode_start[e + 1])
        np.testing.assert_allclose(ro.actions[rows], fns[ro.driver[e]](ro.obs[rows]), atol=1e-6)
        other = fns[(ro.driver[e] + 1) % 3](ro.obs[rows])
        assert np.abs(other - ro.actions[rows]).max() > 1e-3  # the snapshots differ

    path = tmp_path / "replay.npz"
    made = make_dataset("hopper", path, policy=zips, labels=["future_return"], mode="pairs",
                        episodes=6, segments=8, segment_size=5, noise=0.1, num_envs=2,
                        env_kwargs=kw, keep_sim_state=False, log=lambda s: None)  # fmt: skip
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["policy"] == zips and sum(meta["policy_episodes"]) == made.episodes == 6
    # each score label's per-segment scores, segment i vs i + N/2 in row i: they give its label
    sc = np.asarray(meta["segment_scores"]["future_return"])
    assert sc.shape == (8,)
    z = np.load(path)
    np.testing.assert_array_equal(z["target"], (sc[4:] > sc[:4]) + 0.5 * (sc[4:] == sc[:4]))
    # a policy list with a distractor records both
    make_dataset("hopper", tmp_path / "both.npz", policy=zips, labels=["future_return"],
                 mode="pairs", episodes=6, segments=8, segment_size=5, num_envs=2, env_kwargs=kw,
                 keep_sim_state=False, log=lambda s: None, distractor="random",
                 distractor_fraction=0.5)  # fmt: skip
    both = json.loads((tmp_path / "both.json").read_text())
    assert sum(both["policy_episodes"]) + both["distractor_episodes"] == 6
    for bad, msg in [([*zips, "random"], "a policy list holds SB3"), ([], "empty list")]:
        with pytest.raises(DatasetError, match=msg):
            make_dataset("hopper", tmp_path / "x.npz", policy=bad, labels=["return"],
                         episodes=1, segments=2, segment_size=4, log=lambda s: None)  # fmt: skip
    with pytest.raises(DatasetError, match="expert_logprob labels score against one policy"):
        make_dataset("hopper", tmp_path / "x.npz", policy=zips, labels=["expert_logprob"],
                     episodes=1, segments=2, segment_size=4, log=lambda s: None)  # fmt: skip

    # ppo-snapshots: PPO trained here, its untrained and last checkpoints rolled out
    made = make_dataset("hopper", tmp_path / "snap.npz", policy="ppo-snapshots",
                        oracle_steps=2048, snapshots=2, labels=["future_return"], episodes=4,
                        segments=4, segment_size=5, noise=0.0, num_envs=2, env_kwargs=kw,
                        keep_sim_state=False, log=lambda s: None)  # fmt: skip
    meta = json.loads((tmp_path / "snap.json").read_text())
    assert meta["snapshots"] == 2 and len(meta["policy_episodes"]) == 2
    first, last = (load_sb3(tmp_path / f"snap_ppo_{k}.zip") for k in (0, 1))
    assert (first.num_timesteps, last.num_timesteps) == (0, 2048)
    with pytest.raises(DatasetError, match="snapshots >= 2"):
        make_dataset("hopper", tmp_path / "y.npz", policy="ppo-snapshots", oracle_steps=10,
                     snapshots=1, labels=["return"], episodes=1, segments=2, segment_size=4,
                     log=lambda s: None)  # fmt: skip
