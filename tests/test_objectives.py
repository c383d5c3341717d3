"""Objectives: the MAPA bound and its gap, baseline bounds, gradients, pass counts."""
import math

import numpy as np
import pytest
import torch
from scipy import sparse, stats

from mapa_vae import EmpiricalizedModel, MAPAPosterior, datasets
from mapa_vae.atoms import Attachment, stratified_atoms
from mapa_vae.encoders import AmortizedPosterior
from mapa_vae.likelihood import (BernoulliLikelihood, GaussianLikelihood,
                                 mixture_log_responsibilities)
from mapa_vae.model import GenerativeModel
from mapa_vae.networks import mlp
from mapa_vae.objectives import (ELBO, GaussianCodesBound, IWAEBound, MAPABound,
                                 PriorProposalBound)
from mapa_vae.priors import StandardNormal, Uniform


def _model(latent_dim=1, data_dim=2, sigma=0.2, learn_sigma=False, prior=None, seed=0,
           bernoulli=False):
    torch.manual_seed(seed)
    prior = prior or StandardNormal(latent_dim)
    likelihood = (BernoulliLikelihood() if bernoulli
                  else GaussianLikelihood(sigma, learn_sigma=learn_sigma))
    return GenerativeModel(mlp(latent_dim, data_dim, (16,)), prior, likelihood)


def _binary(X, seed=0):
    """Binary rows: each coordinate of ``X`` above its median, flipped with probability 0.1."""
    flips = np.random.default_rng(seed).random(X.shape) < 0.1
    return ((X > np.median(X, axis=0)) ^ flips).astype(float)


def _mapa_objective(n=60, seed=0, weights=None, learn_sigma=False, bernoulli=False):
    truth = datasets.get("circle")
    X, _ = truth.sample(n, seed=seed)
    if bernoulli:
        X = _binary(X, seed)
    model = _model(learn_sigma=learn_sigma, seed=seed, bernoulli=bernoulli)
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


def test_mapa_per_point_on_a_subset_equals_the_full_rows():
    objective, X = _mapa_objective()
    full = objective.per_point()
    subset = np.array([7, 0, 3, len(X) - 1])
    part = objective.per_point(subset)
    for key in ("bound", "log_prob", "gap"):  # float64 sums over the same terms
        np.testing.assert_allclose(part[key], full[key][subset], rtol=1e-12, atol=1e-12)


def test_mapa_bound_matches_its_definition_and_never_exceeds_log_p_hat():
    objective, X = _mapa_objective()
    exact = objective.per_point()
    np.testing.assert_allclose(exact["bound"], _brute_force_bound(objective, X), rtol=1e-5)
    assert np.all(exact["bound"] <= exact["log_prob"] + 1e-9)
    np.testing.assert_allclose(exact["gap"], exact["log_prob"] - exact["bound"], atol=1e-12)
    empirical = EmpiricalizedModel(objective.model.decoder,
                                   objective.attachment.attached().numpy(), sigma=0.2)
    np.testing.assert_allclose(exact["log_prob"], empirical.log_prob(X), rtol=1e-5)


@pytest.mark.parametrize("likelihood", [GaussianLikelihood(0.3), BernoulliLikelihood()],
                         ids=["gaussian", "bernoulli"])
@pytest.mark.parametrize("lead", [(), (3,)])
@pytest.mark.parametrize("pairs", [5, 23])
def test_pair_log_likelihoods_equal_the_direct_computation(monkeypatch, likelihood, lead, pairs):
    """Per-point bounds take the (row, column) pairs of a sparse pattern: a sparse one (5 of
    42 pairs) gathers rows in blocks, bitwise equal to one gather; a dense one (23 of 42) takes
    every pair at once (``torch.cdist``, or a matrix product) and picks its own, equal to the
    direct sum over dimensions up to float64 rounding of terms of size ~10 (relative 1e-12)."""
    from mapa_vae import objectives

    likelihood = likelihood.double()
    gen = torch.Generator().manual_seed(0)
    X = torch.rand(7, 5, generator=gen, dtype=torch.float64)
    means = torch.randn(lead + (6, 5), generator=gen, dtype=torch.float64)
    rows = torch.randint(0, 7, (pairs,), generator=gen)
    cols = torch.randint(0, 6, (pairs,), generator=gen)
    whole = likelihood.log_prob(X[rows], means[..., cols, :])
    monkeypatch.setattr(objectives, "_PAIR_BLOCK", 2 * 5 * math.prod(lead))  # 2 pairs a block
    result = objectives._pair_log_lik(likelihood, X, rows, means, cols)
    assert result.shape == lead + (pairs,)
    if pairs == 5:
        assert torch.equal(result, whole)
    else:
        torch.testing.assert_close(result, whole, rtol=1e-12, atol=0)


@pytest.mark.parametrize("bernoulli", [False, True], ids=["gaussian", "bernoulli"])
def test_minibatch_estimate_over_all_atoms_equals_the_mean_bound(bernoulli):
    """The m_n, x̄_n (, c_n) rewriting: B decoder passes give the exact mean of L_i, whose
    per-point form sums over every (i, n) pair; float32 terms of size ~10, relative 1e-5."""
    objective, X = _mapa_objective(n=80, bernoulli=bernoulli)
    idx = torch.arange(80)
    with torch.no_grad():
        estimate = objective(None, idx)
    assert estimate.passes == 80
    assert float(estimate.value) == pytest.approx(objective.per_point()["bound"].mean(), rel=1e-5)


def test_bernoulli_mapa_bound_never_exceeds_log_p_hat_and_its_gap_vanishes_at_the_posterior():
    """Under the Bernoulli likelihood too: L_i ≤ log p̂(x_i), with equality (gap 0) when W is
    the empiricalized model's exact index posterior."""
    objective, X = _mapa_objective(n=50, bernoulli=True)
    exact = objective.per_point()
    assert np.all(exact["bound"] <= exact["log_prob"] + 1e-9)
    assert exact["gap"].min() > 1e-3
    with torch.no_grad():
        means = objective.model.decoder(objective.attachment.attached()).double()
    log_w = torch.full((50,), -math.log(50), dtype=torch.float64)
    posterior = mixture_log_responsibilities(torch.as_tensor(X), means, log_w,
                                             BernoulliLikelihood().double()).exp().numpy()
    tight, _ = _mapa_objective(n=50, bernoulli=True, weights=sparse.csr_matrix(posterior))
    np.testing.assert_allclose(tight.per_point()["gap"], 0.0, atol=1e-4)


def test_bernoulli_reattachment_cost_ranks_atoms_as_the_bound_does():
    """For one index, the atom of least cost m_n C(x̄_n, f(a)) is the atom of highest bound
    term Σ_i W_in log p(x_i | f(a)) (computed over every point i)."""
    objective, X = _mapa_objective(n=40, bernoulli=True)
    cost = objective.reattachment_cost()(np.arange(40), np.arange(40))
    with torch.no_grad():
        outputs = objective.model.decoder(objective.attachment.atoms).double()
    terms = (torch.as_tensor(objective.weights.toarray()).T
             @ BernoulliLikelihood().pairwise_log_prob(torch.as_tensor(X), outputs)).numpy()
    np.testing.assert_array_equal(cost.argmin(1), terms.argmax(1))


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


# --- MAPA with learned Gaussian codes ------------------------------------------------------
def _codes_objective(n=40, prior=None, weights="random", seed=0, dtype=torch.float64,
                     loc=None, scale=None, decoder=None, sigma=0.3, bernoulli=False):
    """A float64 GaussianCodesBound on 2-D data (binary with ``bernoulli``) with a random
    row-stochastic W (or the identity) and random codes."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    if bernoulli:
        X = _binary(X, seed)
    if weights == "random":
        W = rng.random((n, n)) ** 4  # uneven rows, every entry positive
        W = sparse.csr_matrix(W / W.sum(axis=1, keepdims=True))
    else:
        W = sparse.identity(n, format="csr")
    model = _model(prior=prior, sigma=sigma, seed=seed, bernoulli=bernoulli)
    if decoder is not None:
        model.decoder = decoder
    model = model.to(dtype)
    loc = rng.normal(size=(n, 1)) if loc is None else loc
    scale = rng.uniform(0.05, 0.5, size=(n, 1)) if scale is None else scale
    return GaussianCodesBound(model, W, X, loc, scale, dtype=dtype), X


def _per_draw_bounds(objective, draws, seed=0):
    """L_i for ``draws`` independent single draws per code, shape (draws, N)."""
    n, d = objective.loc.shape
    eps = torch.randn((draws, n, d), dtype=torch.float64,
                      generator=torch.Generator().manual_seed(seed))
    return np.stack([objective.per_point_given(eps[s:s + 1]) for s in range(draws)])


@pytest.mark.parametrize("bernoulli", [False, True], ids=["gaussian", "bernoulli"])
@pytest.mark.parametrize("prior", [StandardNormal(1), Uniform(1)], ids=["normal", "uniform"])
def test_gaussian_codes_bound_stays_below_log_p_for_any_row_stochastic_weights(prior, bernoulli):
    """Per point, the bound's expectation is ≤ log p_θ(x_i) (quadrature, 16384 nodes). Its
    Monte-Carlo mean over 400 draws has standard error se_i; with a fixed seed the check
    ``mean − 4 se ≤ log p`` would fail by chance with probability about 3e-5 per point."""
    objective, X = _codes_objective(prior=prior, bernoulli=bernoulli)
    draws = _per_draw_bounds(objective, 400)
    mean, se = draws.mean(0), draws.std(0, ddof=1) / math.sqrt(draws.shape[0])
    log_p = objective.model.log_prob(X, nodes_per_dim=16384)
    assert np.all(mean - 4 * se <= log_p)


def test_gaussian_codes_bound_is_tight_at_the_exact_posterior_of_a_linear_model():
    """f(z) = a z + b, z ~ N(0, 1): p(z | x) = N(v a·(x − b)/σ², v), v = 1/(1 + ‖a‖²/σ²), and
    with W the identity and each code that posterior the bound equals log p(x) =
    log N(x; b, aaᵀ + σ²I) (closed form), up to the Monte-Carlo error of the likelihood term."""
    sigma, a, b = 0.3, np.array([0.8, -0.5]), np.array([0.1, 0.2])
    decoder = torch.nn.Linear(1, 2)
    with torch.no_grad():
        decoder.weight.copy_(torch.tensor(a[:, None]))
        decoder.bias.copy_(torch.tensor(b))
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 2))
    v = 1.0 / (1.0 + a @ a / sigma**2)
    loc = (v * (X - b) @ a / sigma**2)[:, None]
    objective, _ = _codes_objective(n=30, weights="identity", decoder=decoder, sigma=sigma,
                                    loc=loc, scale=np.full((30, 1), math.sqrt(v)))
    objective.X = X
    objective.xbar.copy_(torch.tensor(X))
    cov = np.outer(a, a) + sigma**2 * np.eye(2)
    diff = X - b
    log_p = (-0.5 * np.einsum("ij,jk,ik->i", diff, np.linalg.inv(cov), diff)
             - 0.5 * np.log(np.linalg.det(cov)) - math.log(2 * math.pi))
    draws = _per_draw_bounds(objective, 400)
    mean, se = draws.mean(0), draws.std(0, ddof=1) / math.sqrt(draws.shape[0])
    assert np.all(np.abs(mean - log_p) <= 4 * se)
    loose = objective.log_scale.detach().clone()
    with torch.no_grad():
        objective.log_scale.add_(1.0)  # codes e times too wide: a strictly lower bound
    wide = _per_draw_bounds(objective, 400)
    assert np.all(wide.mean(0) + 4 * wide.std(0, ddof=1) / 20 < log_p)
    objective.log_scale.data.copy_(loose)


@pytest.mark.parametrize("bernoulli", [False, True], ids=["gaussian", "bernoulli"])
@pytest.mark.parametrize("prior", [StandardNormal(1), Uniform(1)], ids=["normal", "uniform"])
def test_gaussian_codes_bound_summed_over_points_is_the_sum_over_indices(prior, bernoulli):
    """Σ_i L_i = Σ_n T_n with the same draws, T_n from m_n, x̄_n (, c_n) (float64). Both sides
    add O(N²) terms of size at most ~10³ nats, so they agree to far better than 1e-9 relative."""
    objective, _ = _codes_objective(prior=prior, bernoulli=bernoulli)
    n = objective.loc.shape[0]
    eps = torch.randn((1, n, 1), dtype=torch.float64,
                      generator=torch.Generator().manual_seed(1))
    by_points = objective.per_point_given(eps).sum()
    with torch.no_grad():
        by_indices = float(objective.terms(torch.arange(n), eps[0]).sum())
    assert by_points == pytest.approx(by_indices, rel=1e-9)
    with torch.no_grad():
        estimate = objective(None, torch.arange(10))
    assert estimate.passes == 10 and torch.isfinite(estimate.value)


def test_gaussian_codes_learn_at_their_own_rate_and_get_gradients_only_when_drawn():
    objective, _ = _codes_objective(dtype=torch.float32)
    objective.code_lr_scale = 10.0
    groups = objective.parameter_groups()
    assert groups[1]["lr_scale"] == 10.0
    assert any(p is objective.loc for p in groups[1]["params"])
    assert not any(p is objective.loc for p in groups[0]["params"])
    objective(None, torch.tensor([3, 7])).value.backward()
    grad = objective.loc.grad.abs().sum(1)
    assert set(torch.nonzero(grad).ravel().tolist()) == {3, 7}


def test_gaussian_codes_refuse_bad_shapes_and_scales():
    with pytest.raises(ValueError, match="shape"):
        _codes_objective(loc=np.zeros((3, 1)))
    with pytest.raises(ValueError, match="positive"):
        _codes_objective(scale=np.zeros((40, 1)))


def _iw_draws(objective, k, draws, seed=0):
    """``Σ_n`` of the importance-weighted terms with ``k`` draws per code, ``draws`` times."""
    n, d = objective.loc.shape
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return np.array([float(objective.importance_terms(
            torch.arange(n), torch.randn((k, n, d), dtype=torch.float64, generator=gen)).sum())
            for _ in range(draws)])


def test_importance_weighted_codes_bound_is_exact_at_the_exact_posterior_of_a_linear_model():
    """W = I and each code the exact posterior: every importance weight is p(x_n), so the bound
    with any K and any draws is Σ_n log p(x_n) (closed form) up to float64 rounding."""
    a, b = np.array([0.8, -0.5]), np.array([0.1, 0.2])
    decoder = torch.nn.Linear(1, 2, dtype=torch.float64)  # a, b exactly as written
    with torch.no_grad():
        decoder.weight.copy_(torch.tensor(a[:, None]))
        decoder.bias.copy_(torch.tensor(b))
    X = np.random.default_rng(0).normal(size=(30, 2))
    objective, _ = _codes_objective(n=30, weights="identity", decoder=decoder, sigma=0.3)
    sigma = float(objective.model.likelihood.sigma)  # σ as the model holds it
    v = 1.0 / (1.0 + a @ a / sigma**2)
    with torch.no_grad():
        objective.loc.copy_(torch.tensor(v * (X - b) @ a / sigma**2)[:, None])
        objective.log_scale.fill_(0.5 * math.log(v))
        objective.xbar.copy_(torch.tensor(X))
    log_p = stats.multivariate_normal(b, np.outer(a, a) + sigma**2 * np.eye(2)).logpdf(X)
    eps = torch.randn((3, 30, 1), dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        terms = objective.importance_terms(torch.arange(30), eps)
    np.testing.assert_allclose(terms.numpy(), log_p, rtol=0, atol=1e-12)


@pytest.mark.parametrize("prior", [StandardNormal(1), Uniform(1)], ids=["normal", "uniform"])
def test_importance_weighted_codes_bound_rises_with_k_and_stays_below_log_p(prior):
    """For a random row-stochastic W, the bound's expectation with K = 8 draws per code lies
    above that with one (the closed-form-KL bound of the same codes) and below Σ_i log p_θ(x_i)
    (quadrature). Means over 50 repetitions, compared beyond 4 standard errors (measured over
    200: the two means 30 and 12.6 nats apart, each standard error below 0.6 there)."""
    objective, X = _codes_objective(prior=prior)
    one = _per_draw_bounds(objective, 50).sum(1)
    eight = _iw_draws(objective, 8, 50)
    log_p = objective.model.log_prob(X, nodes_per_dim=16384).sum()

    def se(a):
        return a.std(ddof=1) / math.sqrt(a.size)

    assert eight.mean() - 4 * se(eight) > one.mean() + 4 * se(one)
    assert eight.mean() - 4 * se(eight) <= log_p
    single = _iw_draws(objective, 1, 50, seed=1)  # the same bound, sampled KL
    assert abs(single.mean() - one.mean()) <= 4 * math.hypot(se(single), se(one))


def test_importance_weighted_codes_cost_k_passes_per_index():
    objective, _ = _codes_objective(dtype=torch.float32)
    objective.n_samples = 3
    estimate = objective(None, torch.tensor([3, 7]))
    assert estimate.passes == 6 and torch.isfinite(estimate.value)
    estimate.value.backward()
    assert set(torch.nonzero(objective.loc.grad.abs().sum(1)).ravel().tolist()) == {3, 7}
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        _codes_objective_with(n_samples=0)


def _codes_objective_with(**options):
    objective, X = _codes_objective()
    return GaussianCodesBound(objective.model, objective.weights, X, np.zeros((40, 1)),
                              np.ones((40, 1)), **options)


def _tied_objective(strength, seed=0):
    """The codes objective with neighbours ``n+1, n+2 (mod N)`` and tie strength ``strength``."""
    objective, X = _codes_objective(seed=seed)
    n = objective.loc.shape[0]
    neighbours = (np.arange(n)[:, None] + np.array([1, 2])) % n
    tied = GaussianCodesBound(objective.model, objective.weights, X,
                              objective.loc.detach().numpy(),
                              objective.log_scale.exp().detach().numpy(),
                              neighbours=neighbours, dtype=torch.float64)
    tied.tie_strength = strength
    return tied, neighbours


def test_tied_codes_subtract_the_penalty_in_closed_form_from_the_same_bound():
    objective, neighbours = _tied_objective(2.5)
    idx = torch.tensor([0, 5, 39])
    torch.manual_seed(3)
    tied = objective(None, idx)
    objective.tie_strength = 0.0
    torch.manual_seed(3)
    free = objective(None, idx)
    mu = objective.loc.detach().numpy()
    rows = idx.numpy()
    penalty = 0.5 * ((mu[rows] - mu[neighbours[rows]].mean(1)) ** 2).sum(1).mean()
    assert tied.passes == free.passes == 3
    # float64, the same draws: the two bounds are the same bits, so the difference carries one
    # rounding at |bound| ≈ 16 (≤ 4e-15) against a penalty ≈ 2.3, and numpy's penalty a few ulps
    assert float((free.value - tied.value).detach()) == pytest.approx(2.5 * penalty, rel=1e-12)


def test_tied_codes_pull_only_the_drawn_means_toward_their_neighbours():
    objective, neighbours = _tied_objective(1.0)
    idx = torch.tensor([4, 9])
    (-objective.tie_penalty(idx)).backward()
    grad = objective.loc.grad.numpy()
    mu = objective.loc.detach().numpy()
    expected = np.zeros_like(mu)  # d/dμ_n of −½ mean ‖μ_n − sg(μ̄_n)‖²: (μ̄_n − μ_n) / B
    expected[[4, 9]] = (mu[neighbours[[4, 9]]].mean(1) - mu[[4, 9]]) / 2
    np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-14)  # float64
    assert objective.log_scale.grad is None


def test_tied_codes_need_neighbours_of_the_right_shape():
    free, _ = _codes_objective()
    with pytest.raises(ValueError, match="needs their neighbours"):
        free.tie_penalty(torch.tensor([0]))
    with pytest.raises(ValueError, match="neighbours must be an"):
        _codes_objective_with(neighbours=np.zeros((39, 2), dtype=int))
    with pytest.raises(ValueError, match="neighbours must be an"):
        _codes_objective_with(neighbours=np.full((40, 2), 40))


def _smoothed_codes_objectives():
    """The codes objective under ``W`` with smoother code targets ``V`` switched on, the same
    without ``V``, and the objective under ``V`` itself: one model, the same starting codes."""
    objective, X = _codes_objective()
    rng = np.random.default_rng(1)
    V = rng.random((40, 40)) ** 2
    V = sparse.csr_matrix(V / V.sum(axis=1, keepdims=True))
    loc, scale = objective.loc.detach().numpy(), objective.log_scale.exp().detach().numpy()

    def make(weights, **options):
        return GaussianCodesBound(objective.model, weights, X, loc, scale, dtype=torch.float64,
                                  **options)

    smoothed = make(objective.weights, code_weights=V)
    smoothed.smooth_codes = True
    return smoothed, make(objective.weights), make(V)


def _gradients(objective, idx, seed=3):
    objective.model.zero_grad()
    torch.manual_seed(seed)
    estimate = objective(None, idx)
    estimate.value.backward()
    return estimate, {name: p.grad.clone() for name, p in objective.model.named_parameters()}


def test_smoothed_codes_keep_the_bound_and_follow_the_smoother_targets():
    smoothed, plain, under_v = _smoothed_codes_objectives()
    idx = torch.tensor([0, 5, 17, 39])
    estimate, model_grads = _gradients(smoothed, idx)
    reference, reference_grads = _gradients(plain, idx)
    _, _ = _gradients(under_v, idx)
    # the same draws and parameters: the value is the bound's, bit for bit
    assert torch.equal(estimate.value, reference.value)
    assert estimate.passes == 8 and reference.passes == 4
    # the decoder and σ follow the bound under W (the same backward through the decoder; a
    # margin over bit-equality in float64), the codes the bound under V with the decoder fixed
    for name, grad in model_grads.items():
        torch.testing.assert_close(grad, reference_grads[name], rtol=1e-12, atol=1e-14)
    for name in ("loc", "log_scale"):
        torch.testing.assert_close(getattr(smoothed, name).grad, getattr(under_v, name).grad,
                                   rtol=1e-10, atol=1e-12)
        assert not torch.allclose(getattr(smoothed, name).grad, getattr(plain, name).grad)


def test_smoothed_codes_act_only_while_switched_on_recorded_and_learning():
    smoothed, plain, _ = _smoothed_codes_objectives()
    idx = torch.tensor([2, 3])
    assert smoothed.codes_smoothed()
    with torch.no_grad():
        assert not smoothed.codes_smoothed() and smoothed(None, idx).passes == 2
    smoothed.smooth_codes = False
    assert smoothed(None, idx).passes == 2
    smoothed.smooth_codes = True
    smoothed.loc.requires_grad_(False)
    smoothed.log_scale.requires_grad_(False)
    assert not smoothed.codes_smoothed() and smoothed(None, idx).passes == 2
    assert plain.code_mass is None and not plain.codes_smoothed()


def test_smoothed_codes_need_one_draw_and_weights_of_the_right_shape():
    with pytest.raises(ValueError, match="takes one draw per code; got n_samples=2"):
        _codes_objective_with(n_samples=2, code_weights=sparse.identity(40, format="csr"))
    with pytest.raises(ValueError, match=r"code_weights must have the shape of weights, \(40, 40\)"):
        _codes_objective_with(code_weights=sparse.identity(39, format="csr"))


def test_encoder_bounds_see_fresh_binary_draws_of_bernoulli_probabilities():
    """Under the Bernoulli likelihood the VAE's and IWAE's encoders are fed a binarisation of
    the rows (probabilities 0.5 here), drawn afresh at every step; their pass counts stay."""
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen.append(x.detach().clone())
            return x

    model = _model(data_dim=3, bernoulli=True)
    encoder = AmortizedPosterior(torch.nn.Sequential(Spy(), mlp(3, 2, (8,))), model.prior)
    gray, idx = torch.full((50, 3), 0.5), torch.arange(50)
    torch.manual_seed(0)
    passes = [ELBO(model, encoder)(gray, idx).passes, IWAEBound(model, encoder, 3)(gray, idx).passes]
    assert passes == [100, 200]
    assert all(set(x.unique().tolist()) == {0.0, 1.0} for x in seen)
    assert not torch.equal(seen[0], seen[1])
