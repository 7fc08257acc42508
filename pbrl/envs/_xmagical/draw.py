"""Software renderer of a SweepToTop scene (Pillow, no display, no OpenGL).

The picture is the benchmark's allocentric view: a grey surround, the white arena with a
grey border, the goal band (light fill, coloured border), the debris (fill, darker
border), and the robot in grey with googly eyes whose pupils lag its turning. A frame is a
function of the body poses and the scene's colours only, so a stored sim state re-renders
to exactly the live frame.

World to pixel: the view spans ``[-VIEW_HALF, VIEW_HALF]`` on both axes, y up; vertices are
rounded to whole pixels. Borders are 2 px at the benchmark's 384 x 384 and scale with the
frame (1 px below 288 px).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from pbrl.envs._xmagical import scene as sc

_WHITE = (255, 255, 255)
_PUPIL = sc.to_uint8((0.1, 0.1, 0.1))
_BACKGROUND = sc.to_uint8(sc.lighten(sc.GREY, 4))
_ROBOT = sc.to_uint8(sc.GREY)
_ROBOT_DARK = sc.to_uint8(sc.darken(sc.GREY))
_ROBOT_LIGHT = sc.to_uint8(sc.lighten(sc.GREY, 4))
_FILL = {n: sc.to_uint8(c) for n, c in sc.BASE_COLORS.items()}
_DARK = {n: sc.to_uint8(sc.darken(c)) for n, c in sc.BASE_COLORS.items()}
_GOAL_FILL = {n: sc.to_uint8(sc.lighten(c, 2)) for n, c in sc.BASE_COLORS.items()}

_SQUARE = np.array([(-1, 1), (1, 1), (1, -1), (-1, -1)], dtype=np.float64) * (sc.SQUARE_SIDE / 2)
_FINGER_OUTER = [p for side in (-1, 1) for p in sc.finger_outer(side)]  # left, then right
_FINGER_INNER = [p for side in (-1, 1) for p in sc.finger_inner(side)]


class Camera:
    """World-to-pixel map of a ``height`` x ``width`` frame of the allocentric view."""

    def __init__(self, width: int, height: int):
        self.width, self.height = int(width), int(height)
        self.sx = self.width / (2 * sc.VIEW_HALF)
        self.sy = self.height / (2 * sc.VIEW_HALF)
        self.line = max(1, round(2 * min(self.width, self.height) / 384))

    def flat(self, wx: np.ndarray, wy: np.ndarray) -> list[float]:
        """World coordinates to ``[px0, py0, px1, py1, ...]`` whole-pixel coordinates."""
        px = np.round((wx + sc.VIEW_HALF) * self.sx)
        py = np.round(self.height - (wy + sc.VIEW_HALF) * self.sy)
        return np.stack([px, py], axis=-1).ravel().tolist()

    def disc(self, x: float, y: float, r: float) -> tuple[float, float, float, float]:
        """Pixel bounding box of a disc of radius ``r`` centred at world ``(x, y)``."""
        cx = round((x + sc.VIEW_HALF) * self.sx)
        cy = round(self.height - (y + sc.VIEW_HALF) * self.sy)
        rx, ry = r * self.sx, r * self.sy
        return (cx - rx, cy - ry, cx + rx, cy + ry)


def _polygon(draw: ImageDraw.ImageDraw, flat: list[float], fill, outline, width: int) -> None:
    draw.polygon(flat, fill=fill)
    if outline is not None:
        draw.line([*flat, flat[0], flat[1]], fill=outline, width=width)


class Painter:
    """Draws scenes of one embodiment; caches the static background per frame size.

    Every moving polygon's vertices (debris, fingers, stick) are stacked once, with the
    body row each belongs to, so a frame transforms them all in one NumPy pass.
    """

    def __init__(self, embodiment: sc.Embodiment):
        self.embodiment = embodiment
        first_debris = 5 if embodiment.gripper else 3
        polys: list[tuple[np.ndarray, int]] = [
            (_SQUARE, first_debris + i) for i in range(sc.N_DEBRIS)
        ]
        if embodiment.gripper:
            # Fingers go under the body: all outer boxes, then the light inner ones.
            polys += [(part, 3 + k // 2) for k, part in enumerate(_FINGER_OUTER)]
            polys += [(part, 3 + k // 2) for k, part in enumerate(_FINGER_INNER)]
        else:
            polys.append((embodiment.stick_vertices(), 0))
        self._local = np.concatenate([p for p, _ in polys])
        self._rows = np.concatenate([np.full(len(p), row) for p, row in polys])
        ends = np.cumsum([2 * len(p) for p, _ in polys])
        self._spans = list(zip([0, *ends[:-1].tolist()], ends.tolist(), strict=True))
        self._backgrounds: dict[tuple[int, int, int], Image.Image] = {}

    def _background(self, cam: Camera, goal_color: int) -> Image.Image:
        key = (cam.width, cam.height, goal_color)
        img = self._backgrounds.get(key)
        if img is None:
            img = Image.new("RGB", (cam.width, cam.height), _BACKGROUND)
            draw = ImageDraw.Draw(img)
            a = sc.ARENA_HALF
            arena = cam.flat(np.array([-a, a, a, -a]), np.array([a, a, -a, -a]))
            _polygon(draw, arena, _WHITE, _ROBOT, cam.line)
            (gx, gy), hw, hh = sc.GOAL_CENTRE, sc.GOAL_WIDTH / 2, sc.GOAL_HEIGHT / 2
            goal = cam.flat(gx + np.array([-hw, hw, hw, -hw]), gy + np.array([hh, hh, -hh, -hh]))
            name = sc.COLOR_NAMES[goal_color]
            _polygon(draw, goal, _GOAL_FILL[name], _FILL[name], cam.line)
            self._backgrounds[key] = img
        return img

    def frame(
        self,
        poses: np.ndarray,
        debris_colors: Sequence[int],
        goal_color: int,
        width: int,
        height: int,
    ) -> np.ndarray:
        """``(height, width, 3)`` uint8 frame of ``poses`` (``(n_bodies, >=3)``: x, y, angle).

        Rows are in :class:`~pbrl.envs._xmagical.world.SweepWorld`'s body order: robot,
        two pupils, [two fingers,] debris.
        """
        cam = Camera(width, height)
        img = self._background(cam, int(goal_color)).copy()
        draw = ImageDraw.Draw(img)
        poses = np.asarray(poses, np.float64)
        rows, local = self._rows, self._local
        angle = poses[rows, 2]
        c, s = np.cos(angle), np.sin(angle)
        wx = local[:, 0] * c - local[:, 1] * s + poses[rows, 0]
        wy = local[:, 0] * s + local[:, 1] * c + poses[rows, 1]
        flat = cam.flat(wx, wy)
        polys = [flat[a:b] for a, b in self._spans]
        for poly, color in zip(polys, debris_colors, strict=False):
            name = sc.COLOR_NAMES[int(color)]
            _polygon(draw, poly, _FILL[name], _DARK[name], cam.line)
        rx, ry, ra = (float(v) for v in poses[0, :3])
        emb = self.embodiment
        if emb.gripper:
            for k, poly in enumerate(polys[sc.N_DEBRIS :]):
                draw.polygon(poly, fill=_ROBOT if k < 4 else _ROBOT_LIGHT)
            draw.ellipse(
                cam.disc(rx, ry, sc.ROBOT_RAD), fill=_ROBOT, outline=_ROBOT_DARK, width=cam.line
            )
        else:
            _polygon(draw, polys[-1], _ROBOT, _ROBOT_DARK, cam.line)
        c, s = math.cos(ra), math.sin(ra)
        ex, ey = emb.eye_xy
        for k, sign in enumerate((-1, 1)):
            # Eye centre in the world; the pupil is offset "up" in the pupil's own lag frame.
            cx = rx + sign * ex * c - ey * s
            cy = ry + sign * ex * s + ey * c
            draw.ellipse(cam.disc(cx, cy, sc.EYE_RADIUS), fill=_WHITE)
            lag = float(poses[1 + k, 2])  # the pupil body's own angle
            px = cx - sc.PUPIL_OFFSET * math.sin(lag)
            py = cy + sc.PUPIL_OFFSET * math.cos(lag)
            draw.ellipse(cam.disc(px, py, sc.PUPIL_RADIUS), fill=_PUPIL)
        return np.asarray(img)
