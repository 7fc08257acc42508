"""HERON: the hierarchical decision tree, the teacher on factor tables, the reward learner."""

import numpy as np
import pytest

from pbrl.data import Label, QueryBatch, SegmentBatch
from pbrl.rewards import HeronRewardLearner, make_reward_learner
from pbrl.teachers import make_teacher
from pbrl.teachers.heron import HeronTeacher, hierarchical_decisions

NAMES = ("safety", "progress", "effort")


def factor_segs(table) -> SegmentBatch:
    """One-step segments whose factors are the columns of ``table`` (N, 3)."""
    t = np.asarray(table, np.float32)
    n = len(t)
    return SegmentBatch(
        np.zeros((n, 1, 2), np.float32),
        np.zeros((n, 1, 1), np.float32),
        t.sum(axis=1, keepdims=True),
        reward_factors={k: t[:, [i]] for i, k in enumerate(NAMES)},
    )


def queries(first, second) -> QueryBatch:
    return QueryBatch.from_members([factor_segs(first), factor_segs(second)])


def test_tree_order_margins_ties_and_signs():
    z0 = np.array(
        [
            [1.0, 0.0, 0.0],  # level 0 decides for first
            [1.0, 0.0, 0.0],  # level 0 within margin, level 1 decides for second
            [1.0, 5.0, 2.0],  # tied on 0 and 1; effort is lower-is-better: second (1.0) wins
            [1.0, 5.0, 2.0],  # tied everywhere: undecided
            [0.0, 9.0, 0.0],  # level 0 decides (second safer) despite a worse level 1
        ]
    )
    z1 = np.array(
        [
            [0.0, 9.0, 9.0],
            [1.05, 1.0, 0.0],
            [1.0, 5.0, 1.0],
            [1.0, 5.0, 2.0],
            [0.5, 0.0, 9.0],
        ]
    )
    signs = np.array([1.0, 1.0, -1.0])
    margins = np.array([0.1, 0.1, 0.1])
    winner, level = hierarchical_decisions(z0, z1, signs, margins)
    assert winner.tolist() == [0, 1, 1, -1, 1]
    assert level.tolist() == [0, 1, 2, -1, 0]
    # a gap exactly at the margin does not decide (strict >)
    w, lv = hierarchical_decisions(np.array([[0.0, 0.0]]), np.array([[0.5, 1.0]]), [1, 1], [0.5, 0])
    assert (w[0], lv[0]) == (1, 1)


def test_tree_matches_a_loop_version(rng):
    z0, z1 = rng.normal(size=(300, 4)), rng.normal(size=(300, 4))
    signs = np.array([1.0, -1.0, 1.0, -1.0])
    margins = np.array([1.0, 0.5, 0.8, 2.0])
    winner, level = hierarchical_decisions(z0, z1, signs, margins)
    for i in range(300):
        want_w, want_l = -1, -1
        for k in range(4):
            a, b = signs[k] * z0[i, k], signs[k] * z1[i, k]
            if b > a + margins[k]:
                want_w, want_l = 1, k
                break
            if a > b + margins[k]:
                want_w, want_l = 0, k
                break
        assert (winner[i], level[i]) == (want_w, want_l)


def test_teacher_labels_factor_tables():
    first = [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 5.0, 2.0]]
    second = [[0.0, 9.0, 9.0], [1.0, 1.0, 0.0], [1.0, 5.0, 2.0]]
    t = HeronTeacher(NAMES, ["higher", "higher", "lower"], margins=0.0, margin_mode="absolute")
    fbs = t.label(queries(first, second))
    assert [f.label for f in fbs] == [Label.FIRST, Label.SECOND, Label.SKIP]
    assert t.last_levels.tolist() == [0, 1, -1]
    assert t.level_fractions() == pytest.approx(
        {"decided/safety": 1 / 3, "decided/progress": 1 / 3, "undecided": 1 / 3}
    )
    # ties as EQUAL on request; a different importance order flips the first pair
    t_eq = HeronTeacher(
        ("progress", "safety"), margins=0.0, margin_mode="absolute", undecided="equal"
    )
    assert [f.label for f in t_eq.label(queries(first, second))] == [
        Label.SECOND,
        Label.SECOND,
        Label.EQUAL,
    ]
    # the true reward is not what it reads: first pair's returns favour the second anyway
    assert make_teacher("oracle").label(queries(first[:1], second[:1]))[0].label == Label.SECOND


def test_std_margins_follow_the_batch():
    # safety gaps of 0.1 are inside 1 x std (the batch std of safety is ~0.94), so progress decides
    first = [[0.0, 0.0, 0], [2.0, 0.0, 0], [0.0, 1.0, 0]]
    second = [[0.1, 1.0, 0], [0.0, 1.0, 0], [0.05, 0.0, 0]]
    t = HeronTeacher(("safety", "progress"), margins=[1.0, 0.0], margin_mode="std")
    assert [f.label for f in t.label(queries(first, second))] == [
        Label.SECOND,
        Label.FIRST,
        Label.FIRST,
    ]
    assert t.last_levels.tolist() == [1, 0, 1]
    absolute = HeronTeacher(("safety", "progress"), margins=[0.01, 0.0], margin_mode="absolute")
    assert absolute.label(queries(first, second))[2].label == Label.SECOND


def test_teacher_errors_and_factory():
    with pytest.raises(KeyError, match="teacher.factors"):
        HeronTeacher(("speed",)).label(queries([[0, 0, 0]], [[1, 1, 1]]))
    with pytest.raises(ValueError, match="higher"):
        HeronTeacher(NAMES, ["up", "higher", "lower"])
    with pytest.raises(ValueError, match="margins"):
        HeronTeacher(NAMES, margins=[-1.0])
    t = make_teacher({"name": "heron", "factors": list(NAMES), "margins": 0.0}, seed=1)
    assert isinstance(t, HeronTeacher) and t.teacher_id == "heron"
    with pytest.raises(ValueError, match="teacher.factors"):
        make_teacher("heron")


def test_heron_learner_ranks_by_the_top_factor_and_normalises(rng):
    """Segments of 2-D states: factor 0 (important) = x, factor 1 = y (y is also large)."""
    n, h = 300, 4
    obs = rng.uniform(-1, 1, (2 * n, h, 2)).astype(np.float32)
    act = np.zeros((2 * n, h, 1), np.float32)
    segs = SegmentBatch(
        obs, act, obs.sum(-1), reward_factors={"x": obs[..., 0], "y": 3 * obs[..., 1]}
    )
    q = QueryBatch.from_members([segs[:n], segs[n:]])
    fbs = HeronTeacher(("x", "y"), margins=[0.5, 0.0], margin_mode="absolute").label(q)
    keep = np.array([f.label != Label.SKIP for f in fbs])
    target = np.array([f.target for f in fbs])[keep]
    pair_obs = np.stack([obs[:n], obs[n:]], axis=1)[keep]
    pair_act = np.stack([act[:n], act[n:]], axis=1)[keep]
    learner = HeronRewardLearner(
        2, 1, ensemble_size=1, hidden=32, n_layers=1, lr=3e-3, max_epochs=80, seed=0
    )
    stats = learner.train(pair_obs, pair_act, target)
    assert stats["accuracy"] > 0.85
    r = learner.reward_fn(pair_obs.reshape(-1, 2), pair_act.reshape(-1, 1))
    assert abs(r.mean()) < 1e-3 and abs(r.std() - 1) < 1e-2  # normalised on labelled steps
    # the important factor dominates: the reward rises along x more than along y
    grid = np.array([[-0.5, 0.0], [0.5, 0.0], [0.0, -0.5], [0.0, 0.5]], np.float32)
    g = learner.reward_fn(grid, np.zeros((4, 1), np.float32))
    assert g[1] - g[0] > 0 and g[1] - g[0] > abs(g[3] - g[2])
    # state round trip keeps the normalisation
    other = make_reward_learner(
        {"name": "heron", "hidden": 32, "n_layers": 1, "ensemble_size": 1}, 2, 1, seed=5
    )
    other.load_state_dict(learner.state_dict())
    np.testing.assert_allclose(other.reward_fn(grid, np.zeros((4, 1), np.float32)), g)


def test_pbrl_train_with_heron_teacher_and_reward(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from pbrl.store import FeedbackStore

    env = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}
    run_dir = tmp_path / "run"
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            "from pbrl.cli import train; train()",
            "experiment=fast",
            "teacher=heron",
            "reward=heron",
            "num_train_steps=1500",
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
    assert store.teacher_ids() == ["heron"] and store.num_labels() == 20
    store.close()
    metrics = json.loads((run_dir / "final_metrics.json").read_text())
    assert metrics["pref/accuracy_labelled"] > 0.5 and "eval/true_return" in metrics
