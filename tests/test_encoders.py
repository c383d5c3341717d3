"""Amortized posteriors: the Gaussian and logit-normal families against their closed forms."""
import math

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.special import expit, logit
from scipy.stats import norm
from torch import nn

from mapa_vae.encoders import AmortizedPosterior
from mapa_vae.priors import StandardNormal, Uniform

EPS = np.finfo(np.float64).eps


def _encoder(prior):
    """The network is the identity, so an input row is ``[location, raw scale]``."""
    return AmortizedPosterior(nn.Identity(), prior)


def _inputs(d=2):
    loc = torch.tensor([[0.0, -1.0], [0.5, 1.2], [-0.3, 0.1]], dtype=torch.float64)[:, :d]
    raw = torch.tensor([[-2.0, 0.3], [0.0, 1.0], [-0.7, -1.5]], dtype=torch.float64)[:, :d]
    return loc, raw


def _tolerance(u, loc, scale, *terms):
    """Float64 rounding: ``u`` is known to a few units in its last place, which
    ``½ ((u − μ) / s)²`` amplifies by ``|u − μ| / s²``; every other term to a few units of the
    largest magnitude involved."""
    u, loc, scale = (np.asarray(a) for a in (u, loc, scale))
    amplified = (np.abs(u) * np.abs(u - loc) / scale**2).sum(-1).max()
    return 16 * EPS * amplified + 64 * EPS * max(np.abs(t).max() for t in terms)


def _noise(shape, seed):
    return torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_the_scale_is_softplus_plus_a_floor_and_stays_positive():
    loc, raw = _inputs()
    got_loc, scale = _encoder(StandardNormal(2))(torch.cat([loc, raw], 1))
    assert torch.equal(got_loc, loc)
    np.testing.assert_allclose(scale.numpy(), np.log1p(np.exp(raw.numpy())) + 1e-4, rtol=4 * EPS)
    _, tiny = _encoder(StandardNormal(1))(torch.tensor([[0.0, -60.0]], dtype=torch.float64))
    assert tiny.item() == 1e-4  # softplus(−60) ≈ 9e−27 vanishes beside the floor


def test_an_encoder_of_the_wrong_width_is_refused():
    with pytest.raises(ValueError, match=r"^encoder returned 3 outputs; expected 2 \* latent_dim "
                                         r"= 4$"):
        _encoder(StandardNormal(2))(torch.zeros(5, 3))


def test_gaussian_draws_are_location_plus_scale_times_noise_with_their_log_density():
    loc, raw = _inputs()
    encoder = _encoder(StandardNormal(2))
    loc, scale = encoder(torch.cat([loc, raw], 1))
    z, log_q = encoder.rsample(loc, scale, 4, generator=torch.Generator().manual_seed(7))
    assert z.shape == (4, 3, 2) and log_q.shape == (4, 3)
    assert torch.equal(z, loc + scale * _noise((4, 3, 2), 7))
    expected = norm.logpdf(z.numpy(), loc.numpy(), scale.numpy()).sum(-1)
    tol = _tolerance(z, loc, scale, expected, torch.log(scale).numpy())
    np.testing.assert_allclose(log_q.numpy(), expected, rtol=0, atol=tol)
    np.testing.assert_allclose(encoder.log_prob(z, loc, scale).numpy(), expected, rtol=0,
                               atol=tol)


def test_draws_are_reparameterised():
    """``z = μ + s ε``: ``∂Σz/∂μ = S`` and ``∂Σz/∂s = Σ_s ε_s`` for every coordinate."""
    loc, raw = _inputs()
    loc, scale = loc.clone().requires_grad_(True), torch.nn.functional.softplus(raw).detach()
    scale.requires_grad_(True)
    z, _ = _encoder(StandardNormal(2)).rsample(loc, scale, 5,
                                               generator=torch.Generator().manual_seed(3))
    z.sum().backward()
    assert torch.equal(loc.grad, torch.full_like(loc, 5.0))
    noise = _noise((5, 3, 2), 3)
    np.testing.assert_allclose(scale.grad.numpy(), noise.sum(0).numpy(), rtol=0,
                               atol=8 * EPS * noise.abs().sum(0).max().item())


def test_logit_normal_draws_and_density_include_the_jacobian():
    """``z = sigmoid(u)``, ``u ~ N(μ, s²)``:
    ``log q(z) = log N(u; μ, s²) − Σ_j log z_j (1 − z_j)``."""
    loc, raw = _inputs()
    encoder = _encoder(Uniform(2))
    loc, scale = encoder(torch.cat([loc, raw], 1))
    z, log_q = encoder.rsample(loc, scale, 4, generator=torch.Generator().manual_seed(11))
    u = (loc + scale * _noise((4, 3, 2), 11)).numpy()
    np.testing.assert_allclose(z.numpy(), expit(u), rtol=4 * EPS)
    assert ((z > 0) & (z < 1)).all()
    log_jacobian = (np.log(expit(u)) + np.log(expit(-u))).sum(-1)
    expected = norm.logpdf(u, loc.numpy(), scale.numpy()).sum(-1) - log_jacobian
    np.testing.assert_allclose(log_q.numpy(), expected, rtol=0,
                               atol=_tolerance(u, loc, scale, expected, log_jacobian))

    z_np = z.numpy()
    expected_at_z = (norm.logpdf(logit(z_np), loc.numpy(), scale.numpy())
                     - np.log(z_np) - np.log1p(-z_np)).sum(-1)
    np.testing.assert_allclose(encoder.log_prob(z, loc, scale).numpy(), expected_at_z, rtol=0,
                               atol=_tolerance(logit(z_np), loc, scale, expected_at_z,
                                               log_jacobian))


@pytest.mark.parametrize("loc, raw", [(0.3, 0.5), (-1.5, -1.0), (2.0, 1.5)])
def test_the_logit_normal_density_integrates_to_one(loc, raw):
    encoder = _encoder(Uniform(1))
    loc, scale = encoder(torch.tensor([[loc, raw]], dtype=torch.float64))

    def density(z):
        return math.exp(encoder.log_prob(torch.tensor([[z]], dtype=torch.float64), loc,
                                         scale).item())

    total, error = integrate.quad(density, 0.0, 1.0, epsabs=1e-12, epsrel=1e-12, limit=200)
    assert abs(total - 1.0) <= 1e-9 + 10 * error


def test_the_logit_normal_density_is_finite_at_the_ends():
    encoder = _encoder(Uniform(1))
    loc, scale = encoder(torch.tensor([[0.2, 0.0]], dtype=torch.float64))
    ends = encoder.log_prob(torch.tensor([[0.0], [1.0]], dtype=torch.float64), loc, scale)
    assert torch.isfinite(ends).all()


def test_gaussian_kl_closed_form_agrees_with_monte_carlo():
    """``KL(q ‖ N(0, I)) = ½ Σ_j (μ_j² + s_j² − 1 − 2 log s_j)`` against the mean of
    ``log q(z) − log p(z)`` over ``S`` draws, within five standard errors of that mean (the
    draws are fixed by the seed, so this cannot flake; a wrong constant or factor would be
    hundreds of standard errors off)."""
    loc, raw = _inputs()
    prior = StandardNormal(2)
    encoder = _encoder(prior)
    loc, scale = encoder(torch.cat([loc, raw], 1))
    closed = encoder.kl_to_prior(loc, scale)
    assert closed.shape == (3,)
    S = 20000
    z, log_q = encoder.rsample(loc, scale, S, generator=torch.Generator().manual_seed(5))
    terms = (log_q - prior.log_prob(z)).numpy()
    mean, se = terms.mean(0), terms.std(0, ddof=1) / math.sqrt(S)
    assert (se > 0).all()
    assert (np.abs(mean - closed.numpy()) < 5 * se).all()


def test_the_logit_normal_has_no_closed_form_kl():
    loc, raw = _inputs()
    encoder = _encoder(Uniform(2))
    assert encoder.kl_to_prior(*encoder(torch.cat([loc, raw], 1))) is None
