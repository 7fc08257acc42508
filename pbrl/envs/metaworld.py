"""Meta-World v3 manipulation tasks (the PyPI ``metaworld`` package) behind the PbrlEnv contract.

The tasks B-Pref and CPL report, registered as ``mw_`` + the v3 id without ``-v3``, hyphens
as underscores (``button-press-v3`` -> ``mw_button_press``): :data:`TASKS`.

Setting (B-Pref's): the goal-observable task (39-dim float64 observation: hand position,
gripper opening, object poses padded to 14, the same 18 numbers of the previous step, goal
position), the package's dense reward (``reward_function_version="v2"``, in ``[0, 10]``), 4-dim
action in ``[-1, 1]`` (hand move of up to 1 cm per axis, gripper effort). Episodes last the
package's ``max_path_length`` (500 steps) and end with ``truncated=True``, never
``terminated`` (success does not end an episode). ``info["success"]`` is the task's success
flag at that step.

What varies: ``reset(seed=s)`` re-seeds the task's ``np_random`` (the package's
``seeded_rand_vec`` mode; the global ``np.random`` is never used), and every reset draws a new
object / goal placement (the task's ``_random_reset_space``) from it, as B-Pref's
``_freeze_rand_vec = False`` does; so placements differ between seeds and between the
episodes of one seed. ``fixed_goal=True`` gives MT1-style episodes instead: the placement drawn
at a seeded reset is kept by the unseeded resets that follow. The hand always starts at the
task's ``hand_init_pos``; the physics has no noise.

Reward factors are the terms the package's ``compute_reward`` computes (captured from its own
call on every step, so they are the package's numbers, not a re-implementation), plus, for
bin-picking, the one term it does not return (``above_floor``, recomputed with the package's
``reward_utils.tolerance``). ``H(a, b) = a b / (a + b - a b)`` (0 when ``a + b - a b = 0``) is
the Hamacher product of ``metaworld.utils.reward_utils``, ``[c]`` is 1 when ``c`` holds:

=============== ===================================================================================
name            reward_from_factors
=============== ===================================================================================
mw_button_press 2 H(max(gripper_open, 0), near_button) + 8 [tcp_to_obj <= 0.05] button_pressed
mw_sweep_into   10 if obj_to_target < 0.05 else 2 object_grasped + 6 H(object_grasped, in_place)
mw_drawer_open  5 (caging + opening)
mw_door_open    10 if success else 2 H(ready_to_open, grab_effort) + 8 opened
mw_window_open  10 H(reach, in_place)
mw_plate_slide  10 if obj_to_target < 0.05 else 8 H(object_grasped, in_place)
mw_bin_picking  10 if obj_to_target < 0.05 else
                H(object_grasped, in_place) + [grasp_success] (1 + 5 H(above_floor, in_place))
=============== ===================================================================================

The factors in ``[0, 1]`` are the package's tolerance terms (``near_button``, ``in_place``, ...);
``tcp_to_obj`` / ``obj_to_target`` / ``gripper_to_handle`` / ``handle_to_goal`` are distances in
metres (tcp: the point between the finger pads), ``gripper_open`` is the normalised finger
distance (``obs[3]``; the package calls it ``tcp_closed``/``tcp_opened``), ``grab_effort`` the
gripper command mapped to ``[0, 1]``, ``grasp_success`` / ``near_object`` / ``success`` 0 or 1.
Every task's factors are listed in :data:`TASKS` and documented in ``docs/envs_metaworld.md``.

The stored simulator state is ``mj_getState`` of ``mjSTATE_FULLPHYSICS`` plus the mocap body's
position and orientation (the Sawyer hand is welded to it), followed by the model positions
that the task rewrites at each reset (the object's or fixture's body, the goal site: rows of
``model.body_pos`` / ``model.site_pos``, :data:`TASKS`). Frames are rendered on a private
``MjModel`` copy and ``MjData`` from :data:`DEFAULT_CAMERA`, a free camera looking at the table
from the front right, upright (the model's own ``corner*`` cameras render upside down; any
model camera can be chosen with ``camera=``). Checkpoints copy the live ``MjData``, those model
positions, the task's Python-side episode state (goal, initial positions, step counter,
previous observation, ...) and its ``np_random``.

MuJoCo: metaworld 3.1.1 pins ``mujoco==3.3.0`` (install it with ``pip install --no-deps``:
pbrl needs a newer MuJoCo, e.g. ``mujoco.mj_copyData``), where a weld's ``eq_data`` has 11 numbers;
MuJoCo >= 3.4 has 12 (``mjNEQDATA``), and the package's ``reset_mocap_welds`` fails on it. The
task classes built here run the package's own ``reset_mocap_welds`` on the first 11 columns
and leave the new one as the compiler set it, so the package works on the MuJoCo pbrl uses
(its scripted policies solve the tasks; tests check this).
"""

from __future__ import annotations

import copy
import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType, SimpleNamespace
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from pbrl.envs.base import PbrlEnv, check_render_quality, pack_mjdata, unpack_mjdata
from pbrl.envs.mujoco import make_renderer

STATE_SIG = (
    mujoco.mjtState.mjSTATE_FULLPHYSICS
    | mujoco.mjtState.mjSTATE_MOCAP_POS
    | mujoco.mjtState.mjSTATE_MOCAP_QUAT
)

DEFAULT_CAMERA = "three_quarter"
FREE_CAMERAS: dict[str, dict[str, Any]] = {
    # The table centre seen from the front right, 30 degrees down: arm, object, goal in view.
    "three_quarter": {
        "lookat": (0.0, 0.65, 0.1),
        "distance": 1.5,
        "azimuth": 135.0,
        "elevation": -30.0,
    },
}
"""pbrl's free cameras (``mujoco.MjvCamera`` settings); other names are model cameras."""

INSTALL_HINT = (
    "`pip install --no-deps 'metaworld>=3.1.1,<3.2'` (metaworld pins mujoco==3.3.0, which "
    "pbrl cannot run on; without --no-deps pip would downgrade MuJoCo and dm_control)"
)
"""How to install the package itself (appended to the missing-extra error)."""

_PACKAGE_WELD_WIDTH = 11  # eq_data columns metaworld's reset_mocap_welds writes (MuJoCo 3.3)


# --- reward factors: one extractor and one reward formula per task --------------------------
# An extractor gets (env, action, obs, out) where ``out`` is the tuple the package's
# ``compute_reward(action, obs)`` returned on this step, and ``info`` of ``evaluate_state``.


def _hamacher(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``reward_utils.hamacher_product``, vectorised with the same operation order."""
    ab = a * b
    den = a + b - ab
    return np.where(den > 0, ab / np.where(den > 0, den, 1.0), 0.0)


def _button_press(env: Any, action: Any, obs: np.ndarray, out: tuple, info: dict) -> dict:
    _, tcp_to_obj, tcp_open, obj_to_target, near_button, button_pressed = out
    return {
        "near_button": float(near_button),
        "button_pressed": float(button_pressed),
        "gripper_open": float(tcp_open),
        "tcp_to_obj": float(tcp_to_obj),
        "obj_to_target": float(obj_to_target),
    }


def _button_press_reward(f: Mapping[str, np.ndarray]) -> np.ndarray:
    base = 2 * _hamacher(np.maximum(f["gripper_open"], 0.0), f["near_button"])
    return np.where(f["tcp_to_obj"] <= 0.05, base + 8 * f["button_pressed"], base)


def _grasp_place(env: Any, action: Any, obs: np.ndarray, out: tuple, info: dict) -> dict:
    """sweep-into, plate-slide: (reward, tcp_to_obj, tcp_opened, obj_to_target, grasp, place)."""
    _, tcp_to_obj, tcp_opened, obj_to_target, object_grasped, in_place = out
    return {
        "object_grasped": float(object_grasped),
        "in_place": float(in_place),
        "tcp_to_obj": float(tcp_to_obj),
        "obj_to_target": float(obj_to_target),
        "gripper_open": float(tcp_opened),
    }


def _sweep_into_reward(f: Mapping[str, np.ndarray]) -> np.ndarray:
    g = f["object_grasped"]
    dense = (2 * g) + (6 * _hamacher(g, f["in_place"]))
    return np.where(f["obj_to_target"] < 0.05, 10.0, dense)


def _plate_slide(env: Any, action: Any, obs: np.ndarray, out: tuple, info: dict) -> dict:
    factors = _grasp_place(env, action, obs, out, info)
    del factors["gripper_open"]  # plate-slide's gripper plays no part
    return factors


def _plate_slide_reward(f: Mapping[str, np.ndarray]) -> np.ndarray:
    dense = 8 * _hamacher(f["object_grasped"], f["in_place"])
    return np.where(f["obj_to_target"] < 0.05, 10.0, dense)


def _drawer_open(env: Any, action: Any, obs: np.ndarray, out: tuple, info: dict) -> dict:
    _, gripper_error, _, handle_error, caging, opening = out
    return {
        "caging": float(caging),
        "opening": float(opening),
        "gripper_to_handle": float(gripper_error),
        "handle_to_goal": float(handle_error),
    }


def _drawer_open_reward(f: Mapping[str, np.ndarray]) -> np.ndarray:
    return (f["caging"] + f["opening"]) * 5.0


def _door_open(env: Any, action: Any, obs: np.ndarray, out: tuple, info: dict) -> dict:
    _, grab, ready, opened = out
    return {"grab_effort": float(grab), "ready_to_open": float(ready), "opened": float(opened)}


def _door_open_reward(f: Mapping[str, np.ndarray]) -> np.ndarray:
    dense = 2.0 * _hamacher(f["ready_to_open"], f["grab_effort"]) + 8.0 * f["opened"]
    return np.where(f["success"] > 0, 10.0, dense)


def _window_open(env: Any, action: Any, obs: np.ndarray, out: tuple, info: dict) -> dict:
    _, tcp_to_obj, _, target_to_obj, reach, in_place = out
    return {
        "reach": float(reach),
        "in_place": float(in_place),
        "tcp_to_obj": float(tcp_to_obj),
        "obj_to_target": float(target_to_obj),
    }


def _window_open_reward(f: Mapping[str, np.ndarray]) -> np.ndarray:
    return 10 * _hamacher(f["reach"], f["in_place"])


def _bin_picking(env: Any, action: Any, obs: np.ndarray, out: tuple, info: dict) -> dict:
    _, near_object, grasp_success, target_to_obj, object_grasped, in_place = out
    return {
        "object_grasped": float(object_grasped),
        "in_place": float(in_place),
        "above_floor": _bin_picking_above_floor(env, obs),
        "grasp_success": float(grasp_success),
        "near_object": float(near_object),
        "obj_to_target": float(target_to_obj),
    }


def _bin_picking_above_floor(env: Any, obs: np.ndarray) -> float:
    """The term ``compute_reward`` keeps to itself: 1 while the hand is above the "floor".

    The floor is a pair of funnels around the object's start and the goal bin: 0 within 3 cm
    of either (horizontally), else ``0.02 log(r - 0.03) + 0.2`` for the nearer; below it the
    package's long-tail tolerance of the depth (bounds 0..1 cm, margin 5 cm).
    """
    tolerance = _metaworld_module("metaworld.utils.reward_utils").tolerance
    hand = obs[:3]
    floors = []
    for centre in (env.obj_init_pos, env._target_pos):
        r = np.linalg.norm(hand[:2] - centre[:2])
        floors.append(0.02 * np.log(r - 0.03) + 0.2 if r > 0.03 else 0.0)  # as the package
    floor = min(floors)
    if hand[2] >= floor:
        return 1.0
    depth = max(floor - hand[2], 0.0)
    return float(tolerance(depth, bounds=(0.0, 0.01), margin=0.05, sigmoid="long_tail"))


def _bin_picking_reward(f: Mapping[str, np.ndarray]) -> np.ndarray:
    ip = f["in_place"]
    base = _hamacher(f["object_grasped"], ip)
    bonus = 1.0 + 5.0 * _hamacher(f["above_floor"], ip)
    dense = np.where(f["grasp_success"] > 0, base + bonus, base)
    return np.where(f["obj_to_target"] < 0.05, 10.0, dense)


@dataclass(frozen=True)
class MetaWorldTask:
    """A registered Meta-World task.

    Attributes:
        env_id: the package's v3 id (``metaworld.env_dict.ALL_V3_ENVIRONMENTS``).
        factor_names: names of ``info["reward_factors"]`` (``success`` last).
        extract: factors (all but ``success``) from ``compute_reward``'s output.
        reward: the documented reward as a function of the factors.
        bodies: bodies whose ``model.body_pos`` the task rewrites at each reset.
        sites: sites whose ``model.site_pos`` the task rewrites at each reset.
    """

    env_id: str
    factor_names: tuple[str, ...]
    extract: Callable[..., dict[str, float]]
    reward: Callable[[Mapping[str, np.ndarray]], np.ndarray]
    bodies: tuple[str, ...]
    sites: tuple[str, ...]


_DISTANCES = frozenset({"tcp_to_obj", "obj_to_target", "gripper_to_handle", "handle_to_goal"})
_GRASP_PLACE = ("object_grasped", "in_place", "tcp_to_obj", "obj_to_target")

TASKS: dict[str, MetaWorldTask] = {
    "mw_button_press": MetaWorldTask(
        "button-press-v3",
        ("near_button", "button_pressed", "gripper_open", "tcp_to_obj", "obj_to_target", "success"),
        _button_press, _button_press_reward, ("box",), (),
    ),
    "mw_sweep_into": MetaWorldTask(
        "sweep-into-v3", (*_GRASP_PLACE, "gripper_open", "success"),
        _grasp_place, _sweep_into_reward, (), ("goal",),
    ),
    "mw_drawer_open": MetaWorldTask(
        "drawer-open-v3",
        ("caging", "opening", "gripper_to_handle", "handle_to_goal", "success"),
        _drawer_open, _drawer_open_reward, ("drawer",), ("goal",),
    ),
    "mw_door_open": MetaWorldTask(
        "door-open-v3", ("grab_effort", "ready_to_open", "opened", "success"),
        _door_open, _door_open_reward, ("door",), ("goal",),
    ),
    "mw_window_open": MetaWorldTask(
        "window-open-v3", ("reach", "in_place", "tcp_to_obj", "obj_to_target", "success"),
        _window_open, _window_open_reward, ("window",), ("goal",),
    ),
    "mw_plate_slide": MetaWorldTask(
        "plate-slide-v3", (*_GRASP_PLACE, "success"),
        _plate_slide, _plate_slide_reward, ("puck_goal",), ("goal",),
    ),
    "mw_bin_picking": MetaWorldTask(
        "bin-picking-v3",
        ("object_grasped", "in_place", "above_floor", "grasp_success", "near_object",
         "obj_to_target", "success"),
        _bin_picking, _bin_picking_reward, (), (),
    ),
}  # fmt: skip


# --- building the package's env -------------------------------------------------------------


def _metaworld_module(name: str = "metaworld") -> ModuleType:
    """The module ``name`` of the PyPI ``metaworld`` package, imported on first use.

    Imports are absolute, so ``metaworld`` is the installed package, never this module
    (``pbrl.envs.metaworld``).

    Raises:
        MissingExtraError: the package is not installed.
    """
    try:
        importlib.import_module("metaworld")
    except ModuleNotFoundError as err:
        if err.name != "metaworld":
            raise
        from pbrl.envs import MissingExtraError

        raise MissingExtraError("Meta-World", "metaworld", "metaworld", INSTALL_HINT) from None
    return importlib.import_module(name)


_CLASSES: dict[str, type] = {}


def task_class(env_id: str) -> type:
    """The package's task class for ``env_id``, made to run on MuJoCo >= 3.4 (module docstring).

    The subclass keeps the package class's name and behaviour; only ``reset_mocap_welds``
    changes, and only where the model's ``eq_data`` is wider than the package expects.
    """
    env_dict = _metaworld_module("metaworld.env_dict")  # raises if the package is missing
    if env_id in _CLASSES:
        return _CLASSES[env_id]
    base_mod = _metaworld_module("metaworld.sawyer_xyz_env")
    if env_id not in env_dict.ALL_V3_ENVIRONMENTS:
        raise KeyError(f"{env_id!r} is not a Meta-World v3 task")
    cls = env_dict.ALL_V3_ENVIRONMENTS[env_id]
    package_reset_welds = base_mod.SawyerMocapBase.reset_mocap_welds

    def reset_mocap_welds(self: Any) -> None:
        model = self.model
        if model.eq_data.shape[1] <= _PACKAGE_WELD_WIDTH:
            package_reset_welds(self)
            return
        # The package's own code on the columns it knows; MuJoCo's extra column is kept.
        view = SimpleNamespace(
            nmocap=model.nmocap,
            eq_type=model.eq_type,
            eq_data=model.eq_data[:, :_PACKAGE_WELD_WIDTH].copy(),
        )
        package_reset_welds(SimpleNamespace(model=view))
        model.eq_data[:, :_PACKAGE_WELD_WIDTH] = view.eq_data

    adapted = type(cls.__name__, (cls,), {"reset_mocap_welds": reset_mocap_welds})
    adapted.__qualname__ = cls.__qualname__
    adapted.__module__ = __name__
    _CLASSES[env_id] = adapted
    return adapted


def make_task_env(env_id: str, **kwargs: Any) -> gym.Env:
    """The package's goal-observable ``env_id`` task, drawing placements from its ``np_random``.

    This is the raw env :class:`MetaWorldEnv` wraps (B-Pref's setting; see the module
    docstring); ``kwargs`` go to the task class (``render_mode``, ``camera_name``, ``width``,
    ``height``). Seed it with ``gym.Env.reset(env, seed=s)`` before ``env.reset()``.
    """
    env = task_class(env_id)(**kwargs)
    env._set_task_called = True  # a single task: no Benchmark/set_task machinery
    env._freeze_rand_vec = False  # a new placement at every reset ...
    env.seeded_rand_vec = True  # ... drawn from env.np_random, not the global np.random
    env._partially_observable = False  # the goal is part of the observation
    del env.sawyer_observation_space  # cached with the goal hidden; recompute
    env.observation_space = env.sawyer_observation_space
    return env


# --- rendering ------------------------------------------------------------------------------


class MetaWorldRenderer:
    """Frames of stored states on a private ``MjModel`` copy and ``MjData``.

    The copy is needed because a Meta-World task moves its fixtures and goal marker by
    rewriting ``model.body_pos`` / ``model.site_pos`` at reset: each render writes the stored
    rows into the copy, so a state of an earlier episode shows that episode's scene.
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        bodies: np.ndarray,
        sites: np.ndarray,
        camera: str = DEFAULT_CAMERA,
        quality: str = "fast",
    ):
        self.model = copy.deepcopy(model)
        self.data = mujoco.MjData(self.model)
        self.quality = check_render_quality(quality)
        self._bodies, self._sites = bodies, sites
        self._n_phys = mujoco.mj_stateSize(self.model, STATE_SIG)
        self.camera = resolve_camera(self.model, camera)
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}

    def render(self, state: np.ndarray, width: int, height: int) -> np.ndarray:
        """``(height, width, 3)`` uint8 frame of a :class:`MetaWorldEnv` sim state."""
        key = (width, height)
        if key not in self._renderers:
            vis = self.model.vis.global_
            vis.offwidth, vis.offheight = max(vis.offwidth, width), max(vis.offheight, height)
            self._renderers[key] = make_renderer(self.model, height, width, self.quality)
        n, nb = self._n_phys, 3 * len(self._bodies)
        self.model.body_pos[self._bodies] = state[n : n + nb].reshape(-1, 3)
        self.model.site_pos[self._sites] = state[n + nb :].reshape(-1, 3)
        mujoco.mj_setState(self.model, self.data, state[:n], STATE_SIG)
        mujoco.mj_forward(self.model, self.data)
        renderer = self._renderers[key]
        renderer.update_scene(self.data, camera=self.camera)
        return renderer.render().copy()

    def close(self) -> None:
        """Free the GL contexts.

        ``mujoco.Renderer.close`` frees its GL objects in whatever context is current, which
        would corrupt another live renderer's; each is made current before it is closed.
        """
        for r in self._renderers.values():
            gl = getattr(r, "_gl_context", None)
            if gl is not None:
                gl.make_current()
            r.close()
        self._renderers.clear()

    def __del__(self) -> None:
        # An env dropped without close(): free the contexts the safe way, not in
        # mujoco.Renderer.__del__ (see close()).
        try:
            self.close()
        except Exception:  # interpreter shutdown: GL may be gone already
            pass


def resolve_camera(model: mujoco.MjModel, camera: str) -> int | mujoco.MjvCamera:
    """A model camera's id, or a ``MjvCamera`` for a name in :data:`FREE_CAMERAS`.

    Raises:
        ValueError: ``camera`` is neither (the message lists both kinds).
    """
    if camera in FREE_CAMERAS:
        cam = mujoco.MjvCamera()
        mujoco.mjv_defaultFreeCamera(model, cam)
        cfg = FREE_CAMERAS[camera]
        cam.lookat[:] = cfg["lookat"]
        cam.distance, cam.azimuth, cam.elevation = cfg["distance"], cfg["azimuth"], cfg["elevation"]
        return cam
    cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    if cam_id < 0:
        named = [model.camera(i).name for i in range(model.ncam)]
        raise ValueError(
            f"unknown camera {camera!r}; pbrl cameras: {sorted(FREE_CAMERAS)}, model cameras: "
            f"{named}"
        )
    return cam_id


# --- the env --------------------------------------------------------------------------------

# Attributes of the package env that are configuration, not episode state: never restored.
_CONFIG_ATTRS = frozenset({"render_mode", "camera_name", "camera_id", "width", "height"})


def _is_plain(value: Any) -> bool:
    """Data a checkpoint can copy: numbers, strings, owned arrays, containers of those.

    Arrays whose memory belongs to MuJoCo (views into ``MjData``/``MjModel``, e.g. the
    package's ``init_left_pad``, a live view of the pad's position) are not plain: the
    restored ``MjData`` already carries their values, and the view must stay live.
    """
    if value is None or isinstance(value, bool | int | float | str | bytes | np.generic):
        return True
    if isinstance(value, np.ndarray):
        root = value
        while isinstance(root.base, np.ndarray):
            root = root.base
        return value.dtype != object and (root.base is None)
    if isinstance(value, list | tuple):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


class MetaWorldEnv(PbrlEnv):
    """A Meta-World task with reward factors, success flag, sim state and re-rendering.

    Args:
        name: a key of :data:`TASKS` (``"mw_button_press"``, ...).
        camera: the camera frames are rendered from: :data:`DEFAULT_CAMERA` (default) or
            another name of :data:`FREE_CAMERAS`, or a model camera (``"corner"``,
            ``"corner2"``, ``"corner3"``, ``"topview"``, ``"behindGripper"``, ``"gripperPOV"``).
        render_quality: ``"fast"`` (default) or ``"full"``; see
            :data:`pbrl.envs.base.RENDER_QUALITIES`.
        fixed_goal: keep the object/goal placement of the last seeded reset (MT1-style)
            instead of drawing a new one at every reset (B-Pref, default).
    """

    def __init__(
        self,
        name: str,
        camera: str = DEFAULT_CAMERA,
        render_quality: str = "fast",
        fixed_goal: bool = False,
    ):
        if name not in TASKS:
            raise KeyError(f"unknown Meta-World task {name!r}; valid: {sorted(TASKS)}")
        self.render_quality = check_render_quality(render_quality)
        self.task = TASKS[name]
        mw = make_task_env(self.task.env_id)
        super().__init__(mw, mw.max_path_length)
        self.mw = mw
        self.fixed_goal = bool(fixed_goal)
        self.factor_names = self.task.factor_names
        self._model: mujoco.MjModel = mw.model
        self._data: mujoco.MjData = mw.data
        self._bodies = np.array([self._model.body(b).id for b in self.task.bodies], np.intp)
        self._sites = np.array([self._model.site(s).id for s in self.task.sites], np.intp)
        self._n_phys = mujoco.mj_stateSize(self._model, STATE_SIG)
        self._state_size = self._n_phys + 3 * (len(self._bodies) + len(self._sites))
        self.camera = camera
        resolve_camera(self._model, camera)  # fail now on an unknown camera
        self._renderer: MetaWorldRenderer | None = None
        # The object/goal placement part of the state (model body_pos/site_pos) — the package
        # writes it only in reset_model — kept from the last reset/restore instead of being
        # gathered on every step (a third of this wrapper's per-step cost).
        self._placement: np.ndarray | None = None
        # The package's own compute_reward, called by its evaluate_state on every step, with
        # its arguments and result kept for _factors.
        self._reward_call: tuple[Any, np.ndarray, tuple] | None = None
        package_compute_reward = mw.compute_reward

        def compute_reward(action: Any, obs: np.ndarray) -> tuple:
            out = package_compute_reward(action, obs)
            self._reward_call = (action, obs, out)
            return out

        mw.compute_reward = compute_reward
        # One reset now, so that the attributes the package sets at reset (some are live views
        # into MjData, which checkpoints do not copy) exist before set_env_state.
        mw.reset()

    # --- gymnasium API --------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):  # type: ignore[override]
        """Reset; ``seed`` re-seeds the task's ``np_random``, which draws the placement."""
        mw = self.mw
        if seed is not None:
            gym.Env.reset(mw, seed=seed)  # gymnasium's seeding (the package's reset ignores it)
        mw._freeze_rand_vec = self.fixed_goal and seed is None and mw._last_rand_vec is not None
        self._reward_call = None
        self._placement = None  # the package's reset_model moves objects and goal
        return super().reset(seed=None, options=options)

    def step(self, action):  # type: ignore[no-untyped-def,override]
        """Step with ``action`` as float64 (exact for float32 input).

        With a float32 action the package's reward arithmetic runs partly in float32 (the
        gripper command enters the caging terms), and its rounding, ~1e-7, is not a function
        of the factors; in float64 :meth:`reward_from_factors` reproduces the reward exactly.
        """
        return super().step(np.asarray(action, dtype=np.float64))

    # --- PbrlEnv hooks --------------------------------------------------------------------
    def _get_sim_state(self) -> np.ndarray:
        out = np.empty(self._state_size, np.float64)
        n = self._n_phys
        mujoco.mj_getState(self._model, self._data, out[:n], STATE_SIG)
        if self._placement is None:
            self._placement = np.concatenate(
                [
                    self._model.body_pos[self._bodies].ravel(),
                    self._model.site_pos[self._sites].ravel(),
                ]
            )
        out[n:] = self._placement
        return out

    def _factors(self, info: dict[str, Any]) -> dict[str, float]:
        call, self._reward_call = self._reward_call, None
        if call is None:
            # The package's step skipped its reward (after an unstable simulation) and returned
            # 0: nothing achieved, everything far away; the factors give that reward.
            return {k: math.inf if k in _DISTANCES else 0.0 for k in self.factor_names}
        action, obs, out = call
        factors = self.task.extract(self.mw, action, obs, out, info)
        factors["success"] = float(info["success"])
        return factors

    def _success(self, info: dict[str, Any]) -> bool | None:
        return bool(info["success"])

    def reward_from_factors(self, factors: Mapping[str, np.ndarray]) -> np.ndarray:
        """The task's reward from its factors (see the module table)."""
        f = {k: np.asarray(factors[k], np.float64) for k in self.factor_names}
        return np.asarray(self.task.reward(f), np.float64)

    def _render(self, state: np.ndarray, width: int, height: int) -> np.ndarray:
        if self._renderer is None:
            self._renderer = MetaWorldRenderer(
                self._model, self._bodies, self._sites, self.camera, self.render_quality
            )
        return self._renderer.render(state, width, height)

    def _snapshot(self) -> dict[str, Any]:
        attrs = {k: v for k, v in vars(self.mw).items() if k not in _CONFIG_ATTRS and _is_plain(v)}
        return {
            "data": pack_mjdata(self._data),
            "body_pos": self._model.body_pos.copy(),
            "site_pos": self._model.site_pos.copy(),
            "attrs": copy.deepcopy(attrs),  # one deepcopy keeps aliases (obj_init_pos, ...)
            "np_random": self.mw.np_random.bit_generator.state,
        }

    def _restore(self, snap: dict[str, Any]) -> None:
        mujoco.mj_copyData(self._data, self._model, unpack_mjdata(snap["data"]))
        self._model.body_pos[:] = snap["body_pos"]
        self._model.site_pos[:] = snap["site_pos"]
        self._placement = None
        for k, v in copy.deepcopy(snap["attrs"]).items():
            setattr(self.mw, k, v)
        self.mw.np_random.bit_generator.state = snap["np_random"]
        self._reward_call = None

    def close(self) -> None:
        """Close the renderer and the env."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        super().close()


def register_suite(register: Any) -> None:
    """Registry hook: one entry per :data:`TASKS` task (registered even without the package)."""
    for key, task in TASKS.items():

        def factory(seed: int | None = None, _key: str = key, **kw: Any) -> PbrlEnv:
            return MetaWorldEnv(_key, **kw)

        register(
            key,
            factory,
            suite="metaworld",
            description=f"Meta-World {task.env_id} (goal observable, dense reward)",
        )
