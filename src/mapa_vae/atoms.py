"""Atoms and their attachment to training indices (the crux of training with MAPA).

The atoms are a fixed stratified sample of the prior, so the empiricalized model's latent codes
stay a faithful sample of ``p(z)``; what is learned is *which atom sits at which index*, a
permutation ``π`` (index ``n`` carries atom ``a_{π(n)}``). Three moves act on it:

1. **Initial attachment, from data only**, on the MAPA-smoothed data ``Y = W X``.
   ``d_z = 1``: *seriation*. Three orderings are proposed, a greedy nearest-neighbour tour cut at
   its longest edge (k-d tree, ``O(N k log N)`` typically), the order of the first non-trivial
   Laplacian eigenvector of the symmetrised MAPA graph (right for open curves), and the angle
   of the first two (right for loops, cut at the longest edge); the one with the shortest path
   through ``Y`` wins, and its ranks are matched to the sorted atoms. ``d_z ≥ 2``: an Isomap
   embedding of ``Y`` (geodesic distances on a 10-neighbour graph; it unrolls elongated sheets,
   where the second Laplacian eigenvector is a harmonic of the long axis) or a spectral embedding
   of the MAPA graph, each coordinate mapped through its empirical CDF and the prior's inverse
   CDF, then transported onto the atoms by linear assignment (``O(N³)``).
2. **Relaxed positions.** Each index has a continuous position ``p_n``; the decoder always sees
   the attached atom, and the bound's gradient with respect to that code is passed straight
   through to ``p_n``. Every ``project_every`` steps the positions are projected onto the nearest
   permutation of the atoms (1-D: sort, ``O(N log N)``; d-D: linear assignment, ``O(N³)``) and
   reset to their atoms. Atoms never move, so their multiset is invariant.
3. **Re-attachment**, an exact coordinate-ascent step of the MAPA bound over ``π``: decode every
   atom once (``N`` network passes), then solve the linear assignment with cost
   ``C[n, m] = m_n ‖x̄_n − f(a_m)‖²`` (``m_n = Σ_i W_in``, ``x̄_n = Σ_i W_in x_i / m_n``), the part
   of ``−L`` that depends on which atom sits at ``n`` (``O(N³)``: meant for ``N`` up to a few
   thousand).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.spatial import KDTree
from scipy.spatial.distance import cdist
from scipy.stats import qmc, rankdata
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


def path_length(Y: np.ndarray, order: np.ndarray) -> float:
    """Total Euclidean length of the open path visiting ``Y`` in ``order``."""
    return float(np.sqrt(((Y[order[1:]] - Y[order[:-1]]) ** 2).sum(axis=1)).sum())


def seriation_order(Y: np.ndarray, weights: sparse.spmatrix | None = None,
                    random_state=None) -> np.ndarray:
    """An ordering of the rows of ``Y`` along the data: the shortest of a greedy tour and, given
    the MAPA graph ``weights``, its Fiedler order and its eigen-angle order."""
    candidates = [greedy_tour(Y)]
    if weights is not None and Y.shape[0] > 3:
        E = spectral_coordinates(weights, 2, random_state)
        candidates.append(np.argsort(E[:, 0], kind="stable"))
        candidates.append(cut_at_longest_edge(Y, np.argsort(np.arctan2(E[:, 1], E[:, 0]),
                                                             kind="stable")))
    return min(candidates, key=lambda order: path_length(Y, order))


def isomap_coordinates(Y: np.ndarray, n_components: int, n_neighbors: int = 10) -> np.ndarray:
    """Isomap coordinates of the rows of ``Y`` (scikit-learn), shape ``(N, n_components)``."""
    k = min(n_neighbors, Y.shape[0] - 1)
    return Isomap(n_neighbors=k, n_components=n_components).fit_transform(Y)


def spectral_coordinates(weights: sparse.spmatrix, n_components: int,
                         random_state=None) -> np.ndarray:
    """A spectral embedding of the symmetrised MAPA graph, shape ``(N, n_components)``."""
    affinity = 0.5 * (weights + weights.T)
    embedding = SpectralEmbedding(n_components=n_components, affinity="precomputed",
                                  random_state=random_state)
    return embedding.fit_transform(affinity)


def transport(points: np.ndarray, atoms: np.ndarray, prior: Prior) -> np.ndarray:
    """Attach each row of ``points`` to a distinct atom, keeping their arrangement: returns
    ``perm`` with row ``n`` attached to ``atoms[perm[n]]``.

    1-D: rank matching. d-D: each coordinate through its empirical CDF and the prior's inverse
    CDF, then the linear assignment minimising the total squared distance to the atoms.
    """
    n = points.shape[0]
    if atoms.shape[1] == 1:
        perm = np.empty(n, dtype=np.int64)
        perm[np.argsort(points[:, 0], kind="stable")] = np.argsort(atoms[:, 0], kind="stable")
        return perm
    u = (rankdata(points, axis=0) - 0.5) / n
    mapped = prior.icdf(torch.from_numpy(u)).numpy()
    _, perm = linear_sum_assignment(cdist(mapped, atoms, "sqeuclidean"))
    return perm.astype(np.int64)


def initial_attachment(X: np.ndarray, weights: sparse.spmatrix, atoms: np.ndarray, prior: Prior,
                       method: str = "auto", random_state=None) -> np.ndarray:
    """A data-only attachment ``perm`` (index ``n`` carries ``atoms[perm[n]]``).

    ``method``: ``"seriation"`` (1-D only), ``"isomap"``, ``"spectral"``, ``"random"``, or
    ``"auto"`` (seriation in 1-D, Isomap above).
    """
    d = atoms.shape[1]
    if method == "auto":
        method = "seriation" if d == 1 else "isomap"
    if method == "random":
        return np.random.default_rng(random_state).permutation(X.shape[0]).astype(np.int64)
    smoothed = np.asarray(weights @ X)
    if method == "seriation":
        if d != 1:
            raise ValueError(f"seriation orders along a curve; it needs latent_dim 1, not {d}")
        position = np.empty(X.shape[0])
        position[seriation_order(smoothed, weights, random_state)] = np.arange(X.shape[0])
        return transport(position[:, None], atoms, prior)
    if method == "isomap":
        return transport(isomap_coordinates(smoothed, d), atoms, prior)
    if method == "spectral":
        return transport(spectral_coordinates(weights, d, random_state), atoms, prior)
    raise ValueError(f"unknown attachment method {method!r}; choose auto, seriation, isomap, "
                     f"spectral or random")


class Attachment(nn.Module):
    """Fixed atoms, the permutation attaching them to indices, and relaxed positions.

    ``codes(idx)`` returns the attached atoms with the gradient passed straight through to the
    positions; :meth:`project` and :meth:`reattach` change only the permutation.
    """

    def __init__(self, atoms: np.ndarray, perm: np.ndarray):
        super().__init__()
        self.register_buffer("atoms", torch.as_tensor(atoms, dtype=torch.float32))
        self.register_buffer("perm", torch.as_tensor(perm, dtype=torch.long))
        self.positions = nn.Parameter(self.atoms[self.perm].clone())

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
        """Attach to each index the atom nearest its position (as a permutation); returns how
        many indices changed atom. Positions are reset to their atoms."""
        positions = self.positions.detach().cpu().double().numpy()
        atoms = self.atoms.cpu().double().numpy()
        if atoms.shape[1] == 1:
            perm = np.empty(len(positions), dtype=np.int64)
            order = np.lexsort((self.perm.cpu().numpy(), positions[:, 0]))  # ties keep the old
            perm[order] = np.argsort(atoms[:, 0], kind="stable")
        else:
            _, perm = linear_sum_assignment(cdist(positions, atoms, "sqeuclidean"))
        return self._set(perm)

    @torch.no_grad()
    def reattach(self, cost: np.ndarray) -> int:
        """Exact assignment of atoms to indices for ``cost[n, m]`` (index ``n`` takes atom ``m``);
        returns how many indices changed atom."""
        _, perm = linear_sum_assignment(cost)
        return self._set(perm)
