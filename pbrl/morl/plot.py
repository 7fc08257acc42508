"""Front images for TensorBoard, drawn with PIL (no plotting library needed).

2 objectives: one scatter; 3: the three pairwise scatters side by side; more: parallel
coordinates (one polyline per front policy over min-max scaled objectives). Archived but
dominated policies are grey, front policies red, a selected policy (if any) blue.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

GREY, RED, BLUE, BLACK, WHITE = (170, 170, 170), (210, 40, 40), (30, 80, 220), (0, 0, 0), (255,) * 3


def _scale(v: np.ndarray, lo: float, hi: float, a: float, b: float) -> np.ndarray:
    span = hi - lo if hi > lo else 1.0
    return a + (v - lo) / span * (b - a)


def _panel(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    pts: np.ndarray,
    front: np.ndarray,
    chosen: np.ndarray | None,
    names: tuple[str, str],
) -> None:
    x0, y0, x1, y1 = box
    pad = 28
    draw.rectangle([x0 + pad, y0 + 6, x1 - 6, y1 - pad], outline=BLACK)
    every = np.vstack([pts, front] + ([chosen[None]] if chosen is not None else []))
    lo, hi = every.min(0), every.max(0)

    def xy(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        px = _scale(p[:, 0], lo[0], hi[0], x0 + pad + 6, x1 - 12)
        py = _scale(p[:, 1], lo[1], hi[1], y1 - pad - 6, y0 + 12)
        return px, py

    for group, color, r in ((pts, GREY, 2), (front, RED, 3)):
        if group.size:
            for px, py in zip(*xy(group), strict=True):
                draw.ellipse([px - r, py - r, px + r, py + r], fill=color)
    if chosen is not None:
        px, py = (float(v[0]) for v in xy(chosen[None]))
        draw.ellipse([px - 5, py - 5, px + 5, py + 5], outline=BLUE, width=2)
    draw.text((x0 + pad, y1 - pad + 4), f"{names[0]} [{lo[0]:.3g}, {hi[0]:.3g}]", fill=BLACK)
    draw.text((x0 + 2, y0 + 6), f"{names[1]}", fill=BLACK)
    draw.text((x0 + 2, y0 + 18), f"{hi[1]:.3g}", fill=BLACK)
    draw.text((x0 + 2, y1 - pad - 10), f"{lo[1]:.3g}", fill=BLACK)


def front_image(
    points: np.ndarray,
    front: np.ndarray,
    names: Sequence[str],
    chosen: np.ndarray | None = None,
    size: int = 320,
) -> np.ndarray:
    """``(H, W, 3)`` uint8 picture of ``points`` (all archived) and ``front`` (non-dominated).

    Args:
        points: ``(n, m)`` every archived return.
        front: ``(k, m)`` the front.
        names: ``m`` objective names for the axes.
        chosen: ``(m,)`` a selected policy's return to ring, or ``None``.
        size: panel size in pixels.
    """
    points = np.asarray(points, np.float64).reshape(-1, len(names))
    front = np.asarray(front, np.float64).reshape(-1, len(names))
    m = len(names)
    if m < 2:
        raise ValueError(f"a front image needs at least 2 objectives, got {m}")
    if m <= 3:
        pairs = [(0, 1)] if m == 2 else [(0, 1), (0, 2), (1, 2)]
        img = Image.new("RGB", (size * len(pairs), size), WHITE)
        draw = ImageDraw.Draw(img)
        for k, (i, j) in enumerate(pairs):
            c = None if chosen is None else np.asarray(chosen, np.float64)[[i, j]]
            _panel(draw, (k * size, 0, (k + 1) * size, size), points[:, [i, j]],
                   front[:, [i, j]], c, (names[i], names[j]))  # fmt: skip
        return np.asarray(img)
    # Parallel coordinates.
    w, h, pad = max(size * 2, 80 * m), size, 30
    img = Image.new("RGB", (w, h), WHITE)
    draw = ImageDraw.Draw(img)
    every = np.vstack([points, front])
    lo, hi = every.min(0), every.max(0)
    xs = np.linspace(pad, w - pad, m)
    for k in range(m):
        draw.line([(xs[k], pad), (xs[k], h - pad)], fill=BLACK)
        draw.text((xs[k] - 20, h - pad + 4), names[k][:12], fill=BLACK)
    groups = [(front, RED)]
    if chosen is not None:
        groups.append((np.asarray(chosen, np.float64)[None], BLUE))
    for group, color in groups:
        for p in group:
            ys = [_scale(p[k], lo[k], hi[k], h - pad, pad) for k in range(m)]
            draw.line(list(zip(xs.tolist(), ys, strict=True)), fill=color, width=1)
    return np.asarray(img)
