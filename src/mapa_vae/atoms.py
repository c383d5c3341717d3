"""Atoms and their attachment to training indices (the crux of training with MAPA).

The atoms are a fixed stratified sample of the prior, so the empiricalized model's latent codes
stay a faithful sample of ``p(z)``; what is learned is *which atom sits at which index*, a
permutation ``π`` (index ``n`` carries atom ``a_{π(n)}``). Three moves act on it:

1. **Initial attachment, from data only**, on the MAPA-smoothed data ``Y = W X`` or the MAPA
   graph ``W`` (:func:`candidate_attachments`). ``d_z = 1``, an order along the data:
   ``coarse`` (:func:`coarse_tour`: a short path through 48 k-means centres, ``O(N K)``), the
   Fiedler order of ``W`` (open curves) and the angle of its first two Laplacian eigenvectors
   (loops), matched by rank to the sorted atoms. ``d_z ≥ 2``: Isomap coordinates of ``Y``
   (unrolls sheets) and a spectral embedding of ``W``, each coordinate through its empirical CDF
   and the prior's inverse CDF, then :func:`transport`-ed to the atoms. The estimator chooses
   among the candidates by the bound after short pilot runs (:class:`~mapa_vae.MAPADensity`),
   or by :func:`roughness` without them.
2. **Relaxed positions.** Each index has a continuous position ``p_n``; the decoder always sees
   the attached atom, and the bound's gradient with respect to that code is passed straight
   through to ``p_n``. Every ``project_every`` steps the positions are projected onto a
   permutation of the atoms (1-D: a sort, ``O(N log N)``; d-D: :func:`nearest_exchange`, an
   exact assignment among the few positions that crossed to another atom) and reset to their
   atoms. Atoms never move, so their multiset is invariant.
3. **Re-attachment**, a coordinate-ascent step of the MAPA bound over ``π``: decode every atom
   once (``N`` network passes), then find the assignment of least cost
   ``C[n, m] = m_n ‖x̄_n − f(a_m)‖²`` (``m_n = Σ_i W_in``, ``x̄_n = Σ_i W_in x_i / m_n``), the part
   of ``−L`` that depends on which atom sits at ``n``: exact over all permutations up to 2048
   points (``O(N³)``); beyond, local: blocks of at most 256 indices whose atoms are neighbours
   exchange their atoms by exact assignment, the block boundaries moving from call to call
   (``O(N · 256²)``; :meth:`Attachment.reattach`). A local move cannot undo a fold that spans
   far-apart atoms; at that size the initial attachment has to get the global order right.

:func:`match` is exact linear assignment up to 2048 points and recursive bisection with exact
leaves beyond (``O(N log² N)``); the initial attachments' :func:`transport` bisects beyond 256.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import sparse
from scipy.ndimage import uniform_filter1d
from scipy.optimize import linear_sum_assignment
from scipy.spatial import KDTree
from scipy.spatial.distance import cdist
from scipy.stats import qmc, rankdata
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.manifold import Isomap, SpectralEmbedding
from torch import nn

from .priors import Prior


def stratified_atoms(prior: Prior, n: int, random_state=None) -> np.ndarray:
    """``n`` atoms of ``prior``, shape ``(n, d)``: 1-D quantiles ``F⁻¹((m − ½)/n)``; in d-D a
    scrambled Halton sequence pushed through the inverse CDF."""
    if prior.latent_dim == 1:
        u = (np.arange(n) + 0.5)[:, None] / n
    else:
        u = qmc.Halton(prior.latent_dim, scramble=True, seed=random_state).random(n)
        u = np.clip(u, 0.5 / n, 1 - 0.5 / n)
    return prior.icdf(torch.from_numpy(u)).numpy()


def greedy_tour(Y: np.ndarray) -> np.ndarray:
    """A greedy nearest-neighbour tour through the rows of ``Y`` from an extreme point, cut at its
    longest edge (the closing edge included)."""
    n = Y.shape[0]
    tree = KDTree(Y)
    a = int(np.argmax(((Y - Y.mean(axis=0)) ** 2).sum(axis=1)))
    current = int(np.argmax(((Y - Y[a]) ** 2).sum(axis=1)))
    visited = np.zeros(n, dtype=bool)
    order = np.empty(n, dtype=np.int64)
    for step in range(n):
        order[step] = current
        visited[current] = True
        if step == n - 1:
            break
        k = 8
        while True:
            _, idx = tree.query(Y[current], k=min(k, n))
            idx = np.atleast_1d(idx)
            free = idx[~visited[idx]]
            if free.size:
                current = int(free[0])
                break
            k *= 4  # an unvisited point exists, so k reaches it by k = n at the latest
    return cut_at_longest_edge(Y, order)


def cut_at_longest_edge(Y: np.ndarray, cycle: np.ndarray) -> np.ndarray:
    """Open the closed tour ``cycle`` at its longest edge."""
    closed = np.append(cycle, cycle[0])
    edges = ((Y[closed[1:]] - Y[closed[:-1]]) ** 2).sum(axis=1)
    return np.roll(cycle, -(int(np.argmax(edges)) + 1))


def short_path(C: np.ndarray) -> np.ndarray:
    """A short open path through the rows of ``C`` (meant for at most a few hundred points).

    The path is a closed tour through ``C`` and a dummy point at distance zero from all; from a
    greedy start the best 2-opt move (reverse a stretch) or Or-opt move (move a stretch of 1–3
    points elsewhere, either way round) is applied until none shortens it. Each round scores
    every move at once, ``O(K²)``; the result is deterministic.
    """
    k = C.shape[0]
    if k <= 3:
        return np.arange(k)
    D = np.zeros((k + 1, k + 1))
    D[:k, :k] = cdist(C, C)
    tour = np.append(greedy_tour(C), k)
    m = k + 1
    upper = np.triu(np.ones((m, m), dtype=bool), 2)
    upper[0, m - 1] = False  # the edges (0, 1) and (m − 1, 0) are adjacent
    while True:
        a, b = tour, np.roll(tour, -1)
        edge = D[a, b]
        # 2-opt: edges (a_i, b_i), (a_j, b_j) → (a_i, a_j), (b_i, b_j), i < j
        two = D[np.ix_(a, a)] + D[np.ix_(b, b)] - edge[:, None] - edge[None, :]
        two = np.where(upper, two, np.inf)
        i2, j2 = np.unravel_index(np.argmin(two), two.shape)
        best = (two[i2, j2], "2opt", i2, j2, 0, False)
        # Or-opt: the stretch tour[i : i + L] goes between tour[j] and tour[j + 1]
        for length in (1, 2, 3):
            first, last = tour, np.roll(tour, -(length - 1))
            before, after = np.roll(tour, 1), np.roll(tour, -length)
            removed = D[before, first] + D[last, after] - D[before, after]
            for reverse in (False, True):
                head, tail = (last, first) if reverse else (first, last)
                added = D[np.ix_(head, a)].T + D[np.ix_(tail, b)].T - edge[:, None]  # [j, i]
                gain = added.T - removed[:, None]  # [i, j]
                offset = (np.arange(m)[None, :] - np.arange(m)[:, None]) % m
                gain[(offset < length) | (offset == m - 1)] = np.inf  # j inside or just before
                i, j = np.unravel_index(np.argmin(gain), gain.shape)
                if gain[i, j] < best[0]:
                    best = (gain[i, j], "oropt", i, j, length, reverse)
        delta, kind, i, j, length, reverse = best
        if not delta < -1e-12 * (1.0 + D.max()):
            break
        if kind == "2opt":
            tour[i + 1:j + 1] = tour[i + 1:j + 1][::-1].copy()
        else:
            stretch = tour[(i + np.arange(length)) % m]
            target = tour[j]
            rest = np.delete(tour, (i + np.arange(length)) % m)
            at = int(np.flatnonzero(rest == target)[0]) + 1
            tour = np.insert(rest, at, stretch[::-1] if reverse else stretch)
    cut = int(np.flatnonzero(tour == k)[0])
    return np.roll(tour, -(cut + 1))[:k]


def coarse_tour(Y: np.ndarray, n_centres: int = 48, random_state=None) -> np.ndarray:
    """Order the rows of ``Y`` along the data through a coarse skeleton.

    ``K`` k-means centres of ``Y`` lie along the curve with gaps wider than the noise band, so a
    short path through them (:func:`short_path`) follows the curve without the zigzags and
    stragglers of a tour through every point. Each point then takes its centre's place on the
    path, and within a centre the order of its projection on the path's local direction.
    Cost: k-means ``O(N K)`` per iteration, then ``O(K²)`` per path round.
    """
    n = Y.shape[0]
    k = min(n_centres, n)
    km = KMeans(n_clusters=k, n_init=1, random_state=random_state).fit(Y)
    centres, labels = km.cluster_centers_, km.labels_
    path = short_path(centres)
    place = np.empty(k)
    place[path] = np.arange(k)
    direction = np.gradient(centres[path], axis=0) if k > 1 else np.zeros_like(centres)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True) + 1e-300
    along = np.empty_like(direction)
    along[path] = direction
    offset = ((Y - centres[labels]) * along[labels]).sum(axis=1)
    return np.lexsort((offset, place[labels]))


def roughness(Y: np.ndarray, order: np.ndarray) -> float:
    """How far the rows of ``Y`` stray from their running mean along ``order``: the mean squared
    distance of each row from the average of the ``w = max(3, N/32)`` rows around it.

    A decoder is a smooth function of the atom, hence of the rank along the order; an order that
    folds back or jumps mixes far-apart points into one window and scores high, while a path that
    zigzags across the noise band (short, but no worse for a smooth decoder) does not.
    """
    window = max(3, Y.shape[0] // 32)
    path = Y[order]
    smooth = uniform_filter1d(path, size=window, axis=0, mode="nearest")
    return float(((path - smooth) ** 2).sum(axis=1).mean())


def isomap_coordinates(Y: np.ndarray, n_components: int, n_neighbors: int = 10) -> np.ndarray:
    """Isomap coordinates of the rows of ``Y`` (scikit-learn), shape ``(N, n_components)``."""
    k = min(n_neighbors, Y.shape[0] - 1)
    return Isomap(n_neighbors=k, n_components=n_components).fit_transform(Y)


#: Beyond this many points, the spectral embeddings keep each row's SPECTRAL_NEIGHBORS largest
#: MAPA weights: a sparse eigensolver factorises the graph, and a wide kernel's rows hold
#: hundreds of entries (the fill-in made a 10⁵-point factorisation run for tens of minutes).
SPECTRAL_DENSE_MAX = 2048
SPECTRAL_NEIGHBORS = 32


def embedding_graph(weights: sparse.spmatrix) -> sparse.csr_matrix:
    """The MAPA graph the spectral embeddings use: ``weights`` itself up to
    :data:`SPECTRAL_DENSE_MAX` points or :data:`SPECTRAL_NEIGHBORS` entries a row, else each
    row's largest :data:`SPECTRAL_NEIGHBORS` weights."""
    W = sparse.csr_matrix(weights)
    n = W.shape[0]
    per_row = np.diff(W.indptr)
    if n <= SPECTRAL_DENSE_MAX or per_row.max() <= SPECTRAL_NEIGHBORS:
        return W
    rows, cols, vals = [], [], []
    for i in range(n):
        lo, hi = W.indptr[i], W.indptr[i + 1]
        top = np.argpartition(-W.data[lo:hi], min(SPECTRAL_NEIGHBORS, hi - lo) - 1)
        top = top[:SPECTRAL_NEIGHBORS]
        rows.append(np.full(top.size, i))
        cols.append(W.indices[lo:hi][top])
        vals.append(W.data[lo:hi][top])
    return sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                             shape=W.shape)


#: Beyond this many points the spectral embeddings take LOBPCG, which needs no factorisation
#: of the graph: ARPACK's shift-invert ran for over 5 minutes on 8192 Fashion-MNIST images
#: (LOBPCG: 1.2 s; 1.1 s on 60 000).
SPECTRAL_ARPACK_MAX = 4096


def spectral_coordinates(weights: sparse.spmatrix, n_components: int,
                         random_state=None) -> np.ndarray:
    """A spectral embedding of the symmetrised MAPA graph (:func:`embedding_graph`), shape
    ``(N, n_components)``: ARPACK up to :data:`SPECTRAL_ARPACK_MAX` points, LOBPCG beyond."""
    weights = embedding_graph(weights)
    affinity = 0.5 * (weights + weights.T)
    solver = None if weights.shape[0] <= SPECTRAL_ARPACK_MAX else "lobpcg"
    embedding = SpectralEmbedding(n_components=n_components, affinity="precomputed",
                                  eigen_solver=solver, random_state=random_state)
    return embedding.fit_transform(affinity)


#: The relaxed positions' learning rate as a share of the decoder's (``code_learning_rate``).
POSITION_RATE = 0.1

#: Up to this many points, matching is exact (linear assignment, ``O(N³)``); beyond, bisection.
EXACT_MATCH_MAX = 2048
_LEAF = 256  # bisection stops at blocks of at most this many points, matched exactly
REATTACH_BLOCK = 256  # indices per group in a local re-attachment beyond EXACT_MATCH_MAX


def match(points: np.ndarray, atoms: np.ndarray, exact_max: int | None = None) -> np.ndarray:
    """A one-to-one matching of the rows of ``points`` to the rows of ``atoms`` (same shape) with
    a small total squared distance: ``perm`` with ``points[n]`` matched to ``atoms[perm[n]]``.

    Exact (SciPy's linear assignment) up to ``exact_max`` rows (default
    :data:`EXACT_MATCH_MAX`). Beyond, recursive bisection: both sets are split at the same rank
    along the coordinate where the points spread most, the halves are matched recursively, and
    blocks of at most 256 are matched exactly; ``O(N log² N)``, a transport that keeps each
    half's points with the same half's atoms.
    """
    n = points.shape[0]
    if n <= (EXACT_MATCH_MAX if exact_max is None else exact_max):
        return linear_sum_assignment(cdist(points, atoms, "sqeuclidean"))[1].astype(np.int64)
    perm = np.empty(n, dtype=np.int64)
    stack = [(np.arange(n), np.arange(n))]
    while stack:
        ip, ia = stack.pop()
        if len(ip) <= _LEAF:
            cols = linear_sum_assignment(cdist(points[ip], atoms[ia], "sqeuclidean"))[1]
            perm[ip] = ia[cols]
            continue
        axis = int(np.argmax(np.ptp(points[ip], axis=0)))
        ip = ip[np.argsort(points[ip, axis], kind="stable")]
        ia = ia[np.argsort(atoms[ia, axis], kind="stable")]
        half = len(ip) // 2
        stack += [(ip[:half], ia[:half]), (ip[half:], ia[half:])]
    return perm


def nearest_exchange(positions: np.ndarray, atoms: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """The projection of positions onto a permutation of the atoms, starting from ``perm``
    (index ``n`` holds ``atoms[perm[n]]``): the indices whose position lies nearer another atom
    than their own, with the holders of the atoms they lie nearest, closed under that relation,
    exchange their atoms by :func:`match` (exact up to 2048 of them); every other index keeps its
    atom, which is the one nearest its position. The total squared distance never rises above
    ``perm``'s, and between two projections only a few positions cross to another atom, so the
    exchange is small. It is not the exact assignment in general: an index outside the set could
    give up its nearest atom in a longer chain of moves."""
    _, nearest = KDTree(atoms).query(positions)
    holder = np.empty_like(perm)
    holder[perm] = np.arange(len(perm))
    moving = nearest != perm
    while True:
        wanted = holder[nearest[moving]]
        new = wanted[~moving[wanted]]
        if new.size == 0:
            break
        moving[new] = True
    rows = np.flatnonzero(moving)
    out = perm.copy()
    if rows.size:
        held = perm[rows]
        out[rows] = held[match(positions[rows], atoms[held])]
    return out


def transport(points: np.ndarray, atoms: np.ndarray, prior: Prior) -> np.ndarray:
    """Attach each row of ``points`` to a distinct atom, keeping their arrangement: returns
    ``perm`` with row ``n`` attached to ``atoms[perm[n]]``.

    1-D: rank matching. d-D: each coordinate through its empirical CDF and the prior's inverse
    CDF, then :func:`match` to the atoms by recursive bisection beyond 256 points: the
    coordinates only carry an arrangement, which the bisection keeps at ``O(N log² N)``, while
    an exact assignment of these far-from-the-atoms points costs seconds at a few thousand.
    """
    n = points.shape[0]
    if atoms.shape[1] == 1:
        perm = np.empty(n, dtype=np.int64)
        perm[np.argsort(points[:, 0], kind="stable")] = np.argsort(atoms[:, 0], kind="stable")
        return perm
    u = (rankdata(points, axis=0) - 0.5) / n
    mapped = prior.icdf(torch.from_numpy(u)).numpy()
    return match(mapped, atoms, exact_max=_LEAF)


#: The data-only attachments proposed for each latent dimension (1, or 2 and above).
CANDIDATES = {1: ("coarse", "fiedler", "angle"), 2: ("isomap", "spectral")}
METHODS = ("auto", "seriation") + CANDIDATES[1] + ("greedy",) + CANDIDATES[2] + ("pca", "random")


def candidate_coordinates(method: str, X: np.ndarray, weights: sparse.spmatrix, d: int,
                          random_state=None) -> np.ndarray:
    """Coordinates of shape ``(N, d)`` whose arrangement an attachment ``method`` takes over,
    computed on the MAPA-smoothed data ``Y = W X`` or the MAPA graph ``W``.

    1-D orders (positions along the data): ``coarse`` (:func:`coarse_tour`), ``greedy``
    (:func:`greedy_tour`), ``fiedler`` (first non-trivial Laplacian eigenvector: open curves),
    ``angle`` (angle of the first two, cut at the longest edge: loops). ``d``-D: ``isomap``
    (geodesic distances; unrolls sheets), ``spectral`` (Laplacian eigenvectors), ``pca`` (the
    first ``d`` principal components of ``Y``; linear, the cheapest).
    """
    n = X.shape[0]
    Y = np.asarray(weights @ X)
    if method in CANDIDATES[1] + ("greedy",) and d != 1:
        raise ValueError(f"{method!r} orders points along a curve; it needs latent_dim 1, not {d}")
    if method == "isomap":
        return isomap_coordinates(Y, d)
    if method == "spectral":
        return spectral_coordinates(weights, d, random_state)
    if method == "pca":
        if min(Y.shape) < d:
            raise ValueError(f"'pca' takes {d} principal components (latent_dim) of data with "
                             f"{Y.shape[1]} dimensions (features) and {n} points; it needs at "
                             f"least {d} of each")
        return PCA(n_components=d, random_state=random_state).fit_transform(Y)
    if method == "coarse":
        order = coarse_tour(Y, random_state=random_state)
    elif method == "greedy":
        order = greedy_tour(Y)
    else:
        E = spectral_coordinates(weights, 2, random_state)
        if method == "fiedler":
            order = np.argsort(E[:, 0], kind="stable")
        else:
            order = cut_at_longest_edge(Y, np.argsort(np.arctan2(E[:, 1], E[:, 0]),
                                                      kind="stable"))
    position = np.empty((n, 1))
    position[order, 0] = np.arange(n)
    return position


#: Isomap is proposed up to this many points: its geodesic distances are ``N × N`` (4.3 s at
#: 4096 images, 21 s at 8192, on 2 cores).
ISOMAP_MAX = 4096


def candidate_attachments(X: np.ndarray, weights: sparse.spmatrix, atoms: np.ndarray,
                          prior: Prior, random_state=None,
                          names: tuple | None = None) -> dict[str, np.ndarray]:
    """Every data-only attachment proposed for the latent dimension of ``atoms`` (or those
    ``names``), by name: above one latent dimension, Isomap up to :data:`ISOMAP_MAX` points.

    In 1-D, a candidate that orders the points as an earlier one does, or in reverse (the same
    model up to the prior's symmetry), is left out: |rank correlation| ≥ 0.999.
    """
    d = atoms.shape[1]
    if names is None:
        names = CANDIDATES[1] if d == 1 else tuple(
            name for name in CANDIDATES[2] if name != "isomap" or X.shape[0] <= ISOMAP_MAX)
    if X.shape[0] < 4:
        names = ("greedy",) if d == 1 else ("random",)  # the spectral methods need more points
    if names == ("random",):
        return {"random": initial_attachment(X, weights, atoms, prior, "random", random_state)}
    atom_rank = np.argsort(np.argsort(atoms[:, 0], kind="stable"), kind="stable")
    perms: dict[str, np.ndarray] = {}
    for name in names:
        perm = transport(candidate_coordinates(name, X, weights, d, random_state), atoms, prior)
        if d == 1 and any(abs(np.corrcoef(atom_rank[perm], atom_rank[other])[0, 1]) >= 0.999
                          for other in perms.values()):
            continue
        perms[name] = perm
    return perms


def least_rough(perms: dict, Y: np.ndarray, atoms: np.ndarray) -> np.ndarray:
    """The attachment among ``perms`` whose order of the atoms runs least roughly through ``Y``
    (:func:`roughness`); 1-D atoms are ordered by value, higher-dimensional by first coordinate."""
    atom_rank = np.argsort(np.argsort(atoms[:, 0], kind="stable"), kind="stable")
    return min(perms.values(), key=lambda perm: roughness(Y, np.argsort(atom_rank[perm])))


def initial_attachment(X: np.ndarray, weights: sparse.spmatrix, atoms: np.ndarray, prior: Prior,
                       method: str = "seriation", random_state=None) -> np.ndarray:
    """A data-only attachment ``perm`` (index ``n`` carries ``atoms[perm[n]]``).

    ``method``: one of :data:`CANDIDATES`, ``"random"``, or ``"seriation"``: for ``d_z = 1`` the
    least rough (:func:`roughness` of ``W X``) of the 1-D candidates, above that Isomap.
    (``"auto"``, choosing among the candidates by the bound after a short training, is the
    estimator's, :class:`~mapa_vae.MAPADensity`.)
    """
    d = atoms.shape[1]
    if method not in METHODS or method == "auto":
        raise ValueError(f"unknown attachment method {method!r}; choose one of "
                         f"{', '.join(METHODS[1:])} (\"auto\" is MAPADensity's choice by pilot "
                         f"runs)")
    if method == "random":
        return np.random.default_rng(random_state).permutation(X.shape[0]).astype(np.int64)
    if method == "seriation":
        if d > 1:
            method = "isomap" if X.shape[0] <= ISOMAP_MAX else "spectral"
        else:
            return least_rough(candidate_attachments(X, weights, atoms, prior, random_state),
                               np.asarray(weights @ X), atoms)
    return transport(candidate_coordinates(method, X, weights, d, random_state), atoms, prior)


def local_blocks(points: np.ndarray, size: int, turn: int) -> list[np.ndarray]:
    """Groups of at most ``size`` row indices of ``points`` that lie close together. 1-D:
    consecutive runs of the sorted points, shifted by half a group on odd turns. Above: the
    leaves of a recursive bisection (split at the median of the widest coordinate) after a
    rotation drawn from ``turn``. Successive turns put the group boundaries elsewhere."""
    n, d = points.shape
    if d == 1:
        order = np.argsort(points[:, 0], kind="stable")
        start = size // 2 if turn % 2 else size
        return np.split(order, np.arange(start, n, size))
    rotation = np.linalg.qr(np.random.default_rng(turn).normal(size=(d, d)))[0]
    x = points @ rotation
    blocks, stack = [], [np.arange(n)]
    while stack:
        rows = stack.pop()
        if len(rows) <= size:
            blocks.append(rows)
            continue
        axis = int(np.argmax(np.ptp(x[rows], axis=0)))
        rows = rows[np.argsort(x[rows, axis], kind="stable")]
        stack += [rows[:len(rows) // 2], rows[len(rows) // 2:]]
    return blocks


class Attachment(nn.Module):
    """Fixed atoms, the permutation attaching them to indices, and relaxed positions.

    ``codes(idx)`` returns the attached atoms with the gradient passed straight through to the
    positions; :meth:`project` and :meth:`reattach` change only the permutation. ``dtype``: the
    floating type the atoms and positions are kept in (the training's).
    """

    def __init__(self, atoms: np.ndarray, perm: np.ndarray, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.register_buffer("atoms", torch.as_tensor(atoms, dtype=dtype))
        self.register_buffer("perm", torch.as_tensor(perm, dtype=torch.long))
        self.positions = nn.Parameter(self.atoms[self.perm].clone())
        self._reattach_calls = 0

    def get_extra_state(self) -> dict:
        return {"reattach_calls": self._reattach_calls}

    def set_extra_state(self, state: dict) -> None:
        self._reattach_calls = int(state["reattach_calls"])

    def attached(self) -> torch.Tensor:
        """The atom at every index, shape ``(N, d)``."""
        return self.atoms[self.perm]

    def codes(self, idx: torch.Tensor) -> torch.Tensor:
        """Attached atoms at ``idx``; their gradient flows to the relaxed positions."""
        p = self.positions[idx]
        return self.atoms[self.perm[idx]] + (p - p.detach())

    @torch.no_grad()
    def _set(self, perm: np.ndarray) -> int:
        new = torch.as_tensor(perm, dtype=torch.long, device=self.perm.device)
        changed = int((new != self.perm).sum())
        self.perm.copy_(new)
        self.positions.copy_(self.atoms[self.perm])
        return changed

    @torch.no_grad()
    def project(self) -> int:
        """Attach to each index the atom nearest its position (as a permutation: 1-D a sort,
        above :func:`nearest_exchange`); returns how many indices changed atom. Positions are
        reset to their atoms."""
        positions = self.positions.detach().cpu().double().numpy()
        atoms = self.atoms.cpu().double().numpy()
        if atoms.shape[1] == 1:
            perm = np.empty(len(positions), dtype=np.int64)
            order = np.lexsort((self.perm.cpu().numpy(), positions[:, 0]))  # ties keep the old
            perm[order] = np.argsort(atoms[:, 0], kind="stable")
        else:
            perm = nearest_exchange(positions, atoms, self.perm.cpu().numpy())
        return self._set(perm)

    @torch.no_grad()
    def reattach(self, cost, block: int = REATTACH_BLOCK) -> int:
        """Re-attach by least total ``cost[n, m]`` (index ``n`` takes atom ``m``); returns how
        many indices changed atom. ``cost`` is an ``(N, N)`` array or a function
        ``(rows, atoms) → cost block``.

        Up to :data:`EXACT_MATCH_MAX` indices: exact over all permutations. Beyond: the indices
        are split into groups of at most ``block`` whose current atoms are neighbours
        (:func:`local_blocks`; the boundaries move at every call) and each group exchanges its
        own atoms by exact assignment, so the multiset of atoms is kept and the total cost never
        rises.
        """
        lookup = cost if callable(cost) else (lambda rows, cols: cost[np.ix_(rows, cols)])
        n = self.perm.numel()
        if n <= EXACT_MATCH_MAX:
            return self._set(linear_sum_assignment(lookup(np.arange(n), np.arange(n)))[1])
        current = self.perm.cpu().numpy()
        perm = current.copy()
        self._reattach_calls += 1
        for rows in local_blocks(self.attached().double().cpu().numpy(), block,
                                 self._reattach_calls):
            held = current[rows]
            perm[rows] = held[linear_sum_assignment(lookup(rows, held))[1]]
        return self._set(perm)
