"""Experiment runs: one protocol for every method, files written whole, reproducible seeds."""
import csv
import json

import numpy as np
import pytest

from mapa_vae import datasets
from mapa_vae.cli import main
from mapa_vae.estimators import MAPADensity
from mapa_vae.experiment import RunConfig, build_estimator, run, sample_data
from mapa_vae.methods import METHODS

TINY = {"n_train": 120, "n_test": 200, "steps": 20, "batch_size": 40, "log_every": 10}


def test_every_method_of_a_seed_sees_the_same_data():
    truth = datasets.get("circle")
    a = sample_data(RunConfig.from_settings(method="mapa", seed=3, **TINY), truth)
    b = sample_data(RunConfig.from_settings(method="iwae", seed=3, **TINY), truth)
    c = sample_data(RunConfig.from_settings(method="mapa", seed=4, **TINY), truth)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[0][:50], a[2][:50])  # test points are fresh


def test_the_protocol_is_shared_across_methods():
    truth = datasets.get("quadratic")
    mapa = build_estimator(RunConfig.from_settings(dataset="quadratic", method="mapa", **TINY), truth)
    iwae = build_estimator(RunConfig.from_settings(dataset="quadratic", method="iwae", samples=5, **TINY),
                           truth)
    shared = ("sigma", "latent_dim", "prior", "hidden", "steps", "batch_size", "lr_schedule",
              "random_state")
    assert all(mapa.get_params()[k] == iwae.get_params()[k] for k in shared)
    assert mapa.sigma == truth.sigma and iwae.n_samples == 5
    assert RunConfig.from_settings(method="iwae").label == "iwae-10"
    assert RunConfig.from_settings(method="prior-is", samples=7).label == "prior-is-7"


def test_run_writes_its_files_and_the_metrics_agree_with_them(tmp_path):
    out = tmp_path / "run"
    metrics = run(RunConfig.from_settings(method="mapa", eval_every=10, **TINY), out)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "fit.png", "history.csv",
                                                     "metrics.json"]
    assert json.loads((out / "metrics.json").read_text()) == metrics
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [10, 20]
    assert all(float(r["test_kl"]) > -0.5 for r in rows)
    assert int(rows[-1]["passes"]) == metrics["total_passes"] == 20 * 40
    assert metrics["passes_per_step"] == 40
    assert float(rows[-1]["objective"]) == pytest.approx(metrics["final_objective"])
    assert metrics["test_kl"] == pytest.approx(metrics["true_log_prob"]
                                               - metrics["test_log_prob"])
    assert metrics["bound"] <= metrics["bound"] + metrics["gap"]
    assert (out / "fit.png").read_bytes()[:4] == b"\x89PNG"
    loaded = MAPADensity.load(out / "checkpoint.pt")
    X_test = datasets.get("circle").sample(5, seed=9)[0]
    assert np.isfinite(loaded.score_samples(X_test)).all()


def test_a_run_is_reproducible_from_its_seed():
    a = run(RunConfig.from_settings(dataset="absolute-value", method="vae", seed=2, **TINY))
    b = run(RunConfig.from_settings(dataset="absolute-value", method="vae", seed=2, **TINY))
    c = run(RunConfig.from_settings(dataset="absolute-value", method="vae", seed=5, **TINY))
    for key in ("test_kl", "test_kl_se", "final_objective", "total_passes"):
        assert a[key] == b[key]
    assert a["test_kl"] != c["test_kl"]


def test_above_two_latent_dimensions_the_curve_is_the_one_evaluators_test_kl():
    # linear-gaussian (d_z = 8): each curve point scores the first n_eval test points by the one
    # evaluator, seeded as the final test KL is, so with n_eval = n_test the last point (the
    # final model) is that test KL exactly; the curve draws from its own generator, so the run
    # is the same, bit for bit, without it
    settings = {**TINY, "n_test": 12, "dataset": "linear-gaussian", "method": "mapa"}
    curved = run(RunConfig.from_settings(eval_every=10, n_eval=12, **settings))
    plain = run(RunConfig.from_settings(**settings))
    assert [row["step"] for row in curved["curve"]] == [10, 20]
    assert curved["curve"][-1]["test_kl"] == curved["test_kl"]
    assert curved["curve"][0]["test_kl"] != curved["test_kl"]
    assert "curve" not in plain
    for key in ("test_kl", "final_objective", "total_passes"):
        assert curved[key] == plain[key]


def test_the_fit_figure_says_it_does_not_draw_the_decoder_above_two_latent_dimensions():
    import matplotlib.pyplot as plt

    from mapa_vae.run_figures import fit_overview

    truth = datasets.get("linear-gaussian")
    config = RunConfig.from_settings(dataset="linear-gaussian", method="vae", **TINY)
    X = sample_data(config, truth)[0]
    fig = fit_overview(truth, X, build_estimator(config, truth).fit(X))
    assert [t.get_text() for t in fig.axes[1].texts] == [
        "latent dimension 8: f_θ is not drawn;\nthe left panel compares samples with the data"]
    plt.close(fig)


def test_the_train_kl_scores_the_first_training_points_and_leaves_the_run_unchanged(tmp_path):
    plain = run(RunConfig.from_settings(method="mapa", seed=1, **TINY))
    config = RunConfig.from_settings(method="mapa", seed=1, n_train_kl=50, **TINY)
    scored = run(config, tmp_path / "run")
    assert "train_kl" not in plain
    for key in ("test_kl", "test_kl_se", "final_objective", "total_passes"):
        assert scored[key] == plain[key]
    truth = datasets.get("circle")
    X = sample_data(config, truth)[0][:50]
    fitted = MAPADensity.load(tmp_path / "run" / "checkpoint.pt")
    # the checkpoint holds the fitted weights exactly and quadrature draws nothing: the same
    # computation in the same process, so equal up to the last bits
    diff = truth.log_prob(X) - fitted.score_samples(X)
    assert scored["train_kl"] == pytest.approx(diff.mean(), rel=1e-12, abs=1e-12)
    assert scored["train_kl_se"] == pytest.approx(diff.std(ddof=1) / np.sqrt(50), rel=1e-9)


@pytest.mark.parametrize("change, message", [
    ({"method": "gan"}, "unknown method 'gan'"),
    ({"n_train_kl": 1}, "n_train_kl must be 0"),
    ({"n_train_kl": 121}, r"to n_train \(120\), got 121"),
    ({"method": "mapa", "samples": 5}, "applies to"),
    ({"method": "iwae", "samples": 0}, "S must be an integer >= 1"),
    ({"steps": 0}, "steps must be a positive integer"),
    ({"n_test": 1}, "n_test must be at least 2"),
    ({"eval_every": 15}, "multiple of log_every"),
    ({"dataset": "nope"}, "unknown dataset 'nope'"),
])
def test_bad_settings_are_refused_and_nothing_is_written(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        run(RunConfig.from_settings(**{**TINY, **change}), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_fit_command(tmp_path, capsys):
    out = tmp_path / "fit"
    assert main(["fit", "--dataset", "spiral", "--method", "iwae", "--samples", "3",
                 "--steps", "20", "--batch-size", "30", "--n-train", "90", "--n-test", "100",
                 "--log-every", "10", "--eval-every", "10", "--n-eval", "40", "--quiet",
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["label"] == "iwae-3" and metrics["passes_per_step"] == 30 * 4
    assert metrics["config"]["n_eval"] == 40
    assert [row["step"] for row in metrics["curve"]] == [10, 20]
    for key in ("test_kl", "test_kl_se", "passes_per_step", "total_passes", "train_seconds",
                "final_objective"):
        assert np.isfinite(metrics[key])
    printed = capsys.readouterr().out
    assert "test KL" in printed and "iwae-3" in printed


@pytest.mark.parametrize("argv, message", [
    (["--method", "mapa", "--samples", "4"], "applies to"),
    (["--dataset", "missing.py:truth"], "does not exist"),
    (["--eval-every", "7"], "multiple of log_every"),
])
def test_fit_command_errors_write_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "never"
    assert main(["fit", "--steps", "5", "--quiet", "--out", str(out)] + argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_fit_command_refuses_a_non_positive_n_eval(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--n-eval", "0", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert "--n-eval: expected a positive integer, got 0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_fit_command_refuses_an_unknown_method(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--method", "gan", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2


def test_the_oracle_ablation_starts_from_the_true_codes():
    config = RunConfig.from_settings(method="mapa", init="oracle", **TINY)
    assert config.label == "mapa-oracle"
    truth = datasets.get("circle")
    X, Z, _ = sample_data(config, truth)
    estimator = build_estimator(config, truth, Z)
    np.testing.assert_array_equal(estimator.init, Z)
    metrics = run(config)
    assert metrics["label"] == "mapa-oracle" and np.isfinite(metrics["test_kl"])


def test_mapa_variants_are_methods_of_their_own():
    config = RunConfig.from_settings(method="mapa-identity", **TINY).validate()
    assert config.label == "mapa-identity"
    assert config.training.learning_rate == METHODS["mapa"].learning_rate
    estimator = build_estimator(config, datasets.get("circle"))
    assert estimator.weights == "identity" and estimator.init == "auto"
    metrics = run(RunConfig.from_settings(dataset="swiss-roll", method="mapa-gaussian", **TINY))
    assert metrics["label"] == "mapa-gaussian" and np.isfinite(metrics["bound"])
    assert "gap" not in metrics  # the continuous model's bound has no empiricalized log p̂


def test_the_true_log_density_of_a_test_set_is_computed_once(tmp_path, monkeypatch):
    from mapa_vae.experiment import true_log_prob

    truth = datasets.get("circle")
    X, _ = truth.sample(50, seed=0)
    first = true_log_prob(truth, X, tmp_path)
    np.testing.assert_array_equal(first, truth.log_prob(X))
    assert len(list(tmp_path.glob("*.npy"))) == 1

    def refuse(self, X):
        raise AssertionError("recomputed")

    monkeypatch.setattr(type(truth), "log_prob", refuse)
    np.testing.assert_array_equal(true_log_prob(truth, X, tmp_path), first)  # from the cache
    with pytest.raises(AssertionError, match="recomputed"):
        true_log_prob(truth, X[:10], tmp_path)  # another test set is not confused with it
