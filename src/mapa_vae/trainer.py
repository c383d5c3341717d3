"""One training loop for every objective: Adam, minibatches, pass counting, history, checkpoints.

Each step: the learning rate of the schedule is set, every step callback's ``before_step``
(extra work, e.g. the lagging encoder's inner loop, with the same learning rate), a minibatch
estimate of the bound, one Adam step on the generative parameters (and on the encoder unless a
callback says otherwise), then every callback's ``after_step`` (e.g. MAPA's projection or
re-attachment) (:mod:`mapa_vae.schedules`). Every network pass these spend is charged to the
loop's one :class:`PassCounter`.

Randomness comes from PyTorch's generator, seeded at the start and saved in checkpoints inside a
forked RNG state, so a run is reproducible from its seed and a resumed run continues exactly.

Given a :class:`~mapa_vae.distributed.Shard`, the trainer is one rank of a data-parallel run:
each rank computes the bound on its share of the global minibatch and gradients are summed over
ranks before every optimiser step (see :mod:`mapa_vae.distributed`).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .devices import resolve_device
from .distributed import Shard, noise_rows
from .files import atomic_write
from .objectives import Objective
from .schedules import StepContext

CHECKPOINT_FORMAT = "mapa-vae-checkpoint/1"
#: What a MAPA bound rebuilds from the data, which checkpoints no longer keep.
_REBUILT = ("mass", "xbar", "spread")
LR_SCHEDULES = ("constant", "cosine")


def gradients_finite(grads: list[torch.Tensor]) -> bool:
    """Whether every entry of every tensor in ``grads`` is finite. Fast path: one sum per
    tensor and one test (a NaN or an infinity makes its tensor's sum non-finite); only where a
    sum is not finite, which a sum of finite entries can also be by overflowing, is each tensor
    tested entry by entry. Exact either way, at a fraction of the entrywise test's cost."""
    if not grads:
        return True
    if bool(torch.isfinite(torch.stack([g.sum() for g in grads])).all()):
        return True
    return all(bool(torch.isfinite(g).all()) for g in grads)


class TrainingDiverged(RuntimeError):
    """The objective or its gradient became NaN or infinite."""


@dataclass
class TrainingSettings:
    """The optimisation settings every method shares (Adam on minibatches), with the defaults of
    the estimators, of a run, of the bench and of the CLI. ``learning_rate``: the peak rate;
    ``None`` is the method's protocol rate (:mod:`mapa_vae.methods`). ``lr_schedule``:
    "constant", or "cosine" (annealed to zero over ``steps``). ``log_every``: steps between rows
    of the history."""

    steps: int = 3000
    batch_size: int = 100
    learning_rate: float | None = None
    lr_schedule: str = "cosine"
    log_every: int = 100

    @classmethod
    def take(cls, settings: dict) -> "TrainingSettings":
        """The training settings among flat ``settings``, removed from that dictionary."""
        return cls(**{f.name: settings.pop(f.name) for f in fields(cls) if f.name in settings})

    def validate(self):
        for name in ("steps", "batch_size", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        rate = self.learning_rate
        if rate is not None and not (isinstance(rate, (int, float)) and not isinstance(rate, bool)
                                     and math.isfinite(rate) and rate > 0):
            raise ValueError(f"learning_rate must be a positive number, got {rate!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; choose one of "
                             f"{list(LR_SCHEDULES)}")
        return self


@dataclass
class TrainingConfig(TrainingSettings):
    """What the trainer runs: the settings, with the learning rate given, and the seed of its
    random stream."""

    seed: int = 0

    def validate(self) -> "TrainingConfig":
        super().validate()
        if self.learning_rate is None:
            raise ValueError("the trainer needs a learning_rate (None is resolved by the method)")
        return self

    def learning_rate_at(self, step: int) -> float:
        """The learning rate of step ``step`` (0-based): constant, or cosine-annealed from
        ``learning_rate`` towards zero, ``η_t = η (1 + cos(π t / T)) / 2``."""
        if self.lr_schedule == "cosine":
            return self.learning_rate * 0.5 * (1.0 + math.cos(math.pi * step / self.steps))
        return self.learning_rate


class PassCounter:
    """The network passes a training loop spends, its only count. Minibatch work is charged by
    each data-parallel rank for its share of rows and summed over ranks once per step; work
    every rank repeats (``repeated``) is counted once."""

    def __init__(self, shard: Shard | None = None):
        self.shard = shard
        self.total = 0
        self._shares = 0
        self._repeated = 0

    def charge(self, passes: int, repeated: bool = False) -> None:
        """Spend ``passes`` network passes in the current step."""
        if repeated:
            self._repeated += int(passes)
        else:
            self._shares += int(passes)

    def add(self, passes: int) -> None:
        """Spend ``passes`` outside any step (e.g. a pilot run's exact bound, or other pilot
        runs of the same fit), counted once."""
        self.total += int(passes)

    def end_step(self) -> int:
        """Close the step: add its passes to the total and return them."""
        shares = self._shares
        if self.shard is not None:
            shares = int(self.shard.sum(torch.tensor([shares], dtype=torch.float64)).item())
        step = shares + self._repeated
        self.total += step
        self._shares = self._repeated = 0
        return step


class Trainer:
    """Runs ``config.steps`` optimisation steps of ``objective`` on data ``X``.

    ``history`` holds one row per ``log_every`` steps: step, mean bound over those steps, passes
    in the last step, cumulative passes, training wall time, the Gaussian likelihood's σ, and the
    step callbacks' numbers (for MAPA: the full bound, its gap to ``log p̂``, attachment changes).
    ``monitor(step, model) -> dict``, if given, adds its numbers to each row (e.g. a test KL); like
    the diagnostics, its time is not training time and its network passes are not counted.
    ``shard``: this process's rank in a data-parallel run (``None``: one process); ``dtype``: the
    floating-point type of the data as the objective sees it (the objective's own).
    """

    def __init__(self, objective: Objective, X: np.ndarray, config: TrainingConfig,
                 progress: bool = False, device: str | torch.device = "cpu", monitor=None,
                 shard: Shard | None = None, dtype: torch.dtype = torch.float32,
                 callbacks=()):
        self.objective = objective
        self.callbacks = list(callbacks)
        self.counter = PassCounter(shard)
        self.monitor = monitor
        self.config = config.validate()
        self.device = resolve_device(device)
        self.shard = shard
        self.X = torch.tensor(X, dtype=dtype, device=self.device)
        self.n = self.X.shape[0]
        self.batch_size = min(config.batch_size, self.n)
        self.steps_per_epoch = max(1, self.n // self.batch_size)
        self.progress = progress and (shard is None or shard.rank == 0)
        if shard is not None:
            shard.rows(self.batch_size)  # a clear error now if the batch cannot be shared
        self.generative_optimizer = torch.optim.Adam(objective.parameter_groups(),
                                                     lr=config.learning_rate)
        inference = objective.inference_parameters()
        self.inference_optimizer = (torch.optim.Adam(inference, lr=config.learning_rate)
                                    if inference else None)
        self.step = 0
        self.extra_steps = 0  # optimiser steps spent elsewhere on this run (e.g. pilot runs)
        self.train_seconds = 0.0
        self.history: list[dict] = []
        self._order = torch.empty(0, dtype=torch.long)
        self._cursor = 0
        self._running = 0.0
        self._rng_state = None
        self._cuda_rng_state = None
        self._seeded = False

    @property
    def passes(self) -> int:
        """Network passes spent so far (:attr:`counter`'s total)."""
        return self.counter.total

    # ---------------------------------------------------------------------------------------
    def next_batch(self):
        """The next minibatch ``(x, idx)``: indices drawn without replacement within an epoch
        (in a data-parallel run, this rank's share of the global minibatch)."""
        if self._cursor + self.batch_size > self._order.numel():
            self._order = torch.randperm(self.n)
            self._cursor = 0
        idx = self._order[self._cursor:self._cursor + self.batch_size]
        if self.shard is not None:
            idx = idx[self.shard.rows(self.batch_size)]
        self._cursor += self.batch_size
        idx = idx.to(self.device)
        return self.X[idx], idx

    def backward(self, estimate, rows: int, parameters) -> float:
        """Backpropagate ``−estimate.value`` (a mean over ``rows`` minibatch rows) into the
        gradients of ``parameters`` and return the bound's value over the whole minibatch. In a
        data-parallel run the value is weighted by this rank's share of rows and values and
        gradients are summed over ranks, so every rank gets one process's numbers."""
        value = estimate.value
        if self.shard is None:
            (-value).backward()
            return value.item()
        weight = rows / self.batch_size
        total = self.shard.sum(value.detach().double().reshape(1) * weight).item()
        if math.isfinite(total):
            (-value * weight).backward()
            self.shard.sum_gradients(parameters)
        return total

    def _noise_rows(self):
        """Within a step, minibatch noise is this rank's share of one process's noise."""
        if self.shard is None:
            return noise_rows(None, self.batch_size)
        return noise_rows(self.shard.rows(self.batch_size), self.batch_size)

    def fit(self, until: int | None = None) -> list[dict]:
        """Train up to step ``until`` (default ``config.steps``; the learning-rate schedule always
        spans ``config.steps``), continuing from where the last call or a checkpoint stopped."""
        cuda = self.device.type == "cuda"
        with torch.random.fork_rng(devices=[self.device] if cuda else []):
            if self._rng_state is None:
                torch.manual_seed(self.config.seed)
            else:
                torch.set_rng_state(self._rng_state)
                if cuda and self._cuda_rng_state is not None:
                    torch.cuda.set_rng_state(self._cuda_rng_state, self.device)
            self._loop(self.config.steps if until is None else min(until, self.config.steps))
            self._rng_state = torch.get_rng_state()
            if cuda:  # encoder noise is drawn on the device, from its own generator
                self._cuda_rng_state = torch.cuda.get_rng_state(self.device)
        return self.history

    def _loop(self, until: int) -> None:
        objective = self.objective
        bar = tqdm(total=self.config.steps, initial=self.step, disable=not self.progress,
                   desc=f"{objective.name}", unit="step", dynamic_ncols=True, leave=False)
        context = StepContext(step=self.step, steps_per_epoch=self.steps_per_epoch, X=self.X,
                              draw=self.next_batch, update_inference=self._update_inference,
                              charge=self.counter.charge)
        try:
            while self.step < until:
                start = time.perf_counter()
                self._set_learning_rate()
                context.step = self.step
                with self._noise_rows():
                    for callback in self.callbacks:
                        callback.before_step(context)
                    x, idx = self.next_batch()
                    estimate = objective(x, idx)
                self.generative_optimizer.zero_grad(set_to_none=True)
                if self.inference_optimizer is not None:
                    self.inference_optimizer.zero_grad(set_to_none=True)
                value = self.backward(estimate, idx.shape[0], objective.parameters())
                if not math.isfinite(value):
                    raise TrainingDiverged(
                        f"the {objective.name} objective became {value} at step {self.step + 1}; "
                        f"try a smaller learning rate or check the data scale")
                self._check_gradients()
                self.generative_optimizer.step()
                if self.inference_optimizer is not None and all(
                        callback.trains_inference() for callback in self.callbacks):
                    self.inference_optimizer.step()
                self.counter.charge(estimate.passes, repeated=estimate.replicated)
                self.step += 1
                context.step = self.step
                for callback in self.callbacks:
                    callback.after_step(context)
                step_passes = self.counter.end_step()
                self.train_seconds += time.perf_counter() - start
                self._running += value
                if self.step % self.config.log_every == 0 or self.step == self.config.steps:
                    self._log(step_passes)
                    bar.set_postfix(bound=f"{self.history[-1]['objective']:.4g}")
                bar.update(1)
        finally:
            bar.close()

    def _update_inference(self, estimate, rows: int) -> float:
        """One optimiser step of the encoder alone on ``−estimate``; the minibatch bound."""
        self.inference_optimizer.zero_grad(set_to_none=True)
        value = self.backward(estimate, rows, self.objective.inference_parameters())
        self.inference_optimizer.step()
        return value

    def _set_learning_rate(self) -> None:
        lr = self.config.learning_rate_at(self.step)
        for optimizer in (self.generative_optimizer, self.inference_optimizer):
            if optimizer is not None:
                for group in optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)

    def _check_gradients(self) -> None:
        grads = [p.grad for group in self.generative_optimizer.param_groups
                 for p in group["params"] if p.grad is not None]
        if not gradients_finite(grads):
            raise TrainingDiverged(
                f"a gradient of the {self.objective.name} objective became non-finite at "
                f"step {self.step + 1}; try a smaller learning rate")

    def _log(self, step_passes: int) -> None:
        since = self.step - (self.history[-1]["step"] if self.history else 0)
        row = {"step": self.step, "objective": self._running / max(since, 1),
               "passes_step": step_passes, "passes": self.passes,
               "train_seconds": self.train_seconds, **self.objective.model.likelihood.history()}
        for callback in self.callbacks:
            row.update(callback.history())
        if self.monitor is not None:
            with torch.no_grad():
                row.update(self.monitor(self.step, self.objective.model))
        self.history.append(row)
        self._running = 0.0

    # ---------------------------------------------------------------------------------------
    def state(self) -> dict:
        """Everything needed to resume, as tensors, numbers and strings (no pickled code)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "training_config": json.dumps(asdict(self.config)),
            "objective": self.objective.state_dict(),
            "generative_optimizer": self.generative_optimizer.state_dict(),
            "inference_optimizer": (self.inference_optimizer.state_dict()
                                    if self.inference_optimizer is not None else {}),
            "step": self.step, "extra_steps": self.extra_steps, "passes": self.passes,
            "train_seconds": self.train_seconds, "running": self._running,
            "history": json.dumps(self.history),
            "rng": self._rng_state if self._rng_state is not None else torch.get_rng_state(),
            "order": self._order, "cursor": self._cursor,
            **({"cuda_rng": self._cuda_rng_state} if self._cuda_rng_state is not None else {}),
        }

    def load_state(self, state: dict) -> None:
        """Restore from :meth:`state`; the next :meth:`fit` continues where it stopped."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a mapa-vae checkpoint (format {state.get('format')!r})")
        saved = {name: value for name, value in state["objective"].items()
                 if name not in _REBUILT}  # older checkpoints kept the bounds' targets too
        self.objective.load_state_dict(saved)
        self.generative_optimizer.load_state_dict(state["generative_optimizer"])
        if self.inference_optimizer is not None:
            self.inference_optimizer.load_state_dict(state["inference_optimizer"])
        self.step, self.counter.total = int(state["step"]), int(state["passes"])
        self.extra_steps = int(state["extra_steps"])
        self.config = TrainingConfig(**json.loads(state["training_config"])).validate()
        self.train_seconds = float(state["train_seconds"])
        self._running = float(state.get("running", 0.0))  # the bound summed since the last row
        self.history = json.loads(state["history"])
        self._rng_state = state["rng"]
        self._cuda_rng_state = state.get("cuda_rng")
        self._order, self._cursor = state["order"], int(state["cursor"])


def save_torch(obj, path) -> Path:
    """``torch.save`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_torch(path) -> dict:
    """Load a checkpoint written by :func:`save_torch` without unpickling arbitrary code."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    return torch.load(path, map_location="cpu", weights_only=True)
