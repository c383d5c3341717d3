"""Atoms and attachment: stratification, data-only initial attachments, projection, re-attachment."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import sparse
from scipy.stats import kstest, spearmanr

from mapa_vae import MAPAPosterior, datasets
from mapa_vae.atoms import (Attachment, candidate_attachments, candidate_coordinates,
                            coarse_tour, greedy_tour, initial_attachment, local_blocks, roughness,
                            short_path, stratified_atoms, transport)
from mapa_vae.priors import StandardNormal, Uniform


def test_one_dimensional_atoms_are_the_prior_quantiles():
    atoms = stratified_atoms(StandardNormal(1), 4)
    np.testing.assert_allclose(atoms[:, 0], [-1.1503493803760079, -0.31863936396437514,
                                             0.31863936396437514, 1.1503493803760079])
    np.testing.assert_allclose(stratified_atoms(Uniform(1), 5)[:, 0], [0.1, 0.3, 0.5, 0.7, 0.9])


def test_multidimensional_atoms_are_a_stratified_sample_of_the_prior():
    atoms = stratified_atoms(StandardNormal(2), 1000, random_state=0)
    assert atoms.shape == (1000, 2) and np.isfinite(atoms).all()
    for j in range(2):  # far closer to the prior than an i.i.d. sample would typically be
        assert kstest(atoms[:, j], "norm").statistic < 0.01
    np.testing.assert_array_equal(atoms, stratified_atoms(StandardNormal(2), 1000, 0))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 1000), n=st.integers(2, 40), d=st.integers(1, 3),
       scale=st.floats(0.01, 5.0))
def test_projection_leaves_the_multiset_of_atoms_unchanged(seed, n, d, scale):
    prior = StandardNormal(d)
    atoms = stratified_atoms(prior, n, random_state=seed)
    rng = np.random.default_rng(seed)
    attachment = Attachment(atoms, rng.permutation(n))
    with torch.no_grad():
        noise = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
        attachment.positions.add_(scale * noise)
    attachment.project()
    attached = attachment.attached().numpy()
    key = np.lexsort(attached.T)
    np.testing.assert_array_equal(attached[key], atoms.astype(np.float32)[np.lexsort(atoms.T)])
    assert sorted(attachment.perm.tolist()) == list(range(n))
    np.testing.assert_array_equal(attachment.positions.detach().numpy(), attached)


def test_projection_in_one_dimension_follows_the_order_of_positions():
    atoms = stratified_atoms(StandardNormal(1), 5)
    attachment = Attachment(atoms, np.arange(5))
    assert attachment.project() == 0  # positions on their atoms: nothing changes
    with torch.no_grad():
        attachment.positions[1, 0] = float(atoms[3, 0]) + 0.01  # index 1 moves past index 3
    changed = attachment.project()
    assert changed == 3
    assert attachment.perm.tolist() == [0, 3, 1, 2, 4]


def test_projection_above_one_dimension_exchanges_atoms_among_the_positions_that_moved():
    """Only positions nearer another atom than their own, and the holders of those atoms, move;
    a swap is found; the total squared distance never rises; for small drifts the result is the
    exact assignment's."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    from mapa_vae.atoms import nearest_exchange

    atoms = stratified_atoms(StandardNormal(2), 6, random_state=0)
    attachment = Attachment(atoms, np.arange(6))
    assert attachment.project() == 0  # positions on their atoms: nothing changes
    with torch.no_grad():  # indices 1 and 4 each move onto the other's atom
        attachment.positions[1] = torch.as_tensor(atoms[4])
        attachment.positions[4] = torch.as_tensor(atoms[1])
    assert attachment.project() == 2
    assert attachment.perm.tolist() == [0, 4, 2, 3, 1, 5]

    rng = np.random.default_rng(0)
    n = 1500
    atoms = stratified_atoms(StandardNormal(2), n, random_state=0)
    perm = rng.permutation(n)

    def cost(positions, p):
        return ((positions - atoms[p]) ** 2).sum()

    for scale in (0.01, 0.05):  # drifts of a fifth and of one typical atom spacing
        positions = atoms[perm] + scale * rng.normal(size=(n, 2))
        out = nearest_exchange(positions, atoms, perm)
        assert sorted(out.tolist()) == list(range(n))
        nearest = cdist(positions, atoms, "sqeuclidean").argmin(axis=1)
        wanted = nearest[nearest != perm]  # atoms a position lies nearer than to its own
        untouched = (nearest == perm) & ~np.isin(perm, wanted)
        assert untouched.sum() > n // 4
        np.testing.assert_array_equal(out[untouched], perm[untouched])
        assert cost(positions, out) <= cost(positions, perm)
        exact = linear_sum_assignment(cdist(positions, atoms, "sqeuclidean"))[1]
        if scale == 0.01:  # a few positions crossed (16 change atom): the exact assignment
            assert (out != perm).sum() > 0
            np.testing.assert_array_equal(out, exact)


def test_codes_pass_their_gradient_to_the_positions():
    atoms = stratified_atoms(StandardNormal(1), 6)
    attachment = Attachment(atoms, np.arange(6)[::-1].copy())
    idx = torch.tensor([0, 2])
    codes = attachment.codes(idx)
    np.testing.assert_array_equal(codes.detach().numpy(), atoms[[5, 3]].astype(np.float32))
    (3.0 * codes.sum()).backward()
    grad = attachment.positions.grad.numpy()[:, 0]
    np.testing.assert_array_equal(grad, [3.0, 0, 3.0, 0, 0, 0])


def test_reattachment_solves_the_assignment():
    atoms = stratified_atoms(StandardNormal(1), 4)
    attachment = Attachment(atoms, np.arange(4))
    target = np.array([2, 0, 3, 1])
    cost = np.ones((4, 4))
    cost[np.arange(4), target] = 0.0
    assert attachment.reattach(cost) == 4
    assert attachment.perm.tolist() == target.tolist()


def test_transport_keeps_the_arrangement_of_the_points():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(50, 1)) * 7 + 3
    atoms = stratified_atoms(StandardNormal(1), 50)
    perm = transport(points, atoms, StandardNormal(1))
    assert spearmanr(points[:, 0], atoms[perm, 0]).statistic == pytest.approx(1.0)
    points2 = rng.uniform(size=(300, 2)) ** 3
    atoms2 = stratified_atoms(StandardNormal(2), 300, random_state=0)
    perm2 = transport(points2, atoms2, StandardNormal(2))
    assert sorted(perm2.tolist()) == list(range(300))
    for j in range(2):
        assert spearmanr(points2[:, j], atoms2[perm2, j]).statistic > 0.9


def test_transport_is_exact_up_to_a_leaf_and_bisects_beyond():
    """The initial attachments' transport solves the assignment exactly for at most 256 points
    and by recursive bisection beyond, at a cost close to the exact one."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist
    from scipy.stats import norm, rankdata

    rng = np.random.default_rng(1)
    prior = StandardNormal(2)
    for n in (200, 1500):
        points = rng.uniform(size=(n, 2)) ** 3
        atoms = stratified_atoms(prior, n, random_state=0)
        mapped = norm.ppf((rankdata(points, axis=0) - 0.5) / n)
        exact = linear_sum_assignment(cdist(mapped, atoms, "sqeuclidean"))[1]
        perm = transport(points, atoms, prior)
        assert sorted(perm.tolist()) == list(range(n))

        def cost(p):
            return ((mapped - atoms[p]) ** 2).sum(axis=1).mean()

        if n <= 256:
            np.testing.assert_array_equal(perm, exact)
        else:
            assert cost(exact) <= cost(perm) < 1.5 * cost(exact)
            assert (perm != exact).any()  # not the exact solver's answer: the bisection ran


def _path_length(C, order):
    return float(np.sqrt(((C[order[1:]] - C[order[:-1]]) ** 2).sum(axis=1)).sum())


def test_short_path_is_nearly_optimal_on_small_sets():
    """A 2-opt and Or-opt local optimum is not always the shortest path; on 200 fixed sets of
    4 to 7 points it is on average within 1% of it, and within 15% at worst."""
    import itertools

    ratios = []
    for seed in range(200):
        C = np.random.default_rng(seed).normal(size=(4 + seed % 4, 2))
        order = short_path(C)
        assert sorted(order.tolist()) == list(range(len(C)))
        best = min(_path_length(C, np.array(p)) for p in itertools.permutations(range(len(C))))
        ratios.append(_path_length(C, order) / best)
    assert np.mean(ratios) < 1.01 and max(ratios) < 1.15


def test_short_path_improves_on_the_greedy_tour():
    C = np.random.default_rng(1).uniform(size=(150, 2))
    assert _path_length(C, short_path(C)) < 0.95 * _path_length(C, greedy_tour(C))


@pytest.mark.parametrize("method", ["coarse", "fiedler"])
def test_seriation_recovers_the_order_along_an_open_curve(method):
    """Seeded, as every fit seeds it: the coarse tour's k-means start is random, and one start in
    30 (random_state=5) orders this spiral with rank correlation 0.77 only."""
    truth = datasets.get("spiral")
    X, Z = truth.sample(800, seed=0)
    W = MAPAPosterior(sigma=truth.sigma).fit(X).weights_
    position = candidate_coordinates(method, X, W, 1, random_state=0)
    assert sorted(position[:, 0].tolist()) == list(range(800))
    assert abs(spearmanr(position[:, 0], Z[:, 0]).statistic) > 0.99


def _consecutive_gaps(Z, order):
    """|Δt| between consecutive points of ``order``, on the circle of t = Φ(z)."""
    t = torch.special.ndtr(torch.from_numpy(Z[order, 0])).numpy()
    step = np.abs(np.diff(t))
    return np.minimum(step, 1 - step)


def test_coarse_tour_follows_a_self_crossing_curve():
    """On the figure-8 a tour through every point strays; the coarse skeleton does not."""
    truth = datasets.get("figure-8")
    X, Z = truth.sample(1000, seed=0)
    W = MAPAPosterior(sigma=truth.sigma).fit(X).weights_
    Y = np.asarray(W @ X)
    coarse, greedy = coarse_tour(Y, random_state=0), greedy_tour(Y)
    assert roughness(Y, coarse) < 0.5 * roughness(Y, greedy)
    # consecutive points are close along the curve, except where the order meets the crossing
    # (t and t + ½ are the same place there)
    assert np.mean(_consecutive_gaps(Z, coarse) < 0.05) > 0.95
    random = np.random.default_rng(0).permutation(1000)
    assert np.mean(_consecutive_gaps(Z, random) < 0.05) < 0.15


def test_candidates_and_the_least_rough_choice():
    truth = datasets.get("circle")
    X, _ = truth.sample(400, seed=2)
    W = MAPAPosterior(sigma=truth.sigma).fit(X).weights_
    atoms = stratified_atoms(truth.prior, 400)
    perms = candidate_attachments(X, W, atoms, truth.prior, random_state=0)
    assert set(perms) == {"coarse", "fiedler", "angle"}
    for perm in perms.values():
        assert sorted(perm.tolist()) == list(range(400))
    chosen = initial_attachment(X, W, atoms, truth.prior, "seriation", random_state=0)
    Y = np.asarray(W @ X)
    rough = {name: roughness(Y, np.argsort(atoms[perm, 0])) for name, perm in perms.items()}
    assert any(np.array_equal(chosen, perms[name]) for name in perms
               if rough[name] == min(rough.values()))
    assert rough["fiedler"] > rough["angle"]  # a loop has no Fiedler order


def test_seriation_attaches_neighbouring_atoms_to_neighbours_on_a_loop():
    truth = datasets.get("circle")
    X, Z = truth.sample(1000, seed=1)
    mapa = MAPAPosterior(sigma=truth.sigma).fit(X)
    atoms = stratified_atoms(truth.prior, 1000)
    perm = initial_attachment(X, mapa.weights_, atoms, truth.prior, "seriation", random_state=0)
    codes = atoms[perm, 0]
    # along the atoms' order, consecutive data points are close on the circle
    t = torch.special.ndtr(torch.from_numpy(Z[np.argsort(codes), 0])).numpy()
    step = np.abs(np.diff(t))
    angular = np.minimum(step, 1 - step)
    assert np.mean(angular < 0.05) > 0.9
    random = initial_attachment(X, mapa.weights_, atoms, truth.prior, "random", random_state=0)
    t_random = torch.special.ndtr(torch.from_numpy(Z[np.argsort(atoms[random, 0]), 0])).numpy()
    step = np.abs(np.diff(t_random))
    assert np.mean(np.minimum(step, 1 - step) < 0.05) < 0.2


def test_isomap_attachment_recovers_the_coordinates_of_an_elongated_sheet():
    rng = np.random.default_rng(2)
    Z = rng.uniform(size=(600, 2))
    X = np.column_stack([3 * Z[:, 0], Z[:, 1], 0.2 * np.sin(3 * Z[:, 0])])
    mapa = MAPAPosterior(n_neighbors=30, sigma=0.05).fit(X)
    atoms = stratified_atoms(Uniform(2), 600, random_state=0)
    perm = initial_attachment(X, mapa.weights_, atoms, Uniform(2), "isomap", random_state=0)
    codes = atoms[perm]
    corr = np.abs([[spearmanr(codes[:, i], Z[:, j]).statistic for j in range(2)]
                   for i in range(2)])
    assert max(corr[0, 0] + corr[1, 1], corr[0, 1] + corr[1, 0]) > 1.7


def test_initial_attachment_errors():
    X = np.random.default_rng(0).normal(size=(20, 2))
    W = MAPAPosterior(sigma=0.3).fit(X).weights_
    with pytest.raises(ValueError, match="needs latent_dim 1"):
        initial_attachment(X, W, stratified_atoms(StandardNormal(2), 20, 0), StandardNormal(2),
                           "coarse")
    with pytest.raises(ValueError, match="unknown attachment method 'bogus'"):
        initial_attachment(X, W, stratified_atoms(StandardNormal(1), 20), StandardNormal(1),
                           "bogus")


def test_equivalent_candidates_are_proposed_once():
    """On 1-D data every candidate sorts the points (up to a reversal): one is enough."""
    truth = datasets.get("quadratic")
    X, _ = truth.sample(300, seed=0)
    W = MAPAPosterior(sigma=truth.sigma).fit(X).weights_
    perms = candidate_attachments(X, W, stratified_atoms(truth.prior, 300), truth.prior, 0)
    assert list(perms) == ["coarse"]


def test_match_is_exact_for_small_sets_and_close_by_bisection_beyond(monkeypatch):
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    from mapa_vae import atoms as atoms_module
    from mapa_vae.atoms import match

    rng = np.random.default_rng(0)
    A = stratified_atoms(StandardNormal(2), 1500, random_state=0)
    P = rng.normal(size=(1500, 2))
    exact = linear_sum_assignment(cdist(P, A, "sqeuclidean"))[1]
    np.testing.assert_array_equal(match(P, A), exact)
    monkeypatch.setattr(atoms_module, "EXACT_MATCH_MAX", 100)  # force bisection
    perm = match(P, A)
    assert sorted(perm.tolist()) == list(range(1500))

    def cost(p):
        return ((P - A[p]) ** 2).sum(axis=1).mean()

    assert cost(perm) < 1.5 * cost(exact)
    assert cost(perm) < 0.05 * cost(rng.permutation(1500))


@pytest.mark.parametrize("latent_dim", [1, 2])
def test_local_reattachment_never_worsens_the_attachment(monkeypatch, latent_dim):
    """Beyond the exact size, re-attachment exchanges atoms within groups of neighbouring atoms
    by exact assignment: a permutation, the group's own atoms, a cost that cannot rise."""
    from mapa_vae import atoms as atoms_module
    from mapa_vae.likelihood import GaussianLikelihood
    from mapa_vae.model import GenerativeModel
    from mapa_vae.networks import mlp
    from mapa_vae.objectives import MAPABound
    from mapa_vae.priors import make_prior

    monkeypatch.setattr(atoms_module, "EXACT_MATCH_MAX", 50)
    truth = datasets.get("circle")
    X, _ = truth.sample(400, seed=0)
    W = MAPAPosterior(sigma=truth.sigma).fit(X).weights_
    prior = make_prior("normal", latent_dim)
    atoms = stratified_atoms(prior, 400)
    torch.manual_seed(0)
    model = GenerativeModel(mlp(latent_dim, 2, (16,)), prior, GaussianLikelihood(0.1))
    attachment = Attachment(atoms, np.random.default_rng(0).permutation(400))
    bound = MAPABound(model, W, X, attachment)
    with torch.no_grad():
        value_before = float(bound(None, torch.arange(400)).value)
    dense = bound.reattachment_cost()(np.arange(400), np.arange(400))
    costs = [dense[np.arange(400), attachment.perm.numpy()].sum()]
    for turn in range(3):
        before = attachment.perm.numpy().copy()
        groups = atoms_module.local_blocks(atoms[before], 64, turn + 1)
        changed = attachment.reattach(bound.reattachment_cost(), block=64)
        after = attachment.perm.numpy()
        assert changed > 0 and sorted(after.tolist()) == list(range(400))
        for rows in groups:  # every group exchanged its own atoms only
            assert sorted(after[rows].tolist()) == sorted(before[rows].tolist())
        costs.append(dense[np.arange(400), after].sum())
    assert all(b <= a + 1e-9 for a, b in zip(costs, costs[1:]))
    with torch.no_grad():
        assert float(bound(None, torch.arange(400)).value) >= value_before


@pytest.mark.parametrize("latent_dim", [1, 3])
def test_local_blocks_partition_the_points_and_move(latent_dim):
    points = np.random.default_rng(0).normal(size=(1000, latent_dim))
    first, second = (local_blocks(points, 100, turn) for turn in (1, 2))
    for groups in (first, second):
        assert max(len(g) for g in groups) <= 100
        assert sorted(np.concatenate(groups).tolist()) == list(range(1000))
    as_sets = lambda groups: {frozenset(g.tolist()) for g in groups}  # noqa: E731
    assert as_sets(first) != as_sets(second)
    if latent_dim == 1:  # consecutive runs of the sorted points
        for g in first:
            values = np.sort(points[g, 0])
            inside = (points[:, 0] > values[0]) & (points[:, 0] < values[-1])
            assert inside.sum() == len(g) - 2


def test_embedding_graph_keeps_the_largest_weights_of_wide_rows():
    from scipy import sparse

    from mapa_vae.atoms import SPECTRAL_NEIGHBORS, embedding_graph

    rng = np.random.default_rng(0)
    n, k = 2100, 50
    data = rng.random((n, k))
    cols = np.array([rng.choice(n, k, replace=False) for _ in range(n)])
    W = sparse.csr_matrix((data.ravel(), cols.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))
    G = embedding_graph(W)
    assert np.all(np.diff(G.indptr) == SPECTRAL_NEIGHBORS)
    for i in (0, 7, n - 1):
        largest = np.argsort(-data[i])[:SPECTRAL_NEIGHBORS]
        assert set(G[i].indices) == set(cols[i][largest])
        np.testing.assert_array_equal(np.sort(G[i].data), np.sort(data[i][largest]))
    small = W[:2000, :2000]
    assert embedding_graph(small) is not small and (embedding_graph(small) != small).nnz == 0


def test_pca_coordinates_need_as_many_data_dimensions_as_latent_ones():
    """MAPA's Gaussian codes started at the atoms (``code_start="atoms"``) take 'pca'
    coordinates above two latent dimensions: fewer data (or feature) dimensions than latent ones
    is a clear error, not a failure deep inside."""
    from mapa_vae import MAPADensity

    X = np.random.default_rng(0).normal(size=(40, 5))
    with pytest.raises(ValueError, match="'pca' takes 3 principal components .* 2 dimensions"):
        MAPADensity(latent_dim=3, features=2, sigma=0.3, steps=5, code_start="atoms").fit(X)
    coordinates = candidate_coordinates("pca", X, sparse.identity(40, format="csr"), 3)
    assert coordinates.shape == (40, 3)
