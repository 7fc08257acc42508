"""Pool the per-seed results of several ``rapl_rl.py`` invocations and compare the arms.

``rapl_rl.py`` runs one set of seeds per invocation and writes ``<out>/<arm>-s<seed>/
final_metrics.json``; its ``--write-results`` table covers only that invocation's seeds. This
script reads the run dirs of any number of invocations (``--arm LABEL=OUT``, repeatable, one
label may name several out dirs), adds per-seed values recorded only in RESULTS.md for run dirs
that are gone (``--recorded``), and prints, as markdown:

- per arm: seeds, success rate mean +- std (``np.std``, as ``rapl_rl.py``), the per-seed list,
  true return and the reward's held-out preference accuracy (``align/val_accuracy``), mean +-
  std, each pooled with a recorded mean +- std over n seeds when the per-seed values are gone
  (``--recorded-return``, ``--recorded-acc``: the population mean and variance of the union
  follow from n, mean and std);
- per comparison (``--compare A B``, default: the first label against every other): the paired
  per-seed difference of success A - B over the seeds both have, its sign counts, an exact
  two-sided sign test, a paired t-test, a Welch t-test on the two samples, and a paired
  bootstrap 95 % CI of the mean difference (10,000 resamples of the seeds, fixed RNG).

    python benchmarks/rapl_seed_stats.py \\
        --arm RAPL=runs/bench-rapl-rl-s345-rapl --arm RLHF=runs/bench-rapl-rl \\
        --arm RLHF=runs/bench-rapl-rl-s345-rlhf --recorded RAPL:0=0.00,1=0.10,2=0.60 \\
        --recorded-return RAPL:14.34,6.62,3
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from scipy import stats


def _label_value(text: str, sep: str) -> tuple[str, str]:
    if sep not in text:
        raise SystemExit(f"{text!r}: expected LABEL{sep}..., e.g. RAPL{sep}...")
    label, value = text.split(sep, 1)
    return label, value


def read_runs(label_dirs: list[str]) -> dict[str, dict[int, dict[str, float]]]:
    """``{label: {seed: final_metrics}}`` from ``LABEL=OUT`` pairs (``OUT/<arm>-s<seed>``)."""
    runs: dict[str, dict[int, dict[str, float]]] = {}
    for item in label_dirs:
        label, out = _label_value(item, "=")
        files = sorted(Path(out).glob("*-s*/final_metrics.json"))
        if not files:
            raise SystemExit(f"--arm {item}: no <arm>-s<seed>/final_metrics.json under {out}")
        for f in files:
            seed = int(f.parent.name.rsplit("-s", 1)[1])
            if seed in runs.get(label, {}):
                raise SystemExit(f"--arm {label}: seed {seed} found twice (second: {f})")
            runs.setdefault(label, {})[seed] = json.loads(f.read_text())
    return runs


def parse_recorded(items: list[str]) -> dict[str, dict[int, float]]:
    """``LABEL:SEED=SUCCESS,...`` -> ``{label: {seed: success}}``."""
    out: dict[str, dict[int, float]] = {}
    for item in items:
        label, rest = _label_value(item, ":")
        for pair in rest.split(","):
            seed, value = _label_value(pair, "=")
            out.setdefault(label, {})[int(seed)] = float(value)
    return out


def parse_stats(items: list[str]) -> dict[str, tuple[float, float, int]]:
    """``LABEL:MEAN,STD,N`` -> ``{label: (mean, std, n)}``."""
    out = {}
    for item in items:
        label, rest = _label_value(item, ":")
        try:
            m, s, k = rest.split(",")
            out[label] = (float(m), float(s), int(k))
        except ValueError:
            msg = f"{item!r}: expected LABEL:MEAN,STD,N, e.g. RAPL:14.34,6.62,3"
            raise SystemExit(msg) from None
    return out


def pooled(values: list[float], recorded: tuple[float, float, int] | None) -> str:
    """``mean +- std`` (population) of ``values`` plus ``n`` recorded values of mean m, std s;
    ``-`` when there are none."""
    n, total, sq = len(values), float(np.sum(values)), float(np.sum(np.square(values)))
    if recorded is not None:
        m, s, k = recorded
        n, total, sq = n + k, total + k * m, sq + k * (s * s + m * m)
    if n == 0:
        return "-"
    mean = total / n
    return f"{mean:.2f} +- {math.sqrt(max(0.0, sq / n - mean * mean)):.2f}"


def compare(a: dict[int, float], b: dict[int, float], name_a: str, name_b: str) -> str:
    """One markdown line: paired and unpaired tests of success ``a`` vs ``b``."""
    common = sorted(set(a) & set(b))
    d = np.array([a[s] - b[s] for s in common])
    pos, neg = int((d > 0).sum()), int((d < 0).sum())
    sign_p = stats.binomtest(pos, pos + neg).pvalue if pos + neg else 1.0
    paired_p = stats.ttest_rel([a[s] for s in common], [b[s] for s in common]).pvalue
    welch_p = stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False).pvalue
    rng = np.random.default_rng(0)
    boot = d[rng.integers(0, len(d), size=(10_000, len(d)))].mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return (
        f"{name_a} - {name_b}: seeds {len(common)}, mean paired difference {d.mean():+.2f} "
        f"(bootstrap 95 % CI {lo:+.2f} .. {hi:+.2f}); {name_a} higher on {pos}, lower on {neg}, "
        f"tied on {len(d) - pos - neg} (sign test p = {sign_p:.2f}); paired t-test p = "
        f"{paired_p:.2f}; Welch t-test p = {welch_p:.2f}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--arm", action="append", default=[], help="LABEL=OUT (repeatable)")
    p.add_argument("--recorded", action="append", default=[], help="LABEL:SEED=SUCCESS,...")
    p.add_argument(
        "--recorded-return", action="append", default=[], help="LABEL:MEAN,STD,N of gone seeds"
    )
    p.add_argument(
        "--recorded-acc", action="append", default=[], help="LABEL:MEAN,STD,N of gone seeds"
    )
    p.add_argument("--compare", nargs=2, action="append", default=None, metavar=("A", "B"))
    args = p.parse_args()
    if not args.arm:
        p.error("give at least one --arm LABEL=OUT")
    runs = read_runs(args.arm)
    success = {lab: {s: m["eval/success_rate"] for s, m in r.items()} for lab, r in runs.items()}
    for label, per_seed in parse_recorded(args.recorded).items():
        clash = set(per_seed) & set(success.get(label, {}))
        if clash:
            raise SystemExit(f"--recorded {label}: seeds {sorted(clash)} also have run dirs")
        success.setdefault(label, {}).update(per_seed)
    rec_ret, rec_acc = parse_stats(args.recorded_return), parse_stats(args.recorded_acc)
    print("| arm | seeds | success rate | per seed (success) | true return | held-out acc. |")
    print("|---|---|---|---|---|---|")
    for label, per_seed in success.items():
        vals = [per_seed[s] for s in sorted(per_seed)]
        done = [m for _, m in sorted(runs.get(label, {}).items())]
        rets = [m["eval/true_return"] for m in done]
        accs = [m["align/val_accuracy"] for m in done if "align/val_accuracy" in m]
        print(
            f"| {label} | {', '.join(map(str, sorted(per_seed)))} | {np.mean(vals):.2f} +- "
            f"{np.std(vals):.2f} | {' / '.join(f'{v:.2f}' for v in vals)} | "
            f"{pooled(rets, rec_ret.get(label))} | {pooled(accs, rec_acc.get(label))} |"
        )
    labels = list(success)
    pairs = args.compare or [(labels[0], other) for other in labels[1:]]
    print()
    for a, b in pairs:
        if a not in success or b not in success:
            raise SystemExit(f"--compare {a} {b}: known labels are {labels}")
        print(f"- {compare(success[a], success[b], a, b)}")


if __name__ == "__main__":
    main()
