"""MAPA: the model-agnostic posterior approximation over training indices.

For training data ``x_1 … x_N`` and any point ``x``,

    MAPA(n | x) = K_h(x, x_n) / Σ_m K_h(x, x_m),    K_h(x, y) = exp(−‖x − y‖² / (2h²)).

With known observation noise ``σ``, ``h² = 2σ²``: the unknown ``f(z_n)`` is replaced by
``x_n = f(z_n) + ε_n`` and the noise ``ε_n`` is integrated out. The weights depend on the data
alone; they are computed once, before any model is trained.

Sparse form: each row keeps its ``k`` nearest training points (itself included for a training
point). The kernel mass dropped by the truncation is bounded per row, since every dropped point
is at least as far as the ``k``-th neighbour ``d_(k)``:

    dropped ≤ U / (S_k + U),    U = (N − k) K_h(d_(k)),    S_k = Σ_{kept} K_h,

reported as ``truncation_bound_`` (a bound, often loose); :meth:`MAPAPosterior.truncated_mass`
computes the dropped mass exactly in ``O(N²)``. Every sparse fit also measures it exactly on a
seeded sample of ``4·10⁶ / N`` rows (at least 32; ``O(N)`` each) for a grid of ``k``, keeps
the result (``sampled_lost_mass_``, ``neighbors_for_99_``) and warns
(:class:`TruncationWarning`) when a sampled row loses more than 1% of its weight.
``n_neighbors="auto"`` is dense up to 2048 points; beyond, it takes the smallest ``k`` (a power of
two, at least 32) that keeps 99% of every sampled row's weight, within a memory budget of
``N · k ≤ 2²⁵`` kept entries (about 1 GiB during the fit).

Bandwidth from the data alone (neither ``bandwidth`` nor ``sigma`` given): ``h`` maximises the
leave-one-out log-likelihood of the Gaussian kernel density estimate,

    LOO(h) = (1/N) Σ_i log[ (1/(N − 1)) Σ_{j ≠ i} N(x_i; x_j, h² I) ],

with the inner sum over the kept neighbours and, beyond 2048 points, the mean over 2048 rows
sampled by a fixed seed (the same sample gives the median row of the smoothing below). MAPA's
weights are then the responsibilities of the
kernel mixture that best predicts held-out training points from the others, which is what MAPA's
``N(x; x_n, h² I) ≈ N(x; f(z_n), σ² I)`` asks for.

Bandwidth by smoothing (``effective_neighbours=K``): ``h`` at which the median training row of
MAPA (the point itself included) has ``K`` effective neighbours, ``1 / Σ_n MAPA(n | x_i)²``
(``1`` as ``h → 0``, ``N`` as ``h → ∞``; increasing in ``h``), by bisection on ``log h``. A
scale-free statement of how much each decoder target is smoothed, for choosing that amount on
held-out data (``MAPADensity(effective_neighbours=K)`` in scikit-learn's ``GridSearchCV``).
``max_effective_neighbours=K`` keeps the leave-one-out width where the median row has at most
``K`` effective neighbours and lowers it to the width giving ``K`` where it has more.
"""
from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from scipy import sparse
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp
from scipy.spatial import KDTree
from scipy.spatial.distance import cdist

from .likelihood import squared_distances
from .neighbours import NeighbourIndex, check_algorithm
from .validation import as_data, check_positive_int

_MAX_DENSE_ENTRIES = 250_000_000  # about 2 GB of float64 for a dense N × N kernel
_AUTO_DENSE_MAX = 2048  # n_neighbors="auto": dense (exact) up to this many points
_PROBE_ROWS = 2048  # rows whose neighbours choose the bandwidth, beyond which a sample
_AUTO_MIN_NEIGHBORS = 32  # n_neighbors="auto": the fewest neighbours kept beyond that
_AUTO_MAX_ENTRIES = 2**25  # n_neighbors="auto": at most N·k kept entries (about 1 GiB in a fit)
_CHECK_DISTANCES = 4_000_000  # distances spent measuring the truncation on sampled rows
_CHECK_MIN_ROWS = 32
_KEEP = 0.99  # the share of each row's kernel weight a sparse fit should keep


class TruncationWarning(UserWarning):
    """MAPA's sparse weights drop more than 1% of some row's kernel weight."""


def kernel_log_weights(sqdist: np.ndarray, bandwidth: float) -> np.ndarray:
    """Row-normalised ``log K_h`` from squared distances ``(n, m)``: ``log MAPA`` over columns."""
    logits = -sqdist / (2.0 * bandwidth**2)
    return logits - logsumexp(logits, axis=1, keepdims=True)


def _normalised_kernel(sqdist: np.ndarray, bandwidth: float):
    """Row-normalised ``K_h`` from squared distances, computed in place in ``sqdist`` (shifted by
    each row's nearest, so the largest entry is ``exp(0)``); returns it and the shifted row sums."""
    sqdist -= sqdist.min(axis=1, keepdims=True)
    sqdist *= -0.5 / bandwidth**2
    np.exp(sqdist, out=sqdist)
    row_sum = sqdist.sum(axis=1)
    sqdist /= row_sum[:, None]
    return sqdist, row_sum


def loo_log_likelihood(sqdist_others: np.ndarray, bandwidth: float, n_features: int) -> float:
    """Mean leave-one-out log-likelihood of the Gaussian KDE with scale ``bandwidth``.

    ``sqdist_others[i]`` holds squared distances from ``x_i`` to the other training points
    (``inf`` marks an absent entry); there are ``N`` rows.
    """
    return -_NegativeLoo(sqdist_others, n_features)(math.log(bandwidth))


class _NegativeLoo:
    """``t ↦ −LOO(eᵗ)`` with each row's minimum factored out: one ``exp`` pass per call over
    blocks of rows, split over threads (NumPy releases the GIL inside ``exp`` and ``sum``); the
    memory beyond the distances is a few blocks, not another ``N × k`` array."""

    BLOCK_ROWS = 1 << 14

    def __init__(self, sqdist_others: np.ndarray, n_features: int, n_threads: int = 1):
        self.sqdist = sqdist_others
        self.d_min = sqdist_others.min(axis=1)
        n = sqdist_others.shape[0]
        self.blocks = [slice(start, min(n, start + self.BLOCK_ROWS))
                       for start in range(0, n, self.BLOCK_ROWS)]
        threads = min(max(1, n_threads), len(self.blocks))
        self.pool = ThreadPoolExecutor(threads) if threads > 1 else None
        self.n_features = n_features
        self.log_n_others = math.log(n - 1)

    def __call__(self, log_h: float) -> float:
        inv = 0.5 * math.exp(-2.0 * log_h)
        log_sum = np.empty(self.sqdist.shape[0])

        def block_sums(rows):
            kernel = np.subtract(self.sqdist[rows], self.d_min[rows, None])
            kernel *= -inv
            np.exp(kernel, out=kernel)
            log_sum[rows] = np.log(kernel.sum(axis=1))

        list(self.pool.map(block_sums, self.blocks) if self.pool else map(block_sums, self.blocks))
        log_sum -= inv * self.d_min
        d = self.n_features
        log_norm = -d * log_h - 0.5 * d * math.log(2 * math.pi) - self.log_n_others
        return -float(log_sum.mean() + log_norm)


def effective_neighbour_counts(sqdist: np.ndarray, bandwidth: float) -> np.ndarray:
    """``1 / Σ_n w_n²`` per row of MAPA's weights ``w`` from squared distances ``(n, m)`` (each
    row's kept entries; ``inf`` marks an absent one): with ``e_n = exp(−(d_n² − min d²) / 2h²)``,
    ``w_n = e_n / Σ e``, so the count is ``(Σ e)² / Σ e²``, one ``exp`` per entry."""
    e = sqdist - sqdist.min(axis=1, keepdims=True)
    e *= -0.5 / bandwidth**2
    np.exp(e, out=e)
    total = e.sum(axis=1)
    return total * total / np.einsum("ij,ij->i", e, e)


def _bandwidth_for_neighbours(sqdist: np.ndarray, target: float, lo: float, hi: float) -> float:
    """The ``h`` in ``[lo, hi]`` (widened until it brackets) at which the median row has
    ``target`` effective neighbours: bisection on ``log h`` to a relative width of 1e-6."""
    def median_count(log_h):
        return float(np.median(effective_neighbour_counts(sqdist, math.exp(log_h))))

    low, high = math.log(lo), math.log(hi)
    for _ in range(20):  # duplicates can keep a row above one neighbour at any h
        if median_count(low) <= target:
            break
        low -= math.log(10.0)
    for _ in range(20):
        if median_count(high) >= target:
            break
        high += math.log(10.0)
    while high - low > 1e-6:
        mid = 0.5 * (low + high)
        low, high = (mid, high) if median_count(mid) < target else (low, mid)
    return math.exp(0.5 * (low + high))


def _kernel_rows(X: np.ndarray, rows: np.ndarray, shift: np.ndarray, inv: float) -> np.ndarray:
    """``K[i, j] = exp(−inv (‖x_i − x_j‖² − shift_i))`` over every training point ``j``, for
    the training rows ``rows``: shape ``(len(rows), N)``, float64, computed on all cores."""
    data = torch.as_tensor(X)
    sq = squared_distances(data[torch.as_tensor(rows)], data)
    return sq.sub_(torch.as_tensor(shift)[:, None]).mul_(-inv).exp_().numpy()


def _pair_distances(X: np.ndarray, rows: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``‖x_{rows[i]} − x_{idx[i, j]}‖²`` of shape ``idx.shape`` (float64, blocks of 2²²
    entries)."""
    out = np.empty(idx.shape)
    per_block = max(1, (1 << 22) // (idx.shape[1] * X.shape[1]))
    for start in range(0, len(rows), per_block):
        part = slice(start, start + per_block)
        out[part] = ((X[rows[part], None, :] - X[idx[part]]) ** 2).sum(axis=2)
    return out


def leave_one_out_bandwidth(X) -> float:
    """The leave-one-out bandwidth :class:`MAPAPosterior` chooses for ``X`` (neither
    ``bandwidth``, ``sigma`` nor a smoothing given), without computing its weights."""
    X = as_data(X, "X", min_samples=2)
    mapa = MAPAPosterior()
    if X.shape[0] <= _AUTO_DENSE_MAX:
        return mapa.fit(X).bandwidth_
    mapa.X_fit_, mapa.index_ = X, NeighbourIndex(X, mapa.algorithm, mapa.n_jobs)
    mapa._probe(0)
    return mapa.bandwidth_


class MAPAPosterior:
    """MAPA weights over training indices, in scikit-learn style.

    Parameters
    ----------
    n_neighbors : int, None or "auto", default="auto"
        Neighbours kept per row, the point itself included. ``None`` keeps every training point
        (dense, exact; for small ``N``). ``"auto"``: dense up to 2048 points; beyond, the smallest
        power of two (at least 32) that keeps 99% of the kernel weight of every sampled row,
        with at most ``2²⁵`` kept entries in all.
    bandwidth : float, optional
        Kernel scale ``h``. Give at most one of ``bandwidth``, ``sigma`` and
        ``effective_neighbours``.
    sigma : float, optional
        Known observation noise; sets ``h = √2 σ``.
    effective_neighbours : float, optional
        Sets ``h`` so that the median training row has this many effective neighbours
        ``1 / Σ_n w_n²`` (at least 1; 1 is the limit ``h → 0``, ``W = I``). With none of the
        three, ``h`` is chosen by leave-one-out.
    max_effective_neighbours : float, optional
        A ceiling on the leave-one-out width's smoothing: where the median training row would
        have more effective neighbours than this, ``h`` is lowered to the width giving exactly
        this many (``bandwidth_rule_ == "loo_capped"``). Only with the leave-one-out width
        (none of the three above).
    algorithm : {"auto", "kd_tree", "brute", "hnsw"}, default="auto"
        Neighbour search for the sparse form (:mod:`mapa_vae.neighbours`): ``"auto"`` is exact
        (k-d tree up to 8 dimensions, brute force above); ``"hnsw"`` is approximate (FAISS).
    n_jobs : int, default=-1
        Threads for the neighbour search (``-1``: all cores).

    Attributes
    ----------
    weights_ : scipy.sparse.csr_matrix of shape (n_samples, n_samples)
        Row-stochastic: row ``i`` is ``MAPA(· | x_i)``.
    bandwidth_ : float
        The kernel scale used.
    bandwidth_rule_ : {"bandwidth", "sigma", "loo", "loo_capped", "effective_neighbours"}
        Where ``bandwidth_`` came from.
    neighbors_ : ndarray of shape (n_samples, k)
        Column indices kept per row, nearest first (int32 below 2³¹ samples).
    algorithm_ : str
        The neighbour search used (``"dense"`` when every point is kept).
    n_neighbors_ : int
        The neighbours kept per row (``n_samples`` when dense).
    truncation_bound_ : ndarray of shape (n_samples,)
        Upper bound on the weight each row lost to neighbour truncation (zero when dense); a
        bound, often far above the exact loss.
    sampled_rows_, sampled_lost_mass_ : ndarray of shape (n_sampled,)
        Training rows drawn at random (every row up to a few thousand points) and the exact
        weight each lost to the truncation (empty when dense).
    neighbors_for_99_ : int
        The smallest ``k`` of the form ``2^j`` (or ``n_samples``) that keeps 99% of the weight of
        every sampled row.

    Examples
    --------
    >>> import numpy as np
    >>> from mapa_vae import MAPAPosterior
    >>> X = np.random.default_rng(0).normal(size=(200, 2))
    >>> mapa = MAPAPosterior(n_neighbors=16, sigma=0.1).fit(X)
    >>> np.allclose(mapa.weights_.sum(axis=1), 1.0)
    True
    """

    def __init__(self, n_neighbors: int | str | None = "auto", bandwidth: float | None = None,
                 sigma: float | None = None, algorithm: str = "auto", n_jobs: int = -1,
                 effective_neighbours: float | None = None,
                 max_effective_neighbours: float | None = None):
        self.n_neighbors = n_neighbors
        self.bandwidth = bandwidth
        self.sigma = sigma
        self.algorithm = algorithm
        self.n_jobs = n_jobs
        self.effective_neighbours = effective_neighbours
        self.max_effective_neighbours = max_effective_neighbours

    def __repr__(self) -> str:
        return (f"MAPAPosterior(n_neighbors={self.n_neighbors}, bandwidth={self.bandwidth}, "
                f"sigma={self.sigma}, algorithm={self.algorithm!r}, "
                f"effective_neighbours={self.effective_neighbours}, "
                f"max_effective_neighbours={self.max_effective_neighbours})")

    # ---------------------------------------------------------------------------------------
    def fit(self, X, y=None):
        """Compute the weights for training data ``X`` of shape ``(n_samples, n_features)``."""
        X = as_data(X, "X", min_samples=2)
        n = X.shape[0]
        k = self._check_params(n)
        self.X_fit_ = X
        self.n_features_in_ = X.shape[1]
        self.dense_ = k == n
        if self.dense_:
            self.index_, self.algorithm_ = None, "dense"
            sqdist = cdist(X, X, "sqeuclidean")
            idx = np.broadcast_to(np.arange(n), (n, n))
            self.bandwidth_, self.bandwidth_rule_ = self._choose_bandwidth(sqdist)
            self.sampled_rows_, self.sampled_lost_mass_ = np.zeros(0, int), np.zeros(0)
            self.neighbors_for_99_ = n
        else:
            self.index_ = NeighbourIndex(X, self.algorithm, self.n_jobs)
            self.algorithm_ = self.index_.algorithm
            probe = None
            if self.bandwidth is None and self.sigma is None:  # from distances to k neighbours
                probe = self._probe(k)
            else:
                self.bandwidth_, self.bandwidth_rule_ = self._choose_bandwidth(None)
            k = self._measure_truncation(k)
            if probe is not None and probe[0].shape == (n, k):
                sqdist, idx = probe
            else:
                sqdist, idx = self.index_.query(X, k, include_self=True)
        self.n_neighbors_ = k
        self.neighbors_ = np.ascontiguousarray(idx)
        self.weights_, self.truncation_bound_ = self._weights(sqdist, self.neighbors_)
        lost = self.sampled_lost_mass_
        if lost.size and lost.max() > 1 - _KEEP:
            warnings.warn(
                f"MAPA's sparse weights with n_neighbors={k} lose up to {lost.max():.1%} of a "
                f"row's kernel weight (mean {lost.mean():.1%}, measured exactly on "
                f"{lost.size} rows); n_neighbors={self.neighbors_for_99_} would keep 99%",
                TruncationWarning, stacklevel=2)
        return self

    def _probe(self, k: int):
        """Choose the bandwidth from the data (:meth:`_choose_bandwidth`) on the distances of
        probed rows to their nearest ``k`` points (32 for the "auto" ``k = 0``, at least four
        times the effective neighbours asked for): every row up to :data:`_PROBE_ROWS` points,
        a seeded sample of that many rows beyond (the leave-one-out likelihood is a mean over
        rows, the effective neighbours a median). Returns the probe's ``(sqdist, idx)``."""
        X = self.X_fit_
        n = X.shape[0]
        probe_k = k or _AUTO_MIN_NEIGHBORS
        if self.effective_neighbours is not None:  # room for the asked smoothing
            probe_k = max(probe_k, min(n, math.ceil(4 * self.effective_neighbours)))
        rows = None
        if n > _PROBE_ROWS:
            rows = np.sort(np.random.default_rng(1).choice(n, _PROBE_ROWS, replace=False))
        probe = self.index_.query(X if rows is None else X[rows], probe_k, include_self=True,
                                  rows=rows)
        self.bandwidth_, self.bandwidth_rule_ = self._choose_bandwidth(probe[0])
        return probe

    def query(self, X) -> sparse.csr_matrix:
        """Out-of-sample weights ``MAPA(n | x)`` for new rows, shape ``(n_rows, n_samples_fit)``."""
        X = self._check_query(X)
        if self.dense_:
            sqdist = cdist(X, self.X_fit_, "sqeuclidean")
            idx = np.broadcast_to(np.arange(self.X_fit_.shape[0]), sqdist.shape)
        else:
            sqdist, idx = self.index_.query(X, self.neighbors_.shape[1])
        return self._weights(sqdist, idx)[0]

    def log_weights(self, X) -> np.ndarray:
        """Exact, untruncated ``log MAPA(n | x)`` over every training index, shape
        ``(n_rows, n_samples_fit)``. Dense: meant for evaluation on modest sizes."""
        X = self._check_query(X)
        return kernel_log_weights(cdist(X, self.X_fit_, "sqeuclidean"), self.bandwidth_)

    def truncated_mass(self) -> np.ndarray:
        """Exact weight each training row lost to neighbour truncation, shape ``(n_samples,)``.

        Costs ``O(N²)`` time (chunked, ``O(N · chunk)`` memory); zero when dense.
        """
        self._check_fitted()
        n = self.X_fit_.shape[0]
        if self.dense_:
            return np.zeros(n)
        kept = np.empty(n)
        step = max(1, 4_000_000 // n)
        for start in range(0, n, step):
            rows = slice(start, min(n, start + step))
            log_w = kernel_log_weights(cdist(self.X_fit_[rows], self.X_fit_, "sqeuclidean"),
                                       self.bandwidth_)
            kept[rows] = np.exp(np.take_along_axis(log_w, self.neighbors_[rows], axis=1)).sum(1)
        return np.clip(1.0 - kept, 0.0, 1.0)

    # ---------------------------------------------------------------------------------------
    def _check_params(self, n: int) -> int:
        if self.n_neighbors is None or (self.n_neighbors == "auto" and n <= _AUTO_DENSE_MAX):
            k = n
        elif self.n_neighbors == "auto":
            k = 0  # chosen by _measure_truncation
        else:
            k = check_positive_int(self.n_neighbors, "n_neighbors")
            if k < 2:
                raise ValueError(f"n_neighbors must be at least 2 (the point itself and one "
                                 f"other), got {k}")
            if k > n:
                raise ValueError(f"n_neighbors={k} is larger than the number of samples ({n})")
        if k == n and n * n > _MAX_DENSE_ENTRIES:
            raise ValueError(f"dense MAPA for {n} samples needs an {n}x{n} matrix; "
                             f"set n_neighbors (e.g. 32) for the sparse form")
        check_algorithm(self.algorithm)  # also where the dense form will not search
        given = [name for name in ("bandwidth", "sigma", "effective_neighbours")
                 if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of bandwidth, sigma and effective_neighbours, "
                             f"got {' and '.join(given)} (sigma sets h = sqrt(2) sigma)")
        for name in ("bandwidth", "sigma"):
            value = getattr(self, name)
            if value is not None and not (np.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        for name in ("effective_neighbours", "max_effective_neighbours"):
            target = getattr(self, name)
            if target is not None and (isinstance(target, bool) or not np.isfinite(target)
                                       or not 1 <= target < n):
                raise ValueError(f"{name} must be a number from 1 to below the number of "
                                 f"samples ({n}), got {target!r}")
        if self.max_effective_neighbours is not None and given:
            raise ValueError(f"max_effective_neighbours caps the leave-one-out width; give it "
                             f"without {given[0]}")
        return k

    def _measure_truncation(self, k: int) -> int:
        """The exact kernel weight lost by keeping each row's ``k`` nearest points, measured on
        sampled rows for ``k`` and a grid of powers of two; ``k = 0`` asks for the "auto" choice.
        Sets ``sampled_rows_``, ``sampled_lost_mass_`` and ``neighbors_for_99_``; returns ``k``.

        A sampled row's whole kernel mass takes its distances to every point (``O(N)``); the
        weight its nearest ``s`` points keep comes from the neighbour index, queried for the
        sampled rows up to the memory budget's ``k``; only where no neighbourhood that small
        keeps 99% of every sampled row are the sampled rows' weights sorted whole (in float32:
        the larger neighbourhoods' weight to about 1e-7)."""
        X = self.X_fit_
        n = X.shape[0]
        n_rows = int(np.clip(_CHECK_DISTANCES // n, _CHECK_MIN_ROWS, n))
        rows = np.sort(np.random.default_rng(0).choice(n, n_rows, replace=False))
        limit = max(2, min(n - 1, _AUTO_MAX_ENTRIES // n))
        grid = [2**j for j in range(1, n.bit_length()) if 2**j < n]
        inv = 0.5 / self.bandwidth_**2
        reach = max(limit, k)
        near, _ = self.index_.query(X[rows], reach, include_self=True, rows=rows)
        shift = near[:, 0]  # each row's nearest, as in the weights
        kernel = _kernel_rows(X, rows, shift, inv)
        total = kernel.sum(axis=1)
        kept = np.cumsum(np.exp(-inv * (near - shift[:, None])), axis=1) / total[:, None]
        sizes = sorted({s for s in grid if s <= reach} | {limit, k} - {0})
        lost = dict(zip(sizes, np.clip(1.0 - kept[:, [s - 1 for s in sizes]], 0.0, 1.0).T))
        enough = [s for s in grid if s in lost and lost[s].max() <= 1 - _KEEP]
        if not enough:  # the larger neighbourhoods, from whole sorted rows
            far = [s for s in grid if s > reach]
            largest = np.sort(kernel.astype(np.float32), axis=1)[:, ::-1]
            parts = np.add.reduceat(largest, [0] + far, axis=1, dtype=np.float64)[:, :-1]
            kept = np.cumsum(parts, axis=1)
            lost.update(zip(far, np.clip(1.0 - kept / total[:, None], 0.0, 1.0).T))
            enough = [s for s in far if lost[s].max() <= 1 - _KEEP]
        self.neighbors_for_99_ = enough[0] if enough else n
        if not k:  # "auto": the fewest that keep 99%, within the memory budget
            k = min(max(self.neighbors_for_99_, _AUTO_MIN_NEIGHBORS), limit)
        self.sampled_rows_ = rows
        self.sampled_lost_mass_ = lost[k]
        return k

    def _choose_bandwidth(self, sqdist: np.ndarray):
        if self.bandwidth is not None:
            return float(self.bandwidth), "bandwidth"
        if self.sigma is not None:
            return math.sqrt(2.0) * float(self.sigma), "sigma"
        n = sqdist.shape[0]
        if sqdist.shape[1] == n:
            others = sqdist[~np.eye(n, dtype=bool)].reshape(n, n - 1)
            nearest = others.min(axis=1)
        else:
            # rows are sorted and the point itself is at distance 0, so dropping the first
            # column drops the point (or a duplicate of it: the same distances either way)
            others = sqdist[:, 1:]
            nearest = others[:, 0]
        positive = nearest[nearest > 0]
        if positive.size == 0:
            raise ValueError("cannot choose a bandwidth from the data: every point coincides "
                             "with another; pass bandwidth or sigma")
        lo = 0.01 * float(np.sqrt(np.median(positive)))
        hi = 2.0 * float(np.sqrt(others.max()))
        if self.effective_neighbours is not None:
            return _bandwidth_for_neighbours(sqdist, float(self.effective_neighbours),
                                             lo, hi), "effective_neighbours"
        threads = os.cpu_count() if self.n_jobs == -1 else max(1, self.n_jobs)
        threads = min(threads, max(1, n // 20_000))  # threads only pay off on large inputs
        objective = _NegativeLoo(others, self.X_fit_.shape[1], threads)
        result = minimize_scalar(objective, bounds=(math.log(lo), math.log(hi)), method="bounded",
                                 options={"xatol": 1e-4})
        h, cap = float(math.exp(result.x)), self.max_effective_neighbours
        if cap is not None and np.median(effective_neighbour_counts(sqdist, h)) > cap:
            return _bandwidth_for_neighbours(sqdist, float(cap), lo, h), "loo_capped"
        return h, "loo"

    def width_for(self, effective_neighbours: float) -> float:
        """The width ``h`` at which the median probed row of a sparse fit has
        ``effective_neighbours``, as a fit given them would choose it, from this fit's
        neighbours (no second search)."""
        self._check_sparse()
        X, n = self.X_fit_, self.X_fit_.shape[0]
        rows = np.arange(n) if n <= _PROBE_ROWS else np.sort(
            np.random.default_rng(1).choice(n, _PROBE_ROWS, replace=False))
        reach = min(self.n_neighbors_, max(_AUTO_MIN_NEIGHBORS,
                                           math.ceil(4 * effective_neighbours)))
        probe = _pair_distances(X, rows, self.neighbors_[rows, :reach])
        nearest = np.sort(probe, axis=1)[:, 1]  # the nearest other point (or a duplicate)
        lo = 0.01 * float(np.sqrt(np.median(nearest[nearest > 0])))
        hi = 2.0 * float(np.sqrt(probe.max()))
        return _bandwidth_for_neighbours(probe, float(effective_neighbours), lo, hi)

    def weights_at(self, bandwidth: float) -> sparse.csr_matrix:
        """A sparse fit's row-stochastic weights at another width, over each row's kept
        neighbours (their distances recomputed, ``O(N k D)``)."""
        self._check_sparse()
        idx = self.neighbors_
        sqdist = _pair_distances(self.X_fit_, np.arange(idx.shape[0]), idx)
        return self._weights(sqdist, idx, float(bandwidth))[0]

    def locality_order(self) -> np.ndarray:
        """The training indices in the leaf order of a k-d tree over them: points near each
        other come near each other (for cache-friendly sums over neighbours)."""
        self._check_fitted()
        if self.index_ is not None and self.index_.algorithm == "kd_tree":
            return self.index_.tree.indices
        return KDTree(self.X_fit_, leafsize=16).indices

    def _check_sparse(self) -> None:
        self._check_fitted()
        if self.dense_:
            raise ValueError("this MAPAPosterior keeps every point (dense); fit another at the "
                             "width asked for")

    def _weights(self, sqdist: np.ndarray, idx: np.ndarray, bandwidth: float | None = None):
        """CSR weights from each row's kept squared distances at ``bandwidth`` (default
        ``bandwidth_``), and the truncation bound.

        ``sqdist`` is overwritten (it becomes the weights' data), so that a fit holds one
        ``N × k`` float array and one index array, not several.
        """
        n_rows, k = sqdist.shape
        n_fit = self.X_fit_.shape[0]
        bandwidth = self.bandwidth_ if bandwidth is None else bandwidth
        inv = 0.5 / bandwidth**2
        spread = sqdist.max(axis=1) - sqdist.min(axis=1)  # farthest kept, relative to nearest
        kernel, row_sum = _normalised_kernel(sqdist, bandwidth)
        indices = np.ascontiguousarray(idx).ravel()
        indptr = np.arange(0, n_rows * k + 1, k, dtype=indices.dtype)
        weights = sparse.csr_matrix((kernel.ravel(), indices, indptr), shape=(n_rows, n_fit))
        if k == n_fit:
            return weights, np.zeros(n_rows)
        # log(U / S_k) with U = (N − k) K(d_(k)): the farthest kept weight times N − k
        log_u = math.log(n_fit - k) - inv * spread - np.log(row_sum)
        return weights, np.exp(log_u - np.logaddexp(0.0, log_u))

    def _check_fitted(self):
        if not hasattr(self, "weights_"):
            raise ValueError("this MAPAPosterior is not fitted yet; call fit(X) first")

    def _check_query(self, X) -> np.ndarray:
        self._check_fitted()
        return as_data(X, "X", n_features=self.n_features_in_)
