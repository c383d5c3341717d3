"""One whole fit on digits under ``benchmarks/digits.py``'s protocol, timed; for timing one
method's whole process against another's (MAPA against the VAE) with a paired timer:

    OMP_NUM_THREADS=1 python3 benchmarks/fit_time.py mapa --latent-dim 2 --seed 0

Prints the fit's wall seconds (``make_estimator(...).fit(X)``, setup included, one thread).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method")
    parser.add_argument("--latent-dim", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--extra", nargs="+", default=[], metavar="NAME=VALUE",
                        help="further estimator settings, VALUE as JSON where it parses "
                             "(e.g. code_smoothing=null)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    from select_setting import parse_settings

    extra = parse_settings(args.extra, parser, "--extra")
    import torch

    from digits import digits, protocol_params

    from mapa_vae.methods import make_estimator

    torch.set_num_threads(1)
    X, _ = digits(args.seed)
    params = protocol_params(args.method, args.latent_dim, args.seed, args.steps,
                             args.learning_rate)
    estimator = make_estimator(args.method, **{**params, **extra})
    start = time.perf_counter()
    estimator.fit(X)
    seconds = time.perf_counter() - start
    print(f"{args.method} d_z={args.latent_dim} seed {args.seed}: fit {seconds:.2f} s")


if __name__ == "__main__":
    main()
