"""Posterior comparison, its summaries, and quadrature limits."""
import numpy as np
import pytest
import torch

from mapa_vae import MAPAPosterior, compare_posteriors, datasets, log_marginal
from mapa_vae.evaluation import rank_correlation, total_variation
from mapa_vae.priors import StandardNormal


def test_total_variation_and_rank_correlation_on_known_cases():
    p = np.log(np.array([[0.5, 0.5, 0.0 + 1e-300], [0.2, 0.3, 0.5]]))
    q = np.log(np.array([[0.0 + 1e-300, 0.5, 0.5], [0.2, 0.3, 0.5]]))
    np.testing.assert_allclose(total_variation(p, q), [0.5, 0.0], atol=1e-12)
    a = np.array([[1.0, 2.0, 3.0, 4.0]])
    np.testing.assert_allclose(rank_correlation(a, 10 * a**3), [1.0])
    np.testing.assert_allclose(rank_correlation(a, -a), [-1.0])


@pytest.fixture(scope="module")
def circle_comparison():
    truth = datasets.get("circle")
    X, Z = truth.sample(600, seed=0)
    X_test, _ = truth.sample(40, seed=1)
    mapa = MAPAPosterior(n_neighbors=None, sigma=truth.sigma).fit(X)
    return compare_posteriors(truth, X, Z, X_test, mapa)


def test_posterior_comparison_rows_are_log_distributions(circle_comparison):
    for log_p in (circle_comparison.log_true, circle_comparison.log_empirical,
                  circle_comparison.log_mapa):
        assert log_p.shape == (40, 600)
        np.testing.assert_allclose(np.exp(log_p).sum(axis=1), 1.0, rtol=1e-9)


def test_mapa_captures_the_trend_of_the_true_posterior(circle_comparison):
    summary = circle_comparison.summary()
    # the empiricalized posterior with true atoms is close to the true one (same ranking)
    assert summary["empirical_vs_true"]["rank_correlation"] > 0.99
    # MAPA ranks training indices like the true posterior, from the data alone
    assert summary["mapa_vs_true"]["rank_correlation"] > 0.9
    for row in summary.values():
        assert 0.0 <= row["total_variation"] <= 1.0
    # MAPA is far closer to the empiricalized posterior than a uniform guess is
    uniform = np.full_like(circle_comparison.log_mapa, -np.log(600))
    tv_uniform = total_variation(uniform, circle_comparison.log_empirical).mean()
    assert summary["mapa_vs_empirical"]["total_variation"] < 0.5 * tv_uniform


def test_mapa_is_the_same_for_a_model_and_its_twin_while_true_posteriors_differ():
    model, twin = datasets.get("circle"), datasets.get("circle", twin=True)
    X, Z = model.sample(300, seed=3)
    # the twin generates the same data from codes Z' with f_twin(Z') = f(Z): shift Φ(z) by -1/4
    Z_twin = torch.special.ndtri(torch.remainder(torch.special.ndtr(torch.from_numpy(Z)) - 0.25,
                                                 1.0)).numpy()
    np.testing.assert_allclose(twin.mean(Z_twin), model.mean(Z), atol=1e-7)
    X_test, _ = model.sample(20, seed=4)
    mapa = MAPAPosterior(n_neighbors=None, sigma=model.sigma).fit(X)
    a = compare_posteriors(model, X, Z, X_test, mapa)
    b = compare_posteriors(twin, X, Z_twin, X_test, mapa)
    np.testing.assert_array_equal(a.log_mapa, b.log_mapa)
    np.testing.assert_allclose(a.log_empirical, b.log_empirical, atol=1e-6)
    assert (a.summary()["mapa_vs_true"]["rank_correlation"]
            == pytest.approx(b.summary()["mapa_vs_true"]["rank_correlation"], abs=0.01))
    # yet the posterior densities over codes differ: p(z|x) moves with the twin's shift
    z = np.linspace(-2, 2, 50)[:, None]
    assert np.abs(model.log_posterior(X_test[:3], z) - twin.log_posterior(X_test[:3], z)).max() > 5


def test_compare_posteriors_checks_its_inputs():
    truth = datasets.get("circle")
    X, Z = truth.sample(50, seed=0)
    mapa = MAPAPosterior(sigma=0.1).fit(X)
    with pytest.raises(ValueError, match="Z_train has 49 rows"):
        compare_posteriors(truth, X, Z[:49], X[:3], mapa)
    with pytest.raises(ValueError, match="X_test has 3 features"):
        compare_posteriors(truth, X, Z, np.zeros((2, 3)), mapa)


def test_quadrature_refuses_latent_dimension_three():
    with pytest.raises(ValueError, match="latent_dim 1 or 2"):
        log_marginal(lambda z: z, StandardNormal(3), 0.1, np.zeros((2, 3)))


def test_quadrature_checks_the_decoder_output_shape():
    with pytest.raises(ValueError, match="decoder returned shape"):
        log_marginal(lambda z: z[:, :1].repeat(1, 3), StandardNormal(1), 0.1, np.zeros((2, 2)))
