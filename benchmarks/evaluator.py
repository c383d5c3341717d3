"""The one log-likelihood evaluator (``mapa_vae.marginal``) against known answers.

    python3 benchmarks/evaluator.py [--parts linear swiss-roll digits ais digits-samples]
                                    [--seeds 3] [--digits-steps 3000] [--high-latent-dim 16]
                                    [--digits-methods mapa vae iwae]
                                    [--threads 2] [--out bench-results/evaluator]

* ``linear``: the built-in ``linear-gaussian`` ground truth (``d_z = 8``, ``D = 64``, ``σ = 0.3``),
  200 fresh points per seed, against its closed form ``N(b, A Aᵀ + σ² I)``. Target: mean absolute
  error at most 0.05 nats per point, 200 points in at most 60 s on 2 cores.
* ``swiss-roll``: 200 fresh points per seed against quadrature (uniform prior).
* ``ais`` (not run by default): the evaluator with annealing (``anneal_steps``: annealed
  importance sampling with HMC transitions from the same fitted proposals, 16 chains × 100 or
  400 temperatures), on the linear-Gaussian truth against its closed form.
* ``digits-samples`` (not run by default): where no exact answer exists, how far the
  evaluator's 2000 samples per image are from 10 times as many, per method: VAE, IWAE (S = 10)
  and MAPA trained at ``--high-latent-dim`` (default 16) on the protocol of
  ``benchmarks/digits.py`` (5000 steps, learning rate 0.01 for every method), the first 100
  test images scored with 2000 and with 20 000 samples (the same fitted proposals). A log-mean
  of importance weights is biased low by about ``var(w) / (2 n)``; a method whose posteriors the
  proposals fit worse is under-scored more, and this measures by how much.
* ``digits``: VAE, IWAE (S = 10) and MAPA trained at ``d_z = 2`` on the digits protocol of
  ``benchmarks/digits.py`` (``--digits-steps`` steps, σ learned), their 297 test images scored
  by the evaluator against quadrature; the trained posteriors are where a single Gaussian
  proposal fails. Target: within 0.1 nats per point.

Quadrature references use 1024² nodes: the default 256² grid is itself off by up to 1 nat on a
trained MAPA decoder's narrow posteriors (its difference from 1024² is reported as
``quadrature_256_mean_abs_difference`` and ``..._max_...``).

Every part is measured with the evaluator's defaults and, to show what the restarts buy, with a
single fit (``restarts=1``). Reported per case: mean absolute error, mean (signed) error, the
largest error, the median Monte-Carlo standard error and effective sample size, decoder passes
and seconds. Writes ``DIR/results.json`` and ``DIR/summary.md``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = {"default": {}, "one fit": {"restarts": 1}}


REFERENCE_NODES = 1024


def _quadrature(decode, prior, sigma, X) -> tuple[np.ndarray, dict]:
    """The 1024² reference and how far the default 256² grid is from it."""
    from mapa_vae.evaluation import log_marginal

    def no_grad(z):
        with torch.no_grad():
            return decode(z)

    fine = log_marginal(no_grad, prior, sigma, X, REFERENCE_NODES)
    coarse = log_marginal(no_grad, prior, sigma, X)
    return fine, {"quadrature_256_mean_abs_difference": float(np.abs(coarse - fine).mean()),
                  "quadrature_256_max_abs_difference": float(np.abs(coarse - fine).max())}


def _compare(estimate, reference) -> dict:
    err = estimate.log_prob - reference
    return {"n_points": int(err.size), "mean_abs_error": float(np.abs(err).mean()),
            "mean_error": float(err.mean()), "max_abs_error": float(np.abs(err).max()),
            "share_within_0.1": float((np.abs(err) <= 0.1).mean()),
            "median_se": float(np.median(estimate.se)),
            "median_ess": float(np.median(estimate.ess)), "n_samples": estimate.n_samples,
            "decoder_passes": int(estimate.decoder_passes), "seconds": float(estimate.seconds)}


def ground_truth_part(name: str, seeds: int) -> list[dict]:
    from mapa_vae import datasets

    truth = datasets.get(name)
    rows = []
    for seed in range(seeds):
        X, _ = truth.sample(200, seed=1000 + seed)
        start = time.perf_counter()
        extra = {}
        if truth.latent_dim <= 2:
            reference, extra = _quadrature(truth.decode, truth.prior, truth.sigma, X)
            how = f"quadrature ({REFERENCE_NODES}² nodes)"
        else:
            reference = truth.log_prob(X)
            how = "closed form"
        ref_seconds = time.perf_counter() - start
        for variant, options in VARIANTS.items():
            estimate = truth.log_prob_estimate(X, seed=seed, **options)
            rows.append({"part": name, "model": name, "seed": seed, "variant": variant,
                         "reference": how, "reference_seconds": ref_seconds, **extra,
                         **_compare(estimate, reference)})
            print(rows[-1], flush=True)
    return rows


AIS_SETTINGS = {"annealed, 16 chains x 100 temperatures": (16, 100),
                "annealed, 16 chains x 400 temperatures": (16, 400)}


def ais_part(seeds: int) -> list[dict]:
    """The evaluator with annealing (``anneal_steps``: chains started from the same fitted
    proposals, annealed to the posterior by HMC, 5 leapfrog steps per temperature) on the
    linear-Gaussian truth, 200 fresh points per seed, against its closed form."""
    from mapa_vae import datasets

    truth = datasets.get("linear-gaussian")
    rows = []
    for seed in range(seeds):
        X, _ = truth.sample(200, seed=1000 + seed)
        reference = truth.log_prob(X)
        for variant, (chains, temperatures) in AIS_SETTINGS.items():
            estimate = truth.log_prob_estimate(X, seed=seed, n_samples=chains,
                                               anneal_steps=temperatures)
            rows.append({"part": "ais", "model": "linear-gaussian", "seed": seed,
                         "variant": variant, "reference": "closed form",
                         **_compare(estimate, reference)})
            print(rows[-1], flush=True)
    return rows


def digits_part(seeds: int, steps: int, methods: list[str]) -> list[dict]:
    from digits import digits, protocol_params

    from mapa_vae.methods import make_estimator
    from mapa_vae.methods import METHODS
    from mapa_vae.networks import differentiable_decoder

    rows = []
    for seed in range(seeds):
        X, X_test = digits(seed)
        for method in methods:
            params = protocol_params(method, 2, seed, steps, METHODS[method].learning_rate)
            est = make_estimator(method, **params).fit(X)
            start = time.perf_counter()
            model = est.model_
            reference, extra = _quadrature(differentiable_decoder(model.decoder), model.prior,
                                           est.sigma_, X_test)
            ref_seconds = time.perf_counter() - start
            for variant, options in VARIANTS.items():
                estimate = est.model_.log_prob_estimate(X_test, seed=seed, **options)
                rows.append({"part": "digits", "model": f"digits d_z=2 {method}", "seed": seed,
                             "variant": variant,
                             "reference": f"quadrature ({REFERENCE_NODES}² nodes)",
                             "reference_seconds": ref_seconds, "steps": steps, **extra,
                             "sigma": est.sigma_, "test_log_likelihood": float(reference.mean()),
                             **_compare(estimate, reference)})
                print(rows[-1], flush=True)
    return rows


def digits_samples_part(seeds: int, latent_dim: int, methods: list[str], n_images: int = 100,
                        base: int = 2000, factor: int = 10) -> list[dict]:
    """The evaluator at ``base`` samples against ``factor × base`` on trained digits models."""
    from digits import digits, protocol_params

    from mapa_vae.methods import make_estimator

    rows = []
    for seed in range(seeds):
        X, X_test = digits(seed)
        X_test = X_test[:n_images]
        for method in methods:
            params = protocol_params(method, latent_dim, seed, 5000, 0.01)
            est = make_estimator(method, **params).fit(X)
            reference = est.model_.log_prob_estimate(X_test, seed=seed, n_samples=factor * base)
            estimate = est.model_.log_prob_estimate(X_test, seed=seed, n_samples=base)
            rows.append({"part": "digits-samples", "model": f"digits d_z={latent_dim} {method}",
                         "seed": seed, "variant": f"{base} samples",
                         "reference": f"the same with {factor * base} samples",
                         "sigma": est.sigma_, "reference_log_likelihood":
                         float(reference.log_prob.mean()),
                         "reference_median_ess": float(np.median(reference.ess)),
                         "reference_seconds": reference.seconds,
                         **_compare(estimate, reference.log_prob)})
            print(rows[-1], flush=True)
    return rows


def summary(rows: list[dict], threads: int) -> str:
    lines = ["# The one log-likelihood evaluator against known answers", "",
             f"torch threads: {threads}. Medians over seeds [range]; errors in nats per point; "
             "the evaluator's defaults (8 restarts) and a single fit.", "",
             "| model | reference | variant | mean abs. error | mean error | max abs. error | "
             "within 0.1 | median se | median ESS | passes / point | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = []
    for r in rows:
        if (r["model"], r["variant"]) not in keys:
            keys.append((r["model"], r["variant"]))
    for model, variant in keys:
        group = [r for r in rows if r["model"] == model and r["variant"] == variant]

        def med(key, fmt=".3f"):
            values = [r[key] for r in group]
            text = f"{np.median(values):{fmt}}"
            if len(values) > 1:
                text += f" [{min(values):{fmt}}, {max(values):{fmt}}]"
            return text

        lines.append(f"| {model} | {group[0]['reference']} | {variant} | "
                     f"{med('mean_abs_error')} | {med('mean_error')} | {med('max_abs_error')} | "
                     f"{med('share_within_0.1', '.2f')} | {med('median_se')} | "
                     f"{med('median_ess', '.0f')} | "
                     f"{np.median([r['decoder_passes'] / r['n_points'] for r in group]):,.0f} | "
                     f"{med('seconds', '.1f')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["linear", "swiss-roll", "digits"],
                        choices=["linear", "swiss-roll", "digits", "ais", "digits-samples"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--digits-seeds", type=int, default=1)
    parser.add_argument("--digits-steps", type=int, default=3000)
    parser.add_argument("--digits-methods", nargs="+", default=["mapa", "vae", "iwae"])
    parser.add_argument("--high-latent-dim", type=int, default=16,
                        help="the latent dimension of the digits-samples part")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench-results/evaluator")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from mapa_vae.files import write_json, write_text

    out = Path(args.out)
    rows = []
    start = time.perf_counter()
    for part in args.parts:
        if part == "linear":
            rows += ground_truth_part("linear-gaussian", args.seeds)
        elif part == "swiss-roll":
            rows += ground_truth_part("swiss-roll", args.seeds)
        elif part == "ais":
            rows += ais_part(args.seeds)
        elif part == "digits-samples":
            rows += digits_samples_part(args.digits_seeds, args.high_latent_dim,
                                        args.digits_methods)
        else:
            rows += digits_part(args.digits_seeds, args.digits_steps, args.digits_methods)
        text = summary(rows, args.threads)
        write_json(out / "results.json", {"args": vars(args), "runs": rows,
                                          "seconds": time.perf_counter() - start})
        write_text(out / "summary.md", text)
    print(text)


if __name__ == "__main__":
    main()
