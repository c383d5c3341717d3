"""Tests for GroundTruth (quadrature marginal, posterior, sampling, input checks) and test_kl.

The reference model is linear-Gaussian, where everything is closed form:
``z ~ N(0, I_d)``, ``x | z ~ N(A z + b, σ² I)``  ⇒  ``x ~ N(b, A Aᵀ + σ² I)`` and
``z | x ~ N(S Aᵀ (x − b) / σ², S)`` with ``S = (I + Aᵀ A / σ²)⁻¹``.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.integrate import trapezoid

from mapa_vae import GroundTruth, KLEstimate, test_kl
from mapa_vae.priors import StandardNormal, Uniform

# --- 1-D latent, 2-D data: f(z) = a z + b -------------------------------------------------------
A1 = np.array([1.0, 0.5])
B1 = np.array([0.2, -0.1])
SIGMA1 = 0.3
COV1 = np.outer(A1, A1) + SIGMA1**2 * np.eye(2)
POST_VAR1 = 1.0 / (1.0 + A1 @ A1 / SIGMA1**2)

# --- 2-D latent, 3-D data: f(z) = A z + b -------------------------------------------------------
A2 = np.array([[1.0, 0.3], [-0.4, 0.8], [0.5, 0.5]])
B2 = np.array([0.1, 0.0, -0.2])
SIGMA2 = 0.5
COV2 = A2 @ A2.T + SIGMA2**2 * np.eye(3)
POST_COV2 = np.linalg.inv(np.eye(2) + A2.T @ A2 / SIGMA2**2)


def _linear_1d() -> GroundTruth:
    a, b = torch.tensor(A1), torch.tensor(B1)
    return GroundTruth("normal", lambda z: z * a + b, sigma=SIGMA1, latent_dim=1, name="lin1")


def _linear_2d() -> GroundTruth:
    A, b = torch.tensor(A2), torch.tensor(B2)
    return GroundTruth("normal", lambda z: z @ A.T + b, sigma=SIGMA2, latent_dim=2, name="lin2")


def _post_mean1(X):
    return POST_VAR1 * (X - B1) @ A1 / SIGMA1**2


def _post_mean2(X):
    return (X - B2) @ A2 @ POST_COV2.T / SIGMA2**2


@pytest.fixture(scope="module")
def lin1():
    return _linear_1d()


@pytest.fixture(scope="module")
def lin2():
    return _linear_2d()


# --- marginal log p(x) ------------------------------------------------------------------------


def test_linear_gaussian_1d_log_prob_matches_closed_form(lin1):
    X, _ = lin1.sample(400, seed=0)
    lp = lin1.log_prob(X)
    assert lp.shape == (400,) and lp.dtype == np.float64
    exact = stats.multivariate_normal(B1, COV1).logpdf(X)
    # Measured: max error 1.7e-6 (at posteriors near |z| ~ 2.6, where the graded tail cells
    # meet the equal-mass interior), 1e-9 elsewhere in the bulk, 1e-5 in the far tail.
    bulk = np.abs(_post_mean1(X)) < 2.5
    assert bulk.sum() >= 380
    np.testing.assert_allclose(lp[bulk], exact[bulk], rtol=0, atol=5e-6)
    # and every sampled point, tails included (refined tail cells)
    np.testing.assert_allclose(lp, exact, rtol=0, atol=1e-4)


def test_linear_gaussian_1d_log_prob_off_the_line(lin1):
    """Points away from the data line (orthogonal offsets of several σ) are scored exactly too."""
    normal = np.array([-A1[1], A1[0]]) / np.linalg.norm(A1)
    z0 = np.linspace(-2, 2, 9)
    offsets = np.array([-1.0, -0.3, 0.0, 0.5, 1.2])
    X = np.array([B1 + z * A1 + c * normal for z in z0 for c in offsets])
    exact = stats.multivariate_normal(B1, COV1).logpdf(X)
    np.testing.assert_allclose(lin1.log_prob(X), exact, rtol=0, atol=1e-6)
    assert exact.min() < -10  # the check reaches far below the mode


def test_linear_gaussian_1d_log_prob_in_prior_tail(lin1):
    X = np.array([4.0, 4.5, -4.5])[:, None] * A1 + B1
    exact = stats.multivariate_normal(B1, COV1).logpdf(X)
    np.testing.assert_allclose(lin1.log_prob(X), exact, rtol=0, atol=1e-2)


def test_nodes_per_dim_controls_accuracy():
    """Coarser grids are worse: the quadrature converges towards the closed form."""
    a, b = torch.tensor(A1), torch.tensor(B1)
    X, _ = _linear_1d().sample(100, seed=5)
    X = X[np.abs(_post_mean1(X)) < 2.0]
    exact = stats.multivariate_normal(B1, COV1).logpdf(X)
    errors = []
    for M in (16, 64, 256, 1024):
        truth = GroundTruth("normal", lambda z: z * a + b, sigma=SIGMA1, nodes_per_dim=M)
        errors.append(np.abs(truth.log_prob(X) - exact).max())
    assert errors[0] > 1e-3
    assert all(e1 > e2 for e1, e2 in zip(errors, errors[1:]))
    assert errors[-1] < 1e-4


def test_uniform_prior_identity_map_closed_form():
    """z ~ U[0,1], x = z + σε  ⇒  p(x) = Φ(x/σ) − Φ((x−1)/σ)."""
    truth = GroundTruth("uniform", lambda z: z, sigma=0.1)
    x = np.linspace(-0.4, 1.4, 37)
    exact = np.log(stats.norm.cdf(x / 0.1) - stats.norm.cdf((x - 1) / 0.1))
    # midpoint rule with 16384 equally spaced nodes: measured max error 4e-7 (at |x - ½| = 1)
    np.testing.assert_allclose(truth.log_prob(x[:, None]), exact, rtol=0, atol=1e-5)


def test_linear_gaussian_2d_latent_log_prob_matches_closed_form(lin2):
    X, _ = lin2.sample(300, seed=0)
    lp = lin2.log_prob(X)
    exact = stats.multivariate_normal(B2, COV2).logpdf(X)
    # Default 2-D grid is 256^2; its outermost node per axis is Phi^-1(1 - 1/512) ~ 2.9, so the
    # accuracy depends on where the posterior sits. Measured (seed 0, 300 points): max error
    # 9.2e-7 where every posterior-mean coordinate is within 1 prior sd (174 points),
    # 3.9e-4 within 1.5, and 0.5 nats at the worst tail point; median error 3.5e-7.
    core = np.abs(_post_mean2(X)).max(axis=1) < 1.0
    assert core.sum() >= 150
    np.testing.assert_allclose(lp[core], exact[core], rtol=0, atol=1e-5)
    assert np.median(np.abs(lp - exact)) < 1e-5
    assert np.mean(np.abs(lp - exact)) < 2e-2


# --- posterior log p(z | x) -------------------------------------------------------------------


def test_linear_gaussian_1d_posterior_matches_closed_form(lin1):
    X, _ = lin1.sample(40, seed=1)
    X = X[np.abs(_post_mean1(X)) < 2.5]
    Z = np.linspace(-3.0, 3.0, 61)[:, None]
    lpost = lin1.log_posterior(X, Z)
    assert lpost.shape == (X.shape[0], 61)
    mu = _post_mean1(X)
    exact = stats.norm.logpdf(Z[:, 0][None, :], loc=mu[:, None], scale=math.sqrt(POST_VAR1))
    np.testing.assert_allclose(lpost, exact, rtol=0, atol=1e-6)


def test_linear_gaussian_1d_posterior_integrates_to_one(lin1):
    X, _ = lin1.sample(20, seed=3)
    z = np.linspace(-6.0, 6.0, 4001)
    p = np.exp(lin1.log_posterior(X, z[:, None]))
    np.testing.assert_allclose(trapezoid(p, z, axis=1), 1.0, rtol=0, atol=1e-6)
    # posterior mean and variance from the density agree with the closed form
    mean = trapezoid(p * z, z, axis=1)
    var = trapezoid(p * z**2, z, axis=1) - mean**2
    X_bulk = np.abs(_post_mean1(X)) < 2.5
    np.testing.assert_allclose(mean[X_bulk], _post_mean1(X)[X_bulk], atol=1e-6)
    np.testing.assert_allclose(var[X_bulk], POST_VAR1, atol=1e-6)


def test_linear_gaussian_2d_latent_posterior_matches_closed_form(lin2):
    X, _ = lin2.sample(60, seed=2)
    X = X[np.abs(_post_mean2(X)).max(axis=1) < 1.0][:10]
    assert X.shape[0] == 10
    g = np.linspace(-2.5, 2.5, 11)
    Z = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    lpost = lin2.log_posterior(X, Z)
    assert lpost.shape == (10, 121)
    mu = _post_mean2(X)
    exact = np.stack([stats.multivariate_normal(m, POST_COV2).logpdf(Z) for m in mu])
    np.testing.assert_allclose(lpost, exact, rtol=0, atol=1e-5)


def test_posterior_is_minus_inf_outside_uniform_support():
    truth = GroundTruth("uniform", lambda z: torch.cat([z, z**2], 1), sigma=0.1)
    X = np.array([[0.5, 0.25], [0.1, 0.0]])
    Z = np.array([[-0.1], [0.3], [1.2]])
    lpost = truth.log_posterior(X, Z)
    assert np.isneginf(lpost[:, [0, 2]]).all()
    assert np.isfinite(lpost[:, 1]).all()


# --- sampling and decoding --------------------------------------------------------------------


def test_sample_shapes_reproducibility_and_noise_level(lin1, lin2):
    X, Z = lin1.sample(4000, seed=7)
    assert X.shape == (4000, 2) and Z.shape == (4000, 1)
    X_again, Z_again = lin1.sample(4000, seed=7)
    np.testing.assert_array_equal(X, X_again)
    np.testing.assert_array_equal(Z, Z_again)
    X_other, _ = lin1.sample(4000, seed=8)
    assert not np.allclose(X, X_other)
    residual = X - lin1.mean(Z)
    np.testing.assert_allclose(residual.std(axis=0), SIGMA1, rtol=0.05)
    np.testing.assert_allclose(np.cov(X.T), COV1, atol=0.1)
    X2, Z2 = lin2.sample(5, seed=0)
    assert X2.shape == (5, 3) and Z2.shape == (5, 2)
    assert lin1.data_dim == 2 and lin2.data_dim == 3
    assert lin1.latent_dim == 1 and lin2.latent_dim == 2


def test_mean_and_decode(lin2):
    Z = np.array([[0.0, 0.0], [1.0, -2.0], [0.5, 0.25]])
    np.testing.assert_allclose(lin2.mean(Z), Z @ A2.T + B2, atol=1e-14)
    out = lin2.decode(torch.from_numpy(Z))
    assert out.dtype == torch.float64 and out.shape == (3, 3)
    # whatever dtype f returns, decode hands back float64
    single = GroundTruth("normal", lambda z: torch.cat([z, 2 * z], 1).float(), sigma=0.1)
    out = single.decode(torch.tensor([[0.5], [1.0]], dtype=torch.float64))
    assert out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), [[0.5, 1.0], [1.0, 2.0]])


def test_numpy_decoder_and_vector_output_accepted():
    truth = GroundTruth("normal", lambda z: np.sin(np.asarray(z)), sigma=0.2)
    assert truth.data_dim == 1
    X, Z = truth.sample(6, seed=0)
    assert X.shape == (6, 1)
    np.testing.assert_allclose(truth.mean(Z), np.sin(Z))
    # f returning a vector of length n is read as D = 1
    flat = GroundTruth("normal", lambda z: z[:, 0] ** 2, sigma=0.2)
    assert flat.data_dim == 1
    assert flat.sample(4, seed=0)[0].shape == (4, 1)
    np.testing.assert_allclose(flat.log_prob(np.array([[0.0], [1.0]])),
                               GroundTruth("normal", lambda z: z**2, sigma=0.2).log_prob(
                                   np.array([[0.0], [1.0]])), atol=1e-12)


def test_vector_output_decoder_with_a_single_code():
    flat = GroundTruth("normal", lambda z: z[:, 0] ** 2, sigma=0.2)
    X, Z = flat.sample(1, seed=0)
    assert X.shape == (1, 1)


def test_prior_instance_and_repr():
    truth = GroundTruth(Uniform(2), lambda z: z, sigma=0.1, latent_dim=2, name="square")
    assert truth.prior == Uniform(2)
    assert "square" in repr(truth) and "data_dim=2" in repr(truth)
    assert GroundTruth("normal", lambda z: z).prior == StandardNormal(1)


# --- test_kl ----------------------------------------------------------------------------------


def test_kl_of_truth_with_itself_is_zero(lin1):
    kl = test_kl(lin1, stats.multivariate_normal(B1, COV1).logpdf, n_samples=1000, seed=0)
    assert isinstance(kl, KLEstimate) and kl.n_samples == 1000
    assert kl.se < 1e-3
    assert abs(kl.mean) <= 3 * kl.se + 1e-9
    assert kl.as_dict() == {"test_kl": kl.mean, "test_kl_se": kl.se, "n_samples": 1000}


def test_kl_against_a_wrong_gaussian_matches_closed_form(lin1):
    shift, scale = np.array([0.3, -0.2]), 1.5
    q = stats.multivariate_normal(B1 + shift, scale * COV1)
    kl = test_kl(lin1, q.logpdf, n_samples=1000, seed=0)
    # KL(N(m, S) || N(m + d, c S)) = ½ [k/c + dᵀ(cS)⁻¹d − k + k log c]
    k = 2
    exact = 0.5 * (k / scale + shift @ np.linalg.solve(scale * COV1, shift) - k + k * np.log(scale))
    assert kl.mean > 5 * kl.se > 0
    assert abs(kl.mean - exact) < 3.5 * kl.se
    assert 0.005 < kl.se < 0.05


def test_kl_is_reproducible_by_seed_and_validates(lin1):
    model = stats.multivariate_normal(B1, 2 * COV1).logpdf
    a = test_kl(lin1, model, n_samples=50, seed=3)
    assert a == test_kl(lin1, model, n_samples=50, seed=3)
    assert a.mean != test_kl(lin1, model, n_samples=50, seed=4).mean
    with pytest.raises(ValueError, match="n_samples must be at least 2"):
        test_kl(lin1, model, n_samples=1)
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        test_kl(lin1, model, n_samples=0)
    with pytest.raises(ValueError):
        test_kl(lin1, lambda X: np.zeros(3), n_samples=10, seed=0)


def test_kl_rejects_model_output_of_the_wrong_length(lin1):
    with pytest.raises(ValueError, match="returned 1 values for 10 points"):
        test_kl(lin1, lambda X: np.zeros(1), n_samples=10, seed=0)
    with pytest.raises(ValueError, match="returned 3 values for 10 points"):
        test_kl(lin1, lambda X: np.zeros(3), n_samples=10, seed=0)


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("f", [None, 3.0, "z**2", np.zeros(3)])
def test_non_callable_f(f):
    with pytest.raises(ValueError, match="f must be a callable"):
        GroundTruth("normal", f, sigma=0.1)


def test_an_f_that_fails_on_the_latent_size_names_it():
    weights = torch.randn(3, 10, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"f failed on codes of shape \(3, 1\) \(latent_dim=1; "
                                         r"is that f's input size\?\): RuntimeError"):
        GroundTruth("normal", lambda z: z.double() @ weights, sigma=0.1)
    assert GroundTruth("normal", lambda z: z.double() @ weights, sigma=0.1,
                       latent_dim=3).data_dim == 10


@pytest.mark.parametrize("sigma", [0, 0.0, -0.1, float("nan"), float("inf"), -float("inf")])
def test_bad_sigma(sigma):
    with pytest.raises(ValueError, match="sigma must be a positive finite number"):
        GroundTruth("normal", lambda z: z, sigma=sigma)


@pytest.mark.parametrize("sigma", [None, "abc"])
def test_non_numeric_sigma(sigma):
    with pytest.raises(ValueError, match="sigma must be a positive number"):
        GroundTruth("normal", lambda z: z, sigma=sigma)


@pytest.mark.parametrize("latent_dim", [0, -2, 1.0, True])
def test_bad_latent_dim(latent_dim):
    with pytest.raises(ValueError, match="latent_dim must be a positive integer"):
        GroundTruth("normal", lambda z: z, sigma=0.1, latent_dim=latent_dim)


def test_bad_prior():
    with pytest.raises(ValueError, match="unknown prior 'cauchy'"):
        GroundTruth("cauchy", lambda z: z)
    with pytest.raises(ValueError, match="prior has latent_dim=2 but latent_dim=1"):
        GroundTruth(StandardNormal(2), lambda z: z)


def test_latent_dim_three_samples_and_scores_by_the_evaluator():
    """Above two latent dimensions log_prob is the evaluator's (see test_marginal.py)."""
    truth = GroundTruth("normal", lambda z: z, sigma=0.1, latent_dim=3)
    X, Z = truth.sample(4, seed=0)
    assert X.shape == (4, 3) and Z.shape == (4, 3)
    exact = stats.multivariate_normal(np.zeros(3), 1.01 * np.eye(3)).logpdf(X)
    estimate = truth.log_prob_estimate(X, n_samples=500, fit_steps=100)
    assert (np.abs(estimate.log_prob - exact) <= 5 * estimate.se + estimate.se**2).all()


@pytest.mark.parametrize("X, message", [
    (np.array([[np.nan, 0.0]]), "X: Input X contains NaN"),
    (np.array([[0.0, np.inf]]), "X: Input X contains infinity"),
    (np.array([[0.0, -np.inf], [0.0, 0.0]]), "X: Input X contains infinity"),
    (np.zeros((2, 3)), "X has 3 features, but .* expecting 2 features"),
    (np.zeros((2, 1)), "X has 1 features, but .* expecting 2 features"),
    (np.zeros(2), "X: Expected 2D array, got 1D array"),
    (np.zeros((2, 2, 2)), "X: Found array with dim 3"),
    (np.zeros((0, 2)), "X: Found array with 0 sample"),
])
def test_log_prob_rejects_bad_X(lin1, X, message):
    with pytest.raises(ValueError, match=message):
        lin1.log_prob(X)
    with pytest.raises(ValueError, match=message):
        lin1.log_posterior(X, np.zeros((3, 1)))


@pytest.mark.parametrize("Z, message", [
    (np.array([[np.nan]]), "Z: Input Z contains NaN"),
    (np.zeros((2, 2)), "Z has 2 features, but .* expecting 1 features"),
    (np.zeros(3), "Z: Expected 2D array"),
])
def test_posterior_and_mean_reject_bad_Z(lin1, Z, message):
    with pytest.raises(ValueError, match=message):
        lin1.log_posterior(np.zeros((1, 2)), Z)
    with pytest.raises(ValueError, match=message):
        lin1.mean(Z)


def test_f_returning_wrong_number_of_rows_at_construction():
    with pytest.raises(ValueError, match=r"f returned shape \(2, 1\) for 3 latent codes"):
        GroundTruth("normal", lambda z: z[:2], sigma=0.1)
    with pytest.raises(ValueError, match=r"f returned shape \(3, 1, 1\) for 3 latent codes"):
        GroundTruth("normal", lambda z: z[:, :, None], sigma=0.1)


def test_f_returning_wrong_number_of_rows_later():
    """An f that happens to work on the 3-code probe is still caught on the quadrature grid."""
    truth = GroundTruth("normal", lambda z: z[:3], sigma=0.1)
    with pytest.raises(ValueError, match=r"f returned shape \(3, 1\) for \d+ latent codes"):
        truth.log_prob(np.zeros((1, 1)))
    with pytest.raises(ValueError, match=r"f returned shape \(3, 1\) for 5 latent codes"):
        truth.sample(5, seed=0)


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_bad_sample_size(lin1, n):
    with pytest.raises(ValueError, match="n must be a positive integer"):
        lin1.sample(n, seed=0)


def test_bad_nodes_per_dim():
    a, b = torch.tensor(A1), torch.tensor(B1)
    truth = GroundTruth("normal", lambda z: z * a + b, sigma=SIGMA1, nodes_per_dim=0)
    with pytest.raises(ValueError, match="nodes_per_dim must be a positive integer"):
        truth.log_prob(np.zeros((1, 2)))
