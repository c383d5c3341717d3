"""Command-line interface: ``mapa-vae demo`` (MAPA against the true posterior), ``mapa-vae fit``
(train one method on a ground truth, or on real data with ``--data``, and score it; ``--device``,
and ``--distributed`` under ``torchrun``), ``mapa-vae score``, ``sample`` and ``posterior`` (a
model folder's per-row log-likelihoods, draws, and MAPA's posterior of new rows),
``mapa-vae bench`` (every dataset × method × seed, tables and figures) and ``mapa-vae figures``
(the paper's figures that need no training)."""
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


#: ``fit``'s options for ground truths only (with their defaults), refused with ``--data``.
_TRUTH_ONLY = {"dataset": None, "twin": False, "learn_sigma": False, "n_train": None,
               "train_kl": 0, "eval_every": 0, "n_eval": None, "distributed": False}
#: ``fit``'s options for real data only (with their defaults), refused without ``--data``.
_DATA_ONLY = {"latent_dim": None, "likelihood": None, "test_data": None, "test_fraction": None,
              "standardize": None, "decoder": None, "hidden": None, "evaluator_samples": None,
              "anneal_steps": None}


def _mapa_settings(args) -> dict:
    """The MAPA-only settings given on the command line, as estimator settings; an error where
    another method is asked for."""
    from . import methods

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
    return extra


def _refuse(args, options: dict, why: str) -> None:
    """Refuse any of ``options`` given (different from its default), saying ``why``."""
    for name, default in options.items():
        if getattr(args, name) != default:
            raise ValueError(f"--{name.replace('_', '-')} {why}")


def fit(args) -> tuple[dict, bool]:
    """Train one method on a ground truth (:func:`fit_truth`) or on real data (``--data``,
    :func:`fit_data`)."""
    if args.data is not None:
        _refuse(args, _TRUTH_ONLY, "applies to ground truths, not to --data")
        return fit_data(args), True
    _refuse(args, _DATA_ONLY, "applies to real data (--data SOURCE)")
    return fit_truth(args)


def fit_data(args) -> dict:
    """Train one method on real data and score its test rows; write the model folder
    (:mod:`mapa_vae.data_fit`)."""
    from .data_fit import DataFitConfig, fit as fit_real

    if args.latent_dim is None:
        raise ValueError("--data needs --latent-dim D, the number of latent dimensions")
    if args.test_data is not None and args.test_fraction is not None:
        raise ValueError("give --test-data or --test-fraction, not both")
    training = TrainingSettings(steps=args.steps, batch_size=args.batch_size,
                                learning_rate=args.learning_rate, lr_schedule=args.lr_schedule,
                                log_every=min(args.log_every, args.steps))
    extra = _mapa_settings(args)
    if args.init != "auto":
        extra["init"] = args.init
    config = DataFitConfig(
        data=args.data, latent_dim=args.latent_dim, method=args.method, samples=args.samples,
        likelihood=args.likelihood or "gaussian", test_data=args.test_data,
        test_fraction=0.1 if args.test_fraction is None else args.test_fraction,
        n_test=args.n_test, standardize=args.standardize, decoder=args.decoder or "mlp",
        hidden=tuple(args.hidden or (256, 256)), training=training, seed=args.seed,
        device=args.device, dtype=args.dtype,
        evaluator_samples=args.evaluator_samples or 2000, anneal_steps=args.anneal_steps or 0,
        extra=extra)
    return fit_real(config, args.out, progress=not args.quiet)


def fit_truth(args) -> tuple[dict, bool]:
    """Train one method on a ground truth; write metrics, history, checkpoint and a figure. In a
    distributed fit every rank trains the same model and rank 0 alone writes and reports."""
    from .experiment import RunConfig, run

    device, writer = args.device, True
    if args.distributed:
        from .distributed import init_from_environment

        shard, device = init_from_environment(args.device)
        writer = shard.rank == 0
    training = TrainingSettings(steps=args.steps, batch_size=args.batch_size,
                                learning_rate=args.learning_rate, lr_schedule=args.lr_schedule,
                                log_every=min(args.log_every, args.steps))
    extra = _mapa_settings(args)
    config = RunConfig(dataset=args.dataset or "circle", method=args.method,
                       samples=args.samples, twin=args.twin, n_train=args.n_train or 1000,
                       n_test=args.n_test or 5000, n_train_kl=args.train_kl, training=training,
                       learn_sigma=args.learn_sigma, init=args.init, seed=args.seed,
                       eval_every=args.eval_every, n_eval=args.n_eval or 1000, device=device,
                       distributed=args.distributed, dtype=args.dtype, extra=extra)
    return run(config, args.out if writer else None, progress=writer and not args.quiet), writer


def _print_fit(metrics: dict, out: str) -> None:
    if "data" in metrics:
        _print_data_fit(metrics, out)
        return
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


def _print_data_fit(metrics: dict, out: str) -> None:
    evaluator = metrics["evaluator"]
    print(f"{metrics['data']}, {metrics['label']}, latent dimension {metrics['latent_dim']}, "
          f"{metrics['likelihood']} likelihood, seed {metrics['seed']}: "
          f"{metrics['n_train']} training rows, {metrics['n_test']} test rows "
          f"({metrics['test_source']})")
    rows = [("test log-likelihood", f"{metrics['test_log_likelihood']:.3f} ± "
                                    f"{metrics['test_log_likelihood_se']:.3f} nats per row"),
            ("evaluator", f"{evaluator['name']}, {evaluator['seconds_per_row']:.3f} s per row")]
    if "test_bits_per_dim" in metrics:
        rows.insert(1, ("bits per dimension", f"{metrics['test_bits_per_dim']:.4f}"))
    if "test_median_ess" in metrics:
        rows.append(("median effective samples", f"{metrics['test_median_ess']:.0f} of "
                                                 f"{evaluator['n_samples']}"))
    rows += [("network passes per step", f"{metrics['passes_per_step']:.1f}"),
             ("time", f"setup {metrics['setup_seconds']:.1f} s, training "
                      f"{metrics['train_seconds']:.1f} s, fit {metrics['fit_wall_seconds']:.1f} s")]
    if metrics["sigma"] is not None:
        rows.append(("sigma", f"{metrics['sigma']:.4g}"))
    for name, value in rows:
        print(f"  {name:<26}{value}")
    images = ", samples.png" if metrics["preparation"]["image_shape"] else ""
    print(f"wrote metrics.json, model.pt, history.csv{images} in {out}")


def compare(args) -> tuple[dict, bool]:
    """Several methods on the same real data under one protocol: a table and figures."""
    from .data_fit import DataFitConfig, compare as run_compare

    if args.test_data is not None and args.test_fraction is not None:
        raise ValueError("give --test-data or --test-fraction, not both")
    from . import methods

    for method in args.methods:
        methods.get(method)
    training = TrainingSettings(steps=args.steps, batch_size=args.batch_size,
                                learning_rate=args.learning_rate, lr_schedule="cosine",
                                log_every=min(100, args.steps))
    config = DataFitConfig(
        data=args.data, latent_dim=args.latent_dim, likelihood=args.likelihood,
        test_data=args.test_data,
        test_fraction=0.1 if args.test_fraction is None else args.test_fraction,
        n_test=args.n_test, standardize=args.standardize, decoder=args.decoder,
        hidden=tuple(args.hidden), training=training, seed=args.seed,
        evaluator_samples=args.evaluator_samples, anneal_steps=args.anneal_steps)
    return run_compare(config, args.methods, args.out, progress=not args.quiet), True


def _print_compare(result: dict, out: str) -> None:
    print(result["table"], end="")
    images = ", samples.png" if result["rows"][0]["preparation"]["image_shape"] else ""
    print(f"wrote results.json, results.csv, summary.md, compare.png{images} and a model folder "
          f"per method in {out}")


def score(args) -> tuple[dict, bool]:
    """Per-row log-likelihoods of new rows under a model folder's model."""
    from .data_fit import score as score_rows, score_table
    from .files import write_csv

    result, summary = score_rows(args.model, args.file, n_samples=args.evaluator_samples,
                                 anneal_steps=args.anneal_steps, seed=args.seed,
                                 progress=not args.quiet)
    rows = score_table(result)
    if args.out is not None:
        write_csv(args.out, rows)
    summary["rows"] = rows
    return summary, True


def _print_score(summary: dict, out: str | None) -> None:
    if out is None:
        print("row,log_prob,se")
        for row in summary["rows"]:
            print(f"{row['row']},{row['log_prob']!r},{row['se']!r}")
        return
    line = f"{summary['n_rows']} rows of {summary['source']}: mean log p(x) " \
           f"{summary['test_log_likelihood']:.3f}"
    if "test_log_likelihood_se" in summary:
        line += f" ± {summary['test_log_likelihood_se']:.3f} nats per row"
    print(line)
    print(f"wrote {out}")


def sample(args) -> tuple[str, bool]:
    """Draws from a model folder's model, as a .npy file."""
    from .data_fit import sample as draw, save_array

    save_array(args.out, draw(args.model, args.n, seed=args.seed, means=args.means))
    return f"wrote {args.n} {'means' if args.means else 'samples'} to {args.out}", True


def posterior(args) -> tuple[str, bool]:
    """MAPA's posterior of new rows under a model folder's MAPA model, as a .npz file."""
    from .data_fit import posterior as query, save_arrays

    arrays = query(args.model, args.file, top=args.top)
    save_arrays(args.out, arrays)
    n, k = arrays["indices"].shape
    return (f"wrote {args.out}: for {n} rows, {k} training indices each (indices, weights, "
            f"codes{', code_scales' if 'code_scales' in arrays else ''}, mean)"), True


def _print_line(text: str, out) -> None:
    print(text)


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


def _check_folder(args) -> None:
    check_output_folder(args.out)


def _check_file(suffix: str, required: bool = True):
    """A check of ``--out`` as a file ending in ``suffix``, before any work."""

    def check(args) -> None:
        if args.out is None and not required:
            return
        path = Path(args.out)
        if path.suffix.lower() != suffix:
            raise ValueError(f"--out {args.out!r}: the file's name must end in {suffix}")
        if path.is_dir():
            raise ValueError(f"--out {args.out!r} is a folder; name a {suffix} file")
        check_output_folder(path.parent if str(path.parent) else ".", option="--out's folder")

    return check


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
    p.set_defaults(run=demo, report=_print_summary, check=_check_folder)

    from .atoms import METHODS as ATTACHMENTS
    from .data import NAMED as data_names
    from .methods import METHODS

    training = TrainingSettings()
    with_samples = ", ".join(f"{m.name} (default {m.samples})" for m in METHODS.values()
                             if m.samples)

    p = commands.add_parser(
        "fit", help="train one method on real data (--data) or a ground truth, and score it",
        description="Train one method on real data (--data SOURCE --latent-dim D: test "
                    "log-likelihood by the one evaluator, and a model folder that scores, "
                    "samples and answers posterior queries), or on samples of a ground truth "
                    "(--dataset: the continuous model's test KL).")
    p.add_argument("--data", default=None, metavar="SOURCE",
                   help="real data: a .npy file, a .npz file (file.npz:key names one of its "
                        "arrays), a .csv or .tsv file of numbers (one header row or none), an "
                        "IDX file (*-ubyte[.gz]), or one of " + ", ".join(data_names))
    p.add_argument("--latent-dim", type=_positive_int, default=None, metavar="D",
                   help="latent dimensions of the model (with --data)")
    p.add_argument("--likelihood", choices=("gaussian", "bernoulli"), default=None,
                   help="with --data: a Gaussian with learned sigma (default; integer pixels "
                        "dequantised to (v + u) / L), or Bernoulli pixels (values in [0, 1] are "
                        "probabilities, binarised afresh in training; test rows binarised once, "
                        "by a fixed seed)")
    p.add_argument("--test-data", default=None, metavar="SOURCE",
                   help="with --data: test rows from another source (default: the named set's "
                        "test split, or a held-out share)")
    p.add_argument("--test-fraction", type=float, default=None, metavar="F",
                   help="with --data: the share of rows held out for testing, by --seed "
                        "(default 0.1)")
    p.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=None,
                   help="with --data: standardise each column by the training rows (default: "
                        "for tables under the Gaussian likelihood; scores stay in the data's "
                        "own units)")
    p.add_argument("--decoder", choices=("mlp", "conv"), default=None,
                   help="with --data: the decoder, an MLP of --hidden widths (default) or a "
                        "small convolutional network for images")
    p.add_argument("--hidden", type=_positive_int, nargs="+", default=None, metavar="WIDTH",
                   help="with --data: hidden widths of the MLP decoder (and the baselines' "
                        "encoders; default 256 256)")
    p.add_argument("--evaluator-samples", type=_positive_int, default=None, metavar="K",
                   help="with --data: importance samples (or annealed chains) per test row "
                        "above two latent dimensions (default 2000)")
    p.add_argument("--anneal-steps", type=int, default=None, metavar="T",
                   help="with --data: anneal from the fitted proposal through T temperatures "
                        "(for many latent dimensions, where importance sampling's effective "
                        "sample size collapses; default 0: importance sampling)")
    p.add_argument("--dataset", default=None,
                   help=f"a ground truth: one of {', '.join(datasets.names(include_all=True))}, "
                        f"or path/to/file.py:object (default circle)")
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
    p.add_argument("--n-train", type=_positive_int, default=None,
                   help="samples of a ground truth to train on (default 1000)")
    p.add_argument("--n-test", type=_positive_int, default=None,
                   help="fresh samples of a ground truth for the test KL (default 5000); with "
                        "--data, score only the first N test rows (default: all)")
    p.add_argument("--train-kl", type=int, default=0, metavar="N",
                   help="also the KL on the first N training points, scored as the test points "
                        "are: test KL - train KL is the over-fit (default 0: none)")
    p.add_argument("--log-every", type=_positive_int, default=training.log_every,
                   help=f"steps between history rows (default {training.log_every})")
    p.add_argument("--eval-every", type=int, default=0,
                   help="also measure the test KL every this many steps, on the first --n-eval "
                        "test points (above two latent dimensions by the one evaluator: each "
                        "measurement costs as much as scoring that many points at the end)")
    p.add_argument("--n-eval", type=_positive_int, default=None, metavar="N",
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
    p.set_defaults(run=fit, report=_print_fit, check=_check_folder)

    p = commands.add_parser(
        "compare", help="MAPA and the baselines on the same real data: a table and figures",
        description="Fit several methods to the same real data under one protocol (the same "
                    "split, decoder, steps, batch, learning rate and seed), score their test "
                    "rows by the one evaluator, print a table and write "
                    "results.json, results.csv, summary.md, compare.png, samples.png (images) "
                    "and a model folder per method.")
    p.add_argument("--data", default="digits", metavar="SOURCE",
                   help="as for fit --data (default digits: scikit-learn's 8 x 8 images; "
                        "fashion-mnist where its Debian package is installed)")
    p.add_argument("--latent-dim", type=_positive_int, default=8, metavar="D", help="default 8")
    p.add_argument("--methods", nargs="+", default=["mapa", "vae", "iwae"], metavar="METHOD",
                   help="default: mapa vae iwae (IWAE with S = 10)")
    p.add_argument("--likelihood", choices=("gaussian", "bernoulli"), default="gaussian")
    p.add_argument("--test-data", default=None, metavar="SOURCE")
    p.add_argument("--test-fraction", type=float, default=None, metavar="F",
                   help="share of rows held out for testing (default 0.1)")
    p.add_argument("--n-test", type=_positive_int, default=None, metavar="N",
                   help="score only the first N test rows")
    p.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--decoder", choices=("mlp", "conv"), default="mlp")
    p.add_argument("--hidden", type=_positive_int, nargs="+", default=[128, 128],
                   metavar="WIDTH", help="default 128 128")
    p.add_argument("--steps", type=_positive_int, default=5000, help="default 5000")
    p.add_argument("--batch-size", type=_positive_int, default=100, help="default 100")
    p.add_argument("--learning-rate", type=float, default=0.01,
                   help="the peak rate of every method, cosine-annealed (default 0.01, "
                        "benchmarks/digits.py's protocol)")
    p.add_argument("--evaluator-samples", type=_positive_int, default=2000, metavar="K")
    p.add_argument("--anneal-steps", type=int, default=0, metavar="T")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", default="results/compare", help="output folder")
    p.set_defaults(run=compare, report=_print_compare, check=_check_folder)

    p = commands.add_parser("score", help="per-row log-likelihoods of new rows under a fitted "
                                          "model (a folder fit --data wrote)")
    p.add_argument("model", metavar="DIR", help="a model folder (fit --data ... --out DIR)")
    p.add_argument("file", metavar="SOURCE", help="rows to score, as for fit --data; prepared "
                                                  "as the model's test rows were")
    p.add_argument("--evaluator-samples", type=_positive_int, default=2000, metavar="K",
                   help="importance samples per row above two latent dimensions (default 2000)")
    p.add_argument("--anneal-steps", type=int, default=0, metavar="T",
                   help="anneal through T temperatures (default 0)")
    p.add_argument("--seed", type=int, default=0, help="the evaluator's seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", default=None, metavar="FILE.csv",
                   help="write row, log_prob, se (nats; se: the evaluator's Monte-Carlo "
                        "standard error) as CSV (default: print them)")
    p.set_defaults(run=score, report=_print_score, check=_check_file(".csv", required=False))

    p = commands.add_parser("sample", help="draw from a fitted model (a folder fit --data wrote)")
    p.add_argument("model", metavar="DIR", help="a model folder (fit --data ... --out DIR)")
    p.add_argument("-n", type=_positive_int, required=True, metavar="K", help="draws")
    p.add_argument("--means", action="store_true",
                   help="the means E[x | z] for z from the prior, instead of draws of x")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, metavar="FILE.npy", help="where to write the draws")
    p.set_defaults(run=sample, report=_print_line, check=_check_file(".npy"))

    p = commands.add_parser("posterior", help="MAPA's posterior of new rows: their weights over "
                                              "the training indices and the codes those carry")
    p.add_argument("model", metavar="DIR", help="a MAPA model folder (fit --data ... --out DIR)")
    p.add_argument("file", metavar="SOURCE", help="rows, as for fit --data")
    p.add_argument("--top", type=_positive_int, default=None, metavar="K",
                   help="keep each row's K largest weights, renormalised (default: every "
                        "neighbour MAPA keeps)")
    p.add_argument("--out", required=True, metavar="FILE.npz",
                   help="write indices, weights, codes (code_scales for Gaussian codes) and "
                        "each row's mean code")
    p.set_defaults(run=posterior, report=_print_line, check=_check_file(".npz"))

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
    p.set_defaults(run=bench, report=_print_bench, check=_check_folder)

    p = commands.add_parser("figures", help="the paper's figures 1, 3, 4 and 5 as PNG")
    p.add_argument("--n-train", type=_positive_int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/figures", help="output folder")
    p.set_defaults(run=figures, report=_print_figures, check=_check_folder)
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
        args.check(args)
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
