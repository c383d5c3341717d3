"""MAPA posterior: normalisation, invariances, sparse versus dense, bandwidth rules, errors."""
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist
from scipy.special import logsumexp
from scipy.stats import special_ortho_group

from mapa_vae import MAPAPosterior
from mapa_vae import mapa as mapa_module
from mapa_vae.mapa import TruncationWarning, loo_log_likelihood


def _data(seed, n=120, d=2):
    return np.random.default_rng(seed).normal(size=(n, d))


def _dense_reference(X, h):
    """MAPA straight from its definition, for comparison."""
    logits = -cdist(X, X, "sqeuclidean") / (2 * h * h)
    return np.exp(logits - logsumexp(logits, axis=1, keepdims=True))


def test_dense_weights_match_the_definition():
    X = _data(0)
    mapa = MAPAPosterior(n_neighbors=None, sigma=0.3).fit(X)
    assert mapa.bandwidth_ == pytest.approx(math.sqrt(2) * 0.3)
    assert mapa.bandwidth_rule_ == "sigma"
    np.testing.assert_allclose(mapa.weights_.toarray(), _dense_reference(X, mapa.bandwidth_),
                               rtol=1e-10, atol=1e-14)
    np.testing.assert_array_equal(mapa.truncation_bound_, 0.0)


def test_explicit_bandwidth_is_used():
    mapa = MAPAPosterior(n_neighbors=10, bandwidth=0.7).fit(_data(1))
    assert mapa.bandwidth_ == 0.7 and mapa.bandwidth_rule_ == "bandwidth"


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(3, 60), d=st.integers(1, 4),
       k=st.integers(2, 60), scale=st.floats(0.05, 20.0), loo=st.booleans())
def test_rows_are_distributions_with_self_included(seed, n, d, k, scale, loo):
    X = scale * _data(seed, n, d)
    k = min(k, n)
    mapa = MAPAPosterior(n_neighbors=k, sigma=None if loo else 0.2 * scale).fit(X)
    W = mapa.weights_
    assert W.shape == (n, n)
    np.testing.assert_allclose(np.asarray(W.sum(axis=1)).ravel(), 1.0, rtol=1e-12)
    assert (W.data >= 0).all() and np.all(W.getnnz(axis=1) == k)
    assert (W.diagonal() > 0).all()  # each point is its own neighbour
    # the diagonal is the largest weight of its row: the point is its own nearest neighbour
    np.testing.assert_allclose(W.diagonal(), W.max(axis=1).toarray().ravel())


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(5, 50), d=st.integers(1, 3),
       dense=st.booleans(), loo=st.booleans())
def test_permuting_the_data_permutes_the_weights(seed, n, d, dense, loo):
    X = _data(seed, n, d)
    perm = np.random.default_rng(seed + 1).permutation(n)
    k = None if dense else max(2, n // 3)
    sigma = None if loo else 0.3
    W = MAPAPosterior(n_neighbors=k, sigma=sigma).fit(X).weights_.toarray()
    Wp = MAPAPosterior(n_neighbors=k, sigma=sigma).fit(X[perm]).weights_.toarray()
    np.testing.assert_allclose(Wp, W[np.ix_(perm, perm)], rtol=1e-7, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(5, 50), d=st.integers(2, 4),
       shift=st.floats(-100, 100), loo=st.booleans())
def test_translating_and_rotating_the_data_changes_nothing(seed, n, d, shift, loo):
    X = _data(seed, n, d)
    R = special_ortho_group.rvs(d, random_state=seed)
    sigma = None if loo else 0.3
    k = max(2, n // 2)
    a = MAPAPosterior(n_neighbors=k, sigma=sigma).fit(X)
    b = MAPAPosterior(n_neighbors=k, sigma=sigma).fit(X @ R.T + shift)
    assert b.bandwidth_ == pytest.approx(a.bandwidth_, rel=1e-4)
    np.testing.assert_allclose(b.weights_.toarray(), a.weights_.toarray(), rtol=1e-3, atol=1e-9)


def test_sparse_matches_dense_where_truncation_is_negligible():
    X = _data(3, n=400)
    dense = MAPAPosterior(n_neighbors=None, sigma=0.05).fit(X)
    sparse = MAPAPosterior(n_neighbors=64, sigma=0.05).fit(X)
    assert sparse.truncation_bound_.max() < 1e-8
    np.testing.assert_allclose(sparse.weights_.toarray(), dense.weights_.toarray(), atol=1e-8)


def test_truncation_bound_holds_and_exact_mass_is_reported():
    X = _data(4, n=300)
    mapa = MAPAPosterior(n_neighbors=8, sigma=0.5).fit(X)  # wide kernel: much mass is dropped
    exact = mapa.truncated_mass()
    reference = _dense_reference(X, mapa.bandwidth_)
    kept = np.take_along_axis(reference, mapa.neighbors_, axis=1).sum(axis=1)
    np.testing.assert_allclose(exact, 1 - kept, atol=1e-12)
    assert exact.max() > 0.1
    assert np.all(mapa.truncation_bound_ >= exact - 1e-12)
    assert np.all(mapa.truncation_bound_ <= 1)
    # kept weights are the dense weights renormalised over the kept neighbours
    row = 7
    cols = mapa.neighbors_[row]
    np.testing.assert_allclose(mapa.weights_[row, cols].toarray().ravel(),
                               reference[row, cols] / reference[row, cols].sum(), rtol=1e-10)


def test_query_of_training_points_reproduces_training_rows():
    X = _data(5, n=200)
    for k in (None, 20):
        mapa = MAPAPosterior(n_neighbors=k, sigma=0.2).fit(X)
        np.testing.assert_allclose(mapa.query(X[:30]).toarray(), mapa.weights_[:30].toarray(),
                                   atol=1e-12)


def test_query_and_log_weights_for_new_points():
    X = _data(6, n=200)
    X_new = _data(7, n=15)
    mapa = MAPAPosterior(n_neighbors=None, sigma=0.2).fit(X)
    logits = -cdist(X_new, X, "sqeuclidean") / (2 * mapa.bandwidth_**2)
    expected = logits - logsumexp(logits, axis=1, keepdims=True)
    np.testing.assert_allclose(mapa.log_weights(X_new), expected, atol=1e-10)
    np.testing.assert_allclose(mapa.query(X_new).toarray(), np.exp(expected), atol=1e-12)
    sparse = MAPAPosterior(n_neighbors=30, sigma=0.2).fit(X)
    Q = sparse.query(X_new)
    assert Q.shape == (15, 200) and np.all(Q.getnnz(axis=1) == 30)
    np.testing.assert_allclose(np.asarray(Q.sum(axis=1)).ravel(), 1.0)


def test_loo_bandwidth_maximises_the_leave_one_out_likelihood():
    X = _data(8, n=150)
    mapa = MAPAPosterior(n_neighbors=None).fit(X)
    assert mapa.bandwidth_rule_ == "loo"
    sq = cdist(X, X, "sqeuclidean")
    np.fill_diagonal(sq, np.inf)
    grid = np.exp(np.linspace(np.log(0.02), np.log(3.0), 400))
    scores = [loo_log_likelihood(sq, h, n_features=2) for h in grid]
    best = grid[int(np.argmax(scores))]
    assert mapa.bandwidth_ == pytest.approx(best, rel=0.02)
    assert loo_log_likelihood(sq, mapa.bandwidth_, 2) >= max(scores) - 1e-6


def test_loo_likelihood_matches_a_direct_computation():
    X = _data(9, n=40, d=3)
    h = 0.8
    direct = np.mean([np.log(np.mean([
        np.exp(-np.sum((X[i] - X[j]) ** 2) / (2 * h * h)) / (2 * np.pi * h * h) ** 1.5
        for j in range(40) if j != i])) for i in range(40)])
    sq = cdist(X, X, "sqeuclidean")
    np.fill_diagonal(sq, np.inf)
    assert loo_log_likelihood(sq, h, n_features=3) == pytest.approx(direct, rel=1e-12)


def test_loo_bandwidth_is_scale_equivariant():
    X = _data(10, n=300)
    h1 = MAPAPosterior(n_neighbors=40).fit(X).bandwidth_
    h2 = MAPAPosterior(n_neighbors=40).fit(7.5 * X).bandwidth_
    assert h2 == pytest.approx(7.5 * h1, rel=1e-3)


@pytest.mark.parametrize("n_neighbors, target", [(None, 1.5), (None, 4.0), (40, 3.0)])
def test_effective_neighbours_sets_the_median_rows_smoothing(n_neighbors, target):
    """The median row's effective neighbours 1 / Σ w² rise with h, and the bisection stops
    with ``target`` inside a bracket of relative width 1e-6 around the returned h: so the
    median count at h·e^(∓2e-6) lies on either side of ``target`` (each row over the kept
    neighbours the weights use)."""
    X = _data(13, n=200)
    mapa = MAPAPosterior(n_neighbors=n_neighbors, effective_neighbours=target).fit(X)
    sqdist = ((X[:, None, :] - X[mapa.neighbors_]) ** 2).sum(-1)

    def median_count(h):
        return np.median(mapa_module.effective_neighbour_counts(sqdist, h))

    h = mapa.bandwidth_
    assert median_count(h * math.exp(-2e-6)) <= target <= median_count(h * math.exp(2e-6))
    W = mapa.weights_
    np.testing.assert_allclose(1.0 / np.asarray(W.multiply(W).sum(axis=1)).ravel(),
                               mapa_module.effective_neighbour_counts(sqdist, h), rtol=1e-9)
    assert mapa.bandwidth_rule_ == "effective_neighbours"
    wider = MAPAPosterior(n_neighbors=n_neighbors, effective_neighbours=target + 1).fit(X)
    assert wider.bandwidth_ > mapa.bandwidth_


@pytest.mark.parametrize("n_neighbors", [None, 128])
def test_a_ceiling_lowers_the_leave_one_out_width_only_where_it_smooths_more(n_neighbors):
    """``max_effective_neighbours=K``: above the leave-one-out width's median count the width
    is left exactly as it is; below it, the width gives ``K`` (the bisection's bracket of
    relative width 1e-6 around h has the median count on either side of ``K``) and is
    narrower than leave-one-out's."""
    X = _data(13, n=200)
    loo = MAPAPosterior(n_neighbors=n_neighbors).fit(X)
    sqdist = ((X[:, None, :] - X[loo.neighbors_]) ** 2).sum(-1)

    def median_count(h):
        return np.median(mapa_module.effective_neighbour_counts(sqdist, h))

    count = median_count(loo.bandwidth_)
    assert count > 2  # the premise: leave-one-out smooths these data over many neighbours
    loose = MAPAPosterior(n_neighbors=n_neighbors, max_effective_neighbours=count + 1).fit(X)
    assert loose.bandwidth_ == loo.bandwidth_ and loose.bandwidth_rule_ == "loo"
    capped = MAPAPosterior(n_neighbors=n_neighbors, max_effective_neighbours=1.5).fit(X)
    np.testing.assert_array_equal(capped.neighbors_, loo.neighbors_)
    h = capped.bandwidth_
    assert capped.bandwidth_rule_ == "loo_capped" and h < loo.bandwidth_
    assert median_count(h * math.exp(-2e-6)) <= 1.5 <= median_count(h * math.exp(2e-6))


def test_effective_neighbours_width_is_scale_equivariant():
    """The rule depends on the data's scale only through h: scaling X by 7.5 scales h by 7.5
    (the bisection's bracket scales with the data; it stops at a relative width of 1e-6) and
    leaves the weights (each within the change over that bracket)."""
    X = _data(14, n=150)
    a = MAPAPosterior(n_neighbors=None, effective_neighbours=2.0).fit(X)
    b = MAPAPosterior(n_neighbors=None, effective_neighbours=2.0).fit(7.5 * X)
    assert b.bandwidth_ == pytest.approx(7.5 * a.bandwidth_, rel=1e-5)
    np.testing.assert_allclose(b.weights_.toarray(), a.weights_.toarray(), atol=1e-3)


def test_weights_are_all_self_for_a_tiny_kernel_and_uniform_for_a_huge_one():
    X = _data(11, n=50)
    tiny = MAPAPosterior(n_neighbors=None, bandwidth=1e-6).fit(X).weights_.toarray()
    np.testing.assert_allclose(tiny, np.eye(50), atol=1e-12)
    huge = MAPAPosterior(n_neighbors=None, bandwidth=1e6).fit(X).weights_.toarray()
    np.testing.assert_allclose(huge, np.full((50, 50), 1 / 50), rtol=1e-6)


@pytest.mark.parametrize("X, kwargs, message", [
    (np.array([[0.0, np.nan], [1.0, 2.0]]), {}, "NaN"),
    (np.array([[0.0, np.inf], [1.0, 2.0]]), {}, "infinity"),
    (np.zeros((1, 2)), {}, "minimum of 2"),
    (np.zeros(5), {}, "2D array"),
    (np.random.default_rng(0).normal(size=(10, 2)), {"n_neighbors": 11}, "larger than"),
    (np.random.default_rng(0).normal(size=(10, 2)), {"n_neighbors": 1}, "at least 2"),
    (np.random.default_rng(0).normal(size=(10, 2)), {"n_neighbors": 2.5}, "positive integer"),
    (np.random.default_rng(0).normal(size=(10, 2)), {"bandwidth": 0.0}, "bandwidth must be"),
    (np.random.default_rng(0).normal(size=(10, 2)), {"bandwidth": -1.0}, "bandwidth must be"),
    (np.random.default_rng(0).normal(size=(10, 2)), {"sigma": -0.1}, "sigma must be"),
    (np.random.default_rng(0).normal(size=(10, 2)), {"sigma": np.nan}, "sigma must be"),
    (np.random.default_rng(0).normal(size=(10, 2)), {"sigma": 0.1, "bandwidth": 0.1},
     "at most one"),
    (np.zeros((10, 2)), {}, "every point coincides"),
    (np.repeat(np.eye(2), 5, axis=0), {"n_neighbors": 4}, "every point coincides"),
    (np.zeros((10, 2)), {"n_neighbors": "many"}, "positive integer"),
    (np.random.default_rng(0).normal(size=(10, 2)), {"effective_neighbours": 0.5},
     "effective_neighbours must be a number from 1"),
    (np.random.default_rng(0).normal(size=(10, 2)), {"effective_neighbours": 10},
     "effective_neighbours must be a number from 1"),
    (np.random.default_rng(0).normal(size=(10, 2)), {"effective_neighbours": 2, "sigma": 0.1},
     "at most one of bandwidth, sigma and effective_neighbours"),
    (np.random.default_rng(0).normal(size=(10, 2)), {"max_effective_neighbours": 0.9},
     "max_effective_neighbours must be a number from 1"),
    (np.random.default_rng(0).normal(size=(10, 2)), {"max_effective_neighbours": 2, "sigma": 0.1},
     "max_effective_neighbours caps the leave-one-out width; give it without sigma"),
])
def test_bad_input_raises_a_clear_error(X, kwargs, message):
    with pytest.raises(ValueError, match=message):
        MAPAPosterior(**kwargs).fit(X)


def test_query_errors():
    mapa = MAPAPosterior(n_neighbors=5, sigma=0.1)
    with pytest.raises(ValueError, match="not fitted"):
        mapa.query(np.zeros((2, 2)))
    mapa.fit(_data(12, n=20))
    with pytest.raises(ValueError, match="X has 3 features"):
        mapa.query(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        mapa.log_weights(np.array([[np.nan, 0.0]]))


def test_auto_neighbours_is_dense_for_small_data_and_sparse_beyond():
    assert MAPAPosterior(sigma=0.1).fit(_data(14, n=300)).dense_
    big = MAPAPosterior(sigma=0.1).fit(_data(15, n=3000))
    assert not big.dense_ and big.neighbors_.shape == (3000, big.n_neighbors_) and \
        32 <= big.n_neighbors_ < 3000


def test_the_lost_weight_is_measured_exactly_and_never_silent():
    X = _data(4, n=600)  # few enough points that every row is measured
    with pytest.warns(TruncationWarning) as caught:
        mapa = MAPAPosterior(n_neighbors=8, sigma=0.5).fit(X)
    exact = mapa.truncated_mass()
    np.testing.assert_array_equal(mapa.sampled_rows_, np.arange(600))
    np.testing.assert_allclose(mapa.sampled_lost_mass_, exact, atol=1e-12)
    k99 = mapa.neighbors_for_99_
    message = str(caught[0].message)
    assert f"lose up to {exact.max():.1%}" in message and f"n_neighbors={k99} would keep" in message
    # the k it names keeps 99% of every row and is the smallest power of two that does
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enough = MAPAPosterior(n_neighbors=k99, sigma=0.5).fit(X)
    assert enough.truncated_mass().max() <= 0.01
    assert MAPAPosterior(n_neighbors=k99 // 2, sigma=0.5).fit(X).truncated_mass().max() > 0.01


def test_dense_weights_lose_nothing_and_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mapa = MAPAPosterior(n_neighbors=None, sigma=0.5).fit(_data(5, n=100))
    assert mapa.sampled_lost_mass_.size == 0 and mapa.n_neighbors_ == 100


def test_auto_neighbours_keep_99_percent_within_the_memory_budget(monkeypatch):
    X = _data(16, n=2500)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wide = MAPAPosterior(sigma=0.3).fit(X)  # a wide kernel needs more than 32 neighbours
    k = wide.n_neighbors_
    assert k > 32 and k & (k - 1) == 0 and wide.neighbors_.shape == (2500, k)
    assert wide.truncated_mass().max() <= 0.01
    monkeypatch.setattr(mapa_module, "_AUTO_MAX_ENTRIES", 2500 * 40)  # room for 40 neighbours
    with pytest.warns(TruncationWarning, match=f"n_neighbors={k} would keep 99%"):
        capped = MAPAPosterior(sigma=0.3).fit(X)
    assert capped.n_neighbors_ == 40


def test_accepts_tensors_and_lists():
    import torch

    X = _data(13, n=30)
    a = MAPAPosterior(n_neighbors=None, sigma=0.2).fit(torch.from_numpy(X)).weights_.toarray()
    b = MAPAPosterior(n_neighbors=None, sigma=0.2).fit(X.tolist()).weights_.toarray()
    np.testing.assert_array_equal(a, b)
