"""QDHF's latent projection: diversity descriptors learned from similarity triplets.

``z = W f(x) + b`` (linear, no normalisation, latent size 2) is fitted so that latent distances
agree with the judgements. For a triplet (reference, x_1, x_2) with answer ``y = +1`` when
x_2 is the more similar one (``-1`` when x_1 is), the code's hinge loss (paper Eq. 3 with
squared L2 distances) is

    Delta = ||z_ref - z_1||^2 - ||z_ref - z_2||^2,   L = mean max(0, m - y Delta),  m = 0.05.

Training follows the official ``fit_dis_embed``: a fresh model per fit, Adam 1e-3, batch 32,
75/25 train/validation split in the given order, an epoch is ``n_train // 32`` batches drawn
with replacement, at most 1000 epochs, stopped when the mean validation accuracy of the last
10 epochs drops below that of the 10 before (after epoch 10).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn


def triplet_hinge_loss(
    z_ref: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor, y: torch.Tensor, margin: float = 0.05
) -> torch.Tensor:
    """QDHF's triplet loss (``y = +1``: ``z2`` is closer to ``z_ref``; ``-1``: ``z1`` is)."""
    delta = (z_ref - z1).square().sum(-1) - (z_ref - z2).square().sum(-1)
    return torch.clamp(margin - y * delta, min=0.0).mean()


class LinearProjection(nn.Module):
    """``f (N, D) -> z (N, latent_dim)``, one linear layer."""

    def __init__(self, in_dim: int, latent_dim: int = 2):
        super().__init__()
        self.enc = nn.Linear(in_dim, latent_dim)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """Project features."""
        return self.enc(f)

    @torch.no_grad()
    def project(self, f: np.ndarray) -> np.ndarray:
        """NumPy in, NumPy out."""
        return self(torch.as_tensor(f, dtype=torch.float32)).numpy().astype(np.float64)


@dataclass
class FitResult:
    """A fitted projection and its validation accuracies per epoch."""

    model: LinearProjection
    val_acc: list[float] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        """Validation accuracy at the last epoch (what the official code reports)."""
        return self.val_acc[-1] if self.val_acc else float("nan")


def fit_projection(
    feats: np.ndarray,
    y: np.ndarray,
    latent_dim: int = 2,
    lr: float = 1e-3,
    batch_size: int = 32,
    max_epochs: int = 1000,
    margin: float = 0.05,
    val_frac: float = 0.25,
    seed: int = 0,
) -> FitResult:
    """Fit a fresh :class:`LinearProjection` on ``M`` judged triplets.

    Args:
        feats: ``(M, 3, D)`` features of (reference, x_1, x_2).
        y: ``(M,)`` +1 where x_2 was judged more similar, -1 where x_1 was.
        latent_dim: size of ``z`` (QDHF: 2).
        lr: Adam learning rate.
        batch_size: triplets per step.
        max_epochs: epochs at most (early stopping usually ends sooner).
        margin: hinge margin on squared distances.
        val_frac: the last ``val_frac`` of the triplets are held out.
        seed: initialisation and batch draws.
    """
    feats = np.asarray(feats, np.float32)
    if feats.ndim != 3 or feats.shape[1] != 3:
        raise ValueError(f"feats must be (M, 3, D), got {feats.shape}")
    y = np.asarray(y, np.float32).reshape(-1)
    m = len(feats)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = LinearProjection(feats.shape[-1], latent_dim)
    with torch.no_grad():  # seeded init (nn.Linear's default init uses the global RNG)
        bound = 1.0 / np.sqrt(feats.shape[-1])
        model.enc.weight.uniform_(-bound, bound, generator=gen)
        model.enc.bias.uniform_(-bound, bound, generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n_train = max(1, int(m * (1.0 - val_frac)))
    x = torch.as_tensor(feats)
    yt = torch.as_tensor(y)
    xtr, ytr = x[:n_train], yt[:n_train]
    xva, yva = x[n_train:], yt[n_train:]
    steps = max(n_train // batch_size, 1)
    result = FitResult(model)
    for epoch in range(max_epochs):
        idx = torch.as_tensor(rng.integers(0, n_train, size=(steps, batch_size)))
        for b in idx:
            z = model(xtr[b])
            loss = triplet_hinge_loss(z[:, 0], z[:, 1], z[:, 2], ytr[b], margin)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if len(xva) == 0:
            continue
        with torch.no_grad():
            z = model(xva)
            delta = (z[:, 0] - z[:, 1]).square().sum(-1) - (z[:, 0] - z[:, 2]).square().sum(-1)
            acc = float(((delta > 0) == (yva > 0)).float().mean())
        result.val_acc.append(acc)
        va = result.val_acc
        if epoch > 10 and np.mean(va[-10:]) < np.mean(va[-11:-1]):
            break
    model.eval()
    return result


def fit_pca(feats: np.ndarray, latent_dim: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """AURORA-style unsupervised descriptor: PCA of ``(N, D)`` features.

    Returns ``(mean (D,), components (D, latent_dim))``; project with ``(f - mean) @ comps``.
    """
    mean = feats.mean(axis=0)
    _, _, vt = np.linalg.svd(feats - mean, full_matrices=False)
    return mean, vt[:latent_dim].T


class Autoencoder(nn.Module):
    """AURORA's autoencoder on features: ``D -> 64 -> 32 -> latent -> 32 -> 64 -> D`` (ReLU).

    The encoder's output is the unsupervised descriptor (the paper's ``maze/utils.py`` ``AE``).
    """

    def __init__(self, in_dim: int, latent_dim: int = 2, hidden: tuple[int, int] = (64, 32)):
        super().__init__()
        h1, h2 = hidden
        lat = latent_dim
        self.enc = nn.Sequential(
            nn.Linear(in_dim, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, lat)
        )
        self.dec = nn.Sequential(
            nn.Linear(lat, h2), nn.ReLU(), nn.Linear(h2, h1), nn.ReLU(), nn.Linear(h1, in_dim)
        )

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """Encode features to the latent descriptor."""
        return self.enc(f)

    def reconstruct(self, f: torch.Tensor) -> torch.Tensor:
        """Decode(encode(f))."""
        return self.dec(self.enc(f))

    @torch.no_grad()
    def project(self, f: np.ndarray) -> np.ndarray:
        """NumPy in, latent NumPy out."""
        return self(torch.as_tensor(f, dtype=torch.float32)).numpy().astype(np.float64)

    @torch.no_grad()
    def reconstruction_error(self, f: np.ndarray) -> float:
        """Mean squared reconstruction error on ``(N, D)`` features."""
        x = torch.as_tensor(f, dtype=torch.float32)
        return float((self.reconstruct(x) - x).square().mean())


@dataclass
class AEFitResult:
    """A fitted autoencoder and its validation reconstruction errors per epoch."""

    model: Autoencoder
    val_loss: list[float] = field(default_factory=list)
    epochs: int = 0


def fit_autoencoder(
    feats: np.ndarray,
    latent_dim: int = 2,
    lr: float = 1e-3,
    batch_size: int = 32,
    max_epochs: int = 1000,
    val_frac: float = 0.25,
    seed: int = 0,
) -> AEFitResult:
    """Fit a fresh :class:`Autoencoder` on ``(N, D)`` features (official ``fit_ae``).

    MSE reconstruction, Adam, the first ``1 - val_frac`` of the rows train (epochs of
    ``n_train // batch_size`` batches drawn with replacement), the rest validate; stops when
    the mean validation loss of the last 10 epochs exceeds that of the 10 before (after
    epoch 10; the official loop has no epoch cap, ``max_epochs`` bounds it here).
    """
    feats = np.asarray(feats, np.float32)
    if feats.ndim != 2 or len(feats) < 2:
        raise ValueError(f"feats must be (N >= 2, D), got {feats.shape}")
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Autoencoder(feats.shape[1], latent_dim)
    with torch.no_grad():  # seeded init, PyTorch's default Linear scheme
        for mod in model.modules():
            if isinstance(mod, nn.Linear):
                bound = 1.0 / np.sqrt(mod.in_features)
                mod.weight.uniform_(-bound, bound, generator=gen)
                mod.bias.uniform_(-bound, bound, generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n_train = min(max(1, int(len(feats) * (1.0 - val_frac))), len(feats) - 1)
    x = torch.as_tensor(feats)
    xtr, xva = x[:n_train], x[n_train:]
    steps = max(n_train // batch_size, 1)
    result = AEFitResult(model)
    for epoch in range(max_epochs):
        idx = torch.as_tensor(rng.integers(0, n_train, size=(steps, batch_size)))
        for b in idx:
            loss = (model.reconstruct(xtr[b]) - xtr[b]).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            result.val_loss.append(float((model.reconstruct(xva) - xva).square().mean()))
        result.epochs = epoch + 1
        vl = result.val_loss
        if epoch + 1 > 10 and np.mean(vl[-10:]) > np.mean(vl[-11:-1]):
            break
    model.eval()
    return result
