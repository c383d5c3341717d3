"""The benchmark: protocol, resumability, well-formed outputs (not who wins)."""
import csv
import json

import pytest

from mapa_vae.bench import (METHODS, QUICK, BenchConfig, parse_method, run_bench, run_dir,
                            summarize, targets)
from mapa_vae.cli import main
from mapa_vae.estimators import base_method
from mapa_vae.experiment import LEARNING_RATES

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
    runs = BenchConfig(datasets=["circle", "spiral"], methods=METHODS, seeds=3).runs()
    assert len(runs) == 2 * len(METHODS) * 3
    shared = {(r.steps, r.batch_size, r.lr_schedule, r.n_train, tuple(r.hidden), r.learn_sigma)
              for r in runs}
    assert shared == {(3000, 100, "cosine", 1000, (64, 64), False)}
    assert all(r.learning_rate == LEARNING_RATES[base_method(r.method)] for r in runs)
    fixed = BenchConfig(datasets=["circle"], methods=["mapa", "vae"], learning_rate=0.002)
    assert {r.learning_rate for r in fixed.runs()} == {0.002}
    assert {r.label for r in runs} == set(METHODS)
    with pytest.raises(ValueError, match="unknown dataset"):
        BenchConfig(datasets=["nope"]).runs()


def test_bench_is_resumable_and_refuses_another_protocol(tmp_path):
    config = BenchConfig(**TINY)
    first = run_bench(config, tmp_path, progress=False)
    assert len(first) == 4
    stamps = {rc.label + str(rc.seed): (run_dir(tmp_path, rc) / "metrics.json").stat().st_mtime_ns
              for rc in config.runs()}
    redo = config.runs()[1]
    (run_dir(tmp_path, redo) / "metrics.json").unlink()  # as if killed during this run
    second = run_bench(config, tmp_path, progress=False)
    for rc in config.runs():
        stamp = (run_dir(tmp_path, rc) / "metrics.json").stat().st_mtime_ns
        assert (stamp == stamps[rc.label + str(rc.seed)]) == (rc != redo)
    for a, b in zip(first, second):  # the redone run gives the same numbers
        assert a["test_kl"] == b["test_kl"] and a["total_passes"] == b["total_passes"]
    with pytest.raises(ValueError, match="different protocol"):
        run_bench(BenchConfig(**{**TINY, "steps": 30}), tmp_path, progress=False)
    rows = summarize(second)
    assert {(r["label"], r["seeds"]) for r in rows} == {("mapa", 2), ("prior-is-20", 2)}
    checks = targets(second, rows)
    assert checks[0]["best_baseline"] == "prior-is-20"


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
