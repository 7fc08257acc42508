"""Clips for the labelling page: frames re-rendered from stored sim state, H.264 MP4, on disk.

Segments keep simulator states, never pixels (DESIGN.md). A clip is made on demand: the
segment's ``sim_state`` rows are rendered by the environment's own
:meth:`~pbrl.envs.base.PbrlEnv.render_state` and encoded with PyAV (libx264, yuv420p,
``+faststart`` so a browser can start before the last byte, a key frame every
:attr:`ClipSpec.gop` frames so scrubbing is snappy). Encoding runs frame by frame while
rendering, so nothing but one frame is held in memory.

PyAV rather than imageio-ffmpeg: it encodes in-process (no pipe to a child ffmpeg, errors are
Python exceptions), its wheels ship libx264, and it installs offline from PyPI.

Rendering happens on background worker threads (:class:`ClipRenderer`), each owning its own
environments: an OpenGL context belongs to the thread that made it. Work is a priority queue:
a clip somebody waits for first, then each labeller's current query, then the queries they
will see next, so the next pair is usually ready before it is shown.

A long segment is shown as a time-lapse: at most :attr:`ClipSpec.max_frames` frames, evenly
strided, played at ``fps`` frames per second (at least ``min_fps`` so that a clip never
stutters); :class:`ClipPlan` says how much faster than real time that is.

Files are named by a hash of (query id, member, clip settings) inside the cache directory, so
no request can name a path: a query id is looked up, never joined onto a path.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

PRIORITY_WAITING = 0
"""Somebody's browser is waiting for this clip."""
PRIORITY_CURRENT = 1
"""A labeller's current query."""
PRIORITY_AHEAD = 2
"""Queries a labeller will see next (plus their position in the line)."""
PRIORITY_BACKGROUND = 10
"""New queries nobody holds yet."""

# (env name, kwargs) -> steps per second; a property of the env, so shared by all renderers.
_FPS: dict[tuple[str, str], float] = {}

_RETRY_FAILED_AFTER = 30.0  # s; a failed clip is tried again after this (e.g. a GL hiccup)


class ClipUnavailable(RuntimeError):
    """The clip cannot be made (no sim state stored, unknown env, render failure)."""


class ClipTimeout(TimeoutError):
    """The clip is still being rendered; ask again."""


@dataclass(frozen=True)
class ClipSpec:
    """How clips look.

    Attributes:
        width: frame width in pixels (even: H.264 yuv420p needs even sizes).
        height: frame height in pixels (even).
        max_frames: at most this many frames per clip; longer segments are strided.
        max_fps: at most this many frames per second of playback (high-rate simulators are
            strided down to it at real time).
        min_fps: at least this many frames per second: a strided clip plays faster than real
            time rather than stutter.
        quality: ``"fast"`` renders without shadows, reflections and multisampling (about
            15x faster in software OpenGL, and the motion is what a labeller judges);
            ``"full"`` keeps the environment's own look.
        crf: x264 constant rate factor (lower is better quality, larger files).
        gop: frames between key frames (small values make scrubbing and looping snappy).
    """

    width: int = 256
    height: int = 256
    max_frames: int = 100
    max_fps: int = 30
    min_fps: int = 10
    quality: str = "fast"
    crf: int = 23
    gop: int = 10

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            v = getattr(self, name)
            if not (16 <= v <= 2048) or v % 2:
                raise ValueError(f"clip {name} must be an even number in [16, 2048], got {v}")
        if self.max_frames < 2:
            raise ValueError(f"max_frames must be >= 2, got {self.max_frames}")
        if not (1 <= self.min_fps <= self.max_fps <= 240):
            raise ValueError(
                f"need 1 <= min_fps <= max_fps <= 240, got {self.min_fps}, {self.max_fps}"
            )
        if self.quality not in ("fast", "full"):
            raise ValueError(f"quality must be 'fast' or 'full', got {self.quality!r}")
        if not (0 <= self.crf <= 51):
            raise ValueError(f"crf must lie in [0, 51], got {self.crf}")
        if self.gop < 1:
            raise ValueError(f"gop must be >= 1, got {self.gop}")

    def key(self) -> str:
        """A string that changes whenever any setting that changes the file changes."""
        return "|".join(f"{k}={v}" for k, v in sorted(asdict(self).items()))


@dataclass(frozen=True)
class ClipPlan:
    """Which steps of a segment a clip shows, and how fast it plays.

    Attributes:
        horizon: segment length H (steps).
        stride: one frame every ``stride`` steps.
        frames: number of frames, ``ceil(H / stride)``.
        fps: playback frames per second of the encoded file.
        env_fps: simulator steps per second of simulated time (1 / dt).
        speed: playback speed relative to real time (1.0 = real time).
    """

    horizon: int
    stride: int
    frames: int
    fps: int
    env_fps: float
    speed: float

    def steps(self) -> np.ndarray:
        """``(frames,)`` step indices shown, ``0, stride, 2 * stride, ...``."""
        return np.arange(0, self.horizon, self.stride)


def plan_clip(horizon: int, env_fps: float, spec: ClipSpec) -> ClipPlan:
    """The frames and frame rate of a clip of an ``horizon``-step segment."""
    if horizon < 1:
        raise ValueError(f"a clip needs at least one step, got horizon={horizon}")
    env_fps = float(env_fps) if env_fps and math.isfinite(env_fps) and env_fps > 0 else 30.0
    stride = max(1, math.ceil(horizon / spec.max_frames), math.floor(env_fps / spec.max_fps))
    frames = math.ceil(horizon / stride)
    fps = int(min(spec.max_fps, max(spec.min_fps, round(env_fps / stride))))
    return ClipPlan(horizon, stride, frames, fps, env_fps, fps * stride / env_fps)


def make_render_env(env_name: str, env_kwargs: dict[str, Any], quality: str) -> Any:
    """The env that renders a clip, built with ``render_quality=quality`` where it applies.

    The suites that take ``render_quality`` (MuJoCo, dm_control, Meta-World) default to
    ``"fast"``, so the clip's quality is passed for ``"full"`` to take effect; suites without
    the option (they refuse it with a TypeError naming it) are built with ``env_kwargs`` alone.
    The clip's quality wins over a ``render_quality`` in ``env_kwargs``.
    """
    from pbrl import envs as pbrl_envs

    try:
        return pbrl_envs.make_env(env_name, **{**env_kwargs, "render_quality": quality})
    except TypeError as err:
        if "render_quality" not in str(err):
            raise
    rest = {k: v for k, v in env_kwargs.items() if k != "render_quality"}
    return pbrl_envs.make_env(env_name, **rest)


def env_fps_of(env: Any) -> float:
    """Simulated steps per second of ``env`` (1 / control timestep), 30 if unknown."""
    u = getattr(env, "unwrapped", env)
    dt = getattr(u, "dt", None)
    inner = getattr(u, "_env", None)  # dm_control's Environment behind pbrl's adapter
    if dt is None and inner is not None and hasattr(inner, "control_timestep"):
        dt = inner.control_timestep()
    if dt:
        return 1.0 / float(dt)
    fps = getattr(u, "metadata", {}).get("render_fps")
    return float(fps) if fps else 30.0


def _mj_model(env: Any) -> Any | None:
    """The MuJoCo model behind ``env`` (gymnasium or dm_control), if any."""
    u = getattr(env, "unwrapped", env)
    model = getattr(u, "model", None)
    if model is not None and hasattr(model, "light_castshadow"):
        return model
    physics = getattr(u, "physics", None)
    model = getattr(physics, "model", None)
    if model is not None and hasattr(model, "light_castshadow"):
        return model
    return None


def fast_visuals(env: Any) -> bool:
    """Turn off shadows, reflections and multisampling on ``env``'s own MuJoCo model.

    Only for a private render copy of an environment: it changes how the model draws, not
    how it moves. Returns whether the env had a MuJoCo model to change.
    """
    model = _mj_model(env)
    if model is None:
        return False
    model.vis.quality.offsamples = 0
    model.light_castshadow[:] = 0
    model.mat_reflectance[:] = 0
    return True


def encode_mp4(frames: Iterable[np.ndarray], path: str | Path, fps: int, spec: ClipSpec) -> int:
    """Encode ``(H, W, 3)`` uint8 frames as H.264 MP4 at ``path``; returns the frame count."""
    import av

    n = 0
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
        stream = out.add_stream("libx264", rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, "yuv420p"
        stream.options = {"preset": "superfast", "crf": str(spec.crf), "g": str(spec.gop)}
        for frame in frames:
            if frame.shape != (spec.height, spec.width, 3):
                raise ValueError(f"frame shape {frame.shape} != ({spec.height}, {spec.width}, 3)")
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            for packet in stream.encode(vf):
                out.mux(packet)
            n += 1
        for packet in stream.encode():
            out.mux(packet)
    return n


@dataclass
class _Job:
    key: str
    query_id: str
    member: int
    path: Path
    state: str = "pending"  # pending | running | done | failed
    error: str = ""
    failed_at: float = 0.0
    priority: int = PRIORITY_BACKGROUND
    done: threading.Event = field(default_factory=threading.Event)


SegmentLoader = Callable[[str, int], tuple[np.ndarray | None, str]]
"""``(query_id, member) -> (sim_state (H, D_s) or None, env_name)``."""


class ClipRenderer:
    """Renders, encodes and caches clips on background threads.

    Args:
        cache_dir: where the MP4 files go (created).
        load_segment: returns one stored segment's ``sim_state`` and env name.
        spec: how clips look.
        env_kwargs: passed to :func:`pbrl.envs.make_env` for the render environments (the
            render env must build the same model as the one that recorded the states).
        workers: render threads (each holds its own environments and GL contexts).
        max_cache_bytes: oldest clips are deleted beyond this size.
    """

    def __init__(
        self,
        cache_dir: str | Path,
        load_segment: SegmentLoader,
        spec: ClipSpec | None = None,
        env_kwargs: dict[str, Any] | None = None,
        workers: int = 1,
        max_cache_bytes: int = 2 << 30,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.spec = spec or ClipSpec()
        self.env_kwargs = dict(env_kwargs or {})
        self.max_cache_bytes = int(max_cache_bytes)
        self._load_segment = load_segment
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._queue: queue.PriorityQueue[tuple[int, int, str]] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._fps: dict[str, float] = {}
        self._stop = threading.Event()
        self.stats: dict[str, float] = {"clips": 0, "render_s": 0.0, "encode_s": 0.0}
        self.last: dict[str, float] = {}
        for stale in self.cache_dir.glob(".*.tmp.mp4"):  # left by a killed process
            stale.unlink(missing_ok=True)
        self._cache_bytes = sum(p.stat().st_size for p in self.cache_dir.glob("*.mp4"))
        self._threads = [
            threading.Thread(target=self._work, name=f"pbrl-clip-{i}", daemon=True)
            for i in range(max(1, int(workers)))
        ]
        for t in self._threads:
            t.start()

    # --- naming ---------------------------------------------------------------------------
    def key(self, query_id: str, member: int) -> str:
        """The cache key (file stem) of one clip."""
        raw = f"{query_id}\x1f{int(member)}\x1f{self.spec.key()}".encode()
        return hashlib.sha256(raw).hexdigest()[:40]

    def path(self, query_id: str, member: int) -> Path:
        """Where the clip's file is (or will be) in the cache directory."""
        return self.cache_dir / f"{self.key(query_id, member)}.mp4"

    # --- planning -------------------------------------------------------------------------
    def env_fps(self, env_name: str) -> float:
        """Simulated steps per second of ``env_name`` (builds one env the first time)."""
        key = (env_name, repr(sorted(self.env_kwargs.items())))
        with self._lock:
            if env_name in self._fps:
                return self._fps[env_name]
            if key in _FPS:
                self._fps[env_name] = _FPS[key]
                return _FPS[key]
        from pbrl import envs as pbrl_envs

        try:
            env = pbrl_envs.make_env(env_name, **self.env_kwargs)
        except Exception as err:  # unknown env, missing extra: say so to the page
            raise ClipUnavailable(f"cannot build environment {env_name!r}: {err}") from err
        try:
            fps = env_fps_of(env)
        finally:
            env.close()
        with self._lock:
            self._fps[env_name] = _FPS[key] = fps
        return fps

    def plan(self, env_name: str, horizon: int) -> ClipPlan:
        """The :class:`ClipPlan` of an ``horizon``-step segment of ``env_name``."""
        return plan_clip(horizon, self.env_fps(env_name), self.spec)

    # --- requests -------------------------------------------------------------------------
    def ready(self, query_id: str, member: int) -> bool:
        """Whether the clip's file exists."""
        return self.path(query_id, member).exists()

    def request(self, query_id: str, member: int, priority: int = PRIORITY_BACKGROUND) -> _Job:
        """Make sure the clip is (being) rendered; returns its job."""
        key = self.key(query_id, member)
        path = self.cache_dir / f"{key}.mp4"
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job.state == "failed":
                if time.monotonic() - job.failed_at < _RETRY_FAILED_AFTER:
                    return job
                job = None
            if job is not None and job.state == "done" and not path.exists():
                job = None  # evicted from the cache since
            if job is None:
                job = _Job(key, query_id, int(member), path, priority=priority)
                self._jobs[key] = job
                if path.exists():
                    job.state = "done"
                    job.done.set()
                    return job
                self._queue.put((priority, next(self._seq), key))
            elif job.state == "pending" and priority < job.priority:
                job.priority = priority  # jump the line; the old entry is skipped later
                self._queue.put((priority, next(self._seq), key))
            return job

    def prefetch(self, items: Iterable[tuple[str, int]], priority: int = PRIORITY_AHEAD) -> None:
        """Queue ``(query_id, member)`` clips for rendering, in order."""
        for i, (qid, member) in enumerate(items):
            self.request(qid, member, priority + i)

    def get(self, query_id: str, member: int, timeout: float = 30.0) -> Path:
        """The clip's file, rendering it first if needed (blocks up to ``timeout`` s).

        Raises:
            ClipUnavailable: the clip cannot be made (the message says why).
            ClipTimeout: it is still rendering after ``timeout`` s.
        """
        job = self.request(query_id, member, PRIORITY_WAITING)
        if not job.done.wait(timeout):
            raise ClipTimeout(
                f"clip {member} of query {query_id} is still rendering; retry in a moment"
            )
        if job.state == "failed":
            raise ClipUnavailable(job.error)
        if not job.path.exists():  # evicted between rendering and now: render again
            return self.get(query_id, member, timeout)
        return job.path

    def warm(self, env_names: Iterable[str]) -> None:
        """Build the render environments (and GL contexts) of ``env_names`` ahead of time."""
        for name in env_names:
            for _ in self._threads:  # one each; a worker that is warm already skips it
                self._queue.put((PRIORITY_BACKGROUND + 100, next(self._seq), f"warm:{name}"))

    # --- the workers ------------------------------------------------------------------------
    def _work(self) -> None:
        envs: dict[str, Any] = {}
        try:
            while not self._stop.is_set():
                try:
                    _, _, key = self._queue.get(timeout=0.2)
                except queue.Empty:
                    continue
                if key == "stop:":
                    break
                if key.startswith("warm:"):
                    self._warm(envs, key[5:])
                    continue
                with self._lock:
                    job = self._jobs.get(key)
                    if job is None or job.state != "pending":
                        continue
                    job.state = "running"
                try:
                    self._render(job, envs)
                    job.state = "done"
                except ClipUnavailable as err:
                    job.error, job.state, job.failed_at = str(err), "failed", time.monotonic()
                except Exception as err:  # a broken env or encoder must not stop the worker
                    log.exception("rendering clip %s/%s failed", job.query_id, job.member)
                    job.error = f"rendering failed ({type(err).__name__}: {err})"
                    job.state, job.failed_at = "failed", time.monotonic()
                finally:
                    job.done.set()
        finally:
            # GL contexts must be freed on the thread that made them.
            for env in envs.values():
                with contextlib.suppress(Exception):
                    env.close()

    def _env(self, envs: dict[str, Any], env_name: str) -> Any:
        if env_name not in envs:
            from pbrl.envs.base import PbrlEnv, find_wrapper

            try:
                env = make_render_env(env_name, self.env_kwargs, self.spec.quality)
            except Exception as err:
                raise ClipUnavailable(f"cannot build environment {env_name!r}: {err}") from err
            base = find_wrapper(env, PbrlEnv)
            if base is None:
                env.close()
                raise ClipUnavailable(f"environment {env_name!r} cannot re-render stored states")
            if self.spec.quality == "fast":
                fast_visuals(base)
            envs[env_name] = base
            with self._lock:
                self._fps.setdefault(env_name, env_fps_of(base))
        return envs[env_name]

    def _warm(self, envs: dict[str, Any], env_name: str) -> None:
        if env_name in envs:
            return
        try:
            env = self._env(envs, env_name)
            env.render_live(self.spec.width, self.spec.height)
        except Exception as err:  # warming is an optimisation; a real request reports errors
            log.warning("could not warm the renderer for %s: %s", env_name, err)

    def _render(self, job: _Job, envs: dict[str, Any]) -> None:
        try:
            states, env_name = self._load_segment(job.query_id, job.member)
        except KeyError as err:
            raise ClipUnavailable(str(err)) from err
        if states is None:
            raise ClipUnavailable(
                f"query {job.query_id} has no simulator state stored, so its clips cannot be "
                "rendered (store segments with sim_state to label them by video)"
            )
        env = self._env(envs, env_name)
        plan = plan_clip(len(states), env_fps_of(env), self.spec)
        t_render = 0.0

        def frames() -> Iterable[np.ndarray]:
            nonlocal t_render
            for t in plan.steps():
                t0 = time.perf_counter()
                frame = env.render_state(states[t], self.spec.width, self.spec.height)
                t_render += time.perf_counter() - t0
                yield frame

        tmp = self.cache_dir / f".{job.key}.{threading.get_ident()}.tmp.mp4"
        t0 = time.perf_counter()
        try:
            encode_mp4(frames(), tmp, plan.fps, self.spec)
            os.replace(tmp, job.path)
        finally:
            tmp.unlink(missing_ok=True)
        total = time.perf_counter() - t0
        size = job.path.stat().st_size
        with self._lock:
            self.stats["clips"] += 1
            self.stats["render_s"] += t_render
            self.stats["encode_s"] += total - t_render
            self.last = {"render_s": t_render, "encode_s": total - t_render, "frames": plan.frames}
            self._cache_bytes += size
            over = self._cache_bytes > self.max_cache_bytes
        if over:
            self._evict(keep=job.path)

    def _evict(self, keep: Path) -> None:
        """Delete the oldest clips until the cache is below 90% of its limit."""
        files = sorted(self.cache_dir.glob("*.mp4"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        for p in files:
            if total <= 0.9 * self.max_cache_bytes:
                break
            if p == keep:
                continue
            size = p.stat().st_size
            p.unlink(missing_ok=True)
            total -= size
        with self._lock:
            self._cache_bytes = total

    def close(self, timeout: float = 10.0) -> None:
        """Stop the workers (they finish the clip in hand first)."""
        self._stop.set()
        for _ in self._threads:  # wake idle workers now rather than at their next poll
            self._queue.put((-1, next(self._seq), "stop:"))
        for t in self._threads:
            t.join(timeout)
