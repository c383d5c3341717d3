"""scikit-learn-style density estimators: MAPA and the baselines behind one surface.

Every estimator fits a :class:`~mapa_vae.model.GenerativeModel` ``z ~ p(z)``,
``x | z ~ N(f_θ(z), σ² I)`` and answers ``score_samples`` (``log p_θ(x)`` by quadrature for
latent dimension 1 or 2, above by the one evaluator of :mod:`mapa_vae.marginal`), ``score``,
``sample`` and ``posterior``. They differ only in the objective they train with.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse
from scipy.spatial import KDTree
from sklearn.base import BaseEstimator, DensityMixin, clone
from sklearn.decomposition import PCA
from sklearn.utils.validation import check_is_fitted
from torch import nn

from .atoms import (Attachment, candidate_attachments, initial_attachment, least_rough,
                    stratified_atoms, transport)
from .devices import resolve_device
from .distributed import Shard
from .encoders import AmortizedPosterior
from .evaluation import (ImportanceEstimate, defensive_mixture, importance_log_marginal,
                         prior_proposal)
from .likelihood import GaussianLikelihood, mixture_log_responsibilities
from .mapa import MAPAPosterior
from .model import GenerativeModel
from .networks import float64_decoder, mlp
from .objectives import (ELBO, GaussianCodesBound, IWAEBound, LaggingELBO, MAPABound,
                         PriorProposalBound)
from .priors import Prior, Uniform, make_prior
from .schedules import AggressiveEncoder, AttachmentUpdates, LoggedDiagnostics
from .trainer import Trainer, TrainingConfig, load_torch, save_torch
from .validation import as_data, check_positive_int

_MODULE_PARAMS = ("decoder", "encoder", "features")
#: Floating-point types training can run in (evaluation is always float64).
TRAINING_DTYPES = {"float32": torch.float32, "float64": torch.float64}  # objects a checkpoint cannot hold
_ARRAY_IN_STATE = "<array kept in the checkpoint>"


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
    """Shared machinery; subclasses build the objective."""

    method = "base"

    def __init__(self, decoder=None, latent_dim=1, prior="normal", sigma=None, hidden=(64, 64),
                 steps=3000, batch_size=100, learning_rate=1e-3, lr_schedule="constant",
                 log_every=100, random_state=None, verbose=False, device="cpu", distributed=False,
                 dtype="float32"):
        self.decoder = decoder
        self.latent_dim = latent_dim
        self.prior = prior
        self.sigma = sigma
        self.hidden = hidden
        self.steps = steps
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.lr_schedule = lr_schedule
        self.log_every = log_every
        self.random_state = random_state
        self.verbose = verbose
        self.device = device
        self.distributed = distributed
        self.dtype = dtype

    # --- building ---------------------------------------------------------------------------
    def _seed(self) -> int:
        if self.random_state is None:
            return int(np.random.default_rng().integers(2**31))
        if isinstance(self.random_state, (int, np.integer)):
            return int(self.random_state)
        return int(np.random.default_rng(self.random_state).integers(2**31))

    def _torch_dtype(self) -> torch.dtype:
        """The floating-point type training runs in (``dtype``: "float32" or "float64")."""
        if self.dtype not in TRAINING_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(TRAINING_DTYPES)}, got {self.dtype!r}")
        return TRAINING_DTYPES[self.dtype]

    def _build_model(self, X: np.ndarray) -> GenerativeModel:
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
        if self.sigma is None:
            sigma0 = self._data_noise_scale(X)
            likelihood = GaussianLikelihood(sigma0, learn_sigma=True)
        else:
            likelihood = GaussianLikelihood(self.sigma, learn_sigma=False)
        return GenerativeModel(decoder, prior, likelihood.to(self.device))

    @staticmethod
    def _data_noise_scale(X: np.ndarray) -> float:
        """Initial σ when it is learned: the leave-one-out kernel bandwidth over √2."""
        return MAPAPosterior().fit(X).bandwidth_ / math.sqrt(2.0)

    def _build_encoder(self, X: np.ndarray, model: GenerativeModel) -> AmortizedPosterior:
        encoder = getattr(self, "encoder", None)
        if encoder is None:
            net = mlp(X.shape[1], 2 * model.latent_dim, tuple(self.hidden))
        elif isinstance(encoder, nn.Module):
            net = copy.deepcopy(encoder)
        else:
            raise ValueError(f"encoder must be a torch.nn.Module or None, got "
                             f"{type(encoder).__name__}")
        return AmortizedPosterior(net.to(self._torch_dtype()), model.prior).to(self.device)

    def _make_objective(self, X, model, seed):
        raise NotImplementedError

    def _check_where(self) -> None:
        """Refuse an absent device or a missing process group before any work is done."""
        resolve_device(self.device)
        self._torch_dtype()
        if self.distributed:
            Shard.from_process_group()

    def _setup(self, X, seed: int, monitor=None, steps: int | None = None) -> Trainer:
        """The model, objective and trainer for validated data ``X`` (``steps``: the trainer's
        budget, default ``self.steps``)."""
        config = TrainingConfig(steps=self.steps if steps is None else steps,
                                batch_size=self.batch_size, learning_rate=self.learning_rate,
                                lr_schedule=self.lr_schedule, seed=seed,
                                log_every=self.log_every).validate()
        device = resolve_device(self.device)
        shard = Shard.from_process_group() if self.distributed else None
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = self._build_model(X)
            objective = self._make_objective(X, model, seed).to(device=device,
                                                                dtype=self._torch_dtype())
        return Trainer(objective, X, config, progress=self.verbose, device=device,
                       monitor=monitor, shard=shard, dtype=self._torch_dtype(),
                       callbacks=self._callbacks(objective))

    def _callbacks(self, objective) -> list:
        """The step callbacks the method trains with (:mod:`mapa_vae.schedules`)."""
        return []

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
        trainer = self._setup(X, self._seed(), monitor)
        self.setup_seconds_ = time.perf_counter() - start
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
                       random_state=0) -> ImportanceEstimate:
        """``log p_θ(x)`` per row by importance sampling, with standard errors.

        ``proposal``: ``"fitted"`` (the default, the same for every method and for ground
        truths) fits a proposal to each point (:mod:`mapa_vae.marginal`) and states its cost;
        as diagnostics only, ``"model"`` is the method's own with a 10% defensive share of the
        prior (the encoder's ``q(z | x)`` for the VAE family, MAPA's mixture for MAPA; the prior
        alone for the prior-proposal ablation) and ``"prior"`` is ``p(z)``.
        """
        check_is_fitted(self, "model_")
        X = as_data(X, "X", n_features=self.n_features_in_, owner=type(self).__name__)
        if proposal not in ("fitted", "model", "prior"):
            raise ValueError(f"proposal must be 'fitted', 'model' or 'prior', got {proposal!r}")
        model = self.model_
        if proposal == "fitted":
            return model.log_prob_estimate(X, seed=random_state, n_samples=n_samples)
        draw = self._proposal() if proposal == "model" else prior_proposal(model.prior)
        return importance_log_marginal(float64_decoder(model.decoder), model.prior,
                                       float(model.likelihood.sigma.detach()), X, draw,
                                       n_samples, random_state)

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
        """``f_θ(z)`` for codes ``Z`` of shape ``(n, latent_dim)``."""
        check_is_fitted(self, "model_")
        Z = as_data(Z, "Z", n_features=self.model_.latent_dim)
        with torch.no_grad():
            out = self.model_.decoder(torch.as_tensor(Z, dtype=self._torch_dtype(),
                                                      device=self.device))
        return out.double().cpu().numpy()

    @property
    def sigma_(self) -> float:
        check_is_fitted(self, "model_")
        return float(self.model_.likelihood.sigma.detach())

    # --- checkpoints ------------------------------------------------------------------------
    def _params_for_file(self) -> dict:
        params = self.get_params(deep=False)
        for name in _MODULE_PARAMS:
            if name in params and not isinstance(params[name], (int, type(None))):
                params[name] = "custom"
        params["hidden"] = list(params["hidden"])
        if isinstance(params["prior"], Prior):
            params["prior"] = params["prior"].name
        if "init" in params and not isinstance(params["init"], str):
            params["init"] = _ARRAY_IN_STATE  # the coordinates are kept as a tensor
        if not isinstance(params["random_state"], (int, type(None))):
            params["random_state"] = None
        return params

    def save(self, path) -> None:
        """Write a checkpoint: settings (JSON), training data, state tensors and history."""
        check_is_fitted(self, "model_")
        state = self.trainer_.state()
        state["estimator"] = type(self).__name__
        state["params"] = json.dumps(self._params_for_file())
        state["seed"] = self.trainer_.config.seed
        state["X"] = torch.as_tensor(self.X_fit_)
        state.update(self._extra_state())
        if "init" in self.get_params() and not isinstance(self.init, str):
            state["init"] = torch.as_tensor(as_data(self.init, "init"))
        save_torch(state, path)

    def _extra_state(self) -> dict:
        """Fitted attributes of a subclass to keep in a checkpoint (JSON-able values)."""
        return {}

    @classmethod
    def load(cls, path, decoder: nn.Module | None = None, encoder: nn.Module | None = None,
             steps: int | None = None, features=None):
        """Rebuild a fitted estimator from :meth:`save`. Custom networks (and a custom
        ``features`` transformer) are passed again; their weights come from the file. ``steps``
        above the saved count resumes training."""
        state = load_torch(path)
        name = state.get("estimator")
        if name != cls.__name__:
            raise ValueError(f"{str(path)!r} holds a {name} checkpoint, not {cls.__name__}")
        params = json.loads(state["params"])
        for key, module in (("decoder", decoder), ("encoder", encoder), ("features", features)):
            if params.get(key) == "custom":
                if module is None:
                    raise ValueError(f"this checkpoint used a custom {key}; pass {key}= "
                                     f"with the same architecture to load it")
                params[key] = module
        params["hidden"] = tuple(params["hidden"])
        params["random_state"] = int(state["seed"])
        if params.get("init") == _ARRAY_IN_STATE:
            params["init"] = state["init"].numpy()
        saved_steps = params["steps"]
        if steps is not None:
            params["steps"] = check_positive_int(steps, "steps")
        estimator = cls(**params)
        start = time.perf_counter()
        X = state["X"].numpy()
        trainer = estimator._setup(X, int(state["seed"]))
        estimator.setup_seconds_ = time.perf_counter() - start
        trainer.load_state(state)
        trainer.config.steps += params["steps"] - saved_steps  # a budget minus any pilot steps
        trainer.fit()
        estimator._finish(X, trainer)
        estimator._restore(state)
        return estimator

    def _restore(self, state: dict) -> None:
        """Fitted attributes of a subclass that the checkpoint holds beyond the trainer's."""


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
        ``f_θ``: ``(B, latent_dim)`` → ``(B, n_features)``. Default: a 2 × 64 tanh MLP.
    latent_dim : int, default=1
    prior : {"normal", "uniform"}, default="normal"
    sigma : float, optional
        Known observation noise (fixed). ``None`` learns ``σ`` and chooses MAPA's bandwidth from
        the data (leave-one-out).
    steps, batch_size, learning_rate, lr_schedule : optimisation (Adam; minibatches of atom
        indices; ``lr_schedule`` "constant" or "cosine", annealed to zero over ``steps``).
    n_neighbors, bandwidth : passed to :class:`~mapa_vae.MAPAPosterior`; ``bandwidth`` sets MAPA's
        kernel scale ``h`` instead of ``√2 σ`` (``σ`` still fixes the noise, if given).
    features : None, int or scikit-learn transformer, default=None
        The data-only representation MAPA is computed in (its weights and the candidate
        attachments); the decoder still models the data. An int ``K``: PCA to ``K`` whitened
        components (for high-dimensional data, where Euclidean kernels lose contrast).
    init : str or array-like of shape (n_samples, latent_dim), default="auto"
        The initial attachment of atoms to indices. ``"auto"``: each data-only candidate
        (1-D: coarse, greedy, fiedler, angle; above: isomap, spectral; see
        :mod:`mapa_vae.atoms`) trains ``pilot_steps`` steps and the highest bound continues (see
        :meth:`fit`); for Gaussian codes above 1-D, ``"pca"`` (no pilots). A candidate's name
        (or ``"pca"``: principal components of the smoothed data) uses it alone;
        ``"seriation"`` takes the least rough 1-D candidate without pilots; ``"random"`` is a
        random attachment. An array gives coordinates per training point (e.g. known codes)
        whose arrangement the atoms take over.
    pilot_steps : int, default=200
        Steps each candidate trains before the bound chooses among them (``init="auto"``).
    project_every, reattach_every : int
        Steps between projections of the relaxed positions and between exact re-attachments
        (0 disables; ``codes="atoms"`` only).
    codes : {"auto", "gaussian", "atoms"}, default="auto"
        Learned Gaussian codes per index, or a permutation of fixed atoms (see above); ``"auto"``:
        atoms for ``latent_dim`` 1 and 2 (where they won: spiral, circle, swiss-roll, digits at
        ``d_z = 2``; the codes' density is not held to the prior, only each code's KL), Gaussian
        codes above (digits at ``d_z = 8``: 38 against 23 nats per image). Gaussian codes start at the atoms
        the initial attachment gives each index (so ``init`` applies to both) with scale
        ``code_scale``.
    weights : {"mapa", "identity"}, default="mapa"
        The index posterior ``W`` that training uses: MAPA's, or the identity (each point its own
        index, no kernel; an ablation measuring what MAPA's smoothing contributes).
        :meth:`posterior` answers with MAPA's weights either way.
    code_learning_rate : float, optional
        Peak learning rate of the Gaussian codes (each is updated only when its index is drawn,
        once every ``N / batch_size`` steps); default ``3 × learning_rate`` (on digits, 0.03
        beat 0.1 and 0.3 at ``latent_dim=2`` and tied 0.1 at 8, with ``learning_rate=0.01``).
    code_scale : float, default=0.1
        Initial ``s_n`` of every Gaussian code, in units of the prior (of the logit for the
        uniform prior).
    random_state : int, optional
        Seeds everything (network initialisation, minibatches, atoms).
    device : str, default="cpu"
        Where training runs (``"cuda"``, ``"cuda:1"``, ``"mps"``); a device this machine lacks is
        a ``ValueError``. Scores are computed on the CPU in float64.
    distributed : bool, default=False
        Train as one rank of a data-parallel run (launched by ``torchrun``, process group
        initialised): each rank takes its share of every minibatch and gradients are summed
        over ranks, giving one process's result (:mod:`mapa_vae.distributed`).
    dtype : {"float32", "float64"}, default="float32"
        The floating-point type training runs in. ``"float64"`` is slower but rounds about
        10⁹ times more finely, so results depend far less on summation order (process count,
        the machine's kernels). Scores are always computed in float64.

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
        ``init`` other than ``"auto"``).

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

    def __init__(self, decoder=None, latent_dim=1, prior="normal", sigma=None, hidden=(64, 64),
                 steps=3000, batch_size=100, learning_rate=1e-3, lr_schedule="constant",
                 log_every=100, random_state=None, verbose=False, device="cpu", distributed=False,
                 n_neighbors="auto", bandwidth=None, features=None, init="auto", pilot_steps=200,
                 project_every=50, reattach_every=500, codes="auto", weights="mapa",
                 code_learning_rate=None, code_scale=0.1, dtype="float32"):
        super().__init__(decoder, latent_dim, prior, sigma, hidden, steps, batch_size,
                         learning_rate, lr_schedule, log_every, random_state, verbose, device,
                         distributed, dtype)
        self.codes = codes
        self.weights = weights
        self.code_learning_rate = code_learning_rate
        self.code_scale = code_scale
        self.n_neighbors = n_neighbors
        self.bandwidth = bandwidth
        self.features = features
        self.init = init
        self.pilot_steps = pilot_steps
        self.project_every = project_every
        self.reattach_every = reattach_every

    def fit(self, X, y=None, monitor=None):
        """Train on ``X`` of shape ``(n_samples, n_features)``; returns ``self``.

        With ``init="auto"`` every data-only candidate attachment
        (:func:`~mapa_vae.atoms.candidate_attachments`) is trained for ``pilot_steps`` steps from
        the same start, and the one with the highest MAPA bound over all training points (``N``
        decoder passes each) continues. The step budget is shared: the winner stops at
        ``steps − (K − 1) · pilot_steps`` for ``K`` candidates, so the candidates take
        ``steps`` optimiser steps together, and every pass they spend is counted. Without room
        for pilots (``pilot_steps=0`` or too few steps), the least rough candidate is used.
        ``monitor`` is as for the other estimators.
        """
        start = time.perf_counter()
        X = as_data(X, "X", min_samples=2)
        self._check_where()
        for name in ("pilot_steps", "project_every", "reattach_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        self._check_codes()
        seed = self._seed()
        prior = make_prior(self.prior, check_positive_int(self.latent_dim, "latent_dim"))
        F = self._representation(X, seed)
        self.mapa_ = self._mapa().fit(F)
        self._atoms = stratified_atoms(prior, X.shape[0], random_state=seed)
        candidates = self._candidates(F, prior, seed)
        pilot = int(self.pilot_steps)
        budget = check_positive_int(self.steps, "steps") - (len(candidates) - 1) * pilot
        self.attachment_reason_ = self._reason_without_pilots(candidates)
        if len(candidates) > 1 and (pilot == 0 or budget <= pilot):
            why = ("pilot_steps=0" if pilot == 0 else
                   f"steps={self.steps} leave no room for {len(candidates)} candidates x {pilot} "
                   f"pilot steps (that needs steps > {len(candidates) * pilot})")
            if prior.latent_dim > 1:
                candidates = {"isomap": candidates["isomap"]}
                rule = "isomap, the default above one latent dimension"
            else:
                Y = np.asarray(self.mapa_.weights_ @ F)
                candidates = {"seriation": least_rough(candidates, Y, self._atoms)}
                rule = "the least rough candidate (seriation)"
            self.attachment_reason_ = f"pilots skipped: {why}; used {rule}"
        self.setup_seconds_ = time.perf_counter() - start
        self.pilot_bounds_ = {}
        if len(candidates) == 1:
            (self.attachment_, self._perm), = candidates.items()
            trainer = self._setup(X, seed, monitor)
            self.setup_seconds_ = time.perf_counter() - start
        else:
            trainer = self._pilot(X, seed, monitor, candidates, budget)
        trainer.fit()
        self._finish(X, trainer)
        return self

    def _reason_without_pilots(self, candidates: dict) -> str:
        """Why the attachment is what it is without pilots (``attachment_reason_``)."""
        if not isinstance(self.init, str):
            return "init gave coordinates per training point"
        if self.init != "auto":
            return f"init={self.init!r}"
        return f"no pilots: {next(iter(candidates))} is the only distinct candidate"

    def _representation(self, X, seed) -> np.ndarray:
        """The data as MAPA sees them: ``X``, or its ``features`` (fitted here, kept as
        ``features_``): an int ``K`` is PCA to ``K`` whitened components, else a transformer."""
        if self.features is None:
            self.features_ = None
            return X
        if isinstance(self.features, (int, np.integer)) and not isinstance(self.features, bool):
            k = check_positive_int(self.features, "features")
            if k > min(X.shape):
                raise ValueError(f"features={k} asks for more principal components than the data "
                                 f"have ({min(X.shape)})")
            self.features_ = PCA(n_components=k, whiten=True, random_state=seed)
        elif hasattr(self.features, "fit_transform") and hasattr(self.features, "transform"):
            self.features_ = clone(self.features)
        else:
            raise ValueError(f"features must be None, a number of principal components or a "
                             f"scikit-learn transformer, got {self.features!r}")
        return as_data(self.features_.fit_transform(X), "features(X)", min_samples=2)

    def _check_codes(self) -> None:
        if self.codes not in ("auto", "gaussian", "atoms"):
            raise ValueError(f"codes must be 'auto', 'gaussian' or 'atoms', got {self.codes!r}")
        if self.weights not in ("mapa", "identity"):
            raise ValueError(f"weights must be 'mapa' or 'identity', got {self.weights!r}")
        for name in ("code_learning_rate", "code_scale"):
            value = getattr(self, name)
            if value is None and name == "code_learning_rate":
                continue
            if (isinstance(value, bool) or not isinstance(value, (int, float, np.floating))
                    or not math.isfinite(value) or value <= 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")

    def _codes(self) -> str:
        """``codes`` with ``"auto"`` resolved: atoms up to two latent dimensions, Gaussian
        above."""
        if self.codes != "auto":
            return self.codes
        return "atoms" if check_positive_int(self.latent_dim, "latent_dim") <= 2 else "gaussian"

    def _training_weights(self, n: int) -> sparse.csr_matrix:
        """The index posterior training uses: MAPA's weights, or the identity."""
        if self.weights == "identity":
            return sparse.identity(n, format="csr", dtype=np.float64)
        return self.mapa_.weights_

    def _mapa(self) -> MAPAPosterior:
        """MAPA's weights: ``h = bandwidth`` if given, else ``√2 σ`` for a known ``σ``, else
        chosen from the data (leave-one-out)."""
        sigma = self.sigma if self.bandwidth is None else None
        return MAPAPosterior(n_neighbors=self.n_neighbors, bandwidth=self.bandwidth, sigma=sigma)

    def _candidates(self, X, prior, seed) -> dict:
        """The initial attachments to choose from, by name."""
        weights = self.mapa_.weights_
        if not isinstance(self.init, str):  # coordinates per training point, e.g. known codes
            init = as_data(self.init, "init", n_features=prior.latent_dim)
            if init.shape[0] != X.shape[0]:
                raise ValueError(f"init has {init.shape[0]} rows but X has {X.shape[0]}")
            return {"given": transport(init, self._atoms, prior)}
        if self.init == "auto" and self._codes() == "gaussian" and prior.latent_dim > 1:
            return {"pca": initial_attachment(X, weights, self._atoms, prior, "pca", seed)}
        if self.init == "auto":
            return candidate_attachments(X, weights, self._atoms, prior, seed)
        return {self.init: initial_attachment(X, weights, self._atoms, prior, self.init, seed)}

    def _pilot(self, X, seed, monitor, candidates: dict, budget: int) -> Trainer:
        """Train each candidate ``pilot_steps`` steps; return the trainer of the highest bound,
        charged with the others' steps, passes and time."""
        trainers, bounds = {}, {}
        every = torch.arange(X.shape[0], device=self.device)
        for name, perm in candidates.items():
            self._perm = perm
            trainer = trainers[name] = self._setup(X, seed, monitor, steps=budget)
            trainer.fit(until=self.pilot_steps)
            start = time.perf_counter()
            with torch.no_grad():
                bound = trainer.objective(None, every)  # the exact mean bound: N passes
            trainer.passes += bound.passes
            trainer.train_seconds += time.perf_counter() - start
            bounds[name] = float(bound.value)
        self.pilot_bounds_ = bounds
        self.attachment_ = max(bounds, key=bounds.get)
        self.attachment_reason_ = (f"the highest MAPA bound after {self.pilot_steps} pilot steps "
                                   f"of each candidate ({', '.join(bounds)}; see pilot_bounds_)")
        best = trainers.pop(self.attachment_)
        for i, row in enumerate(best.history):  # rows logged during the pilot: all candidates'
            row["passes"] += sum(t.history[i]["passes"] for t in trainers.values())
            row["train_seconds"] += sum(t.history[i]["train_seconds"] for t in trainers.values())
        best.passes += sum(t.passes for t in trainers.values())
        best.train_seconds += sum(t.train_seconds for t in trainers.values())
        best.extra_steps = sum(t.step for t in trainers.values())
        return best

    def _make_objective(self, X, model, seed):
        perm = getattr(self, "_perm", np.arange(X.shape[0]))  # a checkpoint restores its own
        if not hasattr(self, "mapa_"):  # rebuilding from a checkpoint
            self.mapa_ = self._mapa().fit(self._representation(X, seed))
            self._atoms = stratified_atoms(model.prior, X.shape[0], random_state=seed)
        W = self._training_weights(X.shape[0])
        if self._codes() == "atoms":
            return MAPABound(model, W, X, Attachment(self._atoms, perm))
        loc = self._atoms[perm]
        if isinstance(model.prior, Uniform):  # logit-normal codes: start at the atoms' logits
            clipped = np.clip(loc, 1e-6, 1 - 1e-6)
            loc = np.log(clipped) - np.log1p(-clipped)
        rate = (3 * self.learning_rate if self.code_learning_rate is None
                else self.code_learning_rate)
        return GaussianCodesBound(model, W, X, loc, np.full_like(loc, float(self.code_scale)),
                                  code_lr_scale=rate / self.learning_rate)

    def _callbacks(self, objective) -> list:
        """The bound's diagnostics in the history; for atoms, projection and re-attachment."""
        callbacks = [LoggedDiagnostics(objective.diagnostics)]
        if isinstance(objective, MAPABound):
            callbacks.append(AttachmentUpdates(objective, self.project_every,
                                               self.reattach_every))
        return callbacks

    def _extra_state(self) -> dict:
        return {"attachment": json.dumps({"name": self.attachment_,
                                          "pilot_bounds": self.pilot_bounds_,
                                          "reason": self.attachment_reason_})}

    def _restore(self, state: dict) -> None:
        saved = json.loads(state["attachment"])
        self.attachment_, self.pilot_bounds_ = saved["name"], saved["pilot_bounds"]
        self.attachment_reason_ = saved.get("reason", "not recorded in this checkpoint")

    def posterior(self, X) -> DiscretePosterior | MixturePosterior:
        """MAPA over training indices for each row of ``X`` with the codes of those indices:
        the learned Gaussians (:class:`MixturePosterior`) or the attached atoms
        (:class:`DiscretePosterior`)."""
        check_is_fitted(self, "model_")
        X = as_data(X, "X", n_features=self.n_features_in_, owner=type(self).__name__)
        F = X if self.features_ is None else self.features_.transform(X)
        weights = self.mapa_.query(F)
        objective = self.objective_
        if isinstance(objective, GaussianCodesBound):
            return MixturePosterior(weights, objective.loc.detach().double().cpu().numpy(),
                                    objective.log_scale.detach().exp().double().cpu().numpy())
        return DiscretePosterior(weights, objective.attachment.attached().double().cpu().numpy())

    def _proposal(self, components: int = 64, defensive: float = 0.1):
        """MAPA's mixture (see :meth:`_atom_proposal` for atoms): ``q(z | x) = 0.9 Σ_j w̃_j
        N(μ_j, s_j² + r²) + 0.1 p(z)`` over the ``components`` largest MAPA weights of ``x``
        (renormalised to ``w̃``) and the Gaussian codes of those indices, each widened by ``r``,
        the median distance from a code's ``μ`` to its nearest other (so that the mixture covers
        the region between neighbouring codes); logit-normal for the uniform prior."""
        if not isinstance(self.objective_, GaussianCodesBound):
            return self._atom_proposal(components, defensive)
        posterior = self.posterior
        prior = self.model_.prior
        uniform = isinstance(prior, Uniform)
        centres = self.objective_.loc.detach().double().cpu().numpy()
        spacing = float(np.median(KDTree(centres).query(centres, k=2)[0][:, 1]))

        def draw(x, k, generator):
            q = posterior(x.numpy())
            W = q.weights.toarray()
            m = min(components, W.shape[1])
            top = np.argsort(-W, axis=1)[:, :m]
            w = torch.as_tensor(np.take_along_axis(W, top, 1))
            w = w / w.sum(1, keepdim=True)
            loc = torch.as_tensor(q.loc)[torch.as_tensor(top)]  # (n, m, d)
            scale = torch.as_tensor(q.scale)[torch.as_tensor(top)].square().add(
                spacing**2).sqrt()
            pick = torch.multinomial(w, k, replacement=True, generator=generator).T  # (k, n)
            rows = torch.arange(x.shape[0])
            u = loc[rows, pick] + scale[rows, pick] * torch.randn(
                pick.shape + (loc.shape[-1],), dtype=torch.float64, generator=generator)
            z = torch.sigmoid(u) if uniform else u
            from_prior = torch.rand(pick.shape, generator=generator) < defensive
            z_prior, _ = prior_proposal(prior)(x, k, generator)

            def log_mix(z):
                if uniform:
                    z = z.clamp(1e-12, 1 - 1e-12)
                    u, log_jac = torch.log(z) - torch.log1p(-z), -torch.log(z * (1 - z)).sum(-1)
                else:
                    u, log_jac = z, 0.0
                eps = (u[:, :, None, :] - loc[None]) / scale[None]  # (k, n, m, d)
                log_n = (-0.5 * eps**2 - torch.log(scale[None])
                         - 0.5 * math.log(2 * math.pi)).sum(-1)
                return torch.logsumexp(torch.log(w)[None] + log_n, dim=-1) + log_jac

            return defensive_mixture(z, z_prior, from_prior, log_mix, prior, defensive)

        return draw

    def _atom_proposal(self, components: int = 64, defensive: float = 0.1):
        """MAPA's mixture over atoms: ``q(z | x) = 0.9 Σ_j w̃_j N(z; z_j, s² I) + 0.1 p(z)`` over
        the ``components`` largest MAPA weights of ``x`` (renormalised to ``w̃``) and the atoms ``z_j``
        attached to them; ``s`` is the median distance from an atom to its nearest other atom."""
        codes = self.objective_.attachment.attached().double().cpu()
        prior = self.model_.prior
        s = float(np.median(KDTree(codes.numpy()).query(codes.numpy(), k=2)[0][:, 1]))
        log_norm = -codes.shape[1] * (math.log(s) + 0.5 * math.log(2 * math.pi))

        def draw(x, k, generator):
            W = self.posterior(x.numpy()).weights.toarray()
            m = min(components, W.shape[1])
            top = np.argsort(-W, axis=1)[:, :m]
            w = torch.as_tensor(np.take_along_axis(W, top, 1))
            w = w / w.sum(1, keepdim=True)
            centres = codes[torch.as_tensor(top)]  # (n, m, d)
            pick = torch.multinomial(w, k, replacement=True, generator=generator).T  # (k, n)
            rows = torch.arange(x.shape[0])
            z = centres[rows, pick] + s * torch.randn(pick.shape + (codes.shape[1],),
                                                      dtype=torch.float64, generator=generator)
            from_prior = torch.rand(pick.shape, generator=generator) < defensive
            z_prior, _ = prior_proposal(prior)(x, k, generator)

            def log_mix(z):
                sq = (z[:, :, None, :] - centres[None]).square().sum(-1)  # (k, n, m)
                return torch.logsumexp(torch.log(w)[None] - 0.5 * sq / s**2, dim=-1) + log_norm

            return defensive_mixture(z, z_prior, from_prior, log_mix, prior, defensive)

        return draw

    def bound_per_point(self, n_samples: int = 16, random_state=0) -> dict:
        """The bound ``L_i`` per training point. Atoms: exact, with ``log p̂(x_i)`` and the gap
        ``KL(W_i ‖ p̂(· | x_i))``. Gaussian codes: each code's expectation by ``n_samples``
        seeded draws (``N · n_samples`` decoder passes)."""
        check_is_fitted(self, "model_")
        if isinstance(self.objective_, GaussianCodesBound):
            generator = torch.Generator().manual_seed(self._seed_of(random_state))
            return self.objective_.per_point(n_samples=check_positive_int(n_samples,
                                                                          "n_samples"),
                                             generator=generator)
        return self.objective_.per_point()

    @staticmethod
    def _seed_of(random_state) -> int:
        return int(np.random.default_rng(random_state).integers(2**63))


class _EncoderDensity(_LatentDensity):
    def _proposal(self, defensive: float = 0.1):
        """The encoder's ``q(z | x)`` with a defensive share of the prior,
        ``0.9 q(z | x) + 0.1 p(z)`` (bounded weights where the encoder is too narrow); float64."""
        encoder, prior = self.objective_.encoder, self.model_.prior

        def draw(x, k, generator):
            loc, scale = encoder(x.to(device=self.device, dtype=self._torch_dtype()))
            loc, scale = loc.double().cpu(), scale.double().cpu()
            z, _ = encoder.rsample(loc, scale, k, generator)
            z_prior, _ = prior_proposal(prior)(x, k, generator)
            from_prior = torch.rand(z.shape[:2], generator=generator) < defensive
            return defensive_mixture(z, z_prior, from_prior,
                                     lambda z: encoder.log_prob(z, loc, scale), prior, defensive)

        return draw

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

    def __init__(self, decoder=None, encoder=None, latent_dim=1, prior="normal", sigma=None,
                 hidden=(64, 64), steps=3000, batch_size=100, learning_rate=1e-3,
                 lr_schedule="constant", log_every=100,
                 random_state=None, verbose=False, device="cpu", distributed=False,
                 dtype="float32"):
        super().__init__(decoder, latent_dim, prior, sigma, hidden, steps, batch_size,
                         learning_rate, lr_schedule, log_every, random_state, verbose, device,
                         distributed, dtype)
        self.encoder = encoder

    def _make_objective(self, X, model, seed):
        return ELBO(model, self._build_encoder(X, model))


class IWAEDensity(_EncoderDensity):
    """The IWAE baseline with ``n_samples`` importance samples per point."""

    method = "iwae"

    def __init__(self, decoder=None, encoder=None, latent_dim=1, prior="normal", sigma=None,
                 hidden=(64, 64), steps=3000, batch_size=100, learning_rate=1e-3,
                 lr_schedule="constant", log_every=100,
                 random_state=None, verbose=False, device="cpu", distributed=False, n_samples=10,
                 dtype="float32"):
        super().__init__(decoder, latent_dim, prior, sigma, hidden, steps, batch_size,
                         learning_rate, lr_schedule, log_every, random_state, verbose, device,
                         distributed, dtype)
        self.encoder = encoder
        self.n_samples = n_samples

    def _make_objective(self, X, model, seed):
        return IWAEBound(model, self._build_encoder(X, model), self.n_samples)


class LaggingVAEDensity(_EncoderDensity):
    """The lagging-encoder ("aggressive") VAE of He et al. (2019)."""

    method = "lagging"

    def __init__(self, decoder=None, encoder=None, latent_dim=1, prior="normal", sigma=None,
                 hidden=(64, 64), steps=3000, batch_size=100, learning_rate=1e-3,
                 lr_schedule="constant", log_every=100,
                 random_state=None, verbose=False, device="cpu", distributed=False, max_inner=100,
                 check_every=10, dtype="float32"):
        super().__init__(decoder, latent_dim, prior, sigma, hidden, steps, batch_size,
                         learning_rate, lr_schedule, log_every, random_state, verbose, device,
                         distributed, dtype)
        self.encoder = encoder
        self.max_inner = max_inner
        self.check_every = check_every

    def _make_objective(self, X, model, seed):
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

    def __init__(self, decoder=None, latent_dim=1, prior="normal", sigma=None, hidden=(64, 64),
                 steps=3000, batch_size=100, learning_rate=1e-3, lr_schedule="constant",
                 log_every=100, random_state=None, verbose=False, device="cpu", distributed=False,
                 n_samples=100, dtype="float32"):
        super().__init__(decoder, latent_dim, prior, sigma, hidden, steps, batch_size,
                         learning_rate, lr_schedule, log_every, random_state, verbose, device,
                         distributed, dtype)
        self.n_samples = n_samples

    def _make_objective(self, X, model, seed):
        return PriorProposalBound(model, self.n_samples)

    def posterior(self, X, random_state=None) -> DiscretePosterior:
        """The ablation's own posterior for each row of ``X``: ``n_samples`` fresh prior draws
        ``z_s`` with self-normalised weights ``∝ N(x; f_θ(z_s), σ² I)``."""
        check_is_fitted(self, "model_")
        X = as_data(X, "X", n_features=self.n_features_in_, owner=type(self).__name__)
        codes = self.model_.prior.sample(self.n_samples, random_state=random_state)
        means = torch.as_tensor(self.decode(codes))
        log_w = torch.full((self.n_samples,), -math.log(self.n_samples), dtype=torch.float64)
        log_post = mixture_log_responsibilities(torch.as_tensor(X), means, log_w, self.sigma_)
        return DiscretePosterior(log_post.exp().numpy(), codes)
