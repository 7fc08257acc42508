"""End-to-end runs of ``pbrl-train experiment=fast`` in a subprocess (CleanRL-style smoke tests).

They assert on what the run wrote: the event file, the feedback store, the checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pbrl.store import FeedbackStore

ENV = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
TRAIN = [sys.executable, "-c", "from pbrl.cli import train; train()"]


def train(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*TRAIN, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    out = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    out["__images__"] = acc.Tags()["images"]  # type: ignore[assignment]
    return out


@pytest.mark.parametrize("agent", ["pebble", "prefppo"])
def test_fast_run_writes_events_store_and_checkpoint(agent: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    res = train([f"agent={agent}", "experiment=fast", f"hydra.run.dir={run_dir}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "labels" in res.stdout and "steps/s" in res.stdout  # progress lines
    for name in ("config.yaml", "final_metrics.json", "feedback.sqlite", "checkpoint/state.pt"):
        assert (run_dir / name).exists(), name

    tags = scalars(run_dir)
    for tag in (
        "eval/true_return",
        "eval/learned_return",
        "pref/accuracy_labelled",
        "pref/accuracy_heldout",
        "reward/pearson",
        "reward/spearman",
        "pref/labels",
        "pref/skips",
        "losses/reward",
        "charts/sps",
    ):
        assert tag in tags, f"{tag} missing from {sorted(tags)}"
    assert "videos/eval_rollout" in tags["__images__"]
    assert any(t.startswith("losses/") and t != "losses/reward" for t in tags)  # SAC/PPO losses

    # fast: max_feedback 40 in rounds of 10; the oracle teacher never skips.
    with FeedbackStore(run_dir / "feedback.sqlite") as store:
        assert store.num_queries() == 40
        assert store.num_labels() == 40
        assert store.counts()["skip"] == 0
        obs, act, target = store.training_arrays()
    assert obs.shape[:3] == (40, 2, 25)
    assert tags["pref/labels"][-1][1] == 40
    final = json.loads((run_dir / "final_metrics.json").read_text())
    assert final["pref/labels"] == 40


def test_unknown_choices_list_valid_options(tmp_path: Path) -> None:
    res = train(["env=not_an_env", "experiment=fast"], tmp_path)
    assert res.returncode != 0
    msg = res.stderr + res.stdout
    assert "not_an_env" in msg and "halfcheetah" in msg and "walker_walk" in msg
    res = train(["teacher=grumpy", "experiment=fast"], tmp_path)
    assert res.returncode != 0 and "oracle" in res.stderr + res.stdout


def _final_without_timing(run_dir: Path) -> dict[str, float]:
    final = json.loads((run_dir / "final_metrics.json").read_text())
    return {k: v for k, v in final.items() if not k.startswith(("charts/", "losses/time"))}


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path: Path, spawn: Callable) -> None:
    common = ["experiment=fast", "num_train_steps=2500", "checkpoint.every=500", "seed=5"]
    # The uninterrupted reference runs beside the run to be killed (one core each: every
    # run is pinned to one torch thread), so the test costs about one run less.
    ref_dir = tmp_path / "ref"
    ref_err = tmp_path / "ref.stderr"  # a file, not a pipe: nothing can block on a full pipe
    with ref_err.open("wb") as err:
        ref = spawn(
            [*TRAIN, *common, f"hydra.run.dir={ref_dir}"],
            cwd=tmp_path,
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )

    run_dir = tmp_path / "killed"
    proc = spawn(
        [*TRAIN, *common, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def checkpoint_step() -> int:
        # The writer swaps checkpoint/ for a new one (checkpoint.old in between): a poll can
        # fall in that window, so a missing file means "look again", not an error.
        for name in ("checkpoint", "checkpoint.old"):
            try:
                return int(json.loads((run_dir / name / "meta.json").read_text())["step"])
            except FileNotFoundError:
                continue
        return -1

    deadline = time.time() + 240
    while time.time() < deadline:
        if checkpoint_step() >= 1500:
            break
        if proc.poll() is not None:
            pytest.fail("run finished before it could be killed: " + proc.stderr.read().decode())
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "final_metrics.json").exists()

    # pbrl-train pointed at the run directory resumes it.
    res = train([str(run_dir)], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed" in res.stderr
    assert ref.wait(timeout=300) == 0, ref_err.read_text()[-3000:]

    with (
        FeedbackStore(ref_dir / "feedback.sqlite") as a,
        FeedbackStore(run_dir / "feedback.sqlite") as b,
    ):
        assert a.num_labels() == b.num_labels() == 40
        assert a.num_queries() == b.num_queries()
    # Same seed, same checkpointed RNG and env states: the metrics match exactly.
    assert _final_without_timing(run_dir) == _final_without_timing(ref_dir)


def test_resume_refuses_a_different_config(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = ["experiment=fast", "num_train_steps=600", f"hydra.run.dir={run_dir}"]
    assert train(args, tmp_path).returncode == 0
    res = train([*args, "max_feedback=20", "resume=true"], tmp_path)
    assert res.returncode != 0
    assert "max_feedback" in res.stderr and "refusing to resume" in res.stderr

    # A feedback store written by another schema version is refused, not misread.
    with sqlite3.connect(run_dir / "feedback.sqlite") as con:
        con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    res = train([str(run_dir)], tmp_path)
    assert res.returncode != 0
    assert "schema" in res.stderr.lower() and "99" in res.stderr
    assert "Traceback" not in res.stderr


def test_a_refused_resume_fails_before_importing_the_training_stack(tmp_path: Path) -> None:
    # The config check runs before torch and SB3 are imported, so the refusal is immediate.
    (tmp_path / "config.yaml").write_text("resume: false\nseed: 0\nagent:\n  algo: sac\n")
    code = (
        "import sys\n"
        "from omegaconf import OmegaConf\n"
        "from pbrl.cli import ResumeError, run\n"
        "cfg = OmegaConf.create({'resume': True, 'seed': 1, 'agent': {'algo': 'sac'}})\n"
        "try:\n"
        f"    run(cfg, {str(tmp_path)!r})\n"
        "except ResumeError as err:\n"
        "    print('refused:', err)\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "refused:" in res.stdout and "seed: 0 (run) vs 1 (now)" in res.stdout
    assert "torch imported: False" in res.stdout


def test_multirun_sweeps_seeds_with_every_choice_from_config(tmp_path: Path) -> None:
    res = train(
        [
            "--multirun",
            "agent=prefppo",
            "teacher=noisy",
            "query=entropy",
            "env=hopper",
            "experiment=fast",
            "max_feedback=20",
            "num_train_steps=1300",
            "seed=0,1",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    runs = sorted((tmp_path / "sweep").glob("*-s*"))
    assert [r.name for r in runs] == ["0-s0", "1-s1"]
    for seed, run_dir in enumerate(runs):
        cfg = (run_dir / "config.yaml").read_text()
        assert f"seed: {seed}" in cfg and "name: noisy" in cfg and "name: entropy" in cfg
        with FeedbackStore(run_dir / "feedback.sqlite") as store:
            assert store.num_queries() == 20
            selectors = {store.get_query(q).selector for q in store.query_ids()}
        assert selectors == {"uniform", "entropy"}  # first round uniform, then entropy


def test_torch_threads_setting_is_applied_checked_and_free_on_resume() -> None:
    import torch
    from omegaconf import OmegaConf

    from pbrl.cli import config_diff
    from pbrl.threads import set_torch_threads

    before = torch.get_num_threads()
    try:
        assert set_torch_threads(1) == 1 and torch.get_num_threads() == 1
        assert set_torch_threads(None) == 1  # null: leave torch's setting
        for bad in (0, -2, 1.5, "two", True):
            with pytest.raises(ValueError, match="torch_threads must be a whole number >= 1"):
                set_torch_threads(bad)
    finally:
        torch.set_num_threads(before)
    # how a process runs, not what it computes: a run made before the key existed, or with
    # another value, still resumes; any other difference is refused
    saved = OmegaConf.create({"seed": 0, "agent": {"lr": 0.1}})
    now = OmegaConf.create({"seed": 0, "agent": {"lr": 0.1}, "torch_threads": 1, "resume": True})
    assert config_diff(saved, now) == []
    now.agent.lr = 0.2
    assert config_diff(saved, now) == ["agent.lr: 0.1 (run) vs 0.2 (now)"]


def test_training_loops_run_torch_on_the_configured_threads(tmp_path: Path) -> None:
    import torch
    from hydra import compose, initialize_config_module

    from pbrl.loops.online import PreferenceLoop

    before = torch.get_num_threads()
    with initialize_config_module("pbrl.configs", version_base="1.3"):
        cfg = compose("train", overrides=["experiment=fast", "log.progress=none"])
    assert cfg.torch_threads == 1  # the default: see pbrl/threads.py
    try:
        torch.set_num_threads(2)
        loop = PreferenceLoop(cfg, tmp_path / "run")
        loop.close()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
