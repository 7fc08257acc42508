"""Videos of stored segments: frames drawn from their simulator states."""

from __future__ import annotations

from typing import Any

import numpy as np

from pbrl.data import SegmentBatch


def render_segments(
    env: Any, segments: SegmentBatch, size: int = 112, stride: int = 1
) -> np.ndarray:
    """``(N, ceil(H / stride), size, size, 3)`` uint8 frames of ``N`` segments.

    Args:
        env: anything with ``render_state(state, width, height)`` (a ``PbrlEnv`` or its
            pixel wrapper) built for the segments' environment.
        segments: segments that carry ``sim_state``.
        size: frame width and height.
        stride: keep every ``stride``-th step.
    """
    if segments.sim_state is None:
        raise ValueError(
            "these segments carry no sim_state, so they cannot be rendered; record them from a "
            "PbrlEnv (its info['sim_state']) or keep sim states in the buffer"
        )
    states = segments.sim_state[:, ::stride]
    n, t = states.shape[:2]
    out = np.empty((n, t, size, size, 3), np.uint8)
    for i in range(n):
        for j in range(t):
            out[i, j] = env.render_state(states[i, j], width=size, height=size)
    return out
