"""Empiricalized model: closed forms and consistency."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from mapa_vae import EmpiricalizedModel, datasets


def test_empiricalized_density_and_posterior_match_their_definitions():
    rng = np.random.default_rng(0)
    atoms = rng.normal(size=(7, 1))
    X = rng.normal(size=(5, 2))

    def decode(z):
        return torch.cat([z, torch.sin(z)], dim=1)

    model = EmpiricalizedModel(decode, atoms, sigma=0.5)
    centres = np.hstack([atoms, np.sin(atoms)])
    dens = np.array([[multivariate_normal(c, 0.25 * np.eye(2)).pdf(x) for c in centres]
                     for x in X])
    np.testing.assert_allclose(model.log_prob(X), np.log(dens.mean(axis=1)), rtol=1e-10)
    post = np.exp(model.log_index_posterior(X))
    np.testing.assert_allclose(post, dens / dens.sum(axis=1, keepdims=True), rtol=1e-9)


def test_empiricalized_model_accepts_a_module_and_evaluates_it_in_float64():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    atoms = np.linspace(-2, 2, 11)[:, None]
    model = EmpiricalizedModel(net, atoms, sigma=0.3)
    assert model.means.dtype == torch.float64
    np.testing.assert_allclose(model.means.numpy(),
                               net(torch.from_numpy(atoms).float()).detach().numpy(), atol=1e-6)
    assert next(net.parameters()).dtype == torch.float32  # the user's module is left alone


def test_empiricalized_model_with_true_atoms_converges_to_the_marginal():
    truth = datasets.get("circle")
    X_test, _ = truth.sample(300, seed=1)
    exact = truth.log_prob(X_test)
    gaps = []
    for n in (100, 3000):
        _, Z = truth.sample(n, seed=2)
        gaps.append(np.abs(EmpiricalizedModel(truth.decode, Z, truth.sigma).log_prob(X_test)
                           - exact).mean())
    assert gaps[1] < gaps[0] / 3
    assert gaps[1] < 0.1


def test_empiricalized_model_errors():
    with pytest.raises(ValueError, match="atoms"):
        EmpiricalizedModel(lambda z: z, np.array([[np.nan]]), sigma=0.1)
    with pytest.raises(ValueError, match="expected"):
        EmpiricalizedModel(lambda z: z[:1], np.zeros((3, 1)), sigma=0.1)
    model = EmpiricalizedModel(lambda z: torch.cat([z, z], 1), np.zeros((3, 1)), sigma=0.1)
    with pytest.raises(ValueError, match="has 3 features"):
        model.log_prob(np.zeros((2, 3)))
    assert model.log_prob(np.zeros((2, 2))) == pytest.approx(
        2 * [-2 * math.log(0.1) - math.log(2 * math.pi)])
