"""RAPL: a visual reward from an encoder aligned on preference triplets, by optimal transport.

Tian, Wu, Xu, Tomizuka, Malik, Bajcsy, *What Matters to You? Towards Visual Representation
Alignment for Robot Learning* (ICLR 2024). Steps, as in the paper:

1. **Align** the frame encoder ``phi`` on triplets of videos ranked by the person,
   ``(o+, o0, o-)`` = (most preferred, neutral, least preferred). The most preferred video is
   the anchor; the video score is ``R(o, o+) = -<M*, C>`` with the OT plan ``M*`` between the
   embedded frames (:mod:`pbrl.rewards.ot`), and the preference model is

       P = exp R(o0, o+) / (exp R(o0, o+) + exp R(o-, o+)) = sigmoid(R(o0, o+) - R(o-, o+)).

   Loss (``loss=``): ``"nll"`` is the paper's negative log-likelihood ``-log P``;
   ``"bounded"`` is the official code's ``1 - P``. Triplets the person marked "all about the
   same" (``Label.EQUAL``) add the official code's ``(0.5 - P)^2``.
2. **Reward**: freeze ``phi``, embed the expert demos once, and score each robot video against
   the best-matching demo, per step from the transport plan (:func:`pbrl.rewards.ot.ot_rewards`).

Deliberate choices (``docs/rapl.md``): the loss defaults to the paper's NLL (stronger
gradients on confident mistakes than ``1 - P``); training and reward use the *same* cost
(cosine by default; the official alignment script used Euclidean and the RL reward cosine);
``eps = 0.05`` instead of the code's ``gamma = 1`` (an almost uniform plan, see ``ot.py``);
per-step rewards are ``"frame"``-scaled instead of the code's ``-1e4 cost^2``.

The OT reward of a step depends on the whole episode (the plan is global), so the paper's
reward is :meth:`RAPLReward.episode_rewards`, computed when an episode ends. For the per-step
``reward_fn(obs, act)`` interface of the online loop, :meth:`RAPLReward.reward_fn` gives the
Markovian reading of the same quantity: a lone frame transported to the demo with only its own
marginal enforced, ``r = -sum_s q_s C(o, e_s)`` with ``q = softmax(-C(o, .) / eps)``.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from pbrl.data import Feedback, Label, QueryBatch
from pbrl.rewards.ot import CostName, Transform, cost_matrix, ot_rewards, ot_score
from pbrl.visual.encoders import FrameEncoder

LossKind = Literal["nll", "bounded"]
LOSSES: tuple[str, ...] = ("nll", "bounded")


def rapl_loss(
    r_neu: torch.Tensor,
    r_neg: torch.Tensor,
    equal: torch.Tensor | None = None,
    loss: LossKind = "nll",
    beta: float = 1.0,
) -> torch.Tensor:
    """Mean RAPL triplet loss over ``M`` triplets.

    Args:
        r_neu: ``(M,)`` scores ``R(o0, o+)`` of the neutral videos against the anchor.
        r_neg: ``(M,)`` scores ``R(o-, o+)`` of the least preferred videos.
        equal: ``(M,)`` bool, triplets judged "about the same" (loss ``(0.5 - P)^2``).
        loss: ``"nll"`` (``-log P``, the paper) or ``"bounded"`` (``1 - P``, the code).
        beta: inverse temperature of the preference model (paper: 1).

    Returns:
        Scalar loss.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown RAPL loss {loss!r}; valid: {list(LOSSES)}")
    logit = beta * (r_neu - r_neg)
    p = torch.sigmoid(logit)
    contrastive = -F.logsigmoid(logit) if loss == "nll" else 1.0 - p
    if equal is None:
        return contrastive.mean()
    equal = equal.to(torch.bool)
    per = torch.where(equal, (0.5 - p).square(), contrastive)
    return per.mean()


def triplets_from_feedback(
    queries: QueryBatch, feedback: Sequence[Feedback]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn answered 3-clip ranking queries into RAPL triplets.

    Args:
        queries: ``M`` queries of ``kind="ranking"`` and ``k=3``.
        feedback: answers carrying ``ranking`` (best first); ``Label.EQUAL`` marks an
            "all about the same" triplet; skips are dropped.

    Returns:
        ``(query_index, order, equal)``: ``(M',)`` positions of the kept queries, ``(M', 3)``
        member indices ordered (positive, neutral, negative), ``(M',)`` bool.
    """
    if queries.k != 3:
        raise ValueError(f"RAPL triplets are 3-clip rankings, got queries with k={queries.k}")
    pos = {qid: i for i, qid in enumerate(queries.ids)}
    idx, order, equal = [], [], []
    for fb in feedback:
        if fb.label == Label.SKIP or fb.query_id not in pos:
            continue
        if fb.ranking is None and fb.label != Label.EQUAL:
            raise ValueError(f"feedback for {fb.query_id} has no ranking (RAPL needs one)")
        idx.append(pos[fb.query_id])
        order.append(fb.ranking if fb.ranking is not None else (0, 1, 2))
        equal.append(fb.label == Label.EQUAL)
    return (
        np.asarray(idx, np.int64),
        np.asarray(order, np.int64).reshape(-1, 3),
        np.asarray(equal, bool),
    )


class RAPLReward:
    """RAPL's aligned visual reward: train ``phi`` on triplets, reward by OT to expert demos.

    Args:
        encoder: the frame encoder ``phi`` (default: :class:`~pbrl.visual.encoders.
            FrameEncoder` built from ``encoder_kwargs``).
        encoder_kwargs: arguments of the default encoder (``backbone``, ``embed_dim``, ...).
        cost: OT ground cost, used in training *and* in the reward.
        eps: entropy weight of Sinkhorn (cost units).
        n_iters: Sinkhorn iterations at most (tolerance 1e-6).
        loss: ``"nll"`` (paper) or ``"bounded"`` (official code), see :func:`rapl_loss`.
        beta: inverse temperature of the preference model.
        lr: Adam learning rate (code: 1e-3).
        batch_size: triplets per step (code: 10).
        epochs: passes over the training triplets (code: 100).
        val_frac: held-out share of triplets; the best-validation head is kept (code: 0.2).
        transform, scale: per-step reward shape (:func:`pbrl.rewards.ot.step_rewards`).
        device: torch device.
        seed: seeds the split, the batch order and the head's initialisation.
    """

    def __init__(
        self,
        encoder: FrameEncoder | None = None,
        encoder_kwargs: dict[str, Any] | None = None,
        cost: CostName = "cosine",
        eps: float = 0.05,
        n_iters: int = 200,
        loss: LossKind = "nll",
        beta: float = 1.0,
        lr: float = 1e-3,
        batch_size: int = 10,
        epochs: int = 100,
        val_frac: float = 0.2,
        transform: Transform = "frame",
        scale: float = 1.0,
        device: str = "cpu",
        seed: int = 0,
    ):
        if loss not in LOSSES:
            raise ValueError(f"unknown RAPL loss {loss!r}; valid: {list(LOSSES)}")
        if not 0.0 <= val_frac < 1.0:
            raise ValueError(f"val_frac must lie in [0, 1), got {val_frac}")
        torch.manual_seed(seed)
        self.encoder = encoder if encoder is not None else FrameEncoder(**(encoder_kwargs or {}))
        self.encoder.to(device)
        self.cost: CostName = cost
        self.eps, self.n_iters = float(eps), int(n_iters)
        self.loss_kind: LossKind = loss
        self.beta, self.lr = float(beta), float(lr)
        self.batch_size, self.epochs, self.val_frac = int(batch_size), int(epochs), float(val_frac)
        self.transform: Transform = transform
        self.scale = float(scale)
        self.device = torch.device(device)
        self.rng = np.random.default_rng(seed)
        self.demo_embed: torch.Tensor | None = None  # (K, S, E)
        self._demo_frames: np.ndarray | None = None

    # --- embeddings ------------------------------------------------------------------
    def _features(self, videos: np.ndarray) -> torch.Tensor:
        """``(N, T, H, W, 3)`` uint8 -> backbone features ``(N, T, F)`` (no grad if frozen)."""
        n, t = videos.shape[:2]
        feats = self.encoder.features(videos.reshape(n * t, *videos.shape[2:]))
        return feats.reshape(n, t, -1)

    @torch.no_grad()
    def embed(self, videos: np.ndarray) -> torch.Tensor:
        """``(N, T, H, W, 3)`` uint8 videos -> ``(N, T, E)`` embeddings ``phi(o_t)``."""
        self.encoder.eval()
        return self.encoder.head(self._features(videos))

    def score(self, videos: np.ndarray, anchors: np.ndarray) -> np.ndarray:
        """``(N,)`` video scores ``R(o_i, anchor_i) = -<M*, C>`` (for checks and tests)."""
        with torch.no_grad():
            s = ot_score(self.embed(videos), self.embed(anchors), self.cost, self.eps, self.n_iters)
        return s.cpu().numpy()

    # --- alignment -------------------------------------------------------------------
    def _triplet_loss(
        self, z: torch.Tensor, equal: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and ``(M,)`` correctness of ``z (M, 3, T, E)`` ordered (pos, neu, neg)."""
        anchor = z[:, 0]
        r = ot_score(z[:, 1:], anchor.unsqueeze(1), self.cost, self.eps, self.n_iters)
        loss = rapl_loss(r[:, 0], r[:, 1], equal, self.loss_kind, self.beta)
        return loss, r[:, 0] > r[:, 1]

    def fit(
        self,
        videos: np.ndarray | None,
        equal: np.ndarray | None = None,
        verbose: bool = False,
        features: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """Align ``phi`` on ``M`` triplets of videos.

        Args:
            videos: ``(M, 3, T, H, W, 3)`` uint8, each triplet ordered (most preferred,
                neutral, least preferred); may be ``None`` when ``features`` are given.
            equal: ``(M,)`` bool, "about the same" triplets.
            verbose: print one line per epoch.
            features: ``(M, 3, T, F)`` backbone features of the same videos, precomputed
                (e.g. cached for a pool of videos that many triplets share); frozen backbone
                only.

        Returns:
            ``{"loss", "val_loss", "val_accuracy", "best_epoch", "history"}``; accuracy is the
            share of held-out contrastive triplets with ``R(o0, o+) > R(o-, o+)``.
        """
        frozen = not self.encoder.train_backbone
        if features is not None:
            if not frozen:
                raise ValueError("precomputed features need a frozen backbone (train_backbone)")
            if features.ndim != 4 or features.shape[1] != 3:
                raise ValueError(f"features must be (M, 3, T, F), got {tuple(features.shape)}")
            m, _, t = features.shape[:3]
        elif videos is None or videos.ndim != 6 or videos.shape[1] != 3:
            shape = None if videos is None else videos.shape
            raise ValueError(f"videos must be (M, 3, T, H, W, 3), got {shape}")
        else:
            m, _, t = videos.shape[:3]
        eq = np.zeros(m, bool) if equal is None else np.asarray(equal, bool)
        perm = self.rng.permutation(m)
        n_val = int(round(self.val_frac * m)) if m > 1 else 0
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        # Frozen backbone: its features are computed once; the head is all that trains.
        cache: torch.Tensor | None = None
        if features is not None:
            cache = features.to(self.device)
        elif frozen:
            assert videos is not None
            feats = self._features(videos.reshape(m * 3, *videos.shape[2:]))
            cache = feats.reshape(m, 3, t, -1)
        params = [p for p in self.encoder.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=self.lr)
        eq_t = torch.as_tensor(eq, device=self.device)

        def embed_batch(idx: np.ndarray) -> torch.Tensor:
            if cache is not None:
                return self.encoder.head(cache[idx])
            assert videos is not None
            v = videos[idx]
            feats = self._features(v.reshape(len(idx) * 3, *v.shape[2:]))
            return self.encoder.head(feats).reshape(len(idx), 3, t, -1)

        def evaluate(idx: np.ndarray) -> tuple[float, float]:
            if len(idx) == 0:
                return math.nan, math.nan
            self.encoder.eval()
            with torch.no_grad():
                loss, correct = self._triplet_loss(embed_batch(idx), eq_t[idx])
            contrast = ~eq[idx]
            acc = float(correct.cpu().numpy()[contrast].mean()) if contrast.any() else math.nan
            return float(loss), acc

        best = (math.inf, copy.deepcopy(self.encoder.state_dict()), -1)
        history = []
        val_loss, val_acc = evaluate(val_idx)
        history.append(
            {"epoch": 0, "train_loss": math.nan, "val_loss": val_loss, "val_acc": val_acc}
        )
        if n_val:
            best = (val_loss, copy.deepcopy(self.encoder.state_dict()), 0)
        for epoch in range(1, self.epochs + 1):
            self.encoder.train()
            order = self.rng.permutation(train_idx)
            losses = []
            for i in range(0, len(order), self.batch_size):
                b = order[i : i + self.batch_size]
                loss, _ = self._triplet_loss(embed_batch(b), eq_t[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
            val_loss, val_acc = evaluate(val_idx)
            row = {
                "epoch": epoch,
                "train_loss": float(np.mean(losses)) if losses else math.nan,
                "val_loss": val_loss,
                "val_acc": val_acc,
            }
            history.append(row)
            if verbose:
                print(json.dumps(row), flush=True)
            if n_val and val_loss < best[0]:
                best = (val_loss, copy.deepcopy(self.encoder.state_dict()), epoch)
        if n_val:
            self.encoder.load_state_dict(best[1])
        self.encoder.eval()
        if self._demo_frames is not None:  # the embedding changed: re-embed the demos
            self.set_demos(self._demo_frames)
        final = history[best[2]] if n_val else history[-1]
        return {
            "loss": history[-1]["train_loss"],
            "val_loss": final["val_loss"],
            "val_accuracy": final["val_acc"],
            "best_epoch": best[2],
            "history": history,
        }

    # --- reward ----------------------------------------------------------------------
    def set_demos(self, frames: np.ndarray) -> None:
        """Embed ``K`` expert demos ``(K, S, H, W, 3)`` uint8 (or one ``(S, H, W, 3)``) once.

        The frames are kept, and re-embedded after each :meth:`fit`.
        """
        if frames.ndim == 4:
            frames = frames[None]
        if frames.ndim != 5:
            raise ValueError(f"demos must be (K, S, H, W, 3) uint8, got shape {frames.shape}")
        self._demo_frames = frames
        self.demo_embed = self.embed(frames)

    def _require_demos(self) -> torch.Tensor:
        if self.demo_embed is None:
            raise RuntimeError("RAPLReward needs expert demos: call set_demos(frames) first")
        return self.demo_embed

    def episode_rewards(self, videos: np.ndarray) -> np.ndarray:
        """The paper's per-step OT rewards ``(B, T)`` of ``B`` robot videos ``(B, T, H, W, 3)``."""
        demos = self._require_demos()
        r, _ = ot_rewards(
            self.embed(videos),
            demos,
            cost=self.cost,
            eps=self.eps,
            n_iters=self.n_iters,
            transform=self.transform,
            scale=self.scale,
        )
        return r.cpu().numpy().astype(np.float32)

    @torch.no_grad()
    def frame_rewards(self, frames: np.ndarray) -> np.ndarray:
        """Markovian per-frame reward ``(N,)`` of ``(N, H, W, 3)`` frames (module docstring).

        ``r = -sum_s q_s C(o, e_s)``, ``q = softmax_s(-C(o, e_s) / eps)``, best over demos, in
        the ``"frame"`` scale (a frame's matched cost), times ``scale``.
        """
        demos = self._require_demos()  # (K, S, E)
        z = self.embed(frames[:, None])[:, 0]  # (N, E)
        c = cost_matrix(z[None, :, :], demos, self.cost)  # (K, N, S)
        q = torch.softmax(-c / self.eps, dim=-1)
        r = -(q * c).sum(-1).max(dim=0).values
        if self.transform == "code":
            raise ValueError("transform='code' has no per-frame form; use 'frame' or 'paper'")
        return (r * self.scale).cpu().numpy().astype(np.float32)

    def reward_fn(self, obs: np.ndarray, act: np.ndarray | None = None) -> np.ndarray:
        """Per-step reward ``(B,)`` for pixel observations ``(B, 3k, H, W)`` (newest frame last).

        The ``reward_fn(obs, act)`` interface of the online loop and the SB3 wrapper; the
        action is not used.
        """
        obs = np.asarray(obs)
        if obs.ndim != 4 or obs.shape[1] % 3:
            raise ValueError(
                f"RAPL's per-step reward needs pixel observations (B, 3k, H, W) (make the env "
                f"with obs='pixels'), got shape {obs.shape}"
            )
        frames = np.clip(obs[:, -3:], 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        return self.frame_rewards(frames)

    # --- persistence -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Encoder weights, demo embeddings and the RNG state."""
        return {
            "encoder": self.encoder.state_dict(),
            "demo_embed": None if self.demo_embed is None else self.demo_embed.cpu(),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict` on a learner built with the same arguments."""
        self.encoder.load_state_dict(state["encoder"])
        d = state.get("demo_embed")
        self.demo_embed = None if d is None else d.to(self.device)
        self.rng.bit_generator.state = state["rng"]

    def save(self, path: str | Path) -> None:
        """``path/rapl.pt`` (state dict) and ``path/rapl.json`` (hyperparameters)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), path / "rapl.pt")
        hp = {
            "encoder": self.encoder.config(),
            "cost": self.cost,
            "eps": self.eps,
            "n_iters": self.n_iters,
            "loss": self.loss_kind,
            "beta": self.beta,
            "transform": self.transform,
            "scale": self.scale,
            "torch": torch.__version__,
        }
        (path / "rapl.json").write_text(json.dumps(hp, indent=2))
