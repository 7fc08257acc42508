"""Time pbrl-qd's archive backends (built-in ``pbrl`` vs pyribs ``ribs``) on the same inserts.

The stream is shaped like the arm experiment: a 50x50 grid, 10-D solutions, 12 extras per
elite, 1000 batches of 100; each iteration samples 100 elites and inserts a batch, as
``QDHFRun`` does. Needs ``pip install 'pbrl[qd]'``. Usage::

    OMP_NUM_THREADS=1 python benchmarks/qd_archive_speed.py [--repeats 3] [--write-results]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from results_md import write_section  # noqa: E402

from pbrl.qd.archive import make_archive  # noqa: E402


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
    p.add_argument("--write-results", action="store_true", help="update benchmarks/RESULTS.md")
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
    line = (
        f"{args.iterations} batches x100, 50x50: pbrl {med['pbrl']:.3f}s, ribs "
        f"{med['ribs']:.3f}s (median of {args.repeats}): ribs/pbrl = "
        f"{med['ribs'] / med['pbrl']:.1f}x"
    )
    print(line)
    if args.write_results:
        cmd = "python benchmarks/qd_archive_speed.py " + " ".join(sys.argv[1:])
        body = (
            f"`OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} {cmd}`, "
            f"{datetime.date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} "
            "CPU cores (shared). The arm experiment's archive traffic: a 50 x 50 grid, 10-D "
            "solutions, 12 extras per elite; per iteration 100 elites sampled, then a batch of "
            "100 inserted (as `QDHFRun` does); both backends on the same stream, interleaved in "
            "one process.\n\n"
            "| backend | s (median) | runs (s) |\n|---|---|---|\n"
            + "".join(
                f"| {b} | {med[b]:.3f} | {' / '.join(f'{t:.3f}' for t in times[b])} |\n"
                for b in times
            )
            + f"\npyribs (`archive_backend=ribs`) / built-in: {med['ribs'] / med['pbrl']:.1f}x. "
            "Both give identical archives and final metrics (tests/test_qd_ribs.py); the "
            "built-in archive stays the default. The first ribs pass includes importing pyribs. "
            "Paper: no archive timing (the QDHF code uses pyribs)."
        )
        write_section("QD archive backends: built-in vs pyribs (issue 6)", body)


if __name__ == "__main__":
    main()
