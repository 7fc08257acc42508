"""Environment registry: ``make_env(name, seed)``, ``make(name, num_envs, seed)``, ``names()``.

A suite is one module that calls :func:`register` for each of its tasks; every env it builds
is a :class:`~pbrl.envs.base.PbrlEnv` (reward factors, sim state, re-rendering).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# Headless rendering: MuJoCo's EGL backend needs no display (Linux, CPU or GPU).
if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import gymnasium as gym  # noqa: E402

# PyOpenGL announces at INFO level that an optional accelerator is missing; nobody needs that.
logging.getLogger("OpenGL").setLevel(logging.WARNING)

from pbrl.envs.base import PbrlEnv  # noqa: E402


class UnknownEnvError(KeyError):
    """An environment name that is not registered; the message lists the valid ones."""

    def __str__(self) -> str:
        return str(self.args[0])


class MissingExtraError(ImportError):
    """An optional suite's dependency is not installed; the message names the extra."""

    def __init__(self, suite: str, extra: str | None, package: str, how: str = ""):
        """Name what to install.

        Args:
            suite: the suite's display name.
            extra: the pbrl extra to install, or ``None`` when the package has none.
            package: the missing Python package.
            how: further install steps (appended).
        """
        head = f"the {suite} suite needs {package}, which is not installed; "
        if extra is not None:
            head += f"install it with `pip install 'pbrl[{extra}]'`" + (
                f", then {how}" if how else ""
            )
        else:
            head += how or f"install {package}"
        super().__init__(head)


@dataclass(frozen=True)
class EnvSpec:
    """A registered environment."""

    name: str
    factory: Callable[..., PbrlEnv]
    suite: str
    description: str


_REGISTRY: dict[str, EnvSpec] = {}
OBS_MODES = ("state", "pixels")


def register(name: str, factory: Callable[..., PbrlEnv], *, suite: str, description: str) -> None:
    """Add ``name`` to the registry; ``factory(seed=..., **kwargs)`` builds one env."""
    if name in _REGISTRY:
        raise ValueError(f"environment {name!r} is already registered")
    _REGISTRY[name] = EnvSpec(name, factory, suite, description)


def names(suite: str | None = None) -> list[str]:
    """Registered names, optionally of one suite."""
    return sorted(n for n, s in _REGISTRY.items() if suite is None or s.suite == suite)


def spec(name: str) -> EnvSpec:
    """The registry entry of ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownEnvError(
            f"unknown environment {name!r}; registered: {', '.join(names())}"
        ) from None


def make_env(
    name: str,
    seed: int | None = None,
    max_episode_steps: int | None = None,
    obs: str = "state",
    pixel_size: int | tuple[int, int] = 84,
    frame_stack: int = 3,
    reward_weights: Mapping[str, float] | None = None,
    **kwargs: Any,
) -> gym.Env:
    """One env, reset with ``seed`` if given; episodes cut at ``max_episode_steps`` if given.

    Args:
        name: a registered name (:func:`names`).
        seed: seeds the env's reset and its action space.
        max_episode_steps: cut episodes after this many steps (if sooner than the task).
        obs: ``"state"`` (the suite's vector observation) or ``"pixels"`` (``frame_stack``
            RGB frames of ``pixel_size``, channel-first uint8, rendered from the sim state).
        pixel_size: frame size, ``int`` (square) or ``(height, width)``; pixels only.
        frame_stack: frames per observation; pixels only.
        reward_weights: reward engineering — factor name -> weight (optionally ``"bias"``):
            ``step`` returns ``sum_k w_k factor_k + bias`` while ``info["true_reward"]``, the
            factors and the episode stats stay the true reward
            (:meth:`~pbrl.envs.base.PbrlEnv.set_reward_weights`). From ``pbrl-train``:
            ``'+env.kwargs.reward_weights={theta_sq:-1,theta_dot_sq:-0.5}'``.
        **kwargs: go to the suite's factory (e.g. ``gym.make`` options).

    The returned env is the suite's :class:`~pbrl.envs.base.PbrlEnv` (``obs="state"``) or a
    :class:`~pbrl.envs.pixels.PixelObservation` around it; both keep the info contract.

    Raises:
        UnknownEnvError: ``name`` is not registered (the message lists what is).
        MissingExtraError: the suite's optional dependency is not installed.
        ValueError: ``reward_weights`` names a factor the env does not have (the message lists
            its factors).
    """
    if obs not in OBS_MODES:
        raise ValueError(f"obs must be one of {OBS_MODES}, got {obs!r}")
    env: gym.Env = spec(name).factory(seed=seed, **kwargs)
    if max_episode_steps is not None:
        env.set_max_episode_steps(max_episode_steps)  # type: ignore[attr-defined]
    if reward_weights is not None:
        env.set_reward_weights(reward_weights)  # type: ignore[attr-defined]
    if obs == "pixels":
        from pbrl.envs.pixels import PixelObservation

        env = PixelObservation(env, size=pixel_size, frame_stack=frame_stack)
    if seed is not None:
        env.action_space.seed(seed)
        env.reset(seed=seed)
    return env


def make(name: str, num_envs: int = 1, seed: int = 0, **kwargs: Any) -> gym.vector.SyncVectorEnv:
    """``num_envs`` copies of ``name`` in a gymnasium vector env, seeded ``seed + i``.

    The env is a :class:`~pbrl.envs.vector.PbrlSyncVectorEnv`: gymnasium's ``SyncVectorEnv``
    with the same info layout, merged faster.

    Keyword arguments are those of :func:`make_env` (``obs``, ``max_episode_steps``, ...).
    """
    spec(name)
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    fns = [lambda i=i: make_env(name, seed=seed + i, **kwargs) for i in range(num_envs)]
    from pbrl.envs.vector import PbrlSyncVectorEnv

    venv = PbrlSyncVectorEnv(fns)
    venv.reset(seed=[seed + i for i in range(num_envs)])
    return venv


# Suite modules, each with ``register_suite(register)``. A suite whose optional dependency is
# missing still registers its names; building one of its envs raises MissingExtraError.
SUITES: tuple[str, ...] = (
    "mujoco",
    "dmc",
    "metaworld",
    "franka",
    "xmagical",
    "minerl",
    "crafter",
    "classic",
    "qd",
)


def _register_suites() -> None:
    import importlib
    import importlib.util

    for mod_name in SUITES:
        full = f"pbrl.envs.{mod_name}"
        if importlib.util.find_spec(full) is None:  # suite not written yet
            continue
        importlib.import_module(full).register_suite(register)


_register_suites()
