"""The paper's figures that need no training, remade from the ground truths and MAPA alone
(``mapa-vae figures``; also written by ``mapa-vae bench``):

* Fig. 1, ``fig1_quadratic.png``: the quadratic model and its twin, the same four observations,
  the joint density, the shared marginal and each observation's posterior under both.
* Fig. 3, ``fig3_posterior_trend.png``: for held-out ``x``, log-posteriors over training indices
  against ``z^GT``: the true posterior, the empiricalized one (ground-truth atoms) and MAPA.
* Figs. 4–5, ``fig4_absolute_value.png``, ``fig5_circle.png``: a model and its twin (same data,
  other codes); MAPA, which is the same for both, against each one's posteriors.

The paper's Fig. 2 needs trained models; it is one of the bench's figures
(:mod:`mapa_vae.bench_figures`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import datasets
from .evaluation import compare_posteriors, total_variation
from .files import save_figure
from .mapa import MAPAPosterior
from .run_figures import plt

_COLORS = {"true": "k", "empirical": "tab:red", "mapa": "tab:blue"}


def _trend_panel(ax, z, comparison, row: int, title: str = "", legend: bool = False,
                 curves: bool = True):
    """Log-posteriors over training indices against their codes ``z`` for test point ``row``;
    the true and empiricalized posteriors as curves along ``z``, or as dots (``curves=False``)."""
    if curves:
        order = np.argsort(z)
        ax.plot(z[order], comparison.log_true[row, order], color=_COLORS["true"], lw=1.2,
                label="true posterior (over n)")
        ax.plot(z[order], comparison.log_empirical[row, order], color=_COLORS["empirical"],
                lw=1.1, ls="--", label="empiricalized posterior")
    else:  # codes of a 2-D latent: the first coordinate does not order the points
        ax.scatter(z, comparison.log_true[row], s=5, color=_COLORS["true"],
                   label="true posterior (over n)")
        ax.scatter(z, comparison.log_empirical[row], s=2, color=_COLORS["empirical"],
                   label="empiricalized posterior")
    ax.scatter(z, comparison.log_mapa[row], s=3, color=_COLORS["mapa"], label="MAPA", zorder=3)
    top = max(comparison.log_true[row].max(), comparison.log_empirical[row].max(),
              comparison.log_mapa[row].max())
    ax.set_ylim(top - 40, top + 2)
    ax.set_title(title, fontsize=9)
    if legend:
        ax.legend(fontsize=7, loc="lower right")


def figure_1(seed: int = 0):
    """Paper Fig. 1: the quadratic model and its twin."""
    truth, twin = datasets.get("quadratic"), datasets.get("quadratic", twin=True)
    rng = np.random.default_rng(seed)
    x_obs = truth.sample(4, seed=rng)[0][:, 0]
    z = np.linspace(0.0005, 0.9995, 800)[:, None]
    x = np.linspace(-0.04, 0.29, 600)[:, None]
    log_px = truth.log_prob(x)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex="row")
    colors = plt.cm.viridis(np.linspace(0.1, 0.85, 4))
    for col, (model, label) in enumerate([(truth, "variant 1: f(z) = (0.5 − z)²"),
                                          (twin, "variant 2: f(z) = 0.25 z²")]):
        top, bottom = axes[0, col], axes[1, col]
        fz = model.mean(z)[:, 0]
        sq = (x[:, 0][None, :] - fz[:, None]) ** 2
        joint = np.exp(-0.5 * sq / model.sigma**2)  # p(z) = 1 on [0, 1]
        top.contourf(z[:, 0], x[:, 0], joint.T, levels=8, cmap="Greys", alpha=0.7)
        top.plot(z[:, 0], fz, color="k", lw=1, label="f(z)")
        scale = 0.25 / np.exp(log_px).max()
        top.plot(np.exp(log_px) * scale, x[:, 0], color="tab:blue", lw=1.4,
                 label="p(x), shared (scaled)")
        for c, xi in zip(colors, x_obs):
            top.axhline(xi, color=c, lw=1, ls="--")
            post = np.exp(model.log_posterior(np.array([[xi]]), z)[0])
            bottom.plot(z[:, 0], post, color=c, lw=1.4, label=f"p(z | x = {xi:.3f})")
        top.set(xlabel="z", ylabel="x", title=label)
        top.legend(fontsize=8, loc="upper center")
        bottom.set(xlabel="z", ylabel="posterior density", title="posteriors of the same four x")
        bottom.legend(fontsize=7)
    fig.suptitle("Fig. 1: same p(x), different posteriors; MAPA depends on the data only",
                 fontsize=11)
    fig.tight_layout()
    return fig


def figure_3(n_train: int = 1000, seed: int = 0, n_points: int = 3):
    """Paper Fig. 3: MAPA captures the trend of the true posterior, on every built-in dataset."""
    names = datasets.names()
    fig, axes = plt.subplots(len(names), n_points, figsize=(3.6 * n_points, 2.5 * len(names)))
    for i, name in enumerate(names):
        truth = datasets.get(name)
        rng = np.random.default_rng(seed)
        X, Z = truth.sample(n_train, seed=rng)
        X_test, _ = truth.sample(n_points, seed=rng)
        mapa = MAPAPosterior(sigma=truth.sigma).fit(X)
        comparison = compare_posteriors(truth, X, Z, X_test, mapa)
        for j in range(n_points):
            _trend_panel(axes[i, j], Z[:, 0], comparison, j,
                         title=f"{name}, x* = {np.array2string(X_test[j], precision=2)}",
                         legend=i == 0 and j == 0, curves=truth.latent_dim == 1)
            axes[i, j].set_xlabel("z^GT (first coordinate)" if i == len(names) - 1 else "")
        axes[i, 0].set_ylabel("log posterior over n")
    fig.suptitle("Fig. 3: log-posteriors over training indices against z^GT", fontsize=11)
    fig.tight_layout()
    return fig


def figure_twins(name: str, n_train: int = 1000, seed: int = 0, n_points: int = 2):
    """Paper Figs. 4–5: a model and its twin on the same data; MAPA against both."""
    truth, twin = datasets.get(name), datasets.get(name, twin=True)
    rng = np.random.default_rng(seed)
    X, Z = truth.sample(n_train, seed=rng)
    X_test, _ = truth.sample(n_points, seed=rng)
    codes = {"model": Z, "twin": datasets.twin_codes(name, Z)}
    mapa = MAPAPosterior(sigma=truth.sigma).fit(X)
    fig, axes = plt.subplots(1 + n_points, 2, figsize=(10, 3.3 * (1 + n_points)))
    for col, (label, model) in enumerate([("model", truth), ("twin", twin)]):
        z = codes[label]
        comparison = compare_posteriors(model, X, z, X_test, mapa)
        top = axes[0, col]
        u = torch.special.ndtr(torch.from_numpy(z[:, 0])).numpy()
        if X.shape[1] == 1:
            top.scatter(z[:, 0], X[:, 0], s=3, c=u, cmap="twilight")
            top.scatter(np.full(n_points, z.min()), X_test[:, 0], marker=">", s=80,
                        color="red", label="x*")
            top.set(xlabel="z^GT", ylabel="x")
        else:
            sc = top.scatter(X[:, 0], X[:, 1], s=3, c=u, cmap="twilight")
            top.scatter(X_test[:, 0], X_test[:, 1], marker="*", s=160, color="red",
                        edgecolor="k", label="x*")
            top.set(xlabel="x[0]", ylabel="x[1]", aspect="equal")
            fig.colorbar(sc, ax=top, label="Φ(z^GT) under this model")
        top.set_title(f"{name} {label}: the same data, coloured by its codes", fontsize=9)
        top.legend(fontsize=7)
        for j in range(n_points):
            tv = total_variation(comparison.log_mapa[j:j + 1], comparison.log_true[j:j + 1])[0]
            _trend_panel(axes[1 + j, col], z[:, 0], comparison, j,
                         title=f"{label}: x* = {np.array2string(X_test[j], precision=2)}; "
                               f"TV(MAPA, true) = {tv:.2f}", legend=j == 0)
            axes[1 + j, col].set_xlabel(f"z^GT under the {label}")
    fig.suptitle(f"{name}: MAPA is the same for a model and its twin and follows both posteriors",
                 fontsize=11)
    fig.tight_layout()
    return fig


def paper_figures(out: str | Path, n_train: int = 1000, seed: int = 0) -> list[Path]:
    """Write Figs. 1, 3, 4 and 5 as PNG files in ``out``."""
    out = Path(out)
    made = [(figure_1(seed), "fig1_quadratic.png"),
            (figure_3(n_train, seed), "fig3_posterior_trend.png"),
            (figure_twins("absolute-value", n_train, seed), "fig4_absolute_value.png"),
            (figure_twins("circle", n_train, seed), "fig5_circle.png")]
    paths = []
    for fig, name in made:
        paths.append(save_figure(fig, out / name))
        plt.close(fig)
    return paths
