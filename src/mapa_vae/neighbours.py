"""Nearest training points of query rows, for MAPA's sparse weights.

Three backends answer the same question, the ``k`` nearest rows of the training data ``X`` for
each query row, as squared distances sorted ascending and their indices:

* ``"kd_tree"``: SciPy's k-d tree, exact, all cores; fast in low dimension.
* ``"brute"``: exact, all pairs by matrix products (scikit-learn's chunked search, all cores):
  candidates are picked in float32 and their distances recomputed in float64 without the
  cancellation of the ``‖x‖² − 2 x·y + ‖y‖²`` expansion.
* ``"hnsw"``: FAISS's hierarchical navigable small-world graph, **approximate** (a true
  neighbour may be missed; ``benchmarks/mapa_fit.py`` measures the recall), fast in high
  dimension. Needs the optional extra: ``pip install "mapa-vae[ann]"``.

``"auto"`` is exact: the k-d tree up to 8 dimensions, brute force above (on 60 000 images in
their first 8 whitened principal components the tree finds 559 neighbours a row in 6.7 s against
brute force's 22 s; in 16 components 256 neighbours take it 37 s against 19 s). An approximate
search is used only when asked for by name.

Results are written block by block into preallocated arrays (float64 distances, int32 indices
when ``N < 2³¹``), so a search over ``N`` rows with ``k`` neighbours holds ``O(N k)`` memory.
"""
from __future__ import annotations

import os

import numpy as np
from scipy.spatial import KDTree
from sklearn.neighbors import NearestNeighbors

ALGORITHMS = ("auto", "kd_tree", "brute", "hnsw")
_KD_TREE_MAX_DIM = 8
_BLOCK_ENTRIES = 1 << 22  # query rows × k × D per block


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
            self.tree = KDTree(X, leafsize=16)
        elif algorithm == "hnsw":
            faiss = faiss_or_error()
            threads = (os.cpu_count() or 1) if n_jobs == -1 else max(1, int(n_jobs))
            faiss.omp_set_num_threads(threads)
            self._hnsw = faiss.IndexHNSWFlat(X.shape[1], 32)
            self._hnsw.hnsw.efConstruction = 80
            self._hnsw.add(np.ascontiguousarray(X, dtype=np.float32))
        else:
            self._X32 = X.astype(np.float32)
            self._brute = NearestNeighbors(algorithm="brute", n_jobs=n_jobs).fit(self._X32)

    def query(self, Q: np.ndarray, k: int, include_self: bool = False, rows=None):
        """Squared distances ``(n, k)`` (float64, ascending) and indices ``(n, k)`` of the ``k``
        nearest training rows of each query row. ``include_self``: the queries are training
        rows themselves (all of them in order, or the training rows ``rows``), and each must
        list its own index (an approximate search may miss it)."""
        n, n_fit = Q.shape[0], self.X.shape[0]
        sqdist = np.empty((n, k))
        idx = np.empty((n, k), dtype=np.int32 if n_fit < 2**31 else np.int64)
        # the exact distances of the candidates, k × D per row (scikit-learn's brute-force
        # search chunks its own pairs)
        block = max(1, _BLOCK_ENTRIES // (k * Q.shape[1]))
        for start in range(0, n, block):
            part = slice(start, min(n, start + block))
            sqdist[part], idx[part] = self._search(Q[part], k)
        if include_self and self.algorithm == "hnsw":
            _put_self_first(sqdist, idx, np.arange(n) if rows is None else np.asarray(rows))
        return sqdist, idx

    def _search(self, Q: np.ndarray, k: int):
        if self.algorithm == "kd_tree":
            dist, idx = self.tree.query(Q, k=k, workers=self.n_jobs)
            return dist.reshape(len(Q), k) ** 2, idx.reshape(len(Q), k)
        if self.algorithm == "hnsw":
            self._hnsw.hnsw.efSearch = max(64, 2 * k)
            _, idx = self._hnsw.search(np.ascontiguousarray(Q, dtype=np.float32), k)
        else:
            idx = self._brute.kneighbors(Q.astype(np.float32), k, return_distance=False)
        sqdist = ((Q[:, None, :] - self.X[idx]) ** 2).sum(axis=2)  # exact, float64
        order = np.argsort(sqdist, axis=1, kind="stable")
        return np.take_along_axis(sqdist, order, 1), np.take_along_axis(idx, order, 1)


def _put_self_first(sqdist: np.ndarray, idx: np.ndarray, rows: np.ndarray) -> None:
    """Where query row ``j``, the training row ``rows[j]``, does not list ``rows[j]``, put it
    first at distance 0 and drop the farthest neighbour (in place)."""
    missing = ~(idx == rows[:, None]).any(axis=1)
    if missing.any():
        sqdist[missing, 1:] = sqdist[missing, :-1]
        idx[missing, 1:] = idx[missing, :-1]
        sqdist[missing, 0] = 0.0
        idx[missing, 0] = rows[missing]
