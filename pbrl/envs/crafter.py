"""Crafter (PyPI ``crafter``): an open-world stand-in for the MineRL BASALT tasks.

Crafter is a 2-D Minecraft: gather, craft, survive, 22 achievements, a day/night cycle. It is
pure Python/NumPy and installs anywhere, so BASALT-style runs ("no reward, only a person's
judgement") work end to end today through the same wrapper shape as :mod:`pbrl.envs.minerl`:
frames for people, a flat action space, episode recordings.

Registered names:

=================== ============================================================================
name                reward
=================== ============================================================================
crafter             Crafter's own reward: ``+1`` the first time each achievement is unlocked in
                    an episode, ``+-0.1`` per point of health gained or lost
crafter_noreward    none (BASALT-style): the env reward and the true reward are 0; only a
                    teacher's judgement (a person, :func:`pbrl.teachers.make_teacher("human")`)
                    says what is good. The factors below are still reported.
=================== ============================================================================

Reward factors (``info["reward_factors"]``): ``unlock_<achievement>`` for each of the 22
achievements of :data:`ACHIEVEMENTS` (1 when it is unlocked for the first time this episode on
this step, else 0), and ``health`` = (health after - health before) / 10. Crafter's reward is

    ``reward_from_factors = health + max_a unlock_a``

(Crafter adds 1 once however many achievements unlock on the same step), reproduced exactly;
for ``crafter_noreward`` it is 0.

Actions: ``Discrete(17)``, Crafter's own (:data:`ACTIONS`: noop, 4 moves, do, sleep, 4 place,
6 make), with ``actions="discrete"`` (default); ``actions="box"`` gives ``Box(-1, 1, (17,))``
scores instead, the action taken being their arg-max (first on ties), the flat ``box`` kind of
the MineRL wrapper's actions, for agents that need continuous actions (SAC). Episodes end when
the player dies (``terminated``) or after ``length`` steps (Crafter's default 10000;
``truncated``).

Observation (``obs="state"``): a float32 vector of what the picture shows, the 9 x 7 cells of
the local view (x-major) one-hot over 13 material channels (0: outside the world) and 8 object
classes (player, cow, zombie, skeleton, arrow, plant, ripe plant, fence), then the 16
inventory counts / 9, facing (one-hot left, right, up, down), sleeping, daylight: 1345
values. ``obs="pixels"`` gives Crafter's picture at any size (64 x 64 is Crafter's own), drawn
from the sim state.

Sim state (``info["sim_state"]``, 150 float64, layout :data:`STATE_LAYOUT`): the step counter,
the episode's world seed, daylight, sleeping, player position and facing, the material id and
the object texture id of each of the 9 x 7 visible cells (-1: outside the world), and the 16
inventory counts. That is exactly what Crafter's renderer reads, so :meth:`render_state`
redraws the live frame pixel for pixel at any size. The whole 64 x 64 world (4096 materials
plus every object's state and the RNG) would be ~40x larger per step and shows nothing more.

Night noise: Crafter's renderer draws its night-time grain from the world's RNG, so frames
would depend on RNG state (2.5 KB) and rendering would change the game. Here the grain comes
from a stream keyed by (world seed, step), stored in two floats; the world's RNG still
advances exactly as Crafter's 64 x 64 render advances it, so for a given seed and actions the
game (world, rewards, deaths) is Crafter's own step for step, whatever is rendered; frames are
Crafter's own pixel for pixel by day and differ only in the grain pattern at night. One change
to the game: Crafter picks which creature of a crowded chunk to despawn by indexing a ``set``
of objects, ordered by memory address, so Crafter itself does not repeat a seeded run; here
the chunk's objects come in creation order, which makes seeding and checkpoints exact.

``get_env_state``/``set_env_state`` pickle the whole world (materials, objects, RNG) for
exact continuation. ``reset(seed=s)`` re-seeds: the world of episode ``k`` after it is
Crafter's ``Env(seed=s)`` world of episode ``k``.

World generation is Crafter's (OpenSimplex noise per cell): ~2 s a reset in pure Python,
~0.2 s with ``numba`` installed (opensimplex compiles itself with it), so install both.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from PIL import Image, ImageEnhance

from pbrl.envs.base import PbrlEnv

ACTIONS: tuple[str, ...] = (
    "noop",
    "move_left",
    "move_right",
    "move_up",
    "move_down",
    "do",
    "sleep",
    "place_stone",
    "place_table",
    "place_furnace",
    "place_plant",
    "make_wood_pickaxe",
    "make_stone_pickaxe",
    "make_iron_pickaxe",
    "make_wood_sword",
    "make_stone_sword",
    "make_iron_sword",
)
"""Crafter's actions (``crafter/data.yaml``), the meaning of each ``Discrete(17)`` index."""

ACHIEVEMENTS: tuple[str, ...] = (
    "collect_coal",
    "collect_diamond",
    "collect_drink",
    "collect_iron",
    "collect_sapling",
    "collect_stone",
    "collect_wood",
    "defeat_skeleton",
    "defeat_zombie",
    "eat_cow",
    "eat_plant",
    "make_iron_pickaxe",
    "make_iron_sword",
    "make_stone_pickaxe",
    "make_stone_sword",
    "make_wood_pickaxe",
    "make_wood_sword",
    "place_furnace",
    "place_plant",
    "place_stone",
    "place_table",
    "wake_up",
)
"""Crafter's 22 achievements; each has a factor ``unlock_<name>``."""

MATERIALS: tuple[str, ...] = (
    "water",
    "grass",
    "stone",
    "path",
    "sand",
    "tree",
    "lava",
    "coal",
    "iron",
    "diamond",
    "table",
    "furnace",
)
"""Crafter's materials; material id ``i + 1`` in the world map (0: unset)."""

ITEMS: tuple[str, ...] = (
    "health",
    "food",
    "drink",
    "energy",
    "sapling",
    "wood",
    "stone",
    "coal",
    "iron",
    "diamond",
    "wood_pickaxe",
    "stone_pickaxe",
    "iron_pickaxe",
    "wood_sword",
    "stone_sword",
    "iron_sword",
)
"""Inventory entries in Crafter's order (the order of the inventory bar)."""

OBJECT_TEXTURES: tuple[str, ...] = (
    "player-left",
    "player-right",
    "player-up",
    "player-down",
    "player-sleep",
    "cow",
    "zombie",
    "skeleton",
    "arrow-left",
    "arrow-right",
    "arrow-up",
    "arrow-down",
    "plant",
    "plant-ripe",
    "fence",
)
"""Object textures; texture id ``i + 1`` in the sim state (0: no object)."""
_TEXTURE_ID = {name: i + 1 for i, name in enumerate(OBJECT_TEXTURES)}
# Object class of each texture id for the symbolic observation (-1: none).
_OBJ_CLASS = np.array([-1, 0, 0, 0, 0, 0, 1, 2, 3, 4, 4, 4, 4, 5, 6, 7])
N_OBJ_CLASSES = 8
N_MAT_CHANNELS = len(MATERIALS) + 1

VIEW = (9, 9)
"""Crafter's view in cells (width, height): a 9 x 7 local view above a 9 x 2 inventory bar."""
GRID = (9, 7)
_ITEM_ROWS = 2
_OFFSET = (GRID[0] // 2, GRID[1] // 2)
N_CELLS = GRID[0] * GRID[1]
NATIVE_SIZE = (64, 64)
"""Crafter's own frame size; its render's RNG use at this size is what the game replays."""

STATE_LAYOUT: dict[str, slice] = {
    "step": slice(0, 1),
    "world_seed": slice(1, 2),
    "daylight": slice(2, 3),
    "sleeping": slice(3, 4),
    "pos": slice(4, 6),
    "facing": slice(6, 8),
    "materials": slice(8, 8 + N_CELLS),
    "objects": slice(8 + N_CELLS, 8 + 2 * N_CELLS),
    "inventory": slice(8 + 2 * N_CELLS, 8 + 2 * N_CELLS + len(ITEMS)),
}
"""Named parts of the sim state; cell arrays are x-major over the 9 x 7 local view."""
STATE_DIM = 8 + 2 * N_CELLS + len(ITEMS)
OBS_DIM = N_CELLS * (N_MAT_CHANNELS + N_OBJ_CLASSES) + len(ITEMS) + 4 + 2
_FACINGS = ((-1, 0), (1, 0), (0, -1), (0, 1))

ACTION_KINDS = ("discrete", "box")
FACTOR_NAMES: tuple[str, ...] = tuple(f"unlock_{a}" for a in ACHIEVEMENTS) + ("health",)
_SEED_MOD = 2**31 - 1


def _import_crafter() -> Any:
    """The ``crafter`` package, or MissingExtraError naming the extra."""
    try:
        import crafter
    except ImportError:
        from pbrl.envs import MissingExtraError

        raise MissingExtraError("Crafter", "crafter", "crafter") from None
    return crafter


@functools.cache
def _game_class() -> type:
    """``crafter.Env`` that draws no frame in ``step``/``reset`` and repeats itself.

    Crafter's ``step`` ends by rendering a 64 x 64 frame, which at night draws the grain from
    the world RNG. The subclass draws the same numbers from that RNG (so the game stays
    Crafter's own) and skips the drawing: pbrl draws frames from the sim state only when asked.

    Crafter chooses which creature of a crowded chunk to despawn by indexing a ``set`` of
    objects, whose order follows memory addresses, so Crafter itself does not repeat a seeded
    run. The subclass hands ``_balance_chunk`` the chunk's objects in creation order instead:
    the only change to the game, and what makes seeding and checkpoints exact.
    """
    crafter = _import_crafter()

    class _Game(crafter.Env):
        def _balance_chunk(self, chunk: Any, objs: Any) -> None:
            index = self._world._obj_map
            super()._balance_chunk(chunk, sorted(objs, key=lambda o: index[tuple(o.pos)]))

        def _obs(self) -> None:
            if self._world.daylight < 0.5:
                unit = np.asarray(self._size) // self._view
                shape = (GRID[0] * int(unit[0]), GRID[1] * int(unit[1]))
                self._world.random.uniform(32, 127, shape)
            return None

    return _Game


@functools.cache
def _textures() -> Any:
    """Crafter's texture atlas (one per process; it caches resized copies)."""
    crafter = _import_crafter()
    from crafter import constants, engine

    del crafter
    return engine.Textures(constants.root / "assets")


def night_noise(world_seed: int, step: int, shape: tuple[int, int]) -> np.ndarray:
    """``(*shape, 1)`` night grain of the frame at ``step``: uniform in [32, 127).

    Drawn from a generator keyed by ``(world_seed, step)``, so a frame is a function of the
    sim state alone (Crafter draws it from the world RNG).
    """
    rng = np.random.default_rng([int(world_seed), int(step)])
    return rng.uniform(32, 127, shape)[..., None]


@functools.lru_cache(16)
def _vignette(shape: tuple[int, ...], stddev: float) -> np.ndarray:
    # crafter.engine.LocalView._vignette, the same operations in the same order.
    xs, ys = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]))
    return 1 - np.exp(-0.5 * (xs**2 + ys**2) / (stddev**2)).T


def _tint(canvas: np.ndarray, color: tuple[int, int, int], amount: float) -> np.ndarray:
    return (1 - amount) * canvas + amount * np.array(color)


def _light(canvas: np.ndarray, daylight: float, noise: np.ndarray | None) -> np.ndarray:
    """Crafter's ``LocalView._light`` with the night grain given as ``noise``."""
    night: np.ndarray = canvas
    if daylight < 0.5:
        assert noise is not None
        mask = 2 * (0.5 - daylight) * _vignette(canvas.shape, 0.5)[..., None]
        night = (1 - mask) * night + mask * noise
    night = np.array(ImageEnhance.Color(Image.fromarray(night.astype(np.uint8))).enhance(0.4))
    night = _tint(night, (0, 16, 64), 0.5)
    return daylight * canvas + (1 - daylight) * night


def _sleep(canvas: np.ndarray) -> np.ndarray:
    canvas = np.array(ImageEnhance.Color(Image.fromarray(canvas.astype(np.uint8))).enhance(0.0))
    return _tint(canvas, (0, 0, 16), 0.5)


class _Painter:
    """Draws Crafter frames from sim states; caches tiles and inventory bars per cell size."""

    def __init__(self) -> None:
        from crafter import engine

        self._engine = engine
        self._tex = _textures()
        self._tiles: dict[tuple[int, int], np.ndarray] = {}
        self._bars: dict[tuple[Any, ...], np.ndarray] = {}

    def tiles(self, unit: tuple[int, int]) -> np.ndarray:
        """``(14, ux, uy, 3)`` uint8: outside (grey 127), unset ('unknown'), the 12 materials."""
        if unit not in self._tiles:
            names: list[str | None] = [None, *MATERIALS]
            tiles = np.full((len(names) + 1, *unit, 3), 127, np.uint8)
            for i, name in enumerate(names):
                tiles[i + 1] = self._tex.get(name, unit)[..., :3]
            self._tiles[unit] = tiles
        return self._tiles[unit]

    def bar(self, inventory: tuple[int, ...], unit: tuple[int, int]) -> np.ndarray:
        """Crafter's ``ItemView``: the ``(9 ux, 2 uy, 3)`` uint8 inventory bar."""
        key = (unit, inventory)
        cached = self._bars.get(key)
        if cached is not None:
            return cached
        u = np.array(unit)
        canvas = np.zeros((VIEW[0] * unit[0], _ITEM_ROWS * unit[1], 3), np.uint8)
        draw = self._engine._draw_alpha
        for index, (item, amount) in enumerate(zip(ITEMS, inventory, strict=True)):
            if amount < 1:
                continue
            cell = np.array((index % VIEW[0], index // VIEW[0]))
            pos = (cell * u + 0.1 * u).astype(np.int32)
            draw(canvas, pos, self._tex.get(item, 0.8 * u))
            pos = (cell * u + 0.4 * u).astype(np.int32)
            text = str(amount) if amount in range(10) else "unknown"
            draw(canvas, pos, self._tex.get(text, 0.6 * u))
        if len(self._bars) > 1024:
            self._bars.clear()
        self._bars[key] = canvas
        return canvas

    def __call__(self, state: np.ndarray, width: int, height: int) -> np.ndarray:
        """``(height, width, 3)`` uint8 frame of ``state`` (Crafter's ``Env.render(size)``)."""
        if width < VIEW[0] or height < VIEW[1]:
            raise ValueError(f"Crafter frames need width, height >= {VIEW}, got {width}x{height}")
        ux, uy = width // VIEW[0], height // VIEW[1]
        unit = (ux, uy)
        mats = state[STATE_LAYOUT["materials"]].astype(np.intp).reshape(GRID)
        objs = state[STATE_LAYOUT["objects"]].astype(np.intp).reshape(GRID)
        # Local view: one texture per cell (materials), objects alpha-blended on top.
        cells = self.tiles(unit)[mats + 1]  # (9, 7, ux, uy, 3)
        local = np.ascontiguousarray(cells.transpose(0, 2, 1, 3, 4)).reshape(
            GRID[0] * ux, GRID[1] * uy, 3
        )
        u = np.array(unit)
        for x, y in zip(*np.nonzero(objs), strict=True):
            texture = self._tex.get(OBJECT_TEXTURES[objs[x, y] - 1], unit)
            self._engine._draw_alpha(local, np.array([x, y]) * u, texture)
        daylight = float(state[STATE_LAYOUT["daylight"]][0])
        noise = None
        if daylight < 0.5:
            seed = int(state[STATE_LAYOUT["world_seed"]][0])
            step = int(state[STATE_LAYOUT["step"]][0])
            noise = night_noise(seed, step, local.shape[:2])
        view = _light(local, daylight, noise)
        if state[STATE_LAYOUT["sleeping"]][0]:
            view = _sleep(view)
        inv = tuple(int(v) for v in state[STATE_LAYOUT["inventory"]])
        view = np.concatenate([view, self.bar(inv, unit)], 1)
        canvas = np.zeros((width, height, 3), np.uint8)
        bx, by = (width - ux * VIEW[0]) // 2, (height - uy * VIEW[1]) // 2
        canvas[bx : bx + view.shape[0], by : by + view.shape[1]] = view
        return canvas.transpose(1, 0, 2)


@functools.cache
def _painter() -> _Painter:
    return _Painter()


def render_state(state: np.ndarray, width: int = 64, height: int = 64) -> np.ndarray:
    """``(height, width, 3)`` uint8 Crafter frame of one sim state (no env needed)."""
    state = np.asarray(state, np.float64)
    if state.shape != (STATE_DIM,):
        raise ValueError(f"a Crafter sim_state has shape ({STATE_DIM},), got {state.shape}")
    return _painter()(state, int(width), int(height))


_MAT_ONEHOT = np.eye(N_MAT_CHANNELS, dtype=np.float32)
_OBJ_ONEHOT = np.vstack(
    [np.zeros((1, N_OBJ_CLASSES), np.float32), np.eye(N_OBJ_CLASSES, dtype=np.float32)]
)[_OBJ_CLASS + 1]


def symbolic_obs(state: np.ndarray) -> np.ndarray:
    """``(1345,)`` float32 observation of a sim state (see the module docstring)."""
    mats = np.maximum(state[STATE_LAYOUT["materials"]].astype(np.intp), 0)
    objs = state[STATE_LAYOUT["objects"]].astype(np.intp)
    facing = np.zeros(4, np.float32)
    facing[_FACINGS.index(tuple(int(v) for v in state[STATE_LAYOUT["facing"]]))] = 1.0
    return np.concatenate(
        [
            _MAT_ONEHOT[mats].ravel(),
            _OBJ_ONEHOT[objs].ravel(),
            state[STATE_LAYOUT["inventory"]].astype(np.float32) / 9.0,
            facing,
            state[STATE_LAYOUT["sleeping"]].astype(np.float32),
            state[STATE_LAYOUT["daylight"]].astype(np.float32),
        ]
    )


def game_state(game: Any, world_seed: int) -> np.ndarray:
    """The ``(150,)`` sim state of a live ``crafter.Env`` (see :data:`STATE_LAYOUT`)."""
    world, player = game._world, game._player
    out = np.empty(STATE_DIM, np.float64)
    cx, cy = int(player.pos[0]), int(player.pos[1])
    out[0], out[1] = game._step, world_seed
    out[2], out[3] = world.daylight, float(player.sleeping)
    out[4:6] = cx, cy
    out[6:8] = player.facing
    x0, y0 = cx - _OFFSET[0], cy - _OFFSET[1]
    ax, ay = world.area
    xa, xb, ya, yb = max(x0, 0), min(x0 + GRID[0], ax), max(y0, 0), min(y0 + GRID[1], ay)
    mats = np.full(GRID, -1.0)
    objs = np.zeros(GRID)
    if xa < xb and ya < yb:
        mats[xa - x0 : xb - x0, ya - y0 : yb - y0] = world._mat_map[xa:xb, ya:yb]
        idx = world._obj_map[xa:xb, ya:yb]
        for i, j in zip(*np.nonzero(idx), strict=True):
            texture = world._objects[idx[i, j]].texture
            if texture not in _TEXTURE_ID:
                raise KeyError(f"unknown Crafter object texture {texture!r}")
            objs[i + xa - x0, j + ya - y0] = _TEXTURE_ID[texture]
    out[STATE_LAYOUT["materials"]] = mats.ravel()
    out[STATE_LAYOUT["objects"]] = objs.ravel()
    out[STATE_LAYOUT["inventory"]] = list(player.inventory.values())
    return out


class _CrafterCore(gym.Env):
    """Crafter as a gymnasium env with the symbolic observation (no pbrl extras)."""

    metadata = {"render_modes": []}

    def __init__(
        self, reward: bool, seed: int | None, area: Sequence[int], length: int | None
    ) -> None:
        game_cls = _game_class()
        if seed is None:
            seed = int(np.random.default_rng().integers(_SEED_MOD))
        self.game = game_cls(area=tuple(int(a) for a in area), length=length, seed=int(seed))
        self.reward = bool(reward)
        self.action_space = gym.spaces.Discrete(len(ACTIONS))
        self.observation_space = gym.spaces.Box(0.0, 1.0, (OBS_DIM,), np.float32)
        self.max_episode_steps = int(length) if length else 2**62
        self.world_seed = 0
        self.state: np.ndarray | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # type: ignore[override]
        """New world; ``seed`` restarts Crafter's episode sequence of ``Env(seed=seed)``."""
        g = self.game
        if seed is not None:
            g._seed, g._episode = int(seed), 0
        g.reset()
        # crafter.Env.reset seeds the world with this expression (Python's int-tuple hash is
        # deterministic); it keys the night grain.
        self.world_seed = hash((g._seed, g._episode)) % _SEED_MOD
        self.state = game_state(g, self.world_seed)
        return symbolic_obs(self.state), {}

    def step(self, action):  # type: ignore[no-untyped-def,override]
        """One Crafter step; ``info["crafter_factors"]`` holds this step's reward terms."""
        g = self.game
        unlocked, last_health = set(g._unlocked), g._last_health
        _, _, done, raw = g.step(int(action))
        new = g._unlocked - unlocked
        factors = {f"unlock_{a}": float(a in new) for a in ACHIEVEMENTS}
        factors["health"] = (g._player.health - last_health) / 10
        reward = float(raw["reward"]) if self.reward else 0.0
        dead = g._player.health <= 0
        self.state = game_state(g, self.world_seed)
        info = {
            "crafter_factors": factors,
            "inventory": raw["inventory"],
            "achievements": raw["achievements"],
        }
        return symbolic_obs(self.state), reward, bool(dead), bool(done and not dead), info


class CrafterEnv(PbrlEnv):
    """A Crafter world with reward factors, a compact sim state and exact re-rendering.

    Args:
        reward: Crafter's reward (``crafter``) or none (``crafter_noreward``).
        seed: seeds the first world (``reset(seed=...)`` re-seeds).
        area: world size in cells (Crafter's default 64 x 64).
        length: episode length in steps (Crafter's default 10000).
        record_dir: if given, every finished episode is written there as one compressed file
            of frames and actions (:class:`pbrl.envs.minerl.EpisodeRecorder`), the format the
            MineRL wrapper records for people.
        record_size: ``(height, width)`` of recorded frames.
        actions: ``"discrete"`` (``Discrete(17)``) or ``"box"`` (17 scores in ``[-1, 1]``,
            arg-max taken; see the module docstring).
    """

    def __init__(
        self,
        reward: bool = True,
        seed: int | None = None,
        area: Sequence[int] = (64, 64),
        length: int | None = 10000,
        record_dir: str | None = None,
        record_size: Sequence[int] = NATIVE_SIZE,
        actions: str = "discrete",
    ):
        if actions not in ACTION_KINDS:
            raise ValueError(f"actions must be one of {ACTION_KINDS}, got {actions!r}")
        core = _CrafterCore(reward, seed, area, length)
        super().__init__(core, core.max_episode_steps)
        self.actions = actions
        if actions == "box":
            self.action_space = gym.spaces.Box(-1.0, 1.0, (len(ACTIONS),), np.float32)
        self.core = core
        self.reward_enabled = bool(reward)
        self.factor_names = FACTOR_NAMES
        self._painter = _painter()
        self.recorder = None
        self.record_size = (int(record_size[0]), int(record_size[1]))
        if record_dir is not None:
            from pbrl.envs.minerl import EpisodeRecorder

            self.recorder = EpisodeRecorder(record_dir)

    @property
    def state_dim(self) -> int:
        """Size of ``info["sim_state"]`` (:data:`STATE_DIM`)."""
        return STATE_DIM

    def _get_sim_state(self) -> np.ndarray:
        if self.core.state is None:
            raise RuntimeError("the Crafter env has no world yet; call reset() first")
        return self.core.state

    def _factors(self, info: dict[str, Any]) -> dict[str, float]:
        return info.pop("crafter_factors")

    def reward_from_factors(self, factors: Mapping[str, np.ndarray]) -> np.ndarray:
        """``health + max_a unlock_a`` (``crafter``) or zeros (``crafter_noreward``)."""
        health = np.asarray(factors["health"], np.float64)
        if not self.reward_enabled:
            return np.zeros_like(health)
        unlock = np.max([np.asarray(factors[f"unlock_{a}"]) for a in ACHIEVEMENTS], axis=0)
        return health + unlock

    def _render(self, state: np.ndarray, width: int, height: int) -> np.ndarray:
        return self._painter(state, width, height)

    def render_crafter(self, width: int = 64, height: int = 64) -> np.ndarray:
        """Crafter's own ``Env.render`` of the live world, with pbrl's keyed night grain.

        An independent reference for :meth:`render_state` (Crafter draws cell by cell from
        the world itself); it leaves the game untouched.
        """
        g, lv = self.core.game, self.core.game._local_view
        key = (self.core.world_seed, g._step)

        def noise(canvas: np.ndarray, amount: float, stddev: float) -> np.ndarray:
            mask = amount * lv._vignette(canvas.shape, stddev)[..., None]
            return (1 - mask) * canvas + mask * night_noise(*key, canvas.shape[:2])

        lv._noise = noise  # shadows LocalView._noise for this call only
        try:
            return g.render((int(width), int(height)))
        finally:
            del lv._noise

    # --- recording --------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):  # type: ignore[override]
        """Reset; with ``record_dir`` a finished recording is written and a new one begun."""
        obs, info = super().reset(seed=seed, options=options)
        if self.recorder is not None:
            self.recorder.start(
                meta={"env": "crafter", "world_seed": self.core.world_seed, "reward": self.reward}
            )
            self.recorder.add_frame(self.render_live(*self.record_size[::-1]))
        return obs, info

    def action_index(self, action: Any) -> int:
        """Crafter's action index of an action of this env's action space."""
        if self.actions == "box":
            scores = np.asarray(action, np.float64).reshape(-1)
            if scores.shape != (len(ACTIONS),):
                raise ValueError(f"a box action has {len(ACTIONS)} scores, got {scores.shape}")
            return int(np.argmax(scores))
        return int(action)

    def step(self, action):  # type: ignore[no-untyped-def,override]
        """Step (see :meth:`PbrlEnv.step`); records the frame and action when recording."""
        index = self.action_index(action)
        out = super().step(index)
        if self.recorder is not None and self.recorder.recording:
            self.recorder.add_action(np.asarray([index], np.int64))
            self.recorder.add_frame(self.render_live(*self.record_size[::-1]))
            if out[2] or out[3]:
                self.recorder.finish()
        return out

    @property
    def reward(self) -> bool:
        """Whether the env pays Crafter's reward."""
        return self.reward_enabled

    # --- checkpoints ------------------------------------------------------------------
    def _snapshot(self) -> dict[str, Any]:
        g = self.core.game
        live = (g._world, g._player, g._step, g._episode, g._seed, g._last_health, g._unlocked)
        return {
            "game": pickle.dumps(live, protocol=pickle.HIGHEST_PROTOCOL),
            "world_seed": self.core.world_seed,
            "state": None if self.core.state is None else self.core.state.copy(),
        }

    def _restore(self, snap: dict[str, Any]) -> None:
        g = self.core.game
        world, player, step, episode, seed, last_health, unlocked = pickle.loads(snap["game"])
        if tuple(world.area) != tuple(g._world.area):
            raise ValueError(f"snapshot of a {world.area} world, this env has {g._world.area}")
        # The views hold the world they draw; point them at the restored one.
        g._world = g._local_view._world = g._sem_view._world = world
        g._player, g._step, g._episode, g._seed = player, step, episode, seed
        g._last_health, g._unlocked = last_health, unlocked
        self.core.world_seed = int(snap["world_seed"])
        self.core.state = None if snap["state"] is None else np.array(snap["state"])

    def close(self) -> None:
        """Write an unfinished recording, then close."""
        if self.recorder is not None and self.recorder.recording:
            self.recorder.finish()
        super().close()


def register_suite(register: Any) -> None:
    """Registry hook: ``crafter`` and ``crafter_noreward``."""

    def with_reward(seed: int | None = None, **kw: Any) -> PbrlEnv:
        return CrafterEnv(reward=True, seed=seed, **kw)

    def without_reward(seed: int | None = None, **kw: Any) -> PbrlEnv:
        return CrafterEnv(reward=False, seed=seed, **kw)

    register("crafter", with_reward, suite="crafter", description="Crafter, its own reward")
    register(
        "crafter_noreward",
        without_reward,
        suite="crafter",
        description="Crafter without reward (BASALT-style: only human judgement)",
    )
