"""Command-line entry points: ``pbrl-train`` and ``pbrl-resume``.

``pbrl-train [group=option ...] [key=value ...]`` composes ``pbrl/configs/train.yaml`` with
Hydra. A run is resumed by ``pbrl-train <run dir>``, ``pbrl-resume <run dir>`` or
``pbrl-train ... resume=true`` (the most recent run under ``runs/``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

RUNS = Path("runs")
OVERRIDES = "overrides.yaml"  # the command-line overrides a run was started with


class ResumeError(RuntimeError):
    """A run cannot be resumed as asked; the message says why and what to do."""


def _is_run_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.yaml").exists()


def latest_run(root: Path = RUNS) -> Path | None:
    """The most recently checkpointed (or started) run directory under ``root``."""
    if not root.exists():
        return None
    runs = [p for p in root.glob("*") if _is_run_dir(p)]
    runs += [p for p in root.glob("sweep-*/*") if _is_run_dir(p)]
    if not runs:
        return None

    def stamp(p: Path) -> float:
        meta = p / "checkpoint" / "meta.json"
        return (meta if meta.exists() else p / "config.yaml").stat().st_mtime

    return max(runs, key=stamp)


# A resumed invocation records its Hydra files apart, so the run's own record stays intact
# even when the resume is refused.
RESUME_OUTPUT = "hydra.output_subdir=.hydra-resume"


def resume_args(run_dir: Path, extra: list[str]) -> list[str]:
    """The overrides that resume ``run_dir`` (also used by ``pbrl-front``).

    Its recorded overrides, then ``extra``, then the run directory, ``resume=true`` and
    :data:`RESUME_OUTPUT`.
    """
    overrides_file = run_dir / OVERRIDES
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
    overrides = [o for o in overrides or [] if not o.startswith(("resume=", "hydra."))]
    return [*overrides, *extra, f"hydra.run.dir={run_dir}", "resume=true", RESUME_OUTPUT]


def prepare_argv(
    argv: list[str],
    is_run_dir: Callable[[Path], bool] = _is_run_dir,
    latest: Callable[[], Path | None] = latest_run,
    command: str = "pbrl",
    what: str = "run",
    marker: str = "config.yaml",
) -> list[str]:
    """Turn the resume forms into plain Hydra overrides.

    ``<run dir>`` (a positional path) becomes that run's original overrides plus
    ``hydra.run.dir=<run dir> resume=true``; ``resume=true`` alone picks the latest run.
    The other arguments let another command use the same rules for its own runs
    (``pbrl-front``: its run test, its latest run, and the words of its error messages).
    """
    positional = [a for a in argv if not a.startswith("-") and "=" not in a]
    rest = [a for a in argv if a not in positional]
    if positional:
        if len(positional) > 1:
            raise ResumeError(f"give at most one run directory, got {positional}")
        run_dir = Path(positional[0])
        if not is_run_dir(run_dir):
            raise ResumeError(
                f"{run_dir} is not a {command} run directory (no {marker} in it); "
                f"pass overrides as key=value, or the directory of an earlier {what} to resume it"
            )
        return resume_args(run_dir, rest)
    if "resume=true" not in argv:
        return argv
    if not any(a.startswith("hydra.run.dir=") for a in argv):
        run_dir = latest()
        if run_dir is None:
            raise ResumeError(
                f"resume=true but there is no {what} under {RUNS.resolve()} to resume"
            )
        argv = [*argv, f"hydra.run.dir={run_dir}"]
    return [*argv, RESUME_OUTPUT]


RUNTIME_KEYS = frozenset({"resume", "torch_threads"})
"""Top-level config keys a resumed run may change (see :func:`config_diff`)."""


def config_diff(
    saved: DictConfig, current: DictConfig, skip: frozenset[str] = RUNTIME_KEYS
) -> list[str]:
    """``"key: saved (run) vs current (now)"`` for every leaf that differs.

    Used to refuse resuming a run with another config (``pbrl-train``, ``pbrl-offline``,
    ``pbrl-front``). The top-level keys in ``skip`` (by default :data:`RUNTIME_KEYS`: how
    this process runs, not what it computes) may differ, or be missing from a run made
    before they existed.
    """
    a = OmegaConf.to_container(saved, resolve=True)
    b = OmegaConf.to_container(current, resolve=True)
    out: list[str] = []

    def walk(x: object, y: object, prefix: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                if k in skip and not prefix:
                    continue
                walk(x.get(k, "<missing>"), y.get(k, "<missing>"), f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix[:-1]}: {x!r} (run) vs {y!r} (now)")

    walk(a, b, "")
    return out


ADDED_KEYS: dict[str, object] = {
    # pbrl 0.1 (FastDropout, d495546): the offline agents' dropout; runs before it used
    # torch's nn.Dropout, which draws its masks from another random stream
    "agent.fast_dropout": False,
    # pbrl 0.1 (B-Pref's SAC actor): runs before it used SB3's log-std clamp to [-20, 2]
    "agent.log_std_bounds": None,
    # pbrl 0.1: the relabelling switch (runs before it always relabelled)
    "agent.relabel": True,
    # pbrl 0.1 (PrefPPO from B-Pref's learn_unsuper): runs before them used n_epochs in
    # pre-training and kept the value head
    "agent.unsup_n_epochs": None,
    "agent.reset_value": False,
}
"""Config keys added after runs were saved, each with the value that makes a run saved before
the key existed continue the way it ran (see :func:`adopt_added_keys`)."""

_ABSENT = object()


def adopt_added_keys(saved: DictConfig, current: DictConfig) -> list[str]:
    """Continue a run saved before a key of :data:`ADDED_KEYS` existed as it ran.

    For every such key missing from the run's ``saved`` config but present in ``current``
    (the config composed now, which gives it today's default), both get the key's old
    value, so :func:`config_diff` does not refuse the resume over it and the run goes on
    computing what it computed before. Returns the keys so adopted (to tell the user); keys
    the run already records are left alone.
    """
    adopted = []
    for key, old in ADDED_KEYS.items():
        if OmegaConf.select(saved, key, default=_ABSENT) is not _ABSENT:
            continue
        if OmegaConf.select(current, key, default=_ABSENT) is _ABSENT:
            continue
        OmegaConf.update(saved, key, old, force_add=True)
        OmegaConf.update(current, key, old, force_add=True)
        adopted.append(key)
    return adopted


def check_resumable(
    saved_path: Path,
    cfg: DictConfig,
    resume_hint: str,
    may_change: frozenset[str] = frozenset(),
) -> None:
    """Refuse (:class:`ResumeError`) to resume the run saved at ``saved_path`` with ``cfg``.

    The two configs must agree, after :func:`adopt_added_keys` (which may set keys of ``cfg``
    to the values the run was made with, and says so on stderr), except in the top-level
    keys of :data:`RUNTIME_KEYS` and ``may_change``; the refusal names the ``may_change``
    keys (a group as ``key.*``), so the message cannot drift from what is allowed.
    """
    run_dir = saved_path.parent
    if not saved_path.exists():
        raise ResumeError(f"resume=true but {run_dir} holds no run (no config.yaml)")
    saved = OmegaConf.load(saved_path)
    adopted = adopt_added_keys(saved, cfg)  # type: ignore[arg-type]
    if adopted:
        print(
            f"note: {run_dir} was saved before {', '.join(adopted)} existed; continuing it as "
            "it ran: " + ", ".join(f"{k}={ADDED_KEYS[k]!r}" for k in adopted),
            file=sys.stderr,
        )
    diff = config_diff(saved, cfg, RUNTIME_KEYS | may_change)  # type: ignore[arg-type]
    if diff:
        allowed = ""
        if may_change:
            keys = [
                f"{k}.*" if isinstance(cfg.get(k), DictConfig) else k for k in sorted(may_change)
            ]
            allowed = f" (only {', '.join(keys)} may change)"
        raise ResumeError(
            "refusing to resume with a different config; differing keys:\n  "
            + "\n  ".join(diff)
            + f"\nResume with the run's own settings ({resume_hint} {run_dir}) or start a new "
            f"run without resume=true{allowed}."
        )


def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, float]:
    """Run (or resume) one training job in ``run_dir``; returns its final scalars."""
    run_dir = Path(run_dir)
    saved = run_dir / "config.yaml"
    if cfg.resume:
        check_resumable(saved, cfg, "pbrl-resume")
    elif (run_dir / "checkpoint").exists():
        raise ResumeError(
            f"{run_dir} already holds a run; pass resume=true to continue it or choose another "
            "hydra.run.dir"
        )
    # The training stack (torch, SB3) is imported only now, so a refusal above is immediate.
    if cfg.agent.get("algo") == "gpu_ppo":  # PrefPPO on the device (pbrl/gpu, docs/gpu.md)
        from pbrl.gpu.loop import GpuPreferenceLoop

        loop = GpuPreferenceLoop(cfg, run_dir)
    else:
        from pbrl.loops.online import PreferenceLoop

        loop = PreferenceLoop(cfg, run_dir)
    try:
        if cfg.resume and not loop.try_resume():
            print(
                f"no checkpoint in {run_dir} yet: starting it from the beginning", file=sys.stderr
            )
        return loop.run()
    finally:
        loop.close()


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def _train(cfg: DictConfig) -> float:
    from pbrl.errors import RunError
    from pbrl.store import NotAFeedbackStoreError, SchemaVersionError

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if not cfg.resume and not (run_dir / OVERRIDES).exists():
        task = [o for o in HydraConfig.get().overrides.task if not o.startswith("hydra.")]
        (run_dir / OVERRIDES).write_text(yaml.safe_dump(list(task)))
    print(f"run directory: {run_dir}  (tensorboard --logdir {run_dir})", flush=True)
    try:
        final = run(cfg, run_dir)
    except (RunError, ResumeError, SchemaVersionError, NotAFeedbackStoreError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    return float(final.get("eval/true_return", float("nan")))


def train() -> None:
    """``pbrl-train``: one training run (or a ``--multirun`` sweep)."""
    try:
        argv = prepare_argv(sys.argv[1:])
    except ResumeError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [sys.argv[0], *argv]
    _train()


def resume() -> None:
    """``pbrl-resume <run dir> [overrides]``: continue a run from its last checkpoint."""
    if len(sys.argv) < 2:
        print("usage: pbrl-resume <run dir>", file=sys.stderr)
        sys.exit(2)
    train()
