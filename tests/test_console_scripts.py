"""The installed console scripts find their Hydra configs wherever they are run from.

A console script imports its module by name (``pbrl.qd.cli``), so Hydra loads the config
directory as the package ``pbrl.configs.<x>`` (``pkg://``), which needs an ``__init__.py``;
``python -m`` and the tests' in-process calls load it as a file path and never notice.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

import pbrl

ROOT = Path(pbrl.__file__).parent
MAIN = re.compile(r'@hydra\.main\(config_path="([^"]+)", config_name="([^"]+)"')


def _hydra_mains() -> list[tuple[str, str, str]]:
    """(source file, config package, config name) of every ``@hydra.main`` in pbrl."""
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        for rel, name in MAIN.findall(path.read_text()):
            pkg_dir = (path.parent / rel).resolve().relative_to(ROOT.parent)
            out.append((str(path.relative_to(ROOT)), ".".join(pkg_dir.parts), name))
    return out


MAINS = _hydra_mains()


def test_every_command_is_found() -> None:
    files = {f for f, _, _ in MAINS}
    assert {"cli.py", "qd/cli.py", "icpl/cli.py", "visual/train.py", "offline/cli.py",
            "morl/cli.py"} <= files  # fmt: skip


@pytest.mark.parametrize(("src", "package", "name"), MAINS, ids=[f"{m[1]}:{m[2]}" for m in MAINS])
def test_config_loads_as_a_package_like_the_console_script_loads_it(
    src: str, package: str, name: str
) -> None:
    assert (ROOT.parent / package.replace(".", "/") / "__init__.py").exists(), (
        f"{package} (the configs of {src}) needs an __init__.py, or its console script fails "
        "with 'Primary config module not found'"
    )
    with initialize_config_module(package, version_base="1.3"):
        cfg = compose(name)
    assert len(cfg) > 0


def test_a_console_script_runs_outside_the_repository(tmp_path: Path) -> None:
    exe = shutil.which("pbrl-qd")
    if exe is None:
        pytest.skip("pbrl is not installed with its console scripts (pip install -e .)")
    out = subprocess.run([exe, "--help"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Configuration groups" in out.stdout
