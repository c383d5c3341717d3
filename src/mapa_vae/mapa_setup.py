"""MAPA's setup: from the data alone to what training starts from, and why.

Before any model is trained, :class:`~mapa_vae.MAPADensity` needs

* the representation MAPA is computed in: the data ``X``, or a data-only transform of them
  (``features``: PCA to ``K`` whitened components, or a scikit-learn transformer);
* MAPA's weights over training indices in that representation
  (:class:`~mapa_vae.MAPAPosterior`, ``MAPA(n | x) ∝ exp(−‖x − x_n‖² / (2h²))``);
* ``N`` stratified atoms of the prior (:func:`~mapa_vae.atoms.stratified_atoms`);
* the candidate initial attachments of atoms to indices (permutations, by name), with the step
  budget each candidate's trainer gets and, when a single candidate is left, why.

:func:`prepare` computes the first three (all a checkpoint needs to be rebuilt);
:func:`initial_candidates` the last. When several candidates are left, :func:`run_pilots`
trains each for ``pilot_steps`` steps from the same start and keeps the one with the highest
MAPA bound over all training points; the step budget is shared, so the winner stops at
``steps − (K − 1) · pilot_steps`` for ``K`` candidates, and it is charged with the other
candidates' steps, passes and seconds. :class:`AttachmentReport` says which attachment training
started from and why.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats
from sklearn.base import clone
from sklearn.decomposition import PCA

from .atoms import (ISOMAP_MAX, candidate_attachments, initial_attachment, least_rough,
                    stratified_atoms, transport)
from .mapa import MAPAPosterior
from .priors import Prior
from .validation import as_data, check_positive_int


@dataclass
class MAPASetup:
    """What MAPA training needs from the data, computed once before training.

    Attributes
    ----------
    features : scikit-learn transformer or None
        The fitted transformer MAPA's representation comes from (``None``: the data themselves).
    representation : ndarray of shape (n_samples, n_representation)
        The training data as MAPA sees them.
    mapa : MAPAPosterior
        MAPA's weights, fitted on ``representation``.
    atoms : ndarray of shape (n_samples, latent_dim)
        The stratified atoms of the prior.
    """

    features: object | None
    representation: np.ndarray
    mapa: MAPAPosterior
    atoms: np.ndarray


#: Neighbours whose mean code each Gaussian code is tied to (``MAPADensity(code_tying=λ)``).
CODE_TIE_NEIGHBOURS = 5


def code_neighbours(setup: "MAPASetup", k: int = CODE_TIE_NEIGHBOURS) -> np.ndarray:
    """``(N, k)``: each training point's ``k`` nearest other training points in MAPA's
    representation (fewer than ``k`` when ``N ≤ k``): for sparse weights, the nearest their
    neighbours list (each row's own index left out); else scikit-learn's exact search."""
    F, mapa = setup.representation, setup.mapa
    k = min(k, F.shape[0] - 1)
    if not mapa.dense_ and mapa.n_neighbors_ > k:
        near = mapa.neighbors_[:, :k + 1]
        others = near != np.arange(len(near))[:, None]
        others[others.sum(1) > k, -1] = False  # the row's own index was not among them
        return near[others].reshape(len(near), k)
    from sklearn.neighbors import NearestNeighbors

    return NearestNeighbors(n_neighbors=k).fit(F).kneighbors()[1]


@dataclass
class Candidates:
    """The initial attachments to train, by name (``perm[n]``: the atom attached to index
    ``n``); the step budget of each one's trainer (``steps`` for a single candidate,
    ``steps − (K − 1) · pilot_steps`` for ``K`` candidates that the pilots choose among); and
    why a single candidate is used (``None`` when the pilots choose)."""

    attachments: dict[str, np.ndarray]
    budget: int
    reason: str | None


@dataclass(frozen=True)
class AttachmentReport:
    """The initial attachment training started from (a candidate's name, ``"seriation"``,
    ``"random"`` or ``"given"``), the MAPA bound of each candidate after its pilot run (empty
    when no pilots ran), and why, in words."""

    name: str
    reason: str
    pilot_bounds: dict = field(default_factory=dict)


#: Above two latent dimensions (``MAPADensity(effective_neighbours="auto")``), the leave-one-out
#: width is lowered where MAPA's median training row would have more effective neighbours than
#: this: the Gaussian codes' targets are smoothed a little, never a lot.
MAX_NEIGHBOURS_ABOVE_2D = 1.25


def representation(X: np.ndarray, features, seed: int):
    """The data as MAPA sees them and the fitted transformer: ``(X, None)`` for
    ``features=None``; an int ``K`` is PCA to ``K`` whitened components (seeded by ``seed``);
    else a scikit-learn transformer, cloned and fitted on ``X``."""
    if features is None:
        return X, None
    if isinstance(features, (int, np.integer)) and not isinstance(features, bool):
        k = check_positive_int(features, "features")
        if k > min(X.shape):
            raise ValueError(f"features={k} asks for more principal components than the data "
                             f"have ({min(X.shape)})")
        transformer = PCA(n_components=k, whiten=True, random_state=seed)
    elif hasattr(features, "fit_transform") and hasattr(features, "transform"):
        transformer = clone(features)
    else:
        raise ValueError(f"features must be None, a number of principal components or a "
                         f"scikit-learn transformer, got {features!r}")
    return as_data(transformer.fit_transform(X), "features(X)", min_samples=2), transformer


#: Probabilistic PCA's noise below this share of the leading eigenvalue counts as none.
NOISE_FLOOR = 1e-10


def probabilistic_pca_codes(X: np.ndarray, latent_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Each training point's posterior ``N(loc_n, diag scale_n²)`` under the data's
    probabilistic PCA (Tipping & Bishop, 1999), from the data alone.

    With the sample covariance's eigenvalues ``λ_1 ≥ … ≥ λ_D``, eigenvectors ``U_d`` of the
    first ``d`` and the maximum-likelihood noise ``σ̂² = mean(λ_{d+1}, …, λ_D)``, the fitted
    model ``x = W z + x̄ + ε``, ``W = U_d (Λ_d − σ̂² I)^{1/2}``, ``z ~ N(0, I)``,
    ``ε ~ N(0, σ̂² I)``, has the posterior

        z | x_n ~ N((Λ_d − σ̂² I)^{1/2} Λ_d⁻¹ U_dᵀ (x_n − x̄),  σ̂² Λ_d⁻¹).

    Needs ``d`` below both the number of points and of dimensions, and data not confined to
    ``d`` dimensions (``σ̂² > NOISE_FLOOR · λ_1``)."""
    n, D = X.shape
    if not latent_dim < min(n, D):
        raise ValueError(f"probabilistic PCA with latent_dim={latent_dim} needs more points and "
                         f"data dimensions than that; the data have {n} points in {D} "
                         f"dimensions")
    # the exact SVD for small data; beyond, the covariance's eigendecomposition: the same
    # decomposition in O(N D²) time and O(D²) memory (60 000 × 784: 9 s against 1 s)
    solver = "full" if n * D <= 1 << 22 or n <= D else "covariance_eigh"
    pca = PCA(n_components=latent_dim, svd_solver=solver).fit(X)
    lam, noise = pca.explained_variance_, float(pca.noise_variance_)
    if not noise > NOISE_FLOOR * lam[0]:  # rounding leaves eigenvalues of about 1e-16 λ_1
        raise ValueError(f"probabilistic PCA needs noise off the first {latent_dim} principal "
                         f"components; these data lie in {latent_dim} dimensions")
    loc = pca.transform(X) * (np.sqrt(np.maximum(lam - noise, 0.0)) / lam)
    return loc, np.broadcast_to(np.sqrt(noise / lam), loc.shape).copy()


def residual_isotropy_pvalue(X: np.ndarray, latent_dim: int) -> float:
    """The p-value of Bartlett's test that the data's last ``q = D − d`` principal variances are
    equal: that probabilistic PCA with ``d = latent_dim`` components, whose noise is isotropic,
    describes the data.

    With the sample covariance's eigenvalues ``l_1 ≥ … ≥ l_D`` (divisor ``n = N − 1``) and
    ``l̄`` the mean of the last ``q``, the statistic (Bartlett, 1950, with Lawley's 1956
    correction; Jolliffe, *Principal Component Analysis*, §6.1.4)

        T = −(n − d − (2q² + q + 2) / (6q) + Σ_{j ≤ d} l̄² / (l_j − l̄)²) · Σ_{j > d} log(l_j / l̄)

    is ``χ²`` with ``(q + 2)(q − 1) / 2`` degrees of freedom under the hypothesis. A zero
    variance among the last ``q`` (data confined to fewer dimensions) gives 0; NaN where the
    test does not apply: fewer than two residual dimensions, no more points than dimensions,
    or too few points for the correction."""
    X = as_data(X, "X")
    n_points, D = X.shape
    d = check_positive_int(latent_dim, "latent_dim")
    q = D - d
    if q < 2 or n_points <= D:
        return float("nan")
    lam = np.sort(np.linalg.eigvalsh(np.cov(X, rowvar=False)))[::-1]
    rest = lam[d:]
    if not rest[-1] > NOISE_FLOOR * lam[0]:  # rounding leaves about 1e-16 λ_1 for a zero
        return 0.0
    bar = rest.mean()
    scale = (n_points - 1 - d - (2 * q * q + q + 2) / (6 * q)
             + bar**2 * np.sum(1.0 / (lam[:d] - bar) ** 2))
    if not scale > 0:
        return float("nan")
    statistic = -scale * np.sum(np.log(rest / bar))
    return float(stats.chi2.sf(statistic, (q + 2) * (q - 1) / 2))


def prepare(X: np.ndarray, prior: Prior, seed: int, *, features, n_neighbors, bandwidth,
            sigma, effective_neighbours=None, max_effective_neighbours=None) -> MAPASetup:
    """MAPA's representation, weights and atoms for training data ``X`` of shape
    ``(n_samples, n_features)``.

    MAPA's kernel scale is ``h = bandwidth`` if given, else the width giving the median row
    ``effective_neighbours`` effective neighbours if given, else ``√2 σ`` for a known ``sigma``
    when MAPA works on the data themselves (``features=None``; ``σ`` is in the data's units, not
    a representation's), else chosen from the data (leave-one-out, lowered where the median row
    would have more than ``max_effective_neighbours`` effective neighbours); ``n_neighbors`` as for
    :class:`~mapa_vae.MAPAPosterior`. The atoms are ``n_samples`` stratified draws of ``prior``
    seeded by ``seed``.
    """
    F, transformer = representation(X, features, seed)
    by_sigma = (bandwidth is None and effective_neighbours is None and transformer is None
                and sigma is not None)
    by_loo = bandwidth is None and effective_neighbours is None and not by_sigma
    mapa = MAPAPosterior(n_neighbors=n_neighbors, bandwidth=bandwidth,
                         sigma=sigma if by_sigma else None,
                         effective_neighbours=effective_neighbours,
                         max_effective_neighbours=max_effective_neighbours if by_loo else None
                         ).fit(F)
    return MAPASetup(transformer, F, mapa, stratified_atoms(prior, X.shape[0],
                                                             random_state=seed))


def initial_candidates(setup: MAPASetup, prior: Prior, seed: int, *, init, codes: str,
                       steps: int, pilot_steps: int) -> Candidates:
    """The initial attachments to choose from, the budget of each one's trainer, and the reason
    a single one is used.

    ``init``: ``"auto"`` proposes every data-only candidate
    (:func:`~mapa_vae.atoms.candidate_attachments`; for Gaussian ``codes`` above one latent
    dimension, ``"pca"`` alone); a method's name uses it alone; an array of shape
    ``(n_samples, latent_dim)`` gives coordinates per training point whose arrangement the atoms
    take over (``"given"``). ``codes``: ``"atoms"`` or ``"gaussian"`` (resolved). With several
    candidates the budget is ``steps − (K − 1) · pilot_steps``; without room for pilots
    (``pilot_steps=0`` or a budget of at most ``pilot_steps``) a single candidate is kept:
    ``isomap`` above one latent dimension, else the least rough (seriation).
    """
    F, weights, atoms = setup.representation, setup.mapa.weights_, setup.atoms
    if not isinstance(init, str):  # coordinates per training point, e.g. known codes
        given = as_data(init, "init", n_features=prior.latent_dim)
        if given.shape[0] != F.shape[0]:
            raise ValueError(f"init has {given.shape[0]} rows but X has {F.shape[0]}")
        attachments = {"given": transport(given, atoms, prior)}
    elif init == "auto" and codes == "gaussian" and prior.latent_dim > 1:
        attachments = {"pca": initial_attachment(F, weights, atoms, prior, "pca", seed)}
    elif init == "auto":
        attachments = candidate_attachments(F, weights, atoms, prior, seed)
    else:
        attachments = {init: initial_attachment(F, weights, atoms, prior, init, seed)}
    steps, pilot = check_positive_int(steps, "steps"), int(pilot_steps)
    if len(attachments) == 1:
        return Candidates(attachments, steps, _reason_without_pilots(init, attachments))
    budget = steps - (len(attachments) - 1) * pilot
    if pilot > 0 and budget > pilot:
        return Candidates(attachments, budget, None)  # the pilots choose
    why = ("pilot_steps=0" if pilot == 0 else
           f"steps={steps} leave no room for {len(attachments)} candidates x {pilot} "
           f"pilot steps (that needs steps > {len(attachments) * pilot})")
    if prior.latent_dim > 1:
        chosen = {"isomap": attachments["isomap"]}
        rule = "isomap, the default above one latent dimension"
    else:
        Y = np.asarray(weights @ F)
        chosen = {"seriation": least_rough(attachments, Y, atoms)}
        rule = "the least rough candidate (seriation)"
    return Candidates(chosen, steps, f"pilots skipped: {why}; used {rule}")


def _reason_without_pilots(init, attachments: dict) -> str:
    """Why the attachment is what it is when no pilots choose."""
    if not isinstance(init, str):
        return "init gave coordinates per training point"
    if init != "auto":
        return f"init={init!r}"
    name = next(iter(attachments))
    if name == "spectral":
        return (f"no pilots: spectral is the only candidate (isomap is proposed up to "
                f"{ISOMAP_MAX} points)")
    return f"no pilots: {name} is the only distinct candidate"


def run_pilots(candidates: Candidates, make_trainer, pilot_steps: int):
    """Train each candidate ``pilot_steps`` steps and keep the highest MAPA bound.

    ``make_trainer(perm, steps)`` builds a fresh :class:`~mapa_vae.trainer.Trainer` starting
    from attachment ``perm`` with a budget of ``steps``. Each candidate's bound is the exact
    mean over all ``N`` training points (``N`` decoder passes, counted as its training passes
    and time). Returns the winner's trainer, ready to continue to its budget, charged with the
    others' steps (``extra_steps``), passes and seconds (in its totals and in each history row
    logged during the pilots), and the :class:`AttachmentReport`.
    """
    trainers, bounds = {}, {}
    for name, perm in candidates.attachments.items():
        trainer = trainers[name] = make_trainer(perm, candidates.budget)
        trainer.fit(until=pilot_steps)
        start = time.perf_counter()
        # seeded from the run, not the process, so that a bound drawing codes (Gaussian codes)
        # ranks the candidates the same whatever ran before in this process
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(trainer.config.seed)
            bound = trainer.objective(None, torch.arange(trainer.n, device=trainer.device))
        trainer.counter.add(bound.passes)
        trainer.train_seconds += time.perf_counter() - start
        bounds[name] = float(bound.value)
    chosen = max(bounds, key=bounds.get)
    best = trainers.pop(chosen)
    for i, row in enumerate(best.history):  # rows logged during the pilot: all candidates'
        row["passes"] += sum(t.history[i]["passes"] for t in trainers.values())
        row["train_seconds"] += sum(t.history[i]["train_seconds"] for t in trainers.values())
    best.counter.add(sum(t.passes for t in trainers.values()))
    best.train_seconds += sum(t.train_seconds for t in trainers.values())
    best.extra_steps = sum(t.step for t in trainers.values())
    reason = (f"the highest MAPA bound after {pilot_steps} pilot steps of each candidate "
              f"({', '.join(bounds)}; see pilot_bounds_)")
    return best, AttachmentReport(chosen, reason, bounds)
