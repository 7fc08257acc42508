"""Shared fixtures: a seeded generator and single-threaded torch for reproducible, fast tests."""

import os
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen]]:
    """``subprocess.Popen`` for processes a test runs beside itself.

    Whatever is still running when the test ends (an assertion failed before it was
    waited for) is killed and reaped, so a failing test leaves no orphan behind.
    """
    procs: list[subprocess.Popen] = []

    def start(*args: Any, **kwargs: Any) -> subprocess.Popen:
        proc = subprocess.Popen(*args, **kwargs)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
