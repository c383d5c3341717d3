"""Figures (matplotlib, non-interactive backend)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _data_coordinates(X: np.ndarray, Z: np.ndarray):
    """What to draw for a data set: ``(horizontal, vertical, labels)``.

    1-D data is drawn against its first latent coordinate; higher-dimensional data by its first
    and last columns.
    """
    if X.shape[1] == 1:
        return X[:, 0], Z[:, 0], ("x", "z (ground truth)")
    return X[:, 0], X[:, -1], ("x[0]", f"x[{X.shape[1] - 1}]")


def mapa_overview(truth, X_train, Z_train, x_query, log_true, log_empirical, log_mapa):
    """Two panels for one held-out point ``x*``.

    Left: training data coloured by ``log MAPA(n | x*)``, with the true curve ``f``.
    Right: log-posteriors over training indices against ``z^GT`` (paper, Fig. 3): the true
    posterior density (normalised over indices), the empiricalized posterior, and MAPA.
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    h, v, (hl, vl) = _data_coordinates(X_train, Z_train)
    order = np.argsort(log_mapa)
    sc = left.scatter(h[order], v[order], c=np.maximum(log_mapa[order], -30), s=8, cmap="viridis")
    fig.colorbar(sc, ax=left, label="log MAPA(n | x*)  (clipped at −30)")
    if X_train.shape[1] > 1 and truth.latent_dim == 1:
        grid = truth.prior.icdf(torch.linspace(1e-4, 1 - 1e-4, 2000, dtype=torch.float64))
        curve = truth.decode(grid[:, None]).numpy()
        left.plot(curve[:, 0], curve[:, -1], color="k", lw=0.8, label="f (truth)")
    qh, qv, _ = _data_coordinates(x_query[None, :], np.zeros((1, 1)))
    if X_train.shape[1] > 1:
        left.scatter(qh, qv, marker="*", s=250, color="red", edgecolor="k", label="x*", zorder=5)
    else:
        left.axvline(qh[0], color="red", lw=1.5, label="x*")
    left.set(xlabel=hl, ylabel=vl, title=f"{truth.name}: MAPA weights of one held-out point")
    left.legend(loc="best", fontsize=8)

    z = Z_train[:, 0]
    order = np.argsort(z)
    right.scatter(z, log_mapa, s=5, color="tab:blue", label="MAPA", zorder=1)
    right.plot(z[order], log_true[order], color="k", lw=1.2,
               label="true posterior (normalised over n)")
    right.plot(z[order], log_empirical[order], color="tab:red", lw=1.2, ls="--",
               label="empiricalized posterior")
    top = max(log_true.max(), log_empirical.max(), log_mapa.max())
    right.set_ylim(top - 60, top + 3)
    right.set(xlabel="z^GT of training index n (first coordinate)", ylabel="log posterior over n",
              title="posterior trend (paper, Fig. 3)")
    right.legend(loc="lower center", fontsize=8)
    fig.tight_layout()
    return fig
