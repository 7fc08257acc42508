"""Shared pieces of the offline benchmarks (``offline_cpl.py``, ``offline_oppo.py``,
``offline_speed.py``): writing one ``## `` section of RESULTS.md, running a ``pbrl-offline``
job in-process, and a machine description."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).with_name("RESULTS.md")


def replace_section(header: str, body: str, path: Path = RESULTS) -> None:
    """Replace the section starting with ``header`` (up to the next ``## ``) or append it."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    block = body.rstrip("\n") + "\n"
    start = text.find(header + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + block
    else:
        nxt = text.find("\n## ", start + len(header))
        text = text[:start] + block + ("" if nxt < 0 else text[nxt:])
    path.write_text(text)


def command() -> str:
    """The command line that ran this script, as it would be typed."""
    return "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]])


def machine() -> str:
    """CPU count, load and platform, for the results' header line."""
    try:
        load = os.getloadavg()[0]
        load_s = f", load average {load:.1f} at the start"
    except OSError:
        load_s = ""
    cores = os.cpu_count()
    return f"{cores} CPU cores (shared with other jobs{load_s}), no GPU, {platform.platform()}"


def run_offline(overrides: list[str], run_dir: Path) -> dict[str, float]:
    """Exactly ``pbrl-offline <overrides>`` with ``hydra.run.dir=run_dir``, in this process."""
    from hydra import compose, initialize_config_module

    from pbrl.offline.cli import run

    with initialize_config_module("pbrl.configs.offline", version_base="1.3"):
        cfg = compose("offline", overrides)
    return run(cfg, run_dir)


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    import statistics

    m = statistics.fmean(xs)
    return m, (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def fmt(xs: list[float], scale: float = 1.0, digits: int = 1) -> str:
    """``mean ± std`` of ``xs`` times ``scale``."""
    m, s = mean_std([x * scale for x in xs])
    return f"{m:.{digits}f} ± {s:.{digits}f}"


Json = dict[str, Any]
