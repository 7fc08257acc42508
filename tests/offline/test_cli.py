"""End to end: `pbrl-dataset make` on hopper, then `pbrl-offline experiment=fast` per agent in a
subprocess (asserting on what it wrote), CPL learning on that data, and bit-exact resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pbrl.offline.cli import OfflineRun, dataset_main
from pbrl.offline.cpl import CPLAgent, CPLConfig
from pbrl.offline.data import BatchSampler, load_preferences
from pbrl.offline.dataset import make_dataset

ENV = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def cli(fn: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    code = f"from pbrl.offline.cli import {fn}; {fn}()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cli")
    common = ["env=hopper", "policy=random", "episodes=150", "segment_size=10", "num_envs=4"]
    args = ["make", *common, f"out={tmp}/pairs.npz", "mode=pairs", "segments=400",
            "labels=[future_return]", "foresee=50"]  # fmt: skip
    res = cli("dataset_main", args, tmp)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "wrote" in res.stdout and (tmp / "pairs.json").exists()
    make_dataset("hopper", tmp / "rank.npz", policy="random", labels=["return", "future_return"],
                 mode="rank", episodes=150, segments=600, segment_size=10, num_envs=4,
                 log=lambda s: None)  # fmt: skip
    return tmp


def test_dataset_make_usage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["pbrl-dataset", "env=hopper"])
    with pytest.raises(SystemExit) as exc:
        dataset_main()
    assert exc.value.code == 2
    monkeypatch.setattr(sys, "argv", ["pbrl-dataset", "--help"])  # asked for: usage, exit 0
    with pytest.raises(SystemExit) as exc:
        dataset_main()
    assert exc.value.code == 0
    monkeypatch.setattr(sys, "argv", ["pbrl-dataset", "make", "env=hopper", "out=x.npz",
                                      "mode=rank", "labels=[oracle]", "episodes=2",
                                      "segment_size=2", "num_envs=1"])  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        dataset_main()
    assert exc.value.code == 1


def _check_run(run_dir: Path) -> None:
    for name in ("config.yaml", "final_metrics.json", "checkpoint/state.pt", "overrides.yaml"):
        assert (run_dir / name).exists(), name
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"eval/true_return", "pref/accuracy_heldout", "losses/loss", "charts/sps"} <= tags
    assert [e.step for e in acc.Scalars("eval/true_return")] == [40, 60]
    final = json.loads((run_dir / "final_metrics.json").read_text())
    assert final["eval/episode_length"] > 0
    assert json.loads((run_dir / "checkpoint/meta.json").read_text())["step"] == 60


def test_offline_fast_runs_of_every_agent_write_events_and_resume(
    datasets: Path, spawn: Callable
) -> None:
    # The OPPO run goes beside the sweep (independent runs, one torch thread each).
    oppo = datasets / "oppo"
    code = "from pbrl.offline.cli import main; main()"
    oppo_err = datasets / "oppo.stderr"  # a file, not a pipe: nothing can block on a full pipe
    with oppo_err.open("wb") as err:
        oppo_run = spawn(
            [sys.executable, "-c", code, f"dataset={datasets / 'pairs.npz'}", "agent=oppo",
             "experiment=fast", f"hydra.run.dir={oppo}"],
            cwd=datasets, env=ENV, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    sweep = datasets / "sweep"
    res = cli("main", ["--multirun", f"dataset={datasets / 'rank.npz'}", "teacher_id=return",
                       "agent=cpl,sft,piql", "agent.segment_length=6", "experiment=fast",
                       f"hydra.sweep.dir={sweep}"], datasets)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "steps/s" in res.stdout
    _check_run(sweep / "0-cpl-s0")
    _check_run(sweep / "1-sft-s0")
    _check_run(sweep / "2-piql-s0")
    acc = EventAccumulator(str(sweep / "2-piql-s0"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    # reward phase (steps 1-20) then IQL: both phases logged
    assert {"losses/reward_loss", "losses/q_loss", "losses/v_loss", "train/awr_weight"} <= tags
    assert [e.step for e in acc.Scalars("losses/reward_loss")] == [20]
    assert [e.step for e in acc.Scalars("losses/q_loss")] == [40, 60]
    assert oppo_run.wait(timeout=300) == 0, oppo_err.read_text()[-3000:]
    _check_run(oppo)
    # 10-step segments, 8-step windows: the label/window offset is pointed out
    assert "build the dataset with segment_size=8" in oppo_err.read_text()
    # resuming a finished run loads its checkpoint and stops at once
    res = cli("main", [str(oppo)], datasets)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed" in res.stderr and "at step 60" in res.stderr


def test_cpl_learns_to_prefer_preferred_segments(datasets: Path) -> None:
    torch.manual_seed(0)
    data = load_preferences(datasets / "rank.npz", "return")
    train, held = data.split(0.2, seed=0)
    sampler = BatchSampler(train, "rank", seed=0)
    held_batch = BatchSampler(held, "rank", seed=1).sample(512)
    cfg = CPLConfig(bc_steps=50, warmup_steps=20, hidden=(64, 64), lr=1e-3, bias=0.5,
                    fused_adam=False)  # fmt: skip
    agent = CPLAgent(data.obs_dim, data.act_dim, cfg)
    before = agent.evaluate_pairs(held_batch)
    losses = [agent.update(sampler.sample(32), s)["cpl_loss"] for s in range(400)]
    after = agent.evaluate_pairs(held_batch)
    first, last = sum(losses[50:100]) / 50, sum(losses[-50:]) / 50
    assert last < first - 0.05
    assert after["cpl_loss"] < before["cpl_loss"]
    assert after["accuracy"] > 0.65 > before["accuracy"]


def test_resume_continues_bit_exactly(datasets: Path, tmp_path: Path) -> None:
    def cfg(steps: int):  # type: ignore[no-untyped-def]
        with initialize_config_module("pbrl.configs.offline", version_base="1.3"):
            return compose("offline", [f"dataset={datasets / 'rank.npz'}", "teacher_id=return",
                                       "experiment=fast", f"num_steps={steps}", "eval.every=1000",
                                       "log.progress=none"])  # fmt: skip

    straight = OfflineRun(cfg(50), tmp_path / "a")
    straight.run()
    straight.close()
    first = OfflineRun(cfg(25), tmp_path / "b")
    first.run()
    first.close()
    second = OfflineRun(cfg(50), tmp_path / "b")
    assert second.try_resume() and second.step == 25
    second.run()
    second.close()
    for (k, p), q in zip(straight.agent.actor.state_dict().items(),
                         second.agent.actor.state_dict().values(), strict=False):  # fmt: skip
        assert torch.equal(p, q), k


def test_a_run_saved_before_fast_dropout_existed_resumes_as_it_ran(
    datasets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from omegaconf import OmegaConf

    from pbrl.offline.cli import run

    def cfg(steps: int, *extra: str):  # type: ignore[no-untyped-def]
        with initialize_config_module("pbrl.configs.offline", version_base="1.3"):
            return compose("offline", [f"dataset={datasets / 'rank.npz'}", "teacher_id=return",
                                       "experiment=fast", f"num_steps={steps}", "eval.every=1000",
                                       "log.progress=none", *extra])  # fmt: skip

    # what pbrl did before the key existed: torch's nn.Dropout, straight through 50 steps
    straight = OfflineRun(cfg(50, "agent.fast_dropout=false"), tmp_path / "a")
    straight.run()
    straight.close()
    # the same run stopped at step 25 (its checkpoint) by that pbrl, whose saved config has
    # no such key
    run(cfg(25, "agent.fast_dropout=false"), tmp_path / "b")
    saved = OmegaConf.load(tmp_path / "b" / "config.yaml")
    del saved.agent["fast_dropout"]
    saved.num_steps = 50
    OmegaConf.save(saved, tmp_path / "b" / "config.yaml")
    # resumed now, when the composed config gives today's default (FastDropout)
    now = cfg(50, "resume=true")
    assert now.agent.fast_dropout is True
    capsys.readouterr()
    run(now, tmp_path / "b")
    assert "continuing it as it ran: agent.fast_dropout=False" in capsys.readouterr().err
    assert now.agent.fast_dropout is False
    done = OfflineRun(now, tmp_path / "b")
    assert done.try_resume() and done.step == 50
    for (k, p), q in zip(straight.agent.actor.state_dict().items(),
                         done.agent.actor.state_dict().values(), strict=True):  # fmt: skip
        assert torch.equal(p, q), k  # bit for bit: it went on with nn.Dropout
    done.close()
