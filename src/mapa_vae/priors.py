"""Latent priors ``p(z)`` and their equal-mass quadrature grids.

Every prior here is a product of identical 1-D marginals with a closed-form CDF ``F`` and
inverse CDF ``F⁻¹``. That gives, in any latent dimension ``d``:

* an *equal-mass grid*: the tensor product of the 1-D nodes ``F⁻¹((m − ½)/M)``, ``m = 1..M``,
  each node carrying weight ``M⁻ᵈ``; it is the midpoint rule in the prior's CDF coordinates, so
  ``∫ p(z) g(z) dz ≈ M⁻ᵈ Σ_m g(z_m)``;
* a stratified sample of size ``N`` in 1-D: the quantiles ``F⁻¹((n − ½)/N)``.
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

    def quadrature(self, nodes_per_dim: int):
        """Equal-mass grid: ``(nodes, log_weights)`` of shapes ``(M**d, d)`` and ``(M**d,)``."""
        if (isinstance(nodes_per_dim, bool) or not isinstance(nodes_per_dim, (int, np.integer))
                or nodes_per_dim < 1):
            raise ValueError(f"nodes_per_dim must be a positive integer, got {nodes_per_dim!r}")
        u = (torch.arange(nodes_per_dim, dtype=torch.float64) + 0.5) / nodes_per_dim
        nodes_1d = self.icdf(u)
        axes = [nodes_1d] * self.latent_dim
        nodes = torch.cartesian_prod(*axes).reshape(-1, self.latent_dim)
        log_w = torch.full((nodes.shape[0],), -self.latent_dim * math.log(nodes_per_dim),
                           dtype=torch.float64)
        return nodes, log_w


class StandardNormal(Prior):
    """``p(z) = N(0, I)``."""

    name = "normal"

    def cdf(self, z):
        return torch.special.ndtr(z)

    def icdf(self, u):
        return torch.special.ndtri(u)

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
