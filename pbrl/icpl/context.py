"""What the LLM is told about an environment, generated from the environment itself.

:func:`env_context` builds an :class:`EnvContext`: observation layout (which slice of the
observation vector is which physical quantity), action space, control period, episode length
and the names of the reward terms the env logs. Layouts are generated, not hand-written:

- gymnasium MuJoCo locomotion (halfcheetah, hopper, walker2d, ant, humanoid): from the MuJoCo
  model's joints (hinge / slide / free, with their axes) and bodies, following how each v5 env
  assembles ``_get_obs``; :func:`layout_sources` gives, per entry, the ``MjData`` array and
  indices it reads, so a test rebuilds the observation from them and compares it with the env's;
- dm_control tasks: from the task's observation spec (key names and shapes);
- anything else: one entry covering the whole vector (the env's own description only).

The true reward function is not shown (ICPL keeps the task score hidden from the LLM).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from pbrl import envs as pbrl_envs


@dataclass(frozen=True)
class ObsEntry:
    """A slice ``obs[start:stop]`` and what it holds.

    Attributes:
        start: first index.
        stop: one past the last index.
        name: short name (``qvel[rootx]``).
        meaning: what the values are, with units where known.
        source: ``(MjData array, flat indices)`` the values are read from (MuJoCo only).
        clip: the env clips the values to this range, if it does.
    """

    start: int
    stop: int
    name: str
    meaning: str
    source: tuple[str, tuple[int, ...]] | None = None
    clip: tuple[float, float] | None = None


@dataclass(frozen=True)
class EnvContext:
    """Everything the prompt says about the environment."""

    env_name: str
    description: str
    obs_dim: int
    act_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    dt: float | None
    max_episode_steps: int
    layout: tuple[ObsEntry, ...]
    factor_names: tuple[str, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    def render(self) -> str:
        """The context as prompt text."""
        lo, hi = np.asarray(self.action_low), np.asarray(self.action_high)
        bounds = (
            f"each in [{lo[0]:g}, {hi[0]:g}]"
            if np.all(lo == lo[0]) and np.all(hi == hi[0])
            else "bounds " + ", ".join(f"[{a:g}, {b:g}]" for a, b in zip(lo, hi, strict=True))
        )
        lines = [
            f"Environment: {self.env_name} ({self.description}).",
            f"Observation: a float vector of {self.obs_dim} values, laid out as follows "
            "(indices are Python slices of obs[i, :]):",
        ]
        for e in self.layout:
            idx = f"obs[:, {e.start}]" if e.stop - e.start == 1 else f"obs[:, {e.start}:{e.stop}]"
            lines.append(f"  {idx}: {e.name} - {e.meaning}")
        lines.append(f"Action: a float vector of {self.act_dim} values, {bounds}.")
        if self.dt:
            lines.append(
                f"Control period: {self.dt:g} s per step; an episode lasts at most "
                f"{self.max_episode_steps} steps."
            )
        else:
            lines.append(f"An episode lasts at most {self.max_episode_steps} steps.")
        if self.factor_names:
            lines.append(
                "The environment's designers log these reward terms (you cannot read them; "
                "they name what they cared about): " + ", ".join(self.factor_names) + "."
            )
        lines += list(self.notes)
        return "\n".join(lines)


# --- MuJoCo locomotion ------------------------------------------------------------------------
_AXES = "xyz"


def _axis_name(axis: np.ndarray) -> str:
    a = np.asarray(axis, float)
    i = int(np.argmax(np.abs(a)))
    if np.isclose(abs(a[i]), 1.0) and np.isclose(np.abs(a).sum(), 1.0):
        return ("-" if a[i] < 0 else "") + _AXES[i]
    return "(" + ", ".join(f"{v:g}" for v in a) + ")"


def _joint_entries(model: Any) -> tuple[list[tuple[str, str, int]], list[tuple[str, str, int]]]:
    """Per scalar of qpos and qvel: (name, meaning, index)."""
    import mujoco

    qpos: list[tuple[str, str, int]] = []
    qvel: list[tuple[str, str, int]] = []
    jt = mujoco.mjtJoint
    for j in range(model.njnt):
        name = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, j) or f"joint{j}"
        pa, va, typ = int(model.jnt_qposadr[j]), int(model.jnt_dofadr[j]), model.jnt_type[j]
        axis = _axis_name(model.jnt_axis[j])
        if typ == jt.mjJNT_FREE:
            for i, c in enumerate("xyz"):
                qpos.append(
                    (
                        f"qpos[{name}.{c}]",
                        f"position {c} of the free body '{name}' (m, world frame)",
                        pa + i,
                    )
                )
            for i, c in enumerate(("w", "x", "y", "z")):
                qpos.append(
                    (f"qpos[{name}.q{c}]", f"orientation quaternion {c} of '{name}'", pa + 3 + i)
                )
            for i, c in enumerate("xyz"):
                qvel.append(
                    (
                        f"qvel[{name}.v{c}]",
                        f"linear velocity along world {c} of '{name}' (m/s; +x is forward)",
                        va + i,
                    )
                )
            for i, c in enumerate("xyz"):
                qvel.append(
                    (
                        f"qvel[{name}.w{c}]",
                        f"angular velocity about {c} of '{name}' (rad/s, local frame)",
                        va + 3 + i,
                    )
                )
        elif typ == jt.mjJNT_SLIDE:
            qpos.append((f"qpos[{name}]", f"slide joint '{name}': position along {axis} (m)", pa))
            qvel.append((f"qvel[{name}]", f"slide joint '{name}': velocity along {axis} (m/s)", va))
        elif typ == jt.mjJNT_HINGE:
            qpos.append((f"qpos[{name}]", f"hinge joint '{name}': angle about {axis} (rad)", pa))
            qvel.append((f"qvel[{name}]", f"hinge joint '{name}': angular velocity (rad/s)", va))
        else:  # ball joints: not in the locomotion models
            for i in range(4):
                qpos.append((f"qpos[{name}.{i}]", f"ball joint '{name}' quaternion {i}", pa + i))
            for i in range(3):
                qvel.append(
                    (f"qvel[{name}.{i}]", f"ball joint '{name}' angular velocity {i}", va + i)
                )
    return qpos, qvel


def _grouped(
    start: int,
    array: str,
    width: int,
    bodies: list[str],
    what: str,
    first: int,
    clip: tuple[float, float] | None = None,
) -> list[ObsEntry]:
    out = []
    for b, body in enumerate(bodies):
        lo = start + b * width
        idx = tuple(range((first + b) * width, (first + b + 1) * width))
        meaning = f"{what} of body '{body}'" + (
            f" (clipped to [{clip[0]:g}, {clip[1]:g}])" if clip else ""
        )
        out.append(ObsEntry(lo, lo + width, f"{array}[{body}]", meaning, (array, idx), clip))
    return out


def mujoco_layout(env: gym.Env) -> tuple[ObsEntry, ...] | None:
    """The observation layout of a gymnasium MuJoCo v5 locomotion env (None: not one)."""
    import mujoco

    u = env.unwrapped
    if not hasattr(u, "_exclude_current_positions_from_observation") or not hasattr(u, "model"):
        return None
    model = u.model
    qpos, qvel = _joint_entries(model)
    if u._exclude_current_positions_from_observation:
        free = model.njnt and model.jnt_type[0] == mujoco.mjtJoint.mjJNT_FREE
        qpos = qpos[2 if free else 1 :]
    clipped = type(u).__name__.startswith(("Hopper", "Walker2d"))
    entries: list[ObsEntry] = []
    pos = 0
    for name, meaning, i in qpos:
        entries.append(ObsEntry(pos, pos + 1, name, meaning, ("qpos", (i,))))
        pos += 1
    for name, meaning, i in qvel:
        m = meaning + (" (clipped to [-10, 10])" if clipped else "")
        entries.append(
            ObsEntry(pos, pos + 1, name, m, ("qvel", (i,)), (-10.0, 10.0) if clipped else None)
        )
        pos += 1
    bodies = [
        mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, b) or f"body{b}"
        for b in range(1, model.nbody)
    ]
    # the env's order after qpos and qvel: cinert, cvel, qfrc_actuator, cfrc_ext
    if getattr(u, "_include_cinert_in_observation", False):
        entries += _grouped(
            pos, "cinert", 10, bodies, "mass and inertia about the centre of mass (10 values)", 1
        )
        pos += 10 * len(bodies)
    if getattr(u, "_include_cvel_in_observation", False):
        entries += _grouped(
            pos, "cvel", 6, bodies, "centre-of-mass velocity: angular (3) then linear (3)", 1
        )
        pos += 6 * len(bodies)
    if getattr(u, "_include_qfrc_actuator_in_observation", False):
        n = model.nv - 6
        entries.append(
            ObsEntry(
                pos,
                pos + n,
                "qfrc_actuator",
                "actuator forces on the joints after the free joint (in qvel order)",
                ("qfrc_actuator", tuple(range(6, model.nv))),
            )
        )
        pos += n
    if getattr(u, "_include_cfrc_ext_in_observation", False):
        rng = getattr(u, "_contact_force_range", None)
        clip = (
            (float(rng[0]), float(rng[1]))
            if rng is not None and type(u).__name__.startswith("Ant")
            else None
        )
        entries += _grouped(
            pos, "cfrc_ext", 6, bodies, "external (contact) force and torque, 6 values", 1, clip
        )
        pos += 6 * len(bodies)
    return tuple(entries)


def layout_sources(env: gym.Env, layout: tuple[ObsEntry, ...]) -> np.ndarray:
    """The observation rebuilt from the live ``MjData`` through the layout's sources."""
    data = env.unwrapped.data
    parts = []
    for e in layout:
        if e.source is None:
            raise ValueError(f"entry {e.name} has no source")
        array, idx = e.source
        v = np.asarray(getattr(data, array)).ravel()[list(idx)]
        parts.append(v if e.clip is None else np.clip(v, *e.clip))
    return np.concatenate(parts)


def dmc_layout(env: gym.Env) -> tuple[ObsEntry, ...] | None:
    """The layout of a pbrl dm_control env, from its observation spec."""
    inner = env
    while inner is not None and not hasattr(inner, "_obs_keys"):
        inner = getattr(inner, "env", None)
    if inner is None:
        return None
    spec = inner._env.observation_spec()
    out, pos = [], 0
    for key in inner._obs_keys:
        n = int(np.prod(spec[key].shape))
        shape = tuple(spec[key].shape)
        out.append(
            ObsEntry(pos, pos + n, key, f"dm_control observation '{key}' {shape or '(scalar)'}")
        )
        pos += n
    return tuple(out)


def env_context(env_name: str, env_kwargs: dict[str, Any] | None = None) -> EnvContext:
    """Build the context of a registered environment (builds and closes one env)."""
    env = pbrl_envs.make_env(env_name, seed=0, **(env_kwargs or {}))
    try:
        obs_dim = int(np.prod(env.observation_space.shape))
        space = env.action_space
        if not isinstance(space, gym.spaces.Box):
            raise ValueError(f"ICPL needs a continuous (Box) action space; {env_name} has {space}")
        layout = mujoco_layout(env) or dmc_layout(env)
        notes: list[str] = []
        if layout is None or layout[-1].stop != obs_dim:
            layout = (
                ObsEntry(
                    0,
                    obs_dim,
                    "obs",
                    "the environment's observation vector (no named layout is known)",
                ),
            )
        u = env.unwrapped
        dt = float(u.dt) if hasattr(u, "dt") else None
        if mujoco_layout(env) is not None and hasattr(u, "_forward_reward_weight"):
            notes.append("Forward is the +x direction of the world.")
        return EnvContext(
            env_name=env_name,
            description=pbrl_envs.spec(env_name).description,
            obs_dim=obs_dim,
            act_dim=int(np.prod(space.shape)),
            action_low=tuple(float(v) for v in np.ravel(space.low)),
            action_high=tuple(float(v) for v in np.ravel(space.high)),
            dt=dt,
            max_episode_steps=int(getattr(env, "max_episode_steps", 1000)),
            layout=layout,
            factor_names=tuple(getattr(env, "factor_names", ())),
            notes=tuple(notes),
        )
    finally:
        env.close()
