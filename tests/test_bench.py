"""The benchmark: protocol, resumability, well-formed outputs (not who wins)."""
import contextlib
import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from mapa_vae import bench as bench_module
from mapa_vae.bench import (QUICK, BenchConfig, finished_results, folder_name, run_bench,
                            run_dir, summarize, summary_markdown, targets)
from mapa_vae.cli import main
from mapa_vae.experiment import RunConfig
from mapa_vae.methods import BENCH_LABELS as METHODS
from mapa_vae.methods import get as get_method
from mapa_vae.methods import parse_label as parse_method

TINY = {"datasets": ["absolute-value"], "methods": ["mapa", "prior-is-20"], "seeds": 2,
        "steps": 20, "n_train": 60, "n_test": 50, "eval_every": 10, "n_eval": 20, "jobs": 2}


@pytest.mark.parametrize("label, expected", [
    ("mapa", {"method": "mapa"}), ("vae", {"method": "vae"}), ("lagging", {"method": "lagging"}),
    ("iwae-50", {"method": "iwae", "samples": 50}), ("iwae", {"method": "iwae", "samples": 10}),
    ("prior-is-7", {"method": "prior-is", "samples": 7}),
    ("mapa-oracle", {"method": "mapa", "init": "oracle"}),
    ("mapa-atoms", {"method": "mapa-atoms"}), ("mapa-identity", {"method": "mapa-identity"}),
    ("mapa-gaussian-oracle", {"method": "mapa-gaussian", "init": "oracle"}),
])
def test_method_labels(label, expected):
    assert parse_method(label) == expected


@pytest.mark.parametrize("label, message", [("iwae-0", "positive integer"),
                                            ("iwae-x", "positive integer"),
                                            ("gan", "unknown method 'gan'"),
                                            ("vae-oracle", "unknown method 'vae-oracle'")])
def test_bad_method_labels(label, message):
    with pytest.raises(ValueError, match=message):
        parse_method(label)


def test_every_run_shares_the_protocol():
    runs = BenchConfig.from_settings(datasets=["circle", "spiral"], methods=METHODS, seeds=3).runs()
    assert len(runs) == 2 * len(METHODS) * 3
    shared = {(r.training.steps, r.training.batch_size, r.training.lr_schedule, r.n_train,
               tuple(r.hidden), r.learn_sigma) for r in runs}
    assert shared == {(3000, 100, "cosine", 1000, (64, 64), False)}
    assert all(r.training.learning_rate == get_method(r.method).learning_rate for r in runs)
    fixed = BenchConfig.from_settings(datasets=["circle"], methods=["mapa", "vae"], learning_rate=0.002)
    assert {r.training.learning_rate for r in fixed.runs()} == {0.002}
    assert {r.label for r in runs} == set(METHODS)
    with pytest.raises(ValueError, match="unknown dataset"):
        BenchConfig.from_settings(datasets=["nope"]).runs()


def test_the_bench_measures_curves_up_to_two_latent_dimensions_only():
    runs = BenchConfig.from_settings(datasets=["circle", "swiss-roll", "linear-gaussian"],
                                     methods=["mapa"], seeds=1, eval_every=500).runs()
    assert {r.dataset: r.eval_every for r in runs} == {"circle": 500, "swiss-roll": 500,
                                                        "linear-gaussian": 0}
    assert {r.training.log_every for r in runs} == {100}


@pytest.mark.slow
def test_bench_is_resumable_and_refuses_another_protocol(tmp_path):
    config = BenchConfig.from_settings(**TINY)
    first = run_bench(config, tmp_path, progress=False)
    assert len(first) == 4
    stamps = {rc.label + str(rc.seed): (run_dir(tmp_path, rc) / "metrics.json").stat().st_mtime_ns
              for rc in config.runs()}
    redo = config.runs()[1]
    (run_dir(tmp_path, redo) / "metrics.json").unlink()  # as if killed during this run
    assert sorted(finished_results(config, tmp_path)) == [0, 2, 3]
    second = run_bench(config, tmp_path, progress=False)
    assert "Bench wall time 2 s for the 1 run this invocation ran; the other 3 were finished " \
        "before and reused." in summary_markdown(config, second, 2.0, reused=3)
    assert "Bench wall time 2 s.\n" in summary_markdown(config, second, 2.0) + "\n"
    for rc in config.runs():
        stamp = (run_dir(tmp_path, rc) / "metrics.json").stat().st_mtime_ns
        assert (stamp == stamps[rc.label + str(rc.seed)]) == (rc != redo)
    for a, b in zip(first, second):  # the redone run gives the same numbers
        assert a["test_kl"] == b["test_kl"] and a["total_passes"] == b["total_passes"]
    with pytest.raises(ValueError, match="different protocol"):
        run_bench(BenchConfig.from_settings(**{**TINY, "steps": 30}), tmp_path, progress=False)
    rows = summarize(second)
    assert {(r["label"], r["seeds"]) for r in rows} == {("mapa", 2), ("prior-is-20", 2)}
    checks = targets(second, rows)
    assert checks[0]["best_baseline"] == "prior-is-20"


@pytest.mark.slow
def test_quick_bench_writes_well_formed_results(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--quick", "--quiet", "--no-paper-figures", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    n_runs = len(QUICK["datasets"]) * len(QUICK["methods"]) * QUICK["seeds"]
    assert len(results["runs"]) == n_runs
    for r in results["runs"]:
        assert r["test_kl"] == pytest.approx(r["true_log_prob"] - r["test_log_prob"])
        assert [p["step"] for p in r["curve"]] == list(range(100, 401, 100))
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n_runs
    assert {row["label"] for row in rows} == set(QUICK["methods"])
    assert {float(row["passes_per_step"]) for row in rows if row["label"] == "iwae-10"} == {1100}
    summary = (out / "summary.md").read_text()
    assert "## circle" in summary and "## Targets, as measured" in summary
    for name in ("fig2_test_kl_and_passes.png", "kl_vs_passes.png", "kl_vs_time.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert "| mapa |" in capsys.readouterr().out
    assert not list(out.rglob("*.tmp"))


def test_summary_reports_median_seed_range_and_standard_error():
    from mapa_vae.bench import summarize

    runs = [{"dataset": "circle", "label": "mapa", "test_kl": kl, "test_kl_se": se,
             "passes_per_step": 100, "total_passes": 1000, "seconds": 1.0}
            for kl, se in [(0.03, 0.002), (0.01, 0.001), (0.02, 0.004)]]
    (row,) = summarize(runs)
    assert (row["test_kl_median"], row["test_kl_min"], row["test_kl_max"]) == (0.02, 0.01, 0.03)
    assert row["test_kl_se"] == 0.002 and row["seeds"] == 3


# --- file datasets: names and folders ----------------------------------------------------------

@pytest.mark.parametrize("name, folder", [("circle", "circle"), ("swiss-roll", "swiss-roll"),
                                          ("x", "x"), ("my_truth2", "my_truth2")])
def test_safe_names_are_their_own_folder(name, folder):
    assert folder_name(name) == folder


@pytest.mark.parametrize("name", ["a.py:x", "/abs/path/a.py:x", "..", ".", "../x", "a b",
                                  "x (twin)", "ü", "", "-x", "x" * 200])
def test_other_names_become_one_safe_distinct_folder(name):
    folder = folder_name(name)
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", folder) and len(folder) <= 64
    assert folder not in (".", "..") and folder != name
    assert folder_name(name + "!") != folder


FILE_TRUTH = '''
import torch
from mapa_vae import GroundTruth

x = GroundTruth("normal", lambda z: torch.cat([z, 0.5 * z ** 2], 1), sigma=0.1)
'''


@pytest.mark.slow
def test_file_datasets_are_named_in_the_results_and_run_inside_out(tmp_path):
    """Two files sharing the object name x: rows, tables and folders say which file, and nothing
    is written beside the files."""
    files = tmp_path / "files"
    (files / "other").mkdir(parents=True)
    a, b = files / "a.py", files / "other" / "b.py"
    for path in (a, b):
        path.write_text(FILE_TRUTH)
    out = tmp_path / "bench"
    specs = [f"{a}:x", f"{b}:x"]
    assert main(["bench", "--datasets", *specs, "--methods", "vae", "--seeds", "1", "--steps",
                 "10", "--n-train", "40", "--n-test", "20", "--eval-every", "0", "--jobs", "2",
                 "--quiet", "--no-paper-figures", "--out", str(out)]) == 0
    assert sorted(str(p.relative_to(files)) for p in files.rglob("*")) == [
        "a.py", "other", "other/b.py"]
    with open(out / "results.csv") as f:
        assert [row["dataset"] for row in csv.DictReader(f)] == ["a.py:x", "b.py:x"]
    summary = (out / "summary.md").read_text()
    assert "## a.py:x" in summary and "## b.py:x" in summary
    folders = {folder_name("a.py:x"), folder_name("b.py:x")}
    assert {p.name for p in (out / "runs").iterdir()} == folders
    for spec, name in zip(specs, ["a.py:x", "b.py:x"]):
        metrics = json.loads((out / "runs" / folder_name(name) / "vae" / "seed0" /
                              "metrics.json").read_text())
        assert metrics["dataset"] == name and metrics["config"]["dataset"] == spec


def test_a_dataset_given_twice_is_refused():
    with pytest.raises(ValueError, match="dataset 'circle' is given more than once"):
        BenchConfig.from_settings(datasets=["circle", "circle"]).runs()


# --- progress and Ctrl-C -----------------------------------------------------------------------

class _Counter:
    """A stand-in for the shared step counter that records every value it takes."""

    def __init__(self):
        self.values = [0]

    @property
    def value(self):
        return self.values[-1]

    @value.setter
    def value(self, value):
        self.values.append(value)

    def get_lock(self):
        return contextlib.nullcontext()


def test_a_worker_counts_its_steps_as_they_are_logged_pilot_runs_included(tmp_path, monkeypatch):
    counter, stop = _Counter(), threading.Event()
    monkeypatch.setattr(bench_module, "_shared", (counter, stop))
    config = RunConfig.from_settings(dataset="circle", n_train=100, n_test=20, steps=60, batch_size=50,
                       log_every=10, extra={"pilot_steps": 10}).validate()
    metrics = bench_module._work(config, str(tmp_path / "run"), str(tmp_path / "truth"), "circle")
    # three candidates' pilots of 10 steps each, then the chosen one's 30 more: 60 in all
    assert counter.values == [0, 10, 20, 30, 40, 50, 60]
    assert metrics["dataset"] == "circle" and (tmp_path / "run" / "metrics.json").is_file()
    stop.set()  # an interrupted bench: a run not yet started is left alone
    assert bench_module._work(config, str(tmp_path / "later"), str(tmp_path / "truth"),
                              "circle") is None
    assert counter.values[-1] == 60 and not (tmp_path / "later").exists()


@pytest.mark.slow
def test_ctrl_c_stops_the_bench_cleanly_and_the_same_command_resumes(tmp_path):
    out = tmp_path / "bench"
    argv = ["bench", "--datasets", "absolute-value", "--methods", "iwae-4", "prior-is-500",
            "--seeds", "1", "--steps", "200", "--n-train", "60", "--n-test", "50",
            "--eval-every", "0", "--jobs", "1", "--no-paper-figures", "--out", str(out)]
    # one worker takes the runs in order, longest expected first; these two are expected to
    # cost the same (5 passes per point and step), so the quick one (IWAE, S = 4, on a batch of
    # 60) runs first and the slow one (500 prior draws a step) is still running when the first
    # metrics.json appears
    runs = BenchConfig.from_settings(datasets=["absolute-value"],
                                     methods=["iwae-4", "prior-is-500"], seeds=1,
                                     steps=200).runs()
    assert bench_module._expected_cost(runs[0]) == bench_module._expected_cost(runs[1])
    # a new session, so that SIGINT goes to the bench and its workers as Ctrl-C would; Python's
    # Ctrl-C handler installed explicitly, since a test run in the background inherits SIGINT
    # ignored (and then so would the bench)
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from mapa_vae.cli import main; sys.exit(main(sys.argv[1:]))")
    process = subprocess.Popen([sys.executable, "-c", code, *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob("runs/*/*/*/metrics.json")):  # the quick run has finished
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the bench did not start"
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stdout + stderr
    finished = list(out.glob("runs/*/*/*/metrics.json"))
    assert [path.parent.parent.name for path in finished] == ["iwae-4"]
    assert (f"mapa-vae: interrupted: 1 of 2 runs are finished and kept in {out}; run the same "
            f"command again to resume") in stderr
    stamp = finished[0].stat().st_mtime_ns
    assert main(argv + ["--quiet"]) == 0
    assert len(list(out.glob("runs/*/*/*/metrics.json"))) == 2
    assert finished[0].stat().st_mtime_ns == stamp  # kept, not redone
    assert len(json.loads((out / "results.json").read_text())["runs"]) == 2
    assert not list(out.rglob("*.tmp"))


def test_the_train_kl_is_a_measurement_beside_the_protocol():
    base = RunConfig.from_settings(method="mapa").as_dict()
    before = {k: v for k, v in base.items() if k != "n_train_kl"}  # a run from before the setting
    assert bench_module.protocol(before) == bench_module.protocol(base)
    asked = RunConfig.from_settings(method="mapa", n_train_kl=200).as_dict()
    assert bench_module.protocol(asked) != bench_module.protocol(before)
    config = BenchConfig.from_settings(datasets=["circle"], methods=["mapa", "vae"], seeds=3,
                                       n_train_kl=200)
    assert {r.n_train_kl for r in config.runs()} == {200}
    results = [{"dataset": "circle", "label": label, "seed": seed, "test_kl": test,
                "test_kl_se": 0.01, "train_kl": fit, "passes_per_step": 100,
                "total_passes": 300_000, "seconds": 1.0, "curve": []}
               for label, values in (("mapa", [(0.5, -0.1), (0.7, 0.2), (0.6, 0.0)]),
                                     ("vae", [(0.9, 0.4), (0.8, 0.3), (1.0, 0.5)]))
               for seed, (test, fit) in enumerate(values)]
    rows = {r["label"]: r for r in summarize(results)}
    assert (rows["mapa"]["train_kl_median"], rows["mapa"]["train_kl_min"],
            rows["mapa"]["train_kl_max"]) == (0.0, -0.1, 0.2)
    text = summary_markdown(config, results, 1.0)
    assert "| train KL (200 points) [min, max] |" in text
    assert "| mapa | 0.6 | [0.5, 0.7] | 0.01 | 0 [-0.1, 0.2] | 100 |" in text
    assert "| vae | 0.9 | [0.8, 1] | 0.01 | 0.4 [0.3, 0.5] | 100 |" in text
    without = BenchConfig.from_settings(datasets=["circle"], methods=["mapa", "vae"], seeds=3)
    assert "train KL" not in summary_markdown(without, results, 1.0)
