"""Time the mixture log-density that every quadrature test KL runs, against the direct formula.

``mixture_log_prob`` (cache-sized blocks of rows, arithmetic in place) against the same
quantity written term by term, ``logsumexp(mixture_log_joint(...))`` over blocks of 2²² pairs
(the earlier implementation), on the bench's largest case: 5000 test points against the 256²
nodes of the 2-D grid, ``D = 3``, float64, one thread. Writes
``bench-results/mixture_speed.json`` with each time (best of ``--repeats``) and the largest
difference between the two.

    python3 benchmarks/mixture_speed.py
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from mapa_vae.likelihood import mixture_log_joint, mixture_log_prob


def direct(x, means, log_w, sigma, pairs=1 << 22):
    """The term-by-term formula in blocks of ``pairs`` pairs."""
    step = max(1, pairs // means.shape[0])
    return torch.cat([torch.logsumexp(mixture_log_joint(x[i:i + step], means, log_w, sigma), 1)
                      for i in range(0, x.shape[0], step)])


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=5000)
    parser.add_argument("--nodes", type=int, default=256**2)
    parser.add_argument("--dim", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench-results/mixture_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.points, args.dim, dtype=torch.float64, generator=generator)
    means = torch.randn(args.nodes, args.dim, dtype=torch.float64, generator=generator)
    log_w = torch.full((args.nodes,), -math.log(args.nodes), dtype=torch.float64)
    sigma = 0.3
    result = {
        "points": args.points, "nodes": args.nodes, "dim": args.dim,
        "mixture_log_prob_seconds": best_time(lambda: mixture_log_prob(x, means, log_w, sigma),
                                              args.repeats),
        "direct_seconds": best_time(lambda: direct(x, means, log_w, sigma), args.repeats),
        "max_abs_difference": float((mixture_log_prob(x, means, log_w, sigma)
                                     - direct(x, means, log_w, sigma)).abs().max()),
    }
    result["speedup"] = result["direct_seconds"] / result["mixture_log_prob_seconds"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
