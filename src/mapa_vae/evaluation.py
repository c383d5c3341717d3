"""Exact evaluation: quadrature marginals, test KL, and posterior comparisons.

* ``log p(x) = log Σ_m w_m N(x; f(z_m), σ² I)`` on an equal-mass grid of the prior with refined
  tails (see :mod:`mapa_vae.priors`), float64, logsumexp, for latent dimension 1 or 2; above,
  importance sampling with a stated proposal, each estimate with its standard error.
* ``KL(p_true ‖ p_model) = E_{x ~ p_true}[log p_true(x) − log p_model(x)]``, a Monte-Carlo mean
  over fresh samples, reported with its standard error.
* The posterior trend (paper, Fig. 3): over training indices ``n``, for held-out ``x``, compare
  the true posterior density at ``z_n^GT``, the empiricalized posterior ``p̂(n | x)`` with the
  ground-truth atoms, and ``MAPA(n | x)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import logsumexp
from scipy.stats import rankdata

from .empirical import EmpiricalizedModel
from .likelihood import as_likelihood, mixture_log_prob
from .priors import Prior
from .validation import as_data, check_positive_int

#: Quadrature nodes per latent axis by latent dimension (1-D: 2¹⁴ nodes, 2-D: 256² nodes).
DEFAULT_NODES_PER_DIM = {1: 16384, 2: 256}


def log_marginal(decode, prior: Prior, likelihood, X: np.ndarray,
                 nodes_per_dim: int | None = None):
    """``log ∫ p(z) p(x | decode(z)) dz`` per row of ``X`` by equal-mass quadrature.

    ``decode`` maps a float64 tensor ``(M, latent_dim)`` to ``(M, D)``; ``likelihood``: a
    :class:`~mapa_vae.likelihood.Likelihood`, or a number, the ``σ`` of ``N(x; decode(z), σ²
    I)``. Returns shape ``(n,)``.
    """
    d = prior.latent_dim
    if d not in DEFAULT_NODES_PER_DIM:
        raise ValueError(f"quadrature is available for latent_dim 1 or 2, got latent_dim={d}")
    M = DEFAULT_NODES_PER_DIM[d] if nodes_per_dim is None else check_positive_int(
        nodes_per_dim, "nodes_per_dim")
    nodes, log_w = prior.quadrature(M, refine_tails=True)
    with torch.no_grad():
        means = decode(nodes).to(torch.float64)
    x = torch.as_tensor(X, dtype=torch.float64)
    if means.shape != (nodes.shape[0], x.shape[1]):
        raise ValueError(f"decoder returned shape {tuple(means.shape)} for {nodes.shape[0]} codes; "
                         f"expected ({nodes.shape[0]}, {x.shape[1]})")
    return mixture_log_prob(x, means, log_w, as_likelihood(likelihood)).numpy()


@dataclass(frozen=True)
class ImportanceEstimate:
    """``log p(x)`` per row by importance sampling, with each estimate's Monte-Carlo standard
    error (delta method, ``sd(w) / (√K mean(w))``) and effective sample size
    ``(Σ w)² / Σ w²`` out of ``K``; its cost in decoder passes (rows through ``f``) and
    seconds, where the estimator states them."""

    log_prob: np.ndarray
    se: np.ndarray
    ess: np.ndarray
    n_samples: int
    decoder_passes: int | None = None
    seconds: float | None = None

    def summary(self) -> dict:
        """The mean ``log p(x)`` over rows with its standard error across rows (the test set's
        sampling error), the Monte-Carlo standard error of that mean, the median effective
        sample size and the cost."""
        n = self.log_prob.size
        return {"mean_log_prob": float(self.log_prob.mean()),
                "se_across_points": float(self.log_prob.std(ddof=1) / math.sqrt(n))
                if n > 1 else float("nan"),
                "monte_carlo_se": float(np.sqrt(np.square(self.se).sum()) / n),
                "median_ess": float(np.median(self.ess)), "n_samples": self.n_samples,
                "decoder_passes": self.decoder_passes, "seconds": self.seconds}


def importance_log_marginal(decode, prior: Prior, likelihood, X: np.ndarray, proposal,
                            n_samples: int = 1000, seed=None,
                            rows_per_chunk: int = 64) -> ImportanceEstimate:
    """``log p(x) ≈ log (1/K) Σ_k p(z_k) p(x | decode(z_k)) / q(z_k | x)``, ``z_k ~ q(· | x)``;
    ``likelihood`` as for :func:`log_marginal`.

    ``proposal(x, K, generator) -> (z, log_q)`` draws ``K`` codes per row of the float64 tensor
    ``x`` of shape ``(n, D)``: ``z`` of shape ``(K, n, d)``, ``log q(z | x)`` of ``(K, n)``. Its
    estimate of ``p(x)`` is unbiased, so ``log p̂`` is a stochastic lower bound on ``log p(x)``
    (Jensen) that tightens as ``K`` grows; computed in float64 with logsumexp.
    """
    n_samples = check_positive_int(n_samples, "n_samples")
    likelihood = as_likelihood(likelihood)
    generator = torch.Generator().manual_seed(int(np.random.default_rng(seed).integers(2**63)))
    x_all = torch.as_tensor(X, dtype=torch.float64)
    log_p, se, ess = (np.empty(len(X)) for _ in range(3))
    for start in range(0, len(X), rows_per_chunk):
        rows = slice(start, min(len(X), start + rows_per_chunk))
        x = x_all[rows]
        with torch.no_grad():
            z, log_q = proposal(x, n_samples, generator)
            z, log_q = z.to(torch.float64), log_q.to(torch.float64)
            k, n, d = z.shape
            mean = decode(z.reshape(k * n, d)).to(torch.float64).reshape(k, n, -1)
            log_w = likelihood.log_prob(x.unsqueeze(0), mean) + prior.log_prob(z) - log_q
        log_p[rows], se[rows], ess[rows] = weight_summary(log_w)
    return ImportanceEstimate(log_p, se, ess, n_samples)


def weight_summary(log_w: torch.Tensor):
    """From log importance weights of shape ``(K, n)``: per column ``log mean(w)``, its
    delta-method standard error ``sd(w) / (√K mean(w))`` (infinite for ``K = 1``) and the
    effective sample size ``(Σ w)² / Σ w²``, as NumPy arrays."""
    k = log_w.shape[0]
    log_mean = torch.logsumexp(log_w, dim=0) - math.log(k)
    w = torch.exp(log_w - log_mean)  # weights relative to their mean
    se = (w.std(dim=0) / math.sqrt(k)).numpy() if k > 1 else np.full(w.shape[1], np.inf)
    return log_mean.numpy(), se, (w.sum(0).square() / w.square().sum(0)).numpy()


def defensive_mixture(z, z_prior, from_prior, log_q, prior: Prior, share: float):
    """Draws of ``(1 − share) q(z | x) + share p(z)``: ``z`` where ``from_prior`` is false,
    ``z_prior`` where it is true (drawn with probability ``share``), and their log-density, with
    ``log_q(z)`` the own proposal's. The prior's share bounds the weights where ``q`` is too
    narrow."""
    z = torch.where(from_prior[..., None], z_prior, z)
    return z, torch.logaddexp(math.log(1 - share) + log_q(z),
                              math.log(share) + prior.log_prob(z))


def prior_proposal(prior: Prior):
    """The prior as an importance proposal, ``q(z | x) = p(z)``."""

    def draw(x, k, generator):
        u = torch.rand((k, x.shape[0], prior.latent_dim), dtype=torch.float64,
                       generator=generator).clamp(1e-12, 1 - 1e-12)
        z = prior.icdf(u)
        return z, prior.log_prob(z)

    return draw


@dataclass(frozen=True)
class KLEstimate:
    """A Monte-Carlo estimate ``mean ± se`` of ``KL(p_true ‖ p_model)`` in nats."""

    mean: float
    se: float
    n_samples: int

    def as_dict(self) -> dict:
        return {"test_kl": self.mean, "test_kl_se": self.se, "n_samples": self.n_samples}


def test_kl(truth, model_log_prob, n_samples: int = 5000, seed=None) -> KLEstimate:
    """``KL(p_true ‖ p_model)`` on ``n_samples`` fresh draws from ``truth``.

    ``model_log_prob`` maps an array ``(n, D)`` to ``log p_model`` of shape ``(n,)``.
    """
    n_samples = check_positive_int(n_samples, "n_samples")
    if n_samples < 2:
        raise ValueError("n_samples must be at least 2 to estimate a standard error")
    X, _ = truth.sample(n_samples, seed=seed)
    model = np.asarray(model_log_prob(X), dtype=np.float64).reshape(-1)
    if model.shape != (n_samples,):
        raise ValueError(f"model_log_prob returned {model.size} values for {n_samples} points")
    diff = truth.log_prob(X) - model
    return KLEstimate(float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(n_samples)),
                      n_samples)


test_kl.__test__ = False  # a library function, not a pytest test


def _log_normalize(log_p: np.ndarray) -> np.ndarray:
    return log_p - logsumexp(log_p, axis=1, keepdims=True)


def total_variation(log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """Row-wise ``½ Σ_n |p_n − q_n|`` from log-probabilities, shape ``(n_rows,)``."""
    return 0.5 * np.abs(np.exp(log_p) - np.exp(log_q)).sum(axis=1)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Spearman rank correlation, shape ``(n_rows,)``."""
    ra, rb = rankdata(a, axis=1), rankdata(b, axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    return (ra * rb).sum(axis=1) / np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))


@dataclass
class PosteriorComparison:
    """Log-posteriors over training indices (rows: held-out points, columns: training indices).

    ``log_true`` is the true posterior density at each ``z_n^GT``, normalised over ``n``;
    ``log_empirical`` is ``log p̂(n | x)`` with ground-truth atoms; ``log_mapa`` is
    ``log MAPA(n | x)``.
    """

    log_true: np.ndarray
    log_empirical: np.ndarray
    log_mapa: np.ndarray

    def summary(self) -> dict:
        """Mean total variation and mean rank correlation for each pair of posteriors."""
        pairs = {"mapa_vs_empirical": (self.log_mapa, self.log_empirical),
                 "mapa_vs_true": (self.log_mapa, self.log_true),
                 "empirical_vs_true": (self.log_empirical, self.log_true)}
        return {name: {"total_variation": float(total_variation(p, q).mean()),
                       "rank_correlation": float(rank_correlation(p, q).mean())}
                for name, (p, q) in pairs.items()}


def compare_posteriors(truth, X_train, Z_train, X_test, mapa) -> PosteriorComparison:
    """True, empiricalized and MAPA posteriors over the training indices for each test point.

    ``mapa`` is a :class:`~mapa_vae.MAPAPosterior` fitted on ``X_train``; ``Z_train`` are the
    ground-truth codes that generated ``X_train``.
    """
    X_train = as_data(X_train, "X_train", n_features=truth.data_dim, min_samples=2)
    Z_train = as_data(Z_train, "Z_train", n_features=truth.latent_dim)
    X_test = as_data(X_test, "X_test", n_features=truth.data_dim)
    if Z_train.shape[0] != X_train.shape[0]:
        raise ValueError(f"Z_train has {Z_train.shape[0]} rows but X_train has {X_train.shape[0]}")
    log_empirical = EmpiricalizedModel(truth.decode, Z_train, truth.sigma).log_index_posterior(
        X_test)
    log_true = _log_normalize(truth.log_posterior(X_test, Z_train))
    return PosteriorComparison(log_true, log_empirical, mapa.log_weights(X_test))
