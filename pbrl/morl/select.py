"""Pick one policy from a front by a teacher's comparisons of their clips.

Each front policy plays one deterministic clip (``clip_length`` steps from a shared start
seed). A single-elimination tournament asks the teacher about pairs of clips, one round per
:class:`~pbrl.data.QueryBatch`, until one policy is left: ``n - 1`` queries for ``n``
policies. A scripted teacher answers from a hidden utility ``u . r_t`` of the vector reward
(its ``true_reward``); the objectives are also passed as named ``reward_factors``. Ties and
skips are settled by a coin from the caller's generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pbrl.data import Label, QueryBatch, SegmentBatch
from pbrl.morl.cmorl import FrontPolicy
from pbrl.morl.envs import MOVectorEnv
from pbrl.morl.ppo import policy_from_state
from pbrl.teachers.base import Teacher


def policy_clips(
    policies: Sequence[FrontPolicy],
    env_fn: Callable[[], Any],
    length: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clips of every policy from the same start (zero-padded after an episode ends).

    Returns:
        ``obs (N, H, D_o)``, ``actions (N, H, D_a)``, ``rewards (N, H, m)``.
    """
    obs_l, act_l, rew_l = [], [], []
    for p in policies:
        pol = policy_from_state(torch.load(p.path, weights_only=False))
        venv = MOVectorEnv([env_fn], seed=seed)
        try:
            o = venv.reset(seed)
            obs = np.zeros((length, o.shape[1]), np.float32)
            act = np.zeros((length, int(np.prod(venv.single_action_space.shape))), np.float32)  # type: ignore[arg-type]
            rew = np.zeros((length, venv.num_objectives), np.float32)
            for t in range(length):
                a = pol.act(o, deterministic=True)
                obs[t], act[t] = o[0], a[0]
                o, r, term, trunc, _ = venv.step(a)
                rew[t] = r[0]
                if term[0] or trunc[0]:
                    break
        finally:
            venv.close()
        obs_l.append(obs)
        act_l.append(act)
        rew_l.append(rew)
    return np.stack(obs_l), np.stack(act_l), np.stack(rew_l)


@dataclass
class TournamentResult:
    """The winner (index into the policies given) and every match played."""

    winner: int
    matches: list[tuple[int, int, int]]  # (first, second, winner)

    @property
    def queries(self) -> int:
        """Queries asked (``n - 1``)."""
        return len(self.matches)


def tournament(
    segments: SegmentBatch, teacher: Teacher, rng: np.random.Generator
) -> TournamentResult:
    """Single-elimination tournament over the ``N`` clips of ``segments`` (random draw)."""
    alive = list(rng.permutation(len(segments)))
    matches: list[tuple[int, int, int]] = []
    while len(alive) > 1:
        bye = [alive.pop()] if len(alive) % 2 else []
        first, second = alive[0::2], alive[1::2]
        q = QueryBatch.from_members([segments[np.array(first)], segments[np.array(second)]])
        fb = teacher.label(q)
        nxt = []
        for a, b, f in zip(first, second, fb, strict=True):
            if f.label == Label.FIRST:
                w = a
            elif f.label == Label.SECOND:
                w = b
            else:
                w = a if rng.random() < 0.5 else b
            matches.append((int(a), int(b), int(w)))
            nxt.append(w)
        alive = nxt + bye
    return TournamentResult(int(alive[0]), matches)


def select_by_teacher(
    policies: Sequence[FrontPolicy],
    env_fn: Callable[[], Any],
    teacher: Teacher,
    utility: np.ndarray,
    objectives: Sequence[str],
    clip_length: int = 50,
    seed: int = 0,
    env_name: str = "",
) -> tuple[int, TournamentResult]:
    """Run the tournament on ``policies``; returns the chosen policy's index and the matches.

    Args:
        policies: the front.
        env_fn: builds one vector-reward env.
        teacher: a :class:`~pbrl.teachers.base.Teacher` answering pair queries.
        utility: ``(m,)`` hidden utility weights (only the teacher sees the scalar reward).
        objectives: objective names (the segments' ``reward_factors``).
        clip_length: steps per clip.
        seed: start seed of every clip and the tournament draw.
        env_name: recorded in the segments.
    """
    if not policies:
        raise ValueError("select_by_teacher needs at least one policy")
    if len(policies) == 1:
        return 0, TournamentResult(0, [])
    obs, act, rew = policy_clips(policies, env_fn, clip_length, seed)
    u = np.asarray(utility, np.float64)
    segs = SegmentBatch(
        obs=obs,
        actions=act,
        true_reward=(rew @ u).astype(np.float32),
        reward_factors={n: rew[:, :, j] for j, n in enumerate(objectives)},
        env_name=env_name,
    )
    res = tournament(segs, teacher, np.random.default_rng(seed))
    return res.winner, res
