"""Fixtures for the labelling session: real MuJoCo segments with sim state, a live server.

Nothing here imports the web stack (FastAPI, uvicorn, PyAV, httpx): the test modules that need
it call :func:`helpers.require_web_stack` first and are skipped, naming the extra to install,
when it is missing. A module-level skip in a conftest would stop the whole test run instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pbrl.data import QueryBatch, SegmentBatch
from pbrl.human.server import LabelServer
from pbrl.store import FeedbackStore

from .helpers import SMALL, pair_queries, rollout_segments


@pytest.fixture(scope="session")
def segments() -> SegmentBatch:
    """24 real halfcheetah segments of 10 steps (made once per test session)."""
    return rollout_segments(24)


@pytest.fixture
def store(tmp_path: Path, segments: SegmentBatch) -> Iterator[FeedbackStore]:
    """A store with 8 pairs (q000..q007), 2 triplets (t000, t001), 2 rankings of 3 (r000, r001)."""
    st = FeedbackStore(tmp_path / "store.sqlite")
    st.add_queries(pair_queries(segments, 8))
    trip = QueryBatch.from_members(
        [segments[16:18], segments[18:20], segments[20:22]], kind="triplet", ids=["t000", "t001"]
    )
    st.add_queries(trip)
    rank = QueryBatch.from_members(
        [segments[0:2], segments[2:4], segments[4:6]], kind="ranking", ids=["r000", "r001"]
    )
    st.add_queries(rank)
    yield st
    st.close()


@pytest.fixture
def server(store: FeedbackStore, tmp_path: Path) -> Iterator[LabelServer]:
    """A live server on a free port: labellers alice and bob, 64x64 clips, no shuffling."""
    srv = LabelServer(
        store, tmp_path / "human", port=0, labellers=["alice", "bob"], clip=SMALL, shuffle=False
    ).start()
    yield srv
    srv.stop()
