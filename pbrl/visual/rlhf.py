"""RAPL's RLHF baseline: a per-frame reward learned with Bradley-Terry on the same triplets.

The paper's RLHF baseline (Tian et al., ICLR 2024; the official code's ``train_RLHF_reward.py``
and ``reward_type=preference`` in ``mvp/ppo/ppo.py``) spends the *same* preference queries as
RAPL on a reward model instead of on the representation: a frozen ImageNet ResNet-18 and a
linear layer give a per-frame cost ``f(o_t)``, a video's reward is ``-sum_t f(o_t)``, trained
with the same loss (Adam 1e-4, 50 epochs) on the 150 triplets; the RL reward is
``-1000 f(o_t)``.

Here (:class:`RLHFReward`):

- **Model**: :class:`~pbrl.visual.encoders.FrameEncoder` with ``embed_dim=1``: the pretrained
  backbone (frozen, its features cached) and a linear head to one number, the frame's cost
  ``f``. A backbone that trains (``small_cnn``) is fitted end to end on the pixels.
- **Queries**: each ranked triplet ``(o+, o0, o-)`` of the simulated end-user gives the three
  comparisons it implies, ``o+ > o0``, ``o0 > o-``, ``o+ > o-``, each a Bradley-Terry term
  ``-log sigmoid(R(a) - R(b))`` with ``R(o) = -sum_t f(o_t)``; an "all about the same"
  triplet gives ``(0.5 - P)^2`` per pair, the RAPL code's equal-ranking term (as
  ``benchmarks/rapl_xmagical_alignment.py`` does). The loss is the mean of the three.
- **Training**: :meth:`RAPLReward.fit`'s loop (20 % of the triplets held out, the
  best-validation head kept) with the paper's RLHF values, Adam 1e-4, 50 epochs, batch 10.
  Held-out accuracy is the share of held-out contrastive triplets' pairs ordered right.
- **RL reward**: ``r_t = -scale (f(o_t) - mu) / sigma``, the cost standardised by its mean
  and standard deviation over the training videos' frames (:meth:`RLHFReward.set_normalisation`)
  instead of the code's task-specific ``-1000 f``, so its scale is comparable to the OT
  reward's ``[-2, 0]``. Markovian: a frame's reward does not depend on the rest of the episode.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pbrl.rewards.rapl import LossKind, RAPLReward, rapl_loss
from pbrl.visual.encoders import FrameEncoder

PAIRS: tuple[tuple[int, int], ...] = ((0, 1), (1, 2), (0, 2))
"""The comparisons a ranked triplet (positive, neutral, negative) implies: (preferred, other)."""


class RLHFReward(RAPLReward):
    """A per-frame visual cost ``f`` learned by Bradley-Terry on ranked triplets of videos.

    The triplet fitting loop, feature caching and best-validation selection are
    :class:`~pbrl.rewards.rapl.RAPLReward`'s; the triplet loss is the Bradley-Terry loss over
    the three pairs each triplet implies (module docstring) and the reward is per frame, with
    no demos and no optimal transport.

    Args:
        encoder: a :class:`FrameEncoder` with ``embed_dim=1`` (default: one built from
            ``encoder_kwargs`` with ``embed_dim`` set to 1).
        encoder_kwargs: ``backbone``, ``image_size``, ... of the default encoder.
        lr, batch_size, epochs, val_frac: training (paper's RLHF: Adam 1e-4, 50 epochs; batch
            10 and 20 % held out as RAPL's).
        loss: ``"nll"`` (Bradley-Terry's ``-log P``) or ``"bounded"`` (``1 - P``).
        beta: inverse temperature of the preference model.
        scale: the RL reward is ``-scale`` times the standardised cost.
        device, seed: as :class:`RAPLReward`.
    """

    def __init__(
        self,
        encoder: FrameEncoder | None = None,
        encoder_kwargs: dict[str, Any] | None = None,
        lr: float = 1e-4,
        batch_size: int = 10,
        epochs: int = 50,
        val_frac: float = 0.2,
        loss: LossKind = "nll",
        beta: float = 1.0,
        scale: float = 1.0,
        device: str = "cpu",
        seed: int = 0,
    ):
        if encoder is not None and encoder.embed_dim != 1:
            raise ValueError(
                f"the RLHF reward's encoder outputs one cost per frame: give embed_dim=1, not "
                f"{encoder.embed_dim}"
            )
        kwargs = None if encoder is not None else {**(encoder_kwargs or {}), "embed_dim": 1}
        super().__init__(
            encoder,
            kwargs,
            loss=loss,
            beta=beta,
            lr=lr,
            batch_size=batch_size,
            epochs=epochs,
            val_frac=val_frac,
            scale=scale,
            device=device,
            seed=seed,
        )
        self.cost_mean, self.cost_std = 0.0, 1.0

    # --- the model -------------------------------------------------------------------
    def video_returns(self, costs: torch.Tensor) -> torch.Tensor:
        """``R(o) = -sum_t f(o_t)`` of per-frame costs ``(..., T, 1)`` -> ``(...)``."""
        return -costs.squeeze(-1).sum(-1)

    def _triplet_loss(
        self, z: torch.Tensor, equal: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Bradley-Terry loss and ``(M, 3)`` pair correctness of costs ``(M, 3, T, 1)``."""
        ret = self.video_returns(z)  # (M, 3) video rewards, ordered (pos, neu, neg)
        losses = [
            rapl_loss(ret[:, i], ret[:, j], equal, self.loss_kind, self.beta) for i, j in PAIRS
        ]
        correct = torch.stack([ret[:, i] > ret[:, j] for i, j in PAIRS], dim=1)
        return torch.stack(losses).mean(), correct

    @torch.no_grad()
    def frame_costs(self, frames: np.ndarray) -> np.ndarray:
        """``(N,)`` costs ``f(o)`` of ``(N, H, W, 3)`` uint8 frames."""
        self.encoder.eval()
        return self.encoder(frames)[:, 0].cpu().numpy().astype(np.float64)

    def score(self, videos: np.ndarray, anchors: np.ndarray | None = None) -> np.ndarray:
        """``(N,)`` video rewards ``R(o) = -sum_t f(o_t)`` of ``(N, T, H, W, 3)`` (no anchor)."""
        n, t = videos.shape[:2]
        costs = self.frame_costs(videos.reshape(n * t, *videos.shape[2:]))
        return -costs.reshape(n, t).sum(1)

    # --- the RL reward ---------------------------------------------------------------
    def set_normalisation(self, costs: np.ndarray | torch.Tensor) -> None:
        """Standardise the reward by the mean and std of these per-frame costs."""
        c = torch.as_tensor(costs, dtype=torch.float64).reshape(-1)
        if c.numel() < 2:
            raise ValueError("set_normalisation needs the costs of at least two frames")
        self.cost_mean = float(c.mean())
        self.cost_std = max(float(c.std()), 1e-8)

    def normalise_frames(self, frames: np.ndarray) -> None:
        """:meth:`set_normalisation` on the costs of ``(..., H, W, 3)`` uint8 frames."""
        self.set_normalisation(self.frame_costs(frames.reshape(-1, *frames.shape[-3:])))

    def frame_rewards(self, frames: np.ndarray) -> np.ndarray:
        """``(N,)`` per-frame rewards ``-scale (f(o) - mu) / sigma`` of ``(N, H, W, 3)`` frames."""
        c = self.frame_costs(frames)
        return (-self.scale * (c - self.cost_mean) / self.cost_std).astype(np.float32)

    def episode_rewards(self, videos: np.ndarray) -> np.ndarray:
        """``(B, T)`` per-step rewards of ``B`` videos ``(B, T, H, W, 3)`` (frame by frame)."""
        b, t = videos.shape[:2]
        return self.frame_rewards(videos.reshape(b * t, *videos.shape[2:])).reshape(b, t)

    def set_demos(self, frames: np.ndarray) -> None:
        """Not used: the RLHF reward compares no demos."""
        raise TypeError("the RLHF reward has no expert demos; it scores each frame on its own")

    # --- persistence -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Encoder weights, the reward's normalisation and the RNG state."""
        out = super().state_dict()
        out["normalisation"] = (self.cost_mean, self.cost_std)
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        super().load_state_dict(state)
        self.cost_mean, self.cost_std = (float(x) for x in state["normalisation"])

    def save(self, path: str | Path) -> None:
        """``path/rlhf.pt`` (state dict) and ``path/rlhf.json`` (hyperparameters)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), path / "rlhf.pt")
        hp = {
            "encoder": self.encoder.config(),
            "loss": self.loss_kind,
            "beta": self.beta,
            "scale": self.scale,
            "torch": torch.__version__,
        }
        (path / "rlhf.json").write_text(json.dumps(hp, indent=2))

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> RLHFReward:
        """A reward model written by :meth:`save`."""
        path = Path(path).expanduser()
        if not (path / "rlhf.pt").is_file() or not (path / "rlhf.json").is_file():
            raise FileNotFoundError(
                f"{path} holds no saved RLHF reward (rlhf.pt and rlhf.json from "
                "RLHFReward.save); give rlhf.path=<that directory> or leave it null to learn one"
            )
        hp = json.loads((path / "rlhf.json").read_text())
        # The state dict holds every weight, so the pretrained file need not be read again.
        encoder = FrameEncoder(**dict(hp["encoder"]), pretrained=False)
        model = cls(encoder, loss=hp["loss"], beta=hp["beta"], scale=hp["scale"], device=device)
        state = torch.load(path / "rlhf.pt", map_location=device, weights_only=False)
        model.load_state_dict(state)
        model.encoder.eval()
        return model
