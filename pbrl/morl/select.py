"""Pick one policy from a front by a teacher's comparisons of their clips.

Each front policy plays one deterministic clip (``clip_length`` steps from a shared start
seed). A single-elimination tournament asks the teacher about pairs of clips, one round per
:class:`~pbrl.data.QueryBatch` (ids ``select-r<round>-<match>``), until one policy is left:
``n - 1`` queries for ``n`` policies. A scripted teacher answers from a hidden utility
``u . r_t`` of the vector reward (its ``true_reward``); the objectives are also passed as
named ``reward_factors``. Answers are matched to queries by id; several answers to one query
(people) are a majority vote, and ties, skips, ``equal`` and unanswered queries are settled by
a coin from the caller's generator.

For :mod:`pbrl.envs` tasks (``pbrl:<task>``) the clips keep every step's ``sim_state``, so a
person can judge them as videos on the labelling page: :class:`StoringTeacher` puts each
round's queries into the feedback store the page serves before the human teacher is asked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pbrl.data import Feedback, Label, QueryBatch, SegmentBatch
from pbrl.morl.cmorl import FrontPolicy
from pbrl.morl.envs import MOVectorEnv
from pbrl.morl.ppo import policy_from_state
from pbrl.teachers.base import Teacher
from pbrl.teachers.storing import StoringTeacher  # noqa: F401 (re-exported; it lived here)


@dataclass
class Clips:
    """One clip per policy, zero-padded after an episode ends.

    Attributes:
        obs: ``(N, H, D_o)`` observations.
        actions: ``(N, H, D_a)`` actions.
        rewards: ``(N, H, m)`` vector rewards.
        sim_state: ``(N, H, D_s)`` simulator state before each step (the last one repeated
            after an episode ends), or ``None`` when the env does not report one.
    """

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    sim_state: np.ndarray | None


def policy_clips(
    policies: Sequence[FrontPolicy],
    env_fn: Callable[[], Any],
    length: int,
    seed: int,
) -> Clips:
    """Clips of every policy from the same start (see :class:`Clips`)."""
    obs_l, act_l, rew_l, state_l = [], [], [], []
    for p in policies:
        pol = policy_from_state(torch.load(p.path, weights_only=False))
        venv = MOVectorEnv([env_fn], seed=seed)
        states: list[np.ndarray] = []
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
                if "sim_state" in venv.infos[0]:
                    states.append(np.asarray(venv.infos[0]["sim_state"], np.float64))
                if term[0] or trunc[0]:
                    break
        finally:
            venv.close()
        obs_l.append(obs)
        act_l.append(act)
        rew_l.append(rew)
        if states:
            state_l.append(np.stack(states + [states[-1]] * (length - len(states))))
    sim_state = np.stack(state_l) if len(state_l) == len(policies) else None
    return Clips(np.stack(obs_l), np.stack(act_l), np.stack(rew_l), sim_state)


@dataclass
class TournamentResult:
    """The winner (index into the policies given) and every match played."""

    winner: int
    matches: list[tuple[int, int, int]]  # (first, second, winner)
    coin_flips: int = 0  # matches settled by a coin (tie, skip, equal or no answer)
    query_ids: list[str] = field(default_factory=list)

    @property
    def queries(self) -> int:
        """Queries asked (``n - 1``)."""
        return len(self.matches)


def _vote(answers: Sequence[Feedback]) -> Label | None:
    """FIRST or SECOND by majority of ``answers``; ``None`` for a tie or no clear answer."""
    first = sum(f.label == Label.FIRST for f in answers)
    second = sum(f.label == Label.SECOND for f in answers)
    if first == second:
        return None
    return Label.FIRST if first > second else Label.SECOND


def tournament(
    segments: SegmentBatch, teacher: Teacher, rng: np.random.Generator
) -> TournamentResult:
    """Single-elimination tournament over the ``N`` clips of ``segments`` (random draw)."""
    alive = list(rng.permutation(len(segments)))
    matches: list[tuple[int, int, int]] = []
    query_ids: list[str] = []
    coins = 0
    rnd = 0
    while len(alive) > 1:
        bye = [alive.pop()] if len(alive) % 2 else []
        first, second = alive[0::2], alive[1::2]
        ids = [f"select-r{rnd:02d}-{i:03d}" for i in range(len(first))]
        q = QueryBatch.from_members(
            [segments[np.array(first)], segments[np.array(second)]], ids=ids
        )
        answers: dict[str, list[Feedback]] = {}
        for f in teacher.label(q):
            answers.setdefault(f.query_id, []).append(f)
        nxt = []
        for a, b, qid in zip(first, second, ids, strict=True):
            vote = _vote(answers.get(qid, []))
            if vote is None:
                coins += 1
                w = a if rng.random() < 0.5 else b
            else:
                w = a if vote == Label.FIRST else b
            matches.append((int(a), int(b), int(w)))
            nxt.append(w)
        query_ids += ids
        alive = nxt + bye
        rnd += 1
    return TournamentResult(int(alive[0]), matches, coins, query_ids)


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
        env_name: recorded in the segments (the :mod:`pbrl.envs` name for clips that a
            labelling page re-renders from their ``sim_state``).
    """
    if not policies:
        raise ValueError("select_by_teacher needs at least one policy")
    if len(policies) == 1:
        return 0, TournamentResult(0, [])
    clips = policy_clips(policies, env_fn, clip_length, seed)
    rew = clips.rewards
    u = np.asarray(utility, np.float64)
    segs = SegmentBatch(
        obs=clips.obs,
        actions=clips.actions,
        true_reward=(rew @ u).astype(np.float32),
        reward_factors={n: rew[:, :, j] for j, n in enumerate(objectives)},
        sim_state=clips.sim_state,
        env_name=env_name,
    )
    res = tournament(segs, teacher, np.random.default_rng(seed))
    return res.winner, res
