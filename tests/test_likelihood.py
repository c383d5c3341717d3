"""The Gaussian likelihood and its mixtures: closed forms, chunking, extreme values, errors."""
import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from mapa_vae import GaussianLikelihood, likelihood
from mapa_vae.likelihood import (check_sigma, log_normal_from_sqdist, mixture_log_joint,
                                 mixture_log_prob, mixture_log_responsibilities,
                                 squared_distances)

EPS = np.finfo(np.float64).eps


def _mixture(n=30, m=5, d=3, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    x, means = scale * rng.normal(size=(n, d)), scale * rng.normal(size=(m, d))
    log_w = np.log(rng.dirichlet(np.ones(m)))
    return x, means, log_w


def _reference_terms(x, means, log_w, sigma):
    """``log w_m + log N(x_i; μ_m, σ² I)`` in NumPy, from the definition."""
    d = x.shape[1]
    sq = ((x[:, None, :] - means[None, :, :]) ** 2).sum(-1)
    return log_w - 0.5 * sq / sigma**2 - d * math.log(sigma) - 0.5 * d * math.log(2 * math.pi)


def _t(a):
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def test_likelihood_matches_scipy_and_sigma_can_be_learned():
    x = torch.randn(6, 3, dtype=torch.float64)
    mean = torch.randn(6, 3, dtype=torch.float64)
    fixed = GaussianLikelihood(sigma=0.4).double()
    expected = [multivariate_normal(mean[i].numpy(), 0.16 * np.eye(3)).logpdf(x[i].numpy())
                for i in range(6)]
    np.testing.assert_allclose(fixed.log_prob(x, mean).numpy(), expected, rtol=1e-6)
    assert not any(p.requires_grad for p in fixed.parameters())
    learned = GaussianLikelihood(sigma=0.4, learn_sigma=True)
    assert [name for name, _ in learned.named_parameters()] == ["log_sigma"]
    assert float(learned.sigma.detach()) == pytest.approx(0.4)


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan"), float("inf"), "big"])
def test_likelihood_rejects_bad_sigma(sigma):
    with pytest.raises(ValueError, match="sigma must be"):
        GaussianLikelihood(sigma=sigma)


def test_gradient_in_log_sigma_has_its_closed_form():
    """d/d log σ of Σ_i log N(x_i; μ_i, σ² I) = Σ_i (‖x_i − μ_i‖² / σ² − D)."""
    torch.manual_seed(1)
    x, mean = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    lik = GaussianLikelihood(sigma=0.7, learn_sigma=True).double()
    lik.log_prob(x, mean).sum().backward()
    sigma = float(lik.sigma.detach())
    expected = float(((x - mean).square().sum(-1) / sigma**2 - 3).sum())
    assert float(lik.log_sigma.grad) == pytest.approx(expected, rel=1e-12)


def test_log_prob_broadcasts_over_leading_axes():
    torch.manual_seed(2)
    lik = GaussianLikelihood(sigma=0.3).double()
    x = torch.randn(4, 2, dtype=torch.float64)
    means = torch.randn(5, 4, 2, dtype=torch.float64)
    together = lik.log_prob(x.expand(5, 4, 2), means)
    assert together.shape == (5, 4)
    for s in range(5):
        np.testing.assert_allclose(together[s].numpy(), lik.log_prob(x, means[s]).numpy(),
                                   rtol=4 * EPS)


@pytest.mark.parametrize("dim", [1, 4])
def test_log_normal_from_sqdist_matches_scipy(dim):
    rng = np.random.default_rng(dim)
    x, mu = rng.normal(size=(7, dim)), rng.normal(size=(7, dim))
    sq = ((x - mu) ** 2).sum(1)
    got = log_normal_from_sqdist(_t(sq), 0.25, dim).numpy()
    expected = [multivariate_normal(mu[i], 0.0625 * np.eye(dim)).logpdf(x[i]) for i in range(7)]
    np.testing.assert_allclose(got, expected, rtol=1e-12)  # scipy: another order of rounding
    as_tensor = log_normal_from_sqdist(_t(sq), torch.tensor(0.25, dtype=torch.float64), dim)
    assert torch.equal(as_tensor, _t(got))


def test_squared_distances_do_not_cancel_far_from_the_origin():
    # the expansion ‖x‖² − 2 x·y + ‖y‖² loses everything here: ‖x‖² = 10¹⁶ + 10⁸ + ¼ needs 55 bits
    x = torch.tensor([[1e8 + 0.5, -3.0]], dtype=torch.float64)
    y = torch.tensor([[1e8, -3.0], [1e8 + 0.5, -2.5]], dtype=torch.float64)
    assert squared_distances(x, y).tolist() == [[0.25, 0.25]]
    x, means, _ = _mixture()
    expected = ((x[:, None, :] - means[None, :, :]) ** 2).sum(-1)
    # sqrt then square: a few units in the last place
    np.testing.assert_allclose(squared_distances(_t(x), _t(means)).numpy(), expected,
                               rtol=16 * EPS)


def test_mixture_log_joint_is_log_weight_plus_log_normal():
    x, means, log_w = _mixture()
    got = mixture_log_joint(_t(x), _t(means), _t(log_w), 0.6).numpy()
    expected = _reference_terms(x, means, log_w, 0.6)
    np.testing.assert_allclose(got, expected, rtol=0, atol=16 * EPS * np.abs(expected).max())


@pytest.mark.parametrize("chunk_pairs", [1, 7, 64, 149, likelihood._CHUNK_PAIRS])
@pytest.mark.parametrize("n, m", [(30, 5), (1, 40), (41, 1)])
def test_mixture_log_prob_is_the_logsumexp_of_its_terms_at_any_chunk_size(monkeypatch,
                                                                        chunk_pairs, n, m):
    """Chunks of ``_CHUNK_PAIRS // m`` rows (at least one): with 7 and 30 × 5 pairs, one row a
    chunk; with 149, 29 rows and a last chunk of one; by default, every row in one chunk."""
    monkeypatch.setattr(likelihood, "_CHUNK_PAIRS", chunk_pairs)
    x, means, log_w = _mixture(n, m)
    terms = _reference_terms(x, means, log_w, 0.35)
    got = mixture_log_prob(_t(x), _t(means), _t(log_w), 0.35).numpy()
    assert got.shape == (n,)
    # each term carries a few units of rounding of the largest magnitude it involves
    np.testing.assert_allclose(got, logsumexp(terms, axis=1), rtol=0,
                               atol=32 * EPS * np.abs(terms).max())


def test_mixture_log_prob_has_no_gradient():
    x, means, log_w = (_t(a) for a in _mixture())
    means.requires_grad_(True)
    assert not mixture_log_prob(x, means, log_w, 0.5).requires_grad


@pytest.mark.parametrize("case", ["underflow", "overflow"])
def test_mixture_log_prob_with_extreme_values_neither_overflows_nor_underflows(monkeypatch,
                                                                               case):
    """Far points and a tiny σ (terms near −10¹²: every exp underflows to 0), or unnormalised
    log-weights of ±800 (exp(800) overflows): the log-density is still the largest term plus
    the log of a sum of bounded exponentials."""
    monkeypatch.setattr(likelihood, "_CHUNK_PAIRS", 8)  # several chunks
    if case == "underflow":
        x, means, log_w = _mixture(12, 3, scale=1e3)
        sigma = 1e-3
    else:
        x, means, log_w = _mixture(12, 3)
        log_w, sigma = log_w + np.array([800.0, 795.0, -800.0]), 0.5
    terms = _reference_terms(x, means, log_w, sigma)
    if case == "underflow":
        assert terms.max() < -1e6  # exp of every term is 0 in float64
    else:
        assert (terms.max(axis=1) > 710).all()  # exp of the largest term is inf in float64
    got = mixture_log_prob(_t(x), _t(means), _t(log_w), sigma).numpy()
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, logsumexp(terms, axis=1), rtol=0,
                               atol=32 * EPS * np.abs(terms).max())


def test_a_mixture_of_equal_components_is_one_gaussian():
    rng = np.random.default_rng(3)
    x, mu = rng.normal(size=(9, 2)), rng.normal(size=(1, 2))
    m = 6
    got = mixture_log_prob(_t(x), _t(np.repeat(mu, m, 0)), _t(np.full(m, -math.log(m))), 0.8)
    expected = multivariate_normal(mu[0], 0.64 * np.eye(2)).logpdf(x)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0,
                               atol=32 * EPS * (np.abs(expected).max() + math.log(m)))


def test_responsibilities_are_the_normalised_joint_and_rows_sum_to_one():
    x, means, log_w = _mixture(20, 6)
    got = mixture_log_responsibilities(_t(x), _t(means), _t(log_w), 0.5).numpy()
    terms = _reference_terms(x, means, log_w, 0.5)
    expected = terms - logsumexp(terms, axis=1, keepdims=True)
    np.testing.assert_allclose(got, expected, rtol=0, atol=32 * EPS * np.abs(terms).max())
    # exp carries the absolute error of the log as a relative one; six terms add their own
    np.testing.assert_allclose(np.exp(got).sum(1), 1.0, rtol=0,
                               atol=32 * EPS * np.abs(terms).max() + 6 * EPS)


def test_responsibilities_stay_finite_when_one_component_takes_all():
    means = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=torch.float64)
    x = means[:1].clone()
    log_r = mixture_log_responsibilities(x, means, torch.full((3,), -math.log(3),
                                                              dtype=torch.float64), 1e-3)
    assert log_r[0, 0].item() == 0.0
    far = pytest.approx(-0.5 * 100 / 1e-6, rel=1e-12)
    assert log_r[0, 1].item() == log_r[0, 2].item() == far
    assert torch.isfinite(log_r).all()


@pytest.mark.parametrize("sigma, expected", [(0.5, 0.5), ("0.25", 0.25), (np.float32(2.0), 2.0),
                                             (torch.tensor(4.0), 4.0), (1, 1.0)])
def test_check_sigma_returns_a_float(sigma, expected):
    value = check_sigma(sigma)
    assert type(value) is float and value == expected


@pytest.mark.parametrize("sigma, message", [
    (None, "sigma must be a positive number, got None"),
    ("wide", "sigma must be a positive number, got 'wide'"),
    ([0.1, 0.2], "sigma must be a positive number, got [0.1, 0.2]"),
    (0.0, "sigma must be a positive finite number, got 0.0"),
    (-0.1, "sigma must be a positive finite number, got -0.1"),
    (float("nan"), "sigma must be a positive finite number, got nan"),
    (float("inf"), "sigma must be a positive finite number, got inf"),
])
def test_check_sigma_names_the_bad_value(sigma, message):
    with pytest.raises(ValueError) as error:
        check_sigma(sigma)
    assert str(error.value) == message
