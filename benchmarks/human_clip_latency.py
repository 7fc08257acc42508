"""Time from a query being chosen to its clips being playable, for the labelling page.

A pair of 1000-step HalfCheetah segments (one full episode each, random actions) with their
sim states is stored as a query; the clock starts when it is in the store and stops when
both clips (256x256 H.264 MP4, rendered by the env's own ``render_state``) have been
downloaded over HTTP from a running ``LabelServer`` - what a browser needs to play them.

Cases:

- ``cold``: the first clip of a fresh server (builds the render env and its GL context);
- ``on-demand``: a warm server renders and encodes the pair while the page waits;
- ``ahead``: the pair was rendered ahead (what ``HumanTeacher.label`` and ``/api/next``
  arrange), so the page only downloads it.

Usage::

    python benchmarks/human_clip_latency.py [--repeats 5] [--max-frames 100] [--size 256]

Prints a markdown block for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from pbrl import envs as pbrl_envs
from pbrl.data import QueryBatch, SegmentBatch
from pbrl.human.clips import ClipSpec
from pbrl.human.server import LabelServer
from pbrl.store import FeedbackStore

TITLE = "Human session: clip latency (query stored to both clips downloaded)"
PAPER = (
    "Target (issue #4): a pair's clips ready in under 1 s on a laptop CPU. Peers publish no "
    "figure to set beside it (rl-teacher and Uni-RLHF report no clip latency)."
)


def episode_segments(env_name: str, n: int, horizon: int, seed: int) -> SegmentBatch:
    """``n`` segments of ``horizon`` random-action steps with sim state."""
    env = pbrl_envs.make_env(env_name, seed=seed)
    obs, _ = env.reset(seed=seed)
    o, a, r, s = [], [], [], []
    for _ in range(n * horizon):
        act = env.action_space.sample()
        nxt, rew, term, trunc, info = env.step(act)
        o.append(obs)
        a.append(act)
        r.append(rew)
        s.append(info["sim_state"])
        obs = nxt
        if term or trunc:
            obs, _ = env.reset()
    env.close()
    return SegmentBatch(
        np.asarray(o, np.float32).reshape(n, horizon, -1),
        np.asarray(a, np.float32).reshape(n, horizon, -1),
        np.asarray(r, np.float32).reshape(n, horizon),
        sim_state=np.asarray(s).reshape(n, horizon, -1),
        env_name=env_name,
    )


def fetch_pair(c: httpx.Client) -> tuple[str, float]:
    """Ask for the next query and download both clips in parallel; returns (id, bytes)."""
    q = c.get("/api/next").json()["query"]
    sizes: list[int] = []

    def get(url: str) -> None:
        r = c.get(url)
        r.raise_for_status()
        sizes.append(len(r.content))

    threads = [threading.Thread(target=get, args=(cl["url"],)) for cl in q["clips"]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return q["id"], float(sum(sizes))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="halfcheetah")
    p.add_argument("--horizon", type=int, default=1000)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--max-frames", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workers", type=int, default=2, help="render threads (the default)")
    p.add_argument("--write-results", action="store_true", help="update benchmarks/RESULTS.md")
    a = p.parse_args()

    segs = episode_segments(a.env, 2 * (a.repeats + 2), a.horizon, seed=0)
    spec = ClipSpec(width=a.size, height=a.size, max_frames=a.max_frames)
    rows: dict[str, list[float]] = {"cold": [], "on-demand": [], "ahead": []}
    split: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as d:
        store = FeedbackStore(Path(d) / "s.sqlite")
        srv = LabelServer(
            store, Path(d) / "h", port=0, labellers=["bench"], clip=spec, shuffle=False,
            lookahead=0, render_workers=a.workers,
        ).start()  # fmt: skip
        token = srv.tokens.labellers()[0].token
        c = httpx.Client(base_url=srv.url, params={"token": token}, timeout=120)
        m = a.repeats + 2

        def add(i: int) -> str:
            """Choose a query as a run does: store it, put it first in line."""
            qid = f"bench{i:03d}"
            qb = QueryBatch.from_members([segs[i : i + 1], segs[m + i : m + i + 1]], ids=[qid])
            store.add_queries(qb)
            srv.session.set_priority([qid])
            return qid

        def answer(qid: str) -> None:
            c.post("/api/label", json={"query_id": qid, "choice": "skip"}).raise_for_status()

        # cold: nothing built yet
        t0 = time.perf_counter()
        qid = add(0)
        got, nbytes = fetch_pair(c)
        rows["cold"].append(time.perf_counter() - t0)
        answer(got)
        for i in range(1, a.repeats + 1):
            t0 = time.perf_counter()
            qid = add(i)
            got, nbytes = fetch_pair(c)
            rows["on-demand"].append(time.perf_counter() - t0)
            split.append((srv.renderer.last["render_s"], srv.renderer.last["encode_s"]))
            answer(got)
        # ahead: render while "the labeller answers the previous query", then time the fetch
        for i in range(a.repeats + 1, a.repeats + 2):
            qid = add(i)
            srv.prefetch([qid])
            for member in (0, 1):
                srv.renderer.request(qid, member).done.wait(120)
            t0 = time.perf_counter()
            got, nbytes = fetch_pair(c)
            rows["ahead"].append(time.perf_counter() - t0)
            answer(got)
        plan = srv.renderer.plan(a.env, a.horizon)
        c.close()
        srv.stop()
        store.close()

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    today = datetime.date.today().isoformat()
    cmd = "python benchmarks/human_clip_latency.py " + " ".join(sys.argv[1:])
    print(
        f"Date: {today}. Machine: {os.cpu_count()} CPU cores, no GPU, {platform.platform()}; "
        f"software OpenGL (EGL/Mesa); load average {load:.1f} at the end. Command: `{cmd}`."
    )
    print()
    print(
        f"Pair of {a.horizon}-step {a.env} segments at {a.size}x{a.size}; clip = {plan.frames} "
        f"frames (stride {plan.stride}, {plan.fps} fps, {plan.speed:.1f}x real time), "
        f"{nbytes / 2 / 1024:.0f} KiB per clip; time from the query in the store to both MP4s "
        "downloaded over HTTP."
    )
    print()
    print("| case | median s | min s | max s | n |")
    print("|---|---|---|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {statistics.median(v):.2f} | {min(v):.2f} | {max(v):.2f} | {len(v)} |")
    if split:
        r = statistics.median(s[0] for s in split)
        e = statistics.median(s[1] for s in split)
        print()
        print(f"Per clip (median, on-demand): render {r:.2f} s, encode {e:.2f} s.")


class _Tee(io.StringIO):
    """Echo to the terminal while keeping a copy for RESULTS.md."""

    def write(self, s: str) -> int:
        sys.__stdout__.write(s)
        return super().write(s)


if __name__ == "__main__":
    _out = _Tee()
    with contextlib.redirect_stdout(_out):
        main()
    if "--write-results" in sys.argv:
        from results_md import write_section

        write_section(TITLE, PAPER + "\n\n" + _out.getvalue())
        print("wrote benchmarks/RESULTS.md")
