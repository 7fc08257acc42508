"""Atomic run checkpoints shared by every loop (online, offline, GPU, C-MORL, RAPL).

One directory per run holds ``checkpoint/state.pt`` (``torch.save`` of the loop's state dict)
and ``checkpoint/meta.json`` (step, time). Kept free of heavy imports so that commands which
only checkpoint do not load stable-baselines3.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["CHECKPOINT", "Checkpointed", "read_checkpoint", "write_checkpoint"]

CHECKPOINT = "checkpoint"


def write_checkpoint(run_dir: Path, state: dict[str, Any], step: int) -> Path:
    """Atomically replace ``run_dir/checkpoint/`` with ``state`` (``state.pt``) and meta.

    The new checkpoint is written and fsynced in ``checkpoint.tmp`` first; the previous one is
    kept as ``checkpoint.old`` until the swap is done, so a kill at any point leaves one
    readable checkpoint (:func:`read_checkpoint` falls back to ``.old``).
    """
    final = run_dir / CHECKPOINT
    tmp = run_dir / (CHECKPOINT + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    with open(tmp / "state.pt", "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    (tmp / "meta.json").write_text(json.dumps({"step": step, "time": time.time()}))
    old = run_dir / (CHECKPOINT + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(run_dir: Path, map_location: str | None = None) -> dict[str, Any] | None:
    """The state saved by :func:`write_checkpoint` in ``run_dir``, or ``None`` if none."""
    for name in (CHECKPOINT, CHECKPOINT + ".old"):
        path = run_dir / name / "state.pt"
        if path.exists():
            return torch.load(path, weights_only=False, map_location=map_location)
    return None


class Checkpointed:
    """Mixin for a run object: :meth:`save_checkpoint` and :meth:`try_resume` on ``run_dir``.

    The class provides ``run_dir``, ``step``, ``state_dict()`` and ``load_state_dict(state)``;
    ``checkpoint_map_location`` is passed to ``torch.load`` (the GPU loop loads onto the CPU
    first).
    """

    run_dir: Path
    checkpoint_map_location: str | None = None

    def save_checkpoint(self) -> Path:
        """Atomically replace ``run_dir/checkpoint/`` with this run's state."""
        return write_checkpoint(self.run_dir, self.state_dict(), self.step)  # type: ignore[attr-defined]

    def try_resume(self) -> bool:
        """Load the run directory's checkpoint if there is one; True if resumed."""
        state = read_checkpoint(self.run_dir, map_location=self.checkpoint_map_location)
        if state is None:
            return False
        self.load_state_dict(state)  # type: ignore[attr-defined]
        print(f"resumed {self.run_dir} at step {self.step:,}", file=sys.stderr)  # type: ignore[attr-defined]
        return True
