"""Replay buffer that also keeps what preference learning needs: episodes, true reward, states.

:class:`PbrlReplayBuffer` is an SB3 :class:`~stable_baselines3.common.buffers.ReplayBuffer`
(so SAC samples from it unchanged) that additionally stores, per step and env column, the
hidden true reward, the named reward factors, the simulator state before the step, the episode
index and the time index within the episode. On top it offers what PEBBLE needs:

- :meth:`PbrlReplayBuffer.sample_segments`: query segments that never cross an episode
  boundary or the ring's write pointer (B-Pref assumes equal-length episodes; gymnasium MuJoCo
  tasks terminate early, so we sample within episode boundaries);
- :meth:`PbrlReplayBuffer.relabel`: rewrite every stored reward with the learned reward (B-Pref
  walks only the indices below the write pointer, which is wrong once the ring wraps);
- an intrinsic-reward mode for the unsupervised phase (k-NN state entropy, see
  :meth:`PbrlReplayBuffer.intrinsic_reward`);
- deferred learned rewards (:meth:`PbrlReplayBuffer.defer_rewards`): new transitions get
  their learned reward in one batched call when a sample first touches them, instead of one
  call per env step.

Array layout follows SB3: ``(buffer_size, n_envs, ...)`` where ``buffer_size`` is the capacity
*per env column* (SB3 divides the requested size by ``n_envs``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize

from pbrl.data import SegmentBatch

RewardMode = Literal["stored", "intrinsic"]
REWARD_MODES: tuple[str, ...] = ("stored", "intrinsic")

# Keys every step info must carry (the pbrl.envs.base.PbrlEnv contract).
_INFO_KEYS = ("true_reward", "reward_factors", "sim_state")


def _rewards_of(
    reward_fn: Callable[[np.ndarray, np.ndarray], np.ndarray], obs: np.ndarray, act: np.ndarray
) -> np.ndarray:
    """``reward_fn(obs, act)`` as a flat ``(B,)`` array; float32 inputs, shape checked."""
    r = np.asarray(reward_fn(obs, act.astype(np.float32)))
    if r.shape not in ((len(obs),), (len(obs), 1)):
        raise ValueError(
            f"reward_fn must return shape ({len(obs)},) for a batch of {len(obs)}, got {r.shape}"
        )
    return r.reshape(-1)


class RunningMeanStd:
    """Running mean and (population) variance of a scalar stream, merged batch by batch.

    Starts from mean 0, variance 1 with a pseudo-count ``epsilon`` (as B-Pref's
    ``TorchRunningMeanStd`` and SB3's ``RunningMeanStd``), and merges batches with Chan et
    al.'s parallel update, so the result equals the moments of the prior pseudo-sample plus all
    values seen. B-Pref's version adds ``batch_count / tot_count`` to the mean instead of
    multiplying it with ``delta`` (a typo); we use the correct update. Kept in float64 numpy so
    checkpoints restore it exactly.
    """

    def __init__(self, epsilon: float = 1e-4):
        self.mean = 0.0
        self.var = 1.0
        self.count = float(epsilon)

    def update(self, x: np.ndarray) -> None:
        """Merge the values ``x`` (any shape, flattened) into the statistics."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if x.size == 0:
            return
        batch_mean, batch_var, n = float(x.mean()), float(x.var()), float(x.size)
        delta = batch_mean - self.mean
        tot = self.count + n
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / tot
        self.mean = self.mean + delta * n / tot
        self.var = m2 / tot
        self.count = tot

    @property
    def std(self) -> float:
        """Running standard deviation."""
        return float(np.sqrt(self.var))


class PbrlReplayBuffer(ReplayBuffer):
    """SB3 replay buffer with episode bookkeeping, hidden true reward and simulator states.

    Extra storage, all ``(buffer_size, n_envs, ...)``:
        true_reward: ``float32`` hidden env reward r(s_t, a_t) (``info["true_reward"]``).
        factors: ``(.., F) float32`` named reward terms in ``factor_names`` order.
        sim_state: ``(.., D_s) float64`` simulator state before the step.
        episode_index: ``int64`` global episode number, ``-1`` where nothing was written.
            Numbers are handed out when an episode starts (env columns in order within one
            step), so a larger number means a later start.
        time_in_episode: ``int64`` index of the step within its episode, ``-1`` where empty.

    Args:
        buffer_size, observation_space, action_space, device, n_envs, optimize_memory_usage,
            handle_timeout_termination: as SB3's ``ReplayBuffer`` (memory optimisation is not
            supported: ``next_obs`` of a step is needed for SAC and ``obs`` for segments).
        state_dim: size ``D_s`` of ``info["sim_state"]``.
        factor_names: names of the entries of ``info["reward_factors"]`` to keep.
        env_name: registry name stored in every :class:`SegmentBatch`.
        knn_k: ``k`` of the k-NN state-entropy reward (PEBBLE uses 5).
        knn_chunk: stored states per distance block in the k-NN search (bounds memory at
            ``batch x knn_chunk`` distances).
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: torch.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
        *,
        state_dim: int,
        factor_names: Sequence[str] = (),
        env_name: str = "",
        knn_k: int = 5,
        knn_chunk: int = 10_000,
    ):
        if optimize_memory_usage:
            raise ValueError(
                "PbrlReplayBuffer does not support optimize_memory_usage=True (it keeps obs and "
                "next_obs separately so segments and relabelling see every step); pass "
                "optimize_memory_usage=False"
            )
        if not isinstance(observation_space, spaces.Box):
            raise TypeError(
                f"PbrlReplayBuffer needs a Box observation space, got {observation_space}; "
                "flatten Dict/Discrete observations first"
            )
        if state_dim < 0:
            raise ValueError(f"state_dim must be >= 0, got {state_dim}")
        if knn_k < 1:
            raise ValueError(f"knn_k must be >= 1, got {knn_k}")
        if knn_chunk < 1:
            raise ValueError(f"knn_chunk must be >= 1, got {knn_chunk}")
        super().__init__(
            buffer_size,
            observation_space,
            action_space,
            device=device,
            n_envs=n_envs,
            optimize_memory_usage=False,
            handle_timeout_termination=handle_timeout_termination,
        )
        self.state_dim = int(state_dim)
        self.factor_names: tuple[str, ...] = tuple(factor_names)
        if len(set(self.factor_names)) != len(self.factor_names):
            raise ValueError(f"factor_names must be unique, got {self.factor_names}")
        self.env_name = env_name
        self.knn_k = int(knn_k)
        self.knn_chunk = int(knn_chunk)
        shape = (self.buffer_size, self.n_envs)
        self.true_reward = np.zeros(shape, np.float32)
        self.factors = np.zeros((*shape, len(self.factor_names)), np.float32)
        self.sim_state = np.zeros((*shape, self.state_dim), np.float64)
        self.episode_index = np.full(shape, -1, np.int64)
        self.time_in_episode = np.full(shape, -1, np.int64)
        # Live episode of each env column: its number and the next step's time index.
        self._cur_episode = np.arange(self.n_envs, dtype=np.int64)
        self._cur_t = np.zeros(self.n_envs, np.int64)
        self._next_episode = int(self.n_envs)
        self.reward_mode: RewardMode = "stored"
        self.intrinsic_rms = RunningMeanStd()
        # Incremental k-NN table for the unsupervised phase (see _knn_table_sync).
        self.use_knn_table = True
        self._knn_reset()
        # Deferred learned rewards (see defer_rewards): rows [start, start + count) of the
        # ring, in write order, hold placeholders until _flush_rewards fills them.
        self._defer_fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
        self._pending_start = 0
        self._pending_count = 0

    # ------------------------------------------------------------------------------------
    # writing
    def add(
        self,
        obs: np.ndarray,
        next_obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    ) -> None:
        """Store one vector step: arrays ``(n_envs, ...)``; ``infos`` one dict per env column.

        ``infos`` may also be a gymnasium vector-env info dict (each value stacked over env
        columns). Each info must carry ``true_reward``, ``reward_factors`` (name -> float) and
        ``sim_state`` (the state before this step), as :class:`pbrl.envs.base.PbrlEnv` emits.
        """
        true_r, factors, sim_state = self._parse_infos(infos)
        done_b = np.asarray(done).reshape(self.n_envs).astype(bool)
        if isinstance(infos, Mapping):
            # SB3 reads "TimeLimit.truncated" from a list of per-env dicts.
            trunc = np.asarray(infos.get("TimeLimit.truncated", np.zeros(self.n_envs, bool)))
            sb3_infos: Sequence[Mapping[str, Any]] = [
                {"TimeLimit.truncated": bool(t)} for t in trunc.reshape(self.n_envs)
            ]
        else:
            sb3_infos = infos
        p = self.pos
        self.true_reward[p] = true_r
        self.factors[p] = factors
        self.sim_state[p] = sim_state
        self.episode_index[p] = self._cur_episode
        self.time_in_episode[p] = self._cur_t
        if self._defer_fn is not None:
            if self._pending_count == 0:
                self._pending_start = p
            elif self._pending_count == self.buffer_size:  # the ring came round: fill first
                self._flush_rewards()
                self._pending_start = p
            self._pending_count += 1
        super().add(obs, next_obs, action, reward, done_b.astype(np.float32), list(sb3_infos))
        # An episode ends at termination or truncation alike (SB3's `dones` covers both).
        self._cur_t += 1
        for e in np.flatnonzero(done_b):  # loop over finished env columns, not over steps
            self._cur_episode[e] = self._next_episode
            self._next_episode += 1
            self._cur_t[e] = 0

    def _parse_infos(
        self, infos: Sequence[Mapping[str, Any]] | Mapping[str, Any]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(true_reward (E,), factors (E, F), sim_state (E, D_s))`` from step infos."""
        n, names = self.n_envs, self.factor_names
        hint = (
            "each step info needs keys true_reward, reward_factors and sim_state; wrap the env "
            "in pbrl.envs.base.PbrlEnv (pbrl.envs.make_env does)"
        )
        if isinstance(infos, Mapping):  # gymnasium vector-env layout
            missing = [k for k in _INFO_KEYS if k not in infos]
            if missing:
                raise KeyError(f"vector info lacks {missing}; {hint}")
            true_r = np.asarray(infos["true_reward"], np.float32).reshape(n)
            rf = infos["reward_factors"]
            absent = [k for k in names if k not in rf]
            if absent:
                raise KeyError(f"reward_factors lack {absent}; present: {sorted(rf)}")
            factors = np.stack([np.asarray(rf[k], np.float32).reshape(n) for k in names], -1)
            factors = factors.reshape(n, len(names))
            sim = np.asarray(infos["sim_state"], np.float64)
        else:
            if len(infos) != n:
                raise ValueError(f"got {len(infos)} infos for {n} env columns")
            try:  # fast path; the checks below only run to explain a failure
                true_r = np.array([info["true_reward"] for info in infos], np.float32)
                factors = np.array(
                    [[info["reward_factors"][k] for k in names] for info in infos], np.float32
                ).reshape(n, len(names))
                sim = np.array([info["sim_state"] for info in infos], np.float64)
            except (KeyError, TypeError, ValueError):
                pass
            else:
                if sim.size == n * self.state_dim:
                    return true_r.reshape(n), factors, sim.reshape(n, self.state_dim)
            for i, info in enumerate(infos):
                missing = [k for k in _INFO_KEYS if k not in info]
                if missing:
                    raise KeyError(f"info of env column {i} lacks {missing}; {hint}")
                absent = [k for k in names if k not in info["reward_factors"]]
                if absent:
                    raise KeyError(
                        f"reward_factors of env column {i} lack {absent}; present: "
                        f"{sorted(info['reward_factors'])}"
                    )
            true_r = np.array([info["true_reward"] for info in infos], np.float32).reshape(n)
            factors = np.array(
                [[info["reward_factors"][k] for k in names] for info in infos], np.float32
            ).reshape(n, len(names))
            sim = np.array(
                [np.asarray(info["sim_state"]).reshape(-1) for info in infos], np.float64
            )
        if sim.size != n * self.state_dim:
            raise ValueError(
                f"sim_state must hold state_dim={self.state_dim} values per env column, got "
                f"array of shape {sim.shape} for {n} env columns; pass the env's state_dim"
            )
        return true_r, factors, sim.reshape(n, self.state_dim)

    def reset(self) -> None:
        """Forget all stored steps; live episodes keep their numbers and time indices."""
        super().reset()
        self._knn_reset()
        self._pending_count = 0
        self.episode_index.fill(-1)
        self.time_in_episode.fill(-1)

    # ------------------------------------------------------------------------------------
    # reading
    def _chronological_rows(self) -> np.ndarray:
        """``(L,)`` ring rows of the written steps, oldest first."""
        if self.full:
            return (self.pos + np.arange(self.buffer_size)) % self.buffer_size
        return np.arange(self.pos)

    def _window_mask(
        self, segment_size: int, recent_episodes: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Valid window starts in chronological order.

        Returns ``(rows (L,), mask (L - H + 1, n_envs))``: ``mask[c, e]`` says that the steps
        at chronological positions ``c .. c+H-1`` of column ``e`` belong to one episode.
        Working in chronological order makes the write pointer an ordinary end of the array,
        so no window can join the newest step to the oldest one.
        """
        rows = self._chronological_rows()
        big_l, h = len(rows), segment_size
        if big_l < h:
            return rows, np.zeros((0, self.n_envs), bool)
        ep = self.episode_index[rows]  # (L, E)
        cont = (ep[1:] == ep[:-1]) & (ep[1:] >= 0)  # step c+1 continues step c's episode
        breaks = np.concatenate(
            [np.zeros((1, self.n_envs), np.int64), np.cumsum(~cont, axis=0, dtype=np.int64)]
        )  # breaks[c] = number of episode changes between positions 0 and c
        mask = (breaks[h - 1 :] - breaks[: big_l - h + 1] == 0) & (ep[: big_l - h + 1] >= 0)
        if recent_episodes is not None:
            stored = np.unique(ep[ep >= 0])
            keep = stored[-recent_episodes:]
            # Episode numbers grow with start time, so "most recent" = the largest numbers.
            if len(keep):
                mask &= ep[: big_l - h + 1] >= keep[0]
        return rows, mask

    def _longest_stretch(self) -> int:
        """Longest run of stored steps of one episode in one column (for error messages)."""
        rows = self._chronological_rows()
        if len(rows) == 0:
            return 0
        best = 0
        ep = self.episode_index[rows]
        for e in range(self.n_envs):  # loop over env columns only
            col = ep[:, e]
            cuts = np.flatnonzero(col[1:] != col[:-1]) + 1
            bounds = np.concatenate([[0], cuts, [len(col)]])
            lengths = np.diff(bounds)[col[bounds[:-1]] >= 0]
            best = max(best, int(lengths.max(initial=0)))
        return best

    def sample_segments(
        self,
        n: int,
        segment_size: int,
        rng: np.random.Generator,
        recent_episodes: int | None = None,
    ) -> SegmentBatch:
        """Draw ``n`` segments of ``H = segment_size`` steps, uniformly over valid windows.

        A window is valid when all its steps are stored and belong to one episode of one env
        column; with ``recent_episodes`` only windows of the most recent that-many episodes
        (counted over all env columns by start time; the live episode counts) qualify.
        Draws are with replacement.

        Returns:
            A :class:`SegmentBatch` with obs ``(n, H, D_o)`` (flattened, float32), actions
            ``(n, H, D_a)``, true reward ``(n, H)``, factors, sim_state ``(n, H, D_s)`` (None
            when ``state_dim == 0``), env_id (column) and start (time index in the episode).
        """
        if segment_size < 1:
            raise ValueError(f"segment_size must be >= 1, got {segment_size}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if recent_episodes is not None and recent_episodes < 1:
            raise ValueError(f"recent_episodes must be >= 1 or None, got {recent_episodes}")
        h = int(segment_size)
        rows, mask = self._window_mask(h, recent_episodes)
        c, env = np.nonzero(mask)
        if len(c) == 0:
            where = "" if recent_episodes is None else f" in the {recent_episodes} most recent"
            raise ValueError(
                f"need at least one stored episode stretch of >= {h} steps{where}; got "
                f"{self.size()} stored steps x {self.n_envs} env columns whose longest "
                f"single-episode stretch is {self._longest_stretch()} steps (collect more "
                "steps or shorten segment_size)"
            )
        pick = rng.integers(len(c), size=n)
        c, env = c[pick], env[pick]
        t_rows = rows[c[:, None] + np.arange(h)]  # (n, H) ring rows
        e_cols = env[:, None]
        obs = self.observations[t_rows, e_cols].reshape(n, h, -1).astype(np.float32)
        act = self.actions[t_rows, e_cols].reshape(n, h, -1).astype(np.float32)
        factors = self.factors[t_rows, e_cols]  # (n, H, F)
        return SegmentBatch(
            obs=obs,
            actions=act,
            true_reward=self.true_reward[t_rows, e_cols].copy(),
            reward_factors={k: factors[..., i].copy() for i, k in enumerate(self.factor_names)},
            sim_state=self.sim_state[t_rows, e_cols] if self.state_dim > 0 else None,
            env_id=env.astype(np.int64),
            start=self.time_in_episode[t_rows[:, 0], env],
            env_name=self.env_name,
        )

    def _flat(self, arr: np.ndarray) -> np.ndarray:
        """View of the written part of ``arr`` as ``(size * n_envs, -1)``."""
        size = self.size()
        return arr[:size].reshape(size * self.n_envs, -1)

    def sample_transitions(
        self, n: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` stored transitions drawn uniformly with replacement (for metrics only).

        Returns:
            ``obs (n, D_o) float32``, ``act (n, D_a) float32``, ``true_reward (n,) float32``.
        """
        total = self.size() * self.n_envs
        if total == 0:
            raise ValueError("the buffer is empty; add transitions before sampling")
        idx = rng.integers(total, size=n)
        obs = self._flat(self.observations)[idx].astype(np.float32)
        act = self._flat(self.actions)[idx].astype(np.float32)
        true_r = self._flat(self.true_reward)[idx, 0].copy()
        return obs, act, true_r

    # ------------------------------------------------------------------------------------
    # relabelling
    def relabel(
        self, reward_fn: Callable[[np.ndarray, np.ndarray], np.ndarray], chunk: int = 65536
    ) -> None:
        """Overwrite ``rewards`` of every stored transition with ``reward_fn(obs, act)``.

        ``reward_fn`` maps ``obs (B, D_o) float32, act (B, D_a) float32 -> (B,)``; it is called
        on consecutive blocks of at most ``chunk`` transitions (all rows once the ring is full,
        not only those below the write pointer).
        """
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        obs, act = self._flat(self.observations), self._flat(self.actions)
        out = self.rewards[: self.size()].reshape(-1)  # view: writes land in self.rewards
        for s in range(0, len(out), chunk):
            out[s : s + chunk] = _rewards_of(
                reward_fn, obs[s : s + chunk].astype(np.float32), act[s : s + chunk]
            )
        self._pending_count = 0  # every row now holds reward_fn's value

    def defer_rewards(
        self, reward_fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None
    ) -> None:
        """Fill the rewards of transitions added from now on with ``reward_fn``, lazily.

        ``add`` then keeps the rewards it is given only as placeholders (pass NaN, so a missed
        fill cannot pass for a reward); the first :meth:`sample` that draws one of the
        pending rows fills all of them with one ``reward_fn(obs, act)`` call, as do
        :meth:`relabel` (which rewrites every row) and :meth:`flush_rewards`. The values are
        those of calling ``reward_fn`` at each step (rows are independent), but the reward
        model's weights are read once per batch of new rows instead of once per env step:
        for B-Pref's 3 x 256 ensemble that is ~1.6 MB of weights, fetched cold after every
        SAC update. ``None``: stop deferring (pending rows are filled first).
        """
        if reward_fn is None:
            self._flush_rewards()
        elif self._defer_fn is not None and self._defer_fn != reward_fn:
            self._flush_rewards()  # rows pending so far belong to the previous function
        self._defer_fn = reward_fn

    @property
    def pending_rewards(self) -> int:
        """Rows (per env column) whose deferred reward is not yet filled."""
        return self._pending_count

    def flush_rewards(self) -> None:
        """Fill every pending deferred reward now (see :meth:`defer_rewards`)."""
        self._flush_rewards()

    def _pending_rows(self) -> np.ndarray:
        return (self._pending_start + np.arange(self._pending_count)) % self.buffer_size

    def _flush_rewards(self) -> None:
        if self._pending_count == 0:
            return
        if self._defer_fn is None:
            raise RuntimeError("pending deferred rewards but no reward function to fill them")
        rows = self._pending_rows()
        obs = self.observations[rows].reshape(-1, *self.obs_shape).astype(np.float32)
        act = self.actions[rows].reshape(-1, self.action_dim)
        self.rewards[rows] = _rewards_of(self._defer_fn, obs, act).reshape(len(rows), self.n_envs)
        self._pending_count = 0

    # ------------------------------------------------------------------------------------
    # intrinsic reward (PEBBLE's unsupervised phase)
    def set_reward_mode(self, mode: RewardMode) -> None:
        """``"stored"``: :meth:`sample` returns stored rewards; ``"intrinsic"``: k-NN entropy."""
        if mode not in REWARD_MODES:
            raise ValueError(f"unknown reward mode {mode!r}; valid: {list(REWARD_MODES)}")
        self.reward_mode = mode
        if mode == "stored":
            self._knn_reset()  # the table is only needed by the unsupervised phase

    @torch.no_grad()
    def knn_distance(
        self, obs: np.ndarray | torch.Tensor, exclude_self: bool = False
    ) -> torch.Tensor:
        """Distance from each row of ``obs (B, D_o)`` to its k-th nearest stored observation.

        The search runs over all stored observations (every env column) in blocks of
        ``knn_chunk``, keeping only the best candidates per query, so memory is
        ``O(B * knn_chunk)``. With ``exclude_self`` the query is assumed to be stored and its
        own zero distance is skipped by taking the (k+1)-th smallest, as B-Pref does.
        Returns ``(B,)`` float32 on the buffer's device.
        """
        need = self.knn_k + int(exclude_self)
        stored = self._flat(self.observations)
        self._check_knn_size(len(stored), need)
        q = torch.as_tensor(obs, device=self.device).reshape(len(obs), -1).float()
        return self._knn_smallest(q, stored, need)[:, need - 1]

    def _check_knn_size(self, n_stored: int, need: int) -> None:
        if n_stored < need:
            raise ValueError(
                f"k-NN reward with k={self.knn_k} needs at least {need} stored observations; "
                f"got {n_stored} (start the unsupervised phase after a few seed steps)"
            )

    @torch.no_grad()
    def _knn_smallest(
        self, q: torch.Tensor, stored: np.ndarray | torch.Tensor, need: int
    ) -> torch.Tensor:
        """``(B, need)``: the ``need`` smallest distances from each row of ``q`` to ``stored``.

        ``q (B, D)`` is float32, ``stored (N, D)`` any float array or tensor; each row is in
        ascending order, and columns past ``N`` are ``inf``.
        """
        # Two stages. (1) Rank by |r - mu|^2 - 2 (q - mu).r', one matmul per block (3x faster
        # than the difference form on CPU); float32 cancellation can blur the ranking of near
        # neighbours, so keep `margin` spare candidates (centring on mu shrinks the error).
        # (2) Recompute the candidates' distances exactly as differences.
        margin = 8
        keep = need + margin
        mu = q.mean(dim=0)
        qc = q - mu
        best_score: torch.Tensor | None = None
        best_idx: torch.Tensor | None = None
        for s in range(0, len(stored), self.knn_chunk):
            ref = torch.as_tensor(stored[s : s + self.knn_chunk], device=self.device).float() - mu
            score = torch.addmm((ref * ref).sum(dim=1)[None, :], qc, ref.T, alpha=-2.0)
            idx = torch.arange(s, s + len(ref), device=self.device).expand_as(score)
            if best_score is not None and best_idx is not None:
                score = torch.cat([best_score, score], dim=1)
                idx = torch.cat([best_idx, idx], dim=1)
            best_score, pos = torch.topk(score, min(keep, score.shape[1]), dim=1, largest=False)
            best_idx = torch.gather(idx, 1, pos)
        if best_idx is None:
            return torch.full((len(q), need), torch.inf, device=self.device)
        rows = best_idx.cpu().numpy()
        cand = (
            stored[best_idx] if isinstance(stored, torch.Tensor) else torch.as_tensor(stored[rows])
        )
        dist = torch.linalg.vector_norm(cand.to(self.device).float() - q[:, None, :], dim=-1)
        dist = torch.sort(dist, dim=1).values[:, :need]
        if dist.shape[1] < need:
            pad = torch.full((len(q), need - dist.shape[1]), torch.inf, device=self.device)
            dist = torch.cat([dist, pad], dim=1)
        return dist

    # The unsupervised phase asks, every SAC update, for the k-NN distance of a sampled batch
    # of *stored* states to all stored states. Instead of a (batch x N) search per update, a
    # table keeps every stored state's k+1 smallest distances (self included) and is brought up
    # to date as states arrive: a new state costs one (N x D) distance pass (its own row, and
    # the rows it enters). Same values as knn_distance(obs, exclude_self=True) — both take the
    # exact difference-form distances — at a fraction of the cost. Used until the ring wraps
    # (PEBBLE's unsupervised phase is far shorter than the buffer); after that, and for
    # queries that are not stored states, the search above runs.
    def _knn_table_sync(self) -> torch.Tensor | None:
        """The ``(rows, k+1)`` table covering every stored state, or None once wrapped."""
        if self.full:
            self._knn_reset()
            return None
        need = self.knn_k + 1
        n = self.pos * self.n_envs
        done = self._knn_done
        if done > n:  # rows vanished (reset, or a checkpoint loaded): start over
            self._knn_reset()
            done = 0
        if done == n:
            return self._knn_table[:n]
        cap = len(self._knn_table)
        if n > cap:  # grow both by doubling (the buffer's capacity bounds them)
            new_cap = min(max(n, 2 * cap, 1024), self.buffer_size * self.n_envs)
            grow_t = torch.full((new_cap, need), torch.inf, device=self.device)
            grow_t[:done] = self._knn_table[:done]
            grow_x = torch.zeros((new_cap, self._knn_ref.shape[1]), device=self.device)
            grow_x[:done] = self._knn_ref[:done]
            self._knn_table, self._knn_ref = grow_t, grow_x
        ref = self._knn_ref
        ref[done:n] = torch.as_tensor(self._flat(self.observations)[done:n]).to(
            self.device, torch.float32
        )
        new = ref[done:n]
        table = self._knn_table
        if n - done <= 64:
            # A few new states (every env step): one exact (n x m) distance pass serves both
            # the new states' own rows and the older rows they enter.
            d_all = torch.linalg.vector_norm(ref[:n, None, :] - new[None, :, :], dim=-1)
            kk = min(need, n)
            own = torch.topk(d_all.T, kk, dim=1, largest=False, sorted=True).values
            table[done:n, :kk] = own
            table[done:n, kk:] = torch.inf
            d_new = d_all[:done]
        else:
            # Rows of the new states: their k+1 nearest among all n states (self at 0).
            table[done:n] = self._knn_smallest(new, ref[:n], need)
            # Older rows (below): the candidates of the two-stage search suffice.
            d_new = self._knn_smallest(ref[:done], new, min(need, n - done)) if done else None
        if done > 0 and d_new is not None:
            # Older rows: a new state enters a row's list where it beats its current (k+1)-th.
            hit = torch.nonzero(d_new.min(dim=1).values < table[:done, -1]).reshape(-1)
            if len(hit):
                merged = torch.cat([table[hit], d_new[hit]], dim=1)
                table[hit] = torch.sort(merged, dim=1).values[:, :need]
        self._knn_done = n
        return table[:n]

    def _knn_reset(self) -> None:
        d = int(np.prod(self.obs_shape))
        self._knn_table = torch.empty((0, self.knn_k + 1), device=self.device)
        self._knn_ref = torch.empty((0, d), device=self.device)
        self._knn_done = 0

    def intrinsic_reward(
        self, obs: np.ndarray | torch.Tensor, exclude_self: bool = False, update: bool = True
    ) -> np.ndarray:
        """PEBBLE's state-entropy reward ``||s - s^(k)||_2 / running_std`` for ``obs (B, D_o)``.

        ``update`` merges the raw distances into the running statistics first (B-Pref updates,
        then divides). Only the std is used: no mean shift. Returns ``(B,)`` float32.
        """
        return self._intrinsic(obs, exclude_self, update).cpu().numpy()

    def _intrinsic(
        self,
        obs: np.ndarray | torch.Tensor,
        exclude_self: bool,
        update: bool,
        rows: np.ndarray | None = None,
    ) -> torch.Tensor:
        """``rows``: flat indices (``pos * n_envs + env``) of ``obs`` when they are stored."""
        dist = None
        if rows is not None and exclude_self and self.use_knn_table:
            self._check_knn_size(self.size() * self.n_envs, self.knn_k + 1)
            table = self._knn_table_sync()
            if table is not None:
                dist = table[torch.as_tensor(rows, device=self.device), -1]
        if dist is None:
            dist = self.knn_distance(obs, exclude_self=exclude_self)
        if update:
            self.intrinsic_rms.update(dist.double().cpu().numpy())
        # The floor only guards a degenerate all-equal stream; the prior pseudo-count keeps
        # the variance positive in practice.
        return dist / max(self.intrinsic_rms.std, 1e-8)

    def _get_samples(
        self, batch_inds: np.ndarray, env: VecNormalize | None = None
    ) -> ReplayBufferSamples:
        if self.reward_mode == "stored":
            if self._pending_count and np.any(
                (batch_inds - self._pending_start) % self.buffer_size < self._pending_count
            ):
                self._flush_rewards()
            return super()._get_samples(batch_inds, env=env)
        # Same global-RNG draw as SB3's own _get_samples, so both modes consume it alike.
        env_indices = np.random.randint(0, high=self.n_envs, size=(len(batch_inds),))
        obs = self.observations[batch_inds, env_indices, :]
        # The entropy reward is computed for the sampled state s_t, not s_{t+1}: B-Pref's
        # update_critic_state_ent calls compute_state_entropy(obs, full_obs) and puts the
        # result into the critic target of (s_t, a_t). s_t is itself stored, which makes
        # "self excluded" exact; a terminal s_{t+1} would not be. The team contract's
        # wording r_int(s') differs from the reference code here; we follow the code.
        rows = batch_inds * self.n_envs + env_indices
        r_int = self._intrinsic(obs, exclude_self=True, update=True, rows=rows)
        data = (
            self._normalize_obs(obs, env),
            self.actions[batch_inds, env_indices, :],
            self._normalize_obs(self.next_observations[batch_inds, env_indices, :], env),
            (
                self.dones[batch_inds, env_indices] * (1 - self.timeouts[batch_inds, env_indices])
            ).reshape(-1, 1),
        )
        obs_t, act_t, next_t, done_t = map(self.to_torch, data)
        return ReplayBufferSamples(obs_t, act_t, next_t, done_t, r_int.reshape(-1, 1))

    # ------------------------------------------------------------------------------------
    # checkpoints
    _ARRAYS = (
        "observations",
        "next_observations",
        "actions",
        "rewards",
        "dones",
        "timeouts",
        "true_reward",
        "factors",
        "sim_state",
        "episode_index",
        "time_in_episode",
    )

    def state_dict(self) -> dict[str, np.ndarray]:
        """All contents as numpy arrays (``np.savez``-able without pickle).

        Storage arrays are cut to the written rows while the ring is not yet full.
        """
        size = self.size()
        out = {name: getattr(self, name)[:size].copy() for name in self._ARRAYS}
        out.update(
            pos=np.array(self.pos, np.int64),
            full=np.array(self.full),
            buffer_size=np.array(self.buffer_size, np.int64),
            n_envs=np.array(self.n_envs, np.int64),
            state_dim=np.array(self.state_dim, np.int64),
            factor_names=np.array(self.factor_names, dtype=np.str_).reshape(-1),
            cur_episode=self._cur_episode.copy(),
            cur_t=self._cur_t.copy(),
            next_episode=np.array(self._next_episode, np.int64),
            reward_mode=np.array(self.reward_mode),
            # deferred rewards not yet filled (their rows hold placeholders): saved as they
            # are, so a checkpoint never changes what the run computes next
            deferred=np.array([self._pending_start, self._pending_count], np.int64),
            rms=np.array(
                [self.intrinsic_rms.mean, self.intrinsic_rms.var, self.intrinsic_rms.count],
                np.float64,
            ),
        )
        return out

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore :meth:`state_dict` output into a buffer built with the same arguments."""
        for key, mine in (
            ("buffer_size", self.buffer_size),
            ("n_envs", self.n_envs),
            ("state_dim", self.state_dim),
        ):
            if int(state[key]) != mine:
                raise ValueError(
                    f"checkpoint has {key}={int(state[key])} but this buffer has {mine}; build "
                    "the buffer with the run's original settings"
                )
        names = tuple(str(s) for s in np.asarray(state["factor_names"]).reshape(-1))
        if names != self.factor_names:
            raise ValueError(
                f"checkpoint factor_names {names} differ from this buffer's {self.factor_names}"
            )
        full, pos = bool(state["full"]), int(state["pos"])
        size = self.buffer_size if full else pos
        for name in self._ARRAYS:
            dst, src = getattr(self, name), np.asarray(state[name])
            if src.shape != (size, *dst.shape[1:]):
                raise ValueError(
                    f"checkpoint array {name!r} has shape {src.shape}, expected "
                    f"{(size, *dst.shape[1:])}"
                )
            dst[:size] = src
            # Unwritten rows as in a fresh buffer, so the restored object is identical.
            dst[size:] = -1 if name in ("episode_index", "time_in_episode") else 0
        self.pos, self.full = pos, full
        self._knn_reset()  # rebuilt from the restored states on the next intrinsic sample
        self._cur_episode = np.asarray(state["cur_episode"], np.int64).copy()
        self._cur_t = np.asarray(state["cur_t"], np.int64).copy()
        self._next_episode = int(state["next_episode"])
        self.set_reward_mode(str(state["reward_mode"]))  # type: ignore[arg-type]
        deferred = np.asarray(state.get("deferred", (0, 0)), np.int64).reshape(2)
        self._pending_start, self._pending_count = int(deferred[0]), int(deferred[1])
        mean, var, count = (float(v) for v in np.asarray(state["rms"], np.float64))
        self.intrinsic_rms.mean, self.intrinsic_rms.var, self.intrinsic_rms.count = (
            mean,
            var,
            count,
        )
