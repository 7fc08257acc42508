"""A gymnasium ``SyncVectorEnv`` that takes pbrl's contract keys as columns, not dicts.

Every pbrl step info carries ``true_reward``, a ``reward_factors`` dict, ``sim_state`` and
(where the task has one) ``success`` on top of the suite's own keys. gymnasium's
``VectorEnv._add_info`` merges infos one key at a time per env per step — a few microseconds
per env step, which is 5-20 % of a cheap MuJoCo step. :class:`PbrlSyncVectorEnv` produces the
identical info layout (values stacked over envs, a boolean ``_key`` mask per key, nested dicts
merged recursively, ``final_obs`` as an object array) but, in the ``NEXT_STEP`` and
``DISABLED`` autoreset modes, its :class:`~pbrl.envs.base.PbrlEnv` sub-envs write the contract
keys straight into preallocated arrays (:class:`InfoColumns`), which become the infos' arrays
with one copy per key per vector step. The suite's own keys still go through the (faster,
layout-identical) ``_add_info`` below. ``SAME_STEP`` (whose ``final_info`` holds the step
infos) and sub-envs that are wrapped or opt out keep the per-env dict path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

_SCALARS = (int, float, bool)


class InfoColumns:
    """Per-env rows of the contract keys for one vector step (see the module docstring).

    Sub-envs call :meth:`put_step` / :meth:`put_state`; the vector env calls :meth:`clear`
    before and :meth:`merge_into` after stepping them.
    """

    def __init__(self, n: int, factor_names: tuple[str, ...], state_dim: int):
        self.n, self.names = int(n), tuple(factor_names)
        self.true_reward = np.zeros(n, np.float64)
        self.factors = np.zeros((n, len(self.names)), np.float64)
        self.sim_state = np.zeros((n, state_dim), np.float64)
        self.success = np.zeros(n, np.bool_)
        self.stepped = np.zeros(n, np.bool_)  # rows with true_reward and factors
        self.has_state = np.zeros(n, np.bool_)
        self.has_success = np.zeros(n, np.bool_)
        # How many rows each mask has set (Python ints: cheaper than numpy's any()/all()).
        self.n_stepped = self.n_state = self.n_success = 0

    def clear(self) -> None:
        """Forget which rows were written (values are masked on the way out)."""
        self.stepped.fill(False)
        self.has_state.fill(False)
        self.has_success.fill(False)
        self.n_stepped = self.n_state = self.n_success = 0

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
        if len(factors) != len(self.names):
            raise ValueError(
                f"env {i} returned factors {sorted(factors)}, expected {self.names}; a "
                "PbrlEnv's reward_factors must be exactly its factor_names"
            )
        self.true_reward[i] = reward
        self.factors[i] = [factors[k] for k in self.names]
        self.sim_state[i] = state
        self.stepped[i] = True
        self.has_state[i] = True
        self.n_stepped += 1
        self.n_state += 1
        if success is not None:
            self.success[i] = bool(success)
            self.has_success[i] = True
            self.n_success += 1

    def put_state(self, i: int, state: np.ndarray) -> None:
        """Row ``i`` of a reset: only the initial state."""
        self.sim_state[i] = state
        self.has_state[i] = True
        self.n_state += 1

    @staticmethod
    def _masked(values: np.ndarray, mask: np.ndarray, full: bool) -> np.ndarray:
        if full:
            return values.copy()
        m = mask.reshape(-1, *([1] * (values.ndim - 1)))
        return np.where(m, values, np.zeros((), values.dtype))

    def merge_into(self, infos: dict[str, Any]) -> dict[str, Any]:
        """Add the written keys to ``infos`` exactly as gymnasium's ``_add_info`` would."""
        stepped, n = self.stepped, self.n
        if self.n_stepped:
            full = self.n_stepped == n
            infos["true_reward"] = self._masked(self.true_reward, stepped, full)
            infos["_true_reward"] = stepped.copy()
            rf: dict[str, Any] = {}
            for j, k in enumerate(self.names):
                rf[k] = self._masked(self.factors[:, j], stepped, full)
                rf["_" + k] = stepped.copy()
            infos["reward_factors"] = rf
            infos["_reward_factors"] = stepped.copy()
        if self.n_state:
            infos["sim_state"] = self._masked(self.sim_state, self.has_state, self.n_state == n)
            infos["_sim_state"] = self.has_state.copy()
        if self.n_success:
            infos["success"] = self._masked(self.success, self.has_success, self.n_success == n)
            infos["_success"] = self.has_success.copy()
        return infos


class PbrlSyncVectorEnv(gym.vector.SyncVectorEnv):
    """``SyncVectorEnv`` with pbrl's contract keys merged as columns (same info layout)."""

    def __init__(self, env_fns: Any, *args: Any, **kwargs: Any):
        super().__init__(env_fns, *args, **kwargs)
        self._columns: InfoColumns | None = None
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
        """As gymnasium's, with the contract keys from the columns."""
        cols = self._columns
        if cols is None:
            return super().step(actions)
        cols.clear()
        obs, rew, term, trunc, infos = super().step(actions)
        return obs, rew, term, trunc, cols.merge_into(infos)

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
