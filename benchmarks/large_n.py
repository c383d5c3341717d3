"""End-to-end MAPA fit on many points: weights, attachment, training and scoring, timed.

    python3 benchmarks/large_n.py [--dataset circle] [--n 100000] [--steps 10000]
                                  [--n-neighbors auto] [--out bench-results/large_n.json]

Samples ``--n`` training points (and 5000 test points) of a built-in ground truth, fits
:class:`mapa_vae.MAPADensity` with the benchmark protocol (σ fixed at the truth, batch 100,
Adam at 0.01 with a cosine schedule, ``init="auto"``), and reports the seconds of each phase
(MAPA weights and candidate attachments; training, pilots and re-attachments included; the
bound diagnostics logged every ``--log-every`` steps; scoring), peak resident memory, the
attachment chosen, the neighbours kept and the kernel weight they lose (measured exactly on
sampled rows), and the test KL (quadrature). Uses every core.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="circle")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--log-every", type=int, default=1000)
    parser.add_argument("--n-neighbors", default="auto",
                        help="MAPA's neighbours per row: auto (default) or a number")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench-results/large_n.json")
    args = parser.parse_args()

    from mapa_vae import MAPADensity, datasets
    from mapa_vae.methods import METHODS
    from mapa_vae.files import write_json

    truth = datasets.get(args.dataset)
    rng = np.random.default_rng(args.seed)
    X, _ = truth.sample(args.n, seed=rng)
    X_test, _ = truth.sample(5000, seed=rng)
    log_p_true = truth.log_prob(X_test)

    est = MAPADensity(sigma=truth.sigma, latent_dim=truth.latent_dim, prior=truth.prior,
                      steps=args.steps, batch_size=100, learning_rate=METHODS["mapa"].learning_rate,
                      lr_schedule="cosine", log_every=args.log_every, random_state=args.seed,
                      verbose=True, n_neighbors=(args.n_neighbors if args.n_neighbors == "auto"
                                                 else int(args.n_neighbors)))
    start = time.perf_counter()
    est.fit(X)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    diff = log_p_true - est.score_samples(X_test)
    score_seconds = time.perf_counter() - start
    row = {
        "dataset": truth.name, "n_train": args.n, "steps": args.steps, "seed": args.seed,
        "setup_seconds": est.setup_seconds_,
        "train_seconds": est.train_seconds_,
        "fit_wall_seconds": fit_seconds,
        "diagnostics_seconds": fit_seconds - est.setup_seconds_ - est.train_seconds_,
        "score_seconds": score_seconds,
        "end_to_end_seconds": fit_seconds + score_seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "attachment": est.attachment_, "pilot_bounds": est.pilot_bounds_,
        "n_neighbors": int(est.mapa_.n_neighbors_),
        "lost_weight_max": float(est.mapa_.sampled_lost_mass_.max()),
        "lost_weight_mean": float(est.mapa_.sampled_lost_mass_.mean()),
        "neighbors_for_99": int(est.mapa_.neighbors_for_99_),
        "passes_per_step": est.passes_per_step_, "total_passes": int(est.total_passes_),
        "test_kl": float(diff.mean()), "test_kl_se": float(diff.std(ddof=1) / np.sqrt(diff.size)),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    write_json(Path(args.out), row)
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
