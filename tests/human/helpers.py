"""Helpers shared by the labelling tests: real segments, stores, clients."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
from support import free_port  # noqa: F401 (re-exported for the session tests)

from pbrl import envs as pbrl_envs
from pbrl.data import QueryBatch, SegmentBatch
from pbrl.human.clips import ClipSpec
from pbrl.human.server import LabelServer

if TYPE_CHECKING:
    import httpx

WEB_STACK = {"fastapi": "human", "uvicorn": "human", "av": "human", "httpx": "test"}
"""Module -> the pbrl extra that installs it."""


def require_web_stack(*also: str) -> None:
    """Skip the calling test module unless the labelling server's packages are installed.

    Call at the top of a module, before importing any of them. ``also`` names further
    modules the module needs (``"schemathesis"``, ...).
    """
    for mod, extra in WEB_STACK.items():
        pytest.importorskip(mod, reason=f"{mod} is missing: pip install 'pbrl[{extra}]'")
    for mod in also:
        pytest.importorskip(mod, reason=f"{mod} is missing: pip install 'pbrl[test]'")


ENV = "halfcheetah"
H = 10  # steps per segment: short clips keep the tests fast
SMALL = ClipSpec(width=64, height=64, max_frames=10)


def rollout_segments(n: int, horizon: int = H, seed: int = 0, env_name: str = ENV) -> SegmentBatch:
    """``n`` consecutive segments of a random-action rollout, with sim state for rendering."""
    env = pbrl_envs.make_env(env_name, seed=seed)
    obs, info = env.reset(seed=seed)
    rows: dict[str, list] = {"obs": [], "act": [], "rew": [], "state": []}
    for _ in range(n * horizon):
        a = env.action_space.sample()
        nxt, r, term, trunc, info = env.step(a)
        rows["obs"].append(obs)
        rows["act"].append(a)
        rows["rew"].append(r)
        rows["state"].append(info["sim_state"])  # the state before this step (obs's state)
        obs = nxt
        if term or trunc:
            obs, info = env.reset()
    env.close()
    return SegmentBatch(
        obs=np.asarray(rows["obs"], np.float32).reshape(n, horizon, -1),
        actions=np.asarray(rows["act"], np.float32).reshape(n, horizon, -1),
        true_reward=np.asarray(rows["rew"], np.float32).reshape(n, horizon),
        sim_state=np.asarray(rows["state"], np.float64).reshape(n, horizon, -1),
        env_name=env_name,
    )


def pair_queries(segs: SegmentBatch, m: int, prefix: str = "q") -> QueryBatch:
    """``m`` pair queries from the first ``2 m`` segments, ids ``q000``, ``q001``, ..."""
    return QueryBatch.from_members(
        [segs[:m], segs[m : 2 * m]], ids=[f"{prefix}{i:03d}" for i in range(m)]
    )


def token_of(srv: LabelServer, name: str) -> str:
    """``name``'s token."""
    return {e.name: e.token for e in srv.tokens.labellers()}[name]


def client(srv: LabelServer, name: str | None) -> httpx.Client:
    """An HTTP client carrying ``name``'s token (no token for ``None``)."""
    import httpx

    headers = {} if name is None else {"Authorization": f"Bearer {token_of(srv, name)}"}
    return httpx.Client(base_url=srv.url, headers=headers, timeout=60)
