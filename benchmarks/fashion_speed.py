"""What MAPA's setup, a training step and the evaluator cost on Fashion-MNIST's 60 000 images.

    python3 benchmarks/fashion_speed.py [--out bench-results/fashion_speed.json]

Each measurement runs in a fresh process (so that its peak memory is its own), on all 60 000
training images (Gaussian likelihood, dequantised), the benchmark's MLP decoder (256, 256):

* ``setup``: MAPA's setup (representation, weights, the codes' start or the atoms' attachment;
  ``setup_seconds_``) at ``d_z = 2, 8, 32``, and the process's peak resident memory;
* ``step``: milliseconds per training step, the median over 300 steps after 100, of MAPA, the
  VAE and IWAE (S = 10) with the MLP and with the convolutional decoder
  (:class:`mapa_vae.networks.ConvDecoder`), ``d_z = 8`` and 32;
* ``evaluator``: seconds per test image of the one evaluator (2000 importance samples from a
  proposal fitted to each image) on 64 test images, ``d_z = 8`` and 32, with its decoder
  passes per image, and of its annealed form (16 chains × 100 temperatures) at ``d_z = 32``.

Writes one JSON file and prints each result as it comes.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HIDDEN = (256, 256)


def _data():
    from mapa_vae.data import prepare

    return prepare("fashion-mnist", "gaussian", n_test=64, seed=0)


def setup(latent_dim: int) -> dict:
    from mapa_vae import MAPADensity

    data = _data()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    est = MAPADensity(latent_dim=latent_dim, hidden=HIDDEN, steps=1, log_every=1,
                      random_state=0).fit(data.train)
    return {"what": "setup", "latent_dim": latent_dim, "setup_seconds": est.setup_seconds_,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "peak_rss_before_fit_gib": before / 2**20, "n_neighbors": est.mapa_.n_neighbors_,
            "features": str(est._features(data.train)), "attachment": est.attachment_}


def step(method: str, decoder: str, latent_dim: int) -> dict:
    from mapa_vae.methods import make_estimator
    from mapa_vae.networks import ConvDecoder

    data = _data()
    module = ConvDecoder(latent_dim, (28, 28)) if decoder == "conv" else None
    est = make_estimator(method, latent_dim=latent_dim, hidden=HIDDEN, decoder=module,
                         steps=400, log_every=400, random_state=0)
    est.fit(data.train)
    trainer, times = est.trainer_, []
    trainer.config.steps = 800  # the same schedule's shape further on; timed step by step
    for until in range(401, 701):
        start = time.perf_counter()
        trainer.fit(until=until)
        times.append(time.perf_counter() - start)
    times.sort()
    return {"what": "step", "method": method, "decoder": decoder, "latent_dim": latent_dim,
            "ms_per_step": 1000 * times[len(times) // 2],
            "passes_per_step": est.passes_per_step_}


def evaluator(latent_dim: int, anneal: int) -> dict:
    from mapa_vae import MAPADensity

    data = _data()
    est = MAPADensity(latent_dim=latent_dim, hidden=HIDDEN, steps=2000, log_every=2000,
                      random_state=0).fit(data.train)
    samples = 16 if anneal else 2000
    start = time.perf_counter()
    estimate = est.log_likelihood(data.test, n_samples=samples, anneal_steps=anneal,
                                  random_state=0)
    seconds = time.perf_counter() - start
    return {"what": "evaluator", "latent_dim": latent_dim, "anneal_steps": anneal,
            "n_samples": samples, "seconds_per_image": seconds / len(data.test),
            "decoder_passes_per_image": estimate.decoder_passes / len(data.test),
            "median_ess": float(sorted(estimate.ess)[len(estimate.ess) // 2])}


JOBS = ([("setup", d) for d in (2, 8, 32)]
        + [("step", m, dec, d) for d in (8, 32) for dec in ("mlp", "conv")
           for m in ("mapa", "vae", "iwae")]
        + [("evaluator", 8, 0), ("evaluator", 32, 0), ("evaluator", 32, 100)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-results/fashion_speed.json")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a job, in a child
    args = parser.parse_args()
    if args.one is not None:
        name, *params = json.loads(args.one)
        print(json.dumps({"setup": setup, "step": step, "evaluator": evaluator}[name](*params)))
        return
    results = []
    for job in JOBS:
        done = subprocess.run([sys.executable, __file__, "--one", json.dumps(job)],
                              capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(results[-1], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
