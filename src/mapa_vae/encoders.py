"""Amortized posteriors ``q_φ(z | x)`` for the baselines (MAPA needs none).

Standard-normal prior: mean-field Gaussian ``N(μ_φ(x), diag s_φ(x)²)``. Uniform prior on
``[0, 1]^d``: logit-normal, ``z = sigmoid(u)`` with ``u ~ N(μ, diag s²)`` and
``log q(z) = log N(u; μ, s²) − Σ_j log z_j (1 − z_j)``. The scale is ``softplus(·) + 10⁻⁴``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import batch_normal
from .priors import Prior, StandardNormal

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_MIN_SCALE = 1e-4


class AmortizedPosterior(nn.Module):
    """Wraps a network ``x ↦ 2·latent_dim`` outputs (location and raw scale)."""

    def __init__(self, net: nn.Module, prior: Prior):
        super().__init__()
        self.net = net
        self.prior = prior
        self.gaussian = isinstance(prior, StandardNormal)

    def forward(self, x: torch.Tensor):
        """``(loc, scale)``, each of shape ``(B, latent_dim)``."""
        out = self.net(x)
        d = self.prior.latent_dim
        if out.shape[-1] != 2 * d:
            raise ValueError(f"encoder returned {out.shape[-1]} outputs; expected 2 * latent_dim "
                             f"= {2 * d}")
        return out[..., :d], F.softplus(out[..., d:]) + _MIN_SCALE

    def rsample(self, loc: torch.Tensor, scale: torch.Tensor, n_samples: int = 1,
                generator: torch.Generator | None = None):
        """Reparameterised draws ``z`` of shape ``(S, B, d)`` and ``log q(z | x)`` of ``(S, B)``."""
        eps = batch_normal((n_samples,) + loc.shape, loc.dtype, loc.device, generator)
        u = loc + scale * eps
        log_q = (-0.5 * eps**2 - torch.log(scale) - _LOG_SQRT_2PI).sum(-1)
        if self.gaussian:
            return u, log_q
        # logit-normal: z = sigmoid(u), |dz/du| = z (1 − z) = sigmoid(u) sigmoid(−u)
        return torch.sigmoid(u), log_q - (F.logsigmoid(u) + F.logsigmoid(-u)).sum(-1)

    def log_prob(self, z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``log q(z | x)`` for codes ``z`` under ``(loc, scale)``; broadcasts, sums the last axis."""
        if self.gaussian:
            u, log_jac = z, 0.0
        else:
            z = z.clamp(1e-12, 1 - 1e-12)
            u = torch.log(z) - torch.log1p(-z)
            log_jac = -(torch.log(z) + torch.log1p(-z)).sum(-1)
        eps = (u - loc) / scale
        return (-0.5 * eps**2 - torch.log(scale) - _LOG_SQRT_2PI).sum(-1) + log_jac

    def kl_to_prior(self, loc: torch.Tensor, scale: torch.Tensor):
        """``KL(q ‖ p)`` in closed form for the Gaussian case, shape ``(B,)``; ``None`` otherwise."""
        if not self.gaussian:
            return None
        return 0.5 * (loc**2 + scale**2 - 1.0 - 2.0 * torch.log(scale)).sum(-1)
