"""OPPO's losses by hand, gradient separation of the two steps, pooling, and z* on a toy."""

from __future__ import annotations

import math

import pytest
import torch

from pbrl.offline.data import PairBatch
from pbrl.offline.oppo import (
    HindsightEncoder,
    OPPOAgent,
    OPPOConfig,
    norm_loss,
    split_preferred,
    triplet_loss,
)

TINY = dict(window=4, embed=16, inner=32, enc_hidden=16, enc_inner=32, warmup_steps=0,
            fused_adam=False, max_ep_len=50)  # fmt: skip


def test_triplet_and_norm_losses_hand_computed() -> None:
    anchor = torch.tensor([0.0, 0.0])
    pos = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    neg = torch.tensor([[0.0, 1.0], [0.0, 5.0]])
    # max(0, 5 - 1 + 1) = 5 ; max(0, 1 - 5 + 1) = 0
    assert triplet_loss(anchor, pos, neg).item() == pytest.approx(2.5)
    z = torch.tensor([[3.0, 4.0], [0.0, 0.5]])
    assert norm_loss(z).item() == pytest.approx(((5 - 1) ** 2 + (0.5 - 1) ** 2) / 2)
    z1, z2 = torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([[-1.0], [-2.0], [-3.0]])
    zp, zn = split_preferred(z1, z2, torch.tensor([1.0, 0.5, 0.2]))  # tie dropped
    assert zp.tolist() == [[-1.0], [3.0]] and zn.tolist() == [[1.0], [-3.0]]


def test_masked_pooling_ignores_padding_and_sum_does_not() -> None:
    torch.manual_seed(0)
    obs, act = torch.randn(1, 3, 2), torch.randn(1, 3, 1)
    pad_o = torch.cat([torch.randn(1, 2, 2), obs], 1)  # left padding of 2 steps
    pad_a = torch.cat([torch.randn(1, 2, 1), act], 1)
    mask = torch.tensor([[False, False, True, True, True]])
    for pooling, same in (("masked_sum", True), ("sum", False)):
        enc = HindsightEncoder(2, 1, z_dim=3, hidden=8, inner=16, window=5, dropout=0.0,
                               pooling=pooling).eval()  # fmt: skip
        # The valid steps sit at the same positions in both calls (positions 2..4).
        full = torch.cat([torch.zeros(1, 2, 2), obs], 1), torch.cat([torch.zeros(1, 2, 1), act], 1)
        a = enc(*full, mask)
        b = enc(pad_o, pad_a, mask)
        assert torch.allclose(a, b, atol=1e-5) is same


def _toy_batch(b: int, k: int, gen: torch.Generator) -> PairBatch:
    """Preferred windows act +0.8, rejected -0.8; which one is first is random."""
    obs1, obs2 = torch.randn(b, k, 2, generator=gen), torch.randn(b, k, 2, generator=gen)
    second = torch.rand(b, generator=gen) < 0.5
    sign = torch.where(second, -1.0, 1.0)[:, None, None]
    act1 = (0.8 * sign).expand(b, k, 1) + 0.05 * torch.randn(b, k, 1, generator=gen)
    act2 = (-0.8 * sign).expand(b, k, 1) + 0.05 * torch.randn(b, k, 1, generator=gen)
    t = torch.zeros(b, dtype=torch.long)
    return PairBatch(obs1, obs2, act1, act2, second.float(), t, t)


def test_steps_touch_only_their_parameters_and_z_star_moves_to_preferred() -> None:
    gen = torch.Generator().manual_seed(0)
    agent = OPPOAgent(2, 1, OPPOConfig(**TINY), torch.zeros(2), torch.ones(2), seed=0)
    agent.update(_toy_batch(32, 4, gen), 0)  # z* now holds step B's gradient
    models = [*agent.encoder.parameters(), *agent.policy.parameters()]
    assert {id(p) for g in agent.optim.param_groups for p in g["params"]} == {id(p) for p in models}
    seen: dict[str, list[torch.Tensor]] = {}

    def before_a(*_: object) -> None:  # inside update, right before step A's optimiser step
        seen["z_grad_a"] = [agent.z_star.grad.clone()]
        seen["model_grads_a"] = [p.grad.clone() for p in models]

    def before_b(*_: object) -> None:
        seen["z_grad_b"] = [agent.z_star.grad.clone()]
        seen["model_grads_b"] = [p.grad.clone() for p in models]

    z_grad_prev = agent.z_star.grad.clone()
    z0 = agent.z_star.detach().clone()
    enc0 = [p.detach().clone() for p in agent.encoder.parameters()]
    agent.optim.register_step_pre_hook(before_a)
    agent.z_optim.register_step_pre_hook(before_b)
    agent.update(_toy_batch(32, 4, gen), 1)
    # Step A's backward left z*'s gradient as step B of the last update wrote it.
    assert torch.equal(seen["z_grad_a"][0], z_grad_prev)
    # Step B's backward added nothing to the models' gradients, and did reach z*.
    for ga, gb in zip(seen["model_grads_a"], seen["model_grads_b"], strict=True):
        assert torch.equal(ga, gb)
    assert not torch.equal(seen["z_grad_b"][0], z_grad_prev)
    assert any(g.abs().sum() > 0 for g in seen["model_grads_a"])
    assert not torch.equal(agent.z_star.detach(), z0)
    assert any(
        not torch.equal(p, q) for p, q in zip(agent.encoder.parameters(), enc0, strict=False)
    )
    for step in range(2, 150):
        agent.update(_toy_batch(32, 4, gen), step)
    test = _toy_batch(256, 4, gen)
    second = test.label > 0.5
    zf = agent.encode(test.obs1, test.act1)
    zs = agent.encode(test.obs2, test.act2)
    zpos = torch.where(second[:, None], zs, zf).mean(0)
    zneg = torch.where(second[:, None], zf, zs).mean(0)
    zs_ = agent.z_star.detach()
    cos = torch.nn.functional.cosine_similarity
    assert cos(zs_, zpos, dim=0) > cos(zs_, zneg, dim=0)
    assert (zs_ - zpos).norm() < (zs_ - zneg).norm()
    assert agent.evaluate_pairs(test)["accuracy"] > 0.75
    # acting conditioned on z* from an empty history
    agent.reset_eval(4)
    a = agent.act(torch.randn(4, 2).numpy())
    assert a.shape == (4, 1) and math.isfinite(float(a.sum()))


def test_only_the_policy_warms_up_and_the_encoder_has_its_own_lr() -> None:
    clip = 1e-4  # small enough that both models' gradients are clipped
    cfg = OPPOConfig(**{**TINY, "warmup_steps": 10, "lr": 1e-3, "enc_lr": 1e-4, "grad_clip": clip})
    agent = OPPOAgent(2, 1, cfg, torch.zeros(2), torch.ones(2), seed=0)
    norms: list[float] = []

    def grad_norm(params: object) -> float:
        return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))

    agent.optim.register_step_pre_hook(
        lambda *_: norms.extend(
            [grad_norm(agent.encoder.parameters()), grad_norm(agent.policy.parameters())]
        )
    )
    gen = torch.Generator().manual_seed(1)
    enc_group, pol_group = agent.optim.param_groups
    assert (enc_group["lr"], pol_group["lr"]) == pytest.approx((1e-4, 1e-4))  # step 0: 1/10
    stats = agent.update(_toy_batch(8, 4, gen), 0)
    assert stats["enc_lr"] == pytest.approx(1e-4) and stats["lr"] == pytest.approx(2e-4)
    # Clipped apart, each to grad_clip (a joint clip would leave their joint norm at clip).
    assert norms == pytest.approx([clip, clip], rel=1e-3)
    # A checkpoint from before the two groups is refused for training, loaded for acting.
    state = agent.state_dict()
    old = {**state, "optim": {**state["optim"], "param_groups": state["optim"]["param_groups"][:1]}}
    fresh = OPPOAgent(2, 1, cfg, torch.zeros(2), torch.ones(2), seed=5)
    with pytest.raises(ValueError, match="predates the encoder/policy parameter groups"):
        fresh.load_state_dict(old)
    fresh.load_weights(old)
    assert torch.equal(fresh.z_star.detach(), agent.z_star.detach())
