import math

import numpy as np
import pytest
import torch

from pbrl.morl.cmorl import (
    Archive,
    CodeBarrier,
    PaperBarrier,
    constraint_threshold,
    extended_log,
)
from pbrl.morl.envs import make_mo_env
from pbrl.morl.metrics import EvalProtocol
from pbrl.morl.ppo import MOPPO, MOPPOConfig, evaluate_policy


def test_threshold_keeps_the_same_slack_for_negative_returns() -> None:
    assert constraint_threshold(np.array([100.0, -50.0]), 0.9).tolist() == [90.0, -55.0]


def test_paper_barrier_value_and_gradient_by_hand() -> None:
    t, kappa = 20.0, 100.0
    bar = PaperBarrier(0, np.array([10.0, 20.0]), np.array([10.0, 20.0]), 0.9, t, kappa)
    ratio = torch.ones(4, requires_grad=True)
    adv = torch.tensor([[5.0, 0.01], [5.0, 0.03], [5.0, -0.01], [5.0, 0.01]])
    loss = bar.loss(ratio, adv, torch.zeros(4, 2), clip=0.2)
    gap = 20.0 - 18.0  # at rho = 1 the estimate is G_1(pi_old), whatever the advantages' mean
    assert loss.item() == pytest.approx(-math.log(gap) / t, rel=1e-5)
    loss.backward()
    # d/d rho_i of -(1/t) log(gap) = -(1/t) (1/gap) kappa A_i1 / B; objective 0 plays no part
    expect = -(1 / t) / gap * kappa * adv[:, 1] / 4
    assert torch.allclose(ratio.grad, expect, rtol=1e-5)


def test_paper_barrier_pushes_back_when_infeasible() -> None:
    bar = PaperBarrier(1, np.array([10.0, 5.0]), np.array([5.0, 5.0]), 0.9, 20.0, 100.0)
    ratio = torch.ones(2, requires_grad=True)
    adv = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    loss = bar.loss(ratio, adv, torch.zeros(2, 2), clip=0.2)
    loss.backward()
    assert torch.isfinite(loss) and ratio.grad[0] < 0 < ratio.grad[1]  # raise rho where A_0 > 0
    x = torch.tensor([2.0, 0.5e-3])
    eps = torch.tensor([1e-3, 1e-3])  # noqa: E702
    y = extended_log(x, eps)
    assert y[0] == pytest.approx(math.log(2.0)) and y[1] == pytest.approx(math.log(1e-3) - 0.5)


def test_code_barrier_matches_official_formula_and_its_dead_zone() -> None:
    bar = CodeBarrier(0, 2, beta=0.9, t=20.0)
    ratio = torch.ones(3, requires_grad=True)
    ret = torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0]])
    loss = bar.loss(ratio, torch.zeros(3, 2), ret, clip=0.2)
    # as the official code runs: objective 0 (mean 0: clamped at 1e-3) is kept, row 0 dropped
    want = (-math.log(1e-3) - math.log((1 - 0.9) * 2.0)) / 2 / 20.0
    assert loss.item() == pytest.approx(want, rel=1e-5)
    rho = torch.tensor([1.0, 1.1, 0.95], requires_grad=True)
    per_row = -torch.log(torch.clamp((rho.clamp(0.8, 1.2) - 0.9)[:, None] * 2.0, min=1e-3))
    got = CodeBarrier(1, 2, beta=0.9, t=20.0).loss(rho, torch.zeros(3, 2), ret.flip(1), 0.2)
    want_rows = torch.cat([torch.full((3, 1), -math.log(1e-3)), per_row], 1)[[0, 2]].mean() / 20
    assert got.item() == pytest.approx(want_rows.item(), rel=1e-5)  # row 1 (= l) is dropped
    neg = bar.loss(ratio, torch.zeros(3, 2), -ret, clip=0.2)
    neg.backward()  # negative mean return: clamped at 1e-3, no gradient at all
    assert neg.item() == pytest.approx(-math.log(1e-3) / 20.0) and ratio.grad.abs().sum() == 0


def test_paper_barrier_estimate_ignores_the_advantages_batch_mean() -> None:
    bar = PaperBarrier(0, np.array([10.0, 20.0]), np.array([10.0, 20.0]), 0.9, 20.0, 200.0)
    ratio = torch.ones(3)
    for shift in (0.0, 3.0, -5.0):  # a lagging critic's mean advantage
        adv = torch.tensor([[1.0, 0.5], [0.0, -0.5], [-1.0, 0.0]]) + shift
        assert torch.allclose(bar.estimate(ratio, adv, clip=0.2), torch.tensor([10.0, 20.0]))


def test_selection_crowds_over_the_whole_front_and_reaches_the_gaps_other_edge() -> None:
    arch = Archive((-1.0, -1.0))
    xs = [0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15]  # on x + y = 15, a gap between 5 and 10
    arch.add([{"path": "", "returns": [x, 15 - x], "weight": [0.5, 0.5], "stage": "init"}
              for x in xs])  # fmt: skip
    first = {tuple(arch.points([p])[0]) for p in arch.select(3)}
    assert first == {(0.0, 15.0), (15.0, 0.0), (5.0, 10.0)}
    second = [tuple(arch.points([p])[0]) for p in arch.select(3)]
    assert second[0] == (10.0, 5.0)  # the gap's other edge, not a neighbour of the extremes


def test_archive_front_selection_by_crowding(tmp_path) -> None:
    arch = Archive((0.0, 0.0))
    rets = [[1, 9], [9, 1], [5, 5], [4.9, 5.1], [2, 2], [5.5, 4.5], [3, 7]]
    arch.add([{"path": "", "returns": r, "weight": [0.5, 0.5], "stage": "init"} for r in rets])
    assert sorted(p.id for p in arch.front()) == [0, 1, 2, 3, 5, 6]
    first = arch.select(3)
    assert {0, 1} <= {p.id for p in first}  # boundary points have infinite distance
    second = arch.select(3)
    assert not {p.id for p in first} & {p.id for p in second}
    arch.save(tmp_path / "front.json", ["a", "b"])
    again, front_ids = Archive.load(tmp_path / "front.json")
    assert front_ids == [p.id for p in arch.front()] and len(again.policies) == 7


def test_mo_ppo_improves_a_two_objective_return() -> None:
    cfg = MOPPOConfig(num_envs=2, num_steps=100, num_minibatches=4, lr=3e-3)
    fn = lambda: make_mo_env("mo-point-2d")  # noqa: E731
    prot = EvalProtocol(episodes=2, max_steps=20, gamma=1.0, ref_point=(0.0, 0.0))
    learner = MOPPO(fn, np.array([0.5, 0.5]), cfg, seed=0)
    before, _ = evaluate_policy(learner.policy(), fn, prot)
    for _ in range(12):
        learner.train_iteration()
    after, steps = evaluate_policy(learner.policy(), fn, prot)
    learner.close()
    assert steps == 40 and learner.env_steps == 12 * 200
    # optimum: 20 steps of (1, 1)/sqrt(2) -> (14.1, 14.1)
    assert abs(before).max() < 3 and (after > 9).all() and after.sum() > before.sum() + 18
