"""Observation models ``p(x | z)`` through the decoder's output ``y = f(z)``, and their mixtures.

* :class:`GaussianLikelihood`: ``x | z ~ N(y, σ² I)``, ``σ`` fixed or learned; ``y`` is the mean.
* :class:`BernoulliLikelihood`: ``x_d | z ~ Bernoulli(sigmoid(y_d))``, ``y`` the logits; for
  data in ``[0, 1]`` read as the probabilities of binary pixels (binarised afresh at each step
  where a method needs binary draws, :meth:`BernoulliLikelihood.observe`).

Both are exponential families with fixed dispersion: ``log p(x | y)`` is linear in a statistic
``T(x)``. Hence, for index weights ``W_in ≥ 0`` with ``m_n = Σ_i W_in``,
``x̄_n = Σ_i W_in x_i / m_n`` and ``c_n = Σ_i W_in ‖x_i − x̄_n‖²``,

    Σ_i W_in log N(x_i; y, σ² I) = −m_n (D log σ + ½ D log 2π) − (m_n ‖x̄_n − y‖² + c_n) / (2σ²)
    Σ_i W_in log Bern(x_i; y)    = m_n (⟨x̄_n, y⟩ − Σ_d log(1 + e^{y_d}))

(:meth:`Likelihood.weighted_log_prob`): MAPA's bound needs one decoder pass per index, whatever
the number of points ``i`` its weights reach.

The same mixture formula serves two places: the quadrature estimate of the continuous marginal
(nodes of an equal-mass grid, weights ``M⁻ᵈ``) and the empiricalized model (atoms, weights ``1/N``):

    log p(x) = logsumexp_m [ log w_m + log p(x | y_m) ]

Wherever a likelihood is taken, a number stands for the Gaussian with that ``σ``.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
from scipy.spatial.distance import cdist
from torch import nn

from .distributed import batch_uniform

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


def log1p_exp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 + eˣ)`` without overflow or a cut-off (exact to rounding for every ``x``)."""
    return torch.logaddexp(x, x.new_zeros(()))


def pairwise_log_prob(likelihood, x: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """``log p(x_i | y_j)`` of shape ``(n, m)`` for rows ``x`` ``(n, D)`` and decoder outputs
    ``outputs`` ``(m, D)``; ``likelihood`` a :class:`Likelihood` or a Gaussian's ``σ``."""
    if isinstance(likelihood, Likelihood):
        return likelihood.pairwise_log_prob(x, outputs)
    return log_normal_from_sqdist(squared_distances(x, outputs), likelihood, x.shape[-1])


def mixture_log_joint(x: torch.Tensor, means: torch.Tensor, log_weights: torch.Tensor,
                      likelihood):
    """``log w_m + log p(x_i | y_m)`` of shape ``(n, m)`` (``means``: the outputs ``y_m``)."""
    return log_weights + pairwise_log_prob(likelihood, x, means)


@torch.no_grad()
def mixture_log_prob(x: torch.Tensor, means: torch.Tensor, log_weights: torch.Tensor,
                     likelihood):
    """``log Σ_m w_m p(x_i | y_m)`` of shape ``(n,)``, an evaluation (no gradients), over
    cache-sized chunks of rows.

    For the Gaussian, ``logsumexp_m [log w_m − ‖x_i − μ_m‖² / 2σ²] − D log σ − D/2 log 2π``
    computed in place; the same terms as :func:`mixture_log_joint`, added in another order
    (differences of a few units in the last place)."""
    if isinstance(likelihood, GaussianLikelihood):
        likelihood = float(likelihood.sigma)
    gaussian = not isinstance(likelihood, Likelihood)
    against = None if gaussian else likelihood.against(means)  # per output, computed once
    out = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    step = max(1, _CHUNK_PAIRS // max(1, means.shape[0]))
    for start in range(0, x.shape[0], step):
        rows = slice(start, min(x.shape[0], start + step))
        if gaussian:
            joint = squared_distances(x[rows], means).mul_(-0.5 / float(likelihood)**2)
            joint.add_(log_weights)
        else:
            joint = against(x[rows]).add_(log_weights)
        out[rows] = torch.logsumexp(joint, dim=1)
    if gaussian:
        dim, sigma = x.shape[-1], float(likelihood)
        out.sub_(dim * math.log(sigma) + 0.5 * dim * _LOG_2PI)
    return out


def mixture_log_responsibilities(x, means, log_weights, likelihood):
    """``log [w_m p(x_i | y_m) / Σ_l w_l p(x_i | y_l)]`` of shape ``(n, m)``."""
    joint = mixture_log_joint(x, means, log_weights, likelihood)
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


class Likelihood(nn.Module):
    """``p(x | z)`` through the decoder's output ``y = f(z)``; every method is written against
    these methods only, so it trains and is scored under any likelihood.

    ``log_prob`` sums over the last axis and broadcasts over the leading ones;
    ``weighted_log_prob`` is ``Σ_i W_in log p(x_i | y_n)`` from the weights' statistics (module
    docstring); ``cost`` is a pairwise cost ``C(x̄, y)`` with ``Σ_i W_in log p(x_i | y) =
    b_n − a m_n C(x̄_n, y)`` (``a > 0`` shared by all pairs), what a re-attachment minimises;
    ``observe`` turns training rows into the observations a step trains on; ``frozen`` is a
    float64 copy without gradients, for evaluation."""

    name = "likelihood"

    def log_prob(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pairwise_log_prob(self, x: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        """``log p(x_i | y_j)`` of shape ``(..., n, m)`` for rows ``x`` ``(..., n, D)`` and
        outputs ``(..., m, D)``."""
        return self.against(outputs)(x)

    def against(self, outputs: torch.Tensor):
        """``x ↦ log p(x_i | y_j)`` for fixed outputs ``y``, what depends on them alone
        computed once (for many blocks of rows against the same outputs)."""
        raise NotImplementedError

    def weighted_log_prob(self, out, mass, xbar, spread, fixed: bool = False) -> torch.Tensor:
        """``Σ_i W_in log p(x_i | y_n)`` per row of ``out`` from ``m_n`` (``mass``), ``x̄_n``
        (``xbar``) and ``c_n`` (``spread``); ``fixed``: the likelihood's own parameters pass
        no gradient."""
        raise NotImplementedError

    def cost(self, xbar: np.ndarray, outputs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """``E[x | z]`` from the decoder's output."""
        raise NotImplementedError

    def sample(self, out: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One draw ``x ~ p(x | y)`` per row of ``out`` (float64 arrays)."""
        raise NotImplementedError

    def observe(self, x: torch.Tensor) -> torch.Tensor:
        """The observations a training step sees for the training rows ``x``: the rows
        themselves."""
        return x

    @staticmethod
    def check_data(X: np.ndarray, name: str = "X") -> None:
        """Refuse data this likelihood does not describe (a ``ValueError`` naming ``name``)."""

    def history(self) -> dict:
        """The likelihood's own numbers for a row of training history (none here)."""
        return {}

    def frozen(self) -> "Likelihood":
        """A float64 copy without gradients, for evaluation."""
        return copy.deepcopy(self).double().requires_grad_(False)


class GaussianLikelihood(Likelihood):
    """``p(x | z) = N(x; f(z), σ² I)`` with ``σ`` fixed or learned (parameterised as ``log σ``)."""

    name = "gaussian"

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

    def against(self, outputs):
        def log_prob(x):
            return log_normal_from_sqdist(squared_distances(x, outputs),
                                          self.sigma.to(x.dtype), x.shape[-1])

        return log_prob

    def weighted_log_prob(self, out, mass, xbar, spread, fixed: bool = False):
        log_sigma = self.log_sigma.detach() if fixed else self.log_sigma
        sq = mass * (xbar - out).square().sum(-1) + spread
        return (-mass * out.shape[-1] * (log_sigma + 0.5 * _LOG_2PI)
                - 0.5 * sq / log_sigma.exp() ** 2)

    def cost(self, xbar, outputs):
        """``‖x̄ − y‖²``."""
        return cdist(xbar, outputs, "sqeuclidean")

    def mean(self, out):
        return out

    def sample(self, out, rng):
        return out + float(self.sigma.detach()) * rng.standard_normal(out.shape)

    def history(self) -> dict:
        return {"sigma": float(self.sigma.detach())}

    def frozen(self) -> "GaussianLikelihood":
        """A fixed float64 copy at the ``σ`` training reports (``float(self.sigma)``)."""
        return _float64_gaussian(float(self.sigma.detach()))

    def extra_repr(self) -> str:
        return f"sigma={float(self.sigma):.4g}, learn_sigma={self.learn_sigma}"


class BernoulliLikelihood(Likelihood):
    """``p(x | z) = Π_d Bernoulli(x_d; sigmoid(f(z)_d))``: the decoder gives logits ``η``,
    ``log p(x | η) = Σ_d (x_d η_d − log(1 + e^{η_d}))``.

    Data in ``[0, 1]`` are the probabilities of binary pixels: a step of a method that needs
    binary draws (an encoder's input, an importance-weighted bound) sees a fresh binarisation
    ``x ~ Bernoulli(v)`` (dynamic binarisation, :meth:`observe`), while MAPA's bounds, linear in
    ``x``, take the probabilities themselves, which is their exact expectation over the draws.
    """

    name = "bernoulli"

    def log_prob(self, x, logits):
        return (x * logits - log1p_exp(logits)).sum(-1)

    def against(self, logits):
        log_norm = log1p_exp(logits).sum(-1).unsqueeze(-2)
        return lambda x: x @ logits.mT - log_norm

    def weighted_log_prob(self, out, mass, xbar, spread, fixed: bool = False):
        return mass * ((xbar * out).sum(-1) - log1p_exp(out).sum(-1))

    def cost(self, xbar, outputs):
        """``Σ_d log(1 + e^{η_d}) − ⟨x̄, η⟩``."""
        log_norm = np.logaddexp(0.0, outputs).sum(-1)
        return log_norm[None, :] - xbar @ outputs.T

    def mean(self, logits):
        return torch.sigmoid(logits)

    def sample(self, logits, rng):
        return (rng.random(logits.shape) < 1.0 / (1.0 + np.exp(-logits))).astype(np.float64)

    def observe(self, x):
        """A fresh binarisation ``x ~ Bernoulli(v)`` of rows ``v`` in ``[0, 1]`` (binary rows are
        their own); in a data-parallel step, this rank's rows of one draw for the minibatch."""
        return (batch_uniform(x.shape, x.dtype, x.device, batch_dim=0) < x).to(x.dtype)

    @staticmethod
    def check_data(X, name="X"):
        low, high = float(np.min(X)), float(np.max(X))
        if low < 0.0 or high > 1.0:
            raise ValueError(f"{name}: the Bernoulli likelihood takes values in [0, 1] (the "
                             f"probabilities of binary pixels); the data range over "
                             f"[{low:.4g}, {high:.4g}]")


LIKELIHOODS = {"gaussian": GaussianLikelihood, "bernoulli": BernoulliLikelihood}


def check_likelihood(name) -> str:
    """``name`` if it names a likelihood, else a ``ValueError`` listing them."""
    if not isinstance(name, str) or name not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {sorted(LIKELIHOODS)}, got {name!r}")
    return name


def _float64_gaussian(sigma: float) -> GaussianLikelihood:
    """A fixed Gaussian likelihood whose ``σ`` is ``sigma`` in float64 (up to ``exp ∘ log``)."""
    likelihood = GaussianLikelihood(1.0).double()
    likelihood.log_sigma.fill_(math.log(sigma))
    return likelihood


def as_likelihood(value) -> Likelihood:
    """A likelihood for evaluation (:meth:`Likelihood.frozen`); a number is the ``σ`` of a
    Gaussian."""
    if isinstance(value, Likelihood):
        return value.frozen()
    return _float64_gaussian(check_sigma(value))
