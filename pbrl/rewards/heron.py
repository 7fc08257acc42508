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

HERON's code-generation variant also changes the loss, with a level-dependent scale
``alpha^F`` (``level_scale``, off by default): a pair whose winner was decided at ranking level
``k`` (0 = the most important factor, :class:`~pbrl.teachers.heron.HeronTeacher`) enters it as

    -log sigmoid(alpha^k (R_phi(tau_w) - R_phi(tau_l)))

so that, at equal preference strength ``p``, the learned gap is ``logit(p) / alpha^k``: with
``alpha > 1`` a pair decided by a more important factor gets a larger reward gap, by a factor
``alpha`` per level (the authors' stated intent: a pass/fail gap should exceed an AST-similarity
gap). ``alpha = 1`` is plain Bradley-Terry. The released code does not contain this loss and
the paper's equation could not be checked (``docs/heron.md`` lists what was searched), so the
form is our reading of it. It is off by default because the authors describe it for code
generation's categorical factors, not for the control tasks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pbrl.rewards.bradley_terry import BTRewardLearner

__all__ = ["HeronRewardLearner", "level_scales"]


def level_scales(levels: np.ndarray, alpha: float) -> np.ndarray:
    """HERON's per-pair multiplier of the return gap: ``alpha ** level``.

    Args:
        levels: ``(Q,)`` integer ranking level that decided each pair (0 = most important);
            ``-1`` for a pair no level decided (an ``EQUAL`` tie), which gets 1.
        alpha: the level scale ``alpha > 0``.

    Returns:
        ``(Q,)`` float64 multipliers.
    """
    lv = np.asarray(levels)
    if lv.ndim != 1 or not np.issubdtype(lv.dtype, np.integer):
        raise ValueError(f"levels must be a 1-D integer array, got {lv.dtype} {lv.shape}")
    if (lv < -1).any():
        raise ValueError(f"levels must be >= -1 (-1: undecided), got e.g. {lv[lv < -1][:5]}")
    return float(alpha) ** np.maximum(lv, 0).astype(np.float64)


class HeronRewardLearner(BTRewardLearner):
    """A :class:`~pbrl.rewards.bradley_terry.BTRewardLearner` whose reward is normalised.

    Args:
        obs_dim, act_dim: ``D_o``, ``D_a``.
        normalize: serve ``(R - mu) / sigma`` (statistics of the labelled segments' steps).
        reward_scale: multiplier applied last.
        level_scale: ``alpha`` of the level-dependent gap scale (module docstring); 1 = off.
            Other values need the deciding level of every pair (``levels`` of :meth:`train`).
        **kwargs: :class:`~pbrl.rewards.bradley_terry.BTRewardLearner` arguments.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        normalize: bool = True,
        reward_scale: float = 1.0,
        level_scale: float = 1.0,
        **kwargs: Any,
    ) -> None:
        if not np.isfinite(reward_scale) or reward_scale <= 0:
            raise ValueError(f"reward_scale must be finite and > 0, got {reward_scale}")
        if not np.isfinite(level_scale) or level_scale <= 0:
            raise ValueError(
                f"level_scale must be finite and > 0 (1 = off; > 1 widens the reward gap of "
                f"pairs decided by more important factors), got {level_scale}"
            )
        super().__init__(obs_dim, act_dim, **kwargs)
        self.hparams.update(
            normalize=bool(normalize),
            reward_scale=float(reward_scale),
            level_scale=float(level_scale),
        )
        self.mu, self.sigma = 0.0, 1.0

    @property
    def uses_levels(self) -> bool:
        """Whether :meth:`train` needs the level that decided each pair (``level_scale != 1``)."""
        return self.hparams["level_scale"] != 1.0

    def train(
        self,
        obs: np.ndarray,
        act: np.ndarray,
        target: np.ndarray,
        levels: np.ndarray | None = None,
    ) -> dict[str, float]:
        """Bradley-Terry training (level-scaled), then refresh the normalisation statistics.

        Args:
            obs: ``(Q, 2, H, D_o)`` observations of (first, second) segment of each pair.
            act: ``(Q, 2, H, D_a)`` actions.
            target: ``(Q,)`` probability that the second segment is preferred.
            levels: ``(Q,)`` ranking level that decided each pair (0 = most important, -1 =
                undecided tie), as :meth:`HeronTeacher.levels_of` reports; needed when
                ``level_scale != 1``, ignored otherwise.
        """
        scale = None
        if self.uses_levels:
            if levels is None:
                raise ValueError(
                    f"level_scale={self.hparams['level_scale']} scales each pair by the factor "
                    "level that decided it, so train() needs levels= (HeronTeacher.levels_of); "
                    "set reward.level_scale=1 to train without them"
                )
            if np.shape(levels) != np.shape(target):
                raise ValueError(
                    f"levels must hold one level per pair, shape {np.shape(target)}, got "
                    f"{np.shape(levels)}"
                )
            scale = level_scales(levels, self.hparams["level_scale"])
        stats = super().train(obs, act, target, scale=scale)
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
