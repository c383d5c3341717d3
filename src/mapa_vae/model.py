"""The generative model users train: ``z ~ p(z)``, ``x | z ~ p(x | f_θ(z))`` (a Gaussian
``N(f_θ(z), σ² I)`` or a Bernoulli with logits ``f_θ(z)``, :mod:`mapa_vae.likelihood`)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .evaluation import log_marginal
from .likelihood import Likelihood
from .marginal import estimate_log_marginal
from .networks import differentiable_decoder, float64_decoder
from .priors import Prior


class GenerativeModel(nn.Module):
    """A decoder ``f_θ``, a fixed prior and a likelihood (a Gaussian with fixed or learned
    ``σ``, or a Bernoulli).

    Its marginal ``p_θ(x) = ∫ p(z) p(x | f_θ(z)) dz`` is what density estimation is judged on.
    """

    def __init__(self, decoder: nn.Module, prior: Prior, likelihood: Likelihood):
        super().__init__()
        self.decoder = decoder
        self.prior = prior
        self.likelihood = likelihood

    @property
    def latent_dim(self) -> int:
        return self.prior.latent_dim

    def log_prob(self, X: np.ndarray, nodes_per_dim: int | None = None,
                 seed=0) -> np.ndarray:
        """``log p_θ(x)`` per row, shape ``(n,)``: by equal-mass quadrature (float64) for latent
        dimension 1 or 2, above by the one evaluator (:meth:`log_prob_estimate`)."""
        if self.latent_dim <= 2:
            return log_marginal(float64_decoder(self.decoder), self.prior, self.likelihood, X,
                                nodes_per_dim)
        return self.log_prob_estimate(X, seed=seed).log_prob

    def log_prob_estimate(self, X: np.ndarray, seed=0, **options):
        """``log p_θ(x)`` per row with standard errors, effective sample sizes and cost, by
        importance sampling from a proposal fitted to each point
        (:func:`mapa_vae.marginal.estimate_log_marginal`; ``options`` go to it), any latent
        dimension."""
        return estimate_log_marginal(differentiable_decoder(self.decoder), self.prior,
                                     self.likelihood, X, seed=seed, **options)

    def sample(self, n: int, random_state=None) -> tuple[np.ndarray, np.ndarray]:
        """``n`` draws ``(X, Z)`` from the model."""
        rng = np.random.default_rng(random_state)
        Z = self.prior.sample(n, random_state=rng)
        return self.likelihood.sample(self.decode(Z), rng), Z

    def decode(self, Z: np.ndarray) -> np.ndarray:
        """The decoder's outputs ``f_θ(z)`` for codes ``Z`` (float64, shape ``(n, D)``)."""
        param = next(self.decoder.parameters())
        with torch.no_grad():
            out = self.decoder(torch.as_tensor(Z, dtype=param.dtype, device=param.device))
        return out.double().cpu().numpy()
