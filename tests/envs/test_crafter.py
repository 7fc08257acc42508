"""The Crafter stand-in keeps the PbrlEnv contract and is Crafter's own game.

Vector env, factors that reproduce Crafter's reward, pre-step sim state, the game against
Crafter's own step (same world, RNG, rewards and frames), re-rendering from the compact sim
state against Crafter's renderer on the live world (day, night, asleep, any size), pixel
observations, seeding, bit-exact checkpoints, the no-reward variant, recordings, and a
scripted teacher labelling segments cut from a Crafter run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

crafter = pytest.importorskip("crafter")

from pbrl import envs  # noqa: E402
from pbrl.buffer import PbrlReplayBuffer  # noqa: E402
from pbrl.data import Label, QueryBatch  # noqa: E402
from pbrl.envs import crafter as pcrafter  # noqa: E402
from pbrl.envs.minerl import load_episode  # noqa: E402
from pbrl.teachers import make_teacher  # noqa: E402

# World generation costs Crafter's OpenSimplex noise per cell: a 32 x 32 world resets 4x
# faster than the default 64 x 64, which the game-equivalence test uses.
SMALL = {"area": (32, 32)}


def _acts(n: int, seed: int, high: int = 17) -> np.ndarray:
    return np.random.default_rng(seed).integers(high, size=n)


def test_names_are_registered_and_a_missing_package_names_the_extra(monkeypatch) -> None:
    assert envs.names("crafter") == ["crafter", "crafter_noreward"]
    pcrafter._game_class.cache_clear()
    monkeypatch.setitem(sys.modules, "crafter", None)  # what `import crafter` sees uninstalled
    try:
        with pytest.raises(envs.MissingExtraError) as err:
            envs.make_env("crafter_noreward")
        assert "pip install 'pbrl[crafter]'" in str(err.value) and "Crafter" in str(err.value)
    finally:
        monkeypatch.undo()
        pcrafter._game_class.cache_clear()


def test_vector_env_factors_reproduce_the_reward_and_state_is_pre_step() -> None:
    venv = envs.make("crafter", num_envs=2, seed=0, **SMALL)
    single = venv.envs[0]
    assert single.action_space == venv.single_action_space
    assert single.action_space.n == len(pcrafter.ACTIONS) == 17
    obs, info = venv.reset(seed=5)
    assert obs.shape == (2, pcrafter.OBS_DIM) and obs.dtype == np.float32
    assert info["sim_state"].shape == (2, pcrafter.STATE_DIM) == (2, single.state_dim)
    assert not np.array_equal(info["sim_state"][0], info["sim_state"][1])
    assert set(single.factor_names) == {f"unlock_{a}" for a in pcrafter.ACHIEVEMENTS} | {"health"}
    rewards = []
    for a in _acts(60, seed=0).reshape(30, 2):
        before = np.stack([e._get_sim_state() for e in venv.envs])
        obs, reward, term, trunc, info = venv.step(a)
        if term.any() or trunc.any():
            break
        np.testing.assert_array_equal(info["sim_state"], before)
        np.testing.assert_array_equal(info["true_reward"], reward)
        factors = {k: v for k, v in info["reward_factors"].items() if not k.startswith("_")}
        assert set(factors) == set(single.factor_names)
        np.testing.assert_array_equal(single.reward_from_factors(factors), reward)
        rewards.append(reward)
    assert len(rewards) > 10
    venv.close()


def test_reward_from_factors_hand_values() -> None:
    env = envs.make_env("crafter", seed=0, **SMALL)
    zero = {name: np.zeros(3) for name in env.factor_names}
    f = {**zero, "health": np.array([-0.2, 0.1, 0.0])}
    f["unlock_collect_wood"] = np.array([1.0, 1.0, 0.0])
    f["unlock_place_table"] = np.array([1.0, 0.0, 0.0])  # two unlocks on one step pay 1
    np.testing.assert_allclose(env.reward_from_factors(f), [0.8, 1.1, 0.0])
    env.close()


class _OrderedCrafter(crafter.Env):
    """Crafter as shipped, rendering its own frames, with despawns in creation order.

    Crafter picks the creature to despawn by indexing a set of objects (memory-address
    order), which pbrl fixes to creation order; with that alone fixed, this reference is
    Crafter's own ``step`` including its 64 x 64 render and the render's RNG use.
    """

    def _balance_chunk(self, chunk, objs):
        index = self._world._obj_map
        super()._balance_chunk(chunk, sorted(objs, key=lambda o: index[tuple(o.pos)]))


def test_the_game_is_crafters_own_step_for_step() -> None:
    env = pcrafter.CrafterEnv(seed=13)  # Crafter's default 64 x 64 world
    env.reset(seed=13)
    ref = _OrderedCrafter(seed=13)
    first = ref.reset()
    np.testing.assert_array_equal(env.render_live(64, 64), first)
    nights = days = 0
    # noop, moves and "do": the player lives into the first night (from step 150)
    for t, a in enumerate(_acts(260, seed=0, high=6)):
        _, r, term, trunc, info = env.step(int(a))
        frame, r_ref, done, info_ref = ref.step(int(a))
        g = env.core.game
        assert r == r_ref and (term or trunc) == done, t
        np.testing.assert_array_equal(g._world._mat_map, ref._world._mat_map)
        rng, rng_ref = g._world.random.get_state(), ref._world.random.get_state()
        np.testing.assert_array_equal(rng[1], rng_ref[1])
        assert rng[2] == rng_ref[2]
        assert info["inventory"] == info_ref["inventory"]
        if g._world.daylight >= 0.5:  # by day Crafter's frame is a function of the world
            np.testing.assert_array_equal(env.render_live(64, 64), frame)
            days += 1
        else:  # by night only the grain pattern differs (pbrl draws it from a keyed stream)
            nights += 1
        if done:
            break
    assert days > 100 and nights > 20, (days, nights)
    env.close()


@pytest.mark.parametrize(("width", "height"), [(64, 64), (84, 84), (100, 60), (256, 256)])
def test_render_state_equals_crafters_frame_of_the_live_world(width: int, height: int) -> None:
    env = envs.make_env("crafter", seed=1, **SMALL)
    acts = _acts(30, seed=1, high=6)
    for a in acts[:5]:
        env.step(int(a))
    live = env.render_crafter(width, height).copy()  # Crafter's renderer, cell by cell
    stored = env.step(int(acts[5]))[4]["sim_state"].copy()  # the state behind that frame
    for a in acts[6:12]:
        env.step(int(a))
    snap = env.get_env_state()
    frame = env.render_state(stored, width=width, height=height)
    assert frame.shape == (height, width, 3) and frame.dtype == np.uint8 and frame.std() > 5
    np.testing.assert_array_equal(frame, live)
    # Night grain and the sleeping tint: set on the live game, drawn by both renderers.
    g = env.core.game
    for daylight, sleeping in [(0.2, False), (0.45, True), (0.9, True)]:
        g._world.daylight, g._player.sleeping = daylight, sleeping
        state = pcrafter.game_state(g, env.core.world_seed)
        np.testing.assert_array_equal(
            env.render_state(state, width, height), env.render_crafter(width, height)
        )
    # Rendering left the game untouched: it goes on exactly like a restored copy.
    env.set_env_state(snap)
    copy = envs.make_env("crafter", seed=2, **SMALL)
    copy.set_env_state(snap)
    for a in acts[12:]:
        np.testing.assert_array_equal(env.step(int(a))[0], copy.step(int(a))[0])
    with pytest.raises(ValueError, match="sim_state must have shape"):
        env.render_state(stored[:-1])
    env.close()
    copy.close()


def test_module_render_state_and_symbolic_obs_read_the_state() -> None:
    env = envs.make_env("crafter", seed=4, **SMALL)
    obs, info = env.reset(seed=4)
    state = info["sim_state"]
    np.testing.assert_array_equal(pcrafter.render_state(state, 84, 84), env.render_live(84, 84))
    np.testing.assert_array_equal(pcrafter.symbolic_obs(state), obs)
    lay = pcrafter.STATE_LAYOUT
    # The player stands in the middle cell of the 9 x 7 view, facing down, full stats.
    objects = state[lay["objects"]].reshape(pcrafter.GRID)
    assert pcrafter.OBJECT_TEXTURES[int(objects[4, 3]) - 1] == "player-down"
    np.testing.assert_array_equal(state[lay["inventory"]][:4], 9)
    assert obs[-2:].tolist() == [0.0, np.float32(state[lay["daylight"]][0])]
    env.close()


def test_pixel_observations_have_the_promised_shape() -> None:
    env = envs.make_env(
        "crafter", seed=0, obs="pixels", pixel_size=(48, 64), frame_stack=3, **SMALL
    )
    assert env.observation_space.shape == (9, 48, 64)
    obs, info = env.reset(seed=0)
    assert obs.shape == (9, 48, 64) and obs.dtype == np.uint8
    assert info["state_obs"].shape == (pcrafter.OBS_DIM,)
    obs, *_, info = env.step(3)
    np.testing.assert_array_equal(obs[-3:].transpose(1, 2, 0), env.render_live(64, 48))
    assert info["sim_state"].shape == (pcrafter.STATE_DIM,)
    env.close()
    # 64 x 64, one frame: Crafter's own picture, channel-first.
    native = envs.make_env("crafter", seed=0, obs="pixels", pixel_size=64, frame_stack=1, **SMALL)
    obs, _ = native.reset(seed=0)
    np.testing.assert_array_equal(obs.transpose(1, 2, 0), native.env.render_crafter(64, 64))
    native.close()


def test_seeding_reproduces_resets_and_steps() -> None:
    a, b = envs.make_env("crafter", seed=3, **SMALL), envs.make_env("crafter", seed=3, **SMALL)
    oa, ia = a.reset(seed=3)
    ob, ib = b.reset(seed=3)
    np.testing.assert_array_equal(oa, ob)
    np.testing.assert_array_equal(ia["sim_state"], ib["sim_state"])
    assert not np.array_equal(a.reset(seed=4)[1]["sim_state"], ia["sim_state"])
    np.testing.assert_array_equal(a.reset(seed=3)[1]["sim_state"], ia["sim_state"])
    for act in _acts(40, seed=3):
        ra, rb = a.step(int(act)), b.step(int(act))
        np.testing.assert_array_equal(ra[0], rb[0])
        assert ra[1:4] == rb[1:4]
        if ra[2] or ra[3]:
            break
    a.close()
    b.close()


def test_checkpoint_continuation_is_bit_exact() -> None:
    a = envs.make_env("crafter", seed=7, **SMALL)
    acts = _acts(400, seed=1)
    for act in acts[:50]:
        a.step(int(act))
    snap = a.get_env_state()
    c = envs.make_env("crafter", seed=99, **SMALL)  # another world, another time of day
    for act in acts[:3]:
        c.step(int(act))
    c.set_env_state(snap)
    for act in acts[50:]:
        oa, ra, ta, tra, ia = a.step(int(act))
        oc, rc, tc, trc, ic = c.step(int(act))
        np.testing.assert_array_equal(oa, oc)
        assert (ra, ta, tra) == (rc, tc, trc)
        np.testing.assert_array_equal(ia["sim_state"], ic["sim_state"])
        assert ia["reward_factors"] == ic["reward_factors"]
        if ta or tra:
            assert ia["episode"] == ic["episode"]
            break
    else:
        pytest.fail("the random player should have died within 400 steps")
    # The episode counter came along: the next unseeded reset builds the same world.
    np.testing.assert_array_equal(a.reset()[1]["sim_state"], c.reset()[1]["sim_state"])
    a.close()
    c.close()


def test_max_episode_steps_truncates_and_reports_the_episode() -> None:
    env = envs.make_env("crafter", seed=0, max_episode_steps=6, length=1000, **SMALL)
    assert env.max_episode_steps == 6
    for act in [0] * 6:
        _, _, term, trunc, info = env.step(act)
    assert trunc and not term and info["episode"]["l"] == 6
    env.close()


def test_noreward_variant_hides_the_reward_but_plays_the_same_game() -> None:
    a = envs.make_env("crafter", seed=5, **SMALL)
    b = envs.make_env("crafter_noreward", seed=5, **SMALL)
    paid = []
    for act in _acts(120, seed=5, high=6):
        ra, rb = a.step(int(act)), b.step(int(act))
        np.testing.assert_array_equal(ra[4]["sim_state"], rb[4]["sim_state"])
        assert ra[4]["reward_factors"] == rb[4]["reward_factors"]
        assert rb[1] == rb[4]["true_reward"] == 0.0
        assert b.reward_from_factors(rb[4]["reward_factors"]) == 0.0
        paid.append(ra[1])
        if ra[2] or ra[3]:
            break
    assert any(r != 0 for r in paid)
    a.close()
    b.close()


def test_recording_writes_episodes_of_frames_and_actions(tmp_path) -> None:
    env = envs.make_env("crafter", seed=6, max_episode_steps=12, record_dir=tmp_path, **SMALL)
    env.reset(seed=6)
    states, acts = [], _acts(12, seed=6, high=6)
    for act in acts:
        *_, term, trunc, info = env.step(int(act))
        states.append(info["sim_state"])
    assert trunc
    files = sorted(tmp_path.glob("*.npz"))
    assert len(files) == 1  # the reset inside make_env recorded nothing before reset(seed=6)
    ep = load_episode(files[-1])
    assert ep.complete and ep.frames.shape == (13, 64, 64, 3)
    np.testing.assert_array_equal(ep.actions[:, 0], acts)
    for t in (0, 5, 11):
        np.testing.assert_array_equal(ep.frames[t], env.render_state(states[t], 64, 64))
    env.close()


def test_a_scripted_teacher_labels_segments_of_a_crafter_run() -> None:
    """Collect a few hundred random steps, cut query segments, let the oracle answer."""
    n_envs, horizon = 2, 25
    venv = envs.make("crafter", num_envs=n_envs, seed=0, **SMALL)
    single = venv.envs[0]
    buffer = PbrlReplayBuffer(
        400,
        venv.single_observation_space,
        venv.single_action_space,
        n_envs=n_envs,
        handle_timeout_termination=False,
        state_dim=single.state_dim,
        factor_names=single.factor_names,
        env_name="crafter",
    )
    obs, _ = venv.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(150):  # 300 env steps
        act = rng.integers(17, size=n_envs)
        next_obs, reward, term, trunc, info = venv.step(act)
        # One copy's end ends both columns' episodes here: both are reset below (simpler than
        # gymnasium's next-step autoreset).
        done = np.full(n_envs, term.any() or trunc.any())
        infos = [
            {
                "true_reward": info["true_reward"][i],
                "sim_state": info["sim_state"][i],
                "reward_factors": {k: info["reward_factors"][k][i] for k in single.factor_names},
            }
            for i in range(n_envs)
        ]
        buffer.add(obs, next_obs, act, reward, done, infos)
        obs = venv.reset()[0] if done.any() else next_obs
    segs = buffer.sample_segments(64, horizon, np.random.default_rng(1))
    assert segs.obs.shape == (64, horizon, pcrafter.OBS_DIM)
    assert segs.sim_state.shape == (64, horizon, pcrafter.STATE_DIM)
    np.testing.assert_allclose(
        single.reward_from_factors(segs.reward_factors), segs.true_reward, atol=1e-6
    )
    first, second = segs[:32], segs[32:]
    queries = QueryBatch.from_members([first, second])
    labels = [f.label for f in make_teacher("oracle").label(queries)]
    want = np.where(
        first.returns > second.returns,
        Label.FIRST,
        np.where(first.returns < second.returns, Label.SECOND, Label.EQUAL),
    )
    assert labels == list(want)
    assert {Label.FIRST, Label.SECOND} & set(labels)  # some pairs differ in Crafter's reward
    # What a person would be shown: the frames of a segment, rendered from its states.
    clip = np.stack([single.render_state(s, 64, 64) for s in first.sim_state[0]])
    assert clip.shape == (horizon, 64, 64, 3) and clip.std() > 5
    # BASALT-style: without a reward the oracle has nothing to go on; a person must judge.
    blind = QueryBatch.from_members([first.without_reward(), second.without_reward()])
    with pytest.raises(ValueError, match="needs the true reward"):
        make_teacher("oracle").label(blind)
    venv.close()


def test_box_actions_take_the_argmax_and_configs_build() -> None:
    box = envs.make_env("crafter", seed=8, actions="box", **SMALL)
    ref = envs.make_env("crafter", seed=8, **SMALL)
    assert box.action_space.shape == (17,) and box.action_space.dtype == np.float32
    rng = np.random.default_rng(8)
    for _ in range(20):
        scores = rng.uniform(-1, 1, 17).astype(np.float32)
        a, b = box.step(scores), ref.step(int(np.argmax(scores)))
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1:4] == b[1:4]
    with pytest.raises(ValueError, match="17 scores"):
        box.step(np.zeros(3))
    with pytest.raises(ValueError, match="actions must be one of"):
        envs.make_env("crafter", actions="multi")
    box.close()
    ref.close()
    configs = Path(envs.__file__).parents[1] / "configs" / "env"
    for name in envs.names("crafter"):
        cfg = yaml.safe_load((configs / f"{name}.yaml").read_text())
        assert cfg["name"] == name
        env = envs.make_env(name, seed=0, **{**cfg["kwargs"], "area": (16, 16)})
        assert env.action_space.shape == (17,) and env.max_episode_steps == 10000
        env.close()
