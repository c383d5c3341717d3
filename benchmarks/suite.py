"""The development suite: data sets of different kinds, latent sizes 3 to 32, split once into a
development half (where settings are chosen) and a held-out half (where they are reported).

    python3 benchmarks/suite.py list
    python3 benchmarks/suite.py run [--half development|held-out|both] [--entries NAME ...]
        [--methods mapa mapa-identity vae iwae] [--seeds 3] [--jobs 2] [--out bench-results/suite]
    python3 benchmarks/suite.py report [--out bench-results/suite]

The entries, and which half each belongs to, are fixed below (``SUITE``), before anything is
measured on them; a setting is chosen on ``development`` runs only. Kinds:

* *random networks* (``benchmarks/random_networks.py``): ``z ~ N(0, I)``, ``x = g(z) + σ ε``
  with ``g`` a network of a given depth and nonlinearity, its weights drawn from a seed; test KL
  by the one evaluator for truth and model alike;
* the built-in high-dimensional truths (``linear-gaussian``, ``blobs``) and the three of
  ``benchmarks/linear_truths.py``;
* real data shipped in packages: digits, wine, breast cancer and diabetes (scikit-learn), and
  Fashion-MNIST (Debian's ``dataset-fashion-mnist``), as a 5000-image subsample and in full.

Protocols: ground truths as the default bench (1000 training points, 1000 test points, the
``2 × 64`` tanh decoder, 3000 steps, each method's protocol rate, ``σ`` fixed at the truth's);
tables and digits as ``benchmarks/digits.py`` (``128 × 128``, 5000 steps, rate 0.01 for every
method, ``σ`` learned, a seeded tenth of the rows held out); Fashion-MNIST as
``benchmarks/fashion.py`` (``256 × 256``, 10 000 steps, rate 0.003, the first 1000 official test
images). Each run is a folder under ``OUT/runs/`` (kept, so the same command resumes). ``report``
writes ``results.json`` and ``summary.md``: per entry, latent size and method the median over
seeds [range] and the median standard error, and whether MAPA's median is at least the best of
the VAE's and IWAE's (S = 10).
"""
from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

HALVES = ("development", "held-out")
METHODS = ("mapa", "mapa-identity", "vae", "iwae")
BASELINES = ("vae", "iwae")
FASHION_SUBSAMPLE = 5000
FASHION_TEST = 1000


@dataclass(frozen=True)
class Entry:
    """One data set of the suite: ``kind`` "truth" (``source`` a ground truth, by name or
    ``file.py:object``) or "data" (``source`` a data source of :mod:`mapa_vae.data`, or
    ``fashion-5k``); the latent sizes it is fitted at; its half."""

    name: str
    kind: str
    source: str
    latent_dims: tuple
    half: str


_NETWORKS = str(Path(__file__).resolve().with_name("random_networks.py"))
_LINEAR = str(Path(__file__).resolve().with_name("linear_truths.py"))
#: The suite, split before any measurement: each kind has entries in both halves.
SUITE = (
    Entry("rn3-tanh", "truth", f"{_NETWORKS}:rn3_tanh", (3,), "development"),
    Entry("rn6-softplus", "truth", f"{_NETWORKS}:rn6_softplus", (6,), "development"),
    Entry("rn12-tanh", "truth", f"{_NETWORKS}:rn12_tanh", (12,), "development"),
    Entry("rn32-tanh", "truth", f"{_NETWORKS}:rn32_tanh", (32,), "development"),
    Entry("linear-gaussian", "truth", "linear-gaussian", (8,), "development"),
    Entry("lg4", "truth", f"{_LINEAR}:lg4", (4,), "development"),
    Entry("digits", "data", "digits", (4, 16), "development"),
    Entry("wine", "data", "wine", (3, 6), "development"),
    Entry("fashion-5k", "data", "fashion-5k", (8,), "development"),
    Entry("curved", "truth", f"{_LINEAR}:curved", (4,), "development"),
    Entry("rn4-tanh", "truth", f"{_NETWORKS}:rn4_tanh", (4,), "held-out"),
    Entry("rn8-sin", "truth", f"{_NETWORKS}:rn8_sin", (8,), "held-out"),
    Entry("rn16-elu", "truth", f"{_NETWORKS}:rn16_elu", (16,), "held-out"),
    Entry("bent", "truth", f"{_LINEAR}:bent", (4,), "held-out"),
    Entry("blobs", "truth", "blobs", (2,), "held-out"),
    Entry("breast-cancer", "data", "breast-cancer", (8, 16), "held-out"),
    Entry("diabetes", "data", "diabetes", (3,), "held-out"),
    Entry("fashion-mnist", "data", "fashion-mnist", (8, 32), "held-out"),
)


def entries(half: str = "both", names: list[str] | None = None) -> list[Entry]:
    """The suite's entries in ``half`` ("development", "held-out" or "both"), or those named."""
    chosen = [e for e in SUITE if half in ("both", e.half)]
    if names:
        known = {e.name: e for e in SUITE}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise SystemExit(f"unknown entries {unknown}; the suite has {sorted(known)}")
        chosen = [known[n] for n in names]
    return chosen


def fashion_subsample(out: Path) -> tuple[str, str]:
    """The first 5000 training images and the first 1000 official test images, as ``.npy``."""
    from mapa_vae.data import read

    folder = out / "data"
    train, test = folder / "fashion-5k-train.npy", folder / "fashion-test-1000.npy"
    if not (train.is_file() and test.is_file()):
        folder.mkdir(parents=True, exist_ok=True)
        source = read("fashion-mnist")
        shape = (-1, 28, 28)
        np.save(train, source.values[:FASHION_SUBSAMPLE].astype(np.uint8).reshape(shape))
        np.save(test, source.test[:FASHION_TEST].astype(np.uint8).reshape(shape))
    return str(train), str(test)


def run_config(entry: Entry, latent_dim: int, method: str, seed: int, out: Path):
    """The run's configuration under its kind's protocol (module docstring)."""
    from mapa_vae.data_fit import DataFitConfig
    from mapa_vae.experiment import RunConfig
    from mapa_vae.trainer import TrainingSettings

    if entry.kind == "truth":
        return RunConfig(dataset=entry.source, method=method, seed=seed, n_train=1000,
                         n_test=1000)
    if entry.source.startswith("fashion"):
        training = TrainingSettings(steps=10_000, batch_size=100, learning_rate=0.003,
                                    lr_schedule="cosine", log_every=1000)
        data, test = (fashion_subsample(out) if entry.source == "fashion-5k"
                      else ("fashion-mnist", None))
        return DataFitConfig(data=data, latent_dim=latent_dim, method=method, test_data=test,
                             n_test=FASHION_TEST, hidden=(256, 256), training=training,
                             seed=seed)
    training = TrainingSettings(steps=5000, batch_size=100, learning_rate=0.01,
                                lr_schedule="cosine", log_every=500)
    return DataFitConfig(data=entry.source, latent_dim=latent_dim, method=method,
                         hidden=(128, 128), training=training, seed=seed)


def _fit(job) -> dict:
    """One run in a worker process; its metrics, with the suite's labels."""
    config, folder, labels, threads, truth_cache = job
    torch.set_num_threads(threads)
    from mapa_vae.data_fit import fit
    from mapa_vae.experiment import run
    from mapa_vae.files import write_json

    metrics = (run(config, folder, truth_cache=truth_cache) if labels["kind"] == "truth"
               else fit(config, folder))
    metrics.update(labels)
    write_json(Path(folder) / "metrics.json", metrics)
    return metrics


def score_of(metrics: dict) -> tuple[float, float, bool]:
    """``(value, standard error, higher is better)``: test KL for a truth, test
    log-likelihood for data."""
    if "test_kl" in metrics:
        return metrics["test_kl"], metrics["test_kl_se"], False
    return metrics["test_log_likelihood"], metrics["test_log_likelihood_se"], True


def run(args) -> None:
    out = Path(args.out)
    jobs = []
    for entry in entries(args.half, args.entries):
        for d in entry.latent_dims:
            for method in args.methods:
                for seed in range(args.seeds):
                    folder = out / "runs" / f"{entry.name}-d{d}-{method}-seed{seed}"
                    if (folder / "metrics.json").is_file():
                        continue
                    labels = {"entry": entry.name, "half": entry.half, "kind": entry.kind,
                              "suite_latent_dim": d, "suite_method": method}
                    jobs.append((run_config(entry, d, method, seed, out), str(folder), labels,
                                 args.threads, str(out / "truth-cache")))
    jobs.sort(key=lambda job: job[2]["suite_method"] != "iwae")  # the longest first
    print(f"{len(jobs)} runs to do", flush=True)
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        for m in pool.map(_fit, jobs):
            value, se, _ = score_of(m)
            print(f"{m['entry']:<14} d_z={m['suite_latent_dim']:<3} {m['suite_method']:<14} "
                  f"seed {m['seed']}: {value:.4g} ± {se:.2g}", flush=True)


def summarize(rows: list[dict]) -> list[dict]:
    """Per entry, latent size and method: the median over seeds, its range, the median standard
    error; per entry and latent size, whether MAPA's median is at least the best baseline's."""
    groups: dict = {}
    for row in rows:
        key = (row["half"], row["entry"], row["suite_latent_dim"], row["suite_method"])
        groups.setdefault(key, []).append(score_of(row))
    table = []
    for (half, entry, d, method), scores in sorted(groups.items()):
        values = [v for v, _, _ in scores]
        table.append({"half": half, "entry": entry, "latent_dim": d, "method": method,
                      "seeds": len(values), "median": statistics.median(values),
                      "min": min(values), "max": max(values),
                      "se": statistics.median(se for _, se, _ in scores),
                      "higher_is_better": scores[0][2]})
    for row in table:
        if row["method"] != "mapa":
            continue
        rivals = [r for r in table if (r["half"], r["entry"], r["latent_dim"])
                  == (row["half"], row["entry"], row["latent_dim"]) and r["method"] in BASELINES]
        if rivals:
            sign = 1 if row["higher_is_better"] else -1
            best = max(sign * r["median"] for r in rivals)
            row["at_least_best_baseline"] = sign * row["median"] >= best
    return table


def report(args) -> None:
    out = Path(args.out)
    rows = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/metrics.json"))]
    for row in rows:
        row.pop("config", None)
    table = summarize(rows)
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["# The suite", "", "Median over seeds [range] ± the median standard error: test KL "
             "(nats, lower is better) for ground truths, test log-likelihood (nats per row, "
             "higher is better) for data. MAPA ≥ best: MAPA's median at least the best of the "
             "VAE's and IWAE's (S = 10).", ""]
    for half in HALVES:
        part = [r for r in table if r["half"] == half]
        if not part:
            continue
        lines += [f"## {half}", "", "| entry | d_z | method | seeds | median [range] ± s.e. | "
                  "MAPA ≥ best |", "|---|---|---|---|---|---|"]
        for r in part:
            verdict = {True: "yes", False: "no"}.get(r.get("at_least_best_baseline"), "")
            lines.append(f"| {r['entry']} | {r['latent_dim']} | {r['method']} | {r['seeds']} | "
                         f"{r['median']:.4g} [{r['min']:.4g}, {r['max']:.4g}] ± {r['se']:.2g} | "
                         f"{verdict} |")
        wins = [r["at_least_best_baseline"] for r in part if "at_least_best_baseline" in r]
        lines += ["", f"MAPA at least the best baseline on {sum(wins)} of {len(wins)}.", ""]
    text = "\n".join(lines)
    (out / "summary.md").write_text(text)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("list", "run", "report"))
    parser.add_argument("--half", choices=(*HALVES, "both"), default="development")
    parser.add_argument("--entries", nargs="+", default=None, metavar="NAME")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench-results/suite")
    args = parser.parse_args()
    if args.stage == "list":
        for e in SUITE:
            print(f"{e.half:<12} {e.kind:<6} {e.name:<15} d_z {e.latent_dims}  {e.source}")
        return
    {"run": run, "report": report}[args.stage](args)


if __name__ == "__main__":
    main()
