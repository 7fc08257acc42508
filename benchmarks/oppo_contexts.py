"""What OPPO's policy does under other test-time contexts than ``z*`` (a diagnostic).

OPPO acts conditioned on the learned ``z*``. During training the policy only ever sees the
hindsight encodings ``z = I(tau)`` of dataset windows, which the norm loss holds near
``||z|| = 1``, while ``z*`` starts at ``2 randn(8)`` (norm ~4-7) and is moved by the triplet
loss alone. This script takes trained OPPO runs (the ``oppo-s<seed>`` directories that
``benchmarks/offline_oppo.py --out DIR`` leaves) and evaluates the same trained policy, on the
same evaluation episodes, conditioned on:

- ``z*``: the run's own context (reproduces the run's final evaluation, a check);
- ``z* rescaled``: ``z*``'s direction at the encodings' mean norm;
- ``top decile``: the mean encoding of the 10 % of dataset segments the teacher scores highest
  (their ``future_return``, the labels' own score), an in-distribution "good" context;
- ``bottom decile``: the same for the lowest 10 % (does the context steer the policy at all?).

Nothing is trained; the runs are only read (the probe writes into ``<run>/contexts``).

    python benchmarks/oppo_contexts.py /work/runs/oppo5k/oppo-s0 /work/runs/oppo5k/oppo-s1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from offline_oppo import future_return_of_rows, normalise, segment_encodings, trained_oppo
from omegaconf import OmegaConf

from pbrl.offline.evaluate import evaluate_offline
from pbrl.offline.oppo import OPPOAgent


def probe(run_dir: Path, episodes: int) -> dict[str, float]:
    """Normalised return of the run's policy under each context."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    cfg.eval.episodes = episodes
    dataset = Path(str(cfg.dataset))
    with trained_oppo(cfg, run_dir, run_dir / "contexts") as loop:  # type: ignore[arg-type]
        agent = loop.agent
        assert isinstance(agent, OPPOAgent)
        enc, labels, _ = segment_encodings(agent, dataset, str(cfg.teacher_id))
        score = future_return_of_rows(dataset, labels)
        if score is None:
            raise SystemExit(f"{dataset} records no per-segment future_return scores")
        z_star = agent.z_star.detach().clone()
        mean_norm = float(enc.norm(dim=-1).mean())
        hi, lo = np.quantile(score, 0.9), np.quantile(score, 0.1)
        contexts = {
            "z*": z_star,
            "z* rescaled": z_star * (mean_norm / float(z_star.norm())),
            "top decile": enc[torch.as_tensor(score >= hi)].mean(0),
            "bottom decile": enc[torch.as_tensor(score <= lo)].mean(0),
        }
        out: dict[str, float] = {"z_star_norm": float(z_star.norm()), "enc_norm": mean_norm}
        seed = int(cfg.seed) + 10_000  # the run's own evaluation episodes
        for name, ctx in contexts.items():
            with torch.no_grad():
                agent.z_star.copy_(ctx)
            res = evaluate_offline(loop.eval_envs, agent, seed=seed)
            out[name] = normalise(float(res.scalars()["eval/true_return"]))
            out[f"{name} norm"] = float(ctx.norm())
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="oppo-s<seed> run directories")
    p.add_argument("--episodes", type=int, default=5, help="as the runs' own evaluation")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = {}
    for run in args.runs:
        rows[str(run)] = r = probe(run, args.episodes)
        print(
            f"{run}: |z*| {r['z_star_norm']:.2f} vs mean |z| {r['enc_norm']:.2f} | normalised "
            + ", ".join(
                f"{k} {r[k]:.1f}" for k in ("z*", "z* rescaled", "top decile", "bottom decile")
            ),
            flush=True,
        )
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
