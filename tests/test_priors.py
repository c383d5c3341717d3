"""Tests for the latent priors and their equal-mass quadrature grids (METHOD.md sections 1 and 8)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.integrate import trapezoid
from scipy.special import logsumexp

from mapa_vae.priors import PRIORS, Prior, StandardNormal, Uniform, make_prior

PRIOR_CLASSES = [StandardNormal, Uniform]


def _weights_logsumexp(log_w: torch.Tensor) -> float:
    return float(logsumexp(log_w.numpy()))


# --- quadrature -------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", PRIOR_CLASSES)
@pytest.mark.parametrize("latent_dim, M", [(1, 1), (1, 7), (1, 16384), (2, 1), (2, 5), (2, 64)])
def test_quadrature_shapes_and_weights_sum_to_one(cls, latent_dim, M):
    nodes, log_w = cls(latent_dim).quadrature(M)
    assert nodes.shape == (M**latent_dim, latent_dim)
    assert log_w.shape == (M**latent_dim,)
    assert nodes.dtype == torch.float64 and log_w.dtype == torch.float64
    assert abs(_weights_logsumexp(log_w)) < 1e-12
    # equal weights M**-d
    np.testing.assert_allclose(log_w.numpy(), -latent_dim * math.log(M), rtol=0, atol=1e-12)
    assert torch.isfinite(nodes).all()


@pytest.mark.parametrize("cls", PRIOR_CLASSES)
@pytest.mark.parametrize("M", [1, 2, 10, 4096])
def test_nodes_are_equal_mass(cls, M):
    """cdf(node_m) == (m - 1/2) / M: the midpoint rule in CDF coordinates."""
    nodes, _ = cls(1).quadrature(M)
    u = cls(1).cdf(nodes[:, 0]).numpy()
    expected = (np.arange(M) + 0.5) / M
    np.testing.assert_allclose(u, expected, rtol=0, atol=1e-12)


def test_normal_nodes_match_scipy_quantiles():
    M = 1000
    nodes, _ = StandardNormal(1).quadrature(M)
    expected = stats.norm.ppf((np.arange(M) + 0.5) / M)
    np.testing.assert_allclose(nodes[:, 0].numpy(), expected, rtol=0, atol=1e-10)


def test_normal_quadrature_moments():
    nodes, log_w = StandardNormal(1).quadrature(16384)
    z, w = nodes[:, 0].numpy(), np.exp(log_w.numpy())
    assert abs((w * z).sum()) < 1e-12                       # symmetric grid: E[z] = 0 exactly
    assert abs((w * z**3).sum()) < 1e-10                    # odd moments vanish
    # The equal-mass grid truncates the tails (outermost node at Phi^-1(1 - 1/2M) ~ 4.0), so
    # E[z^2] is slightly low: measured 1 - 8.1e-5 at M = 16384.
    second = (w * z**2).sum()
    assert 1 - 1e-3 < second <= 1.0
    # ... and the deficit shrinks as the grid is refined.
    errors = []
    for M in (64, 256, 1024, 4096):
        n, lw = StandardNormal(1).quadrature(M)
        errors.append(1 - float((np.exp(lw.numpy()) * n[:, 0].numpy() ** 2).sum()))
    assert all(e > 0 for e in errors)
    assert all(a > b for a, b in zip(errors, errors[1:]))


@pytest.mark.parametrize("M", [1, 3, 100, 16384])
def test_uniform_quadrature_moments_closed_form(M):
    """Midpoint rule on [0, 1]: E[z] = 1/2 exactly and E[z^2] = 1/3 - 1/(12 M^2) exactly."""
    nodes, log_w = Uniform(1).quadrature(M)
    z, w = nodes[:, 0].numpy(), np.exp(log_w.numpy())
    assert abs((w * z).sum() - 0.5) < 1e-12
    assert abs((w * z**2).sum() - (1 / 3 - 1 / (12 * M**2))) < 1e-12
    assert abs((w * z**2).sum() - 1 / 3) < 0.1
    assert ((z > 0) & (z < 1)).all()


@pytest.mark.parametrize("cls, mean, second", [(StandardNormal, 0.0, 1.0), (Uniform, 0.5, 1 / 3)])
def test_2d_grid_is_tensor_product(cls, mean, second):
    M = 64
    prior = cls(2)
    nodes, log_w = prior.quadrature(M)
    nodes_1d, _ = cls(1).quadrature(M)
    assert nodes.shape == (M * M, 2)
    grid = nodes.reshape(M, M, 2).numpy()
    # axis 0 varies along the first index, axis 1 along the second: a full tensor product
    np.testing.assert_array_equal(grid[:, 0, 0], nodes_1d[:, 0].numpy())
    np.testing.assert_array_equal(grid[0, :, 1], nodes_1d[:, 0].numpy())
    np.testing.assert_array_equal(grid[:, :, 0], np.repeat(grid[:, :1, 0], M, axis=1))
    np.testing.assert_array_equal(grid[:, :, 1], np.repeat(grid[:1, :, 1], M, axis=0))
    assert len({tuple(row) for row in nodes.numpy()}) == M * M
    w = np.exp(log_w.numpy())
    z = nodes.numpy()
    for k in range(2):
        assert abs((w * z[:, k]).sum() - mean) < 1e-12
        assert abs((w * z[:, k] ** 2).sum() - second) < 0.05
    # independence: E[(z1 - m)(z2 - m)] = 0
    assert abs((w * (z[:, 0] - mean) * (z[:, 1] - mean)).sum()) < 1e-12


@pytest.mark.parametrize("cls", PRIOR_CLASSES)
@pytest.mark.parametrize("bad", [0, -3])
def test_quadrature_rejects_nonpositive_node_count(cls, bad):
    with pytest.raises(ValueError, match="nodes_per_dim must be a positive integer"):
        cls(1).quadrature(bad)


def test_quadrature_rejects_non_integer_node_count():
    with pytest.raises(ValueError, match="nodes_per_dim"):
        StandardNormal(1).quadrature(2.5)


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(sorted(PRIORS)), latent_dim=st.integers(1, 2),
       M=st.integers(1, 60))
def test_property_quadrature_normalised_and_sorted(name, latent_dim, M):
    prior = make_prior(name, latent_dim)
    nodes, log_w = prior.quadrature(M)
    assert nodes.shape == (M**latent_dim, latent_dim)
    assert abs(_weights_logsumexp(log_w)) < 1e-12
    grid = nodes.reshape((M,) * latent_dim + (latent_dim,)).numpy()
    for k in range(latent_dim):
        axis_values = np.moveaxis(grid[..., k], k, 0).reshape(M, -1)
        # strictly increasing along its own axis, constant along the others
        assert (np.diff(axis_values[:, 0]) > 0).all()
        assert (axis_values == axis_values[:, :1]).all()
    # equal mass: the CDF of the 1-D nodes sits on the midpoints (m - 1/2)/M
    u = prior.cdf(torch.from_numpy(np.sort(np.unique(grid[..., 0])))).numpy()
    np.testing.assert_allclose(u, (np.arange(M) + 0.5) / M, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(z=st.floats(-5.0, 5.0, allow_nan=False))
def test_property_normal_icdf_inverts_cdf(z):
    prior = StandardNormal(1)
    t = torch.tensor([z], dtype=torch.float64)
    assert abs(float(prior.icdf(prior.cdf(t))[0]) - z) < 1e-8
    assert abs(float(prior.cdf(t)[0]) - stats.norm.cdf(z)) < 1e-14


@settings(max_examples=60, deadline=None)
@given(u=st.floats(0.0, 1.0, allow_nan=False))
def test_property_uniform_cdf_icdf_round_trip(u):
    prior = Uniform(1)
    t = torch.tensor([u], dtype=torch.float64)
    assert float(prior.cdf(prior.icdf(t))[0]) == u
    assert float(prior.icdf(prior.cdf(t))[0]) == u


def test_uniform_cdf_clamps_outside_support():
    z = torch.tensor([-2.0, -1e-9, 0.25, 1.0 + 1e-9, 7.0], dtype=torch.float64)
    np.testing.assert_array_equal(Uniform(1).cdf(z).numpy(), [0.0, 0.0, 0.25, 1.0, 1.0])


def test_uniform_icdf_does_not_alias_its_input():
    u = torch.tensor([0.3, 0.6], dtype=torch.float64)
    out = Uniform(1).icdf(u)
    out[0] = 99.0
    assert float(u[0]) == 0.3


# --- log_prob -----------------------------------------------------------------------------------


@pytest.mark.parametrize("latent_dim", [1, 2, 3])
def test_normal_log_prob_closed_form(latent_dim):
    rng = np.random.default_rng(0)
    z = rng.normal(scale=2.0, size=(50, latent_dim))
    lp = StandardNormal(latent_dim).log_prob(torch.from_numpy(z)).numpy()
    assert lp.shape == (50,)
    expected = -0.5 * (z**2).sum(1) - 0.5 * latent_dim * math.log(2 * math.pi)
    np.testing.assert_allclose(lp, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(lp, stats.multivariate_normal(np.zeros(latent_dim)).logpdf(z)
                               .reshape(-1), rtol=0, atol=1e-10)


def test_uniform_log_prob_closed_form():
    z = torch.tensor([[0.0, 0.5], [1.0, 1.0], [0.3, 0.999], [-0.01, 0.5], [0.5, 1.01],
                      [2.0, -3.0]], dtype=torch.float64)
    lp = Uniform(2).log_prob(z).numpy()
    assert lp.shape == (6,)
    np.testing.assert_array_equal(lp[:3], 0.0)           # inside the closed unit square
    assert np.isneginf(lp[3:]).all()                     # outside


@pytest.mark.parametrize("cls", PRIOR_CLASSES)
def test_log_prob_integrates_to_one_in_1d(cls):
    z = torch.linspace(-9.0, 9.0, 180001, dtype=torch.float64)
    p = cls(1).log_prob(z[:, None]).exp().numpy()
    assert abs(trapezoid(p, z.numpy()) - 1.0) < 1e-4


# --- sampling -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", PRIOR_CLASSES)
@pytest.mark.parametrize("latent_dim", [1, 2])
def test_sample_shape_dtype_and_reproducibility(cls, latent_dim):
    prior = cls(latent_dim)
    a = prior.sample(100, random_state=3)
    b = prior.sample(100, random_state=3)
    c = prior.sample(100, random_state=4)
    assert isinstance(a, np.ndarray)
    assert a.shape == (100, latent_dim) and a.dtype == np.float64
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert np.isfinite(a).all()


def test_sample_accepts_generator_and_advances_it():
    rng = np.random.default_rng(1)
    first = StandardNormal(1).sample(10, random_state=rng)
    second = StandardNormal(1).sample(10, random_state=rng)
    assert not np.allclose(first, second)


def test_sample_distributions():
    n = 20000
    z = StandardNormal(2).sample(n, random_state=0)
    se = 1 / math.sqrt(n)
    assert np.all(np.abs(z.mean(0)) < 5 * se)
    assert np.all(np.abs(z.var(0) - 1) < 5 * math.sqrt(2) * se)
    assert abs(np.corrcoef(z.T)[0, 1]) < 5 * se
    assert stats.kstest(z[:, 0], "norm").pvalue > 1e-4
    u = Uniform(2).sample(n, random_state=0)
    assert ((u >= 0) & (u < 1)).all()
    assert np.all(np.abs(u.mean(0) - 0.5) < 5 * math.sqrt(1 / 12) * se)
    assert stats.kstest(u[:, 1], "uniform").pvalue > 1e-4


# --- construction, make_prior, equality ------------------------------------------------------


@pytest.mark.parametrize("cls", PRIOR_CLASSES)
@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None])
def test_bad_latent_dim_raises(cls, bad):
    with pytest.raises(ValueError, match="latent_dim must be a positive integer"):
        cls(bad)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_make_prior_bad_latent_dim_raises(bad):
    with pytest.raises(ValueError, match="latent_dim must be a positive integer"):
        make_prior("normal", bad)


def test_numpy_integer_latent_dim_accepted():
    prior = Uniform(np.int64(2))
    assert prior.latent_dim == 2 and type(prior.latent_dim) is int


@pytest.mark.parametrize("name", ["cauchy", "Normal", "", None])
def test_make_prior_unknown_name(name):
    with pytest.raises(ValueError, match=r"unknown prior .*choose one of \['normal', 'uniform'\]"):
        make_prior(name, 1)


@pytest.mark.parametrize("name, cls", [("normal", StandardNormal), ("uniform", Uniform)])
@pytest.mark.parametrize("latent_dim", [1, 2])
def test_make_prior_by_name(name, cls, latent_dim):
    prior = make_prior(name, latent_dim)
    assert type(prior) is cls and prior.latent_dim == latent_dim
    assert prior.name == name


def test_make_prior_passes_instances_through_and_checks_dimension():
    prior = StandardNormal(2)
    assert make_prior(prior, 2) is prior
    with pytest.raises(ValueError, match="prior has latent_dim=2 but latent_dim=1"):
        make_prior(prior, 1)


def test_equality_hash_and_repr():
    assert StandardNormal(1) == StandardNormal(1)
    assert hash(StandardNormal(2)) == hash(StandardNormal(2))
    assert StandardNormal(1) != StandardNormal(2)
    assert StandardNormal(1) != Uniform(1)
    assert len({StandardNormal(1), StandardNormal(1), Uniform(1)}) == 2
    assert repr(Uniform(2)) == "Uniform(latent_dim=2)"


def test_base_prior_is_abstract():
    prior = Prior(1)
    with pytest.raises(NotImplementedError):
        prior.quadrature(4)
    with pytest.raises(NotImplementedError):
        prior.log_prob(torch.zeros(2, 1, dtype=torch.float64))
