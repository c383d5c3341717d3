"""MAPA's settings chosen on held-out training points, on a built-in ground truth.

For each seed: the bench's training sample of the dataset (same seeds, same settings as
``mapa-vae bench``), scikit-learn's ``GridSearchCV`` over candidate settings (by default MAPA's
kernel width ``effective_neighbours``) with one split holding out ``--held-out`` of the training
points (scored by ``MAPADensity.score``, the held-out log-likelihood: quadrature up to
``d_z = 2``, the one evaluator above), then the run itself (:func:`mapa_vae.experiment.run`)
with the chosen settings, scored by its test KL as the bench scores every run.

    python3 benchmarks/select_setting.py --dataset linear-gaussian [--seeds 3]
                                         [--select effective_neighbours null 1.5 2 3]
                                         [--held-out 0.1] [--n-test 1000]
                                         [--out bench-results/select-setting]

``--select NAME VALUE ...`` chooses one setting among values read as JSON where they parse
(``null``: for the width, the leave-one-out or ``√2 σ`` width without the default's cap; for
other settings, their default rule), else as strings; ``--select '{JSON}' '{JSON}' ...`` chooses
among whole sets of settings, e.g. ``'{}' '{"code_learning_rate": 1, "code_freeze_at": 1}'``
(``{}``: the defaults). Writes ``DIR/DATASET.json``: per seed the held-out mean
log-likelihood of every candidate, the chosen one, the selection's seconds and the chosen run's
test KL with its standard error.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def parse_value(text: str):
    """A setting's value from the command line: JSON where it parses (``null``, numbers,
    lists), else the string itself (``auto``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_settings(items: list[str], parser, option: str) -> dict:
    """Estimator settings from ``NAME=VALUE`` items (:func:`parse_value`); a malformed item is a
    usage error naming ``option``."""
    settings = {}
    for item in items:
        name, _, value = item.partition("=")
        if not name or not value:
            parser.error(f"{option} {item}: expected NAME=VALUE")
        settings[name] = parse_value(value)
    return settings


def candidates_from(tokens: list[str]) -> list[dict]:
    """Candidate settings from the command line: ``NAME VALUE ...`` (one setting, two values at
    least) or JSON objects, one per candidate. Raises ``ValueError`` naming what is wrong."""
    if tokens and tokens[0].lstrip().startswith("{"):
        candidates = [parse_value(t) for t in tokens]
        if len(candidates) < 2 or not all(isinstance(c, dict) for c in candidates):
            raise ValueError(f"expected two JSON objects of settings at least, got {tokens}")
        return candidates
    if len(tokens) < 3:
        raise ValueError(f"expected NAME VALUE VALUE ... (two values at least), got {tokens}")
    return [{tokens[0]: parse_value(t)} for t in tokens[1:]]


def parse_candidates(tokens: list[str] | None, parser, option: str = "--select"):
    """:func:`candidates_from` for a command line: ``None`` without tokens, a usage error
    naming ``option`` for malformed ones."""
    if not tokens:
        return None
    try:
        return candidates_from(tokens)
    except ValueError as error:
        parser.error(f"{option}: {error}")


def candidate_text(settings: dict) -> str:
    """A candidate's label: ``NAME=VALUE, ...`` in name order, or ``defaults`` for ``{}``."""
    return ", ".join(f"{name}={json.dumps(settings[name])}" for name in sorted(settings)) \
        or "defaults"


def setting_search(estimator, X: np.ndarray, candidates: list[dict], seed: int,
                   held_out: float = 0.1, scoring=None, refit: bool = True, folds: int = 1):
    """scikit-learn's ``GridSearchCV`` over ``candidates`` (dicts of the estimator's settings;
    ``{}``: its own) with one split holding out a share ``held_out`` of ``X`` (seeded by
    ``seed``; with ``folds > 1``, ``folds``-fold cross-validation instead, every point held out
    once), scored by ``scoring`` (default: the estimator's ``score``, the held-out
    log-likelihood; averaged over the folds) and, with ``refit``, the best refitted on all of
    ``X``."""
    from sklearn.model_selection import GridSearchCV, KFold, ShuffleSplit

    unknown = {name for c in candidates for name in c} - set(estimator.get_params())
    if unknown:
        raise ValueError(f"not settings of {type(estimator).__name__}: {sorted(unknown)}")
    split = (ShuffleSplit(n_splits=1, test_size=held_out, random_state=seed) if folds == 1
             else KFold(folds, shuffle=True, random_state=seed))
    grid = [{name: [value] for name, value in c.items()} for c in candidates]
    return GridSearchCV(estimator, grid, scoring=scoring, refit=refit, cv=split).fit(X)


def held_out_log_likelihood(est, X: np.ndarray, seed: int, n_samples: int) -> np.ndarray:
    """``log p_θ(x)`` per row: quadrature up to ``d_z = 2``, above the one evaluator with
    ``n_samples`` importance samples per row."""
    if est.latent_dim <= 2:
        return est.score_samples(X)
    return est.log_likelihood(X, n_samples=n_samples, random_state=seed).log_prob


def evaluator_scoring(seed: int, n_samples: int = 500):
    """A ``GridSearchCV`` scorer: the held-out rows' mean :func:`held_out_log_likelihood`."""

    def score(est, X_held, y=None):
        return float(held_out_log_likelihood(est, X_held, seed, n_samples).mean())

    return score


def held_out_scores(search, per_point: float = 1.0) -> dict:
    """``{candidate label: mean held-out score × per_point}`` from a finished search."""
    return {candidate_text(params): float(score) * per_point for params, score in zip(
        search.cv_results_["params"], search.cv_results_["mean_test_score"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="linear-gaussian")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--select", nargs="+",
                        default=["effective_neighbours", "null", "1.5", "2", "3"],
                        metavar="NAME VALUE | JSON",
                        help="one setting and its candidate values, or candidate sets of "
                             "settings as JSON objects")
    parser.add_argument("--held-out", type=float, default=0.1)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--out", default="bench-results/select-setting")
    args = parser.parse_args()
    from mapa_vae import datasets
    from mapa_vae.experiment import RunConfig, build_estimator, run, sample_data
    from mapa_vae.files import write_json

    candidates = parse_candidates(args.select, parser)
    truth = datasets.get(args.dataset)
    rows = []
    for seed in range(args.seeds):
        config = RunConfig.from_settings(dataset=args.dataset, method="mapa", seed=seed,
                                         n_test=args.n_test)
        X, Z, _ = sample_data(config, truth)
        start = time.perf_counter()
        try:
            search = setting_search(build_estimator(config, truth, Z), X, candidates, seed,
                                    args.held_out, refit=False)
        except ValueError as error:
            parser.error(f"--select: {error}")
        seconds = time.perf_counter() - start
        n_held = int(np.ceil(args.held_out * len(X)))
        chosen = search.best_params_
        metrics = run(RunConfig.from_settings(dataset=args.dataset, method="mapa", seed=seed,
                                              n_test=args.n_test, extra=chosen))
        rows.append({"seed": seed, "chosen": chosen, "selection_seconds": seconds,
                     "held_out_mean_log_likelihood": held_out_scores(search, 1 / n_held),
                     "test_kl": metrics["test_kl"], "test_kl_se": metrics["test_kl_se"],
                     "bandwidth": metrics["bandwidth"], "seconds": metrics["seconds"]})
        print(rows[-1], flush=True)
    kl = [r["test_kl"] for r in rows]
    print(f"{args.dataset}: settings chosen on held-out points, test KL median "
          f"{np.median(kl):.3g} [{min(kl):.3g}, {max(kl):.3g}]")
    write_json(Path(args.out) / f"{args.dataset}.json", {"args": vars(args), "runs": rows})


if __name__ == "__main__":
    main()
