"""HERON's reward model: Bradley-Terry on hierarchical labels, with output normalisation.

HERON (Bukharin et al.) trains a reward model ``R_phi`` with the Bradley-Terry loss
``-E log sigmoid(R_phi(tau_w) - R_phi(tau_l))`` over the pairs its decision tree decided
(undecided pairs are dropped by :class:`~pbrl.teachers.heron.HeronTeacher`, which answers them
``Label.SKIP``; the loop never trains on skips). The loss and network are those of
:class:`~pbrl.rewards.bradley_terry.BTRewardLearner`; what HERON adds is what the policy sees:

- ``normalize`` (the official ``--rm-normalize``): ``(R - mu) / sigma`` with ``mu``, ``sigma``
  the mean and std of the model's per-step output over the labelled segments, recomputed after
  every training round (the learned reward has an arbitrary offset and scale that otherwise
  interacts with the agent's learning rate);
- ``reward_scale``: a constant multiplier on the (normalised) reward.

Not implemented: the code-generation variant's level-dependent scale ``alpha^F`` (a larger
reward gap when a more important factor decided the pair) — its exact form is unverified in
the method notes, and the loop's feedback store does not carry the deciding level.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pbrl.rewards.bradley_terry import BTRewardLearner

__all__ = ["HeronRewardLearner"]


class HeronRewardLearner(BTRewardLearner):
    """A :class:`~pbrl.rewards.bradley_terry.BTRewardLearner` whose reward is normalised.

    Args:
        obs_dim, act_dim: ``D_o``, ``D_a``.
        normalize: serve ``(R - mu) / sigma`` (statistics of the labelled segments' steps).
        reward_scale: multiplier applied last.
        **kwargs: :class:`~pbrl.rewards.bradley_terry.BTRewardLearner` arguments.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        normalize: bool = True,
        reward_scale: float = 1.0,
        **kwargs: Any,
    ) -> None:
        if not np.isfinite(reward_scale) or reward_scale <= 0:
            raise ValueError(f"reward_scale must be finite and > 0, got {reward_scale}")
        super().__init__(obs_dim, act_dim, **kwargs)
        self.hparams.update(normalize=bool(normalize), reward_scale=float(reward_scale))
        self.mu, self.sigma = 0.0, 1.0

    def train(self, obs: np.ndarray, act: np.ndarray, target: np.ndarray) -> dict[str, float]:
        """Bradley-Terry training, then refresh the normalisation statistics."""
        stats = super().train(obs, act, target)
        if self.hparams["normalize"]:
            o = np.asarray(obs).reshape(-1, self.hparams["obs_dim"])
            a = np.asarray(act).reshape(-1, self.hparams["act_dim"])
            r = self.ensemble.predict(o, a).astype(np.float64)
            self.mu, self.sigma = float(r.mean()), float(max(r.std(), 1e-8))
            stats.update(reward_mean=self.mu, reward_std=self.sigma)
        return stats

    def reward_fn(self, obs: np.ndarray, act: np.ndarray) -> np.ndarray:
        """``reward_scale * (r_hat - mu) / sigma``: ``obs (B, D_o), act (B, D_a) -> (B,)``."""
        r = self.ensemble.predict(obs, act)
        scale = self.hparams["reward_scale"]
        return (scale * (r - self.mu) / self.sigma).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        """The Bradley-Terry state plus the normalisation statistics."""
        return {**super().state_dict(), "norm": {"mu": self.mu, "sigma": self.sigma}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        super().load_state_dict(state)
        norm = state.get("norm", {"mu": 0.0, "sigma": 1.0})
        self.mu, self.sigma = float(norm["mu"]), float(norm["sigma"])
