"""CPL's losses against hand-computed values, the lambda guard, and the BC -> CPL switch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pbrl.offline.cpl import CPLActor, CPLAgent, CPLConfig, cpl_pair_loss, cpl_score_loss
from pbrl.offline.data import PairBatch


def sp(x: float) -> float:
    """softplus, written out."""
    return math.log1p(math.exp(x))


def test_pair_loss_hand_computed_with_ties_and_soft_labels() -> None:
    s1 = torch.tensor([1.0, -0.5, 2.0, 0.3])
    s2 = torch.tensor([0.5, 1.0, 2.0, -0.2])
    y = torch.tensor([0.0, 1.0, 0.5, 0.8])
    lam = 0.5
    want = []
    for a, b, t in zip(s1.tolist(), s2.tolist(), y.tolist(), strict=True):
        l21 = sp(-(b - lam * a))  # second preferred
        l12 = sp(-(a - lam * b))  # first preferred
        want.append(t * l21 + (1 - t) * l12)
    loss, acc = cpl_pair_loss(s1, s2, y, bias=lam)
    assert loss.item() == pytest.approx(np.mean(want), rel=1e-6)
    # accuracy: 1[S2 > S1] == round(y): [F==0 ok, T==1 ok, F==0 (tie rounds to 0) ok, F==1 no]
    assert acc.item() == pytest.approx(0.75)


def test_pair_loss_tie_is_the_symmetric_average() -> None:
    s1, s2 = torch.tensor([0.7]), torch.tensor([-1.2])
    tie, _ = cpl_pair_loss(s1, s2, torch.tensor([0.5]), bias=0.5)
    first, _ = cpl_pair_loss(s1, s2, torch.tensor([0.0]), bias=0.5)
    second, _ = cpl_pair_loss(s1, s2, torch.tensor([1.0]), bias=0.5)
    assert tie.item() == pytest.approx(0.5 * (first.item() + second.item()), rel=1e-6)
    assert first.item() == pytest.approx(sp(-(0.7 - 0.5 * -1.2)), rel=1e-6)


def test_lambda_below_one_is_conservative() -> None:
    # With lambda < 1 the loss of a pair also rewards raising S+ itself, not only the gap.
    s1, s2, y = torch.tensor([0.0]), torch.tensor([-1.0]), torch.tensor([1.0])
    l_half, _ = cpl_pair_loss(s1, s2, y, 0.5)
    l_one, _ = cpl_pair_loss(s1, s2, y, 1.0)
    assert l_half.item() == pytest.approx(sp(1.0))
    assert l_one.item() == pytest.approx(sp(1.0))
    shifted, _ = cpl_pair_loss(s1 - 1.0, s2 - 1.0, y, 0.5)  # same gap, lower scores
    assert shifted.item() == pytest.approx(sp(1.5))
    assert shifted.item() > l_half.item()


def test_score_loss_equals_pair_loss_on_two_and_hand_value_on_three() -> None:
    s = torch.tensor([0.4, -0.3])
    score = torch.tensor([1.0, 5.0])  # segment 1 better
    ranked, acc = cpl_score_loss(s, score, bias=0.5)
    pair, _ = cpl_pair_loss(s[:1], s[1:], torch.tensor([1.0]), bias=0.5)
    assert ranked.item() == pytest.approx(pair.item(), rel=1e-6)
    assert acc.item() == 0.0  # S_better < S_worse
    s3 = torch.tensor([1.0, 0.0, -1.0])
    score3 = torch.tensor([3.0, 1.0, 2.0])  # order worst -> best: idx 1, 2, 0
    a = [0.0, -1.0, 1.0]  # scores sorted by label score
    want = np.mean([sp(-(a[j] - 0.5 * a[i])) for i in range(3) for j in range(i + 1, 3)])
    got, acc3 = cpl_score_loss(s3, score3, bias=0.5)
    assert got.item() == pytest.approx(want, rel=1e-6)
    assert acc3.item() == pytest.approx(2 / 3)


def test_gaussian_actor_with_lambda_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="do not cancel"):
        CPLConfig(actor="gaussian", bias=0.5)
    CPLConfig(actor="gaussian", bias=1.0)  # constants cancel
    CPLConfig(actor="gaussian", bias=0.5, centre_logprob=True)  # constants removed
    CPLConfig(actor="deterministic", bias=0.5)  # the paper's setting
    with pytest.raises(ValueError, match="bias"):
        CPLConfig(bias=0.0)


def test_log_probs_deterministic_and_centred_gaussian() -> None:
    torch.manual_seed(0)
    det = CPLActor(3, 2, hidden=(8,), dropout=0.0)
    obs, act = torch.randn(5, 3), torch.rand(5, 2) * 2 - 1
    mu, _ = det(obs)
    assert torch.allclose(det.log_prob(obs, act), -((mu - act) ** 2).sum(-1))
    g = CPLActor(3, 2, hidden=(8,), dropout=0.0, kind="gaussian")
    mu, log_std = g(obs[:1])
    # The centred log-density has zero mean under the policy (its constants are gone) ...
    a = mu + log_std.exp() * torch.randn(200_000, 2)
    centred = g.log_prob(obs[:1].expand(len(a), -1), a, centre=True)
    assert abs(centred.mean().item()) < 0.02
    # ... and differs from the true log-density by the (negated) entropy.
    raw = g.log_prob(obs[:1].expand(len(a), -1), a)
    ent = (0.5 + 0.5 * math.log(2 * math.pi) + log_std).sum()
    assert torch.allclose(centred - raw, ent.expand(len(a)), atol=1e-4)


def _batch(rng: np.random.Generator, b: int = 8, h: int = 4) -> PairBatch:
    t = lambda *s: torch.as_tensor(rng.uniform(-1, 1, s), dtype=torch.float32)  # noqa: E731
    return PairBatch(
        t(b, h, 3), t(b, h, 3), t(b, h, 2), t(b, h, 2),
        torch.tensor([0.0, 1.0, 0.5, 1.0, 0.0, 0.0, 1.0, 0.5]),
        torch.zeros(b, dtype=torch.long), torch.zeros(b, dtype=torch.long),
    )  # fmt: skip


def test_bc_then_contrastive_resets_optimiser_and_warms_up(rng: np.random.Generator) -> None:
    cfg = CPLConfig(bc_steps=3, warmup_steps=4, hidden=(16,), lr=1e-2, fused_adam=False)
    agent = CPLAgent(3, 2, cfg)
    batch = _batch(rng)
    first_optim = agent.optim
    for step in range(3):
        st = agent.update(batch, step)
        assert st["contrastive"] == 0.0 and st["loss"] == pytest.approx(st["bc_loss"])
    assert agent.contrastive and agent.optim is not first_optim
    assert agent.optim.state == {}  # fresh Adam moments
    lrs = []
    for step in range(3, 9):
        st = agent.update(batch, step)
        lrs.append(agent.optim.param_groups[0]["lr"])
        assert st["loss"] == pytest.approx(st["cpl_loss"])  # bc_coeff 0
    assert lrs == pytest.approx([1e-2 * k / 4 for k in (2, 3, 4)] + [1e-2] * 3)


def test_no_bc_phase_is_contrastive_from_the_first_step(rng: np.random.Generator) -> None:
    cfg = CPLConfig(bc_steps=0, warmup_steps=2, hidden=(16,), lr=1e-2, fused_adam=False)
    agent = CPLAgent(3, 2, cfg)
    assert agent.optim.param_groups[0]["lr"] == pytest.approx(1e-2 / 2)  # warm-up, step 1 of 2
    st = agent.update(_batch(rng), 0)
    assert st["contrastive"] == 1.0 and st["loss"] == pytest.approx(st["cpl_loss"])
    assert st["lr"] == pytest.approx(1e-2)


def test_bc_term_of_a_centred_gaussian_is_the_true_likelihood(rng: np.random.Generator) -> None:
    """Centring is for the scores only: BC on the centred log-density would widen sigma."""
    cfg = CPLConfig(actor="gaussian", centre_logprob=True, bias=0.5, bc_steps=50, dropout=0.0,
                    hidden=(16,), lr=1e-2, fused_adam=False)  # fmt: skip
    agent = CPLAgent(3, 2, cfg)
    batch = _batch(rng)
    obs, act = torch.cat([batch.obs1, batch.obs2]), torch.cat([batch.act1, batch.act2])
    parts = agent.losses(batch)
    assert parts["bc_loss"].item() == pytest.approx(-agent.actor.log_prob(obs, act).mean().item())
    for step in range(50):
        agent.update(batch, step)
    _, log_std = agent.actor(obs)
    assert log_std.mean() < -0.5  # BC narrows the policy around the data (it starts near -1.5)


def test_cpl_lr_sets_the_optimiser_recreated_at_the_switch(rng: np.random.Generator) -> None:
    cfg = CPLConfig(bc_steps=2, warmup_steps=2, hidden=(16,), lr=1e-2, cpl_lr=1e-4,
                    fused_adam=False)  # fmt: skip
    agent = CPLAgent(3, 2, cfg)
    batch = _batch(rng)
    assert agent.optim.param_groups[0]["lr"] == pytest.approx(1e-2)  # BC phase: lr
    for step in range(2):
        agent.update(batch, step)
    assert agent.contrastive
    assert agent.optim.param_groups[0]["initial_lr"] == pytest.approx(1e-4)
    assert agent.optim.param_groups[0]["lr"] == pytest.approx(0.5e-4)  # warm-up: 1/2 of cpl_lr
    agent.update(batch, 2)
    assert agent.optim.param_groups[0]["lr"] == pytest.approx(1e-4)  # warmed up: cpl_lr
    # a checkpoint restores the contrastive optimiser at cpl_lr
    other = CPLAgent(3, 2, cfg)
    other.load_state_dict(agent.state_dict())
    assert other.optim.param_groups[0]["lr"] == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="cpl_lr"):
        CPLConfig(cpl_lr=0.0)


def test_cpl_kl_scores_relative_to_frozen_bc_policy(rng: np.random.Generator) -> None:
    cfg = CPLConfig(bc_steps=2, kl=True, alpha=0.2, bias=0.75, hidden=(16,), fused_adam=False)
    agent = CPLAgent(3, 2, cfg)
    batch = _batch(rng)
    for step in range(2):
        agent.update(batch, step)
    assert agent.ref is not None
    agent.actor.eval()
    obs = torch.cat([batch.obs1, batch.obs2])
    act = torch.cat([batch.act1, batch.act2])
    assert torch.allclose(agent.segment_scores(obs, act), torch.zeros(len(obs)))  # pi == pi_ref
    agent.update(batch, 2)
    assert not any(p.requires_grad for p in agent.ref.parameters())
    assert agent.segment_scores(obs, act).abs().max() > 0


def test_sft_clones_only_preferred_segments(rng: np.random.Generator) -> None:
    cfg = CPLConfig(loss="bc", bc_data="pos", hidden=(16,), dropout=0.0, fused_adam=False)
    agent = CPLAgent(3, 2, cfg)
    batch = _batch(rng)
    parts = agent.losses(batch)
    lp1 = agent.actor.log_prob(batch.obs1, batch.act1)
    lp2 = agent.actor.log_prob(batch.obs2, batch.act2)
    y = batch.label
    pos = torch.cat([lp1[y <= 0.5], lp2[y >= 0.5]])  # ties: both segments
    assert parts["bc_loss"].item() == pytest.approx(-pos.mean().item(), rel=1e-6)
    assert "cpl_loss" not in parts
