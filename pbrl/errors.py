"""Errors a run reports to its user, importable without torch.

The command-line entry points catch these to print the message (not a traceback) and exit
non-zero; keeping them here lets ``pbrl-train`` refuse a bad resume before it pays for
importing the training stack.
"""

from __future__ import annotations


class RunError(RuntimeError):
    """A run cannot go on; the message says why and what was saved."""


__all__ = ["RunError"]
