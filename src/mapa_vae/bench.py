"""The benchmark: every dataset × method × seed under one protocol, on every core, resumable.

Each run is an :func:`mapa_vae.experiment.run` with the same decoder, optimiser, batch, steps and
``σ`` (fixed at the truth) for every method, written to ``DIR/runs/<dataset>/<method>/seed<k>/``.
A run whose ``metrics.json`` exists is finished and is not redone (files are written whole or not
at all, so a killed bench leaves no half-written result); a folder holding results of another
protocol is refused rather than mixed in. Runs go to worker processes, one PyTorch thread each,
longest first. The true log-density of each test set (shared by every method of a dataset and
seed) is computed once and kept in ``DIR/truth/``.

The bench writes ``DIR/results.json`` and ``DIR/results.csv`` (one row per run),
``DIR/summary.md`` (median and interquartile range over seeds, and the targets checked as
measured) and its figures (see :mod:`mapa_vae.figures`).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import datasets
from .estimators import METHOD_NAMES, base_method
from .experiment import SAMPLE_DEFAULTS, RunConfig
from .files import write_csv, write_json, write_text

#: Method labels, in report order: a method, or a method and its sample count ``S``.
METHODS = ["mapa", "mapa-identity", "vae", "iwae-5", "iwae-10", "iwae-50", "lagging",
           "prior-is-100"]

#: ``--quick``: a smoke run of the whole pipeline.
QUICK = {"datasets": ["circle", "quadratic"], "methods": ["mapa", "vae", "iwae-10"], "seeds": 1,
         "steps": 400, "n_train": 400, "n_test": 1000, "eval_every": 100, "n_eval": 300}

#: Relative cost of a step per method (IWAE: 1 + S), to start the longest runs first.
_COST = {"mapa": 1, "vae": 2, "lagging": 6, "prior-is": 1}

CSV_COLUMNS = ["dataset", "label", "method", "seed", "test_kl", "test_kl_se", "passes_per_step",
               "total_passes", "setup_seconds", "train_seconds", "seconds", "final_objective",
               "bound", "gap", "sigma"]


def parse_method(label: str) -> dict:
    """A method label as run settings: ``"iwae-10"`` → ``{"method": "iwae", "samples": 10}``;
    ``"iwae"`` takes its default ``S``; ``"mapa-oracle"`` (``"mapa-atoms-oracle"``, …) is MAPA
    started from the true codes."""
    for method, default in SAMPLE_DEFAULTS.items():
        if label == method:
            return {"method": method, "samples": default}
        if label.startswith(method + "-"):
            text = label[len(method) + 1:]
            if not text.isdigit() or int(text) < 1:
                raise ValueError(f"method {label!r}: the number of samples after {method}- must "
                                 f"be a positive integer")
            return {"method": method, "samples": int(text)}
    if label.endswith("-oracle") and base_method(label[:-len("-oracle")]) == "mapa":
        return {"method": label[:-len("-oracle")], "init": "oracle"}
    if label not in METHOD_NAMES or label in SAMPLE_DEFAULTS:
        raise ValueError(f"unknown method {label!r}; choose from {', '.join(METHODS)} "
                         f"(any iwae-S or prior-is-S), or a MAPA method with -oracle")
    return {"method": label}


@dataclass
class BenchConfig:
    """The protocol shared by every run of a bench."""

    datasets: list = field(default_factory=datasets.names)
    methods: list = field(default_factory=lambda: list(METHODS))
    seeds: int = 5
    first_seed: int = 0
    steps: int = 3000
    batch_size: int = 100
    learning_rate: float | None = None  # None: each method's protocol rate
    lr_schedule: str = "cosine"
    n_train: int = 1000
    n_test: int = 5000
    eval_every: int = 250
    n_eval: int = 1000
    jobs: int = 0  # worker processes; 0: one per core
    device: str = "cpu"  # where each run trains

    def runs(self) -> list[RunConfig]:
        """One :class:`RunConfig` per dataset × method × seed."""
        for name in self.datasets:
            datasets.get(name)  # fail early on an unknown dataset
        if not self.methods:
            raise ValueError("no methods to run")
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise ValueError(f"seeds must be a positive integer, got {self.seeds!r}")
        log_every = min(100, self.steps) if not self.eval_every else _log_every(self.eval_every)
        out = []
        for name in self.datasets:
            for label in self.methods:
                settings = parse_method(label)
                for seed in range(self.first_seed, self.first_seed + self.seeds):
                    out.append(RunConfig(dataset=name, **settings, n_train=self.n_train,
                                         n_test=self.n_test, steps=self.steps,
                                         batch_size=self.batch_size, device=self.device,
                                         learning_rate=self.learning_rate,
                                         lr_schedule=self.lr_schedule, seed=seed,
                                         log_every=log_every, eval_every=self.eval_every,
                                         n_eval=self.n_eval).validate())
        return out


def _log_every(eval_every: int) -> int:
    """The largest divisor of ``eval_every`` not above 100."""
    return max(d for d in range(1, min(100, eval_every) + 1) if eval_every % d == 0)


def run_dir(out: Path, config: RunConfig) -> Path:
    return Path(out) / "runs" / config.dataset / config.label / f"seed{config.seed}"


def protocol(config: dict) -> dict:
    """A run's settings less where it ran (device, distributed): what makes results comparable."""
    return {key: value for key, value in config.items() if key not in ("device", "distributed")}


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


def _work(config: RunConfig, path: str, truth_cache: str) -> dict:
    import torch

    from .experiment import run

    torch.set_num_threads(1)
    return run(config, path, truth_cache=truth_cache)


def _expected_cost(config: RunConfig) -> float:
    """Roughly proportional to a run's time, to schedule the longest first."""
    per_step = 1 + config.samples if config.method == "iwae" else _COST[base_method(config.method)]
    return per_step * config.steps


def run_bench(config: BenchConfig, out: str | Path, progress: bool = True) -> list[dict]:
    """Run every missing run of the bench in worker processes; return all runs' metrics."""
    out = Path(out)
    runs = config.runs()
    results: dict[int, dict] = {}
    pending = []
    for i, rc in enumerate(runs):
        done = _finished(run_dir(out, rc), rc)
        if done is None:
            pending.append(i)
        else:
            results[i] = done
    pending.sort(key=lambda i: -_expected_cost(runs[i]))
    jobs = config.jobs or os.cpu_count() or 1
    bar = tqdm(total=len(runs), initial=len(results), disable=not progress, unit="run",
               desc="bench", dynamic_ncols=True)
    if pending:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(jobs, len(pending)), mp_context=context) as pool:
            truth_cache = str(out / "truth")
            futures = {pool.submit(_work, runs[i], str(run_dir(out, runs[i])), truth_cache): i
                       for i in pending}
            remaining = set(futures)
            while remaining:
                finished, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                for future in finished:
                    i = futures[future]
                    results[i] = future.result()
                    rc = runs[i]
                    bar.set_postfix_str(f"{rc.dataset} {rc.label} seed {rc.seed}: "
                                        f"KL {results[i]['test_kl']:.3g}")
                    bar.update(1)
    bar.close()
    return [results[i] for i in range(len(runs))]


# --- summaries --------------------------------------------------------------------------------
def _quartiles(values) -> tuple[float, float, float]:
    q1, median, q3 = np.percentile(np.asarray(values, dtype=float), [25, 50, 75])
    return float(median), float(q1), float(q3)


def summarize(results: list[dict]) -> list[dict]:
    """One row per dataset × method: median and quartiles over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["dataset"], r["label"]), []).append(r)
    rows = []
    for (name, label), group in groups.items():
        kl, kl_q1, kl_q3 = _quartiles([r["test_kl"] for r in group])
        rows.append({"dataset": name, "label": label, "seeds": len(group),
                     "test_kl_median": kl, "test_kl_q1": kl_q1, "test_kl_q3": kl_q3,
                     "passes_per_step": float(np.median([r["passes_per_step"] for r in group])),
                     "total_passes": float(np.median([r["total_passes"] for r in group])),
                     "seconds": float(np.median([r["seconds"] for r in group]))})
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
        rates.setdefault(rc.learning_rate, []).append(rc.label)
    if len(rates) == 1:
        return f"learning rate {next(iter(rates)):g}"
    return "; ".join(f"{rate:g} for {', '.join(dict.fromkeys(labels))}"
                     for rate, labels in rates.items())


def summary_markdown(config: BenchConfig, results: list[dict], elapsed: float) -> str:
    rows = summarize(results)
    lines = ["# Benchmark summary", "",
             f"{len(results)} runs: datasets {', '.join(config.datasets)}; methods "
             f"{', '.join(config.methods)}; {config.seeds} seed(s); N = {config.n_train}; "
             f"{config.steps} steps, batch {config.batch_size}, Adam ({_rates(config)}, "
             f"{config.lr_schedule} schedule); "
             f"σ fixed at the truth; 2 × 64 tanh decoder (and encoder); test KL on "
             f"{config.n_test} fresh samples, quadrature. Bench wall time {elapsed:.0f} s.", "",
             "Test KL in nats: median over seeds [interquartile range]. Passes: network "
             "evaluations on one input row; seconds: setup (for MAPA: its weights and initial "
             "attachment) and training, per run, one thread.", ""]
    for name in config.datasets:
        group = [r for r in rows if r["dataset"] == name]
        if not group:
            continue
        lines += [f"## {name}", "",
                  "| method | test KL | IQR | passes / step | total passes | seconds |",
                  "|---|---|---|---|---|---|"]
        for r in sorted(group, key=lambda r: config.methods.index(r["label"])
                        if r["label"] in config.methods else 99):
            lines.append(f"| {r['label']} | {_fmt(r['test_kl_median'])} | "
                         f"[{_fmt(r['test_kl_q1'])}, {_fmt(r['test_kl_q3'])}] | "
                         f"{_fmt(r['passes_per_step'])} | {r['total_passes']:,.0f} | "
                         f"{r['seconds']:.1f} |")
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
                  elapsed: float) -> str:
    """``results.json``, ``results.csv``, ``summary.md`` and the bench figures."""
    from .figures import bench_figures

    out = Path(out)
    write_json(out / "results.json", {"config": asdict(config), "runs": results})
    write_csv(out / "results.csv", [{k: r.get(k, "") for k in CSV_COLUMNS} for r in results])
    text = summary_markdown(config, results, elapsed)
    bench_figures(results, config, out)
    write_text(out / "summary.md", text + "\n")
    return text


def bench(config: BenchConfig, out: str | Path, progress: bool = True) -> str:
    """Run the bench and write its results; returns the summary (Markdown)."""
    start = time.perf_counter()
    results = run_bench(config, out, progress)
    return write_results(config, results, out, time.perf_counter() - start)
