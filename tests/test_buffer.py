"""PbrlReplayBuffer: segment windows, recent episodes, relabelling, k-NN reward, checkpoints."""

from __future__ import annotations

import io

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from pbrl.buffer import PbrlReplayBuffer, RunningMeanStd

FACTORS = ("a", "b")


def make_buffer(capacity_per_env: int, n_envs: int, obs_dim: int = 4, **kw) -> PbrlReplayBuffer:
    return PbrlReplayBuffer(
        capacity_per_env * n_envs,
        spaces.Box(-np.inf, np.inf, (obs_dim,), np.float64),
        spaces.Box(-1.0, 1.0, (2,), np.float32),
        device="cpu",
        n_envs=n_envs,
        state_dim=3,
        factor_names=FACTORS,
        env_name="toy",
        **kw,
    )


class Recorder:
    """Feeds a buffer with steps whose obs encode (global step, column, episode uid, t).

    Episode uids are handed out like the contract says episodes are ordered: by start step,
    columns in order within a step. ``log[e]`` keeps (step, uid, t) of every step of column e.
    """

    def __init__(self, buf: PbrlReplayBuffer, rng: np.random.Generator, max_len: int = 9):
        self.buf, self.rng, self.max_len = buf, rng, max_len
        n = buf.n_envs
        self.uid = np.arange(n)
        self.next_uid = n
        self.t = np.zeros(n, np.int64)
        self.left = rng.integers(1, max_len + 1, size=n)
        self.step = 0
        self.log: list[list[tuple[int, int, int]]] = [[] for _ in range(n)]

    def add(self, steps: int) -> None:
        n = self.buf.n_envs
        for _ in range(steps):
            cols = np.arange(n)
            obs = np.stack([np.full(n, self.step), cols, self.uid, self.t], 1).astype(np.float64)
            act = self.rng.uniform(-1, 1, (n, 2)).astype(np.float32)
            done = self.left == 1
            infos = [
                {
                    "true_reward": float(self.step + 0.5 * e),
                    "reward_factors": {"a": float(self.step), "b": float(e), "extra": 9.0},
                    "sim_state": np.array([self.step, e, self.t[e]], np.float64),
                }
                for e in range(n)
            ]
            self.buf.add(obs, obs + 1, act, np.zeros(n, np.float32), done, infos)
            for e in range(n):
                self.log[e].append((self.step, int(self.uid[e]), int(self.t[e])))
            self.left -= 1
            self.t += 1
            for e in np.flatnonzero(done):
                self.uid[e] = self.next_uid
                self.next_uid += 1
                self.t[e] = 0
                self.left[e] = self.rng.integers(1, self.max_len + 1)
            self.step += 1

    def valid_windows(self, h: int, recent: int | None = None) -> set[tuple[int, int]]:
        """Brute force: (column, first global step) of every window inside one stored episode."""
        cap = self.buf.buffer_size
        stored = [col[-cap:] for col in self.log]
        uids = sorted({u for col in stored for _, u, _ in col})
        keep = set(uids if recent is None else uids[-recent:])
        out = set()
        for e, col in enumerate(stored):
            for i in range(len(col) - h + 1):
                win = col[i : i + h]
                if len({u for _, u, _ in win}) == 1 and win[0][1] in keep:
                    out.add((e, win[0][0]))
        return out


def sampled_windows(buf: PbrlReplayBuffer, n: int, h: int, rng, recent=None):
    segs = buf.sample_segments(n, h, rng, recent_episodes=recent)
    obs = segs.obs
    # Every segment: one column, one episode, consecutive global steps and time indices.
    assert (obs[:, :, 1] == segs.env_id[:, None]).all()
    assert (obs[:, :, 2] == obs[:, :1, 2]).all()
    assert (np.diff(obs[:, :, 0], axis=1) == 1).all()
    assert (obs[:, :, 3] == segs.start[:, None] + np.arange(h)).all()
    # The side channels travel with the right step.
    assert np.array_equal(segs.true_reward, obs[:, :, 0] + 0.5 * obs[:, :, 1])
    assert np.array_equal(segs.reward_factors["a"], obs[:, :, 0])
    assert np.array_equal(segs.sim_state[..., 2], obs[:, :, 3])
    assert segs.env_name == "toy" and segs.obs.dtype == np.float32
    return {(int(e), int(s)) for e, s in zip(segs.env_id, obs[:, 0, 0], strict=True)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_segments_stay_inside_episodes_across_wraparound(seed):
    rng = np.random.default_rng(seed)
    buf = make_buffer(capacity_per_env=40, n_envs=3)
    rec = Recorder(buf, rng)
    h = 4
    # Before the wrap, exactly at full, and several wraps later (pointer mid-ring).
    for steps in (25, 15, 1, 33, 60):
        rec.add(steps)
        want = rec.valid_windows(h)
        got = sampled_windows(buf, 20_000, h, rng)
        assert got <= want  # never an invalid window
        assert got == want  # and every valid one is reachable
    assert buf.full


def test_episode_longer_than_ring_does_not_join_newest_to_oldest(rng):
    buf = make_buffer(capacity_per_env=10, n_envs=1)
    rec = Recorder(buf, rng, max_len=1000)
    rec.left[:] = 1000
    rec.add(27)  # one episode, ring wrapped: rows hold steps 17..26, pointer between 26 and 17
    got = sampled_windows(buf, 5000, 3, rng)
    assert got == {(0, s) for s in range(17, 25)}
    segs = buf.sample_segments(10, 10, rng)
    assert (segs.start == 17).all()
    with pytest.raises(ValueError, match="stretch of >= 11 steps"):
        buf.sample_segments(1, 11, rng)


@pytest.mark.parametrize("recent", [1, 2, 5])
def test_recent_episodes_restricts_sampling(rng, recent):
    buf = make_buffer(capacity_per_env=50, n_envs=2)
    rec = Recorder(buf, rng, max_len=8)
    rec.add(80)
    want = rec.valid_windows(2, recent)
    if not want:
        with pytest.raises(ValueError, match="most recent"):
            buf.sample_segments(1, 2, rng, recent_episodes=recent)
        return
    assert want < rec.valid_windows(2)
    assert sampled_windows(buf, 5000, 2, rng, recent) == want


def test_recent_counts_the_unfinished_episode(rng):
    buf = make_buffer(capacity_per_env=30, n_envs=1)
    obs = np.zeros((1, 4))
    info = [{"true_reward": 0.0, "reward_factors": {"a": 0.0, "b": 0.0}, "sim_state": np.zeros(3)}]
    for i in range(12):  # episode 0: 8 steps, episode 1 (live): 4 steps
        obs = np.full((1, 4), float(i))
        buf.add(obs, obs, np.zeros((1, 2)), np.zeros(1), np.array([i == 7]), info)
    segs = buf.sample_segments(200, 3, rng, recent_episodes=1)
    assert set(segs.obs[:, 0, 0]) == {8.0, 9.0}
    assert set(segs.start) == {0, 1}


def test_no_valid_window_error_is_clear(rng):
    buf = make_buffer(capacity_per_env=20, n_envs=2)
    with pytest.raises(ValueError, match="need at least one stored episode stretch of >= 5"):
        buf.sample_segments(3, 5, rng)
    rec = Recorder(buf, rng, max_len=3)
    rec.add(10)
    with pytest.raises(ValueError, match="longest single-episode stretch is [0-3] steps"):
        buf.sample_segments(3, 5, rng)


def test_relabel_writes_reward_fn_everywhere(rng):
    buf = make_buffer(capacity_per_env=13, n_envs=2)
    rec = Recorder(buf, rng)
    calls = []

    def reward_fn(obs, act):
        assert obs.dtype == np.float32 and act.dtype == np.float32
        assert obs.shape[1:] == (4,) and act.shape[1:] == (2,)
        calls.append(len(obs))
        return obs[:, 0] * 10 + obs[:, 1] + act[:, 0]

    rec.add(9)  # not full: only rows below the pointer
    buf.relabel(reward_fn, chunk=5)
    assert calls == [5, 5, 5, 3]
    want = buf.observations[:9, :, 0] * 10 + buf.observations[:9, :, 1] + buf.actions[:9, :, 0]
    np.testing.assert_allclose(buf.rewards[:9], want, rtol=1e-6)
    assert (buf.rewards[9:] == 0).all()

    rec.add(20)  # wrapped: every row is valid, including those above the pointer
    assert buf.full and buf.pos != 0
    buf.relabel(reward_fn, chunk=7)
    want = buf.observations[:, :, 0] * 10 + buf.observations[:, :, 1] + buf.actions[:, :, 0]
    np.testing.assert_allclose(buf.rewards, want, rtol=1e-6)

    with pytest.raises(ValueError, match="reward_fn must return shape"):
        buf.relabel(lambda o, a: np.zeros((len(o), 2)))


def test_running_mean_std_matches_pooled_moments(rng):
    xs = [rng.normal(3, 2, 50), rng.normal(-1, 0.5, 7)]
    rms = RunningMeanStd(epsilon=1e-4)
    for x in xs:
        rms.update(x)
    allx = np.concatenate(xs)
    # The prior is a pseudo-sample of weight 1e-4 with mean 0 and variance 1.
    mean = allx.sum() / (1e-4 + len(allx))
    var = (1e-4 * (1 + mean**2) + ((allx - mean) ** 2).sum()) / (1e-4 + len(allx))
    assert rms.mean == pytest.approx(mean, rel=1e-12)
    assert rms.var == pytest.approx(var, rel=1e-12)


def test_intrinsic_reward_equals_brute_force_knn(rng):
    buf = make_buffer(capacity_per_env=20, n_envs=2, obs_dim=3, knn_k=3, knn_chunk=4)
    points = rng.normal(size=(11, 2, 3))  # distinct points: no distance ties
    info = [
        {"true_reward": 0.0, "reward_factors": {"a": 0.0, "b": 0.0}, "sim_state": np.zeros(3)}
        for _ in range(2)
    ]
    for p in points:
        buf.add(p, p + 100, np.zeros((2, 2)), np.full(2, 7.0), np.zeros(2), info)
    allp = points.reshape(-1, 3)

    def kth(x):  # k-th nearest stored point, self (distance 0) excluded
        return np.sort(np.linalg.norm(allp - x, axis=1))[3]

    samples = buf.sample(16)
    assert (samples.rewards == 7.0).all()  # stored mode leaves SB3's sampling alone

    buf.set_reward_mode("intrinsic")
    seen = []
    for _ in range(2):
        s = buf.sample(16)
        obs = s.observations.numpy()
        d = np.array([kth(o) for o in obs])
        seen.append(d)
        pooled = np.concatenate(seen)
        mean = pooled.sum() / (1e-4 + len(pooled))
        var = (1e-4 * (1 + mean**2) + ((pooled - mean) ** 2).sum()) / (1e-4 + len(pooled))
        assert s.rewards.shape == (16, 1) and s.rewards.dtype == torch.float32
        np.testing.assert_allclose(s.rewards.numpy()[:, 0], d / np.sqrt(var), rtol=1e-5)
        np.testing.assert_allclose(s.next_observations.numpy(), obs + 100, rtol=1e-6)

    # A query that is not stored (PPO's live obs): plain k-th neighbour, no self to skip.
    q = rng.normal(size=(5, 3))
    raw = buf.knn_distance(q).numpy()
    np.testing.assert_allclose(
        raw, [np.sort(np.linalg.norm(allp - x, axis=1))[2] for x in q], rtol=1e-5
    )
    with pytest.raises(ValueError, match="unknown reward mode 'entropy'"):
        buf.set_reward_mode("entropy")


def test_intrinsic_needs_enough_states(rng):
    buf = make_buffer(capacity_per_env=20, n_envs=1, knn_k=5)
    Recorder(buf, rng).add(5)
    buf.set_reward_mode("intrinsic")
    with pytest.raises(ValueError, match="at least 6 stored observations; got 5"):
        buf.sample(4)


def _assert_same(a: PbrlReplayBuffer, b: PbrlReplayBuffer) -> None:
    for name in PbrlReplayBuffer._ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert (a.pos, a.full, a.reward_mode) == (b.pos, b.full, b.reward_mode)
    assert (a.intrinsic_rms.mean, a.intrinsic_rms.var, a.intrinsic_rms.count) == (
        b.intrinsic_rms.mean,
        b.intrinsic_rms.var,
        b.intrinsic_rms.count,
    )


@pytest.mark.parametrize("steps", [7, 45])  # partly filled, and wrapped
def test_state_dict_round_trip_is_exact(steps):
    rng = np.random.default_rng(3)
    buf = make_buffer(capacity_per_env=30, n_envs=2)
    rec = Recorder(buf, rng)
    rec.add(steps)
    buf.set_reward_mode("intrinsic")
    buf.sample(8)  # move the running std away from its prior
    state = buf.state_dict()
    if steps < 30:
        assert state["observations"].shape == (steps, 2, 4)  # only the filled part is saved
    f = io.BytesIO()
    np.savez(f, **state)
    f.seek(0)
    with np.load(f, allow_pickle=False) as z:
        loaded = {k: z[k] for k in z.files}

    other = make_buffer(capacity_per_env=30, n_envs=2)
    Recorder(other, np.random.default_rng(99)).add(50)  # stale contents must be overwritten
    other.load_state_dict(loaded)
    _assert_same(buf, other)

    # Both continue identically: new steps, segments, intrinsic samples.
    rec2 = Recorder(other, np.random.default_rng(0))
    for r in (rec, rec2):
        r.rng, r.uid, r.next_uid, r.t, r.left, r.step = (
            np.random.default_rng(5),
            rec.uid.copy(),
            rec.next_uid,
            rec.t.copy(),
            rec.left.copy(),
            rec.step,
        )
    rec.add(20)
    rec2.add(20)
    _assert_same(buf, other)
    s1 = buf.sample_segments(16, 3, np.random.default_rng(1))
    s2 = other.sample_segments(16, 3, np.random.default_rng(1))
    assert all(np.array_equal(v, s2.arrays()[k]) for k, v in s1.arrays().items())
    np.random.seed(4)
    r1 = buf.sample(8).rewards
    np.random.seed(4)
    r2 = other.sample(8).rewards
    assert torch.equal(r1, r2)

    wrong = PbrlReplayBuffer(
        60,
        spaces.Box(-1, 1, (4,)),
        spaces.Box(-1, 1, (2,)),
        n_envs=2,
        state_dim=3,
        factor_names=("a", "c"),
    )
    with pytest.raises(ValueError, match="factor_names"):
        wrong.load_state_dict(state)


def test_sample_transitions(rng):
    buf = make_buffer(capacity_per_env=10, n_envs=2)
    with pytest.raises(ValueError, match="empty"):
        buf.sample_transitions(3, rng)
    Recorder(buf, rng).add(14)
    obs, act, true_r = buf.sample_transitions(500, rng)
    assert obs.shape == (500, 4) and act.shape == (500, 2) and true_r.shape == (500,)
    assert obs.dtype == act.dtype == true_r.dtype == np.float32
    np.testing.assert_array_equal(true_r, obs[:, 0] + 0.5 * obs[:, 1])
    assert obs[:, 0].min() >= 4  # the 4 oldest steps were overwritten


def test_gymnasium_vector_info_layout(rng):
    buf = make_buffer(capacity_per_env=10, n_envs=2)
    infos = {
        "true_reward": np.array([1.0, 2.0]),
        "reward_factors": {"a": np.array([3.0, 4.0]), "b": np.array([5.0, 6.0])},
        "sim_state": np.arange(6.0).reshape(2, 3),
    }
    buf.add(np.zeros((2, 4)), np.zeros((2, 4)), np.zeros((2, 2)), np.zeros(2), np.zeros(2), infos)
    np.testing.assert_array_equal(buf.true_reward[0], [1.0, 2.0])
    np.testing.assert_array_equal(buf.factors[0], [[3.0, 5.0], [4.0, 6.0]])
    np.testing.assert_array_equal(buf.sim_state[0], np.arange(6.0).reshape(2, 3))


def test_bad_construction_and_infos():
    box = spaces.Box(-1, 1, (3,))
    with pytest.raises(ValueError, match="optimize_memory_usage"):
        PbrlReplayBuffer(
            10, box, box, optimize_memory_usage=True, handle_timeout_termination=False, state_dim=1
        )
    buf = PbrlReplayBuffer(10, box, box, state_dim=2, factor_names=("x",))
    z = np.zeros((1, 3))
    with pytest.raises(KeyError, match="lacks \\['sim_state'\\]"):
        buf.add(z, z, z, np.zeros(1), np.zeros(1), [{"true_reward": 0, "reward_factors": {}}])
    with pytest.raises(KeyError, match="lack \\['x'\\]; present: \\['y'\\]"):
        buf.add(
            z,
            z,
            z,
            np.zeros(1),
            np.zeros(1),
            [{"true_reward": 0, "reward_factors": {"y": 1}, "sim_state": np.zeros(2)}],
        )
    with pytest.raises(ValueError, match="state_dim=2"):
        buf.add(
            z,
            z,
            z,
            np.zeros(1),
            np.zeros(1),
            [{"true_reward": 0, "reward_factors": {"x": 1}, "sim_state": np.zeros(3)}],
        )


class PendulumInfo(gym.Wrapper):
    """Adds the PbrlEnv info keys to Pendulum: its reward split into three named factors."""

    factor_names = ("angle", "velocity", "control")
    state_dim = 2

    def step(self, action):
        th, thdot = self.env.unwrapped.state  # state before the step
        u = float(np.clip(action, -2.0, 2.0)[0])
        sim_state = np.array([th, thdot], np.float64)
        obs, reward, terminated, truncated, info = self.env.step(action)
        ang = ((th + np.pi) % (2 * np.pi)) - np.pi
        info["reward_factors"] = {
            "angle": -(ang**2),
            "velocity": -0.1 * thdot**2,
            "control": -0.001 * u**2,
        }
        info["true_reward"] = float(reward)
        info["sim_state"] = sim_state
        return obs, reward, terminated, truncated, info


def test_sb3_sac_trains_with_the_buffer():
    from stable_baselines3 import SAC

    env = PendulumInfo(gym.make("Pendulum-v1", max_episode_steps=50))
    model = SAC(
        "MlpPolicy",
        env,
        buffer_size=120,  # smaller than the run: the ring wraps
        learning_starts=50,
        batch_size=32,
        policy_kwargs={"net_arch": [32, 32]},
        replay_buffer_class=PbrlReplayBuffer,
        replay_buffer_kwargs={"state_dim": 2, "factor_names": PendulumInfo.factor_names},
        seed=0,
        device="cpu",
    )
    buf = model.replay_buffer
    assert isinstance(buf, PbrlReplayBuffer)
    model.learn(150)
    buf.set_reward_mode("intrinsic")
    model.learn(50, reset_num_timesteps=False)  # SAC updates on the k-NN reward
    buf.set_reward_mode("stored")
    assert model.num_timesteps == 200 and buf.full and buf.intrinsic_rms.count > 1
    # Stored reward is the env reward, and it equals the sum of the factors.
    np.testing.assert_allclose(buf.rewards, buf.true_reward, rtol=1e-6)
    np.testing.assert_allclose(buf.factors.sum(-1), buf.true_reward, rtol=1e-4, atol=1e-5)
    # 50-step episodes; the ring holds steps 80..199, so the full episodes are 2 and 3.
    segs = buf.sample_segments(64, 50, np.random.default_rng(0))
    assert (segs.start == 0).all()
    assert set(buf.episode_index[buf.time_in_episode == 0].tolist()) == {2, 3}
    with pytest.raises(ValueError, match="stretch of >= 51 steps"):
        buf.sample_segments(1, 51, np.random.default_rng(0))
    # sim_state is the state the agent acted on: cos/sin of its angle give the stored obs.
    th = segs.sim_state[..., 0]
    np.testing.assert_allclose(segs.obs[..., 0], np.cos(th), atol=1e-5)
    np.testing.assert_allclose(segs.obs[..., 1], np.sin(th), atol=1e-5)


def test_knn_distance_is_exact_for_near_duplicates_far_from_origin(rng):
    # Offset states with tiny spread: the matmul ranking cancels badly here, and the exact
    # recomputation of the candidates must still give the brute-force k-th distance.
    buf = make_buffer(capacity_per_env=400, n_envs=1, obs_dim=17, knn_chunk=64)
    pts = (50.0 + 0.01 * rng.normal(size=(400, 1, 17))).astype(np.float32).astype(np.float64)
    info = [{"true_reward": 0.0, "reward_factors": {"a": 0.0, "b": 0.0}, "sim_state": np.zeros(3)}]
    for p in pts:
        buf.add(p, p, np.zeros((1, 2)), np.zeros(1), np.zeros(1), info)
    q = pts[:64, 0]
    d = np.linalg.norm(q[:, None] - pts[None, :, 0], axis=-1)
    want = np.sort(d, axis=1)[:, 5]
    np.testing.assert_allclose(buf.knn_distance(q, exclude_self=True).numpy(), want, rtol=1e-4)


@pytest.mark.parametrize("n_envs", [1, 3])
def test_incremental_knn_table_matches_the_search(rng, n_envs):
    # The unsupervised phase reads the k-NN distance of sampled stored states from a table
    # that is updated as states arrive; it must equal the (batch x N) search at every point,
    # through growth in uneven steps, a checkpoint reload, and the ring wrapping.
    buf = make_buffer(capacity_per_env=90, n_envs=n_envs, obs_dim=5, knn_chunk=50)
    info = [{"true_reward": 0.0, "reward_factors": {"a": 0.0, "b": 0.0}, "sim_state": np.zeros(3)}]
    walk = np.cumsum(rng.normal(size=(200, n_envs, 5)), axis=0)
    walk[20:30] = walk[10]  # exact duplicates: zero distances besides the state itself
    buf.set_reward_mode("intrinsic")
    t = 0

    def add(steps: int) -> None:
        nonlocal t
        for _ in range(steps):
            buf.add(
                walk[t],
                walk[t],
                np.zeros((n_envs, 2)),
                np.zeros(n_envs),
                np.zeros(n_envs),
                info * n_envs,
            )
            t += 1

    def check() -> None:
        flat = buf._flat(buf.observations)
        rows = rng.integers(len(flat), size=40)
        got = buf._intrinsic(flat[rows], exclude_self=True, update=False, rows=rows)
        want = buf.knn_distance(flat[rows], exclude_self=True)
        brute = np.sort(np.linalg.norm(flat[rows, None] - flat[None], axis=-1), axis=1)[:, 5]
        np.testing.assert_allclose(want.numpy(), brute, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=0)

    add(6)
    for steps in (1, 2, 1, 7, 1, 30):
        add(steps)
        check()
    assert buf._knn_done == buf.pos * n_envs  # the table, not the fallback, answered
    state = buf.state_dict()
    buf.load_state_dict(state)
    assert buf._knn_done == 0
    check()  # rebuilt in one catch-up block
    add(1)
    check()
    add(90 - buf.pos + 5)  # wrap: overwritten states leave the table; the search answers
    assert buf.full
    check()
    assert buf._knn_done == 0


@pytest.mark.parametrize("n_envs", [1, 2])
def test_deferred_rewards_are_filled_when_first_sampled(rng, n_envs):
    # PEBBLE's SAC gets the learned reward of new steps from the buffer in batches: pending
    # rows hold the NaN placeholders until a sample draws one of them, then all are filled
    # with reward_fn's values; checkpoints keep them pending; the ring may wrap meanwhile.
    buf = make_buffer(capacity_per_env=16, n_envs=n_envs)
    info = [{"true_reward": 1.0, "reward_factors": {"a": 0.0, "b": 0.0}, "sim_state": np.zeros(3)}]
    calls: list[int] = []

    def reward_fn(obs, act):
        assert obs.dtype == np.float32 and act.dtype == np.float32
        calls.append(len(obs))
        return (obs[:, 0] * 10 + obs[:, 1] + act[:, 0]).astype(np.float32)

    def want() -> np.ndarray:
        o, a = buf.observations, buf.actions
        return (o[..., 0] * 10 + o[..., 1] + a[..., 0]).astype(np.float32)

    def add(steps: int) -> None:
        for _ in range(steps):
            obs = rng.normal(size=(n_envs, 4))
            act = rng.uniform(-1, 1, (n_envs, 2)).astype(np.float32)
            nan = np.full(n_envs, np.nan, np.float32)
            buf.add(obs, obs, act, nan, np.zeros(n_envs), info * n_envs)

    add(3)
    buf.relabel(reward_fn)  # NaN rows before deferral: relabel fills everything
    buf.defer_rewards(reward_fn)
    add(5)
    assert buf.pending_rewards == 5 and np.isnan(buf.rewards[3:8]).all()
    # a sample of old rows only leaves the pending ones alone
    buf._get_samples(np.array([0, 1, 2, 0]))
    assert buf.pending_rewards == 5 and calls == [3 * n_envs]
    # a state_dict round trip keeps them pending (a checkpoint changes nothing)
    state = buf.state_dict()
    other = make_buffer(capacity_per_env=16, n_envs=n_envs)
    other.load_state_dict(state)
    assert other.pending_rewards == 5 and np.isnan(other.rewards[3:8]).all()
    # a sample that draws one pending row fills all of them in one call
    samples = buf._get_samples(np.array([1, 6]))
    assert buf.pending_rewards == 0 and calls[-1] == 5 * n_envs
    np.testing.assert_allclose(buf.rewards[:8], want()[:8], rtol=1e-6)
    assert np.isfinite(samples.rewards.numpy()).all()
    # wrapping while rows are pending, then relabel and stopping deferral
    add(20)
    # 16 pending rows filled once when the ring came round to the oldest, 4 pending since
    assert buf.full and buf.pending_rewards == 4 and calls[-1] == 16 * n_envs
    pending = (buf.pos - 4 + np.arange(4)) % 16
    assert np.isnan(buf.rewards[pending]).all()
    done = np.setdiff1d(np.arange(16), pending)
    np.testing.assert_allclose(buf.rewards[done], want()[done], rtol=1e-6)
    buf.flush_rewards()
    np.testing.assert_allclose(buf.rewards, want(), rtol=1e-6)
    add(2)
    buf.defer_rewards(None)  # stopping fills what is pending
    assert buf.pending_rewards == 0 and np.isfinite(buf.rewards).all()
    with pytest.raises(ValueError, match="reward_fn must return shape"):
        buf.defer_rewards(lambda o, a: np.zeros((len(o), 2)))
        add(1)
        buf.flush_rewards()
