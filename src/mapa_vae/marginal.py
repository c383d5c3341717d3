"""One log-marginal-likelihood evaluator for every latent dimension and every model.

``log p(x) = log ∫ p(z) p(x | f(z)) dz`` is estimated the same way for a ground truth and
for every trained method, from the decoder ``f``, the prior and the likelihood alone (never from a
method's own posterior approximation). Quadrature (:func:`mapa_vae.evaluation.log_marginal`)
stays the reference for latent dimension 1 and 2; this estimator is what is used above.

**Coordinates.** Every prior here is a product of 1-D marginals with inverse CDF ``F⁻¹``, so
``z = T(u) = F⁻¹(Φ(u))`` with ``u ~ N(0, I)`` and

    p(x) = ∫ N(u; 0, I) p(x | f(T(u))) du,

an integral over an unbounded space with a standard normal prior (``T`` is the identity for the
normal prior, ``Φ`` for the uniform one). Everything below works in ``u``.

**Proposal fitted to each point** (per-point variational inference). For each ``x``:

1. ``restarts`` Gaussians ``N(m_r, L_r L_rᵀ)`` (full covariance, ``L_r`` lower triangular with a
   positive diagonal), started at ``L_r = 0.1 I`` and at ``R`` distinct draws among
   ``start_draws`` prior draws ``u_j``: the one of highest
   ``log p(u_j) + log p(x | f(T(u_j)))`` and ``R − 1`` resampled with probabilities
   ``∝ p(x | f(T(u_j)))`` without replacement (importance resampling: starts spread over
   the posterior's modes in proportion to their mass where the prior draws reach them, so
   distinct restarts settle in distinct modes);
2. each is fitted by ``fit_steps`` Adam steps (learning rate cosine-annealed from
   ``learning_rate`` to zero) on its ELBO, ``E_q[log p(u) + log p(x | u)] + H[q]``, with
   ``fit_samples`` reparameterised samples per step and the entropy in closed form
   (``Σ log diag L_r`` plus a constant); for a linear-Gaussian model the optimum is the exact
   posterior;
3. the proposal is the mixture ``q(u) = (1 − ε) (1/R) Σ_r N(u; m_r, c² L_r L_rᵀ) + ε N(0, I)``
   with the factors widened by ``c = widen`` (variational fits are too narrow) and a defensive
   share ``ε = defensive`` of the prior (bounded weights where every fit is too narrow).

**Importance sampling.** With ``u_k ~ q``, ``k = 1..K``, ``w_k = p(u_k) p(x | u_k) / q(u_k)``:
``log p̂(x) = log (1/K) Σ_k w_k`` (float64, logsumexp). ``p̂`` is unbiased, so ``log p̂`` is a
stochastic lower bound that is biased low by about ``se²/2``; ``se = sd(w) / (√K mean(w))`` is
its delta-method standard error and ``(Σ w)² / Σ w²`` its effective sample size (of ``K``).

**Annealed importance sampling** (``anneal_steps = T > 0``; Neal 2001, as Wu et al. 2017 compare
decoder-based models). Where importance sampling from the fitted proposal ``q`` above has too
few effective samples (many latent dimensions), ``K`` chains start from ``q`` itself and are
annealed to the posterior ``f_T(u) = p(u) p(x | u)``, whose integral is ``p(x)``, through
``f_t = q^{1 − β_t} f_T^{β_t}`` on the sigmoidal schedule ``β_t`` (Grosse et al. 2015). A chain's
weight ``log w = Σ_t (β_t − β_{t−1}) [log f_T(u_{t−1}) − log q(u_{t−1})]``, with ``u_t`` from
``u_{t−1}`` by one Hamiltonian Monte Carlo step that leaves ``f_t`` invariant
(``leapfrog_steps`` leapfrog steps, Metropolis correction), has ``E[w] = p(x)``: the estimate,
its standard error and effective sample size are the same functions of the chains' weights as
of importance weights, and ``T = 0`` is importance sampling. The transitions run in the
coordinates that whiten ``q``'s mixture (its mean and covariance) with unit mass, and each
point's leapfrog step size is adapted between temperatures towards an acceptance rate of 0.65
(from its chains' mean acceptance). Chains start in every fitted mode (in proportion to ``q``),
so a posterior with several modes is annealed from all of them.

**Cost.** ``start_draws + R · fit_steps · fit_samples`` decoder passes for the fit (those of the
steps with gradients) and ``K`` for the estimate, per point (annealing: ``K (1 + T ·
leapfrog_steps)``, with gradients); reported with the wall-clock seconds in the result. The
decoder must give gradients with respect to its input (a function written with NumPy does
not): the fit needs them, and a decoder without them is refused with an error that says so.

Deterministic given ``seed`` (a seeded torch generator; CPU, float64), for a fixed thread count.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from .evaluation import ImportanceEstimate, weight_summary
from .likelihood import as_likelihood
from .priors import Prior, StandardNormal
from .validation import as_data, check_non_negative_int, check_positive_int

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def from_standard_normal(prior: Prior):
    """``T(u) = F⁻¹(Φ(u))``: maps ``u ~ N(0, I)`` to ``z ~ p(z)`` (identity for the normal prior),
    differentiable in ``u``."""
    if isinstance(prior, StandardNormal):
        return lambda u: u
    tiny = torch.finfo(torch.float64).tiny

    def transform(u):
        return prior.icdf(torch.special.ndtr(u).clamp(tiny, 1.0 - 1e-16))

    return transform


def _log_std_normal(u: torch.Tensor) -> torch.Tensor:
    return -0.5 * u.square().sum(-1) - u.shape[-1] * _LOG_SQRT_2PI


def check_differentiable(decode, latent_dim: int) -> None:
    """Refuse a decoder that gives no gradient with respect to its input codes."""
    probe = torch.zeros(2, latent_dim, dtype=torch.float64, requires_grad=True)
    why = ("the log-likelihood evaluator for latent_dim >= 3 fits a proposal to each point by "
           "gradient, so f must be written with torch operations on the input tensor")
    try:
        with torch.enable_grad():
            out = decode(probe)
    except RuntimeError as error:
        raise ValueError(f"f failed on a tensor that requires gradients ({error}); {why}") \
            from None
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        raise ValueError(f"f gives no gradient with respect to z (it returned "
                         f"{type(out).__name__} detached from its input, e.g. computed with "
                         f"NumPy); {why}")


class _Target:
    """``log p(u) + log p(x | f(T(u)))`` for rows ``x``, counting decoder passes."""

    def __init__(self, decode, prior: Prior, likelihood):
        self.decode, self.transform = decode, from_standard_normal(prior)
        self.likelihood = as_likelihood(likelihood)
        self.passes = 0

    def __call__(self, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``u`` of shape ``(..., n, d)`` against ``x`` of shape ``(n, D)``; returns ``(..., n)``."""
        lead, d = u.shape[:-1], u.shape[-1]
        mean = self.decode(self.transform(u.reshape(-1, d))).to(torch.float64)
        self.passes += mean.shape[0]
        mean = mean.reshape(*lead, x.shape[-1])
        return self.likelihood.log_prob(x, mean) + _log_std_normal(u)


def _fit(target: _Target, x, d: int, restarts: int, start_draws: int, steps: int,
         samples: int, learning_rate: float, generator):
    """Per-point, per-restart Gaussians: locations ``(n, R, d)`` and lower-triangular scale
    factors ``(n, R, d, d)`` (covariance ``L Lᵀ``)."""
    n = x.shape[0]
    with torch.no_grad():
        u0 = torch.randn((start_draws, n, d), dtype=torch.float64, generator=generator)
        log_joint = target(u0, x).T  # (n, start_draws)
        best = log_joint.argmax(1, keepdim=True)
        log_lik = log_joint - _log_std_normal(u0).T
        # the others by resampling ∝ p(u | x) without replacement (a floor lets every draw be
        # chosen when the weights underflow)
        probs = torch.softmax(log_lik, 1).clamp_min(1e-30).scatter(1, best, 0.0)
        chosen = best
        if restarts > 1:
            others = torch.multinomial(probs, restarts - 1, replacement=False,
                                       generator=generator)
            chosen = torch.cat([best, others], 1)  # (n, R)
        start = u0.permute(1, 0, 2)[torch.arange(n)[:, None], chosen]
    loc = start.clone().requires_grad_(True)
    log_diag = torch.full_like(start, math.log(0.1)).requires_grad_(True)
    lower = torch.zeros(n, restarts, d, d, dtype=torch.float64, requires_grad=True)
    mask = torch.tril(torch.ones(d, d, dtype=torch.float64), -1)
    optimizer = torch.optim.Adam([loc, log_diag, lower], lr=learning_rate)
    xr = x[:, None, :].expand(n, restarts, -1)

    def factor():
        return lower * mask + torch.diag_embed(log_diag.exp())

    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = 0.5 * learning_rate * (1 + math.cos(math.pi * step / steps))
        eps = torch.randn((samples, n, restarts, d), dtype=torch.float64, generator=generator)
        u = loc + (factor() @ eps[..., None])[..., 0]
        elbo = target(u, xr).mean(0) + log_diag.sum(-1)  # + entropy up to a constant
        optimizer.zero_grad()
        (-elbo.sum()).backward()
        optimizer.step()
    return loc.detach(), factor().detach()


def estimate_log_marginal(decode, prior: Prior, likelihood, X, n_samples: int = 2000,
                          restarts: int = 8, start_draws: int = 256, fit_steps: int = 200,
                          fit_samples: int = 4, learning_rate: float = 0.05, widen: float = 1.2,
                          defensive: float = 0.1, anneal_steps: int = 0,
                          leapfrog_steps: int = 5, seed=0,
                          rows_per_chunk: int = 64, progress: bool = False) -> ImportanceEstimate:
    """``log p(x)`` per row of ``X`` by importance sampling from a proposal fitted to each point.

    Parameters
    ----------
    decode : callable
        ``f``: a float64 tensor of shape ``(M, latent_dim)`` to a tensor ``(M, D)``,
        differentiable in its input.
    prior : Prior
        The latent prior ``p(z)``.
    likelihood : Likelihood or float
        ``p(x | f(z))`` (:mod:`mapa_vae.likelihood`); a number is the ``σ`` of the Gaussian
        ``N(x; f(z), σ² I)``.
    X : array-like of shape (n, D)
    n_samples : int, default=2000
        Importance samples ``K`` per point; with ``anneal_steps > 0``, annealed chains.
    restarts, start_draws, fit_steps, fit_samples, learning_rate, widen, defensive
        The proposal (module docstring): ``R`` fits, the prior draws their starts are chosen
        from, Adam steps, samples per step, peak learning rate, scale widening ``c``, prior
        share ``ε``.
    anneal_steps : int, default=0
        ``0``: importance sampling from the fitted proposal. ``T > 0``: annealed importance
        sampling from that proposal through ``T`` temperatures (module docstring).
    leapfrog_steps : int, default=5
        Leapfrog steps of each Hamiltonian Monte Carlo transition (annealing only).
    seed : int, default=0
        Seeds every draw; the result is a function of the seed.
    progress : bool, default=False
        A progress bar over the rows.

    Returns
    -------
    ImportanceEstimate
        ``log_prob``, ``se`` and ``ess`` of shape ``(n,)``, ``n_samples``, and the cost:
        ``decoder_passes`` (rows through ``f``, fit and sampling) and ``seconds``.

    Examples
    --------
    >>> import torch
    >>> from mapa_vae.priors import StandardNormal
    >>> A = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]], dtype=torch.float64).T
    >>> est = estimate_log_marginal(lambda z: z @ A.T, StandardNormal(2), 0.3,
    ...                             [[0.1, 0.2, 0.3]], n_samples=500, fit_steps=100)
    >>> est.log_prob.shape, bool(est.se[0] < 0.05)
    ((1,), True)
    """
    start_time = time.perf_counter()
    n_samples = check_positive_int(n_samples, "n_samples")
    restarts = check_positive_int(restarts, "restarts")
    start_draws = check_positive_int(start_draws, "start_draws")
    if start_draws < restarts:
        raise ValueError(f"start_draws ({start_draws}) must be at least restarts ({restarts})")
    fit_steps = check_positive_int(fit_steps, "fit_steps")
    fit_samples = check_positive_int(fit_samples, "fit_samples")
    rows_per_chunk = check_positive_int(rows_per_chunk, "rows_per_chunk")
    leapfrog_steps = check_positive_int(leapfrog_steps, "leapfrog_steps")
    anneal_steps = check_non_negative_int(anneal_steps, "anneal_steps")
    if not 0.0 < defensive < 1.0:
        raise ValueError(f"defensive must lie in (0, 1), got {defensive!r}")
    if not widen > 0:
        raise ValueError(f"widen must be positive, got {widen!r}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate!r}")
    d = prior.latent_dim
    check_differentiable(decode, d)
    X = as_data(X, "X")
    target = _Target(decode, prior, likelihood)
    generator = torch.Generator().manual_seed(int(np.random.default_rng(seed).integers(2**63)))
    x_all = torch.as_tensor(X, dtype=torch.float64)
    log_p, se, ess = (np.empty(len(X)) for _ in range(3))
    bar = tqdm(total=len(X), disable=not progress, desc="log-likelihood", unit="row",
               dynamic_ncols=True, leave=False)
    for first in range(0, len(X), rows_per_chunk):
        rows = slice(first, min(len(X), first + rows_per_chunk))
        x = x_all[rows]
        with torch.enable_grad():
            loc, factor = _fit(target, x, d, restarts, start_draws, fit_steps, fit_samples,
                               learning_rate, generator)
        if anneal_steps:
            with torch.enable_grad():
                log_w = _annealed_weights(target, x, loc, widen * factor, defensive,
                                          n_samples, anneal_steps, leapfrog_steps, generator)
        else:
            with torch.no_grad():
                log_w = _importance_weights(target, x, loc, widen * factor, n_samples,
                                            defensive, generator)
        log_p[rows], se[rows], ess[rows] = weight_summary(log_w)
        bar.update(rows.stop - rows.start)
    bar.close()
    return ImportanceEstimate(log_p, se, ess, n_samples, decoder_passes=target.passes,
                              seconds=time.perf_counter() - start_time)


def _log_mixture(u, loc, factor) -> torch.Tensor:
    """``log (1/R) Σ_r N(u; m_r, L_r L_rᵀ)`` for ``u`` of shape ``(m, n, d)``; returns ``(m, n)``."""
    m, n, d = u.shape
    diff = (u[:, :, None, :] - loc).permute(1, 2, 3, 0)  # (n, R, d, m)
    white = torch.linalg.solve_triangular(factor, diff, upper=False)
    log_det = torch.diagonal(factor, dim1=-2, dim2=-1).log().sum(-1)  # (n, R)
    log_n = -0.5 * white.square().sum(-2) - log_det[..., None] - d * _LOG_SQRT_2PI  # (n, R, m)
    return (torch.logsumexp(log_n, 1) - math.log(loc.shape[1])).T


def _log_proposal(u, loc, factor, defensive: float) -> torch.Tensor:
    """``log q(u)`` of the defensive mixture ``(1 − ε) (1/R) Σ_r N(m_r, L_r L_rᵀ) + ε N(0, I)``
    for ``u`` of shape ``(m, n, d)`` (``ε = 0``: the fitted mixture alone)."""
    mixture = _log_mixture(u, loc, factor)
    if defensive == 0:
        return mixture
    return torch.logaddexp(math.log1p(-defensive) + mixture,
                           math.log(defensive) + _log_std_normal(u))


def _draw_proposal(loc, factor, m: int, defensive: float, generator) -> torch.Tensor:
    """``m`` draws per row from the defensive mixture proposal, shape ``(m, n, d)``."""
    n, restarts, d = loc.shape
    rows = torch.arange(n)
    pick = torch.randint(restarts, (m, n), generator=generator)
    eps = torch.randn((m, n, d), dtype=torch.float64, generator=generator)
    u = loc[rows, pick] + (factor[rows, pick] @ eps[..., None])[..., 0]
    from_prior = torch.rand((m, n), dtype=torch.float64, generator=generator) < defensive
    u_prior = torch.randn((m, n, d), dtype=torch.float64, generator=generator)
    return torch.where(from_prior[..., None], u_prior, u)


def _importance_weights(target: _Target, x, loc, factor, k: int, defensive: float, generator,
                        block: int = 500) -> torch.Tensor:
    """``log w`` of shape ``(k, n)`` for ``k`` draws from the defensive mixture proposal."""
    out = []
    for first in range(0, k, block):
        u = _draw_proposal(loc, factor, min(block, k - first), defensive, generator)
        out.append(target(u, x) - _log_proposal(u, loc, factor, defensive))
    return torch.cat(out)


#: The acceptance rate the leapfrog step size is adapted towards, and how fast (per temperature,
#: multiplicatively: ``ε ← ε exp(κ (rate − target))``).
_TARGET_ACCEPTANCE, _ADAPTATION = 0.65, 0.5


def sigmoid_schedule(steps: int, sharpness: float = 4.0) -> torch.Tensor:
    """``β_0 = 0 < β_1 < … < β_T = 1``: a logistic curve in ``t``, rescaled to end at 0 and 1
    (temperatures crowd near both ends, where the intermediate densities change fastest)."""
    curve = torch.sigmoid(sharpness * torch.linspace(-1.0, 1.0, steps + 1, dtype=torch.float64))
    return (curve - curve[0]) / (curve[-1] - curve[0])


def _moments(loc, factor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(n, d)`` and Cholesky factor ``(n, d, d)`` of the covariance of the equal-weight
    mixture ``(1/R) Σ_r N(m_r, L_r L_rᵀ)``."""
    mean = loc.mean(1)
    spread = loc - mean[:, None, :]
    cov = (factor @ factor.transpose(-1, -2) + spread[..., :, None] * spread[..., None, :]).mean(1)
    return mean, torch.linalg.cholesky(cov)


def _annealed_weights(target: _Target, x, loc, factor, defensive: float, chains: int,
                      steps: int, leapfrog: int, generator) -> torch.Tensor:
    """``log w`` of shape ``(chains, n)``: annealed importance sampling from the defensive
    mixture proposal ``q`` to the posterior of each row, ``f_t = q^{1 − β_t} (p(u) p(x | u))^{β_t}``,
    Hamiltonian Monte Carlo in the coordinates ``v = C⁻¹ (u − c)`` that whiten the fitted
    mixture (``c``, ``C Cᵀ`` its mean and covariance; a constant Jacobian, which cancels)."""
    n, _, d = loc.shape
    centre, whiten = _moments(loc, factor)

    def densities(v):
        """``log q``, ``log p(u) p(x | u)`` and their gradients in ``v``."""
        v = v.detach().requires_grad_(True)
        u = centre + (whiten @ v[..., None])[..., 0]
        start, end = _log_proposal(u, loc, factor, defensive), target(u, x)
        start_grad, = torch.autograd.grad(start.sum(), v, retain_graph=True)
        end_grad, = torch.autograd.grad(end.sum(), v)
        return start.detach(), end.detach(), start_grad, end_grad

    u = _draw_proposal(loc, factor, chains, defensive, generator)
    v = torch.linalg.solve_triangular(whiten, (u - centre).permute(1, 2, 0),
                                      upper=False).permute(2, 0, 1)
    state = densities(v)
    betas = sigmoid_schedule(steps)
    log_w = torch.zeros(chains, n, dtype=torch.float64)
    step_size = torch.full((n, 1), 0.5 / d**0.25, dtype=torch.float64)
    for t in range(1, steps + 1):
        beta = float(betas[t])
        log_w += (beta - float(betas[t - 1])) * (state[1] - state[0])

        def log_f(values):  # log f_t and its gradient
            start, end, start_grad, end_grad = values
            return ((1.0 - beta) * start + beta * end,
                    (1.0 - beta) * start_grad + beta * end_grad)

        momentum = torch.randn((chains, n, d), dtype=torch.float64, generator=generator)
        value, grad = log_f(state)
        start_h = 0.5 * momentum.square().sum(-1) - value
        position, proposed = v, state
        p = momentum + 0.5 * step_size * grad
        for k in range(leapfrog):
            position = position + step_size * p
            proposed = densities(position)
            value, grad = log_f(proposed)
            p = p + (step_size if k < leapfrog - 1 else 0.5 * step_size) * grad
        log_accept = (start_h - 0.5 * p.square().sum(-1) + value).nan_to_num(nan=-math.inf)
        accept = torch.rand((chains, n), dtype=torch.float64, generator=generator).log() \
            < log_accept
        v = torch.where(accept[..., None], position, v)
        state = tuple(torch.where(accept if a.dim() == 2 else accept[..., None], a, b)
                      for a, b in zip(proposed, state))
        rate = log_accept.clamp(max=0.0).exp().mean(0)  # (n,)
        step_size = step_size * torch.exp(_ADAPTATION * (rate - _TARGET_ACCEPTANCE))[:, None]
    return log_w
