"""`pbrl-front experiment=fast` in a subprocess, asserting on the front it saved."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pbrl.morl.metrics import EvalProtocol, score_front
from pbrl.morl.ppo import policy_from_state

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def front_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    code = "from pbrl.morl.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.mark.parametrize("method", ["cmorl", "pgmorl"])
def test_front_fast_run_saves_front_events_and_selection(tmp_path: Path, method: str) -> None:
    run = tmp_path / "run"
    res = front_cli(["experiment=fast", f"method={method}", f"hydra.run.dir={run}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    saved = json.loads((run / "front.json").read_text())
    final = json.loads((run / "final_metrics.json").read_text())
    assert saved["objectives"] == ["x", "y"] and saved["ref_point"] == [0.0, 0.0]
    by_id = {p["id"]: p for p in saved["policies"]}
    front = np.array([by_id[i]["returns"] for i in saved["front"]])
    # the saved front is the one scored: recompute with the same evaluator settings
    prot = EvalProtocol(episodes=2, max_steps=20, gamma=1.0, ref_point=(0.0, 0.0))
    assert score_front(front, prot)["hv"] == pytest.approx(final["hv"])
    assert final["env_steps"] == 4800 and final["cardinality"] == len(front) >= 2
    # the toy's front lies inside the quarter circle of radius 20 and beats a random policy
    assert (np.linalg.norm(front, axis=1) <= 20 + 1e-6).all() and final["hv"] > 50
    stages = {p["stage"] for p in saved["policies"]}
    assert stages == ({"init", "extend"} if method == "cmorl" else {"init", "evolve"})
    state = torch.load(by_id[saved["front"][0]]["path"], weights_only=False)
    assert policy_from_state(state).act(np.zeros((3, 3), np.float32)).shape == (3, 2)
    acc = EventAccumulator(str(run), size_guidance={"images": 0})
    acc.Reload()
    assert {"front/hv", "front/eu", "front/sparsity", "front/cardinality",
            "select/regret"} <= set(acc.Tags()["scalars"])  # fmt: skip
    assert "front/plot" in acc.Tags()["images"]
    assert acc.Scalars("front/hv")[-1].step == 4800
    sel = json.loads((run / "selection.json").read_text())
    assert sel["policy_id"] in saved["front"] and sel["queries"] == len(front) - 1
    assert sel["regret"] >= 0 and sel["best_utility"] == pytest.approx((front @ [0.5, 0.5]).max())
