"""Offline Preference-guided Policy Optimisation (Kang et al., ICML 2023, arXiv 2305.16217).

Three parts (defaults: ``oppo/scripted/gym`` of bkkgbkjb/OPPO):

- a **hindsight encoder** ``z = I_phi(tau)``: a bidirectional (BERT-style) transformer over a
  ``K``-step window of ``(s, a)`` tokens, 3 layers, 2 heads, hidden 128, inner 512;
  ``z = Linear(pooled tokens)``, ``dim z = 8``;
- a **contextual policy** ``pi_theta(a_t | s_<=t, a_<t, z)``: a Decision-Transformer-style
  causal transformer (3 layers, 1 head, embedding 128, inner 512, ReLU, dropout 0.1) over
  tokens ``(z, s_t, a_t)`` with an episode-timestep embedding, predicting ``a_t`` from the
  state token through ``Linear + tanh``;
- a free **optimal context** ``z*`` (initialised ``2 randn(8)``).

Each step: **A** (encoder + policy; AdamW 1e-4, weight decay 1e-4, grad-norm clip 0.25, linear
warm-up) minimises ``L_HIM + 0.1 L_pref + 0.1 L_norm`` with ``z*`` detached, where
``L_HIM = ||pi(s, z=I(tau)) - a||^2`` on both windows of a pair, ``L_pref`` the triplet loss
``max(0, ||z* - z+|| - ||z* - z-|| + 1)`` and ``L_norm = MSE(||z_1||, 1) + MSE(||z_2||, 1)``;
**B** (``z*`` only; AdamW 1e-3) minimises ``L_pref`` on encodings recomputed with the updated
encoder and detached. At test time the policy is conditioned on ``z*``.

Choices where the reference code is ambiguous or has a known pitfall:

- **Pooling**: the reference sums every output token, padded ones included, so ``z`` depends
  on the padding length. We sum the *valid* tokens only (``pooling="masked_sum"``, default);
  ``pooling="sum"`` is the faithful variant. On full windows (all of training here) they agree.
- **Labels**: the pair's label (e.g. ``pbrl-dataset make labels=future_return``, OPPO's
  200-step look-ahead return) is given to both windows cut from the pair's segments; ties
  (target 0.5) are left out of the triplet loss (the scripted code drops them) but still
  train ``L_HIM``. Soft targets count for the side they lean to.
- **Triplet distance**: the plain Euclidean norm (torch's ``TripletMarginLoss`` adds 1e-6
  inside the norm).
- **Evaluation** runs all episodes in lock-step from ``t = 0``, so every live episode has the
  same history length and no padding is needed: the policy sees the last ``min(t + 1, K)``
  steps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pbrl.offline.data import PairBatch, pair_windows
from pbrl.offline.nn import use_fast_dropout

POOLINGS: tuple[str, ...] = ("masked_sum", "sum")


# ---------------------------------------------------------------------------------------------
# Losses
def triplet_loss(
    anchor: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, margin: float = 1.0
) -> torch.Tensor:
    """``mean max(0, ||anchor - pos||_2 - ||anchor - neg||_2 + margin)``.

    Args:
        anchor: ``(Z,)`` or ``(B, Z)`` (``z*`` broadcasts over the batch).
        pos: ``(B, Z)`` encodings of the preferred windows.
        neg: ``(B, Z)`` encodings of the rejected windows.
        margin: the triplet margin (OPPO: 1).
    """
    if pos.shape[0] == 0:
        return pos.sum() * 0.0  # no strict pair in the batch: zero, still differentiable
    d_pos = torch.linalg.vector_norm(anchor - pos, dim=-1)
    d_neg = torch.linalg.vector_norm(anchor - neg, dim=-1)
    return F.relu(d_pos - d_neg + margin).mean()


def norm_loss(z: torch.Tensor) -> torch.Tensor:
    """``MSE(||z||, 1)`` over a batch ``(B, Z)``."""
    return F.mse_loss(torch.linalg.vector_norm(z, dim=-1), torch.ones(len(z), device=z.device))


def split_preferred(
    z1: torch.Tensor, z2: torch.Tensor, label: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z+, z-)`` of the strict pairs (label != 0.5); label = P(second preferred)."""
    keep = label != 0.5
    second = (label > 0.5)[keep, None]
    z1, z2 = z1[keep], z2[keep]
    return torch.where(second, z2, z1), torch.where(second, z1, z2)


# ---------------------------------------------------------------------------------------------
# Models
class HindsightEncoder(nn.Module):
    """``z = Linear(pool(BERT(embed(s, a) + pos)))`` over a window of ``K`` steps."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        z_dim: int = 8,
        hidden: int = 128,
        n_layer: int = 3,
        n_head: int = 2,
        inner: int = 512,
        window: int = 20,
        dropout: float = 0.1,
        pooling: str = "masked_sum",
        fast_dropout: bool = True,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; valid: {list(POOLINGS)}")
        self.pooling = pooling
        self.embed = nn.Linear(obs_dim + act_dim, hidden)
        self.pos = nn.Embedding(window, hidden)
        self.ln = nn.LayerNorm(hidden)
        layer = nn.TransformerEncoderLayer(
            hidden, n_head, inner, dropout, activation="gelu", batch_first=True
        )
        self.body = nn.TransformerEncoder(layer, n_layer, enable_nested_tensor=False)
        if fast_dropout:
            use_fast_dropout(self.body)
        self.head = nn.Linear(hidden, z_dim)

    def forward(
        self, obs: torch.Tensor, act: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Encodings ``(B, Z)`` of windows ``obs (B, K, D_o)``, ``act (B, K, D_a)``.

        ``mask (B, K)`` marks the valid steps (None: all valid).
        """
        k = obs.shape[1]
        x = self.embed(torch.cat([obs, act], dim=-1)) + self.pos(torch.arange(k, device=obs.device))
        x = self.ln(x)
        pad = None if mask is None else ~mask
        h = self.body(x, src_key_padding_mask=pad)
        if mask is not None and self.pooling == "masked_sum":
            h = h * mask[..., None]
        return self.head(h.sum(dim=1))


class ContextPolicy(nn.Module):
    """Decision-Transformer-style policy with the context ``z`` in place of return-to-go."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        z_dim: int = 8,
        embed: int = 128,
        n_layer: int = 3,
        n_head: int = 1,
        inner: int = 512,
        dropout: float = 0.1,
        max_ep_len: int = 1000,
        fast_dropout: bool = True,
    ) -> None:
        super().__init__()
        self.max_ep_len = max_ep_len
        self.embed_z = nn.Linear(z_dim, embed)
        self.embed_s = nn.Linear(obs_dim, embed)
        self.embed_a = nn.Linear(act_dim, embed)
        self.embed_t = nn.Embedding(max_ep_len, embed)
        self.ln = nn.LayerNorm(embed)
        layer = nn.TransformerEncoderLayer(
            embed, n_head, inner, dropout, activation="relu", batch_first=True, norm_first=True
        )
        self.body = nn.TransformerEncoder(layer, n_layer, enable_nested_tensor=False)
        if fast_dropout:
            use_fast_dropout(self.body)
        self.ln_f = nn.LayerNorm(embed)
        self.head = nn.Linear(embed, act_dim)

    def forward(
        self, z: torch.Tensor, obs: torch.Tensor, act: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """Predicted actions ``(B, K, D_a)``.

        Args:
            z: ``(B, Z)`` context, the same for every step of a window.
            obs: ``(B, K, D_o)`` normalised states.
            act: ``(B, K, D_a)`` actions (the prediction of ``a_t`` only sees ``a_<t``).
            t: ``(B, K)`` episode time index of each step.
        """
        b, k, _ = obs.shape
        te = self.embed_t(t.clamp(0, self.max_ep_len - 1))
        tokens = torch.stack(
            [self.embed_z(z)[:, None].expand(-1, k, -1) + te, self.embed_s(obs) + te,
             self.embed_a(act) + te],
            dim=2,
        ).reshape(b, 3 * k, -1)  # fmt: skip
        causal = torch.triu(
            torch.ones(3 * k, 3 * k, dtype=torch.bool, device=obs.device), diagonal=1
        )
        h = self.ln_f(self.body(self.ln(tokens), mask=causal))
        return torch.tanh(self.head(h[:, 1::3]))  # from the state tokens


# ---------------------------------------------------------------------------------------------
# Agent
@dataclass
class OPPOConfig:
    """Hyperparameters (defaults: OPPO's ``args.py``/``experiment.py``).

    Attributes:
        window: ``K``, steps per window.
        z_dim: context size.
        embed: policy embedding size.
        n_layer: policy layers.
        n_head: policy heads.
        inner: policy feed-forward size.
        dropout: policy (and encoder) dropout.
        enc_hidden: encoder hidden size.
        enc_layers: encoder layers.
        enc_heads: encoder heads.
        enc_inner: encoder feed-forward size.
        lr: AdamW lr of the policy.
        enc_lr: AdamW lr of the encoder (constant: the reference's ``et_optimizer``, 1e-4);
            None: the same as ``lr``.
        weight_decay: AdamW weight decay (every parameter group).
        warmup_steps: linear warm-up of the policy's lr (the reference warms up the policy's
            optimiser only; the encoder's runs at its lr from the first step).
        z_lr: AdamW lr of ``z*``.
        pref_loss_ratio: weight of ``L_pref`` in step A.
        norm_loss_ratio: weight of ``L_norm`` in step A.
        margin: triplet margin.
        grad_clip: gradient-norm clip in step A, of the encoder and of the policy each.
        max_ep_len: size of the timestep embedding.
        pooling: ``masked_sum`` (ours) or ``sum`` (the reference's).
        fused_adam: fused AdamW kernels.
        fast_dropout: the transformers' dropout layers by :class:`~pbrl.offline.nn.FastDropout`
            (2-3x cheaper masks on a CPU; the attention weights' dropout stays torch's).
    """

    window: int = 20
    z_dim: int = 8
    embed: int = 128
    n_layer: int = 3
    n_head: int = 1
    inner: int = 512
    dropout: float = 0.1
    enc_hidden: int = 128
    enc_layers: int = 3
    enc_heads: int = 2
    enc_inner: int = 512
    lr: float = 1e-4
    enc_lr: float | None = None
    weight_decay: float = 1e-4
    warmup_steps: int = 10_000
    z_lr: float = 1e-3
    pref_loss_ratio: float = 0.1
    norm_loss_ratio: float = 0.1
    margin: float = 1.0
    grad_clip: float = 0.25
    max_ep_len: int = 1000
    pooling: str = "masked_sum"
    fused_adam: bool = True
    fast_dropout: bool = True


class OPPOAgent:
    """OPPO's encoder, contextual policy and ``z*`` with the two-step update.

    Args:
        obs_dim: ``D_o``.
        act_dim: ``D_a``.
        cfg: hyperparameters.
        obs_mean: ``(D_o,)`` dataset state mean (states are normalised).
        obs_std: ``(D_o,)`` dataset state std.
        device: torch device.
        seed: seeds initialisation, ``z*`` and window cuts.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        cfg: OPPOConfig,
        obs_mean: torch.Tensor,
        obs_std: torch.Tensor,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.obs_dim, self.act_dim = obs_dim, act_dim
        torch.manual_seed(seed)
        self.encoder = HindsightEncoder(
            obs_dim, act_dim, cfg.z_dim, cfg.enc_hidden, cfg.enc_layers, cfg.enc_heads,
            cfg.enc_inner, cfg.window, cfg.dropout, cfg.pooling, cfg.fast_dropout,
        ).to(self.device)  # fmt: skip
        self.policy = ContextPolicy(
            obs_dim, act_dim, cfg.z_dim, cfg.embed, cfg.n_layer, cfg.n_head, cfg.inner,
            cfg.dropout, cfg.max_ep_len, cfg.fast_dropout,
        ).to(self.device)  # fmt: skip
        g = torch.Generator().manual_seed(seed)
        self.z_star = nn.Parameter((2.0 * torch.randn(cfg.z_dim, generator=g)).to(self.device))
        self.obs_mean = obs_mean.to(self.device).float()
        self.obs_std = obs_std.to(self.device).float().clamp_min(1e-6)
        fused = cfg.fused_adam and self.device.type in ("cpu", "cuda")
        # One AdamW, two groups: the encoder (group 0) at a constant lr, the policy (group 1)
        # with the warm-up, as the reference's et_optimizer and optimizer + LambdaLR.
        enc_lr = cfg.lr if cfg.enc_lr is None else cfg.enc_lr
        self.optim = torch.optim.AdamW(
            [
                {"params": list(self.encoder.parameters()), "lr": enc_lr},
                {"params": list(self.policy.parameters()), "lr": cfg.lr},
            ],
            weight_decay=cfg.weight_decay,
            fused=fused,
        )
        w = cfg.warmup_steps
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.optim, [lambda n: 1.0, lambda n: 1.0 if w == 0 else min(1.0, (n + 1) / w)]
        )
        self.z_optim = torch.optim.AdamW(
            [self.z_star], lr=cfg.z_lr, weight_decay=cfg.weight_decay, fused=fused
        )
        self.gen = torch.Generator().manual_seed(seed + 1)
        self._hist: dict[str, torch.Tensor] = {}

    def normalise(self, obs: torch.Tensor) -> torch.Tensor:
        """States scaled by the dataset's mean and std."""
        return (obs - self.obs_mean) / self.obs_std

    def windows(self, batch: PairBatch) -> tuple[torch.Tensor, ...]:
        """Random ``K``-step windows of a pair batch, states normalised."""
        o1, a1, t1, o2, a2, t2 = pair_windows(batch, self.cfg.window, self.gen)
        return self.normalise(o1), a1, t1, self.normalise(o2), a2, t2

    def update(self, batch: PairBatch, step: int) -> dict[str, float]:
        """Step A (encoder + policy) then step B (``z*``) on one pair batch."""
        cfg = self.cfg
        o1, a1, t1, o2, a2, t2 = self.windows(batch)
        self.encoder.train()
        self.policy.train()
        # --- A: hindsight information matching + preference + norm, z* detached ---
        z1, z2 = self.encoder(o1, a1), self.encoder(o2, a2)
        him = F.mse_loss(self.policy(z1, o1, a1, t1), a1) + F.mse_loss(
            self.policy(z2, o2, a2, t2), a2
        )
        zp, zn = split_preferred(z1, z2, batch.label)
        pref = triplet_loss(self.z_star.detach(), zp, zn, cfg.margin)
        norm = norm_loss(z1) + norm_loss(z2)
        loss_a = him + cfg.pref_loss_ratio * pref + cfg.norm_loss_ratio * norm
        self.optim.zero_grad(set_to_none=True)
        loss_a.backward()
        # Clipped apart, as the reference does (one joint clip is up to sqrt(2) stricter).
        torch.nn.utils.clip_grad_norm_(self.encoder.parameters(), cfg.grad_clip)
        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)
        self.optim.step()
        self.sched.step()
        # --- B: z* towards the (updated, detached) encodings of preferred windows ---
        with torch.no_grad():
            zp, zn = split_preferred(self.encoder(o1, a1), self.encoder(o2, a2), batch.label)
        pref_b = triplet_loss(self.z_star, zp, zn, cfg.margin)
        self.z_optim.zero_grad(set_to_none=True)
        pref_b.backward()
        self.z_optim.step()
        return {
            "him_loss": float(him.detach()),
            "pref_loss": float(pref.detach()),
            "norm_loss": float(norm.detach()),
            "z_loss": float(pref_b.detach()),
            "loss": float(loss_a.detach()),
            "z_star_norm": float(self.z_star.detach().norm()),
            "lr": float(self.optim.param_groups[1]["lr"]),
            "enc_lr": float(self.optim.param_groups[0]["lr"]),
        }

    @torch.no_grad()
    def evaluate_pairs(self, batch: PairBatch) -> dict[str, float]:
        """Held-out preference accuracy of ``z*`` (is it closer to the preferred window)."""
        self.encoder.eval()
        # Fixed windows from a generator of their own: every evaluation cuts the same ones, and
        # the training stream (self.gen) does not depend on how often or how much is evaluated.
        gen = torch.Generator().manual_seed(0)
        o1, a1, _, o2, a2, _ = pair_windows(batch, self.cfg.window, gen)
        o1, o2 = self.normalise(o1), self.normalise(o2)
        z1, z2 = self.encoder(o1, a1), self.encoder(o2, a2)
        d1 = torch.linalg.vector_norm(self.z_star - z1, dim=-1)
        d2 = torch.linalg.vector_norm(self.z_star - z2, dim=-1)
        strict = batch.label != 0.5
        acc = ((d2 < d1) == (batch.label > 0.5))[strict].float().mean()
        zp, zn = split_preferred(z1, z2, batch.label)
        pref = triplet_loss(self.z_star, zp, zn, self.cfg.margin)
        return {"accuracy": float(acc), "pref_loss": float(pref)}

    @torch.no_grad()
    def encode(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Encodings ``(B, Z)`` of raw windows (eval mode)."""
        self.encoder.eval()
        return self.encoder(self.normalise(obs), act)

    # --- acting: lock-step episodes conditioned on z* -----------------------------------
    def reset_eval(self, n: int) -> None:
        """Start ``n`` fresh episodes (empty histories)."""
        k, dev = self.cfg.window, self.device
        self._hist = {
            "obs": torch.zeros(n, 0, self.obs_dim, device=dev),
            "act": torch.zeros(n, 0, self.act_dim, device=dev),
            "t": torch.zeros(n, dtype=torch.long, device=dev),
        }
        self._k = k

    @torch.no_grad()
    def act(self, obs: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        """Actions for live episodes ``idx`` (all when None) given their current ``obs``."""
        self.policy.eval()
        h = self._hist
        n = h["t"].shape[0]
        idx_t = torch.arange(n, device=self.device) if idx is None else torch.as_tensor(idx)
        idx_t = idx_t.to(self.device)
        o = self.normalise(torch.as_tensor(obs, dtype=torch.float32, device=self.device))
        # Append s_t (for every env: dead ones get a copy of nothing useful, never read).
        new_obs = torch.zeros(n, 1, self.obs_dim, device=self.device)
        new_obs[idx_t, 0] = o
        h["obs"] = torch.cat([h["obs"], new_obs], dim=1)[:, -self._k :]
        h["act"] = torch.cat([h["act"], torch.zeros(n, 1, self.act_dim, device=self.device)], 1)[
            :, -self._k :
        ]
        length = h["obs"].shape[1]
        t = h["t"][:, None] - torch.arange(length - 1, -1, -1, device=self.device)
        z = self.z_star.detach()[None].expand(len(idx_t), -1)
        pred = self.policy(z, h["obs"][idx_t], h["act"][idx_t], t[idx_t])[:, -1]
        h["act"][idx_t, -1] = pred
        h["t"] = h["t"] + 1
        return pred.cpu().numpy()

    # --- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training exactly."""
        return {
            "cfg": asdict(self.cfg),
            "encoder": self.encoder.state_dict(),
            "policy": self.policy.state_dict(),
            "z_star": self.z_star.detach().clone(),
            "obs_mean": self.obs_mean,
            "obs_std": self.obs_std,
            "optim": self.optim.state_dict(),
            "sched": self.sched.state_dict(),
            "z_optim": self.z_optim.state_dict(),
            "gen": self.gen.get_state(),
        }

    def load_weights(self, state: dict[str, Any]) -> None:
        """The trained model of a :meth:`state_dict`, without the optimisers.

        Encoder, policy, ``z*`` and the state normalisation: enough to act and to encode.
        """
        self.encoder.load_state_dict(state["encoder"])
        self.policy.load_state_dict(state["policy"])
        with torch.no_grad():
            self.z_star.copy_(state["z_star"])
        self.obs_mean, self.obs_std = state["obs_mean"], state["obs_std"]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        if len(state["optim"]["param_groups"]) != 2:
            raise ValueError(
                "this OPPO checkpoint predates the encoder/policy parameter groups (one "
                "optimiser group, the encoder warmed up with the policy), so training cannot "
                "continue from it; start the run again, or load it for evaluation with "
                "OPPOAgent.load_weights"
            )
        self.load_weights(state)
        self.optim.load_state_dict(state["optim"])
        self.sched.load_state_dict(state["sched"])
        self.z_optim.load_state_dict(state["z_optim"])
        self.gen.set_state(state["gen"])
