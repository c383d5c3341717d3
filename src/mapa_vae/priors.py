"""Latent priors ``p(z)`` and their equal-mass quadrature grids.

Every prior here is a product of identical 1-D marginals with a closed-form CDF ``F`` and
inverse CDF ``F⁻¹``. That gives, in any latent dimension ``d``:

* an *equal-mass grid*: the tensor product of the 1-D nodes ``F⁻¹((m − ½)/M)``, ``m = 1..M``,
  each node carrying weight ``M⁻ᵈ``; it is the midpoint rule in the prior's CDF coordinates, so
  ``∫ p(z) g(z) dz ≈ M⁻ᵈ Σ_m g(z_m)``;
* a stratified sample of size ``N`` in 1-D: the quantiles ``F⁻¹((n − ½)/N)``.

For a prior with unbounded support the equal-mass cells widen without bound in the tails (the
outermost node sits near ``F⁻¹(1/(2M))``, about ±4 for ``M = 16384``), too coarse for points
generated from the far tail. ``quadrature(M, refine_tails=True)`` therefore, in 1-D, replaces the
``R`` outermost cells of each tail (mass ``R/M``) by smoothly graded cells: edges at tail masses
``(R/M) e^{−t}`` for ``t`` on a uniform grid of ``K`` steps per halving over ``J`` halvings, nodes at
the geometric midpoints, weights the cells' exact masses, and a last cell for what remains.
Weights still sum to one; the interior stays the equal-mass grid.
"""
from __future__ import annotations

import math

import numpy as np
import torch

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class Prior:
    """A product prior over ``R^latent_dim`` defined by its 1-D CDF and inverse CDF."""

    name = "prior"

    def __init__(self, latent_dim: int = 1):
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, (int, np.integer)):
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim!r}")
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim}")
        self.latent_dim = int(latent_dim)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(latent_dim={self.latent_dim})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.latent_dim == other.latent_dim

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.latent_dim))

    # --- the 1-D marginal, elementwise on tensors -------------------------------------------
    def cdf(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def icdf(self, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _log_density_1d(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # --- the joint ---------------------------------------------------------------------------
    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(z)`` for ``z`` of shape ``(n, latent_dim)``; returns shape ``(n,)``."""
        return self._log_density_1d(z).sum(dim=-1)

    def sample(self, n: int, random_state=None) -> np.ndarray:
        """``n`` i.i.d. draws, shape ``(n, latent_dim)``, float64, by inverse-CDF sampling."""
        rng = np.random.default_rng(random_state)
        u = rng.random((int(n), self.latent_dim))
        return self.icdf(torch.from_numpy(u)).numpy()

    #: Tail refinement by latent dimension (absent: none): (outer cells R replaced, halvings J,
    #: cells per halving K).
    tail_refinement: dict = {}

    def quadrature(self, nodes_per_dim: int, refine_tails: bool = False):
        """Tensor-product grid ``(nodes, log_weights)`` of shapes ``(M', d)`` and ``(M',)``:
        the equal-mass grid (``M' = M**d``), with refined tails if asked and the prior has them."""
        if (isinstance(nodes_per_dim, bool) or not isinstance(nodes_per_dim, (int, np.integer))
                or nodes_per_dim < 1):
            raise ValueError(f"nodes_per_dim must be a positive integer, got {nodes_per_dim!r}")
        M = int(nodes_per_dim)
        u = (torch.arange(M, dtype=torch.float64) + 0.5) / M
        nodes_1d, w_1d = self.icdf(u), torch.full((M,), 1.0 / M, dtype=torch.float64)
        if refine_tails and self.latent_dim in self.tail_refinement and M >= 3:
            nodes_1d, w_1d = self._refine_tails(nodes_1d, w_1d, M)
        nodes = torch.cartesian_prod(*[nodes_1d] * self.latent_dim).reshape(-1, self.latent_dim)
        log_w = torch.cartesian_prod(*[w_1d.log()] * self.latent_dim).reshape(
            -1, self.latent_dim).sum(dim=1)
        return nodes, log_w

    def _refine_tails(self, nodes_1d, w_1d, M: int):
        outer, halvings, per_halving = self.tail_refinement[self.latent_dim]
        outer = min(outer, (M - 1) // 2)
        t = torch.linspace(0.0, halvings * math.log(2.0), halvings * per_halving + 1,
                           dtype=torch.float64)
        edges = (outer / M) * torch.exp(-t)  # tail masses, from the interior outwards
        v = torch.cat([torch.sqrt(edges[:-1] * edges[1:]), edges[-1:] / 2])
        mass = torch.cat([edges[:-1] - edges[1:], edges[-1:]])
        lower, upper = self.icdf(v), self.icdf_complement(v)
        nodes = torch.cat([lower.flip(0), nodes_1d[outer:M - outer], upper])
        weights = torch.cat([mass.flip(0), w_1d[outer:M - outer], mass])
        return nodes, weights

    def icdf_complement(self, v: torch.Tensor) -> torch.Tensor:
        """``F⁻¹(1 − v)``, accurate for tiny ``v``."""
        return self.icdf(1.0 - v)


class StandardNormal(Prior):
    """``p(z) = N(0, I)``."""

    name = "normal"
    # In 2-D, refined tails cost the tensor grid its accuracy in the bulk (the equal-mass
    # midpoint rule converges fast there), so only the 1-D grid is refined.
    tail_refinement = {1: (64, 48, 44)}

    def cdf(self, z):
        return torch.special.ndtr(z)

    def icdf(self, u):
        return torch.special.ndtri(u)

    def icdf_complement(self, v):
        return -torch.special.ndtri(v)

    def _log_density_1d(self, z):
        return -0.5 * z**2 - _LOG_SQRT_2PI


class Uniform(Prior):
    """``p(z) = U[0, 1]^d``."""

    name = "uniform"

    def cdf(self, z):
        return z.clamp(0.0, 1.0)

    def icdf(self, u):
        return u.clone()

    def _log_density_1d(self, z):
        inside = (z >= 0) & (z <= 1)
        return torch.where(inside, torch.zeros_like(z), torch.full_like(z, -math.inf))


PRIORS = {"normal": StandardNormal, "uniform": Uniform}


def make_prior(prior, latent_dim: int = 1) -> Prior:
    """A :class:`Prior` from an instance or a name (``"normal"`` or ``"uniform"``)."""
    if isinstance(prior, Prior):
        if prior.latent_dim != latent_dim:
            raise ValueError(
                f"prior has latent_dim={prior.latent_dim} but latent_dim={latent_dim} was asked for")
        return prior
    if prior not in PRIORS:
        raise ValueError(f"unknown prior {prior!r}; choose one of {sorted(PRIORS)}")
    return PRIORS[prior](latent_dim)
