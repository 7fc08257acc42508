"""Quality diversity through human feedback (QDHF): MAP-Elites on learned descriptors."""

from pbrl.qd.archive import GridArchive
from pbrl.qd.arm import ArmDomain
from pbrl.qd.maze import MazeDomain
from pbrl.qd.projection import (
    Autoencoder,
    LinearProjection,
    fit_autoencoder,
    fit_pca,
    fit_projection,
    triplet_hinge_loss,
)
from pbrl.qd.qdhf import METHODS, QDConfig, QDHFRun, default_teacher, triplet_query

__all__ = [
    "METHODS",
    "ArmDomain",
    "Autoencoder",
    "GridArchive",
    "LinearProjection",
    "MazeDomain",
    "QDConfig",
    "QDHFRun",
    "default_teacher",
    "fit_autoencoder",
    "fit_pca",
    "fit_projection",
    "triplet_hinge_loss",
    "triplet_query",
]
