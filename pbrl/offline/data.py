"""A preference dataset file held in tensors, and the batch samplers of CPL and OPPO.

The file is the core's format (``docs/dataset_format.md``). Two layouts are read:

- **pair rows** (``kind == "pair"``): ``obs (Q, 2, H, D_o)``, ``actions``, ``target (Q,)`` =
  P(second preferred), 0.5 for "equal" and any soft label in between. Skips and unanswered
  rows are dropped. Sampled in ``comparison`` mode (CPL's sparse setting).
- **ranking rows** (``kind == "ranking"``): each row ranks ``k`` segments best to worst; any
  two segments of one row can be compared. Sampled in ``rank`` mode (CPL's dense setting:
  segment ``i`` of an epoch-wise permutation against a uniformly drawn ``j`` of its row, label
  0.5 when ``j == i``) or ``score`` mode (a batch of segments of one row, for CPL's
  sort-and-compare-all-pairs loss).

Everything lives in a few tensors on the training device; a batch is an index tensor and a
handful of gathers, never a Python loop over samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from pbrl.store import SCHEMA_VERSION

SAMPLING_MODES: tuple[str, ...] = ("comparison", "rank", "score")

ACTION_EPS = 1e-5
"""Actions are clipped to ``±(1 - ACTION_EPS)`` (CPL's feedback buffer; keeps atanh finite)."""


class DatasetFormatError(ValueError):
    """The dataset file cannot be used as asked; the message says what to change."""


@dataclass
class PreferenceData:
    """A preference dataset in tensors.

    For pair data ``obs`` is ``(Q, 2, H, D_o)``, ``actions`` ``(Q, 2, H, D_a)``, ``target``
    ``(Q,)``, ``start`` ``(Q, 2)`` and ``rank``/``group`` are None. For ranking data ``obs``
    is ``(N, H, D_o)``, ``actions`` ``(N, H, D_a)``, ``rank`` ``(N,)`` position in its row
    (0 = best), ``group`` ``(N,)`` the row, ``start`` ``(N,)`` and ``target`` is None.

    Attributes:
        kind: ``"pair"`` or ``"ranking"``.
        env_name: the environment the segments came from.
        teacher_id: whose labels these are.
    """

    kind: str
    obs: torch.Tensor
    actions: torch.Tensor
    start: torch.Tensor
    target: torch.Tensor | None
    rank: torch.Tensor | None
    group: torch.Tensor | None
    env_name: str
    teacher_id: str

    # --- sizes --------------------------------------------------------------------------
    def __len__(self) -> int:
        """Pairs (pair data) or segments (ranking data)."""
        return int(self.obs.shape[0])

    @property
    def horizon(self) -> int:
        """Segment length ``H``."""
        return int(self.obs.shape[-2])

    @property
    def obs_dim(self) -> int:
        """``D_o``."""
        return int(self.obs.shape[-1])

    @property
    def act_dim(self) -> int:
        """``D_a``."""
        return int(self.actions.shape[-1])

    @property
    def device(self) -> torch.device:
        """Where the tensors live."""
        return self.obs.device

    def all_obs(self) -> torch.Tensor:
        """Every stored observation, ``(M, D_o)`` (for normalisation statistics)."""
        return self.obs.reshape(-1, self.obs_dim)

    # --- views --------------------------------------------------------------------------
    def subset(self, idx: torch.Tensor) -> PreferenceData:
        """The pairs (or segments) at ``idx``; a ranking subset keeps its rank order."""

        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[idx]

        return replace(
            self,
            obs=self.obs[idx],
            actions=self.actions[idx],
            start=self.start[idx],
            target=take(self.target),
            rank=take(self.rank),
            group=take(self.group),
        )

    def split(self, heldout: float, seed: int = 0) -> tuple[PreferenceData, PreferenceData | None]:
        """(train, held-out) with a ``heldout`` fraction of pairs / segments held out."""
        if not 0.0 <= heldout < 1.0:
            raise ValueError(f"heldout must lie in [0, 1), got {heldout}")
        n_out = int(round(heldout * len(self)))
        if n_out == 0:
            return self, None
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(self), generator=g).to(self.device)
        return self.subset(perm[n_out:]), self.subset(perm[:n_out])


def load_preferences(
    path: str | Path, teacher_id: str | None = None, device: str | torch.device = "cpu"
) -> PreferenceData:
    """Read a dataset file's pair or ranking rows of one teacher into tensors.

    Args:
        path: the ``.npz`` written by ``FeedbackStore.export`` or ``pbrl-dataset make``.
        teacher_id: whose labels to use; may be omitted when the file holds one teacher.
        device: where the tensors go.

    Raises:
        DatasetFormatError: wrong schema version, several teachers and none chosen, no usable
            rows, or a file mixing pairs and rankings of that teacher.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetFormatError(
            f"dataset file {path} does not exist; build one with `pbrl-dataset make env=<name> "
            "out=<file>` or export a feedback store"
        )
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    version = int(data.get("schema_version", -1))
    if version != SCHEMA_VERSION:
        raise DatasetFormatError(
            f"{path} has dataset format version {version}; this pbrl reads version "
            f"{SCHEMA_VERSION} (docs/dataset_format.md)"
        )
    answered = data["label"] >= 0
    teachers = sorted(set(data["teacher_id"][answered].tolist()))
    if teacher_id is None:
        if len(teachers) != 1:
            raise DatasetFormatError(
                f"{path} holds labels of {len(teachers)} teachers {teachers}; choose one with "
                "teacher_id=<name>"
            )
        teacher_id = teachers[0]
    elif teacher_id not in teachers:
        raise DatasetFormatError(
            f"{path} has no labels of teacher {teacher_id!r}; it has {teachers}"
        )
    mine = answered & (data["teacher_id"] == teacher_id)
    kinds = sorted(set(data["kind"][mine].tolist()))
    if len(kinds) != 1 or kinds[0] not in ("pair", "ranking"):
        raise DatasetFormatError(
            f"teacher {teacher_id!r} in {path} labelled queries of kinds {kinds}; offline "
            "learners read either pair rows or ranking rows of one teacher"
        )
    kind = kinds[0]
    lim = 1.0 - ACTION_EPS

    def t(a: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)

    env_names = sorted(set(data["env_name"][mine].tolist()))
    if kind == "pair":
        rows = mine & np.isfinite(data["target"])
        if not rows.any():
            raise DatasetFormatError(
                f"teacher {teacher_id!r} in {path} answered no pair with first/second/equal"
            )
        return PreferenceData(
            kind="pair",
            obs=t(data["obs"][rows]),
            actions=t(np.clip(data["actions"][rows], -lim, lim)),
            start=t(data["start"][rows], torch.int64),
            target=t(data["target"][rows]),
            rank=None,
            group=None,
            env_name=env_names[0],
            teacher_id=teacher_id,
        )
    rows = np.flatnonzero(mine)
    ranking = data["ranking"][rows]  # (R, k) best -> worst
    k = ranking.shape[1]
    rank = np.empty_like(ranking)
    np.put_along_axis(rank, ranking, np.arange(k)[None, :].repeat(len(rows), 0), axis=1)
    obs = data["obs"][rows]  # (R, k, H, D_o)
    act = data["actions"][rows]  # (R, k, H, D_a)
    return PreferenceData(
        kind="ranking",
        obs=t(obs.reshape(-1, *obs.shape[2:])),
        actions=t(np.clip(act, -lim, lim).reshape(-1, *act.shape[2:])),
        start=t(data["start"][rows].reshape(-1), torch.int64),
        target=None,
        rank=t(rank.reshape(-1), torch.int64),
        group=t(np.repeat(np.arange(len(rows)), k), torch.int64),
        env_name=env_names[0],
        teacher_id=teacher_id,
    )


@dataclass
class PairBatch:
    """``B`` pairs of segments.

    ``obs1/obs2 (B, H, D_o)``, ``act1/act2 (B, H, D_a)``, ``label (B,)`` = P(second
    preferred), ``start1/start2 (B,)`` time index of each segment's first step.
    """

    obs1: torch.Tensor
    obs2: torch.Tensor
    act1: torch.Tensor
    act2: torch.Tensor
    label: torch.Tensor
    start1: torch.Tensor
    start2: torch.Tensor


@dataclass
class ScoreBatch:
    """``B`` segments of one ranking row.

    ``obs (B, H, D_o)``, ``act (B, H, D_a)``, ``score (B,)`` (higher is better), ``start (B,)``.
    """

    obs: torch.Tensor
    act: torch.Tensor
    score: torch.Tensor
    start: torch.Tensor


class BatchSampler:
    """Draws CPL/OPPO batches from a :class:`PreferenceData` (see the module docstring).

    The first index of every batch walks through epoch-wise random permutations (as CPL's
    feedback buffer does); its state is a torch generator, saved with :meth:`state_dict`.

    Sub-segments (``segment_length``, CPL's ``FeedbackBuffer(segment_length=...)``): when set
    to ``L < H``, every batch keeps only ``L`` consecutive steps of its segments, starting at
    one offset drawn uniformly from ``0..H-L`` for all first segments and another for all
    second segments (score batches: one offset). The reference draws the offset from
    ``0..H-L-1`` (``np.random.randint``'s exclusive end, so the last window is never used and
    ``L = H`` fails) and, in score mode, slices observations and actions with different
    offsets; here the range is inclusive and a segment's steps stay aligned. ``None`` (the
    paper's configs) and ``L = H`` use whole segments and leave the generator's stream unchanged.

    Args:
        data: the dataset.
        mode: ``comparison`` (pair data), ``rank`` or ``score`` (ranking data).
        seed: seed of the sampler's generator.
        segment_length: sub-segment length ``L`` (``1 <= L <= H``) or None for whole segments.
    """

    def __init__(
        self, data: PreferenceData, mode: str, seed: int = 0, segment_length: int | None = None
    ) -> None:
        if mode not in SAMPLING_MODES:
            raise ValueError(f"unknown sampling mode {mode!r}; valid: {list(SAMPLING_MODES)}")
        if segment_length is not None and not 1 <= int(segment_length) <= data.horizon:
            raise DatasetFormatError(
                f"segment_length={segment_length} must lie in [1, {data.horizon}] (the dataset's "
                "segment length H); use null for whole segments"
            )
        self.segment_length = None if segment_length is None else int(segment_length)
        need = "pair" if mode == "comparison" else "ranking"
        if data.kind != need:
            hint = (
                "build the dataset with `pbrl-dataset make mode=pairs`"
                if need == "pair"
                else "build the dataset with `pbrl-dataset make mode=rank` (per-segment scores)"
            )
            raise DatasetFormatError(
                f"sampling mode {mode!r} needs {need} rows but the dataset holds {data.kind} "
                f"rows; use mode={'comparison' if data.kind == 'pair' else 'rank'} or {hint}"
            )
        self.data = data
        self.mode = mode
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        self._perm = torch.empty(0, dtype=torch.int64)
        self._pos = 0
        if data.kind == "ranking":
            assert data.group is not None
            counts = torch.bincount(data.group.cpu())
            self._group_size = counts.to(data.device)
            self._group_first = (torch.cumsum(counts, 0) - counts).to(data.device)
            # Row g's segments are _by_row[first_g : first_g + size_g]. A loaded file stores
            # them row by row (_by_row is the identity); a split subset is shuffled.
            self._by_row = torch.argsort(data.group, stable=True)

    def _next(self, n: int) -> torch.Tensor:
        out = []
        while n > 0:
            if self._pos >= len(self._perm):
                self._perm = torch.randperm(len(self.data), generator=self.gen)
                self._pos = 0
            take = self._perm[self._pos : self._pos + n]
            self._pos += len(take)
            n -= len(take)
            out.append(take)
        return torch.cat(out).to(self.data.device)

    def _offset(self) -> int:
        """A sub-segment's first step (0 when whole segments are used)."""
        if self.segment_length is None or self.segment_length == self.data.horizon:
            return 0
        span = self.data.horizon - self.segment_length + 1
        return int(torch.randint(0, span, (1,), generator=self.gen).item())

    def _cut(self, t: torch.Tensor, off: int) -> torch.Tensor:
        """Steps ``off .. off + L`` of ``t (N, H, ...)`` (a view; whole when L is None)."""
        if self.segment_length is None:
            return t
        return t[:, off : off + self.segment_length]

    def sample(self, batch_size: int) -> PairBatch | ScoreBatch:
        """One batch of ``batch_size`` pairs (comparison / rank) or segments (score)."""
        d = self.data
        if self.mode == "comparison":
            i = self._next(batch_size)
            assert d.target is not None
            o1, o2 = self._offset(), self._offset()
            obs1, obs2 = self._cut(d.obs[:, 0], o1), self._cut(d.obs[:, 1], o2)
            act1, act2 = self._cut(d.actions[:, 0], o1), self._cut(d.actions[:, 1], o2)
            return PairBatch(
                obs1[i], obs2[i], act1[i], act2[i], d.target[i], d.start[i, 0] + o1,
                d.start[i, 1] + o2,
            )  # fmt: skip
        assert d.rank is not None and d.group is not None
        if self.mode == "rank":
            i = self._next(batch_size)
            g = d.group[i]
            u = torch.rand(batch_size, generator=self.gen).to(d.device)
            j = self._by_row[
                self._group_first[g]
                + (u * self._group_size[g]).long().clamp_max(self._group_size[g] - 1)
            ]
            # Lower rank = better; the second segment is preferred when it ranks higher.
            label = (d.rank[j] < d.rank[i]).float() + 0.5 * (d.rank[j] == d.rank[i]).float()
            o1, o2 = self._offset(), self._offset()
            return PairBatch(
                self._cut(d.obs, o1)[i], self._cut(d.obs, o2)[j], self._cut(d.actions, o1)[i],
                self._cut(d.actions, o2)[j], label, d.start[i] + o1, d.start[j] + o2,
            )  # fmt: skip
        # score: a batch of segments from one row (comparable with each other).
        g = int(d.group[self._next(1)].item())
        first, size = int(self._group_first[g]), int(self._group_size[g])
        pick = torch.randperm(size, generator=self.gen)[: min(batch_size, size)].to(d.device)
        idx = self._by_row[first + pick]
        o = self._offset()
        return ScoreBatch(
            self._cut(d.obs, o)[idx], self._cut(d.actions, o)[idx], -d.rank[idx].float(),
            d.start[idx] + o,
        )  # fmt: skip

    def state_dict(self) -> dict[str, object]:
        """Generator state and position in the current permutation."""
        return {"gen": self.gen.get_state(), "perm": self._perm.clone(), "pos": self._pos}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.gen.set_state(state["gen"])  # type: ignore[arg-type]
        self._perm = state["perm"]  # type: ignore[assignment]
        self._pos = int(state["pos"])  # type: ignore[arg-type]


def pair_windows(batch: PairBatch, window: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Cut one random ``window``-step sub-window from every segment of a pair batch.

    Returns ``obs1, act1, t1, obs2, act2, t2`` with ``obs (B, K, D_o)``, ``act (B, K, D_a)``
    and ``t (B, K)`` the episode time index of each step.
    """
    h = batch.obs1.shape[1]
    if window > h:
        raise DatasetFormatError(
            f"window K={window} is longer than the dataset's segments (H={h}); lower the "
            "window or build the dataset with segment_size >= K"
        )
    b = batch.obs1.shape[0]
    dev = batch.obs1.device
    out: list[torch.Tensor] = []
    for obs, act, start in (
        (batch.obs1, batch.act1, batch.start1),
        (batch.obs2, batch.act2, batch.start2),
    ):
        off = torch.randint(0, h - window + 1, (b,), generator=gen).to(dev)
        idx = off[:, None] + torch.arange(window, device=dev)  # (B, K)
        out += [
            torch.gather(obs, 1, idx[..., None].expand(-1, -1, obs.shape[-1])),
            torch.gather(act, 1, idx[..., None].expand(-1, -1, act.shape[-1])),
            start[:, None] + idx,
        ]
    return tuple(out)


def stack_pairs(batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """``obs (2B, H, D_o)`` and ``act (2B, H, D_a)``: first segments, then second ones."""
    return torch.cat([batch.obs1, batch.obs2]), torch.cat([batch.act1, batch.act2])


def teacher_ids(path: str | Path) -> Sequence[str]:
    """Teachers with at least one answered row in a dataset file."""
    with np.load(path, allow_pickle=False) as z:
        return sorted(set(z["teacher_id"][z["label"] >= 0].tolist()))
