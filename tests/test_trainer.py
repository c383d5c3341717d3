"""The training loop on its own: schedule, minibatches, pass counting, history, divergence,
checkpoints and exact resume, with a toy objective whose values and passes are known."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from mapa_vae.likelihood import GaussianLikelihood
from mapa_vae.model import GenerativeModel
from mapa_vae.objectives import BoundEstimate, Objective
from mapa_vae.priors import StandardNormal
from mapa_vae.trainer import (Trainer, TrainingConfig, TrainingDiverged, load_torch, save_torch)

N, D = 12, 2


class Toy(Objective):
    """``−mean_i ‖x_i + 0.1 ε_i − b‖²`` for the decoder's bias ``b`` and fresh noise ``ε``
    (drawn from the trainer's generator), costing ``3B + 1`` passes; records what it sees.
    ``nan_at``: from that call on (1-based) the value is NaN; ``bad_gradient``: the value is
    finite but its gradient is infinite (``√(b − b)`` at 0)."""

    name = "toy"

    def __init__(self, nan_at=None, bad_gradient=False):
        torch.manual_seed(0)
        super().__init__(GenerativeModel(nn.Linear(1, D), StandardNormal(1),
                                         GaussianLikelihood(0.5)))
        self.nan_at, self.bad_gradient = nan_at, bad_gradient
        self.seen, self.values = [], []

    def forward(self, x, idx):
        self.seen.append(idx.clone())
        bias = self.model.decoder.bias
        value = -(x + 0.1 * torch.randn(x.shape) - bias).square().sum(-1).mean()
        if self.nan_at is not None and len(self.seen) >= self.nan_at:
            value = value * math.nan
        if self.bad_gradient:
            value = value + torch.sqrt(bias - bias.detach()).sum()
        self.values.append(value.item())
        return BoundEstimate(value, passes=3 * x.shape[0] + 1)


def _data():
    return np.random.default_rng(0).normal(size=(N, D))


def _trainer(objective=None, **settings):
    config = dict(steps=10, batch_size=4, learning_rate=0.05, lr_schedule="cosine", log_every=4,
                  seed=3)
    config.update(settings)
    return Trainer(objective or Toy(), _data(), TrainingConfig(**config))


@pytest.mark.parametrize("steps", [10, 3000])
def test_cosine_schedule_has_its_closed_form_at_zero_half_and_end(steps):
    config = TrainingConfig(steps=steps, learning_rate=0.03, lr_schedule="cosine")
    assert config.learning_rate_at(0) == 0.03
    assert config.learning_rate_at(steps // 2) == 0.015  # both even
    assert config.learning_rate_at(steps) == 0.0
    rates = [config.learning_rate_at(t) for t in range(steps + 1)]
    assert all(a > b for a, b in zip(rates, rates[1:]))  # strictly decreasing
    t = steps // 3
    assert rates[t] == 0.03 * 0.5 * (1 + math.cos(math.pi * t / steps))
    constant = TrainingConfig(steps=steps, learning_rate=0.03, lr_schedule="constant")
    assert {constant.learning_rate_at(t) for t in range(steps + 1)} == {0.03}


def test_each_step_runs_at_the_rate_of_its_schedule():
    trainer = _trainer(lr_schedule="cosine")
    for until in (1, 5, 10):
        trainer.fit(until=until)
        assert trainer.step == until
        # the rate set for the last step taken, 0-based step until − 1
        assert trainer.generative_optimizer.param_groups[0]["lr"] == \
            trainer.config.learning_rate_at(until - 1)


def test_every_epoch_visits_every_row_once():
    objective = Toy()
    _trainer(objective, steps=9, batch_size=4).fit()
    assert all(idx.numel() == 4 for idx in objective.seen)
    for epoch in range(3):  # N = 12 rows, 4 per step: 3 steps an epoch
        rows = torch.cat(objective.seen[3 * epoch:3 * epoch + 3])
        assert sorted(rows.tolist()) == list(range(N))


def test_a_batch_larger_than_the_data_is_the_whole_data():
    objective = Toy()
    trainer = _trainer(objective, steps=2, batch_size=100, log_every=1)
    trainer.fit()
    assert trainer.batch_size == N
    assert [h["passes_step"] for h in trainer.history] == [3 * N + 1] * 2


def test_passes_and_history_rows_at_log_every():
    objective = Toy()
    calls = []

    def monitor(step, model):
        calls.append(step)
        return {"monitored": step}

    config = TrainingConfig(steps=10, batch_size=4, learning_rate=0.05, log_every=4)
    trainer = Trainer(objective, _data(), config, monitor=monitor)
    history = trainer.fit()
    assert [row["step"] for row in history] == [4, 8, 10] == calls
    per_step = 3 * 4 + 1
    assert [row["passes_step"] for row in history] == [per_step] * 3
    assert [row["passes"] for row in history] == [4 * per_step, 8 * per_step, 10 * per_step]
    assert trainer.passes == 10 * per_step  # the monitor's work is not counted
    values = objective.values
    assert [row["objective"] for row in history] == [sum(values[0:4]) / 4, sum(values[4:8]) / 4,
                                                    sum(values[8:10]) / 2]
    assert [row["monitored"] for row in history] == [4, 8, 10]
    assert [row["sigma"] for row in history] == [pytest.approx(0.5, rel=1e-6)] * 3  # float32
    seconds = [row["train_seconds"] for row in history]
    assert 0 <= seconds[0] <= seconds[1] <= seconds[2] == trainer.train_seconds


def test_the_same_seed_gives_the_same_run_and_another_seed_another():
    runs = []
    for seed in (3, 3, 4):
        objective = Toy()
        _trainer(objective, seed=seed).fit()
        runs.append((torch.cat(objective.seen), objective.model.decoder.bias.detach().clone()))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][0], runs[2][0])
    assert not torch.equal(runs[0][1], runs[2][1])


def test_training_leaves_the_global_random_stream_alone():
    trainer = _trainer()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    trainer.fit()
    assert torch.equal(torch.rand(3), expected)


def _interrupted_and_whole(tmp_path, stop):
    """A run stopped after ``stop`` of 10 steps, checkpointed to a file and resumed in a fresh
    trainer, beside the same run uninterrupted: ``(first part, resumed, whole)`` as
    ``(objective, trainer)`` pairs."""
    whole = Toy()
    uninterrupted = _trainer(whole)
    uninterrupted.fit()
    first = Toy()
    trainer = _trainer(first)
    trainer.fit(until=stop)
    path = save_torch(trainer.state(), tmp_path / "state.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]
    second = Toy()
    resumed = _trainer(second, steps=1, log_every=1)  # settings come from the checkpoint
    resumed.load_state(load_torch(path))
    assert (resumed.step, resumed.config.steps, resumed.config.log_every) == (stop, 10, 4)
    resumed.fit()
    return (first, trainer), (second, resumed), (whole, uninterrupted)


def _without_times(history):
    return [{k: v for k, v in row.items() if k != "train_seconds"} for row in history]


@pytest.mark.parametrize("stop", [4, 7])  # inside an epoch (12 rows, 4 a step); 4 is a log step
def test_a_resumed_run_continues_bit_identically(tmp_path, stop):
    (first, _), (second, resumed), (whole, uninterrupted) = _interrupted_and_whole(tmp_path, stop)
    assert torch.equal(torch.cat(first.seen + second.seen), torch.cat(whole.seen))
    assert first.values + second.values == whole.values
    for a, b in zip(whole.parameters(), second.parameters()):
        assert torch.equal(a, b)
    assert resumed.passes == uninterrupted.passes == 10 * (3 * 4 + 1)
    rows = stop // 4  # the rows logged before the stop come back from the file
    assert _without_times(resumed.history[:rows]) == _without_times(uninterrupted.history[:rows])


@pytest.mark.parametrize("stop", [4, 7])
def test_a_resumed_run_logs_the_same_history(tmp_path, stop):
    _, (_, resumed), (_, uninterrupted) = _interrupted_and_whole(tmp_path, stop)
    assert _without_times(resumed.history) == _without_times(uninterrupted.history)


def test_fit_never_goes_past_the_configured_steps():
    trainer = _trainer()
    trainer.fit(until=50)
    assert trainer.step == 10
    trainer.fit()
    assert trainer.step == 10 and len(trainer.history) == 3


def test_a_checkpoint_of_something_else_is_refused(tmp_path):
    trainer = _trainer()
    with pytest.raises(ValueError, match=r"not a mapa-vae checkpoint \(format 'other/1'\)"):
        trainer.load_state({"format": "other/1"})
    with pytest.raises(ValueError, match=r"not a mapa-vae checkpoint \(format None\)"):
        trainer.load_state({})
    missing = tmp_path / "missing.pt"
    with pytest.raises(ValueError, match=f"checkpoint {str(missing)!r} does not exist"):
        load_torch(missing)


def test_a_nan_objective_stops_training_and_names_the_step():
    objective = Toy(nan_at=3)
    trainer = _trainer(objective)
    with pytest.raises(TrainingDiverged, match=r"^the toy objective became nan at step 3; try a "
                                               r"smaller learning rate or check the data scale$"):
        trainer.fit()
    assert trainer.step == 2  # the diverged step is not taken


def test_a_non_finite_gradient_stops_training_before_the_update():
    objective = Toy(bad_gradient=True)
    before = objective.model.decoder.bias.detach().clone()
    trainer = _trainer(objective)
    with pytest.raises(TrainingDiverged, match=r"^a gradient of the toy objective became "
                                               r"non-finite at step 1; try a smaller learning "
                                               r"rate$"):
        trainer.fit()
    assert torch.equal(objective.model.decoder.bias.detach(), before)


@pytest.mark.parametrize("settings, message", [
    (dict(steps=0), "steps must be a positive integer, got 0"),
    (dict(steps=2.5), "steps must be a positive integer, got 2.5"),
    (dict(batch_size=True), "batch_size must be a positive integer, got True"),
    (dict(log_every=-1), "log_every must be a positive integer, got -1"),
    (dict(learning_rate=0.0), "learning_rate must be a positive number, got 0.0"),
    (dict(learning_rate=math.inf), "learning_rate must be a positive number, got inf"),
    (dict(learning_rate=math.nan), "learning_rate must be a positive number, got nan"),
    (dict(learning_rate="0.1"), "learning_rate must be a positive number, got '0.1'"),
    (dict(lr_schedule="linear"),
     "unknown lr_schedule 'linear'; choose one of ['constant', 'cosine']"),
])
def test_training_config_names_the_bad_value(settings, message):
    settings = {"learning_rate": 0.01, **settings}
    with pytest.raises(ValueError) as error:
        TrainingConfig(**settings).validate()
    assert str(error.value) == message
    with pytest.raises(ValueError) as error:  # the trainer validates its config
        Trainer(Toy(), _data(), TrainingConfig(**settings))
    assert str(error.value) == message


def test_numpy_integers_are_accepted_as_counts():
    config = TrainingConfig(steps=np.int64(5), batch_size=np.int32(3), log_every=np.int64(5),
                            learning_rate=0.01)
    assert config.validate() is config


def test_the_trainer_needs_a_learning_rate_and_settings_may_leave_it_to_the_method():
    from mapa_vae.trainer import TrainingSettings

    assert TrainingSettings().validate().learning_rate is None  # the method's protocol rate
    with pytest.raises(ValueError, match="the trainer needs a learning_rate"):
        TrainingConfig().validate()


def test_gradients_finite_is_exact_including_sums_that_overflow():
    from mapa_vae.trainer import gradients_finite

    big = torch.full((4,), torch.finfo(torch.float32).max)  # finite, but its sum overflows
    assert torch.isinf(big.sum())
    assert gradients_finite([big, torch.zeros(3, 2)])
    assert gradients_finite([])
    for bad in (math.nan, math.inf, -math.inf):
        g = torch.zeros(5, 3)
        g[2, 1] = bad
        assert not gradients_finite([torch.ones(2), g])
    both = torch.tensor([math.inf, -math.inf])  # the sum is NaN; still non-finite
    assert not gradients_finite([both.double()])
