"""The Franka suite keeps the PbrlEnv contract, and its dynamics and control are real.

Vector env, factors that reproduce the reward, pre-step sim state, re-rendering against a
renderer on the live simulator, pixels, seeding, bit-exact checkpoints, and scripted
controllers (written here) that reach, pick-and-place, push and pack groceries.
"""

from __future__ import annotations

import importlib.util

import mujoco
import numpy as np
import pytest

from pbrl import envs
from pbrl.envs import franka

needs_assets = pytest.mark.skipif(
    importlib.util.find_spec("gymnasium_robotics") is None,
    reason="the Franka suite needs pbrl[franka] (gymnasium-robotics ships the Panda model)",
)

NAMES = ["franka_grocery", "franka_pick_place", "franka_push", "franka_reach"]


def _actions(env, n: int, seed: int) -> np.ndarray:
    space = env.action_space
    return np.random.default_rng(seed).uniform(-1, 1, (n, *space.shape)).astype(np.float32)


# --- scripted controllers (ee control): proportional moves of the grip point -------------
def _toward(core: franka.FrankaCore, target: np.ndarray, gain: float = 1.0) -> np.ndarray:
    return np.clip((target - core.grip_pos) / franka.EE_STEP * gain, -1.0, 1.0)


def _pick_and_carry(core: franka.FrankaCore, i: int, place: np.ndarray, mem: dict) -> np.ndarray:
    """Grasp item ``i`` from above, carry it so its centre reaches ``place``, keep holding."""
    obj, grip = core.item_pos(i), core.grip_pos
    phase = mem.setdefault("phase", "above")
    if phase == "above":
        target = obj + [0.0, 0.0, 0.1]
        if np.linalg.norm(grip - target) < 0.015:
            mem["phase"] = "down"
        return np.r_[_toward(core, target), -1.0]
    if phase == "down":
        target = np.r_[obj[:2], max(obj[2], 0.025)]
        if np.linalg.norm(grip - target) < 0.01:
            mem["phase"], mem["t"] = "close", 0
        return np.r_[_toward(core, target), -1.0]
    if phase == "close":
        mem["t"] += 1
        if mem["t"] > 6:
            mem["phase"] = "carry"
        return np.array([0.0, 0.0, 0.0, 1.0])
    return np.r_[_toward(core, place + (grip - obj)), 1.0]


def _pack(core: franka.FrankaCore, i: int, place_xy: np.ndarray, mem: dict) -> np.ndarray:
    """Grocery: grasp item ``i``, raise it, carry it over ``place_xy``, set it down, let go."""
    item, obj, grip = core.items[i], core.item_pos(i), core.grip_pos
    phase = mem.get("phase", "above")
    if phase in ("above", "down", "close"):
        return _pick_and_carry(core, i, obj, mem)
    held = grip - obj  # the grip point's offset from the held item's centre
    if phase in ("carry", "raise"):  # straight up first, clear of the other items
        mem["phase"] = "raise" if grip[2] < 0.17 else "over"
        return np.r_[_toward(core, np.r_[grip[:2], 0.2]), 1.0]
    if phase == "over":
        if np.linalg.norm(obj[:2] - place_xy) < 0.01:
            mem["phase"] = "lower"
        return np.r_[_toward(core, np.r_[place_xy + held[:2], 0.2]), 1.0]
    if phase == "lower":
        if obj[2] < item.rest_z + 0.005:
            mem["phase"], mem["t"] = "open", 0
        return np.r_[_toward(core, np.r_[place_xy, item.rest_z] + held), 1.0]
    mem["t"] += 1
    if mem["t"] > 15:
        mem["phase"] = "done"
    return np.array([0.0, 0.0, 0.0 if mem["t"] <= 5 else 1.0, -1.0])


def _push(core: franka.FrankaCore, mem: dict) -> np.ndarray:
    """Closed fingers come down behind the cube and push it along the line to the goal."""
    obj, goal, grip = core.item_pos(0), core.goal_pos, core.grip_pos
    if "dir" not in mem:
        d = goal[:2] - obj[:2]
        mem["dir"], mem["phase"] = d / np.linalg.norm(d), "above"
    d = mem["dir"]
    behind = np.r_[obj[:2] - 0.055 * d, 0.03]
    if mem["phase"] == "above":
        target = behind + [0.0, 0.0, 0.06]
        if np.linalg.norm(grip - target) < 0.015:
            mem["phase"] = "down"
        return np.r_[_toward(core, target), 1.0]
    if mem["phase"] == "down":
        if abs(grip[2] - behind[2]) < 0.01:
            mem["phase"] = "push"
        return np.r_[_toward(core, behind), 1.0]
    return np.r_[_toward(core, np.r_[goal[:2] - 0.045 * d, 0.03], gain=0.5), 1.0]


# --- registry ---------------------------------------------------------------------------
def test_names_are_registered_and_a_missing_asset_package_names_the_extra(monkeypatch) -> None:
    assert envs.names("franka") == NAMES
    monkeypatch.setattr(franka.importlib.util, "find_spec", lambda name: None)
    assert envs.names("franka") == NAMES  # still listed
    with pytest.raises(envs.MissingExtraError, match=r"pbrl\[franka\]") as err:
        envs.make_env("franka_reach")
    assert "gymnasium-robotics" in str(err.value) and "Franka" in str(err.value)


@needs_assets
def test_home_pose_points_the_gripper_down_at_the_documented_spot() -> None:
    env = envs.make_env("franka_reach", seed=0)
    core = env.core
    np.testing.assert_allclose(core.grip_pos, [0.45, 0.0, 0.25], atol=2e-3)
    z_axis = core.data.site_xmat[core._grip].reshape(3, 3)[:, 2]
    np.testing.assert_allclose(z_axis, [0.0, 0.0, -1.0], atol=1e-3)
    assert env.observation_space.shape == (28,) and env.action_space.shape == (4,)
    env.close()


# --- contract ---------------------------------------------------------------------------
@needs_assets
@pytest.mark.parametrize("name", NAMES)
def test_vector_env_factors_reproduce_the_reward_and_state_is_pre_step(name: str) -> None:
    venv = envs.make(name, num_envs=2, seed=0)
    single = venv.envs[0]
    obs, info = venv.reset(seed=5)
    assert obs.shape == (2, *single.observation_space.shape) and obs.dtype == np.float32
    assert info["sim_state"].shape == (2, single.state_dim)
    assert not np.array_equal(obs[0], obs[1])  # seeds 5 and 6 place things differently
    for act in _actions(venv, 6, seed=0):
        before = np.stack([e._get_sim_state() for e in venv.envs])
        obs, reward, term, trunc, info = venv.step(act)
        np.testing.assert_array_equal(info["sim_state"], before)
        np.testing.assert_array_equal(info["true_reward"], reward)
        factors = {k: v for k, v in info["reward_factors"].items() if not k.startswith("_")}
        assert set(factors) == set(single.factor_names)
        # The documented function of the factors *is* the reward, to the last bit.
        np.testing.assert_array_equal(single.reward_from_factors(factors), reward)
        assert info["success"].dtype == bool and not term.any()
        assert "factors" not in info and "is_success" not in info
    venv.close()


@needs_assets
def test_reward_is_the_documented_weighted_sum_and_hidden_factors_do_not_enter() -> None:
    env = envs.make_env("franka_grocery", seed=0, control="joint")
    assert env.action_space.shape == (8,)
    for act in _actions(env, 5, seed=1):
        _, reward, _, _, info = env.step(act)
        f = info["reward_factors"]
        want = (
            -0.5 * f["reach_dist"]
            + 0.25 * f["grasp"]
            - f["obj_to_goal"]
            + f["in_goal"]
            - 0.01 * f["ctrl_cost"]
            + f["success"]
        )
        assert reward == pytest.approx(want, rel=1e-12, abs=1e-12)
        assert f["ctrl_cost"] == pytest.approx(float(act[:-1] @ act[:-1]), rel=1e-6)
        hidden = dict(f, fragile_gap=0.0, fragile_apart=1.0 - f["fragile_apart"], user_success=1)
        assert env.reward_from_factors(hidden) == reward
    env.close()


@needs_assets
def test_render_state_equals_the_live_frame() -> None:
    h, w = 48, 64
    env = envs.make_env("franka_pick_place", seed=1)
    core = env.core
    live_renderer = mujoco.Renderer(core.model, height=h, width=w)
    acts = _actions(env, 16, seed=1)
    for act in acts[:5]:
        env.step(act)
    live_renderer.update_scene(core.data, camera="front")
    live = live_renderer.render().copy()  # the live simulator's frame of s_5
    _, _, _, _, info = env.step(acts[5])  # its sim_state is s_5
    stored = info["sim_state"].copy()
    for act in acts[6:12]:
        env.step(act)
    snap = env.get_env_state()
    frame = env.render_state(stored, width=w, height=h)
    assert frame.shape == (h, w, 3) and frame.dtype == np.uint8 and frame.std() > 5
    np.testing.assert_array_equal(frame, live)  # pixel for pixel
    assert not np.array_equal(frame, env.render_live(w, h))  # a different state looks different
    # Re-rendering left the live episode untouched: it goes on exactly like a restored copy.
    copy = envs.make_env("franka_pick_place", seed=2)
    copy.set_env_state(snap)
    for act in acts[12:]:
        np.testing.assert_array_equal(env.step(act)[0], copy.step(act)[0])
    with pytest.raises(ValueError, match="sim_state must have shape"):
        env.render_state(stored[:-1])
    live_renderer.close()
    env.close()
    copy.close()


@needs_assets
def test_sim_state_holds_the_goal_so_frames_show_it() -> None:
    """The goal marker is a mocap body: a state from another episode re-renders its goal."""
    env = envs.make_env("franka_reach", seed=0)
    _, first = env.reset(seed=0)
    _, second = env.reset(seed=1)
    a = env.render_state(first["sim_state"], 64, 64)
    b = env.render_state(second["sim_state"], 64, 64)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, env.render_state(first["sim_state"], 64, 64))
    env.close()


@needs_assets
def test_pixel_observations_have_the_promised_shape() -> None:
    env = envs.make_env("franka_push", seed=0, obs="pixels", pixel_size=(48, 64), frame_stack=2)
    assert env.observation_space.shape == (6, 48, 64)
    obs, info = env.reset(seed=0)
    assert obs.shape == (6, 48, 64) and obs.dtype == np.uint8
    obs, _, _, _, info = env.step(env.action_space.sample())
    assert info["state_obs"].shape == (44,) and "success" in info
    _, _, _, _, info = env.step(env.action_space.sample())
    last = env.render_state(info["sim_state"], width=64, height=48).transpose(2, 0, 1)
    np.testing.assert_array_equal(obs[3:], last)
    env.close()


@needs_assets
@pytest.mark.parametrize("name", ["franka_push", "franka_grocery"])
def test_seeding_reproduces_resets_and_steps(name: str) -> None:
    a, b = envs.make_env(name, seed=3), envs.make_env(name, seed=3)
    oa, ia = a.reset(seed=3)
    ob, ib = b.reset(seed=3)
    np.testing.assert_array_equal(oa, ob)
    np.testing.assert_array_equal(ia["sim_state"], ib["sim_state"])
    assert not np.array_equal(a.reset(seed=4)[0], oa)  # object and goal drawn anew
    np.testing.assert_array_equal(a.reset(seed=3)[0], oa)
    for act in _actions(a, 5, seed=3):
        np.testing.assert_array_equal(a.step(act)[0], b.step(act)[0])
    a.close()
    b.close()


@needs_assets
@pytest.mark.parametrize("control", ["ee", "joint"])
def test_checkpoint_continuation_is_bit_exact(control: str) -> None:
    a = envs.make_env("franka_pick_place", seed=7, control=control)
    acts = _actions(a, 30, seed=7)
    for act in acts[:10]:
        a.step(act)
    snap = a.get_env_state()
    c = envs.make_env("franka_pick_place", seed=123, control=control)
    for act in acts[:3]:
        c.step(act)
    c.set_env_state(snap)
    for act in acts[10:]:
        oa, ra, ta, tra, ia = a.step(act)
        oc, rc, tc, trc, ic = c.step(act)
        np.testing.assert_array_equal(oa, oc)
        assert (ra, ta, tra) == (rc, tc, trc)
        np.testing.assert_array_equal(ia["sim_state"], ic["sim_state"])
        assert ia["reward_factors"] == ic["reward_factors"]
    # The env's RNG came along: the next unseeded reset draws the same object and goal.
    np.testing.assert_array_equal(a.reset()[0], c.reset()[0])
    a.close()
    c.close()


@needs_assets
def test_episodes_truncate_at_the_task_length() -> None:
    env = envs.make_env("franka_reach", seed=0)
    assert env.max_episode_steps == 50
    total = 0.0
    for t, act in enumerate(_actions(env, 50, seed=0), start=1):
        _, r, term, trunc, info = env.step(act)
        total += r
        assert not term and trunc == (t == 50)
    assert info["episode"] == {"r": pytest.approx(total), "l": 50}
    env.close()


# --- the dynamics and the control are real ---------------------------------------------
@needs_assets
def test_joint_control_moves_the_commanded_joint() -> None:
    env = envs.make_env("franka_reach", seed=0, control="joint")
    q0 = env.core.data.qpos[:7].copy()
    for _ in range(5):
        env.step(np.array([1, 0, 0, 0, 0, 0, -1, -1], np.float32))
    dq = env.core.data.qpos[:7] - q0
    assert dq[0] > 0.1 and dq[6] < -0.1  # joint 1 forward, joint 7 back
    assert np.abs(dq[1:6]).max() < 0.05
    env.close()


@needs_assets
def test_scripted_reach_succeeds_and_keeps_the_gripper_down() -> None:
    env = envs.make_env("franka_reach", seed=0)
    for seed in (0, 1, 2):
        env.reset(seed=seed)
        core = env.core
        steps = 0
        while steps < env.max_episode_steps:
            _, _, _, _, info = env.step(np.r_[_toward(core, core.goal_pos), -1.0])
            steps += 1
            if info["success"]:
                break
        assert info["success"] and steps <= 25, (seed, steps)
        assert info["reward_factors"]["reach_dist"] < franka.SUCCESS_DIST
        z_axis = core.data.site_xmat[core._grip].reshape(3, 3)[:, 2]
        assert z_axis[2] < -0.99  # the IK held the orientation
    env.close()


@needs_assets
def test_scripted_pick_and_place_grasps_lifts_and_succeeds() -> None:
    env = envs.make_env("franka_pick_place", seed=0)
    for seed in (0, 1, 2):
        env.reset(seed=seed)
        core, mem, seen = env.core, {}, set()
        for _ in range(env.max_episode_steps):
            act = _pick_and_carry(core, 0, core.goal_pos, mem)
            _, _, _, trunc, info = env.step(act)
            f = info["reward_factors"]
            if f["grasp"]:
                seen.add("grasp")
            if f["lift"] > 0.01:
                seen.add("lift")
            if trunc:
                break
        assert seen == {"grasp", "lift"}, seed
        assert info["success"] and f["obj_to_goal"] < 0.01, (seed, f)  # held at the goal
    env.close()


@needs_assets
def test_scripted_push_moves_the_cube_onto_the_goal() -> None:
    env = envs.make_env("franka_push", seed=0)
    solved = []
    for seed in (1, 4, 5):
        env.reset(seed=seed)
        mem: dict = {}
        start = env.core.item_pos(0).copy()
        for _ in range(env.max_episode_steps):
            _, _, _, _, info = env.step(_push(env.core, mem))
        assert np.linalg.norm(env.core.item_pos(0) - start) > 0.05  # the cube was pushed
        solved.append(info["success"])
    assert sum(solved) >= 2, solved
    env.close()


@needs_assets
def test_grocery_hidden_criterion_tells_arrangements_apart() -> None:
    """Two packings that both solve the task; only one keeps the eggs away from the cans."""
    env = envs.make_env("franka_grocery", seed=0)
    results = []
    for eggs_apart in (True, False):
        env.reset(seed=2)
        core = env.core
        bag = core.goal_pos[:2].copy()
        s = np.sign(bag[1])
        eggs_at = bag + ([0.09, s * 0.07] if eggs_apart else [-0.08, s * 0.06])
        places = [eggs_at, bag + [-0.08, -s * 0.07], bag + [-0.09, s * 0.05]]
        if not eggs_apart:
            places[2] = bag + [0.02, s * 0.06]  # the jar right beside the carton
        for i, place in enumerate(places):
            mem: dict = {}
            while mem.get("phase") != "done":
                _, _, _, trunc, info = env.step(_pack(core, i, place, mem))
                assert not trunc, (eggs_apart, i, mem)
        results.append(info["reward_factors"])
    apart, crowded = results
    for f in (apart, crowded):
        assert f["success"] == 1.0 and f["in_goal"] == 1.0 and f["obj_to_goal"] == 0.0
    assert apart["fragile_apart"] == 1.0 and apart["user_success"] == 1.0
    assert crowded["fragile_apart"] == 0.0 and crowded["user_success"] == 0.0
    assert apart["fragile_gap"] >= franka.FRAGILE_GAP > crowded["fragile_gap"]
    env.close()
