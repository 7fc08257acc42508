"""QDHF: similarity teacher, triplet loss, projection fit, MAP-Elites archive and the loop."""

import math

import numpy as np
import pytest
import torch

from pbrl.data import Label
from pbrl.qd import (
    ArmDomain,
    GridArchive,
    QDConfig,
    QDHFRun,
    default_teacher,
    fit_projection,
    triplet_hinge_loss,
    triplet_query,
)
from pbrl.teachers.similarity import SimilarityTeacher


def test_hinge_loss_hand_values():
    z_ref = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    z1 = torch.tensor([[1.0, 0.0], [0.1, 0.0]])
    z2 = torch.tensor([[0.1, 0.0], [1.0, 0.0]])
    # delta = |ref - z1|^2 - |ref - z2|^2 = [0.99, -0.99]
    y = torch.tensor([1.0, 1.0])
    loss = triplet_hinge_loss(z_ref, z1, z2, y)
    assert math.isclose(float(loss), (0.0 + (0.05 + 0.99)) / 2, rel_tol=1e-6)
    y = torch.tensor([-1.0, -1.0])
    assert math.isclose(
        float(triplet_hinge_loss(z_ref, z1, z2, y)), (0.05 + 0.99) / 2, rel_tol=1e-6
    )


def test_similarity_teacher_labels():
    arm = ArmDomain(3)
    rng = np.random.default_rng(0)
    th = arm.sample(30, rng).reshape(10, 3, 3)
    q = triplet_query(arm, th)
    fb = default_teacher().label(q)
    g = arm.measures(th.reshape(-1, 3)).reshape(10, 3, 2)
    d1 = ((g[:, 0] - g[:, 1]) ** 2).sum(-1)
    d2 = ((g[:, 0] - g[:, 2]) ** 2).sum(-1)
    expect = [Label.SECOND if a > b else Label.FIRST for a, b in zip(d1, d2, strict=True)]
    assert [f.label for f in fb] == expect
    # the learner-facing copy has no factors: the teacher refuses rather than guessing
    with pytest.raises(ValueError, match="reward factors"):
        default_teacher().describe(q.member(0).without_reward())
    with pytest.raises(ValueError, match="triplet"):
        default_teacher().label(type(q).from_members([q.member(0), q.member(1)]))
    # noise: every answer flipped at eps_mistake = 1
    flip = SimilarityTeacher(factor_names=("measure_0", "measure_1"), eps_mistake=1.0)
    assert [f.label for f in flip.label(q)] == [
        Label.FIRST if e == Label.SECOND else Label.SECOND for e in expect
    ]


def test_archive_insertion_keeps_best_per_cell():
    a = GridArchive((2, 2), [0, 0], [1, 1], solution_dim=1)
    sols = np.array([[0.0], [1.0], [2.0], [3.0], [4.0]])
    obj = np.array([1.0, 5.0, 3.0, 2.0, -1.0])
    meas = np.array([[0.1, 0.1], [0.2, 0.2], [0.9, 0.1], [0.9, 0.2], [5.0, 5.0]])
    status = a.add(sols, obj, meas)
    # cell (0,0): sols 0, 1 -> 1 wins; cell (1,0): sols 2, 3 -> 2 wins; (5,5) clips to (1,1)
    assert status.tolist() == [0, 2, 2, 0, 2]
    assert len(a) == 3 and a.coverage() == 75.0
    assert math.isclose(a.qd_score(), (5 + 3 - 1) / 4)
    status = a.add(
        np.array([[9.0], [8.0]]), np.array([4.0, 6.0]), np.array([[0.1, 0.1], [0.6, 0.1]])
    )
    assert status.tolist() == [0, 1]
    s, o, _ = a.elites()
    assert sorted(o.tolist()) == [-1.0, 5.0, 6.0]
    assert a.heatmap().shape == (2, 2, 3)


def test_projection_recovers_known_descriptor():
    # Triplets judged by the arm's end-effector position: the linear projection of the
    # cos/sin features must order held-out triplets like the true measure does.
    arm = ArmDomain(5)
    rng = np.random.default_rng(0)
    teacher = default_teacher()

    def judged(n):
        th = arm.sample(3 * n, rng).reshape(n, 3, 5)
        fb = teacher.label(triplet_query(arm, th))
        y = np.array([1.0 if f.label == Label.SECOND else -1.0 for f in fb])
        return arm.features(th.reshape(-1, 5)).reshape(n, 3, -1), y

    x, y = judged(600)
    res = fit_projection(x, y, seed=0)
    xt, yt = judged(300)
    z = res.model.project(xt.reshape(-1, xt.shape[-1])).reshape(300, 3, 2)
    delta = ((z[:, 0] - z[:, 1]) ** 2).sum(-1) - ((z[:, 0] - z[:, 2]) ** 2).sum(-1)
    acc = float(((delta > 0) == (yt > 0)).mean())
    assert acc > 0.9, acc
    assert res.val_acc and res.val_acc[-1] > 0.85


def test_map_elites_gt_fills_archive_on_toy_problem():
    cfg = QDConfig(method="gt", iterations=60, batch_size=50, grid=(10, 10), log_every=30)
    run = QDHFRun(cfg, domain=ArmDomain(4))
    m = run.run()
    assert m["coverage_all"] > 50 and m["qd_score_all"] > 0
    # gt: the archive is on the true measure, so both views agree
    assert (
        m["coverage_archive"] == pytest.approx(m["coverage_all"], abs=1e-9)
        or m["coverage_archive"] <= m["coverage_all"]
    )
    assert [h["iteration"] for h in run.history] == [30.0, 60.0]


def test_progressive_schedule_and_qdhf_beats_base():
    cfg = QDConfig(method="qdhf", iterations=100, n_pref=400, grid=(20, 20), seed=0)
    assert cfg.update_iterations() == [1, 11, 26, 51]
    assert QDConfig(method="qdhf_base", iterations=100).update_iterations() == [1]
    logs = []
    run = QDHFRun(cfg, domain=ArmDomain(6), log=lambda t, v, i: logs.append((t, i)))
    m = run.run()
    assert m["judgements"] == 400 and len(run.fit_acc) == 4
    assert [i for t, i in logs if t == "qd/refit_val_acc"] == [1, 11, 26, 51]
    base = QDHFRun(
        QDConfig(method="qdhf_base", iterations=100, n_pref=400, grid=(20, 20)), domain=ArmDomain(6)
    ).run()
    assert m["coverage_all"] > base["coverage_all"]


def test_pbrl_qd_fast_writes_metrics_and_images(tmp_path):
    import json
    import subprocess
    import sys

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "pbrl.qd.cli", "experiment=fast", "method=qdhf",
         f"hydra.run.dir={out}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "QD score" in res.stdout
    final = json.loads((out / "final_metrics.json").read_text())
    assert final["judgements"] == 200 and 0 < final["coverage_all"] <= 100
    hist = json.loads((out / "history.json").read_text())
    assert [h["iteration"] for h in hist] == [20.0, 40.0]
    acc = EventAccumulator(str(out))
    acc.Reload()
    assert {"qd/coverage_all", "qd/qd_score_archive", "qd/refit_val_acc"} <= set(
        acc.Tags()["scalars"]
    )
    assert "qd/archive_all_gt" in acc.Tags()["images"]
