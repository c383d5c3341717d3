"""Compare MAPA's projection (the exchange among positions that crossed to another atom) with
the full exact assignment, at every projection of real fits.

    python3 benchmarks/projection.py [--datasets digits swiss-roll] [--seed 0]
                                     [--out bench-results/projection.json]

Each fit runs with the default settings (digits: ``benchmarks/digits.py``'s protocol at
``d_z = 2``; a ground truth: the bench's protocol, 200 test points). At every projection the
positions are also assigned to the atoms by SciPy's full linear assignment; the fit itself
continues with the library's projection, so it is the fit the library makes. Reported per
dataset: the number of projections, how many gave the same permutation as the full assignment,
the largest excess of the total squared distance over the full assignment's, the positions
that lay nearer another atom than their own (median and largest), and the seconds both took.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def record_projections(fit) -> list[dict]:
    """Run ``fit()`` while recording every projection above one latent dimension."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial import KDTree
    from scipy.spatial.distance import cdist

    from mapa_vae import atoms as atoms_module

    records = []
    original = atoms_module.nearest_exchange

    def compared(positions, atoms, perm):
        start = time.perf_counter()
        exact = linear_sum_assignment(cdist(positions, atoms, "sqeuclidean"))[1]
        middle = time.perf_counter()
        out = original(positions, atoms, perm)
        end = time.perf_counter()

        def total(p):
            return float(((positions - atoms[p]) ** 2).sum())

        crossed = int((KDTree(atoms).query(positions)[1] != perm).sum())
        records.append({"same": bool((out == exact).all()), "excess": total(out) - total(exact),
                        "crossed": crossed, "exact_seconds": middle - start,
                        "exchange_seconds": end - middle})
        return out

    atoms_module.nearest_exchange = compared
    try:
        fit()
    finally:
        atoms_module.nearest_exchange = original
    return records


def fit_digits(seed: int):
    sys.path.insert(0, str(Path(__file__).parent))
    from digits import digits, protocol_params

    from mapa_vae.methods import make_estimator

    X, _ = digits(seed)
    return lambda: make_estimator("mapa", **protocol_params("mapa", 2, seed, 5000, 0.01)).fit(X)


def fit_truth(name: str, seed: int):
    from mapa_vae.experiment import RunConfig, run

    return lambda: run(RunConfig.from_settings(dataset=name, method="mapa", seed=seed,
                                               n_test=200))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "swiss-roll"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench-results/projection.json")
    args = parser.parse_args(argv)
    import torch

    from mapa_vae.files import write_json

    torch.set_num_threads(1)
    report = {}
    for name in args.datasets:
        fit = fit_digits(args.seed) if name == "digits" else fit_truth(name, args.seed)
        records = record_projections(fit)
        if not records:
            raise SystemExit(f"{name}: no projection above one latent dimension was made")
        crossed = [r["crossed"] for r in records]
        report[name] = {
            "projections": len(records), "same_as_exact": sum(r["same"] for r in records),
            "largest_excess": max(r["excess"] for r in records),
            "crossed_median": float(np.median(crossed)), "crossed_max": max(crossed),
            "exact_seconds": sum(r["exact_seconds"] for r in records),
            "exchange_seconds": sum(r["exchange_seconds"] for r in records)}
        row = report[name]
        print(f"{name}: {row['same_as_exact']} of {row['projections']} projections the same as "
              f"the full assignment, largest excess {row['largest_excess']:.3g}; positions "
              f"that crossed: median {row['crossed_median']:g}, largest {row['crossed_max']}; "
              f"seconds: full {row['exact_seconds']:.2f}, exchange "
              f"{row['exchange_seconds']:.2f}")
    write_json(Path(args.out), {"seed": args.seed, "datasets": report})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
