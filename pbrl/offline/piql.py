"""P-IQL: a Bradley-Terry reward learned from the preferences, then Implicit Q-Learning.

The reward-based baseline of CPL (Hejna et al., ICLR 2024; ``research/algs/piql.py`` and
``configs/mw_state_dense/piql.yaml`` of jhejna/cpl), trained on the same dataset file and the
same batches as CPL and SFT so that the three can be compared in one sweep.

Two phases:

1. **Reward** (``reward_steps`` gradient steps): ``r_psi(s, a)`` (an MLP with a linear output)
   is fitted to the preference batches with the Bradley-Terry cross-entropy on segment sums,
   ``P(sigma2 > sigma1) = sigmoid(R(sigma2) - R(sigma1))`` against the label (soft labels and
   ties included). The network is :class:`pbrl.rewards.bradley_terry.RewardEnsemble` with one
   member, identity output and two hidden layers of 512.
2. **Relabel, then IQL** (the remaining steps): every stored step gets ``r_psi(s_t, a_t)``
   once; IQL then trains on transitions ``(s_t, a_t, r_t, s_{t+1})`` inside the stored
   segments, drawn uniformly by index:

   - value: expectile regression ``L_V = E[|tau - 1(u < 0)| u^2]``,
     ``u = min_k Q_target,k(s, a) - V(s)``, ``tau`` = ``expectile`` (0.7);
   - policy (AWR): ``L_pi = E[min(exp(A / beta), clip) ||mu(s) - a||^2]`` with
     ``A = min_k Q_target,k(s, a) - V(s)`` (V before its step), ``beta`` 1/3, clip 100 and the
     deterministic tanh actor (512 x 2, dropout 0.25) of CPL;
   - critics (2): ``L_Q = E[(Q_k(s, a) - r - gamma V(s'))^2]``, gamma 0.99, and a Polyak target
     (tau 0.005, every step);
   - Adam 3e-4 for all four networks; the actor's learning rate follows a cosine schedule
     over the IQL phase.

Differences from the reference, on purpose:

- The reference trains the reward *during* the first ``reward_steps`` IQL steps (IQL reads the
  still-moving reward); here the reward is fitted first, the dataset relabelled once, and IQL
  gets ``num_steps - reward_steps`` steps (and its cosine schedule spans those).
- IQL batches are ``transition_batch`` transitions drawn uniformly from all stored segments
  (default 12096 = the 96 pairs x 2 x 63 transitions the reference takes from one segment
  batch), not all transitions of 192 segments.
- The reward, Q and V networks are pbrl's stacked ensemble MLP (LeakyReLU(0.01) hidden units,
  ``nn.Linear``'s default initialisation) instead of ReLU with orthogonal initialisation.
- Segments carry no terminal flags (the reference's Meta-World data has none either); every
  transition inside a stored segment is within one episode, so bootstrapping never crosses an
  episode's end.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from pbrl.offline.cpl import CPLActor
from pbrl.offline.data import PairBatch, PreferenceData, stack_pairs
from pbrl.rewards.bradley_terry import RewardEnsemble, bt_loss


# ---------------------------------------------------------------------------------------------
# Losses
def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """IQL's asymmetric squared loss, element-wise: ``|tau - 1(u < 0)| u^2``.

    Args:
        diff: ``u = target - prediction``.
        expectile: ``tau`` in (0, 1); 0.5 is half the squared error, ``tau > 0.5`` weighs
            targets above the prediction more (an upper expectile).
    """
    weight = torch.abs(expectile - (diff < 0).to(diff.dtype))
    return weight * diff.square()


def awr_weights(adv: torch.Tensor, beta: float, clip: float | None = 100.0) -> torch.Tensor:
    """Advantage-weighted-regression weights ``min(exp(A / beta), clip)``.

    Computed as ``exp(min(A / beta, log clip))`` so that large advantages give ``clip`` rather
    than overflowing to ``inf`` first.

    Args:
        adv: advantages ``A``.
        beta: temperature (> 0).
        clip: upper bound of the weights; ``None`` leaves them unbounded.
    """
    x = adv / beta
    if clip is not None:
        x = x.clamp(max=math.log(clip))
    return torch.exp(x)


# ---------------------------------------------------------------------------------------------
@dataclass
class PIQLConfig:
    """Hyperparameters (defaults: ``configs/mw_state_dense/piql.yaml`` of jhejna/cpl).

    Attributes:
        beta: AWR temperature.
        expectile: IQL value expectile ``tau``.
        reward_steps: Bradley-Terry reward steps before relabelling (phase 1).
        total_steps: the run's total gradient steps (``num_steps``); IQL gets
            ``total_steps - reward_steps`` and the actor's cosine schedule spans them.
        lr: Adam learning rate of actor, critics, value and reward.
        discount: gamma.
        tau: Polyak rate of the target critics.
        clip_score: upper bound of the AWR weights (None: unbounded).
        hidden: actor, critic and value hidden layers (equal widths).
        dropout: actor dropout (critics have none).
        critic_ensemble: number of Q networks (min over them).
        reward_hidden: reward-network hidden layers (equal widths).
        transition_batch: transitions per IQL step.
        cosine: cosine-anneal the actor's learning rate over the IQL phase.
        ortho_init: orthogonal initialisation of the actor.
        fused_adam: torch's fused Adam kernel.
        fast_dropout: the actor's dropout by :class:`~pbrl.offline.nn.FastDropout`.
    """

    beta: float = 0.3333
    expectile: float = 0.7
    reward_steps: int = 50_000
    total_steps: int = 500_000
    lr: float = 3e-4
    discount: float = 0.99
    tau: float = 0.005
    clip_score: float | None = 100.0
    hidden: tuple[int, ...] = field(default=(512, 512))
    dropout: float = 0.25
    critic_ensemble: int = 2
    reward_hidden: tuple[int, ...] = field(default=(512, 512))
    transition_batch: int = 12096
    cosine: bool = True
    ortho_init: bool = True
    fused_adam: bool = True
    fast_dropout: bool = True

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        self.reward_hidden = tuple(int(h) for h in self.reward_hidden)
        for name, sizes in (("hidden", self.hidden), ("reward_hidden", self.reward_hidden)):
            if len(sizes) < 1 or len(set(sizes)) != 1:
                raise ValueError(
                    f"{name} must be one or more layers of equal width (pbrl's ensemble MLP), "
                    f"got {list(sizes)}"
                )
        if not 0.0 < self.expectile < 1.0:
            raise ValueError(f"expectile must lie in (0, 1), got {self.expectile}")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.reward_steps < 1:
            raise ValueError(f"reward_steps must be >= 1, got {self.reward_steps}")
        if self.total_steps <= self.reward_steps:
            raise ValueError(
                f"num_steps ({self.total_steps}) must exceed reward_steps ({self.reward_steps}): "
                "P-IQL fits the reward first and runs IQL in the remaining steps"
            )
        if self.critic_ensemble < 1 or self.transition_batch < 1:
            raise ValueError("critic_ensemble and transition_batch must be >= 1")
        if self.clip_score is not None and self.clip_score <= 0:
            raise ValueError(f"clip_score must be > 0 or null, got {self.clip_score}")


class PIQLAgent:
    """P-IQL on one preference dataset (see the module docstring).

    Args:
        obs_dim: ``D_o``.
        act_dim: ``D_a``.
        cfg: hyperparameters.
        data: the training split; its segments are relabelled and give IQL's transitions.
        device: torch device.
        seed: seeds the networks, dropout and the transition sampler.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        cfg: PIQLConfig,
        data: PreferenceData,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ) -> None:
        if data.horizon < 2:
            raise ValueError(
                f"IQL needs segments of >= 2 steps to form transitions, the dataset's have "
                f"{data.horizon}; rebuild it with a larger segment_size"
            )
        self.cfg = cfg
        self.device = torch.device(device)
        self.obs_dim, self.act_dim = obs_dim, act_dim
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        self.actor = CPLActor(
            obs_dim, act_dim, cfg.hidden, cfg.dropout, "deterministic", cfg.ortho_init,
            fast_dropout=cfg.fast_dropout,
        ).to(self.device)  # fmt: skip
        width, depth = cfg.hidden[0], len(cfg.hidden)

        def mlp(a_dim: int, members: int, w: int, d: int) -> RewardEnsemble:
            return RewardEnsemble(obs_dim, a_dim, members, w, d, "identity", gen).to(self.device)

        self.reward = mlp(act_dim, 1, cfg.reward_hidden[0], len(cfg.reward_hidden))
        self.critic = mlp(act_dim, cfg.critic_ensemble, width, depth)
        self.value = mlp(0, 1, width, depth)
        self.critic_target = copy.deepcopy(self.critic)
        for p in self.critic_target.parameters():
            p.requires_grad_(False)
        self.optims = {
            name: self._adam(net.parameters())
            for name, net in (
                ("reward", self.reward),
                ("actor", self.actor),
                ("critic", self.critic),
                ("value", self.value),
            )
        }
        iql_steps = cfg.total_steps - cfg.reward_steps
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.optims["actor"],
            lambda n: (
                0.5 * (1.0 + math.cos(math.pi * min(n, iql_steps) / iql_steps))
                if cfg.cosine
                else 1.0
            ),
        )
        # Segments, flat: (S, H, D). Pair data (Q, 2, H, D) -> (2Q, H, D).
        h = data.horizon
        self.seg_obs = data.obs.reshape(-1, h, data.obs_dim).to(self.device)
        self.seg_act = data.actions.reshape(-1, h, data.act_dim).to(self.device)
        self.seg_reward: torch.Tensor | None = None
        self.sample_gen = torch.Generator().manual_seed(seed + 1)

    def _adam(self, params: Any) -> torch.optim.Adam:
        fused = self.cfg.fused_adam and self.device.type in ("cpu", "cuda")
        return torch.optim.Adam(params, lr=self.cfg.lr, fused=fused)

    @property
    def relabelled(self) -> bool:
        """Whether phase 1 is over (the segments carry learned rewards)."""
        return self.seg_reward is not None

    def wants_batch(self, step: int) -> bool:
        """Whether :meth:`update` at ``step`` reads a preference batch (phase 1 only)."""
        return step < self.cfg.reward_steps

    # --- phase 1: reward ----------------------------------------------------------------
    def reward_losses(self, batch: PairBatch) -> dict[str, torch.Tensor]:
        """Bradley-Terry ``reward_loss`` (mean over members) and ``accuracy`` of a pair batch."""
        if not isinstance(batch, PairBatch):
            raise ValueError(
                "P-IQL learns its reward from pairs: use agent.mode=rank (ranking rows) or "
                "agent.mode=comparison (pair rows), not score"
            )
        obs, act = stack_pairs(batch)
        x = torch.cat([obs, act], dim=-1)
        ret = self.reward(x, per_member=False).sum(dim=-1)  # (E, 2B)
        r1, r2 = ret.chunk(2, dim=1)
        loss = bt_loss(r1, r2, batch.label) / ret.shape[0]
        with torch.no_grad():
            acc = ((r2 > r1).float() == torch.round(batch.label)).float().mean()
        return {"reward_loss": loss, "accuracy": acc}

    @torch.no_grad()
    def relabel(self, chunk: int = 65536) -> torch.Tensor:
        """Score every stored step with the learned reward; ``(S, H)``, kept for IQL."""
        s, h = self.seg_obs.shape[:2]
        obs = self.seg_obs.reshape(s * h, -1)
        act = self.seg_act.reshape(s * h, -1)
        out = torch.empty(s * h, device=self.device)
        for i in range(0, s * h, chunk):
            x = torch.cat([obs[i : i + chunk], act[i : i + chunk]], dim=-1)
            out[i : i + chunk] = self.reward(x, per_member=False).mean(0)
        self.seg_reward = out.reshape(s, h)
        return self.seg_reward

    # --- phase 2: IQL -------------------------------------------------------------------
    def sample_transitions(self, n: int) -> tuple[torch.Tensor, ...]:
        """``n`` transitions ``(s, a, r, s')`` drawn uniformly from inside the stored segments."""
        assert self.seg_reward is not None
        s, h = self.seg_obs.shape[:2]
        flat = torch.randint(0, s * (h - 1), (n,), generator=self.sample_gen).to(self.device)
        seg, t = flat // (h - 1), flat % (h - 1)
        return (
            self.seg_obs[seg, t],
            self.seg_act[seg, t],
            self.seg_reward[seg, t],
            self.seg_obs[seg, t + 1],
        )

    def iql_update(self) -> dict[str, float]:
        """One IQL step on a fresh transition batch (value, actor, critics, target)."""
        cfg = self.cfg
        obs, act, rew, nxt = self.sample_transitions(cfg.transition_batch)
        x = torch.cat([obs, act], dim=-1)
        with torch.no_grad():
            target_q = self.critic_target(x, per_member=False).min(dim=0).values  # (B,)
        vs = self.value(obs, per_member=False)  # (1, B)
        v_loss = expectile_loss(target_q[None] - vs, cfg.expectile).mean()
        self._step("value", v_loss)

        with torch.no_grad():
            adv = target_q - vs.mean(dim=0)  # V before its step, as the reference
            weight = awr_weights(adv, cfg.beta, cfg.clip_score)
        self.actor.train()
        mu, _ = self.actor(obs)
        actor_loss = (weight * (mu - act).square().sum(dim=-1)).mean()
        self._step("actor", actor_loss)
        self.sched.step()

        with torch.no_grad():
            target = rew + cfg.discount * self.value(nxt, per_member=False).mean(dim=0)
        qs = self.critic(x, per_member=False)  # (K, B)
        q_loss = (qs - target[None]).square().mean()
        self._step("critic", q_loss)
        with torch.no_grad():
            torch._foreach_lerp_(
                list(self.critic_target.parameters()), list(self.critic.parameters()), cfg.tau
            )
        return {
            "v_loss": float(v_loss.detach()),
            "actor_loss": float(actor_loss.detach()),
            "q_loss": float(q_loss.detach()),
            "loss": float((v_loss + actor_loss + q_loss).detach()),
            "q": float(qs.detach().mean()),
            "v": float(vs.detach().mean()),
            "adv": float(adv.mean()),
            "awr_weight": float(weight.mean()),
            "reward": float(rew.mean()),
            "lr": float(self.optims["actor"].param_groups[0]["lr"]),
        }

    def _step(self, name: str, loss: torch.Tensor) -> None:
        opt = self.optims[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # --- training -----------------------------------------------------------------------
    def update(self, batch: PairBatch | None, step: int) -> dict[str, float]:
        """One gradient step at training step ``step`` (0-based); returns its scalars.

        Phase 1 (``step < reward_steps``) needs a preference ``batch``; the last reward step
        relabels the dataset. Phase 2 ignores ``batch`` (pass None) and runs IQL.
        """
        cfg = self.cfg
        if step < cfg.reward_steps:
            if batch is None:
                raise ValueError(f"step {step} is a reward step and needs a preference batch")
            parts = self.reward_losses(batch)
            self._step("reward", parts["reward_loss"])
            stats = {k: float(v.detach()) for k, v in parts.items()}
            stats["loss"] = stats["reward_loss"]
            if step + 1 >= cfg.reward_steps:
                rew = self.relabel()
                stats["relabel_mean"], stats["relabel_std"] = float(rew.mean()), float(rew.std())
            return stats
        if not self.relabelled:
            self.relabel()
        return self.iql_update()

    # --- evaluation ---------------------------------------------------------------------
    @torch.no_grad()
    def evaluate_pairs(self, batch: PairBatch) -> dict[str, float]:
        """The learned reward on held-out pairs: ``reward_loss`` and strict-label ``accuracy``."""
        obs, act = stack_pairs(batch)
        ret = self.reward(torch.cat([obs, act], dim=-1), per_member=False).sum(dim=-1)  # (E, 2B)
        r1, r2 = ret.chunk(2, dim=1)
        loss = bt_loss(r1, r2, batch.label) / ret.shape[0]
        m1, m2 = r1.mean(0), r2.mean(0)
        strict = batch.label != 0.5
        acc = ((m2 > m1) == (batch.label > 0.5))[strict].float().mean()
        return {"reward_loss": float(loss), "accuracy": float(acc)}

    @torch.no_grad()
    def act(self, obs: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        """Deterministic actions in [-1, 1] for ``obs (B, D_o)`` (eval mode; ``idx`` unused)."""
        self.actor.eval()
        o = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        return self.actor(o)[0].cpu().numpy()

    # --- checkpoints --------------------------------------------------------------------
    def _nets(self) -> dict[str, nn.Module]:
        return {
            "actor": self.actor,
            "reward": self.reward,
            "critic": self.critic,
            "critic_target": self.critic_target,
            "value": self.value,
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training exactly (the relabelled rewards included)."""
        return {
            "cfg": asdict(self.cfg),
            **{k: m.state_dict() for k, m in self._nets().items()},
            "optims": {k: o.state_dict() for k, o in self.optims.items()},
            "sched": self.sched.state_dict(),
            "seg_reward": self.seg_reward,
            "sample_gen": self.sample_gen.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict` on an agent built with the same config and data."""
        for k, m in self._nets().items():
            m.load_state_dict(state[k])
        for k, o in self.optims.items():
            o.load_state_dict(state["optims"][k])
        self.sched.load_state_dict(state["sched"])
        r = state["seg_reward"]
        self.seg_reward = None if r is None else r.to(self.device)
        self.sample_gen.set_state(state["sample_gen"])
