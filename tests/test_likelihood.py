"""The likelihoods and their mixtures: closed forms, the weighted sums MAPA's bound takes,
chunking, extreme values, errors."""
import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from mapa_vae import GaussianLikelihood, likelihood
from mapa_vae.likelihood import (BernoulliLikelihood, as_likelihood, check_likelihood,
                                 check_sigma, log_normal_from_sqdist, mixture_log_joint,
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


# --- the Bernoulli likelihood and what every likelihood answers ---------------------------


def _both():
    return [GaussianLikelihood(sigma=0.3).double(), BernoulliLikelihood().double()]


def test_bernoulli_log_prob_matches_scipy_and_stays_exact_at_extreme_logits():
    from scipy.stats import bernoulli

    rng = np.random.default_rng(4)
    x = (rng.random((6, 5)) < 0.5).astype(float)
    logits = rng.normal(scale=3.0, size=(6, 5))
    expected = bernoulli.logpmf(x, 1 / (1 + np.exp(-logits))).sum(1)
    got = BernoulliLikelihood().log_prob(_t(x), _t(logits)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # log σ(±1000) = 0 or −1000 exactly: no overflow, no cut-off
    extreme = BernoulliLikelihood().log_prob(_t([[1.0, 0.0, 1.0]]),
                                             _t([[1000.0, -1000.0, -1000.0]]))
    assert extreme.item() == -1000.0


@pytest.mark.parametrize("lik", _both(), ids=["gaussian", "bernoulli"])
def test_pairwise_log_prob_is_log_prob_over_every_pair(lik):
    rng = np.random.default_rng(5)
    x, outputs = _t(rng.random((7, 4))), _t(rng.normal(size=(3, 4)))
    pairs = lik.pairwise_log_prob(x, outputs)
    direct = lik.log_prob(x[:, None, :], outputs[None, :, :])
    assert pairs.shape == (7, 3)
    torch.testing.assert_close(pairs, direct, rtol=1e-12, atol=0)


@pytest.mark.parametrize("lik", _both(), ids=["gaussian", "bernoulli"])
def test_weighted_log_prob_is_the_explicit_sum_over_points_with_its_gradient(lik):
    """Σ_i W_in log p(x_i | y_n) from m_n, x̄_n and c_n alone equals the sum over every point i,
    and so does its gradient in y_n (float64: rounding of terms of size ~10)."""
    rng = np.random.default_rng(6)
    n, d = 9, 4
    X = rng.random((n, d)) < 0.4 if lik.name == "bernoulli" else rng.normal(size=(n, d))
    X = X.astype(float)
    W = rng.random((n, n)) * (rng.random((n, n)) < 0.5)
    W /= np.maximum(W.sum(1, keepdims=True), 1e-12)
    mass = W.sum(0)
    xbar = (W.T @ X) / np.where(mass > 0, mass, 1.0)[:, None]
    spread = W.T @ (X**2).sum(1) - mass * (xbar**2).sum(1)
    out = _t(rng.normal(size=(n, d))).requires_grad_(True)
    fast = lik.weighted_log_prob(out, _t(mass), _t(xbar), _t(spread))
    explicit = (_t(W) * lik.pairwise_log_prob(_t(X), out)).sum(0)
    torch.testing.assert_close(fast, explicit, rtol=1e-12, atol=1e-12)
    grad_fast, = torch.autograd.grad(fast.sum(), out)
    grad_explicit, = torch.autograd.grad(explicit.sum(), out)
    torch.testing.assert_close(grad_fast, grad_explicit, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("lik", _both(), ids=["gaussian", "bernoulli"])
def test_cost_is_minus_the_weighted_log_likelihood_up_to_a_row_constant(lik):
    """Σ_i W_in log p(x_i | y) + a m_n C(x̄_n, y) does not depend on y: the re-attachment that
    minimises Σ_n m_n C(x̄_n, y_π(n)) maximises the bound (a = 1/2σ² for the Gaussian, 1 for the
    Bernoulli)."""
    scale = 1 / (2 * float(lik.sigma) ** 2) if lik.name == "gaussian" else 1.0
    rng = np.random.default_rng(7)
    xbar, outputs = rng.random((5, 3)), rng.normal(size=(6, 3))
    mass, spread = rng.random(5) + 0.5, rng.random(5)
    weighted = lik.weighted_log_prob(_t(outputs)[None], _t(mass)[:, None], _t(xbar)[:, None],
                                     _t(spread)[:, None]).numpy()
    total = weighted + scale * mass[:, None] * lik.cost(xbar, outputs)
    np.testing.assert_allclose(total, total[:, :1].repeat(6, 1), rtol=1e-12, atol=1e-12)


def test_bernoulli_observations_are_fresh_binary_draws_with_the_data_as_their_mean():
    """Rows in [0, 1] give binary draws; 0 and 1 are their own; the mean of 4000 draws of
    probability v lies within 5 standard errors √(v(1 − v)/4000) of v."""
    lik = BernoulliLikelihood().double()
    v = _t([[0.0, 0.1, 0.5, 0.9, 1.0]]).expand(4000, 5)
    torch.manual_seed(0)
    draws = lik.observe(v)
    assert set(draws.unique().tolist()) == {0.0, 1.0}
    assert (draws[:, 0] == 0).all() and (draws[:, 4] == 1).all()
    p = v[0].numpy()
    se = np.sqrt(p * (1 - p) / 4000)
    assert np.all(np.abs(draws.mean(0).numpy() - p) <= 5 * se)
    assert not torch.equal(lik.observe(v), draws)  # fresh at every call
    gaussian = GaussianLikelihood(0.3)
    assert gaussian.observe(v) is v


def test_bernoulli_refuses_data_outside_the_unit_interval():
    BernoulliLikelihood.check_data(np.array([[0.0, 1.0], [0.5, 0.25]]))
    with pytest.raises(ValueError, match=r"X: the Bernoulli likelihood takes values in \[0, 1\].*"
                                         r"\[-0\.5, 1\]"):
        BernoulliLikelihood.check_data(np.array([[-0.5, 1.0]]))


def test_samples_follow_the_likelihood():
    rng = np.random.default_rng(8)
    logits = np.array([[-20.0, 0.0, 20.0]]).repeat(2000, 0)
    draws = BernoulliLikelihood().sample(logits, rng)
    assert set(np.unique(draws)) <= {0.0, 1.0}
    assert draws[:, 0].sum() == 0 and draws[:, 2].sum() == 2000
    assert abs(draws[:, 1].mean() - 0.5) < 5 * math.sqrt(0.25 / 2000)
    gaussian = GaussianLikelihood(0.5).sample(np.zeros((4000, 2)), rng)
    assert abs(gaussian.std() - 0.5) < 5 * 0.5 / math.sqrt(2 * 8000)


@pytest.mark.parametrize("chunk_pairs", [1, 7, likelihood._CHUNK_PAIRS])
def test_bernoulli_mixture_log_prob_is_the_logsumexp_of_its_terms(monkeypatch, chunk_pairs):
    monkeypatch.setattr(likelihood, "_CHUNK_PAIRS", chunk_pairs)
    rng = np.random.default_rng(9)
    x = (rng.random((11, 4)) < 0.5).astype(float)
    logits, log_w = rng.normal(scale=2, size=(5, 4)), np.log(rng.dirichlet(np.ones(5)))
    terms = log_w + (x[:, None, :] * logits - np.logaddexp(0, logits)).sum(-1)
    got = mixture_log_prob(_t(x), _t(logits), _t(log_w), BernoulliLikelihood().double()).numpy()
    np.testing.assert_allclose(got, logsumexp(terms, axis=1), rtol=0,
                               atol=32 * EPS * np.abs(terms).max())


def test_frozen_copies_are_float64_without_gradients_and_numbers_are_gaussian_sigmas():
    learned = GaussianLikelihood(0.37, learn_sigma=True)
    frozen = learned.frozen()
    assert frozen.log_sigma.dtype == torch.float64 and not frozen.log_sigma.requires_grad
    assert float(frozen.sigma) == pytest.approx(float(learned.sigma.detach()), rel=4 * EPS)
    assert float(as_likelihood(0.25).sigma) == pytest.approx(0.25, rel=4 * EPS)
    assert isinstance(as_likelihood(BernoulliLikelihood()), BernoulliLikelihood)
    with pytest.raises(ValueError, match="likelihood must be one of"):
        check_likelihood("poisson")
