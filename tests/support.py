"""Small helpers shared by test files (importable as ``support``: pytest puts ``tests/`` on
``sys.path`` since it is not a package)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tb_scalars(run_dir: Path) -> dict[str, list[float]]:
    """Every scalar of the run's TensorBoard event files, by tag, in file then step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[float]] = {}
    for f in sorted(Path(run_dir).glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend(e.value for e in acc.Scalars(tag))
    return out


@contextlib.contextmanager
def labeller_client(run_dir: Path, url: str, stop: threading.Event) -> Iterator[Any]:
    """An ``httpx`` client of the run's first labeller (their token from
    ``run_dir/human/tokens.json``), once the labelling page at ``url`` answers."""
    import httpx

    from pbrl.human.tokens import TokenRegistry

    tokens = Path(run_dir) / "human" / "tokens.json"
    while not tokens.exists() and not stop.is_set():
        time.sleep(0.05)
    token = TokenRegistry(tokens).labellers()[0].token
    with httpx.Client(base_url=url, params={"token": token}, timeout=60) as c:
        while not stop.is_set():  # the token is issued before the server listens
            try:
                if c.get("/api/health").is_success:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        yield c


def served_queries(c: Any, stop: threading.Event) -> Iterator[dict]:
    """Each query the page serves this client, until ``stop`` or the run closes the page."""
    import httpx

    while not stop.is_set():
        try:
            q = c.get("/api/next", params={"wait": 0.2}).json()["query"]
        except httpx.TransportError:
            return  # the run closed the page when it had its answers
        if q is not None:
            yield q


def fetch_clip(c: Any, url: str, tries: int = 200) -> Any:
    """The response for a clip, asked again while the page is still rendering it (503)."""
    for _ in range(tries):
        r = c.get(url)
        if r.status_code != 503:
            break
        time.sleep(0.05)
    return r
