"""MAPA's kernel width chosen on held-out training points, on a built-in ground truth.

For each seed: the bench's training sample of the dataset (same seeds, same settings as
``mapa-vae bench``), scikit-learn's ``GridSearchCV`` over MAPA's ``effective_neighbours`` with
one split holding out ``--held-out`` of the training points (scored by ``MAPADensity.score``,
the held-out log-likelihood: quadrature up to ``d_z = 2``, the one evaluator above), then the
run itself (:func:`mapa_vae.experiment.run`) with the chosen width, scored by its test KL as
the bench scores every run. Candidate ``0`` is MAPA's default width (``√2 σ`` for the known
``σ``, or leave-one-out).

    python3 benchmarks/select_width.py --dataset linear-gaussian [--seeds 3]
                                       [--candidates 0 1.5 2 3] [--held-out 0.1]
                                       [--n-test 1000] [--out bench-results/select-width]

Writes ``DIR/DATASET.json``: per seed the held-out mean log-likelihood of every candidate, the
chosen one, the selection's seconds and the chosen run's test KL with its standard error.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def width_search(estimator, X: np.ndarray, candidates: list[float], seed: int,
                 held_out: float = 0.1, scoring=None, refit: bool = True):
    """scikit-learn's ``GridSearchCV`` over MAPA's ``effective_neighbours`` (``0`` in
    ``candidates``: the default width) with one split holding out a share ``held_out`` of
    ``X`` (seeded by ``seed``), scored by ``scoring`` (default: the estimator's ``score``, the
    held-out log-likelihood) and, with ``refit``, the best refitted on all of ``X``."""
    from sklearn.model_selection import GridSearchCV, ShuffleSplit

    split = ShuffleSplit(n_splits=1, test_size=held_out, random_state=seed)
    return GridSearchCV(estimator, {"effective_neighbours": [k or None for k in candidates]},
                        scoring=scoring, refit=refit, cv=split).fit(X)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="linear-gaussian")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--candidates", type=float, nargs="+", default=[0, 1.5, 2, 3])
    parser.add_argument("--held-out", type=float, default=0.1)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--out", default="bench-results/select-width")
    args = parser.parse_args()
    from mapa_vae import datasets
    from mapa_vae.experiment import RunConfig, build_estimator, run, sample_data
    from mapa_vae.files import write_json

    truth = datasets.get(args.dataset)
    rows = []
    for seed in range(args.seeds):
        config = RunConfig.from_settings(dataset=args.dataset, method="mapa", seed=seed,
                                         n_test=args.n_test)
        X, Z, _ = sample_data(config, truth)
        start = time.perf_counter()
        search = width_search(build_estimator(config, truth, Z), X, args.candidates, seed,
                              args.held_out, refit=False)
        seconds = time.perf_counter() - start
        n_held = int(np.ceil(args.held_out * len(X)))
        chosen = search.best_params_["effective_neighbours"]
        extra = {} if chosen is None else {"effective_neighbours": chosen}
        metrics = run(RunConfig.from_settings(dataset=args.dataset, method="mapa", seed=seed,
                                              n_test=args.n_test, extra=extra))
        rows.append({"seed": seed, "chosen": chosen or 0, "selection_seconds": seconds,
                     "held_out_mean_log_likelihood": {
                         str(k or 0): float(score) / n_held for k, score in zip(
                             search.cv_results_["param_effective_neighbours"],
                             search.cv_results_["mean_test_score"])},
                     "test_kl": metrics["test_kl"], "test_kl_se": metrics["test_kl_se"],
                     "bandwidth": metrics["bandwidth"], "seconds": metrics["seconds"]})
        print(rows[-1], flush=True)
    kl = [r["test_kl"] for r in rows]
    print(f"{args.dataset}: held-out width, test KL median {np.median(kl):.3g} "
          f"[{min(kl):.3g}, {max(kl):.3g}]")
    write_json(Path(args.out) / f"{args.dataset}.json", {"args": vars(args), "runs": rows})


if __name__ == "__main__":
    main()
