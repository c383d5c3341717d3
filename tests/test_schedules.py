"""Step callbacks and the one pass counter of the training loop."""
import numpy as np
import pytest
import torch

from mapa_vae import MAPAPosterior, datasets
from mapa_vae.atoms import Attachment, stratified_atoms
from mapa_vae.encoders import AmortizedPosterior
from mapa_vae.likelihood import GaussianLikelihood
from mapa_vae.model import GenerativeModel
from mapa_vae.networks import mlp
from mapa_vae.objectives import LaggingELBO, MAPABound
from mapa_vae.priors import StandardNormal
from mapa_vae.schedules import AggressiveEncoder, AttachmentUpdates, LoggedDiagnostics
from mapa_vae.trainer import PassCounter, Trainer, TrainingConfig


class _TwoRanks:
    """A stand-in for a shard of two ranks doing the same share of work: sums double."""

    def sum(self, tensor):
        return 2 * tensor


def test_minibatch_shares_are_summed_over_ranks_and_repeated_work_counted_once():
    counter = PassCounter(_TwoRanks())
    counter.charge(50)
    counter.charge(7)
    counter.charge(1000, repeated=True)
    assert counter.end_step() == 2 * 57 + 1000 and counter.total == 1114
    assert counter.end_step() == 0 and counter.total == 1114  # a new step starts empty
    single = PassCounter()
    single.charge(50)
    single.charge(3, repeated=True)
    assert single.end_step() == 53


def _circle(n=60):
    X, _ = datasets.get("circle").sample(n, seed=0)
    torch.manual_seed(0)
    return X, GenerativeModel(mlp(1, 2, (8,)), StandardNormal(1), GaussianLikelihood(0.2))


def test_reattachment_is_charged_one_pass_per_atom_at_its_steps():
    X, model = _circle()
    n, batch, steps, every = X.shape[0], 20, 12, 4
    objective = MAPABound(model, MAPAPosterior(sigma=0.2).fit(X).weights_, X,
                          Attachment(stratified_atoms(model.prior, n), np.arange(n)))
    updates = AttachmentUpdates(objective, project_every=0, reattach_every=every)
    config = TrainingConfig(steps=steps, batch_size=batch, learning_rate=1e-3, log_every=1)
    trainer = Trainer(objective, X, config, callbacks=[updates])
    trainer.fit()
    per_step = [row["passes_step"] for row in trainer.history]
    assert per_step == [batch + (n if (i + 1) % every == 0 else 0) for i in range(steps)]
    assert trainer.passes == steps * batch + (steps // every) * n
    assert all("attachment_changed" in row for row in trainer.history)


def test_logged_diagnostics_join_every_logged_row_and_spend_no_passes():
    X, model = _circle()
    n = X.shape[0]
    objective = MAPABound(model, MAPAPosterior(sigma=0.2).fit(X).weights_, X,
                          Attachment(stratified_atoms(model.prior, n), np.arange(n)))
    config = TrainingConfig(steps=6, batch_size=30, learning_rate=1e-3, log_every=3)
    trainer = Trainer(objective, X, config, callbacks=[LoggedDiagnostics(objective.diagnostics)])
    trainer.fit()
    assert [row["step"] for row in trainer.history] == [3, 6]
    assert all(row["gap"] >= -1e-9 for row in trainer.history)  # a KL divergence
    assert trainer.passes == 6 * 30


def test_the_aggressive_encoder_trains_the_encoder_alone_and_charges_its_inner_steps():
    X, model = _circle()
    encoder = AmortizedPosterior(mlp(2, 2, (8,)), model.prior)
    objective = LaggingELBO(model, encoder, max_inner=4, check_every=2)
    schedule = AggressiveEncoder(objective)
    assert not schedule.trains_inference()  # aggressive at the start
    config = TrainingConfig(steps=2, batch_size=20, learning_rate=1e-3, log_every=1)
    trainer = Trainer(objective, X, config, callbacks=[schedule])
    decoder_before = [p.detach().clone() for p in model.decoder.parameters()]
    trainer.fit(until=1)
    inner = trainer.history[0]["inner_steps"]
    assert 2 <= inner <= 4
    # the inner steps' ELBO (2 passes a row) and the main step's; the first epoch has not ended
    assert trainer.history[0]["passes_step"] == (inner + 1) * 2 * 20
    # the main step updated the decoder after the inner loop
    assert any(not torch.equal(a, b) for a, b in zip(decoder_before, model.decoder.parameters()))
    objective.aggressive = False
    assert schedule.trains_inference()


@pytest.mark.parametrize("callbacks", [[], [LoggedDiagnostics(dict)]])
def test_a_loop_without_schedules_spends_the_bound_passes_only(callbacks):
    X, model = _circle()
    encoder = AmortizedPosterior(mlp(2, 2, (8,)), model.prior)
    from mapa_vae.objectives import ELBO

    trainer = Trainer(ELBO(model, encoder), X,
                      TrainingConfig(steps=5, batch_size=20, learning_rate=1e-3, log_every=5),
                      callbacks=callbacks)
    trainer.fit()
    assert trainer.passes == 5 * 2 * 20
