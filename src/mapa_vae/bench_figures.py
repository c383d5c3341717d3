"""The benchmark's figures, drawn from its results (written by ``mapa-vae bench``).

* ``fig2_test_kl_and_passes.png`` (the paper's Fig. 2): test KL per dataset and method, each seed
  a dot and the median a bar, and network passes per step.
* ``kl_vs_passes.png`` and ``kl_vs_time.png``: the test KL during training (median over seeds)
  against cumulative network passes and against setup and training time, per dataset.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.ticker import NullFormatter

from .files import save_figure
from .run_figures import plt


def _method_colors(labels):
    return {label: ("tab:blue" if label == "mapa" else plt.cm.tab10(2 + i % 8))
            for i, label in enumerate(labels)}


def figure_2(results: list[dict], methods: list[str]):
    """Paper Fig. 2: (a) test KL per dataset and method, each seed a dot, the median a bar;
    (b) network passes per step."""
    names = list(dict.fromkeys(r["dataset"] for r in results))
    methods = [m for m in methods if any(r["label"] == m for r in results)]
    colors = _method_colors(methods)
    fig, (kl_ax, pass_ax) = plt.subplots(1, 2, figsize=(15, 4.8),
                                         gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / len(methods)
    for j, method in enumerate(methods):
        for i, name in enumerate(names):
            kl = [max(r["test_kl"], 1e-4) for r in results
                  if r["dataset"] == name and r["label"] == method]
            if not kl:
                continue
            x = i + (j - (len(methods) - 1) / 2) * width
            kl_ax.bar(x, np.median(kl), width * 0.9, color=colors[method], alpha=0.6,
                      label=method if i == 0 else None)
            kl_ax.scatter(np.full(len(kl), x), kl, s=8, color="k", zorder=3)
        passes = [r["passes_per_step"] for r in results if r["label"] == method]
        pass_ax.bar(j, np.median(passes), color=colors[method])
    kl_ax.set_yscale("log")
    kl_ax.set_xticks(range(len(names)), names)
    kl_ax.set(ylabel="test KL (nats, log scale; clipped at 1e-4)",
              title="(a) test KL: median (bar) and seeds (dots); lower is better")
    kl_ax.legend(fontsize=8, ncol=len(methods))
    pass_ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right")
    pass_ax.set(ylabel="network passes per training step", title="(b) passes per step")
    fig.tight_layout()
    return fig


def figure_curves(results: list[dict], methods: list[str], x_key: str, x_label: str):
    """Test KL (median over seeds) against cumulative passes or training time, per dataset."""
    names = list(dict.fromkeys(r["dataset"] for r in results))
    colors = _method_colors(methods)
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        for method in methods:
            curves = [r["curve"] for r in results
                      if r["dataset"] == name and r["label"] == method and r.get("curve")]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            x = np.median([[p[x_key] for p in c[:length]] for c in curves], axis=0)
            y = np.median([[p["test_kl"] for p in c[:length]] for c in curves], axis=0)
            ax.plot(x, np.maximum(y, 1e-4), color=colors[method], lw=1.5 if method == "mapa"
                    else 1.0, label=method)
        ax.set(xscale="log", yscale="log", title=name, xlabel=x_label, ylabel="test KL (nats)")
        ax.xaxis.set_minor_formatter(NullFormatter())
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def bench_figures(results: list[dict], config, out: str | Path) -> list[Path]:
    """Write the bench's figures in ``out``."""
    out = Path(out)
    made = [(figure_2(results, config.methods), "fig2_test_kl_and_passes.png")]
    if any(r.get("curve") for r in results):
        made += [(figure_curves(results, config.methods, "passes", "cumulative network passes"),
                  "kl_vs_passes.png"),
                 (figure_curves(results, config.methods, "seconds",
                                "setup and training time (s, one thread)"), "kl_vs_time.png")]
    paths = []
    for fig, name in made:
        paths.append(save_figure(fig, out / name))
        plt.close(fig)
    return paths
