"""Each method's own importance proposal, for ``log_likelihood(proposal="model")``.

A proposal is a function ``draw(x, K, generator) -> (z, log_q)`` as
:func:`~mapa_vae.evaluation.importance_log_marginal` takes it: ``K`` codes per row of the float64
tensor ``x`` of shape ``(n, D)``, ``z`` of shape ``(K, n, d)`` and ``log q(z | x)`` of ``(K, n)``,
in float64. Every proposal here is a defensive mixture with the prior,
``q(z | x) = 0.9 q_own(z | x) + 0.1 p(z)`` (the prior's share bounds the importance weights where
``q_own`` is too narrow), built from a fitted model's own posterior: the encoder's ``q(z | x)``
(:func:`encoder_proposal`), MAPA's mixture over the atoms attached to training indices
(:func:`atom_proposal`) or over their learned Gaussian codes
(:func:`gaussian_codes_proposal`). They are diagnostics; the one evaluator for every method is
the proposal fitted to each point (:mod:`mapa_vae.marginal`).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.spatial import KDTree

from .evaluation import defensive_mixture, prior_proposal
from .priors import Prior, Uniform

#: The most ``(draw, row, component, dimension)`` entries a mixture density holds at once
#: (128 MiB of float64); beyond, it is computed over blocks of draws.
_MIXTURE_BLOCK_ENTRIES = 1 << 24


def encoder_proposal(encoder, prior: Prior, device="cpu", dtype=torch.float32,
                     defensive: float = 0.1):
    """The encoder's ``q(z | x)`` with a defensive share of the prior,
    ``0.9 q(z | x) + 0.1 p(z)`` (bounded weights where the encoder is too narrow); float64.

    ``encoder``: an :class:`~mapa_vae.encoders.AmortizedPosterior`, fed ``x`` on ``device`` in
    ``dtype`` (those it was trained in)."""

    def draw(x, k, generator):
        loc, scale = encoder(x.to(device=device, dtype=dtype))
        loc, scale = loc.double().cpu(), scale.double().cpu()
        z, _ = encoder.rsample(loc, scale, k, generator)
        z_prior, _ = prior_proposal(prior)(x, k, generator)
        from_prior = torch.rand(z.shape[:2], generator=generator) < defensive
        return defensive_mixture(z, z_prior, from_prior,
                                 lambda z: encoder.log_prob(z, loc, scale), prior, defensive)

    return draw


def _over_blocks_of_draws(log_density, z: torch.Tensor, components: int) -> torch.Tensor:
    """``log_density(z)`` for draws ``z`` of shape ``(k, n, d)`` against ``components`` per row,
    computed over blocks of draws so that at most :data:`_MIXTURE_BLOCK_ENTRIES`
    ``(draw, row, component, dimension)`` entries are held at once; returns ``(k, n)``."""
    k, n, d = z.shape
    block = max(1, _MIXTURE_BLOCK_ENTRIES // (n * components * d))
    return torch.cat([log_density(z[first:first + block]) for first in range(0, k, block)])


def _largest_weights(weights, x, components: int):
    """The ``components`` largest weights ``weights(x)`` of each row (renormalised, a float64
    tensor ``(n, m)``) and their column indices ``(n, m)``."""
    W = weights(x.numpy()).toarray()
    m = min(components, W.shape[1])
    top = np.argsort(-W, axis=1)[:, :m]
    w = torch.as_tensor(np.take_along_axis(W, top, 1))
    return w / w.sum(1, keepdim=True), top


def atom_proposal(weights, codes, prior: Prior, components: int = 64, defensive: float = 0.1):
    """MAPA's mixture over atoms: ``q(z | x) = 0.9 Σ_j w̃_j N(z; z_j, s² I) + 0.1 p(z)`` over
    the ``components`` largest MAPA weights of ``x`` (renormalised to ``w̃``) and the atoms
    ``z_j`` attached to them; ``s`` is the median distance from an atom to its nearest other
    atom.

    ``weights(X)``: MAPA's weights over the training indices for the rows of an array ``X``
    (sparse, shape ``(n_rows, N)``); ``codes``: the atom attached to each training index, a
    float64 tensor of shape ``(N, latent_dim)``."""
    codes = torch.as_tensor(codes, dtype=torch.float64)
    s = float(np.median(KDTree(codes.numpy()).query(codes.numpy(), k=2)[0][:, 1]))
    log_norm = -codes.shape[1] * (math.log(s) + 0.5 * math.log(2 * math.pi))

    def draw(x, k, generator):
        w, top = _largest_weights(weights, x, components)
        centres = codes[torch.as_tensor(top)]  # (n, m, d)
        pick = torch.multinomial(w, k, replacement=True, generator=generator).T  # (k, n)
        rows = torch.arange(x.shape[0])
        z = centres[rows, pick] + s * torch.randn(pick.shape + (codes.shape[1],),
                                                  dtype=torch.float64, generator=generator)
        from_prior = torch.rand(pick.shape, generator=generator) < defensive
        z_prior, _ = prior_proposal(prior)(x, k, generator)

        def log_mix_block(z):
            sq = (z[:, :, None, :] - centres[None]).square().sum(-1)  # (k, n, m)
            return torch.logsumexp(torch.log(w)[None] - 0.5 * sq / s**2, dim=-1)

        def log_mix(z):
            return _over_blocks_of_draws(log_mix_block, z, centres.shape[1]) + log_norm

        return defensive_mixture(z, z_prior, from_prior, log_mix, prior, defensive)

    return draw


def gaussian_codes_proposal(weights, loc: np.ndarray, scale: np.ndarray, prior: Prior,
                            components: int = 64, defensive: float = 0.1):
    """MAPA's mixture over learned Gaussian codes: ``q(z | x) = 0.9 Σ_j w̃_j N(μ_j, s_j² + r²)
    + 0.1 p(z)`` over the ``components`` largest MAPA weights of ``x`` (renormalised to ``w̃``)
    and the Gaussian codes of those indices, each widened by ``r``, the median distance from a
    code's ``μ`` to its nearest other (so that the mixture covers the region between
    neighbouring codes); logit-normal for the uniform prior.

    ``weights(X)`` as for :func:`atom_proposal`; ``loc`` and ``scale`` of shape
    ``(N, latent_dim)``: each training index's code (of the underlying Gaussian for the uniform
    prior)."""
    uniform = isinstance(prior, Uniform)
    spacing = float(np.median(KDTree(loc).query(loc, k=2)[0][:, 1]))

    def draw(x, k, generator):
        w, top = _largest_weights(weights, x, components)
        mu = torch.as_tensor(loc)[torch.as_tensor(top)]  # (n, m, d)
        sd = torch.as_tensor(scale)[torch.as_tensor(top)].square().add(spacing**2).sqrt()
        pick = torch.multinomial(w, k, replacement=True, generator=generator).T  # (k, n)
        rows = torch.arange(x.shape[0])
        u = mu[rows, pick] + sd[rows, pick] * torch.randn(
            pick.shape + (mu.shape[-1],), dtype=torch.float64, generator=generator)
        z = torch.sigmoid(u) if uniform else u
        from_prior = torch.rand(pick.shape, generator=generator) < defensive
        z_prior, _ = prior_proposal(prior)(x, k, generator)

        def log_mix_block(u):
            eps = (u[:, :, None, :] - mu[None]) / sd[None]  # (k, n, m, d)
            log_n = (-0.5 * eps**2 - torch.log(sd[None]) - 0.5 * math.log(2 * math.pi)).sum(-1)
            return torch.logsumexp(torch.log(w)[None] + log_n, dim=-1)

        def log_mix(z):
            if uniform:
                z = z.clamp(1e-12, 1 - 1e-12)
                u, log_jac = torch.log(z) - torch.log1p(-z), -torch.log(z * (1 - z)).sum(-1)
            else:
                u, log_jac = z, 0.0
            return _over_blocks_of_draws(log_mix_block, u, mu.shape[1]) + log_jac

        return defensive_mixture(z, z_prior, from_prior, log_mix, prior, defensive)

    return draw
