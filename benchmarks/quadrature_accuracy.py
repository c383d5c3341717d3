"""Accuracy of the default quadrature: each built-in dataset's ``log p(x)`` on 5000 samples
(1000 in 2-D) against a grid four times finer per axis (1-D) or twice as fine (2-D), with the
seconds each grid took and the peak memory after the default grid (the process's, so far).

    python3 benchmarks/quadrature_accuracy.py [--datasets blobs] \\
        [--out bench-results/quadrature_accuracy.json]
"""
import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

from mapa_vae import datasets
from mapa_vae.evaluation import DEFAULT_NODES_PER_DIM


def _peak_gib() -> float:
    """The process's peak resident memory so far, GiB (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--datasets", nargs="+", default=datasets.names(include_all=True))
    parser.add_argument("--out", default="bench-results/quadrature_accuracy.json")
    args = parser.parse_args()
    rows = []
    for name in args.datasets:
        truth = datasets.get(name)
        X, _ = truth.sample(args.n if truth.latent_dim == 1 else args.n // 5, seed=1)
        default = DEFAULT_NODES_PER_DIM[truth.latent_dim]
        fine = default * (4 if truth.latent_dim == 1 else 2)
        truth.nodes_per_dim = default
        start = time.perf_counter()
        lp = truth.log_prob(X)
        seconds = time.perf_counter() - start
        peak = _peak_gib()  # of the process so far: the first dataset's default grid alone
        truth.nodes_per_dim = fine
        start = time.perf_counter()
        diff = np.abs(lp - truth.log_prob(X))
        fine_seconds = time.perf_counter() - start
        rows.append({"dataset": name, "n_points": len(X), "nodes_per_dim": default,
                     "reference_nodes_per_dim": fine, "mean_abs_diff": float(diff.mean()),
                     "max_abs_diff": float(diff.max()),
                     "seconds_per_1000_points": 1000 * seconds / len(X),
                     "reference_seconds_per_1000_points": 1000 * fine_seconds / len(X),
                     "peak_memory_gib_so_far": peak})
        print(f"{name:<15} {default:>6} vs {fine:>6} nodes/axis: mean |diff| "
              f"{diff.mean():.1e}, max {diff.max():.1e}; {1000 * seconds / len(X):.1f} s and "
              f"{1000 * fine_seconds / len(X):.1f} s per 1000 points; peak memory so far "
              f"{peak:.2f} GiB", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
