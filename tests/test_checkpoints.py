"""Checkpoints: settings as JSON, a round trip through the module, MAPA's attachment record."""
import json

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from mapa_vae import checkpoints, datasets
from mapa_vae.estimators import MAPADensity, VAEDensity
from mapa_vae.priors import Uniform
from mapa_vae.trainer import load_torch, save_torch


@pytest.fixture(scope="module")
def circle():
    truth = datasets.get("circle")
    X, Z = truth.sample(200, seed=0)
    return truth, X, Z


def test_settings_for_the_file_are_json():
    decoder = torch.nn.Linear(1, 2)
    est = MAPADensity(decoder=decoder, prior=Uniform(1), init=np.zeros((3, 1)),
                      random_state=np.random.default_rng(0), hidden=(8, 8))
    params = checkpoints.params_for_file(est)
    assert params["decoder"] == "custom" and params["features"] == "auto"
    assert checkpoints.params_for_file(est.set_params(features=None))["features"] is None
    assert checkpoints.params_for_file(est.set_params(features=PCA(2)))["features"] == "custom"
    assert params["prior"] == "uniform" and params["hidden"] == [8, 8]
    assert params["init"] == checkpoints.ARRAY_IN_STATE and params["random_state"] is None
    assert json.loads(json.dumps(params)) == params
    assert est.decoder is decoder  # the estimator's own settings are left alone


def test_round_trip_through_the_module_keeps_scores_codes_and_the_attachment(circle, tmp_path):
    truth, X, Z = circle
    est = MAPADensity(sigma=truth.sigma, steps=20, batch_size=50, init=Z, random_state=0).fit(X)
    checkpoints.save(est, tmp_path / "mapa.pt")
    state = load_torch(tmp_path / "mapa.pt")
    assert state["estimator"] == "MAPADensity" and int(state["seed"]) == 0
    np.testing.assert_array_equal(state["X"].numpy(), X)
    assert json.loads(state["attachment"]) == {
        "name": "given", "pilot_bounds": {}, "reason": "init gave coordinates per training point"}
    loaded = checkpoints.load(MAPADensity, tmp_path / "mapa.pt")
    np.testing.assert_array_equal(loaded.init, Z)
    np.testing.assert_array_equal(loaded.score_samples(X[:5]), est.score_samples(X[:5]))
    np.testing.assert_array_equal(loaded.posterior(X[:5]).codes, est.posterior(X[:5]).codes)
    assert (loaded.attachment_, loaded.pilot_bounds_, loaded.attachment_reason_) == (
        est.attachment_, est.pilot_bounds_, est.attachment_reason_)
    assert loaded.history_ == est.history_ and loaded.total_passes_ == est.total_passes_


def test_an_attachment_record_without_a_reason_still_loads(circle, tmp_path):
    truth, X, _ = circle
    est = MAPADensity(sigma=truth.sigma, steps=5, batch_size=50, random_state=0).fit(X)
    est.save(tmp_path / "mapa.pt")
    state = load_torch(tmp_path / "mapa.pt")
    state["attachment"] = json.dumps({"name": est.attachment_, "pilot_bounds": {}})
    save_torch(state, tmp_path / "older.pt")
    loaded = MAPADensity.load(tmp_path / "older.pt")
    assert loaded.attachment_ == est.attachment_
    assert loaded.attachment_reason_ == "not recorded in this checkpoint"


def test_an_encoder_method_keeps_no_attachment_record(circle, tmp_path):
    truth, X, _ = circle
    est = VAEDensity(sigma=truth.sigma, steps=5, batch_size=50, random_state=0).fit(X)
    checkpoints.save(est, tmp_path / "vae.pt")
    assert "attachment" not in load_torch(tmp_path / "vae.pt")
    loaded = checkpoints.load(VAEDensity, tmp_path / "vae.pt")
    assert not hasattr(loaded, "attachment_")
    np.testing.assert_array_equal(loaded.score_samples(X[:5]), est.score_samples(X[:5]))


def test_a_checkpoint_from_before_the_positions_rate_loads_and_resumes_at_its_rate(circle,
                                                                                 tmp_path):
    truth, X, _ = circle
    fit = {"sigma": truth.sigma, "batch_size": 50, "lr_schedule": "constant", "random_state": 0}
    # positions at the decoder's rate (0.01 for MAPA) train in one optimiser group, as before
    # code_learning_rate covered them; such files hold code_learning_rate=None
    longer = MAPADensity(steps=30, code_learning_rate=0.01, **fit).fit(X)
    est = MAPADensity(steps=20, code_learning_rate=0.01, **fit).fit(X)
    checkpoints.save(est, tmp_path / "old.pt")
    state = load_torch(tmp_path / "old.pt")
    assert len(state["generative_optimizer"]["param_groups"]) == 1
    params = json.loads(state["params"])
    params["code_learning_rate"] = None
    state["params"] = json.dumps(params)
    save_torch(state, tmp_path / "old.pt")
    loaded = MAPADensity.load(tmp_path / "old.pt")
    assert loaded.code_learning_rate == 0.01
    np.testing.assert_array_equal(loaded.score_samples(X[:5]), est.score_samples(X[:5]))
    resumed = MAPADensity.load(tmp_path / "old.pt", steps=30)  # rtol as the resume test's
    np.testing.assert_allclose(resumed.score_samples(X[:5]), longer.score_samples(X[:5]),
                               rtol=1e-6)
