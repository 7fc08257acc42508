"""The MineRL BASALT wrapper: its conversions and recorder on data of MineRL's own format.

Fixtures are built here from MineRL's documented spaces (``minerl/herobraine``): BASALT 2022
(MineRL 1.0) observations ``{"pov": (360, 640, 3) uint8}`` (scaled down here) and actions of
23 ``Discrete(2)`` buttons plus ``camera`` ``Box(-180, 180, (2,))`` [pitch, yaw] degrees;
BASALT 2021 (MineRL 0.4) observations with ``inventory`` and ``equipped_items`` dicts and
actions with an ``equip`` enum; MineRL-dataset style ``action$<key>`` columns; and BASALT 2022
demonstration records (VPT contractor ``.jsonl``). The env itself needs minerl (Java, a
Minecraft build): those tests run on MineRL's own fake env and skip where minerl is absent.
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest

from pbrl import envs
from pbrl.envs import minerl as m

POV = (36, 64)  # BASALT 2022's 360 x 640 pov, scaled by 1/10 to keep the fixtures small
NAMES = ["minerl_animal_pen", "minerl_find_cave", "minerl_make_waterfall", "minerl_village_house"]


def _basalt_action(rng: np.random.Generator, camera_scale: float = 30.0) -> dict:
    """One action as MineRL 1.0's ``action_space.sample()`` gives it (ESC kept at 0)."""
    act = {b: np.array(int(rng.integers(2))) for b in m.BASALT_BUTTONS}
    act["ESC"] = np.array(0)
    act["camera"] = rng.normal(0.0, camera_scale, 2).clip(-180, 180).astype(np.float32)
    return act


def _basalt2021_action(rng: np.random.Generator) -> dict:
    act = {b: np.array(int(rng.integers(2))) for b in m.BASALT2021_BUTTONS}
    act["camera"] = rng.uniform(-10, 10, 2).astype(np.float32)
    act["equip"] = str(rng.choice(m.BASALT2021_EQUIP))
    return act


def _pov(rng: np.random.Generator, shape=POV) -> np.ndarray:
    # Smooth content plus a little noise, like a rendered scene (compresses, but not to nothing).
    y, x = np.mgrid[: shape[0], : shape[1]]
    base = np.stack([x * 3, y * 5, (x + y) * 2], -1) % 256
    return (base + rng.integers(0, 8, (*shape, 3))).astype(np.uint8)


def _basalt2021_obs(rng: np.random.Generator) -> dict:
    return {
        "pov": _pov(rng, (64, 64)),
        "inventory": {k: np.array(int(rng.integers(0, 3))) for k in m.BASALT2021_ITEMS},
        "equipped_items": {
            "mainhand": {"damage": np.array(0), "maxDamage": np.array(0), "type": "snowball"}
        },
    }


def _same_action(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


# --- registry and the missing extra -------------------------------------------------------
def test_basalt_tasks_are_registered() -> None:
    assert envs.names("minerl") == NAMES
    assert m.TASKS["minerl_find_cave"] == ("MineRLBasaltFindCave-v0", 3600)
    assert m.TASKS["minerl_village_house"] == ("MineRLBasaltBuildVillageHouse-v0", 14400)


@pytest.mark.parametrize("name", NAMES)
def test_missing_minerl_names_the_extra(name: str, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "minerl", None)  # what `import minerl` sees uninstalled
    with pytest.raises(envs.MissingExtraError) as err:
        envs.make_env(name)
    msg = str(err.value)
    assert isinstance(err.value, ImportError)
    assert "MineRL" in msg and "minerl" in msg and "pbrl[minerl]" not in msg  # no such extra
    assert "pip install git+https://github.com/minerllabs/minerl" in msg
    assert "Java 8" in msg and "docs/envs_minerl.md" in msg


# --- camera -------------------------------------------------------------------------------
def test_camera_bins_hand_values_and_round_trip() -> None:
    assert m.camera_to_bins(np.array([0.0, 10.0])).tolist() == [5, 10]
    assert m.camera_to_bins(np.array([-10.0, -180.0])).tolist() == [0, 0]  # clipped to +-10
    # bin 6: encoded 0.2, decoded maxval ((1 + mu)^0.2 - 1) / mu = 11^0.2 - 1 degrees
    assert m.bins_to_camera(np.array(6)) == pytest.approx(11**0.2 - 1, rel=1e-6)
    bins = np.arange(11)
    np.testing.assert_array_equal(m.camera_to_bins(m.bins_to_camera(bins)), bins)
    # mu-law: fine steps near 0 degrees, coarse ones near the limit
    centres = m.bins_to_camera(bins)
    assert np.diff(centres)[5] < np.diff(centres)[9]
    # any angle decodes to the centre of its bin: within half a bin in the encoded space
    c = np.random.default_rng(0).uniform(-10, 10, 1000)
    enc = np.sign(c) * np.log1p(10 * np.abs(c) / 10) / np.log1p(10)
    dec = m.bins_to_camera(m.camera_to_bins(c)).astype(np.float64)
    enc_dec = np.sign(dec) * np.log1p(10 * np.abs(dec) / 10) / np.log1p(10)
    assert np.abs(enc - enc_dec).max() <= 0.1 + 1e-6
    # linear bins
    np.testing.assert_allclose(m.bins_to_camera(bins, mu=None), np.linspace(-10, 10, 11))


# --- actions ------------------------------------------------------------------------------
def test_multidiscrete_codec_round_trips_basalt_actions() -> None:
    codec = m.ActionCodec("basalt")
    space = codec.space
    assert isinstance(space, gym.spaces.MultiDiscrete)
    assert space.nvec.tolist() == [2] * 23 + [11, 11]
    assert codec.keys == tuple(sorted([*m.BASALT_BUTTONS, "camera"]))
    rng = np.random.default_rng(0)
    space.seed(0)
    for _ in range(50):  # every flat action survives flat -> dict -> flat
        flat = space.sample()
        act = codec.from_flat(flat)
        assert set(act) == set(codec.keys) and act["camera"].dtype == np.float32
        np.testing.assert_array_equal(codec.to_flat(act), flat)
    for _ in range(20):  # dict actions whose camera sits on a bin centre survive dict -> flat
        act = _basalt_action(rng)
        act["camera"] = m.bins_to_camera(rng.integers(11, size=2))
        _same_action(codec.from_flat(codec.to_flat(act)), act)
    noop = codec.noop()
    assert all(noop[b] == 0 for b in m.BASALT_BUTTONS) and noop["camera"].tolist() == [0, 0]


def test_flat_layout_is_the_documented_one() -> None:
    codec = m.ActionCodec("basalt")
    act = codec.noop()
    act["ESC"], act["use"], act["hotbar.3"] = 1, 1, 1
    act["camera"] = np.array([10.0, -10.0], np.float32)  # pitch up to the limit, yaw down
    flat = codec.to_flat(act)
    assert flat.dtype == np.int64 and flat.shape == (25,)
    pressed = {codec.buttons[i] for i in np.flatnonzero(flat[:23])}
    assert pressed == {"ESC", "use", "hotbar.3"} and flat[0] == 1  # ESC first, as in MineRL
    assert flat[23:].tolist() == [10, 0]
    lines = codec.describe()
    assert len(lines) == 25 and lines[0].startswith("0: ESC") and "pitch" in lines[23]


def test_box_codec_round_trips_and_clips() -> None:
    codec = m.ActionCodec("basalt2021", kind="box", camera_maxval=20.0)
    space = codec.space
    assert isinstance(space, gym.spaces.Box) and space.shape == (9 + 2 + 14,)
    rng = np.random.default_rng(1)
    for _ in range(20):
        act = _basalt2021_action(rng)
        back = codec.from_flat(codec.to_flat(act))
        assert back["equip"] == act["equip"]
        for b in m.BASALT2021_BUTTONS:
            assert back[b] == int(act[b])
        np.testing.assert_allclose(back["camera"], act["camera"], atol=1e-5)
    act = _basalt2021_action(rng)
    act["camera"] = np.array([45.0, -90.0], np.float32)
    np.testing.assert_array_equal(codec.to_flat(act)[9:11], [1.0, -1.0])
    flat = space.sample()
    assert space.contains(codec.to_flat(codec.from_flat(flat)))


def test_basalt2021_multidiscrete_has_an_equip_index() -> None:
    codec = m.ActionCodec("basalt2021")
    assert codec.space.nvec.tolist() == [2] * 9 + [11, 11, 14]
    act = _basalt2021_action(np.random.default_rng(2))
    act["equip"] = "water_bucket"
    flat = codec.to_flat(act)
    assert flat[-1] == m.BASALT2021_EQUIP.index("water_bucket")
    assert codec.from_flat(flat)["equip"] == "water_bucket"
    act["equip"] = "diamond_sword"
    with pytest.raises(ValueError, match="unknown equip item 'diamond_sword'"):
        codec.to_flat(act)


def test_disabled_esc_is_never_sent() -> None:
    codec = m.ActionCodec("basalt", disable=("ESC",))
    assert codec.dim == 22 + 2 and "ESC" not in codec.buttons and "ESC" in codec.keys
    act = _basalt_action(np.random.default_rng(3))
    act["ESC"] = np.array(1)  # a person's last action in a demonstration
    back = codec.from_flat(codec.to_flat(act))
    assert back["ESC"] == 0
    with pytest.raises(ValueError, match="not buttons"):
        m.ActionCodec("basalt", disable=("equip",))


def test_layout_mismatch_and_missing_keys_are_errors() -> None:
    act = _basalt2021_action(np.random.default_rng(4))
    with pytest.raises(KeyError, match="missing .*'ESC'.*unknown \\['equip'\\]"):
        m.ActionCodec("basalt").to_flat(act)
    del act["camera"]
    with pytest.raises(KeyError, match="missing \\['camera'\\]"):
        m.ActionCodec("basalt2021").to_flat(act)
    with pytest.raises(ValueError, match="shape"):
        m.ActionCodec("basalt").from_flat(np.zeros(3))


def test_dataset_columns_convert_in_one_batch() -> None:
    """MineRL's demonstration files hold one column per key (``action$forward`` (T,), ...)."""
    rng = np.random.default_rng(5)
    steps = [_basalt2021_action(rng) for _ in range(40)]
    columns = {f"action${k}": np.stack([np.asarray(s[k]) for s in steps]) for k in steps[0]}
    assert columns["action$camera"].shape == (40, 2) and columns["action$equip"].shape == (40,)
    codec = m.ActionCodec("basalt2021")
    flat = codec.to_flat({k.split("$", 1)[1]: v for k, v in columns.items()})
    assert flat.shape == (40, codec.dim)
    np.testing.assert_array_equal(flat, np.stack([codec.to_flat(s) for s in steps]))
    back = codec.from_flat(flat)
    assert back["camera"].shape == (40, 2) and back["equip"].shape == (40,)
    assert list(back["equip"]) == [s["equip"] for s in steps]


# --- observations -------------------------------------------------------------------------
def test_observation_conversions() -> None:
    rng = np.random.default_rng(6)
    obs = _basalt2021_obs(rng)
    np.testing.assert_array_equal(m.pov_frame(obs), obs["pov"])
    inv = m.inventory_vector(obs, m.BASALT2021_ITEMS)
    assert inv.shape == (11,) and inv.dtype == np.float32
    assert inv[m.BASALT2021_ITEMS.index("carrot")] == obs["inventory"]["carrot"]
    assert m.inventory_vector(obs, ["snowball", "diamond"])[1] == 0  # absent items count 0
    assert m.equipped_index(obs) == m.BASALT2021_EQUIP.index("snowball")
    obs["equipped_items"]["mainhand"]["type"] = "golden_apple"
    assert m.equipped_index(obs) == m.BASALT2021_EQUIP.index("other")
    # recorded columns: inventory counts (T,) -> (T, n)
    cols = {"inventory": {k: np.arange(5) for k in m.BASALT2021_ITEMS}}
    assert m.inventory_vector(cols, m.BASALT2021_ITEMS).shape == (5, 11)
    with pytest.raises(ValueError, match="uint8"):
        m.pov_frame({"pov": obs["pov"].astype(np.float32)})
    with pytest.raises(KeyError, match="pov"):
        m.pov_frame({"inventory": {}})
    small = m.resize_frame(obs["pov"], 16, 32)
    assert small.shape == (16, 32, 3) and small.dtype == np.uint8


# --- recording ----------------------------------------------------------------------------
def test_recorder_writes_and_reads_episodes(tmp_path) -> None:
    rng = np.random.default_rng(7)
    codec = m.ActionCodec("basalt")
    rec = m.EpisodeRecorder(tmp_path, chunk=4)
    uid = rec.start(meta={"task": "MineRLBasaltFindCave-v0"})
    frames = [_pov(rng) for _ in range(11)]
    flats = [codec.to_flat(_basalt_action(rng)) for _ in range(10)]
    rec.add_frame(frames[0])
    for t in range(10):
        rec.add_action(flats[t])
        assert rec.add_frame(frames[t + 1]) == t + 1
    # while it runs: written chunks and live frames alike
    for t in (0, 5, 8, 10):
        np.testing.assert_array_equal(rec.frame(uid, t), frames[t])
    partial = m.load_episode(rec.path(uid))  # a crash now would keep the written chunks
    assert not partial.complete and len(partial.frames) == 8
    path = rec.finish()
    assert path == tmp_path / f"{uid:014x}.npz" and not rec.recording
    ep = m.load_episode(path)
    assert ep.complete and ep.meta["task"] == "MineRLBasaltFindCave-v0"
    assert ep.meta["frames"] == 11
    np.testing.assert_array_equal(ep.frames, np.stack(frames))
    np.testing.assert_array_equal(ep.actions, np.stack(flats))
    raw = np.stack(frames).nbytes + np.stack(flats).nbytes
    assert path.stat().st_size < raw  # compressed
    # another reader (e.g. the clip renderer in another process) finds the frames on disk
    other = m.EpisodeRecorder(tmp_path)
    np.testing.assert_array_equal(other.frame(uid, 9), frames[9])
    with pytest.raises(FileNotFoundError, match="no recording of episode"):
        other.frame(uid + 1, 0)
    with pytest.raises(IndexError):
        other.frame(uid, 11)


def test_recorder_drops_an_episode_without_actions(tmp_path) -> None:
    rec = m.EpisodeRecorder(tmp_path, chunk=1)
    first = rec.start()
    rec.add_frame(_pov(np.random.default_rng(0)))  # reset, then reset again
    rec.start()
    assert not rec.path(first).exists()
    with pytest.raises(ValueError, match="uint8"):
        rec.add_frame(np.zeros((4, 4, 3), np.float32))


# --- BASALT 2022 demonstrations ------------------------------------------------------------
def _vpt_record(keys=(), buttons=(), dx=0.0, dy=0.0, hotbar=0) -> dict:
    """One line of a BASALT 2022 / VPT contractor ``.jsonl`` (the fields the format has)."""
    return {
        "mouse": {
            "x": 640.0,
            "y": 360.0,
            "dx": dx,
            "dy": dy,
            "scaledX": dx / 10,
            "scaledY": dy / 10,
            "dwheel": 0.0,
            "buttons": list(buttons),
            "newButtons": [],
        },
        "keyboard": {"keys": list(keys), "newKeys": [], "chars": ""},
        "isGuiOpen": False,
        "isGuiInventory": False,
        "hotbar": hotbar,
        "yaw": 0.0,
        "pitch": 0.0,
        "tick": 0,
    }


def test_demonstration_records_convert_to_minerl_actions(tmp_path) -> None:
    records = [
        _vpt_record(),  # a null action
        _vpt_record(keys=["key.keyboard.w", "key.keyboard.left.control"], dx=40.0, dy=-8.0),
        _vpt_record(keys=["key.keyboard.space", "key.keyboard.t"], buttons=[0]),  # t: chat
        _vpt_record(buttons=[1, 2], hotbar=3),  # slot 4 selected by the scroll wheel
        _vpt_record(keys=["key.keyboard.4"], hotbar=3),  # held slot: no new press
        _vpt_record(keys=["key.keyboard.escape"], dx=5000.0, hotbar=3),  # a wild mouse jump
    ]
    path = tmp_path / "cheeky-cornflower-setter-abc123.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    loaded = m.load_vpt_jsonl(path)
    assert loaded == records
    cols = m.vpt_actions(loaded)
    assert set(cols) == {*m.BASALT_BUTTONS, "camera"}
    pressed = [{b for b in m.BASALT_BUTTONS if cols[b][t]} for t in range(len(records))]
    assert pressed == [
        set(),
        {"forward", "sprint"},
        {"jump", "attack"},
        {"use", "pickItem", "hotbar.4"},
        {"hotbar.4"},
        {"ESC"},
    ]
    # [pitch, yaw] = [dy, dx] * 360 / 2400 degrees, clipped to MineRL's +-180
    assert cols["camera"].dtype == np.float32
    np.testing.assert_allclose(cols["camera"][1], [-1.2, 6.0], rtol=1e-6)
    np.testing.assert_array_equal(cols["camera"][5], [0.0, 180.0])
    # Through the codec: flat actions for the recorder or a behaviour-cloning loader.
    codec = m.ActionCodec("basalt")
    flat = codec.to_flat(cols)
    assert flat.shape == (6, 25)
    assert flat[1, 23:].tolist() == [3, 9]  # mu-law bins (by hand)
    assert flat[0].tolist() == codec.to_flat(codec.noop()).tolist()
    every_key = {k for k in m.VPT_KEYS.values()} | set(m.VPT_MOUSE_BUTTONS.values())
    assert every_key == set(m.BASALT_BUTTONS)  # the keymap reaches every MineRL 1.0 button


def test_layout_detection() -> None:
    assert m.layout_for_version("1.0.2") == "basalt"
    assert m.layout_for_version("0.4.4") == "basalt2021"
    with pytest.raises(ValueError, match="version"):
        m.layout_for_version("dev")

    def holder(keys):  # anything with a Dict action space (MineRL's is a gym Dict)
        spaces = {k: gym.spaces.Discrete(2) for k in keys}
        spaces["camera"] = gym.spaces.Box(-180, 180, (2,))
        return SimpleNamespace(action_space=gym.spaces.Dict(spaces))

    assert m.layout_of_env(holder(m.BASALT_BUTTONS)) == "basalt"
    assert m.layout_of_env(holder([*m.BASALT2021_BUTTONS, "equip"])) == "basalt2021"
    assert m.layout_of_env(SimpleNamespace(action_space=gym.spaces.Discrete(3))) is None


def test_episode_end_splits_minerls_done() -> None:
    assert m.episode_end(False, False, 10, 3600) == (False, False)
    assert m.episode_end(True, False, 3600, 3600) == (False, True)  # BASALT's timeout
    assert m.episode_end(True, True, 3600, 3600) == (True, False)  # ESC on the last step
    assert m.episode_end(True, True, 12, 3600) == (True, False)  # ESC
    assert m.episode_end(True, False, 12, 3600) == (True, False)  # death, snowball (2021)


# --- the env on MineRL's own fake env (needs minerl) ----------------------------------------
def test_env_on_minerls_fake_env_records_and_rerenders(tmp_path) -> None:
    pytest.importorskip(
        "minerl", reason="minerl is not installed (needs Java 8 and a Minecraft build)"
    )
    env = envs.make_env(
        "minerl_find_cave", seed=3, fake=True, obs_size=(16, 24), record_dir=tmp_path
    )
    assert isinstance(env, m.MineRLEnv) and env.observation_space.shape == (3, 16, 24)
    obs, info = env.reset(seed=3)
    uid = int(info["sim_state"][0])
    np.testing.assert_array_equal(info["sim_state"], [uid, 0])
    assert obs.shape == (3, 16, 24) and obs.dtype == np.uint8
    env.action_space.seed(0)
    noop = env.codec.to_flat(env.codec.noop())
    for t in range(1, 6):
        flat = env.action_space.sample() if t % 2 else noop
        if "ESC" in env.codec.buttons:
            flat[env.codec.buttons.index("ESC")] = 0
        obs, r, term, trunc, info = env.step(flat)
        np.testing.assert_array_equal(info["sim_state"], [uid, t - 1])  # pre-step pointer
        assert info["reward_factors"] == {"env_reward": r} and info["true_reward"] == r
        if term or trunc:
            break
        # The agent's observation is the recorded frame, resized.
        np.testing.assert_array_equal(env.render_live(24, 16).transpose(2, 0, 1), obs)
    env.close()  # writes the unfinished recording
    ep = m.load_episode(tmp_path / f"{uid:014x}.npz")
    assert ep.complete and ep.meta["task"] == "MineRLBasaltFindCave-v0"
    assert len(ep.frames) == len(ep.actions) + 1
    with pytest.raises(NotImplementedError, match="cannot be saved"):
        env.set_env_state(env.get_env_state())
