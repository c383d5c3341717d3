"""Tests for the one log-likelihood evaluator (mapa_vae.marginal) and the linear-Gaussian truth.

Tolerances for the evaluator: its estimate ``log p̂ = log mean(w)`` has a Monte-Carlo standard
error ``se`` (delta method) and, being the log of an unbiased estimate, a downward bias of about
``se²/2`` (second-order delta method). A point is held to ``|log p̂ − log p| ≤ 5 se + se²``: five
standard errors for the noise (a normal deviation beyond 5 se has probability 6e-7 per point)
and twice the expected bias.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from mapa_vae import GroundTruth, datasets
from mapa_vae.evaluation import log_marginal
from mapa_vae.ground_truth import LinearGaussian
from mapa_vae.likelihood import BernoulliLikelihood
from mapa_vae.marginal import estimate_log_marginal, from_standard_normal
from mapa_vae.priors import StandardNormal, Uniform

FAST = dict(n_samples=1000, fit_steps=150)


def _small_linear(latent_dim: int = 3, data_dim: int = 6, sigma: float = 0.4, seed: int = 0):
    A, b, _ = datasets.linear_gaussian_parameters(latent_dim, data_dim, seed=seed)
    return LinearGaussian(A, b, sigma=sigma, name="small")


def _within_se(estimate, exact):
    err = np.abs(estimate.log_prob - exact)
    assert (err <= 5 * estimate.se + estimate.se**2).all(), (err, estimate.se)
    return err


# --- the linear-Gaussian ground truth --------------------------------------------------------


@pytest.mark.parametrize("latent_dim", [1, 2])
def test_linear_gaussian_closed_form_matches_quadrature(latent_dim):
    truth = _small_linear(latent_dim, 3, sigma=0.5)
    generic = GroundTruth("normal", truth.f, sigma=truth.sigma, latent_dim=latent_dim,
                          nodes_per_dim=None if latent_dim == 1 else 1024)
    X, _ = truth.sample(200, seed=1)
    exact, quad = truth.log_prob(X), generic.log_prob(X)
    A, s2 = truth.A, truth.sigma**2
    post_mean = (X - truth.b) @ A @ np.linalg.inv(np.eye(latent_dim) + A.T @ A / s2).T / s2
    assert exact.shape == (200,) and exact.dtype == np.float64
    np.testing.assert_allclose(exact, stats.multivariate_normal(
        truth.b, truth.A @ truth.A.T + 0.25 * np.eye(3)).logpdf(X), rtol=0, atol=1e-10)
    # quadrature is accurate where the posterior sits within the grid's bulk (see
    # test_ground_truth: 5e-6 within 2.5 prior sd in 1-D; in 2-D the narrowest posterior sd
    # here is 0.12, so a 1024² grid is used: measured max error 4e-5 there, 4.4e-4 with 256²,
    # the midpoint rule's second order in the node spacing)
    core = np.abs(post_mean).max(axis=1) < (2.5 if latent_dim == 1 else 1.0)
    assert core.sum() > 50
    np.testing.assert_allclose(quad[core], exact[core], rtol=0,
                               atol=1e-5 if latent_dim == 1 else 1e-4)


def test_linear_gaussian_samples_have_the_closed_form_moments():
    truth = _small_linear(3, 5, sigma=0.3)
    n = 20000
    X, _ = truth.sample(n, seed=2)
    cov = truth.A @ truth.A.T + 0.09 * np.eye(5)
    # standard errors of a sample mean and covariance entry of a Gaussian:
    # var(x̄_i) = C_ii / n, var(Ĉ_ij) ≈ (C_ii C_jj + C_ij²) / n
    mean_se = np.sqrt(np.diag(cov) / n)
    assert (np.abs(X.mean(0) - truth.b) <= 5 * mean_se).all()
    cov_se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    assert (np.abs(np.cov(X.T) - cov) <= 5 * cov_se).all()


def test_rotated_twin_has_the_same_log_prob_and_other_codes():
    truth = datasets.get("linear-gaussian")
    twin = datasets.get("linear-gaussian", twin=True)
    assert (truth.latent_dim, truth.data_dim, truth.sigma) == (8, 64, 0.3)
    X, Z = truth.sample(100, seed=0)
    np.testing.assert_allclose(twin.log_prob(X), truth.log_prob(X), rtol=0, atol=1e-9)
    np.testing.assert_allclose(twin.mean(datasets.twin_codes("linear-gaussian", Z)),
                               truth.mean(Z), rtol=0, atol=1e-12)
    assert np.abs(twin.mean(Z) - truth.mean(Z)).max() > 0.5
    singular = np.linalg.svd(truth.A, compute_uv=False)
    np.testing.assert_allclose(singular, np.geomspace(2.0, 0.5, 8), rtol=1e-12)


def test_linear_gaussian_checks_its_arguments():
    with pytest.raises(ValueError, match=r"b must be a finite vector of shape \(3,\)"):
        LinearGaussian(np.ones((3, 2)), np.zeros(2), sigma=0.1)
    with pytest.raises(ValueError, match="A must be a finite matrix"):
        LinearGaussian(np.ones(3), np.zeros(3), sigma=0.1)
    with pytest.raises(ValueError, match=r"Q must be an orthogonal matrix of shape \(2, 2\)"):
        LinearGaussian(np.ones((3, 2)), np.zeros(3), sigma=0.1).rotated(np.ones((2, 2)))


# --- the evaluator ---------------------------------------------------------------------------


def test_evaluator_matches_the_closed_form_linear_gaussian():
    truth = _small_linear(3, 6)
    X, _ = truth.sample(20, seed=3)
    estimate = truth.log_prob_estimate(X, seed=0, **FAST)
    assert estimate.log_prob.shape == estimate.se.shape == estimate.ess.shape == (20,)
    _within_se(estimate, truth.log_prob(X))
    assert (estimate.ess > 0.3 * estimate.n_samples).all()  # a near-exact proposal
    # cost: per point, 256 start draws, 8 restarts x 150 steps x 4 samples, then 1000 draws
    assert estimate.decoder_passes == 20 * (256 + 8 * 150 * 4 + 1000)
    assert estimate.seconds > 0
    summary = estimate.summary()
    assert summary["decoder_passes"] == estimate.decoder_passes
    assert math.isclose(summary["mean_log_prob"], estimate.log_prob.mean())


def test_ground_truth_above_two_latent_dims_uses_the_evaluator():
    """z ~ N(0, I_3), f(z) = z: p(x) = N(0, (1 + σ²) I), scored by GroundTruth.log_prob."""
    truth = GroundTruth("normal", lambda z: z, sigma=0.5, latent_dim=3)
    X, _ = truth.sample(5, seed=0)
    exact = stats.multivariate_normal(np.zeros(3), 1.25 * np.eye(3)).logpdf(X)
    estimate = truth.log_prob_estimate(X)  # the defaults log_prob uses
    _within_se(estimate, exact)
    np.testing.assert_array_equal(truth.log_prob(X), estimate.log_prob)


def test_evaluator_matches_quadrature_on_a_bimodal_posterior():
    """f(z) = (z₁², z₂, z₂²/2) has posteriors with two modes z₁ ≈ ±√x₁; restarts from distinct
    starts find both."""
    prior = StandardNormal(2)

    def f(z):
        return torch.stack([z[:, 0] ** 2, z[:, 1], 0.5 * z[:, 1] ** 2], 1)

    truth = GroundTruth(prior, f, sigma=0.2, latent_dim=2, nodes_per_dim=1024)
    X, _ = truth.sample(20, seed=4)
    # reference: a 1024² grid (posterior widths >= 0.04 against node spacings <= 0.03 where the
    # posteriors sit; the default 256² grid differs from it by up to 0.02 nats here)
    quad = truth.log_prob(X)
    estimate = estimate_log_marginal(f, prior, 0.2, X, seed=0, **FAST)
    _within_se(estimate, quad)  # measured: |error| <= 2.5 se
    one_fit = estimate_log_marginal(f, prior, 0.2, X, seed=0, restarts=1, defensive=0.01, **FAST)
    # with one fit the other mode is only found by the small prior share: estimates fall low
    # (measured: by up to 0.71 nats, 68 se)
    assert (one_fit.log_prob - quad).min() < -0.3


def test_evaluator_matches_quadrature_under_a_uniform_prior():
    truth = datasets.get("swiss-roll")
    X, _ = truth.sample(15, seed=5)
    estimate = truth.log_prob_estimate(X, seed=0, **FAST)
    quad = log_marginal(truth.decode, truth.prior, truth.sigma, X)
    err = np.abs(estimate.log_prob - quad)
    assert (err <= 5 * estimate.se + estimate.se**2 + 1e-3).all(), (err, estimate.se)


def test_uniform_prior_is_reached_through_the_normal_cdf():
    u = torch.linspace(-3, 3, 7, dtype=torch.float64)[:, None]
    np.testing.assert_allclose(from_standard_normal(Uniform(1))(u).numpy(),
                               stats.norm.cdf(u.numpy()), rtol=1e-14)
    assert from_standard_normal(StandardNormal(1))(u) is u


def test_evaluator_is_deterministic_given_the_seed():
    truth = _small_linear(3, 6)
    X, _ = truth.sample(5, seed=0)
    options = dict(n_samples=200, fit_steps=30)
    a = truth.log_prob_estimate(X, seed=7, **options)
    b = truth.log_prob_estimate(X, seed=7, **options)
    c = truth.log_prob_estimate(X, seed=8, **options)
    np.testing.assert_array_equal(a.log_prob, b.log_prob)
    np.testing.assert_array_equal(a.se, b.se)
    assert not np.array_equal(a.log_prob, c.log_prob)


def test_a_decoder_without_gradients_is_refused_by_name():
    detached = GroundTruth("normal", lambda z: torch.as_tensor(z.detach().numpy() * 2.0),
                           sigma=0.1, latent_dim=3)
    X, _ = detached.sample(3, seed=0)
    with pytest.raises(ValueError, match="f gives no gradient with respect to z"):
        detached.log_prob(X)
    numpy_f = GroundTruth("normal", lambda z: np.asarray(z) * 2.0, sigma=0.1, latent_dim=3)
    with pytest.raises(ValueError, match="f failed on a tensor that requires gradients"):
        numpy_f.log_prob(X)


@pytest.mark.parametrize("option, value, message", [
    ("n_samples", 0, "n_samples must be a positive integer"),
    ("restarts", 1.5, "restarts must be a positive integer"),
    ("defensive", 1.0, r"defensive must lie in \(0, 1\)"),
    ("start_draws", 4, r"start_draws \(4\) must be at least restarts \(8\)"),
    ("widen", 0.0, "widen must be positive"),
    ("anneal_steps", -1, "anneal_steps must be a non-negative integer"),
    ("leapfrog_steps", 0, "leapfrog_steps must be a positive integer"),
])
def test_evaluator_option_checks(option, value, message):
    with pytest.raises(ValueError, match=message):
        estimate_log_marginal(lambda z: z, StandardNormal(3), 0.1, np.zeros((1, 3)),
                              **{option: value})


# --- annealed importance sampling --------------------------------------------------------------


def test_annealing_from_the_exact_posterior_gives_every_chain_log_p():
    """Started at the exact posterior ``N(m, S)`` of a linear-Gaussian model (``f_T = p(x) q``),
    every increment is ``(β_t − β_{t−1}) log p(x)``
    whatever the transitions do, so each chain's log-weight is ``log p(x)`` up to rounding
    (about 100 float64 increments of size below 30 nats)."""
    from mapa_vae.marginal import _annealed_weights, _Target

    truth = _small_linear(3, 6)
    X, _ = truth.sample(4, seed=2)
    A, s2 = truth.A, truth.sigma**2
    cov = np.linalg.inv(np.eye(3) + A.T @ A / s2)
    mean = (X - truth.b) @ A @ cov / s2
    loc = torch.tensor(mean)[:, None, :]
    factor = torch.tensor(np.linalg.cholesky(cov)).expand(4, 1, 3, 3)
    target = _Target(truth.decode, truth.prior, truth.sigma)
    log_w = _annealed_weights(target, torch.tensor(X), loc, factor, defensive=0.0, chains=5,
                              steps=100, leapfrog=3, generator=torch.Generator().manual_seed(0))
    assert log_w.shape == (5, 4)
    np.testing.assert_allclose(log_w.numpy(), np.broadcast_to(truth.log_prob(X), (5, 4)),
                               rtol=0, atol=1e-10)
    assert target.passes == 4 * 5 * (1 + 100 * 3)


def test_annealed_evaluator_matches_quadrature_on_a_bimodal_posterior():
    """Chains start from the fitted proposal (both modes, see the importance-sampling test) and
    anneal to ``f(z) = (z₁², z₂, z₂²/2)``'s bimodal posteriors: within ``5 se + se²`` of a
    1024² grid, from components widened 2× so that the transitions must correct them."""
    prior = StandardNormal(2)

    def f(z):
        return torch.stack([z[:, 0] ** 2, z[:, 1], 0.5 * z[:, 1] ** 2], 1)

    truth = GroundTruth(prior, f, sigma=0.2, latent_dim=2, nodes_per_dim=1024)
    X, _ = truth.sample(10, seed=4)
    estimate = estimate_log_marginal(f, prior, 0.2, X, seed=0, n_samples=64, anneal_steps=50,
                                     leapfrog_steps=3, fit_steps=150, widen=2.0)
    _within_se(estimate, truth.log_prob(X))
    assert estimate.n_samples == 64
    assert estimate.decoder_passes == 10 * (256 + 8 * 150 * 4 + 64 * (1 + 50 * 3))


def test_evaluator_matches_quadrature_under_a_bernoulli_likelihood():
    """Logits f(z) = (3 z₁, −2 z₂, z₁ z₂, 1) for 4 binary pixels: the one evaluator reproduces a
    1024² quadrature within its standard errors, and the 16 vectors' probabilities sum to 1
    under the quadrature."""
    prior, likelihood = StandardNormal(2), BernoulliLikelihood()

    def f(z):
        return torch.stack([3 * z[:, 0], -2 * z[:, 1], z[:, 0] * z[:, 1],
                            torch.ones_like(z[:, 0])], 1)

    X = np.array([[(v >> j) & 1 for j in range(4)] for v in range(16)], dtype=float)
    quad = log_marginal(f, prior, likelihood, X, nodes_per_dim=1024)
    assert np.exp(quad).sum() == pytest.approx(1.0, abs=1e-9)
    estimate = estimate_log_marginal(f, prior, likelihood, X, seed=0, **FAST)
    _within_se(estimate, quad)
