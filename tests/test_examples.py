"""Smoke test of the single-file reference ``examples/pebble.py`` (CleanRL-style).

It runs the script in a subprocess with tiny budgets and checks the ``FINAL`` line: the label
count equals the budget the flags imply and the evaluation return is finite.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "pebble.py"
ENV = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def expected_labels(total: int, seed: int, unsup: int, interact: int, batch: int, budget: int):
    # Rounds happen at steps seed + unsup + i * interact that fall before the end of training;
    # the last round is clipped so the count never exceeds the budget.
    start = seed + unsup
    rounds = math.ceil((total - start) / interact) if total > start else 0
    return min(budget, rounds * batch)


def test_pebble_example_fast_run_spends_budget(tmp_path: Path) -> None:
    flags = {
        "--total-steps": 1400,
        "--num-seed-steps": 200,
        "--num-unsup-steps": 300,
        "--num-interact": 300,
        "--reward-batch": 20,
        "--max-feedback": 50,  # rounds at 500, 800, 1100 would ask 60: the last one is clipped
    }
    cmd = [sys.executable, str(SCRIPT), "--fast", "--seed", "0"]
    cmd += [str(x) for kv in flags.items() for x in kv]
    # cwd=tmp_path: MuJoCo writes MUJOCO_LOG.TXT into the working directory.
    res = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]

    assert "feedback labels=" in res.stdout and "eval/true_return=" in res.stdout  # progress
    final = re.search(
        r"^FINAL labels=(\d+) eval_return=(\S+) pref_acc=(\S+)$", res.stdout, re.MULTILINE
    )
    assert final, res.stdout[-2000:]
    labels, eval_return, pref_acc = int(final[1]), float(final[2]), float(final[3])
    want = expected_labels(1400, 200, 300, 300, 20, 50)
    assert want == 50
    assert labels == want
    assert math.isfinite(eval_return)
    assert 0.0 <= pref_acc <= 1.0
