"""Environments with a vector reward, and a synchronous vector env that keeps it a vector.

``make_mo_env(name, seed)`` returns a gymnasium env whose ``step`` reward is an ``(m,)`` float
array. Names:

- MO-Gymnasium tasks (extra ``morl``): ``mo-hopper-2d`` (forward, height; the C-MORL paper's
  2-objective hopper), ``mo-hopper`` (3: forward, height, energy), ``mo-halfcheetah`` (run,
  energy), ``mo-ant-2d``, ``mo-walker2d``, ``mo-swimmer``, ... or any full MO-Gymnasium id
  (``mo-hopper-2d-v4``).
- ``pbrl:<name>`` for any :mod:`pbrl.envs` task: its named ``reward_factors`` become the
  objectives (all of them, or those given as ``objectives=[...]``), e.g. ``pbrl:hopper``.
- ``mo-point-2d`` / ``mo-point-3d``: a built-in toy with a known front (tests, examples).

:class:`MOVectorEnv` steps ``n`` copies and returns ``(n, m)`` rewards; it resets finished
copies in the same step and hands back their final observation so truncated episodes can be
bootstrapped (gymnasium's own vector envs store rewards as ``(n,)`` scalars).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np


@dataclass(frozen=True)
class MOEnvSpec:
    """A named vector-reward task.

    Attributes:
        gym_id: the MO-Gymnasium id (``None`` for pbrl-native tasks).
        objectives: objective names, in reward order.
        ref_point: default hypervolume reference (C-MORL's scripts where they give one).
    """

    gym_id: str | None
    objectives: tuple[str, ...]
    ref_point: tuple[float, ...]


MO_GYM: dict[str, MOEnvSpec] = {
    "mo-hopper-2d": MOEnvSpec("mo-hopper-2d-v4", ("forward", "height"), (-100.0, -100.0)),
    "mo-hopper": MOEnvSpec("mo-hopper-v5", ("forward", "height", "energy"), (-100.0,) * 3),
    "mo-halfcheetah": MOEnvSpec("mo-halfcheetah-v5", ("run", "energy"), (-100.0, -100.0)),
    "mo-ant-2d": MOEnvSpec("mo-ant-2d-v4", ("x_velocity", "y_velocity"), (-100.0, -100.0)),
    "mo-ant": MOEnvSpec("mo-ant-v5", ("x_velocity", "y_velocity", "energy"), (-100.0,) * 3),
    "mo-walker2d": MOEnvSpec("mo-walker2d-v5", ("forward", "energy"), (-100.0, -100.0)),
    "mo-swimmer": MOEnvSpec("mo-swimmer-v5", ("forward", "energy"), (-100.0, -100.0)),
    "mo-humanoid": MOEnvSpec("mo-humanoid-v5", ("forward", "energy"), (-100.0, -100.0)),
    "mo-point-2d": MOEnvSpec(None, ("x", "y"), (0.0, 0.0)),
    "mo-point-3d": MOEnvSpec(None, ("x", "y", "z"), (0.0, 0.0, 0.0)),
}
"""Short names; the reference points are C-MORL's (``(-100, ...)``), 0 for the toy."""


class PointMO(gym.Env):
    """Toy: a point moves by an action clipped to the unit ball; reward = the move (``(m,)``).

    Every objective is the displacement along one axis, so objectives compete for the unit
    step budget. The Pareto front of undiscounted returns is the positive orthant of the
    sphere of radius ``horizon``; the optimum of ``w . r`` is the constant move ``w / |w|``.
    Observation: the position (scaled by ``1 / horizon``) and the elapsed fraction of the
    episode. Episodes are truncated after ``horizon`` steps.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, num_objectives: int = 2, horizon: int = 20):
        self.m = int(num_objectives)
        self.horizon = int(horizon)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (self.m + 1,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.m,), np.float32)
        self.reward_space = gym.spaces.Box(-1.0, 1.0, (self.m,), np.float32)
        self._pos = np.zeros(self.m)
        self._t = 0

    def _obs(self) -> np.ndarray:
        return np.append(self._pos / self.horizon, self._t / self.horizon).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # type: ignore[override]
        """Start at the origin."""
        super().reset(seed=seed)
        self._pos = np.zeros(self.m)
        self._t = 0
        return self._obs(), {}

    def step(self, action):  # type: ignore[no-untyped-def,override]
        """Move by the action projected onto the unit ball; the reward is the move."""
        a = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
        a = a / max(1.0, float(np.linalg.norm(a)))
        self._pos += a
        self._t += 1
        return self._obs(), a.astype(np.float32), False, self._t >= self.horizon, {}


class FactorObjectives(gym.Wrapper):
    """A :mod:`pbrl.envs` task whose named ``reward_factors`` are the vector reward."""

    def __init__(self, env: gym.Env, objectives: Sequence[str]):
        super().__init__(env)
        names = tuple(getattr(env, "factor_names", ()))
        bad = [o for o in objectives if o not in names]
        if bad or not objectives:
            raise ValueError(f"objectives {list(objectives)} must be reward factors of {names}")
        self.objectives = tuple(objectives)
        m = len(self.objectives)
        self.reward_space = gym.spaces.Box(-np.inf, np.inf, (m,), np.float32)

    def step(self, action):  # type: ignore[no-untyped-def,override]
        """Step; the reward becomes the chosen factors, the scalar one stays in the info."""
        obs, _, terminated, truncated, info = self.env.step(action)
        f = info["reward_factors"]
        r = np.array([f[o] for o in self.objectives], np.float32)
        return obs, r, terminated, truncated, info


def num_objectives(env: gym.Env) -> int:
    """``m``: the size of ``env``'s ``reward_space`` (found through its wrappers)."""
    space = env.get_wrapper_attr("reward_space")
    return int(np.prod(space.shape))


def objective_names(name: str, objectives: Sequence[str] | None = None) -> tuple[str, ...]:
    """The objective names of ``name`` (without building it, except for ``pbrl:`` tasks)."""
    if name.startswith("pbrl:"):
        if objectives:
            return tuple(objectives)
        env = make_mo_env(name)
        out = env.objectives  # type: ignore[attr-defined]
        env.close()
        return tuple(out)
    if name in MO_GYM:
        return MO_GYM[name].objectives
    env = make_mo_env(name)
    m = num_objectives(env)
    env.close()
    return tuple(f"obj{j}" for j in range(m))


def default_ref_point(name: str, num_objectives: int) -> tuple[float, ...]:
    """The registered reference point of ``name``, else C-MORL's ``(-100, ...)``."""
    if name in MO_GYM:
        return MO_GYM[name].ref_point
    return (-100.0,) * num_objectives


def make_mo_env(
    name: str,
    seed: int | None = None,
    max_episode_steps: int | None = None,
    objectives: Sequence[str] | None = None,
) -> gym.Env:
    """Build one vector-reward env (see the module docstring for the names).

    Args:
        name: a short name of :data:`MO_GYM`, an MO-Gymnasium id, or ``pbrl:<task>``.
        seed: seeds the action space (resets are seeded by the caller).
        max_episode_steps: cut episodes after this many steps.
        objectives: for ``pbrl:`` tasks, the reward factors to use (default: all).

    Raises:
        ImportError: an MO-Gymnasium task without the ``morl`` extra installed.
    """
    if name.startswith("pbrl:"):
        from pbrl.envs import make_env

        base = make_env(name[5:], seed=None, max_episode_steps=max_episode_steps)
        env: gym.Env = FactorObjectives(base, objectives or base.factor_names)  # type: ignore[attr-defined]
    elif name in ("mo-point-2d", "mo-point-3d"):
        env = PointMO(num_objectives=2 if name.endswith("2d") else 3)
        if max_episode_steps is not None:
            env = PointMO(env.m, horizon=max_episode_steps)  # type: ignore[attr-defined]
    else:
        try:
            import mo_gymnasium  # noqa: F401  (registers the mo-* ids)
        except ImportError as err:
            raise ImportError(
                f"environment {name!r} is an MO-Gymnasium task; install it with "
                "`pip install 'pbrl[morl]'` (or use pbrl:<task> / mo-point-2d)"
            ) from err
        gym_id = MO_GYM[name].gym_id if name in MO_GYM else name
        kwargs: dict[str, Any] = {"disable_env_checker": True}
        if max_episode_steps is not None:
            kwargs["max_episode_steps"] = max_episode_steps
        try:
            env = gym.make(gym_id, **kwargs)
        except gym.error.Error as err:
            raise ValueError(
                f"unknown MO environment {name!r}; short names: {sorted(MO_GYM)}, or an "
                "MO-Gymnasium id, or pbrl:<task>"
            ) from err
    if seed is not None:
        env.action_space.seed(seed)
    return env


EnvFn = Callable[[], gym.Env]


class MOVectorEnv:
    """``n`` vector-reward envs stepped in turn (same-step autoreset).

    Attributes:
        num_envs: ``n``.
        num_objectives: ``m``.
    """

    def __init__(self, env_fns: Sequence[EnvFn], seed: int = 0):
        if not env_fns:
            raise ValueError("MOVectorEnv needs at least one env")
        self.envs = [fn() for fn in env_fns]
        self.num_envs = len(self.envs)
        self.single_observation_space = self.envs[0].observation_space
        self.single_action_space = self.envs[0].action_space
        self.num_objectives = num_objectives(self.envs[0])
        self._seed = int(seed)
        self.infos: list[dict[str, Any]] = [{} for _ in self.envs]  # each copy's last step info
        self._low = np.asarray(self.single_action_space.low, np.float64)  # type: ignore[attr-defined]
        self._high = np.asarray(self.single_action_space.high, np.float64)  # type: ignore[attr-defined]

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Reset all; copy ``i`` gets seed ``seed + i``. Returns ``(n, D_o)`` observations."""
        base = self._seed if seed is None else int(seed)
        return np.stack([e.reset(seed=base + i)[0] for i, e in enumerate(self.envs)]).astype(
            np.float32
        )

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[int, np.ndarray]]:
        """Step every copy with ``actions`` (clipped to the action box).

        Returns:
            ``obs (n, D_o)`` (the first observation of the next episode where one ended),
            ``rewards (n, m)``, ``terminated (n,)``, ``truncated (n,)`` and
            ``final_obs``: env index -> last observation of each episode that ended.
            Each copy's step ``info`` (before any reset) is kept in :attr:`infos`.
        """
        obs, rew, term, trunc, final = [], [], [], [], {}
        actions = np.clip(np.asarray(actions, np.float64), self._low, self._high)
        for i, e in enumerate(self.envs):
            o, r, te, tr, self.infos[i] = e.step(actions[i])
            if te or tr:
                final[i] = np.asarray(o, np.float32)
                o, _ = e.reset()
            obs.append(o)
            rew.append(np.asarray(r, np.float64).reshape(-1))
            term.append(bool(te))
            trunc.append(bool(tr) and not te)
        return (
            np.stack(obs).astype(np.float32),
            np.stack(rew),
            np.array(term),
            np.array(trunc),
            final,
        )

    def close(self) -> None:
        """Close every copy."""
        for e in self.envs:
            e.close()
