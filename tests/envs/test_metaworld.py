"""The Meta-World suite keeps the PbrlEnv contract (pbrl/envs/metaworld.py).

Vector envs, factors that reproduce the package's reward on the package's own scripted
solutions (every branch of each formula), success, re-rendering against the package env's own
``render()``, pixels, seeding and placements, bit-exact checkpoints, the missing-package error.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import mujoco
import numpy as np
import pytest
import yaml

from pbrl import envs
from pbrl.envs.base import PbrlEnv

mw_mod = pytest.importorskip("pbrl.envs.metaworld")
pytest.importorskip("metaworld")

NAMES = sorted(mw_mod.TASKS)
CONFIGS = Path(__file__).parents[2] / "pbrl" / "configs" / "env"
# The package's scripted policy per task, and a seed whose episode it solves.
POLICIES = {
    "mw_button_press": ("SawyerButtonPressV3Policy", 0),
    "mw_sweep_into": ("SawyerSweepIntoV3Policy", 0),
    "mw_drawer_open": ("SawyerDrawerOpenV3Policy", 0),
    "mw_door_open": ("SawyerDoorOpenV3Policy", 0),
    "mw_window_open": ("SawyerWindowOpenV3Policy", 0),
    "mw_plate_slide": ("SawyerPlateSlideV3Policy", 0),
    "mw_bin_picking": ("SawyerBinPickingV3Policy", 0),
}
# Tasks whose reward is overridden to 10 near the goal: the override branch must be reached.
OVERRIDE = {"mw_sweep_into", "mw_door_open", "mw_plate_slide", "mw_bin_picking"}


def _policy(name: str):
    import metaworld.policies

    return getattr(metaworld.policies, POLICIES[name][0])()


def _act(policy, obs: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # the policies warn that their gains exceed [-1, 1]
        warnings.simplefilter("ignore", UserWarning)
        return np.asarray(policy.get_action(obs), np.float32)


def _random_actions(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 4)).astype(np.float32)


def test_registry_configs_and_the_package_is_not_this_module() -> None:
    assert envs.names("metaworld") == NAMES
    expected = {"button_press", "sweep_into", "drawer_open", "door_open", "window_open"}
    assert {f"mw_{t}" for t in expected | {"plate_slide", "bin_picking"}} == set(NAMES)
    for name in NAMES:
        cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        assert cfg["name"] == name
        env = envs.make_env(name, **cfg["kwargs"])
        assert env.max_episode_steps == 500
        env.close()
    # pbrl/envs/metaworld.py does not shadow the PyPI package it wraps.
    package = mw_mod._metaworld_module()
    assert Path(package.__file__).parent.name == "metaworld"
    assert Path(envs.__file__).parent not in Path(package.__file__).parents
    assert hasattr(package, "MT1") and mw_mod.__name__ == "pbrl.envs.metaworld"


@pytest.mark.parametrize("name", ["mw_button_press", "mw_bin_picking"])
def test_vector_env_reward_factors_and_pre_step_state(name: str) -> None:
    venv = envs.make(name, num_envs=2, seed=0)
    single = venv.envs[0]
    assert isinstance(single, PbrlEnv)
    obs, info = venv.reset(seed=5)
    assert obs.shape == (2, 39) and obs.dtype == np.float64
    assert info["sim_state"].shape == (2, single.state_dim)
    assert not np.array_equal(obs[0], obs[1])  # seeds 5 and 6 place the object differently
    np.testing.assert_array_equal(obs[:, -3:], [e.mw._target_pos for e in venv.envs])  # goal
    for act in _random_actions(6, seed=0)[:, None].repeat(2, axis=1):
        before = np.stack([e._get_sim_state() for e in venv.envs])
        obs, reward, term, trunc, info = venv.step(act)
        assert not term.any() and not trunc.any()
        np.testing.assert_array_equal(info["sim_state"], before)
        np.testing.assert_array_equal(info["true_reward"], reward)
        factors = {k: v for k, v in info["reward_factors"].items() if not k.startswith("_")}
        assert set(factors) == set(single.factor_names) and factors["success"].shape == (2,)
        np.testing.assert_array_equal(single.reward_from_factors(factors), reward)
        assert info["success"].dtype == bool and not info["success"].any()
    venv.close()


def _bin_detour(env, obs: np.ndarray, act: np.ndarray, state: dict) -> np.ndarray:
    """bin-picking: once the cube is carried between the bins, push the hand down for 10
    steps, below the "floor" of the reward, so that its ``above_floor`` term drops below 1."""
    mw, hand = env.mw, obs[:3]
    far = min(np.linalg.norm(hand[:2] - c[:2]) for c in (mw.obj_init_pos, mw._target_pos))
    if state.get("grasp") and far > 0.06 and state.setdefault("down", 0) < 10:
        state["down"] += 1
        act = act.copy()
        act[:3] = (0.0, 0.0, -1.0)
    return act


@pytest.mark.parametrize("name", NAMES)
def test_scripted_policy_succeeds_and_factors_reproduce_the_reward(name: str) -> None:
    """The package's solution drives every branch of the reward; the factors give it exactly."""
    env = envs.make_env(name, seed=POLICIES[name][1])
    policy = _policy(name)
    obs, _ = env.reset(seed=POLICIES[name][1])
    rewards, successes, rows, detour = [], [], [], {}
    for _ in range(200):
        act = _act(policy, obs)
        if name == "mw_bin_picking":
            act = _bin_detour(env, obs, act, detour)
        obs, r, term, trunc, info = env.step(act)
        f = info["reward_factors"]
        assert list(f) == list(env.factor_names)
        assert float(env.reward_from_factors(f)) == r  # exactly (the contract asks 1e-6)
        assert info["success"] is bool(f["success"]) and info["unscaled_reward"] == r
        detour["grasp"] = f.get("grasp_success") == 1.0
        rewards.append(r)
        successes.append(info["success"])
        rows.append([f[k] for k in env.factor_names])
        if info["success"] and len(successes) > successes.index(True) + 5:
            break
    assert any(successes), f"{name}: the scripted policy did not succeed"
    assert not successes[0] and not term and not trunc  # success does not end the episode
    # Vectorised: the factor columns of the whole run give the rewards in one call.
    cols = {k: np.array(rows)[:, i] for i, k in enumerate(env.factor_names)}
    np.testing.assert_array_equal(env.reward_from_factors(cols), rewards)
    if name in OVERRIDE:
        assert 10.0 in rewards
    if name == "mw_bin_picking":  # the grasp bonus branch, with the hand above and below floor
        held = cols["grasp_success"] == 1.0
        assert (cols["above_floor"][held] < 0.9).any() and (cols["above_floor"][held] == 1).any()
    if name == "mw_button_press":  # the press bonus needs the tcp within 5 cm of the tip,
        # which the scripted press never comes: a P-controller to 2 cm above the tip does.
        obs, _ = env.reset(seed=0)
        near = []
        for _ in range(80):
            act = np.clip(10 * (obs[4:7] + (0.0, 0.0, 0.02) - obs[:3]), -1, 1)
            obs, r, *_, info = env.step(np.append(act, -1.0))
            f = info["reward_factors"]
            assert float(env.reward_from_factors(f)) == r
            near.append(f["tcp_to_obj"] <= 0.05)
        assert any(near) and not all(near) and info["success"]
    # A step whose reward the package skips (unstable simulation) has factors giving 0.
    env._reward_call = None
    assert float(env.reward_from_factors(env._factors({}))) == 0.0
    env.close()


def _twin(env, w: int, h: int):
    """The package env of the same task rendering itself (gymnasium's MuJoCo renderer)."""
    cam = env.camera
    kwargs = {"render_mode": "rgb_array", "width": w, "height": h}
    if cam in mw_mod.FREE_CAMERAS:
        twin = mw_mod.make_task_env(env.task.env_id, **kwargs)
        cfg = mw_mod.FREE_CAMERAS[cam]
        twin.mujoco_renderer.default_cam_config = {
            k: np.array(v) if k == "lookat" else v for k, v in cfg.items()
        }
    else:
        twin = mw_mod.make_task_env(env.task.env_id, camera_name=cam, **kwargs)
    return twin


def _twin_frame(twin, env, forward: bool = False) -> np.ndarray:
    """``twin.render()`` of the live env's model positions and ``MjData`` (``mj_forward``-ed
    first if ``forward``)."""
    twin.model.body_pos[:] = env._model.body_pos
    twin.model.site_pos[:] = env._model.site_pos
    mujoco.mj_copyData(twin.data, twin.model, env._data)
    if forward:
        mujoco.mj_forward(twin.model, twin.data)
    viewer = twin.mujoco_renderer.viewer
    if viewer is not None:  # gymnasium makes its context current only when it is created
        viewer.make_context_current()
    return twin.render().copy()


def _close_twin(twin) -> None:
    viewer = twin.mujoco_renderer.viewer
    if viewer is not None:  # free its GL objects in its own context, not in another's
        viewer.make_context_current()
        viewer.con.free()
    twin.close()


@pytest.mark.parametrize(
    ("name", "camera"), [("mw_drawer_open", mw_mod.DEFAULT_CAMERA), ("mw_button_press", "corner")]
)
def test_render_state_equals_the_live_frame(name: str, camera: str) -> None:
    h, w = 48, 64
    env = envs.make_env(name, seed=1, render_quality="full", camera=camera)
    twin = _twin(env, w, h)
    acts = _random_actions(12, seed=1)
    for act in acts[:5]:
        env.step(act)
    live = _twin_frame(twin, env)  # the frame of s_5 (the package's step ends in mj_forward)
    stored = env.step(acts[5])[4]["sim_state"].copy()  # its sim_state is s_5
    for act in acts[6:9]:
        env.step(act)
    frame = env.render_state(stored, width=w, height=h)
    assert frame.shape == (h, w, 3) and frame.dtype == np.uint8 and frame.std() > 5
    np.testing.assert_array_equal(frame, live)
    # A new episode moves the fixture and goal: the stored state still shows its own episode.
    env.reset()
    assert not np.array_equal(env.render_live(w, h), live)
    np.testing.assert_array_equal(env.render_state(stored, width=w, height=h), live)
    # After reset the package leaves the kinematics of its last model edit un-forwarded (the
    # drawer is drawn where the last episode put it); frames are of the state, forwarded.
    np.testing.assert_array_equal(env.render_live(w, h), _twin_frame(twin, env, forward=True))
    # Rendering left the live episode untouched.
    snap = env.get_env_state()
    copy = envs.make_env(name, seed=2)
    copy.set_env_state(snap)
    for act in acts[9:]:
        np.testing.assert_array_equal(env.step(act)[0], copy.step(act)[0])
    with pytest.raises(ValueError, match="sim_state must have shape"):
        env.render_state(stored[:-1])
    with pytest.raises(ValueError, match="unknown camera 'nope'.*three_quarter.*corner2"):
        envs.make_env(name, camera="nope")
    _close_twin(twin)
    env.close()
    copy.close()


def test_fast_render_quality_and_pixel_observations() -> None:
    from pbrl.envs.mujoco import make_renderer

    env = envs.make_env("mw_window_open", seed=4, obs="pixels", pixel_size=(48, 64))
    assert env.observation_space.shape == (9, 48, 64)
    obs, info = env.reset(seed=4)
    assert obs.shape == (9, 48, 64) and obs.dtype == np.uint8
    first = env.render_state(info["sim_state"], width=64, height=48).transpose(2, 0, 1)
    for k in range(3):
        np.testing.assert_array_equal(obs[3 * k : 3 * k + 3], first)
    base = env.env  # the MetaWorldEnv inside PixelObservation
    for act in _random_actions(3, seed=4):
        obs, reward, _, _, info = env.step(act)
        assert info["true_reward"] == reward and info["state_obs"].shape == (39,)
    # "fast" (default) frames equal a fast mujoco.Renderer on a copy of the live MjData.
    r = make_renderer(base._model, 48, 64, "fast")
    r.update_scene(base._data, camera=mw_mod.resolve_camera(base._model, base.camera))
    live = r.render().copy()
    r._gl_context.make_current()
    r.close()
    np.testing.assert_array_equal(obs[6:], live.transpose(2, 0, 1))
    env.close()
    venv = envs.make(
        "mw_plate_slide", num_envs=2, seed=0, obs="pixels", pixel_size=32, frame_stack=2
    )
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (2, 6, 32, 32)
    obs, rew, *_ = venv.step(_random_actions(2, seed=0))
    assert obs.shape == (2, 6, 32, 32) and rew.shape == (2,)
    assert not np.array_equal(obs[0], obs[1])
    venv.close()


def test_seeding_and_what_varies_across_resets() -> None:
    a, b = envs.make_env("mw_sweep_into", seed=3), envs.make_env("mw_sweep_into", seed=3)
    oa, ia = a.reset(seed=3)
    ob, ib = b.reset(seed=3)
    np.testing.assert_array_equal(oa, ob)
    np.testing.assert_array_equal(ia["sim_state"], ib["sim_state"])
    assert not np.array_equal(a.reset(seed=4)[0], oa)
    np.testing.assert_array_equal(a.reset(seed=3)[0], oa)  # re-seeding the same env
    for act in _random_actions(5, seed=3):
        np.testing.assert_array_equal(a.step(act)[0], b.step(act)[0])
    # B-Pref: every reset draws a new placement; fixed_goal keeps the seeded one (MT1-style).
    assert not np.array_equal(a.reset()[0][4:7], oa[4:7])
    c = envs.make_env("mw_sweep_into", seed=3, fixed_goal=True)
    first = c.reset(seed=3)[0]
    np.testing.assert_array_equal(first, oa)
    for _ in range(2):
        c.step(_random_actions(1, seed=0)[0])
        np.testing.assert_array_equal(c.reset()[0], first)
    for e in (a, b, c):
        e.close()


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_continuation_is_bit_exact(name: str) -> None:
    a = envs.make_env(name, seed=7)
    policy = _policy(name)
    obs, _ = a.reset(seed=7)
    for _ in range(15):  # scripted steps reach the object: contacts, lazily set task state
        obs = a.step(_act(policy, obs))[0]
    snap = a.get_env_state()
    c = envs.make_env(name, seed=123)  # another placement, mid-episode
    for act in _random_actions(3, seed=1):
        c.step(act)
    c.set_env_state(snap)
    for _ in range(25):
        act = _act(policy, obs)
        oa, ra, ta, tra, ia = a.step(act)
        oc, rc, tc, trc, ic = c.step(act)
        np.testing.assert_array_equal(oa, oc)
        assert (ra, ta, tra) == (rc, tc, trc)
        np.testing.assert_array_equal(ia["sim_state"], ic["sim_state"])
        assert ia["reward_factors"] == ic["reward_factors"]
        obs = oa
    # The placement RNG came along: the next unseeded reset draws the same placement.
    np.testing.assert_array_equal(a.reset()[0], c.reset()[0])
    a.close()
    c.close()


def test_checkpoint_keeps_the_episode_limit_and_statistics() -> None:
    a = envs.make_env("mw_door_open", seed=0)
    acts = _random_actions(500, seed=0)
    for act in acts[:490]:
        a.step(act)
    c = envs.make_env("mw_door_open", seed=1)
    c.set_env_state(a.get_env_state())
    for t, act in enumerate(acts[490:], start=491):
        ra, rc = a.step(act), c.step(act)
        assert ra[3] == rc[3] == (t == 500) and not ra[2]
    assert ra[4]["episode"] == rc[4]["episode"] and ra[4]["episode"]["l"] == 500
    a.close()
    c.close()


def test_max_episode_steps_and_vector_autoreset() -> None:
    venv = envs.make("mw_window_open", num_envs=2, seed=0, max_episode_steps=4)
    first, _ = venv.reset(seed=0)
    for t in range(1, 5):
        obs, _, term, trunc, info = venv.step(_random_actions(2, seed=t))
    assert trunc.all() and not term.any() and info["episode"]["l"].tolist() == [4, 4]
    obs, *_ = venv.step(_random_actions(2, seed=9))  # gymnasium's next-step autoreset
    assert not np.array_equal(obs[:, 4:7], first[:, 4:7])  # a new placement
    venv.close()


def test_the_weld_adapter_writes_the_packages_values() -> None:
    """MuJoCo >= 3.4 has a 12th eq_data column; the package's 11 are written, it is kept."""
    env = envs.make_env("mw_button_press")
    model = env._model
    weld = int(np.flatnonzero(model.eq_type == mujoco.mjtEq.mjEQ_WELD)[0])
    fresh = mujoco.MjModel.from_xml_path(env.mw.fullpath)
    width = mw_mod._PACKAGE_WELD_WIDTH
    if model.eq_data.shape[1] > width:
        np.testing.assert_array_equal(model.eq_data[weld, width:], fresh.eq_data[weld, width:])
    # zero offset between hand and mocap, torque scale 5 (metaworld's reset_mocap_welds)
    np.testing.assert_array_equal(model.eq_data[weld, 3:6], 0.0)
    assert model.eq_data[weld, 10] == 5.0
    env.close()


def test_reset_moves_only_the_model_rows_the_state_stores() -> None:
    """Each task's table names every body/site position its reset rewrites."""
    for name in NAMES:
        env = envs.make_env(name, seed=0)
        fresh = mujoco.MjModel.from_xml_path(env.mw.fullpath)
        moved_b, moved_s = set(), set()
        for seed in range(3):
            env.reset(seed=seed)
            moved_b |= set(np.flatnonzero((env._model.body_pos != fresh.body_pos).any(1)))
            moved_s |= set(np.flatnonzero((env._model.site_pos != fresh.site_pos).any(1)))
        assert moved_b <= set(env._bodies.tolist()), name
        assert moved_s <= set(env._sites.tolist()), name
        env.close()


def test_missing_package_still_registers_and_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "metaworld", None)  # `import metaworld` now fails
    assert "mw_button_press" in envs.names("metaworld")
    with pytest.raises(envs.MissingExtraError, match=r"pip install 'pbrl\[metaworld\]'") as err:
        envs.make_env("mw_button_press")
    assert "pip install --no-deps 'metaworld" in str(err.value)
