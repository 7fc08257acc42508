"""A gymnasium ``SyncVectorEnv`` that takes pbrl's contract keys as columns, not dicts.

Every pbrl step info carries ``true_reward``, a ``reward_factors`` dict, ``sim_state`` and
(where the task has one) ``success`` on top of the suite's own keys. gymnasium's
``VectorEnv._add_info`` merges infos one key at a time per env per step — a few microseconds
per env step, which is 5-20 % of a cheap MuJoCo step. :class:`PbrlSyncVectorEnv` produces the
identical info layout (values stacked over envs, a boolean ``_key`` mask per key, nested dicts
merged recursively, ``final_obs`` as an object array) but, in the ``NEXT_STEP`` and
``DISABLED`` autoreset modes, its :class:`~pbrl.envs.base.PbrlEnv` sub-envs write the contract
keys as per-env rows (:class:`InfoColumns`), which become the infos' arrays once per key per
vector step. The suite's own keys still go through the (faster,
layout-identical) ``_add_info`` below. On that path the sub-envs are stepped by
:meth:`PbrlSyncVectorEnv.step`'s own loop rather than gymnasium's, with the same results and
autoreset (it skips numpy element stores, empty-info merges and ``deepcopy``), and a mask
that is all True is one shared read-only array. ``SAME_STEP`` (whose ``final_info`` holds
the step infos) and sub-envs that are wrapped or opt out keep gymnasium's loop and per-env
dicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from copy import deepcopy
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import concatenate, iterate

_SCALARS = (int, float, bool)


class InfoColumns:
    """Per-env rows of the contract keys for one vector step (see the module docstring).

    Sub-envs call :meth:`put_step` / :meth:`put_state`; the vector env calls :meth:`clear`
    before and :meth:`merge_into` after stepping them. Rows are kept as Python lists (a list
    store costs tens of nanoseconds, a numpy element store a few hundred) and become numpy
    arrays once per vector step, in :meth:`merge_into`.
    """

    def __init__(self, n: int, factor_names: tuple[str, ...], state_dim: int):
        self.n, self.names = int(n), tuple(factor_names)
        self.state_dim = int(state_dim)
        # The mask of a key every env wrote: one read-only array shared by those keys and
        # steps (a fresh copy per key per step was ~a third of merge_into's time). Read-only,
        # so code that edits a mask in place fails loudly instead of changing other keys'.
        self._ones = np.ones(self.n, np.bool_)
        self._ones.flags.writeable = False
        self.rewards: list[float | None] = []
        self.factors: list[Mapping[str, float] | None] = []
        self.states: list[np.ndarray | None] = []
        self.success: list[bool | None] = []
        self.clear()

    def clear(self) -> None:
        """Forget the rows written (a row left ``None`` is masked out on the way out)."""
        n = self.n
        self.rewards = [None] * n
        self.factors = [None] * n
        self.states = [None] * n
        self.success = [None] * n

    def put_step(
        self,
        i: int,
        reward: float,
        factors: Mapping[str, float],
        state: np.ndarray,
        success: bool | None,
    ) -> None:
        """Row ``i`` of a step: its true reward, factors, pre-step state and success flag.

        ``reward`` is the task's reward even when the sub-env returns an engineered one
        (:meth:`~pbrl.envs.base.PbrlEnv.set_reward_weights`).
        """
        self.rewards[i] = reward
        self.factors[i] = factors
        self.states[i] = state
        self.success[i] = success

    def put_state(self, i: int, state: np.ndarray) -> None:
        """Row ``i`` of a reset: only the initial state."""
        self.states[i] = state

    def _factor_matrix(self, rows: list[Mapping[str, float]]) -> np.ndarray:
        """``(len(names), len(rows))`` float64 factor values (one contiguous row per name)."""
        names = self.names
        if sum(map(len, rows)) != len(names) * len(rows) or not names:
            for i, f in enumerate(rows):
                if len(f) != len(names):
                    raise ValueError(
                        f"env {i} returned factors {sorted(f)}, expected {names}; a "
                        "PbrlEnv's reward_factors must be exactly its factor_names"
                    )
        try:
            values = [f[k] for k in names for f in rows]
        except KeyError as err:
            raise ValueError(
                f"a sub-env's reward_factors lack {err}; expected exactly {names}"
            ) from None
        return np.array(values, np.float64).reshape(len(names), len(rows))

    def merge_into(self, infos: dict[str, Any]) -> dict[str, Any]:
        """Add the written keys to ``infos`` exactly as gymnasium's ``_add_info`` would.

        Each key gets its own value array (fresh every step) and a boolean ``_key`` mask;
        rows not written this step are zeros, as gymnasium leaves them. Where every env wrote
        the key, its mask is one shared read-only all-True array; partial masks are fresh.
        """
        n, rewards, ones = self.n, self.rewards, self._ones
        if None not in rewards:  # the common case: every sub-env stepped
            stepped = ones
            infos["true_reward"] = np.array(rewards, np.float64)
            matrix = self._factor_matrix(self.factors)  # type: ignore[arg-type]
        elif any(r is not None for r in rewards):
            stepped = np.array([r is not None for r in rewards], np.bool_)
            infos["true_reward"] = np.array([0.0 if r is None else r for r in rewards], np.float64)
            rows = [f for f in self.factors if f is not None]
            matrix = np.zeros((len(self.names), n), np.float64)
            matrix[:, stepped] = self._factor_matrix(rows)
        else:
            stepped = None
        if stepped is not None:
            mask = (lambda: ones) if stepped is ones else stepped.copy
            infos["_true_reward"] = mask()
            rf: dict[str, Any] = {}
            for j, k in enumerate(self.names):
                rf[k] = matrix[j]
                rf["_" + k] = mask()
            infos["reward_factors"] = rf
            infos["_reward_factors"] = mask()
        states = self.states  # (arrays: `None in states` would compare them elementwise)
        if all(s is not None for s in states):
            infos["sim_state"] = np.concatenate(states).reshape(n, self.state_dim)
            infos["_sim_state"] = ones
        elif any(s is not None for s in states):
            has = np.array([s is not None for s in states], np.bool_)
            out = np.zeros((n, self.state_dim), np.float64)
            out[has] = [s for s in states if s is not None]
            infos["sim_state"] = out
            infos["_sim_state"] = has
        success = self.success
        missing = success.count(None)
        if missing == 0:  # every env has a flag (bools): no per-element conversion
            infos["success"] = np.array(success, np.bool_)
            infos["_success"] = ones
        elif missing != n:
            infos["success"] = np.array([bool(s) for s in success], np.bool_)
            infos["_success"] = np.array([s is not None for s in success], np.bool_)
        return infos


class PbrlSyncVectorEnv(gym.vector.SyncVectorEnv):
    """``SyncVectorEnv`` with pbrl's contract keys merged as columns (same info layout)."""

    def __init__(self, env_fns: Any, *args: Any, **kwargs: Any):
        super().__init__(env_fns, *args, **kwargs)
        self._columns: InfoColumns | None = None
        # Box observations (ndarrays): gymnasium's concatenate is np.stack into the buffer.
        space = self.single_observation_space
        self._stack_box = type(space) is gym.spaces.Box and isinstance(
            self._observations, np.ndarray
        )
        if self.autoreset_mode in (AutoresetMode.NEXT_STEP, AutoresetMode.DISABLED):
            from pbrl.envs.base import PbrlEnv

            subs = self.envs
            if all(isinstance(e, PbrlEnv) and e.supports_info_columns for e in subs):
                names = {tuple(e.factor_names) for e in subs}
                dims = {e.state_dim for e in subs}
                if len(names) == 1 and len(dims) == 1:
                    self._columns = InfoColumns(len(subs), names.pop(), dims.pop())
                    for i, e in enumerate(subs):
                        e.attach_info_columns(self._columns, i)

    def reset(self, *args: Any, **kwargs: Any) -> tuple[Any, dict[str, Any]]:  # type: ignore[override]
        """As gymnasium's, with the contract keys from the columns."""
        cols = self._columns
        if cols is None:
            return super().reset(*args, **kwargs)
        cols.clear()
        obs, infos = super().reset(*args, **kwargs)
        return obs, cols.merge_into(infos)

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:  # type: ignore[override]
        """As gymnasium's, with the contract keys from the columns.

        With columns, the sub-envs are stepped by a leaner loop than gymnasium's (per env:
        Python lists instead of numpy element stores, no ``_add_info`` call for an empty
        info; per step: one ``np.stack`` into the observation buffer and a plain copy in
        place of ``deepcopy``) with the same results, autoreset and buffers
        (``tests/envs/test_vector_columns.py`` compares the two step by step).
        """
        cols = self._columns
        if cols is None:
            return super().step(actions)
        cols.clear()
        envs, n = self.envs, self.num_envs
        auto = self._autoreset_envs.tolist()
        next_step = self.autoreset_mode == AutoresetMode.NEXT_STEP
        if not next_step and any(auto):  # DISABLED: the caller must have reset them
            raise AssertionError(f"{self._autoreset_envs=}")
        env_obs = self._env_obs
        rews, terms, truncs = [0.0] * n, [False] * n, [False] * n
        infos: dict[str, Any] = {}
        add_info = self._add_info
        for i, action in enumerate(iterate(self.action_space, actions)):
            if auto[i]:
                env_obs[i], info = envs[i].reset()
            else:
                env_obs[i], rews[i], terms[i], truncs[i], info = envs[i].step(action)
            if info:
                infos = add_info(infos, info, i)
        if self._stack_box:
            obs = np.stack(env_obs, out=self._observations)
            out_obs = obs.copy() if self.copy else obs
        else:
            obs = concatenate(self.single_observation_space, env_obs, self._observations)
            out_obs = deepcopy(obs) if self.copy else obs
        self._observations = obs
        self._rewards = rewards = np.array(rews, np.float64)
        self._terminations = term = np.array(terms, np.bool_)
        self._truncations = trunc = np.array(truncs, np.bool_)
        self._autoreset_envs = term | trunc
        return out_obs, rewards.copy(), term.copy(), trunc.copy(), cols.merge_into(infos)

    def close_extras(self, **kwargs: Any) -> None:
        """Detach the columns, so sub-envs used on their own again fill their infos."""
        if self._columns is not None:
            for e in self.envs:
                e.attach_info_columns(None, 0)  # type: ignore[attr-defined]
            self._columns = None
        super().close_extras(**kwargs)

    def _add_info(
        self, vector_infos: dict[str, Any], env_info: dict[str, Any], env_num: int
    ) -> dict[str, Any]:
        # gymnasium's VectorEnv._add_info allocates a fresh mask array per key per env per
        # step (dict.get evaluates its default eagerly); this allocates once per key per step.
        n = self.num_envs
        for key, value in env_info.items():
            if key == "final_obs":
                array = vector_infos.get(key)
                if array is None:
                    array = np.full(n, fill_value=None, dtype=object)
                array[env_num] = value
            elif isinstance(value, dict):
                array = self._add_info(vector_infos.get(key, {}), value, env_num)
            else:
                array = vector_infos.get(key)
                if array is None:
                    if type(value) in _SCALARS or isinstance(value, np.number):
                        array = np.zeros(n, dtype=type(value))
                    elif isinstance(value, np.ndarray):
                        array = np.zeros((n, *value.shape), dtype=value.dtype)
                    else:
                        array = np.full(n, fill_value=None, dtype=object)
                array[env_num] = value
            mask_key = "_" + key
            mask = vector_infos.get(mask_key)
            if mask is None:
                mask = np.zeros(n, dtype=np.bool_)
            mask[env_num] = True
            vector_infos[key] = array
            vector_infos[mask_key] = mask
        return vector_infos
