"""The benchmark: every dataset × method × seed under one protocol, on every core, resumable.

Each run is an :func:`mapa_vae.experiment.run` with the same decoder, optimiser, batch, steps and
``σ`` (fixed at the truth) for every method, written to ``DIR/runs/<dataset>/<method>/seed<k>/``,
where ``<dataset>`` is the dataset's report name (:func:`mapa_vae.datasets.labels`: a file
dataset ``path/to/file.py:x`` is ``x``) made safe as a folder name (:func:`folder_name`), so
nothing is written outside ``DIR``. A run whose ``metrics.json`` exists is finished and is not
redone (files are written whole or not at all, so a killed bench leaves no half-written result);
a folder holding results of another protocol is refused rather than mixed in. Runs go to worker
processes, one PyTorch thread each, longest first; the progress bar counts training steps across
workers as they go. Ctrl-C stops the workers and raises :class:`BenchInterrupted` saying how many
runs are finished; the same command resumes. The true log-density of each test set (shared by
every method of a dataset and seed) is computed once and kept in ``DIR/truth/``.

The bench writes ``DIR/results.json`` and ``DIR/results.csv`` (one row per run),
``DIR/summary.md`` (each median with its range over seeds and the runs' standard error, and
the targets checked as measured) and its figures (see :mod:`mapa_vae.bench_figures`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import re
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import datasets
from .experiment import RunConfig
from .files import write_csv, write_json, write_text
from .methods import BENCH_LABELS, parse_label
from .methods import get as get_method
from .trainer import TrainingSettings

#: ``--quick``: a smoke run of the whole pipeline.
QUICK = {"datasets": ["circle", "quadratic"], "methods": ["mapa", "vae", "iwae-10"], "seeds": 1,
         "steps": 400, "n_train": 400, "n_test": 1000, "eval_every": 100, "n_eval": 300}

CSV_COLUMNS = ["dataset", "label", "method", "seed", "test_kl", "test_kl_se", "passes_per_step",
               "total_passes", "setup_seconds", "train_seconds", "seconds", "final_objective",
               "bound", "gap", "sigma", "train_kl", "train_kl_se"]


@dataclass
class BenchConfig:
    """The protocol shared by every run of a bench; ``training``: the optimisation settings
    (``learning_rate`` ``None``: each method's protocol rate; ``log_every`` is the largest
    divisor of ``eval_every`` up to 100 when the curves are measured). The test-KL curves
    (``eval_every``, for the time-to-KL target) are measured up to two latent dimensions only:
    above, each of their points would cost the one evaluator on ``n_eval`` test points, more
    than the run itself (``mapa-vae fit --eval-every`` measures one there)."""

    datasets: list = field(default_factory=datasets.names)
    methods: list = field(default_factory=lambda: list(BENCH_LABELS))
    seeds: int = 5
    first_seed: int = 0
    training: TrainingSettings = field(default_factory=TrainingSettings)
    n_train: int = 1000
    n_test: int = 5000
    n_train_kl: int = 0  # also the KL on the first this many training points of each run
    eval_every: int = 250
    n_eval: int = 1000
    jobs: int = 0  # worker processes; 0: one per core
    device: str = "cpu"  # where each run trains

    @classmethod
    def from_settings(cls, **settings) -> "BenchConfig":
        """A config from flat settings, the training settings among them (as the CLI and
        :data:`QUICK` give them)."""
        settings = dict(settings)
        return cls(training=TrainingSettings.take(settings), **settings)

    def names(self) -> dict[str, str]:
        """Each dataset's name in the results, by spec (:func:`mapa_vae.datasets.labels`)."""
        return datasets.labels(self.datasets)

    def runs(self) -> list[RunConfig]:
        """One :class:`RunConfig` per dataset × method × seed."""
        self.names()  # fail early on a dataset given twice
        # fail early on an unknown dataset or a file that fails to load
        latent_dims = {name: datasets.get(name).latent_dim for name in self.datasets}
        if not self.methods:
            raise ValueError("no methods to run")
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise ValueError(f"seeds must be a positive integer, got {self.seeds!r}")
        training = self.training.validate()
        log_every = (min(training.log_every, training.steps) if not self.eval_every
                     else _log_every(self.eval_every))
        training = replace(training, log_every=log_every)
        out = []
        for name in self.datasets:
            eval_every = self.eval_every if latent_dims[name] <= 2 else 0
            for label in self.methods:
                settings = parse_label(label)
                for seed in range(self.first_seed, self.first_seed + self.seeds):
                    out.append(RunConfig(dataset=name, **settings, n_train=self.n_train,
                                         n_test=self.n_test, n_train_kl=self.n_train_kl,
                                         training=training,
                                         device=self.device, seed=seed,
                                         eval_every=eval_every,
                                         n_eval=self.n_eval).validate())
        return out


def _log_every(eval_every: int) -> int:
    """The largest divisor of ``eval_every`` not above 100."""
    return max(d for d in range(1, min(100, eval_every) + 1) if eval_every % d == 0)


_SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def folder_name(name: str) -> str:
    """A dataset's report name as one safe folder name: the name itself when it is made of
    letters, digits, ``_``, ``-`` and ``.`` (not first) only, else those characters with every
    other run replaced by ``_`` and a hash of the name added, so distinct names never share a
    folder and no name is a path."""
    if _SAFE.fullmatch(name):
        return name
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._-")[:48] or "dataset"
    return f"{stem}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def run_dir(out: Path, config: RunConfig, name: str | None = None) -> Path:
    """``out/runs/<dataset>/<method>/seed<k>``; ``name``: the dataset's report name (default
    :func:`mapa_vae.datasets.label` of its spec)."""
    name = datasets.label(config.dataset) if name is None else name
    return Path(out) / "runs" / folder_name(name) / config.label / f"seed{config.seed}"


def protocol(config: dict) -> dict:
    """A run's settings less where it ran (device, distributed): what makes results comparable.
    No train KL (``n_train_kl`` 0) is the same protocol as a run from before that setting."""
    return {key: value for key, value in config.items()
            if key not in ("device", "distributed") and not (key == "n_train_kl" and not value)}


def _finished(path: Path, config: RunConfig) -> dict | None:
    """The metrics of a finished run at ``path``, or ``None``; refuses another protocol's run."""
    file = path / "metrics.json"
    if not file.is_file():
        return None
    metrics = json.loads(file.read_text())
    if protocol(metrics.get("config") or {}) != protocol(config.as_dict()):
        raise ValueError(f"{path} holds a run of a different protocol; choose another --out or "
                         f"remove it")
    return metrics


class BenchInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the bench: ``finished`` of ``total`` runs are finished and kept (the
    same command resumes the rest)."""

    def __init__(self, finished: int, total: int):
        super().__init__(f"{finished} of {total} runs finished")
        self.finished, self.total = finished, total


class _Stopped(BaseException):
    """Raised in a worker's run when the bench is interrupted: the run is abandoned unwritten."""


_shared = None  # in a worker process: (steps counter, stop event), shared with the bench


def _init_worker(counter, stop) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the bench's to handle
    global _shared
    _shared = (counter, stop)


def _work(config: RunConfig, path: str, truth_cache: str, name: str) -> dict | None:
    """One run in a worker: adds its training steps to the shared counter as they are logged
    (its ``steps`` in all once finished); ``None`` if the bench was interrupted."""
    import torch

    from .experiment import run

    counter, stop = _shared
    if stop.is_set():
        return None
    torch.set_num_threads(1)
    reported, last = 0, 0

    def add(steps: int) -> None:
        nonlocal reported
        steps = min(steps, config.training.steps - reported)
        if steps > 0:
            with counter.get_lock():
                counter.value += steps
            reported += steps

    def on_log(step: int) -> None:
        nonlocal last
        if stop.is_set():
            raise _Stopped
        add(step - last if step > last else step)  # a step below the last: a new pilot run
        last = step

    try:
        metrics = run(config, path, truth_cache=truth_cache, name=name, on_log=on_log)
    except _Stopped:
        return None
    add(config.training.steps)
    return metrics


@contextlib.contextmanager
def _sigint_ignored():
    """Ignore Ctrl-C while worker processes start, so that they start ignoring it (a disposition
    kept across exec; Python then installs no KeyboardInterrupt handler in them)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _expected_cost(config: RunConfig) -> float:
    """Roughly proportional to a run's time, to schedule the longest first."""
    method = get_method(config.method)
    return method.cost(config.samples or method.samples) * config.training.steps


#: Seconds an interrupted bench waits for its workers to leave their runs before ending them.
STOP_GRACE_SECONDS = 20.0


def finished_results(config: BenchConfig, out: str | Path) -> dict[int, dict]:
    """The metrics of the bench's runs already finished in ``out`` (each with its dataset's
    report name), by the run's position in ``config.runs()``."""
    names = config.names()
    results = {}
    for i, rc in enumerate(config.runs()):
        done = _finished(run_dir(out, rc, names[rc.dataset]), rc)
        if done is not None:
            results[i] = {**done, "dataset": names[rc.dataset]}
    return results


def run_bench(config: BenchConfig, out: str | Path, progress: bool = True,
              finished: dict[int, dict] | None = None) -> list[dict]:
    """Run every missing run of the bench in worker processes; return all runs' metrics (each
    with its dataset's report name). ``finished``: :func:`finished_results`, if already read.
    Ctrl-C raises :class:`BenchInterrupted`."""
    out = Path(out)
    runs = config.runs()
    names = config.names()
    results = dict(finished_results(config, out) if finished is None else finished)
    pending = [i for i in range(len(runs)) if i not in results]
    pending.sort(key=lambda i: -_expected_cost(runs[i]))
    jobs = config.jobs or os.cpu_count() or 1
    done_steps = sum(runs[i].training.steps for i in results)
    bar = tqdm(total=sum(rc.training.steps for rc in runs), initial=done_steps,
               disable=not progress, unit="step", desc="bench", dynamic_ncols=True)
    bar.set_postfix_str(f"{len(results)}/{len(runs)} runs")
    try:
        if pending:
            _run_pending(runs, pending, names, results, out, min(jobs, len(pending)), bar,
                         done_steps)
    finally:
        bar.close()
    return [results[i] for i in range(len(runs))]


def _run_pending(runs, pending, names, results, out, jobs, bar, done_steps) -> None:
    context = multiprocessing.get_context("spawn")
    counter, stop = context.Value("q", 0), context.Event()
    truth_cache = str(out / "truth")
    pool = None
    try:
        with _sigint_ignored():  # the workers start now
            pool = ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker,
                                       initargs=(counter, stop))
            futures = {}
            for i in pending:
                name = names[runs[i].dataset]
                path = str(run_dir(out, runs[i], name))
                futures[pool.submit(_work, runs[i], path, truth_cache, name)] = i
        remaining = set(futures)
        while remaining:
            finished, remaining = wait(remaining, timeout=0.5 if not bar.disable else None,
                                       return_when=FIRST_COMPLETED)
            for future in finished:
                i = futures[future]
                results[i] = future.result()
                rc = runs[i]
                bar.set_postfix_str(f"{len(results)}/{len(runs)} runs; {names[rc.dataset]} "
                                    f"{rc.label} seed {rc.seed}: KL {results[i]['test_kl']:.3g}")
            bar.update(done_steps + counter.value - bar.n)
    except KeyboardInterrupt:
        stop.set()
        if pool is not None:
            _stop(pool, futures, results)
            pool = None
        raise BenchInterrupted(len(results), len(runs)) from None
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _stop(pool: ProcessPoolExecutor, futures: dict, results: dict) -> None:
    """After Ctrl-C (the stop event set): cancel the runs not started, give the running ones
    :data:`STOP_GRACE_SECONDS` to leave (or finish), keep what finished, end the rest."""
    for future in futures:
        future.cancel()
    running = [f for f in futures if not f.done()]
    try:
        wait(running, timeout=STOP_GRACE_SECONDS)
    except KeyboardInterrupt:  # a second Ctrl-C: end them now
        pass
    for future, i in futures.items():
        if future.done() and not future.cancelled() and future.exception() is None \
                and future.result() is not None:
            results.setdefault(i, future.result())
    if not all(f.done() for f in futures):
        # ProcessPoolExecutor has no public way to end its workers before Python 3.14
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


# --- summaries --------------------------------------------------------------------------------
def _spread(values) -> tuple[float, float, float, float, float]:
    """Median, quartiles, minimum and maximum over seeds."""
    v = np.asarray(values, dtype=float)
    q1, median, q3 = np.percentile(v, [25, 50, 75])
    return float(median), float(q1), float(q3), float(v.min()), float(v.max())


def summarize(results: list[dict]) -> list[dict]:
    """One row per dataset × method: median, quartiles and range over seeds of the test KL, and
    the median of each run's own standard error (its Monte-Carlo error on the test points);
    where every run measured it, the median and range of the train KL."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["dataset"], r["label"]), []).append(r)
    rows = []
    for (name, label), group in groups.items():
        kl, kl_q1, kl_q3, kl_min, kl_max = _spread([r["test_kl"] for r in group])
        rows.append({"dataset": name, "label": label, "seeds": len(group),
                     "test_kl_median": kl, "test_kl_q1": kl_q1, "test_kl_q3": kl_q3,
                     "test_kl_min": kl_min, "test_kl_max": kl_max,
                     "test_kl_se": float(np.median([r["test_kl_se"] for r in group])),
                     "passes_per_step": float(np.median([r["passes_per_step"] for r in group])),
                     "total_passes": float(np.median([r["total_passes"] for r in group])),
                     "seconds": float(np.median([r["seconds"] for r in group]))})
        if all("train_kl" in r for r in group):
            fit, _, _, fit_min, fit_max = _spread([r["train_kl"] for r in group])
            rows[-1].update(train_kl_median=fit, train_kl_min=fit_min, train_kl_max=fit_max)
    return rows


def time_to_reach(results: list[dict], name: str, label: str, target: float) -> float | None:
    """Median over seeds of the time (setup and training) at which ``label``'s test-KL curve on
    ``name`` first reaches ``target`` (``None`` if it never does in some seed)."""
    times = []
    for r in results:
        if r["dataset"] != name or r["label"] != label:
            continue
        hit = [p["seconds"] for p in r.get("curve", []) if p["test_kl"] <= target]
        if not hit:
            return None
        times.append(hit[0])
    return float(np.median(times)) if times else None


def targets(results: list[dict], rows: list[dict]) -> list[dict]:
    """The issue's targets per dataset, as measured."""
    by = {(r["dataset"], r["label"]): r for r in rows}
    checks = []
    for name in dict.fromkeys(r["dataset"] for r in rows):
        mapa = by.get((name, "mapa"))
        baselines = [r for r in rows
                     if r["dataset"] == name and not r["label"].startswith("mapa")]
        if mapa is None or not baselines:
            continue
        best = min(baselines, key=lambda r: r["test_kl_median"])
        check = {"dataset": name, "mapa_kl": mapa["test_kl_median"], "best_baseline": best["label"],
                 "best_baseline_kl": best["test_kl_median"],
                 "ratio": mapa["test_kl_median"] / best["test_kl_median"]
                 if best["test_kl_median"] > 0 else float("inf")}
        iwae = by.get((name, "iwae-10"))
        if iwae is not None:
            reach = time_to_reach(results, name, "mapa", iwae["test_kl_median"])
            check.update({"iwae10_kl": iwae["test_kl_median"],
                          "iwae10_seconds": iwae["seconds"],
                          "mapa_seconds_to_iwae10_kl": reach})
        checks.append(check)
    return checks


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def _rates(config: BenchConfig) -> str:
    rates = {}
    for rc in config.runs():
        rates.setdefault(rc.training.learning_rate, []).append(rc.label)
    if len(rates) == 1:
        return f"learning rate {next(iter(rates)):g}"
    return "; ".join(f"{rate:g} for {', '.join(dict.fromkeys(labels))}"
                     for rate, labels in rates.items())


def _wall_time(elapsed: float, total: int, reused: int) -> str:
    """The bench's wall time, saying which runs it covers when some were finished before."""
    if not reused:
        return f"Bench wall time {elapsed:.0f} s."
    ran = total - reused
    return (f"Bench wall time {elapsed:.0f} s for the {ran} run{'s' * (ran != 1)} this "
            f"invocation ran; the other {reused} were finished before and reused.")


def summary_markdown(config: BenchConfig, results: list[dict], elapsed: float,
                     reused: int = 0) -> str:
    """The summary (Markdown); ``reused``: how many runs were finished before this
    invocation (its wall time does not cover them)."""
    rows = summarize(results)
    lines = ["# Benchmark summary", "",
             f"{len(results)} runs: datasets {', '.join(config.datasets)}; methods "
             f"{', '.join(config.methods)}; {config.seeds} seed(s); N = {config.n_train}; "
             f"{config.training.steps} steps, batch {config.training.batch_size}, Adam "
             f"({_rates(config)}, {config.training.lr_schedule} schedule); "
             f"σ fixed at the truth; 2 × 64 tanh decoder (and encoder); test KL on "
             f"{config.n_test} fresh samples (log p_θ by quadrature in one and two latent "
             f"dimensions, above by the one evaluator of mapa_vae.marginal). "
             f"{_wall_time(elapsed, len(results), reused)}", "",
             "Test KL in nats: median over seeds, its range over seeds [min, max] and the "
             "median of each run's standard error on its test points; a difference between "
             "methods smaller than the range is not a ranking. Passes: network evaluations on "
             "one input row; seconds: setup (for MAPA: its weights and initial attachment) and "
             "training, per run, one thread.", ""]
    for name in config.names().values():
        group = [r for r in rows if r["dataset"] == name]
        if not group:
            continue
        fit = config.n_train_kl > 0
        lines += [f"## {name}", "",
                  "| method | test KL | seeds [min, max] | s.e. | " + (
                      f"train KL ({config.n_train_kl} points) [min, max] | " if fit else "")
                  + "passes / step | total passes | seconds |",
                  "|---|---|---|---|" + ("---|" if fit else "") + "---|---|---|"]
        for r in sorted(group, key=lambda r: config.methods.index(r["label"])
                        if r["label"] in config.methods else 99):
            fit_cell = (f"{_fmt(r['train_kl_median'])} [{_fmt(r['train_kl_min'])}, "
                        f"{_fmt(r['train_kl_max'])}] | " if fit else "")
            lines.append(f"| {r['label']} | {_fmt(r['test_kl_median'])} | "
                         f"[{_fmt(r['test_kl_min'])}, {_fmt(r['test_kl_max'])}] | "
                         f"{_fmt(r['test_kl_se'])} | {fit_cell}"
                         f"{_fmt(r['passes_per_step'])} | {r['total_passes']:,.0f} | "
                         f"{r['seconds']:.1f} |")
        if fit:
            lines += ["", "Train KL: the same KL on the first training points of each run; "
                      "test KL − train KL is the over-fit, and a negative train KL a model "
                      "closer to its training points than the truth."]
        lines.append("")
    checks = targets(results, rows)
    if checks:
        lines += ["## Targets, as measured", "",
                  "MAPA's median test KL at most half the best baseline's (ratio ≤ 0.5); MAPA "
                  "reaching IWAE (S = 10)'s final median test KL within a fifth of IWAE's "
                  "time (setup and training; " + (
                      f"MAPA's test KL measured every {config.eval_every} steps on "
                      f"{config.n_eval} test points, coarser grid)." if config.eval_every else
                      "not measured: no test-KL curves, see --eval-every)."), "",
                  "| dataset | MAPA KL | best baseline | its KL | ratio | met "
                  "| MAPA s to IWAE-10's KL | IWAE-10 s | met |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for c in checks:
            reach = c.get("mapa_seconds_to_iwae10_kl")
            time_cells = "| – | – | – |"
            if "iwae10_seconds" in c and config.eval_every:
                met = reach is not None and reach <= c["iwae10_seconds"] / 5
                time_cells = (f"| {'never' if reach is None else f'{reach:.2f}'} | "
                              f"{c['iwae10_seconds']:.2f} | {'yes' if met else 'no'} |")
            lines.append(f"| {c['dataset']} | {_fmt(c['mapa_kl'])} | {c['best_baseline']} | "
                         f"{_fmt(c['best_baseline_kl'])} | {c['ratio']:.2f} | "
                         f"{'yes' if c['ratio'] <= 0.5 else 'no'} " + time_cells)
        lines.append("")
    return "\n".join(lines)


def write_results(config: BenchConfig, results: list[dict], out: str | Path,
                  elapsed: float, reused: int = 0) -> str:
    """``results.json``, ``results.csv``, ``summary.md`` and the bench figures."""
    from .bench_figures import bench_figures

    out = Path(out)
    write_json(out / "results.json", {"config": asdict(config), "runs": results})
    write_csv(out / "results.csv", [{k: r.get(k, "") for k in CSV_COLUMNS} for r in results])
    text = summary_markdown(config, results, elapsed, reused)
    bench_figures(results, config, out)
    write_text(out / "summary.md", text + "\n")
    return text


def bench(config: BenchConfig, out: str | Path, progress: bool = True) -> str:
    """Run the bench and write its results; returns the summary (Markdown). Ctrl-C raises
    :class:`BenchInterrupted`."""
    start = time.perf_counter()
    finished = finished_results(config, out)
    results = run_bench(config, out, progress, finished)
    try:
        return write_results(config, results, out, time.perf_counter() - start, len(finished))
    except KeyboardInterrupt:
        raise BenchInterrupted(len(results), len(results)) from None
