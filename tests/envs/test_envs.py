"""Every registered env keeps the PbrlEnv contract (pbrl/envs/base.py).

Rewards and factors, the pre-step sim state, re-rendering from a stored state against an
independent live render, seeding, bit-exact checkpoint continuation, the registry's errors,
and the dm_control reward formulas against dm_control's own ``rewards.tolerance``.
"""

from __future__ import annotations

import gc

import gymnasium as gym
import mujoco
import numpy as np
import pytest

from pbrl import envs
from pbrl.envs import dmc
from pbrl.envs.base import PbrlEnv, _time_view, factor_reader, find_wrapper, state_reader
from pbrl.envs.dmc import render_physics
from pbrl.envs.mujoco import LOCOMOTION

ALL = envs.names("mujoco") + envs.names("dm_control")
GYM = [n for n in ALL if n in LOCOMOTION]
DMC = [n for n in ALL if n in dmc.TASKS]
REQUIRED = {
    "halfcheetah",
    "hopper",
    "walker2d",
    "ant",
    "walker_walk",
    "cheetah_run",
    "quadruped_walk",
}

# One render test per simulator model: walker_run/quadruped_run share the walk tasks' models.
RENDER = list(
    {
        (dmc.TASKS[n][0] if n in dmc.TASKS else n): n
        for n in sorted(ALL, key=lambda n: n in REQUIRED)
    }.values()
)


def _actions(env: gym.Env, n: int, seed: int) -> np.ndarray:
    space = env.action_space
    rng = np.random.default_rng(seed)
    return rng.uniform(space.low, space.high, (n, *space.shape)).astype(np.float32)


def test_registry_has_the_core_envs_and_every_env_is_listed_once() -> None:
    assert REQUIRED <= set(ALL)
    assert len(ALL) == len(set(ALL)) == len(GYM) + len(DMC)
    assert envs.names("mujoco") == sorted(GYM) and envs.names("dm_control") == sorted(DMC)


def test_unknown_name_error_lists_the_valid_names() -> None:
    for call in (lambda: envs.make_env("halfchetah"), lambda: envs.make("halfchetah", 2)):
        with pytest.raises(envs.UnknownEnvError) as err:
            call()
        assert isinstance(err.value, KeyError)
        msg = str(err.value)
        assert "'halfchetah'" in msg
        assert all(n in msg for n in ALL)


def test_register_rejects_duplicates_and_missing_extra_names_the_extra() -> None:
    with pytest.raises(ValueError, match="already registered"):
        envs.register("hopper", lambda **kw: None, suite="mujoco", description="dup")  # type: ignore[arg-type,return-value]
    err = envs.MissingExtraError("franka", "franka", "robosuite")
    assert isinstance(err, ImportError)
    assert "pip install 'pbrl[franka]'" in str(err) and "robosuite" in str(err)


@pytest.mark.parametrize("name", ALL)
def test_vector_env_reward_factors_and_pre_step_state(name: str) -> None:
    venv = envs.make(name, num_envs=2, seed=0)
    single = venv.envs[0]
    assert isinstance(single, PbrlEnv)
    obs, info = venv.reset(seed=5)
    assert obs.shape == (2, *single.observation_space.shape)
    assert obs.dtype == single.observation_space.dtype  # gymnasium: float64, ours: float32
    assert info["sim_state"].shape == (2, single.state_dim)
    assert info["sim_state"].dtype == np.float64
    assert not np.array_equal(obs[0], obs[1])  # seeds 5 and 6 start differently
    if name in dmc.TASKS:
        np.testing.assert_array_equal(single.action_space.low, -1.0)
        np.testing.assert_array_equal(single.action_space.high, 1.0)
    acts = _actions(venv, 8, seed=0)
    for act in acts:
        before = np.stack([e._get_sim_state() for e in venv.envs])
        obs, reward, term, trunc, info = venv.step(act)
        if term.any() or trunc.any():
            break
        # info["sim_state"] is the state *before* this step, for each copy.
        np.testing.assert_array_equal(info["sim_state"], before)
        np.testing.assert_array_equal(info["true_reward"], reward)
        # The vector env adds "_name" masks beside each aggregated key.
        factors = {k: v for k, v in info["reward_factors"].items() if not k.startswith("_")}
        assert set(factors) == set(single.factor_names)
        np.testing.assert_allclose(single.reward_from_factors(factors), reward, atol=1e-5)
        assert "success" not in info  # none of these tasks has a success flag
    venv.close()


def _live_frame(env: PbrlEnv, twin: gym.Env | None, height: int, width: int) -> np.ndarray:
    """The live simulator's frame now, rendered by the simulator's own renderer.

    dm_control: ``physics.render`` on the live physics (its step leaves the kinematics up to
    date). gymnasium: the env's own ``render()`` (camera "track") on a twin that holds a copy
    of the live ``mjData`` brought up to date with ``mj_forward`` — gymnasium's step leaves
    ``xpos`` one substep behind ``qpos``, and the frame of ``s_t`` should show ``qpos_t``.
    """
    if twin is None:
        return np.asarray(render_physics(env.core.physics, height, width, env.render_quality))
    mujoco.mj_copyData(twin.unwrapped.data, env._model, env._data)
    mujoco.mj_forward(twin.unwrapped.model, twin.unwrapped.data)
    return twin.render()


@pytest.mark.parametrize("name", RENDER)
def test_render_state_equals_the_live_frame(name: str) -> None:
    h, w = 48, 64
    # "full": gymnasium's own look, so its render() is an independent reference
    env = envs.make_env(name, seed=1, render_quality="full")
    twin = None
    if name in LOCOMOTION:
        gym_id = LOCOMOTION[name][0]
        twin = gym.make(gym_id, render_mode="rgb_array", width=w, height=h, camera_name="track")
        twin.reset(seed=0)
    env.reset(seed=1)
    acts = _actions(env, 16, seed=1)
    for act in acts[:5]:
        env.step(act)
    live = _live_frame(env, twin, h, w).copy()  # the frame of s_5
    _, _, _, _, info = env.step(acts[5])  # its sim_state is s_5
    stored = info["sim_state"].copy()
    for act in acts[6:12]:
        env.step(act)
    snap = env.get_env_state()
    frame = env.render_state(stored, width=w, height=h)
    assert frame.shape == (h, w, 3) and frame.dtype == np.uint8
    assert frame.std() > 5  # a scene, not a blank image
    np.testing.assert_array_equal(frame, live)  # pixel for pixel
    # Re-rendering left the live episode untouched: it goes on exactly like a restored copy.
    copy = envs.make_env(name, seed=2)
    copy.set_env_state(snap)
    for act in acts[12:]:
        np.testing.assert_array_equal(env.step(act)[0], copy.step(act)[0])
    with pytest.raises(ValueError, match="sim_state must have shape"):
        env.render_state(stored[:-1])
    for e in (env, copy, twin):
        if e is not None:
            e.close()


@pytest.mark.parametrize("name", ALL)
def test_seeding_reproduces_observations(name: str) -> None:
    a, b = envs.make_env(name, seed=3), envs.make_env(name, seed=3)
    oa, ia = a.reset(seed=3)
    ob, ib = b.reset(seed=3)
    np.testing.assert_array_equal(oa, ob)
    np.testing.assert_array_equal(ia["sim_state"], ib["sim_state"])
    assert not np.array_equal(a.reset(seed=4)[0], oa)
    np.testing.assert_array_equal(a.reset(seed=3)[0], oa)  # re-seeding the same env
    for act in _actions(a, 5, seed=3):
        np.testing.assert_array_equal(a.step(act)[0], b.step(act)[0])
    a.close()
    b.close()


@pytest.mark.parametrize("name", ALL)
def test_checkpoint_continuation_is_bit_exact(name: str) -> None:
    a = envs.make_env(name, seed=7)
    acts = _actions(a, 30, seed=7)
    for act in acts[:10]:
        a.step(act)
    snap = a.get_env_state()
    c = envs.make_env(name, seed=123)  # a fresh env in another state
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
        if ta or tra:  # an early fall in hopper/walker2d: the episode ends in both alike
            assert ia["episode"] == ic["episode"]
            break
    # The env's RNG came along: the next unseeded reset draws the same initial state.
    np.testing.assert_array_equal(a.reset()[0], c.reset()[0])
    a.close()
    c.close()


def test_checkpoint_keeps_time_limit_and_episode_statistics() -> None:
    """Restored near the time limit, the copy truncates on the same step with the same return."""
    a = envs.make_env("halfcheetah", seed=0)  # never terminates: only the time limit ends it
    assert a.max_episode_steps == 1000
    acts = _actions(a, 1000, seed=0)
    for act in acts[:990]:
        a.step(act)
    c = envs.make_env("halfcheetah", seed=1)
    c.set_env_state(a.get_env_state())
    assert find_wrapper(c, gym.wrappers.TimeLimit)._elapsed_steps == 990
    for t, act in enumerate(acts[990:], start=991):
        ra, rc = a.step(act), c.step(act)
        assert ra[3] == rc[3] == (t == 1000) and not ra[2]
    assert ra[4]["episode"] == rc[4]["episode"]
    assert ra[4]["episode"]["l"] == 1000
    a.close()
    c.close()


@pytest.mark.parametrize("name", ["walker_walk", "hopper"])
def test_checkpointed_simulator_is_compressed_and_older_plain_pickles_still_restore(
    name: str,
) -> None:
    """A checkpoint's MjData is zlib-packed (its arena is mostly zeros); a snapshot written
    before that (a plain pickle) restores to the same continuation."""
    import pickle
    import zlib

    a = envs.make_env(name, seed=0)
    acts = _actions(a, 16, seed=5)
    for act in acts[:8]:
        a.step(act)
    snap = a.get_env_state()
    np.testing.assert_array_equal(a.live_sim_state(), snap["state"])  # the cheap accessor
    packed = snap["sim"]["data"]
    plain = pickle.dumps(pickle.loads(zlib.decompress(packed)))
    assert len(packed) * 5 < len(plain)  # walker_walk: 0.7 MB instead of 12 MB
    old = {**snap, "sim": {**snap["sim"], "data": plain}}
    b, c = envs.make_env(name, seed=9), envs.make_env(name, seed=9)
    b.set_env_state(snap)
    c.set_env_state(old)
    for act in acts[8:]:
        ra, rb, rc = a.step(act), b.step(act), c.step(act)
        np.testing.assert_array_equal(ra[0], rb[0])
        np.testing.assert_array_equal(ra[0], rc[0])
        np.testing.assert_array_equal(ra[4]["sim_state"], rc[4]["sim_state"])
    for e in (a, b, c):
        e.close()


@pytest.mark.parametrize("name", ["halfcheetah", "pendulum"])
def test_stepping_under_the_time_limit_wrappers_matches_stepping_through_them(name: str) -> None:
    """pbrl steps the env under gymnasium's TimeLimit/OrderEnforcing and truncates itself:
    same observations, rewards and ending step as gym.make's stack, and the same refusals."""
    from gymnasium.error import ResetNeeded
    from gymnasium.wrappers import OrderEnforcing, TimeLimit

    from pbrl.envs.classic import PendulumEnv
    from pbrl.envs.mujoco import make_locomotion

    # a task whose own limit (gym.make's TimeLimit) is 30 steps
    env = make_locomotion(name, max_episode_steps=30) if name != "pendulum" else PendulumEnv(
        max_episode_steps=30)  # fmt: skip
    raw = env.env  # gym.make's stack, stepped through its wrappers
    assert {type(raw), type(raw.env)} == {TimeLimit, OrderEnforcing}
    with pytest.raises(ResetNeeded, match="before calling reset"):
        env.step(env.action_space.sample())  # refused before any reset, as OrderEnforcing does
    obs, _ = env.reset(seed=4)
    assert env._inner_step.__self__ is env.unwrapped  # the two wrappers' steps are skipped
    acts = _actions(env, 30, seed=1)
    # env and raw share one simulator: raw steps from a snapshot, then env from the same one
    for t, act in enumerate(acts, start=1):
        snap = env.get_env_state()
        raw._elapsed_steps = t - 1  # gym.make's own count, as if it had made every step
        o2, r2, term2, trunc2, _ = raw.step(act)
        env.set_env_state(snap)
        o, r, term, trunc, info = env.step(act)
        np.testing.assert_array_equal(o, o2)
        assert (r, term, trunc) == (r2, term2, trunc2) and trunc == (t == 30)
    assert info["episode"]["l"] == 30
    # a pbrl limit above the task's keeps the task's; one below it cuts sooner
    for limit, end in ((10**6, 30), (12, 12)):
        env.set_max_episode_steps(limit)
        env.reset(seed=0)
        ends = [env.step(a)[3] for a in acts[:end]]
        assert ends == [False] * (end - 1) + [True]
    env.close()


def test_dm_control_episode_is_1000_steps_and_truncates() -> None:
    env = envs.make_env("cheetah_run", seed=0)
    assert env.max_episode_steps == 1000
    total, act = 0.0, np.zeros(env.action_space.shape, np.float32)
    for t in range(1, 1001):
        _, r, term, trunc, info = env.step(act)
        total += r
        assert not term and trunc == (t == 1000)
    assert info["episode"] == {"r": pytest.approx(total), "l": 1000}
    env.close()


def test_max_episode_steps_override_truncates_and_reports_the_episode() -> None:
    env = envs.make_env("walker_walk", seed=0, max_episode_steps=7)
    assert env.max_episode_steps == 7
    total = 0.0
    for act in _actions(env, 7, seed=0):
        _, r, term, trunc, info = env.step(act)
        total += r
    assert trunc and not term
    assert info["episode"] == {"r": pytest.approx(total), "l": 7}
    env.close()


@pytest.mark.parametrize(
    ("x", "lower", "margin", "sigmoid", "value", "want"),
    [
        (1.3, 1.2, 0.6, "gaussian", 0.1, 1.0),  # in bounds
        (0.6, 1.2, 0.6, "gaussian", 0.1, 0.1),  # one margin out: value_at_margin
        (0.9, 1.2, 0.6, "gaussian", 0.1, 0.1**0.25),  # half a margin: exp(-d^2 s^2 / 2)
        (5.0, 10.0, 10.0, "linear", 0.0, 0.5),  # cheetah_run at 5 m/s
        (-1.0, 10.0, 10.0, "linear", 0.0, 0.0),  # beyond the margin
        (0.5, 1.0, 0.5, "linear", 0.5, 0.5),  # walker move at one margin out
        (0.75, 1.0, 0.5, "linear", 0.5, 0.75),
    ],
)
def test_tolerance_matches_hand_values_and_dm_control(
    x: float, lower: float, margin: float, sigmoid: str, value: float, want: float
) -> None:
    from dm_control.utils import rewards

    got = dmc._lower_tolerance(lower, margin, sigmoid, value)(x)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
    ref = rewards.tolerance(
        x, bounds=(lower, float("inf")), margin=margin, sigmoid=sigmoid, value_at_margin=value
    )
    assert got == pytest.approx(float(ref), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("name", DMC)
def test_dm_control_factors_are_the_tasks_own_terms(name: str) -> None:
    """Each factor equals the suite's term computed by dm_control's code on the same physics."""
    from dm_control.suite import quadruped
    from dm_control.utils import rewards

    env = envs.make_env(name, seed=2)
    p, task = env.core.physics, env.core.task
    for act in _actions(env, 15, seed=2):
        _, r, _, _, info = env.step(act)
        f = info["reward_factors"]
        # the fused step's reward is the factors' function: the task's to ~1 ulp
        assert r == pytest.approx(float(task.get_reward(p)), rel=1e-12, abs=1e-15)
        if env.core.domain == "walker":
            standing = rewards.tolerance(p.torso_height(), (1.2, float("inf")), margin=0.6)
            assert f["standing"] == pytest.approx(standing, rel=1e-12, abs=1e-15)
            assert f["upright"] == (1 + p.torso_upright()) / 2
            assert f["speed"] == p.horizontal_velocity()
        elif env.core.domain == "cheetah":
            assert f["speed"] == p.speed()
        else:
            assert f["upright"] == pytest.approx(quadruped._upright_reward(p), rel=1e-12)
            assert f["speed"] == p.torso_velocity()[0]
        assert float(env.reward_from_factors(f)) == pytest.approx(r, rel=1e-12, abs=1e-15)
    env.close()


@pytest.mark.parametrize("name", DMC)
def test_dm_control_fused_step_follows_dm_controls_own_step(name: str) -> None:
    """pbrl steps the task itself (no ``get_reward``): same trajectory as dm_control's step.

    Through an episode end (dm_control's 1000-step limit) and a reset; the observation is
    bit-identical, the reward equal to ~1 ulp, the ends on the same step.
    """
    env = envs.make_env(name, seed=0)
    assert env._inner_step == env._fused  # the fused step, not the core's
    raw = dmc._DMCCore(*dmc.TASKS[name], seed=0)
    o1, _ = env.reset(seed=3)
    o2, _ = raw.reset(seed=3)
    np.testing.assert_array_equal(o1, o2)
    rng = np.random.default_rng(0)
    ends = 0
    for t in range(1100):
        a = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        obs, r, term, trunc, info = env.step(a)
        obs2, r2, term2, trunc2, _ = raw.step(a)
        np.testing.assert_array_equal(obs, obs2, err_msg=f"step {t}")
        assert r == pytest.approx(r2, rel=1e-12, abs=1e-15) and info["true_reward"] == r
        assert (term, trunc) == (term2, trunc2)
        if trunc:
            ends += 1
            np.testing.assert_array_equal(env.reset()[0], raw.reset()[0])
    assert ends == 1
    env.close()
    raw.close()


def test_dm_control_task_drawing_its_reward_keeps_dm_controls_step() -> None:
    env = envs.make_env("cheetah_run", seed=0)
    env.core.task._visualize_reward = True  # after_step calls get_reward: no fused step
    assert dmc._fused_step(env.core, lambda: {}, [None]) is None
    env.close()


@pytest.mark.parametrize("name", GYM)
def test_gym_factors_are_the_envs_reward_terms(name: str) -> None:
    """Factors are the v5 env's ``reward_*`` info terms; the reward is their sum."""
    env = envs.make_env(name, seed=0)
    raw_terms = {
        "halfcheetah": {"reward_forward", "reward_ctrl"},
        "hopper": {"reward_forward", "reward_ctrl", "reward_survive"},
        "walker2d": {"reward_forward", "reward_ctrl", "reward_survive"},
        "ant": {"reward_forward", "reward_ctrl", "reward_contact", "reward_survive"},
    }
    _, r, _, _, info = env.step(_actions(env, 1, seed=0)[0])
    assert {k for k in info if k.startswith("reward_") and k != "reward_factors"} == set(
        env.factor_names
    )
    if name in raw_terms:
        assert set(env.factor_names) == raw_terms[name]
    assert sum(info[k] for k in env.factor_names) == pytest.approx(r, rel=1e-12)
    env.close()


@pytest.mark.parametrize("name", ["hopper", "cheetah_run"])
def test_fast_render_quality_re_renders_the_live_frame(name: str) -> None:
    """The default "fast" quality (no shadows/reflections/MSAA) keeps the re-render contract."""
    from pbrl.envs.mujoco import make_renderer

    h, w = 40, 56
    env = envs.make_env(name, seed=4)
    assert env.render_quality == "fast"
    acts = _actions(env, 8, seed=4)
    for act in acts[:4]:
        env.step(act)
    if name in dmc.TASKS:
        live = np.asarray(render_physics(env.core.physics, h, w, "fast")).copy()
    else:
        r = make_renderer(env._model, h, w, "fast")
        scratch = mujoco.MjData(env._model)
        mujoco.mj_copyData(scratch, env._model, env._data)
        mujoco.mj_forward(env._model, scratch)
        r.update_scene(scratch, camera="track")
        live = r.render().copy()
        r.close()
    stored = env.step(acts[4])[4]["sim_state"].copy()
    env.step(acts[5])
    frame = env.render_state(stored, width=w, height=h)
    assert frame.std() > 5
    np.testing.assert_array_equal(frame, live)
    full = envs.make_env(name, seed=4, render_quality="full")
    assert not np.array_equal(full.render_state(stored, width=w, height=h), frame)
    with pytest.raises(ValueError, match="render_quality must be one of"):
        envs.make_env(name, render_quality="ultra")
    env.close()
    full.close()


def _assert_same_infos(x: dict, y: dict, path: str = "") -> None:
    assert set(x) == set(y), (path, set(x) ^ set(y))
    for k in x:
        if isinstance(x[k], dict):
            _assert_same_infos(x[k], y[k], f"{path}/{k}")
        elif x[k].dtype == object:
            for u, v in zip(x[k], y[k], strict=True):
                assert (u is None and v is None) or np.array_equal(np.asarray(u), np.asarray(v))
        else:
            nan = x[k].dtype.kind == "f"  # pendulum's state holds NaN before its first torque
            assert x[k].dtype == y[k].dtype, (path, k)
            assert np.array_equal(x[k], y[k], equal_nan=nan), (path, k)


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("hopper", "NEXT_STEP"),
        ("hopper", "SAME_STEP"),
        ("hopper", "DISABLED"),
        ("cheetah_run", "NEXT_STEP"),
        ("pendulum", "NEXT_STEP"),
        ("mw_button_press", "NEXT_STEP"),  # the suite's own float "success" is replaced
        ("franka_reach", "NEXT_STEP"),
        ("xmagical_sweep_gripper", "NEXT_STEP"),
    ],
)
def test_pbrl_vector_env_merges_infos_exactly_like_gymnasium(name: str, mode: str) -> None:
    # NEXT_STEP/DISABLED: the contract keys come from InfoColumns; SAME_STEP: per-env dicts.
    # Either way the infos must be gymnasium's, key for key, dtype for dtype.
    from gymnasium.vector import AutoresetMode

    from pbrl.envs.vector import PbrlSyncVectorEnv

    try:
        envs.make_env(name)
    except envs.MissingExtraError as e:
        pytest.skip(str(e))
    fns = [lambda i=i: envs.make_env(name, seed=i, max_episode_steps=13 + 3 * i) for i in range(3)]
    am = AutoresetMode[mode]
    ours = PbrlSyncVectorEnv(fns, autoreset_mode=am)
    ref = gym.vector.SyncVectorEnv(fns, autoreset_mode=am)
    assert (ours._columns is None) == (mode == "SAME_STEP")
    assert isinstance(envs.make("hopper", num_envs=2), PbrlSyncVectorEnv)
    o1, i1 = ours.reset(seed=5)
    o2, i2 = ref.reset(seed=5)
    _assert_same_infos(i1, i2)
    ours.action_space.seed(0)
    ends = 0
    for _ in range(45):  # past two episode ends in every column, at different steps
        a = ours.action_space.sample()
        r1, r2 = ours.step(a), ref.step(a)
        for u, v in zip(r1[:4], r2[:4], strict=True):
            assert np.array_equal(u, v)
            assert u.dtype == v.dtype and u.shape == v.shape
        _assert_same_infos(r1[4], r2[4])
        # The columns path steps the sub-envs with its own loop: same autoreset bookkeeping,
        # and what it returns is a copy, never the env's own buffer.
        assert np.array_equal(ours._autoreset_envs, ref._autoreset_envs)
        assert not np.shares_memory(r1[0], ours._observations)
        assert not np.shares_memory(r1[1], ours._rewards)
        done = np.logical_or(r1[2], r1[3])
        ends += int(np.any(done))
        if mode == "DISABLED" and done.any():  # the caller resets finished columns
            j1, j2 = (
                ours.reset(options={"reset_mask": done}),
                ref.reset(options={"reset_mask": done}),
            )
            np.testing.assert_array_equal(j1[0], j2[0])
            _assert_same_infos(j1[1], j2[1])
    assert ends >= 2
    ours.close()
    # Closed: the sub-envs fill their own infos again.
    assert all(e._columns is None for e in ours.envs)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"theta_sq": 1.0}, "expected"),  # too few
        ({"theta_sq": 1.0, "theta_dot_sq": 1.0, "torque_sq": 1.0, "x": 1.0}, "expected"),
        ({"theta_sq": 1.0, "theta_dot_sq": 1.0, "oops": 1.0}, "lack 'torque_sq'"),
    ],
)
def test_vector_env_rejects_a_sub_env_with_wrong_factor_names(bad: dict, match: str) -> None:
    # The columns turn factor dicts into arrays once per vector step; a sub-env whose
    # factors are not exactly its factor_names must be named, not silently misaligned.
    v = envs.make("pendulum", num_envs=3, seed=0)
    v.reset(seed=0)
    v.envs[1]._factors = lambda info: dict(bad)
    with pytest.raises(ValueError, match=match):
        v.step(v.action_space.sample())
    v.close()


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6])
def test_factor_reader_reads_exactly_the_names_in_order_as_floats(k: int) -> None:
    names = tuple(f"f{i}" for i in range(k))
    info = {n: np.float32(i + 0.5) for i, n in enumerate(reversed(names))}
    info["other"] = 7.0
    out = factor_reader(names)(info)
    assert tuple(out) == names
    assert all(type(v) is float for v in out.values())
    assert out == {n: float(info[n]) for n in names}
    with pytest.raises(KeyError):
        factor_reader((*names, "missing"))(info)


def test_state_reader_equals_mj_get_state() -> None:
    env = envs.make_env("halfcheetah", seed=0)
    env.reset(seed=0)
    env.step(env.action_space.sample())
    model, data = env.unwrapped.model, env.unwrapped.data
    sig = mujoco.mjtState.mjSTATE_FULLPHYSICS
    want = np.empty(mujoco.mj_stateSize(model, sig))
    mujoco.mj_getState(model, data, want, sig)
    read = state_reader(model, data, sig)
    a, b = read(), read()
    np.testing.assert_array_equal(a, want)
    assert a is not b and a.dtype == np.float64  # a fresh vector per call
    env.close()


def test_time_view_tracks_the_struct_and_outlives_the_callers_reference() -> None:
    body = '<body><joint type="slide"/><geom size=".1"/></body>'
    xml = f"<mujoco><worldbody>{body}</worldbody></mujoco>"
    model = mujoco.MjModel.from_xml_string(xml)
    data = mujoco.MjData(model)
    data.time = 0.25
    view = _time_view(data)
    assert view is not None and view.shape == (1,) and not view.flags.writeable
    assert view[0] == data.time == 0.25  # the sentinels were written back
    for _ in range(3):
        mujoco.mj_step(model, data)
        assert view[0] == data.time
    sig = int(mujoco.mjtState.mjSTATE_FULLPHYSICS)
    read = state_reader(model, data, sig)
    assert read.__name__ == "<lambda>"
    want = np.empty(mujoco.mj_stateSize(model, sig))
    mujoco.mj_getState(model, data, want, sig)
    del data  # the reader keeps the mjData (whose struct the time view reads) alive
    gc.collect()
    np.testing.assert_array_equal(read(), want)

    class NoAddress:  # bindings without ``_address``: no view, the caller uses mj_getState
        qpos = np.zeros(1)
        time = 0.0

    assert _time_view(NoAddress()) is None


_S = mujoco.mjtState


@pytest.mark.parametrize(
    ("name", "sig", "gathered"),
    [
        ("cheetah_run", _S.mjSTATE_QPOS | _S.mjSTATE_QVEL | _S.mjSTATE_ACT, True),
        ("walker_walk", _S.mjSTATE_QPOS | _S.mjSTATE_QVEL | _S.mjSTATE_ACT, True),
        ("hopper", _S.mjSTATE_QPOS | _S.mjSTATE_QVEL | _S.mjSTATE_CTRL, True),
        ("hopper", _S.mjSTATE_QVEL | _S.mjSTATE_XFRC_APPLIED | _S.mjSTATE_WARMSTART, True),
        ("hopper", _S.mjSTATE_FULLPHYSICS, True),  # the time is read from the struct
        ("halfcheetah", _S.mjSTATE_FULLPHYSICS, True),
        ("halfcheetah", _S.mjSTATE_TIME, True),
        ("mw_button_press", _S.mjSTATE_QPOS | _S.mjSTATE_EQ_ACTIVE, False),  # bytes
        ("mw_button_press", _S.mjSTATE_QPOS | _S.mjSTATE_MOCAP_POS | _S.mjSTATE_MOCAP_QUAT, True),
    ],
)
def test_state_reader_gather_matches_mj_get_state_while_stepping(
    name: str, sig: int, gathered: bool
) -> None:
    # The state is gathered from mjData's arrays (and the time from its struct) by one index
    # (a view over its memory); it must equal mj_getState on every step, after a reset and
    # after re-rendering and restoring (which copy whole mjData structs into the same memory).
    try:
        env = envs.make_env(name, seed=0)
    except envs.MissingExtraError as e:
        pytest.skip(str(e))
    if name in dmc.TASKS:
        model, data = env.core.physics.model.ptr, env.core.physics.data.ptr
    else:
        model, data = env.unwrapped.model, env.unwrapped.data
    sig = int(sig)
    read = state_reader(model, data, sig)
    assert (read.__name__ == "<lambda>") == gathered  # the gather, or the mj_getState call
    want = np.empty(mujoco.mj_stateSize(model, sig))
    env.reset(seed=1)
    env.action_space.seed(1)
    snap = None
    for t in range(60):
        _, _, term, trunc, info = env.step(env.action_space.sample())
        data.xfrc_applied[:] = t  # nonzero entries for the components that are usually 0
        mujoco.mj_getState(model, data, want, sig)
        got = read()
        assert got.dtype == np.float64 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        if t == 20:
            snap = env.get_env_state()
        if t == 30:
            env.render_state(info["sim_state"], 32, 32)
            env.set_env_state(snap)
            mujoco.mj_getState(model, data, want, sig)
            np.testing.assert_array_equal(read(), want)
        if term or trunc:
            env.reset()
    env.close()
