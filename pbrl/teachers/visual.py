"""RAPL's simulated end-user: prefers videos by a hidden visual criterion.

RAPL (Tian et al., ICLR 2024) evaluates with a simulated person who ranks videos by a
privileged state score that reflects what they care about and the task reward does not
fully say. The criteria here (no official X-Magical RAPL code is known, so these are ours):

- ``"xmagical_grouping"`` (X-Magical SweepToTop, "sweep everything to the top while keeping
  the objects together"): on the segment's *final* state,
  ``score = -mean_i d_i - w_group * mean_{i<j} |p_i - p_j|`` with ``d_i`` the benchmark's
  distance of debris ``i`` to the top (``|y_i - 1|``, 0 once ``y_i > 0.88``) and ``p_i`` the
  debris positions, read from the segment's ``sim_state`` (the last three bodies' rows).
- ``"franka_fragile"`` (``franka_grocery``, "keep the fragile item apart"): on the final
  step's reward factors, ``score = in_goal + min(fragile_gap / 0.15, 1) + user_success``
  (items on the mat, the egg carton's gap to the nearest heavy item, both at once).

Queries answered, the same kinds the human session shows:

- ``pair``: the higher-scoring segment (``Label.EQUAL`` within ``equal_margin``);
- ``ranking`` (k clips, RAPL's triplets when ``k = 3``): ``Feedback.ranking`` best first;
  when every score lies within ``equal_margin`` the label is ``Label.EQUAL`` (RAPL's
  "equal-ranking" triplets, all similarly good or bad);
- ``triplet`` (anchor, a, b): which of a, b has the score closer to the anchor's.

Noise: finite ``beta`` samples Bradley-Terry / Plackett-Luce answers
(``P(second) = sigmoid(beta (s_1 - s_0))``; rankings by Gumbel-perturbed ``beta s``);
``eps_mistake`` flips pair and triplet answers and swaps a ranking's first two.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from scipy.special import expit

from pbrl.data import Feedback, Label, QueryBatch, SegmentBatch

Criterion = Callable[[SegmentBatch], np.ndarray]

_TOP_Y, _TOP_REACHED_Y = 1.0, 0.88  # X-Magical's goal line and "reached" height
_FRAGILE_GAP = 0.15  # m, franka_grocery's "apart" distance


def xmagical_debris_xy(segments: SegmentBatch, step: int = -1) -> np.ndarray:
    """``(N, 3, 2)`` debris positions of X-Magical segments at ``step``, from ``sim_state``.

    The sim state is 6 numbers per body (x, y, angle, vx, vy, w) then 4 colour indices; the
    debris are the last three bodies.
    """
    if segments.sim_state is None:
        raise ValueError("the X-Magical criterion reads debris positions from sim_state; none")
    s = segments.sim_state[:, step]
    n_bodies = (s.shape[-1] - 4) // 6
    if (s.shape[-1] - 4) % 6 or n_bodies < 4:
        raise ValueError(f"not an X-Magical sim state: size {s.shape[-1]}")
    rows = s[:, : 6 * n_bodies].reshape(len(s), n_bodies, 6)
    return rows[:, -3:, :2]


def xmagical_grouping(segments: SegmentBatch, w_group: float = 1.0) -> np.ndarray:
    """``(N,)`` "to the top, kept together" score of each segment's final state."""
    xy = xmagical_debris_xy(segments)
    y = xy[..., 1]
    dist = np.where(y > _TOP_REACHED_Y, 0.0, np.abs(y - _TOP_Y)).mean(axis=1)
    i, j = np.triu_indices(3, k=1)
    spread = np.linalg.norm(xy[:, i] - xy[:, j], axis=-1).mean(axis=1)
    return -dist - w_group * spread


def franka_fragile(segments: SegmentBatch) -> np.ndarray:
    """``(N,)`` "packed, eggs apart" score from the final step's grocery factors."""
    f = segments.reward_factors
    need = ("in_goal", "fragile_gap", "user_success")
    missing = [k for k in need if k not in f]
    if missing:
        raise ValueError(
            f"the franka_fragile criterion needs reward factors {list(need)} (franka_grocery); "
            f"missing {missing}"
        )
    gap = np.minimum(np.asarray(f["fragile_gap"])[:, -1] / _FRAGILE_GAP, 1.0)
    return np.asarray(f["in_goal"])[:, -1] + gap + np.asarray(f["user_success"])[:, -1]


CRITERIA: dict[str, Criterion] = {
    "xmagical_grouping": xmagical_grouping,
    "franka_fragile": franka_fragile,
}


def criterion_for(env_name: str) -> str:
    """The default criterion of an environment name."""
    if env_name.startswith("xmagical"):
        return "xmagical_grouping"
    if env_name == "franka_grocery":
        return "franka_fragile"
    raise KeyError(
        f"no hidden visual criterion for {env_name!r}; give criterion= one of {sorted(CRITERIA)}"
    )


class VisualCriterionTeacher:
    """A simulated person judging clips by a hidden visual criterion (RAPL's end-user).

    Args:
        criterion: a name in :data:`CRITERIA`, ``"auto"`` (from the segments' ``env_name``),
            or a callable ``SegmentBatch -> (N,)`` scores (higher is preferred).
        beta: rationality; ``math.inf`` answers deterministically.
        eps_mistake: probability of a flipped answer.
        equal_margin: scores closer than this are "about the same".
        seed: seed of the teacher's generator.
        teacher_id: recorded in every feedback.
        criterion_kwargs: extra arguments of a named criterion (e.g. ``w_group``).
    """

    def __init__(
        self,
        criterion: str | Criterion = "auto",
        beta: float = math.inf,
        eps_mistake: float = 0.0,
        equal_margin: float = 0.0,
        seed: int = 0,
        teacher_id: str = "visual",
        criterion_kwargs: Mapping[str, Any] | None = None,
    ):
        if not float(beta) > 0:
            raise ValueError(f"beta must be > 0 (math.inf: deterministic), got {beta}")
        if not 0.0 <= eps_mistake <= 1.0:
            raise ValueError(f"eps_mistake must lie in [0, 1], got {eps_mistake}")
        if isinstance(criterion, str) and criterion != "auto" and criterion not in CRITERIA:
            raise KeyError(f"unknown criterion {criterion!r}; valid: {sorted(CRITERIA)} or auto")
        self.criterion = criterion
        self.criterion_kwargs = dict(criterion_kwargs or {})
        self.beta = float(beta)
        self.eps_mistake = float(eps_mistake)
        self.equal_margin = float(equal_margin)
        self.rng = np.random.default_rng(seed)
        self.teacher_id = str(teacher_id)

    def scores(self, segments: SegmentBatch) -> np.ndarray:
        """``(N,)`` hidden criterion of each segment (higher is preferred)."""
        crit = self.criterion
        if callable(crit):
            return np.asarray(crit(segments), np.float64)
        name = criterion_for(segments.env_name) if crit == "auto" else crit
        return np.asarray(CRITERIA[name](segments, **self.criterion_kwargs), np.float64)

    def label(self, queries: QueryBatch) -> list[Feedback]:
        """Answer ``M`` pair, triplet or ranking queries (see the module docstring)."""
        m = len(queries)
        s = np.stack([self.scores(queries.member(j)) for j in range(queries.k)], axis=1)
        flip = self.rng.random(m) < self.eps_mistake
        labels = np.full(m, int(Label.FIRST))
        rankings: list[tuple[int, ...] | None] = [None] * m
        if queries.kind == "pair":
            diff = s[:, 1] - s[:, 0]
            second = (
                diff > 0 if math.isinf(self.beta) else self.rng.random(m) < expit(self.beta * diff)
            )
            second ^= flip
            labels = np.where(second, int(Label.SECOND), int(Label.FIRST))
            labels[np.abs(diff) <= self.equal_margin] = int(Label.EQUAL)
        elif queries.kind == "triplet":
            # closeness to the anchor: a smaller |s - s_anchor| is more similar
            da, db = np.abs(s[:, 1] - s[:, 0]), np.abs(s[:, 2] - s[:, 0])
            diff = da - db  # > 0: b is closer
            second = (
                diff > 0 if math.isinf(self.beta) else self.rng.random(m) < expit(self.beta * diff)
            )
            second ^= flip
            labels = np.where(second, int(Label.SECOND), int(Label.FIRST))
            labels[np.abs(diff) <= self.equal_margin] = int(Label.EQUAL)
        else:  # ranking
            noisy = s if math.isinf(self.beta) else self.beta * s + self.rng.gumbel(size=s.shape)
            order = np.argsort(-noisy, axis=1, kind="stable")
            order[flip, :2] = order[flip, 1::-1]
            rankings = [tuple(int(i) for i in row) for row in order]
            same = s.max(axis=1) - s.min(axis=1) <= self.equal_margin
            labels = np.where(same, int(Label.EQUAL), int(Label.FIRST))
        now = time.time()
        return [
            Feedback(
                query_id=qid,
                label=Label(int(labels[i])),
                teacher_id=self.teacher_id,
                ranking=rankings[i],
                timestamp=now,
            )
            for i, qid in enumerate(queries.ids)
        ]

    def state_dict(self) -> dict[str, Any]:
        """The generator's state."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.rng.bit_generator.state = state["rng"]
