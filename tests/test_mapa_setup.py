"""MAPA's setup: representation, weights, atoms, candidate attachments, pilots and the report."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mapa_vae import datasets, mapa_setup
from mapa_vae.atoms import stratified_atoms, transport
from mapa_vae.mapa_setup import (AttachmentReport, Candidates, initial_candidates, prepare,
                                 run_pilots)
from mapa_vae.priors import Uniform
from mapa_vae.trainer import PassCounter

WEIGHTS = {"n_neighbors": "auto", "bandwidth": None}


@pytest.fixture(scope="module")
def circle():
    truth = datasets.get("circle")
    X, Z = truth.sample(300, seed=0)
    return truth, X, Z, prepare(X, truth.prior, 0, features=None, sigma=truth.sigma, **WEIGHTS)


def test_prepare_fits_mapa_on_the_data_and_draws_stratified_atoms(circle):
    truth, X, _, setup = circle
    assert setup.features is None and setup.representation is X
    assert setup.mapa.bandwidth_ == math.sqrt(2.0) * truth.sigma  # h = √2 σ
    np.testing.assert_allclose(np.asarray(setup.mapa.weights_.sum(axis=1)).ravel(), 1.0)
    np.testing.assert_array_equal(setup.atoms, stratified_atoms(truth.prior, 300, random_state=0))
    given = prepare(X, truth.prior, 0, features=None, n_neighbors="auto", bandwidth=0.3,
                    sigma=truth.sigma)
    assert given.mapa.bandwidth_ == 0.3  # a bandwidth wins over σ for MAPA's kernel


def test_prepare_computes_mapa_in_whitened_principal_components(circle):
    truth, X, _, _ = circle
    setup = prepare(X, truth.prior, 0, features=1, sigma=None, **WEIGHTS)
    assert setup.representation.shape == (300, 1)
    np.testing.assert_allclose(setup.representation.var(axis=0, ddof=1), 1.0, rtol=1e-10)
    np.testing.assert_array_equal(setup.features.transform(X), setup.representation)
    # σ is in the data's units: in a representation the width comes from the data, as without σ
    known = prepare(X, truth.prior, 0, features=2, sigma=truth.sigma, **WEIGHTS)
    unknown = prepare(X, truth.prior, 0, features=2, sigma=None, **WEIGHTS)
    assert known.mapa.bandwidth_rule_ == unknown.mapa.bandwidth_rule_ == "loo"
    assert known.mapa.bandwidth_ == unknown.mapa.bandwidth_
    with pytest.raises(ValueError, match="features=3 asks for more principal components"):
        prepare(X, truth.prior, 0, features=3, sigma=None, **WEIGHTS)
    with pytest.raises(ValueError, match="features must be None, a number of principal"):
        prepare(X, truth.prior, 0, features="pca", sigma=None, **WEIGHTS)


@pytest.mark.parametrize("init, steps, pilot_steps, names, budget, reason", [
    ("auto", 100, 10, ["coarse", "fiedler", "angle"], 80, None),
    ("auto", 30, 10, ["seriation"], 30,
     "pilots skipped: steps=30 leave no room for 3 candidates x 10 pilot steps (that needs "
     "steps > 30); used the least rough candidate (seriation)"),
    ("auto", 100, 0, ["seriation"], 100,
     "pilots skipped: pilot_steps=0; used the least rough candidate (seriation)"),
    ("fiedler", 100, 10, ["fiedler"], 100, "init='fiedler'"),
])
def test_candidates_and_why_a_single_one_is_used(circle, init, steps, pilot_steps, names,
                                                 budget, reason):
    truth, _, _, setup = circle
    candidates = initial_candidates(setup, truth.prior, 0, init=init, codes="atoms",
                                    steps=steps, pilot_steps=pilot_steps)
    assert (list(candidates.attachments), candidates.budget, candidates.reason) == (
        names, budget, reason)
    for perm in candidates.attachments.values():  # each a permutation of the atoms
        np.testing.assert_array_equal(np.sort(perm), np.arange(300))


def test_given_coordinates_are_transported_onto_the_atoms(circle):
    truth, _, Z, setup = circle
    candidates = initial_candidates(setup, truth.prior, 0, init=Z, codes="atoms", steps=50,
                                    pilot_steps=10)
    assert list(candidates.attachments) == ["given"] and candidates.budget == 50
    assert candidates.reason == "init gave coordinates per training point"
    np.testing.assert_array_equal(candidates.attachments["given"],
                                  transport(Z, setup.atoms, truth.prior))
    with pytest.raises(ValueError, match="init has 5 rows but X has 300"):
        initial_candidates(setup, truth.prior, 0, init=Z[:5], codes="atoms", steps=50,
                           pilot_steps=10)


def test_above_one_latent_dimension_isomap_or_pca_is_used_without_pilots():
    truth = datasets.get("swiss-roll")
    X, _ = truth.sample(200, seed=0)
    prior = Uniform(2)
    setup = prepare(X, prior, 0, features=None, sigma=truth.sigma, **WEIGHTS)
    skipped = initial_candidates(setup, prior, 0, init="auto", codes="atoms", steps=10,
                                 pilot_steps=10)
    assert list(skipped.attachments) == ["isomap"]
    assert skipped.reason == ("pilots skipped: steps=10 leave no room for 2 candidates x 10 "
                              "pilot steps (that needs steps > 20); used isomap, the default "
                              "above one latent dimension")
    gaussian = initial_candidates(setup, prior, 0, init="auto", codes="gaussian", steps=10,
                                  pilot_steps=10)
    assert list(gaussian.attachments) == ["pca"]
    assert gaussian.reason == "no pilots: pca is the only distinct candidate"


class _StubTrainer:
    """Ten passes and half a second per step, a history row every five steps; its bound is a
    constant and costs one pass per training point."""

    def __init__(self, bound: float, budget: int):
        self.bound, self.budget, self.n, self.device = bound, budget, 4, torch.device("cpu")
        self.step, self.train_seconds, self.extra_steps = 0, 0.0, 0
        self.counter = PassCounter()
        self.config = SimpleNamespace(seed=0)
        self.history = []

    @property
    def passes(self):
        return self.counter.total

    def fit(self, until):
        while self.step < until:
            self.step += 1
            self.counter.charge(10)
            self.counter.end_step()
            self.train_seconds += 0.5
            if self.step % 5 == 0:
                self.history.append({"step": self.step, "passes": self.passes,
                                     "train_seconds": self.train_seconds})

    def objective(self, x, idx):
        return SimpleNamespace(value=torch.tensor(self.bound), passes=idx.numel())


def test_pilots_keep_the_highest_bound_charged_with_the_others(monkeypatch):
    clock = iter(np.arange(0.0, 100.0, 0.25))  # each bound takes 0.25 s on this clock
    monkeypatch.setattr(mapa_setup, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    bounds = {"a": -1.0, "b": -0.5, "c": -2.0}
    perms = {name: np.arange(4) for name in bounds}
    made = {}

    def make_trainer(perm, steps):
        name = next(n for n in bounds if n not in made)
        made[name] = _StubTrainer(bounds[name], steps)
        return made[name]

    best, report = run_pilots(Candidates(perms, 77, None), make_trainer, 10)
    assert report == AttachmentReport("b", "the highest MAPA bound after 10 pilot steps of each "
                                           "candidate (a, b, c; see pilot_bounds_)", bounds)
    assert best is made["b"] and best.budget == 77 and best.step == 10
    assert best.extra_steps == 20  # the other two candidates' steps
    assert best.passes == 3 * (10 * 10 + 4)  # every candidate's steps and its bound
    assert best.train_seconds == 3 * (10 * 0.5 + 0.25)
    assert [(r["passes"], r["train_seconds"]) for r in best.history] == [(150, 7.5), (300, 15.0)]
    assert AttachmentReport("greedy", "init='greedy'").pilot_bounds == {}


def test_pilots_rank_gaussian_codes_the_same_whatever_the_process_random_state():
    """The pilots' bound draws codes; it is seeded from the run, so what ran before in the
    process (here, the global torch seed) changes neither the ranking nor the fit."""
    from mapa_vae import MAPADensity

    truth = datasets.get("clusters")
    X, _ = truth.sample(200, seed=0)
    fits = []
    for state in (0, 1):
        torch.manual_seed(state)
        fits.append(MAPADensity(codes="gaussian", sigma=truth.sigma, steps=100, pilot_steps=20,
                                batch_size=50, random_state=0).fit(X))
    assert len(fits[0].pilot_bounds_) > 1
    assert fits[0].pilot_bounds_ == fits[1].pilot_bounds_
    np.testing.assert_array_equal(fits[0].score_samples(X[:20]), fits[1].score_samples(X[:20]))


def _linear_gaussian_sample(n=400, d=3, D=7, sigma=0.3, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(D, d))
    return rng.normal(size=(n, d)) @ A.T + 1.5 + sigma * rng.normal(size=(n, D))


def test_probabilistic_pca_codes_are_the_posterior_of_the_fitted_model():
    """Against the closed form from the sample covariance's eigendecomposition (numpy's, not
    scikit-learn's): ``W = U_d (Λ_d − σ̂²)^{1/2}``, ``M = Wᵀ W + σ̂² I``, posterior mean
    ``M⁻¹ Wᵀ (x − x̄)`` (each column up to the eigenvector's sign) and covariance ``σ̂² M⁻¹``. Per
    coordinate the means' variance plus the squared width is 1: the prior's, exactly."""
    X = _linear_gaussian_sample()
    d = 3
    lam, U = np.linalg.eigh(np.cov(X.T))
    lam, U = lam[::-1], U[:, ::-1]
    noise = lam[d:].mean()
    W = U[:, :d] * np.sqrt(lam[:d] - noise)
    M = W.T @ W + noise * np.eye(d)
    mean = (X - X.mean(0)) @ W @ np.linalg.inv(M)  # M is symmetric
    loc, scale = mapa_setup.probabilistic_pca_codes(X, d)
    signs = np.sign((loc * mean).sum(0))
    np.testing.assert_allclose(loc * signs, mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(scale, np.broadcast_to(np.sqrt(noise / np.diag(M)), loc.shape),
                               rtol=1e-9)
    np.testing.assert_allclose(loc.var(0, ddof=1) + scale[0] ** 2, 1.0, rtol=1e-9)


@pytest.mark.parametrize("shape, d, message", [
    ((50, 4), 4, "latent_dim=4 needs more points and data dimensions than that; the data have "
                 "50 points in 4 dimensions"),
    ((3, 8), 3, "the data have 3 points in 8 dimensions"),
])
def test_probabilistic_pca_codes_refuse_a_latent_size_without_room(shape, d, message):
    X = np.random.default_rng(0).normal(size=shape)
    with pytest.raises(ValueError, match=message):
        mapa_setup.probabilistic_pca_codes(X, d)


def test_probabilistic_pca_codes_refuse_data_confined_to_the_latent_size():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 2)) @ rng.normal(size=(2, 6))  # rank 2 in 6 dimensions
    with pytest.raises(ValueError, match="noise off the first 2 principal components; these "
                                         "data lie in 2 dimensions"):
        mapa_setup.probabilistic_pca_codes(X, 2)
    assert (mapa_setup.probabilistic_pca_codes(X + 1e-3 * rng.normal(size=X.shape), 2)[1]
            > 0).all()


def test_residual_isotropy_is_certain_where_the_last_variances_are_exactly_equal():
    """Columns orthogonal after centring, with norms 10, 8, 6 and then all 1: the sample
    covariance is ``diag(100, 64, 36, 1, …, 1) / (N − 1)``, every residual log-ratio is 0 up to
    rounding, the statistic 0 and its p-value 1. Dropping the third component leaves an unequal
    residual (36 against 1), which the test rejects."""
    rng = np.random.default_rng(0)
    A = rng.normal(size=(200, 9))
    Q, _ = np.linalg.qr(A - A.mean(0))
    X = Q * np.array([10, 8, 6] + [1] * 6)
    assert mapa_setup.residual_isotropy_pvalue(X, 3) > 1 - 1e-9
    assert mapa_setup.residual_isotropy_pvalue(X, 2) < 1e-12


def test_residual_isotropy_pvalues_are_uniform_under_ppca_and_small_off_it():
    """Under probabilistic PCA (isotropic noise) the p-values of 40 samples are about uniform:
    2 of 40 expected below 0.05 (at most 6 allowed: a binomial tail of 0.3%), a mean near ½.
    With the noise's spread differing between coordinates (0.3 and 0.4) the test rejects."""
    pvalues = np.array([mapa_setup.residual_isotropy_pvalue(_linear_gaussian_sample(seed=s), 3)
                        for s in range(40)])
    assert (pvalues < 0.05).sum() <= 6 and 0.35 < pvalues.mean() < 0.65
    rng = np.random.default_rng(0)
    X = _linear_gaussian_sample(n=2000, sigma=0.0) + rng.normal(size=(2000, 7)) * np.array(
        [0.3] * 4 + [0.4] * 3)
    assert mapa_setup.residual_isotropy_pvalue(X, 3) < 1e-6


def test_residual_isotropy_is_unchanged_by_rotation_translation_and_scale():
    """The test reads only the covariance's eigenvalues, and their ratios: a rotation, a shift
    and a common scale of the data leave the p-value as it is, up to rounding."""
    X = _linear_gaussian_sample(seed=1)
    R, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(7, 7)))
    p = mapa_setup.residual_isotropy_pvalue(X, 3)
    assert 0.01 < p < 0.99
    np.testing.assert_allclose(mapa_setup.residual_isotropy_pvalue(3.0 * X @ R - 5.0, 3), p,
                               rtol=1e-6)


def test_residual_isotropy_does_not_apply_without_room_and_rejects_a_zero_variance():
    rng = np.random.default_rng(0)
    assert math.isnan(mapa_setup.residual_isotropy_pvalue(rng.normal(size=(6, 8)), 2))  # N ≤ D
    assert math.isnan(mapa_setup.residual_isotropy_pvalue(rng.normal(size=(50, 4)), 3))  # q = 1
    X = rng.normal(size=(50, 5))
    X[:, 4] = 2.0  # a constant column: a zero variance among the last ones
    assert mapa_setup.residual_isotropy_pvalue(X, 2) == 0.0
