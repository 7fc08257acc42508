"""Evaluate an offline policy: all episodes in lock-step, one batched policy call per step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import gymnasium as gym
import numpy as np

from pbrl.metrics import EvalResult


class OfflinePolicy(Protocol):
    """What the evaluator drives: ``act(obs (B, D_o), idx (B,)) -> (B, D_a)`` in [-1, 1].

    ``idx`` names the live episodes the rows of ``obs`` belong to (for policies that keep a
    per-episode history, like OPPO's); an optional ``reset_eval(n)`` starts ``n`` episodes.
    """

    def act(self, obs: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        """Actions in [-1, 1] for the live episodes ``idx``."""
        ...


def evaluate_offline(
    envs: Sequence[gym.Env], agent: OfflinePolicy, seed: int, record_states: bool = False
) -> EvalResult:
    """One episode in each of ``envs``, stepped together; episode ``i`` is reset with ``seed + i``.

    Returns the same :class:`~pbrl.metrics.EvalResult` as the online evaluator (true return,
    length, success rate where the task has one).
    """
    n = len(envs)
    space = envs[0].action_space
    low, high = space.low.astype(np.float64), space.high.astype(np.float64)
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]).astype(np.float32)
    reset = getattr(agent, "reset_eval", None)
    if callable(reset):
        reset(n)
    alive = np.ones(n, bool)
    ret = np.zeros(n)
    length = np.zeros(n, np.int64)
    success = np.zeros(n, bool)
    has_success = False
    states: list[np.ndarray] = []
    while alive.any():
        idx = np.flatnonzero(alive)
        act = np.clip(np.asarray(agent.act(obs[idx], idx), np.float64), -1.0, 1.0)
        act = low + (act + 1.0) * 0.5 * (high - low)
        for j, i in enumerate(idx):
            o, r, term, trunc, info = envs[i].step(act[j].astype(space.dtype))
            if record_states and i == 0:
                states.append(info["sim_state"])
            ret[i] += r
            length[i] += 1
            if "success" in info:
                has_success = True
                success[i] |= bool(info["success"])
            obs[i] = o
            if term or trunc:
                alive[i] = False
    return EvalResult(ret, None, length, success if has_success else None, states)
