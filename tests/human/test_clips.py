"""Clips: planned, rendered from stored sim state with the env's renderer, H.264, cached."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pbrl import envs as pbrl_envs
from pbrl.data import SegmentBatch
from pbrl.human.clips import (
    ClipRenderer,
    ClipSpec,
    ClipUnavailable,
    fast_visuals,
    plan_clip,
)

from .helpers import ENV, SMALL, H, require_web_stack

require_web_stack()
av = pytest.importorskip("av")


@pytest.mark.parametrize(
    ("horizon", "env_fps", "stride", "frames", "fps"),
    [
        (50, 20.0, 1, 50, 20),  # B-Pref segment of halfcheetah: every step, real time
        (1000, 20.0, 10, 100, 10),  # long segment: a 100-frame time-lapse (5x real time)
        (50, 125.0, 4, 13, 30),  # walker2d's 125 Hz strided down to <= 30 fps
        (7, 20.0, 1, 7, 20),
        (1, 20.0, 1, 1, 20),
    ],
)
def test_clip_plans(horizon: int, env_fps: float, stride: int, frames: int, fps: int) -> None:
    p = plan_clip(horizon, env_fps, ClipSpec())
    assert (p.stride, p.frames, p.fps) == (stride, frames, fps)
    assert p.speed == pytest.approx(p.fps * p.stride / env_fps)
    assert list(p.steps()) == list(range(0, horizon, stride))


@pytest.mark.parametrize(
    "kwargs",
    [{"width": 63}, {"height": 8}, {"max_frames": 1}, {"min_fps": 40}, {"quality": "ultra"}],
)
def test_bad_clip_specs_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ClipSpec(**kwargs)


def _loader(segments: SegmentBatch):
    def load(qid: str, member: int):
        if qid == "nostate":
            return None, ENV
        if qid == "badenv":
            return segments.sim_state[0], "no-such-env"
        if not qid.startswith("seg"):
            raise KeyError(f"unknown query id {qid!r}")
        return segments.sim_state[int(qid[3:]) + member], ENV

    return load


def test_a_clip_shows_the_stored_states(tmp_path: Path, segments: SegmentBatch) -> None:
    renderer = ClipRenderer(tmp_path / "clips", _loader(segments), SMALL)
    try:
        path = renderer.get("seg0", 1, timeout=60)
        assert path.parent == tmp_path / "clips" and path.name == renderer.key("seg0", 1) + ".mp4"
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            assert stream.codec_context.name == "h264"
            decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        plan = plan_clip(H, renderer.env_fps(ENV), SMALL)
        assert len(decoded) == plan.frames == H and decoded[0].shape == (64, 64, 3)
        # Each decoded frame is the env's own rendering of the stored state (up to H.264 loss).
        env = pbrl_envs.make_env(ENV)
        fast_visuals(env)
        states = segments.sim_state[1]
        truth = [env.render_state(states[t], 64, 64).astype(float) for t in plan.steps()]
        env.close()
        err = [np.abs(d - t).mean() for d, t in zip(decoded, truth, strict=True)]
        wrong = np.abs(decoded[0] - truth[-1]).mean()
        assert max(err) < 6.0, err
        assert wrong > 2 * max(err)  # frames are in order, not all alike
        # Cached: asking again renders nothing new.
        n = renderer.stats["clips"]
        assert renderer.get("seg0", 1) == path and renderer.stats["clips"] == n
        assert renderer.ready("seg0", 1) and not renderer.ready("seg0", 0)
    finally:
        renderer.close()
    # A new renderer (server restart) finds the cached file.
    again = ClipRenderer(tmp_path / "clips", _loader(segments), SMALL)
    try:
        assert again.get("seg0", 1) == path and again.stats["clips"] == 0
    finally:
        again.close()
    # Other settings make another file rather than serving a stale one.
    other = ClipRenderer(tmp_path / "clips", _loader(segments), ClipSpec(width=32, height=32))
    try:
        assert other.key("seg0", 1) != renderer.key("seg0", 1) and not other.ready("seg0", 1)
    finally:
        other.close()


def test_full_quality_clips_use_the_envs_full_look(tmp_path: Path, segments: SegmentBatch) -> None:
    """quality="full" reaches the env's render_quality (the suites default to "fast")."""
    spec = ClipSpec(width=128, height=128, max_frames=2, quality="full")
    renderer = ClipRenderer(tmp_path / "clips", _loader(segments), spec)
    try:
        with av.open(str(renderer.get("seg0", 0, timeout=60))) as c:
            decoded = [f.to_ndarray(format="rgb24").astype(float) for f in c.decode(video=0)]
    finally:
        renderer.close()
    state = segments.sim_state[0][0]
    looks = {}
    for quality in ("full", "fast"):
        env = pbrl_envs.make_env(ENV, render_quality=quality)
        looks[quality] = env.render_state(state, 128, 128).astype(float)
        env.close()
    # Where the two looks differ (shadows, reflections), the clip must match the full one.
    where = np.abs(looks["full"] - looks["fast"]).sum(-1) > 60
    assert where.mean() > 0.01
    to_full = np.abs(decoded[0] - looks["full"])[where].mean()
    to_fast = np.abs(decoded[0] - looks["fast"])[where].mean()
    assert to_fast > 3 * to_full, (to_full, to_fast)


def test_unrenderable_clips_say_why(tmp_path: Path, segments: SegmentBatch) -> None:
    renderer = ClipRenderer(tmp_path / "clips", _loader(segments), SMALL)
    try:
        with pytest.raises(ClipUnavailable, match="no simulator state"):
            renderer.get("nostate", 0, timeout=30)
        with pytest.raises(ClipUnavailable, match="no-such-env"):
            renderer.get("badenv", 0, timeout=30)
        with pytest.raises(ClipUnavailable, match="unknown query"):
            renderer.get("../../etc/passwd", 0, timeout=30)
        assert list((tmp_path / "clips").iterdir()) == []  # nothing written for failures
    finally:
        renderer.close()


def test_prefetch_renders_ahead_in_order(tmp_path: Path, segments: SegmentBatch) -> None:
    renderer = ClipRenderer(tmp_path / "clips", _loader(segments), SMALL)
    try:
        renderer.prefetch([("seg2", 0), ("seg2", 1), ("seg4", 0)])
        for qid, m in [("seg2", 0), ("seg2", 1), ("seg4", 0)]:
            assert renderer.request(qid, m).done.wait(60)
            assert renderer.ready(qid, m)
        assert renderer.stats["clips"] == 3
    finally:
        renderer.close()


def test_the_cache_stays_under_its_limit(tmp_path: Path, segments: SegmentBatch) -> None:
    renderer = ClipRenderer(tmp_path / "clips", _loader(segments), SMALL, max_cache_bytes=1)
    try:
        renderer.get("seg0", 0)
        last = renderer.get("seg0", 1)
        files = list((tmp_path / "clips").glob("*.mp4"))
        assert files == [last]  # the older one was evicted, the newest kept
        assert renderer.get("seg0", 0).exists()  # an evicted clip renders again on demand
    finally:
        renderer.close()
