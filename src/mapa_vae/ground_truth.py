"""Ground-truth generative models ``(prior, f, σ)`` with known densities.

``z ~ p(z)``, ``x | z ~ N(f(z), σ² I)``. A ground truth knows its marginal
``log p(x) = log ∫ p(z) N(x; f(z), σ² I) dz`` (equal-mass quadrature, float64, for latent
dimension 1 or 2; above, the one evaluator of :mod:`mapa_vae.marginal`, the same that scores
every trained model) and its posterior density
``log p(z | x) = log p(z) + log N(x; f(z), σ² I) − log p(x)``. :class:`LinearGaussian`,
``f(z) = A z + b`` with a standard normal prior, has its marginal in closed form in any
dimension: ``p(x) = N(x; b, A Aᵀ + σ² I)``.

``f`` maps a float64 tensor of shape ``(n, latent_dim)`` to shape ``(n, D)``; a function written
with NumPy that returns an array works too for latent dimension 1 or 2 (above, the evaluator
needs gradients of ``f`` with respect to ``z`` and refuses such a function with an error).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.linalg import cholesky, solve_triangular

from .evaluation import log_marginal
from .marginal import estimate_log_marginal
from .likelihood import check_sigma, mixture_log_joint
from .priors import Prior, make_prior
from .validation import as_data, check_positive_int


class GroundTruth:
    """A known latent-variable model to sample from and to score against.

    Parameters
    ----------
    prior : {"normal", "uniform"} or Prior
        The latent prior ``p(z)``.
    f : callable
        Tensor ``(n, latent_dim)`` → tensor ``(n, D)``: the true decoder.
    sigma : float
        Observation noise standard deviation, positive.
    latent_dim : int
        Latent dimension ``d_z``.
    name : str, optional
        A label used in reports.
    nodes_per_dim : int, optional
        Quadrature nodes per latent axis (default: see :func:`mapa_vae.evaluation.log_marginal`).

    Examples
    --------
    >>> import torch
    >>> from mapa_vae import GroundTruth
    >>> truth = GroundTruth("normal", lambda z: torch.cat([z, z**2], dim=1), sigma=0.1)
    >>> X, Z = truth.sample(5, seed=0)
    >>> X.shape, Z.shape
    ((5, 2), (5, 1))
    """

    def __init__(self, prior="normal", f=None, sigma: float = 0.1, latent_dim: int = 1,
                 name: str = "custom", nodes_per_dim: int | None = None):
        if not callable(f):
            raise ValueError(f"f must be a callable mapping latent codes to data, got {f!r}")
        self.latent_dim = check_positive_int(latent_dim, "latent_dim")
        self.prior: Prior = make_prior(prior, self.latent_dim)
        self.sigma = check_sigma(sigma)
        self.f = f
        self.name = name
        self.source = None  # the file it came from (set by mapa_vae.datasets.load_from_file)
        self.nodes_per_dim = nodes_per_dim
        try:
            probe = self.mean(self.prior.sample(3, random_state=0))
        except (RuntimeError, TypeError, IndexError) as error:
            raise ValueError(f"f failed on codes of shape (3, {self.latent_dim}) "
                             f"(latent_dim={self.latent_dim}; is that f's input size?): "
                             f"{type(error).__name__}: {error}") from error
        self.data_dim = probe.shape[1]

    def __repr__(self) -> str:
        return (f"GroundTruth(name={self.name!r}, prior={self.prior!r}, sigma={self.sigma}, "
                f"data_dim={self.data_dim})")

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``f(z)`` as a float64 tensor of shape ``(n, D)``; checks the shape ``f`` returns and
        that it has no NaN (an infinite mean is a zero likelihood: a quadrature node far in a
        tail may give one)."""
        out = self.f(z)
        if not isinstance(out, torch.Tensor):
            out = torch.as_tensor(np.asarray(out))
        out = out.to(torch.float64)
        if out.ndim == 1 and out.shape[0] == z.shape[0]:
            out = out[:, None]
        if out.ndim != 2 or out.shape[0] != z.shape[0]:
            raise ValueError(f"f returned shape {tuple(out.shape)} for {z.shape[0]} latent codes; "
                             f"expected ({z.shape[0]}, D)")
        self._check_values(z, out, ~torch.isnan(out).any(dim=1))
        return out

    def _check_values(self, z: torch.Tensor, out: torch.Tensor, good: torch.Tensor) -> None:
        """A ``ValueError`` naming this truth (and its file) where ``f`` gave bad values."""
        if bool(good.all()):
            return
        bad = (~good).nonzero()[:, 0]
        where = f" from {self.source!r}" if getattr(self, "source", None) else ""
        raise ValueError(f"f of the ground truth {self.name!r}{where} produced non-finite values "
                         f"(NaN or inf) for {bad.numel()} of {z.shape[0]} latent codes, e.g. "
                         f"z = {z[bad[0]].tolist()}")

    def mean(self, Z) -> np.ndarray:
        """``f(Z)`` for latent codes ``Z`` of shape ``(n, latent_dim)``; a ``ValueError`` if any
        value is NaN or infinite."""
        Z = as_data(Z, "Z", n_features=self.latent_dim)
        z = torch.from_numpy(Z)
        out = self.decode(z)
        self._check_values(z, out, torch.isfinite(out).all(dim=1))
        return out.numpy()

    def sample(self, n: int, seed=None):
        """Draw ``n`` points: returns ``(X, Z)`` of shapes ``(n, D)`` and ``(n, latent_dim)``."""
        n = check_positive_int(n, "n")
        rng = np.random.default_rng(seed)
        Z = self.prior.sample(n, random_state=rng)
        X = self.mean(Z) + self.sigma * rng.standard_normal((n, self.data_dim))
        return X, Z

    def log_prob(self, X) -> np.ndarray:
        """``log p(x)`` per row of ``X``, shape ``(n,)``: by equal-mass quadrature for latent
        dimension 1 or 2, above by :meth:`log_prob_estimate` (its estimates, seed 0)."""
        X = as_data(X, "X", n_features=self.data_dim)
        if self.latent_dim <= 2:
            return log_marginal(self.decode, self.prior, self.sigma, X, self.nodes_per_dim)
        return self.log_prob_estimate(X).log_prob

    def log_prob_estimate(self, X, seed=0, **options):
        """``log p(x)`` per row with standard errors, effective sample sizes and cost, by the
        evaluator that scores every model (:func:`mapa_vae.marginal.estimate_log_marginal`,
        ``options`` go to it), any latent dimension; ``f`` must give gradients."""
        X = as_data(X, "X", n_features=self.data_dim)
        return estimate_log_marginal(self.decode, self.prior, self.sigma, X, seed=seed,
                                     **options)

    def log_posterior(self, X, Z) -> np.ndarray:
        """``log p(z_j | x_i)`` of shape ``(n_x, n_z)``: the true posterior density at each code."""
        X = as_data(X, "X", n_features=self.data_dim)
        Z = as_data(Z, "Z", n_features=self.latent_dim)
        z = torch.from_numpy(Z)
        log_joint = mixture_log_joint(torch.from_numpy(X), self.decode(z), self.prior.log_prob(z),
                                      self.sigma)
        return log_joint.numpy() - self.log_prob(X)[:, None]


class LinearGaussian(GroundTruth):
    """The linear-Gaussian model ``z ~ N(0, I_d)``, ``x | z ~ N(A z + b, σ² I_D)``, whose marginal
    is closed form in any dimension: ``p(x) = N(x; b, C)``, ``C = A Aᵀ + σ² I``.

    Parameters
    ----------
    A : array-like of shape (D, latent_dim)
    b : array-like of shape (D,)
    sigma : float
    name : str, optional

    Its twin :meth:`rotated` ``(Q)`` is ``f(z) = A Q z + b`` for an orthogonal ``Q``: the same
    ``C`` (``A Q Qᵀ Aᵀ = A Aᵀ``), so the same ``p(x)``, and the codes ``Qᵀ z``.

    Examples
    --------
    >>> import numpy as np
    >>> truth = LinearGaussian(np.eye(3, 2), np.zeros(3), sigma=0.5)
    >>> round(float(truth.log_prob(np.zeros((1, 3)))[0]), 4)
    -2.2868
    """

    def __init__(self, A, b, sigma: float = 0.1, name: str = "linear-gaussian"):
        A = np.array(A, dtype=np.float64)
        b = np.array(b, dtype=np.float64)
        if A.ndim != 2 or not np.all(np.isfinite(A)):
            raise ValueError(f"A must be a finite matrix of shape (D, latent_dim), got shape "
                             f"{A.shape}")
        if b.shape != (A.shape[0],) or not np.all(np.isfinite(b)):
            raise ValueError(f"b must be a finite vector of shape ({A.shape[0]},), got shape "
                             f"{b.shape}")
        self.A, self.b = A, b
        weight, bias = torch.from_numpy(A), torch.from_numpy(b)
        super().__init__("normal", lambda z: torch.nn.functional.linear(z, weight, bias),
                         sigma=sigma,
                         latent_dim=A.shape[1], name=name)
        self._cholesky = cholesky(A @ A.T + self.sigma**2 * np.eye(A.shape[0]), lower=True)

    def log_prob(self, X) -> np.ndarray:
        """``log N(x; b, A Aᵀ + σ² I)`` per row of ``X``, exactly (float64, Cholesky)."""
        X = as_data(X, "X", n_features=self.data_dim)
        white = solve_triangular(self._cholesky, (X - self.b).T, lower=True)
        log_det = 2.0 * np.log(np.diag(self._cholesky)).sum()
        return -0.5 * (np.square(white).sum(0) + log_det + self.data_dim * math.log(2 * math.pi))

    def rotated(self, Q, name: str | None = None) -> "LinearGaussian":
        """The same model with the latent rotated, ``f(z) = A Q z + b`` (``Q`` orthogonal)."""
        Q = np.asarray(Q, dtype=np.float64)
        d = self.latent_dim
        if Q.shape != (d, d) or not np.allclose(Q.T @ Q, np.eye(d), atol=1e-10):
            raise ValueError(f"Q must be an orthogonal matrix of shape ({d}, {d})")
        return LinearGaussian(self.A @ Q, self.b, self.sigma, self.name if name is None else name)
