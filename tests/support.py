"""Small helpers shared by test files (importable as ``support``: pytest puts ``tests/`` on
``sys.path`` since it is not a package)."""

from __future__ import annotations

import socket
from pathlib import Path


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
