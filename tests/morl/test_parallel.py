"""`parallel=ray`: stage-1 and stage-2 jobs as Ray tasks give the serial front."""

import dataclasses
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from pbrl.morl.cli import build_configs, run
from pbrl.morl.cmorl import CMORL

TINY = ["experiment=fast", "select=none"]


def compose_front(overrides: list[str]):
    with initialize_config_module(config_module="pbrl.configs.front", version_base="1.3"):
        return compose(config_name="front", overrides=overrides)


def test_parallel_ray_without_ray_names_the_extra(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees without the extra
    with pytest.raises(ImportError, match=r"pip install 'pbrl\[ray\]'"):
        run(compose_front([*TINY, "parallel=ray"]), tmp_path)
    assert not (tmp_path / "config.yaml").exists()  # nothing claimed: a rerun may start here
    with pytest.raises(ValueError, match="parallel must be one of"):
        build_configs(compose_front([*TINY, "parallel=dask"]))


@pytest.mark.slow  # ~10 s to start Ray on 2 cores
def test_ray_front_equals_the_serial_front(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray", reason="needs ray: pip install 'pbrl[ray]'")
    cfg, _ = build_configs(compose_front(TINY))
    serial = CMORL(cfg, tmp_path / "serial").run()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        par = CMORL(dataclasses.replace(cfg, parallel="ray", workers=2), tmp_path / "ray").run()
    finally:
        ray.shutdown()
    # every job is a pure function of its spec, so the Ray front is the serial one bit for bit
    assert par["front_returns"] == serial["front_returns"] and par["hv"] == serial["hv"]
    assert par["env_steps"] == serial["env_steps"] == 4800
    assert len(list((tmp_path / "ray" / "policies").glob("ext*.pt"))) > 0
