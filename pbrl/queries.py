"""Query selection: choose ``m`` pairs to ask about from a pool of candidate pairs.

The six rules of B-Pref (``reward_model.py``, ``feed_type`` 0-5), by name:

- ``uniform``: ``m`` candidates at random (without replacement).
- ``disagreement``: top ``m`` by the std over ensemble members of ``P_e[second > first]``.
- ``entropy``: top ``m`` by the *mean member entropy* ``mean_e H(P_e)`` with ``H`` the
  binary entropy in nats. B-Pref averages the members' entropies; it is not the entropy of
  the mean prediction (which would add the disagreement term).
- ``kcenter``: greedy k-center coreset on the concatenated, flattened observations of both
  segments (actions are not used): repeatedly take the candidate farthest (L2) from the
  already labelled queries and those chosen so far.
- ``kcenter_disagreement`` / ``kcenter_entropy``: keep the top half of the pool by the score,
  then k-center down to ``m``.

Every selector returns ``candidates.subset(idx)`` with ``selector`` set to its name and
``scores`` set (NaN where the rule has no score). A model only needs ``member_probs(first,
second) -> (E, M)``; it is called once for the whole pool, on segments with the true reward
withheld.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from scipy.special import entr

from pbrl.data import QueryBatch, SegmentBatch

__all__ = [
    "KCenterSelector",
    "PreferenceModel",
    "ScoreSelector",
    "Selector",
    "UniformSelector",
    "UnknownSelectorError",
    "disagreement_scores",
    "entropy_scores",
    "kcenter_greedy",
    "make_selector",
    "names",
    "register_selector",
]


@runtime_checkable
class PreferenceModel(Protocol):
    """What score-based selectors need from a reward model."""

    def member_probs(self, first: SegmentBatch, second: SegmentBatch) -> np.ndarray:
        """``(E, M)`` per-member probabilities ``P_e[second > first]`` for ``M`` pairs."""
        ...


# --- scores -------------------------------------------------------------------------------
def disagreement_scores(probs: np.ndarray) -> np.ndarray:
    """``(M,)`` std over members (ddof 0, as ``np.std`` in B-Pref) of ``probs`` ``(E, M)``."""
    return np.asarray(probs, dtype=np.float64).std(axis=0)


def entropy_scores(probs: np.ndarray) -> np.ndarray:
    """``(M,)`` mean member entropy: ``mean_e [-p log p - (1-p) log(1-p)]`` in nats.

    ``probs`` is ``(E, M)``; ``0 log 0 = 0``, so confident members score 0, not NaN.
    """
    p = np.asarray(probs, dtype=np.float64)
    return (entr(p) + entr(1.0 - p)).mean(axis=0)


def _member_probs(model: PreferenceModel | None, candidates: QueryBatch, rule: str) -> np.ndarray:
    if model is None:
        raise ValueError(
            f"query rule {rule!r} scores pairs with a reward model, but model=None (no reward "
            f"model trained yet?); use 'uniform' or 'kcenter' until a model exists"
        )
    first = candidates.member(0).without_reward()
    second = candidates.member(1).without_reward()
    probs = np.asarray(model.member_probs(first, second), dtype=np.float64)
    n = len(candidates)
    if probs.ndim != 2 or probs.shape[1] != n:
        raise ValueError(
            f"{type(model).__name__}.member_probs must return (E, {n}) probabilities for {n} "
            f"pairs, got shape {probs.shape}"
        )
    if not np.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1:
        raise ValueError(
            f"{type(model).__name__}.member_probs returned values outside [0, 1] or non-finite"
        )
    return probs


SCORES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "disagreement": disagreement_scores,
    "entropy": entropy_scores,
}


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores, best first; ties keep pool order (stable)."""
    return np.argsort(-scores, kind="stable")[:k]


# --- k-center -----------------------------------------------------------------------------
def _features(queries: QueryBatch) -> torch.Tensor:
    """``(M, 2 H D_o)`` float32: flattened observations of both segments, side by side."""
    m = len(queries)
    obs = [queries.member(j).obs.reshape(m, -1) for j in range(queries.k)]
    return torch.from_numpy(np.concatenate(obs, axis=1).astype(np.float32, copy=False))


def kcenter_greedy(
    x: torch.Tensor,
    centers: torch.Tensor | None,
    m: int,
    rng: np.random.Generator,
    chunk: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-center: pick ``m`` rows of ``x`` that cover it given existing ``centers``.

    Each step takes the row with the largest distance to its nearest center (the existing
    ones plus the rows taken so far). Cost ``O(N (C + m) D)`` in batched ``torch.cdist``.

    Args:
        x: ``(N, D)`` candidate features.
        centers: ``(C, D)`` features of already labelled queries, or ``None``/empty; then the
            first pick is uniform at random (there is nothing to be far from).
        m: how many to pick (``<= N``).
        rng: used only for that random first pick.
        chunk: rows of ``centers`` per ``cdist`` call (bounds memory at ``N * chunk``).

    Returns:
        ``(m,)`` picked row indices in pick order, and ``(m,)`` each pick's distance to its
        nearest center at the time it was picked (``inf`` for a random first pick).
    """
    n = x.shape[0]
    min_d = torch.full((n,), float("inf"), dtype=x.dtype)
    if centers is not None and len(centers):
        for s in range(0, centers.shape[0], chunk):
            d = torch.cdist(x, centers[s : s + chunk]).amin(dim=1)
            min_d = torch.minimum(min_d, d)
    picked = np.empty(m, np.int64)
    radius = np.empty(m, np.float64)
    taken = torch.zeros(n, dtype=torch.bool)
    for i in range(m):
        if i == 0 and torch.isinf(min_d).all():
            j = int(rng.integers(n))
        else:
            # -1 keeps taken rows out even when every remaining distance is 0 (duplicates).
            j = int(torch.where(taken, -1.0, min_d).argmax())
        picked[i], radius[i] = j, float(min_d[j])
        taken[j] = True
        # A plain difference norm: cdist against a single row is ~3x slower on CPU.
        min_d = torch.minimum(min_d, torch.linalg.vector_norm(x - x[j], dim=1))
    return picked, radius


# --- selectors ----------------------------------------------------------------------------
class Selector(abc.ABC):
    """Base class: validates arguments and stamps the result with :attr:`name` and scores."""

    name: str = ""

    def select(
        self,
        candidates: QueryBatch,
        m: int,
        *,
        model: PreferenceModel | None = None,
        labelled: QueryBatch | None = None,
        rng: np.random.Generator,
    ) -> QueryBatch:
        """Choose ``m`` of the ``N`` candidate pairs.

        Args:
            candidates: ``N`` pair queries to choose from.
            m: number to choose, ``1 <= m <= N``.
            model: reward model (score-based rules only).
            labelled: queries labelled so far (k-center rules only); ``None`` if none.
            rng: randomness (uniform picks, k-center's first pick without ``labelled``).

        Returns:
            ``m`` queries (``candidates.subset``) with ``selector`` and ``scores`` set.
        """
        if candidates.kind != "pair":
            raise ValueError(f"query selection handles pair queries, got kind={candidates.kind!r}")
        n = len(candidates)
        if not 1 <= m <= n:
            raise ValueError(
                f"cannot select m={m} queries from a pool of {n}; draw a pool of at least m "
                f"candidates (large_batch >= 1)"
            )
        idx, scores = self._pick(candidates, int(m), model=model, labelled=labelled, rng=rng)
        out = candidates.subset(idx)
        return dataclasses.replace(out, selector=self.name, scores=scores)

    @abc.abstractmethod
    def _pick(
        self,
        candidates: QueryBatch,
        m: int,
        *,
        model: PreferenceModel | None,
        labelled: QueryBatch | None,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(m,)`` chosen pool indices and their ``(m,)`` scores."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class UniformSelector(Selector):
    """``m`` candidates uniformly at random, without replacement; scores are NaN."""

    name = "uniform"

    def _pick(
        self,
        candidates: QueryBatch,
        m: int,
        *,
        model: PreferenceModel | None,
        labelled: QueryBatch | None,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        idx = rng.choice(len(candidates), size=m, replace=False)
        return idx, np.full(m, np.nan)


class ScoreSelector(Selector):
    """Top ``m`` candidates by an ensemble uncertainty score; scores are that score.

    Args:
        score: ``"disagreement"`` or ``"entropy"`` (see the module docstring).
    """

    def __init__(self, score: str) -> None:
        if score not in SCORES:
            raise ValueError(f"unknown score {score!r}; valid: {sorted(SCORES)}")
        self.score = score
        self.name = score

    def _pick(
        self,
        candidates: QueryBatch,
        m: int,
        *,
        model: PreferenceModel | None,
        labelled: QueryBatch | None,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        scores = SCORES[self.score](_member_probs(model, candidates, self.name))
        idx = _top(scores, m)
        return idx, scores[idx]


class KCenterSelector(Selector):
    """Greedy k-center on observations, optionally after an uncertainty pre-filter.

    Args:
        score: ``None`` for plain k-center, or ``"disagreement"``/``"entropy"`` to first keep
            the top ``keep_frac`` of the pool by that score.
        keep_frac: fraction of the pool kept by the pre-filter (B-Pref: 0.5). The kept count
            is ``max(m, int(keep_frac * N))``, so a small pool still yields ``m`` queries
            (B-Pref fails there).

    Scores: the uncertainty score for the combined rules; for plain k-center, the chosen
    pair's distance to its nearest labelled/chosen pair when it was picked (``inf`` for a
    random first pick).
    """

    def __init__(self, score: str | None = None, keep_frac: float = 0.5) -> None:
        if score is not None and score not in SCORES:
            raise ValueError(f"unknown score {score!r}; valid: {sorted(SCORES)} or None")
        if not 0.0 < keep_frac <= 1.0:
            raise ValueError(f"keep_frac must lie in (0, 1], got {keep_frac}")
        self.score = score
        self.keep_frac = float(keep_frac)
        self.name = "kcenter" if score is None else f"kcenter_{score}"

    def _pick(
        self,
        candidates: QueryBatch,
        m: int,
        *,
        model: PreferenceModel | None,
        labelled: QueryBatch | None,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        n = len(candidates)
        if self.score is None:
            pool, scores = np.arange(n), None
        else:
            scores = SCORES[self.score](_member_probs(model, candidates, self.name))
            pool = _top(scores, max(m, int(self.keep_frac * n)))
        x = _features(candidates)[torch.from_numpy(pool)]
        centers = None
        if labelled is not None and len(labelled):
            centers = _features(labelled)
            if centers.shape[1] != x.shape[1]:
                raise ValueError(
                    f"labelled queries have {centers.shape[1]} observation features per pair "
                    f"but candidates have {x.shape[1]}; segment length and obs size must match"
                )
        with torch.no_grad():
            local, radius = kcenter_greedy(x, centers, m, rng)
        idx = pool[local]
        return idx, (radius if scores is None else scores[idx])


# --- registry -----------------------------------------------------------------------------
_REGISTRY: dict[str, Callable[[], Selector]] = {
    "uniform": UniformSelector,
    "disagreement": lambda: ScoreSelector("disagreement"),
    "entropy": lambda: ScoreSelector("entropy"),
    "kcenter": KCenterSelector,
    "kcenter_disagreement": lambda: KCenterSelector("disagreement"),
    "kcenter_entropy": lambda: KCenterSelector("entropy"),
}


class UnknownSelectorError(KeyError):
    """A query-selection rule name that is not registered."""

    def __str__(self) -> str:
        return str(self.args[0])


def names() -> list[str]:
    """Registered selector names."""
    return sorted(_REGISTRY)


def register_selector(name: str, factory: Callable[[], Selector]) -> None:
    """Register a new selection rule under ``name`` (``factory()`` returns a :class:`Selector`)."""
    if name in _REGISTRY:
        raise ValueError(f"selector {name!r} is already registered")
    _REGISTRY[name] = factory


def make_selector(name: str) -> Selector:
    """Build the selector registered as ``name``; unknown names list the valid ones."""
    if name not in _REGISTRY:
        raise UnknownSelectorError(f"unknown query selector {name!r}; valid: {names()}")
    return _REGISTRY[name]()
