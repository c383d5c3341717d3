"""Nearest training points of query rows, for MAPA's sparse weights.

Three backends answer the same question, the ``k`` nearest rows of the training data ``X`` for
each query row, as squared distances sorted ascending and their indices:

* ``"kd_tree"``: SciPy's k-d tree, exact, all cores; fast in low dimension.
* ``"brute"``: exact, all pairs by matrix products (PyTorch, all cores), a block of query rows
  at a time so that memory stays ``O(block · N)``; candidates are picked in float32 and their
  distances recomputed exactly in float64.
* ``"hnsw"``: FAISS's hierarchical navigable small-world graph, **approximate** (a true
  neighbour may be missed; ``benchmarks/mapa_fit.py`` measures the recall), fast in high
  dimension. Needs the optional extra: ``pip install "mapa-vae[ann]"``.

``"auto"`` is exact: the k-d tree up to 16 dimensions, brute force above. An approximate search
is used only when asked for by name.

Results are written block by block into preallocated arrays (float64 distances, int32 indices
when ``N < 2³¹``), so a search over ``N`` rows with ``k`` neighbours holds ``O(N k)`` memory.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from scipy.spatial import KDTree

ALGORITHMS = ("auto", "kd_tree", "brute", "hnsw")
_KD_TREE_MAX_DIM = 16
_BLOCK_ENTRIES = 1 << 22  # query rows × max(k × D, N for brute force) per block


def check_algorithm(algorithm: str) -> str:
    """``algorithm`` if it names a neighbour search, else a ``ValueError`` listing them."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown neighbour algorithm {algorithm!r}; choose one of "
                         f"{', '.join(ALGORITHMS)}")
    return algorithm


def faiss_or_error():
    """The ``faiss`` module, or an ``ImportError`` that says what to install."""
    try:
        import faiss
    except ImportError:
        raise ImportError("algorithm='hnsw' needs FAISS, which is not installed: "
                          "pip install \"mapa-vae[ann]\" (or pip install faiss-cpu)") from None
    return faiss


class NeighbourIndex:
    """An index over the rows of ``X`` answering k-nearest-neighbour queries.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        Training data, float64.
    algorithm : {"auto", "kd_tree", "brute", "hnsw"}
        See the module documentation.
    n_jobs : int
        Threads (``-1``: all cores).
    """

    def __init__(self, X: np.ndarray, algorithm: str = "auto", n_jobs: int = -1):
        if check_algorithm(algorithm) == "auto":
            algorithm = "kd_tree" if X.shape[1] <= _KD_TREE_MAX_DIM else "brute"
        self.algorithm = algorithm
        self.X = X
        self.n_jobs = n_jobs
        if algorithm == "kd_tree":
            self._tree = KDTree(X, leafsize=16)
        elif algorithm == "hnsw":
            faiss = faiss_or_error()
            threads = (os.cpu_count() or 1) if n_jobs == -1 else max(1, int(n_jobs))
            faiss.omp_set_num_threads(threads)
            self._hnsw = faiss.IndexHNSWFlat(X.shape[1], 32)
            self._hnsw.hnsw.efConstruction = 80
            self._hnsw.add(np.ascontiguousarray(X, dtype=np.float32))
        else:
            self._X32 = torch.as_tensor(X, dtype=torch.float32)

    def query(self, Q: np.ndarray, k: int, include_self: bool = False):
        """Squared distances ``(n, k)`` (float64, ascending) and indices ``(n, k)`` of the ``k``
        nearest training rows of each query row. ``include_self``: the queries are the training
        rows themselves, and row ``i`` must list ``i`` (an approximate search may miss it)."""
        n, n_fit = Q.shape[0], self.X.shape[0]
        sqdist = np.empty((n, k))
        idx = np.empty((n, k), dtype=np.int32 if n_fit < 2**31 else np.int64)
        per_row = k * Q.shape[1]  # the exact distances of the candidates: k × D per row
        if self.algorithm == "brute":
            per_row = max(per_row, n_fit)
        block = max(1, _BLOCK_ENTRIES // per_row)
        for start in range(0, n, block):
            rows = slice(start, min(n, start + block))
            sqdist[rows], idx[rows] = self._search(Q[rows], k)
        if include_self and self.algorithm == "hnsw":
            _put_self_first(sqdist, idx)
        return sqdist, idx

    def _search(self, Q: np.ndarray, k: int):
        if self.algorithm == "kd_tree":
            dist, idx = self._tree.query(Q, k=k, workers=self.n_jobs)
            return dist.reshape(len(Q), k) ** 2, idx.reshape(len(Q), k)
        if self.algorithm == "hnsw":
            self._hnsw.hnsw.efSearch = max(64, 2 * k)
            _, idx = self._hnsw.search(np.ascontiguousarray(Q, dtype=np.float32), k)
        else:
            with torch.no_grad():
                scores = torch.cdist(torch.as_tensor(Q, dtype=torch.float32), self._X32)
                idx = torch.topk(scores, k, dim=1, largest=False).indices.numpy()
        sqdist = ((Q[:, None, :] - self.X[idx]) ** 2).sum(axis=2)  # exact, float64
        order = np.argsort(sqdist, axis=1, kind="stable")
        return np.take_along_axis(sqdist, order, 1), np.take_along_axis(idx, order, 1)


def _put_self_first(sqdist: np.ndarray, idx: np.ndarray) -> None:
    """Where row ``i`` of a self-query does not list ``i``, put it first at distance 0 and drop
    the farthest neighbour (in place)."""
    rows = np.arange(idx.shape[0])
    missing = ~(idx == rows[:, None]).any(axis=1)
    if missing.any():
        sqdist[missing, 1:] = sqdist[missing, :-1]
        idx[missing, 1:] = idx[missing, :-1]
        sqdist[missing, 0] = 0.0
        idx[missing, 0] = rows[missing]
