"""Each method's own importance proposal: its density is the stated defensive mixture."""
import numpy as np
import pytest
import torch
from scipy import sparse
from scipy.stats import norm

from mapa_vae.priors import StandardNormal, Uniform
from mapa_vae.proposals import atom_proposal, gaussian_codes_proposal

# MAPA's weights of two query rows over five training indices; with three components each row
# keeps its three largest weights, renormalised
W = sparse.csr_matrix(np.array([[0.1, 0.4, 0.2, 0.25, 0.05], [0.5, 0.0, 0.3, 0.0, 0.2]]))
TOP = [[1, 3, 2], [0, 2, 4]]


def weights(X):
    assert X.shape == (2, 3)  # the query rows, as an array
    return W


def _kept(row):
    w = W.toarray()[row, TOP[row]]
    return w / w.sum()


def test_atom_proposal_is_a_mixture_of_the_largest_weights_atoms_and_the_prior():
    codes = torch.tensor([[-1.0], [0.0], [0.5], [2.0], [3.5]], dtype=torch.float64)
    s = np.median([1.0, 0.5, 0.5, 1.5, 1.5])  # each atom's distance to its nearest other
    draw = atom_proposal(weights, codes, StandardNormal(1), components=3)
    z, log_q = draw(torch.zeros(2, 3, dtype=torch.float64), 400,
                    torch.Generator().manual_seed(0))
    assert z.shape == (400, 2, 1) and log_q.shape == (400, 2)
    for row in range(2):
        u = z[:, row, 0].numpy()
        own = sum(w * norm.pdf(u, codes[j, 0].item(), s) for w, j in zip(_kept(row), TOP[row]))
        np.testing.assert_allclose(log_q[:, row].numpy(), np.log(0.9 * own + 0.1 * norm.pdf(u)),
                                   rtol=1e-12, atol=1e-12)


def test_gaussian_codes_proposal_is_logit_normal_widened_by_the_code_spacing():
    loc = np.array([[-1.0], [0.0], [0.5], [2.0], [3.5]])
    scale = np.array([[0.1], [0.2], [0.3], [0.4], [0.5]])
    r = np.median([1.0, 0.5, 0.5, 1.5, 1.5])  # each code's distance to its nearest other
    draw = gaussian_codes_proposal(weights, loc, scale, Uniform(1), components=3)
    z, log_q = draw(torch.zeros(2, 3, dtype=torch.float64), 400,
                    torch.Generator().manual_seed(0))
    assert z.shape == (400, 2, 1) and ((z > 0) & (z < 1)).all()
    for row in range(2):
        p = z[:, row, 0].numpy()
        u = np.log(p) - np.log1p(-p)
        own = sum(w * norm.pdf(u, loc[j, 0], np.hypot(scale[j, 0], r))
                  for w, j in zip(_kept(row), TOP[row])) / (p * (1 - p))  # the logit's Jacobian
        np.testing.assert_allclose(log_q[:, row].numpy(), np.log(0.9 * own + 0.1),
                                   rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("make", [
    lambda: atom_proposal(weights, np.random.default_rng(0).normal(size=(5, 4)),
                          StandardNormal(4), components=3),
    lambda: gaussian_codes_proposal(weights, np.random.default_rng(0).normal(size=(5, 4)),
                                    np.full((5, 4), 0.3), StandardNormal(4), components=3),
], ids=["atoms", "gaussian-codes"])
def test_mixture_density_is_the_same_computed_over_blocks_of_draws(make, monkeypatch):
    """MAPA's mixture densities are computed over blocks of draws where the draws × rows ×
    components × dimensions would be large: the same draws and the same densities whatever the
    block (each entry is the same arithmetic on the same numbers; a few units in the last place
    allowed, should a reduction's vector grouping depend on the array's extent)."""
    from mapa_vae import proposals

    def run():
        return make()(torch.zeros(2, 3, dtype=torch.float64), 50,
                      torch.Generator().manual_seed(0))

    z_whole, log_q_whole = run()
    monkeypatch.setattr(proposals, "_MIXTURE_BLOCK_ENTRIES", 2 * 3 * 4 * 7)  # 7 draws a block
    z_blocks, log_q_blocks = run()
    np.testing.assert_array_equal(z_blocks.numpy(), z_whole.numpy())
    np.testing.assert_allclose(log_q_blocks.numpy(), log_q_whole.numpy(), rtol=1e-13, atol=0)
