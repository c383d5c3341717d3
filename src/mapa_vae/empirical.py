"""The empiricalized model: the prior replaced by atoms attached to the training indices.

With atom ``z_n`` attached to training index ``n``,

    p̂(z) = (1/N) Σ_n δ(z − z_n),          p̂(x) = (1/N) Σ_n N(x; f(z_n), σ² I),

and the exact posterior is a distribution over indices,

    p̂(n | x) = N(x; f(z_n), σ² I) / Σ_m N(x; f(z_m), σ² I).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .likelihood import check_sigma, mixture_log_prob, mixture_log_responsibilities
from .networks import float64_decoder
from .validation import as_data


class EmpiricalizedModel:
    """A decoder with one atom per training index.

    Parameters
    ----------
    decoder : torch.nn.Module or callable
        ``f``: tensor ``(n, latent_dim)`` → tensor ``(n, D)``. A module is evaluated in float64.
    atoms : array-like of shape (n_atoms, latent_dim)
        ``atoms[n]`` is the code attached to training index ``n``.
    sigma : float
        Observation noise, positive.
    """

    def __init__(self, decoder, atoms, sigma: float):
        self.decode = float64_decoder(decoder) if isinstance(decoder, nn.Module) else decoder
        self.atoms = as_data(atoms, "atoms", min_samples=1)
        self.sigma = check_sigma(sigma)
        with torch.no_grad():
            self.means = self.decode(torch.from_numpy(self.atoms)).to(torch.float64)
        if self.means.ndim != 2 or self.means.shape[0] != self.atoms.shape[0]:
            raise ValueError(f"decoder returned shape {tuple(self.means.shape)} for "
                             f"{self.atoms.shape[0]} atoms; expected ({self.atoms.shape[0]}, D)")
        n = self.atoms.shape[0]
        self._log_w = torch.full((n,), -math.log(n), dtype=torch.float64)

    def _x(self, X) -> torch.Tensor:
        return torch.from_numpy(as_data(X, "X", n_features=self.means.shape[1]))

    def log_prob(self, X) -> np.ndarray:
        """``log p̂(x)`` per row of ``X``, shape ``(n,)``."""
        return mixture_log_prob(self._x(X), self.means, self._log_w, self.sigma).numpy()

    def log_index_posterior(self, X) -> np.ndarray:
        """``log p̂(n | x)`` of shape ``(n_rows, n_atoms)``."""
        return mixture_log_responsibilities(self._x(X), self.means, self._log_w,
                                            self.sigma).numpy()
