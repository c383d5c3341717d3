"""Neighbour search backends: exact ones agree with brute force; the approximate one is close."""
import sys

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from mapa_vae import MAPAPosterior
from mapa_vae import neighbours
from mapa_vae.neighbours import NeighbourIndex


def _exact(X, Q, k):
    d = cdist(Q, X, "sqeuclidean")
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, idx, 1), idx


@pytest.mark.parametrize("algorithm", ["kd_tree", "brute"])
@pytest.mark.parametrize("dim", [2, 20])
def test_exact_backends_find_the_true_neighbours(algorithm, dim, monkeypatch):
    monkeypatch.setattr(neighbours, "_BLOCK_ENTRIES", 700)  # several blocks, a ragged last one
    rng = np.random.default_rng(dim)
    X, Q = rng.normal(size=(300, dim)), rng.normal(size=(45, dim))
    sqdist, idx = NeighbourIndex(X, algorithm).query(Q, 7)
    expected_d, expected_idx = _exact(X, Q, 7)
    np.testing.assert_allclose(sqdist, expected_d, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(idx, expected_idx)
    assert idx.dtype == np.int32 and sqdist.dtype == np.float64


def test_auto_is_exact_and_chooses_by_dimension():
    rng = np.random.default_rng(0)
    assert NeighbourIndex(rng.normal(size=(50, 8))).algorithm == "kd_tree"
    assert NeighbourIndex(rng.normal(size=(50, 9))).algorithm == "brute"
    with pytest.raises(ValueError, match="unknown neighbour algorithm 'ball'"):
        NeighbourIndex(rng.normal(size=(50, 2)), "ball")


def test_hnsw_is_close_and_keeps_each_point_in_its_own_row():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    X = rng.normal(size=(2000, 32))
    sqdist, idx = NeighbourIndex(X, "hnsw").query(X, 10, include_self=True)
    _, exact = _exact(X, X, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, exact)])
    assert recall > 0.95
    assert (idx == np.arange(2000)[:, None]).any(axis=1).all()
    assert (np.diff(sqdist, axis=1) >= 0).all()


def test_a_missing_faiss_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    X = np.random.default_rng(0).normal(size=(40, 3))
    with pytest.raises(ImportError, match=r"pip install \"mapa-vae\[ann\]\""):
        NeighbourIndex(X, "hnsw")
    with pytest.raises(ImportError, match="faiss-cpu"):
        MAPAPosterior(n_neighbors=5, sigma=0.3, algorithm="hnsw").fit(X)


def test_mapa_weights_do_not_depend_on_the_exact_backend():
    X = np.random.default_rng(2).normal(size=(400, 5))
    Q = np.random.default_rng(3).normal(size=(30, 5))
    a = MAPAPosterior(n_neighbors=20, sigma=0.4, algorithm="kd_tree").fit(X)
    b = MAPAPosterior(n_neighbors=20, sigma=0.4, algorithm="brute").fit(X)
    assert (a.algorithm_, b.algorithm_) == ("kd_tree", "brute")
    np.testing.assert_allclose(a.weights_.toarray(), b.weights_.toarray(), atol=1e-12)
    np.testing.assert_allclose(a.query(Q).toarray(), b.query(Q).toarray(), atol=1e-12)
    assert MAPAPosterior(sigma=0.4).fit(X).algorithm_ == "dense"
    with pytest.raises(ValueError, match="unknown neighbour algorithm"):
        MAPAPosterior(n_neighbors=20, sigma=0.4, algorithm="annoy").fit(X)
