"""MAPA with and without a setting on scikit-learn's bundled tabular data sets, scored by the one
evaluator; for checking a default on data that were not used to choose it:

    python3 benchmarks/tabular.py --dataset cancer --latent-dims 16 24 --seeds 3 \\
        --compare code_smoothing=null --out bench-results/tabular-cancer
    python3 benchmarks/tabular.py --dataset wine --latent-dims 3 6 --seeds 3 \\
        --select '{}' '{"code_learning_rate": 1, "code_freeze_at": 1}'

Each data set (``cancer``: breast cancer, 569 × 30; ``wine``: 178 × 13; no download) is split
once (a fifth held out, the split fixed), standardised on its training rows, and fitted by
``MAPADensity`` under ``benchmarks/digits.py``'s protocol (decoder ``d_z → 128 → 128 → D``,
5000 steps of 100, peak rate 0.01, cosine, learned ``σ``) at its defaults and with the
``--compare`` settings, or with the settings chosen among the ``--select`` candidates on a tenth
of the training rows held out, or over ``--folds K`` folds (``benchmarks/select_setting.py``;
``{}``: the defaults), then refitted on all of them. Writes ``results.json`` (per run: the
held-out log-likelihood per row from 2000 importance samples of the fitted proposals, its
standard error, ``σ``, MAPA's width rule; for a selection, the chosen candidate and each one's
held-out score) and prints the medians over seeds and the change per seed.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np

DATASETS = ("cancer", "wine")


def split(name: str):
    """``(X_train, X_test)``: a fifth held out by a fixed permutation, both standardised with the
    training rows' means and deviations."""
    from sklearn.datasets import load_breast_cancer, load_wine
    from sklearn.preprocessing import StandardScaler

    data = {"cancer": load_breast_cancer, "wine": load_wine}[name]().data
    order = np.random.default_rng(0).permutation(len(data))
    test, train = order[:len(data) // 5], order[len(data) // 5:]
    scaler = StandardScaler().fit(data[train])
    return scaler.transform(data[train]), scaler.transform(data[test])


def one_run(name: str, latent_dim: int, seed: int, settings: dict,
            candidates: list[dict] | None = None, folds: int = 1) -> dict:
    """One fit at ``settings``, or, given ``candidates``, at those chosen among them on held-out
    training rows (a tenth, or ``folds``-fold cross-validation; the fit refitted on all of
    them), scored on the test rows."""
    import torch

    from mapa_vae import MAPADensity
    from select_setting import candidate_text, evaluator_scoring, held_out_scores, setting_search

    torch.set_num_threads(1)
    X, X_test = split(name)
    est = MAPADensity(latent_dim=latent_dim, hidden=(128, 128), steps=5000, batch_size=100,
                      learning_rate=0.01, random_state=seed, **settings)
    selection = None
    if candidates:
        search = setting_search(est, X, candidates, seed, scoring=evaluator_scoring(seed),
                                folds=folds)
        est = search.best_estimator_
        selection = {"chosen": candidate_text(search.best_params_),
                     "held_out": held_out_scores(search)}
    else:
        est.fit(X)
    log_p = est.log_likelihood(X_test, n_samples=2000, random_state=seed).log_prob
    return {"dataset": name, "latent_dim": latent_dim, "seed": seed,
            "settings": "selected" if candidates else settings, "selection": selection,
            "test_log_likelihood": float(log_p.mean()),
            "test_log_likelihood_se": float(log_p.std(ddof=1) / math.sqrt(len(log_p))),
            "sigma": est.sigma_, "bandwidth_rule": est.mapa_.bandwidth_rule_,
            "seconds": est.setup_seconds_ + est.train_seconds_}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=DATASETS, default="cancer")
    parser.add_argument("--latent-dims", type=int, nargs="+", default=[16, 24])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--compare", nargs="+", default=[], metavar="NAME=VALUE",
                        help="MAPADensity settings to compare with its defaults (VALUE as JSON "
                             "where it parses)")
    parser.add_argument("--select", nargs="+", default=None, metavar="JSON",
                        help="candidate sets of MAPADensity settings as JSON objects ({} the "
                             "defaults), chosen on held-out training rows, instead of --compare")
    parser.add_argument("--folds", type=int, default=1,
                        help="with --select: 1 holds out a tenth of the training rows once; "
                             "K > 1 cross-validates over K folds")
    parser.add_argument("--out", default="bench-results/tabular")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    from select_setting import parse_candidates, parse_settings

    if args.compare and args.select:
        parser.error("give --compare or --select, not both")
    compare = parse_settings(args.compare, parser, "--compare")
    candidates = parse_candidates(args.select, parser)
    if args.folds < 1 or (args.folds > 1 and not candidates):
        parser.error(f"--folds {args.folds}: expected 1, or more with --select")
    # the second of each pair of runs: the --compare settings, or the --select choice
    other = {"settings": {}, "candidates": candidates, "folds": args.folds} if candidates \
        else {"settings": compare}
    runs = [one_run(args.dataset, d, s, **arm) for d in args.latent_dims
            for s in range(args.seeds) for arm in ({"settings": {}}, other)]
    label = "selected" if candidates else compare  # the second runs' "settings" in one_run
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(runs, indent=1))
    print(f"{args.dataset}: held-out log-likelihood per row, median over {args.seeds} seeds; "
          f"defaults against {label or 'the defaults'}")
    for d in args.latent_dims:
        pair = [[r["test_log_likelihood"] for r in runs
                 if r["latent_dim"] == d and r["settings"] == settings]
                for settings in ({}, label)]
        change = ", ".join(f"{a - b:+.2f}" for a, b in zip(*pair))
        print(f"d_z={d}: defaults {statistics.median(pair[0]):.2f}, compared "
              f"{statistics.median(pair[1]):.2f}; defaults − compared per seed: {change}")
        for r in runs:
            if r["latent_dim"] == d and r["selection"]:
                print(f"  seed {r['seed']}: chose {r['selection']['chosen']}; held-out "
                      f"{r['selection']['held_out']}")


if __name__ == "__main__":
    main()
