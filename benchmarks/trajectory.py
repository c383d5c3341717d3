"""Digits along training: the one evaluator's test and training log-likelihood of each method's
model every few hundred steps, and of the model whose weights are averaged over the late steps.

    python3 benchmarks/trajectory.py [--latent-dims 16 32] [--seeds 1] [--methods mapa iwae]
                                     [--every 500] [--average-from 0.5 0.75] [--n-samples 1000]
                                     [--train-images 200] [--jobs 2]
                                     [--out bench-results/trajectory]

The protocol of ``benchmarks/digits.py`` (same images and split, decoder, 5000 steps, batch
100, cosine schedule, peak learning rate 0.01 for every method, ``σ`` learned; MAPA at its
defaults). Every
``--every`` steps the model (decoder and ``σ``) is copied, outside the timed fit; after the fit
each copy is scored by the one evaluator (``--n-samples`` importance samples per image) on the
297 test images and on the first ``--train-images`` training images. Whether one method
generalises worse than another from early on, or only once it starts to over-fit, shows here.

For each fraction ``a`` in ``--average-from`` the copies from step ``a · steps`` to the last
are averaged parameter by parameter (Polyak averaging of the whole model, ``log σ`` included)
and that model is scored the same way: a regulariser open to every method alike, no passes.

Writes ``DIR/results.json`` (one row per run), ``DIR/summary.md`` (medians over seeds
[range]) and ``DIR/trajectory.png`` (test and training log-likelihood against the step, one
panel per latent size).
"""
from __future__ import annotations

import argparse
import copy
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np

STEPS = 5000
LEARNING_RATE = 0.01  # the digits protocol's, for every method (the VAE's 0.03 collapses)


def averaged(states: list[dict]) -> dict:
    """The parameter-by-parameter mean of model states (non-float entries from the last)."""
    return {k: sum(s[k] for s in states) / len(states) if states[-1][k].is_floating_point()
            else states[-1][k] for k in states[-1]}


def one_run(method: str, latent_dim: int, seed: int, every: int, average_from: list[float],
            n_samples: int, train_images: int) -> dict:
    import torch

    from digits import digits, protocol_params
    from select_setting import held_out_log_likelihood
    from mapa_vae.methods import make_estimator

    torch.set_num_threads(1)
    X, X_test = digits(seed)
    params = protocol_params(method, latent_dim, seed, STEPS, LEARNING_RATE)
    params.update(log_every=every)
    states = {}

    def keep(step, model):
        states[step] = copy.deepcopy(model.state_dict())
        return {}

    est = make_estimator(method, **params).fit(X, monitor=keep)
    model = est.model_

    def score(state) -> dict:
        model.load_state_dict(state)
        test = held_out_log_likelihood(est, X_test, seed, n_samples)
        train = held_out_log_likelihood(est, X[:train_images], seed, n_samples)
        return {"test": float(test.mean()),
                "test_se": float(test.std(ddof=1) / np.sqrt(len(test))),
                "train": float(train.mean()), "sigma": float(model.likelihood.sigma.detach())}

    steps = sorted(states)
    return {"method": method, "latent_dim": latent_dim, "seed": seed,
            "steps": {str(s): score(states[s]) for s in steps},
            "averaged": {str(a): score(averaged([states[s] for s in steps if s >= a * STEPS]))
                         for a in average_from}}


def summary(rows: list[dict], args) -> str:
    def spread(values):
        return f"{np.median(values):.1f} [{min(values):.1f}, {max(values):.1f}]"

    steps = list(rows[0]["steps"])
    columns = steps + [f"mean from {a}" for a in args.average_from]
    lines = ["# Digits along training", "",
             f"Test log-likelihood (training images' in brackets: median of the first "
             f"{args.train_images}), one evaluator with {args.n_samples} samples per image, "
             f"nats per image, median over {args.seeds} seed(s) [range of the test score].", "",
             "| d_z | method | " + " | ".join(columns) + " |", "|---" * (2 + len(columns)) + "|"]
    for d in args.latent_dims:
        for method in args.methods:
            group = [r for r in rows if r["latent_dim"] == d and r["method"] == method]
            scores = [[r["steps"][s] for r in group] for s in steps]
            scores += [[r["averaged"][str(a)] for r in group] for a in args.average_from]
            lines.append(f"| {d} | {method} | " + " | ".join(
                f"{spread([c['test'] for c in cell])} ({np.median([c['train'] for c in cell]):.1f})"
                for cell in scores) + " |")
    return "\n".join(lines) + "\n"


def figure(rows: list[dict], args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.latent_dims), figsize=(5 * len(args.latent_dims), 3.8),
                             squeeze=False)
    for ax, d in zip(axes[0], args.latent_dims):
        for colour, method in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"],
                                  args.methods):
            group = [r for r in rows if r["latent_dim"] == d and r["method"] == method]
            steps = [int(s) for s in group[0]["steps"]]
            for part, style in (("test", "-"), ("train", "--")):
                values = np.median([[r["steps"][str(s)][part] for s in steps] for r in group], 0)
                ax.plot(steps, values, style, color=colour, label=f"{method}, {part}")
        ax.set(title=f"digits, latent dimension {d}", xlabel="step",
               ylabel="log-likelihood, nats per image")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main() -> None:
    from digits import METHODS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent-dims", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=["mapa", "iwae"])
    parser.add_argument("--every", type=int, default=500, help="steps between copies scored")
    parser.add_argument("--average-from", type=float, nargs="*", default=[0.5, 0.75],
                        help="fractions of training from which the copies are averaged")
    parser.add_argument("--n-samples", type=int, default=1000,
                        help="importance samples per image of the one evaluator")
    parser.add_argument("--train-images", type=int, default=200,
                        help="the first N training images scored beside the test images")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="bench-results/trajectory")
    args = parser.parse_args()
    if any(d <= 2 for d in args.latent_dims):
        parser.error("--latent-dims: the one evaluator scores latent sizes above 2")
    if not 0 < args.every <= STEPS or STEPS % args.every:
        parser.error(f"--every must divide the {STEPS} steps")
    if any(not 0 <= a < 1 for a in args.average_from):
        parser.error("--average-from: fractions of training in [0, 1)")
    if not 2 <= args.train_images <= 1500:
        parser.error("--train-images: 2 to 1500 (the training images)")
    from mapa_vae.files import check_output_folder, save_figure, write_json, write_text

    out = check_output_folder(args.out)
    jobs = [(m, d, s, args.every, args.average_from, args.n_samples, args.train_images)
            for d in args.latent_dims for m in args.methods for s in range(args.seeds)]
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        rows = list(pool.map(one_run, *zip(*jobs)))
    text = summary(rows, args)
    write_json(out / "results.json", {"args": vars(args), "runs": rows})
    write_text(out / "summary.md", text)
    save_figure(figure(rows, args), out / "trajectory.png")
    print(text)


if __name__ == "__main__":
    main()
