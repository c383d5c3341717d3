"""The figures of one run (matplotlib, non-interactive backend; the other figure modules draw
with the backend set here):

* :func:`fit_overview`: a fitted model against its ground truth (``fit.png`` of ``mapa-vae fit``
  and of every bench run);
* :func:`mapa_overview`: MAPA's weights and posterior trend for one held-out point (``mapa.png``
  of ``mapa-vae demo``);
* :func:`image_grid`: samples shown as images (``benchmarks/digits.py``).

The paper's figures are in :mod:`mapa_vae.paper_figures`, the benchmark's in
:mod:`mapa_vae.bench_figures`.
"""
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


def _decoder_grid(prior, n: int) -> np.ndarray:
    """``n`` prior quantiles per axis (1-D: shape ``(n, 1)``; 2-D: ``(n, n, 2)``), avoiding the
    extreme tails."""
    u = torch.linspace(0.5 / n, 1 - 0.5 / n, n, dtype=torch.float64)
    z = prior.icdf(u[:, None].expand(n, prior.latent_dim).contiguous()).numpy()
    if prior.latent_dim == 1:
        return z
    return np.stack(np.meshgrid(z[:, 0], z[:, 1], indexing="ij"), axis=-1)


def _draw_decoder(ax, decode, prior, color, label, ls="-"):
    """The image of the latent space in the data plane: a curve (1-D) or mesh lines (2-D);
    nothing above two latent dimensions."""
    if prior.latent_dim > 2:
        return
    grid = _decoder_grid(prior, 400 if prior.latent_dim == 1 else 9)
    if prior.latent_dim == 1:
        curve = decode(grid)
        ax.plot(curve[:, 0], curve[:, -1], color=color, lw=1.2, ls=ls, label=label)
        return
    fine = _decoder_grid(prior, 200)
    for j in range(grid.shape[0]):
        for lines in (np.stack([fine[:, 0, 0], np.full(200, grid[0, j, 1])], 1),
                      np.stack([np.full(200, grid[j, 0, 0]), fine[0, :, 1]], 1)):
            mesh = decode(lines)
            ax.plot(mesh[:, 0], mesh[:, -1], color=color, lw=0.7, ls=ls,
                    label=label if j == 0 else None)
            label = None


def fit_overview(truth, X_train, estimator, title: str = ""):
    """A fitted model against its ground truth, in three panels.

    Left: training data, model samples and the learned ``f_θ`` (its curve, or mesh lines for a
    2-D latent) in the data plane; for 1-D data, the histogram with the true and model densities.
    Middle: ``f_θ`` and the true ``f`` per output coordinate against ``u = F(z)`` (1-D latent);
    above, a note of where ``f_θ`` is shown (2-D latent) or that it is not (higher).
    For a ground truth with an ``image_shape`` attribute ``(H, W)`` (``blobs``) and a latent of
    dimension 1 or 2: training images at the left, ``f_θ`` on a grid of codes in the middle.
    Right: the training objective and, if measured, the test KL against cumulative passes.
    """
    fig, (data_ax, decoder_ax, history_ax) = plt.subplots(1, 3, figsize=(16, 4.6))
    samples = estimator.sample(len(X_train), random_state=0)

    def true_f(z):
        return truth.mean(z)

    image_shape = getattr(truth, "image_shape", None)  # (H, W) when each row is an image
    as_images = image_shape is not None and estimator.model_.latent_dim <= 2
    if as_images:
        _image_panel(data_ax, X_train[:25], image_shape, f"{title or truth.name}: training data")
        grid = _decoder_grid(estimator.model_.prior, 5).reshape(-1, estimator.model_.latent_dim)
        _image_panel(decoder_ax, estimator.decode(grid), image_shape,
                     "learned f_θ on a 5 × 5 grid of prior quantiles")
    elif X_train.shape[1] == 1:
        x = X_train[:, 0]
        lo, hi = np.percentile(x, [0.1, 99.9])
        pad = 0.1 * (hi - lo)
        grid = np.linspace(lo - pad, hi + pad, 600)[:, None]
        data_ax.hist(x, bins=60, density=True, color="0.8", label="training data")
        data_ax.plot(grid[:, 0], np.exp(truth.log_prob(grid)), "k--", lw=1.2, label="p_true(x)")
        data_ax.plot(grid[:, 0], np.exp(estimator.score_samples(grid)), color="tab:red", lw=1.2,
                     label="p_θ(x)")
        data_ax.set(xlabel="x", ylabel="density")
    else:
        data_ax.scatter(X_train[:, 0], X_train[:, -1], s=4, color="0.65", label="training data")
        data_ax.scatter(samples[:, 0], samples[:, -1], s=4, color="tab:blue", alpha=0.5,
                        label="model samples")
        _draw_decoder(data_ax, true_f, truth.prior, "k", "true f", ls="--")
        _draw_decoder(data_ax, estimator.decode, estimator.model_.prior, "tab:red", "learned f_θ")
        data_ax.set(xlabel="x[0]", ylabel=f"x[{X_train.shape[1] - 1}]", aspect="equal")
    if not as_images:
        data_ax.set_title(title or truth.name)
        data_ax.legend(loc="best", fontsize=8)

    if estimator.model_.latent_dim == 1 and not as_images:
        u = np.linspace(0.002, 0.998, 500)
        z = estimator.model_.prior.icdf(torch.from_numpy(u[:, None])).numpy()
        learned, true = estimator.decode(z), true_f(truth.prior.icdf(
            torch.from_numpy(u[:, None])).numpy())
        for j in range(learned.shape[1]):
            color = f"C{j}"
            decoder_ax.plot(u, learned[:, j], color=color, lw=1.3, label=f"f_θ(z)[{j}]")
            decoder_ax.plot(u, true[:, j], color=color, lw=1.0, ls="--", label=f"true f(z)[{j}]")
        decoder_ax.set(xlabel="u = F(z), the prior's CDF", ylabel="decoder output",
                       title="learned and true decoder (identifiable only up to a twin)")
        decoder_ax.legend(loc="best", fontsize=7)
    elif not as_images:
        d = estimator.model_.latent_dim
        decoder_ax.axis("off")
        decoder_ax.text(0.5, 0.5, "latent dimension 2:\nmesh lines of f_θ at the left" if d == 2
                        else f"latent dimension {d}: f_θ is not drawn;\nthe left panel compares "
                             f"samples with the data", ha="center", va="center")

    history = estimator.history_
    passes = [row["passes"] for row in history]
    history_ax.plot(passes, [row["objective"] for row in history], color="tab:green")
    history_ax.set(xlabel="cumulative network passes", ylabel="training objective (per point)",
                   title="training")
    kl_rows = [row for row in history if "test_kl" in row]
    if kl_rows:
        kl_ax = history_ax.twinx()
        kl_ax.plot([r["passes"] for r in kl_rows], [max(r["test_kl"], 1e-4) for r in kl_rows],
                   color="tab:purple", marker=".")
        kl_ax.set_yscale("log")
        kl_ax.set_ylabel("test KL (nats)", color="tab:purple")
    fig.tight_layout()
    return fig


def _image_panel(ax, images, image_shape: tuple[int, int], title: str):
    """Images given as rows of length ``H·W`` (values shown on [0, 1], clipped), laid out in a
    square grid on ``ax``."""
    h, w = image_shape
    side = int(np.ceil(np.sqrt(len(images))))
    mosaic = np.ones((side * (h + 1) - 1, side * (w + 1) - 1))
    for i, image in enumerate(np.clip(images, 0.0, 1.0)):
        r, c = divmod(i, side)
        mosaic[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = image.reshape(h, w)
    ax.imshow(mosaic, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.axis("off")


def image_grid(panels: dict, image_shape: tuple[int, int], title: str = ""):
    """One mosaic per panel: ``panels[name]`` holds images as rows of length ``H·W`` (values
    shown on [0, 1], clipped), laid out in a square grid."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
    for ax, (name, images) in zip(axes[0], panels.items()):
        _image_panel(ax, images, image_shape, name)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig
