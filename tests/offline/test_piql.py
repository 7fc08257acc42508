"""P-IQL: expectile loss and AWR weights against hand values, the reward -> relabel -> IQL phases,
and the reward learning the preferences of a constructed problem."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from pbrl.offline.data import BatchSampler, PairBatch, PreferenceData
from pbrl.offline.piql import PIQLAgent, PIQLConfig, awr_weights, expectile_loss


def test_expectile_loss_hand_values() -> None:
    u = torch.tensor([2.0, -1.0, 0.5, -3.0, 0.0])
    got = expectile_loss(u, 0.7)
    want = [0.7 * 4.0, 0.3 * 1.0, 0.7 * 0.25, 0.3 * 9.0, 0.0]
    assert got.tolist() == pytest.approx(want, rel=1e-6)
    # tau = 0.5 is half the squared error
    assert expectile_loss(u, 0.5).tolist() == pytest.approx((0.5 * u.square()).tolist())
    # minimising it over a constant gives the upper expectile: above the mean for tau > 0.5
    x = torch.tensor([0.0, 0.0, 0.0, 1.0])
    v = torch.zeros((), requires_grad=True)
    opt = torch.optim.SGD([v], lr=0.5)
    for _ in range(300):
        opt.zero_grad()
        expectile_loss(x - v, 0.9).mean().backward()
        opt.step()
    # stationary point: 0.9 (1 - v) = 0.1 * 3 v  ->  v = 0.75
    assert v.item() == pytest.approx(0.75, abs=1e-4)


def test_awr_weights_are_exp_adv_over_beta_clipped() -> None:
    adv = torch.tensor([0.0, 0.5, -1.0, 2.0, 1e4])
    w = awr_weights(adv, beta=1 / 3, clip=100.0)
    want = [1.0, math.exp(1.5), math.exp(-3.0), 100.0, 100.0]  # exp(6) = 403 -> clipped
    assert w.tolist() == pytest.approx(want, rel=1e-5)
    assert torch.isfinite(w).all()
    assert awr_weights(torch.tensor([2.0]), beta=1 / 3, clip=None).item() == pytest.approx(
        math.exp(6.0), rel=1e-5
    )


def _toy(n: int = 256, h: int = 8, seed: int = 0) -> PreferenceData:
    """Ranking data whose rank is set by how positive the first action dimension is."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, h, 3, generator=g)
    act = torch.rand(n, h, 2, generator=g) * 2 - 1
    score = act[..., 0].sum(-1)
    rank = torch.empty(n, dtype=torch.int64)
    rank[torch.argsort(score, descending=True)] = torch.arange(n)
    return PreferenceData(
        kind="ranking", obs=obs, actions=act, start=torch.zeros(n, dtype=torch.int64),
        target=None, rank=rank, group=torch.zeros(n, dtype=torch.int64), env_name="toy",
        teacher_id="t",
    )  # fmt: skip


def _cfg(**kw: object) -> PIQLConfig:
    base = dict(hidden=(32, 32), reward_hidden=(32, 32), reward_steps=150, total_steps=300,
                transition_batch=128, lr=3e-3, dropout=0.0, fused_adam=False)  # fmt: skip
    return PIQLConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_config_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="must exceed reward_steps"):
        _cfg(reward_steps=300, total_steps=300)
    with pytest.raises(ValueError, match="expectile"):
        _cfg(expectile=1.0)
    with pytest.raises(ValueError, match="equal width"):
        _cfg(hidden=(64, 32))


def test_reward_then_relabel_then_iql_learns_the_preferred_actions() -> None:
    torch.manual_seed(0)
    data = _toy()
    train, held = data.split(0.25, seed=0)
    agent = PIQLAgent(3, 2, _cfg(), train, seed=0)
    sampler = BatchSampler(train, "rank", seed=0)
    held_batch = BatchSampler(held, "rank", seed=1).sample(256)
    assert isinstance(held_batch, PairBatch)
    before = agent.evaluate_pairs(held_batch)
    stats = {}
    for step in range(agent.cfg.reward_steps):
        assert agent.wants_batch(step) and not agent.relabelled
        stats = agent.update(sampler.sample(32), step)
    assert agent.relabelled and "relabel_mean" in stats
    after = agent.evaluate_pairs(held_batch)
    assert after["accuracy"] > 0.9 and after["accuracy"] > before["accuracy"] + 0.2
    # the relabelled reward orders the segments like the hidden score does
    seg_ret = agent.seg_reward.sum(-1)  # type: ignore[union-attr]
    truth = train.actions[..., 0].sum(-1)
    concordant = ((seg_ret[:, None] > seg_ret[None]) == (truth[:, None] > truth[None])).float()
    assert concordant.mean().item() > 0.85
    # IQL: the policy moves toward the rewarded action (first dimension positive)
    lr0 = agent.optims["actor"].param_groups[0]["lr"]
    for step in range(agent.cfg.reward_steps, agent.cfg.total_steps):
        assert not agent.wants_batch(step)
        stats = agent.update(None, step)
    assert {"q_loss", "v_loss", "actor_loss", "awr_weight"} <= stats.keys()
    assert stats["lr"] < 1e-3 * lr0  # cosine schedule at its end
    a = agent.act(torch.randn(512, 3).numpy())
    assert a[:, 0].mean() > 0.3
    assert abs(a[:, 1].mean()) < 0.3


def test_resume_mid_iql_is_bit_exact() -> None:
    data = _toy(64, 6)
    cfg = _cfg(reward_steps=10, total_steps=30, transition_batch=32, dropout=0.25)

    def run(agent: PIQLAgent, sampler: BatchSampler, lo: int, hi: int) -> None:
        for step in range(lo, hi):
            agent.update(sampler.sample(8) if agent.wants_batch(step) else None, step)

    a, sa = PIQLAgent(3, 2, cfg, data, seed=3), BatchSampler(data, "rank", seed=3)
    torch.manual_seed(5)
    run(a, sa, 0, 20)
    # state_dict() shares the live tensors (a checkpoint is written at once); copy it here
    state, sstate = copy.deepcopy(a.state_dict()), copy.deepcopy(sa.state_dict())
    rng = torch.get_rng_state()
    run(a, sa, 20, 30)
    b, sb = PIQLAgent(3, 2, cfg, data, seed=99), BatchSampler(data, "rank", seed=99)
    b.load_state_dict(state)
    sb.load_state_dict(sstate)
    torch.set_rng_state(rng)
    run(b, sb, 20, 30)
    for (k, p), q in zip(a.actor.state_dict().items(), b.actor.state_dict().values(),
                         strict=True):  # fmt: skip
        assert torch.equal(p, q), k
    assert torch.equal(a.critic_target.weights[0], b.critic_target.weights[0])
