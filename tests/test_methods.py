"""The method registry: one description per method, read by estimators, runs, the bench and the
CLI alike."""
import pytest

from mapa_vae import datasets, methods
from mapa_vae.bench import BenchConfig
from mapa_vae.cli import build_parser
from mapa_vae.estimators import MAPADensity
from mapa_vae.experiment import RunConfig, build_estimator


@pytest.mark.parametrize("name", methods.METHOD_NAMES)
def test_a_method_makes_its_estimator_with_its_settings_rate_and_samples(name):
    method = methods.METHODS[name]
    estimator = methods.make_estimator(name)
    assert type(estimator) is method.estimator
    params = estimator.get_params()
    assert params["learning_rate"] == method.learning_rate
    assert all(params[key] == value for key, value in method.settings.items())
    if method.samples is not None:
        assert params["n_samples"] == method.samples
    override = methods.make_estimator(name, learning_rate=0.5, steps=7)
    assert override.learning_rate == 0.5 and override.steps == 7


def test_labels_round_trip_through_their_settings():
    for label in methods.BENCH_LABELS + ["iwae", "mapa-atoms-oracle", "prior-is-3"]:
        settings = methods.parse_label(label)
        expected = label if label != "iwae" else "iwae-10"
        assert methods.label(**settings) == expected


def test_the_default_bench_runs_each_bench_label_once_in_report_order():
    assert methods.BENCH_LABELS == ["mapa", "mapa-identity", "vae", "iwae-5", "iwae-10",
                                    "iwae-50", "lagging", "prior-is-100"]
    assert BenchConfig().methods == methods.BENCH_LABELS


def test_a_run_takes_the_methods_protocol_rate_unless_given():
    for name, method in methods.METHODS.items():
        assert RunConfig(method=name).validate().training.learning_rate == method.learning_rate
    given = RunConfig.from_settings(method="vae", learning_rate=0.002).validate()
    assert given.training.learning_rate == 0.002


def test_scheduling_cost_grows_with_the_sample_count():
    iwae = methods.METHODS["iwae"]
    assert iwae.cost(50) > iwae.cost(10) > iwae.cost(5) > methods.METHODS["vae"].cost(None)


def test_a_new_mapa_variant_is_one_entry(monkeypatch):
    """Adding a Method is all that a run, the bench and the CLI need."""
    variant = methods.Method("mapa-wide", MAPADensity, "MAPA with a wider kernel",
                             cost=lambda s: 1, settings={"bandwidth": 0.5}, in_bench=False,
                             metrics=methods.METHODS["mapa"].metrics, learning_rate=0.02)
    monkeypatch.setitem(methods.METHODS, "mapa-wide", variant)
    config = RunConfig.from_settings(method="mapa-wide", steps=20).validate()
    assert config.training.learning_rate == 0.02 and config.label == "mapa-wide"
    estimator = build_estimator(config, datasets.get("circle"))
    assert isinstance(estimator, MAPADensity) and estimator.bandwidth == 0.5
    runs = BenchConfig(datasets=["circle"], methods=["mapa-wide", "mapa-wide-oracle"],
                       seeds=1).runs()
    assert [r.label for r in runs] == ["mapa-wide", "mapa-wide-oracle"]
    args = build_parser().parse_args(["fit", "--method", "mapa-wide"])
    assert args.method == "mapa-wide"


def test_unknown_methods_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown method 'gan'; choose one of"):
        methods.get("gan")
    with pytest.raises(ValueError, match="unknown method 'gan'"):
        RunConfig(method="gan").validate()
    with pytest.raises(ValueError, match="the number of samples after iwae- must be a positive"):
        methods.parse_label("iwae-0")


def test_the_cli_takes_its_defaults_and_help_from_the_registry_and_the_settings():
    from mapa_vae.trainer import TrainingSettings

    fit = build_parser()._subparsers._group_actions[0].choices["fit"]
    actions = {a.dest: a for a in fit._actions}
    for name, method in methods.METHODS.items():
        assert f"{name}: {method.summary}" in actions["method"].help
        assert f"{name} {method.learning_rate:g}" in actions["learning_rate"].help
    defaults = TrainingSettings()
    for key in ("steps", "batch_size", "lr_schedule", "log_every"):
        assert fit.get_default(key) == getattr(defaults, key)
