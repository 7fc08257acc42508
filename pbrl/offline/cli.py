"""Entry points ``pbrl-offline`` (train a reward-free learner) and ``pbrl-dataset make``.

``pbrl-offline dataset=<file> agent=cpl|cpl_bc|cpl_kl|sft|piql|oppo [key=value ...]`` composes
``pbrl/configs/offline/offline.yaml``; the run directory gets TensorBoard events, the resolved
config, ``checkpoint/`` and ``final_metrics.json``. It resumes like ``pbrl-train``:
``pbrl-offline <run dir>`` or ``... resume=true``.

``pbrl-dataset make env=<name> out=<file> [policy=... labels=[...] mode=pairs|rank ...]``
composes ``pbrl/configs/offline/dataset.yaml`` and runs
:func:`pbrl.offline.dataset.make_dataset`.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter

from pbrl import envs as pbrl_envs
from pbrl.checkpoint import CHECKPOINT, Checkpointed
from pbrl.cli import OVERRIDES, ResumeError, check_resumable, prepare_argv
from pbrl.loops.online import RunError, resolve_device
from pbrl.offline.cpl import CPLAgent, CPLConfig
from pbrl.offline.data import BatchSampler, DatasetFormatError, PairBatch, load_preferences
from pbrl.offline.dataset import DatasetError
from pbrl.offline.evaluate import evaluate_offline
from pbrl.offline.oppo import OPPOAgent, OPPOConfig
from pbrl.offline.piql import PIQLAgent, PIQLConfig
from pbrl.threads import set_torch_threads

ALGOS: tuple[str, ...] = ("cpl", "piql", "oppo")


def _fields(cls: type, cfg: DictConfig) -> dict[str, Any]:
    """The keys of ``cfg`` that are fields of dataclass ``cls``."""
    names = {f.name for f in dataclasses.fields(cls)}
    d = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(d, dict)
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}


class OfflineRun(Checkpointed):
    """One offline training run (CPL family, P-IQL or OPPO) writing into ``run_dir``.

    The loop: sample a batch from the dataset tensors, update, and every so often log,
    measure held-out preference accuracy, evaluate the policy on the environment and
    checkpoint.

    Args:
        cfg: composed config (``pbrl/configs/offline/offline.yaml``).
        run_dir: output directory.
    """

    def __init__(self, cfg: DictConfig, run_dir: str | Path) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = resolve_device(str(cfg.device))
        seed = int(cfg.seed)
        set_torch_threads(cfg.get("torch_threads", 1))
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        a = cfg.agent
        if a.algo not in ALGOS:
            raise RunError(f"agent.algo={a.algo!r} is not an offline agent; valid: {list(ALGOS)}")

        # --- data ---------------------------------------------------------------------------
        data = load_preferences(cfg.dataset, cfg.get("teacher_id"), self.device)
        self.data, heldout = data.split(float(cfg.heldout), seed)
        sub = a.get("segment_length") if a.algo != "oppo" else None
        self.sampler = BatchSampler(self.data, str(a.mode), seed, sub)
        self.heldout_batch: PairBatch | None = None
        if heldout is not None:
            mode = "comparison" if heldout.kind == "pair" else "rank"
            n = len(heldout) if heldout.kind == "pair" else int(cfg.heldout_pairs)
            hb = BatchSampler(heldout, mode, seed + 2).sample(n)
            assert isinstance(hb, PairBatch)
            self.heldout_batch = hb

        # --- environment ------------------------------------------------------------------
        env_name = cfg.env.name or data.env_name
        env_kwargs = dict(cfg.env.get("kwargs") or {})
        self.env_name = env_name
        self.eval_envs = [
            pbrl_envs.make_env(env_name, seed=seed + 10_000 + i, **env_kwargs)
            for i in range(int(cfg.eval.episodes))
        ]
        env = self.eval_envs[0]
        obs_dim = int(np.prod(env.observation_space.shape))
        act_dim = int(np.prod(env.action_space.shape))
        if (obs_dim, act_dim) != (data.obs_dim, data.act_dim):
            raise RunError(
                f"the dataset's segments have obs/action sizes ({data.obs_dim}, {data.act_dim}) "
                f"but env {env_name!r} has ({obs_dim}, {act_dim}); set env.name to the env the "
                f"dataset was made from ({data.env_name!r})"
            )

        # --- agent ----------------------------------------------------------------------------
        self.agent: CPLAgent | PIQLAgent | OPPOAgent
        try:
            if a.algo == "cpl":
                self.agent = CPLAgent(
                    obs_dim, act_dim, CPLConfig(**_fields(CPLConfig, a)), self.device, seed
                )
            elif a.algo == "piql":
                if str(a.mode) == "score":
                    raise RunError("P-IQL learns its reward from pairs: use agent.mode=rank")
                pcfg = PIQLConfig(**{**_fields(PIQLConfig, a), "total_steps": int(cfg.num_steps)})
                self.agent = PIQLAgent(obs_dim, act_dim, pcfg, self.data, self.device, seed)
            else:
                if str(a.mode) != "comparison":
                    raise RunError("OPPO trains on pair rows: use agent.mode=comparison")
                allobs = self.data.all_obs()
                max_len = int(getattr(env, "max_episode_steps", 1000))
                ocfg = OPPOConfig(**{"max_ep_len": max_len, **_fields(OPPOConfig, a)})
                if self.data.horizon > ocfg.window:
                    warnings.warn(
                        f"the dataset's segments are {self.data.horizon} steps and OPPO cuts a "
                        f"random {ocfg.window}-step window from each, up to "
                        f"{self.data.horizon - ocfg.window} steps after the step a label scores "
                        "from (future_return scores from the segment's start); build the dataset "
                        f"with segment_size={ocfg.window} to match them, as OPPO's reference does",
                        stacklevel=1,
                    )
                self.agent = OPPOAgent(
                    obs_dim, act_dim, ocfg, allobs.mean(0), allobs.std(0), self.device, seed
                )
        except ValueError as e:
            raise RunError(f"agent config: {e}") from e
        self.writer = SummaryWriter(str(self.run_dir))

        # --- schedule (checkpointed) ----------------------------------------------------------
        self.step = 0
        self.next_eval = int(cfg.eval.every)
        self.next_log = int(cfg.log.every)
        self.next_ckpt = int(cfg.checkpoint.every) if cfg.checkpoint.every else float("inf")
        self.last: dict[str, float] = {}
        self._t0, self._s0 = time.perf_counter(), 0

    # ------------------------------------------------------------------------------------
    def run(self) -> dict[str, float]:
        """Train for ``num_steps`` gradient steps; returns the last logged scalars."""
        cfg = self.cfg
        total = int(cfg.num_steps)
        bs = int(cfg.agent.batch_size)
        path = self.run_dir / "config.yaml"
        if not path.exists():
            OmegaConf.save(cfg, path, resolve=True)
        self._t0, self._s0 = time.perf_counter(), self.step
        wants = getattr(self.agent, "wants_batch", lambda step: True)
        while self.step < total:
            batch = self.sampler.sample(bs) if wants(self.step) else None
            stats = self.agent.update(batch, self.step)  # type: ignore[arg-type]
            self.step += 1
            if self.step >= self.next_log:
                for k, v in stats.items():
                    self._scalar(f"losses/{k}" if "loss" in k else f"train/{k}", v)
                self._heldout()
                self._log()
            if self.step >= self.next_eval:
                self._evaluate()
            if self.step >= self.next_ckpt:
                self.save_checkpoint()
                while self.next_ckpt <= self.step:
                    self.next_ckpt += int(cfg.checkpoint.every)
        self._heldout()
        self._evaluate()
        if self._s0 != self.step:  # not already logged at this step
            self._log()
        self.save_checkpoint()
        self.writer.flush()
        (self.run_dir / "final_metrics.json").write_text(json.dumps(self.last, indent=2))
        return dict(self.last)

    def _scalar(self, tag: str, value: float) -> None:
        self.writer.add_scalar(tag, value, self.step)
        self.last[tag] = float(value)

    def _heldout(self) -> None:
        if self.heldout_batch is None:
            return
        for k, v in self.agent.evaluate_pairs(self.heldout_batch).items():
            self._scalar(f"pref/{k}_heldout", v)

    def _evaluate(self) -> None:
        res = evaluate_offline(self.eval_envs, self.agent, seed=int(self.cfg.seed) + 10_000)
        for k, v in res.scalars().items():
            self._scalar(k, v)
        while self.next_eval <= self.step:
            self.next_eval += int(self.cfg.eval.every)

    def _log(self) -> None:
        cfg = self.cfg
        dt = time.perf_counter() - self._t0
        sps = (self.step - self._s0) / dt if dt > 0 else float("nan")
        self._t0, self._s0 = time.perf_counter(), self.step
        self._scalar("charts/sps", sps)
        if cfg.log.progress != "none":
            ret = self.last.get("eval/true_return", float("nan"))
            succ = self.last.get("eval/success_rate")
            acc = self.last.get("pref/accuracy_heldout", float("nan"))
            loss = self.last.get("losses/loss", float("nan"))
            extra = "" if succ is None else f" | success {succ:.2f}"
            print(
                f"[{cfg.agent.name} {self.env_name} s{cfg.seed}] step {self.step:,}/"
                f"{int(cfg.num_steps):,} | loss {loss:.4f} | pref acc {acc:.3f} | eval return "
                f"{ret:.1f}{extra} | {sps:.0f} steps/s",
                flush=True,
            )
        while self.next_log <= self.step:
            self.next_log += int(cfg.log.every)
        self.writer.flush()

    # ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly."""
        return {
            "agent": self.agent.state_dict(),
            "sampler": self.sampler.state_dict(),
            "loop": {k: getattr(self, k) for k in ("step", "next_eval", "next_log", "last")},
            "next_ckpt": self.next_ckpt,
            "rng": {
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "python": random.getstate(),
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.agent.load_state_dict(state["agent"])
        self.sampler.load_state_dict(state["sampler"])
        for k, v in state["loop"].items():
            setattr(self, k, v)
        self.next_ckpt = state["next_ckpt"]
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])

    def close(self) -> None:
        """Close the writer and the envs."""
        self.writer.close()
        for env in self.eval_envs:
            env.close()


def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, float]:
    """Run (or resume) one offline job in ``run_dir``; returns its final scalars."""
    run_dir = Path(run_dir)
    saved = run_dir / "config.yaml"
    if cfg.resume:
        check_resumable(saved, cfg, "pbrl-offline")
    elif (run_dir / CHECKPOINT).exists():
        raise ResumeError(
            f"{run_dir} already holds a run; pass resume=true to continue it or choose another "
            "hydra.run.dir"
        )
    loop = OfflineRun(cfg, run_dir)
    try:
        if cfg.resume and not loop.try_resume():
            print(f"no checkpoint in {run_dir} yet: starting from the beginning", file=sys.stderr)
        return loop.run()
    finally:
        loop.close()


@hydra.main(config_path="../configs/offline", config_name="offline", version_base="1.3")
def _offline(cfg: DictConfig) -> float:
    from pbrl.store import SchemaVersionError

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if not cfg.resume and not (run_dir / OVERRIDES).exists():
        task = [o for o in HydraConfig.get().overrides.task if not o.startswith("hydra.")]
        (run_dir / OVERRIDES).write_text(yaml.safe_dump(list(task)))
    print(f"run directory: {run_dir}  (tensorboard --logdir {run_dir})", flush=True)
    try:
        final = run(cfg, run_dir)
    except (RunError, ResumeError, DatasetFormatError, SchemaVersionError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    return float(final.get("eval/true_return", float("nan")))


def main() -> None:
    """``pbrl-offline``: train CPL / CPL-BC / CPL-KL / SFT / P-IQL / OPPO from a dataset file."""
    try:
        argv = prepare_argv(sys.argv[1:])
    except ResumeError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [sys.argv[0], *argv]
    _offline()


# ---------------------------------------------------------------------------------------------
@hydra.main(config_path="../configs/offline", config_name="dataset", version_base="1.3")
def _make(cfg: DictConfig) -> None:
    from pbrl.offline.dataset import make_dataset

    c = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(c, dict)
    set_torch_threads(c.get("torch_threads", 1))  # the SAC oracle's training
    try:
        make_dataset(
            env=c["env"],
            out=c["out"],
            policy=[str(x) for x in c["policy"]]
            if isinstance(c["policy"], list)
            else str(c["policy"]),
            labels=list(c["labels"]),
            mode=c["mode"],
            episodes=int(c["episodes"]),
            segments=int(c["segments"]),
            segment_size=int(c["segment_size"]),
            noise=float(c["noise"]),
            num_envs=int(c["num_envs"]),
            seed=int(c["seed"]),
            critic=c["critic"],
            oracle_steps=int(c["oracle_steps"]),
            value_samples=int(c["value_samples"]),
            foresee=int(c["foresee"]),
            keep_sim_state=bool(c["keep_sim_state"]),
            env_kwargs=dict(c["env_kwargs"] or {}),
            teacher_kwargs=dict(c["teacher"] or {}),
            device=resolve_device(str(c["device"])),
            distractor=None if c.get("distractor") is None else str(c["distractor"]),
            distractor_fraction=float(c.get("distractor_fraction", 0.5)),
            snapshots=int(c.get("snapshots", 5)),
        )
    except (DatasetError, RunError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


def dataset_main() -> None:
    """``pbrl-dataset make env=<name> out=<file> [key=value ...]``: build a dataset file."""
    args = sys.argv[1:]
    if not args or args[0] != "make":
        asked = bool(args) and args[0] in ("-h", "--help")
        print(
            "usage: pbrl-dataset make env=<name> out=<file.npz> [policy=random|scripted|"
            "sac-oracle|ppo-snapshots|<sb3 .zip>|[<.zip>,...]] [labels=[regret,oracle,...]] "
            "[mode=pairs|rank] [key=value ...]\n"
            "(see pbrl/configs/offline/dataset.yaml for every key; `pbrl-dataset make --help` "
            "lists them)",
            file=sys.stdout if asked else sys.stderr,
        )
        sys.exit(0 if asked else 2)
    sys.argv = [sys.argv[0], *args[1:]]
    _make()
