"""One experiment run: a ground truth, a method and a seed give a fitted model and its numbers.

A run samples ``n_train`` training points from the ground truth, fits the method's estimator on
them, and scores the continuous model with the test KL on ``n_test`` fresh points:

    KL(p_true ‖ p_θ) = E_{x ~ p_true}[log p_true(x) − log p_θ(x)],   both by quadrature

for latent dimension 1 or 2; above, both by the one evaluator of :mod:`mapa_vae.marginal` (or
the ground truth's closed form, e.g. linear-Gaussian).

Seeds: ``seed`` alone decides the training data and the test points (so every method of one seed
sees the same data) and, through a separate stream, the training randomness. With
``eval_every > 0`` the test KL is also measured during training on the first ``n_eval`` test
points: for latent dimension 1 or 2 with a coarser quadrature grid (:data:`MONITOR_NODES`: 4096
nodes in 1-D, 128² in 2-D; on 1000 samples of each built-in dataset the mean absolute
difference from the full grid is below 1e-6 nats in 1-D and 2.7e-3 in 2-D), above by the one
evaluator, as the final test KL (each measurement as costly as scoring ``n_eval`` test points
at the end); that evaluation is neither counted as network passes nor as training time. The
final test KL always uses the full grid.

Time is reported as ``setup_seconds`` (building the model and objective: for MAPA its weights and
initial attachment), ``train_seconds`` (the training loop) and their sum ``seconds``.

:func:`run` writes, in its folder: ``metrics.json``, ``history.csv``, ``checkpoint.pt`` and
``fit.png``. Each file is written whole or not at all.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from . import __version__, datasets, methods
from .files import atomic_write, save_figure, write_csv, write_json
from .trainer import TrainingSettings
from .validation import check_non_negative_int, check_positive_int

#: Quadrature nodes per latent axis for the test-KL curves during training (the final test KL
#: uses the full grid of :data:`mapa_vae.evaluation.DEFAULT_NODES_PER_DIM`).
MONITOR_NODES = {1: 4096, 2: 128}


@dataclass
class RunConfig:
    """Everything that decides a run. Baselines and MAPA share decoder, optimiser, batch, steps
    and ``σ`` (fixed at the truth unless ``learn_sigma``); ``training``: the optimisation
    settings, their learning rate resolved to the method's protocol rate by :meth:`validate`."""

    dataset: str = "circle"
    method: str = "mapa"
    samples: int | None = None  # S for the methods that have one (default: the method's)
    twin: bool = False
    n_train: int = 1000
    n_test: int = 5000
    n_train_kl: int = 0  # also the KL on the first this many training points (over-fitting)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    hidden: tuple = (64, 64)
    learn_sigma: bool = False
    init: str = "auto"  # MAPA's initial attachment; "oracle": the true codes (an ablation)
    seed: int = 0
    eval_every: int = 0
    n_eval: int = 1000
    device: str = "cpu"  # where training runs; evaluation is on the CPU in float64
    distributed: bool = False  # one rank of a torchrun data-parallel run
    dtype: str = "float32"  # the floating-point type training runs in
    extra: dict = field(default_factory=dict)  # further estimator parameters

    @classmethod
    def from_settings(cls, **settings) -> "RunConfig":
        """A config from flat settings, the training settings among them."""
        settings = dict(settings)
        return cls(training=TrainingSettings.take(settings), **settings)

    def validate(self) -> "RunConfig":
        method = methods.get(self.method)
        if self.samples is not None and method.samples is None:
            with_samples = sorted(m.name for m in methods.METHODS.values() if m.samples)
            raise ValueError(f"--samples applies to {with_samples}, not {self.method}")
        if self.samples is not None and (isinstance(self.samples, bool)
                                         or not isinstance(self.samples, int)
                                         or self.samples < 1):
            raise ValueError(f"the number of samples S must be an integer >= 1, "
                             f"got {self.samples!r}")
        for name in ("n_train", "n_test", "n_eval"):
            check_positive_int(getattr(self, name), name)
        if check_non_negative_int(self.n_train_kl, "n_train_kl") == 1 \
                or self.n_train_kl > self.n_train:
            raise ValueError(f"n_train_kl must be 0 (none) or from 2 (for a standard error) to "
                             f"n_train ({self.n_train}), got {self.n_train_kl}")
        if self.n_train < 2:
            raise ValueError(f"n_train must be at least 2, got {self.n_train}")
        if self.n_test < 2:
            raise ValueError(f"n_test must be at least 2 to estimate a standard error, "
                             f"got {self.n_test}")
        if isinstance(self.eval_every, bool) or not isinstance(self.eval_every, int) \
                or self.eval_every < 0:
            raise ValueError(f"eval_every must be a non-negative integer, got {self.eval_every!r}")
        self.training.validate()
        if self.training.learning_rate is None:
            self.training = replace(self.training, learning_rate=method.learning_rate)
        if self.eval_every and self.eval_every % self.training.log_every:
            raise ValueError(f"eval_every ({self.eval_every}) must be a multiple of log_every "
                             f"({self.training.log_every})")
        return self

    @property
    def label(self) -> str:
        """The method with its sample count, e.g. ``iwae-10``; ``mapa-oracle`` (``mapa-atoms-
        oracle``, …) for MAPA started from the true codes (:func:`mapa_vae.methods.label`)."""
        return methods.label(self.method, self.samples, self.init)

    def as_dict(self) -> dict:
        """The settings as one flat dictionary (the training settings among the others), as
        ``metrics.json`` keeps them."""
        out = asdict(self)
        training = out.pop("training")
        out["hidden"] = list(self.hidden)
        return {**{k: out.pop(k) for k in ("dataset", "method", "samples", "twin", "n_train",
                                          "n_test")}, **training, **out}


def _streams(seed: int):
    """Independent integer seeds for training data, test data and training."""
    children = np.random.SeedSequence(seed).spawn(3)
    return [int(child.generate_state(1)[0]) for child in children]


def build_estimator(config: RunConfig, truth, Z_train=None):
    """The method's estimator for this run, unfitted (``Z_train``: the true codes of the
    training points, needed by ``init="oracle"`` only)."""
    config.validate()
    method = methods.get(config.method)
    params = dict(sigma=None if config.learn_sigma else truth.sigma,
                  latent_dim=truth.latent_dim, prior=truth.prior, hidden=tuple(config.hidden),
                  **asdict(config.training), device=config.device,
                  distributed=config.distributed, dtype=config.dtype,
                  random_state=_streams(config.seed)[2])
    if config.samples is not None:  # else the method's default S
        params["n_samples"] = config.samples
    if method.family == "mapa":
        params["init"] = Z_train if config.init == "oracle" else config.init
    params.update(config.extra)
    return method.make(**params)


def sample_data(config: RunConfig, truth):
    """``(X_train, Z_train, X_test)`` for this seed."""
    train_seed, test_seed, _ = _streams(config.seed)
    X, Z = truth.sample(config.n_train, seed=train_seed)
    X_test, _ = truth.sample(config.n_test, seed=test_seed)
    return X, Z, X_test


def true_log_prob(truth, X_test: np.ndarray, cache: str | Path | None = None) -> np.ndarray:
    """``log p_true`` of the test points; with ``cache`` (a folder), kept there under the test
    set's content hash, so runs sharing a test set (every method of a dataset and seed) compute
    it once."""
    if cache is None:
        return truth.log_prob(X_test)
    digest = hashlib.sha256(truth.name.encode() + np.ascontiguousarray(X_test).tobytes())
    file = Path(cache) / f"{digest.hexdigest()[:24]}.npy"
    if file.is_file():
        values = np.load(file)
        if values.shape == (X_test.shape[0],):
            return values
    values = truth.log_prob(X_test)

    def save(tmp):
        with open(tmp, "wb") as handle:
            np.save(handle, values)

    atomic_write(file, save)
    return values


def fit_monitor(config: RunConfig, truth, X_test: np.ndarray, log_p_true: np.ndarray, on_log):
    """The fit's callback at each log step: ``on_log(step)``, and every ``eval_every`` steps the
    test KL on the first ``n_eval`` test points (a coarser grid up to two latent dimensions,
    the one evaluator above); ``None`` when neither is asked for."""
    curves = bool(config.eval_every)
    if not curves and on_log is None:
        return None
    nodes = MONITOR_NODES.get(truth.latent_dim)
    X_eval, log_p_eval = X_test[:config.n_eval], log_p_true[:config.n_eval]

    def monitor(step: int, model) -> dict:
        if on_log is not None:
            on_log(step)
        if not curves or step % config.eval_every:
            return {}
        return {"test_kl": float(np.mean(log_p_eval - model.log_prob(X_eval, nodes)))}

    return monitor


def fit_costs(estimator, wall: float) -> dict:
    """What a fitted estimator cost and where it ended: its network passes (per step and in
    all), its setup, training and whole seconds (``wall``: the fit's wall time as the caller
    measured it), its final objective and its learned ``σ`` (``None`` where the likelihood has
    none)."""
    return {
        "passes_per_step": estimator.passes_per_step_,
        "total_passes": int(estimator.total_passes_),
        "train_seconds": estimator.train_seconds_,
        "setup_seconds": estimator.setup_seconds_,
        "seconds": estimator.setup_seconds_ + estimator.train_seconds_,
        "fit_wall_seconds": wall,
        "final_objective": estimator.history_[-1]["objective"],
        "sigma": estimator.sigma_,
    }


def run(config: RunConfig, out: str | Path | None = None, progress: bool = False,
        truth_cache: str | Path | None = None, name: str | None = None,
        on_log=None) -> dict:
    """Fit one method on one dataset and seed; return its metrics and, given ``out``, write
    ``metrics.json``, ``history.csv``, ``checkpoint.pt`` and ``fit.png`` there.
    ``truth_cache``: a folder for the test sets' true log-densities (:func:`true_log_prob`).
    ``name``: the dataset's name in the metrics (default :func:`mapa_vae.datasets.label`).
    ``on_log(step)``, if given, is called at every logged step of every training loop of the
    fit (MAPA's pilot runs each count from 0), outside the training time.
    With ``n_train_kl > 0`` the metrics also hold ``train_kl`` and ``train_kl_se``: the same KL,
    ``mean(log p_true(x) − log p_θ(x))``, on the first ``n_train_kl`` training points, scored
    after the test points. Test KL − train KL is the over-fit; a negative train KL, a model
    closer to its training points than the truth is."""
    config.validate()
    truth = datasets.get(config.dataset, twin=config.twin)
    name = datasets.label(config.dataset, config.twin) if name is None else name
    X, Z, X_test = sample_data(config, truth)
    log_p_true = true_log_prob(truth, X_test, truth_cache)
    estimator = build_estimator(config, truth, Z).set_params(verbose=progress)

    monitor = fit_monitor(config, truth, X_test, log_p_true, on_log)
    start = time.perf_counter()
    estimator.fit(X, monitor=monitor)
    wall = time.perf_counter() - start
    diff = log_p_true - estimator.score_samples(X_test)
    history = estimator.history_
    metrics = {
        "dataset": name, "method": config.method, "label": config.label,
        "seed": config.seed,
        "test_kl": float(diff.mean()),
        "test_kl_se": float(diff.std(ddof=1) / math.sqrt(diff.size)),
        "test_log_prob": float(np.mean(log_p_true - diff)),
        "true_log_prob": float(np.mean(log_p_true)),
        **fit_costs(estimator, wall),
        "true_sigma": truth.sigma,
        "config": config.as_dict(),
        "version": __version__,
    }
    if config.n_train_kl:
        X_fit = X[:config.n_train_kl]
        fit_diff = true_log_prob(truth, X_fit, truth_cache) - estimator.score_samples(X_fit)
        metrics["train_kl"] = float(fit_diff.mean())
        metrics["train_kl_se"] = float(fit_diff.std(ddof=1) / math.sqrt(fit_diff.size))
    if monitor is not None:
        metrics["curve"] = [{"step": row["step"], "passes": row["passes"],
                             "seconds": estimator.setup_seconds_ + row["train_seconds"],
                             "test_kl": row["test_kl"]} for row in history if "test_kl" in row]
    extra = methods.get(config.method).metrics
    if extra is not None:
        metrics.update(extra(estimator))
    if out is not None:
        import matplotlib.pyplot as plt

        from .run_figures import fit_overview

        out = Path(out)
        with torch.no_grad():
            fig = fit_overview(truth, X, estimator, title=f"{name}: {config.label}")
        estimator.save(out / "checkpoint.pt")
        write_csv(out / "history.csv", history)
        save_figure(fig, out / "fit.png")
        plt.close(fig)  # a bench worker runs many fits
        write_json(out / "metrics.json", metrics)
    return metrics
