"""Visual representations for rewards: frame encoders and rendering segments to videos."""

from pbrl.visual.encoders import (
    BACKBONES,
    FrameEncoder,
    MissingVisualExtraError,
    SmallCNN,
    make_encoder,
)
from pbrl.visual.frames import render_segments

__all__ = [
    "BACKBONES",
    "FrameEncoder",
    "MissingVisualExtraError",
    "SmallCNN",
    "make_encoder",
    "render_segments",
]
