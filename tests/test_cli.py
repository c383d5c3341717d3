"""Command line: the demo writes its results; errors write nothing."""
import json

import pytest

from mapa_vae.cli import main


def test_demo_writes_summary_and_plot(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--dataset", "spiral", "--n-train", "300", "--n-test", "20",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "spiral" and summary["n_train"] == 300
    assert summary["bandwidth"] == pytest.approx(2**0.5 * 0.05)
    assert summary["truncated_mass_max"] == 0.0
    assert set(summary["posterior_comparison"]) == {"mapa_vs_empirical", "mapa_vs_true",
                                                    "empirical_vs_true"}
    assert (out / "mapa.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["mapa.png", "summary.json"]
    assert "mapa_vs_true" in capsys.readouterr().out


def test_demo_is_reproducible_from_its_seed(tmp_path):
    runs = []
    for name in ("a", "b"):
        main(["demo", "--dataset", "circle", "--n-train", "200", "--n-test", "10", "--seed", "5",
              "--estimate-bandwidth", "--n-neighbors", "50", "--out", str(tmp_path / name)])
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        summary.pop("fit_seconds")
        runs.append(summary)
    assert runs[0] == runs[1]
    assert runs[0]["bandwidth_rule"] == "loo"


@pytest.mark.parametrize("argv, message", [
    (["demo", "--dataset", "nope"], "unknown dataset 'nope'"),
    (["demo", "--dataset", "missing.py:truth"], "does not exist"),
    (["demo", "--n-train", "100", "--n-neighbors", "200"], "exceeds --n-train"),
])
def test_errors_are_reported_and_nothing_is_written(tmp_path, capsys, argv, message):
    out = tmp_path / "never"
    assert main(argv + ["--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_argument_errors_exit_with_usage(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--n-train", "0", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert not (tmp_path / "x").exists()
