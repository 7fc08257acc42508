"""Contrastive Preference Learning (Hejna et al., ICLR 2024, arXiv 2310.13639).

Under the regret preference model and maximum-entropy RL the optimal advantage is
``alpha log pi*(a|s)``, so a segment's score is ``S(sigma) = sum_t alpha log pi(a_t|s_t)``
(the code sums with gamma = 1) and the policy is learned by a contrastive loss on scores:

    L_CPL(lambda) = softplus( -(S(sigma+) - lambda S(sigma-)) ),

with a soft label ``y`` = P(second preferred) (0.5 for ties):
``L = mean[ y softplus(-(S_2 - lambda S_1)) + (1 - y) softplus(-(S_1 - lambda S_2)) ]``.
The "score" variant sorts a batch of comparable segments and averages the loss over every
ordered pair (:func:`cpl_score_loss`).

Training (``research/algs/cpl.py`` of jhejna/cpl): ``bc_steps`` steps of BC only, then the
optimiser is re-created and a linear learning-rate warm-up starts with the contrastive loss
(plus ``bc_coeff`` x BC). The re-created optimiser uses ``cpl_lr`` when set, else ``lr``
(the reference uses one lr for both phases; ``cpl_lr`` is a scale-down device: a compressed BC
phase at a higher lr, then the contrastive phase at the paper's 1e-4). Variants by
configuration:

- CPL (``pbrl/configs/offline/agent/cpl.yaml``): alpha 0.1, lambda 0.5, no BC term;
- CPL-BC: ``bc_coeff`` 1, lambda 1;
- CPL-KL: ``S = alpha sum_t (log pi - log pi_ref)`` with ``pi_ref`` the frozen BC policy,
  alpha 0.2, lambda 0.75;
- SFT: ``loss="bc"`` with ``bc_data="pos"``: behaviour cloning on the preferred segments.

Log-probabilities: the paper's configs use a deterministic actor (MLP + tanh) with
``log pi(a|s) = -||mu(s) - a||^2`` (a unit-variance Gaussian without the 1/2 and constants).
A Gaussian actor (``actor="gaussian"``) uses its real log-density. Pitfall: with lambda != 1
the log-density's constants (``-log sigma - log(2 pi)/2`` per dimension) do not cancel in
``S+ - lambda S-``: the loss then depends on sigma and the segment length. Such a setting is
refused unless ``centre_logprob=True``, which scores ``log pi(a|s) + H(pi(.|s))``
(``= sum_d (1 - z_d^2) / 2`` for a Gaussian, zero in expectation under the policy).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pbrl.offline.data import PairBatch, ScoreBatch, stack_pairs
from pbrl.offline.nn import FastDropout

ACTORS: tuple[str, ...] = ("deterministic", "gaussian")
LOSSES: tuple[str, ...] = ("cpl", "bc")
BC_DATA: tuple[str, ...] = ("all", "pos")


# ---------------------------------------------------------------------------------------------
# Losses
def cpl_pair_loss(
    s1: torch.Tensor, s2: torch.Tensor, y: torch.Tensor, bias: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """CPL's biased Bradley-Terry loss on segment scores.

    Args:
        s1: ``(B,)`` scores of the first segments.
        s2: ``(B,)`` scores of the second segments.
        y: ``(B,)`` P(second preferred): 1 second, 0 first, 0.5 tie, or a soft label.
        bias: the conservative bias lambda in (0, 1].

    Returns:
        The mean loss and the accuracy ``mean(1[S_2 > S_1] == round(y))`` (a tie counts as
        "first", as ``torch.round(0.5) == 0`` does in the reference code).
    """
    logit21 = s2 - bias * s1
    logit12 = s1 - bias * s2
    loss = (y * F.softplus(-logit21) + (1.0 - y) * F.softplus(-logit12)).mean()
    with torch.no_grad():
        acc = ((s2 > s1).float() == torch.round(y)).float().mean()
    return loss, acc


def cpl_score_loss(
    s: torch.Tensor, score: torch.Tensor, bias: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """CPL's ranked loss: sort by ``score`` and average over every pair ``i < j`` (j better).

    ``L = mean_{i<j} softplus( -(S_j - lambda S_i) )``; equals :func:`cpl_pair_loss` on a batch
    of two with a strict label.

    Args:
        s: ``(B,)`` segment scores under the policy.
        score: ``(B,)`` the label score (higher is better).
        bias: lambda.
    """
    idx = torch.argsort(score)
    a = s[idx]
    logits = a[None, :] - bias * a[:, None]  # [i, j] = S_j - lambda S_i
    upper = torch.triu(torch.ones_like(logits, dtype=torch.bool), diagonal=1)
    loss = F.softplus(-logits)[upper].mean()
    with torch.no_grad():
        acc = ((a[None, :] - a[:, None]) > 0)[upper].float().mean()
    return loss, acc


# ---------------------------------------------------------------------------------------------
# Actor
class CPLActor(nn.Module):
    """MLP actor: ``hidden`` ReLU layers with dropout, tanh mean in [-1, 1].

    ``kind="deterministic"``: ``log pi(a|s) = -||mu(s) - a||^2``. ``kind="gaussian"``: a
    diagonal Gaussian with state-dependent log-std in ``log_std_bounds`` (tanh-mapped) around
    the tanh mean.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: tuple[int, ...] = (512, 512),
        dropout: float = 0.25,
        kind: str = "deterministic",
        ortho_init: bool = True,
        log_std_bounds: tuple[float, float] = (-5.0, 2.0),
        fast_dropout: bool = True,
    ) -> None:
        super().__init__()
        if kind not in ACTORS:
            raise ValueError(f"unknown actor {kind!r}; valid: {list(ACTORS)}")
        self.kind = kind
        self.act_dim = act_dim
        self.log_std_bounds = log_std_bounds
        layers: list[nn.Module] = []
        d = obs_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            if dropout > 0:
                layers.append(FastDropout(dropout) if fast_dropout else nn.Dropout(dropout))
            d = h
        out = act_dim * (2 if kind == "gaussian" else 1)
        layers.append(nn.Linear(d, out))
        self.mlp = nn.Sequential(*layers)
        if ortho_init:
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.orthogonal_(m.weight)
                    nn.init.zeros_(m.bias)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(mu, log_std)`` for ``obs (..., D_o)``; ``log_std`` is None when deterministic."""
        x = self.mlp(obs)
        if self.kind == "deterministic":
            return torch.tanh(x), None
        mu, log_std = x.chunk(2, dim=-1)
        lo, hi = self.log_std_bounds
        log_std = lo + 0.5 * (hi - lo) * (torch.tanh(log_std) + 1.0)
        return torch.tanh(mu), log_std

    def log_prob(self, obs: torch.Tensor, act: torch.Tensor, centre: bool = False) -> torch.Tensor:
        """Per-step ``log pi(a|s)``, shape ``obs.shape[:-1]``.

        Args:
            obs: ``(..., D_o)``.
            act: ``(..., D_a)`` in [-1, 1].
            centre: add the policy's entropy (Gaussian only), so the log-density has zero mean
                under the policy and its constants vanish.
        """
        raw, centred = self.log_probs(obs, act)
        return centred if centre else raw

    def log_probs(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log pi(a|s), log pi(a|s) + H(pi(.|s)))`` from one forward pass.

        Equal for the deterministic actor. The BC term needs the first: the centred one's
        gradient in ``log_std`` is ``-z^2 <= 0``, so maximising it would only widen the policy.
        """
        mu, log_std = self(obs)
        if log_std is None:
            lp = -torch.square(mu - act).sum(dim=-1)
            return lp, lp
        z = (act - mu) * torch.exp(-log_std)
        half_sq = 0.5 * z.square()
        raw = (-half_sq - log_std - 0.5 * np.log(2 * np.pi)).sum(dim=-1)
        return raw, (0.5 - half_sq).sum(dim=-1)


# ---------------------------------------------------------------------------------------------
# Agent
@dataclass
class CPLConfig:
    """Hyperparameters (defaults: ``configs/mw_state_dense/cpl.yaml`` of jhejna/cpl).

    Attributes:
        alpha: temperature alpha in ``S = sum alpha log pi``.
        bias: conservative bias lambda in (0, 1] (``contrastive_bias``).
        bc_coeff: weight of the BC term added to the contrastive loss.
        bc_data: ``all`` segments or only the preferred ones (``pos``) in the BC term.
        bc_steps: BC-only pre-training steps before the contrastive loss.
        lr: Adam learning rate (BC phase; also the contrastive phase unless ``cpl_lr``).
        cpl_lr: Adam learning rate of the optimiser re-created at the BC -> contrastive switch;
            None: ``lr`` (the reference). Not in the paper: a scale-down device for short
            runs (a compressed BC phase at a higher lr, the contrastive phase at the paper's lr).
        warmup_steps: linear learning-rate warm-up after the switch to the contrastive loss.
        hidden: actor hidden layers.
        dropout: actor dropout.
        actor: ``deterministic`` (the paper's) or ``gaussian``.
        centre_logprob: score the entropy-centred log-density (Gaussian actor, lambda != 1).
        loss: ``cpl`` or ``bc`` (SFT: BC only, with ``bc_data="pos"``).
        kl: CPL-KL: score log-probabilities relative to the frozen BC policy.
        ortho_init: orthogonal initialisation of the actor's linear layers.
        fused_adam: torch's fused Adam kernel (same update, faster step).
        fast_dropout: :class:`~pbrl.offline.nn.FastDropout` (2-3x cheaper masks on a CPU)
            instead of ``nn.Dropout`` (the same distribution, another random stream).
    """

    alpha: float = 0.1
    bias: float = 0.5
    bc_coeff: float = 0.0
    bc_data: str = "all"
    bc_steps: int = 200_000
    lr: float = 1e-4
    cpl_lr: float | None = None
    warmup_steps: int = 10_000
    hidden: tuple[int, ...] = field(default=(512, 512))
    dropout: float = 0.25
    actor: str = "deterministic"
    centre_logprob: bool = False
    loss: str = "cpl"
    kl: bool = False
    ortho_init: bool = True
    fused_adam: bool = True
    fast_dropout: bool = True

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        if not 0.0 < self.bias <= 1.0:
            raise ValueError(f"bias (lambda) must lie in (0, 1], got {self.bias}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if self.bc_data not in BC_DATA:
            raise ValueError(f"unknown bc_data {self.bc_data!r}; valid: {list(BC_DATA)}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; valid: {list(LOSSES)}")
        if self.actor not in ACTORS:
            raise ValueError(f"unknown actor {self.actor!r}; valid: {list(ACTORS)}")
        if self.cpl_lr is not None and not self.cpl_lr > 0:
            raise ValueError(f"cpl_lr must be > 0 or null, got {self.cpl_lr}")
        if self.bc_steps < 0 or self.warmup_steps < 0:
            raise ValueError("bc_steps and warmup_steps must be >= 0")
        if self.kl and self.bc_steps == 0 and self.loss == "cpl":
            raise ValueError(
                "CPL-KL scores log-probabilities against the BC policy, so it needs bc_steps > 0"
            )
        if (
            self.loss == "cpl"
            and self.actor == "gaussian"
            and self.bias != 1.0
            and not self.centre_logprob
            and not self.kl
        ):
            raise ValueError(
                f"a Gaussian actor with bias (lambda) = {self.bias} != 1: the log-density's "
                "constants (-log sigma - log(2 pi)/2 per dimension) do not cancel in "
                "S+ - lambda S-, so the loss would depend on sigma and the segment length. "
                "Use bias=1, centre_logprob=true, or the deterministic actor"
            )


class CPLAgent:
    """CPL / CPL-BC / CPL-KL / SFT on one actor (see the module docstring).

    Args:
        obs_dim: ``D_o``.
        act_dim: ``D_a``.
        cfg: hyperparameters.
        device: torch device.
        seed: seeds the actor's initialisation and dropout.
    """

    def __init__(
        self, obs_dim: int, act_dim: int, cfg: CPLConfig, device: str = "cpu", seed: int = 0
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        torch.manual_seed(seed)
        self.actor = CPLActor(
            obs_dim, act_dim, cfg.hidden, cfg.dropout, cfg.actor, cfg.ortho_init,
            fast_dropout=cfg.fast_dropout,
        ).to(self.device)  # fmt: skip
        self.ref: CPLActor | None = None
        self.contrastive = False  # True after the BC phase (never for loss="bc")
        self.optim = self._new_optim()
        self.sched: torch.optim.lr_scheduler.LambdaLR | None = None
        self.obs_dim, self.act_dim = obs_dim, act_dim
        if cfg.loss == "cpl" and cfg.bc_steps <= 0:  # no BC phase: contrastive from step 0
            self.start_contrastive()

    def _new_optim(self, lr: float | None = None) -> torch.optim.Adam:
        fused = self.cfg.fused_adam and (self.device.type in ("cpu", "cuda"))
        lr = self.cfg.lr if lr is None else lr
        return torch.optim.Adam(self.actor.parameters(), lr=lr, fused=fused)

    # --- scores -------------------------------------------------------------------------
    def step_logprob(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Per-step log-probability ``(N, H)`` (minus the reference's for CPL-KL)."""
        lp = self.actor.log_prob(obs, act, centre=self.cfg.centre_logprob)
        if self.cfg.kl and self.ref is not None:
            with torch.no_grad():
                lp = lp - self.ref.log_prob(obs, act, centre=self.cfg.centre_logprob)
        return lp

    def segment_scores(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """``S(sigma) = sum_t alpha log pi(a_t|s_t)`` of ``(N, H, ...)`` segments, ``(N,)``."""
        return self.cfg.alpha * self.step_logprob(obs, act).sum(dim=-1)

    # --- training -----------------------------------------------------------------------
    def losses(self, batch: PairBatch | ScoreBatch) -> dict[str, torch.Tensor]:
        """``cpl_loss``, ``bc_loss``, ``accuracy`` of one batch (differentiable)."""
        cfg = self.cfg
        if isinstance(batch, ScoreBatch):
            obs, act = batch.obs, batch.act
        else:
            obs, act = stack_pairs(batch)
        # (N, H) each: BC maximises the likelihood itself; CPL scores the (centred) one.
        lp_bc, lp_pol = self.actor.log_probs(obs, act)
        if not cfg.centre_logprob:
            lp_pol = lp_bc
        if cfg.bc_data == "pos":
            if isinstance(batch, ScoreBatch):
                raise ValueError("bc_data='pos' needs pair batches (sampling mode rank/comparison)")
            lp1, lp2 = lp_bc.chunk(2, dim=0)
            pos = torch.cat([lp1[batch.label <= 0.5], lp2[batch.label >= 0.5]])
            bc = -pos.mean()
        else:
            bc = -lp_bc.mean()
        out = {"bc_loss": bc}
        if cfg.loss == "cpl":
            lp = lp_pol
            if cfg.kl and self.ref is not None:
                with torch.no_grad():
                    lp_ref = self.ref.log_prob(obs, act, centre=cfg.centre_logprob)
                lp = lp - lp_ref
            s = cfg.alpha * lp.sum(dim=-1)
            if isinstance(batch, ScoreBatch):
                loss, acc = cpl_score_loss(s, batch.score, cfg.bias)
            else:
                s1, s2 = s.chunk(2, dim=0)
                loss, acc = cpl_pair_loss(s1, s2, batch.label, cfg.bias)
            out["cpl_loss"], out["accuracy"] = loss, acc
        return out

    def update(self, batch: PairBatch | ScoreBatch, step: int) -> dict[str, float]:
        """One gradient step at training step ``step`` (0-based); returns its scalars."""
        cfg = self.cfg
        self.actor.train()
        parts = self.losses(batch)
        if cfg.loss == "bc" or not self.contrastive:
            loss = parts["bc_loss"]
        else:
            loss = parts["cpl_loss"] + cfg.bc_coeff * parts["bc_loss"]
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        self.optim.step()
        if self.sched is not None:
            self.sched.step()
        stats = {k: float(v.detach()) for k, v in parts.items()}
        stats["loss"] = float(loss.detach())
        stats["lr"] = float(self.optim.param_groups[0]["lr"])
        stats["contrastive"] = float(self.contrastive)
        if cfg.loss == "cpl" and not self.contrastive and step + 1 >= cfg.bc_steps:
            self.start_contrastive()
        return stats

    def start_contrastive(self) -> None:
        """End of BC: new optimiser (at ``cpl_lr`` if set), warm-up, frozen KL reference."""
        self.contrastive = True
        if self.cfg.kl:
            self.ref = copy.deepcopy(self.actor).eval()
            for p in self.ref.parameters():
                p.requires_grad_(False)
        self.optim = self._new_optim(self.cfg.cpl_lr)
        self.sched = self._warmup(self.optim)

    def _warmup(self, optim: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        w = self.cfg.warmup_steps
        return torch.optim.lr_scheduler.LambdaLR(
            optim, lambda n: 1.0 if w == 0 else min(1.0, (n + 1) / w)
        )

    # --- evaluation ---------------------------------------------------------------------
    @torch.no_grad()
    def evaluate_pairs(self, batch: PairBatch) -> dict[str, float]:
        """Held-out ``accuracy`` and ``cpl_loss`` (eval mode, no dropout)."""
        self.actor.eval()
        obs, act = stack_pairs(batch)
        s1, s2 = self.segment_scores(obs, act).chunk(2, dim=0)
        loss, _ = cpl_pair_loss(s1, s2, batch.label, self.cfg.bias)
        strict = batch.label != 0.5
        acc = ((s2 > s1) == (batch.label > 0.5))[strict].float().mean()
        return {"cpl_loss": float(loss), "accuracy": float(acc)}

    @torch.no_grad()
    def act(self, obs: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        """Deterministic actions in [-1, 1] for ``obs (B, D_o)`` (eval mode; ``idx`` unused)."""
        self.actor.eval()
        o = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        return self.actor(o)[0].cpu().numpy()

    # --- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training exactly."""
        return {
            "cfg": asdict(self.cfg),
            "actor": self.actor.state_dict(),
            "ref": None if self.ref is None else self.ref.state_dict(),
            "contrastive": self.contrastive,
            "optim": self.optim.state_dict(),
            "sched": None if self.sched is None else self.sched.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict` on an agent built with the same config."""
        self.actor.load_state_dict(state["actor"])
        if state["contrastive"] and not self.contrastive:
            self.start_contrastive()
        if state["ref"] is not None:
            assert self.ref is not None
            self.ref.load_state_dict(state["ref"])
        self.optim.load_state_dict(state["optim"])
        if state["sched"] is not None:
            assert self.sched is not None
            self.sched.load_state_dict(state["sched"])
