"""The ``torch_threads`` setting of the training commands.

torch runs its CPU ops on one thread per core by default. For pbrl's networks (MLPs of a few
hundred units, batches of a few hundred rows) a second thread gains little on an idle machine,
and where the cores are shared — another job, a ``--multirun`` sweep, the rest of a laptop —
it costs far more: torch's worker threads wait for each other at every op, and a thread whose
core is taken holds up all of them. Measured on a 2-core machine (2026-12-02):

- both cores busy with two other pinned jobs: ``pbrl-train experiment=fast`` ran at 2-4 env
  steps/s with torch's default of 2 threads (not done after 600 s), at 85-137 steps/s with
  one thread (39 s in all);
- idle: ``experiment=fast`` 19.9 s and 18.3 s with one thread, 19.3 s and 15.9 s with two;
  ``experiment=fast num_train_steps=8000`` 32.4 s with one, 40.0 s with two.

So the commands default to one (``torch_threads=null`` gives torch's default).
"""

from __future__ import annotations

from typing import Any


def set_torch_threads(value: Any) -> int:
    """Apply a config's ``torch_threads``: an int >= 1, or ``None`` for torch's default.

    Returns the number of threads torch now uses.

    Raises:
        ValueError: anything else (the message names the key and what it accepts).
    """
    import torch

    if value is None:
        return int(torch.get_num_threads())
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"torch_threads must be a whole number >= 1 or null (torch's default: one per "
            f"core), got {value!r}; 1 is fastest for pbrl's networks on a shared CPU"
        )
    torch.set_num_threads(int(value))
    return int(value)


__all__ = ["set_torch_threads"]
