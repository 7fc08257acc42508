"""Time pbrl-qd's archive backends (built-in ``pbrl`` vs pyribs ``ribs``) on the same inserts.

The stream is shaped like the arm experiment: a 50x50 grid, 10-D solutions, 12 extras per
elite, 1000 batches of 100; each iteration samples 100 elites and inserts a batch, as
``QDHFRun`` does. Needs ``pip install 'pbrl[qd]'``. Usage::

    OMP_NUM_THREADS=1 python examples/qd_archive_speed.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from pbrl.qd.archive import make_archive


def one_pass(backend: str, batches: list[tuple[np.ndarray, ...]]) -> float:
    """Seconds to run the whole stream through a fresh archive of ``backend``."""
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    arch = make_archive(backend, (50, 50), [0.0, 0.0], [1.0, 1.0], 10, extra_dim=12)
    for i, (sols, obj, meas, ex) in enumerate(batches):
        if i:
            arch.sample_elites(len(obj), rng)
        arch.add(sols, obj, meas, ex)
    return time.perf_counter() - t0


def main() -> None:
    """Print the median seconds per backend and their ratio."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--iterations", type=int, default=1000)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    batches = [
        (
            rng.standard_normal((100, 10)),
            rng.random(100) * 100,
            rng.uniform(-0.1, 1.1, (100, 2)),
            rng.standard_normal((100, 12)),
        )
        for _ in range(args.iterations)
    ]
    times = {b: [] for b in ("pbrl", "ribs")}
    for _ in range(args.repeats):  # interleaved, so that load changes hit both
        for b in times:
            times[b].append(one_pass(b, batches))
    med = {b: float(np.median(t)) for b, t in times.items()}
    print(
        f"{args.iterations} batches x100, 50x50: pbrl {med['pbrl']:.3f}s, ribs "
        f"{med['ribs']:.3f}s (median of {args.repeats}): ribs/pbrl = "
        f"{med['ribs'] / med['pbrl']:.1f}x"
    )


if __name__ == "__main__":
    main()
