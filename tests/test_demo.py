"""The demo experiment as a library call: the numbers the command line writes, no files unasked."""
import json

import pytest

from mapa_vae.cli import main
from mapa_vae.demo import DemoConfig, run


def test_the_library_call_gives_the_command_lines_numbers_and_writes_nothing(tmp_path,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = DemoConfig(dataset="circle", n_train=150, n_test=8, n_neighbors=40,
                        estimate_bandwidth=True, seed=3)
    summary = run(config)
    assert list(tmp_path.iterdir()) == []
    assert main(["demo", "--dataset", "circle", "--n-train", "150", "--n-test", "8",
                 "--n-neighbors", "40", "--estimate-bandwidth", "--seed", "3",
                 "--out", "cli"]) == 0
    written = json.loads((tmp_path / "cli" / "summary.json").read_text())
    summary.pop("fit_seconds"), written.pop("fit_seconds")
    assert json.loads(json.dumps(summary)) == written
    assert (summary["n_train"], summary["n_neighbors"], summary["bandwidth_rule"]) == \
        (150, 40, "loo")


def test_more_neighbours_than_points_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"^--n-neighbors \(20\) exceeds --n-train \(10\)$"):
        run(DemoConfig(n_train=10, n_neighbors=20), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
