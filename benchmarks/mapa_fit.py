"""Time ``MAPAPosterior.fit`` on 2-D data (the circle ground truth) and report peak memory.

    python3 benchmarks/mapa_fit.py [--sizes 10000 100000] [--k 32] [--repeats 3] [--out FILE]

Each configuration runs in a fresh process so that its peak resident memory is its own. Seconds
are the best of ``--repeats`` fits after one warm-up; "loo" chooses the bandwidth from the data,
"sigma" uses the known noise (h = sqrt(2) sigma).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path


def measure(n: int, k: int, rule: str, repeats: int) -> dict:
    import numpy as np  # noqa: F401  (imported before the baseline is taken)

    from mapa_vae import MAPAPosterior, datasets

    truth = datasets.get("circle")
    X, _ = truth.sample(n, seed=0)
    kwargs = {"sigma": truth.sigma} if rule == "sigma" else {}
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    MAPAPosterior(n_neighbors=k, **kwargs).fit(X)  # warm-up
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        mapa = MAPAPosterior(n_neighbors=k, **kwargs).fit(X)
        seconds.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"n": n, "k": k, "bandwidth_rule": rule, "seconds_best": min(seconds),
            "seconds_all": seconds, "peak_rss_mib": peak / 1024,
            "peak_rss_above_data_mib": (peak - baseline) / 1024,
            "bandwidth": mapa.bandwidth_,
            "truncation_bound_median": float(np.median(mapa.truncation_bound_))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench-results/mapa_fit.json")
    parser.add_argument("--one", nargs=2, metavar=("N", "RULE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(int(args.one[0]), args.k, args.one[1], args.repeats)))
        return
    rows = []
    for n in args.sizes:
        for rule in ("sigma", "loo"):
            done = subprocess.run([sys.executable, __file__, "--one", str(n), rule, "--k",
                                   str(args.k), "--repeats", str(args.repeats)],
                                  check=True, capture_output=True, text=True)
            row = json.loads(done.stdout)
            rows.append(row)
            print(f"N = {n:>8}  k = {args.k}  h from {rule:<5}  {row['seconds_best']:.3f} s  "
                  f"peak RSS {row['peak_rss_mib']:.0f} MiB "
                  f"(+{row['peak_rss_above_data_mib']:.0f} MiB during fit)", flush=True)
    result = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "platform": platform.platform()}, "results": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
