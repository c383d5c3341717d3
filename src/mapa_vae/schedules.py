"""Step callbacks: the work a method does around its training steps, beside its bound.

An objective answers one question, a minibatch estimate of its bound (:mod:`mapa_vae.objectives`).
What a method does between those estimates is a :class:`StepCallback`, called by the training
loop before and after every step with a :class:`StepContext`: the narrow view of the loop it
may use (the step count, the next minibatch, an update of the encoder alone, the pass counter).
Every network pass a callback spends is charged to that counter, the loop's only one.

* :class:`AttachmentUpdates` (MAPA over atoms): every ``project_every`` steps the relaxed
  positions are projected back onto the atoms; every ``reattach_every`` steps the attachment is
  solved exactly against the decoded atoms (``N`` decoder passes, work every data-parallel rank
  repeats).
* :class:`AggressiveEncoder` (the lagging-encoder VAE, He et al. 2019): while aggressive, before
  each model step the encoder alone is updated on fresh minibatches until its loss stops
  improving; once per epoch the mutual information ``I_q(x; z)`` decides whether to stay so.
* :class:`CodeTying` (MAPA's Gaussian codes): from a given step on, each drawn code's mean is
  pulled toward its neighbours' mean code (:class:`~mapa_vae.objectives.GaussianCodesBound`);
  no network passes. :class:`CodeSmoothing` and :class:`CodeFreezing` switch the codes to
  smoother targets and fix them, from given steps on.
* :class:`WidthScaledCodeSteps` (MAPA's Gaussian codes): each step's change of the codes' means
  is multiplied by the codes' widths; no network passes.
* :class:`LoggedDiagnostics`: the objective's evaluation-only numbers (its full bound, MAPA's gap)
  at each logged step; not training work, so not charged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class StepContext:
    """What a callback may see and do. ``step``: steps finished (in ``after_step``, including
    this one); ``steps_per_epoch``: minibatches per pass over the data; ``X``: the training data
    as the objective sees them; ``draw()``: the next minibatch ``(x, idx)``;
    ``update_inference(estimate, rows)``: one optimiser step of the encoder alone on
    ``−estimate`` (over ``rows`` minibatch rows), returning the minibatch bound;
    ``charge(passes, repeated)``: spend network passes (``repeated``: work every data-parallel
    rank repeats, counted once; otherwise this rank's share of minibatch work)."""

    step: int
    steps_per_epoch: int
    X: torch.Tensor
    draw: Callable
    update_inference: Callable
    charge: Callable


class StepCallback:
    """Work around each training step; the defaults do nothing."""

    def before_step(self, context: StepContext) -> None:
        """Before the step's minibatch estimate (the learning rate is already set)."""

    def after_step(self, context: StepContext) -> None:
        """After the step's optimiser updates."""

    def trains_inference(self) -> bool:
        """Whether the step's update includes the encoder."""
        return True

    def history(self) -> dict:
        """Numbers for the history row of a logged step."""
        return {}


class AttachmentUpdates(StepCallback):
    """MAPA's projection and exact re-attachment of the atoms (``0``: never)."""

    def __init__(self, objective, project_every: int = 0, reattach_every: int = 0):
        self.objective = objective
        self.project_every = int(project_every)
        self.reattach_every = int(reattach_every)
        self.changed_last = 0

    def after_step(self, context: StepContext) -> None:
        attachment = self.objective.attachment
        if self.project_every and context.step % self.project_every == 0:
            self.changed_last = attachment.project()
        if self.reattach_every and context.step % self.reattach_every == 0:
            self.changed_last = attachment.reattach(self.objective.reattachment_cost())
            context.charge(attachment.atoms.shape[0], repeated=True)

    def history(self) -> dict:
        return {"attachment_changed": self.changed_last}


class AggressiveEncoder(StepCallback):
    """He et al. (2019)'s schedule for a :class:`~mapa_vae.objectives.LaggingELBO`, whose state
    (aggressive or not, the best mutual information) it updates."""

    def __init__(self, objective):
        self.objective = objective

    def before_step(self, context: StepContext) -> None:
        objective = self.objective
        if not objective.aggressive:
            return
        previous, running = math.inf, 0.0
        objective.inner_steps_last = 0
        for inner in range(1, objective.max_inner + 1):
            x, idx = context.draw()
            estimate = objective(x, idx)
            running -= context.update_inference(estimate, idx.shape[0])
            context.charge(estimate.passes)
            objective.inner_steps_last = inner
            if inner % objective.check_every == 0:
                if running > previous:
                    break
                previous, running = running, 0.0
        objective.model.zero_grad(set_to_none=True)

    def trains_inference(self) -> bool:
        return not self.objective.aggressive

    def after_step(self, context: StepContext) -> None:
        objective = self.objective
        if not objective.aggressive or context.step % context.steps_per_epoch != 0:
            return
        x = context.X[: objective.mi_points]
        mi = objective.mutual_information(x)
        objective.last_mi = mi
        if mi <= objective.best_mi:
            objective.aggressive = False
        objective.best_mi = max(objective.best_mi, mi)
        context.charge(x.shape[0], repeated=True)

    def history(self) -> dict:
        objective = self.objective
        return {"aggressive": int(objective.aggressive),
                "inner_steps": objective.inner_steps_last,
                "mutual_information": objective.last_mi}


class LoggedDiagnostics(StepCallback):
    """``diagnostics()`` (an evaluation of the objective, not training work) in every logged
    row."""

    def __init__(self, diagnostics: Callable[[], dict]):
        self.diagnostics = diagnostics

    def history(self) -> dict:
        return self.diagnostics()


class CodeTying(StepCallback):
    """Sets the objective's ``tie_strength`` to ``strength`` from step ``start`` on (0 before):
    the codes train free at first and tied in the rest, where per-index codes over-fit.
    Follows the step count, so a resumed run ties from the same step."""

    def __init__(self, objective, strength: float, start: int):
        self.objective, self.strength, self.start = objective, float(strength), int(start)

    def before_step(self, context: StepContext) -> None:
        self.objective.tie_strength = self.strength if context.step >= self.start else 0.0


class CodeSmoothing(StepCallback):
    """From step ``start`` on, the Gaussian codes learn from the smoother targets of the
    objective's ``code_weights`` (``smooth_codes``), the decoder from the bound's own. Follows
    the step count, so a resumed run switches at the same step."""

    def __init__(self, objective, start: int):
        self.objective, self.start = objective, int(start)

    def before_step(self, context: StepContext) -> None:
        self.objective.smooth_codes = context.step >= self.start


class WidthScaledCodeSteps(StepCallback):
    """Each step's change of the Gaussian codes' means multiplied by the codes' widths
    (:meth:`~mapa_vae.objectives.GaussianCodesBound.steps_in_widths`), while the codes learn."""

    def __init__(self, objective):
        self.objective, self.previous = objective, None

    def before_step(self, context: StepContext) -> None:
        loc = self.objective.loc
        self.previous = loc.detach().clone() if loc.requires_grad else None

    def after_step(self, context: StepContext) -> None:
        if self.previous is not None:
            self.objective.steps_in_widths(self.previous)
            self.previous = None


class CodeFreezing(StepCallback):
    """From step ``start`` on, the Gaussian codes (``loc``, ``log_scale``) stay where they are:
    no gradient reaches them, so the optimiser leaves them, and the decoder and ``σ`` alone
    train on. Follows the step count, so a resumed run freezes them at the same step."""

    def __init__(self, objective, start: int):
        self.objective, self.start = objective, int(start)

    def before_step(self, context: StepContext) -> None:
        if context.step >= self.start and self.objective.loc.requires_grad:
            for code in (self.objective.loc, self.objective.log_scale):
                code.requires_grad_(False)
                code.grad = None
