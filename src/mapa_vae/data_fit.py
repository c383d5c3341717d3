"""Fitting real data: one method on a source's rows, its held-out score, and a model folder.

:func:`fit` prepares a source's training and test rows (:mod:`mapa_vae.data`), trains one
method on the training rows, scores the test rows by the one evaluator (quadrature up to two
latent dimensions; above, importance sampling from a proposal fitted to each row, annealed with
``anneal_steps > 0``; :mod:`mapa_vae.marginal`) and writes a model folder:

* ``metrics.json``: the held-out log-likelihood in nats per row with its standard error across
  rows (and bits per dimension for images), the data's sizes and preparation, the likelihood and
  ``σ``, passes per step, the time of setup, training and the whole fit, and the evaluator's
  cost per row;
* ``model.pt``: the fitted estimator (:mod:`mapa_vae.checkpoints`: no pickled code), with how its
  rows were prepared and which decoder it used, so that :func:`load` rebuilds it;
* ``history.csv``: the training history;
* ``test_scores.csv``: each test row's ``log p(x)`` and the evaluator's standard error, so that
  two models scored on the same rows compare row by row (a paired difference);
* ``samples.png`` for images: samples from the model, and test images beside their
  reconstructions through each one's posterior mean code.

:func:`compare` fits several methods to the same rows under one protocol and writes their table
and figures beside their model folders (``mapa-vae compare``).

Log-likelihoods are of the rows as prepared: for standardised tables they are turned back into
the columns' own units (``log p(x) = log p(z) − Σ_d log s_d``); for images they are densities of
the dequantised pixels ``(v + u) / L`` on ``[0, 1)^D``, or probabilities of the binary pixels.

A model folder then answers :func:`score` (per-row ``log p(x)`` with its standard error),
:func:`sample` and, for MAPA, :func:`posterior` (new rows' weights over the training indices and
the codes those carry).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from . import __version__, methods
from .data import SCORE_SEED, Data, Preparation, prepare, read
from .experiment import fit_costs
from .files import save_figure, write_csv, write_json, write_text
from .networks import ConvDecoder
from .trainer import TrainingSettings, load_torch
from .validation import check_positive_int

MODEL_FILE = "model.pt"
DECODERS = ("mlp", "conv")


@dataclass
class DataFitConfig:
    """Everything that decides a fit of real data (defaults: the CLI's)."""

    data: str
    latent_dim: int
    method: str = "mapa"
    samples: int | None = None  # S, for the methods that have one
    likelihood: str = "gaussian"
    test_data: str | None = None
    test_fraction: float = 0.1
    n_test: int | None = None
    standardize: bool | None = None
    decoder: str = "mlp"
    hidden: tuple = (256, 256)
    channels: tuple = (64, 32)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    evaluator_samples: int = 2000
    anneal_steps: int = 0
    extra: dict = field(default_factory=dict)  # further estimator settings

    def validate(self) -> "DataFitConfig":
        method = methods.get(self.method)
        check_positive_int(self.latent_dim, "latent_dim")
        if self.samples is not None and method.samples is None:
            raise ValueError(f"--samples applies to the methods with S, not {self.method}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        check_positive_int(self.evaluator_samples, "evaluator_samples")
        if isinstance(self.anneal_steps, bool) or not isinstance(self.anneal_steps, int) \
                or self.anneal_steps < 0:
            raise ValueError(f"anneal_steps must be a non-negative integer, got "
                             f"{self.anneal_steps!r}")
        self.training.validate()
        if self.training.learning_rate is None:
            self.training = replace(self.training, learning_rate=method.learning_rate)
        return self

    @property
    def label(self) -> str:
        return methods.label(self.method, self.samples)

    def as_dict(self) -> dict:
        out = asdict(self)
        training = out.pop("training")
        return {**out, **training, "hidden": list(self.hidden), "channels": list(self.channels)}


def decoder_spec(config: DataFitConfig, data: Data) -> dict:
    """The decoder a fit uses, as JSON: ``{"kind": "mlp", "hidden": [...]}`` or
    ``{"kind": "conv", "image_shape": [H, W], "channels": [c₀, c₁]}``."""
    if config.decoder == "mlp":
        return {"kind": "mlp", "hidden": list(config.hidden)}
    if data.image_shape is None or len(data.image_shape) != 2:
        raise ValueError(f"the convolutional decoder draws images; {config.data} holds rows "
                         f"of {data.train.shape[1]} values, not images (give an array of shape "
                         f"(N, H, W))")
    return {"kind": "conv", "image_shape": list(data.image_shape),
            "channels": list(config.channels)}


def build_decoder(spec: dict, latent_dim: int):
    """The decoder module of a spec (:func:`decoder_spec`), or ``None`` for the estimator's own
    MLP."""
    if spec["kind"] == "mlp":
        return None
    return ConvDecoder(latent_dim, tuple(spec["image_shape"]), tuple(spec["channels"]))


def make_estimator(config: DataFitConfig, data: Data, progress: bool = False):
    """The method's estimator for this fit, unfitted."""
    spec = decoder_spec(config, data)
    params = dict(latent_dim=config.latent_dim, likelihood=config.likelihood,
                  hidden=tuple(spec.get("hidden", config.hidden)),
                  decoder=build_decoder(spec, config.latent_dim), **asdict(config.training),
                  device=config.device, dtype=config.dtype, random_state=config.seed,
                  verbose=progress)
    if config.samples is not None:
        params["n_samples"] = config.samples
    params.update(config.extra)
    return methods.get(config.method).make(**params), spec


def held_out_score(estimator, rows: np.ndarray, preparation: Preparation, seed: int,
                   n_samples: int = 2000, anneal_steps: int = 0, progress: bool = False) -> dict:
    """``log p(x)`` per row of prepared ``rows`` in the data's own units, with its standard
    errors: quadrature up to two latent dimensions, else the one evaluator seeded by ``seed``.
    Returns ``log_prob`` and ``se`` (Monte Carlo, 0 for quadrature) per row, and the evaluator's
    description and cost."""
    start = time.perf_counter()
    latent_dim = estimator.model_.latent_dim
    if latent_dim <= 2:
        log_p, se = estimator.score_samples(rows), np.zeros(len(rows))
        evaluator = {"name": "quadrature", "nodes_per_dim": 16384 if latent_dim == 1 else 256}
        ess = None
    else:
        estimate = estimator.log_likelihood(rows, n_samples=n_samples, anneal_steps=anneal_steps,
                                            random_state=seed, progress=progress)
        log_p, se, ess = estimate.log_prob, estimate.se, estimate.ess
        evaluator = {"name": "annealed importance sampling" if anneal_steps
                     else "importance sampling", "n_samples": n_samples,
                     "anneal_steps": anneal_steps, "decoder_passes": estimate.decoder_passes}
    seconds = time.perf_counter() - start
    evaluator.update(seconds=seconds, seconds_per_row=seconds / len(rows))
    return {"log_prob": log_p + preparation.log_jacobian(), "se": se, "ess": ess,
            "evaluator": evaluator}


def summarize(score: dict, preparation: Preparation) -> dict:
    """The metrics of a held-out score: the mean log-likelihood per row, its standard error
    across rows, the Monte-Carlo standard error of the mean, the median effective sample size
    and, for images, bits per dimension."""
    log_p = score["log_prob"]
    n = log_p.size
    out = {"test_log_likelihood": float(log_p.mean()),
           "test_log_likelihood_se": float(log_p.std(ddof=1) / math.sqrt(n)),
           "test_monte_carlo_se": float(np.sqrt(np.square(score["se"]).sum()) / n)}
    if score["ess"] is not None:
        out["test_median_ess"] = float(np.median(score["ess"]))
    bits = preparation.bits_per_dim(float(log_p.mean()) - preparation.log_jacobian())
    if bits is not None:
        out["test_bits_per_dim"] = bits
    return out


def fit(config: DataFitConfig, out: str | Path | None = None, progress: bool = False) -> dict:
    """Prepare the data, fit the method, score the test rows and, given ``out``, write the model
    folder (module docstring). Returns the metrics."""
    return fit_estimator(config, out, progress)[0]


def fit_estimator(config: DataFitConfig, out: str | Path | None = None,
                  progress: bool = False) -> tuple[dict, object, Data, dict]:
    """:func:`fit`, returning the metrics, the fitted estimator, the prepared data and the test
    rows' score (:func:`held_out_score`)."""
    config.validate()
    data = prepare(config.data, config.likelihood, test=config.test_data,
                   test_fraction=config.test_fraction, n_test=config.n_test,
                   standardize=config.standardize, seed=config.seed)
    estimator, spec = make_estimator(config, data, progress)
    start = time.perf_counter()
    estimator.fit(data.train)
    wall = time.perf_counter() - start
    score = held_out_score(estimator, data.test, data.preparation, config.seed,
                           config.evaluator_samples, config.anneal_steps, progress)
    metrics = {
        "data": data.name, "method": config.method, "label": config.label, "seed": config.seed,
        "latent_dim": config.latent_dim, "likelihood": config.likelihood,
        **data.summary(),
        **summarize(score, data.preparation),
        "evaluator": score["evaluator"],
        **fit_costs(estimator, wall),
        "decoder": spec,
        "config": config.as_dict(),
        "version": __version__,
    }
    extra = methods.get(config.method).metrics
    if extra is not None:
        metrics.update(extra(estimator))
    if out is not None:
        write_folder(Path(out), estimator, data, spec, metrics, score)
    return metrics, estimator, data, score


def score_table(score: dict) -> list[dict]:
    """A score's rows for a CSV: ``row`` (from 1), ``log_prob`` and ``se``, nats."""
    return [{"row": i + 1, "log_prob": float(lp), "se": float(se)}
            for i, (lp, se) in enumerate(zip(score["log_prob"], score["se"]))]


def write_folder(out: Path, estimator, data: Data, spec: dict, metrics: dict,
                 score: dict) -> None:
    """``model.pt``, ``history.csv``, ``test_scores.csv``, ``samples.png`` (images) and, last,
    ``metrics.json``."""
    extra = {"data": json.dumps({"name": data.name, "preparation": asdict(data.preparation)}),
             "decoder_spec": json.dumps(spec)}
    estimator.save(out / MODEL_FILE, extra=extra)
    write_csv(out / "history.csv", estimator.history_)
    write_csv(out / "test_scores.csv", score_table(score))
    if data.image_shape is not None:
        import matplotlib.pyplot as plt

        fig = image_grid(estimator, data)
        save_figure(fig, out / "samples.png")
        plt.close(fig)
    write_json(out / "metrics.json", metrics)


def image_grid(estimator, data: Data, n: int = 10):
    """A figure: a row of training images, rows of samples' means ``E[x | z]`` for ``z ~ p(z)``,
    and rows of test images above their reconstructions ``E[x | z̄]`` (``z̄`` the posterior mean
    code)."""
    import matplotlib.pyplot as plt

    shape = data.image_shape
    model = estimator.model_
    with torch.no_grad():
        means = model.likelihood.mean(torch.as_tensor(
            model.decode(model.prior.sample(2 * n, random_state=0)))).numpy()
    test = data.test[:n]
    reconstructions = model.likelihood.mean(torch.as_tensor(
        estimator.decode(posterior_mean(estimator, test)))).numpy()
    rows = [("training images", data.train[:n]), ("samples (means)", means[:n]),
            ("", means[n:]), ("test images", test), ("reconstructions", reconstructions)]
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 0.9, len(rows) * 1.0))
    for r, (title, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(images):
                ax.imshow(np.clip(images[c], 0, 1).reshape(shape), cmap="gray", vmin=0, vmax=1)
        if title:
            axes[r, 0].set_title(title, fontsize=8, loc="left")
    fig.suptitle(f"{data.name}: {estimator.method}, latent dimension {model.latent_dim}",
                 fontsize=9)
    return fig


def posterior_mean(estimator, rows: np.ndarray) -> np.ndarray:
    """Each row's posterior mean code under the method's own posterior (an encoder's ``q(z |
    x)``, MAPA's mixture over training indices)."""
    post = estimator.posterior(rows)
    return post.loc if hasattr(post, "loc") and not hasattr(post, "weights") else post.mean()


# --- several methods on the same rows ---------------------------------------------------------
def compare(config: DataFitConfig, methods_: list[str], out: str | Path,
            progress: bool = False) -> dict:
    """Fit each of ``methods_`` under ``config``'s protocol (the same data, split, decoder,
    steps, batch, learning rate and seed; a rate of ``None``: each method's protocol rate) and
    write, in ``out``: a model folder per method, ``results.json`` and ``results.csv`` (one row
    per method, a model folder's metrics), ``summary.md`` (the table :func:`comparison_table`
    prints) and the figures ``compare.png`` (test log-likelihood against the fit's wall time)
    and, for images, ``samples.png`` (each method's samples and reconstructions of the same test
    images). Returns ``{"rows": [...], "table": str}``."""
    out = Path(out)
    rows, estimators, scores = [], [], []
    for method in methods_:
        run = replace(config, method=method, training=replace(config.training))
        metrics, estimator, data, score = fit_estimator(run, out / method, progress=progress)
        if scores:
            metrics["paired_difference"] = paired_difference(score, scores[0], rows[0]["label"])
        rows.append(metrics)
        estimators.append(estimator)
        scores.append(score)
        if progress:
            print(f"  {rows[-1]['label']}: {rows[-1]['test_log_likelihood']:.2f} nats per row",
                  flush=True)
    table = comparison_table(rows)
    flat = [{k: v for k, v in row.items() if not isinstance(v, (dict, list))} for row in rows]
    write_json(out / "results.json", rows)
    write_csv(out / "results.csv", flat)
    write_text(out / "summary.md", table)
    import matplotlib.pyplot as plt

    fig = comparison_figure(rows)
    save_figure(fig, out / "compare.png")
    plt.close(fig)
    if data.image_shape is not None:
        fig = samples_figure(estimators, data)
        save_figure(fig, out / "samples.png")
        plt.close(fig)
    return {"rows": rows, "table": table}


def paired_difference(score: dict, reference: dict, against: str) -> dict:
    """The mean over test rows of ``log p(x)`` under one model minus under a ``reference``
    model scored on the same rows, with the standard error of that mean across rows: far
    smaller than either model's own, since a row that is hard for one is hard for both."""
    diff = score["log_prob"] - reference["log_prob"]
    return {"against": against, "mean": float(diff.mean()),
            "se": float(diff.std(ddof=1) / math.sqrt(diff.size))}


def comparison_table(rows: list[dict]) -> str:
    """A Markdown table of methods fitted to the same rows."""
    first = rows[0]
    unit = "nats per image" if first["preparation"]["image_shape"] else "nats per row"
    lines = [f"{first['data']}: {first['n_train']} training rows, {first['n_test']} test rows "
             f"({first['test_source']}), latent dimension {first['latent_dim']}, "
             f"{first['likelihood']} likelihood, {first['config']['steps']} steps, seed "
             f"{first['seed']}; test log-likelihood in {unit} (higher is better) with its "
             f"standard error across test rows, by the one evaluator "
             f"({first['evaluator']['name']}), and its difference from {first['label']}'s "
             f"on the same rows with that difference's standard error.", "",
             f"| method | test log-likelihood | s.e. | − {first['label']} (s.e.) | bits/dim | "
             f"passes/step | setup s | fit s |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        bits = f"{row['test_bits_per_dim']:.3f}" if "test_bits_per_dim" in row else "–"
        paired = row.get("paired_difference")
        paired = f"{paired['mean']:+.2f} ({paired['se']:.2f})" if paired else "–"
        lines.append(f"| {row['label']} | {row['test_log_likelihood']:.2f} | "
                     f"{row['test_log_likelihood_se']:.2f} | {paired} | {bits} | "
                     f"{row['passes_per_step']:.0f} | {row['setup_seconds']:.1f} | "
                     f"{row['fit_wall_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def comparison_figure(rows: list[dict]):
    """Test log-likelihood (± 2 standard errors) against the fit's wall time, per method."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    for i, row in enumerate(rows):
        ax.errorbar(row["fit_wall_seconds"], row["test_log_likelihood"],
                    yerr=2 * row["test_log_likelihood_se"], fmt="o", color=f"C{i}",
                    label=f"{row['label']} ({row['passes_per_step']:.0f} passes/step)")
    ax.set_xlabel("fit wall time (s), setup included")
    ax.set_ylabel("test log-likelihood (nats per row)")
    ax.set_title(f"{rows[0]['data']}, latent dimension {rows[0]['latent_dim']}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def samples_figure(estimators: list, data: Data, n: int = 10):
    """Rows of ``n`` images: test images; then per method its reconstructions of them (each
    image's posterior mean code, decoded to ``E[x | z]``) and samples' means."""
    import matplotlib.pyplot as plt

    shape, test = data.image_shape, data.test[:n]
    rows = [("test images", test)]
    for estimator in estimators:
        model = estimator.model_
        with torch.no_grad():
            recon = model.likelihood.mean(torch.as_tensor(
                estimator.decode(posterior_mean(estimator, test)))).numpy()
            means = model.likelihood.mean(torch.as_tensor(
                model.decode(model.prior.sample(n, random_state=0)))).numpy()
        rows += [(f"{estimator.method}: reconstructions", recon), (f"{estimator.method}: samples",
                                                                    means)]
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 0.9, len(rows) * 1.0), squeeze=False)
    for r, (title, images) in enumerate(rows):
        for c in range(n):
            axes[r, c].axis("off")
            if c < len(images):
                axes[r, c].imshow(np.clip(images[c], 0, 1).reshape(shape), cmap="gray",
                                  vmin=0, vmax=1)
        axes[r, 0].set_title(title, fontsize=8, loc="left")
    fig.tight_layout()
    return fig


# --- a model folder ---------------------------------------------------------------------------
@dataclass
class ModelFolder:
    """A fitted estimator and how its rows are prepared, read from a folder :func:`fit` wrote."""

    estimator: object
    preparation: Preparation
    name: str
    decoder: dict


def load(folder: str | Path, setup: bool = False) -> ModelFolder:
    """The estimator in ``folder/model.pt``: its generative model alone (``setup=False``: at
    once, to score and sample), or rebuilt whole from its training data (``setup=True``: to
    query posteriors)."""
    path = Path(folder)
    file = path / MODEL_FILE
    if not path.is_dir():
        raise ValueError(f"{folder}: no such model folder")
    if not file.is_file():
        raise ValueError(f"{folder}: not a model folder (it holds no {MODEL_FILE}; "
                         f"mapa-vae fit --data ... --out {folder} writes one)")
    try:
        state = load_torch(file)
        info, spec = json.loads(state["data"]), json.loads(state["decoder_spec"])
        params = json.loads(state["params"])
        cls = {m.estimator.__name__: m.estimator for m in methods.METHODS.values()}[
            state["estimator"]]
    except Exception as error:  # a file that is not a model of ours, or a damaged one
        raise ValueError(f"{file}: not a mapa-vae model ({' '.join(str(error).split())})") \
            from None
    decoder = build_decoder(spec, int(params["latent_dim"]))
    estimator = cls.load(file, decoder=decoder, setup=setup)
    return ModelFolder(estimator, Preparation(**info["preparation"]), info["name"], spec)


def score(folder: str | Path, source: str, n_samples: int = 2000, anneal_steps: int = 0,
          seed: int = 0, progress: bool = False) -> tuple[dict, dict]:
    """Per-row ``log p(x)`` of a source's rows under a model folder's model, prepared as its
    test rows were: ``({"log_prob", "se"}, summary)``."""
    model = load(folder)
    rows = model.preparation.rows(read(source).values, SCORE_SEED, score=True, name=source)
    result = held_out_score(model.estimator, rows, model.preparation, seed, n_samples,
                            anneal_steps, progress)
    summary = summarize(result, model.preparation) if len(rows) > 1 else {
        "test_log_likelihood": float(result["log_prob"][0])}
    summary.update(n_rows=len(rows), evaluator=result["evaluator"], source=source)
    return result, summary


def sample(folder: str | Path, n: int, seed: int = 0, means: bool = False) -> np.ndarray:
    """``n`` draws from a model folder's model, in the data's own units (standardised columns
    turned back; images as the model's pixels: dequantised, or binary); ``means``: ``E[x | z]`` for ``z ~ p(z)``
    instead of draws of ``x``."""
    model = load(folder)
    n = check_positive_int(n, "n")
    generative = model.estimator.model_
    rng = np.random.default_rng(seed)
    Z = generative.prior.sample(n, random_state=rng)
    out = generative.decode(Z)
    if means:
        with torch.no_grad():
            out = generative.likelihood.mean(torch.as_tensor(out)).numpy()
    else:
        out = generative.likelihood.sample(out, rng)
    prep = model.preparation
    if prep.mean is not None:
        out = out * np.asarray(prep.scale) + np.asarray(prep.mean)
    return out


def posterior(folder: str | Path, source: str, top: int | None = None) -> dict:
    """MAPA's out-of-sample posterior of a source's rows under a model folder's MAPA model:
    per row, the training indices it weighs (largest first), their weights, the codes they
    carry (the attached atoms, or the Gaussian codes' means and scales) and the mixture's mean
    code. ``top``: keep the ``top`` largest weights of each row (renormalised)."""
    model = load(folder, setup=True)
    estimator = model.estimator
    if estimator.method != "mapa":
        raise ValueError(f"{folder}: holds a {type(estimator).__name__}, which has no posterior "
                         f"over training indices (MAPA's models have)")
    rows = model.preparation.rows(read(source).values, SCORE_SEED, name=source)
    post = estimator.posterior(rows)
    W = post.weights.tocsr()
    width = int(np.diff(W.indptr).max()) if top is None else min(check_positive_int(top, "top"),
                                                                   W.shape[1])
    indices = np.zeros((W.shape[0], width), dtype=np.int64)
    weights = np.zeros((W.shape[0], width))
    for i in range(W.shape[0]):
        lo, hi = W.indptr[i], W.indptr[i + 1]
        order = np.argsort(-W.data[lo:hi], kind="stable")[:width]
        indices[i, :order.size] = W.indices[lo:hi][order]
        weights[i, :order.size] = W.data[lo:hi][order]
    weights /= weights.sum(axis=1, keepdims=True)
    loc = post.loc if hasattr(post, "loc") else post.codes
    out = {"indices": indices, "weights": weights, "codes": loc[indices],
           "mean": np.einsum("ik,ikd->id", weights, loc[indices])}
    if hasattr(post, "scale"):
        out["code_scales"] = post.scale[indices]
    return out


def save_array(path: str | Path, array: np.ndarray) -> Path:
    """``array`` to a ``.npy`` file, written whole or not at all."""
    from .files import atomic_write

    def write(tmp):
        with open(tmp, "wb") as handle:
            np.save(handle, array)

    return atomic_write(path, write)


def save_arrays(path: str | Path, arrays: dict) -> Path:
    """Named arrays to a ``.npz`` file, written whole or not at all."""
    from .files import atomic_write

    def write(tmp):
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    return atomic_write(path, write)

