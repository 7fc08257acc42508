"""kill -9 between two labels: the first survives, and the session resumes where it stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pbrl.store import FeedbackStore

from .helpers import free_port, pair_queries, require_web_stack, rollout_segments

require_web_stack()
httpx = pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parents[2]


def start(store: Path, dataset: Path, port: int) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "pbrl.human",
        "--store", str(store), "--queries", str(dataset),
        "--port", str(port), "--labellers", "alice", "--no-render", "--no-shuffle",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stdout.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("server did not come up")


def test_kill_9_between_two_labels_loses_nothing_and_resumes(tmp_path: Path) -> None:
    # A dataset to label, exported by another store (what `pbrl-label --queries` reads).
    src = FeedbackStore(tmp_path / "source.sqlite")
    src.add_queries(pair_queries(rollout_segments(8, horizon=3), 4))
    dataset = tmp_path / "queries.npz"
    src.export(dataset)
    src.close()

    store, port = tmp_path / "labels.sqlite", free_port()
    proc = start(store, dataset, port)
    tokens = (tmp_path / "labels-human" / "tokens.json").read_text()
    try:
        out = proc.stdout  # the printed link carries the token
        link = ""
        while "?token=" not in link:
            link = out.readline()
        token = link.strip().split("?token=")[1]
        auth = {"Authorization": f"Bearer {token}"}
        base = f"http://127.0.0.1:{port}"
        first = httpx.get(f"{base}/api/next", headers=auth).json()["query"]["id"]
        r = httpx.post(
            f"{base}/api/label", headers=auth, json={"query_id": first, "choice": "left"}
        )
        assert r.status_code == 200
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # no shutdown, no flush, no goodbye
        proc.wait(10)

    with FeedbackStore(store) as st:  # the acknowledged label is on disk
        assert [(f.query_id, f.teacher_id) for f in st.feedback()] == [(first, "human:alice")]

    proc = start(store, dataset, port)
    try:
        # The same link works after the restart, and the page moves on to the next query.
        assert (tmp_path / "labels-human" / "tokens.json").read_text() == tokens
        me = httpx.get(f"{base}/api/me", headers=auth).json()
        assert me["progress"]["done"] == 1 and me["progress"]["left"] == 3
        nxt = httpx.get(f"{base}/api/next", headers=auth).json()["query"]["id"]
        assert nxt != first
        # The page re-sends an answer it was not sure was saved: no second label.
        again = httpx.post(
            f"{base}/api/label", headers=auth, json={"query_id": first, "choice": "left"}
        )
        assert again.status_code == 200 and again.json()["duplicate"]
        r = httpx.post(f"{base}/api/label", headers=auth, json={"query_id": nxt, "choice": "right"})
        assert r.status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("the server did not stop on SIGINT")
    with FeedbackStore(store) as st:
        assert [f.query_id for f in st.feedback()] == [first, nxt]
        assert st.num_queries() == 4  # importing the dataset again added nothing
