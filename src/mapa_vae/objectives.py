"""Training objectives, peers behind one interface: each is a lower bound on ``log p_θ(x)``.

Each answers one question: ``forward(x, idx)`` returns a :class:`BoundEstimate`, the minibatch
estimate of the mean per-point bound (to maximise) and the network passes it cost (one pass =
one network evaluation on one input row, encoder or decoder, forward). What a method does
between steps (MAPA's re-attachment, the lagging encoder's inner loop) is a step callback of
:mod:`mapa_vae.schedules`.

* :class:`MAPABound` (no encoder): with ``W_in = MAPA(n | x_i)`` fixed,

      L_i = Σ_n W_in [ log p(x_i | f(z_n)) − log N − log W_in ] ≤ log p̂(x_i),

  gap ``KL(W_i· ‖ p̂(· | x_i))``. Summed over ``i``, the data enter through
  ``m_n = Σ_i W_in``, ``x̄_n = Σ_i W_in x_i / m_n`` and ``c_n = Σ_i W_in ‖x_i − x̄_n‖²``, since
  each likelihood is linear in a statistic of ``x``
  (:meth:`~mapa_vae.likelihood.Likelihood.weighted_log_prob`); for the Gaussian

      Σ_i L_i = Σ_n [ −m_n (D log σ + ½D log 2π) − (m_n ‖x̄_n − f(z_n)‖² + c_n) / (2σ²) ]
                − N log N + H(W),

  for the Bernoulli (logits ``η = f(z_n)``) ``Σ_n m_n (⟨x̄_n, η⟩ − Σ_d log(1 + e^{η_d}))``
  ``− N log N + H(W)``, so a minibatch of ``B`` atom indices costs ``B`` decoder passes, whatever
  the neighbour count.
* :class:`GaussianCodesBound` (no encoder): the same fixed ``W`` as the mixture posterior
  ``q(z | x_i) = Σ_n W_in N(μ_n, diag s_n²)`` of the continuous model over learned per-index
  Gaussian codes; a lower bound on ``log p_θ(x_i)`` itself, ``B`` decoder passes per step.
* :class:`ELBO`: ``E_q[log p(x | z)] − KL(q ‖ p)`` with one sample (closed-form KL for the
  Gaussian prior, Monte Carlo for the logit-normal); ``2B`` passes.
* :class:`IWAEBound`: ``E[log (1/S) Σ_s p(x, z_s) / q(z_s | x)]``; ``B(1 + S)`` passes.
* :class:`PriorProposalBound` (ablation): ``log (1/S) Σ_s p(x_i | f(z_s))`` with
  ``z_s ~ p(z)`` drawn fresh each step and shared by the batch; ``S`` passes.
* :class:`LaggingELBO`: the ELBO trained with He et al. (2019)'s aggressive schedule.

The bounds with an encoder or prior draws see each step's rows through the likelihood's
:meth:`~mapa_vae.likelihood.Likelihood.observe` (a fresh binarisation for the Bernoulli); MAPA's
two, linear in the data, take the rows themselves: their exact expectation over those draws.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import sparse
import torch.nn.functional as F
from torch import nn

from .atoms import Attachment
from .distributed import batch_normal
from .encoders import AmortizedPosterior
from .likelihood import mixture_log_joint, mixture_log_prob
from .model import GenerativeModel
from .priors import StandardNormal
from .validation import check_positive_int


@dataclass
class BoundEstimate:
    """A minibatch estimate of the mean per-point bound and what it cost. ``replicated``: the
    passes do not depend on the minibatch rows (work every data-parallel rank repeats, counted
    once)."""

    value: torch.Tensor
    passes: int
    parts: dict = field(default_factory=dict)
    replicated: bool = False


class Objective(nn.Module):
    """Base class: a lower bound on ``log p_θ(x)`` for a :class:`GenerativeModel`."""

    name = "objective"
    batch_over = "data"  # what the trainer's minibatch indices index: data rows or atoms

    def __init__(self, model: GenerativeModel):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> BoundEstimate:
        raise NotImplementedError

    def generative_parameters(self):
        """What the main step trains: the model (decoder, learned σ) and any attachment."""
        return [p for p in self.parameters() if not self._is_inference(p)]

    def inference_parameters(self):
        """The encoder's parameters (none for MAPA and the prior-proposal bound)."""
        return []

    def parameter_groups(self) -> list[dict]:
        """The generative parameters as optimiser groups; a group's ``lr_scale`` (default 1)
        multiplies the learning rate of the schedule."""
        return [{"params": self.generative_parameters()}]

    def _groups_with_codes(self, *code_groups: tuple[list, float]) -> list[dict]:
        """Optimiser groups: the generative parameters other than the codes, then each
        ``(codes, lr_scale)`` of ``code_groups`` at ``lr_scale`` times the schedule's rate."""
        codes = [c for group, _ in code_groups for c in group]
        rest = [p for p in self.generative_parameters() if not any(p is c for c in codes)]
        return [{"params": rest}] + [{"params": group, "lr_scale": lr_scale}
                                     for group, lr_scale in code_groups]

    def _is_inference(self, parameter) -> bool:
        return any(parameter is q for q in self.inference_parameters())


DIAGNOSTIC_POINTS = 256  # training points whose gap the history tracks, beyond which a subset
_DIAGNOSTIC_PAIRS = 1 << 28  # (point, atom, dimension) entries a diagnostic's log p̂ may take


def diagnostic_points(n: int, dim: int) -> np.ndarray:
    """The evenly spaced training points whose exact ``log p̂`` a diagnostic takes: all up to
    :data:`DIAGNOSTIC_POINTS`; beyond, that many, or fewer (at least 16) where their ``O(N D)``
    sums over every atom would exceed :data:`_DIAGNOSTIC_PAIRS` entries (Fashion-MNIST: 16)."""
    if n <= DIAGNOSTIC_POINTS:
        return np.arange(n)
    count = int(np.clip(_DIAGNOSTIC_PAIRS // (n * dim), 16, DIAGNOSTIC_POINTS))
    return np.linspace(0, n - 1, count).round().astype(np.int64)


def _mass_and_targets(W: sparse.csr_matrix, X: np.ndarray,
                      order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``m_n = Σ_i W_in`` and ``x̄_n = Σ_i W_in x_i / m_n`` (``x̄_n = 0`` where ``m_n = 0``).

    The sums ``Σ_i W_in x_i`` run over blocks of indices ``n`` on all cores, the blocks taken
    in ``order`` (indices whose neighbours overlap next to each other, so that the rows of
    ``X`` they read stay in cache: 4× faster on 60 000 images); each sum adds its terms in the
    order of ``W.T @ X``, so the result is that product's to the last bit."""
    mass = np.asarray(W.sum(axis=0)).ravel()
    safe = np.where(mass > 0, mass, 1.0)
    columns = W.T.tocsr()
    n = columns.shape[0]
    order = np.arange(n) if order is None else np.asarray(order)
    sums = np.empty((n, X.shape[1]))
    blocks = np.array_split(order, max(1, min(64, n // 256)))

    def block_sums(block):
        sums[block] = columns[block] @ X

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(block_sums, blocks))
    return mass, sums / safe[:, None]


def _register_targets(objective: Objective, weights, X: np.ndarray,
                      dtype: torch.dtype = torch.float32,
                      order: np.ndarray | None = None) -> sparse.csr_matrix:
    """Keep on ``objective`` what the data contribute to a bound with fixed index posterior
    ``W``: buffers (rebuilt from the data, not saved) ``mass`` (``m_n = Σ_i W_in``), ``xbar`` (``x̄_n = Σ_i W_in x_i / m_n``) and
    ``spread`` (``c_n = Σ_i W_in ‖x_i − x̄_n‖²``), ``weights`` (``W`` as CSR, float64) and ``X``
    (float64); ``order`` as for :func:`_mass_and_targets`. Returns ``W``."""
    W = sparse.csr_matrix(weights, dtype=np.float64)
    mass, xbar = _mass_and_targets(W, X, order)
    spread = np.asarray(W.T @ (X**2).sum(axis=1)).ravel() - mass * (xbar**2).sum(axis=1)
    spread = np.maximum(spread, 0.0)
    for name, value in (("mass", mass), ("xbar", xbar), ("spread", spread)):  # from the data:
        objective.register_buffer(name, torch.tensor(value, dtype=dtype), persistent=False)
    objective.weights = W
    objective.X = np.array(X, dtype=np.float64)  # a writable copy (X may be read-only)
    return W


_PAIR_BLOCK = 2**22  # (pair × dimension) entries of the residuals held at once
_DENSE_SHARE = 1 / 8  # above this share of all (row, column) pairs, compute every distance


def _pair_log_lik(likelihood, X: torch.Tensor, rows: torch.Tensor, outputs: torch.Tensor,
                  cols: torch.Tensor) -> torch.Tensor:
    """``log p(x_{rows[k]} | y_{cols[k]})`` for every pair ``k`` of a sparse pattern, with
    decoder outputs ``outputs`` of shape ``(..., N, D)`` (leading axes kept: shape
    ``(..., nnz)``). A pattern holding more than :data:`_DENSE_SHARE` of all pairs takes every
    pair at once (:meth:`~mapa_vae.likelihood.Likelihood.pairwise_log_prob`) and picks its own;
    a sparser one gathers its rows in blocks of at most :data:`_PAIR_BLOCK` entries, so memory
    does not grow with ``nnz × D``."""
    lead = outputs.shape[:-2]
    if rows.shape[0] > _DENSE_SHARE * X.shape[0] * outputs.shape[-2]:
        every = likelihood.pairwise_log_prob(X.expand(lead + X.shape), outputs)
        return every[..., rows, cols]
    per_block = max(1, _PAIR_BLOCK // (outputs.shape[-1] * math.prod(lead)))
    out = outputs.new_empty(lead + (rows.shape[0],))
    for start in range(0, rows.shape[0], per_block):
        block = slice(start, start + per_block)
        out[..., block] = likelihood.log_prob(X[rows[block]], outputs[..., cols[block], :])
    return out


def _smoothed_log_lik(objective: Objective, idx: torch.Tensor, out: torch.Tensor):
    """``Σ_i W_in log p(x_i | y_n)`` for each ``n`` in ``idx`` and decoded ``y_n`` (``out``, one
    row per index), from ``m_n``, ``x̄_n`` and ``c_n``
    (:meth:`~mapa_vae.likelihood.Likelihood.weighted_log_prob`)."""
    return objective.model.likelihood.weighted_log_prob(
        out, objective.mass[idx], objective.xbar[idx], objective.spread[idx])


class MAPABound(Objective):
    """The MAPA lower bound on the empiricalized model; trains the generative model only.

    ``weights`` is the ``N × N`` row-stochastic MAPA matrix of the training data ``X``;
    ``attachment`` carries the atoms. Minibatches index atoms (columns of ``W``). ``dtype``: the
    floating type the targets are kept in (the training's). ``order``: the training indices with
    neighbours next to each other (:meth:`~mapa_vae.MAPAPosterior.locality_order`), which only
    speeds up computing the targets.
    """

    name = "mapa"
    batch_over = "atoms"

    def __init__(self, model: GenerativeModel, weights: sparse.spmatrix, X: np.ndarray,
                 attachment: Attachment, code_lr_scale: float = 1.0,
                 dtype: torch.dtype = torch.float32, order: np.ndarray | None = None):
        super().__init__(model)
        W = _register_targets(self, weights, X, dtype, order)
        n = W.shape[0]
        entropy = -float(np.sum(W.data * np.log(W.data, where=W.data > 0,
                                                out=np.zeros_like(W.data))))
        self.constant = entropy / n - math.log(n)  # H(W)/N − log N, per point
        self.attachment = attachment
        self.code_lr_scale = float(code_lr_scale)

    def parameter_groups(self) -> list[dict]:
        """The model's parameters, and the relaxed positions at ``code_lr_scale`` times the
        schedule's rate (one group when that is 1, as checkpoints written before the scale
        existed hold)."""
        if self.code_lr_scale == 1.0:
            return super().parameter_groups()
        return self._groups_with_codes(([self.attachment.positions], self.code_lr_scale))

    def forward(self, x, idx) -> BoundEstimate:
        mean = self.model.decoder(self.attachment.codes(idx))
        value = _smoothed_log_lik(self, idx, mean).mean() + self.constant
        return BoundEstimate(value, passes=idx.shape[0])

    @torch.no_grad()
    def reattachment_cost(self):
        """The re-attachment cost as a function ``(rows, atoms) → C``, ``C[i, j] =
        m_n C(x̄_n, f(a_m))`` for ``n = rows[i]``, ``m = atoms[j]``, decoding every atom once
        (the likelihood's :meth:`~mapa_vae.likelihood.Likelihood.cost`: ``‖x̄_n − f(a_m)‖²`` for
        the Gaussian), the part of ``−L`` that depends on which atom sits at ``n``, up to a
        positive factor."""
        decoded = self.model.decoder(self.attachment.atoms).double().cpu().numpy()
        xbar, mass = self.xbar.double().cpu().numpy(), self.mass.double().cpu().numpy()
        likelihood = self.model.likelihood

        def cost(rows, atoms):
            return mass[rows, None] * likelihood.cost(xbar[rows], decoded[atoms])

        return cost

    @torch.no_grad()
    def per_point(self, points: np.ndarray | None = None) -> dict:
        """Exact ``L_i``, ``log p̂(x_i)`` and the gap ``KL(W_i ‖ p̂(· | x_i))`` for every training
        point, or for the training points ``points`` (decodes all ``N`` atoms; ``log p̂`` costs
        ``O(N)`` per point; for evaluation, not training)."""
        means = self.model.decoder(self.attachment.attached()).double()
        likelihood = self.model.likelihood.frozen()
        n = means.shape[0]
        X = torch.as_tensor(self.X, dtype=torch.float64, device=means.device)
        W = self.weights if points is None else self.weights[np.asarray(points)]
        X = X if points is None else X[torch.as_tensor(points, device=means.device)]
        W = W.tocoo()
        rows = torch.as_tensor(W.row, device=means.device)
        cols = torch.as_tensor(W.col, device=means.device)
        w = torch.as_tensor(W.data, device=means.device)
        log_lik = _pair_log_lik(likelihood, X, rows, means, cols)
        contrib = w * (log_lik - math.log(n) - torch.log(w.clamp_min(1e-300)))
        bound = torch.zeros(X.shape[0], dtype=torch.float64,
                            device=means.device).index_add_(0, rows, contrib)
        log_w = torch.full((n,), -math.log(n), dtype=torch.float64, device=means.device)
        log_p = mixture_log_prob(X, means, log_w, likelihood)
        return {"bound": bound.cpu().numpy(), "log_prob": log_p.cpu().numpy(),
                "gap": (log_p - bound).cpu().numpy()}

    @torch.no_grad()
    def diagnostics(self) -> dict:
        """The mean bound over all training points (``bound_full``) and its mean gap: exact up
        to :data:`DIAGNOSTIC_POINTS` points; beyond, the gap's mean over the evenly spaced
        training points of :func:`diagnostic_points` (``O(N)`` each, instead of ``O(N²)`` for
        all)."""
        n = self.X.shape[0]
        if n <= DIAGNOSTIC_POINTS:
            exact = self.per_point()
            return {"bound_full": float(exact["bound"].mean()),
                    "gap": float(exact["gap"].mean())}
        full = float(self(None, torch.arange(n, device=self.mass.device)).value)
        subset = diagnostic_points(n, self.X.shape[1])
        return {"bound_full": full, "gap": float(self.per_point(subset)["gap"].mean())}


class GaussianCodesBound(Objective):
    """MAPA as a fixed mixture posterior of the continuous model, over learned Gaussian codes.

    Index ``n`` carries a code ``N_n = N(μ_n, diag s_n²)`` (for the uniform prior on
    ``[0, 1]^d``, logit-normal: ``z = sigmoid(u)``, ``u ~ N(μ_n, diag s_n²)``). With
    ``W_in = MAPA(n | x_i)`` fixed, ``q(z | x_i) = Σ_n W_in N_n``; the entropy of a mixture is
    at least the mean of its components' entropies, so for any row-stochastic ``W``

        log p_θ(x_i) ≥ ELBO(q_i) ≥ L_i = Σ_n W_in { E_{N_n}[log N(x_i; f(z), σ²I)] − KL(N_n ‖ p) }.

    Summed over ``i`` the data enter through ``m_n``, ``x̄_n`` and ``c_n`` (as in
    :class:`MAPABound`):

        Σ_i L_i = Σ_n { E_{N_n}[Σ_i W_in log p(x_i | f(z))] − m_n KL(N_n ‖ p) },

    the inner sum as in :class:`MAPABound` (for the Gaussian, ``−m_n (D log σ + ½D log 2π) −
    (m_n ‖x̄_n − f(z)‖² + c_n) / (2σ²)``),

    estimated with one reparameterised draw per index of the minibatch: ``B`` decoder passes.
    ``KL(N_n ‖ p) = ½ Σ_j (μ² + s² − 1 − 2 log s)`` for the normal prior; for the uniform prior
    ``−KL = H(N(μ_n, s_n²)) + E[Σ_j log z_j (1 − z_j)]``, the expectation from the same draw.

    **Importance weighting** (``n_samples = K > 1``). Write ``g_n(z) = Σ_i (W_in / m_n) log
    p(x_i | f(z))`` (a weighted mean of log-likelihoods, through ``x̄_n`` and ``c_n``) and
    ``p̃_n = ∫ exp g_n(z) p(z) dz``. Hölder's inequality (weights ``W_in / m_n`` summing to one)
    gives ``log p̃_n ≤ Σ_i (W_in / m_n) log p_θ(x_i)``, so, ``W`` being row-stochastic,
    ``Σ_n m_n log p̃_n ≤ Σ_i log p_θ(x_i)``; each ``log p̃_n`` is bounded below by the
    importance-weighted bound with ``K`` draws ``z_k ~ N_n``:

        Σ_i log p_θ(x_i) ≥ Σ_n m_n E[log (1/K) Σ_k exp(g_n(z_k) + log p(z_k) − log N_n(z_k))],

    which is ``Σ_i L_i`` at ``K = 1`` (there computed with the KL in closed form) and rises with
    ``K`` (Burda et al., 2016). ``K`` draws per index of the minibatch: ``K B`` decoder passes.

    **Tying the codes** (``tie_strength = λ > 0``, set during training by
    :class:`~mapa_vae.schedules.CodeTying`). Given ``neighbours`` (shape ``(N, k)``: each
    index's ``k`` nearest other training points, from the data alone), the minibatch estimate
    is the bound minus

        λ · ½ mean over the minibatch of ‖μ_n − sg(μ̄_n)‖²,    μ̄_n = (1/k) Σ_{m ∈ nb(n)} μ_m,

    ``sg`` no gradient: each drawn code's mean is pulled toward its neighbours' mean code, as an
    encoder maps similar points to similar codes (at ``λ = 1`` as strongly as the normal prior's
    KL pulls it toward 0). The penalty is a regulariser, not part of the bound; the per-point
    bound and the diagnostics leave it out.

    **Smoothing the codes' targets** (``code_weights = V``, a row-stochastic matrix smoother than
    ``W``, switched on during training by :class:`~mapa_vae.schedules.CodeSmoothing`). The
    decoder and ``σ`` follow the bound's gradient; each code follows, with the decoder held
    fixed, the gradient of its term under ``V`` instead of ``W``:

        ∇_{μ_n, s_n} { E_{N_n}[Σ_i V_in log p(x_i | f(z))] − m'_n KL(N_n ‖ p) }

    (for the Gaussian, the inner sum is ``−m'_n ‖x̄'_n − f(z)‖² / (2σ²)`` up to terms free of
    the codes), ``m'_n`` and ``x̄'_n`` the mass and target of ``n`` under ``V``. So a code must
    also explain its kernel neighbours, as an encoder maps similar points to similar codes,
    while the decoder still fits the unblurred targets. The estimate's value stays the bound's; the
    codes' part costs a second decoder pass per index (``2B`` passes per step) while it acts.
    One draw per code only (``n_samples = 1``).

    **The means' steps in widths** (``mean_lr_scale`` given). Each code is updated only when
    its index is drawn, once every ``N / B`` steps, so between visits the decoder moves on and
    the code lags it. The means then form an optimiser group of their own, at ``mean_lr_scale``
    times the schedule's rate ``r``, and every step's change of ``μ_n`` is multiplied by ``s_n``
    (:meth:`steps_in_widths`, called by :class:`~mapa_vae.schedules.WidthScaledCodeSteps`):

        μ_n ← μ'_n + s_n ⊙ (μ_n − μ'_n),    μ'_n the mean before the step.

    Adam moves a coordinate by about its rate per step whatever the gradient's size, so a mean
    moves by about ``r s_n`` per step: far where the code is wide, little where the data pin it
    down.

    ``loc`` and ``scale`` (shape ``(N, d)``) initialise ``μ`` and ``s``; ``code_lr_scale``
    multiplies the learning rate of the codes (of the scales alone when ``mean_lr_scale`` is
    given); ``order`` as for :class:`MAPABound`.
    """

    name = "mapa"
    batch_over = "atoms"

    def __init__(self, model: GenerativeModel, weights: sparse.spmatrix, X: np.ndarray,
                 loc: np.ndarray, scale: np.ndarray, code_lr_scale: float = 1.0,
                 n_samples: int = 1, neighbours: np.ndarray | None = None,
                 code_weights: sparse.spmatrix | None = None,
                 mean_lr_scale: float | None = None, dtype: torch.dtype = torch.float32,
                 order: np.ndarray | None = None):
        super().__init__(model)
        self.n_samples = check_positive_int(n_samples, "n_samples")
        W = _register_targets(self, weights, X, dtype, order)
        n, d = W.shape[0], model.latent_dim
        loc, scale = np.asarray(loc, dtype=np.float64), np.asarray(scale, dtype=np.float64)
        if loc.shape != (n, d) or scale.shape != (n, d):
            raise ValueError(f"loc and scale must have shape ({n}, {d}), got {loc.shape} and "
                             f"{scale.shape}")
        if not (np.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError("every code scale must be positive and finite")
        self.loc = nn.Parameter(torch.tensor(loc, dtype=dtype))
        self.log_scale = nn.Parameter(torch.tensor(np.log(scale), dtype=dtype))
        self.code_lr_scale = float(code_lr_scale)
        self.mean_lr_scale = None if mean_lr_scale is None else float(mean_lr_scale)
        self.gaussian = isinstance(model.prior, StandardNormal)
        if neighbours is not None:
            neighbours = np.asarray(neighbours)
            if neighbours.ndim != 2 or neighbours.shape[0] != n or neighbours.shape[1] < 1 \
                    or neighbours.min() < 0 or neighbours.max() >= n:
                raise ValueError(f"neighbours must be an ({n}, k) array of training indices, "
                                 f"got shape {neighbours.shape}")
            neighbours = torch.as_tensor(neighbours, dtype=torch.long)
        self.register_buffer("neighbours", neighbours, persistent=False)  # data-only, rebuilt
        self.tie_strength = 0.0
        code_mass = code_xbar = None
        if code_weights is not None:
            if self.n_samples != 1:
                raise ValueError(f"smoothing the codes' targets takes one draw per code; got "
                                 f"n_samples={self.n_samples}")
            V = sparse.csr_matrix(code_weights, dtype=np.float64)
            if V.shape != W.shape:
                raise ValueError(f"code_weights must have the shape of weights, {W.shape}, got "
                                 f"{V.shape}")
            code_mass, code_xbar = (torch.tensor(a, dtype=dtype) for a in
                                    _mass_and_targets(V, self.X, order))
        self.register_buffer("code_mass", code_mass, persistent=False)  # data-only, rebuilt
        self.register_buffer("code_xbar", code_xbar, persistent=False)
        self.smooth_codes = False

    def parameter_groups(self) -> list[dict]:
        if self.mean_lr_scale is None:
            return self._groups_with_codes(([self.loc, self.log_scale], self.code_lr_scale))
        return self._groups_with_codes(([self.log_scale], self.code_lr_scale),
                                       ([self.loc], self.mean_lr_scale))

    @torch.no_grad()
    def steps_in_widths(self, previous_loc: torch.Tensor) -> None:
        """Multiplies the means' last step by the codes' widths: ``μ ← μ' + s ⊙ (μ − μ')``,
        ``μ'`` = ``previous_loc``, the means before the step."""
        self.loc.copy_(previous_loc + self.log_scale.exp() * (self.loc - previous_loc))

    def codes(self, idx: torch.Tensor, eps: torch.Tensor):
        """Draws ``z = g(μ_n + s_n ε)`` for the indices ``idx`` and noise ``ε`` of shape
        ``(..., len(idx), d)`` (``g`` the identity, or the sigmoid for the uniform prior), and
        ``−KL(N_n ‖ p)`` (shape of ``ε`` without its last axis; exact for the normal prior, from
        the same draw for the uniform)."""
        loc, log_s = self.loc[idx], self.log_scale[idx]
        u = loc + log_s.exp() * eps
        if self.gaussian:
            neg_kl = -0.5 * (loc.square() + (2 * log_s).exp() - 1.0 - 2 * log_s).sum(-1)
            return u, neg_kl.expand(eps.shape[:-1])
        entropy = (log_s + 0.5 * (1.0 + math.log(2 * math.pi))).sum(-1)
        z, log_p = self._prior_in_code_space(u)
        return z, entropy + log_p

    def _prior_in_code_space(self, u: torch.Tensor):
        """``z = g(u)`` and ``log p(u)``, the prior's density in the codes' coordinates:
        ``N(0, I)`` for the normal prior; for the uniform prior the logistic density (the law of
        the logit of a uniform draw)."""
        if self.gaussian:
            return u, -0.5 * u.square().sum(-1) - 0.5 * u.shape[-1] * math.log(2 * math.pi)
        return torch.sigmoid(u), (F.logsigmoid(u) + F.logsigmoid(-u)).sum(-1)

    def terms(self, idx: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``T_n``, one draw per index: ``Σ_i W_in log N(x_i; f(z_n), σ²I) − m_n KL(N_n ‖ p)``.
        While :meth:`codes_smoothed`, the same value, with the codes' gradient that of their terms
        under ``code_weights`` (the decoder held fixed: a second pass)."""
        z, neg_kl = self.codes(idx, eps)
        if not self.codes_smoothed():
            mean = self.model.decoder(z)
            return _smoothed_log_lik(self, idx, mean) + self.mass[idx] * neg_kl
        bound = (_smoothed_log_lik(self, idx, self.model.decoder(z.detach()))
                 + self.mass[idx] * neg_kl.detach())
        fixed = {name: p.detach() for name, p in self.model.decoder.named_parameters()}
        out = torch.func.functional_call(self.model.decoder, fixed, (z,))
        m = self.code_mass[idx]
        codes_term = (self.model.likelihood.weighted_log_prob(out, m, self.code_xbar[idx],
                                                              0.0, fixed=True) + m * neg_kl)
        return bound + (codes_term - codes_term.detach())  # the bound's value, V's code gradient

    def codes_smoothed(self) -> bool:
        """Whether :meth:`terms` now gives the codes the gradient of the smoother targets: asked
        for (``smooth_codes``, with ``code_weights``), the codes still learning, and gradients
        being recorded."""
        return (self.smooth_codes and self.code_mass is not None and self.loc.requires_grad
                and torch.is_grad_enabled())

    def importance_terms(self, idx: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``m_n log (1/K) Σ_k exp(g_n(z_k) + log p(z_k) − log N_n(z_k))`` for the ``K`` draws
        ``ε`` of shape ``(K, len(idx), d)``, in the codes' coordinates ``u``."""
        loc, log_s = self.loc[idx], self.log_scale[idx]
        u = loc + log_s.exp() * eps
        log_q = (-0.5 * eps.square() - log_s).sum(-1) - 0.5 * u.shape[-1] * math.log(2 * math.pi)
        z, log_p = self._prior_in_code_space(u)
        mean = self.model.decoder(z.reshape(-1, z.shape[-1])).reshape(*z.shape[:-1], -1)
        mass = self.mass[idx]
        per_mass = _smoothed_log_lik(self, idx, mean) / mass.clamp_min(torch.finfo(mass.dtype).tiny)
        log_w = per_mass + log_p - log_q
        return mass * (torch.logsumexp(log_w, 0) - math.log(eps.shape[0]))

    def bound_terms(self, idx: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The bound's term per index for ``K`` draws ``ε`` of shape ``(K, len(idx), d)``:
        :meth:`terms` (the KL in closed form) at ``K = 1``, :meth:`importance_terms` above."""
        return self.terms(idx, eps[0]) if eps.shape[0] == 1 else self.importance_terms(idx, eps)

    def tie_penalty(self, idx: torch.Tensor) -> torch.Tensor:
        """``½ mean over idx of ‖μ_n − sg(μ̄_n)‖²``, ``μ̄_n`` the mean code of ``n``'s
        neighbours (no decoder pass)."""
        if self.neighbours is None:
            raise ValueError("tying the codes needs their neighbours: give neighbours=")
        pull = self.loc[self.neighbours[idx]].mean(-2).detach()
        return 0.5 * (self.loc[idx] - pull).square().sum(-1).mean()

    def forward(self, x, idx) -> BoundEstimate:
        b, d = idx.shape[0], self.loc.shape[1]
        eps = batch_normal((self.n_samples, b, d), self.loc.dtype, self.loc.device, batch_dim=1)
        passes = (2 if self.codes_smoothed() else self.n_samples) * b
        value = self.bound_terms(idx, eps).mean()
        if self.tie_strength:
            value = value - self.tie_strength * self.tie_penalty(idx)
        return BoundEstimate(value, passes=passes)

    @torch.no_grad()
    def per_point(self, points: np.ndarray | None = None, n_samples: int = 1,
                  generator: torch.Generator | None = None) -> dict:
        """``L_i`` for every training point (or the training points ``points``), each code's
        expectation by ``n_samples`` draws (``N · n_samples`` decoder passes; for evaluation).
        Summed over all points it equals the mean over the draws of ``Σ_n T_n``."""
        n, d = self.loc.shape
        eps = torch.randn((n_samples, n, d), dtype=self.loc.dtype, generator=generator)
        return {"bound": self.per_point_given(eps.to(self.loc.device), points)}

    @torch.no_grad()
    def per_point_given(self, eps: torch.Tensor, points: np.ndarray | None = None) -> np.ndarray:
        """``L_i`` with every code's expectation the mean over the given noise ``ε`` of shape
        ``(S, N, d)``; for ``points``, only the codes their weights reach are decoded."""
        W = self.weights if points is None else self.weights[np.asarray(points)]
        W = W.tocoo()
        reached = np.unique(W.col)  # the codes decoded, and each pair's place among them
        idx = torch.as_tensor(reached, device=self.loc.device)
        z, neg_kl = self.codes(idx, eps[:, idx])
        mean = self.model.decoder(z.reshape(-1, z.shape[-1])).reshape(z.shape[:-1] + (-1,))
        rows = torch.as_tensor(W.row, device=mean.device)
        cols = torch.as_tensor(np.searchsorted(reached, W.col), device=mean.device)
        X = torch.as_tensor(self.X, dtype=mean.dtype, device=mean.device)
        if points is not None:
            X = X[torch.as_tensor(np.asarray(points), device=mean.device)]
        log_lik = _pair_log_lik(self.model.likelihood, X, rows, mean, cols)  # (S, nnz)
        inner = (log_lik + neg_kl[:, cols]).mean(0)
        w = torch.as_tensor(W.data, dtype=mean.dtype, device=mean.device)
        out = torch.zeros(W.shape[0], dtype=mean.dtype, device=mean.device)
        return out.index_add_(0, rows, w * inner).cpu().numpy()

    @torch.no_grad()
    def diagnostics(self) -> dict:
        """The mean bound over every training point, ``K`` draws per code (``K N`` passes),
        and the median code scale. The draws come from a generator of their own, seeded afresh:
        how often diagnostics are logged leaves training's random stream, and so its result, as
        it is."""
        n, d = self.loc.shape
        eps = torch.randn((self.n_samples, n, d), dtype=self.loc.dtype,
                          generator=torch.Generator().manual_seed(0)).to(self.loc.device)
        bound = self.bound_terms(torch.arange(n, device=self.loc.device), eps)
        return {"bound_full": float(bound.mean()),
                "code_scale": float(self.log_scale.exp().median())}


class _EncoderObjective(Objective):
    def __init__(self, model: GenerativeModel, encoder: AmortizedPosterior):
        super().__init__(model)
        self.encoder = encoder

    def inference_parameters(self):
        return list(self.encoder.parameters())


class ELBO(_EncoderObjective):
    """One-sample evidence lower bound with an amortized encoder."""

    name = "vae"

    def forward(self, x, idx) -> BoundEstimate:
        x = self.model.likelihood.observe(x)
        loc, scale = self.encoder(x)
        z, log_q = self.encoder.rsample(loc, scale, 1)
        mean = self.model.decoder(z[0])
        rec = self.model.likelihood.log_prob(x, mean)
        kl = self.encoder.kl_to_prior(loc, scale)
        if kl is None:
            kl = log_q[0] - self.model.prior.log_prob(z[0])
        value = (rec - kl).mean()
        return BoundEstimate(value, passes=2 * x.shape[0],
                             parts={"reconstruction": rec.mean().item(), "kl": kl.mean().item()})


class IWAEBound(_EncoderObjective):
    """Importance-weighted bound with ``S`` samples per point."""

    name = "iwae"

    def __init__(self, model, encoder, n_samples: int):
        super().__init__(model, encoder)
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"the number of importance samples S must be an integer >= 1, "
                             f"got {n_samples!r}")
        self.n_samples = n_samples

    def forward(self, x, idx) -> BoundEstimate:
        x = self.model.likelihood.observe(x)
        loc, scale = self.encoder(x)
        z, log_q = self.encoder.rsample(loc, scale, self.n_samples)
        s, b, d = z.shape
        mean = self.model.decoder(z.reshape(s * b, d)).reshape(s, b, -1)
        log_w = (self.model.likelihood.log_prob(x.expand(s, b, -1), mean)
                 + self.model.prior.log_prob(z) - log_q)
        value = (torch.logsumexp(log_w, dim=0) - math.log(s)).mean()
        return BoundEstimate(value, passes=b * (1 + s))


class PriorProposalBound(Objective):
    """``log (1/S) Σ_s N(x_i; f(z_s), σ²I)`` with ``S`` fresh prior draws shared by the batch."""

    name = "prior-is"

    def __init__(self, model, n_samples: int):
        super().__init__(model)
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"the number of prior samples S must be an integer >= 1, "
                             f"got {n_samples!r}")
        self.n_samples = n_samples

    def forward(self, x, idx) -> BoundEstimate:
        x = self.model.likelihood.observe(x)
        z = self.model.prior.icdf(torch.rand(self.n_samples, self.model.latent_dim,
                                             dtype=x.dtype, device=x.device)
                                  .clamp(1e-7, 1 - 1e-7))
        mean = self.model.decoder(z)
        log_w = torch.full((self.n_samples,), -math.log(self.n_samples), dtype=x.dtype,
                           device=x.device)
        joint = mixture_log_joint(x, mean, log_w, self.model.likelihood)
        return BoundEstimate(torch.logsumexp(joint, dim=1).mean(), passes=self.n_samples,
                             replicated=True)


class LaggingELBO(ELBO):
    """The ELBO with He et al. (2019)'s aggressive ("lagging encoder") schedule.

    While aggressive, before each model update the encoder alone is updated on fresh minibatches
    until its loss stops improving (checked every ``check_every`` inner steps, at most
    ``max_inner`` of them). Once per epoch the mutual information ``I_q(x; z)`` is estimated on a
    fixed subset of the data; when it stops rising, training reverts to joint updates.
    """

    name = "lagging"

    def __init__(self, model, encoder, max_inner: int = 100, check_every: int = 10,
                 mi_points: int = 500):
        super().__init__(model, encoder)
        self.max_inner = max_inner
        self.check_every = check_every
        self.mi_points = mi_points
        self.aggressive = True
        self.best_mi = -math.inf
        self.last_mi = float("nan")
        self.inner_steps_last = 0

    def mutual_information(self, x: torch.Tensor) -> float:
        """``I_q(x; z)`` of the encoder over the rows of ``x`` (:func:`mutual_information`)."""
        with torch.no_grad():
            return mutual_information(self.encoder, self.model.likelihood.observe(x))

    def get_extra_state(self) -> dict:
        return {"aggressive": self.aggressive, "best_mi": self.best_mi, "last_mi": self.last_mi}

    def set_extra_state(self, state: dict) -> None:
        self.aggressive = bool(state["aggressive"])
        self.best_mi, self.last_mi = float(state["best_mi"]), float(state["last_mi"])


def mutual_information(encoder: AmortizedPosterior, x: torch.Tensor) -> float:
    """``I_q(x; z) = E_x E_{q(z|x)}[log q(z | x) − log q(z)]`` with ``q(z)`` the aggregate posterior
    over the rows of ``x`` (one draw per row), as in He et al. (2019)."""
    loc, scale = encoder(x)
    z, log_q = encoder.rsample(loc, scale, 1)
    z, log_q = z[0], log_q[0]
    b = x.shape[0]
    # log q(z_i | x_j) for every pair; the aggregate posterior averages over j
    cross = encoder.log_prob(z[:, None, :], loc[None, :, :], scale[None, :, :])
    log_aggregate = torch.logsumexp(cross, dim=1) - math.log(b)
    return float((log_q - log_aggregate).mean())
