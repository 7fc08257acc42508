"""Regret preference model: exact DP, the regret teacher, tabular and continuous learners."""

import math

import numpy as np
import pytest
import torch
from scipy.special import expit

from pbrl.data import Label, QueryBatch, SegmentBatch
from pbrl.rewards import AdvantageRewardLearner, TabularPreferenceLearner, make_reward_learner
from pbrl.rewards.regret import optimal_successor_features
from pbrl.tabular import (
    DELIVERY_BOARD,
    TRUE_WEIGHTS,
    Cell,
    TabularMDP,
    delivery_mdp,
    policy_evaluation,
    policy_iteration,
    random_delivery_board,
    sample_segment_pairs,
    scaled_return,
    segment_batch,
    value_iteration,
)
from pbrl.teachers import make_teacher
from pbrl.teachers.regret import CriticOracle, RegretTeacher, TabularOracle


def chain(gamma: float = 1.0) -> TabularMDP:
    """s0 -> s1 -> goal (s2, absorbing). Actions: 0 forward, 1 stay. One feature = reward.

    r(s0, fwd) = -1, r(s1, fwd) = +10 (entering the goal), staying costs -1.
    By hand (gamma = 1): V*(s1) = 10, V*(s0) = 9; A*(s, stay) = -1, A*(s, fwd) = 0.
    """
    nxt = np.array([[1, 0], [2, 1], [2, 2]])
    feats = np.array([[[-1.0], [-1.0]], [[10.0], [-1.0]], [[0.0], [0.0]]])
    return TabularMDP(
        next_state=nxt,
        features=feats,
        terminal=np.array([False, False, True]),
        start=np.array([True, True, False]),
        weights=np.array([1.0]),
        gamma=gamma,
        feature_names=("reward",),
    )


def pair_query(mdp, states0, actions0, states1, actions1) -> QueryBatch:
    s0 = segment_batch(mdp, np.asarray(states0), np.asarray(actions0))
    s1 = segment_batch(mdp, np.asarray(states1), np.asarray(actions1))
    return QueryBatch.from_members([s0, s1])


# --- dynamic programming ----------------------------------------------------------------------
def test_chain_values_by_hand():
    mdp = chain()
    v, q = value_iteration(mdp)
    np.testing.assert_allclose(v, [9.0, 10.0, 0.0])
    np.testing.assert_allclose(q, [[9.0, 8.0], [10.0, 9.0], [0.0, 0.0]])
    v2, q2, pi = policy_iteration(mdp)
    np.testing.assert_allclose(v2, v)
    assert pi[:2].tolist() == [0, 0]
    # a uniform policy from s1: V = 0.5 (10) + 0.5 (-1 + V) -> V = 9
    np.testing.assert_allclose(policy_evaluation(mdp, np.full((3, 2), 0.5))[1], 9.0)


def test_delivery_board_and_values():
    mdp = delivery_mdp()
    assert mdp.shape == (10, 10) and mdp.start.sum() == 92 and mdp.terminal.sum() == 5
    v_vi, _ = value_iteration(mdp)
    v, q, pi = policy_iteration(mdp)
    np.testing.assert_allclose(v_vi, v, atol=1e-6)

    def cell(r, c):
        return r * 10 + c

    # next to the (mud) destination: one move, +50, no gas
    assert v[cell(7, 9)] == pytest.approx(50.0) and v[cell(9, 9)] == pytest.approx(50.0)
    # mud (8, 7) -> mud (8, 8) costs -2, then +50 discounted once
    assert v[cell(8, 7)] == pytest.approx(-2.0 + 0.999 * 50.0)
    # entering a sheep ends the episode with -50; the house cannot be entered (stay, gas)
    up = 0
    assert DELIVERY_BOARD[2][2] == Cell.SHEEP and DELIVERY_BOARD[6][1] == Cell.HOUSE
    assert mdp.reward()[cell(3, 2), up] == -50.0 and mdp.next_state[cell(3, 2), up] == cell(2, 2)
    assert mdp.next_state[cell(7, 1), up] == cell(7, 1) and mdp.reward()[cell(7, 1), up] == -1.0
    # the optimal policy scores 1, the uniform random policy 0
    assert scaled_return(mdp, pi) == pytest.approx(1.0)
    assert scaled_return(mdp, np.full((100, 4), 0.25)) == pytest.approx(0.0, abs=1e-9)


def test_random_board_is_valid(rng):
    for _ in range(5):
        board, w = random_delivery_board(rng)
        mdp = delivery_mdp(board, w)
        assert (board == Cell.GOAL).sum() + (board == Cell.MUD_GOAL).sum() == 1
        v, q, pi = policy_iteration(mdp)
        assert np.all(q.max(axis=1) <= v + 1e-9)


# --- the regret teacher ------------------------------------------------------------------
def test_regret_teacher_probability_by_hand():
    mdp = chain()
    # first: (s0 fwd, s1 fwd) regret 0; second: (s0 stay, s0 fwd) regret 1
    q = pair_query(mdp, [[0, 1, 2]], [[0, 0]], [[0, 0, 1]], [[1, 0]])
    det = RegretTeacher(TabularOracle(mdp))
    assert [f.label for f in det.label(q)] == [Label.FIRST]
    # deterministic form: sum r + V(s_T) - V(s_0): first 9 + 0 - 9 = 0, second -2 + 10 - 9 = -1
    np.testing.assert_allclose(det.segment_advantage(q.member(1).obs, q.member(1).actions), [-1])
    for beta in (1.0, 2.0):
        t = RegretTeacher(TabularOracle(mdp), beta=beta, soft=True)
        assert t.prob_second(q)[0] == pytest.approx(expit(-beta))
        assert t.label(q)[0].soft == pytest.approx(expit(-beta))


def test_regret_and_partial_return_disagree():
    """A segment with higher return can have higher regret: the teachers answer differently."""
    mdp = chain()
    # first: (s1 stay, s1 stay) return -2, regret 2; second: (s0 fwd, s0 stay): return -2,
    # end state s1 -> -2 + 10 - 9 = -1. Make the first better in return: (s1 fwd, pad): +10.
    q = pair_query(mdp, [[1, 2, 2]], [[0, 0]], [[0, 0, 0]], [[1, 1]])
    # first reaches the goal (return 10, regret 0); second stays twice (return -2, regret 2)
    assert RegretTeacher(TabularOracle(mdp)).label(q)[0].label == Label.FIRST
    q2 = pair_query(mdp, [[0, 1, 2]], [[0, 0]], [[1, 2, 2]], [[0, 0]])
    # first: return 9, regret 0; second: return 10, regret 0 -> regret teacher says equal,
    # the partial-return (oracle) teacher prefers the second
    assert RegretTeacher(TabularOracle(mdp)).label(q2)[0].label == Label.EQUAL
    assert make_teacher("oracle").label(q2)[0].label == Label.SECOND


def test_regret_teacher_stochastic_and_state(rng):
    mdp = delivery_mdp()
    st, ac = sample_segment_pairs(mdp, 200, 3, rng)
    q = pair_query(mdp, st[:, 0], ac[:, 0], st[:, 1], ac[:, 1])
    t = RegretTeacher(TabularOracle(mdp), beta=0.5, seed=3)
    state = t.state_dict()
    a = [f.label for f in t.label(q)]
    t.load_state_dict(state)
    assert [f.label for f in t.label(q)] == a
    p = t.prob_second(q)
    assert np.all((p >= 0) & (p <= 1)) and np.mean((p > 0.05) & (p < 0.95)) > 0.3
    # labels follow the probabilities: agreement with the likelier side beats chance
    agree = np.mean([(lab == Label.SECOND) == (pi > 0.5) for lab, pi in zip(a, p, strict=True)])
    assert agree > 0.6


def test_critic_oracle_and_make_teacher_errors():
    oracle = CriticOracle(lambda o, a: -((a[:, 0] - o[:, 0]) ** 2), lambda o: np.zeros(len(o)))
    obs = np.array([[[0.0], [1.0]], [[0.5], [0.5]]], np.float32)
    act = np.array([[[0.0], [1.0]], [[1.5], [0.5]]], np.float32)
    np.testing.assert_allclose(oracle.advantage(obs, act), [[0, 0], [-1, 0]])
    q = QueryBatch.from_members(
        [SegmentBatch(obs[:1], act[:1], None), SegmentBatch(obs[1:], act[1:], None)]
    )
    assert RegretTeacher(oracle).label(q)[0].label == Label.FIRST
    with pytest.raises(ValueError, match="teacher.critic"):
        make_teacher("regret")
    with pytest.raises(FileNotFoundError, match="python -m pbrl.teachers.regret"):
        make_teacher("regret", critic="/nonexistent/oracle.zip")


def test_sb3_critic_oracle_scores_the_segments_own_actions(tmp_path):
    """Segments hold actions in [-1, 1] (SAC's buffer convention): Pendulum's box is [-2, 2],
    so rescaling them again would score a / 2 instead of a."""
    import gymnasium as gym
    from stable_baselines3 import SAC

    model = SAC("MlpPolicy", gym.make("Pendulum-v1"), policy_kwargs={"net_arch": [16]}, seed=0)
    model.save(tmp_path / "oracle")
    oracle = CriticOracle.from_sb3(tmp_path / "oracle.zip")
    obs = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    act = np.array([[-1.0], [-0.5], [0.0], [0.5], [1.0]], np.float32)

    def q(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            qs = model.policy.critic(torch.as_tensor(obs), torch.as_tensor(a))
        return torch.min(torch.cat(qs, dim=1), dim=1).values.numpy()

    np.testing.assert_allclose(oracle.q_fn(obs, act), q(act), rtol=1e-5, atol=1e-6)
    # outside the box: clipped to it, never extrapolated
    np.testing.assert_allclose(oracle.q_fn(obs, 3 * act), q(np.clip(3 * act, -1, 1)), rtol=1e-5)


# --- tabular learners ------------------------------------------------------------------------
def test_soft_values_tend_to_hard_and_gradient_is_successor_features():
    mdp = delivery_mdp()
    w = np.array(TRUE_WEIGHTS)
    v, psi, _ = optimal_successor_features(mdp, w)
    np.testing.assert_allclose(psi @ w, v, atol=1e-8)
    np.testing.assert_allclose(v, policy_iteration(mdp)[0], atol=1e-8)
    errs = [np.abs(optimal_successor_features(mdp, w, t)[0] - v).max() for t in (1.0, 0.1, 0.01)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.05
    # finite differences of V*(w) equal Psi (V* is piecewise linear in w); the true weights
    # have ties (a coin cell nets 0, like staying elsewhere), so move off the kinks first
    w = w + np.array([0.013, -0.17, 0.029, 0.31, -0.07, 0.011])
    v, psi, _ = optimal_successor_features(mdp, w)
    eps = 1e-6
    for k in range(len(w)):
        dw = np.zeros_like(w)
        dw[k] = eps
        v_eps = optimal_successor_features(mdp, w + dw)[0]
        np.testing.assert_allclose((v_eps - v) / eps, psi[:, k], atol=1e-4)


SMALL_BOARD = (
    (0, 0, 4, 0, 0),
    (0, 3, 5, 6, 0),
    (0, 0, 0, 6, 1),
    (4, 2, 0, 0, 0),
)


def test_regret_learner_recovers_an_optimal_policy(rng):
    mdp = delivery_mdp(SMALL_BOARD, TRUE_WEIGHTS)
    st, ac = sample_segment_pairs(mdp, 300, 3, rng)
    q = pair_query(mdp, st[:, 0], ac[:, 0], st[:, 1], ac[:, 1])
    y = np.array([f.target for f in RegretTeacher(TabularOracle(mdp), decimals=2).label(q)])
    learner = TabularPreferenceLearner(mdp, "regret", lr=0.5, n_iters=300)
    stats = learner.fit(st, ac, y)
    assert stats["accuracy"] > 0.9
    assert scaled_return(mdp, learner.policy()) == pytest.approx(1.0, abs=1e-6)
    # the learned reward ranks destination > coin > step > sheep, as the true one does
    w = learner.weights
    assert w[1] > w[3] > w[0] > w[2]


def test_partial_return_learner_fits_partial_return_labels(rng):
    mdp = delivery_mdp(SMALL_BOARD, TRUE_WEIGHTS)
    st, ac = sample_segment_pairs(mdp, 300, 3, rng)
    q = pair_query(mdp, st[:, 0], ac[:, 0], st[:, 1], ac[:, 1])
    y = np.array([f.target for f in make_teacher("oracle").label(q)])
    learner = TabularPreferenceLearner(mdp, "partial_return", lr=0.5, n_iters=300)
    assert learner.fit(st, ac, y)["accuracy"] > 0.97
    assert scaled_return(mdp, learner.policy()) > 0.9


def test_tabular_learner_rejects_bad_input():
    mdp = chain()
    learner = TabularPreferenceLearner(mdp, "regret", n_iters=1)
    with pytest.raises(ValueError, match="states must be"):
        learner.fit(np.zeros((2, 3), int), np.zeros((2, 2), int), np.zeros(2))
    with pytest.raises(ValueError, match="target"):
        learner.fit(np.zeros((1, 2, 2), int), np.zeros((1, 2, 1), int), np.array([np.nan]))
    with pytest.raises(ValueError, match="unknown preference model"):
        TabularPreferenceLearner(mdp, "sum")


# --- continuous: learning A* and using it as the reward ----------------------------------------
def test_advantage_learner_is_max_normalised_and_learns_the_best_action():
    """A*(s, a) = -(a - s)^2 on 1-D states/actions: g must peak near a = s and be <= 0."""
    torch.manual_seed(0)
    gen = np.random.default_rng(0)
    q, h = 400, 2
    obs = gen.uniform(-0.8, 0.8, (q, 2, h, 1)).astype(np.float32)
    act = gen.uniform(-1, 1, (q, 2, h, 1)).astype(np.float32)
    adv = -((act - obs) ** 2)[..., 0].sum(-1)  # (Q, 2) summed optimal advantage
    target = (adv[:, 1] > adv[:, 0]).astype(np.float32)
    learner = AdvantageRewardLearner(
        1,
        1,
        n_probe_actions=21,
        ensemble_size=1,
        hidden=32,
        n_layers=2,
        max_epochs=60,
        lr=3e-3,
        batch_size=64,
        output_activation="identity",
    )
    stats = learner.train(obs, act, target)
    assert stats["accuracy"] > 0.85
    s = np.linspace(-0.6, 0.6, 5, dtype=np.float32)
    a_grid = np.linspace(-1, 1, 41, dtype=np.float32)
    g = learner.reward_fn(np.repeat(s, 41)[:, None], np.tile(a_grid, 5)[:, None]).reshape(5, 41)
    assert np.all(g <= 1e-6)
    best = a_grid[g.argmax(axis=1)]
    assert np.all(np.abs(best - s) < 0.35), best
    # the config factory builds the same class
    cfg = {"name": "regret", "hidden": 8, "n_layers": 1, "n_probe_actions": 4}
    assert isinstance(make_reward_learner(cfg, 3, 2, seed=0), AdvantageRewardLearner)


def test_advantage_learner_save_load(tmp_path):
    learner = AdvantageRewardLearner(3, 2, hidden=8, n_layers=1, n_probe_actions=4, seed=1)
    o, a = np.ones((5, 3), np.float32), np.zeros((5, 2), np.float32)
    learner.save(tmp_path / "m.zip")
    back = AdvantageRewardLearner.load(tmp_path / "m.zip", device="cpu")
    np.testing.assert_allclose(back.reward_fn(o, a), learner.reward_fn(o, a))
    assert math.isfinite(float(back.reward_fn(o, a).sum()))


# --- end to end: the oracle-building command and pbrl-train teacher=regret reward=regret --------
@pytest.mark.slow  # two subprocesses (SAC oracle, then a run): ~15 s idle, ~40 s on a busy CPU
def test_build_oracle_then_train_with_regret_teacher(tmp_path):
    import os
    import subprocess
    import sys

    from pbrl.store import FeedbackStore

    env = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}
    oracle = tmp_path / "oracle.zip"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pbrl.teachers.regret",
            "--env",
            "halfcheetah",
            "--steps",
            "300",
            "--learning-starts",
            "100",
            "--max-episode-steps",
            "100",
            "--out",
            str(oracle),
            "--device",
            "cpu",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert oracle.exists()
    run_dir = tmp_path / "run"
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            "from pbrl.cli import train; train()",
            "experiment=fast",
            "teacher=regret",
            f"teacher.critic={oracle}",
            "reward=regret",
            "num_train_steps=1500",
            "reward.n_probe_actions=4",
            "reward.hidden=32",
            "eval.episodes=1",
            "log.video_every=0",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    store = FeedbackStore(run_dir / "feedback.sqlite")
    assert store.teacher_ids() == ["regret"]
    counts = store.counts()
    assert counts["first"] + counts["second"] == 20
    store.close()
    metrics = (run_dir / "final_metrics.json").read_text()
    assert "eval/true_return" in metrics and "losses/reward" in metrics
