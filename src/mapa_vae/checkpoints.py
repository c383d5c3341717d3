"""Checkpoints of fitted estimators: write one, rebuild the estimator from it, resume training.

A checkpoint is one file (:func:`~mapa_vae.trainer.save_torch`, written atomically; read without
unpickling code) holding the trainer's state (:meth:`~mapa_vae.trainer.Trainer.state`: the
objective's tensors, the optimisers, step, passes, history and the RNG state) and

* ``estimator``: the class name; ``params``: the constructor's settings as JSON (a custom
  network or transformer as ``"custom"``, to be passed again; coordinates given as ``init`` as
  :data:`ARRAY_IN_STATE`, kept in ``init``);
* ``seed``: the training seed; ``X``: the training data;
* for MAPA, ``attachment``: the initial attachment, the pilots' bounds and why (JSON).

Loading rebuilds the estimator from its settings, data and seed, restores the trainer's state
and continues training up to ``steps`` (nothing to do when ``steps`` is the saved count), so a
resumed run continues exactly where the saved one stopped; or, with ``setup=False``, restores
the generative model alone, at once, for scoring and sampling.
"""
from __future__ import annotations

import json
import time

import torch
from torch import nn

from .priors import Prior
from .trainer import load_torch, save_torch
from .validation import as_data, check_positive_int

_MODULE_PARAMS = ("decoder", "encoder", "features")
#: What ``params`` holds for ``init`` given as coordinates (kept as the tensor ``init``).
ARRAY_IN_STATE = "<array kept in the checkpoint>"
#: MAPA's record of its initial attachment: key in the file → the estimator's fitted attribute.
_ATTACHMENT_RECORD = {"name": "attachment_", "pilot_bounds": "pilot_bounds_",
                      "reason": "attachment_reason_"}


def params_for_file(estimator) -> dict:
    """The estimator's settings as JSON-able values: custom modules (and a custom ``features``
    transformer) become ``"custom"``, a prior object its name, ``init`` coordinates
    :data:`ARRAY_IN_STATE`, a random state other than an int ``None`` (the seed is kept
    apart)."""
    params = estimator.get_params(deep=False)
    for name in _MODULE_PARAMS:
        if name in params and not isinstance(params[name], (int, str, type(None))):
            params[name] = "custom"
    params["hidden"] = list(params["hidden"])
    if isinstance(params["prior"], Prior):
        params["prior"] = params["prior"].name
    if "init" in params and not isinstance(params["init"], str):
        params["init"] = ARRAY_IN_STATE  # the coordinates are kept as a tensor
    if not isinstance(params["random_state"], (int, type(None))):
        params["random_state"] = None
    return params


def save(estimator, path, extra: dict | None = None) -> None:
    """Write a checkpoint of the fitted ``estimator`` to ``path``: settings (JSON), training
    data, state tensors and history, and the entries of ``extra``."""
    state = estimator.trainer_.state()
    state["estimator"] = type(estimator).__name__
    state["params"] = json.dumps(params_for_file(estimator))
    state["seed"] = estimator.trainer_.config.seed
    state["X"] = torch.as_tensor(estimator.X_fit_)
    if estimator.method == "mapa":
        state["attachment"] = json.dumps({key: getattr(estimator, attribute)
                                          for key, attribute in _ATTACHMENT_RECORD.items()})
    params = estimator.get_params()
    if "init" in params and not isinstance(params["init"], str):
        state["init"] = torch.as_tensor(as_data(params["init"], "init"))
    state.update(extra or {})
    save_torch(state, path)


def load(cls, path, decoder: nn.Module | None = None, encoder: nn.Module | None = None,
         steps: int | None = None, features=None, setup: bool = True):
    """Rebuild a fitted ``cls`` estimator from :func:`save`. Custom networks (and a custom
    ``features`` transformer) are passed again; their weights come from the file. ``steps``
    above the saved count resumes training. ``setup=False``: the generative model alone
    (:func:`_model_only`)."""
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
    if params.get("init") == ARRAY_IN_STATE:
        params["init"] = state["init"].numpy()
    saved_steps = params["steps"]
    if steps is not None:
        params["steps"] = check_positive_int(steps, "steps")
    estimator = cls(**params)
    if not setup:
        return _model_only(estimator, state)
    if (estimator.method == "mapa" and params.get("code_learning_rate") is None
            and estimator._codes() == "atoms"
            and len(state["generative_optimizer"]["param_groups"]) == 1):
        # written when the relaxed positions learned at the decoder's rate
        estimator.set_params(code_learning_rate=estimator._learning_rate())
    start = time.perf_counter()
    X = state["X"].numpy()
    trainer = estimator._setup(X, int(state["seed"]), resume=True)
    estimator.setup_seconds_ = time.perf_counter() - start
    trainer.load_state(state)
    trainer.config.steps += params["steps"] - saved_steps  # a budget minus any pilot steps
    trainer.fit()
    estimator._finish(X, trainer)
    if "attachment" in state:
        saved = json.loads(state["attachment"])
        saved.setdefault("reason", "not recorded in this checkpoint")
        for key, attribute in _ATTACHMENT_RECORD.items():
            setattr(estimator, attribute, saved[key])
    return estimator


def _model_only(estimator, state: dict):
    """``estimator`` with its fitted generative model (``model_``), features count and history
    from a checkpoint's state, without rebuilding the method's objective from the data."""
    X = state["X"].numpy()
    model = estimator._build_model(X, sigma_start=1.0)  # σ itself comes from the state
    prefix = "model."
    model.load_state_dict({name[len(prefix):]: value for name, value in state["objective"].items()
                           if name.startswith(prefix)})
    estimator.model_ = model
    estimator.n_features_in_ = X.shape[1]
    estimator.history_ = json.loads(state["history"])
    estimator.total_passes_ = int(state["passes"])
    estimator.train_seconds_ = float(state["train_seconds"])
    estimator.optimizer_steps_ = int(state["step"]) + int(state["extra_steps"])
    estimator.passes_per_step_ = estimator.total_passes_ / max(estimator.optimizer_steps_, 1)
    return estimator
