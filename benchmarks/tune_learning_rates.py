"""Choose each method's learning rate for the benchmark protocol, on data the benchmark never sees.

For each learning rate of the grid (Adam, cosine-annealed over the 3000 steps), the default bench
runs on seeds 100 and 101: other training and test data than the bench's seeds 0-4. For each
method, the rate with the lowest geometric mean over the datasets of the median test KL wins (KL
floored at 1e-3 nats, below which test KLs are within their Monte-Carlo error of zero).

    python3 benchmarks/tune_learning_rates.py [--out bench-results/tune] [--rates 0.003 0.01 0.03]

writes DIR/lr<rate>/ (bench folders: resumable), DIR/tuning.md and DIR/learning_rates.json.
"""
import argparse
import json
from pathlib import Path

import numpy as np

from mapa_vae.bench import BenchConfig, run_bench, summarize
from mapa_vae.methods import BENCH_LABELS as METHODS

FLOOR = 1e-3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-results/tune")
    parser.add_argument("--rates", type=float, nargs="+", default=[0.003, 0.01, 0.03])
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    out = Path(args.out)
    score = {}  # (method, rate) -> geometric mean of the median test KL over datasets
    medians = {}
    for rate in args.rates:
        config = BenchConfig.from_settings(seeds=args.seeds, first_seed=100, learning_rate=rate,
                                           lr_schedule="cosine", eval_every=0, n_test=2000)
        rows = summarize(run_bench(config, out / f"lr{rate:g}"))
        for method in METHODS:
            kl = [max(r["test_kl_median"], FLOOR) for r in rows if r["label"] == method]
            score[method, rate] = float(np.exp(np.mean(np.log(kl))))
            for r in rows:
                if r["label"] == method:
                    medians[method, rate, r["dataset"]] = r["test_kl_median"]
    chosen = {m: min(args.rates, key=lambda rate: score[m, rate]) for m in METHODS}
    names = list(dict.fromkeys(d for (_, _, d) in medians))
    lines = ["# Learning rates for the benchmark protocol", "",
             f"Median test KL (nats) over seeds 100-{99 + args.seeds}, 3000 steps, Adam with a "
             f"cosine schedule; geometric mean over datasets (floored at {FLOOR:g}); the chosen "
             "rate per method in bold.", "",
             "| method | rate | " + " | ".join(names) + " | geometric mean |",
             "|---" * (len(names) + 3) + "|"]
    for m in METHODS:
        for rate in args.rates:
            cells = " | ".join(f"{medians[m, rate, d]:.3g}" for d in names)
            mark = "**" if chosen[m] == rate else ""
            lines.append(f"| {m} | {mark}{rate:g}{mark} | {cells} | {score[m, rate]:.3g} |")
    (out / "tuning.md").write_text("\n".join(lines) + "\n")
    (out / "learning_rates.json").write_text(json.dumps(chosen, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
