"""The demo experiment: MAPA against the true posteriors of a ground truth, no training.

A demo samples ``n_train`` training points ``(x_n, z_n)`` and ``n_test`` held-out points from
the ground truth (one random stream, from ``seed``), fits :class:`~mapa_vae.mapa.MAPAPosterior`
on the training points (``h = √2 σ`` from the true noise scale, or leave-one-out from the data
with ``estimate_bandwidth``), and compares, for each held-out ``x``, three posteriors over
training indices (:func:`~mapa_vae.evaluation.compare_posteriors`): MAPA, the empiricalized
posterior (ground-truth atoms ``z_n``) and the true posterior normalised over the indices.

:func:`run` returns a summary and, given a folder, writes ``summary.json`` and ``mapa.png``
there (each file whole or not at all). ``mapa-vae demo`` is this experiment.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import datasets
from .evaluation import compare_posteriors
from .files import save_figure, write_json
from .mapa import MAPAPosterior


@dataclass
class DemoConfig:
    """Everything that decides a demo."""

    dataset: str = "circle"  # a built-in name or path/to/file.py:object
    twin: bool = False  # the dataset's non-identifiable twin
    n_train: int = 1000
    n_test: int = 200
    n_neighbors: int | None = None  # neighbours kept per row (None: all, the exact dense form)
    estimate_bandwidth: bool = False  # h by leave-one-out instead of h = √2 σ
    seed: int = 0

    def validate(self) -> "DemoConfig":
        if self.n_neighbors is not None and self.n_neighbors > self.n_train:
            raise ValueError(f"--n-neighbors ({self.n_neighbors}) exceeds --n-train "
                             f"({self.n_train})")
        return self


def run(config: DemoConfig, out: str | Path | None = None) -> dict:
    """Run the demo; return its summary and, given ``out``, write ``summary.json`` and
    ``mapa.png`` (the MAPA weights and posterior trend of the first held-out point) there.

    The summary holds the settings, the ground truth's dimensions and ``σ``, MAPA's
    neighbours per row, bandwidth and its rule, fit time, the truncation's bound and exact lost
    mass (largest over rows), the mean true ``log p(x)`` of the held-out points and the
    posterior comparison's summary (mean total variation and rank correlation of each pair).

    Examples
    --------
    >>> from mapa_vae.demo import DemoConfig, run
    >>> summary = run(DemoConfig(dataset="circle", n_train=200, n_test=10))
    >>> sorted(summary["posterior_comparison"])
    ['empirical_vs_true', 'mapa_vs_empirical', 'mapa_vs_true']
    """
    truth = datasets.get(config.dataset, twin=config.twin)
    config.validate()
    rng = np.random.default_rng(config.seed)
    X, Z = truth.sample(config.n_train, seed=rng)
    X_test, _ = truth.sample(config.n_test, seed=rng)

    start = time.perf_counter()
    mapa = MAPAPosterior(n_neighbors=config.n_neighbors,
                         sigma=None if config.estimate_bandwidth else truth.sigma).fit(X)
    fit_seconds = time.perf_counter() - start
    comparison = compare_posteriors(truth, X, Z, X_test, mapa)
    summary = {
        "dataset": datasets.label(config.dataset, config.twin),
        "twin": config.twin,
        "seed": config.seed,
        "n_train": config.n_train,
        "n_test": config.n_test,
        "data_dim": truth.data_dim,
        "latent_dim": truth.latent_dim,
        "sigma": truth.sigma,
        "n_neighbors": mapa.neighbors_.shape[1],
        "bandwidth": mapa.bandwidth_,
        "bandwidth_rule": mapa.bandwidth_rule_,
        "fit_seconds": fit_seconds,
        "truncation_bound_max": float(mapa.truncation_bound_.max()),
        "truncated_mass_max": float(mapa.truncated_mass().max()),
        "mean_log_prob_test": float(truth.log_prob(X_test).mean()),
        "posterior_comparison": comparison.summary(),
    }
    if out is not None:
        import matplotlib.pyplot as plt

        from .run_figures import mapa_overview

        i = 0
        fig = mapa_overview(truth, X, Z, X_test[i], comparison.log_true[i],
                            comparison.log_empirical[i], comparison.log_mapa[i])
        out = Path(out)
        save_figure(fig, out / "mapa.png")
        plt.close(fig)
        write_json(out / "summary.json", summary)
    return summary
