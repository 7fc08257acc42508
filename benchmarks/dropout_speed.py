"""Training-step time of the offline learners with torch's dropout vs pbrl's FastDropout.

Two agents identical but for ``fast_dropout`` (``nn.Dropout`` vs
:class:`pbrl.offline.nn.FastDropout`), updated on the same fixed batch in alternating blocks
of ``--block`` steps, ``--repeats`` pairs; reported: median ms per step of each and the
median of the per-pair time ratios (this machine is noisy: only the ratio is meaningful).

- CPL at the paper's batch: 96 pairs x 64 steps (12,288 rows), actor 512 x 2, dropout 0.25
  (Meta-World state shapes: 39-dim observations, 4-dim actions), the contrastive loss.
- OPPO at ``benchmarks/offline_oppo.py``'s scale: 32 pairs of 20-step windows, embedding 64,
  inner 256, dropout 0.1 (hopper shapes: 11 / 3).

    python benchmarks/dropout_speed.py --write-results
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time

import torch
from offline_common import command, machine, replace_section

from pbrl.offline.cpl import CPLAgent, CPLConfig
from pbrl.offline.data import PairBatch
from pbrl.offline.oppo import OPPOAgent, OPPOConfig

SECTION = "## Offline learners: torch dropout vs FastDropout (issue 7)"


def pair_batch(b: int, h: int, d_o: int, d_a: int, seed: int = 0) -> PairBatch:
    g = torch.Generator().manual_seed(seed)
    return PairBatch(
        torch.randn(b, h, d_o, generator=g), torch.randn(b, h, d_o, generator=g),
        torch.rand(b, h, d_a, generator=g) * 2 - 1, torch.rand(b, h, d_a, generator=g) * 2 - 1,
        (torch.rand(b, generator=g) > 0.5).float(), torch.zeros(b, dtype=torch.long),
        torch.zeros(b, dtype=torch.long),
    )  # fmt: skip


def make_cpl(fast: bool) -> CPLAgent:
    cfg = CPLConfig(bc_steps=0, warmup_steps=0, fast_dropout=fast)  # paper: 512 x 2, 0.25
    agent = CPLAgent(39, 4, cfg, "cpu", seed=0)
    agent.start_contrastive()
    return agent


def make_oppo(fast: bool) -> OPPOAgent:
    cfg = OPPOConfig(embed=64, enc_hidden=64, inner=256, enc_inner=256, warmup_steps=0,
                     fast_dropout=fast)  # fmt: skip
    return OPPOAgent(11, 3, cfg, torch.zeros(11), torch.ones(11), "cpu", seed=0)


def measure(make, batch: PairBatch, block: int, repeats: int) -> dict[str, float]:  # type: ignore[no-untyped-def]  # noqa: ANN001
    agents = {"torch": make(False), "fast": make(True)}
    for a in agents.values():  # warm-up
        a.update(batch, 0)
    times: dict[str, list[float]] = {"torch": [], "fast": []}
    for r in range(repeats):
        order = ("torch", "fast") if r % 2 == 0 else ("fast", "torch")
        for name in order:
            t0 = time.thread_time()
            for i in range(block):
                agents[name].update(batch, i)
            times[name].append((time.thread_time() - t0) / block)
    ratios = [t / f for t, f in zip(times["torch"], times["fast"], strict=True)]
    return {
        "torch_ms": 1e3 * statistics.median(times["torch"]),
        "fast_ms": 1e3 * statistics.median(times["fast"]),
        "speedup": statistics.median(ratios),
        "lo": min(ratios),
        "hi": max(ratios),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--block", type=int, default=3)
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--write-results", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = {
        "CPL, paper batch (96 pairs x 64 steps, 512 x 2, dropout 0.25)": measure(
            make_cpl, pair_batch(96, 64, 39, 4), args.block, args.repeats
        ),
        "OPPO, benchmark scale (32 pairs x 20 steps, embed 64, dropout 0.1)": measure(
            make_oppo, pair_batch(32, 20, 11, 3), args.block, args.repeats
        ),
    }
    lines = [
        SECTION,
        "",
        f"Date: {dt.date.today()}. Machine: {machine()}; 1 torch thread. Command: `{command()}`.",
        "",
        "Two agents identical but for `agent.fast_dropout` (false: `nn.Dropout`; true: "
        "`pbrl.offline.nn.FastDropout`, four 16-bit masks per 64-bit draw of torch's generator), "
        f"updated on one fixed batch in alternating blocks of {args.block} steps, "
        f"{args.repeats} pairs, this thread's CPU time; speed-up = median per-pair ratio "
        "(range over pairs).",
        "",
        "| learner | torch dropout ms/step | FastDropout ms/step | speed-up (range) |",
        "|---|---|---|---|",
    ]
    for name, m in rows.items():
        lines.append(f"| {name} | {m['torch_ms']:.0f} | {m['fast_ms']:.0f} | "
                     f"{m['speedup']:.2f}x ({m['lo']:.2f}-{m['hi']:.2f}) |")  # fmt: skip
        print(f"{name}: torch {m['torch_ms']:.0f} ms, fast {m['fast_ms']:.0f} ms, "
              f"{m['speedup']:.2f}x ({m['lo']:.2f}-{m['hi']:.2f})")  # fmt: skip
    lines.append("")
    if args.write_results:
        replace_section(SECTION, "\n".join(lines))
        print("wrote", SECTION)


if __name__ == "__main__":
    main()
