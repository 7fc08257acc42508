"""HERON: the hierarchical decision tree, the teacher on factor tables, the reward learner."""

import math

import numpy as np
import pytest
import torch

from pbrl.data import Label, QueryBatch, SegmentBatch
from pbrl.rewards import BTRewardLearner, HeronRewardLearner, bt_loss, make_reward_learner
from pbrl.rewards.heron import level_scales
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
    """The CLI end to end, with the level scale on (off, it is the plain learner's path)."""
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
            "reward.level_scale=2.0",
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
    # the decided fraction per level (the notes' log) sums to one with the undecided pairs
    levels = {k: v for k, v in metrics.items() if k.startswith("heron/")}
    assert "heron/undecided" in levels and any(k.startswith("heron/decided/") for k in levels)
    assert sum(levels.values()) == pytest.approx(1.0)
    saved = (run_dir / "config.yaml").read_text()
    assert "level_scale: 2.0" in saved


# --- the level-dependent reward-gap scale alpha^k (reward.level_scale) ----------------------


def test_level_scales_and_the_scaled_loss_by_hand():
    assert level_scales(np.array([0, 1, 2, -1]), 2.0).tolist() == [1.0, 2.0, 4.0, 1.0]
    with pytest.raises(ValueError, match="integer"):
        level_scales(np.array([0.5]), 2.0)
    with pytest.raises(ValueError, match=">= -1"):
        level_scales(np.array([-2]), 2.0)
    # three pairs: second wins at level 1, first wins at level 2, a tie (level -1), alpha = 2
    r0 = torch.tensor([[0.3, 0.5, 0.0]])
    r1 = torch.tensor([[1.0, -0.5, 1.0]])
    y = torch.tensor([1.0, 0.0, 0.5])
    c = torch.as_tensor(level_scales(np.array([1, 2, -1]), 2.0))
    want = (
        math.log1p(math.exp(-2 * 0.7))  # -log sigmoid(2 (R1 - R0))
        + math.log1p(math.exp(-4 * 1.0))  # -log sigmoid(4 (R0 - R1))
        + 0.5 * (math.log1p(math.exp(1.0)) + math.log1p(math.exp(-1.0)))  # tie, scale 1
    ) / 3
    assert bt_loss(r0, r1, y, c).item() == pytest.approx(want, rel=1e-6)
    # alpha = 1 (or no scale) is the plain Bradley-Terry loss
    plain = bt_loss(r0, r1, y).item()
    assert bt_loss(r0, r1, y, torch.ones(3)).item() == pytest.approx(plain, rel=1e-7)
    assert plain != pytest.approx(want, rel=1e-3)


def one_hot_pairs(n_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """Pair ``i`` compares one-step segments in states ``2i`` (first) and ``2i + 1``."""
    eye = np.eye(2 * n_pairs, dtype=np.float32)
    obs = np.stack([eye[0::2], eye[1::2]], axis=1)[:, :, None, :]  # (Q, 2, 1, 2Q)
    return obs, np.zeros((n_pairs, 2, 1, 1), np.float32)


def test_the_pair_decided_higher_gets_the_larger_gap():
    """Same preference strength (the first wins 3 times in 4) at levels 0 and 1, alpha = 2.

    The loss -[p log s(a^k g) + (1-p) log s(-a^k g)] is minimised at a^k g = logit(p), so the
    learned gaps are ln 3 (level 0) and ln 3 / 2 (level 1): a factor alpha per level.
    """
    obs, act = one_hot_pairs(2)
    target = np.full(2, 0.25, np.float32)  # P(second preferred)
    levels = np.array([0, 1])
    kw = dict(ensemble_size=1, hidden=16, n_layers=1, lr=1e-2, batch_size=2, max_epochs=1500)
    learner = HeronRewardLearner(
        4, 1, normalize=False, level_scale=2.0, acc_target=1.0, seed=0, **kw
    )
    learner.train(obs, act, target, levels=levels)
    ret = learner.segment_returns(obs.reshape(4, 1, 4), act.reshape(4, 1, 1))[0]
    gaps = ret[0::2] - ret[1::2]  # R(first) - R(second) per pair
    np.testing.assert_allclose(gaps, [math.log(3), math.log(3) / 2], rtol=1e-3)
    # without the scale both pairs get the same gap
    plain = HeronRewardLearner(4, 1, normalize=False, acc_target=1.0, seed=0, **kw)
    plain.train(obs, act, target, levels=levels)
    ret = plain.segment_returns(obs.reshape(4, 1, 4), act.reshape(4, 1, 1))[0]
    np.testing.assert_allclose(ret[0::2] - ret[1::2], [math.log(3)] * 2, rtol=1e-3)


def test_alpha_one_or_top_level_only_is_plain_bradley_terry(rng):
    obs = rng.normal(size=(40, 2, 3, 2)).astype(np.float32)
    act = rng.normal(size=(40, 2, 3, 1)).astype(np.float32)
    target = (obs[:, 1, :, 0].sum(1) > obs[:, 0, :, 0].sum(1)).astype(np.float32)
    kw = dict(ensemble_size=2, hidden=16, n_layers=1, max_epochs=5, batch_size=8, seed=3)
    bt = BTRewardLearner(2, 1, **kw)
    bt.train(obs, act, target)
    mixed = rng.integers(-1, 3, size=40)
    for alpha, levels in ((1.0, mixed), (3.0, np.zeros(40, np.int64))):
        heron = HeronRewardLearner(2, 1, normalize=False, level_scale=alpha, **kw)
        heron.train(obs, act, target, levels=levels)
        for k, v in bt.ensemble.state_dict().items():
            torch.testing.assert_close(heron.ensemble.state_dict()[k], v, rtol=0, atol=0)
    # and alpha != 1 with deeper levels does train differently
    heron = HeronRewardLearner(2, 1, normalize=False, level_scale=3.0, **kw)
    heron.train(obs, act, target, levels=np.ones(40, np.int64))
    assert any(
        not torch.equal(heron.ensemble.state_dict()[k], v)
        for k, v in bt.ensemble.state_dict().items()
    )


def test_level_scale_errors():
    obs, act = one_hot_pairs(2)
    with pytest.raises(ValueError, match="level_scale must be finite and > 0"):
        HeronRewardLearner(4, 1, level_scale=0.0)
    learner = HeronRewardLearner(4, 1, level_scale=2.0, hidden=8, n_layers=1, max_epochs=1)
    assert learner.uses_levels and not HeronRewardLearner(4, 1).uses_levels
    with pytest.raises(ValueError, match="levels="):
        learner.train(obs, act, np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="one level per pair"):
        learner.train(obs, act, np.zeros(2, np.float32), levels=np.zeros(3, np.int64))


def test_teacher_reports_the_deciding_level_by_query_id():
    first = [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 5.0, 2.0]]
    second = [[0.0, 9.0, 9.0], [1.0, 1.0, 0.0], [1.0, 5.0, 2.0]]
    q = queries(first, second)
    t = HeronTeacher(NAMES, margins=0.0, margin_mode="absolute", undecided="equal")
    t.label(q)
    assert t.levels_of([q.ids[2], q.ids[0], q.ids[1]]).tolist() == [-1, 0, 1]
    with pytest.raises(KeyError, match="last label"):
        t.levels_of(["not-a-query"])


def test_online_loop_carries_levels_and_resumes_them(tmp_path):
    """The loop hands the learner one level per labelled pair, equal to the tree's level on
    the stored segments, and a resumed run has the same levels."""
    from hydra import compose, initialize_config_module

    from pbrl.loops.online import PreferenceLoop, RunError
    from pbrl.store import FeedbackStore

    over = [
        "experiment=fast",
        "log.progress=none",
        "teacher=heron",
        "reward=heron",
        "teacher.margin_mode=absolute",
        "teacher.margins=[5.0,0.0]",
        "num_train_steps=1300",
        "eval.every=1300",
        "log.video_every=0",
    ]
    with initialize_config_module("pbrl.configs", version_base="1.3"):
        cfg = compose("train", overrides=[*over, "reward.level_scale=2.0"])
        wrong = compose("train", overrides=[*over[:2], "reward=heron", "reward.level_scale=2.0"])
    with pytest.raises(RunError, match="teacher=heron"):
        PreferenceLoop(wrong, tmp_path / "oracle")

    loop = PreferenceLoop(cfg, tmp_path / "run")
    seen: list[np.ndarray] = []
    train = loop.learner.train

    def spy(obs, act, target, levels=None):
        seen.append(np.array(levels))
        return train(obs, act, target, levels=levels)

    loop.learner.train = spy  # type: ignore[method-assign]
    try:
        loop.run()
        loop.save_checkpoint()
    finally:
        loop.close()
    assert seen and len(seen[-1]) == len(loop.labelled_target) > 0
    np.testing.assert_array_equal(seen[-1], loop.labelled_levels)
    assert set(np.unique(loop.labelled_levels)) <= {0, 1}
    # recompute the tree on the stored segments of the non-skip labels (absolute margins)
    with FeedbackStore(tmp_path / "run" / "feedback.sqlite") as store:
        kept = [f.query_id for f in store.feedback() if f.label != Label.SKIP]
        _, want = loop.teacher.decide(store.get_queries(kept))
    np.testing.assert_array_equal(loop.labelled_levels, want)

    again = PreferenceLoop(cfg, tmp_path / "run")
    try:
        assert again.try_resume()
        np.testing.assert_array_equal(again.labelled_levels, loop.labelled_levels)
    finally:
        again.close()


def test_heron_on_franka_factors(tmp_path):
    """HERON ranks a Franka task's own factors (push: object-to-goal > reach > control cost);
    the stored labels are the tree's decisions on the stored segments' factors."""
    pytest.importorskip("mujoco")
    from hydra import compose, initialize_config_module

    from pbrl.loops.online import PreferenceLoop
    from pbrl.store import FeedbackStore

    over = [
        "experiment=fast",
        "log.progress=none",
        "env=franka_push",
        "teacher=heron",
        "reward=heron",
        "teacher.factors=[obj_to_goal,reach_dist,ctrl_cost]",
        "teacher.margin_mode=absolute",  # so the decisions can be recomputed from the store
        "teacher.margins=[0.05,0.05,0.0]",
        "num_train_steps=900",
        "eval.every=900",
        "eval.episodes=1",
        "log.video_every=0",
    ]
    with initialize_config_module("pbrl.configs", version_base="1.3"):
        cfg = compose("train", overrides=over)
    loop = PreferenceLoop(cfg, tmp_path / "run")
    try:
        loop.run()
    finally:
        loop.close()
    with FeedbackStore(tmp_path / "run" / "feedback.sqlite") as store:
        feedback = store.feedback()
        assert store.teacher_ids() == ["heron"] and len(feedback) == loop.queries_used > 0
        queries = store.get_queries([f.query_id for f in feedback])
    winner, level = loop.teacher.decide(queries)
    code = {Label.FIRST: 0, Label.SECOND: 1, Label.SKIP: -1}
    stored = np.array([code[f.label] for f in feedback])
    np.testing.assert_array_equal(stored, winner)  # the stored labels are the tree's decisions
    assert (level == 0).any() and (level > 0).any()  # the top factor and a lower one decided
    assert np.isfinite(loop.last["eval/true_return"])
