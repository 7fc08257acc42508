"""QDHF's maze domain (Kheperax rebuild) and AURORA's autoencoder baseline."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from pbrl.qd import QDConfig, QDHFRun
from pbrl.qd.maze import MazeDomain
from pbrl.qd.projection import fit_autoencoder

WALL_X = 0.6  # a single vertical wall across the unit square for constructed poses


def _const_policy(domain: MazeDomain, left: float, right: float) -> np.ndarray:
    """Parameters of a policy that outputs ``tanh(b2) = (left, right)`` whatever it senses."""
    p = np.zeros((1, domain.solution_dim))
    p[0, -2:] = np.arctanh([left, right])
    return p


def test_sensors_read_hand_computed_distances():
    d = MazeDomain(walls=np.array([[WALL_X, 0.0, WALL_X, 1.0]]))
    x, y = np.array([0.5, 0.5]), np.array([0.5, 0.5])
    lasers = d.lasers(x, y, np.array([0.0, np.pi]))
    # facing the wall 0.1 away: centre 0.1, the +-45 degree rays 0.1 * sqrt(2)
    np.testing.assert_allclose(lasers[0], [0.1 * math.sqrt(2), 0.1, 0.1 * math.sqrt(2)])
    # facing away: the left border is 0.5 away, beyond the 0.2 range -> -1 (QDHF setting)
    np.testing.assert_allclose(lasers[1], [-1.0, -1.0, -1.0])
    # 0.15 from the wall at 45 degrees: the centre ray reaches it at 0.15 sqrt(2) > 0.2
    las = d.lasers(np.array([0.45]), np.array([0.5]), np.array([np.pi / 4]))[0]
    np.testing.assert_allclose(las, [0.15, -1.0, -1.0])
    # bumpers: a wall 0.01 ahead (< radius 0.015) touches both; at heading 45 degrees the
    # wall lies at -45 degrees relative, the first bumper only; behind or far away none
    bx, by = np.full(3, WALL_X - 0.01), np.full(3, 0.5)
    bump = d.bumpers(bx, by, np.array([0.0, np.pi / 4, np.pi]))
    np.testing.assert_array_equal(bump, [[1, 1], [1, -1], [-1, -1]])  # behind: none
    np.testing.assert_array_equal(d.bumpers(x, y, np.zeros(2)), -np.ones((2, 2)))
    assert d.observe(x, y, np.zeros(2)).shape == (2, 5)


def test_kinematics_straight_and_spin():
    d = MazeDomain()
    x, y, th = d.move(np.array([0.5]), np.array([0.5]), np.array([0.3]), 0.02, 0.02)
    np.testing.assert_allclose(
        [x[0], y[0], th[0]], [0.5 + 0.02 * math.cos(0.3), 0.5 + 0.02 * math.sin(0.3), 0.3]
    )
    # opposite wheels: a spin in place by (d_r - d_l) / wheel distance
    x, y, th = d.move(np.array([0.5]), np.array([0.5]), np.array([0.0]), -0.01, 0.01)
    np.testing.assert_allclose([x[0], y[0]], [0.5, 0.5], atol=1e-12)
    assert th[0] == pytest.approx(0.02 / 0.03)
    # one wheel still: an arc about that wheel, so the centre stays wd/2 from it
    x, y, th = d.move(np.array([0.5]), np.array([0.5]), np.array([np.pi / 2]), 0.0, 0.02)
    wheel = np.array([0.5 - d.radius, 0.5])  # the left wheel when facing +y
    assert math.hypot(x[0] - wheel[0], y[0] - wheel[1]) == pytest.approx(d.radius)
    assert th[0] > np.pi / 2 and x[0] < 0.5


def test_walls_block_the_robot():
    # full speed straight at the wall from x = 0.3: it stops short of the wall for good
    d = MazeDomain(walls=np.array([[WALL_X, 0.0, WALL_X, 1.0]]), start=(0.3, 0.5, 0.0))
    traj, ret = d.rollout(_const_policy(d, 0.999999, 0.999999))
    xs = traj[0, :, 0]
    assert xs.max() < WALL_X - d.radius and xs[-1] > WALL_X - d.radius - 0.025
    assert np.all(np.diff(xs) >= 0) and xs[-1] == xs[-2] == xs.max()
    np.testing.assert_allclose(traj[0, :, 1], 0.5)
    assert np.allclose(np.diff(xs[:5]), 0.025, atol=1e-6)  # free driving at 0.025 / step
    # the standard maze: heading +x from the start the middle wall (x = 0.25) blocks it
    std = MazeDomain(start=(0.15, 0.5, 0.0))
    traj, _ = std.rollout(_const_policy(std, 0.999999, 0.999999))
    assert traj[0, -1, 0] < 0.25 - std.radius
    # fitness: full speed for 250 steps costs 250 * 2 * 0.025^2 = 0.3125 -> remapped
    assert ret[0] == pytest.approx(-250 * 2 * 0.025**2, rel=1e-5)
    obj, meas, feats = std.evaluate(np.concatenate([_const_policy(std, 0.999999, 0.999999),
                                                    np.zeros((1, std.solution_dim))]))  # fmt: skip
    np.testing.assert_allclose(obj, [(0.3 - 0.3125) / 0.3 * 100, 100.0], atol=1e-3)
    # the still policy stays at the start
    np.testing.assert_allclose(meas[1], [0.15, 0.5])


def test_descriptor_and_features():
    d = MazeDomain(episode_length=40)
    rng = np.random.default_rng(0)
    p = d.sample(30, rng)
    assert p.shape == (30, 66)  # 5 * 8 + 8 + 8 * 2 + 2
    w1, b1, w2, b2 = d.unpack(p)
    assert np.all(b1 == 0) and np.all(b2 == 0) and np.abs(w1).max() <= math.sqrt(3 / 5)
    obj, meas, feats = d.evaluate(p)
    assert feats.shape == (30, 80) and meas.shape == (30, 2) and obj.shape == (30,)
    # feature = (x, y) trajectory from the start; descriptor = its last point
    np.testing.assert_allclose(feats[:, :2], np.tile([0.15, 0.15], (30, 1)))
    np.testing.assert_allclose(meas, feats[:, -2:])
    assert np.all((meas > 0) & (meas < 1)) and np.all(obj <= 100) and np.all(obj > -5)
    # random policies go different places, deterministically
    assert len(np.unique(np.round(meas, 3), axis=0)) > 10
    np.testing.assert_array_equal(d.evaluate(p)[1], meas)


def test_autoencoder_reduces_error_and_gives_2d_latent():
    rng = np.random.default_rng(0)
    z = rng.uniform(-1, 1, (400, 2))
    a = rng.standard_normal((2, 40))
    feats = np.tanh(z @ a) * 0.5
    torch.manual_seed(0)
    res = fit_autoencoder(feats, latent_dim=2, seed=0, max_epochs=200)
    fresh = fit_autoencoder(feats, latent_dim=2, seed=0, max_epochs=0).model
    before, after = fresh.reconstruction_error(feats), res.model.reconstruction_error(feats)
    assert after < 0.2 * before, (before, after)
    assert res.model.project(feats).shape == (400, 2)
    assert res.epochs > 10 and len(res.val_loss) == res.epochs


def test_tiny_qdhf_and_aurora_ae_runs_on_the_maze():
    d = MazeDomain(episode_length=60)
    torch.set_num_threads(1)
    cfg = QDConfig(method="qdhf", iterations=12, batch_size=40, init_pop=40, sigma=0.2,
                   grid=(10, 10), n_pref=40, log_every=6, fit={"max_epochs": 30})  # fmt: skip
    assert cfg.update_iterations() == [1, 2, 4, 7]
    run = QDHFRun(cfg, domain=d)
    m = run.run()
    assert m["judgements"] == 40 and len(run.fit_acc) == 4
    assert m["coverage_all"] > 1.0 and m["archive_size"] > 1  # > 1 of the 100 cells
    assert m["evaluations"] == 40 + 30 + 12 * 40  # initial, 10 random triplets, batches
    ae_cfg = QDConfig(method="aurora_ae_pre", iterations=6, batch_size=40, init_pop=40,
                      grid=(10, 10), log_every=6, sigma=0.2, ae_fit={"max_epochs": 30})  # fmt: skip
    assert ae_cfg.update_iterations() == [1]
    ae_run = QDHFRun(ae_cfg, domain=d)
    m = ae_run.run()
    assert m["judgements"] == 0 and math.isfinite(m["ae_val_loss"])
    assert m["coverage_all"] > 1.0 and ae_run.archive is not None
    assert ae_run.archive.measures.shape[1] == 2 and len(ae_run.archive) > 1


def test_pbrl_qd_maze_fast(tmp_path):
    out = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "pbrl.qd.cli", "domain=maze", "experiment=fast",
         "method=aurora_ae", "iterations=20", "domain.episode_length=100",
         f"hydra.run.dir={out}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "[qd maze aurora_ae" in res.stdout
    final = json.loads((out / "final_metrics.json").read_text())
    assert final["judgements"] == 0 and 0 < final["coverage_all"] <= 100
    assert math.isfinite(final["ae_val_loss"])
    cfg = (out / "config.yaml").read_text()
    assert "name: maze" in cfg and "batch_size: 50" in cfg
