"""Fashion-MNIST at full size: MAPA against the VAE and IWAE (S = 10) under one protocol, both
likelihoods, scored by the one evaluator.

    python3 benchmarks/fashion.py select [--jobs 2] [--out bench-results/fashion]
    python3 benchmarks/fashion.py run [--latent-dims 2 8 32] [--seeds 3] [--jobs 2] [--out ...]
    python3 benchmarks/fashion.py report [--out bench-results/fashion]

Data: the 60 000 training images and the first 1000 of the 10 000 test images of the Debian
package ``dataset-fashion-mnist`` (:mod:`mapa_vae.data`): dequantised, ``(v + u) / 256``, for
the Gaussian likelihood (``σ`` learned); for the Bernoulli likelihood, the pixels' ``v / 255``
as probabilities, binarised afresh at each step of the methods that need binary draws, the test
images binarised once by a fixed seed.

Protocol (the same for every method): the MLP decoder ``d_z → 256 → 256 → 784`` (tanh; the
baselines' encoders mirror it), batches of 100, Adam with a cosine schedule over ``STEPS``
steps, each method's peak learning rate chosen by ``select``; MAPA at the library's defaults.
``select`` fits each method at ``d_z = 8`` with each rate of ``RATES`` on the first 55 000
training images and scores the first 500 of the last 5000 (the validation images; the test
images are never looked at), both likelihoods, seed 0; it keeps the best rate of each method and
likelihood, and fits the chosen protocol at ``d_z = 32`` on the same split to see whether
importance sampling's effective sample size collapses there (then ``run`` anneals at that size).
It writes ``protocol.json``.

``run`` fits every method, likelihood, latent size and seed on all 60 000 images under the
chosen protocol and scores the 1000 test images: quadrature up to ``d_z = 2``; above, importance
sampling from a proposal fitted to each image (2000 samples), or annealed importance sampling
from it (16 chains × 100 temperatures) where ``protocol.json`` says so. Each run is a model
folder (:mod:`mapa_vae.data_fit`) under ``OUT/runs/``; finished runs are kept, so the same
command resumes. A model no better than independent pixels (the pixels' own means and, for
the Gaussian, one shared ``σ``: ``baseline`` in the results) did not learn: the report flags it.

``report`` writes ``results.json`` and ``results.csv`` (one row per run, with the fields of a
model folder's metrics), ``summary.md`` (medians over seeds with their ranges and the median of
the runs' standard errors, and MAPA's paired difference from IWAE per seed) and
``fashion_ll.png`` (test log-likelihood against wall time and against network passes, per
method).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

METHODS = ("mapa", "vae", "iwae")
LIKELIHOODS = ("gaussian", "bernoulli")
RATES = (0.001, 0.003, 0.01)
STEPS = 10_000
HIDDEN = (256, 256)
N_TEST = 1000
N_VALIDATION = 500
VALIDATION_FROM = 55_000
#: The effective sample size (median over a run's images, of 2000) below which importance
#: sampling is taken to have collapsed and the evaluator anneals instead.
COLLAPSED_ESS = 20
ANNEAL_CHAINS, ANNEAL_STEPS = 16, 100


def _config(method, likelihood, latent_dim, seed, rate, data, test_data=None, n_test=None,
            anneal=False):
    from mapa_vae.data_fit import DataFitConfig
    from mapa_vae.trainer import TrainingSettings

    training = TrainingSettings(steps=STEPS, batch_size=100, learning_rate=rate,
                                lr_schedule="cosine", log_every=STEPS // 10)
    return DataFitConfig(data=data, latent_dim=latent_dim, method=method, likelihood=likelihood,
                         test_data=test_data, n_test=n_test, hidden=HIDDEN, training=training,
                         seed=seed, evaluator_samples=ANNEAL_CHAINS if anneal else 2000,
                         anneal_steps=ANNEAL_STEPS if anneal else 0)


def _fit(args):
    """One run in a worker: fit, score, write its folder; returns its metrics."""
    import torch

    config, out, threads = args
    torch.set_num_threads(threads)
    from mapa_vae.data_fit import fit

    start = time.perf_counter()
    metrics = fit(config, out)
    metrics["run_wall_seconds"] = time.perf_counter() - start
    from mapa_vae.files import write_json

    write_json(Path(out) / "metrics.json", metrics)
    return metrics


def _run_all(jobs_list, jobs: int, threads: int):
    """Run the ``(config, folder)`` pairs not yet finished, longest first; print each one's
    result as it ends."""
    todo = [(config, folder) for config, folder in jobs_list
            if not (Path(folder) / "metrics.json").is_file()]
    print(f"{len(jobs_list) - len(todo)} of {len(jobs_list)} runs already finished", flush=True)
    todo.sort(key=lambda job: (job[0].method != "iwae", -job[0].latent_dim))
    # fresh interpreters (spawn): forked workers inherit the parent's thread pools
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        for metrics in pool.map(_fit, [(c, f, threads) for c, f in todo]):
            print(f"{metrics['likelihood']:>9} d_z={metrics['latent_dim']:<3} "
                  f"{metrics['label']:<8} seed {metrics['seed']}: "
                  f"{metrics['test_log_likelihood']:.2f} ± {metrics['test_log_likelihood_se']:.2f}"
                  f" (ESS {metrics.get('test_median_ess', float('nan')):.0f}), "
                  f"{metrics['fit_wall_seconds']:.0f} s", flush=True)


def validation_split(out: Path) -> tuple[str, str]:
    """The validation split as two ``.npy`` files of raw pixels: the first 55 000 training
    images, and the first 500 of the last 5000."""
    from mapa_vae.data import read

    folder = out / "validation"
    train, held = folder / "train.npy", folder / "validation.npy"
    if not (train.is_file() and held.is_file()):
        folder.mkdir(parents=True, exist_ok=True)
        values = read("fashion-mnist").values.astype(np.uint8).reshape(-1, 28, 28)
        np.save(train, values[:VALIDATION_FROM])
        np.save(held, values[VALIDATION_FROM:VALIDATION_FROM + N_VALIDATION])
    return str(train), str(held)


def select(args) -> None:
    out = Path(args.out)
    train, held = validation_split(out)
    jobs = [(_config(m, lik, 8, 0, rate, train, held), out / "select" / f"{lik}-{m}-d8-{rate}")
            for lik in LIKELIHOODS for m in METHODS for rate in RATES]
    _run_all(jobs, args.jobs, args.threads)
    chosen, table = {}, []
    for lik in LIKELIHOODS:
        for m in METHODS:
            scores = {rate: _metrics(out / "select" / f"{lik}-{m}-d8-{rate}") for rate in RATES}
            best = max(RATES, key=lambda r: scores[r]["test_log_likelihood"])
            chosen[f"{lik}/{m}"] = best
            table += [{"likelihood": lik, "method": m, "rate": r,
                       "validation_log_likelihood": s["test_log_likelihood"],
                       "se": s["test_log_likelihood_se"], "sigma": s["sigma"]}
                      for r, s in scores.items()]
    probes = [(_config(m, lik, 32, 0, chosen[f"{lik}/{m}"], train, held),
               out / "select" / f"{lik}-{m}-d32-chosen") for lik in LIKELIHOODS for m in METHODS]
    _run_all(probes, args.jobs, args.threads)
    ess = {f"{lik}/{m}": _metrics(out / "select" / f"{lik}-{m}-d32-chosen")["test_median_ess"]
           for lik in LIKELIHOODS for m in METHODS}
    anneal = {"32": min(ess.values()) < COLLAPSED_ESS}
    protocol = {"steps": STEPS, "hidden": list(HIDDEN), "rates": chosen,
                "anneal": anneal, "d32_median_ess": ess, "validation": table}
    (out / "protocol.json").write_text(json.dumps(protocol, indent=2) + "\n")
    print(json.dumps({"rates": chosen, "anneal": anneal, "d32_median_ess": ess}, indent=2))


def _metrics(folder: Path) -> dict:
    return json.loads((Path(folder) / "metrics.json").read_text())


def run(args) -> None:
    out = Path(args.out)
    protocol = json.loads((out / "protocol.json").read_text())
    jobs = []
    for lik in LIKELIHOODS:
        for d in args.latent_dims:
            anneal = protocol["anneal"].get(str(d), False)
            for m in args.methods:
                rate = protocol["rates"][f"{lik}/{m}"]
                for seed in range(args.seeds):
                    config = _config(m, lik, d, seed, rate, "fashion-mnist", n_test=N_TEST,
                                     anneal=anneal)
                    jobs.append((config, out / "runs" / f"{lik}-d{d}-{m}-seed{seed}"))
    _run_all(jobs, args.jobs, args.threads)


def independent_pixels(likelihood: str) -> float:
    """The test log-likelihood per image of independent pixels fitted to the training images:
    each pixel's mean and, for the Gaussian, one shared ``σ`` (the likelihood every method
    uses)."""
    from mapa_vae.data import prepare

    data = prepare("fashion-mnist", likelihood, n_test=N_TEST, seed=0)
    mean = data.train.mean(axis=0)
    if likelihood == "gaussian":
        sigma = math.sqrt(((data.train - mean) ** 2).mean())
        sq = ((data.test - mean) ** 2).sum(axis=1)
        d = data.test.shape[1]
        log_p = -0.5 * sq / sigma**2 - d * math.log(sigma) - 0.5 * d * math.log(2 * math.pi)
    else:
        p = np.clip(mean, 1e-6, 1 - 1e-6)
        log_p = (data.test * np.log(p) + (1 - data.test) * np.log1p(-p)).sum(axis=1)
    return float(log_p.mean())


def report(args) -> None:
    out = Path(args.out)
    rows = []
    for folder in sorted((out / "runs").glob("*/")):
        if (folder / "metrics.json").is_file():
            m = _metrics(folder)
            m.pop("config", None)
            rows.append(m)
    baseline = {lik: independent_pixels(lik) for lik in LIKELIHOODS}
    for row in rows:
        row["baseline"] = baseline[row["likelihood"]]
        row["learned"] = row["test_log_likelihood"] > row["baseline"]
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    from mapa_vae.files import write_csv

    flat = [{k: v for k, v in row.items() if not isinstance(v, (dict, list))} for row in rows]
    write_csv(out / "results.csv", flat)
    (out / "summary.md").write_text(summary(rows, baseline))
    figure(rows, out / "fashion_ll.png")
    print(summary(rows, baseline))


def _median_range(values):
    return statistics.median(values), min(values), max(values)


def summary(rows: list[dict], baseline: dict) -> str:
    lines = ["# Fashion-MNIST: 60 000 training images, the first 1000 test images", "",
             "Test log-likelihood in nats per image (higher is better): the median over seeds "
             "[range], the median of the runs' standard errors across test images, bits per "
             "dimension (median), passes per step, the whole fit's wall time (median, seconds, "
             "setup included) and its setup.", "",
             "| likelihood | d_z | method | seeds | log-likelihood | [range] | s.e. | bits/dim | "
             "passes/step | fit s | setup s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    groups = {}
    for row in rows:
        groups.setdefault((row["likelihood"], row["latent_dim"], row["method"]), []).append(row)
    for (lik, d, m), runs in sorted(groups.items()):
        ll, lo, hi = _median_range([r["test_log_likelihood"] for r in runs])
        se = statistics.median(r["test_log_likelihood_se"] for r in runs)
        bits = statistics.median(r["test_bits_per_dim"] for r in runs)
        wall = statistics.median(r["fit_wall_seconds"] for r in runs)
        setup = statistics.median(r["setup_seconds"] for r in runs)
        flag = "" if all(r["learned"] for r in runs) else " (did not learn)"
        lines.append(f"| {lik} | {d} | {runs[0]['label']}{flag} | {len(runs)} | {ll:.2f} | "
                     f"[{lo:.2f}, {hi:.2f}] | {se:.2f} | {bits:.3f} | "
                     f"{runs[0]['passes_per_step']:.0f} | {wall:.0f} | {setup:.1f} |")
    lines += ["", "Independent pixels (each pixel's training mean; for the Gaussian one shared "
              "σ): " + ", ".join(f"{lik} {v:.2f}" for lik, v in baseline.items()) + " nats per "
              "image.", "", "MAPA minus IWAE (S = 10), per seed (the same test images): median "
              "[range] of the differences, and MAPA's fit wall time over the VAE's.", "",
              "| likelihood | d_z | MAPA − IWAE | [range] | MAPA wall / VAE wall |", "|---|---|---|---|---|"]
    for lik in LIKELIHOODS:
        for d in sorted({row["latent_dim"] for row in rows}):
            by = {m: {r["seed"]: r for r in groups.get((lik, d, m), [])}
                  for m in ("mapa", "vae", "iwae")}
            seeds = sorted(set(by["mapa"]) & set(by["iwae"]))
            if not seeds:
                continue
            diff = [by["mapa"][s]["test_log_likelihood"] - by["iwae"][s]["test_log_likelihood"]
                    for s in seeds]
            both = sorted(set(by["mapa"]) & set(by["vae"]))
            ratio = [by["mapa"][s]["fit_wall_seconds"] / by["vae"][s]["fit_wall_seconds"]
                     for s in both]
            med, lo, hi = _median_range(diff)
            wall = f"{statistics.median(ratio):.2f}" if ratio else "–"
            lines.append(f"| {lik} | {d} | {med:+.2f} | [{lo:+.2f}, {hi:+.2f}] | {wall} |")
    return "\n".join(lines) + "\n"


def figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted({row["latent_dim"] for row in rows})
    fig, axes = plt.subplots(len(LIKELIHOODS), 2 * len(dims), figsize=(4 * len(dims) * 2, 7),
                             squeeze=False)
    colours = {"mapa": "C0", "vae": "C1", "iwae": "C2"}
    for i, lik in enumerate(LIKELIHOODS):
        for j, d in enumerate(dims):
            for k, (key, label) in enumerate((("fit_wall_seconds", "fit wall time (s)"),
                                              ("total_passes", "network passes"))):
                ax = axes[i, 2 * j + k]
                for m in METHODS:
                    runs = [r for r in rows if (r["likelihood"], r["latent_dim"], r["method"])
                            == (lik, d, m)]
                    if runs:
                        ax.scatter([r[key] for r in runs],
                                   [r["test_log_likelihood"] for r in runs],
                                   color=colours[m], label=runs[0]["label"], s=18)
                ax.set_xlim(left=0)
                ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
                ax.set_xlabel(label)
                ax.set_title(f"{lik}, d_z = {d}", fontsize=9)
                if 2 * j + k == 0:
                    ax.set_ylabel("test log-likelihood (nats/image)")
                    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("select", "run", "report"))
    parser.add_argument("--latent-dims", type=int, nargs="+", default=[2, 8, 32])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="threads per worker (default 1)")
    parser.add_argument("--out", default="bench-results/fashion")
    args = parser.parse_args()
    {"select": select, "run": run, "report": report}[args.stage](args)


if __name__ == "__main__":
    main()
