"""Time ``MAPAPosterior.fit`` and report peak memory (and, for an approximate search, recall).

    python3 benchmarks/mapa_fit.py [--sizes 10000 100000] [--dim 2] [--k 32]
                                   [--algorithm auto] [--rules sigma loo] [--repeats 3]
                                   [--out FILE]

Data: ``--dim 2``, samples of the circle ground truth (sigma = 0.1); ``--dim D > 2``, points
near an 8-dimensional curved manifold in ``R^D``, ``tanh(Z A) + 0.1 ε`` with ``Z ~ N(0, I_8)``,
``A ~ N(0, 1/8)`` of shape ``(8, D)``, ``ε ~ N(0, I_D)`` (sigma = 0.1).

Each configuration runs in a fresh process so that its peak resident memory is its own. Seconds
are the best of ``--repeats`` fits after one warm-up, and the truncation check's own seconds
(measuring the lost kernel weight on sampled rows) the best of as many runs of it, with its
share of the rest of the fit; "loo" chooses the bandwidth from the data,
"sigma" uses the known noise (h = sqrt(2) sigma). Recall: the fraction of the true k nearest
neighbours (exact brute force) that the fit keeps, over 1000 random rows.
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


def data(n: int, dim: int):
    import numpy as np

    from mapa_vae import datasets

    if dim == 2:
        return datasets.get("circle").sample(n, seed=0)[0], 0.1
    rng = np.random.default_rng(0)
    Z, A = rng.normal(size=(n, 8)), rng.normal(size=(8, dim)) / np.sqrt(8)
    return np.tanh(Z @ A) + 0.1 * rng.normal(size=(n, dim)), 0.1


def recall(X, mapa, k: int) -> float:
    import numpy as np
    from scipy.spatial.distance import cdist

    rows = np.random.default_rng(1).choice(len(X), size=min(1000, len(X)), replace=False)
    exact = np.argsort(cdist(X[rows], X, "sqeuclidean"), axis=1)[:, :k]
    kept = mapa.neighbors_[rows]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(kept, exact)]))


def measure(n: int, dim: int, k: int, rule: str, algorithm: str, repeats: int) -> dict:
    import numpy as np

    from mapa_vae import MAPAPosterior

    X, sigma = data(n, dim)
    kwargs = {"sigma": sigma} if rule == "sigma" else {}
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    MAPAPosterior(n_neighbors=k, algorithm=algorithm, **kwargs).fit(X)  # warm-up
    seconds, mapa = [], None
    for _ in range(repeats):
        mapa = None  # the previous fit's arrays are freed before the next is timed
        start = time.perf_counter()
        mapa = MAPAPosterior(n_neighbors=k, algorithm=algorithm, **kwargs).fit(X)
        seconds.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    check = []  # the truncation check alone, on the fitted index
    for _ in range(repeats):
        start = time.perf_counter()
        mapa._measure_truncation(mapa.n_neighbors_)
        check.append(time.perf_counter() - start)
    return {"n": n, "dim": dim, "k": k, "bandwidth_rule": rule, "algorithm": mapa.algorithm_,
            "seconds_best": min(seconds), "seconds_all": seconds,
            "check_seconds_best": min(check),
            "check_share": min(check) / (min(seconds) - min(check)),
            "lost_max": float(mapa.sampled_lost_mass_.max()), "peak_rss_mib": peak / 1024,
            "peak_rss_above_data_mib": (peak - baseline) / 1024,
            "recall": recall(X, mapa, k), "bandwidth": mapa.bandwidth_,
            "truncation_bound_median": float(np.median(mapa.truncation_bound_))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=2)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--algorithm", default="auto")
    parser.add_argument("--rules", nargs="+", default=["sigma", "loo"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench-results/mapa_fit.json")
    parser.add_argument("--one", nargs=2, metavar=("N", "RULE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(int(args.one[0]), args.dim, args.k, args.one[1],
                                 args.algorithm, args.repeats)))
        return
    rows = []
    for n in args.sizes:
        for rule in args.rules:
            done = subprocess.run([sys.executable, __file__, "--one", str(n), rule, "--k",
                                   str(args.k), "--dim", str(args.dim), "--algorithm",
                                   args.algorithm, "--repeats", str(args.repeats)],
                                  check=True, capture_output=True, text=True)
            row = json.loads(done.stdout)
            rows.append(row)
            print(f"N = {n:>8}  D = {args.dim}  k = {args.k}  {row['algorithm']:<7}  "
                  f"h from {rule:<5}  {row['seconds_best']:.3f} s (its truncation check "
                  f"{row['check_seconds_best']:.3f} s, {row['check_share']:.0%} of the rest)  "
                  f"peak RSS {row['peak_rss_mib']:.0f} MiB "
                  f"(+{row['peak_rss_above_data_mib']:.0f} MiB during fit)  "
                  f"recall {row['recall']:.4f}", flush=True)
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
