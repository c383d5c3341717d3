"""Regularisers measured against MAPA's over-fitting on digits: a graph penalty on the per-index
codes, and the learned ``σ`` rescaled after training.

    python3 benchmarks/code_penalty.py [--latent-dims 12 16 20 32] [--seeds 3]
                                       [--strengths 0 3]
                                       [--baselines iwae] [--sigma-scales 1 1.1 1.2]
                                       [--jobs 2] [--out bench-results/code-penalty]

The protocol of ``benchmarks/digits.py`` (same images, split, decoder, 5000 steps, learning rate
0.01, ``σ`` learned), MAPA with its defaults, its codes tied **through the whole run** at
strength ``λ`` (``MAPADensity(code_tying=λ)`` ties them from half-way; here from the first
step): its minibatch objective is the bound minus

    λ/2 · mean over the minibatch of ‖μ_n − sg(μ̄_n)‖²,    μ̄_n = (1/5) Σ_{m ∈ nb(n)} μ_m,

``nb(n)`` the 5 nearest training images of image ``n`` in MAPA's own representation (the first
``d_z`` whitened principal components; data only, computed once), ``sg`` no gradient: each drawn
code is pulled toward the mean of its neighbours' codes, as an encoder would map similar images
to similar codes. ``λ = 0`` is MAPA with free codes (``code_tying=0``, the default before the
tying). The penalty is not part of any bound; what it buys is measured by the one evaluator
only. The same penalty-free fit of ``--baselines`` (IWAE S = 10 by default) sits beside it.

Every fitted model is scored on the 297 test images and its first 297 training images by the
one evaluator (2000 samples per image), once with each ``σ · c`` for ``c`` in
``--sigma-scales``: how much of the train − test gap the learned ``σ`` carries, for every method
alike.

Writes ``DIR/results.json`` (one row per run) and ``DIR/summary.md`` (medians over seeds
[range]).
"""
from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def tied_throughout(strength: float, **params):
    """``MAPADensity(code_tying=strength, **params)`` with the codes tied from the first step
    instead of from half-way (the library's :class:`~mapa_vae.schedules.CodeTying`, started at
    step 0); ``strength = 0``: free codes."""
    from mapa_vae.estimators import MAPADensity
    from mapa_vae.schedules import CodeTying

    class TiedThroughout(MAPADensity):
        def _callbacks(self, objective):
            return [CodeTying(objective, strength, 0) if isinstance(c, CodeTying) else c
                    for c in super()._callbacks(objective)]

    return TiedThroughout(code_tying=strength, **params)


def one_run(method: str, latent_dim: int, seed: int, strength: float,
            sigma_scales: list[float], scored: int = 297) -> dict:
    import torch

    from digits import digits, protocol_params
    from select_setting import held_out_log_likelihood
    from mapa_vae.methods import make_estimator

    torch.set_num_threads(1)
    X, X_test = digits(seed)
    params = protocol_params(method, latent_dim, seed, 5000, 0.01)
    start = time.perf_counter()
    if method == "mapa":
        est = tied_throughout(strength, **params)
    else:
        est = make_estimator(method, **params)
    est.fit(X)
    row = {"method": method, "latent_dim": latent_dim, "seed": seed,
           "strength": strength if method == "mapa" else None,
           "sigma": est.sigma_, "fit_wall_seconds": time.perf_counter() - start, "scores": {}}
    model = est.model_
    learned = model.likelihood.log_sigma.data.clone()
    for c in sigma_scales:
        model.likelihood.log_sigma.data = learned + float(np.log(c))
        test = held_out_log_likelihood(est, X_test, seed, 2000)
        train = held_out_log_likelihood(est, X[:scored], seed, 2000)
        row["scores"][str(c)] = {"test": float(test.mean()),
                                 "test_se": float(test.std(ddof=1) / np.sqrt(len(test))),
                                 "train": float(train.mean())}
    model.likelihood.log_sigma.data = learned
    return row


def summary(rows: list[dict], scales: list[float]) -> str:
    def spread(values):
        return f"{np.median(values):.1f} [{min(values):.1f}, {max(values):.1f}]"

    lines = ["| d_z | method | λ | σ | " + " | ".join(
        f"test, σ × {c} | train − test, σ × {c}" for c in scales) + " | fit s |",
        "|---" * (5 + 2 * len(scales)) + "|"]
    keys = sorted({(r["latent_dim"], r["method"] != "mapa", r["method"], r["strength"] or 0)
                   for r in rows})
    for d, _, method, strength in keys:
        group = [r for r in rows if r["latent_dim"] == d and r["method"] == method
                 and (r["strength"] or 0) == strength]
        cells = []
        for c in scales:
            scores = [r["scores"][str(c)] for r in group]
            cells += [spread([s["test"] for s in scores]),
                      spread([s["train"] - s["test"] for s in scores])]
        lines.append(f"| {d} | {method} | {strength if method == 'mapa' else '–'} | "
                     f"{np.median([r['sigma'] for r in group]):.3f} | " + " | ".join(cells)
                     + f" | {spread([r['fit_wall_seconds'] for r in group])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent-dims", type=int, nargs="+", default=[12, 16, 20, 32])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.0, 3.0],
                        help="λ of the codes' tying through the whole run (0: free codes)")
    parser.add_argument("--baselines", nargs="*", default=["iwae"], choices=["vae", "iwae"])
    parser.add_argument("--sigma-scales", type=float, nargs="+", default=[1.0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="bench-results/code-penalty")
    args = parser.parse_args()
    if any(d <= 2 for d in args.latent_dims):
        parser.error("--latent-dims: the codes are Gaussian above d_z = 2; give sizes above 2")
    if any(s < 0 for s in args.strengths):
        parser.error("--strengths must be non-negative")
    if any(c <= 0 for c in args.sigma_scales):
        parser.error("--sigma-scales must be positive")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [("mapa", d, seed, s) for d in args.latent_dims for seed in range(args.seeds)
            for s in args.strengths]
    jobs += [(m, d, seed, 0.0) for d in args.latent_dims for seed in range(args.seeds)
             for m in args.baselines]
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(one_run, m, d, seed, s, args.sigma_scales)
                   for m, d, seed, s in jobs]
        rows = []
        for (m, d, seed, s), future in zip(jobs, futures):
            rows.append(future.result())
            c = str(args.sigma_scales[0])
            print(f"{m} d_z={d} seed={seed} λ={s}: test {rows[-1]['scores'][c]['test']:.2f}",
                  flush=True)
    from mapa_vae.files import write_json, write_text

    text = summary(rows, args.sigma_scales)
    write_json(out / "results.json", rows)
    write_text(out / "summary.md", text)
    print(text)


if __name__ == "__main__":
    main()
