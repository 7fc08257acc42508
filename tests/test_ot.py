"""Batched log-domain Sinkhorn and the OT reward (pbrl/rewards/ot.py)."""

import math

import numpy as np
import pytest
import torch

from pbrl.rewards.ot import cost_matrix, ot_rewards, ot_score, sinkhorn_log, step_rewards


def test_marginals_and_pot_agree():
    ot = pytest.importorskip("ot")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, 4, generator=g, dtype=torch.float64)
    y = torch.randn(3, 8, 4, generator=g, dtype=torch.float64)
    c = cost_matrix(x, y)
    plan = sinkhorn_log(c, eps=0.05, n_iters=5000, tol=1e-12)
    assert torch.allclose(plan.sum(-1), torch.full((3, 6), 1 / 6, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(plan.sum(-2), torch.full((3, 8), 1 / 8, dtype=torch.float64), atol=1e-12)
    for i in range(3):
        ref = ot.sinkhorn(
            np.full(6, 1 / 6),
            np.full(8, 1 / 8),
            c[i].numpy(),
            0.05,
            method="sinkhorn_log",
            numItermax=20000,
            stopThr=1e-14,
        )
        np.testing.assert_allclose(plan[i].numpy(), ref, atol=1e-10)


def test_hand_computed_two_point_plan():
    # 2x2 problem with C = [[0, 1], [1, 0]]: the entropic plan is symmetric with
    # diagonal mass p = 1 / (2 (1 + exp(-1/eps))) per entry (exact closed form).
    eps = 0.5
    c = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    plan = sinkhorn_log(c, eps=eps, n_iters=500, tol=1e-14)
    p = 1 / (2 * (1 + math.exp(-1 / eps)))
    expect = torch.tensor([[p, 0.5 - p], [0.5 - p, p]], dtype=torch.float64)
    assert torch.allclose(plan, expect, atol=1e-12)
    # paper reward: r_t = -sum_s M C; sums to -<M, C>
    r = step_rewards(plan, c, "paper")
    assert torch.allclose(r, torch.full((2,), -(0.5 - p), dtype=torch.float64))
    assert torch.isclose(r.sum(), -(plan * c).sum())
    # frame scale: T times the paper's
    assert torch.allclose(step_rewards(plan, c, "frame"), 2 * r)
    assert torch.allclose(step_rewards(plan, c, "code"), -1e4 * r.square())


def test_identical_video_scores_highest():
    g = torch.Generator().manual_seed(1)
    demo = torch.randn(20, 16, generator=g)
    shuffled = demo[torch.randperm(20, generator=g)]
    other = torch.randn(20, 16, generator=g)
    robot = torch.stack([demo, shuffled, other])
    r, best = ot_rewards(robot, demo, eps=0.01)
    totals = r.sum(-1)
    # identical frames: zero cost, the maximal reward; a permutation of the same frames is
    # still matched perfectly (OT ignores order); unrelated frames score clearly lower
    assert abs(float(totals[0])) < 1e-3
    assert totals[0] > totals[2] + 1.0
    assert (best == 0).all()


def test_best_of_several_demos():
    g = torch.Generator().manual_seed(2)
    demos = torch.randn(3, 10, 8, generator=g)
    robot = demos[[2, 0]] + 0.01 * torch.randn(2, 10, 8, generator=g)
    _, best = ot_rewards(robot, demos)
    assert best.tolist() == [2, 0]


def test_envelope_gradient_matches_unrolled_entropic_value():
    # d/dC (<M*, C> - eps H(M*)) = M*: the detached-plan gradient equals the gradient of the
    # entropic OT value through an unrolled Sinkhorn.
    g = torch.Generator().manual_seed(3)
    eps = 0.2
    x = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 3, generator=g, dtype=torch.float64)
    score = ot_score(x, y, eps=eps, n_iters=2000, tol=1e-13, grad="envelope")
    (gx_env,) = torch.autograd.grad(score, x)

    x2 = x.detach().clone().requires_grad_(True)
    c = cost_matrix(x2, y)
    plan = sinkhorn_log(c, eps=eps, n_iters=300, tol=None)
    value = (plan * c).sum() + eps * (plan * (plan.log() - 1)).sum()
    (gx_unr,) = torch.autograd.grad(-value, x2)
    assert torch.allclose(gx_env, gx_unr, atol=1e-6)


def test_small_eps_is_stable():
    c = torch.rand(2, 30, 40, generator=torch.Generator().manual_seed(4)) * 2
    # eps = 1e-3 on costs of order 1 underflows a plain (non-log) Sinkhorn kernel exp(-C/eps)
    plan = sinkhorn_log(c, eps=1e-3, n_iters=2000, tol=1e-6)
    assert torch.isfinite(plan).all()
    assert torch.allclose(plan.sum(-2), torch.full((2, 40), 1 / 40), atol=1e-6)
    assert torch.allclose(plan.sum(-1), torch.full((2, 30), 1 / 30), atol=1e-4)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="eps"):
        sinkhorn_log(torch.zeros(2, 2), eps=0)
    with pytest.raises(ValueError, match="cost"):
        cost_matrix(torch.zeros(2, 2), torch.zeros(2, 2), cost="l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same D"):
        ot_rewards(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4))


@pytest.mark.parametrize(("transform", "scale"), [("code", 1.0), ("paper", 1.0), ("paper", -1.0)])
def test_the_matched_demo_is_the_one_with_the_lowest_ot_cost(transform: str, scale: float):
    """The official code matches a video to the demo of lowest raw OT cost, then shapes the
    reward; choosing by the shaped reward ("code" squares per-step costs) can pick another."""
    g = torch.Generator().manual_seed(3)
    demos = torch.randn(4, 12, 6, generator=g)
    robot = torch.randn(16, 12, 6, generator=g)
    _, best = ot_rewards(robot, demos, transform=transform, scale=scale)
    score = torch.stack([ot_score(robot, demos[k].expand_as(robot)) for k in range(4)], 1)
    assert best.tolist() == score.argmax(dim=1).tolist()  # score = -<M, C>
