"""RAPL's RLHF baseline: a Bradley-Terry per-frame reward on the same triplets, and SAC on it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from support import tb_scalars

from pbrl.visual.encoders import FrameEncoder
from pbrl.visual.rlhf import PAIRS, RLHFReward


def _square_video(xs: np.ndarray, rng: np.random.Generator, size: int = 16) -> np.ndarray:
    """Frames with a white square at x positions ``xs`` and a random-colour distractor."""
    v = np.zeros((len(xs), size, size, 3), np.uint8)
    for i, x in enumerate(xs):
        v[i, 6:10, int(x) : int(x) + 4] = 255
        v[i, 0:3, :, rng.integers(0, 3)] = rng.integers(0, 255)
    return v


def _triplets(n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, 3, 5, 16, 16, 3)`` triplets (pos, neu, neg): the square ends rightmost first."""
    out = []
    for _ in range(n):
        ends = np.sort(rng.uniform(0, 12, size=3))[::-1]
        out.append(np.stack([_square_video(np.linspace(6, e, 5), rng) for e in ends]))
    return np.stack(out)


def _pair_accuracy(model: RLHFReward, triplets: np.ndarray) -> float:
    m = len(triplets)
    ret = model.score(triplets.reshape(m * 3, *triplets.shape[2:])).reshape(m, 3)
    return float(np.mean([ret[:, i] > ret[:, j] for i, j in PAIRS]))


def test_rlhf_reward_learns_a_constructed_preference(tmp_path):
    # The person prefers videos whose square ends on the right; the top stripe is a random
    # distractor. The per-frame cost learned by Bradley-Terry on the triplets' pairs must
    # order held-out pairs well above chance (1/2).
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    train, test = _triplets(40, rng), _triplets(30, rng)
    enc = FrameEncoder("small_cnn", embed_dim=1, image_size=16, cnn_channels=8)
    model = RLHFReward(enc, lr=3e-3, epochs=15, batch_size=10, val_frac=0.2, seed=0)
    before = _pair_accuracy(model, test)
    stats = model.fit(train)
    hist = stats["history"]
    assert hist[-1]["train_loss"] < 0.8 * hist[1]["train_loss"]
    after = _pair_accuracy(model, test)
    assert after >= 0.85 and after > before
    assert stats["val_accuracy"] >= 0.75  # the held-out share of the training triplets
    # RL reward: the cost standardised over the training frames, higher for the right
    # end; frame by frame (an episode's rewards are its frames' rewards).
    frames = train.reshape(-1, 16, 16, 3)
    model.normalise_frames(frames)
    r = model.frame_rewards(frames)
    assert abs(r.mean()) < 1e-4 and r.std() == pytest.approx(1.0, rel=0.01)
    right = _square_video(np.array([12.0]), np.random.default_rng(1))
    left = _square_video(np.array([0.0]), np.random.default_rng(1))
    assert model.frame_rewards(right)[0] > model.frame_rewards(left)[0]
    ep = model.episode_rewards(test[:2, 0])
    np.testing.assert_allclose(ep[1], model.frame_rewards(test[1, 0]), rtol=1e-6)
    # The pixel per-step interface gives the newest frame's reward.
    obs = test[0, 0].transpose(0, 3, 1, 2).astype(np.float32)
    np.testing.assert_allclose(model.reward_fn(obs), ep[0], rtol=1e-5, atol=1e-6)
    # Saved and loaded: the same rewards, normalisation included.
    model.save(tmp_path / "m")
    loaded = RLHFReward.load(tmp_path / "m")
    np.testing.assert_allclose(loaded.frame_rewards(frames), r, rtol=1e-5, atol=1e-5)


def test_rlhf_reward_rejects_misuse(tmp_path):
    with pytest.raises(ValueError, match="embed_dim=1"):
        RLHFReward(FrameEncoder("small_cnn", embed_dim=4, image_size=16))
    model = RLHFReward(encoder_kwargs={"backbone": "small_cnn", "image_size": 16})
    assert model.encoder.embed_dim == 1
    with pytest.raises(TypeError, match="no expert demos"):
        model.set_demos(np.zeros((1, 2, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="at least two"):
        model.set_normalisation(np.zeros(1))
    with pytest.raises(FileNotFoundError, match="rlhf.path"):
        RLHFReward.load(tmp_path)


def test_fast_run_trains_sac_on_rlhf_reward_and_resumes(tmp_path):
    pytest.importorskip("pymunk")
    from pbrl.visual.rl import train_on_rapl_reward

    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "pbrl.visual.train",
        "experiment=fast",
        "reward=rlhf",
        f"hydra.run.dir={run}",
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=180)
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["charts/time_total_timesteps"] == 300
    assert final["rlhf/episodes_scored"] == 6  # 300 steps of 50-step episodes
    assert final["losses/n_updates"] > 0  # SAC learned on relabelled rows
    assert 0.0 <= final["align/val_accuracy"] <= 1.0
    stats = json.loads((run / "align.json").read_text())
    assert stats["triplets"] == 20 and stats["videos"] == 12  # the fast preset's align.*
    tags = tb_scalars(run)
    for tag in ("eval/true_return", "eval/success_rate", "eval/rlhf_return", "train/rlhf_return"):
        assert tag in tags, tag
    assert not any(t.startswith("rapl/") or t.endswith("rapl_return") for t in tags)
    assert (run / "reward_model" / "rlhf.pt").is_file()
    assert not (run / "encoder").exists() and not (run / "demos.npz").exists()
    # The logged training return is the learned reward's: per-frame standardised costs of
    # 50-step episodes, so finite and not the env's (always 0 here).
    assert all(np.isfinite(v) and v != 0.0 for v in tags["train/rlhf_return"])
    # Resume to 400 steps: the saved reward model is reused (not learned again).
    saved = (run / "reward_model" / "rlhf.pt").stat().st_mtime_ns
    cfg = json.loads((run / "config.json").read_text())
    cfg["num_train_steps"] = 400
    train_on_rapl_reward(cfg, run, resume=True)
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["charts/time_total_timesteps"] == 400
    assert final["rlhf/episodes_scored"] == 2  # only the new episodes
    assert (run / "reward_model" / "rlhf.pt").stat().st_mtime_ns == saved
