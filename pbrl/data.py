"""The plain data types that cross layer boundaries: segments, queries and feedback.

Shapes use ``N`` for the number of segments, ``H`` for the segment length (steps),
``D_o``/``D_a`` for observation/action sizes and ``D_s`` for the simulator-state size.

Only a synthetic teacher and the evaluator may read :attr:`SegmentBatch.true_reward`.
Reward learners and agents receive a :meth:`SegmentBatch.without_reward` copy.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Literal

import numpy as np

QueryKind = Literal["pair", "triplet", "ranking"]
QUERY_SIZES: dict[str, int | None] = {"pair": 2, "triplet": 3, "ranking": None}


class ShapeError(ValueError):
    """A data type was built from arrays whose shapes do not agree."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ShapeError(msg)


class _HiddenReward(np.ndarray):
    """Marker subclass: reading a hidden reward through it raises."""


@dataclass(frozen=True, eq=False)
class SegmentBatch:
    """``N`` trajectory segments of ``H`` steps each.

    Attributes:
        obs: ``(N, H, D_o)`` float32 observations s_t.
        actions: ``(N, H, D_a)`` float32 actions a_t.
        true_reward: ``(N, H)`` float32 hidden environment reward r(s_t, a_t), or ``None``
            when the reward has been withheld (see :meth:`without_reward`).
        reward_factors: name -> ``(N, H)`` float32 named reward terms from the env's info.
        sim_state: ``(N, H, D_s)`` float64 simulator state *before* each step (enough to
            re-render s_t: for MuJoCo, ``mj_getState(mjSTATE_FULLPHYSICS)``), or ``None``.
        env_id: ``(N,)`` int64 index of the vector-env copy each segment came from.
        start: ``(N,)`` int64 time index of the first step within its episode.
        env_name: registry name of the environment (for re-rendering and bookkeeping).
    """

    obs: np.ndarray
    actions: np.ndarray
    true_reward: np.ndarray | None
    reward_factors: Mapping[str, np.ndarray] = field(default_factory=dict)
    sim_state: np.ndarray | None = None
    env_id: np.ndarray | None = None
    start: np.ndarray | None = None
    env_name: str = ""

    def __post_init__(self) -> None:
        obs, act = self.obs, self.actions
        _check(obs.ndim == 3, f"obs must be (N, H, D_o), got shape {obs.shape}")
        _check(act.ndim == 3, f"actions must be (N, H, D_a), got shape {act.shape}")
        n, h = obs.shape[:2]
        _check(act.shape[:2] == (n, h), f"actions {act.shape} do not match obs {obs.shape}")
        if self.true_reward is not None:
            _check(
                self.true_reward.shape == (n, h),
                f"true_reward must be ({n}, {h}), got {self.true_reward.shape}",
            )
        for name, v in self.reward_factors.items():
            _check(
                np.shape(v) == (n, h),
                f"reward factor {name!r} must be ({n}, {h}), got {np.shape(v)}",
            )
        if self.sim_state is not None:
            _check(
                self.sim_state.ndim == 3 and self.sim_state.shape[:2] == (n, h),
                f"sim_state must be ({n}, {h}, D_s), got {self.sim_state.shape}",
            )
        env_id = np.zeros(n, np.int64) if self.env_id is None else np.asarray(self.env_id)
        start = np.zeros(n, np.int64) if self.start is None else np.asarray(self.start)
        _check(env_id.shape == (n,), f"env_id must be ({n},), got {env_id.shape}")
        _check(start.shape == (n,), f"start must be ({n},), got {start.shape}")
        object.__setattr__(self, "env_id", env_id.astype(np.int64, copy=False))
        object.__setattr__(self, "start", start.astype(np.int64, copy=False))
        object.__setattr__(self, "reward_factors", MappingProxyType(dict(self.reward_factors)))

    # --- sizes -----------------------------------------------------------------------
    def __len__(self) -> int:
        return self.obs.shape[0]

    @property
    def horizon(self) -> int:
        """Segment length ``H``."""
        return self.obs.shape[1]

    @property
    def obs_dim(self) -> int:
        """Observation size ``D_o``."""
        return self.obs.shape[2]

    @property
    def act_dim(self) -> int:
        """Action size ``D_a``."""
        return self.actions.shape[2]

    # --- views -----------------------------------------------------------------------
    def __getitem__(self, idx: int | slice | np.ndarray | Sequence[int]) -> SegmentBatch:
        """Select segments along ``N``; an int keeps the batch dimension (size 1)."""
        if isinstance(idx, (int, np.integer)):
            idx = slice(int(idx), int(idx) + 1) if idx != -1 else slice(-1, None)
        elif not isinstance(idx, slice):
            idx = np.asarray(idx)

        def take(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[idx]

        return SegmentBatch(
            obs=self.obs[idx],
            actions=self.actions[idx],
            true_reward=take(self.true_reward),
            reward_factors={k: v[idx] for k, v in self.reward_factors.items()},
            sim_state=take(self.sim_state),
            env_id=self.env_id[idx],
            start=self.start[idx],
            env_name=self.env_name,
        )

    def without_reward(self) -> SegmentBatch:
        """A copy with the true reward and reward factors withheld (for learners)."""
        return replace(self, true_reward=None, reward_factors={})

    @property
    def returns(self) -> np.ndarray:
        """``(N,)`` undiscounted true return of each segment (teachers/evaluator only)."""
        if self.true_reward is None:
            raise PermissionError(
                "this SegmentBatch has its true reward withheld; only synthetic teachers and "
                "the evaluator may read it"
            )
        return self.true_reward.sum(axis=1)

    @staticmethod
    def concat(batches: Sequence[SegmentBatch]) -> SegmentBatch:
        """Concatenate batches along ``N`` (they must share ``H`` and fields)."""
        if not batches:
            raise ValueError("concat needs at least one SegmentBatch")
        b0 = batches[0]

        def cat(get):  # type: ignore[no-untyped-def]
            vals = [get(b) for b in batches]
            if any(v is None for v in vals):
                return None
            return np.concatenate(vals, axis=0)

        names = set(b0.reward_factors)
        for b in batches:
            if set(b.reward_factors) != names:
                raise ValueError("cannot concat segments with different reward factors")
        return SegmentBatch(
            obs=cat(lambda b: b.obs),
            actions=cat(lambda b: b.actions),
            true_reward=cat(lambda b: b.true_reward),
            reward_factors={
                k: np.concatenate([b.reward_factors[k] for b in batches]) for k in names
            },
            sim_state=cat(lambda b: b.sim_state),
            env_id=cat(lambda b: b.env_id),
            start=cat(lambda b: b.start),
            env_name=b0.env_name,
        )

    def arrays(self) -> dict[str, np.ndarray]:
        """Flat name -> array dict (for saving); factors are prefixed ``factor/``."""
        out: dict[str, np.ndarray] = {
            "obs": self.obs,
            "actions": self.actions,
            "env_id": self.env_id,
            "start": self.start,
        }
        if self.true_reward is not None:
            out["true_reward"] = self.true_reward
        if self.sim_state is not None:
            out["sim_state"] = self.sim_state
        for k, v in self.reward_factors.items():
            out[f"factor/{k}"] = v
        return out

    @staticmethod
    def from_arrays(arrays: Mapping[str, np.ndarray], env_name: str = "") -> SegmentBatch:
        """Inverse of :meth:`arrays`."""
        return SegmentBatch(
            obs=np.asarray(arrays["obs"]),
            actions=np.asarray(arrays["actions"]),
            true_reward=np.asarray(arrays["true_reward"]) if "true_reward" in arrays else None,
            reward_factors={
                k.split("/", 1)[1]: np.asarray(v)
                for k, v in arrays.items()
                if k.startswith("factor/")
            },
            sim_state=np.asarray(arrays["sim_state"]) if "sim_state" in arrays else None,
            env_id=np.asarray(arrays["env_id"]) if "env_id" in arrays else None,
            start=np.asarray(arrays["start"]) if "start" in arrays else None,
            env_name=env_name,
        )


# A single segment is a batch of one; the alias keeps call sites readable.
Segment = SegmentBatch


def new_id() -> str:
    """A fresh random query/feedback id (uuid4 hex)."""
    return uuid.uuid4().hex


@dataclass(frozen=True, eq=False)
class QueryBatch:
    """``M`` queries of ``k`` segments each, stored member-major.

    ``segments`` holds ``M * k`` segments; query ``i``'s member ``j`` is segment
    ``j * M + i``, so :meth:`member` is a contiguous slice. For ``kind="pair"`` (k=2) the
    members are (first, second); for ``"triplet"`` (k=3) they are (anchor, a, b); for
    ``"ranking"`` any k >= 2.

    Attributes:
        segments: ``M * k`` segments.
        k: segments per query.
        kind: "pair", "triplet" or "ranking".
        ids: ``M`` query ids.
        selector: name of the rule that chose them (``"uniform"``, ``"disagreement"``, ...).
        scores: ``(M,)`` the selector's score for each query (NaN where it has none).
    """

    segments: SegmentBatch
    k: int = 2
    kind: QueryKind = "pair"
    ids: tuple[str, ...] = ()
    selector: str = "uniform"
    scores: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.kind not in QUERY_SIZES:
            raise ValueError(f"unknown query kind {self.kind!r}; valid: {sorted(QUERY_SIZES)}")
        want = QUERY_SIZES[self.kind]
        _check(
            want is None or want == self.k,
            f"a {self.kind} query has {want} segments, got k={self.k}",
        )
        _check(self.k >= 2, f"a query needs at least 2 segments, got k={self.k}")
        _check(
            len(self.segments) % self.k == 0,
            f"{len(self.segments)} segments cannot form queries of k={self.k}",
        )
        m = len(self.segments) // self.k
        ids = self.ids or tuple(new_id() for _ in range(m))
        _check(len(ids) == m, f"need {m} ids, got {len(ids)}")
        object.__setattr__(self, "ids", tuple(ids))
        scores = np.full(m, np.nan) if self.scores is None else np.asarray(self.scores, float)
        _check(scores.shape == (m,), f"scores must be ({m},), got {scores.shape}")
        object.__setattr__(self, "scores", scores)

    def __len__(self) -> int:
        return len(self.segments) // self.k

    def member(self, j: int) -> SegmentBatch:
        """Member ``j`` of every query: ``M`` segments."""
        m = len(self)
        return self.segments[slice(j * m, (j + 1) * m)]

    @staticmethod
    def from_members(
        members: Sequence[SegmentBatch],
        kind: QueryKind = "pair",
        selector: str = "uniform",
        scores: np.ndarray | None = None,
        ids: Sequence[str] = (),
    ) -> QueryBatch:
        """Build from ``k`` batches of ``M`` segments (member 0 of all queries first)."""
        m = len(members[0])
        for b in members:
            _check(len(b) == m, "all query members must hold the same number of segments")
        return QueryBatch(
            segments=SegmentBatch.concat(members),
            k=len(members),
            kind=kind,
            ids=tuple(ids),
            selector=selector,
            scores=scores,
        )

    def subset(self, idx: np.ndarray | Sequence[int]) -> QueryBatch:
        """The queries at positions ``idx``."""
        idx = np.asarray(idx, dtype=np.int64)
        members = [self.member(j)[idx] for j in range(self.k)]
        return QueryBatch.from_members(
            members,
            kind=self.kind,
            selector=self.selector,
            scores=self.scores[idx],
            ids=[self.ids[i] for i in idx],
        )


# A single query is a batch of one.
Query = QueryBatch


class Label(enum.IntEnum):
    """A teacher's answer to a pair or triplet query.

    For a pair, FIRST/SECOND name the preferred segment; for a triplet (anchor, a, b) they
    name the one more similar to the anchor.
    """

    FIRST = 0
    SECOND = 1
    EQUAL = 2
    SKIP = 3


@dataclass(frozen=True)
class Feedback:
    """One teacher answer to one query.

    Attributes:
        query_id: id of the answered query.
        label: the discrete answer (for rankings: FIRST, with ``ranking`` set).
        teacher_id: who answered (``"oracle"``, ``"human:alice"``, ...).
        soft: optional probability that the *second* segment is preferred (soft label);
            overrides the hard target when set.
        ranking: for ranking queries, segment indices from best to worst.
        timestamp: wall-clock time (seconds since the epoch) the answer was given.
        response_time: seconds the teacher took (0 for synthetic teachers).
    """

    query_id: str
    label: Label
    teacher_id: str
    soft: float | None = None
    ranking: tuple[int, ...] | None = None
    timestamp: float = 0.0
    response_time: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "label", Label(self.label))
        if self.soft is not None and not (0.0 <= self.soft <= 1.0):
            raise ValueError(f"soft label must lie in [0, 1], got {self.soft}")
        if self.ranking is not None:
            r = tuple(int(i) for i in self.ranking)
            if sorted(r) != list(range(len(r))):
                raise ValueError(f"ranking must be a permutation of 0..k-1, got {r}")
            object.__setattr__(self, "ranking", r)
        if self.response_time < 0:
            raise ValueError(f"response_time must be >= 0, got {self.response_time}")

    @property
    def target(self) -> float:
        """Probability that the second segment is preferred (NaN for a skip).

        FIRST -> 0, SECOND -> 1, EQUAL -> 0.5, or the soft label when given.
        """
        if self.label == Label.SKIP:
            return float("nan")
        if self.soft is not None:
            return float(self.soft)
        return {Label.FIRST: 0.0, Label.SECOND: 1.0, Label.EQUAL: 0.5}[self.label]
