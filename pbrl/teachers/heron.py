"""HERON's hierarchical teacher: ranked reward factors decide each comparison.

Bukharin et al., "Deep RL from hierarchical weak preference feedback" (arXiv 2309.02632; ICML
2025 as "Deep RL from hierarchical preference design").

The user ranks reward factors by importance and says for each whether higher or lower is better.
A pair of segments walks a decision tree: with ``z_k(sigma)`` the segment sum of factor ``k``
and ``s_k`` its sign,

    for k in the ranking: if s_k z_k(sigma_1) > s_k z_k(sigma_0) + delta_k: sigma_1 wins, stop
                          if s_k z_k(sigma_0) > s_k z_k(sigma_1) + delta_k: sigma_0 wins, stop

and a pair undecided at every level is discarded (``Label.SKIP``, as in the paper) or, with
``undecided="equal"``, answered as a tie. Margins ``delta_k`` are absolute
(``margin_mode="absolute"``) or, as in the paper, data dependent: ``delta_k = margin_k *
std(z_k)`` over the segments of the batch being labelled (``margin_mode="std"``; the robotics
code uses the PPO minibatch std, the control code the buffer std).

The tree is vectorised (:func:`hierarchical_decisions`): one ``(M, n)`` difference table, a
first-decided-level ``argmax``, no Python loop over pairs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from pbrl.data import Feedback, Label, QueryBatch, SegmentBatch

__all__ = ["HeronTeacher", "hierarchical_decisions"]

MarginMode = Literal["absolute", "std"]


def hierarchical_decisions(
    z_first: np.ndarray, z_second: np.ndarray, signs: np.ndarray, margins: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Walk HERON's decision tree for ``M`` pairs at once.

    Args:
        z_first: ``(M, n)`` factor values of the first segments, columns in importance order.
        z_second: ``(M, n)`` factor values of the second segments.
        signs: ``(n,)`` +1 (higher is better) or -1 (lower is better).
        margins: ``(n,)`` or ``(M, n)`` non-negative margins ``delta_k``.

    Returns:
        ``winner (M,)``: 0 first, 1 second, -1 undecided; ``level (M,)``: index of the deciding
        factor in the ranking, -1 if undecided.
    """
    z0, z1 = np.asarray(z_first, np.float64), np.asarray(z_second, np.float64)
    if z0.shape != z1.shape or z0.ndim != 2:
        raise ValueError(f"factor tables must both be (M, n), got {z0.shape} and {z1.shape}")
    d = np.asarray(signs, np.float64) * (z1 - z0)  # > 0: second better on that factor
    decided = np.abs(d) > np.asarray(margins, np.float64)
    valid = decided.any(axis=1)
    level = np.where(valid, decided.argmax(axis=1), -1)
    rows = np.arange(len(d))
    winner = np.where(valid, (d[rows, np.maximum(level, 0)] > 0).astype(np.int64), -1)
    return winner, level


class HeronTeacher:
    """Labels pairs by comparing reward factors in the user's order of importance.

    Args:
        factors: factor names, most important first (required: the importance order is the
            whole of what the user tells HERON).
        directions: ``"higher"`` or ``"lower"`` per factor (is more better?); ``None``: all
            ``"higher"`` (pbrl's factors are signed so that higher is better).
        margins: one margin for all factors or one per factor (see ``margin_mode``).
        margin_mode: ``"std"`` (``delta_k = margin_k * std`` of factor ``k``'s segment sums in
            the batch, the paper's choice) or ``"absolute"``.
        undecided: ``"skip"`` (the paper discards such pairs) or ``"equal"``.
        seed: unused by the (deterministic) tree; accepted for a uniform teacher interface.
        teacher_id: recorded in every feedback.

    After each :meth:`label` call, :attr:`last_levels` holds the deciding level per query,
    :meth:`levels_of` looks them up by query id (what the reward learner's level scale needs)
    and :meth:`level_fractions` gives the fraction of pairs decided at each level (HERON's
    diagnostic).
    """

    def __init__(
        self,
        factors: Sequence[str] | None = None,
        directions: Sequence[str] | None = None,
        margins: float | Sequence[float] = 0.0,
        margin_mode: MarginMode = "std",
        undecided: Literal["skip", "equal"] = "skip",
        seed: int = 0,
        teacher_id: str = "heron",
    ) -> None:
        if not factors:
            raise ValueError(
                "HeronTeacher needs factors: the reward-factor names in order of importance, "
                "e.g. teacher.factors=[reward_forward,reward_ctrl]"
            )
        self.factors = tuple(str(f) for f in factors)
        if len(set(self.factors)) != len(self.factors):
            raise ValueError(f"factors must be distinct, got {list(self.factors)}")
        if directions is not None:
            bad = [d for d in directions if d not in ("higher", "lower")]
            if bad:
                raise ValueError(f"directions must be 'higher' or 'lower', got {bad}")
            if len(directions) != len(self.factors):
                raise ValueError(
                    f"{len(directions)} directions for {len(self.factors)} factors; give one each"
                )
        self.directions = None if directions is None else tuple(directions)
        m = np.atleast_1d(np.asarray(margins, np.float64))
        if (m < 0).any() or not np.isfinite(m).all():
            raise ValueError(f"margins must be finite and >= 0, got {m.tolist()}")
        self.margins = m
        if margin_mode not in ("absolute", "std"):
            raise ValueError(f"unknown margin_mode {margin_mode!r}; valid: absolute, std")
        if undecided not in ("skip", "equal"):
            raise ValueError(f"unknown undecided {undecided!r}; valid: skip, equal")
        self.margin_mode: MarginMode = margin_mode
        self.undecided = undecided
        self.teacher_id = str(teacher_id)
        self.last_levels = np.zeros(0, np.int64)
        self._last_level_of: dict[str, int] = {}  # query id -> level, last label() call
        self.counts = np.zeros(0, np.int64)  # pairs decided per level, running
        self.n_undecided = 0

    def __repr__(self) -> str:
        return (
            f"HeronTeacher(factors={self.factors}, directions={self.directions}, "
            f"margins={self.margins.tolist()}, margin_mode={self.margin_mode!r}, "
            f"undecided={self.undecided!r})"
        )

    def _table(self, segs: SegmentBatch, names: Sequence[str]) -> np.ndarray:
        missing = [k for k in names if k not in segs.reward_factors]
        if missing:
            have = sorted(segs.reward_factors) or "none (withheld, or the env exposes none)"
            raise KeyError(
                f"HERON factors {missing} are not among the segments' reward factors: {have}; "
                "set teacher.factors to names the env exposes"
            )
        return np.stack(
            [np.asarray(segs.reward_factors[k], np.float64).sum(axis=1) for k in names], axis=1
        )

    def decide(self, queries: QueryBatch) -> tuple[np.ndarray, np.ndarray]:
        """``winner (M,)`` and ``level (M,)`` of pair queries (:func:`hierarchical_decisions`)."""
        if queries.kind != "pair" or queries.k != 2:
            raise ValueError(f"HeronTeacher answers pair queries only, got kind={queries.kind!r}")
        first, second = queries.member(0), queries.member(1)
        names = self.factors
        n = len(names)
        dirs = self.directions or ("higher",) * n
        if len(dirs) != n:
            raise ValueError(f"{len(dirs)} directions for {n} factors")
        signs = np.where(np.asarray(dirs) == "higher", 1.0, -1.0)
        if self.margins.size not in (1, n):
            raise ValueError(f"{self.margins.size} margins for {n} factors; give 1 or {n}")
        margins = np.broadcast_to(self.margins, (n,)).copy()
        z0, z1 = self._table(first, names), self._table(second, names)
        if self.margin_mode == "std" and len(z0):
            margins = margins * np.concatenate([z0, z1]).std(axis=0)
        return hierarchical_decisions(z0, z1, signs, margins)

    def label(self, queries: QueryBatch) -> list[Feedback]:
        """Answer ``M`` pair queries from their reward factors (the true reward is not read)."""
        winner, level = self.decide(queries)
        n_levels = int(level.max(initial=-1)) + 1
        if len(self.counts) < n_levels:
            self.counts = np.pad(self.counts, (0, n_levels - len(self.counts)))
        np.add.at(self.counts, level[level >= 0], 1)
        self.n_undecided += int((level < 0).sum())
        self.last_levels = level
        self._last_level_of = dict(zip(queries.ids, level.tolist(), strict=True))
        tie = Label.SKIP if self.undecided == "skip" else Label.EQUAL
        now = time.time()
        return [
            Feedback(
                query_id=qid,
                label=tie if winner[i] < 0 else (Label.SECOND if winner[i] == 1 else Label.FIRST),
                teacher_id=self.teacher_id,
                timestamp=now,
            )
            for i, qid in enumerate(queries.ids)
        ]

    def levels_of(self, query_ids: Sequence[str]) -> np.ndarray:
        """``(Q,)`` int64 ranking level that decided each query of the last :meth:`label` call.

        0 is the most important factor; -1 a pair no level decided (labelled ``EQUAL`` with
        ``undecided="equal"``, or ``SKIP``).

        Raises:
            KeyError: a query id was not labelled by the last call.
        """
        missing = [q for q in query_ids if q not in self._last_level_of]
        if missing:
            raise KeyError(
                f"{len(missing)} query id(s) were not labelled by the last label() call, e.g. "
                f"{missing[:3]}; ask for the levels of a round right after labelling it"
            )
        return np.array([self._last_level_of[q] for q in query_ids], np.int64)

    def level_fractions(self) -> dict[str, float]:
        """Fraction of all pairs labelled so far decided at each level (and undecided)."""
        total = int(self.counts.sum()) + self.n_undecided
        if total == 0:
            return {}
        out = {f"decided/{self.factors[k]}": float(c) / total for k, c in enumerate(self.counts)}
        out["undecided"] = self.n_undecided / total
        return out

    def state_dict(self) -> dict[str, Any]:
        """Running per-level counts."""
        return {"counts": self.counts.tolist(), "n_undecided": self.n_undecided}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.counts = np.asarray(state.get("counts", []), np.int64)
        self.n_undecided = int(state.get("n_undecided", 0))
