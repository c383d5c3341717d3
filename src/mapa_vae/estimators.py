"""scikit-learn-style density estimators: MAPA and the baselines behind one surface.

Every estimator fits a :class:`~mapa_vae.model.GenerativeModel` ``z ~ p(z)``,
``x | z ~ N(f_θ(z), σ² I)`` and answers ``score_samples`` (``log p_θ(x)`` by quadrature for
latent dimension 1 or 2, above by the one evaluator of :mod:`mapa_vae.marginal`), ``score``,
``sample`` and ``posterior``. They differ only in the objective they train with. MAPA's setup
(weights, atoms, initial attachment) is :mod:`mapa_vae.mapa_setup`; each method's own importance
proposal is in :mod:`mapa_vae.proposals`; checkpoints are :mod:`mapa_vae.checkpoints`.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.utils.validation import check_is_fitted
from torch import nn

from . import checkpoints
from .atoms import POSITION_RATE, Attachment
from .devices import resolve_device
from .distributed import Shard
from .encoders import AmortizedPosterior
from .evaluation import ImportanceEstimate, importance_log_marginal, prior_proposal
from .likelihood import (LIKELIHOODS, BernoulliLikelihood, GaussianLikelihood, check_likelihood,
                         mixture_log_responsibilities)
from .mapa import MAPAPosterior, leave_one_out_bandwidth
from .mapa_setup import (MAX_NEIGHBOURS_ABOVE_2D, AttachmentReport, code_neighbours,
                         initial_candidates, prepare, probabilistic_pca_codes,
                         residual_isotropy_pvalue, run_pilots)
from .model import GenerativeModel
from .networks import float64_decoder, mlp
from .objectives import (ELBO, GaussianCodesBound, IWAEBound, LaggingELBO, MAPABound,
                         PriorProposalBound)
from .priors import StandardNormal, Uniform, make_prior
from .proposals import atom_proposal, encoder_proposal, gaussian_codes_proposal
from .schedules import (AggressiveEncoder, AttachmentUpdates, CodeFreezing, CodeSmoothing,
                        CodeTying, LoggedDiagnostics, WidthScaledCodeSteps)
from .trainer import Trainer, TrainingConfig, TrainingSettings
from .validation import as_data, check_non_negative_int, check_positive_int

#: Floating-point types training can run in (evaluation is always float64).
TRAINING_DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: The level of the test that decides whether the data's probabilistic PCA is their model
#: (:func:`~mapa_vae.mapa_setup.residual_isotropy_pvalue`; ``code_freeze_at="auto"``).
ISOTROPY_LEVEL = 0.01
#: Up to two latent dimensions, ``features="auto"`` keeps the data themselves while an exact
#: search for their neighbours costs at most this many multiply-adds, ``N² D`` (60 000 images
#: of 784 pixels need 2.8·10¹², about 90 s on 2 cores: 3 s for 2048 of the rows) ...
RAW_SEARCH_BUDGET = 1 << 35
#: ... and beyond, takes this many whitened principal components, where the k-d tree finds
#: their neighbours fast (:mod:`mapa_vae.neighbours`: 16 components of 60 000 images took 34 s).
LARGE_DATA_COMPONENTS = 8
#: The optimisation defaults every estimator shares (:class:`~mapa_vae.trainer.TrainingSettings`).
_TRAINING = TrainingSettings()


def _keep_arguments(estimator, arguments: dict) -> None:
    """Store each constructor argument, unchanged, as the attribute of its name: scikit-learn's
    rule that ``__init__`` only records its parameters (``arguments``: the constructor's
    ``locals()``); they are validated in ``fit``."""
    for name, value in arguments.items():
        if name != "self":
            setattr(estimator, name, value)


@dataclass
class DiscretePosterior:
    """A posterior over a finite set of codes, ``q(z | x) = Σ_j w_j(x) δ(z − z_j)``.

    For MAPA the codes are the atoms attached to the training indices and the weights are
    ``MAPA(n | x)`` (a CSR matrix); for the prior-proposal ablation they are prior draws with
    self-normalised importance weights (a dense array). Rows of ``weights`` sum to one.
    """

    weights: sparse.csr_matrix | np.ndarray
    codes: np.ndarray

    def mean(self) -> np.ndarray:
        """``E_q[z]`` per query row, shape ``(n_rows, latent_dim)``."""
        return np.asarray(self.weights @ self.codes)


@dataclass
class MixturePosterior:
    """A mixture over training indices of Gaussian codes,
    ``q(z | x) = Σ_n w_n(x) N(z; μ_n, diag s_n²)`` (for the uniform prior, of the logit-normal's
    underlying Gaussians): ``weights`` (CSR, rows sum to one) are ``MAPA(n | x)``, ``loc`` and
    ``scale`` of shape ``(n_samples_fit, latent_dim)`` the learned codes."""

    weights: sparse.csr_matrix
    loc: np.ndarray
    scale: np.ndarray

    def mean(self) -> np.ndarray:
        """The mixture mean ``Σ_n w_n μ_n`` per query row, shape ``(n_rows, latent_dim)``."""
        return np.asarray(self.weights @ self.loc)


@dataclass
class GaussianPosterior:
    """An encoder's amortized posterior: location and scale per query row (for a uniform prior,
    of the logit-normal's underlying Gaussian)."""

    loc: np.ndarray
    scale: np.ndarray


class _LatentDensity(DensityMixin, BaseEstimator):
    """Shared machinery; subclasses build the objective.

    ``protocol_learning_rate``: the method's peak Adam rate under the project's protocol
    (cosine-annealed), chosen by ``benchmarks/tune_learning_rates.py`` from {0.003, 0.01, 0.03}
    on seeds the bench never uses (docs/learning_rates.md; IWAE chose 0.01 for each of S = 5,
    10, 50); what ``learning_rate=None`` means."""

    method = "base"
    protocol_learning_rate = 0.01

    # --- building ---------------------------------------------------------------------------
    def _seed(self) -> int:
        if self.random_state is None:
            return int(np.random.default_rng().integers(2**31))
        if isinstance(self.random_state, (int, np.integer)):
            return int(self.random_state)
        return int(np.random.default_rng(self.random_state).integers(2**31))

    def _learning_rate(self) -> float:
        """``learning_rate``, or the method's protocol rate when it is ``None``."""
        if self.learning_rate is not None:
            return self.learning_rate
        return self.protocol_learning_rate

    def _torch_dtype(self) -> torch.dtype:
        """The floating-point type training runs in (``dtype``: "float32" or "float64")."""
        if self.dtype not in TRAINING_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(TRAINING_DTYPES)}, got {self.dtype!r}")
        return TRAINING_DTYPES[self.dtype]

    def _build_model(self, X: np.ndarray, sigma_start: float | None = None) -> GenerativeModel:
        """The generative model for data ``X``; a learned ``σ`` starts at ``sigma_start``
        (default: from the data, :meth:`_data_noise_scale`)."""
        latent_dim = check_positive_int(self.latent_dim, "latent_dim")
        prior = make_prior(self.prior, latent_dim)
        if self.decoder is None:
            decoder = mlp(latent_dim, X.shape[1], tuple(self.hidden))
        elif isinstance(self.decoder, nn.Module):
            decoder = copy.deepcopy(self.decoder)
        else:
            raise ValueError(f"decoder must be a torch.nn.Module or None, got "
                             f"{type(self.decoder).__name__}")
        dtype = self._torch_dtype()
        decoder = decoder.to(device=self.device, dtype=dtype)
        with torch.no_grad():
            out = decoder(torch.zeros(2, latent_dim, device=self.device, dtype=dtype))
        if tuple(out.shape) != (2, X.shape[1]):
            raise ValueError(f"decoder maps (2, {latent_dim}) codes to shape {tuple(out.shape)}; "
                             f"expected (2, {X.shape[1]}) to match the data")
        if self._likelihood() == "bernoulli":
            likelihood = BernoulliLikelihood()
        elif self.sigma is None:
            sigma0 = self._data_noise_scale(X) if sigma_start is None else sigma_start
            likelihood = GaussianLikelihood(sigma0, learn_sigma=True)
        else:
            likelihood = GaussianLikelihood(self.sigma, learn_sigma=False)
        return GenerativeModel(decoder, prior, likelihood.to(self.device))

    def _likelihood(self) -> str:
        """``likelihood``, checked: a Bernoulli has no ``sigma``."""
        name = check_likelihood(self.likelihood)
        if name == "bernoulli" and self.sigma is not None:
            raise ValueError(f"sigma={self.sigma!r} is the Gaussian likelihood's noise; "
                             f"likelihood='bernoulli' has none: leave sigma=None")
        return name

    def _data_noise_scale(self, X: np.ndarray) -> float:
        """Initial σ when it is learned: the leave-one-out kernel bandwidth over √2
        (:func:`~mapa_vae.mapa.leave_one_out_bandwidth`), computed once per training set."""
        known = getattr(self, "_noise_scale_of", None)
        if known is None or known[0] is not X:
            self._noise_scale_of = (X, leave_one_out_bandwidth(X) / math.sqrt(2.0))
        return self._noise_scale_of[1]

    def _make_objective(self, X, model, start):
        """The objective for data ``X`` and ``model``; ``start``: what :meth:`_setup` chose to
        start from (``None`` unless the method needs a start)."""
        raise NotImplementedError

    def _check_where(self) -> None:
        """Refuse an absent device or a missing process group before any work is done."""
        resolve_device(self.device)
        self._torch_dtype()
        self._likelihood()
        if self.distributed:
            Shard.from_process_group()

    def _check_settings(self) -> None:
        """Refuse a bad method-specific setting before any work is done (none here)."""

    def _trainer(self, X, seed: int, monitor=None, steps: int | None = None,
                 start=None) -> Trainer:
        """The model, objective and trainer for validated data ``X`` (``steps``: the trainer's
        budget, default ``self.steps``; ``start``: handed to :meth:`_make_objective`)."""
        config = TrainingConfig(steps=self.steps if steps is None else steps,
                                batch_size=self.batch_size, learning_rate=self._learning_rate(),
                                lr_schedule=self.lr_schedule, seed=seed,
                                log_every=self.log_every).validate()
        device = resolve_device(self.device)
        shard = Shard.from_process_group() if self.distributed else None
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = self._build_model(X)
            objective = self._make_objective(X, model, start).to(device=device,
                                                                 dtype=self._torch_dtype())
        return Trainer(objective, X, config, progress=self.verbose, device=device,
                       monitor=monitor, shard=shard, dtype=self._torch_dtype(),
                       callbacks=self._callbacks(objective))

    def _callbacks(self, objective) -> list:
        """The step callbacks the method trains with (:mod:`mapa_vae.schedules`)."""
        return []

    def _setup(self, X, seed: int, monitor=None, resume: bool = False) -> Trainer:
        """The trainer :meth:`fit` runs on validated data ``X``; ``resume``: a checkpoint's state
        will be loaded into it (:mod:`mapa_vae.checkpoints`). The trainer may have trained
        already (MAPA's pilot runs): its ``train_seconds`` are not setup time."""
        return self._trainer(X, seed, monitor)

    # --- the estimator API ------------------------------------------------------------------
    def fit(self, X, y=None, monitor=None):
        """Train on ``X`` of shape ``(n_samples, n_features)``; returns ``self``.

        ``monitor(step, model) -> dict``, if given, is called at every logged step with the
        :class:`~mapa_vae.model.GenerativeModel` being trained; its numbers join
        that row of ``history_`` (not counted as training time or passes).
        """
        start = time.perf_counter()
        X = as_data(X, "X", min_samples=2)
        self._check_where()
        self._check_settings()
        LIKELIHOODS[self._likelihood()].check_data(X)
        trainer = self._setup(X, self._seed(), monitor)
        self.setup_seconds_ = time.perf_counter() - start - trainer.train_seconds
        trainer.fit()
        self._finish(X, trainer)
        return self

    def _finish(self, X, trainer: Trainer) -> None:
        self.trainer_ = trainer
        self.objective_ = trainer.objective
        self.model_ = trainer.objective.model
        self.history_ = trainer.history
        self.n_features_in_ = X.shape[1]
        self.X_fit_ = X
        self.total_passes_ = trainer.passes
        self.train_seconds_ = trainer.train_seconds
        self.optimizer_steps_ = trainer.step + trainer.extra_steps
        self.passes_per_step_ = trainer.passes / max(self.optimizer_steps_, 1)

    def score_samples(self, X) -> np.ndarray:
        """``log p_θ(x)`` per row, shape ``(n_samples,)``: quadrature for latent dimension 1 or
        2; above, :meth:`log_likelihood` with its defaults (the one evaluator for every method,
        seeded)."""
        check_is_fitted(self, "model_")
        X = as_data(X, "X", n_features=self.n_features_in_, owner=type(self).__name__)
        if self.model_.latent_dim <= 2:
            return self.model_.log_prob(X)
        return self.log_likelihood(X).log_prob

    def log_likelihood(self, X, n_samples: int = 2000, proposal: str = "fitted",
                       anneal_steps: int = 0, random_state=0,
                       progress: bool = False) -> ImportanceEstimate:
        """``log p_θ(x)`` per row by importance sampling, with standard errors.

        ``proposal``: ``"fitted"`` (the default, the same for every method and for ground
        truths) fits a proposal to each point (:mod:`mapa_vae.marginal`) and states its cost;
        as diagnostics only, ``"model"`` is the method's own with a 10% defensive share of the
        prior (the encoder's ``q(z | x)`` for the VAE family, MAPA's mixture for MAPA; the prior
        alone for the prior-proposal ablation; :mod:`mapa_vae.proposals`) and ``"prior"`` is
        ``p(z)``. ``anneal_steps > 0`` (fitted proposal only): ``n_samples`` chains of annealed
        importance sampling from the fitted proposal through that many temperatures, for many
        latent dimensions, where importance sampling's effective sample size collapses
        (digits at ``latent_dim=64``: 16 chains, 100 temperatures). ``progress``: a progress
        bar over the rows (fitted proposal).
        """
        check_is_fitted(self, "model_")
        X = as_data(X, "X", n_features=self.n_features_in_, owner=type(self).__name__)
        if proposal not in ("fitted", "model", "prior"):
            raise ValueError(f"proposal must be 'fitted', 'model' or 'prior', got {proposal!r}")
        if anneal_steps and proposal != "fitted":
            raise ValueError(f"anneal_steps anneals from the fitted proposal; proposal "
                             f"{proposal!r} takes none")
        model = self.model_
        if proposal == "fitted":
            return model.log_prob_estimate(X, seed=random_state, n_samples=n_samples,
                                           anneal_steps=anneal_steps, progress=progress)
        draw = self._proposal() if proposal == "model" else prior_proposal(model.prior)
        return importance_log_marginal(float64_decoder(model.decoder), model.prior,
                                       model.likelihood, X, draw, n_samples, random_state)

    def _proposal(self):
        """The method's importance proposal (see :meth:`log_likelihood`): here the prior."""
        return prior_proposal(self.model_.prior)

    def score(self, X, y=None) -> float:
        """Total ``log p_θ(x)`` over the rows of ``X``."""
        return float(np.sum(self.score_samples(X)))

    def sample(self, n_samples=1, random_state=None) -> np.ndarray:
        """``n_samples`` draws from the fitted model, shape ``(n_samples, n_features)``."""
        check_is_fitted(self, "model_")
        n_samples = check_positive_int(n_samples, "n_samples")
        return self.model_.sample(n_samples, random_state=random_state)[0]

    def decode(self, Z) -> np.ndarray:
        """The decoder's outputs ``f_θ(z)`` for codes ``Z`` of shape ``(n, latent_dim)``: the
        Gaussian's means, or the Bernoulli's logits (``model_.likelihood.mean`` turns outputs
        into means)."""
        check_is_fitted(self, "model_")
        Z = as_data(Z, "Z", n_features=self.model_.latent_dim)
        with torch.no_grad():
            out = self.model_.decoder(torch.as_tensor(Z, dtype=self._torch_dtype(),
                                                      device=self.device))
        return out.double().cpu().numpy()

    @property
    def sigma_(self) -> float | None:
        """The Gaussian likelihood's ``σ`` (learned or fixed); ``None`` for the Bernoulli."""
        check_is_fitted(self, "model_")
        if not isinstance(self.model_.likelihood, GaussianLikelihood):
            return None
        return float(self.model_.likelihood.sigma.detach())

    # --- checkpoints ------------------------------------------------------------------------
    def save(self, path, extra: dict | None = None) -> None:
        """Write a checkpoint: settings (JSON), training data, state tensors and history
        (:mod:`mapa_vae.checkpoints`); ``extra``: further entries (strings, tensors) kept in
        the file beside them."""
        check_is_fitted(self, "model_")
        checkpoints.save(self, path, extra)

    @classmethod
    def load(cls, path, decoder: nn.Module | None = None, encoder: nn.Module | None = None,
             steps: int | None = None, features=None, setup: bool = True):
        """Rebuild a fitted estimator from :meth:`save`. Custom networks (and a custom
        ``features`` transformer) are passed again; their weights come from the file. ``steps``
        above the saved count resumes training. ``setup=False`` restores the generative model
        alone, at once: enough to score, sample and decode, not to query posteriors or resume
        (MAPA's setup is rebuilt from the training data, seconds at scale)."""
        return checkpoints.load(cls, path, decoder=decoder, encoder=encoder, steps=steps,
                                features=features, setup=setup)


def _finite_number(value) -> bool:
    """Whether ``value`` is a finite real number (a bool is not)."""
    return (not isinstance(value, bool) and isinstance(value, (int, float, np.floating))
            and math.isfinite(value))


class MAPADensity(_LatentDensity):
    """A latent-variable density trained with MAPA as its fixed index posterior: no encoder.

    ``codes="gaussian"`` (the default above two latent dimensions): each training index carries
    a learned Gaussian code ``N(μ_n, diag s_n²)`` and the decoder is trained on the continuous
    model's bound with the mixture posterior ``q(z | x_i) = Σ_n MAPA(n | x_i) N(μ_n, s_n²)``
    (:class:`~mapa_vae.objectives.GaussianCodesBound`). ``codes="atoms"`` (the default in one
    and two latent dimensions): each index carries one of ``N`` fixed stratified atoms of the prior, the
    attachment a permutation, trained on the empiricalized model's bound
    (:class:`~mapa_vae.objectives.MAPABound`).

    Parameters
    ----------
    decoder : torch.nn.Module, optional
        ``f_θ``: ``(B, latent_dim)`` → ``(B, n_features)``. Default: a tanh MLP of ``hidden``.
    latent_dim : int, default=1
    prior : {"normal", "uniform"}, default="normal"
    sigma : float, optional
        Known observation noise (fixed). ``None`` learns ``σ``, starting at the data's
        leave-one-out kernel width over ``√2``, and chooses MAPA's width from the data.
    likelihood : {"gaussian", "bernoulli"}, default="gaussian"
        ``p(x | z)``: ``N(f_θ(z), σ² I)``, or independent Bernoulli pixels with logits
        ``f_θ(z)`` for data in ``[0, 1]`` (the probabilities of binary pixels; no ``sigma``;
        :mod:`mapa_vae.likelihood`). MAPA's bound costs ``B`` decoder passes per step under
        either.
    hidden : tuple of int, default=(64, 64)
        The default decoder's hidden widths.
    steps, batch_size, learning_rate, lr_schedule, log_every : optimisation
        Adam on minibatches of indices, 3000 steps of 100 at the method's protocol peak rate
        (``learning_rate=None``: 0.01, chosen on seeds the bench never uses; docs/learning_rates.md)
        cosine-annealed to zero, as every method; a history row every ``log_every`` steps.
    n_neighbors, bandwidth : passed to :class:`~mapa_vae.MAPAPosterior`
        Neighbours kept per row of MAPA's weights (``"auto"``: dense up to 2048 points, beyond
        the fewest keeping 99% of every sampled row's kernel weight); ``bandwidth`` fixes its
        width ``h``.
    effective_neighbours : "auto", float or None, default="auto"
        MAPA's width stated as smoothing: ``h`` at which the median training row has this many
        effective neighbours ``1 / Σ_n w_n²``, a scale-free number to choose on held-out data
        (``GridSearchCV``). ``None``: ``√2 σ`` for a known ``σ`` on the data themselves, else
        leave-one-out. ``"auto"``: the same, capped above two latent dimensions at 1.25
        effective neighbours (:data:`~mapa_vae.mapa_setup.MAX_NEIGHBOURS_ABOVE_2D`), since a
        wider kernel blurs the Gaussian codes' targets (docs/history.md, "MAPA's kernel width
        and representation").
    features : "auto", None, int or scikit-learn transformer, default="auto"
        The data-only representation MAPA's weights are computed in (the decoder always models
        the data): an int ``K`` is PCA to ``K`` whitened components, ``None`` the data
        themselves. ``"auto"``: above two latent dimensions, the first ``latent_dim`` whitened
        components (those a linear model with ``latent_dim`` codes infers them from; digits,
        docs/results.md); up to two, the data themselves, or their first 8 whitened components
        where an exact neighbour search would cost more than ``N² D = 2³⁵``
        (:data:`RAW_SEARCH_BUDGET`).
    init : str or array-like of shape (n_samples, latent_dim), default="auto"
        The atoms' initial attachment. ``"auto"``: each data-only candidate of
        :mod:`mapa_vae.atoms` (1-D: coarse, fiedler, angle; 2-D: isomap up to 4096 points,
        spectral) trains ``pilot_steps`` steps and the highest bound continues
        (:mod:`mapa_vae.mapa_setup`). A candidate's name uses it alone (``"seriation"``: the
        least rough 1-D candidate; ``"random"``); an array gives coordinates per training point
        whose arrangement the atoms take over.
    pilot_steps : int, default=200
        Steps each candidate trains before the bound chooses; the candidates share ``steps``
        and every pass they spend is counted. ``0``: no pilots.
    project_every, reattach_every : int, default=50 and 500
        Steps between projections of the atoms' relaxed positions onto a permutation and
        between exact re-attachments (``N`` decoder passes each; 0 disables).
    codes : {"auto", "gaussian", "atoms"}, default="auto"
        ``"auto"``: atoms up to two latent dimensions, learned Gaussian codes above, where each
        won (docs/history.md, "The atoms and their attachment").
    weights : {"mapa", "identity"}, default="mapa"
        The index posterior training uses; ``"identity"`` (``W = I``, no kernel) is an ablation
        that measures the kernel's share. :meth:`posterior` answers with MAPA's weights either
        way.
    code_learning_rate : float, optional
        Peak rate of the codes: Gaussian codes 3 × ``learning_rate`` by default, atoms' relaxed
        positions 0.1 × (Adam moves a position by about its rate per step, which sets how far
        it drifts between projections).
    code_scale : float, default=0.1
        Initial width of Gaussian codes that start at the atoms (``code_start="atoms"``).
    importance_samples : int, default=1
        Gaussian codes: ``K`` draws per code and step on the importance-weighted bound over
        them (``K B`` decoder passes).
    code_tying : "auto" or float, default="auto"
        Gaussian codes: from half-way, each drawn code's mean is pulled toward its 5 nearest
        training points' mean code with this strength (``"auto"``: 1 above two latent
        dimensions, 0 below), against the per-index codes' late over-fitting.
    code_smoothing : "auto", float or None, default="auto"
        Gaussian codes: from half-way until they are fixed, the codes learn (the decoder held)
        from the targets of MAPA's weights at this many effective neighbours where those are
        wider than the training weights (a second decoder pass per index while it acts;
        ``"auto"``: 1.25 above two latent dimensions with MAPA's weights and one draw per code).
    code_freeze_at : "auto" or float, default="auto"
        Gaussian codes: the share of the steps after which they stay fixed while the decoder
        trains on. ``"auto"``: 0 (they stay at their start) where they start at the data's PPCA
        posterior and the data pass Bartlett's test that PPCA is their model (``p ≥``
        :data:`ISOTROPY_LEVEL`: that start is then the model's posterior), else 0.75; 1 below
        three latent dimensions.
    code_mean_rate : float, optional
        Gaussian codes: the means' peak rate in units of each code's width (each step's change
        of ``μ_n`` multiplied by ``s_n``); ``None``: the means learn with the widths at
        ``code_learning_rate``.
    code_start : {"auto", "atoms", "ppca"}, default="auto"
        Where Gaussian codes start: at the initial attachment's atoms, or at each point's
        posterior under the data's probabilistic PCA
        (:func:`~mapa_vae.mapa_setup.probabilistic_pca_codes`). ``"auto"``: ``"ppca"`` above two
        latent dimensions under the normal prior with ``init="auto"`` (where it scored higher on
        ``linear-gaussian`` and digits; docs/results.md), else ``"atoms"``.
    random_state : int, optional
        Seeds everything (initialisation, minibatches, atoms, draws).
    verbose : bool, default=False
        A progress bar over the steps.
    device : str, default="cpu"
        Where training runs (``"cuda"``, ``"mps"``); scores are computed on the CPU in float64.
    distributed : bool, default=False
        Train as one rank of a ``torchrun`` data-parallel run (:mod:`mapa_vae.distributed`).
    dtype : {"float32", "float64"}, default="float32"
        The floating-point type of training; float64 makes results depend far less on the
        machine's summation order.

    Attributes
    ----------
    attachment_ : str
        The initial attachment used: a candidate's name, ``"seriation"``, ``"random"`` or
        ``"given"``.
    pilot_bounds_ : dict
        The MAPA bound of each candidate after its pilot run; empty when no pilots ran.
    attachment_reason_ : str
        Why ``attachment_`` was used, in words: the pilots' choice, or why they did not run (a
        single candidate, ``pilot_steps=0``, too few ``steps`` for every candidate's pilot, an
        ``init`` other than ``"auto"``); for codes starting at the data's PPCA posterior, what
        the test that PPCA is their model found and what ``code_freeze_at="auto"`` made of it.
    ppca_isotropy_pvalue_ : float or None
        Where the codes start at the data's PPCA posterior under the Gaussian likelihood, the
        p-value of Bartlett's test that the data's last ``D − latent_dim`` principal variances
        are equal (:func:`~mapa_vae.mapa_setup.residual_isotropy_pvalue`; NaN where it does not
        apply); else ``None``.

    Examples
    --------
    >>> from mapa_vae import MAPADensity, datasets
    >>> truth = datasets.get("circle")
    >>> X, _ = truth.sample(300, seed=0)
    >>> est = MAPADensity(sigma=truth.sigma, steps=200, random_state=0).fit(X)
    >>> est.score_samples(X[:2]).shape
    (2,)
    """

    method = "mapa"

    def __init__(self, decoder=None, latent_dim=1, prior="normal", sigma=None,
                 likelihood="gaussian", hidden=(64, 64), steps=_TRAINING.steps,
                 batch_size=_TRAINING.batch_size, learning_rate=None,
                 lr_schedule=_TRAINING.lr_schedule, log_every=_TRAINING.log_every,
                 random_state=None, verbose=False, device="cpu", distributed=False,
                 n_neighbors="auto", bandwidth=None, effective_neighbours="auto", features="auto",
                 init="auto", pilot_steps=200, project_every=50, reattach_every=500,
                 codes="auto", weights="mapa",
                 code_learning_rate=None, code_scale=0.1, importance_samples=1,
                 code_tying="auto", code_smoothing="auto", code_freeze_at="auto",
                 code_mean_rate=None, code_start="auto", dtype="float32"):
        _keep_arguments(self, locals())

    def _check_settings(self) -> None:
        for name in ("pilot_steps", "project_every", "reattach_every"):
            check_non_negative_int(getattr(self, name), name)
        if self.codes not in ("auto", "gaussian", "atoms"):
            raise ValueError(f"codes must be 'auto', 'gaussian' or 'atoms', got {self.codes!r}")
        if self.weights not in ("mapa", "identity"):
            raise ValueError(f"weights must be 'mapa' or 'identity', got {self.weights!r}")
        if check_positive_int(self.importance_samples, "importance_samples") > 1:
            self._gaussian_codes_only("importance_samples", "draws Gaussian codes",
                                      "leave importance_samples at 1")
        for name in ("code_learning_rate", "code_scale", "code_mean_rate"):
            value = getattr(self, name)
            if value is None and name != "code_scale":
                continue
            if not (_finite_number(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        tying = self.code_tying
        if not ((isinstance(tying, str) and tying == "auto")
                or (_finite_number(tying) and tying >= 0)):
            raise ValueError(f"code_tying must be 'auto' or a non-negative number, got {tying!r}")
        smoothing = self.code_smoothing
        if not (smoothing is None or (isinstance(smoothing, str) and smoothing == "auto")
                or (_finite_number(smoothing) and smoothing >= 1)):
            raise ValueError(f"code_smoothing must be 'auto', None or a number of effective "
                             f"neighbours of at least 1, got {smoothing!r}")
        if self._code_smoothing() is not None:
            self._gaussian_codes_only("code_smoothing", "smooths the targets of Gaussian codes",
                                      "code_smoothing=None")
            if int(self.importance_samples) > 1:
                raise ValueError("code_smoothing takes one draw per code; set "
                                 "importance_samples=1 or code_smoothing=None")
        if self._code_tying():
            self._gaussian_codes_only("code_tying", "ties Gaussian codes", "leave code_tying at 0")
        freeze = self.code_freeze_at
        if not ((isinstance(freeze, str) and freeze == "auto")
                or (_finite_number(freeze) and 0 <= freeze <= 1)):
            raise ValueError(f"code_freeze_at must be 'auto' or a share of the steps in [0, 1], "
                             f"got {freeze!r}")
        if not isinstance(freeze, str) and freeze < 1:
            self._gaussian_codes_only("code_freeze_at", "fixes Gaussian codes",
                                      "leave code_freeze_at at 1")
        if self.code_mean_rate is not None:
            self._gaussian_codes_only("code_mean_rate", "sets the steps of Gaussian codes' means",
                                      "code_mean_rate=None")
        if self.code_start not in ("auto", "atoms", "ppca"):
            raise ValueError(f"code_start must be 'auto', 'atoms' or 'ppca', got "
                             f"{self.code_start!r}")
        if self.code_start == "ppca":
            self._gaussian_codes_only("code_start", "sets where Gaussian codes start",
                                      "code_start='auto'")
            if not self._normal_prior():
                raise ValueError(f"code_start='ppca' starts the codes at a posterior under the "
                                 f"normal prior; prior={self.prior!r} takes code_start='atoms'")
            if not (isinstance(self.init, str) and self.init == "auto"):
                raise ValueError("code_start='ppca' sets the codes' start itself; leave init at "
                                 "'auto' or set code_start='atoms'")

    def _gaussian_codes_only(self, setting: str, what: str, off: str) -> None:
        """Refuses ``setting`` (which ``what``) where the codes are atoms, which take none;
        ``off`` says how to leave it out."""
        if self._codes() == "atoms":
            raise ValueError(f"{setting} {what}; the atoms (codes='atoms', the default up to two "
                             f"latent dimensions) take none: set codes='gaussian' or {off}")

    def _setup(self, X, seed: int, monitor=None, resume: bool = False) -> Trainer:
        """MAPA's setup (:func:`~mapa_vae.mapa_setup.prepare`, kept as ``features_`` and
        ``mapa_``), then the trainer of the initial attachment: the only candidate, or the
        pilots' choice (:func:`~mapa_vae.mapa_setup.run_pilots`), with why
        (``attachment_reason_``). A checkpoint restores its own attachment (``resume``)."""
        prior = make_prior(self.prior, check_positive_int(self.latent_dim, "latent_dim"))
        target, ceiling = self._smoothing()
        setup = prepare(X, prior, seed, features=self._features(X), n_neighbors=self.n_neighbors,
                        bandwidth=self.bandwidth, sigma=self.sigma, effective_neighbours=target,
                        max_effective_neighbours=ceiling)
        self.features_, self.mapa_ = setup.features, setup.mapa
        ppca = self._code_start(X) == "ppca"  # no attachment: the codes start at PPCA's posterior
        gaussian = self._likelihood() == "gaussian"  # PPCA is a model with Gaussian noise
        self.ppca_isotropy_pvalue_ = (residual_isotropy_pvalue(X, self.latent_dim)
                                      if ppca and gaussian else None)
        if ppca and not resume:
            self.attachment_, self.pilot_bounds_ = "ppca", {}
            self.attachment_reason_ = ("Gaussian codes start at the data's probabilistic-PCA "
                                       "posterior (code_start)" + self._ppca_verdict())
        if resume or ppca:
            return self._trainer(X, seed, monitor, start=(setup, np.arange(X.shape[0])))
        candidates = initial_candidates(setup, prior, seed, init=self.init, codes=self._codes(),
                                        steps=self.steps, pilot_steps=self.pilot_steps)

        def make_trainer(perm, steps):
            return self._trainer(X, seed, monitor, steps, start=(setup, perm))

        if len(candidates.attachments) == 1:
            (name, perm), = candidates.attachments.items()
            trainer = make_trainer(perm, candidates.budget)
            report = AttachmentReport(name, candidates.reason)
        else:
            trainer, report = run_pilots(candidates, make_trainer, self.pilot_steps)
        self.attachment_, self.pilot_bounds_ = report.name, report.pilot_bounds
        self.attachment_reason_ = report.reason
        return trainer

    def _features(self, X) -> object:
        """``features`` with ``"auto"`` resolved: above two latent dimensions, the first
        ``latent_dim`` whitened principal components where the data have more dimensions than
        that; up to two, the data themselves (``None``) where an exact search for their
        neighbours is affordable (:data:`RAW_SEARCH_BUDGET`), else their first
        :data:`LARGE_DATA_COMPONENTS` whitened components."""
        if not isinstance(self.features, str):
            return self.features
        if self.features != "auto":
            raise ValueError(f"features must be 'auto', None, a number of principal components "
                             f"or a scikit-learn transformer, got {self.features!r}")
        d = check_positive_int(self.latent_dim, "latent_dim")
        n, D = X.shape
        if d > 2:
            return d if d < D and d <= n else None
        affordable = n * n * D <= RAW_SEARCH_BUDGET or D <= LARGE_DATA_COMPONENTS
        return None if affordable else LARGE_DATA_COMPONENTS

    def _smoothing(self) -> tuple:
        """``(effective_neighbours, max_effective_neighbours)`` for MAPA's width, with
        ``effective_neighbours="auto"`` resolved: above two latent dimensions no target and a
        ceiling of :data:`~mapa_vae.mapa_setup.MAX_NEIGHBOURS_ABOVE_2D` on the leave-one-out
        width's smoothing; else neither."""
        if not isinstance(self.effective_neighbours, str):
            return self.effective_neighbours, None
        if self.effective_neighbours != "auto":
            raise ValueError(f"effective_neighbours must be 'auto', None or a number, got "
                             f"{self.effective_neighbours!r}")
        above = check_positive_int(self.latent_dim, "latent_dim") > 2
        return None, MAX_NEIGHBOURS_ABOVE_2D if above else None

    def _gaussian_above_two(self) -> bool:
        """Gaussian codes above two latent dimensions: where the codes' late regularisers
        (``code_tying``, ``code_smoothing``, ``code_freeze_at``) act by default."""
        above = check_positive_int(self.latent_dim, "latent_dim") > 2
        return above and self._codes() == "gaussian"

    def _code_tying(self) -> float:
        """``code_tying`` with ``"auto"`` resolved: 1 for Gaussian codes above two latent
        dimensions, else 0."""
        if self.code_tying != "auto":
            return float(self.code_tying)
        return 1.0 if self._gaussian_above_two() else 0.0

    def _code_smoothing(self) -> float | None:
        """``code_smoothing`` with ``"auto"`` resolved: 1.25 effective neighbours for Gaussian
        codes above two latent dimensions with MAPA's weights and one draw per code, else
        ``None``."""
        if self.code_smoothing != "auto":
            return None if self.code_smoothing is None else float(self.code_smoothing)
        if (self._gaussian_above_two() and self.weights == "mapa"
                and int(self.importance_samples) == 1):
            return MAX_NEIGHBOURS_ABOVE_2D
        return None

    def _code_weights(self, setup) -> sparse.csr_matrix | None:
        """MAPA's weights at ``code_smoothing`` effective neighbours in MAPA's representation
        (beyond the dense form, on the neighbours MAPA's weights keep), where they smooth more
        than the training weights: a kernel more than 1% wider. (Widths
        set by effective neighbours are roots found by bisection, so the same target reached
        twice, say by the ceiling of the leave-one-out width, gives two widths a hair apart.)
        Else ``None``."""
        target = self._code_smoothing()
        if target is None:
            return None
        current = 0.0 if self.weights == "identity" else setup.mapa.bandwidth_
        if setup.mapa.dense_:
            smoother = MAPAPosterior(n_neighbors=self.n_neighbors,
                                     effective_neighbours=target).fit(setup.representation)
            return smoother.weights_ if smoother.bandwidth_ > 1.01 * current else None
        width = setup.mapa.width_for(target)  # on MAPA's own neighbours: no second search
        return setup.mapa.weights_at(width) if width > 1.01 * current else None

    def _code_freeze_at(self) -> float:
        """``code_freeze_at`` with ``"auto"`` resolved: for Gaussian codes above two latent
        dimensions 0 where they start at the data's PPCA posterior and the data pass the test
        that PPCA is their model (``ppca_isotropy_pvalue_`` at least :data:`ISOTROPY_LEVEL`),
        else 0.75; 1 below."""
        if self.code_freeze_at != "auto":
            return float(self.code_freeze_at)
        if not self._gaussian_above_two():
            return 1.0
        return 0.0 if self._ppca_is_the_model() else 0.75

    def _ppca_is_the_model(self) -> bool:
        """Whether the codes start at the data's PPCA posterior and the data pass Bartlett's
        test that PPCA describes them, at :data:`ISOTROPY_LEVEL` (known once :meth:`_setup` has
        run)."""
        p = self.ppca_isotropy_pvalue_
        return p is not None and p >= ISOTROPY_LEVEL

    def _ppca_verdict(self) -> str:
        """What the test that PPCA is the data's model found, and what it means for the codes
        under ``code_freeze_at="auto"``, as a clause."""
        p, level = self.ppca_isotropy_pvalue_, ISOTROPY_LEVEL
        if p is None:
            verdict = ("; the test that PPCA is the data's model applies under the Gaussian "
                       "likelihood only")
        elif self._ppca_is_the_model():
            verdict = f"; the data pass the test that PPCA is their model (p = {p:.3g} ≥ {level})"
        elif p == p:  # not NaN
            verdict = f"; the data fail the test that PPCA is their model (p = {p:.2g} < {level})"
        else:
            verdict = "; the test that PPCA is the data's model does not apply to them"
        if self.code_freeze_at != "auto":
            return verdict
        share = self._code_freeze_at()
        if share == 0:
            return verdict + ", so the codes stay there (code_freeze_at)"
        return verdict + f", so the codes learn until {share:g} of the steps (code_freeze_at)"

    def _normal_prior(self) -> bool:
        """Whether the latent prior is the standard normal (by name or instance)."""
        return isinstance(make_prior(self.prior, check_positive_int(self.latent_dim,
                                                                    "latent_dim")), StandardNormal)

    def _code_start(self, X) -> str:
        """``code_start`` with ``"auto"`` resolved: ``"ppca"`` for Gaussian codes above two
        latent dimensions under the normal prior with ``init="auto"`` and ``latent_dim`` below
        the number of points and of data dimensions, else ``"atoms"``."""
        if self.code_start != "auto":
            return self.code_start
        ppca = (self._gaussian_above_two() and self._normal_prior()
                and isinstance(self.init, str) and self.init == "auto"
                and int(self.latent_dim) < min(X.shape))
        return "ppca" if ppca else "atoms"

    def _codes(self) -> str:
        """``codes`` with ``"auto"`` resolved: atoms up to two latent dimensions, Gaussian
        above."""
        if self.codes != "auto":
            return self.codes
        return "atoms" if check_positive_int(self.latent_dim, "latent_dim") <= 2 else "gaussian"

    def _make_objective(self, X, model, start):
        """MAPA's bound from ``start = (setup, perm)``: training weights ``W`` (MAPA's, or the
        identity for ``weights="identity"``) and atom ``perm[n]`` attached to index ``n``."""
        setup, perm = start
        if self.weights == "identity":
            W = sparse.identity(X.shape[0], format="csr", dtype=np.float64)
        else:
            W = setup.mapa.weights_
        atoms = self._codes() == "atoms"
        dtype = self._torch_dtype()
        learning_rate = self._learning_rate()
        rate = ((POSITION_RATE if atoms else 3) * learning_rate if self.code_learning_rate is None
                else self.code_learning_rate)
        order = setup.mapa.locality_order()
        if atoms:
            return MAPABound(model, W, X, Attachment(setup.atoms, perm, dtype),
                             code_lr_scale=rate / learning_rate, dtype=dtype, order=order)
        if self._code_start(X) == "ppca":
            loc, scale = probabilistic_pca_codes(X, model.latent_dim)
        else:
            loc, scale = setup.atoms[perm], np.full(setup.atoms.shape, float(self.code_scale))
            if isinstance(model.prior, Uniform):  # logit-normal codes: start at the atoms' logits
                clipped = np.clip(loc, 1e-6, 1 - 1e-6)
                loc = np.log(clipped) - np.log1p(-clipped)
        neighbours = code_neighbours(setup) if self._code_tying() else None
        mean_rate = self.code_mean_rate
        return GaussianCodesBound(model, W, X, loc, scale,
                                  code_lr_scale=rate / learning_rate,
                                  mean_lr_scale=None if mean_rate is None
                                  else mean_rate / learning_rate,
                                  n_samples=int(self.importance_samples), neighbours=neighbours,
                                  code_weights=self._code_weights(setup), dtype=dtype,
                                  order=order)

    def _callbacks(self, objective) -> list:
        """The bound's diagnostics in the history; for atoms, projection and re-attachment;
        with ``code_tying``, the codes tied from half-way through the steps; with code weights
        (``code_smoothing``), the codes' smoother targets from half-way; with
        ``code_freeze_at`` below 1, the codes fixed from that share of the steps; with
        ``code_mean_rate``, the means' steps in the codes' widths."""
        callbacks = [LoggedDiagnostics(objective.diagnostics)]
        if isinstance(objective, MAPABound):
            callbacks.append(AttachmentUpdates(objective, self.project_every,
                                               self.reattach_every))
        if isinstance(objective, GaussianCodesBound):
            strength = self._code_tying()
            if strength:
                callbacks.append(CodeTying(objective, strength, int(self.steps) // 2))
            if objective.code_mass is not None:
                callbacks.append(CodeSmoothing(objective, int(self.steps) // 2))
            share = self._code_freeze_at()
            if share < 1:
                callbacks.append(CodeFreezing(objective, int(int(self.steps) * share)))
            if objective.mean_lr_scale is not None:
                callbacks.append(WidthScaledCodeSteps(objective))
        return callbacks

    def _gaussian_codes(self) -> tuple[np.ndarray, np.ndarray]:
        """The learned codes' ``μ_n`` and ``s_n``, float64, each ``(n_samples_fit, latent_dim)``."""
        objective = self.objective_
        return (objective.loc.detach().double().cpu().numpy(),
                objective.log_scale.detach().exp().double().cpu().numpy())

    def posterior(self, X) -> DiscretePosterior | MixturePosterior:
        """MAPA over training indices for each row of ``X`` with the codes of those indices:
        the learned Gaussians (:class:`MixturePosterior`) or the attached atoms
        (:class:`DiscretePosterior`)."""
        check_is_fitted(self, "model_")
        X = as_data(X, "X", n_features=self.n_features_in_, owner=type(self).__name__)
        F = X if self.features_ is None else self.features_.transform(X)
        weights = self.mapa_.query(F)
        if isinstance(self.objective_, GaussianCodesBound):
            return MixturePosterior(weights, *self._gaussian_codes())
        return DiscretePosterior(weights,
                                 self.objective_.attachment.attached().double().cpu().numpy())

    def _proposal(self):
        """MAPA's mixture over the codes of the training indices with the largest MAPA weights
        of ``x`` (:func:`~mapa_vae.proposals.gaussian_codes_proposal`,
        :func:`~mapa_vae.proposals.atom_proposal`)."""
        def weights(X):
            return self.posterior(X).weights

        if isinstance(self.objective_, GaussianCodesBound):
            return gaussian_codes_proposal(weights, *self._gaussian_codes(), self.model_.prior)
        return atom_proposal(weights, self.objective_.attachment.attached().double().cpu(),
                             self.model_.prior)

    def bound_per_point(self, n_samples: int = 16, random_state=0, points=None) -> dict:
        """The bound ``L_i`` per training point, or for the training points ``points``. Atoms:
        exact, with ``log p̂(x_i)`` and the gap ``KL(W_i ‖ p̂(· | x_i))``. Gaussian codes: each
        code's expectation by ``n_samples`` seeded draws (``n_samples`` decoder passes per code
        the points' weights reach)."""
        check_is_fitted(self, "objective_")
        if isinstance(self.objective_, GaussianCodesBound):
            generator = torch.Generator().manual_seed(self._seed_of(random_state))
            return self.objective_.per_point(points, n_samples=check_positive_int(n_samples,
                                                                                  "n_samples"),
                                             generator=generator)
        return self.objective_.per_point(points)

    @staticmethod
    def _seed_of(random_state) -> int:
        return int(np.random.default_rng(random_state).integers(2**63))



class _EncoderDensity(_LatentDensity):
    def _build_encoder(self, X: np.ndarray, model: GenerativeModel) -> AmortizedPosterior:
        if self.encoder is None:
            net = mlp(X.shape[1], 2 * model.latent_dim, tuple(self.hidden))
        elif isinstance(self.encoder, nn.Module):
            net = copy.deepcopy(self.encoder)
        else:
            raise ValueError(f"encoder must be a torch.nn.Module or None, got "
                             f"{type(self.encoder).__name__}")
        return AmortizedPosterior(net.to(self._torch_dtype()), model.prior).to(self.device)

    def _proposal(self):
        """The encoder's ``q(z | x)`` with a defensive share of the prior
        (:func:`~mapa_vae.proposals.encoder_proposal`)."""
        return encoder_proposal(self.objective_.encoder, self.model_.prior, self.device,
                                self._torch_dtype())

    def posterior(self, X) -> GaussianPosterior:
        """The encoder's ``q(z | x)`` for each row of ``X``."""
        check_is_fitted(self, "model_")
        X = as_data(X, "X", n_features=self.n_features_in_, owner=type(self).__name__)
        with torch.no_grad():
            loc, scale = self.objective_.encoder(torch.as_tensor(X, dtype=self._torch_dtype(),
                                                                 device=self.device))
        return GaussianPosterior(loc.double().cpu().numpy(), scale.double().cpu().numpy())


class VAEDensity(_EncoderDensity):
    """The VAE baseline: mean-field Gaussian encoder (logit-normal for a uniform prior), one-sample
    ELBO; same decoder, optimiser, batch and steps as :class:`MAPADensity`."""

    method = "vae"
    protocol_learning_rate = 0.03

    def __init__(self, decoder=None, encoder=None, latent_dim=1, prior="normal", sigma=None,
                 likelihood="gaussian", hidden=(64, 64), steps=_TRAINING.steps,
                 batch_size=_TRAINING.batch_size, learning_rate=None, lr_schedule=_TRAINING.lr_schedule,
                 log_every=_TRAINING.log_every,
                 random_state=None, verbose=False, device="cpu", distributed=False,
                 dtype="float32"):
        _keep_arguments(self, locals())

    def _make_objective(self, X, model, start):
        return ELBO(model, self._build_encoder(X, model))


class IWAEDensity(_EncoderDensity):
    """The IWAE baseline with ``n_samples`` importance samples per point."""

    method = "iwae"

    def __init__(self, decoder=None, encoder=None, latent_dim=1, prior="normal", sigma=None,
                 likelihood="gaussian", hidden=(64, 64), steps=_TRAINING.steps,
                 batch_size=_TRAINING.batch_size, learning_rate=None, lr_schedule=_TRAINING.lr_schedule,
                 log_every=_TRAINING.log_every,
                 random_state=None, verbose=False, device="cpu", distributed=False, n_samples=10,
                 dtype="float32"):
        _keep_arguments(self, locals())

    def _make_objective(self, X, model, start):
        return IWAEBound(model, self._build_encoder(X, model), self.n_samples)


class LaggingVAEDensity(_EncoderDensity):
    """The lagging-encoder ("aggressive") VAE of He et al. (2019)."""

    method = "lagging"

    def __init__(self, decoder=None, encoder=None, latent_dim=1, prior="normal", sigma=None,
                 likelihood="gaussian", hidden=(64, 64), steps=_TRAINING.steps,
                 batch_size=_TRAINING.batch_size, learning_rate=None, lr_schedule=_TRAINING.lr_schedule,
                 log_every=_TRAINING.log_every,
                 random_state=None, verbose=False, device="cpu", distributed=False, max_inner=100,
                 check_every=10, dtype="float32"):
        _keep_arguments(self, locals())

    def _make_objective(self, X, model, start):
        max_inner = check_positive_int(self.max_inner, "max_inner")
        check_every = check_positive_int(self.check_every, "check_every")
        return LaggingELBO(model, self._build_encoder(X, model), max_inner=max_inner,
                           check_every=check_every)

    def _callbacks(self, objective) -> list:
        return [AggressiveEncoder(objective)]


class PriorISDensity(_LatentDensity):
    """Ablation: the prior-proposal bound with ``n_samples`` fresh prior draws per step, shared
    by the batch (as many decoder passes per step as MAPA when ``n_samples = batch_size``)."""

    method = "prior-is"

    def __init__(self, decoder=None, latent_dim=1, prior="normal", sigma=None,
                 likelihood="gaussian", hidden=(64, 64), steps=_TRAINING.steps,
                 batch_size=_TRAINING.batch_size, learning_rate=None,
                 lr_schedule=_TRAINING.lr_schedule, log_every=_TRAINING.log_every,
                 random_state=None, verbose=False, device="cpu", distributed=False,
                 n_samples=100, dtype="float32"):
        _keep_arguments(self, locals())

    def _make_objective(self, X, model, start):
        return PriorProposalBound(model, self.n_samples)

    def posterior(self, X, random_state=None) -> DiscretePosterior:
        """The ablation's own posterior for each row of ``X``: ``n_samples`` fresh prior draws
        ``z_s`` with self-normalised weights ``∝ N(x; f_θ(z_s), σ² I)``."""
        check_is_fitted(self, "model_")
        X = as_data(X, "X", n_features=self.n_features_in_, owner=type(self).__name__)
        codes = self.model_.prior.sample(self.n_samples, random_state=random_state)
        means = torch.as_tensor(self.decode(codes))
        log_w = torch.full((self.n_samples,), -math.log(self.n_samples), dtype=torch.float64)
        log_post = mixture_log_responsibilities(torch.as_tensor(X), means, log_w,
                                                self.model_.likelihood.frozen())
        return DiscretePosterior(log_post.exp().numpy(), codes)
