"""Command-line interface: ``mapa-vae demo`` (MAPA against the true posterior), ``mapa-vae fit``
(train one method on a ground truth and score it; ``--device``, and ``--distributed`` under
``torchrun``), ``mapa-vae bench`` (every dataset × method × seed, tables and figures) and
``mapa-vae figures`` (the paper's figures that need no training)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__, datasets
from .files import check_output_folder
from .trainer import LR_SCHEDULES, TrainingDiverged, TrainingSettings


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def demo(args) -> tuple[dict, bool]:
    """Run the demo experiment (:mod:`mapa_vae.demo`): MAPA against the true posterior."""
    from .demo import DemoConfig, run

    config = DemoConfig(dataset=args.dataset, twin=args.twin, n_train=args.n_train,
                        n_test=args.n_test, n_neighbors=args.n_neighbors,
                        estimate_bandwidth=args.estimate_bandwidth, seed=args.seed)
    return run(config, args.out), True


def _print_summary(summary: dict, out: str) -> None:
    print(f"dataset {summary['dataset']}: N = {summary['n_train']}, "
          f"h = {summary['bandwidth']:.4g} ({summary['bandwidth_rule']}), "
          f"k = {summary['n_neighbors']}, fit {summary['fit_seconds']:.3f} s, "
          f"truncated mass ≤ {summary['truncated_mass_max']:.2e}")
    print(f"{'posteriors compared':<22}{'mean TV':>10}{'mean rank corr.':>17}")
    for name, row in summary["posterior_comparison"].items():
        print(f"{name:<22}{row['total_variation']:>10.3f}{row['rank_correlation']:>17.3f}")
    print(f"wrote {Path(out) / 'summary.json'} and {Path(out) / 'mapa.png'}")


#: ``fit``'s options that only MAPA takes, passed to it as settings of the same name, and what
#: each does (for the error when another method is asked for).
_MAPA_SETTINGS = {
    "effective_neighbours": "sets MAPA's kernel width",
    "code_learning_rate": "sets the rate of MAPA's codes",
    "importance_samples": "sets the draws of MAPA's Gaussian codes",
    "code_tying": "ties MAPA's Gaussian codes",
    "code_smoothing": "smooths the targets of MAPA's Gaussian codes",
    "code_freeze_at": "fixes MAPA's Gaussian codes",
    "code_mean_rate": "sets the steps of MAPA's Gaussian codes' means",
    "code_start": "sets where MAPA's Gaussian codes start",
}


def fit(args) -> tuple[dict, bool]:
    """Train one method on a ground truth; write metrics, history, checkpoint and a figure. In a
    distributed fit every rank trains the same model and rank 0 alone writes and reports."""
    from . import methods
    from .experiment import RunConfig, run

    device, writer = args.device, True
    if args.distributed:
        from .distributed import init_from_environment

        shard, device = init_from_environment(args.device)
        writer = shard.rank == 0
    training = TrainingSettings(steps=args.steps, batch_size=args.batch_size,
                                learning_rate=args.learning_rate, lr_schedule=args.lr_schedule,
                                log_every=min(args.log_every, args.steps))
    extra = {}
    for name, what in _MAPA_SETTINGS.items():
        value = getattr(args, name)
        if value is None:
            continue
        if methods.family(args.method) != "mapa":
            flag = "--" + name.replace("_", "-")
            lacks = "has no kernel" if name == "effective_neighbours" else "has none"
            raise ValueError(f"{flag} {what}; {args.method} {lacks}")
        extra[name] = (value or None) if name == "code_smoothing" else value  # 0: off
    config = RunConfig(dataset=args.dataset, method=args.method, samples=args.samples,
                       twin=args.twin, n_train=args.n_train, n_test=args.n_test,
                       n_train_kl=args.train_kl, training=training,
                       learn_sigma=args.learn_sigma, init=args.init, seed=args.seed,
                       eval_every=args.eval_every, n_eval=args.n_eval, device=device,
                       distributed=args.distributed, dtype=args.dtype, extra=extra)
    return run(config, args.out if writer else None, progress=writer and not args.quiet), writer


def _print_fit(metrics: dict, out: str) -> None:
    print(f"{metrics['dataset']}, {metrics['label']}, seed {metrics['seed']}: "
          f"{metrics['config']['steps']} steps; setup {metrics['setup_seconds']:.1f} s, training "
          f"{metrics['train_seconds']:.1f} s")
    rows = [("test KL (nats)", f"{metrics['test_kl']:.4f} ± {metrics['test_kl_se']:.4f}"),
            ("mean log p_θ(x), test", f"{metrics['test_log_prob']:.4f}"),
            ("mean log p_true(x), test", f"{metrics['true_log_prob']:.4f}"),
            ("final objective", f"{metrics['final_objective']:.4f}"),
            ("network passes per step", f"{metrics['passes_per_step']:.1f}"),
            ("network passes in all", f"{metrics['total_passes']:,}"),
            ("sigma", f"{metrics['sigma']:.4g} (true {metrics['true_sigma']:.4g})")]
    if "train_kl" in metrics:
        rows.insert(1, (f"train KL ({metrics['config']['n_train_kl']} points)",
                        f"{metrics['train_kl']:.4f} ± {metrics['train_kl_se']:.4f}"))
    if "gap" in metrics:
        rows.append(("MAPA bound / its gap", f"{metrics['bound']:.4f} / {metrics['gap']:.4f}"))
    elif "bound" in metrics:
        rows.append(("MAPA bound", f"{metrics['bound']:.4f}"))
    if "ppca_isotropy_pvalue" in metrics:  # the codes started at the data's PPCA posterior
        p = metrics["ppca_isotropy_pvalue"]
        rows.append(("PPCA is the model, p", "(test does not apply)" if p is None else f"{p:.3g}"))
    for name, value in rows:
        print(f"  {name:<26}{value}")
    print(f"wrote metrics.json, history.csv, checkpoint.pt and fit.png in {out}")


def bench(args) -> tuple[str, bool]:
    """Run the benchmark (resumable) and write its results, summary and figures."""
    from .bench import QUICK, BenchConfig, bench as run_bench

    settings = dict(QUICK) if args.quick else {}
    for key in ("datasets", "methods", "seeds", "first_seed", "steps", "batch_size",
                "learning_rate", "lr_schedule", "n_train", "n_test", "n_train_kl", "eval_every",
                "jobs", "device"):
        value = getattr(args, key)
        if value is not None:
            settings[key] = value
    summary = run_bench(BenchConfig.from_settings(**settings), args.out,
                        progress=not args.quiet)
    if not args.no_paper_figures:
        from .paper_figures import paper_figures

        paper_figures(args.out)
    return summary, True


def _print_bench(summary: str, out: str) -> None:
    print(summary)
    print(f"wrote results.json, results.csv, summary.md and figures in {out}")


def figures(args) -> tuple[list, bool]:
    """Write the paper's figures (1, 3, 4, 5) from the ground truths and MAPA."""
    from .paper_figures import paper_figures

    return paper_figures(args.out, n_train=args.n_train, seed=args.seed), True


def _print_figures(paths: list, out: str) -> None:
    for path in paths:
        print(f"wrote {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mapa-vae", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mapa-vae {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("demo", help="compute MAPA on a built-in dataset and compare it with "
                                         "the true posterior")
    p.add_argument("--dataset", default="circle",
                   help=f"one of {', '.join(datasets.names(include_all=True))}, or "
                        f"path/to/file.py:object")
    p.add_argument("--twin", action="store_true", help="use the dataset's non-identifiable twin")
    p.add_argument("--n-train", type=_positive_int, default=1000)
    p.add_argument("--n-test", type=_positive_int, default=200)
    p.add_argument("--n-neighbors", type=_positive_int, default=None,
                   help="neighbours kept per row (default: all, the exact dense form)")
    p.add_argument("--estimate-bandwidth", action="store_true",
                   help="choose h from the data (leave-one-out) instead of h = sqrt(2) sigma")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/demo", help="output folder")
    p.set_defaults(run=demo, report=_print_summary)

    from .atoms import METHODS as ATTACHMENTS
    from .methods import METHODS

    training = TrainingSettings()
    with_samples = ", ".join(f"{m.name} (default {m.samples})" for m in METHODS.values()
                             if m.samples)

    p = commands.add_parser("fit", help="train one method on a ground truth and score its density",
                            description="Train one method on samples of a ground truth, then "
                                        "score the continuous model by its test KL.")
    p.add_argument("--dataset", default="circle",
                   help=f"one of {', '.join(datasets.names(include_all=True))}, or "
                        f"path/to/file.py:object")
    p.add_argument("--twin", action="store_true", help="use the dataset's non-identifiable twin")
    p.add_argument("--method", default="mapa", choices=list(METHODS), metavar="METHOD",
                   help="; ".join(f"{m.name}: {m.summary}" for m in METHODS.values())
                   + " (default mapa)")
    p.add_argument("--samples", type=_positive_int, default=None,
                   help=f"S, for {with_samples}")
    p.add_argument("--steps", type=_positive_int, default=training.steps,
                   help=f"default {training.steps}")
    p.add_argument("--batch-size", type=_positive_int, default=training.batch_size,
                   help=f"default {training.batch_size}")
    p.add_argument("--learning-rate", type=float, default=None,
                   help="Adam's peak learning rate (default: the method's protocol rate, "
                        + ", ".join(f"{m.name} {m.learning_rate:g}" for m in METHODS.values())
                        + ")")
    p.add_argument("--lr-schedule", choices=list(LR_SCHEDULES), default=training.lr_schedule,
                   help=f"default {training.lr_schedule}")
    p.add_argument("--learn-sigma", action="store_true",
                   help="learn the noise sigma (default: fixed at the ground truth's)")
    p.add_argument("--init", default="auto", choices=ATTACHMENTS,
                   help="MAPA's data-only initial attachment of atoms to training points "
                        "(auto: each candidate trains briefly, the highest bound continues)")
    p.add_argument("--effective-neighbours", type=float, default=None, metavar="K",
                   help="MAPA's kernel width as smoothing: the median training row has K "
                        "effective neighbours (default: sqrt(2) sigma for a known sigma on the "
                        "data themselves, else leave-one-out, capped at 1.25 effective "
                        "neighbours above two latent dimensions)")
    p.add_argument("--code-learning-rate", type=float, default=None, metavar="RATE",
                   help="peak learning rate of MAPA's codes: the atoms' relaxed positions "
                        "(default 0.1 x the learning rate) or the Gaussian codes (3 x)")
    p.add_argument("--importance-samples", type=_positive_int, default=None, metavar="K",
                   help="MAPA's Gaussian codes (above two latent dimensions): K draws per code "
                        "in each step on the importance-weighted bound over them, K x the "
                        "decoder passes (default 1)")
    p.add_argument("--code-tying", type=float, default=None, metavar="LAMBDA",
                   help="MAPA's Gaussian codes: from half-way through training, pull each "
                        "drawn code toward its 5 nearest training points' mean code with this "
                        "strength (default 1 above two latent dimensions, 0 below; 0: free codes)")
    p.add_argument("--code-smoothing", type=float, default=None, metavar="K",
                   help="MAPA's Gaussian codes: from half-way through training until they are "
                        "fixed, each code learns from the targets of MAPA's weights at K "
                        "effective neighbours, the decoder from its own, at a second decoder "
                        "pass per index (default 1.25 above two latent dimensions; 0: off)")
    p.add_argument("--code-freeze-at", type=float, default=None, metavar="SHARE",
                   help="MAPA's Gaussian codes: fixed after this share of the steps, the "
                        "decoder training on (default above two latent dimensions: 0, the "
                        "codes kept at their start, where they start at the data's PPCA "
                        "posterior and the data pass the test that PPCA is their model, else "
                        "0.75; 1 below; 1: the codes learn throughout)")
    p.add_argument("--code-mean-rate", type=float, default=None, metavar="RATE",
                   help="MAPA's Gaussian codes: peak rate of the codes' means in units of each "
                        "code's width, each step's change of a mean multiplied by its width "
                        "(default: off, the means learn with the scales at "
                        "--code-learning-rate)")
    p.add_argument("--code-start", choices=("auto", "atoms", "ppca"), default=None,
                   help="MAPA's Gaussian codes: start at each point's posterior under the data's "
                        "probabilistic PCA (ppca) or at the initial attachment's atoms (default "
                        "auto: ppca above two latent dimensions under the normal prior)")
    p.add_argument("--n-train", type=_positive_int, default=1000)
    p.add_argument("--n-test", type=_positive_int, default=5000,
                   help="fresh samples for the test KL")
    p.add_argument("--train-kl", type=int, default=0, metavar="N",
                   help="also the KL on the first N training points, scored as the test points "
                        "are: test KL - train KL is the over-fit (default 0: none)")
    p.add_argument("--log-every", type=_positive_int, default=training.log_every,
                   help=f"steps between history rows (default {training.log_every})")
    p.add_argument("--eval-every", type=int, default=0,
                   help="also measure the test KL every this many steps, on the first --n-eval "
                        "test points (above two latent dimensions by the one evaluator: each "
                        "measurement costs as much as scoring that many points at the end)")
    p.add_argument("--n-eval", type=_positive_int, default=1000, metavar="N",
                   help="test points of each --eval-every measurement (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="where training runs: cpu, cuda, cuda:1, mps")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over the processes torchrun starts, e.g. torchrun "
                        "--nproc-per-node=2 -m mapa_vae fit --distributed (gloo on the CPU, "
                        "NCCL with --device cuda: one GPU per process)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="floating-point type of training (evaluation is always float64); "
                        "float64 makes runs agree across machines and process counts far more "
                        "closely")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", default="results/fit", help="output folder")
    p.set_defaults(run=fit, report=_print_fit)

    from .bench import QUICK, BenchConfig
    from .methods import BENCH_LABELS

    defaults = BenchConfig()
    p = commands.add_parser(
        "bench", help="every dataset x method x seed under one protocol; table and figures",
        description="Fit every method on every dataset for several seeds (same decoder, "
                    "optimiser, batch, steps and sigma), in parallel and resumable; write "
                    "results.json, results.csv, summary.md and figures.")
    p.add_argument("--datasets", nargs="+", default=None,
                   help=f"default: {' '.join(datasets.names())}; also built in: "
                        f"{' '.join(sorted(datasets.NOT_DEFAULT))} (run only when named)")
    p.add_argument("--methods", nargs="+", default=None,
                   help=f"default: {' '.join(BENCH_LABELS)} (any "
                        + " or ".join(f"{m.name}-S" for m in METHODS.values() if m.samples)
                        + ", or a MAPA method with -oracle)")
    p.add_argument("--seeds", type=_positive_int, default=None,
                   help=f"default {defaults.seeds}")
    p.add_argument("--first-seed", type=int, default=None,
                   help=f"seeds run from this one up (default {defaults.first_seed}); other "
                        f"seeds, other data")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help=f"default {training.steps}")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help=f"default {training.batch_size}")
    p.add_argument("--learning-rate", type=float, default=None,
                   help="Adam's peak learning rate for every method (default: each method's "
                        "protocol rate)")
    p.add_argument("--lr-schedule", choices=list(LR_SCHEDULES), default=None,
                   help=f"default {training.lr_schedule}")
    p.add_argument("--n-train", type=_positive_int, default=None,
                   help=f"default {defaults.n_train}")
    p.add_argument("--n-test", type=_positive_int, default=None,
                   help=f"default {defaults.n_test}")
    p.add_argument("--train-kl", type=int, default=None, dest="n_train_kl", metavar="N",
                   help="also each run's KL on its first N training points, scored as the test "
                        "points are: test KL - train KL is the over-fit (default 0: none)")
    p.add_argument("--eval-every", type=int, default=None,
                   help=f"steps between test-KL measurements for the curves, up to two latent "
                        f"dimensions (default {defaults.eval_every}; 0: none)")
    p.add_argument("--device", default=None,
                   help=f"where each run trains (default {defaults.device})")
    p.add_argument("--jobs", type=int, default=None, help="worker processes (default: one per "
                                                         "core)")
    p.add_argument("--quick", action="store_true",
                   help=f"a smoke run: {' and '.join(QUICK['datasets'])}; "
                        f"{', '.join(QUICK['methods'])}; {QUICK['seeds']} seed, "
                        f"{QUICK['steps']} steps on {QUICK['n_train']} points (other flags "
                        f"still apply)")
    p.add_argument("--no-paper-figures", action="store_true",
                   help="skip the paper's figures 1, 3, 4 and 5")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", default="results/bench", help="output folder")
    p.set_defaults(run=bench, report=_print_bench)

    p = commands.add_parser("figures", help="the paper's figures 1, 3, 4 and 5 as PNG")
    p.add_argument("--n-train", type=_positive_int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/figures", help="output folder")
    p.set_defaults(run=figures, report=_print_figures)
    return parser


def main(argv=None) -> int:
    """Run a command; exit status 0, 2 for bad input (one line on stderr, before any work where
    it can be known then: the output folder, the dataset), 1 if training diverged, 130 on
    Ctrl-C (a bench says how many runs are finished; the same command resumes)."""
    from .bench import BenchInterrupted

    parser = build_parser()
    args = parser.parse_args(argv)
    # each command returns its result and whether this process reports it (in a distributed
    # fit, rank 0 alone)
    try:
        check_output_folder(args.out)
        summary, reports = args.run(args)
    except ValueError as error:
        print(f"mapa-vae: error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"mapa-vae: training failed: {error}", file=sys.stderr)
        return 1
    except BenchInterrupted as stop:
        print(f"mapa-vae: interrupted: {stop.finished} of {stop.total} runs are finished and kept "
              f"in {args.out}; run the same command again to resume", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("mapa-vae: interrupted", file=sys.stderr)
        return 130
    if reports:
        args.report(summary, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
