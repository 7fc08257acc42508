"""QDHF's robotic-arm task: a planar arm with ``dof`` unit links (inverse-kinematics repertoire).

From the paper's code (``arm/main.py``, after Fontaine & Nikolaidis' DQD arm): a solution is
the joint angles ``theta`` in R^dof (initial population uniform in [-pi, pi]);

- objective ``J = (1 - Var(theta)) * 100`` (smooth postures score high; the code's remap of
  ``-Var`` from [-1, 0] to [0, 100]);
- ground-truth measure ``g = (sum_i l_i cos(phi_i), sum_i l_i sin(phi_i))``, the end-effector
  position, with ``phi = cumsum(theta)``, bounds ``[-sum l, sum l]^2``;
- features for the learned projection ``f = [cos(phi), sin(phi)]`` in R^(2 dof). A linear map
  of ``f`` can represent ``g`` exactly (pitfall noted in the method notes: every port must
  state its ``f``).
"""

from __future__ import annotations

import numpy as np


class ArmDomain:
    """The ``dof``-link planar arm with unit link lengths."""

    name = "arm"

    def __init__(self, dof: int = 10):
        if dof < 2:
            raise ValueError(f"dof must be >= 2, got {dof}")
        self.dof = int(dof)
        self.link_lengths = np.ones(self.dof)
        reach = float(self.link_lengths.sum())
        self.gt_lower = np.array([-reach, -reach])
        self.gt_upper = np.array([reach, reach])
        self.feature_dim = 2 * self.dof
        self.solution_dim = self.dof

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``(n, dof)`` solutions uniform in [-pi, pi]."""
        return rng.uniform(-np.pi, np.pi, size=(n, self.dof))

    def objective(self, theta: np.ndarray) -> np.ndarray:
        """``(N,)`` ``(1 - Var(theta)) * 100``."""
        return (1.0 - np.var(theta, axis=1)) * 100.0

    def measures(self, theta: np.ndarray) -> np.ndarray:
        """``(N, 2)`` end-effector position (the hidden ground-truth descriptor)."""
        phi = np.cumsum(theta, axis=1)
        return np.stack(
            [(self.link_lengths * np.cos(phi)).sum(1), (self.link_lengths * np.sin(phi)).sum(1)],
            axis=1,
        )

    def features(self, theta: np.ndarray) -> np.ndarray:
        """``(N, 2 dof)`` ``[cos(cumsum theta), sin(cumsum theta)]``."""
        phi = np.cumsum(theta, axis=1)
        return np.concatenate([np.cos(phi), np.sin(phi)], axis=1)

    def evaluate(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(objective (N,), measures (N, 2), features (N, 2 dof))`` in one call."""
        return self.objective(theta), self.measures(theta), self.features(theta)
