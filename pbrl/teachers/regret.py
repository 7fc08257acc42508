"""The regret preference model as a synthetic teacher (Knox et al., TMLR 2024).

A person following the regret model prefers the segment that deviates less from optimal
behaviour. With the optimal advantage ``A*(s, a) = Q*(s, a) - V*(s)`` of the true reward,

    P(sigma_1 > sigma_0) = logistic( beta * (sum_t A*(sigma_1) - sum_t A*(sigma_0)) ),

``beta`` the rationality scale (``inf``: always the lower-regret segment). With deterministic
transitions and ``gamma = 1`` the summed advantage telescopes to the paper's
``-regret(sigma) = sum_t r_t + V*(s_H) - V*(s_0)``; the summed-advantage form is the paper's
general (stochastic-transition) definition and only needs the ``(s_t, a_t)`` of a segment,
which is what a :class:`~pbrl.data.SegmentBatch` holds. Absorbing-state padding contributes
``A* = 0``.

``A*`` comes from an *oracle* (:class:`AdvantageOracle`):

- :class:`TabularOracle`: exact ``Q*``/``V*`` of a :class:`~pbrl.tabular.TabularMDP` by policy
  iteration; segment observations hold the state index, actions the action index.
- :class:`CriticOracle`: callables ``Q(s, a)`` and ``V(s)``; :meth:`CriticOracle.from_sb3`
  loads a stable-baselines3 SAC trained on the true reward and uses ``Q = min_i Q_i(s, a)``,
  ``V(s) = Q(s, mu(s))`` (``mu`` the deterministic actor). Build one with
  ``python -m pbrl.teachers.regret --env halfcheetah --steps 300000 --out oracle.zip``. A learned
  critic is only an approximation of ``Q*``: its advantages carry its errors, and
  ``V(s) = Q(s, mu(s))`` need not be the max over actions, so some ``A`` may be positive.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from scipy.special import expit

from pbrl.data import Feedback, Label, QueryBatch
from pbrl.tabular.delivery import TabularMDP, policy_iteration

__all__ = [
    "AdvantageOracle",
    "CriticOracle",
    "RegretTeacher",
    "TabularOracle",
    "train_oracle_critic",
]


@runtime_checkable
class AdvantageOracle(Protocol):
    """Anything that gives the optimal advantage of the true reward for segment steps."""

    def advantage(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """``obs (N, H, D_o), actions (N, H, D_a) -> (N, H)`` float64 ``A*(s_t, a_t)``."""
        ...


class TabularOracle:
    """Exact ``A* = Q* - V*`` of a tabular MDP.

    Segments encode the state index in ``obs[..., 0]`` and the action index in
    ``actions[..., 0]`` (as :func:`pbrl.tabular.delivery` rollouts produce them).

    Args:
        mdp: the MDP (its ``gamma`` is used).
        reward: ``(S, A)`` reward the teacher judges by; the MDP's true reward by default.
    """

    def __init__(self, mdp: TabularMDP, reward: np.ndarray | None = None) -> None:
        self.mdp = mdp
        self.v, self.q, self.policy = policy_iteration(mdp, reward)
        self.adv = self.q - self.v[:, None]  # (S, A), <= 0, 0 at absorbing states

    def advantage(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """``A*`` of each step; states/actions are rounded from the float encodings."""
        s = np.rint(np.asarray(obs)[..., 0]).astype(np.int64)
        a = np.rint(np.asarray(actions)[..., 0]).astype(np.int64)
        if s.min(initial=0) < 0 or s.max(initial=0) >= self.mdp.n_states:
            raise ValueError(
                f"obs[..., 0] must hold state indices in [0, {self.mdp.n_states}); got "
                f"[{s.min()}, {s.max()}]: are these tabular segments?"
            )
        if a.min(initial=0) < 0 or a.max(initial=0) >= self.mdp.n_actions:
            raise ValueError(
                f"actions[..., 0] must hold action indices in [0, {self.mdp.n_actions})"
            )
        return self.adv[s, a]


class CriticOracle:
    """``A(s, a) = Q(s, a) - V(s)`` from two callables (a critic trained on the true reward).

    Args:
        q_fn: ``obs (B, D_o), act (B, D_a) -> (B,)`` action values.
        v_fn: ``obs (B, D_o) -> (B,)`` state values.
        chunk: rows per call.
    """

    def __init__(
        self,
        q_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
        v_fn: Callable[[np.ndarray], np.ndarray],
        chunk: int = 8192,
    ) -> None:
        self.q_fn, self.v_fn, self.chunk = q_fn, v_fn, int(chunk)

    def advantage(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """``(N, H)`` float64 advantages, evaluated in chunks of flattened steps."""
        obs, actions = np.asarray(obs), np.asarray(actions)
        if obs.ndim != 3 or actions.ndim != 3 or obs.shape[:2] != actions.shape[:2]:
            raise ValueError(
                f"expected obs (N, H, D_o) and actions (N, H, D_a), got {obs.shape} and "
                f"{actions.shape}"
            )
        n, h = obs.shape[:2]
        o = obs.reshape(n * h, -1)
        a = actions.reshape(n * h, -1)
        out = np.empty(n * h)
        for s in range(0, n * h, self.chunk):
            sl = slice(s, s + self.chunk)
            out[sl] = np.asarray(self.q_fn(o[sl], a[sl]), np.float64).reshape(-1) - np.asarray(
                self.v_fn(o[sl]), np.float64
            ).reshape(-1)
        return out.reshape(n, h)

    @classmethod
    def from_sb3(cls, path: str | Path, device: str = "cpu") -> CriticOracle:
        """Load a stable-baselines3 SAC zip (see :func:`train_oracle_critic`).

        ``Q(s, a) = min_i Q_i(s, a)`` with ``a`` as segments hold it: already in SAC's
        ``[-1, 1]`` convention (:func:`pbrl.agents.sb3.scale_action`, the replay buffer's and the
        datasets'), so it is not rescaled again, only clipped to the box; ``V(s) = Q(s, mu(s))``
        with ``mu`` the deterministic (mean) actor.
        """
        import torch
        from stable_baselines3 import SAC

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"no oracle critic at {path}; build one with `python -m pbrl.teachers.regret "
                f"--env <name> --steps <n> --out {path}` (SAC on the true reward)"
            )
        model = SAC.load(str(path), device=device)
        policy = model.policy
        policy.set_training_mode(False)

        def q_scaled(o: np.ndarray, a_scaled: torch.Tensor) -> torch.Tensor:
            ot = torch.as_tensor(o, dtype=torch.float32, device=policy.device)
            qs = policy.critic(ot, a_scaled)
            return torch.min(torch.cat(qs, dim=1), dim=1).values

        @torch.no_grad()
        def q_fn(o: np.ndarray, a: np.ndarray) -> np.ndarray:
            a_unit = np.clip(np.asarray(a, np.float32), -1.0, 1.0)  # segments: [-1, 1] already
            at = torch.as_tensor(a_unit, dtype=torch.float32, device=policy.device)
            return q_scaled(o, at).cpu().numpy()

        @torch.no_grad()
        def v_fn(o: np.ndarray) -> np.ndarray:
            ot = torch.as_tensor(o, dtype=torch.float32, device=policy.device)
            mu = policy.actor(ot, deterministic=True)
            return q_scaled(o, mu).cpu().numpy()

        return cls(q_fn, v_fn)


class RegretTeacher:
    """A synthetic teacher whose pair labels follow the regret preference model.

    Args:
        oracle: gives ``A*`` of the true reward (:class:`TabularOracle`, :class:`CriticOracle`).
        beta: rationality scale; ``inf`` answers the lower-regret segment (ties: EQUAL), a
            finite ``beta > 0`` samples ``Bernoulli(logistic(beta * diff))``.
        decimals: round each segment's summed advantage to this many decimals before
            comparing (the paper's labeller uses 2, which creates ties); ``None`` keeps it exact.
        eps_mistake: probability of flipping a label.
        soft: also return ``Feedback.soft`` = this teacher's probability of answering second.
        seed: seed of the teacher's generator (stochastic labels, mistakes).
        teacher_id: recorded in every feedback.
    """

    def __init__(
        self,
        oracle: AdvantageOracle,
        beta: float = math.inf,
        decimals: int | None = None,
        eps_mistake: float = 0.0,
        soft: bool = False,
        seed: int = 0,
        teacher_id: str = "regret",
    ) -> None:
        beta = float(beta)
        if not beta > 0:
            raise ValueError(f"beta must be > 0 (inf for the fully rational teacher), got {beta}")
        if not 0.0 <= eps_mistake <= 1.0:
            raise ValueError(f"eps_mistake must lie in [0, 1], got {eps_mistake}")
        if not isinstance(oracle, AdvantageOracle):
            raise TypeError(
                f"oracle must have an advantage(obs, actions) method, got {type(oracle).__name__}"
            )
        self.oracle = oracle
        self.beta = beta
        self.decimals = None if decimals is None else int(decimals)
        self.eps_mistake = float(eps_mistake)
        self.soft = bool(soft)
        self.teacher_id = str(teacher_id)
        self.rng = np.random.default_rng(seed)

    def __repr__(self) -> str:
        return (
            f"RegretTeacher(teacher_id={self.teacher_id!r}, beta={self.beta}, "
            f"decimals={self.decimals}, eps_mistake={self.eps_mistake}, "
            f"oracle={type(self.oracle).__name__})"
        )

    def segment_advantage(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """``(N,)`` summed optimal advantage ``-regret(sigma)`` (rounded if ``decimals``)."""
        total = np.asarray(self.oracle.advantage(obs, actions), np.float64).sum(axis=1)
        if not np.isfinite(total).all():
            raise ValueError("the oracle returned NaN or inf advantages")
        return total if self.decimals is None else np.round(total, self.decimals)

    def prob_second(self, queries: QueryBatch) -> np.ndarray:
        """``(M,)`` ``P(second > first)`` under the regret model (before mistakes)."""
        first, second = queries.member(0), queries.member(1)
        diff = self.segment_advantage(second.obs, second.actions) - self.segment_advantage(
            first.obs, first.actions
        )
        if math.isinf(self.beta):
            return np.where(diff > 0, 1.0, np.where(diff < 0, 0.0, 0.5))
        return expit(self.beta * diff)

    def label(self, queries: QueryBatch) -> list[Feedback]:
        """Answer ``M`` pair queries (the true reward fields are not read: ``A*`` is)."""
        if queries.kind != "pair" or queries.k != 2:
            raise ValueError(
                f"RegretTeacher answers pair queries only, got kind={queries.kind!r}, k={queries.k}"
            )
        m = len(queries)
        p = self.prob_second(queries)
        if math.isinf(self.beta):
            second = p == 1.0
            tie = p == 0.5
        else:
            second = self.rng.random(m) < p
            tie = np.zeros(m, bool)
        if self.eps_mistake > 0:
            second ^= self.rng.random(m) < self.eps_mistake
        labels = np.where(second, int(Label.SECOND), int(Label.FIRST))
        labels[tie] = int(Label.EQUAL)
        soft = p + self.eps_mistake * (1.0 - 2.0 * p)
        now = time.time()
        return [
            Feedback(
                query_id=qid,
                label=Label(int(labels[i])),
                teacher_id=self.teacher_id,
                soft=float(soft[i]) if self.soft else None,
                timestamp=now,
            )
            for i, qid in enumerate(queries.ids)
        ]

    def state_dict(self) -> dict[str, Any]:
        """The generator state."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        if "rng" not in state:
            raise KeyError("teacher state is missing 'rng'")
        self.rng.bit_generator.state = state["rng"]


def make_regret_teacher(
    critic: str | Path | None = None,
    device: str = "cpu",
    **kwargs: Any,
) -> RegretTeacher:
    """Build a :class:`RegretTeacher` over an SB3 SAC oracle critic saved at ``critic``.

    Used by :func:`pbrl.teachers.make_teacher` for ``teacher=regret``.
    """
    if critic is None or str(critic) in ("", "???"):
        raise ValueError(
            "teacher=regret needs an oracle critic: set teacher.critic=<path to an SB3 SAC zip "
            "trained on the true reward>; build one with `python -m pbrl.teachers.regret --env "
            "<name> --steps <n> --out <path>`"
        )
    return RegretTeacher(CriticOracle.from_sb3(critic, device=device), **kwargs)


def train_oracle_critic(
    env_name: str,
    steps: int,
    out: str | Path,
    seed: int = 0,
    env_kwargs: Mapping[str, Any] | None = None,
    learning_starts: int = 5000,
    net_arch: Sequence[int] = (256, 256),
    device: str = "auto",
) -> Path:
    """Train SAC on an env's true reward and save it as an oracle for :class:`CriticOracle`.

    Args:
        env_name: a :mod:`pbrl.envs` registry name.
        steps: environment steps.
        out: where to write the SB3 zip.
        seed: seed of SAC and the env.
        env_kwargs: extra env arguments (e.g. ``max_episode_steps``).
        learning_starts: random steps before updates.
        net_arch: actor and critic hidden sizes.
        device: torch device for SAC.

    Returns:
        the written path.
    """
    from stable_baselines3 import SAC

    from pbrl import envs as pbrl_envs
    from pbrl.agents.sb3 import make_vec_env

    kw = dict(env_kwargs or {})
    venv = make_vec_env([lambda: pbrl_envs.make_env(env_name, seed=seed, **kw)])
    model = SAC(
        "MlpPolicy",
        venv,
        learning_starts=min(int(learning_starts), max(1, int(steps) // 2)),
        policy_kwargs={"net_arch": list(net_arch)},
        seed=seed,
        device=device,
        verbose=0,
    )
    model.learn(total_timesteps=int(steps))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(str(out))
    venv.close()
    return out if out.suffix == ".zip" else out.with_suffix(out.suffix + ".zip")


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m pbrl.teachers.regret --env NAME --steps N --out PATH``: build an oracle."""
    ap = argparse.ArgumentParser(
        description="Train SAC on an env's true reward: the oracle critic of teacher=regret."
    )
    ap.add_argument("--env", required=True, help="pbrl.envs registry name, e.g. halfcheetah")
    ap.add_argument("--steps", type=int, default=300_000)
    ap.add_argument("--out", required=True, help="output zip path")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-episode-steps", type=int, default=None)
    ap.add_argument("--learning-starts", type=int, default=5000)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    kw = {} if args.max_episode_steps is None else {"max_episode_steps": args.max_episode_steps}
    path = train_oracle_critic(
        args.env,
        args.steps,
        args.out,
        seed=args.seed,
        env_kwargs=kw,
        learning_starts=args.learning_starts,
        device=args.device,
    )
    print(f"oracle critic written to {path}; use teacher=regret teacher.critic={path}")


if __name__ == "__main__":
    main()
