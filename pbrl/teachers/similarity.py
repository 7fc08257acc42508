"""QDHF's similarity teacher: "which of these two is more like the reference?".

Ding et al., *Quality Diversity through Human Feedback* (ICML 2024) simulate the
two-alternative forced choice on a triplet (reference ``x_1``, ``x_2``, ``x_3``) from a hidden
ground-truth descriptor ``g`` (arm: the end-effector position): ``x_3`` is the more similar
one iff ``||g(x_1) - g(x_2)||^2 > ||g(x_1) - g(x_3)||^2``.

:class:`SimilarityTeacher` answers ``kind="triplet"`` queries (members anchor, a, b) with
``Label.FIRST`` (a is more similar) or ``Label.SECOND`` (b is), the convention of
:class:`~pbrl.data.Label` and of the human session's triplet page. Noise: finite ``beta``
answers ``P(b) = sigmoid(beta (d_a - d_b))`` on squared distances; ``eps_mistake`` flips.

The descriptor is read from the segments: ``factor_names`` (columns of ``reward_factors`` at
``step``), or any callable ``SegmentBatch -> (N, d)``. :meth:`SimilarityTeacher.judge` is the
same rule on descriptor arrays, for loops that hold solutions rather than segments.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.special import expit

from pbrl.data import Feedback, Label, QueryBatch, SegmentBatch

Descriptor = Callable[[SegmentBatch], np.ndarray]


class SimilarityTeacher:
    """Triplet similarity judgements from a hidden descriptor, optionally noisy.

    Args:
        factor_names: reward-factor columns that make up ``g`` (read at ``step``).
        descriptor: a callable ``SegmentBatch -> (N, d)`` instead of ``factor_names``.
        step: the time index the factors are read at (default: the last).
        beta: rationality on squared-distance differences (``math.inf``: deterministic).
        eps_mistake: probability of a flipped answer.
        seed: seed of the teacher's generator.
        teacher_id: recorded in every feedback.
    """

    def __init__(
        self,
        factor_names: Sequence[str] | None = None,
        descriptor: Descriptor | None = None,
        step: int = -1,
        beta: float = math.inf,
        eps_mistake: float = 0.0,
        seed: int = 0,
        teacher_id: str = "similarity",
    ):
        if (factor_names is None) == (descriptor is None):
            raise ValueError("give exactly one of factor_names=[...] or descriptor=callable")
        if not float(beta) > 0:
            raise ValueError(f"beta must be > 0 (math.inf: deterministic), got {beta}")
        if not 0.0 <= eps_mistake <= 1.0:
            raise ValueError(f"eps_mistake must lie in [0, 1], got {eps_mistake}")
        self.factor_names = None if factor_names is None else tuple(factor_names)
        self.descriptor = descriptor
        self.step = int(step)
        self.beta = float(beta)
        self.eps_mistake = float(eps_mistake)
        self.rng = np.random.default_rng(seed)
        self.teacher_id = str(teacher_id)

    def describe(self, segments: SegmentBatch) -> np.ndarray:
        """``(N, d)`` hidden descriptor ``g`` of each segment."""
        if self.descriptor is not None:
            return np.asarray(self.descriptor(segments), np.float64).reshape(len(segments), -1)
        assert self.factor_names is not None
        missing = [k for k in self.factor_names if k not in segments.reward_factors]
        if missing:
            raise ValueError(
                f"SimilarityTeacher needs reward factors {list(self.factor_names)}; the segments "
                f"lack {missing} (was the batch built with without_reward()?)"
            )
        cols = [np.asarray(segments.reward_factors[k])[:, self.step] for k in self.factor_names]
        return np.stack(cols, axis=1).astype(np.float64)

    def judge(self, g_ref: np.ndarray, g_a: np.ndarray, g_b: np.ndarray) -> np.ndarray:
        """``(M,)`` bool: True where ``b`` is judged more similar to the reference than ``a``.

        Args:
            g_ref: ``(M, d)`` descriptors of the references.
            g_a: ``(M, d)`` descriptors of the first candidates.
            g_b: ``(M, d)`` descriptors of the second candidates.
        """
        d_a = np.square(g_ref - g_a).sum(-1)
        d_b = np.square(g_ref - g_b).sum(-1)
        diff = d_a - d_b
        if math.isinf(self.beta):
            # Official rule: y = +1 (b closer) iff d_a > d_b; an exact tie goes to a.
            b_closer = diff > 0
        else:
            b_closer = self.rng.random(len(diff)) < expit(self.beta * diff)
        if self.eps_mistake > 0:
            b_closer ^= self.rng.random(len(diff)) < self.eps_mistake
        return b_closer

    def label(self, queries: QueryBatch) -> list[Feedback]:
        """Answer ``M`` triplet queries (anchor, a, b): FIRST = a is closer, SECOND = b."""
        if queries.kind != "triplet":
            raise ValueError(
                f"SimilarityTeacher answers triplet queries (anchor, a, b), got {queries.kind!r}"
            )
        g = [self.describe(queries.member(j)) for j in range(3)]
        b_closer = self.judge(*g)
        now = time.time()
        return [
            Feedback(
                query_id=qid,
                label=Label.SECOND if b_closer[i] else Label.FIRST,
                teacher_id=self.teacher_id,
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
