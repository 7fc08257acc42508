"""MineRL BASALT tasks: ``pov`` frames, a flat action space, episode recordings for people.

BASALT tasks have no reward: a person judges the result. Registered names:

======================== ======================================== =============================
name                     MineRL id                                episode limit (steps, 20/s)
======================== ======================================== =============================
minerl_find_cave         MineRLBasaltFindCave-v0                  3600 (3 min)
minerl_make_waterfall    MineRLBasaltMakeWaterfall-v0             6000 (5 min)
minerl_animal_pen        MineRLBasaltCreateVillageAnimalPen-v0    6000 (5 min)
minerl_village_house     MineRLBasaltBuildVillageHouse-v0         14400 (12 min)
======================== ======================================== =============================

``minerl`` needs Java 8 and downloads and builds Minecraft when it is installed, and MineRL 1.0
pins ``numpy<1.24``, so no pbrl extra can express it: install it by hand (see
``docs/envs_minerl.md``); without it the names still
register and building one raises :class:`~pbrl.envs.MissingExtraError`. Everything else here
is pure NumPy and works on recorded data without minerl: the action codec, the observation
conversions, the conversion of BASALT 2022 demonstrations (:func:`vpt_actions`) and the
episode recorder. ``fake=True`` runs MineRL's own fake env (``EnvSpec.make(fake=True)``:
MineRL's spaces and wrappers, no Minecraft), for wiring checks where minerl is installed.

**Action layouts** (:data:`LAYOUTS`; MineRL's own ``Dict`` action space, keys in its order):

- ``"basalt"`` (MineRL >= 1.0, BASALT 2022 on): 23 buttons ``ESC, attack, back, drop, forward,
  hotbar.1 .. hotbar.9, inventory, jump, left, pickItem, right, sneak, sprint, swapHands, use``
  (each ``Discrete(2)``; ``ESC`` ends the episode, ``inventory`` opens the inventory screen)
  and ``camera``: ``Box(-180, 180, (2,))``, the change of [pitch, yaw] in degrees.
- ``"basalt2021"`` (MineRL 0.4): 9 buttons ``attack, back, forward, jump, left, right, sneak,
  sprint, use``, ``camera`` as above and ``equip``: an ``Enum`` of item names
  (:data:`BASALT2021_EQUIP`) put in the main hand.

**Flat action** (:class:`ActionCodec`), ``kind="multidiscrete"`` (default)::

    [button_1 .. button_B,  pitch_bin, yaw_bin,  equip_index]     MultiDiscrete
     2 each                 n_bins each         len(equip) (basalt2021 only)

Camera bins are VPT's mu-law quantisation (Baker et al. 2022): degrees clipped to
``+-camera_maxval`` (10), ``x = sign(c) log(1 + mu |c| / maxval) / log(1 + mu)`` (mu = 10),
bin ``round((x + 1) maxval / camera_binsize)`` (binsize 2: 11 bins, the middle one 0
degrees); decoding inverts it, so bins round-trip exactly and a camera value is off by at
most half a bin. ``kind="box"``: ``Box(-1, 1)`` of the same length, buttons pressed when
``> 0``, camera ``= clip(x, -1, 1) * camera_maxval`` degrees, equip the arg-max of its
``len(equip)`` scores. ``disable=("ESC",)`` drops buttons from the flat action (always sent
as 0; recorded presses are ignored by :meth:`ActionCodec.to_flat`).

**Observations**: the ``pov`` image (MineRL: ``(360, 640, 3)`` uint8 for BASALT 2022,
``(64, 64, 3)`` for 2021) resized to ``record_size`` is the recorded frame; the agent sees
it resized to ``obs_size`` and channel-first, ``(3, H, W)`` uint8. For 2021 data
:func:`inventory_vector` and :func:`equipped_index` turn the ``inventory`` and
``equipped_items`` dicts into arrays.

**Demonstrations** (BASALT 2022 / VPT contractor data: one ``.mp4`` and one ``.jsonl`` per
episode, a JSON record per 20 Hz frame): :func:`vpt_actions` turns the records into MineRL
1.0 dict actions (batched columns; :meth:`ActionCodec.to_flat` makes them flat). Keys
pressed (``keyboard.keys``, Minecraft key names) map to buttons through MineRL 1.0's keymap
(:data:`VPT_KEYS`); mouse buttons 0, 1, 2 are ``attack``, ``use``, ``pickItem``; the camera is
``[dy, dx] * 360 / 2400`` degrees (MineRL's mouse sensitivity), clipped to +-180; a change of
the selected ``hotbar`` slot (the scroll wheel, which the recorder does not log as a key)
presses that slot's ``hotbar.N`` button.

**Sim state and recordings**: Minecraft cannot be re-rendered from a state vector, so the
frames themselves are kept. Every episode is written by :class:`EpisodeRecorder` to one
``.npz`` file in ``record_dir`` (frames in compressed chunks of 32, flat actions, metadata),
while it runs. ``info["sim_state"]`` is ``[episode uid, t]``, a pointer into that file, and
:meth:`MineRLEnv.render_state` reads frame ``t`` back (resized if asked), so clips for people
and pixel observations come from the recordings through the usual PbrlEnv interface.
``record_dir`` must be shared by the process that renders clips.

Reward factors: ``env_reward``, MineRL's reward (0 in every BASALT task); the true reward is
that factor. A running Minecraft world cannot be saved: ``set_env_state`` raises.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import tempfile
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from PIL import Image

from pbrl.envs.base import PbrlEnv

TASKS: dict[str, tuple[str, int]] = {
    "minerl_find_cave": ("MineRLBasaltFindCave-v0", 3600),
    "minerl_make_waterfall": ("MineRLBasaltMakeWaterfall-v0", 6000),
    "minerl_animal_pen": ("MineRLBasaltCreateVillageAnimalPen-v0", 6000),
    "minerl_village_house": ("MineRLBasaltBuildVillageHouse-v0", 14400),
}
"""Registry name -> (MineRL gym id, episode limit in steps: minutes x 1200)."""

BASALT_BUTTONS: tuple[str, ...] = (
    "ESC",
    "attack",
    "back",
    "drop",
    "forward",
    *(f"hotbar.{i}" for i in range(1, 10)),
    "inventory",
    "jump",
    "left",
    "pickItem",
    "right",
    "sneak",
    "sprint",
    "swapHands",
    "use",
)
"""MineRL 1.0 BASALT buttons (``mc.KEYMAP`` values, in the ``Dict`` space's sorted order)."""

BASALT2021_BUTTONS: tuple[str, ...] = (
    "attack",
    "back",
    "forward",
    "jump",
    "left",
    "right",
    "sneak",
    "sprint",
    "use",
)
"""MineRL 0.4 BASALT buttons (``SIMPLE_KEYBOARD_ACTION`` + ``use``, sorted)."""

BASALT2021_ITEMS: tuple[str, ...] = (
    "stone_shovel",
    "stone_pickaxe",
    "snowball",
    "cobblestone",
    "water_bucket",
    "bucket",
    "fence",
    "fence_gate",
    "wheat_seeds",
    "carrot",
    "wheat",
)
"""MineRL 0.4 BASALT inventory items (``basalt_specs.DEFAULT_ITEMS``)."""

BASALT2021_EQUIP: tuple[str, ...] = ("none", "air", *BASALT2021_ITEMS, "other")
"""MineRL 0.4 BASALT ``equip`` values and ``equipped_items.mainhand.type`` values."""

LAYOUTS: dict[str, dict[str, tuple[str, ...]]] = {
    "basalt": {"buttons": BASALT_BUTTONS, "equip": ()},
    "basalt2021": {"buttons": BASALT2021_BUTTONS, "equip": BASALT2021_EQUIP},
}
"""MineRL action layouts: buttons and ``equip`` values (empty: no ``equip`` key)."""

INSTALL_HINT = (
    "minerl needs a Java 8 JDK and builds Minecraft while it installs; MineRL 1.0 (BASALT "
    "2022) is not on PyPI: `pip install git+https://github.com/minerllabs/minerl@v1.0.2` "
    "(see docs/envs_minerl.md)"
)
"""What the missing-extra error adds about installing minerl."""

CAMERA_LIMIT = 180.0
"""MineRL's camera action bound in degrees."""


# --------------------------------------------------------------------------------------
# camera quantisation
def camera_to_bins(
    camera: np.ndarray, maxval: float = 10.0, binsize: float = 2.0, mu: float | None = 10.0
) -> np.ndarray:
    """Degrees ``(..., 2)`` -> int64 bins in ``[0, 2 maxval / binsize]`` (mu-law or linear)."""
    x = np.clip(np.asarray(camera, np.float64), -maxval, maxval) / maxval
    if mu:
        x = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    return np.round((x * maxval + maxval) / binsize).astype(np.int64)


def bins_to_camera(
    bins: np.ndarray, maxval: float = 10.0, binsize: float = 2.0, mu: float | None = 10.0
) -> np.ndarray:
    """Inverse of :func:`camera_to_bins`: the degrees at each bin's centre, float32."""
    x = (np.asarray(bins, np.float64) * binsize - maxval) / maxval
    if mu:
        x = np.sign(x) * np.expm1(np.abs(x) * np.log1p(mu)) / mu
    return (x * maxval).astype(np.float32)


# --------------------------------------------------------------------------------------
# actions
@dataclass(frozen=True)
class ActionCodec:
    """Converts MineRL dict actions to flat arrays and back (see the module docstring).

    Works on one action (scalars, ``camera (2,)``) or a batch (every value with the same
    leading shape, e.g. ``(T,)`` columns of a recorded episode).

    Args:
        layout: a key of :data:`LAYOUTS`.
        kind: ``"multidiscrete"`` or ``"box"``.
        camera_maxval, camera_binsize, camera_mu: camera range in degrees and quantisation
            (``camera_mu=None``: linear bins); ``box`` uses only ``camera_maxval``.
        disable: buttons left out of the flat action (sent as 0), e.g. ``("ESC",)``.
    """

    layout: str = "basalt"
    kind: Literal["multidiscrete", "box"] = "multidiscrete"
    camera_maxval: float = 10.0
    camera_binsize: float = 2.0
    camera_mu: float | None = 10.0
    disable: tuple[str, ...] = ()
    buttons: tuple[str, ...] = field(init=False)
    equip: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown MineRL layout {self.layout!r}; valid: {sorted(LAYOUTS)}")
        if self.kind not in ("multidiscrete", "box"):
            raise ValueError(f"kind must be 'multidiscrete' or 'box', got {self.kind!r}")
        if not 0 < self.camera_maxval <= CAMERA_LIMIT:
            raise ValueError(f"camera_maxval must lie in (0, 180], got {self.camera_maxval}")
        bins = 2 * self.camera_maxval / self.camera_binsize
        if self.camera_binsize <= 0 or abs(bins - round(bins)) > 1e-9:
            raise ValueError("camera_binsize must be > 0 and divide 2 * camera_maxval")
        all_buttons = LAYOUTS[self.layout]["buttons"]
        unknown = sorted(set(self.disable) - set(all_buttons))
        if unknown:
            raise ValueError(f"cannot disable {unknown}: not buttons of layout {self.layout!r}")
        object.__setattr__(self, "disable", tuple(self.disable))
        object.__setattr__(self, "buttons", tuple(b for b in all_buttons if b not in self.disable))
        object.__setattr__(self, "equip", LAYOUTS[self.layout]["equip"])

    # --- sizes and spaces -------------------------------------------------------------
    @property
    def n_bins(self) -> int:
        """Camera bins per axis (11 with the defaults)."""
        return int(round(2 * self.camera_maxval / self.camera_binsize)) + 1

    @property
    def keys(self) -> tuple[str, ...]:
        """Keys of the MineRL dict action, in MineRL's order."""
        keys = [*LAYOUTS[self.layout]["buttons"], "camera"]
        if self.equip:
            keys.append("equip")
        return tuple(sorted(keys))

    @property
    def dim(self) -> int:
        """Length of the flat action."""
        return len(self.buttons) + 2 + (len(self.equip) if self.kind == "box" else bool(self.equip))

    @property
    def space(self) -> gym.spaces.Space:
        """The flat action space (``MultiDiscrete`` or ``Box(-1, 1)`` float32)."""
        if self.kind == "box":
            return gym.spaces.Box(-1.0, 1.0, (self.dim,), np.float32)
        nvec = [2] * len(self.buttons) + [self.n_bins] * 2
        if self.equip:
            nvec.append(len(self.equip))
        return gym.spaces.MultiDiscrete(np.array(nvec, np.int64))

    def describe(self) -> list[str]:
        """One line per flat entry: index, range and meaning (for docs and logs)."""
        out = [
            f"{i}: {b} (pressed: {'> 0' if self.kind == 'box' else '1'})"
            for i, b in enumerate(self.buttons)
        ]
        n = len(self.buttons)
        cam = (
            f"x * {self.camera_maxval} degrees"
            if self.kind == "box"
            else f"bin 0..{self.n_bins - 1}, {'mu-law' if self.camera_mu else 'linear'}, "
            f"centre bin {self.n_bins // 2} = 0 degrees"
        )
        out += [f"{n}: camera pitch ({cam})", f"{n + 1}: camera yaw ({cam})"]
        if self.equip:
            what = "arg-max of scores" if self.kind == "box" else "index"
            out.append(f"{n + 2}..: equip ({what} into {list(self.equip)})")
        return out

    # --- conversions ------------------------------------------------------------------
    def noop(self) -> dict[str, Any]:
        """MineRL's no-op action (no button, no camera move, equip ``"none"``)."""
        return self.from_flat(self.to_flat(self._noop_dict()))

    def _noop_dict(self) -> dict[str, Any]:
        act: dict[str, Any] = {b: 0 for b in LAYOUTS[self.layout]["buttons"]}
        act["camera"] = np.zeros(2, np.float32)
        if self.equip:
            act["equip"] = "none"
        return act

    def to_flat(self, action: Mapping[str, Any]) -> np.ndarray:
        """MineRL dict action (one or a batch) -> flat ``(..., dim)`` array.

        MultiDiscrete: int64; box: float32. Raises KeyError for missing or unknown keys.
        """
        missing = sorted(set(self.keys) - set(action))
        extra = sorted(set(action) - set(self.keys))
        if missing or extra:
            raise KeyError(
                f"a {self.layout!r} MineRL action has keys {list(self.keys)}; missing {missing}, "
                f"unknown {extra}"
            )
        camera = np.asarray(action["camera"], np.float64)
        if camera.shape[-1:] != (2,):
            raise ValueError(f"camera must have shape (..., 2), got {camera.shape}")
        batch = camera.shape[:-1]
        pressed = np.stack(
            [np.broadcast_to(np.asarray(action[b]) != 0, batch) for b in self.buttons], -1
        ).reshape(*batch, len(self.buttons))
        parts: list[np.ndarray]
        if self.kind == "box":
            cam = np.clip(camera / self.camera_maxval, -1.0, 1.0)
            parts = [np.where(pressed, 1.0, -1.0), cam]
            if self.equip:
                parts.append(np.where(self._equip_onehot(action["equip"], batch), 1.0, -1.0))
            return np.concatenate(parts, -1).astype(np.float32)
        bins = camera_to_bins(camera, self.camera_maxval, self.camera_binsize, self.camera_mu)
        parts = [pressed.astype(np.int64), bins]
        if self.equip:
            parts.append(self._equip_index(action["equip"], batch)[..., None])
        return np.concatenate(parts, -1)

    def from_flat(self, flat: np.ndarray) -> dict[str, Any]:
        """Flat ``(..., dim)`` -> MineRL dict action with every key of the layout.

        Buttons are int64 (0/1; disabled ones 0), camera float32 ``(..., 2)`` degrees, equip
        a ``str`` (one action) or an array of ``str`` (a batch).
        """
        flat = np.asarray(flat)
        if flat.shape[-1:] != (self.dim,):
            raise ValueError(f"flat action must have shape (..., {self.dim}), got {flat.shape}")
        nb, batch = len(self.buttons), flat.shape[:-1]
        if self.kind == "box":
            pressed = flat[..., :nb] > 0
            camera = (np.clip(flat[..., nb : nb + 2], -1.0, 1.0) * self.camera_maxval).astype(
                np.float32
            )
        else:
            pressed = flat[..., :nb] != 0
            camera = bins_to_camera(
                flat[..., nb : nb + 2], self.camera_maxval, self.camera_binsize, self.camera_mu
            )
        act: dict[str, Any] = {}
        for b in LAYOUTS[self.layout]["buttons"]:
            if b in self.disable:
                act[b] = np.zeros(batch, np.int64) if batch else 0
            else:
                v = pressed[..., self.buttons.index(b)].astype(np.int64)
                act[b] = v if batch else int(v)
        act["camera"] = camera
        if self.equip:
            tail = flat[..., nb + 2 :]
            idx = np.argmax(tail, -1) if self.kind == "box" else tail[..., 0].astype(np.intp)
            names = np.asarray(self.equip, dtype=object)[idx]
            act["equip"] = names if batch else str(names)
        return {k: act[k] for k in self.keys}

    def _equip_index(self, equip: Any, batch: tuple[int, ...]) -> np.ndarray:
        lookup = {name: i for i, name in enumerate(self.equip)}
        names = np.broadcast_to(np.asarray(equip, dtype=object), batch)
        try:
            return np.array([lookup[str(n)] for n in names.ravel()], np.int64).reshape(batch)
        except KeyError as err:
            raise ValueError(f"unknown equip item {err.args[0]!r}; valid: {self.equip}") from None

    def _equip_onehot(self, equip: Any, batch: tuple[int, ...]) -> np.ndarray:
        return np.eye(len(self.equip), dtype=bool)[self._equip_index(equip, batch)]


# --------------------------------------------------------------------------------------
# observations
def resize_frame(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(height, width, 3)`` (PIL bilinear; a copy when equal)."""
    frame = np.asarray(frame)
    if frame.shape[:2] == (height, width):
        return np.array(frame, np.uint8)
    img = Image.fromarray(np.ascontiguousarray(frame, np.uint8))
    return np.asarray(img.resize((int(width), int(height)), Image.BILINEAR))


def pov_frame(obs: Mapping[str, Any]) -> np.ndarray:
    """The ``pov`` image of a MineRL observation, checked: ``(H, W, 3)`` uint8."""
    if "pov" not in obs:
        raise KeyError(f"a MineRL observation holds 'pov'; got keys {sorted(obs)}")
    pov = np.asarray(obs["pov"])
    if pov.ndim != 3 or pov.shape[-1] != 3 or pov.dtype != np.uint8:
        raise ValueError(f"pov must be (H, W, 3) uint8, got {pov.shape} {pov.dtype}")
    return pov


def inventory_vector(obs: Mapping[str, Any], items: Sequence[str]) -> np.ndarray:
    """``(len(items),)`` float32 counts from MineRL's ``inventory`` dict (0 where absent).

    Works on one observation or on recorded columns (each count ``(T,)``: out ``(T, n)``).
    """
    inv = obs.get("inventory", {})
    cols = [np.asarray(inv.get(item, 0), np.float32) for item in items]
    shape = np.broadcast_shapes(*(c.shape for c in cols)) if cols else ()
    return np.stack([np.broadcast_to(c, shape) for c in cols], -1) if cols else np.zeros(0)


def equipped_index(obs: Mapping[str, Any], equip: Sequence[str] = BASALT2021_EQUIP) -> np.ndarray:
    """Index into ``equip`` of ``equipped_items.mainhand.type`` (unknown names: ``"other"``)."""
    kind = np.asarray(obs["equipped_items"]["mainhand"]["type"], dtype=object)
    lookup = {name: i for i, name in enumerate(equip)}
    other = lookup.get("other", len(equip) - 1)
    return np.array([lookup.get(str(k), other) for k in kind.ravel()], np.int64).reshape(kind.shape)


# --------------------------------------------------------------------------------------
# BASALT 2022 demonstrations (VPT contractor format)
VPT_KEYS: dict[str, str] = {
    "key.keyboard.escape": "ESC",
    "key.keyboard.w": "forward",
    "key.keyboard.s": "back",
    "key.keyboard.a": "left",
    "key.keyboard.d": "right",
    "key.keyboard.space": "jump",
    "key.keyboard.left.shift": "sneak",
    "key.keyboard.left.control": "sprint",
    "key.keyboard.e": "inventory",
    "key.keyboard.q": "drop",
    "key.keyboard.f": "swapHands",
    **{f"key.keyboard.{i}": f"hotbar.{i}" for i in range(1, 10)},
}
"""Minecraft key names of a demonstration record -> MineRL 1.0 buttons (``mc.KEYMAP``)."""

VPT_MOUSE_BUTTONS: dict[int, str] = {0: "attack", 1: "use", 2: "pickItem"}
"""Mouse button numbers of a demonstration record -> MineRL 1.0 buttons."""

VPT_CAMERA_SCALE = 360.0 / 2400.0
"""Degrees of camera turn per mouse count in the recordings (MineRL's mouse sensitivity)."""


def vpt_actions(records: Iterable[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """BASALT 2022 demonstration records (one per frame) -> MineRL 1.0 dict actions.

    Args:
        records: the parsed lines of a ``.jsonl`` demonstration, in order; each holds
            ``keyboard.keys`` (key names held), ``mouse.dx``, ``mouse.dy`` (counts),
            ``mouse.buttons`` (held buttons) and ``hotbar`` (selected slot, 0-8).

    Returns:
        Columns of length ``T``: every :data:`BASALT_BUTTONS` key int64 0/1 and ``camera``
        float32 ``(T, 2)`` [pitch, yaw] degrees (module docstring). Keys outside
        :data:`VPT_KEYS` (chat, F-keys, ...) are ignored.
    """
    records = list(records)
    n = len(records)
    cols = {b: np.zeros(n, np.int64) for b in BASALT_BUTTONS}
    camera = np.zeros((n, 2), np.float64)
    last_slot: int | None = None
    for t, rec in enumerate(records):
        for key in rec.get("keyboard", {}).get("keys", ()):
            button = VPT_KEYS.get(key)
            if button is not None:
                cols[button][t] = 1
        mouse = rec.get("mouse", {})
        for number in mouse.get("buttons", ()):
            button = VPT_MOUSE_BUTTONS.get(int(number))
            if button is not None:
                cols[button][t] = 1
        camera[t] = float(mouse.get("dy", 0.0)), float(mouse.get("dx", 0.0))
        slot = rec.get("hotbar")
        if slot is not None:
            slot = int(slot)
            if last_slot is not None and slot != last_slot:
                cols[f"hotbar.{slot + 1}"][t] = 1
            last_slot = slot
    camera = np.clip(camera * VPT_CAMERA_SCALE, -CAMERA_LIMIT, CAMERA_LIMIT)
    return {**cols, "camera": camera.astype(np.float32)}


def load_vpt_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a BASALT 2022 ``.jsonl`` demonstration file (blank lines skipped)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --------------------------------------------------------------------------------------
# recordings
@dataclass(frozen=True)
class Episode:
    """One recorded episode.

    Attributes:
        frames: ``(T+1, H, W, 3)`` uint8, the frame before each action and the last one.
        actions: ``(T, D)`` flat actions (as sent through the flat action space).
        meta: what was recorded with it (task, seed, action codec, frame size, ...).
        complete: False when the episode was cut off (a crash) before it was finished.
    """

    frames: np.ndarray
    actions: np.ndarray
    meta: dict[str, Any]
    complete: bool

    def action_dicts(self) -> dict[str, Any]:
        """The MineRL dict actions (batched columns) the flat actions stand for."""
        codec = self.meta.get("codec")
        if codec is None:
            raise ValueError("this recording has no MineRL action codec in its metadata")
        return ActionCodec(**{**codec, "disable": tuple(codec["disable"])}).from_flat(self.actions)


def _chunk_name(kind: str, k: int) -> str:
    return f"{kind}_{k:05d}.npy"


class EpisodeRecorder:
    """Writes each episode's frames and actions to ``<directory>/<uid>.npz``, as it runs.

    Frames go to the file in compressed chunks of ``chunk`` frames (each chunk a member of
    the zip, added with the file kept valid, so a crash loses at most one chunk and any frame
    can be read back while the episode runs); the metadata is added when the episode ends.
    :meth:`frame` serves frames of the live episode and of any file in the directory (with a
    small cache of chunks). :func:`load_episode` reads a whole file back.

    Args:
        directory: where episodes are written (created); ``None``: a new temporary one.
        chunk: frames per compressed chunk.
        cache_chunks: decoded chunks kept in memory for :meth:`frame`.
    """

    def __init__(
        self, directory: str | os.PathLike | None, chunk: int = 32, cache_chunks: int = 16
    ):
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        if directory is None:
            directory = tempfile.mkdtemp(prefix="pbrl-recordings-")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.chunk = int(chunk)
        self.cache_chunks = int(cache_chunks)
        self.uid: int | None = None
        self.meta: dict[str, Any] = {}
        self._frames: list[np.ndarray] = []  # live frames not yet written
        self._actions: list[np.ndarray] = []  # live actions not yet written
        self._n_frames = 0  # frames of the live episode, written or not
        self._n_actions = 0
        self._written = 0  # frames of the live episode already in its file
        self._chunks_written = 0
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    @property
    def recording(self) -> bool:
        """Whether an episode is being recorded."""
        return self.uid is not None

    def path(self, uid: int) -> Path:
        """File of episode ``uid``."""
        return self.directory / f"{int(uid):014x}.npz"

    def start(self, uid: int | None = None, meta: Mapping[str, Any] | None = None) -> int:
        """Begin an episode; returns its uid (< 2**53).

        An episode still running is finished first, or dropped if it has no action (a reset
        straight after a reset).
        """
        if self.recording:
            if self._n_actions:
                self.finish()
            else:
                self.discard()
        if uid is None:
            uid = int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> np.uint64(11))
        if not 0 <= uid < 2**53:
            raise ValueError(f"episode uid must lie in [0, 2**53) to fit a float64, got {uid}")
        self.path(uid).unlink(missing_ok=True)
        self.uid, self.meta = int(uid), dict(meta or {})
        for key in [k for k in self._cache if k[0] == uid]:  # a re-recorded uid
            del self._cache[key]
        self._frames, self._actions = [], []
        self._n_frames = self._n_actions = self._written = self._chunks_written = 0
        return self.uid

    def discard(self) -> None:
        """Drop the running episode and its file."""
        if self.uid is not None:
            self.path(self.uid).unlink(missing_ok=True)
        self.uid, self._frames, self._actions = None, [], []

    def add_frame(self, frame: np.ndarray) -> int:
        """Append the next frame ``(H, W, 3)`` uint8; returns its time index."""
        if not self.recording:
            raise RuntimeError("no episode is being recorded; call start() first")
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"frames must be (H, W, 3) uint8, got {frame.shape} {frame.dtype}")
        if self._frames and frame.shape != self._frames[0].shape:
            raise ValueError(
                f"frame {frame.shape} differs from the episode's {self._frames[0].shape}"
            )
        self._frames.append(np.array(frame))
        self._n_frames += 1
        if len(self._frames) >= self.chunk:
            self._flush()
        return self._n_frames - 1

    def add_action(self, action: np.ndarray) -> None:
        """Append the flat action taken from the last frame."""
        if not self.recording:
            raise RuntimeError("no episode is being recorded; call start() first")
        self._actions.append(np.array(action).reshape(-1))
        self._n_actions += 1

    def _flush(self) -> None:
        if not self._frames and not self._actions:
            return
        assert self.uid is not None
        k = self._chunks_written
        with zipfile.ZipFile(self.path(self.uid), "a", compression=zipfile.ZIP_DEFLATED) as zf:
            if self._frames:
                with zf.open(_chunk_name("frames", k), "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.stack(self._frames), allow_pickle=False)
            if self._actions:
                with zf.open(_chunk_name("actions", k), "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.stack(self._actions), allow_pickle=False)
        self._written += len(self._frames)
        self._chunks_written += 1
        self._frames, self._actions = [], []

    def finish(self) -> Path:
        """Write what is left and the metadata; returns the episode's file."""
        if not self.recording:
            raise RuntimeError("no episode is being recorded")
        assert self.uid is not None
        self._flush()
        meta = {
            **self.meta,
            "uid": self.uid,
            "frames": self._n_frames,
            "chunk": self.chunk,
        }
        with zipfile.ZipFile(self.path(self.uid), "a", compression=zipfile.ZIP_DEFLATED) as zf:
            with zf.open("meta.npy", "w") as f:
                np.lib.format.write_array(f, np.array(json.dumps(meta)), allow_pickle=False)
        path = self.path(self.uid)
        self.uid = None
        return path

    def frame(self, uid: int, t: int) -> np.ndarray:
        """Frame ``t`` of episode ``uid`` (live or written), ``(H, W, 3)`` uint8."""
        uid, t = int(uid), int(t)
        if t < 0:
            raise IndexError(f"frame index must be >= 0, got {t}")
        if uid == self.uid and t >= self._written:
            if t >= self._n_frames:
                raise IndexError(
                    f"episode {uid:014x} has {self._n_frames} frames so far, asked {t}"
                )
            return self._frames[t - self._written]
        # Files written with another chunk size: every chunk but the last is full, so the
        # first chunk's length is the file's chunk size.
        size = self.chunk if uid == self.uid else len(self._chunk(uid, 0))
        k = t // size
        frames = self._chunk(uid, k, t)
        if t - k * size >= len(frames):
            raise IndexError(f"episode {uid:014x} has no frame {t}")
        return frames[t - k * size]

    def _chunk(self, uid: int, k: int, t: int | None = None) -> np.ndarray:
        """Frames of chunk ``k`` of episode ``uid`` from its file (cached)."""
        key = (uid, k)
        frames = self._cache.get(key)
        if frames is not None:
            self._cache.move_to_end(key)
            return frames
        path = self.path(uid)
        if not path.exists():
            raise FileNotFoundError(
                f"no recording of episode {uid:014x} in {self.directory}; sim states of "
                "recorded envs point into the record_dir they were recorded to"
            )
        with np.load(path) as data:
            name = _chunk_name("frames", k)[:-4]
            if name not in data.files:
                raise IndexError(f"episode {uid:014x} has no frame {t if t is not None else k}")
            frames = data[name]
        self._cache[key] = frames
        while len(self._cache) > self.cache_chunks:
            self._cache.popitem(last=False)
        return frames


def load_episode(path: str | os.PathLike) -> Episode:
    """Read a file written by :class:`EpisodeRecorder`."""
    with np.load(path) as data:
        frames = sorted(n for n in data.files if n.startswith("frames_"))
        actions = sorted(n for n in data.files if n.startswith("actions_"))
        complete = "meta" in data.files
        meta = json.loads(str(data["meta"])) if complete else {}
        fr = np.concatenate([data[n] for n in frames]) if frames else np.zeros((0, 0, 0, 3))
        act = np.concatenate([data[n] for n in actions]) if actions else np.zeros((0, 0))
    return Episode(frames=fr.astype(np.uint8), actions=act, meta=meta, complete=complete)


# --------------------------------------------------------------------------------------
# the environment
def _import_minerl() -> Any:
    """The ``minerl`` package, or MissingExtraError naming the extra."""
    try:
        import minerl
    except ImportError:
        from pbrl.envs import MissingExtraError

        raise MissingExtraError("MineRL", None, "minerl", INSTALL_HINT) from None
    return minerl


def layout_for_version(version: str) -> str:
    """The action layout of a minerl version: ``"basalt"`` from 1.0 on, else ``"basalt2021"``."""
    head = version.strip().split(".")[0]
    if not head.isdigit():
        raise ValueError(f"cannot read a minerl version from {version!r}")
    return "basalt" if int(head) >= 1 else "basalt2021"


def installed_layout() -> str:
    """The action layout of the installed ``minerl`` (its distribution's version)."""
    try:
        version = importlib.metadata.version("minerl")
    except importlib.metadata.PackageNotFoundError:
        version = str(getattr(_import_minerl(), "__version__", "1.0"))
    return layout_for_version(version)


def layout_of_env(env: Any) -> str | None:
    """The layout of a MineRL env from its ``Dict`` action space's keys (None: unknown)."""
    keys = set(getattr(getattr(env, "action_space", None), "spaces", None) or ())
    if "ESC" in keys:
        return "basalt"
    if "equip" in keys:
        return "basalt2021"
    return None


def make_minerl_env(gym_id: str, fake: bool = False) -> Any:
    """``gym.make(gym_id)`` of the installed minerl (its own old-API ``gym``).

    ``fake=True``: MineRL's fake env of the task (``EnvSpec.make(fake=True)``), which has the
    task's spaces and wrappers and answers with canned observations without starting Minecraft.
    """
    _import_minerl()
    if fake:
        from minerl.herobraine import envs as specs

        listed = getattr(specs, "ENVS", None) or getattr(specs, "ENV_SPECS", ())
        for spec in listed:
            if spec.name == gym_id:
                return spec.make(fake=True)
        raise KeyError(f"the installed minerl has no env spec named {gym_id!r}")
    import gym as old_gym  # minerl's own gym (< 0.24), not gymnasium

    return old_gym.make(gym_id)


def episode_end(done: bool, esc: bool, t: int, limit: int) -> tuple[bool, bool]:
    """``(terminated, truncated)`` of a MineRL step that returned ``done`` at step ``t``.

    MineRL's old API has one ``done``: the task's time limit (``t >= limit``, BASALT's
    timeout wrapper) is a truncation; the player quitting (``ESC``, or the snowball of BASALT
    2021), dying, or any other end is a termination.
    """
    truncated = done and not esc and t >= limit
    return done and not truncated, truncated


class _MineRLCore(gym.Env):
    """A MineRL env (old ``gym`` API) as a gymnasium env with MineRL's dict spaces.

    ``env`` is built by ``make()`` at the first reset (that launches Minecraft), so an env made
    only to re-render recorded frames never starts one.
    """

    metadata = {"render_modes": []}

    def __init__(self, make: Any, max_episode_steps: int, esc_key: bool):
        self._make = make
        self.env: Any = None
        self.max_episode_steps = int(max_episode_steps)
        self._esc_key = esc_key
        self._t = 0
        self._seed: int | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # type: ignore[override]
        """Reset (``seed`` seeds the next world where MineRL supports it)."""
        if self.env is None:
            self.env = self._make()
        if seed is not None and hasattr(self.env, "seed"):
            self.env.seed(int(seed))
        self._t = 0
        return self.env.reset(), {}

    def step(self, action: Mapping[str, Any]):  # type: ignore[override]
        """One MineRL step; the time limit truncates, ESC and death terminate."""
        obs, reward, done, info = self.env.step(dict(action))
        self._t += 1
        esc = self._esc_key and bool(np.asarray(action.get("ESC", 0)))
        terminated, truncated = episode_end(bool(done), esc, self._t, self.max_episode_steps)
        return obs, float(reward), terminated, truncated, dict(info or {})

    def close(self) -> None:
        """Close Minecraft if it was started."""
        if self.env is not None:
            self.env.close()
            self.env = None


class MineRLEnv(PbrlEnv):
    """A BASALT task with a flat action space, pov observations and recorded episodes.

    Args:
        name: a key of :data:`TASKS` (for bookkeeping when ``env`` is given).
        seed: seeds the first world and the episode uids.
        env: a MineRL env you built yourself (e.g. ``gym.make`` of the task with your own
            MineRL wrappers); default: ``gym.make`` of the task, at the first reset.
        fake: use MineRL's own fake env of the task (:func:`make_minerl_env`).
        layout: action layout (:data:`LAYOUTS`); ``"auto"``: that of ``env``'s action space,
            else of the installed minerl.
        action_kind, camera_maxval, camera_binsize, camera_mu, disable: see
            :class:`ActionCodec`.
        obs_size: ``(height, width)`` of the agent's frames.
        record_dir: where episodes are recorded (shared with whoever renders clips);
            ``None``: a new temporary directory.
        record_size: ``(height, width)`` of recorded frames; ``None``: MineRL's own.
        max_episode_steps: the task's limit (default: :data:`TASKS`).
    """

    supports_info_columns = False  # writes the contract keys in its own step/reset

    factor_names = ("env_reward",)

    def __init__(
        self,
        name: str = "minerl_find_cave",
        seed: int | None = None,
        env: Any = None,
        fake: bool = False,
        layout: str = "auto",
        action_kind: Literal["multidiscrete", "box"] = "multidiscrete",
        camera_maxval: float = 10.0,
        camera_binsize: float = 2.0,
        camera_mu: float | None = 10.0,
        disable: Sequence[str] = (),
        obs_size: Sequence[int] = (64, 64),
        record_dir: str | os.PathLike | None = None,
        record_size: Sequence[int] | None = (180, 320),
        max_episode_steps: int | None = None,
    ):
        if name not in TASKS:
            raise KeyError(f"unknown BASALT task {name!r}; valid: {sorted(TASKS)}")
        gym_id, limit = TASKS[name]
        limit = int(max_episode_steps or limit)
        if env is None:
            _import_minerl()  # MissingExtraError now, not at the first reset

            def make() -> Any:
                return make_minerl_env(gym_id, fake=fake)

        else:

            def make() -> Any:
                return env

        if layout == "auto":
            layout = (env is not None and layout_of_env(env)) or installed_layout()

        self.codec = ActionCodec(
            layout=layout,
            kind=action_kind,
            camera_maxval=camera_maxval,
            camera_binsize=camera_binsize,
            camera_mu=camera_mu,
            disable=tuple(disable),
        )
        core = _MineRLCore(make, limit, esc_key="ESC" in self.codec.keys)
        super().__init__(core, limit)
        self.core = core
        self.name, self.gym_id = name, gym_id
        self.obs_size = (int(obs_size[0]), int(obs_size[1]))
        self.record_size = (
            None if record_size is None else (int(record_size[0]), int(record_size[1]))
        )
        self.recorder = EpisodeRecorder(record_dir)
        self.action_space = self.codec.space
        self.observation_space = gym.spaces.Box(0, 255, (3, *self.obs_size), np.uint8)
        self._seed = seed
        self._episode = 0
        self._t = 0

    # --- episode uids -----------------------------------------------------------------
    def _next_uid(self) -> int:
        self._episode += 1
        if self._seed is None:
            return int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> np.uint64(11))
        ss = np.random.SeedSequence([int(self._seed), self._episode, 0x6D696E65])
        return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(11))

    def _observe(self, obs: Mapping[str, Any]) -> np.ndarray:
        """Record the pov frame; the agent's observation is it resized, channel-first."""
        frame = pov_frame(obs)
        if self.record_size is not None:
            frame = resize_frame(frame, *self.record_size)
        self._t = self.recorder.add_frame(frame)
        return np.ascontiguousarray(resize_frame(frame, *self.obs_size).transpose(2, 0, 1))

    # --- gymnasium API ----------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):  # type: ignore[override]
        """Reset MineRL and start recording a new episode."""
        if seed is not None:
            self._seed, self._episode = int(seed), 0
        raw, info = self.core.reset(seed=seed, options=options)
        self.recorder.start(
            self._next_uid(),
            meta={
                "task": self.gym_id,
                "name": self.name,
                "seed": self._seed,
                "episode": self._episode,
                "codec": {
                    "layout": self.codec.layout,
                    "kind": self.codec.kind,
                    "camera_maxval": self.codec.camera_maxval,
                    "camera_binsize": self.codec.camera_binsize,
                    "camera_mu": self.codec.camera_mu,
                    "disable": list(self.codec.disable),
                },
            },
        )
        obs = self._observe(raw)
        self._state = self._get_sim_state()
        self._ep_return, self._ep_len = 0.0, 0
        info["sim_state"] = self._state
        return obs, info

    def step(self, action):  # type: ignore[no-untyped-def,override]
        """Step with a flat action (see :class:`ActionCodec`); records frame and action."""
        flat = np.asarray(action)
        self.recorder.add_action(flat)
        dict_action = self.codec.from_flat(flat)
        before = self._state
        raw, reward, terminated, truncated, info = self.core.step(dict_action)
        obs = self._observe(raw)
        info["true_reward"] = reward
        info["reward_factors"] = {"env_reward": reward}
        info["sim_state"] = before
        self._state = self._get_sim_state()
        self._ep_return += reward
        self._ep_len += 1
        if self._truncate_at is not None and self._ep_len >= self._truncate_at:
            truncated = True
        if terminated or truncated:
            info["episode"] = {"r": self._ep_return, "l": self._ep_len}
            self.recorder.finish()
        return obs, reward, terminated, truncated, info

    # --- PbrlEnv hooks ----------------------------------------------------------------
    @property
    def state_dim(self) -> int:
        """2: ``[episode uid, t]``."""
        return 2

    def _get_sim_state(self) -> np.ndarray:
        if self.recorder.uid is None and self._state is None:
            raise RuntimeError("the MineRL env has no episode yet; call reset() first")
        uid = self.recorder.uid if self.recorder.uid is not None else int(self._state[0])
        return np.array([uid, self._t], np.float64)

    def _factors(self, info: dict[str, Any]) -> dict[str, float]:
        return dict(info["reward_factors"])

    def reward_from_factors(self, factors: Mapping[str, np.ndarray]) -> np.ndarray:
        """MineRL's own reward (0 in every BASALT task)."""
        return np.asarray(factors["env_reward"], np.float64)

    def _render(self, state: np.ndarray, width: int, height: int) -> np.ndarray:
        frame = self.recorder.frame(int(state[0]), int(state[1]))
        return resize_frame(frame, height, width)

    def _snapshot(self) -> dict[str, Any]:
        return {"seed": self._seed, "episode": self._episode, "t": self._t}

    def _restore(self, snap: dict[str, Any]) -> None:
        raise NotImplementedError(
            "a running Minecraft world cannot be saved, so a MineRL episode cannot be continued "
            "from a checkpoint; start new episodes instead (the recordings stay on disk)"
        )

    def close(self) -> None:
        """Finish a running recording and close Minecraft."""
        if self.recorder.recording:
            self.recorder.finish()
        self.core.close()


def register_suite(register: Any) -> None:
    """Registry hook: one entry per :data:`TASKS` task."""
    for key, (gym_id, _) in TASKS.items():

        def factory(seed: int | None = None, _key: str = key, **kw: Any) -> PbrlEnv:
            return MineRLEnv(_key, seed=seed, **kw)

        register(key, factory, suite="minerl", description=f"MineRL BASALT {gym_id} (no reward)")
