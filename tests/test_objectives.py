"""Objectives: the MAPA bound and its gap, baseline bounds, gradients, pass counts."""
import math

import numpy as np
import pytest
import torch
from scipy import sparse

from mapa_vae import EmpiricalizedModel, MAPAPosterior, datasets
from mapa_vae.atoms import Attachment, stratified_atoms
from mapa_vae.encoders import AmortizedPosterior
from mapa_vae.likelihood import GaussianLikelihood
from mapa_vae.model import GenerativeModel
from mapa_vae.networks import mlp
from mapa_vae.objectives import ELBO, IWAEBound, MAPABound, PriorProposalBound
from mapa_vae.priors import StandardNormal, Uniform


def _model(latent_dim=1, data_dim=2, sigma=0.2, learn_sigma=False, prior=None, seed=0):
    torch.manual_seed(seed)
    prior = prior or StandardNormal(latent_dim)
    return GenerativeModel(mlp(latent_dim, data_dim, (16,)), prior,
                           GaussianLikelihood(sigma, learn_sigma=learn_sigma))


def _mapa_objective(n=60, seed=0, weights=None, learn_sigma=False):
    truth = datasets.get("circle")
    X, _ = truth.sample(n, seed=seed)
    model = _model(learn_sigma=learn_sigma, seed=seed)
    W = MAPAPosterior(n_neighbors=None, sigma=0.1).fit(X).weights_ if weights is None else weights
    atoms = stratified_atoms(model.prior, n)
    perm = np.random.default_rng(seed).permutation(n)
    return MAPABound(model, W, X, Attachment(atoms, perm)), X


def _brute_force_bound(objective, X):
    """L_i = Σ_n W_in [log N(x_i; f(z_n), σ²) − log N − log W_in], straight from the definition."""
    W = objective.weights.toarray()
    with torch.no_grad():
        means = objective.model.decoder(objective.attachment.attached()).double().numpy()
    sigma = float(objective.model.likelihood.sigma)
    n, d = X.shape
    sq = ((X[:, None, :] - means[None, :, :]) ** 2).sum(-1)
    log_lik = -0.5 * sq / sigma**2 - d * math.log(sigma) - 0.5 * d * math.log(2 * math.pi)
    safe = np.where(W > 0, W, 1.0)
    return (W * (log_lik - math.log(n) - np.log(safe))).sum(axis=1)


def test_mapa_bound_matches_its_definition_and_never_exceeds_log_p_hat():
    objective, X = _mapa_objective()
    exact = objective.per_point()
    np.testing.assert_allclose(exact["bound"], _brute_force_bound(objective, X), rtol=1e-5)
    assert np.all(exact["bound"] <= exact["log_prob"] + 1e-9)
    np.testing.assert_allclose(exact["gap"], exact["log_prob"] - exact["bound"], atol=1e-12)
    empirical = EmpiricalizedModel(objective.model.decoder,
                                   objective.attachment.attached().numpy(), sigma=0.2)
    np.testing.assert_allclose(exact["log_prob"], empirical.log_prob(X), rtol=1e-5)


def test_minibatch_estimate_over_all_atoms_equals_the_mean_bound():
    """The m_n, x̄_n, c_n rewriting: B decoder passes give the exact mean of L_i."""
    objective, X = _mapa_objective(n=80)
    idx = torch.arange(80)
    with torch.no_grad():
        estimate = objective(None, idx)
    assert estimate.passes == 80
    assert float(estimate.value) == pytest.approx(objective.per_point()["bound"].mean(), rel=1e-5)


def test_gap_vanishes_when_the_weights_are_the_exact_index_posterior():
    objective, X = _mapa_objective(n=50)
    empirical = EmpiricalizedModel(objective.model.decoder,
                                   objective.attachment.attached().numpy(), sigma=0.2)
    exact_posterior = sparse.csr_matrix(np.exp(empirical.log_index_posterior(X)))
    tight, _ = _mapa_objective(n=50, weights=exact_posterior)
    result = tight.per_point()
    np.testing.assert_allclose(result["gap"], 0.0, atol=1e-4)
    assert objective.per_point()["gap"].min() > 1e-3  # MAPA's weights are not that posterior


def _finite_difference(f, tensor, j, eps=1e-6):
    flat = tensor.data.view(-1)
    old = float(flat[j])
    flat[j] = old + eps
    up = f()
    flat[j] = old - eps
    down = f()
    flat[j] = old
    return (up - down) / (2 * eps)


def test_mapa_bound_gradients_match_finite_differences():
    objective, X = _mapa_objective(n=30, learn_sigma=True)
    objective.double()
    idx = torch.arange(30)

    def value():
        with torch.no_grad():
            return float(objective(None, idx).value)

    params = [objective.model.decoder[0].weight, objective.model.likelihood.log_sigma,
              objective.attachment.positions]
    grads = torch.autograd.grad(objective(None, idx).value, params)
    for p, g in zip(params[:2], grads[:2]):
        for j in range(min(3, p.numel())):
            assert float(g.reshape(-1)[j]) == pytest.approx(_finite_difference(value, p, j),
                                                            rel=1e-4, abs=1e-7)
    # positions receive the gradient with respect to the atom they carry (straight through)
    atoms, perm = objective.attachment.atoms, objective.attachment.perm
    for n in (0, 7, 19):
        fd = _finite_difference(value, atoms, int(perm[n]))
        assert float(grads[2][n, 0]) == pytest.approx(fd, rel=1e-4, abs=1e-7)


def _encoder(model, data_dim=2, seed=1):
    torch.manual_seed(seed)
    return AmortizedPosterior(mlp(data_dim, 2 * model.latent_dim, (16,)), model.prior)


def test_iwae_bound_increases_with_samples_and_stays_below_log_p():
    model = _model(sigma=0.3)
    encoder = _encoder(model)
    X, _ = datasets.get("circle").sample(400, seed=3)
    x = torch.as_tensor(X, dtype=torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():
        runs = {s: [float(IWAEBound(model, encoder, s)(x, None).value) for _ in range(20)]
                for s in (1, 5, 50)}
    means = {s: np.mean(v) for s, v in runs.items()}
    assert means[1] < means[5] < means[50]
    assert means[50] <= model.log_prob(X).mean() + 3 * np.std(runs[50]) / np.sqrt(20)
    with torch.no_grad():
        elbo = np.mean([float(ELBO(model, encoder)(x, None).value) for _ in range(20)])
    assert elbo <= means[5]


def test_prior_proposal_bound_is_below_log_p_and_tightens_with_samples():
    model = _model(sigma=0.3)
    X, _ = datasets.get("circle").sample(300, seed=4)
    x = torch.as_tensor(X, dtype=torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():
        small = [float(PriorProposalBound(model, 5)(x, None).value) for _ in range(30)]
        large = [float(PriorProposalBound(model, 500)(x, None).value) for _ in range(30)]
    assert np.mean(small) < np.mean(large)
    assert np.mean(large) <= model.log_prob(X).mean() + 3 * np.std(large) / np.sqrt(30)


def test_logit_normal_encoder_for_a_uniform_prior():
    model = _model(prior=Uniform(1))
    encoder = _encoder(model)
    x = torch.randn(50, 2)
    loc, scale = encoder(x)
    z, log_q = encoder.rsample(loc, scale, 3)
    assert ((z > 0) & (z < 1)).all()
    np.testing.assert_allclose(log_q.detach().numpy(),
                               encoder.log_prob(z, loc, scale).detach().numpy(), atol=1e-4)
    assert encoder.kl_to_prior(loc, scale) is None
    value = ELBO(model, encoder)(x, None).value
    assert torch.isfinite(value)


def test_gaussian_encoder_density_and_kl_closed_form():
    model = _model()
    encoder = _encoder(model)
    x = torch.randn(7, 2)
    loc, scale = encoder(x)
    z, log_q = encoder.rsample(loc, scale, 2)
    np.testing.assert_allclose(log_q.detach().numpy(),
                               encoder.log_prob(z, loc, scale).detach().numpy(), atol=1e-5)
    q = torch.distributions.Normal(loc, scale)
    p = torch.distributions.Normal(torch.zeros_like(loc), torch.ones_like(scale))
    np.testing.assert_allclose(encoder.kl_to_prior(loc, scale).detach().numpy(),
                               torch.distributions.kl_divergence(q, p).sum(-1).detach().numpy(),
                               rtol=1e-5)


@pytest.mark.parametrize("make, expected", [
    (lambda m, e: ELBO(m, e), lambda b: 2 * b),
    (lambda m, e: IWAEBound(m, e, 5), lambda b: b * 6),
    (lambda m, e: IWAEBound(m, e, 50), lambda b: b * 51),
    (lambda m, e: PriorProposalBound(m, 17), lambda b: 17),
])
def test_pass_counts_per_step(make, expected):
    model = _model()
    objective = make(model, _encoder(model))
    x = torch.randn(13, 2)
    assert objective(x, torch.arange(13)).passes == expected(13)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_sample_counts_must_be_positive_integers(bad):
    model = _model()
    with pytest.raises(ValueError, match="S must be an integer >= 1"):
        IWAEBound(model, _encoder(model), bad)
    with pytest.raises(ValueError, match="S must be an integer >= 1"):
        PriorProposalBound(model, bad)
