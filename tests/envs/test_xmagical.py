"""X-Magical SweepToTop (pbrl/envs/xmagical.py) keeps the PbrlEnv contract and the benchmark.

The reference numbers below were recorded with the original ``x-magical`` 0.0.4 package
(pymunk 5.6, Python 3.11 with ``collections.Sequence`` restored) on its Demo layout and
the scripted actions of :func:`_scripted`: the final robot and debris poses, the final state
observation, the number of debris in the goal zone at each step (sparse reward x 3) and
the dense reward's return.
"""

from __future__ import annotations

import importlib.util
import pickle
import sys

import numpy as np
import pytest

from pbrl import envs
from pbrl.envs import xmagical
from pbrl.envs._xmagical import scene as sc
from pbrl.envs.base import PbrlEnv

needs_pymunk = pytest.mark.skipif(
    importlib.util.find_spec("pymunk") is None, reason="needs the xmagical extra (pymunk)"
)

NAMES = sorted(xmagical.TASKS)

# embodiment: (final [robot, debris0..2] (x, y, angle), final obs, in-goal counts, dense return)
REFERENCE = {
    "gripper": (
        [
            (0.009158838287306214, 0.7423886109609776, 0.8894008265530611),
            (-0.5, 0.0, 0.0),
            (-0.23964254479988875, 0.947511457095348, 0.8698642844639157),
            (0.5, 0.0, 0.0),
        ],
        [0.009158838540315628, 0.7423886060714722, -0.5, 0.0, -0.23964254558086395,
         0.9475114345550537, 0.5, 0.0, 0.629877507686615, 0.7766944766044617,
         0.3182733952999115, 0.11400521546602249, 0.31465575098991394, 0.3535533845424652,
         0.018557501956820488, 0.3535533845424652, 0.6108446717262268],
        "0000000000001111111111111111111111111111",
        -29.40666666666669,
    ),
    "shortstick": (
        [
            (-0.5422569505437842, -0.0644976878377488, 2.583786944111722),
            (-0.6056905173872947, -0.20722184219655432, -0.5479421605224011),
            (-0.41648347934672725, 0.9542373200725041, -0.6015292158669191),
            (0.5, 0.0, 0.0),
        ],
        [-0.5422569513320923, -0.0644976869225502, -0.6056905388832092, -0.2072218358516693,
         -0.41648349165916443, 0.9542373418807983, 0.5, 0.0, -0.848418653011322,
         0.5293257832527161, 0.05522001534700394, 0.36291182041168213, 0.36919838190078735,
         0.426817387342453, 0.01617955043911934, 0.3535533845424652],
        "0000000000000111111111111111111111111111",
        -30.008353122561857,
    ),
    "mediumstick": (
        [
            (-0.5117616646224674, -0.027659614223341462, 2.7028661348146525),
            (-0.5778728282192569, -0.16873850702529714, -0.43296030708407374),
            (-0.7869385616011237, 0.6847395720229956, -0.004975436751044545),
            (0.5, 0.0, 0.0),
        ],
        [-0.5117616653442383, -0.027659613639116287, -0.5778728127479553, -0.16873851418495178,
         -0.7869385480880737, 0.6847395896911621, 0.5, 0.0, -0.905293345451355,
         0.42478692531585693, 0.05508396029472351, 0.2700080871582031, 0.3578454256057739,
         0.413211464881897, 0.11146139353513718, 0.3535533845424652],
        "0000000000000111111111111110000000000000",
        -31.274353981330655,
    ),
    "longstick": (
        [
            (0.0004267238649060911, 0.8455843208665693, -0.006065687183898096),
            (-0.4968144730221396, 1.0010774916501262, -0.003684791034572236),
            (0.003234763048099411, 1.0010300062494135, -0.004673192978342572),
            (0.5038136239253594, 1.000565399477037, -0.007388800583316033),
        ],
        [0.00042672385461628437, 0.8455843329429626, -0.49681445956230164, 1.0010775327682495,
         0.003234763164073229, 1.0010299682617188, 0.503813624382019, 1.0005654096603394,
         0.9999815821647644, -0.006065649911761284, 0.18419654667377472, 0.05496731400489807,
         0.18621811270713806, 0.0003809508343692869, 0.0003641622024588287,
         0.00019989890279248357],
        "0000000000000333333333333333333333333333",
        -9.682548878481036,
    ),
}  # fmt: skip


def _scripted(dim: int) -> np.ndarray:
    """20 steps straight ahead, 10 turning left, 10 random (forward) steps."""
    a = np.zeros((40, dim))
    a[:, 0] = 1.0
    a[20:30, 1] = 0.5
    a[30:] = np.random.default_rng(0).uniform(-1, 1, (10, dim))
    a[30:, 0] = np.abs(a[30:, 0])
    return a


def _actions(env, n: int, seed: int) -> np.ndarray:
    """``n`` uniform actions for ``env`` (a single or a vector env)."""
    shape = env.action_space.shape
    return np.random.default_rng(seed).uniform(-1, 1, (n, *shape)).astype(np.float32)


def _debris_rows(env: PbrlEnv, state: np.ndarray) -> np.ndarray:
    n = env.core.embodiment.n_bodies
    return state[: 6 * n].reshape(n, 6)[n - sc.N_DEBRIS :]


def test_four_embodiments_are_registered_and_missing_pymunk_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert envs.names("xmagical") == [
        "xmagical_sweep_gripper",
        "xmagical_sweep_longstick",
        "xmagical_sweep_mediumstick",
        "xmagical_sweep_shortstick",
    ]
    monkeypatch.setitem(sys.modules, "pymunk", None)  # as if it were not installed
    with pytest.raises(envs.MissingExtraError, match=r"pbrl\[xmagical\]"):
        envs.make_env("xmagical_sweep_gripper")


@needs_pymunk
@pytest.mark.parametrize("name", NAMES)
def test_vector_env_factors_reproduce_the_reward_and_state_is_pre_step(name: str) -> None:
    venv = envs.make(name, num_envs=2, seed=0)
    single = venv.envs[0]
    emb = single.core.embodiment
    obs, info = venv.reset(seed=5)
    assert obs.shape == (2, 17 if emb.gripper else 16) and obs.dtype == np.float32
    assert info["sim_state"].shape == (2, single.state_dim) == (2, 6 * emb.n_bodies + 4)
    assert info["sim_state"].dtype == np.float64
    assert not np.array_equal(obs[0], obs[1])  # seeds 5 and 6 draw different layouts
    assert single.action_space.shape == (emb.action_dim,)
    assert single.max_episode_steps == (50 if emb.name == "longstick" else 100)
    for act in _actions(venv, 12, seed=0):
        before = np.stack([e._get_sim_state() for e in venv.envs])
        obs, reward, term, trunc, info = venv.step(act)
        np.testing.assert_array_equal(info["sim_state"], before)
        np.testing.assert_array_equal(info["true_reward"], reward)
        factors = {k: v for k, v in info["reward_factors"].items() if not k.startswith("_")}
        assert set(factors) == set(single.factor_names) == set(xmagical.FACTOR_NAMES)
        np.testing.assert_array_equal(single.reward_from_factors(factors), reward)
        assert info["success"].dtype == bool and not term.any() and not trunc.any()
    venv.close()


@needs_pymunk
@pytest.mark.parametrize("embodiment", list(REFERENCE))
def test_trajectories_match_the_original_x_magical_package(embodiment: str) -> None:
    poses, final_obs, counts, dense_return = REFERENCE[embodiment]
    name = f"xmagical_sweep_{embodiment}"
    sparse = envs.make_env(name, seed=0, variant="demo")
    dense = envs.make_env(name, seed=0, variant="demo", reward="dense")
    got_counts, got_dense = [], 0.0
    for act in _scripted(sparse.action_space.shape[0]):
        obs, r, _, _, info = sparse.step(act)
        got_counts.append(round(r * 3))
        _, rd, _, _, info_d = dense.step(act)
        got_dense += rd
        assert float(dense.reward_from_factors(info_d["reward_factors"])) == rd
    assert "".join(map(str, got_counts)) == counts
    assert got_dense == pytest.approx(dense_return, abs=1e-9)
    np.testing.assert_allclose(obs, final_obs, atol=1e-6)
    rows = sparse.core.world.body_state()
    n = rows.shape[0]
    mine = np.concatenate([rows[:1], rows[n - 3 :]])[:, :3]
    np.testing.assert_allclose(mine, poses, atol=1e-9)


@needs_pymunk
@pytest.mark.parametrize("name", NAMES)
def test_render_state_equals_the_live_frame(name: str) -> None:
    env = envs.make_env(name, seed=1, variant="color")
    acts = _actions(env, 16, seed=1)
    for act in acts[:5]:
        env.step(act)
    live = env.core.render_frame(64, 48).copy()  # drawn from the live pymunk bodies
    stored = env.step(acts[5])[4]["sim_state"].copy()
    for act in acts[6:12]:
        env.step(act)
    snap = env.get_env_state()
    frame = env.render_state(stored, width=64, height=48)
    assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8
    assert frame.std() > 5
    np.testing.assert_array_equal(frame, live)
    big = env.render_state(stored, width=256, height=256)
    assert big.shape == (256, 256, 3) and len(np.unique(big.reshape(-1, 3), axis=0)) > 5
    # Re-rendering left the episode untouched: it continues like a restored copy.
    copy = envs.make_env(name, seed=2)
    copy.set_env_state(snap)
    for act in acts[12:]:
        np.testing.assert_array_equal(env.step(act)[0], copy.step(act)[0])
    with pytest.raises(ValueError, match="sim_state must have shape"):
        env.render_state(stored[:-1])


@needs_pymunk
def test_pixel_observations() -> None:
    venv = envs.make(
        "xmagical_sweep_gripper", num_envs=2, seed=0, obs="pixels", pixel_size=(48, 40)
    )
    obs, info = venv.reset(seed=0)
    assert obs.shape == (2, 9, 48, 40) and obs.dtype == np.uint8
    obs, reward, _, _, info = venv.step(_actions(venv, 1, seed=0)[0])
    assert obs.shape == (2, 9, 48, 40) and reward.shape == (2,)
    assert info["state_obs"].shape == (2, 17)
    env = venv.envs[0]
    last = env.render_live(width=40, height=48).transpose(2, 0, 1)
    np.testing.assert_array_equal(obs[0, 6:], last)
    venv.close()


@needs_pymunk
@pytest.mark.parametrize("name", ["xmagical_sweep_gripper", "xmagical_sweep_longstick"])
def test_seeding_reproduces(name: str) -> None:
    a, b = envs.make_env(name, seed=3), envs.make_env(name, seed=3)
    oa, ia = a.reset(seed=3)
    ob, ib = b.reset(seed=3)
    np.testing.assert_array_equal(oa, ob)
    np.testing.assert_array_equal(ia["sim_state"], ib["sim_state"])
    assert not np.array_equal(a.reset(seed=4)[0], oa)
    np.testing.assert_array_equal(a.reset(seed=3)[0], oa)
    for act in _actions(a, 8, seed=3):
        np.testing.assert_array_equal(a.step(act)[0], b.step(act)[0])


@needs_pymunk
@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_continuation_is_bit_exact(name: str) -> None:
    a = envs.make_env(name, seed=7)
    acts = _actions(a, 110, seed=7)
    for act in acts[:10]:
        a.step(act)
    snap = pickle.loads(pickle.dumps(a.get_env_state()))  # as a checkpoint file holds it
    c = envs.make_env(name, seed=123)  # another layout, mid-episode
    for act in acts[:3]:
        c.step(act)
    c.set_env_state(snap)
    np.testing.assert_array_equal(a._get_sim_state(), c._get_sim_state())
    for act in acts[10:]:
        oa, ra, ta, tra, ia = a.step(act)
        oc, rc, tc, trc, ic = c.step(act)
        np.testing.assert_array_equal(oa, oc)
        assert (ra, ta, tra) == (rc, tc, trc)
        np.testing.assert_array_equal(ia["sim_state"], ic["sim_state"])
        assert ia["reward_factors"] == ic["reward_factors"]
        if tra:
            assert ia["episode"] == ic["episode"]
            break
    assert tra  # the time limit (50 or 100 steps) was reached in both
    np.testing.assert_array_equal(a.reset()[0], c.reset()[0])  # the RNG came along


@needs_pymunk
def test_pushing_debris_up_earns_the_reward_and_success() -> None:
    """The long stick driven straight ahead sweeps all three debris into the goal zone."""
    for reward in ("sparse", "dense"):
        env = envs.make_env("xmagical_sweep_longstick", seed=0, variant="demo", reward=reward)
        _, info = env.reset(seed=0)
        start = _debris_rows(env, info["sim_state"])[:, 1]
        rewards, successes = [], []
        for _ in range(20):
            _, r, _, _, info = env.step(np.array([1.0, 0.0], np.float32))
            rewards.append(r)
            successes.append(info["success"])
        end = _debris_rows(env, env.core.sim_state())[:, 1]
        assert (end - start > 0.7).all()  # every debris moved up by most of the arena
        assert rewards[-1] > rewards[0] and successes[-1] and not successes[0]
        f = info["reward_factors"]
        assert all(f[f"debris{i}_in_goal"] == 1.0 for i in range(3))
        assert rewards[-1] == (1.0 if reward == "sparse" else 0.0)
    # Standing still moves nothing and earns nothing.
    env = envs.make_env("xmagical_sweep_shortstick", seed=0, variant="demo")
    state0 = env.core.sim_state()
    for _ in range(5):
        _, r, _, _, info = env.step(np.zeros(2, np.float32))
        assert r == 0.0 and not info["success"]
    np.testing.assert_array_equal(env.core.sim_state(), state0)


@needs_pymunk
def test_variants_draw_what_they_name() -> None:
    rng = np.random.default_rng(0)
    layouts = [sc.sample_layout("layout", rng) for _ in range(20)]
    for lay in layouts:
        ys = {y for _, y in lay.debris_xy}
        xs = [x for x, _ in lay.debris_xy]
        assert len(ys) == 1 and -0.1 <= ys.pop() <= 0.5
        assert len(set(xs)) == 3 and set(xs) <= set(sc.LAYOUT_X_SLOTS)
    assert len({lay.debris_xy for lay in layouts}) > 10
    colors = [sc.sample_layout("color", rng) for _ in range(20)]
    assert len({(c.goal_color, *c.debris_colors) for c in colors}) > 10
    assert all(c.debris_xy == sc.DEMO_DEBRIS_XY for c in colors)
    dyn = sc.sample_layout("dynamics", rng).physics
    for k, (lo, hi) in sc.PHYSICS_RANGES.items():
        assert lo <= getattr(dyn, k) <= hi
    assert sc.sample_layout("demo", rng) == sc.Layout()
    env = envs.make_env("xmagical_sweep_gripper", seed=0, variant="color")
    state = env.core.sim_state()
    lay = env.core.world.layout
    np.testing.assert_array_equal(state[-4:], [lay.goal_color, *lay.debris_colors])
    for bad in ({"variant": "TestAll"}, {"reward": "shaped"}):
        with pytest.raises(ValueError, match="must be one of"):
            envs.make_env("xmagical_sweep_gripper", **bad)
