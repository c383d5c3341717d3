"""Isotropic Gaussian observation model ``p(x | z) = N(x; f(z), σ² I)`` and finite mixtures of it.

The same mixture formula serves two places: the quadrature estimate of the continuous marginal
(nodes of an equal-mass grid, weights ``M⁻ᵈ``) and the empiricalized model (atoms, weights ``1/N``):

    log p(x) = logsumexp_m [ log w_m + log N(x; μ_m, σ² I) ]
"""
from __future__ import annotations

import math

import torch
from torch import nn

_LOG_2PI = math.log(2 * math.pi)
#: Pairs per chunk in :func:`mixture_log_prob`: 2 MiB of float64, so that each chunk's
#: arithmetic stays in cache (measured 2.7× faster than 32 MiB chunks on 5000 × 65536 pairs).
_CHUNK_PAIRS = 1 << 18


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``‖x_i − y_j‖²`` of shape ``(n, m)``, computed without the cancellation-prone expansion."""
    return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist").square()


def log_normal_from_sqdist(sqdist: torch.Tensor, sigma, dim: int) -> torch.Tensor:
    """``log N(x; μ, σ² I)`` in ``dim`` dimensions given ``‖x − μ‖²``."""
    sigma = torch.as_tensor(sigma, dtype=sqdist.dtype, device=sqdist.device)
    return -0.5 * sqdist / sigma**2 - dim * torch.log(sigma) - 0.5 * dim * _LOG_2PI


def mixture_log_joint(x: torch.Tensor, means: torch.Tensor, log_weights: torch.Tensor, sigma):
    """``log w_m + log N(x_i; μ_m, σ² I)`` of shape ``(n, m)``."""
    return log_weights + log_normal_from_sqdist(squared_distances(x, means), sigma, x.shape[-1])


@torch.no_grad()
def mixture_log_prob(x: torch.Tensor, means: torch.Tensor, log_weights: torch.Tensor, sigma):
    """``log Σ_m w_m N(x_i; μ_m, σ² I)`` of shape ``(n,)``, an evaluation (no gradients).

    Computed as ``logsumexp_m [log w_m − ‖x_i − μ_m‖² / 2σ²] − D log σ − D/2 log 2π`` over
    cache-sized chunks of rows, in place; the same terms as :func:`mixture_log_joint`, added in
    another order (differences of a few units in the last place)."""
    sigma = float(sigma)
    dim = x.shape[-1]
    out = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    step = max(1, _CHUNK_PAIRS // max(1, means.shape[0]))
    for start in range(0, x.shape[0], step):
        rows = slice(start, min(x.shape[0], start + step))
        joint = squared_distances(x[rows], means).mul_(-0.5 / sigma**2).add_(log_weights)
        out[rows] = torch.logsumexp(joint, dim=1)
    return out.sub_(dim * math.log(sigma) + 0.5 * dim * _LOG_2PI)


def mixture_log_responsibilities(x, means, log_weights, sigma):
    """``log [w_m N(x_i; μ_m, σ²I) / Σ_l w_l N(x_i; μ_l, σ²I)]`` of shape ``(n, m)``."""
    joint = mixture_log_joint(x, means, log_weights, sigma)
    return joint - torch.logsumexp(joint, dim=1, keepdim=True)


def check_sigma(sigma) -> float:
    """Validate a noise scale: a finite positive number."""
    try:
        value = float(sigma)
    except (TypeError, ValueError):
        raise ValueError(f"sigma must be a positive number, got {sigma!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
    return value


class GaussianLikelihood(nn.Module):
    """``p(x | z) = N(x; f(z), σ² I)`` with ``σ`` fixed or learned (parameterised as ``log σ``)."""

    def __init__(self, sigma: float = 0.1, learn_sigma: bool = False):
        super().__init__()
        log_sigma = torch.tensor(math.log(check_sigma(sigma)), dtype=torch.float32)
        self.learn_sigma = bool(learn_sigma)
        if self.learn_sigma:
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)

    @property
    def sigma(self) -> torch.Tensor:
        return self.log_sigma.exp()

    def log_prob(self, x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """``log N(x; mean, σ² I)`` summed over the last axis; broadcasts over leading axes."""
        sqdist = (x - mean).square().sum(dim=-1)
        return log_normal_from_sqdist(sqdist, self.sigma.to(sqdist.dtype), x.shape[-1])

    def extra_repr(self) -> str:
        return f"sigma={float(self.sigma):.4g}, learn_sigma={self.learn_sigma}"
