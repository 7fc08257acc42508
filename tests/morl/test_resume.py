"""Checkpoint and resume of `pbrl-front`: a run killed with SIGKILL continues to the same front."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pbrl.cli import ResumeError
from pbrl.morl.cli import check_resume, prepare_argv, run

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
# experiment=fast without the teacher: stage 1 (3 jobs, 2400 steps), then two extension rounds
# (4 jobs of 400 steps, then 4 of 200): 4800 steps in 11 jobs.
TINY = ["experiment=fast", "select=none"]


def compose_front(overrides: list[str]) -> DictConfig:
    with initialize_config_module(config_module="pbrl.configs.front", version_base="1.3"):
        return compose(config_name="front", overrides=overrides)


def policies(run_dir: Path) -> tuple[list[dict], list[int]]:
    """Every archived policy without its file path (it names the run directory), and the front."""
    saved = json.loads((run_dir / "front.json").read_text())
    return [{k: v for k, v in p.items() if k != "path"} for p in saved["policies"]], saved["front"]


def hv_steps(run_dir: Path) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars("front/hv")]


def test_killed_front_run_resumes_to_the_uninterrupted_front(tmp_path: Path) -> None:
    killed = tmp_path / "killed"
    code = "from pbrl.morl.cli import main; main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *TINY, f"hydra.run.dir={killed}"],
        cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    meta = killed / "checkpoint" / "meta.json"
    step = 0
    deadline = time.time() + 120
    try:
        # kill once stage 1 is recorded and one job of the first extension round has finished
        while step <= 2400 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
            try:
                step = json.loads(meta.read_text())["step"]
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                continue
        alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        err = proc.communicate()[1].decode()
        killed_at = time.time()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert alive and 2400 < step < 4800, f"not killed mid-way (step {step}):\n{err[-2000:]}"
    assert not (killed / "final_metrics.json").exists()

    # resume through the CLI's own argument handling: `pbrl-front <run dir>`
    argv = prepare_argv([str(killed)])
    assert "resume=true" in argv and f"hydra.run.dir={killed}" in argv
    resumed = run(compose_front([*TINY, "resume=true"]), killed)
    # it continued: stage 1's policy files were written before the kill and not again
    init_files = sorted((killed / "policies").glob("init-*.pt"))
    assert init_files and all(f.stat().st_mtime < killed_at for f in init_files)
    later = sorted((killed / "policies").glob("ext1-*.pt"))
    assert later and all(f.stat().st_mtime > killed_at for f in later)
    reference = tmp_path / "reference"
    straight = run(compose_front(TINY), reference)

    # The same front bit for bit: jobs are pure functions of their specs, so a job killed
    # mid-way and rerun from its start gives the same policies and returns.
    assert policies(killed) == policies(reference)
    assert resumed["front_returns"] == straight["front_returns"] and resumed["hv"] == straight["hv"]
    assert resumed["env_steps"] == straight["env_steps"] == 4800
    assert resumed["eval_steps"] == straight["eval_steps"]
    ref_hist = json.loads((reference / "history.json").read_text())
    hist = json.loads((killed / "history.json").read_text())
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in hist] == [
        {k: v for k, v in r.items() if k not in drop} for r in ref_hist
    ]
    # TensorBoard: one point per round, none duplicated by the resume
    assert hv_steps(killed) == hv_steps(reference)
    assert [s for s, _ in hv_steps(killed)] == [2400, 4000, 4800]


def test_resume_refuses_another_config_and_a_fresh_start_over_a_run(tmp_path: Path) -> None:
    (tmp_path / "checkpoint").mkdir()
    cfg = compose_front(TINY)
    with pytest.raises(ResumeError, match="already holds a front run"):
        check_resume(cfg, tmp_path)
    with pytest.raises(ResumeError, match="holds no run"):
        check_resume(compose_front([*TINY, "resume=true"]), tmp_path)
    from omegaconf import OmegaConf

    OmegaConf.save(cfg, tmp_path / "config.yaml", resolve=True)
    with pytest.raises(ResumeError, match=r"(?s)different config.*seed: 0 \(run\) vs 1 \(now\)"):
        check_resume(compose_front([*TINY, "resume=true", "seed=1"]), tmp_path)
    # The refusal names what may change, from the same set the check skips (a group as .*).
    with pytest.raises(ResumeError) as err:
        check_resume(compose_front([*TINY, "resume=true", "seed=1"]), tmp_path)
    assert str(err.value).endswith("(only human.*, parallel, ray_address, workers may change)."), (
        str(err.value)
    )
    # how jobs are executed may change on a resume
    check_resume(compose_front([*TINY, "resume=true", "workers=2", "human.port=9000"]), tmp_path)
    with pytest.raises(ResumeError, match="not a pbrl-front run directory"):
        prepare_argv([str(tmp_path / "nowhere")])


class Crash(Exception):
    pass


def test_pgmorl_resumes_its_samples_population_and_generator(tmp_path: Path) -> None:
    # PGMORL's own state (prediction samples, population, task-selection generator) goes
    # through the same checkpoint; a crash after the first evolution stage is logged.
    from pbrl.morl.cli import build_configs
    from pbrl.morl.pgmorl import PGMORL

    cfg, _ = build_configs(
        compose_front([*TINY, "method=pgmorl", "pgmorl.num_weight_candidates=4"])
    )

    def crash(stage: str, *_: object) -> None:
        if stage == "evolution0":
            raise Crash

    with pytest.raises(Crash):
        PGMORL(cfg, tmp_path / "crashed", crash).run()
    runner = PGMORL(cfg, tmp_path / "crashed")
    assert runner.try_resume() and runner.rounds_done == 1 and runner.plan is not None
    assert len(runner.samples) == 3 and runner.population
    resumed = runner.run()
    straight = PGMORL(cfg, tmp_path / "reference").run()
    assert policies(tmp_path / "crashed") == policies(tmp_path / "reference")
    assert resumed["front_returns"] == straight["front_returns"]
