"""benchmarks/icpl_bench.py --summary --records: a run's numbers outlive its run dir."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from .test_bench_reference import _bench

RECORDS = Path(__file__).resolve().parents[2] / "benchmarks/icpl_answers/halfcheetah-1m/records"


def _args(runs: Path, records: Path | None, seeds: list[int]) -> argparse.Namespace:
    return argparse.Namespace(
        runs_dir=str(runs),
        records=None if records is None else str(records),
        teachers=["proxy", "random"],
        seeds=seeds,
        budgets=[49, 150, 1500],
        env="halfcheetah",
        model_note="test",
    )


def test_the_committed_records_rebuild_the_1m_tables(tmp_path: Path) -> None:
    body = _bench().summarise(_args(tmp_path / "gone", RECORDS, [0, 1]))
    rows = [line for line in body.splitlines() if line.startswith("| ")]
    assert "| proxy | 2 | 4157.9 ± 255.0 | 5018.6 ± 168.0 |" in "\n".join(rows)
    assert any(r.startswith("| proxy | 2 | 3672.2 ± 568.5 | 4240.7, 3103.7 |") for r in rows)
    assert any(r.startswith("| PrefPPO 49 queries | 2 | 49 | ") for r in rows)
    assert any(r.startswith("| PPO on the true reward (reference) | 2 |") for r in rows)


def test_a_finished_run_dir_is_recorded_and_read_back(tmp_path: Path) -> None:
    runs, records = tmp_path / "runs", tmp_path / "records"
    ref = json.loads((RECORDS / "ppo-true-s0.json").read_text())
    run = runs / "ppo-true-s0"
    run.mkdir(parents=True)
    metrics = {k: v for k, v in ref.items() if k not in ("cmd", "overrides")}
    (run / "final_metrics.json").write_text(json.dumps(metrics))
    (run / "bench_run.json").write_text(
        json.dumps({"cmd": ref["cmd"], "overrides": ref["overrides"]})
    )
    records.mkdir()
    for name in ("prefppo-q49-s0", "proxy-s0"):  # the reference rows sit in PrefPPO's table
        shutil.copy(RECORDS / f"{name}.json", records / f"{name}.json")
    bench = _bench()
    first = bench.summarise(_args(runs, records, [0]))
    assert json.loads((records / "ppo-true-s0.json").read_text()) == ref  # written from the dir
    shutil.rmtree(run)
    assert bench.summarise(_args(runs, records, [0])) == first  # the dir gone: the record
    assert "1638.8" in first
